//! Connection guards: the bytes of every accepted connection pass through a [`Guarded`] stream
//! before actix-http sees them, because actix-http answers framing errors itself (a bare 400,
//! 408 or 431 without the OJS envelope) and offers no bound of its own below its fixed ceilings
//! (a 128 KiB head, a 64 KiB request target) nor any HTTP/2 setting beyond window sizes.
//!
//! - [`h1`]: HTTP/1 request heads are collected and checked (request-target, header field and
//!   head sizes, field count, syntax, message framing) before actix-http gets them; a refused
//!   head is replaced by a request to the edge itself, which the edge middleware
//!   (`http::edge`) answers with the OJS envelope and the standard headers, then the
//!   connection closes.
//! - [`h2`]: HTTP/2 frames are counted: the server's first SETTINGS frame is extended with
//!   `SETTINGS_MAX_CONCURRENT_STREAMS` and `SETTINGS_MAX_HEADER_LIST_SIZE`, a client opening
//!   more streams or flooding control frames gets GOAWAY and the connection closes.
//!
//! What the guard and the request side share is an [`EdgeConn`] in the connection's data.

pub mod h1;
pub mod h2;

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::{ApiError, Code};

/// The request-head and HTTP/2 bounds (`[server]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeLimits {
    pub max_uri_bytes: usize,
    pub max_header_bytes: usize,
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub http2_max_concurrent_streams: u32,
    pub http2_max_control_frames_per_second: u32,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        crate::config::Config::default().edge_limits()
    }
}

/// Why the connection guard refused an HTTP/1 request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request-target is over `max_uri_bytes` (414).
    UriTooLong,
    /// The head is over `max_head_bytes` (431).
    HeadTooLarge,
    /// One header field is over `max_header_bytes` (431).
    HeaderTooLarge,
    /// More than `max_headers` fields (431).
    TooManyHeaders,
    /// Not an HTTP/1 request head: bad bytes, bad request line, bad field syntax (400).
    MalformedHead,
    /// Both `Content-Length` and `Transfer-Encoding`, `Content-Length` twice, or an
    /// unreadable one: the body's end is ambiguous (400; the request-smuggling class).
    AmbiguousLength,
    /// A transfer coding other than `chunked` (400).
    TransferCoding,
    /// The head did not arrive within `request_head_timeout_secs` (408).
    HeadTimeout,
}

impl Refusal {
    /// The audit and metrics label.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::UriTooLong => "uri_too_long",
            Self::HeadTooLarge => "head_too_large",
            Self::HeaderTooLarge => "header_too_large",
            Self::TooManyHeaders => "too_many_headers",
            Self::MalformedHead => "malformed_head",
            Self::AmbiguousLength => "ambiguous_length",
            Self::TransferCoding => "transfer_coding",
            Self::HeadTimeout => "head_timeout",
        }
    }

    /// The error the client gets.
    #[must_use]
    pub fn error(self, limits: &EdgeLimits, head_timeout: Duration) -> ApiError {
        match self {
            Self::UriTooLong => ApiError::new(
                Code::UriTooLong,
                format!(
                    "the request target is longer than {} bytes",
                    limits.max_uri_bytes
                ),
            ),
            Self::HeadTooLarge => ApiError::new(
                Code::HeadersTooLarge,
                format!(
                    "the request head is larger than {} bytes",
                    limits.max_head_bytes
                ),
            ),
            Self::HeaderTooLarge => ApiError::new(
                Code::HeadersTooLarge,
                format!(
                    "a header field is longer than {} bytes",
                    limits.max_header_bytes
                ),
            ),
            Self::TooManyHeaders => ApiError::new(
                Code::HeadersTooLarge,
                format!(
                    "the request has more than {} header fields",
                    limits.max_headers
                ),
            ),
            Self::MalformedHead => {
                ApiError::new(Code::InvalidRequest, "the request head is malformed")
            }
            Self::AmbiguousLength => ApiError::new(
                Code::InvalidRequest,
                "the request body's length is ambiguous: send one Content-Length or \
                 Transfer-Encoding: chunked, not both",
            ),
            Self::TransferCoding => ApiError::new(
                Code::InvalidRequest,
                "only the chunked transfer coding is accepted",
            ),
            Self::HeadTimeout => ApiError::new(
                Code::RequestTimeout,
                format!(
                    "the request head did not arrive within {} seconds",
                    head_timeout.as_secs()
                ),
            ),
        }
    }
}

/// What the guard of one connection and the requests on it share (connection data).
pub struct EdgeConn {
    /// Marks the guard's own request (a refused head's stand-in); random per connection, so
    /// a client cannot send one.
    token: String,
    refusal: Mutex<Option<Refusal>>,
    stop_reading: AtomicBool,
    /// The bounds in force.
    pub limits: EdgeLimits,
    /// The request-head timeout.
    pub head_timeout: Duration,
}

impl EdgeConn {
    fn new(limits: EdgeLimits, head_timeout: Duration) -> Arc<Self> {
        use ring::rand::SecureRandom as _;
        let mut bytes = [0u8; 16];
        // Without randomness the token is all zeros; a forged stand-in then only earns the
        // forger a refusal of its own request.
        let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
        let token = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Arc::new(Self {
            token,
            refusal: Mutex::new(None),
            stop_reading: AtomicBool::new(false),
            limits,
            head_timeout,
        })
    }

    /// The refusal a stand-in request carrying `presented` stands for, if it is the guard's.
    #[must_use]
    pub fn refusal_for(&self, presented: &[u8]) -> Option<Refusal> {
        if !bool::from(presented.ct_eq(self.token.as_bytes())) {
            return None;
        }
        *self.refusal.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refuse(&self, refusal: Refusal) {
        *self.refusal.lock().unwrap_or_else(PoisonError::into_inner) = Some(refusal);
    }

    /// Asks the guard to read nothing more from this connection (its next read is the end of
    /// the stream): the answer now being written closes it, and what the client still sends
    /// (the rest of an over-long body) is never read.
    pub fn stop_reading(&self) {
        self.stop_reading.store(true, Ordering::Release);
    }

    fn reading_stopped(&self) -> bool {
        self.stop_reading.load(Ordering::Acquire)
    }
}

/// The header a stand-in request carries its token in; any other request carrying it is
/// refused.
pub const REFUSAL_HEADER: &str = "x-bulwark-refusal";

enum Proto {
    Http1(Box<h1::Reader>),
    Http2(Box<h2::Frames>),
}

/// A connection's stream with its guard.
pub struct Guarded<T> {
    io: T,
    conn: Arc<EdgeConn>,
    proto: Proto,
}

impl<T> Guarded<T> {
    /// An HTTP/1 connection.
    pub fn http1(io: T, limits: EdgeLimits, head_timeout: Duration) -> Self {
        Self {
            io,
            conn: EdgeConn::new(limits, head_timeout),
            proto: Proto::Http1(Box::new(h1::Reader::new(limits, head_timeout))),
        }
    }

    /// An HTTP/2 connection (TLS with ALPN `h2`).
    pub fn http2(io: T, limits: EdgeLimits, head_timeout: Duration) -> Self {
        Self {
            io,
            conn: EdgeConn::new(limits, head_timeout),
            proto: Proto::Http2(Box::new(h2::Frames::new(limits))),
        }
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// The shared state, for the connection's data.
    #[must_use]
    pub fn conn(&self) -> Arc<EdgeConn> {
        self.conn.clone()
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.proto {
            Proto::Http1(reader) => reader.poll_read(&mut this.io, &this.conn, cx, buf),
            Proto::Http2(frames) => frames.poll_read(&mut this.io, cx, buf),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.proto {
            Proto::Http1(_) => Pin::new(&mut this.io).poll_write(cx, buf),
            Proto::Http2(frames) => frames.poll_write(&mut this.io, cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.proto {
            Proto::Http1(_) => Pin::new(&mut this.io).poll_write_vectored(cx, bufs),
            Proto::Http2(frames) => {
                let buf = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &**b);
                frames.poll_write(&mut this.io, cx, buf)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.proto {
            Proto::Http1(_) => self.io.is_write_vectored(),
            Proto::Http2(_) => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.proto {
            Proto::Http1(_) => Pin::new(&mut this.io).poll_flush(cx),
            Proto::Http2(frames) => frames.poll_flush(&mut this.io, cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.proto {
            Proto::Http1(_) => Pin::new(&mut this.io).poll_shutdown(cx),
            Proto::Http2(frames) => frames.poll_shutdown(&mut this.io, cx),
        }
    }
}
