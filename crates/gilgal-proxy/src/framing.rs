//! Request-smuggling detector: follows HTTP/1.1 message framing on the raw client byte stream.
//!
//! hyper already resolves ambiguous framing safely (Transfer-Encoding wins over Content-Length,
//! duplicate equal lengths are merged) but it hides the ambiguity from the service, and we want
//! such requests *rejected*. This wrapper re-reads each request head's framing fields as the
//! bytes go by (skipping bodies by their framing) and raises a per-connection flag when a head
//! carries both Content-Length and Transfer-Encoding, or several Content-Length fields. HTTP/2
//! and upgraded connections are not scanned.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::ConnContext;

/// Largest head (or chunk-size / trailer line) buffered while it arrives in pieces.
const MAX_PENDING: usize = 128 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Fixed(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkCrlf(u8),
    /// In the trailer section of a chunked body, read byte by byte the way hyper does (lines
    /// end with CRLF only; an empty line ends the section).
    Trailers(TrailerAt),
    /// No longer followed: the stream is not (or no longer) framed HTTP/1.1 as far as this
    /// scanner can tell (HTTP/2, or a head hyper rejects and closes the connection over).
    Passthrough,
    /// A CONNECT or `Upgrade` request was seen: what follows may not be HTTP/1.1, so it is
    /// not followed. Unless the answer switches protocols, the connection is closed after it
    /// (see `ConnActivity::upgrade_asked`), so no request goes unscanned.
    Tunnel,
}

/// Where the scanner is in a trailer section (the states of hyper's chunked decoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrailerAt {
    /// At the start of a line: CR begins the end of the section, anything else a field.
    LineStart,
    /// After a CR at the start of a line: LF ends the section.
    EndLf,
    /// Inside a trailer field line: CR begins its end.
    InLine,
    /// After a CR inside a field line: LF ends the line.
    LineLf,
}

/// Incremental HTTP/1.1 framing follower.
#[derive(Debug)]
pub(crate) struct Scanner {
    state: State,
    pending: Vec<u8>,
    started: bool,
    /// The stream began with the HTTP/2 connection preface.
    http2: bool,
}

impl Default for Scanner {
    fn default() -> Self {
        Self {
            state: State::Head,
            pending: Vec::new(),
            started: false,
            http2: false,
        }
    }
}

impl Scanner {
    /// Feed bytes read from the client; returns true if an ambiguous request head was seen.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> bool {
        if !self.started && !data.is_empty() {
            self.started = true;
            if data.starts_with(b"PRI * HTTP/2.0") {
                self.state = State::Passthrough;
                self.http2 = true;
            }
        }
        while !data.is_empty() {
            match self.state {
                State::Passthrough | State::Tunnel => return false,
                State::Head => match self.head(data) {
                    HeadStep::NeedMore => return false,
                    HeadStep::Violation => {
                        self.state = State::Passthrough;
                        return true;
                    }
                    HeadStep::Consumed(n) => data = &data[n..],
                },
                State::Fixed(n) => {
                    let k = (data.len() as u64).min(n);
                    data = &data[k as usize..];
                    self.state = if n == k {
                        State::Head
                    } else {
                        State::Fixed(n - k)
                    };
                }
                State::ChunkData(n) => {
                    let k = (data.len() as u64).min(n);
                    data = &data[k as usize..];
                    self.state = if n == k {
                        State::ChunkCrlf(2)
                    } else {
                        State::ChunkData(n - k)
                    };
                }
                State::ChunkCrlf(left) => {
                    let k = data.len().min(usize::from(left));
                    data = &data[k..];
                    let left = left - k as u8;
                    self.state = if left == 0 {
                        State::ChunkSize
                    } else {
                        State::ChunkCrlf(left)
                    };
                }
                State::Trailers(mut at) => {
                    let mut used = 0;
                    for &b in data {
                        used += 1;
                        at = match (at, b) {
                            (TrailerAt::LineStart, b'\r') => TrailerAt::EndLf,
                            (TrailerAt::InLine, b'\r') => TrailerAt::LineLf,
                            (TrailerAt::LineStart | TrailerAt::InLine, _) => TrailerAt::InLine,
                            (TrailerAt::LineLf, b'\n') => TrailerAt::LineStart,
                            (TrailerAt::EndLf, b'\n') => {
                                self.state = State::Head;
                                break;
                            }
                            // hyper fails the body and closes the connection.
                            (TrailerAt::LineLf | TrailerAt::EndLf, _) => {
                                self.state = State::Passthrough;
                                return false;
                            }
                        };
                    }
                    if self.state != State::Head {
                        self.state = State::Trailers(at);
                    }
                    data = &data[used..];
                }
                State::ChunkSize => {
                    let Some(line_end) = data.iter().position(|b| *b == b'\n') else {
                        self.buffer(data);
                        return false;
                    };
                    self.pending.extend_from_slice(&data[..=line_end]);
                    data = &data[line_end + 1..];
                    let line = std::mem::take(&mut self.pending);
                    self.state = self.after_line(&line);
                    self.pending = line;
                    self.pending.clear();
                }
            }
        }
        false
    }

    fn buffer(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
        if self.pending.len() > MAX_PENDING {
            // hyper rejects heads this large itself; stop following the stream.
            self.state = State::Passthrough;
            self.pending = Vec::new();
        }
    }

    fn after_line(&self, line: &[u8]) -> State {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let size = text.split(|b| *b == b';').next().unwrap_or(b"");
        let size = std::str::from_utf8(size).ok().map(str::trim);
        match size.and_then(|s| u64::from_str_radix(s, 16).ok()) {
            Some(0) => State::Trailers(TrailerAt::LineStart),
            Some(n) => State::ChunkData(n),
            None => State::Passthrough,
        }
    }

    fn head(&mut self, data: &[u8]) -> HeadStep {
        // Blank lines between pipelined requests are allowed and skipped.
        if self.pending.is_empty() {
            let skip = data
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            if skip > 0 {
                return HeadStep::Consumed(skip);
            }
        }
        let buffered = self.pending.len();
        let parsed = if buffered == 0 {
            inspect_head(data)
        } else {
            self.pending.extend_from_slice(data);
            inspect_head(&self.pending)
        };
        match parsed {
            Parsed::Partial => {
                if buffered == 0 {
                    self.buffer(data);
                } else if self.pending.len() > MAX_PENDING {
                    self.state = State::Passthrough;
                    self.pending = Vec::new();
                }
                HeadStep::NeedMore
            }
            Parsed::Invalid => {
                self.state = State::Passthrough;
                self.pending = Vec::new();
                HeadStep::Consumed(data.len())
            }
            Parsed::Ambiguous => HeadStep::Violation,
            Parsed::Complete { len, next } => {
                self.pending.clear();
                self.state = next;
                HeadStep::Consumed(len - buffered)
            }
        }
    }
}

enum HeadStep {
    NeedMore,
    Violation,
    Consumed(usize),
}

enum Parsed {
    Partial,
    Invalid,
    Ambiguous,
    Complete { len: usize, next: State },
}

/// Find the end of a request head and the fields that frame its body, one line at a time.
///
/// Only the framing fields matter here, so the head is not parsed field by field (httparse
/// would validate every byte, as hyper does right after): lines are found with `memchr` and
/// only those starting like `Content-Length:`, `Transfer-Encoding:` or `Upgrade:` are read. A
/// head hyper would reject ends the connection anyway, so what this makes of one is moot.
fn inspect_head(bytes: &[u8]) -> Parsed {
    let mut content_lengths = 0usize;
    let mut length = 0u64;
    let mut chunked = false;
    let mut has_te = false;
    let mut upgrade = bytes.starts_with(b"CONNECT ");
    let mut lines = memchr::memchr_iter(b'\n', bytes);
    // The request line.
    let Some(mut start) = lines.next().map(|end| end + 1) else {
        return Parsed::Partial;
    };
    let len = loop {
        let Some(end) = lines.next() else {
            return Parsed::Partial;
        };
        let line = &bytes[start..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        start = end + 1;
        if line.is_empty() {
            break start;
        }
        if let Some(value) = field_value(line, b"content-length") {
            content_lengths += 1;
            match std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
            {
                Some(n) => length = n,
                None => return Parsed::Invalid,
            }
        } else if let Some(value) = field_value(line, b"transfer-encoding") {
            has_te = true;
            chunked = value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if field_value(line, b"upgrade").is_some() {
            upgrade = true;
        }
    };
    if content_lengths > 1 || (has_te && content_lengths > 0) {
        return Parsed::Ambiguous;
    }
    let next = if upgrade {
        State::Tunnel
    } else if has_te && chunked {
        State::ChunkSize
    } else if has_te {
        State::Passthrough
    } else if length > 0 {
        State::Fixed(length)
    } else {
        State::Head
    };
    Parsed::Complete { len, next }
}

/// The value of header line `line` if its field name is `name` (lowercase, matched without
/// regard to case; no space is allowed before the colon, as in RFC 9112).
fn field_value<'l>(line: &'l [u8], name: &[u8]) -> Option<&'l [u8]> {
    let (field, rest) = line.split_at_checked(name.len())?;
    let value = rest.strip_prefix(b":")?;
    field.eq_ignore_ascii_case(name).then_some(value)
}

impl Scanner {
    /// The bytes fed so far end at a message boundary (no partial head or body), on a stream
    /// that is still HTTP/1 framed.
    fn at_boundary(&self) -> bool {
        self.state == State::Head && self.pending.is_empty()
    }
}

/// Waiting for a connection to become readable without reading (and so without a buffer).
pub(crate) trait ReadReady {
    /// Ready once the socket has bytes (or an EOF or error) to read.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ReadReady for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

impl ReadReady for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    /// The TCP socket's readiness: a parked connection's last read drained rustls' plaintext
    /// (it returned pending), so anything new arrives on the socket first.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }
}

pin_project! {
    /// Client stream wrapper that feeds every read into a [`Scanner`] and raises the
    /// connection's `smuggling` flag when a request with ambiguous framing arrives (and its
    /// `http2` flag when the client speaks HTTP/2). It also notes what hyper last did with the
    /// stream ([`crate::body::IoState`]) so an idle connection can be parked, and replays bytes
    /// read before the current hyper connection existed.
    pub(crate) struct FramingGuard<I> {
        #[pin]
        inner: I,
        scanner: Scanner,
        conn: Arc<ConnContext>,
        // Read already (and scanned), handed to hyper before anything else.
        replay: Bytes,
    }
}

impl<I> FramingGuard<I> {
    pub(crate) fn new(inner: I, conn: Arc<ConnContext>) -> Self {
        Self {
            inner,
            scanner: Scanner::default(),
            conn,
            replay: Bytes::new(),
        }
    }

    /// Bytes hyper should read first (the protocol sniff, or what a parked hyper connection
    /// had read but not parsed). A copy, so hyper's read buffer is freed.
    pub(crate) fn set_replay(&mut self, bytes: &[u8]) {
        self.replay = Bytes::copy_from_slice(bytes);
    }

    pub(crate) fn has_replay(&self) -> bool {
        !self.replay.is_empty()
    }

    /// Free what the scanner buffered (nothing is partial when a connection parks).
    pub(crate) fn release(&mut self) {
        if self.scanner.pending.is_empty() {
            self.scanner.pending = Vec::new();
        }
    }
}

impl<I: ReadReady> FramingGuard<I> {
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_read_ready(cx)
    }
}

impl<I: AsyncRead> AsyncRead for FramingGuard<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let io = &this.conn.activity.io;
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            if this.replay.is_empty() {
                // Free the copy rather than keep an empty view of it.
                *this.replay = Bytes::new();
            }
            io.read_blocked.store(false, Ordering::Relaxed);
            io.parking.store(false, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) => {
                io.read_blocked.store(false, Ordering::Relaxed);
                let data = &buf.filled()[before..];
                if !data.is_empty() {
                    io.parking.store(false, Ordering::Relaxed);
                }
                if !matches!(this.scanner.state, State::Passthrough | State::Tunnel) {
                    if this.scanner.feed(data) {
                        this.conn.activity.smuggling.store(true, Ordering::Release);
                    }
                    if this.scanner.state == State::Tunnel {
                        this.conn
                            .activity
                            .upgrade_asked
                            .store(true, Ordering::Release);
                    }
                    if this.scanner.http2 {
                        this.conn.activity.http2.store(true, Ordering::Relaxed);
                    }
                    io.mid_message
                        .store(!this.scanner.at_boundary(), Ordering::Relaxed);
                }
            }
            Poll::Pending => io.read_blocked.store(true, Ordering::Relaxed),
            Poll::Ready(Err(_)) => {}
        }
        polled
    }
}

impl<I: AsyncWrite> AsyncWrite for FramingGuard<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let io = &this.conn.activity.io;
        io.write_pending.store(true, Ordering::Relaxed);
        io.parking.store(false, Ordering::Relaxed);
        this.inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let polled = this.inner.poll_flush(cx);
        if let Poll::Ready(Ok(())) = polled {
            this.conn
                .activity
                .io
                .write_pending
                .store(false, Ordering::Relaxed);
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let io = &this.conn.activity.io;
        if io.parking.load(Ordering::Relaxed) {
            // hyper closed an idle connection because we asked it to: keep the socket.
            io.swallowed.store(true, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        io.shut.store(true, Ordering::Relaxed);
        this.inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let io = &this.conn.activity.io;
        io.write_pending.store(true, Ordering::Relaxed);
        io.parking.store(false, Ordering::Relaxed);
        this.inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::Scanner;

    fn scan_in_pieces(input: &[u8], piece: usize) -> bool {
        let mut s = Scanner::default();
        input.chunks(piece).any(|c| s.feed(c))
    }

    #[test]
    fn follows_framing_and_flags_ambiguity() {
        let clean = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\nX-T: 1\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n";
        let smuggled = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let dup = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx";
        // A body that merely *contains* the words is not a violation.
        let quoted = b"POST / HTTP/1.1\r\nContent-Length: 62\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n";
        for piece in [1, 3, 7, 64, 4096] {
            assert!(
                !scan_in_pieces(clean, piece),
                "clean flagged at piece {piece}"
            );
            assert!(
                scan_in_pieces(smuggled, piece),
                "smuggled missed at piece {piece}"
            );
            assert!(
                scan_in_pieces(dup, piece),
                "duplicate missed at piece {piece}"
            );
            assert!(
                !scan_in_pieces(&quoted[..], piece),
                "body content flagged at piece {piece}"
            );
        }
    }

    #[test]
    fn only_exact_field_names_count_whatever_their_case() {
        // Lookalike names frame nothing: the body here is 0 bytes, so the next head is checked.
        let lookalikes = b"GET / HTTP/1.1\r\nX-Content-Length: 9\r\nContent-Length-X: 9\r\n\
                           Transfer-Encodings: chunked\r\n\r\n\
                           POST / HTTP/1.1\r\ncOnTeNt-LeNgTh:\t1\r\nTRANSFER-ENCODING: chunked\r\n\r\n";
        // Bare LF line endings end lines and the head too.
        let bare_lf = b"POST / HTTP/1.1\nContent-Length: 2\n\nokGET / HTTP/1.1\nHost: x\n\n";
        // After a CONNECT or an upgrade the stream is no longer HTTP/1: nothing is flagged.
        let tunnel = b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n\
                       POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        let upgraded = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\
                         POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        // hyper ends a trailer section only at CRLF CRLF: the bare LF is field content, the
        // "request" after it a trailer field, and the POST after that is the next head.
        let trailers = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n\
                         GET /x HTTP/1.1\r\nContent-Length: 68\r\n\r\n\
                         POST /b HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        for piece in [1, 5, 4096] {
            assert!(
                scan_in_pieces(trailers, piece),
                "head after trailers missed at {piece}"
            );
            assert!(
                scan_in_pieces(lookalikes, piece),
                "second head missed at {piece}"
            );
            assert!(
                !scan_in_pieces(bare_lf, piece),
                "bare LF flagged at {piece}"
            );
            assert!(
                !scan_in_pieces(tunnel, piece),
                "tunnel bytes flagged at {piece}"
            );
            assert!(
                !scan_in_pieces(upgraded, piece),
                "upgraded bytes flagged at {piece}"
            );
        }
    }
}
