//! The sealed job record: how a job is sealed at rest with envelope encryption (see
//! `docs/encryption.md`). Pure functions, no I/O: the queue engine's store calls them where it
//! reads and writes job records.
//!
//! A job gets a fresh 256-bit data key (DEK) when it is first written. Its args, meta, result
//! and error texts are each sealed with AES-256-GCM under that DEK with a random 96-bit nonce
//! and associated data binding the tenant, the job id and the field name. The DEK is wrapped
//! with the active KEK (AES-256-GCM, associated data binding the job id and the KEK id). Routing
//! fields stay in clear. Rotating the KEK only re-wraps the DEK ([`rewrap`]).

use std::sync::Arc;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::error::VaultError;
use super::keyring::{Kek, KeyRing};
use crate::job::{Job, JobError, JobId, Payload};
use crate::store::{codec, StoreError};

/// Job record version 1: the whole job in clear (written before encryption at rest existed;
/// still read, never written).
pub const RECORD_PLAIN: u8 = 1;
/// Job record version 2: routing fields in clear, payloads sealed ([`Sealed`]).
pub const RECORD_SEALED: u8 = 2;
/// The version of the sealed section's layout and associated-data format.
pub const ENVELOPE_VERSION: u8 = 1;

const NONCE: usize = 12;
const TAG: usize = 16;
const DEK_AAD: &[u8] = b"bulwark/dek/v1\0";
const FIELD_AAD: &[u8] = b"bulwark/job-field/v1\0";

/// Bytes that MessagePack stores as a byte string (not an array of numbers).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// The sealed section of a version-2 job record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sealed {
    /// [`ENVELOPE_VERSION`].
    pub v: u8,
    /// The id of the KEK that wraps the DEK.
    pub kek: String,
    /// `nonce(12) ‖ AES-256-GCM(KEK, DEK)(32) ‖ tag(16)`.
    pub dek: Bytes,
    /// Each field: `nonce(12) ‖ ciphertext ‖ tag(16)`.
    pub args: Bytes,
    pub meta: Option<Bytes>,
    pub result: Option<Bytes>,
    /// The texts of the current error and of the error history ([`ErrorTexts`]).
    pub errors: Option<Bytes>,
    /// Unknown envelope attributes kept in `preserve` mode (client data like any other).
    #[serde(default)]
    pub extra: Option<Bytes>,
}

/// A version-2 job record: the clear part and the sealed part.
#[derive(Serialize, Deserialize)]
pub struct StoredJob {
    /// The job with its payload fields emptied.
    pub job: Job,
    pub sealed: Sealed,
}

/// Reads a version-2 record without decrypting it (for tools and tests that inspect the file).
pub fn read_record(bytes: &[u8]) -> Result<StoredJob, StoreError> {
    codec::decode_as(RECORD_SEALED, bytes)
}

/// Writes a version-2 record as it is (no sealing: `stored` is already sealed).
pub fn write_record(stored: &StoredJob) -> Result<Vec<u8>, StoreError> {
    codec::encode_as(RECORD_SEALED, stored)
}

/// What an error entry keeps sealed: the worker's message and details.
#[derive(Serialize, Deserialize, Default)]
struct ErrorTexts {
    current: Option<(String, Option<String>)>,
    history: Vec<(String, Option<String>)>,
}

/// A job's unwrapped data key, kept beside the job in memory between a read and a write so a
/// write does not wrap a new key. The AES key schedule zeroizes itself on drop.
pub struct JobKey {
    kek: String,
    wrapped: Vec<u8>,
    cipher: Aes256Gcm,
    /// The sealed args and meta (which never change after enqueue), so a later write of the
    /// job does not encrypt them again.
    fields: Option<SealedFields>,
}

/// A job's sealed args and meta.
struct SealedFields {
    args: Bytes,
    meta: Option<Bytes>,
}

impl std::fmt::Debug for JobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobKey")
            .field("kek", &self.kek)
            .field("dek", &"<redacted>")
            .finish()
    }
}

impl JobKey {
    /// The id of the KEK that wraps this key.
    #[must_use]
    pub fn kek(&self) -> &str {
        &self.kek
    }
}

fn random<const N: usize>() -> Result<[u8; N], VaultError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| VaultError::Corrupt("no randomness".into()))?;
    Ok(out)
}

fn push_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Associated data of a wrapped DEK: the job id and the KEK id.
fn dek_aad(job: JobId, kek: &str) -> Vec<u8> {
    let mut aad = DEK_AAD.to_vec();
    aad.extend_from_slice(job.0.as_bytes());
    push_len_prefixed(&mut aad, kek.as_bytes());
    aad
}

/// Associated data of a sealed field: the tenant (or none), the job id and the field name.
fn field_aad(tenant: Option<&str>, job: JobId, field: &str) -> Vec<u8> {
    let mut aad = FIELD_AAD.to_vec();
    match tenant {
        Some(t) => {
            aad.push(1);
            push_len_prefixed(&mut aad, t.as_bytes());
        }
        None => aad.push(0),
    }
    aad.extend_from_slice(job.0.as_bytes());
    push_len_prefixed(&mut aad, field.as_bytes());
    aad
}

/// `nonce ‖ AES-256-GCM(key, plaintext, aad)`.
fn seal(cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
    seal_with(cipher, random()?, aad, plaintext)
}

/// [`seal`] with a given nonce (the known-answer tests fix it; everything else draws it).
fn seal_with(
    cipher: &Aes256Gcm,
    nonce: [u8; NONCE],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, VaultError> {
    let mut out = Vec::with_capacity(NONCE + plaintext.len() + TAG);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_inout_detached(&nonce.into(), aad, (&mut out[NONCE..]).into())
        .map_err(|_| VaultError::Corrupt("payload too large to seal".into()))?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens what [`seal`] made; any failure is [`VaultError::Undecryptable`].
fn open(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    if sealed.len() < NONCE + TAG {
        return Err(VaultError::Undecryptable);
    }
    let (nonce, rest) = sealed.split_at(NONCE);
    let (body, tag) = rest.split_at(rest.len() - TAG);
    let nonce: [u8; NONCE] = nonce.try_into().map_err(|_| VaultError::Undecryptable)?;
    let tag: [u8; TAG] = tag.try_into().map_err(|_| VaultError::Undecryptable)?;
    let mut buf = Zeroizing::new(body.to_vec());
    cipher
        .decrypt_inout_detached(&nonce.into(), aad, buf.as_mut_slice().into(), &tag.into())
        .map_err(|_| VaultError::Undecryptable)?;
    Ok(buf)
}

fn wrap(kek: &Kek, job: JobId, dek: &[u8; 32]) -> Result<Vec<u8>, VaultError> {
    seal(kek.cipher(), &dek_aad(job, kek.id()), dek)
}

fn unwrap(
    ring: &KeyRing,
    kek_id: &str,
    job: JobId,
    wrapped: &[u8],
) -> Result<Aes256Gcm, VaultError> {
    let kek = ring.get(kek_id).ok_or_else(|| VaultError::UnknownKek {
        kek: kek_id.to_string(),
    })?;
    let dek = open(kek.cipher(), &dek_aad(job, kek_id), wrapped)?;
    let cipher = Aes256Gcm::new_from_slice(&dek).map_err(|_| VaultError::Undecryptable)?;
    Ok(cipher)
}

/// A fresh data key for `job`, wrapped with the ring's active KEK.
pub fn new_job_key(ring: &KeyRing, job: JobId) -> Result<JobKey, VaultError> {
    let kek = ring.active().ok_or(VaultError::NoActiveKey)?;
    let mut dek: [u8; 32] = random()?;
    let wrapped = wrap(kek, job, &dek);
    let cipher = Aes256Gcm::new_from_slice(&dek).map_err(|_| VaultError::Undecryptable);
    dek.zeroize();
    Ok(JobKey {
        kek: kek.id().to_string(),
        wrapped: wrapped?,
        cipher: cipher?,
        fields: None,
    })
}

/// A fresh data key for a new job with its args and meta already sealed: the enqueue path
/// calls this on the HTTP worker, so the queue actor only stores the result.
pub fn preseal(
    ring: &KeyRing,
    job: JobId,
    tenant: Option<&str>,
    args: &Payload,
    meta: Option<&Payload>,
) -> Result<JobKey, VaultError> {
    let mut key = new_job_key(ring, job)?;
    let field = |name: &str, text: &str| -> Result<Bytes, VaultError> {
        seal(&key.cipher, &field_aad(tenant, job, name), text.as_bytes()).map(Bytes)
    };
    let fields = SealedFields {
        args: field("args", &args.0)?,
        meta: meta.map(|m| field("meta", &m.0)).transpose()?,
    };
    key.fields = Some(fields);
    Ok(key)
}

fn text_of(bytes: Zeroizing<Vec<u8>>) -> Result<String, VaultError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| VaultError::Undecryptable)
}

/// Encodes `job` as a sealed (version 2) record. Uses the job's data key when it has one (read
/// from disk earlier), else makes one under the active KEK.
pub fn seal_job(ring: &KeyRing, job: &Job) -> Result<Vec<u8>, VaultError> {
    seal_job_counted(ring, job).map(|s| s.bytes)
}

/// A sealed record, and the KEK that wraps its data key.
pub struct SealedRecord {
    pub bytes: Vec<u8>,
    /// The id of the KEK that wraps the record's data key.
    pub kek: String,
    /// Whether the data key was made and wrapped by this call (the job had none).
    pub fresh: bool,
}

/// [`seal_job`], saying which KEK wraps the data key and whether it was wrapped just now, so
/// the store can count the KEK's use ([`super::usage`]).
pub fn seal_job_counted(ring: &KeyRing, job: &Job) -> Result<SealedRecord, VaultError> {
    let made;
    let key: &JobKey = match &job.key {
        Some(key) => key,
        None => {
            made = new_job_key(ring, job.id)?;
            &made
        }
    };
    let mut fresh = job.key.is_none();
    // A data key wrapped by a KEK that is no longer the active one (read before a rotation,
    // or sealed on an HTTP worker just before it) is wrapped again with the active KEK, so a
    // write that lands after a re-wrap passed its record does not bring the old KEK back.
    let (kek, wrapped) = match (ring.active(), ring.get(&key.kek)) {
        (Some(active), Some(old)) if active.id() != key.kek => {
            let mut dek = open(old.cipher(), &dek_aad(job.id, &key.kek), &key.wrapped)?;
            let dek_bytes: &[u8; 32] = dek
                .as_slice()
                .try_into()
                .map_err(|_| VaultError::Undecryptable)?;
            let again = wrap(active, job.id, dek_bytes);
            dek.zeroize();
            fresh = true;
            (active.id().to_string(), again?)
        }
        _ => (key.kek.clone(), key.wrapped.clone()),
    };
    let tenant = job.tenant.as_deref();
    let field = |name: &str, text: &str| -> Result<Bytes, VaultError> {
        seal(
            &key.cipher,
            &field_aad(tenant, job.id, name),
            text.as_bytes(),
        )
        .map(Bytes)
    };
    let has_errors = job.error.is_some() || !job.errors.is_empty();
    let errors = if has_errors {
        let texts = ErrorTexts {
            current: job
                .error
                .as_ref()
                .map(|e| (e.message.clone(), e.details.as_ref().map(|d| d.0.clone()))),
            history: job
                .errors
                .iter()
                .map(|e| (e.message.clone(), e.details.as_ref().map(|d| d.0.clone())))
                .collect(),
        };
        let plain = Zeroizing::new(
            rmp_serde::to_vec(&texts).map_err(|e| VaultError::Corrupt(e.to_string()))?,
        );
        Some(Bytes(seal(
            &key.cipher,
            &field_aad(tenant, job.id, "errors"),
            &plain,
        )?))
    } else {
        None
    };
    // Args and meta never change after enqueue; their ciphertexts are reused when known.
    let (args, meta) = match &key.fields {
        Some(f) => (f.args.clone(), f.meta.clone()),
        None => (
            field("args", &job.args.0)?,
            job.meta.as_ref().map(|m| field("meta", &m.0)).transpose()?,
        ),
    };
    let sealed = Sealed {
        v: ENVELOPE_VERSION,
        kek,
        dek: Bytes(wrapped),
        args,
        meta,
        result: job
            .result
            .as_ref()
            .map(|r| field("result", &r.0))
            .transpose()?,
        errors,
        extra: job
            .extra
            .as_ref()
            .map(|x| field("extra", &x.0))
            .transpose()?,
    };
    let blank = |e: &JobError| JobError {
        message: String::new(),
        details: None,
        ..e.clone()
    };
    let head = Job {
        args: Payload(String::new()),
        meta: None,
        result: None,
        extra: None,
        error: job.error.as_ref().map(blank),
        errors: job.errors.iter().map(blank).collect(),
        key: None,
        ..job.clone()
    };
    let kek = sealed.kek.clone();
    let bytes = codec::encode_as(RECORD_SEALED, &StoredJob { job: head, sealed })
        .map_err(VaultError::from)?;
    Ok(SealedRecord { bytes, kek, fresh })
}

/// A job record read without decrypting anything: the routing fields (payloads empty) and the
/// KEK id (`None` for a version-1 clear record).
pub struct Head {
    pub job: Job,
    pub kek: Option<String>,
}

/// Reads the clear part of a job record.
pub fn job_head(bytes: &[u8]) -> Result<Head, StoreError> {
    match codec::version(bytes) {
        Some(RECORD_PLAIN) => Ok(Head {
            job: codec::decode_as(RECORD_PLAIN, bytes)?,
            kek: None,
        }),
        Some(RECORD_SEALED) => {
            let stored: StoredJob = codec::decode_as(RECORD_SEALED, bytes)?;
            Ok(Head {
                job: stored.job,
                kek: Some(stored.sealed.kek),
            })
        }
        _ => Err(StoreError::Corrupt("unknown job record version".into())),
    }
}

/// Reads and decrypts a job record. A record this ring cannot open fails with
/// [`VaultError::UnknownKek`] or [`VaultError::Undecryptable`], never with garbage.
pub fn open_job(ring: &KeyRing, bytes: &[u8]) -> Result<Job, VaultError> {
    if codec::version(bytes) == Some(RECORD_PLAIN) {
        return Ok(codec::decode_as(RECORD_PLAIN, bytes)?);
    }
    let StoredJob { mut job, sealed } = codec::decode_as(RECORD_SEALED, bytes)?;
    if sealed.v != ENVELOPE_VERSION {
        return Err(VaultError::Corrupt(format!(
            "unknown envelope version {}",
            sealed.v
        )));
    }
    let cipher = unwrap(ring, &sealed.kek, job.id, &sealed.dek.0)?;
    let tenant = job.tenant.clone();
    let field = |name: &str, b: &Bytes| -> Result<String, VaultError> {
        text_of(open(
            &cipher,
            &field_aad(tenant.as_deref(), job.id, name),
            &b.0,
        )?)
    };
    job.args = Payload(field("args", &sealed.args)?);
    job.meta = sealed
        .meta
        .as_ref()
        .map(|m| field("meta", m))
        .transpose()?
        .map(Payload);
    job.result = sealed
        .result
        .as_ref()
        .map(|r| field("result", r))
        .transpose()?
        .map(Payload);
    job.extra = sealed
        .extra
        .as_ref()
        .map(|x| field("extra", x))
        .transpose()?
        .map(Payload);
    if let Some(errors) = &sealed.errors {
        let plain = open(
            &cipher,
            &field_aad(tenant.as_deref(), job.id, "errors"),
            &errors.0,
        )?;
        let texts: ErrorTexts =
            rmp_serde::from_slice(&plain).map_err(|_| VaultError::Undecryptable)?;
        let fill = |e: &mut JobError, (message, details): (String, Option<String>)| {
            e.message = message;
            e.details = details.map(Payload);
        };
        if let (Some(e), Some(t)) = (job.error.as_mut(), texts.current) {
            fill(e, t);
        }
        if texts.history.len() != job.errors.len() {
            return Err(VaultError::Undecryptable);
        }
        for (e, t) in job.errors.iter_mut().zip(texts.history) {
            fill(e, t);
        }
    }
    job.key = Some(Arc::new(JobKey {
        kek: sealed.kek,
        wrapped: sealed.dek.0,
        cipher,
        fields: Some(SealedFields {
            args: sealed.args,
            meta: sealed.meta,
        }),
    }));
    Ok(job)
}

/// Re-wraps a sealed record's data key with the ring's active KEK, leaving the payloads as they
/// are. `Ok(None)` when the record already uses the active KEK. A clear (version 1) record is
/// sealed in full.
pub fn rewrap(ring: &KeyRing, bytes: &[u8]) -> Result<Option<Vec<u8>>, VaultError> {
    let active = ring.active().ok_or(VaultError::NoActiveKey)?;
    if codec::version(bytes) == Some(RECORD_PLAIN) {
        let job: Job = codec::decode_as(RECORD_PLAIN, bytes)?;
        return seal_job(ring, &job).map(Some);
    }
    let mut stored: StoredJob = codec::decode_as(RECORD_SEALED, bytes)?;
    if stored.sealed.kek == active.id() {
        return Ok(None);
    }
    let old = ring
        .get(&stored.sealed.kek)
        .ok_or_else(|| VaultError::UnknownKek {
            kek: stored.sealed.kek.clone(),
        })?;
    let job = stored.job.id;
    let dek = open(old.cipher(), &dek_aad(job, old.id()), &stored.sealed.dek.0)?;
    let dek: &[u8; 32] = dek
        .as_slice()
        .try_into()
        .map_err(|_| VaultError::Undecryptable)?;
    stored.sealed.dek = Bytes(wrap(active, job, dek)?);
    stored.sealed.kek = active.id().to_string();
    codec::encode_as(RECORD_SEALED, &stored)
        .map(Some)
        .map_err(VaultError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::envelope::{parse_new_job, EnvelopeRules};
    use crate::job::JobState;
    use serde_json::json;

    fn ring(ids: &[(&str, u8)], active: &str) -> KeyRing {
        let keys = ids
            .iter()
            .map(|(id, b)| Kek::new(id, &[*b; 32], None))
            .collect();
        KeyRing::new(keys, Some(active)).unwrap()
    }

    fn job(tenant: Option<&str>) -> Job {
        let body = json!({"type": "t.x", "args": ["CANARY-args"], "meta": {"k": "CANARY-meta"}});
        let new = parse_new_job(&body, &EnvelopeRules::default(), 1_780_000_000_000).unwrap();
        let mut job = Job::from_new(
            new,
            JobId::generate(),
            tenant.map(str::to_string),
            None,
            1,
            0,
        );
        assert_eq!(job.state, JobState::Available);
        job.result = Some(Payload("\"CANARY-result\"".into()));
        job.push_error(JobError {
            code: "handler_error".into(),
            message: "CANARY-message".into(),
            error_type: None,
            retryable: None,
            details: Some(Payload("{\"d\":\"CANARY-details\"}".into())),
            attempt: 1,
            occurred_at: 0,
        });
        job
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn sealed_records_round_trip_and_hide_every_payload() {
        let r = ring(&[("a", 1)], "a");
        let j = job(Some("acme"));
        let bytes = seal_job(&r, &j).unwrap();
        assert!(!contains(&bytes, b"CANARY"));
        assert!(!contains(&bytes, &[1u8; 32]));
        let back = open_job(&r, &bytes).unwrap();
        assert_eq!(back.args, j.args);
        assert_eq!(back.meta, j.meta);
        assert_eq!(back.result, j.result);
        assert_eq!(back.error, j.error);
        assert_eq!(back.errors, j.errors);
        assert_eq!(back.key.as_ref().unwrap().kek(), "a");
        let head = job_head(&bytes).unwrap();
        assert_eq!((head.job.id, head.kek.as_deref()), (j.id, Some("a")));
        // A second write reuses the data key: same wrapped key, fresh nonces.
        let again = seal_job(&r, &back).unwrap();
        assert_ne!(again, bytes);
        assert_eq!(open_job(&r, &again).unwrap().args, j.args);
    }

    #[test]
    fn a_write_after_a_rotation_wraps_the_data_key_with_the_active_kek() {
        // Sealed on a worker while "a" was active; committed after "b" became active and a
        // re-wrap passed the record: the write must not bring "a" back.
        let before = ring(&[("a", 1)], "a");
        let mut j = job(Some("acme"));
        let key = preseal(&before, j.id, Some("acme"), &j.args, j.meta.as_ref()).unwrap();
        j.key = Some(Arc::new(key));
        let after = ring(&[("a", 1), ("b", 2)], "b");
        let sealed = seal_job_counted(&after, &j).unwrap();
        assert_eq!((sealed.kek.as_str(), sealed.fresh), ("b", true));
        // Only "b" is needed to open it, and the presealed args are what comes back.
        let only_b = ring(&[("b", 2)], "b");
        let back = open_job(&only_b, &sealed.bytes).unwrap();
        assert_eq!(
            (back.args.clone(), back.meta.clone()),
            (j.args.clone(), j.meta.clone())
        );
        // Under the active KEK already, a write keeps the wrapped key as it is.
        let again = seal_job_counted(&only_b, &back).unwrap();
        assert_eq!((again.kek.as_str(), again.fresh), ("b", false));
    }

    #[test]
    fn presealed_args_are_what_a_later_open_returns() {
        let r = ring(&[("a", 1)], "a");
        let mut j = job(Some("acme"));
        let key = preseal(&r, j.id, Some("acme"), &j.args, j.meta.as_ref()).unwrap();
        j.key = Some(Arc::new(key));
        let bytes = seal_job(&r, &j).unwrap();
        let back = open_job(&r, &bytes).unwrap();
        assert_eq!((back.args, back.meta), (j.args.clone(), j.meta.clone()));
        // Sealed for another tenant, the same args do not open here.
        let mut k = job(Some("acme"));
        let other = preseal(&r, k.id, Some("evil"), &k.args, k.meta.as_ref()).unwrap();
        k.key = Some(Arc::new(other));
        let bytes = seal_job(&r, &k).unwrap();
        assert!(matches!(
            open_job(&r, &bytes),
            Err(VaultError::Undecryptable)
        ));
    }

    #[test]
    fn every_bit_flip_fails_closed() {
        let r = ring(&[("a", 1)], "a");
        let bytes = seal_job(&r, &job(None)).unwrap();
        let mut failures = 0;
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            match open_job(&r, &bad) {
                Err(_) => failures += 1,
                // A flip in a clear routing field (a timestamp, a priority) is not detected by
                // the AEAD, but the payloads it returns are still the authentic ones.
                Ok(j) => assert_eq!(j.args.0, "[\"CANARY-args\"]"),
            }
        }
        assert!(failures > bytes.len() / 2);
        // Every byte of the sealed section is covered.
        let stored: StoredJob = codec::decode_as(RECORD_SEALED, &bytes).unwrap();
        for field in [&stored.sealed.dek, &stored.sealed.args] {
            for i in 0..field.0.len() {
                let mut s = stored.sealed.clone();
                let target = if std::ptr::eq(field, &stored.sealed.dek) {
                    &mut s.dek
                } else {
                    &mut s.args
                };
                target.0[i] ^= 0x80;
                let rec = codec::encode_as(
                    RECORD_SEALED,
                    &StoredJob {
                        job: stored.job.clone(),
                        sealed: s,
                    },
                )
                .unwrap();
                assert!(matches!(open_job(&r, &rec), Err(VaultError::Undecryptable)));
            }
        }
    }

    #[test]
    fn moved_ciphertexts_and_other_keys_fail_closed() {
        let r = ring(&[("a", 1)], "a");
        let one = seal_job(&r, &job(Some("acme"))).unwrap();
        let two = job(Some("acme"));
        let two_bytes = seal_job(&r, &two).unwrap();
        // Another job's sealed section on this job's row.
        let mut a: StoredJob = codec::decode_as(RECORD_SEALED, &one).unwrap();
        let b: StoredJob = codec::decode_as(RECORD_SEALED, &two_bytes).unwrap();
        a.sealed = b.sealed.clone();
        let swapped = codec::encode_as(RECORD_SEALED, &a).unwrap();
        assert!(matches!(
            open_job(&r, &swapped),
            Err(VaultError::Undecryptable)
        ));
        // The args ciphertext in the result field of the same job.
        let mut c: StoredJob = codec::decode_as(RECORD_SEALED, &two_bytes).unwrap();
        c.sealed.result = Some(c.sealed.args.clone());
        let moved = codec::encode_as(RECORD_SEALED, &c).unwrap();
        assert!(matches!(
            open_job(&r, &moved),
            Err(VaultError::Undecryptable)
        ));
        // Another tenant.
        let mut d: StoredJob = codec::decode_as(RECORD_SEALED, &two_bytes).unwrap();
        d.job.tenant = Some("evil".into());
        let retenanted = codec::encode_as(RECORD_SEALED, &d).unwrap();
        assert!(matches!(
            open_job(&r, &retenanted),
            Err(VaultError::Undecryptable)
        ));
        // A ring with other bytes under the same id, and a ring without the id.
        assert!(matches!(
            open_job(&ring(&[("a", 2)], "a"), &one),
            Err(VaultError::Undecryptable)
        ));
        assert!(matches!(
            open_job(&ring(&[("b", 1)], "b"), &one),
            Err(VaultError::UnknownKek { .. })
        ));
    }

    #[test]
    fn rewrap_moves_the_data_key_to_the_active_kek_without_touching_payloads() {
        let old = ring(&[("a", 1)], "a");
        let bytes = seal_job(&old, &job(None)).unwrap();
        let both = ring(&[("a", 1), ("b", 2)], "b");
        let re = rewrap(&both, &bytes).unwrap().unwrap();
        let (x, y): (StoredJob, StoredJob) = (
            codec::decode_as(RECORD_SEALED, &bytes).unwrap(),
            codec::decode_as(RECORD_SEALED, &re).unwrap(),
        );
        assert_eq!(x.sealed.args, y.sealed.args, "payload not re-encrypted");
        assert_eq!(y.sealed.kek, "b");
        assert!(rewrap(&both, &re).unwrap().is_none());
        let only_new = ring(&[("b", 2)], "b");
        assert_eq!(
            open_job(&only_new, &re).unwrap().args.0,
            "[\"CANARY-args\"]"
        );
        assert!(open_job(&only_new, &bytes).is_err());
        // A clear legacy record is sealed by rewrap.
        let plain = codec::encode_as(RECORD_PLAIN, &job(None)).unwrap();
        let sealed = rewrap(&only_new, &plain).unwrap().unwrap();
        assert_eq!(codec::version(&sealed), Some(RECORD_SEALED));
        assert_eq!(
            open_job(&only_new, &sealed).unwrap().args.0,
            "[\"CANARY-args\"]"
        );
    }
}

/// Known answers: the envelope's AES-256-GCM against Project Wycheproof, and the record format
/// against fixed vectors (computed independently of this code, or committed records), so that
/// a format change or a library update that alters bytes fails here first.
#[cfg(test)]
mod known_answers {
    use super::*;
    use aes_gcm::KeyInit;

    const JOB: &str = "01900000-0000-7000-8000-000000000001";

    fn job_id() -> JobId {
        JobId::parse(JOB).unwrap()
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn aes_256_gcm_matches_wycheproof() {
        use wycheproof::aead::{TestName, TestSet};
        let set = TestSet::load(TestName::AesGcm).unwrap();
        let (mut valid, mut invalid) = (0, 0);
        for group in set.test_groups {
            // The envelope's parameters only: 256-bit keys, 96-bit nonces, 128-bit tags.
            if group.key_size != 256 || group.nonce_size != 96 || group.tag_size != 128 {
                continue;
            }
            for t in group.tests {
                let cipher = Aes256Gcm::new_from_slice(&t.key).unwrap();
                let nonce: [u8; NONCE] = t.nonce.as_slice().try_into().unwrap();
                let mut sealed = nonce.to_vec();
                sealed.extend_from_slice(&t.ct);
                sealed.extend_from_slice(&t.tag);
                let opened = open(&cipher, &t.aad, &sealed);
                if t.result.must_fail() {
                    assert!(opened.is_err(), "test {} opened: {}", t.tc_id, t.comment);
                    invalid += 1;
                } else {
                    assert_eq!(
                        opened.unwrap().as_slice(),
                        t.pt.as_slice(),
                        "test {}",
                        t.tc_id
                    );
                    let made = seal_with(&cipher, nonce, &t.aad, &t.pt).unwrap();
                    assert_eq!(made, sealed, "test {}: {}", t.tc_id, t.comment);
                    valid += 1;
                }
            }
        }
        assert!(
            valid > 20 && invalid > 20,
            "too few vectors: {valid} valid, {invalid} invalid"
        );
    }

    #[test]
    fn associated_data_layout_is_fixed() {
        assert_eq!(
            dek_aad(job_id(), "kek-a"),
            hex("62756c7761726b2f64656b2f76310001900000000070008000000000000001000000056b656b2d61")
        );
        assert_eq!(
            field_aad(Some("acme"), job_id(), "args"),
            hex("62756c7761726b2f6a6f622d6669656c642f763100010000000461636d65019000000000700080000000000000010000000461726773")
        );
        assert_eq!(
            field_aad(None, job_id(), "meta"),
            hex("62756c7761726b2f6a6f622d6669656c642f7631000001900000000070008000000000000001000000046d657461")
        );
    }

    /// Vectors computed with another AES-GCM implementation (Python's `cryptography`) over the
    /// AAD above.
    #[test]
    fn sealed_fields_and_wrapped_keys_match_fixed_vectors() {
        let dek = Aes256Gcm::new_from_slice(&[0x11; 32]).unwrap();
        let field = seal_with(
            &dek,
            [0x22; NONCE],
            &field_aad(Some("acme"), job_id(), "args"),
            b"[\"seed\"]",
        )
        .unwrap();
        assert_eq!(
            field,
            hex("2222222222222222222222224cd5742ca5abbd02d913ca03ad01fea01cc9d2df19163e90")
        );
        let kek = Kek::new("kek-a", &[0xa1; 32], None);
        let wrapped = seal_with(
            kek.cipher(),
            [0x33; NONCE],
            &dek_aad(job_id(), "kek-a"),
            &[0x11; 32],
        )
        .unwrap();
        assert_eq!(
            wrapped,
            hex("3333333333333333333333336528f76f533f7d15cdf092acc6cf2f015309dd7584ad707f3f6c06039b5851650586f7831cc2218f909d9e68a6e0eefd")
        );
    }

    fn ring() -> KeyRing {
        KeyRing::new(vec![Kek::new("kek-a", &[0xa1; 32], None)], Some("kek-a")).unwrap()
    }

    /// A version-2 record committed in the repository (`tests/fixtures/vault/`) still opens to
    /// the same job, and its decoded form re-encodes to the same bytes.
    #[test]
    fn a_committed_sealed_record_opens_and_re_encodes_byte_for_byte() {
        let bytes = include_bytes!("../../tests/fixtures/vault/sealed-job-v2.bin");
        let job = open_job(&ring(), bytes).unwrap();
        assert_eq!(job.id, job_id());
        assert_eq!(job.tenant.as_deref(), Some("acme"));
        assert_eq!(
            (job.job_type.as_str(), job.queue.as_str()),
            ("fuzz.job", "default")
        );
        assert_eq!(job.args.0, "[\"seed\"]");
        assert_eq!(job.meta.as_ref().unwrap().0, "{\"k\":\"v\"}");
        assert_eq!(job.result.as_ref().unwrap().0, "\"done\"");
        assert_eq!(job.errors.len(), 1);
        assert_eq!(job.errors[0].message, "boom");
        let head = job_head(bytes).unwrap();
        assert_eq!(head.kek.as_deref(), Some("kek-a"));
        assert!(head.job.args.0.is_empty(), "a payload in the clear part");
        let stored = read_record(bytes).unwrap();
        assert_eq!(write_record(&stored).unwrap(), bytes.to_vec());
    }

    /// The same for a version-1 (clear) record, still read though never written.
    #[test]
    fn a_committed_clear_record_still_reads() {
        let bytes = include_bytes!("../../tests/fixtures/vault/plain-job-v1.bin");
        let job = open_job(&ring(), bytes).unwrap();
        assert_eq!(job.id, job_id());
        assert_eq!(job.args.0, "[\"seed\"]");
        assert!(job_head(bytes).unwrap().kek.is_none());
        assert_eq!(
            codec::encode_as(RECORD_PLAIN, &job).unwrap(),
            bytes.to_vec()
        );
    }
}
