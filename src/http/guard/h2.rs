//! The HTTP/2 guard. actix-http 3.20 builds its `h2` server with window sizes only: no
//! `SETTINGS_MAX_CONCURRENT_STREAMS` is advertised (h2 then accepts any number of streams), and
//! h2 0.3 answers every SETTINGS frame with an ACK, however many come. So the frames are
//! followed here, both ways:
//!
//! - out: the server's first SETTINGS frame gains `SETTINGS_MAX_CONCURRENT_STREAMS` and
//!   `SETTINGS_MAX_HEADER_LIST_SIZE` (`[server] http2_max_concurrent_streams`,
//!   `max_head_bytes`); `END_STREAM` and `RST_STREAM` close streams;
//! - in: each new client stream counts against the advertised bound (four times the bound
//!   until the client has acknowledged the settings, since it may open streams before it reads
//!   them), and control frames (SETTINGS, PING, PRIORITY, WINDOW_UPDATE, RST_STREAM, empty
//!   DATA, unknown types) spend a per-connection budget (`http2_max_control_frames_per_second`,
//!   burst of ten seconds' worth).
//!
//! A client past either gets GOAWAY with `ENHANCE_YOUR_CALM` and the connection is closed; the
//! frame that crossed the line never reaches h2.

use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::EdgeLimits;

const PREFACE_LEN: usize = 24;
const HEADER_LEN: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const FLAG_ACK: u8 = 0x1;
const FLAG_END_STREAM: u8 = 0x1;

const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Why a connection was ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abuse {
    /// More streams open than advertised.
    Streams,
    /// Control frames over the budget.
    ControlFlood,
}

impl Abuse {
    fn as_str(self) -> &'static str {
        match self {
            Self::Streams => "streams",
            Self::ControlFlood => "control_flood",
        }
    }
}

/// A frame header being collected, and the payload bytes of the current frame still to pass.
#[derive(Default)]
struct Framing {
    header: [u8; HEADER_LEN],
    have: usize,
    skip: u64,
}

struct Frame {
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
}

fn parse_header(h: &[u8; HEADER_LEN]) -> Frame {
    Frame {
        len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
        kind: h[3],
        flags: h[4],
        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
    }
}

/// The HTTP/2 frame accounting of one connection.
pub struct Frames {
    limits: EdgeLimits,
    // Inbound.
    preface_left: usize,
    inbound: Framing,
    open: HashSet<u32>,
    highest: u32,
    settings_acked: bool,
    tokens: f64,
    refilled: Instant,
    abuse: Option<Abuse>,
    // Outbound.
    outbound: Framing,
    /// The server's first frame (its SETTINGS), held until complete to be extended.
    first: Option<Vec<u8>>,
    out: Vec<u8>,
    written: usize,
    goaway_sent: bool,
}

impl Frames {
    #[must_use]
    pub fn new(limits: EdgeLimits) -> Self {
        Self {
            limits,
            preface_left: PREFACE_LEN,
            inbound: Framing::default(),
            open: HashSet::new(),
            highest: 0,
            settings_acked: false,
            tokens: Self::burst(&limits),
            refilled: Instant::now(),
            abuse: None,
            outbound: Framing::default(),
            first: Some(Vec::new()),
            out: Vec::new(),
            written: 0,
            goaway_sent: false,
        }
    }

    fn burst(limits: &EdgeLimits) -> f64 {
        f64::from(limits.http2_max_control_frames_per_second) * 10.0
    }

    /// Spends one control-frame token; false once the budget is gone.
    fn spend(&mut self) -> bool {
        let now = Instant::now();
        let rate = f64::from(self.limits.http2_max_control_frames_per_second);
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * rate).min(Self::burst(&self.limits)) - 1.0;
        self.tokens >= 0.0
    }

    fn stream_bound(&self) -> usize {
        let bound = self.limits.http2_max_concurrent_streams as usize;
        if self.settings_acked {
            bound
        } else {
            bound.saturating_mul(4)
        }
    }

    /// Follows one inbound frame header; an abuse ends the connection.
    fn inbound_frame(&mut self, f: &Frame) -> Result<(), Abuse> {
        let control = match f.kind {
            DATA => f.len == 0 && f.flags & FLAG_END_STREAM == 0,
            HEADERS => {
                if f.stream % 2 == 1 && f.stream > self.highest {
                    self.highest = f.stream;
                    self.open.insert(f.stream);
                    if self.open.len() > self.stream_bound() {
                        return Err(Abuse::Streams);
                    }
                }
                false
            }
            RST_STREAM => {
                self.open.remove(&f.stream);
                true
            }
            SETTINGS if f.flags & FLAG_ACK != 0 => {
                self.settings_acked = true;
                false
            }
            PRIORITY | SETTINGS | PING | WINDOW_UPDATE => true,
            PUSH_PROMISE | GOAWAY | CONTINUATION => false,
            _ => true,
        };
        if control && !self.spend() {
            return Err(Abuse::ControlFlood);
        }
        Ok(())
    }

    /// Scans bytes read from the client. On abuse, returns how many of them may pass: those
    /// before the offending frame.
    fn scan_inbound(&mut self, input: &[u8]) -> Result<(), (usize, Abuse)> {
        let mut i = 0;
        let skip = self.preface_left.min(input.len());
        self.preface_left -= skip;
        i += skip;
        while i < input.len() {
            if self.inbound.skip > 0 {
                let take = usize::try_from(self.inbound.skip)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - i);
                self.inbound.skip -= take as u64;
                i += take;
                continue;
            }
            let start = i;
            let take = (HEADER_LEN - self.inbound.have).min(input.len() - i);
            self.inbound.header[self.inbound.have..self.inbound.have + take]
                .copy_from_slice(&input[i..i + take]);
            self.inbound.have += take;
            i += take;
            if self.inbound.have < HEADER_LEN {
                break;
            }
            self.inbound.have = 0;
            let frame = parse_header(&self.inbound.header);
            self.inbound.skip = u64::from(frame.len);
            if let Err(abuse) = self.inbound_frame(&frame) {
                // The part of the header read before this chunk has passed already; the
                // frame is incomplete to h2 and never acted on.
                return Err((start, abuse));
            }
        }
        Ok(())
    }

    /// Follows the server's bytes into `out`, extending its first SETTINGS frame.
    fn push_outbound(&mut self, mut input: &[u8]) {
        while let Some(first) = &mut self.first {
            if input.is_empty() {
                return;
            }
            let payload = |f: &[u8]| match f {
                [a, b, c, ..] => u32::from_be_bytes([0, *a, *b, *c]) as usize,
                _ => 0,
            };
            let want = if first.len() < HEADER_LEN {
                HEADER_LEN - first.len()
            } else {
                HEADER_LEN + payload(first) - first.len()
            };
            let take = want.min(input.len());
            first.extend_from_slice(&input[..take]);
            input = &input[take..];
            if first.len() < HEADER_LEN || first.len() < HEADER_LEN + payload(first) {
                continue;
            }
            let mut frame = std::mem::take(first);
            self.first = None;
            if frame[3] == SETTINGS && frame[4] & FLAG_ACK == 0 {
                let len = payload(&frame);
                let mut extra = Vec::with_capacity(12);
                extra.extend_from_slice(&SETTINGS_MAX_CONCURRENT_STREAMS.to_be_bytes());
                extra.extend_from_slice(&self.limits.http2_max_concurrent_streams.to_be_bytes());
                extra.extend_from_slice(&SETTINGS_MAX_HEADER_LIST_SIZE.to_be_bytes());
                let list = u32::try_from(self.limits.max_head_bytes).unwrap_or(u32::MAX);
                extra.extend_from_slice(&list.to_be_bytes());
                frame.extend_from_slice(&extra);
                let new_len = u32::try_from(len + extra.len()).unwrap_or(0).to_be_bytes();
                frame[..3].copy_from_slice(&new_len[1..]);
            }
            self.out.extend_from_slice(&frame);
        }
        while !input.is_empty() {
            if self.outbound.skip > 0 {
                let take = usize::try_from(self.outbound.skip)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                self.out.extend_from_slice(&input[..take]);
                self.outbound.skip -= take as u64;
                input = &input[take..];
                continue;
            }
            let take = (HEADER_LEN - self.outbound.have).min(input.len());
            self.outbound.header[self.outbound.have..self.outbound.have + take]
                .copy_from_slice(&input[..take]);
            self.out.extend_from_slice(&input[..take]);
            self.outbound.have += take;
            input = &input[take..];
            if self.outbound.have == HEADER_LEN {
                self.outbound.have = 0;
                let f = parse_header(&self.outbound.header);
                self.outbound.skip = u64::from(f.len);
                let ends = match f.kind {
                    DATA | HEADERS => f.flags & FLAG_END_STREAM != 0,
                    RST_STREAM => true,
                    _ => false,
                };
                if ends {
                    self.open.remove(&f.stream);
                }
            }
        }
    }

    fn at_frame_boundary(&self) -> bool {
        self.first.is_none() && self.outbound.have == 0 && self.outbound.skip == 0
    }

    fn queue_goaway(&mut self, abuse: Abuse) {
        let mut frame = Vec::with_capacity(HEADER_LEN + 8);
        frame.extend_from_slice(&[0, 0, 8, GOAWAY, 0, 0, 0, 0, 0]);
        frame.extend_from_slice(&self.highest.to_be_bytes());
        frame.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        self.out.extend_from_slice(&frame);
        self.goaway_sent = true;
        metrics::counter!(crate::metrics::HTTP2_GOAWAYS, "reason" => abuse.as_str()).increment(1);
        tracing::info!(reason = abuse.as_str(), "HTTP/2 connection ended (GOAWAY)");
    }

    fn poll_drain<T: AsyncWrite + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            match Pin::new(&mut *io).poll_write(cx, &self.out[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.out.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// After an abuse: GOAWAY (at a frame boundary of the server's output), flush, close, and
    /// an error to h2 so actix-http drops the connection.
    fn poll_close<T: AsyncWrite + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
        abuse: Abuse,
    ) -> Poll<io::Error> {
        if !self.goaway_sent {
            if self.at_frame_boundary() {
                self.queue_goaway(abuse);
            } else {
                // Mid-frame there is no room for a GOAWAY: the connection just closes.
                self.goaway_sent = true;
                metrics::counter!(crate::metrics::HTTP2_GOAWAYS, "reason" => abuse.as_str())
                    .increment(1);
            }
        }
        match self.poll_drain(io, cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(())) => {
                if Pin::new(&mut *io).poll_flush(cx).is_pending() {
                    return Poll::Pending;
                }
                if Pin::new(&mut *io).poll_shutdown(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            Poll::Ready(Err(_)) => {}
        }
        Poll::Ready(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "HTTP/2 client ended for abuse",
        ))
    }

    pub(super) fn poll_read<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(abuse) = self.abuse {
            return self.poll_close(io, cx, abuse).map(Err);
        }
        let before = out.filled().len();
        match Pin::new(&mut *io).poll_read(cx, out) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let filled = out.filled().len();
        let fresh = out
            .filled()
            .get(before..filled)
            .unwrap_or_default()
            .to_vec();
        if let Err((pass, abuse)) = self.scan_inbound(&fresh) {
            self.abuse = Some(abuse);
            out.set_filled(before + pass);
            if pass == 0 {
                return self.poll_close(io, cx, abuse).map(Err);
            }
        }
        Poll::Ready(Ok(()))
    }

    pub(super) fn poll_write<T: AsyncWrite + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(abuse) = self.abuse {
            return self.poll_close(io, cx, abuse).map(Err);
        }
        match self.poll_drain(io, cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        self.push_outbound(buf);
        // Start the write now; what the socket does not take waits for the next call or flush.
        if let Poll::Ready(Err(e)) = self.poll_drain(io, cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    pub(super) fn poll_flush<T: AsyncWrite + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        match self.poll_drain(io, cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut *io).poll_flush(cx),
            other => other,
        }
    }

    pub(super) fn poll_shutdown<T: AsyncWrite + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        match self.poll_drain(io, cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut *io).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> EdgeLimits {
        EdgeLimits {
            http2_max_concurrent_streams: 2,
            http2_max_control_frames_per_second: 10,
            ..EdgeLimits::default()
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn preface() -> Vec<u8> {
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()
    }

    #[test]
    fn the_first_settings_frame_advertises_the_stream_and_header_bounds() {
        let mut f = Frames::new(limits());
        let settings = frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]);
        // Written in two pieces, followed by another frame.
        f.push_outbound(&settings[..5]);
        assert!(f.out.is_empty(), "held until complete");
        let mut rest = settings[5..].to_vec();
        rest.extend(frame(PING, FLAG_ACK, 0, &[0; 8]));
        f.push_outbound(&rest);
        let out = f.out.clone();
        assert_eq!(&out[..3], &[0, 0, 18]);
        assert_eq!(out[3], SETTINGS);
        let params = &out[9..27];
        assert_eq!(&params[..6], &[0, 4, 0, 1, 0, 0]);
        assert_eq!(&params[6..12], &[0, 3, 0, 0, 0, 2]);
        assert_eq!(&params[12..14], &[0, 6]);
        assert_eq!(&out[27..], &frame(PING, FLAG_ACK, 0, &[0; 8])[..]);
    }

    #[test]
    fn a_settings_flood_is_cut_before_the_frame_over_the_budget() {
        let mut f = Frames::new(limits());
        let mut input = preface();
        for _ in 0..200 {
            input.extend(frame(SETTINGS, 0, 0, &[]));
        }
        let err = f.scan_inbound(&input).unwrap_err();
        assert_eq!(err.1, Abuse::ControlFlood);
        // The burst (10 s × 10/s) passes, the next is cut at its start.
        assert_eq!(err.0, PREFACE_LEN + 100 * HEADER_LEN);
    }

    #[test]
    fn streams_over_the_advertised_bound_end_the_connection_once_acknowledged() {
        let mut f = Frames::new(limits());
        let mut input = preface();
        input.extend(frame(SETTINGS, FLAG_ACK, 0, &[]));
        for id in [1u32, 3] {
            input.extend(frame(HEADERS, 0x4, id, &[0x82]));
        }
        f.scan_inbound(&input).unwrap();
        // The server finishes stream 1: a new stream fits again.
        f.push_outbound(&frame(SETTINGS, 0, 0, &[]));
        f.push_outbound(&frame(HEADERS, 0x4 | FLAG_END_STREAM, 1, &[0x88]));
        f.scan_inbound(&frame(HEADERS, 0x4, 5, &[0x82])).unwrap();
        let err = f
            .scan_inbound(&frame(HEADERS, 0x4, 7, &[0x82]))
            .unwrap_err();
        assert_eq!(err, (0, Abuse::Streams));
    }

    #[test]
    fn before_the_acknowledgement_four_times_the_bound_is_tolerated() {
        let mut f = Frames::new(limits());
        let mut input = preface();
        for id in 0..8u32 {
            input.extend(frame(HEADERS, 0x4, id * 2 + 1, &[0x82]));
        }
        f.scan_inbound(&input).unwrap();
        assert!(f.scan_inbound(&frame(HEADERS, 0x4, 17, &[0x82])).is_err());
    }
}
