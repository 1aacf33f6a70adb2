//! Record encoding: one version byte, then MessagePack with named fields, so that a record
//! format can evolve and an old file is either read or refused, never misread.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::StoreError;

/// The current record format.
pub const RECORD_VERSION: u8 = 1;

/// Nesting limit for records read back from disk (records are shallow; payloads are text).
const MAX_DEPTH: usize = 32;

/// Encodes a record.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    encode_as(RECORD_VERSION, value)
}

/// Decodes a record written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    decode_as(RECORD_VERSION, bytes)
}

/// A record's version byte.
#[must_use]
pub fn version(bytes: &[u8]) -> Option<u8> {
    bytes.first().copied()
}

/// Encodes a record of a table with its own versions (the job table, see
/// `vault::sealed`).
pub fn encode_as<T: Serialize>(version: u8, value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![version];
    rmp_serde::encode::write_named(&mut out, value)
        .map_err(|e| StoreError::Corrupt(format!("encode: {e}")))?;
    Ok(out)
}

/// Decodes a record written by [`encode_as`] with `expected` as its version.
pub fn decode_as<T: DeserializeOwned>(expected: u8, bytes: &[u8]) -> Result<T, StoreError> {
    let (version, body) = bytes
        .split_first()
        .ok_or_else(|| StoreError::Corrupt("empty record".into()))?;
    if *version != expected {
        return Err(StoreError::Corrupt(format!(
            "unknown record version {version}"
        )));
    }
    // Borrowing from the slice avoids a copy and an allocation per field name.
    let mut de = rmp_serde::Deserializer::from_read_ref(body);
    de.set_max_depth(MAX_DEPTH);
    T::deserialize(&mut de).map_err(|e| StoreError::Corrupt(format!("decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct R {
        a: u32,
        b: Option<String>,
    }

    #[test]
    fn round_trip_and_refusals() {
        let r = R {
            a: 7,
            b: Some("x".into()),
        };
        let bytes = encode(&r).unwrap();
        assert_eq!(decode::<R>(&bytes).unwrap(), r);
        assert!(decode::<R>(&[]).is_err());
        let mut wrong = bytes.clone();
        wrong[0] = 99;
        assert!(decode::<R>(&wrong).is_err());
        assert!(decode::<R>(&bytes[..bytes.len() - 1]).is_err());
    }
}
