//! HTTP/1.1 wire format of the upstream side, without IO: the request head the proxy writes, the
//! response head it parses (with httparse) and how the response body is framed, a chunked-body
//! decoder, and the table of hop-by-hop fields (used for requests too). [`crate::exchange`]
//! drives these over pooled backend connections.
//!
//! Kept free of IO so every framing rule is a plain function over bytes, tested here.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// Longest response head accepted from a backend (status line and headers).
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Most headers accepted in one response head.
pub const MAX_RESPONSE_HEADERS: usize = 128;
/// Longest chunk-size line (with extensions) or trailer section accepted in a chunked body.
const MAX_CHUNK_META: usize = 16 * 1024;

pub(crate) static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one hop, never the end-to-end message (RFC 9110 §7.6.1); a header's
/// index here is its bit in a hop-by-hop mask.
pub(crate) fn hop_by_hop() -> [&'static HeaderName; 9] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
    ]
}

pub(crate) const HOP_CONNECTION: u16 = 1;

/// Bit of a (lowercase) header name in the hop-by-hop mask, 0 for end-to-end headers.
pub(crate) fn hop_bit(name: &str) -> u16 {
    match name {
        "connection" => HOP_CONNECTION,
        "keep-alive" => 1 << 1,
        "proxy-connection" => 1 << 2,
        "te" => 1 << 3,
        "trailer" => 1 << 4,
        "transfer-encoding" => 1 << 5,
        "upgrade" => 1 << 6,
        "proxy-authenticate" => 1 << 7,
        "proxy-authorization" => 1 << 8,
        _ => 0,
    }
}

/// Why a backend's response could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// The bytes are not an HTTP/1.x response head.
    #[error("invalid response head: {0}")]
    Head(&'static str),
    /// The head grew past [`MAX_RESPONSE_HEAD`] or [`MAX_RESPONSE_HEADERS`].
    #[error("response head too large")]
    HeadTooLarge,
    /// The body's framing headers are contradictory or malformed.
    #[error("invalid response framing: {0}")]
    Framing(&'static str),
    /// A chunked body is malformed.
    #[error("invalid chunked body: {0}")]
    Chunked(&'static str),
}

/// How the body of a response is delimited on the wire (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the backend closes the connection (the connection cannot be reused).
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    /// The end-to-end headers as received (`Content-Length` removed when `Transfer-Encoding`
    /// overrides it). Hop-by-hop headers are left out while parsing, except a `Connection`
    /// header naming other headers, which [`Self::connection_names_headers`] flags.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The backend allows another request on this connection after this response.
    pub keep_alive: bool,
    /// `headers` holds a `Connection` header listing options other than `keep-alive`: it and
    /// the headers it names must be removed before the response goes on.
    pub connection_names_headers: bool,
}

/// Append the request head for `method target` with `headers` to `out`, then the fields in
/// `set`, which replace any of the same name in `headers` (the forwarding headers: written
/// straight into the head instead of inserted into the map first). `chunked` adds
/// `transfer-encoding: chunked` (a body of unknown length). Names and values come from
/// `HeaderName`s and `HeaderValue`s, which cannot hold CR or LF, so nothing here can split
/// the head.
pub fn encode_request_head(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    set: &[(&HeaderName, &HeaderValue)],
    chunked: bool,
    out: &mut Vec<u8>,
) {
    let mut size = method.as_str().len() + target.len() + 16;
    for (name, value) in headers.iter().chain(set.iter().copied()) {
        size += name.as_str().len() + value.len() + 4;
    }
    out.reserve(size + 32);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut field = |name: &HeaderName, value: &HeaderValue| {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    for (name, value) in headers {
        if !set.iter().any(|(replaced, _)| *replaced == name) {
            field(name, value);
        }
    }
    for (name, value) in set {
        field(name, value);
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Reusable storage for [`parse_response_head`] (header names and value offsets while the
/// buffer is borrowed), kept per connection so parsing allocates nothing once warm.
#[derive(Debug, Default)]
pub struct HeadScratch(Vec<(HeaderName, usize, usize)>);

/// Parse a response head from the front of `buf`. `Ok(None)`: incomplete, read more. On
/// success the head's bytes are removed from `buf`, which then starts with the body; the
/// header values share the buffer's memory (no copy per header). Framing and keep-alive are
/// worked out in the same pass over the headers, not by looking them up afterwards.
pub fn parse_response_head(
    buf: &mut BytesMut,
    request_method: &Method,
    scratch: &mut HeadScratch,
) -> Result<Option<ResponseHead>, ResponseError> {
    let spans = &mut scratch.0;
    spans.clear();
    let mut facts = HeadFacts::default();
    let (len, code, version) = {
        let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_RESPONSE_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                return if buf.len() > MAX_RESPONSE_HEAD {
                    Err(ResponseError::HeadTooLarge)
                } else {
                    Ok(None)
                };
            }
            Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::HeadTooLarge),
            Err(e) => return Err(ResponseError::Head(parse_error(e))),
        };
        if len > MAX_RESPONSE_HEAD {
            return Err(ResponseError::HeadTooLarge);
        }
        // Values are cut out of the head's bytes once they are frozen; while httparse borrows
        // the buffer only their offsets are kept.
        let base = buf.as_ptr() as usize;
        for h in parsed.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| ResponseError::Head("invalid header name"))?;
            if facts.note(&name, h.value) == Keep::No {
                continue;
            }
            let start = h.value.as_ptr() as usize - base;
            spans.push((name, start, start + h.value.len()));
        }
        (len, parsed.code, parsed.version)
    };
    let code = code.ok_or(ResponseError::Head("no status code"))?;
    let status = StatusCode::from_u16(code).map_err(|_| ResponseError::Head("bad status code"))?;
    let version = match version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(ResponseError::Head("unsupported HTTP version")),
    };
    let framing = facts.framing(status, request_method)?;
    // With `Transfer-Encoding` deciding the framing, a `Content-Length` would mislead.
    let drop_length = facts.transfer_encoding.is_some() && framing != Framing::Empty;
    let keep_alive = framing != Framing::UntilClose
        && !facts.close
        && (version == Version::HTTP_11 || facts.keep_alive);
    let connection_names_headers = facts.connection_names_headers;
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(spans.len());
    for (name, start, end) in spans.drain(..) {
        if drop_length && name == header::CONTENT_LENGTH {
            continue;
        }
        // SAFETY: httparse accepted these bytes as a field value, so each is HTAB, SP..=`~`
        // or obs-text (0x80..=0xFF): exactly the bytes `HeaderValue` allows (hyper's server
        // builds its header values the same way). This holds because the parser runs with
        // the default config: obs-fold (which would leave CRLF inside a value) stays off.
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(start..end)) };
        headers.append(name, value);
    }
    Ok(Some(ResponseHead {
        status,
        headers,
        framing,
        keep_alive,
        connection_names_headers,
    }))
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

/// Whether a parsed header goes into the response's header map.
#[derive(PartialEq, Eq)]
enum Keep {
    Yes,
    No,
}

/// What the framing, keep-alive and hop-by-hop decisions need from a response's headers,
/// gathered as they are parsed.
#[derive(Default)]
struct HeadFacts<'h> {
    /// The last `Transfer-Encoding` value (only the last coding of the last one counts).
    transfer_encoding: Option<&'h [u8]>,
    /// The agreed `Content-Length`, or the first problem found with the `Content-Length`s.
    content_length: Option<Result<u64, &'static str>>,
    close: bool,
    keep_alive: bool,
    connection_names_headers: bool,
}

impl<'h> HeadFacts<'h> {
    /// Note one header; hop-by-hop headers are not kept, except a `Connection` header that
    /// names other headers (they must be removed too, wherever they are in the head).
    fn note(&mut self, name: &HeaderName, value: &'h [u8]) -> Keep {
        if *name == header::CONTENT_LENGTH {
            self.note_length(value);
            return Keep::Yes;
        }
        let bit = hop_bit(name.as_str());
        if bit == 0 {
            return Keep::Yes;
        }
        if *name == header::TRANSFER_ENCODING {
            self.transfer_encoding = Some(value);
        } else if bit == HOP_CONNECTION {
            let mut names_others = false;
            for token in value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                let keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                self.keep_alive |= keep_alive;
                self.close |= token.eq_ignore_ascii_case(b"close");
                names_others |= !keep_alive && !token.is_empty();
            }
            if names_others {
                self.connection_names_headers = true;
                return Keep::Yes;
            }
        }
        Keep::No
    }

    /// A list such as `42, 42` is allowed when every member agrees (RFC 9110 §8.6).
    fn note_length(&mut self, value: &[u8]) {
        if matches!(self.content_length, Some(Err(_))) {
            return;
        }
        for part in value.split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) || part.len() > 19 {
                self.content_length = Some(Err("malformed Content-Length"));
                return;
            }
            let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            match self.content_length {
                Some(Ok(seen)) if seen != n => {
                    self.content_length = Some(Err("conflicting Content-Length values"));
                    return;
                }
                _ => self.content_length = Some(Ok(n)),
            }
        }
    }

    /// Body framing of the response (RFC 9112 §6.3).
    fn framing(
        &self,
        status: StatusCode,
        request_method: &Method,
    ) -> Result<Framing, ResponseError> {
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || request_method == Method::HEAD
        {
            return Ok(Framing::Empty);
        }
        if let Some(te) = self.transfer_encoding {
            // A value with obs-text names no coding we know (hyper reads it the same way).
            let last = te
                .is_ascii()
                .then(|| te.rsplit(|b| *b == b',').next().map(<[u8]>::trim_ascii))
                .flatten();
            return Ok(match last {
                Some(coding) if coding.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
                _ => Framing::UntilClose,
            });
        }
        match self.content_length {
            Some(Ok(n)) => Ok(Framing::Length(n)),
            Some(Err(why)) => Err(ResponseError::Framing(why)),
            None => Ok(Framing::UntilClose),
        }
    }
}

/// What [`ChunkedDecoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The buffer ends inside the chunked framing: read more and call again.
    NeedMore,
    /// The last chunk and the trailer section were read; the body is complete.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// Incremental decoder of a chunked body (RFC 9112 §7.1). Chunk extensions are ignored;
/// trailer fields are read and dropped.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self {
            state: ChunkState::Size,
        }
    }

    /// Decode from the front of `buf`, consuming what was decoded.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ResponseError> {
        loop {
            match self.state {
                ChunkState::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.state = if size == 0 {
                            ChunkState::Trailers
                        } else {
                            ChunkState::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => {
                        return if buf.len() > MAX_CHUNK_META {
                            Err(ResponseError::Chunked("chunk size line too long"))
                        } else {
                            Ok(Decoded::NeedMore)
                        };
                    }
                    Err(_) => return Err(ResponseError::Chunked("invalid chunk size")),
                },
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ResponseError::Chunked("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let mut slots = [httparse::EMPTY_HEADER; 32];
                    match httparse::parse_headers(buf, &mut slots) {
                        Ok(httparse::Status::Complete((used, _))) => {
                            buf.advance(used);
                            self.state = ChunkState::Done;
                        }
                        Ok(httparse::Status::Partial) => {
                            return if buf.len() > MAX_CHUNK_META {
                                Err(ResponseError::Chunked("trailer section too long"))
                            } else {
                                Ok(Decoded::NeedMore)
                            };
                        }
                        Err(_) => return Err(ResponseError::Chunked("invalid trailer section")),
                    }
                }
                ChunkState::Done => return Ok(Decoded::Done),
            }
        }
    }
}

/// Prefix of one chunk of `len` bytes (`{len:x}\r\n`), for encoding a request body.
pub fn chunk_prefix(len: usize) -> Vec<u8> {
    format!("{len:x}\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8], method: Method) -> Result<Option<ResponseHead>, ResponseError> {
        let mut buf = BytesMut::from(bytes);
        parse_response_head(&mut buf, &method, &mut HeadScratch::default())
    }

    #[test]
    fn request_head_is_origin_form_with_every_header_and_set_fields_replace() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("a.localhost"));
        headers.append("x-two", HeaderValue::from_static("1"));
        headers.append("x-two", HeaderValue::from_static("2"));
        headers.append("x-set", HeaderValue::from_static("old"));
        let mut out = Vec::new();
        let x_set = HeaderName::from_static("x-set");
        let x_new = HeaderName::from_static("x-new");
        let (new, fresh) = (
            HeaderValue::from_static("new"),
            HeaderValue::from_static("yes"),
        );
        let set = [(&x_set, &new), (&x_new, &fresh)];
        encode_request_head(&Method::POST, "/p?q=1", &headers, &set, true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: a.localhost\r\nx-two: 1\r\nx-two: 2\r\n\
             x-set: new\r\nx-new: yes\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn content_length_response_leaves_the_body_in_the_buffer() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nhello"[..],
        );
        let head = parse_response_head(&mut buf, &Method::GET, &mut HeadScratch::default())
            .unwrap()
            .unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep_alive);
        assert_eq!(head.headers.get_all(header::SET_COOKIE).iter().count(), 2);
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn partial_heads_ask_for_more_and_oversized_ones_fail() {
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Le", Method::GET)
            .unwrap()
            .is_none());
        let mut big = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        big.resize(MAX_RESPONSE_HEAD + 10, b'a');
        assert_eq!(
            head(&big, Method::GET).unwrap_err(),
            ResponseError::HeadTooLarge
        );
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            head(&big, Method::GET).unwrap_err(),
            ResponseError::HeadTooLarge
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing =
            |bytes: &[u8], method: Method| head(bytes, method).map(|h| h.unwrap().framing);
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
                Method::HEAD
            ),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                Method::GET
            ),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n",
                Method::GET
            ),
            Ok(Framing::Length(7))
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 8\r\n\r\n",
                Method::GET
            ),
            Err(ResponseError::Framing("conflicting Content-Length values"))
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                Method::GET
            ),
            Err(ResponseError::Framing("malformed Content-Length"))
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
                Method::GET
            ),
            Err(ResponseError::Framing("malformed Content-Length"))
        );
        let both = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(both.framing, Framing::Chunked);
        assert!(!both.headers.contains_key(header::CONTENT_LENGTH));
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                Method::GET
            ),
            Ok(Framing::UntilClose)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\n\r\n", Method::GET),
            Ok(Framing::UntilClose)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \xff, chunked\r\n\r\n",
                Method::GET
            ),
            Ok(Framing::UntilClose),
            "a coding list with obs-text is not read as chunked"
        );
    }

    #[test]
    fn keep_alive_needs_http_11_or_an_explicit_keep_alive() {
        let alive = |bytes: &[u8]| head(bytes, Method::GET).unwrap().unwrap().keep_alive;
        assert!(alive(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!alive(
            b"HTTP/1.1 200 OK\r\nConnection: x, Close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!alive(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(alive(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!alive(b"HTTP/1.1 200 OK\r\n\r\n"));
    }

    #[test]
    fn hop_by_hop_fields_are_left_out_unless_connection_names_others() {
        let plain = head(
            b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\n\
              Transfer-Encoding: chunked\r\nContent-Length: 3\r\nTrailer: x-sum\r\n\
              Server: s\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        let names: Vec<&str> = plain.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["server"]);
        assert_eq!(plain.framing, Framing::Chunked);
        assert!(plain.keep_alive);
        assert!(!plain.connection_names_headers);

        let naming = head(
            b"HTTP/1.1 200 OK\r\nX-Hop: 1\r\nConnection: keep-alive, x-hop\r\n\
              Content-Length: 0\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(naming.connection_names_headers);
        assert!(naming.keep_alive);
        assert!(naming.headers.contains_key("x-hop"));
        assert!(naming.headers.contains_key(header::CONNECTION));
    }

    #[test]
    fn garbage_is_an_invalid_head() {
        assert!(matches!(
            head(b"FOO\r\n\r\n", Method::GET),
            Err(ResponseError::Head(_))
        ));
        assert!(matches!(
            head(b"HTTP/1.1 abc\r\n\r\n", Method::GET),
            Err(ResponseError::Head(_))
        ));
        assert!(matches!(
            head(b"HTTP/2.0 200 OK\r\n\r\n", Method::GET),
            Err(ResponseError::Head(_))
        ));
    }

    fn decode_all(wire: &[u8], step: usize) -> Result<(Vec<u8>, usize), ResponseError> {
        let mut decoder = ChunkedDecoder::new();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::Done => return Ok((body, buf.len())),
                Decoded::NeedMore => {
                    if fed == wire.len() {
                        return Err(ResponseError::Chunked("truncated"));
                    }
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: t\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 64] {
            let (body, left) = decode_all(wire, step).unwrap();
            assert_eq!(body, b"hello, world", "step {step}");
            // Bytes after the body (a next response) are left alone.
            assert!(left <= 4, "step {step}");
        }
    }

    #[test]
    fn malformed_chunked_bodies_fail() {
        assert!(decode_all(b"zz\r\nhello\r\n0\r\n\r\n", 64).is_err());
        assert!(decode_all(b"5\r\nhelloXX0\r\n\r\n", 64).is_err());
        assert!(decode_all(b"ffffffffffffffffff\r\n", 64).is_err());
        assert!(decode_all(b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n", 64).is_err());
    }
}
