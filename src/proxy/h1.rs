//! HTTP/1.1 framing towards the upstream: the request head we write, the response head we
//! parse, and the response body's framing. No I/O here (`pool.rs` moves the bytes), so each
//! rule is tested on bytes alone.
//!
//! Why not hyper's client: it parses the upstream's head into a `HeaderMap`, then hands the
//! request and the answer through a channel pair to its connection, and on a small proxied
//! request that was a third of the gateway's user-space instructions (README, "Upstream
//! connections"). The server side, where the clients are, stays hyper's.
//!
//! The parser is strict where a lenient one could be made to disagree with the upstream
//! about where an answer ends (a desync on a pooled connection would hand one user's answer
//! to another): RFC 9112 §6.3 decides the body length, conflicting or malformed
//! `Content-Length` is an error, a chunk line must end in CRLF, and a connection is reused
//! only after an answer whose end was known in advance (length or chunked) and that left
//! no byte behind.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode, Version};
use std::mem::MaybeUninit;

/// At most this many header fields in a response head (hyper's default too).
pub const MAX_HEADERS: usize = 100;
/// At most this many bytes of response head, 1xx heads included.
pub const MAX_HEAD: usize = 64 * 1024;
/// At most this many bytes in a chunk-size line (extensions included).
const MAX_CHUNK_LINE: usize = 4096;
/// At most this many bytes of trailer fields after the last chunk (they are dropped).
const MAX_TRAILERS: usize = 16 * 1024;

/// The upstream sent something that is not a well-framed HTTP/1.1 answer. Static texts
/// only: the error reaches logs, and a header value must not (I7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("invalid response head ({0})")]
    Head(&'static str),
    #[error("response head larger than {MAX_HEAD} bytes or {MAX_HEADERS} fields")]
    HeadTooLarge,
    #[error("invalid Content-Length in the response")]
    ContentLength,
    #[error("the upstream switched protocols, which the gateway never asks for")]
    SwitchingProtocols,
    #[error("invalid chunked body ({0})")]
    Chunked(&'static str),
    #[error("the upstream closed the connection before the body ended")]
    Truncated,
}

/// How the request body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Writes the request head into `out` and says how the body follows. `known_len` is the
/// body's exact length when it is known (`None`: it streams); `empty`, that it has none.
/// `Transfer-Encoding` is never copied (it is hop-by-hop and stripped before): the framing
/// is ours. A client's `Content-Length` is kept when the body has that exact length.
pub fn encode_request_head(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    empty: bool,
    known_len: Option<u64>,
    out: &mut Vec<u8>,
) -> RequestFraming {
    let framing = if empty {
        RequestFraming::Empty
    } else if let Some(len) = known_len {
        RequestFraming::Length(len)
    } else {
        RequestFraming::Chunked
    };
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == TRANSFER_ENCODING || name == CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        // A client's `Content-Length: 0` on an empty body is kept (some servers want it on
        // a POST); no other length is possible for an empty body.
        RequestFraming::Empty if headers.contains_key(CONTENT_LENGTH) => {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        RequestFraming::Empty => {}
        RequestFraming::Length(len) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa(len, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// Appends one chunk of a chunked body: size line, data, CRLF.
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    let mut hex = [0u8; 16];
    let mut at = hex.len();
    let mut n = data.len();
    loop {
        at -= 1;
        hex[at] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&hex[at..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk, with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[at..]
}

/// A parsed final response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    /// The reason phrase, when it is not the status code's usual one.
    pub reason: Option<hyper::ext::ReasonPhrase>,
    pub headers: HeaderMap,
    pub body: Decoder,
    /// The connection may carry another request once this answer has been read to its end.
    pub keep_alive: bool,
}

/// Parses the response head at the start of `buf` and removes it from `buf` (1xx interim
/// heads before it are removed and dropped). `Ok(None)`: the head is not complete yet.
/// `head_request`: the request was a HEAD (its answer has no body, whatever it says).
pub fn parse_response_head(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<Head>, FrameError> {
    loop {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(FrameError::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(FrameError::HeadTooLarge),
            Err(e) => return Err(FrameError::Head(parse_error(e))),
        };
        if len > MAX_HEAD {
            return Err(FrameError::HeadTooLarge);
        }
        let code = response.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| FrameError::Head("status code"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(FrameError::SwitchingProtocols);
        }
        if status.is_informational() {
            // 100 Continue, 102, 103 Early Hints: interim, dropped.
            buf.advance(len);
            continue;
        }
        let version = match response.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        let reason = response
            .reason
            .filter(|r| !r.is_empty() && Some(*r) != status.canonical_reason())
            .and_then(|r| hyper::ext::ReasonPhrase::try_from(r.as_bytes()).ok());
        // Field positions, so that the values can be slices of the frozen head.
        let base = buf.as_ptr() as usize;
        // A Vec: zeroing an array of MAX_HEADERS spans cost more than this allocation.
        let spans: Vec<_> = response
            .headers
            .iter()
            .map(|field| {
                let name = field.name.as_ptr() as usize - base;
                let value = field.value.as_ptr() as usize - base;
                (name, name + field.name.len(), value, value + field.value.len())
            })
            .collect();
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(spans.len());
        for (name_start, name_end, value_start, value_end) in spans {
            let name = HeaderName::from_bytes(&head[name_start..name_end])
                .map_err(|_| FrameError::Head("field name"))?;
            // httparse let through only what a field value may hold (no CR, LF, NUL).
            let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
                .map_err(|_| FrameError::Head("field value"))?;
            headers.append(name, value);
        }
        let (body, keep_alive) = framing(status, version, &mut headers, head_request)?;
        return Ok(Some(Head {
            status,
            version,
            reason,
            headers,
            body,
            keep_alive,
        }));
    }
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "field name",
        httparse::Error::HeaderValue => "field value",
        httparse::Error::NewLine => "line ending",
        httparse::Error::Status => "status",
        httparse::Error::Token => "token",
        httparse::Error::Version => "version",
        httparse::Error::TooManyHeaders => "too many fields",
    }
}

/// RFC 9112 §6.3: how long the body is, and whether the connection outlives it. May
/// rewrite the framing fields so that the head handed on is consistent with the body.
fn framing(
    status: StatusCode,
    version: Version,
    headers: &mut HeaderMap,
    head_request: bool,
) -> Result<(Decoder, bool), FrameError> {
    let mut keep_alive = version == Version::HTTP_11
        && !headers
            .get_all(CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"close"));
    // Known before the fields: no body at all.
    let no_body =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    if headers.contains_key(TRANSFER_ENCODING) {
        if version != Version::HTTP_11 {
            return Err(FrameError::Head("transfer-encoding in an HTTP/1.0 answer"));
        }
        let chunked = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
            .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"));
        if headers.contains_key(CONTENT_LENGTH) {
            // §6.3.3: Transfer-Encoding wins; the length goes, and so does the connection
            // (such an answer is suspicious, and nothing after it is trusted).
            headers.remove(CONTENT_LENGTH);
            keep_alive = false;
        }
        if no_body {
            return Ok((Decoder::done(), keep_alive));
        }
        if chunked {
            return Ok((Decoder::chunked(), keep_alive));
        }
        // §6.3.4: not chunked last: the body runs to the close.
        return Ok((Decoder::until_close(), false));
    }
    let length = content_length(headers)?;
    if no_body {
        return Ok((Decoder::done(), keep_alive));
    }
    match length {
        Some(len) => Ok((Decoder::length(len), keep_alive)),
        None => Ok((Decoder::until_close(), false)),
    }
}

/// The one length all `Content-Length` values agree on (`5` and `5, 5` are one length; `5`
/// and `6`, `+5`, `0x5` or an empty value are errors). Several equal values are folded
/// into one field.
fn content_length(headers: &mut HeaderMap) -> Result<Option<u64>, FrameError> {
    let mut length = None;
    let mut fields = 0;
    for value in headers.get_all(CONTENT_LENGTH) {
        fields += 1;
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = trim(part);
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(FrameError::ContentLength);
            }
            let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if length.is_some_and(|seen| seen != n) {
                return Err(FrameError::ContentLength);
            }
            length = Some(n);
        }
    }
    if let Some(n) = length
        && (fields > 1 || headers[CONTENT_LENGTH].as_bytes().contains(&b','))
    {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(length)
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|part| trim(part).eq_ignore_ascii_case(token))
}

/// The response body's framing, and where the decoding stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes left.
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// This many bytes left in the current chunk.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer fields after the last chunk, this many bytes of them so far.
    Trailers(usize),
    /// Until the upstream closes.
    Eof,
    /// The body has ended.
    Done,
}

/// What the decoder made of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// More bytes are needed.
    NeedMore,
    /// The body has ended.
    End,
}

impl Decoder {
    fn length(len: u64) -> Self {
        let state = if len == 0 {
            State::Done
        } else {
            State::Length(len)
        };
        Decoder { state }
    }

    fn chunked() -> Self {
        Decoder {
            state: State::ChunkSize,
        }
    }

    fn until_close() -> Self {
        Decoder { state: State::Eof }
    }

    pub fn done() -> Self {
        Decoder { state: State::Done }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes still to come when the length is known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of body out of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, FrameError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(left) | State::ChunkData(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = left.min(buf.len() as u64);
                    let data = buf.split_to(take as usize).freeze();
                    self.state = match (self.state, left - take) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), rest) => State::Length(rest),
                        (_, 0) => State::ChunkEnd,
                        (_, rest) => State::ChunkData(rest),
                    };
                    return Ok(Decoded::Data(data));
                }
                State::Eof => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                State::ChunkSize => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(FrameError::Chunked("no CRLF after chunk data"));
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers(seen) => {
                    let Some(line) = take_line(buf, MAX_TRAILERS - seen)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    // Trailer fields are dropped, as the request's are.
                    self.state = if line.is_empty() {
                        State::Done
                    } else {
                        State::Trailers(seen + line.len() + 2)
                    };
                }
            }
        }
    }

    /// The upstream closed the connection: the end of a close-delimited body, or a cut one.
    pub fn closed(&mut self) -> Result<(), FrameError> {
        match self.state {
            State::Eof | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(FrameError::Truncated),
        }
    }
}

/// Removes one CRLF-terminated line from `buf` (without the CRLF). A bare LF, or a line
/// longer than `limit`, is an error.
fn take_line(buf: &mut BytesMut, limit: usize) -> Result<Option<BytesMut>, FrameError> {
    match buf
        .iter()
        .take(limit.saturating_add(2))
        .position(|&b| b == b'\n')
    {
        Some(at) if at >= 1 && buf[at - 1] == b'\r' => {
            let mut line = buf.split_to(at + 1);
            line.truncate(at - 1);
            Ok(Some(line))
        }
        Some(_) => Err(FrameError::Chunked("line without CR")),
        None if buf.len() > limit => Err(FrameError::Chunked("line too long")),
        None => Ok(None),
    }
}

/// `chunk-size [ chunk-ext ]`: hex digits (at most 15: no overflow), then nothing, or
/// extensions (dropped) after optional blanks and `;`.
fn chunk_size(line: &[u8]) -> Result<u64, FrameError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(FrameError::Chunked("chunk size"));
    }
    let rest = &line[digits..];
    let ext = rest.trim_ascii_start();
    let control = |b: &u8| (*b < 0x20 && *b != b'\t') || *b == 0x7f;
    if !(ext.is_empty() || ext[0] == b';') || ext.iter().any(control) {
        return Err(FrameError::Chunked("chunk extension"));
    }
    Ok(line[..digits].iter().fold(0u64, |n, &d| {
        n << 4 | u64::from((d as char).to_digit(16).unwrap_or(0))
    }))
}
