//! Just enough DER to take a public key out of a SubjectPublicKeyInfo (RFC 5280 §4.1.2.7) and an
//! RSA modulus and exponent out of a PKCS#1 `RSAPublicKey` (RFC 8017 §A.1.1).
//!
//! ring verifies signatures from raw key bytes but does not parse SPKI, so this reads the three
//! shapes we accept and refuses everything else. Strict DER only: definite, minimal lengths; no
//! trailing bytes anywhere.

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_NULL: u8 = 0x05;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

/// rsaEncryption, 1.2.840.113549.1.1.1.
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-ecPublicKey, 1.2.840.10045.2.1.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// prime256v1 (P-256), 1.2.840.10045.3.1.7.
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// id-Ed25519, 1.3.101.112.
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// The public key inside a SubjectPublicKeyInfo, by type.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SpkiKey<'a> {
    /// The PKCS#1 `RSAPublicKey` DER.
    Rsa(&'a [u8]),
    /// An uncompressed P-256 point (65 bytes, `04 || x || y`).
    P256(&'a [u8]),
    /// A 32-byte Ed25519 public key.
    Ed25519(&'a [u8]),
}

/// Why a DER structure was refused. Fixed texts: key bytes never reach a message.
pub(super) type DerError = &'static str;

/// Reads one TLV with the expected tag; returns its contents and what follows.
fn read_tlv(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), DerError> {
    let (&found, rest) = input.split_first().ok_or("truncated DER")?;
    if found != tag {
        return Err("unexpected DER tag");
    }
    let (&first, rest) = rest.split_first().ok_or("truncated DER")?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => {
            let (&b, rest) = rest.split_first().ok_or("truncated DER")?;
            if b < 0x80 {
                return Err("non-minimal DER length");
            }
            (usize::from(b), rest)
        }
        0x82 => {
            let bytes = rest.get(..2).ok_or("truncated DER")?;
            let len = usize::from(bytes[0]) << 8 | usize::from(bytes[1]);
            if len < 0x100 {
                return Err("non-minimal DER length");
            }
            (len, &rest[2..])
        }
        // Longer forms would mean a key over 64 KiB, and 0x80 is BER's indefinite length.
        _ => return Err("unsupported DER length"),
    };
    if rest.len() < len {
        return Err("truncated DER");
    }
    Ok(rest.split_at(len))
}

/// Reads a TLV that must be the whole of `input`.
fn read_only(input: &[u8], tag: u8) -> Result<&[u8], DerError> {
    let (value, rest) = read_tlv(input, tag)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err("trailing bytes after DER value")
    }
}

/// Takes the public key out of a SubjectPublicKeyInfo, accepting rsaEncryption (NULL
/// parameters), id-ecPublicKey on P-256 with an uncompressed point, and Ed25519.
pub(super) fn parse_spki(der: &[u8]) -> Result<SpkiKey<'_>, DerError> {
    let spki = read_only(der, TAG_SEQUENCE)?;
    let (algorithm, rest) = read_tlv(spki, TAG_SEQUENCE)?;
    let bits = read_only(rest, TAG_BIT_STRING)?;
    let key = match bits.split_first() {
        Some((0, key)) => key,
        _ => return Err("public key bit string has unused bits"),
    };
    let (oid, params) = read_tlv(algorithm, TAG_OID)?;
    if oid == OID_RSA_ENCRYPTION {
        if !read_only(params, TAG_NULL)?.is_empty() {
            return Err("rsaEncryption parameters must be NULL");
        }
        Ok(SpkiKey::Rsa(key))
    } else if oid == OID_EC_PUBLIC_KEY {
        if read_only(params, TAG_OID)? != OID_P256 {
            return Err("only the P-256 curve is supported");
        }
        if key.len() != 65 || key[0] != 0x04 {
            return Err("EC public key must be an uncompressed P-256 point");
        }
        Ok(SpkiKey::P256(key))
    } else if oid == OID_ED25519 {
        if !params.is_empty() {
            return Err("Ed25519 takes no parameters");
        }
        if key.len() != 32 {
            return Err("Ed25519 public key must be 32 bytes");
        }
        Ok(SpkiKey::Ed25519(key))
    } else {
        Err("unsupported public key algorithm")
    }
}

/// Reads a positive DER INTEGER in minimal form and returns its magnitude (no sign byte).
fn positive_integer(value: &[u8]) -> Result<&[u8], DerError> {
    match value {
        [] => Err("empty DER integer"),
        [0] => Err("zero DER integer"),
        [0, next, ..] if *next < 0x80 => Err("non-minimal DER integer"),
        [0, magnitude @ ..] => Ok(magnitude),
        [first, ..] if *first >= 0x80 => Err("negative DER integer"),
        magnitude => Ok(magnitude),
    }
}

/// Splits a PKCS#1 `RSAPublicKey` into its modulus and public exponent, big-endian and without
/// leading zeros.
pub(super) fn parse_rsa_public_key(der: &[u8]) -> Result<(&[u8], &[u8]), DerError> {
    let seq = read_only(der, TAG_SEQUENCE)?;
    let (n, rest) = read_tlv(seq, TAG_INTEGER)?;
    let e = read_only(rest, TAG_INTEGER)?;
    Ok((positive_integer(n)?, positive_integer(e)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_must_be_minimal_and_definite() {
        assert_eq!(
            read_tlv(&[0x02, 0x01, 0x05], 0x02),
            Ok((&[5u8][..], &[][..]))
        );
        assert!(read_tlv(&[0x02, 0x81, 0x01, 0x05], 0x02).is_err());
        assert!(read_tlv(&[0x02, 0x80, 0x05, 0x00, 0x00], 0x02).is_err());
        assert!(read_tlv(&[0x02, 0x82, 0x00, 0x01, 0x05], 0x02).is_err());
        assert!(read_tlv(&[0x02, 0x02, 0x05], 0x02).is_err());
        assert!(read_tlv(&[0x03, 0x01, 0x05], 0x02).is_err());
        assert!(read_tlv(&[], 0x02).is_err());
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([7u8; 0x80]);
        assert_eq!(read_tlv(&long, 0x04).map(|(v, _)| v.len()), Ok(0x80));
    }

    #[test]
    fn integers_must_be_positive_and_minimal() {
        assert_eq!(positive_integer(&[0x01, 0x00]), Ok(&[0x01, 0x00][..]));
        assert_eq!(positive_integer(&[0x00, 0x80]), Ok(&[0x80][..]));
        assert!(positive_integer(&[0x00, 0x7f]).is_err());
        assert!(positive_integer(&[0x80]).is_err());
        assert!(positive_integer(&[0x00]).is_err());
        assert!(positive_integer(&[]).is_err());
    }

    #[test]
    fn spki_shapes() {
        let mut ed = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        ed.extend([9u8; 32]);
        assert_eq!(parse_spki(&ed), Ok(SpkiKey::Ed25519(&[9u8; 32])));
        // Trailing garbage, a short key and nonzero unused bits are all refused.
        let mut trailing = ed.clone();
        trailing.push(0);
        assert!(parse_spki(&trailing).is_err());
        let mut unused_bits = ed.clone();
        unused_bits[11] = 1;
        assert!(parse_spki(&unused_bits).is_err());
        let short = [
            0x30, 0x0b, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x02, 0x00, 0x01,
        ];
        assert!(parse_spki(&short).is_err());
        // An unknown algorithm (Ed448, 1.3.101.113).
        let mut ed448 = ed.clone();
        ed448[8] = 0x71;
        assert_eq!(parse_spki(&ed448), Err("unsupported public key algorithm"));
    }
}
