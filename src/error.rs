//! The small closed set of error classes every layer's errors map into; the HTTP layer turns
//! each into a status once, in `http::error`.

/// A coarse error class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    Unauthenticated,
    Forbidden,
    NotFound,
    Conflict,
    TooManyRequests,
    Unavailable,
    Internal,
}
