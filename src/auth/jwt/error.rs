//! Why a token was refused, or why a JWT configuration would not load.
//!
//! Messages never echo token content: token errors carry only fixed texts and the names of the
//! claims or header parameters involved. Load errors name files and key ids from the
//! configuration, never key bytes.

use std::path::PathBuf;

use crate::error::ErrorKind;

/// A refused token or a refused configuration. The client sees one 401 body for every token
/// error; the variant is for logs, audit and metrics (see [`JwtError::reason`]).
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Longer than `max_token_bytes`; refused before any decoding.
    #[error("token too large")]
    TooLarge,
    /// Not three base64url segments holding a JSON header, a JSON payload and a signature.
    #[error("malformed token")]
    Malformed,
    /// The header has no `kid`.
    #[error("token header has no key id")]
    MissingKeyId,
    /// The `kid` names no configured key.
    #[error("unknown key id")]
    UnknownKey,
    /// The header asks for `alg: none` (in any case).
    #[error("unsigned tokens are refused")]
    AlgorithmNone,
    /// The header's `alg` differs from the algorithm configured for its key.
    #[error("token algorithm does not match its key")]
    AlgorithmMismatch,
    /// The header carries a parameter we refuse (`crit`, `jku`, `x5u`, `jwk`, `x5c`).
    #[error("forbidden header parameter {0}")]
    ForbiddenHeader(&'static str),
    /// A header parameter has the wrong type or an unsupported value (`alg`, `kid`, `typ`).
    #[error("bad header parameter {0}")]
    BadHeader(&'static str),
    /// The signature does not verify with the configured key.
    #[error("bad signature")]
    BadSignature,
    /// `exp` is past, beyond the leeway.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future, beyond the leeway.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` is in the future, beyond the leeway.
    #[error("token issued in the future")]
    IssuedInFuture,
    /// A required claim is absent.
    #[error("missing claim {0}")]
    MissingClaim(&'static str),
    /// `iss` differs from the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` does not contain the configured audience.
    #[error("wrong audience")]
    WrongAudience,
    /// `exp - iat` exceeds `max_lifetime_secs`.
    #[error("token lifetime too long")]
    LifetimeTooLong,
    /// A claim has the wrong type or an out-of-range value.
    #[error("bad claim {0}")]
    BadClaim(&'static str),
    /// A configuration value is out of range.
    #[error("invalid jwt configuration: {0}")]
    Config(String),
    /// A key file could not be read or holds no acceptable key.
    #[error("jwt key file {}: {reason}", path.display())]
    KeyFile {
        /// The file, as resolved against the secrets folder.
        path: PathBuf,
        /// What is wrong, in fixed words: never key bytes.
        reason: String,
    },
    /// Two configured keys share a `kid`.
    #[error("duplicate jwt key id {0:?}")]
    DuplicateKeyId(String),
}

impl JwtError {
    /// A short, stable label for audit records and metrics.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::MissingKeyId => "missing_kid",
            Self::UnknownKey => "unknown_key",
            Self::AlgorithmNone => "alg_none",
            Self::AlgorithmMismatch => "alg_mismatch",
            Self::ForbiddenHeader(_) => "forbidden_header",
            Self::BadHeader(_) => "bad_header",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::IssuedInFuture => "issued_in_future",
            Self::MissingClaim(_) => "missing_claim",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::BadClaim(_) => "bad_claim",
            Self::Config(_) => "config",
            Self::KeyFile { .. } => "key_file",
            Self::DuplicateKeyId(_) => "duplicate_kid",
        }
    }

    /// Whether this is a configuration or key-loading error rather than a refused token.
    #[must_use]
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::Config(_) | Self::KeyFile { .. } | Self::DuplicateKeyId(_)
        )
    }

    /// The coarse class the HTTP layer maps to a status: every refused token is
    /// `Unauthenticated`; configuration errors are `Internal` (they belong to startup).
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        if self.is_config() {
            ErrorKind::Internal
        } else {
            ErrorKind::Unauthenticated
        }
    }
}
