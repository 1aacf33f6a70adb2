//! The HTTP/1 guard: request heads are collected here and released to actix-http only once
//! complete and within bounds; bodies pass through as they come, their framing followed
//! (`Content-Length` or `chunked`) so the next head is found. A refused head never reaches
//! actix-http: it is replaced by a stand-in request to the edge, the connection's last, which
//! the edge middleware answers with the OJS envelope before the connection closes.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Sleep;

use super::{EdgeConn, EdgeLimits, Refusal, REFUSAL_HEADER};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 8 * 1024;
/// Longest chunk-size line (size and extensions).
const MAX_CHUNK_LINE: usize = 1024;
/// Room for the method, spaces and version around the request-target on the request line.
const REQUEST_LINE_SLACK: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// The chunk-size line: length so far, the size, hex digits seen, extension started.
    Size {
        len: usize,
        size: u64,
        digits: usize,
        ext: bool,
    },
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd {
        seen_cr: bool,
    },
    /// Trailer fields after the last chunk: the current line's length, all of them so far.
    Trailer {
        len: usize,
        total: usize,
    },
}

const CHUNK_START: Chunk = Chunk::Size {
    len: 0,
    size: 0,
    digits: 0,
    ext: false,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Head,
    Fixed(u64),
    Chunked(Chunk),
    /// After an upgrade or CONNECT: actix-http reads the rest as one stream, and so do we.
    Passthrough,
}

/// Why scanning stopped.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stop {
    /// A head was refused.
    Refused(Refusal),
    /// A body's framing is broken: the stream ends there (actix-http sees an incomplete body).
    Body,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Done {
    No,
    /// The stand-in request was released; nothing more is read.
    Refused,
    /// The end of the stream.
    Eof,
}

/// The reading side of an HTTP/1 connection.
pub struct Reader {
    limits: EdgeLimits,
    head_timeout: Duration,
    state: State,
    /// The head being collected.
    head: Vec<u8>,
    line_start: usize,
    /// Complete lines of the head so far (the request line included).
    lines: usize,
    /// Bytes released to actix-http and not yet delivered.
    ready: Vec<u8>,
    delivered: usize,
    scratch: Vec<u8>,
    /// The head deadline: from the connection's start for its first request, from a head's
    /// first byte for later ones.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the first head's clock has started (at the first read).
    started: bool,
    done: Done,
}

impl Reader {
    #[must_use]
    pub fn new(limits: EdgeLimits, head_timeout: Duration) -> Self {
        Self {
            limits,
            head_timeout,
            state: State::Head,
            head: Vec::new(),
            line_start: 0,
            lines: 0,
            ready: Vec::new(),
            delivered: 0,
            scratch: Vec::new(),
            timer: None,
            started: false,
            done: Done::No,
        }
    }

    pub(super) fn poll_read<T: AsyncRead + Unpin>(
        &mut self,
        io: &mut T,
        conn: &EdgeConn,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.delivered < self.ready.len() {
                let n = out.remaining().min(self.ready.len() - self.delivered);
                out.put_slice(&self.ready[self.delivered..self.delivered + n]);
                self.delivered += n;
                if self.delivered == self.ready.len() {
                    self.ready.clear();
                    self.delivered = 0;
                }
                return Poll::Ready(Ok(()));
            }
            match self.done {
                // The stand-in's answer closes the connection; until then there is nothing
                // more to read (actix-http is woken by its own work).
                Done::Refused => return Poll::Pending,
                Done::Eof => return Poll::Ready(Ok(())),
                Done::No => {}
            }
            if conn.reading_stopped() {
                self.done = Done::Eof;
                continue;
            }
            if !self.started
                || (self.state == State::Head && !self.head.is_empty() && self.timer.is_none())
            {
                self.started = true;
                self.timer = Some(Box::pin(tokio::time::sleep(self.head_timeout)));
            }
            if let Some(timer) = &mut self.timer {
                if timer.as_mut().poll(cx).is_ready() {
                    self.timer = None;
                    self.refuse(conn, Refusal::HeadTimeout);
                    continue;
                }
            }
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.resize(READ_CHUNK, 0);
            let mut buf = ReadBuf::new(&mut scratch);
            let read = Pin::new(&mut *io).poll_read(cx, &mut buf);
            let n = buf.filled().len();
            let result = match read {
                Poll::Pending => {
                    self.scratch = scratch;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    self.scratch = scratch;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(())) if n == 0 => {
                    // A partial head is dropped: actix-http sees the end of the stream.
                    self.done = Done::Eof;
                    Ok(())
                }
                Poll::Ready(Ok(())) => self.feed(scratch.get(..n).unwrap_or_default()),
            };
            self.scratch = scratch;
            match result {
                Ok(()) => {}
                Err(Stop::Refused(refusal)) => self.refuse(conn, refusal),
                Err(Stop::Body) => self.done = Done::Eof,
            }
        }
    }

    /// Replaces everything from the refused head on with the stand-in request.
    fn refuse(&mut self, conn: &EdgeConn, refusal: Refusal) {
        conn.refuse(refusal);
        self.head.clear();
        self.ready.extend_from_slice(
            format!(
                "GET /.bulwark/refused HTTP/1.1\r\nhost: bulwark\r\nconnection: close\r\n\
                 {REFUSAL_HEADER}: {}\r\n\r\n",
                conn.token
            )
            .as_bytes(),
        );
        self.done = Done::Refused;
        metrics::counter!(crate::metrics::EDGE_REFUSALS, "reason" => refusal.reason()).increment(1);
    }

    /// Scans `input`, releasing what may pass into `ready`.
    pub(super) fn feed(&mut self, input: &[u8]) -> Result<(), Stop> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Head => {
                    let b = input[i];
                    i += 1;
                    self.head_byte(b)?;
                }
                State::Fixed(left) => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    self.ready.extend_from_slice(&input[i..i + take]);
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Fixed(left)
                    };
                }
                State::Chunked(Chunk::Data(left)) => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    self.ready.extend_from_slice(&input[i..i + take]);
                    i += take;
                    let left = left - take as u64;
                    self.state = State::Chunked(if left == 0 {
                        Chunk::DataEnd { seen_cr: false }
                    } else {
                        Chunk::Data(left)
                    });
                }
                State::Chunked(chunk) => {
                    let b = input[i];
                    i += 1;
                    self.ready.push(b);
                    self.state = self.chunk_byte(chunk, b)?;
                }
                State::Passthrough => {
                    self.ready.extend_from_slice(&input[i..]);
                    i = input.len();
                }
            }
        }
        Ok(())
    }

    fn head_byte(&mut self, b: u8) -> Result<(), Stop> {
        // RFC 9112 §2.2: empty lines before a request line are ignored.
        if self.head.is_empty() && (b == b'\r' || b == b'\n') {
            return Ok(());
        }
        self.head.push(b);
        let line_len = self.head.len() - self.line_start;
        if self.lines == 0 && line_len > self.limits.max_uri_bytes + REQUEST_LINE_SLACK {
            return Err(Stop::Refused(Refusal::UriTooLong));
        }
        if self.lines > 0 && line_len > self.limits.max_header_bytes + 4 {
            return Err(Stop::Refused(Refusal::HeaderTooLarge));
        }
        if self.head.len() > self.limits.max_head_bytes {
            return Err(Stop::Refused(Refusal::HeadTooLarge));
        }
        if b != b'\n' {
            return Ok(());
        }
        let line = &self.head[self.line_start..self.head.len() - 1];
        let empty = line.is_empty() || line == b"\r";
        if self.lines > 0 && empty {
            return self.complete_head();
        }
        self.lines += 1;
        if self.lines > self.limits.max_headers + 1 {
            return Err(Stop::Refused(Refusal::TooManyHeaders));
        }
        self.line_start = self.head.len();
        Ok(())
    }

    /// Checks a complete head and works out how its body is framed.
    fn complete_head(&mut self) -> Result<(), Stop> {
        let mut fields = vec![httparse::EMPTY_HEADER; self.limits.max_headers];
        let mut req = httparse::Request::new(&mut fields);
        let refused = |r| Err(Stop::Refused(r));
        match req.parse(&self.head) {
            Ok(httparse::Status::Complete(n)) if n == self.head.len() => {}
            Err(httparse::Error::TooManyHeaders) => return refused(Refusal::TooManyHeaders),
            _ => return refused(Refusal::MalformedHead),
        }
        if req
            .path
            .is_some_and(|p| p.len() > self.limits.max_uri_bytes)
        {
            return refused(Refusal::UriTooLong);
        }
        let mut length: Option<u64> = None;
        let mut lengths = 0;
        let mut codings = 0;
        let mut chunked = false;
        let mut upgrade = req.method == Some("CONNECT");
        for field in req.headers.iter() {
            if field.name.eq_ignore_ascii_case("content-length") {
                lengths += 1;
                let text = std::str::from_utf8(field.value).unwrap_or("").trim();
                if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
                    return refused(Refusal::AmbiguousLength);
                }
                length = text.parse().ok();
            } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
                codings += 1;
                let text = std::str::from_utf8(field.value).unwrap_or("").trim();
                chunked = text.eq_ignore_ascii_case("chunked");
                if !chunked {
                    return refused(Refusal::TransferCoding);
                }
            } else if field.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        if lengths > 1 || (lengths == 1 && codings > 0) || codings > 1 {
            return refused(Refusal::AmbiguousLength);
        }
        if codings == 1 && req.version != Some(1) {
            return refused(Refusal::AmbiguousLength);
        }
        self.ready.append(&mut self.head);
        self.line_start = 0;
        self.lines = 0;
        self.timer = None;
        self.state = if upgrade {
            State::Passthrough
        } else if chunked {
            State::Chunked(CHUNK_START)
        } else {
            match length {
                Some(n) if n > 0 => State::Fixed(n),
                _ => State::Head,
            }
        };
        Ok(())
    }

    fn chunk_byte(&self, chunk: Chunk, b: u8) -> Result<State, Stop> {
        let next = match chunk {
            Chunk::Size {
                len,
                size,
                digits,
                ext,
            } => {
                let len = len + 1;
                if len > MAX_CHUNK_LINE {
                    return Err(Stop::Body);
                }
                match b {
                    b'\n' if digits == 0 => return Err(Stop::Body),
                    b'\n' if size == 0 => Chunk::Trailer { len: 0, total: 0 },
                    b'\n' => Chunk::Data(size),
                    b'\r' => Chunk::Size {
                        len,
                        size,
                        digits,
                        ext,
                    },
                    _ if ext => Chunk::Size {
                        len,
                        size,
                        digits,
                        ext,
                    },
                    b';' | b' ' | b'\t' if digits > 0 => Chunk::Size {
                        len,
                        size,
                        digits,
                        ext: true,
                    },
                    _ => {
                        let digit = char::from(b).to_digit(16).ok_or(Stop::Body)?;
                        if digits >= 15 {
                            return Err(Stop::Body);
                        }
                        Chunk::Size {
                            len,
                            size: size * 16 + u64::from(digit),
                            digits: digits + 1,
                            ext,
                        }
                    }
                }
            }
            Chunk::Data(left) => Chunk::Data(left),
            Chunk::DataEnd { seen_cr } => match b {
                b'\r' if !seen_cr => Chunk::DataEnd { seen_cr: true },
                b'\n' => CHUNK_START,
                _ => return Err(Stop::Body),
            },
            Chunk::Trailer { len, total } => {
                let total = total + 1;
                if total > self.limits.max_head_bytes {
                    return Err(Stop::Body);
                }
                match b {
                    b'\n' if len == 0 => return Ok(State::Head),
                    b'\n' => Chunk::Trailer { len: 0, total },
                    b'\r' => Chunk::Trailer { len, total },
                    _ => Chunk::Trailer {
                        len: len + 1,
                        total,
                    },
                }
            }
        };
        Ok(State::Chunked(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> EdgeLimits {
        EdgeLimits {
            max_uri_bytes: 300,
            max_header_bytes: 300,
            max_head_bytes: 1000,
            max_headers: 10,
            ..EdgeLimits::default()
        }
    }

    fn reader() -> Reader {
        Reader::new(limits(), Duration::from_secs(10))
    }

    /// Feeds `input` in pieces of `step` bytes; the bytes released and how it stopped.
    fn scan(input: &[u8], step: usize) -> (Vec<u8>, Option<Stop>) {
        let mut r = reader();
        for piece in input.chunks(step) {
            if let Err(stop) = r.feed(piece) {
                return (r.ready, Some(stop));
            }
        }
        (r.ready, None)
    }

    fn refused(input: &[u8]) -> Option<Refusal> {
        for step in [1, 7, input.len()] {
            let (_, stop) = scan(input, step);
            let again = match stop {
                Some(Stop::Refused(r)) => Some(r),
                _ => None,
            };
            let (_, whole) = scan(input, input.len());
            assert_eq!(
                again,
                match whole {
                    Some(Stop::Refused(r)) => Some(r),
                    _ => None,
                },
                "the verdict must not depend on how the bytes arrive"
            );
        }
        match scan(input, input.len()).1 {
            Some(Stop::Refused(r)) => Some(r),
            _ => None,
        }
    }

    #[test]
    fn well_formed_pipelined_requests_pass_through_unchanged() {
        let input = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
                      POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                      3;ext=1\r\nabc\r\n0\r\nTrailer: t\r\n\r\n\
                      GET /c HTTP/1.1\r\nHost: x\r\n\r\n";
        for step in [1, 3, 64, input.len()] {
            let (out, stop) = scan(input, step);
            assert_eq!(stop, None);
            assert_eq!(out, input.to_vec(), "step {step}");
        }
    }

    #[test]
    fn a_head_is_held_back_until_it_is_complete() {
        let mut r = reader();
        r.feed(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        assert!(r.ready.is_empty());
        r.feed(b"\r\n").unwrap();
        assert_eq!(r.ready, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }

    #[test]
    fn oversized_targets_fields_and_heads_are_refused_by_kind() {
        let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(400));
        assert_eq!(refused(long_uri.as_bytes()), Some(Refusal::UriTooLong));
        // An unterminated request line is cut once it cannot be within the bound.
        let endless = format!("GET /{}", "a".repeat(10_000));
        assert_eq!(refused(endless.as_bytes()), Some(Refusal::UriTooLong));
        let long_field = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "b".repeat(400));
        assert_eq!(
            refused(long_field.as_bytes()),
            Some(Refusal::HeaderTooLarge)
        );
        let mut big_head = String::from("GET / HTTP/1.1\r\n");
        for i in 0..5 {
            big_head.push_str(&format!("X-{i}: {}\r\n", "c".repeat(250)));
        }
        big_head.push_str("\r\n");
        assert_eq!(refused(big_head.as_bytes()), Some(Refusal::HeadTooLarge));
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..11 {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(refused(many.as_bytes()), Some(Refusal::TooManyHeaders));
        // At the bounds, all pass.
        let at = format!(
            "GET /{} HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(299),
            "b".repeat(295)
        );
        assert_eq!(refused(at.as_bytes()), None);
    }

    #[test]
    fn bad_bytes_and_ambiguous_framing_are_refused() {
        for (input, want) in [
            (&b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"[..], Refusal::MalformedHead),
            (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", Refusal::MalformedHead),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Refusal::MalformedHead),
            (b"GET / HTTP/1.1\r\n folded: x\r\n\r\n", Refusal::MalformedHead),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                Refusal::AmbiguousLength,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                Refusal::AmbiguousLength,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
                Refusal::AmbiguousLength,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
                Refusal::AmbiguousLength,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Refusal::TransferCoding,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                Refusal::AmbiguousLength,
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                Refusal::AmbiguousLength,
            ),
        ] {
            assert_eq!(
                refused(input),
                Some(want),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn a_body_is_never_read_as_a_head_and_broken_chunks_end_the_stream() {
        // A body that looks like a head is body.
        let input = b"POST / HTTP/1.1\r\nContent-Length: 19\r\n\r\nGET /x HTTP/1.1\r\n\r\n";
        assert_eq!(scan(input, 1), (input.to_vec(), None));
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"1\r\nab\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            let mut input = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            input.extend_from_slice(bad);
            assert_eq!(scan(&input, 1).1, Some(Stop::Body), "{bad:?}");
        }
    }
}
