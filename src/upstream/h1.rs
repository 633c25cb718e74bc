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
use http::header::{
    CONNECTION, CONTENT_LENGTH, HeaderName, HeaderValue, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
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

/// Writes the request head into `out` and says how the body follows, and whether it asks
/// for an `Upgrade` (the websocket handshake; a `101` answers nothing else). `known_len` is the
/// body's exact length when it is known (`None`: it streams); `empty`, that it has none.
/// `extra` hands over fields to write after `headers` (the gateway's own: forwarding and
/// identity, see `identity::Added`).
/// `Transfer-Encoding` is never copied (it is hop-by-hop and stripped before): the framing
/// is ours. A client's `Content-Length` is kept when the body has that exact length.
pub fn encode_request_head(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    extra: impl FnOnce(&mut dyn FnMut(&HeaderName, &HeaderValue)),
    (empty, known_len): (bool, Option<u64>),
    out: &mut Vec<u8>,
) -> (RequestFraming, bool) {
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
    let mut client_length = false;
    // Noticed on the way (a comparison of standard names), rather than looked up.
    let mut upgrade = false;
    let mut field = |name: &HeaderName, value: &HeaderValue| {
        upgrade |= name == UPGRADE;
        if name == CONTENT_LENGTH {
            client_length = true;
            return;
        }
        if name == TRANSFER_ENCODING {
            return;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    for (name, value) in headers {
        field(name, value);
    }
    extra(&mut field);
    match framing {
        // A client's `Content-Length: 0` on an empty body is kept (some servers want it on
        // a POST); no other length is possible for an empty body.
        RequestFraming::Empty if client_length => {
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
    (framing, upgrade)
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
/// `interim` counts the bytes of interim heads dropped so far, across calls: they count
/// towards `MAX_HEAD`, so an upstream cannot keep the wait going with endless 1xx heads.
///
/// `websocket`: the request asked for `Upgrade: websocket`. Then, and only then, a `101`
/// that upgrades to `websocket` is an answer (with no body, and the connection is the
/// upgraded one's from the next byte on); any other `101` is an error.
pub fn parse_response_head(
    buf: &mut BytesMut,
    head_request: bool,
    interim: &mut usize,
    websocket: bool,
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
            Ok(httparse::Status::Partial) if *interim + buf.len() >= MAX_HEAD => {
                return Err(FrameError::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(FrameError::HeadTooLarge),
            Err(e) => return Err(FrameError::Head(parse_error(e))),
        };
        if *interim + len > MAX_HEAD {
            return Err(FrameError::HeadTooLarge);
        }
        let code = response.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| FrameError::Head("status code"))?;
        let switching = status == StatusCode::SWITCHING_PROTOCOLS;
        if switching && !websocket {
            return Err(FrameError::SwitchingProtocols);
        }
        if status.is_informational() && !switching {
            // 100 Continue, 102, 103 Early Hints: interim, dropped.
            buf.advance(len);
            *interim += len;
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
                (
                    name,
                    name + field.name.len(),
                    value,
                    value + field.value.len(),
                )
            })
            .collect();
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(spans.len());
        let mut fields = Framing::default();
        for (name_start, name_end, value_start, value_end) in spans {
            let name = field_name(&head[name_start..name_end])
                .map_err(|_| FrameError::Head("field name"))?;
            let value = &head[value_start..value_end];
            // Hop-by-hop fields are read for the framing, and not passed on (RFC 9110
            // §7.6.1): this is where the answer's are stripped.
            if fields.hop_by_hop(&name, value)? {
                continue;
            }
            // httparse let through only what a field value may hold (no CR, LF, NUL).
            let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
                .map_err(|_| FrameError::Head("field value"))?;
            headers.append(name, value);
        }
        if switching {
            // Upgraded to what the request asked for, in HTTP/1.1, or not at all.
            if fields.upgrade != Some(true) || version != Version::HTTP_11 {
                return Err(FrameError::SwitchingProtocols);
            }
            for named in &fields.named {
                headers.remove(named);
            }
            return Ok(Some(Head {
                status,
                version,
                reason,
                headers,
                body: Decoder::done(),
                keep_alive: false,
            }));
        }
        let (body, keep_alive) = fields.decide(status, version, &mut headers, head_request)?;
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

/// The field names most answers carry, found by their length and a case-blind compare:
/// fewer instructions than `HeaderName::from_bytes`, which lower-cases the name into a
/// buffer and looks it up (the five fields of a typical answer were 3% of a proxied
/// request's instructions). Cloning a standard `HeaderName` copies a tag.
fn field_name(bytes: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    use http::header as h;
    let is = |text: &[u8]| text.eq_ignore_ascii_case(bytes);
    let known = match bytes.len() {
        4 if is(b"date") => h::DATE,
        4 if is(b"vary") => h::VARY,
        4 if is(b"etag") => h::ETAG,
        6 if is(b"server") => h::SERVER,
        7 if is(b"expires") => h::EXPIRES,
        8 if is(b"location") => h::LOCATION,
        10 if is(b"set-cookie") => h::SET_COOKIE,
        10 if is(b"connection") => h::CONNECTION,
        12 if is(b"content-type") => h::CONTENT_TYPE,
        13 if is(b"cache-control") => h::CACHE_CONTROL,
        13 if is(b"last-modified") => h::LAST_MODIFIED,
        14 if is(b"content-length") => h::CONTENT_LENGTH,
        _ => return HeaderName::from_bytes(bytes),
    };
    Ok(known)
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

/// What the framing fields of an answer said, gathered in the one pass over its fields.
#[derive(Default)]
struct Framing {
    /// The one length all `Content-Length` values agree on.
    length: Option<u64>,
    /// `Content-Length` fields, or values in them, beyond the first.
    extra_lengths: bool,
    /// `Transfer-Encoding` was present; true when its last coding is chunked.
    transfer_encoding: Option<bool>,
    /// `Connection: close`.
    close: bool,
    /// Other fields `Connection` names: hop-by-hop too (rare, so allocated only then).
    named: Vec<HeaderName>,
    /// `Upgrade` was present; true when it names `websocket` (and nothing else).
    upgrade: Option<bool>,
}

impl Framing {
    /// Reads one field; true when it is hop-by-hop (and so is not passed on).
    fn hop_by_hop(&mut self, name: &HeaderName, value: &[u8]) -> Result<bool, FrameError> {
        if *name == CONTENT_LENGTH {
            for part in value.split(|&b| b == b',') {
                let n = parse_length(part)?;
                match self.length {
                    Some(seen) if seen != n => return Err(FrameError::ContentLength),
                    Some(_) => self.extra_lengths = true,
                    None => self.length = Some(n),
                }
            }
            return Ok(false);
        }
        if *name == TRANSFER_ENCODING {
            // The last coding of the last field is the one that frames the body.
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            self.transfer_encoding = Some(trim(last).eq_ignore_ascii_case(b"chunked"));
            return Ok(true);
        }
        if *name == CONNECTION {
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if !token.is_empty()
                    && !token.eq_ignore_ascii_case(b"keep-alive")
                    && let Ok(named) = HeaderName::from_bytes(token)
                {
                    self.named.push(named);
                }
            }
            return Ok(true);
        }
        if *name == UPGRADE {
            let websocket =
                self.upgrade.is_none() && trim(value).eq_ignore_ascii_case(b"websocket");
            self.upgrade = Some(websocket);
            return Ok(true);
        }
        Ok(*name == TE
            || *name == TRAILER
            || *name == PROXY_AUTHORIZATION
            || matches!(name.as_str(), "keep-alive" | "proxy-connection"))
    }

    /// RFC 9112 §6.3: how long the body is, and whether the connection outlives it. Makes
    /// the fields handed on consistent with the body.
    fn decide(
        self,
        status: StatusCode,
        version: Version,
        headers: &mut HeaderMap,
        head_request: bool,
    ) -> Result<(Decoder, bool), FrameError> {
        for named in &self.named {
            headers.remove(named);
        }
        let mut keep_alive = version == Version::HTTP_11 && !self.close;
        // Known before the fields: no body at all.
        let no_body =
            head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        if let Some(chunked) = self.transfer_encoding {
            if version != Version::HTTP_11 {
                return Err(FrameError::Head("transfer-encoding in an HTTP/1.0 answer"));
            }
            if self.length.is_some() {
                // §6.3.3: Transfer-Encoding wins; the length goes, and so does the
                // connection (such an answer is suspicious, nothing after it is trusted).
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
        if let Some(n) = self.length
            && self.extra_lengths
        {
            // `5, 5` or two fields of 5: one field.
            headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
        if no_body {
            return Ok((Decoder::done(), keep_alive));
        }
        match self.length {
            Some(len) => Ok((Decoder::length(len), keep_alive)),
            None => Ok((Decoder::until_close(), false)),
        }
    }
}

/// One `Content-Length` value: digits only (not `+5`, `0x5` or empty), at most 19 of them.
fn parse_length(part: &[u8]) -> Result<u64, FrameError> {
    let part = trim(part);
    if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
        return Err(FrameError::ContentLength);
    }
    Ok(part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
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
                    let Some(line) = take_line(buf, MAX_TRAILERS.saturating_sub(seen))? else {
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
        // (`limit` bytes and a CR may wait for their LF.)
        None if buf.len() > limit.saturating_add(1) => Err(FrameError::Chunked("line too long")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_field_names_are_the_names_from_bytes_makes() {
        for known in [
            "date",
            "vary",
            "etag",
            "server",
            "expires",
            "location",
            "set-cookie",
            "connection",
            "content-type",
            "cache-control",
            "last-modified",
            "content-length",
        ] {
            let lower = known.to_owned();
            let upper = lower.to_ascii_uppercase();
            let title: String = lower
                .split('-')
                .map(|w| w[..1].to_ascii_uppercase() + &w[1..])
                .collect::<Vec<_>>()
                .join("-");
            for spelling in [lower, upper, title] {
                assert_eq!(
                    field_name(spelling.as_bytes()).unwrap(),
                    HeaderName::from_bytes(spelling.as_bytes()).unwrap(),
                    "{spelling}"
                );
            }
        }
        for other in [
            "x-date",
            "dates",
            "content-lengthx",
            "Set_Cookie",
            "etag2",
            "dat",
            "d",
            "content\rlength",
            "",
            "a-very-long-field-name-beyond-16",
        ] {
            assert_eq!(
                field_name(other.as_bytes()).ok(),
                HeaderName::from_bytes(other.as_bytes()).ok(),
                "{other}"
            );
        }
        assert!(field_name(b"bad name").is_err());
    }
    use proptest::prelude::*;

    fn head(bytes: &[u8], head_request: bool) -> Result<Option<Head>, FrameError> {
        parse_response_head(&mut BytesMut::from(bytes), head_request, &mut 0, false)
    }

    fn complete(bytes: &[u8]) -> Head {
        head(bytes, false).unwrap().unwrap()
    }

    /// Decodes all of `buf`, then closes: the body, or the first error.
    fn decode_all(decoder: &mut Decoder, buf: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut buf = BytesMut::from(buf);
        let mut out = Vec::new();
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => out.extend_from_slice(&data),
                Decoded::End => return Ok(out),
                Decoded::NeedMore => {
                    decoder.closed()?;
                    return Ok(out);
                }
            }
        }
    }

    #[test]
    fn the_request_head_carries_the_target_the_fields_and_our_framing() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("app"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("99"));
        let cases = [
            (
                Method::GET,
                true,
                None,
                RequestFraming::Empty,
                "content-length: 0\r\n",
            ),
            (
                Method::POST,
                false,
                Some(7),
                RequestFraming::Length(7),
                "content-length: 7\r\n",
            ),
            (
                Method::PUT,
                false,
                None,
                RequestFraming::Chunked,
                "transfer-encoding: chunked\r\n",
            ),
        ];
        for (method, empty, len, framing, last) in cases {
            let mut out = Vec::new();
            // The extra fields come after the request's own; framing ones are never copied.
            let extra = |field: &mut dyn FnMut(&HeaderName, &HeaderValue)| {
                field(
                    &HeaderName::from_static("x-gw"),
                    &HeaderValue::from_static("1"),
                );
                field(&TRANSFER_ENCODING, &HeaderValue::from_static("chunked"));
                field(&CONTENT_LENGTH, &HeaderValue::from_static("9"));
            };
            let (got, upgrade) = encode_request_head(
                &method,
                "/a%20b?q=1",
                &headers,
                extra,
                (empty, len),
                &mut out,
            );
            assert_eq!(got, framing);
            assert!(!upgrade);
            let expected = format!(
                "{method} /a%20b?q=1 HTTP/1.1\r\nhost: app\r\nx-a: 1\r\nx-a: 2\r\nx-gw: 1\r\n{last}\r\n"
            );
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
        // No Content-Length from the client, no body: no framing field at all.
        let mut out = Vec::new();
        encode_request_head(
            &Method::GET,
            "/",
            &HeaderMap::new(),
            |_| {},
            (true, None),
            &mut out,
        );
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn chunks_are_sized_in_hex() {
        let mut out = Vec::new();
        encode_chunk(&[b'x'; 26], &mut out);
        encode_chunk(b"a", &mut out);
        out.extend_from_slice(LAST_CHUNK);
        let mut expected = b"1a\r\n".to_vec();
        expected.extend_from_slice(&[b'x'; 26]);
        expected.extend_from_slice(b"\r\n1\r\na\r\n0\r\n\r\n");
        assert_eq!(out, expected);
        assert_eq!(
            decode_all(&mut Decoder::chunked(), &out).unwrap(),
            [&[b'x'; 26][..], b"a"].concat()
        );
    }

    #[test]
    fn a_partial_head_waits_and_a_complete_one_leaves_the_body_in_the_buffer() {
        let full = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-y: z\r\n\r\nhello";
        for cut in 1..full.len() - 5 {
            let mut buf = BytesMut::from(&full[..cut]);
            assert!(
                parse_response_head(&mut buf, false, &mut 0, false)
                    .unwrap()
                    .is_none(),
                "{cut}"
            );
            assert_eq!(buf.len(), cut, "a partial head stays in the buffer");
        }
        let mut buf = BytesMut::from(&full[..]);
        let head = parse_response_head(&mut buf, false, &mut 0, false)
            .unwrap()
            .unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers["x-y"], "z");
        assert!(head.keep_alive);
        assert_eq!(head.body.remaining(), Some(5));
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn interim_answers_are_dropped_and_switching_protocols_is_refused() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
               HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n"[..],
        );
        let created = parse_response_head(&mut buf, false, &mut 0, false)
            .unwrap()
            .unwrap();
        assert_eq!(created.status, StatusCode::CREATED);
        assert!(!created.headers.contains_key("link"));
        assert!(buf.is_empty());
        // An interim answer alone: wait for the final one.
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 2"[..]);
        assert!(
            parse_response_head(&mut buf, false, &mut 0, false)
                .unwrap()
                .is_none()
        );
        assert_eq!(&buf[..], b"HTTP/1.1 2");
        assert_eq!(
            head(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
                false
            )
            .unwrap_err(),
            FrameError::SwitchingProtocols
        );
    }

    #[test]
    fn a_101_is_an_answer_only_to_a_websocket_upgrade_and_only_to_websocket() {
        let upgrade = |bytes: &[u8]| {
            let mut buf = BytesMut::from(bytes);
            parse_response_head(&mut buf, false, &mut 0, true).map(|h| (h, buf))
        };
        let (head, rest) = upgrade(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi",
        )
        .unwrap();
        let head = head.unwrap();
        assert_eq!(head.status, StatusCode::SWITCHING_PROTOCOLS);
        assert!(!head.keep_alive);
        assert!(head.body.is_done());
        // Hop-by-hop fields are the gateway's to write; the handshake's own pass.
        assert!(!head.headers.contains_key("upgrade"));
        assert!(!head.headers.contains_key("connection"));
        assert_eq!(
            head.headers["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        // The first frame after the head stays for the upgraded connection.
        assert_eq!(&rest[..], b"\x81\x02hi");
        for refused in [
            &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"[..],
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n\r\n",
            b"HTTP/1.0 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        ] {
            assert_eq!(
                upgrade(refused).unwrap_err(),
                FrameError::SwitchingProtocols,
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
        // Any other answer to an upgrade request is an ordinary one (the app said no).
        let (head, _) = upgrade(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert_eq!(head.unwrap().status, StatusCode::FORBIDDEN);
    }

    #[test]
    fn the_body_length_follows_rfc_9112() {
        // (answer, HEAD request, body of the bytes after the head, keep-alive)
        type Case = (&'static [u8], bool, Result<&'static [u8], FrameError>, bool);
        let cases: [Case; 12] = [
            (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabcdef", false, Ok(b"abc"), true),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabcdef", true, Ok(b""), true),
            (b"HTTP/1.1 204 No Content\r\ncontent-length: 3\r\n\r\nabc", false, Ok(b""), true),
            (b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n", false, Ok(b""), true),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", false, Ok(b"abc"), true),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", false, Ok(b"a"), true),
            // Chunked not last: the body runs to the close, and the connection ends with it.
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n1\r\na", false, Ok(b"1\r\na"), false),
            // Both: chunked wins, the length goes, the connection is not reused.
            (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", false, Ok(b"a"), false),
            // Neither: to the close.
            (b"HTTP/1.1 200 OK\r\n\r\nuntil close", false, Ok(b"until close"), false),
            (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nab", false, Ok(b"ab"), false),
            (b"HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 2\r\n\r\nab", false, Ok(b"ab"), false),
            // A cut chunked body is an error, not an end.
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nab", false, Err(FrameError::Truncated), true),
        ];
        for (answer, head_request, body, keep_alive) in cases {
            let text = String::from_utf8_lossy(answer);
            let mut buf = BytesMut::from(answer);
            let mut head = parse_response_head(&mut buf, head_request, &mut 0, false)
                .unwrap()
                .unwrap();
            assert_eq!(head.keep_alive, keep_alive, "{text}");
            assert!(
                !(head.headers.contains_key(TRANSFER_ENCODING)
                    && head.headers.contains_key(CONTENT_LENGTH)),
                "{text}"
            );
            let got = decode_all(&mut head.body, &buf);
            assert_eq!(got.as_deref().map_err(|e| *e), body, "{text}");
        }
    }

    #[test]
    fn conflicting_or_malformed_lengths_are_errors() {
        for value in [
            "5, 6",
            "+5",
            "-1",
            "0x5",
            "",
            " ",
            "5 5",
            "12345678901234567890",
        ] {
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {value}\r\n\r\n");
            assert_eq!(
                head(answer.as_bytes(), false).unwrap_err(),
                FrameError::ContentLength,
                "{value:?}"
            );
        }
        let two = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n";
        assert_eq!(head(two, false).unwrap_err(), FrameError::ContentLength);
        // Equal values are one length, folded into one field.
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n",
        ] {
            let head = complete(answer);
            assert_eq!(head.body.remaining(), Some(5));
            let values: Vec<_> = head.headers.get_all(CONTENT_LENGTH).iter().collect();
            assert_eq!(values, ["5"]);
        }
        assert_eq!(
            complete(b"HTTP/1.1 200 OK\r\ncontent-length: 9999999999999999999\r\n\r\n")
                .body
                .remaining(),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(
            head(
                b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                false
            )
            .unwrap_err(),
            FrameError::Head("transfer-encoding in an HTTP/1.0 answer")
        );
    }

    #[test]
    fn malformed_and_oversized_heads_are_errors() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nname : x\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: a\x00b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: a\r\n folded\r\n\r\n",
        ] {
            assert!(
                matches!(head(answer, false), Err(FrameError::Head(_))),
                "{}",
                String::from_utf8_lossy(answer)
            );
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let answer = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(
            head(answer.as_bytes(), false).unwrap_err(),
            FrameError::HeadTooLarge
        );
        let long = format!("HTTP/1.1 200 OK\r\nx: {}", "v".repeat(MAX_HEAD));
        assert_eq!(
            head(long.as_bytes(), false).unwrap_err(),
            FrameError::HeadTooLarge
        );
        let fits = format!(
            "HTTP/1.1 200 OK\r\nx: {}\r\n\r\n",
            "v".repeat(MAX_HEAD - 100)
        );
        assert!(head(fits.as_bytes(), false).unwrap().is_some());
    }

    #[test]
    fn hop_by_hop_fields_are_not_passed_on() {
        let head = complete(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: timeout=5\r\n\
              X-Private: secret\r\nUpgrade: h2c\r\nTrailer: x-t\r\nTE: trailers\r\n\
              Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\n\
              X-Kept: yes\r\nContent-Length: 2\r\n\r\nok",
        );
        let mut names: Vec<_> = head.headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "x-kept"]);
        assert!(head.keep_alive);
        // The same list as the request side's, one by one.
        for name in crate::identity::HOP_BY_HOP {
            let answer = format!("HTTP/1.1 200 OK\r\n{name}: x\r\ncontent-length: 0\r\n\r\n");
            let head = complete(answer.as_bytes());
            assert!(!head.headers.contains_key(name), "{name}");
        }
        // Names in Connection are hop-by-hop wherever they come in the head.
        let head =
            complete(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nconnection: x-a\r\ncontent-length: 0\r\n\r\n");
        assert!(!head.headers.contains_key("x-a"));
    }

    #[test]
    fn an_unusual_reason_phrase_is_kept() {
        let head = complete(b"HTTP/1.1 200 Fine Thanks\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(head.reason.unwrap().as_bytes(), b"Fine Thanks");
        assert!(
            complete(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .reason
                .is_none()
        );
    }

    #[test]
    fn chunked_bodies_are_read_strictly() {
        let ok: [(&[u8], &[u8]); 4] = [
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5;name=value;x\r\nhello\r\n0\r\n\r\n", b"hello"),
            (
                b"5 ;ext\r\nhello\r\nA\r\n0123456789\r\n0\r\nx-trailer: dropped\r\n\r\n",
                b"hello0123456789",
            ),
            (b"000000000000005\r\nhello\r\n0\r\n\r\n", b"hello"),
        ];
        for (body, expected) in ok {
            let text = String::from_utf8_lossy(body);
            assert_eq!(
                decode_all(&mut Decoder::chunked(), body).unwrap(),
                expected,
                "{text}"
            );
        }
        let bad: [&[u8]; 8] = [
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
            b"g\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"1000000000000000\r\n",
            b"5\x01\r\nhello\r\n0\r\n\r\n",
            b"5;a\x7f\r\nhello\r\n0\r\n\r\n",
        ];
        for body in bad {
            let text = String::from_utf8_lossy(body);
            assert!(
                matches!(
                    decode_all(&mut Decoder::chunked(), body),
                    Err(FrameError::Chunked(_))
                ),
                "{text}"
            );
        }
        // Endless extensions or trailers are cut off.
        let long_line = format!("5;{}", "x".repeat(MAX_CHUNK_LINE));
        assert!(decode_all(&mut Decoder::chunked(), long_line.as_bytes()).is_err());
        let trailers = format!("0\r\n{}", "x-t: v\r\n".repeat(MAX_TRAILERS / 8 + 1));
        assert!(decode_all(&mut Decoder::chunked(), trailers.as_bytes()).is_err());
    }

    #[test]
    fn limits_hold_across_reads_and_at_their_edges() {
        // Endless interim heads count towards the head limit, across calls.
        let interim = "HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_HEAD / 25 / 2 + 1);
        let mut seen = 0;
        let mut buf = BytesMut::from(interim.as_bytes());
        assert!(
            parse_response_head(&mut buf, false, &mut seen, false)
                .unwrap()
                .is_none()
        );
        assert!(buf.is_empty() && seen > MAX_HEAD / 2);
        buf.extend_from_slice(interim.as_bytes());
        assert_eq!(
            parse_response_head(&mut buf, false, &mut seen, false).unwrap_err(),
            FrameError::HeadTooLarge
        );
        // A line at the limit may wait for its LF after the CR.
        let mut line = BytesMut::from(format!("{}\r", "a".repeat(MAX_CHUNK_LINE)).as_bytes());
        assert_eq!(take_line(&mut line, MAX_CHUNK_LINE), Ok(None));
        line.extend_from_slice(b"\n");
        assert_eq!(
            take_line(&mut line, MAX_CHUNK_LINE).unwrap().unwrap().len(),
            MAX_CHUNK_LINE
        );
        // Trailers that end a few bytes past their limit neither panic nor pass more.
        let first = format!("x-a: {}\r\n", "v".repeat(MAX_TRAILERS - 4 - 7));
        assert_eq!(first.len(), MAX_TRAILERS - 4);
        let body = format!("0\r\n{first}abcd\r\n\r\n");
        assert_eq!(
            decode_all(&mut Decoder::chunked(), body.as_bytes()),
            Ok(Vec::new())
        );
        let body = format!("0\r\n{first}abcd\r\nx\r\n\r\n");
        assert!(decode_all(&mut Decoder::chunked(), body.as_bytes()).is_err());
    }

    #[test]
    fn a_length_body_stops_at_its_length_and_a_short_one_is_truncated() {
        let mut decoder = Decoder::length(5);
        let mut buf = BytesMut::from(&b"helloHTTP/1.1 200"[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from("hello"))
        );
        assert_eq!(decoder.decode(&mut buf).unwrap(), Decoded::End);
        // What follows stays in the buffer, where it keeps the connection out of the pool.
        assert_eq!(&buf[..], b"HTTP/1.1 200");
        let mut short = Decoder::length(5);
        assert_eq!(decode_all(&mut short, b"hel"), Err(FrameError::Truncated));
        assert_eq!(
            decode_all(&mut Decoder::until_close(), b"any"),
            Ok(b"any".to_vec())
        );
    }

    proptest! {
        /// Any body, in any chunks, read back through any split of the bytes.
        #[test]
        fn chunked_bodies_survive_any_split(
            pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cuts in proptest::collection::vec(1usize..64, 1..40),
        ) {
            let mut wire = Vec::new();
            for piece in pieces.iter().filter(|p| !p.is_empty()) {
                encode_chunk(piece, &mut wire);
            }
            wire.extend_from_slice(LAST_CHUNK);
            wire.extend_from_slice(b"NEXT");
            let mut decoder = Decoder::chunked();
            let (mut buf, mut out, mut fed, mut cut) = (BytesMut::new(), Vec::new(), 0, cuts.iter().cycle());
            loop {
                match decoder.decode(&mut buf).unwrap() {
                    Decoded::Data(data) => out.extend_from_slice(&data),
                    Decoded::End => break,
                    Decoded::NeedMore => {
                        prop_assert!(fed < wire.len() - 4, "wanted more after the last chunk");
                        let next = (fed + cut.next().unwrap()).min(wire.len());
                        buf.extend_from_slice(&wire[fed..next]);
                        fed = next;
                    }
                }
            }
            prop_assert_eq!(out, pieces.concat());
            // Exactly the body was consumed: what follows is intact.
            let rest = [&buf[..], &wire[fed..]].concat();
            prop_assert_eq!(rest, b"NEXT".to_vec());
        }
    }
}

/// Differential test: our framing against hyper's client, on generated answers.
#[cfg(test)]
mod against_hyper {
    use super::*;
    use http_body_util::BodyExt;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What one side made of an answer: status, the `x-` fields, the body; or an error.
    type Outcome = Result<(u16, Vec<(String, String)>, Vec<u8>), ()>;

    fn ours(wire: &[u8], head_request: bool) -> Outcome {
        let mut buf = BytesMut::from(wire);
        let head = parse_response_head(&mut buf, head_request, &mut 0, false)
            .map_err(|_| ())?
            .ok_or(())?;
        let mut decoder = head.body;
        let mut body = Vec::new();
        loop {
            match decoder.decode(&mut buf).map_err(|_| ())? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::End => break,
                Decoded::NeedMore => {
                    decoder.closed().map_err(|_| ())?;
                    break;
                }
            }
        }
        Ok((head.status.as_u16(), fields(&head.headers), body))
    }

    /// hyper's client sends `request` to a peer that answers `wire` once the request head
    /// is in (hyper refuses bytes that come before it); `read` takes its answer apart.
    fn through_hyper<T>(
        wire: &[u8],
        request: http::Request<http_body_util::Empty<Bytes>>,
        read: impl AsyncFnOnce(http::Response<hyper::body::Incoming>) -> Result<T, ()>,
    ) -> Result<T, ()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (client, mut server) = tokio::io::duplex(1 << 20);
            let wire = wire.to_vec();
            let upstream = tokio::spawn(async move {
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut buf = [0u8; 1024];
                    let n = server.read(&mut buf).await.unwrap();
                    seen.extend_from_slice(&buf[..n]);
                }
                server.write_all(&wire).await.unwrap();
                server.shutdown().await.unwrap();
                server
            });
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client))
                    .await
                    .unwrap();
            tokio::spawn(conn.with_upgrades());
            let response = sender.send_request(request).await.map_err(|_| ())?;
            let read = read(response).await;
            drop(upstream);
            read
        })
    }

    fn hyper_client(wire: &[u8], head_request: bool) -> Outcome {
        let method = if head_request { "HEAD" } else { "GET" };
        let request = http::Request::builder()
            .method(method)
            .uri("/")
            .header("host", "h")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        through_hyper(wire, request, async |response| {
            let status = response.status().as_u16();
            let headers = fields(response.headers());
            let body = response.into_body().collect().await.map_err(|_| ())?;
            Ok((status, headers, body.to_bytes().to_vec()))
        })
    }

    fn fields(headers: &HeaderMap) -> Vec<(String, String)> {
        let mut out: Vec<_> = headers
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("x-"))
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// An answer put together from the parts that decide its framing.
    /// The bytes, whether the request was a HEAD, and whether ours refuses the answer on
    /// purpose where hyper may read it (a conflicting or malformed `Content-Length`,
    /// `Transfer-Encoding` in HTTP/1.0).
    fn answer() -> impl Strategy<Value = (Vec<u8>, bool, bool)> {
        let version = prop_oneof![Just("HTTP/1.1"), Just("HTTP/1.0")];
        let status = prop_oneof![
            Just("200 OK"),
            Just("204 No Content"),
            Just("304 Not Modified"),
            Just("404 Not Found"),
            Just("100 Continue\r\n\r\nVERSION 200 OK"),
        ];
        // (values, whether they are a length we refuse: conflicting or malformed)
        let length = prop_oneof![
            Just((None, false)),
            (0u64..40).prop_map(|n| (Some(vec![n.to_string()]), false)),
            (0u64..40).prop_map(|n| (Some(vec![n.to_string(), n.to_string()]), false)),
            (0u64..40).prop_map(|n| (Some(vec![format!("{n}, {n}")]), false)),
            (0u64..40).prop_map(|n| (Some(vec![n.to_string(), (n + 1).to_string()]), true)),
            (0u64..40).prop_map(|n| (Some(vec![format!("+{n}")]), true)),
            Just((Some(vec![String::new()]), true)),
        ];
        let coding = prop_oneof![
            Just(None),
            Just(Some("chunked")),
            Just(Some("gzip")),
            Just(Some("gzip, chunked")),
            Just(Some("chunked, gzip")),
        ];
        let connection = prop_oneof![Just(None), Just(Some("close")), Just(Some("keep-alive"))];
        let pieces = proptest::collection::vec(proptest::collection::vec(b'a'..=b'z', 1..20), 0..4);
        let raw = proptest::collection::vec(b'a'..=b'z', 0..60);
        (
            version,
            status,
            length,
            coding,
            connection,
            pieces,
            raw,
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(
                    version,
                    status,
                    (length, bad_length),
                    coding,
                    connection,
                    pieces,
                    raw,
                    head,
                    cut,
                )| {
                    let refused = bad_length || (version == "HTTP/1.0" && coding.is_some());
                    let status = status.replace("VERSION", version);
                    let mut wire = format!("{version} {status}\r\nx-field: v\r\n");
                    for value in length.iter().flatten() {
                        wire.push_str(&format!("content-length: {value}\r\n"));
                    }
                    if let Some(coding) = coding {
                        wire.push_str(&format!("transfer-encoding: {coding}\r\n"));
                    }
                    if let Some(connection) = connection {
                        wire.push_str(&format!("connection: {connection}\r\n"));
                    }
                    wire.push_str("\r\n");
                    let mut wire = wire.into_bytes();
                    if coding.is_some_and(|c| c.ends_with("chunked")) {
                        for piece in &pieces {
                            encode_chunk(piece, &mut wire);
                        }
                        if !cut {
                            wire.extend_from_slice(LAST_CHUNK);
                        }
                    } else {
                        wire.extend_from_slice(&raw);
                    }
                    (wire, head, refused)
                },
            )
    }

    /// What a websocket handshake's answer leaves: status, `x-` fields, and the bytes
    /// after the head, which belong to the upgraded connection.
    fn ours_upgraded(wire: &[u8]) -> Outcome {
        let mut buf = BytesMut::from(wire);
        let head = parse_response_head(&mut buf, false, &mut 0, true)
            .map_err(|_| ())?
            .ok_or(())?;
        if head.status != StatusCode::SWITCHING_PROTOCOLS {
            return Err(());
        }
        Ok((head.status.as_u16(), fields(&head.headers), buf.to_vec()))
    }

    fn hyper_upgraded(wire: &[u8]) -> Outcome {
        let request = http::Request::builder()
            .uri("/")
            .header("host", "h")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        through_hyper(wire, request, async |response| {
            let status = response.status().as_u16();
            if status != 101 {
                return Err(());
            }
            // hyper's client keeps the fields `Connection` names; a proxy drops them
            // (RFC 9110 7.6.1), and ours does so when it parses.
            let mut headers = response.headers().clone();
            let named: Vec<String> = headers
                .get_all(http::header::CONNECTION)
                .iter()
                .flat_map(|v| v.to_str().unwrap_or("").split(','))
                .map(|t| t.trim().to_ascii_lowercase())
                .collect();
            for name in named {
                headers.remove(name.as_str());
            }
            let headers = fields(&headers);
            let upgraded = hyper::upgrade::on(response).await.map_err(|_| ())?;
            let mut rest = Vec::new();
            hyper_util::rt::TokioIo::new(upgraded)
                .read_to_end(&mut rest)
                .await
                .map_err(|_| ())?;
            Ok((status, headers, rest))
        })
    }

    /// A websocket handshake's answer: a `101` (after a `100` or not) with the fields that
    /// could change how it is read, then the first bytes of the upgraded connection. The
    /// bytes, and whether ours refuses it on purpose (an upgrade to anything but
    /// `websocket`, none named, or in HTTP/1.0).
    fn upgrade_answer() -> impl Strategy<Value = (Vec<u8>, bool)> {
        let version = prop_oneof![4 => Just("HTTP/1.1"), 1 => Just("HTTP/1.0")];
        let upgrade = prop_oneof![
            Just((Some("websocket"), false)),
            Just((Some("WebSocket"), false)),
            Just((Some("h2c"), true)),
            Just((Some("websocket, h2c"), true)),
            Just((None, true)),
        ];
        let connection = prop_oneof![
            Just(None),
            Just(Some("upgrade")),
            Just(Some("Upgrade, x-hop"))
        ];
        let length = prop_oneof![Just(None), (0u64..40).prop_map(Some)];
        let rest = proptest::collection::vec(any::<u8>(), 0..80);
        (
            version,
            upgrade,
            connection,
            length,
            any::<bool>(),
            any::<bool>(),
            rest,
        )
            .prop_map(
                |(version, (upgrade, bad_upgrade), connection, length, chunked, interim, rest)| {
                    let mut wire = String::new();
                    if interim {
                        wire.push_str("HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    wire.push_str(&format!(
                        "{version} 101 Switching Protocols\r\nx-field: v\r\n"
                    ));
                    wire.push_str("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n");
                    if let Some(upgrade) = upgrade {
                        wire.push_str(&format!("upgrade: {upgrade}\r\n"));
                    }
                    if let Some(connection) = connection {
                        wire.push_str(&format!("connection: {connection}\r\nx-hop: h\r\n"));
                    }
                    if let Some(length) = length {
                        wire.push_str(&format!("content-length: {length}\r\n"));
                    }
                    if chunked {
                        wire.push_str("transfer-encoding: chunked\r\n");
                    }
                    wire.push_str("\r\n");
                    let mut wire = wire.into_bytes();
                    wire.extend_from_slice(&rest);
                    (wire, bad_upgrade || version == "HTTP/1.0")
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Where ours takes a `101` as the answer to a websocket handshake, hyper's client
        /// (with upgrades) reads the same status and fields, and hands the upgraded
        /// connection the same first bytes: a `Content-Length` or `Transfer-Encoding` on
        /// a `101` frames nothing. Ours refuses more only where it means to.
        #[test]
        fn our_upgrade_agrees_with_hyper((wire, refused) in upgrade_answer()) {
            let ours = ours_upgraded(&wire);
            let text = String::from_utf8_lossy(&wire).into_owned();
            if refused {
                prop_assert!(ours.is_err(), "{}", text);
            } else {
                prop_assert_eq!(ours, hyper_upgraded(&wire), "{}", text);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// Where ours reads an answer, hyper's client reads the same status, fields and
        /// body; where hyper refuses one, ours does too. Ours refuses more only where it
        /// means to.
        #[test]
        fn our_framing_agrees_with_hyper((wire, head_request, refused) in answer()) {
            let ours = ours(&wire, head_request);
            let theirs = hyper_client(&wire, head_request);
            let text = String::from_utf8_lossy(&wire).into_owned();
            if refused {
                prop_assert!(ours.is_err(), "{}", text);
            } else {
                prop_assert_eq!(ours, theirs, "{}", text);
            }
        }
    }
}
