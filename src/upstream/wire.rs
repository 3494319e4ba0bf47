//! The auth leg's HTTP/1.1 on the wire: reading one outpost answer whole.
//!
//! A forward-auth answer is a small head and a small body, read to the end before anything is
//! decided (security rule 5). Parsing it into an `http::Response` costs a `HeaderMap` (a hash and
//! an allocation per header) only for most of it to be thrown away; here the head is parsed by
//! `httparse` in place and the answer keeps the raw bytes, so a cacheable allow copies its identity
//! values once, into the cache's packed form.
//!
//! Framing is strict, since whatever this reader gets wrong desynchronises a pooled connection:
//! `Content-Length` (repeated only with one value), `Transfer-Encoding: chunked` alone (with a
//! `Content-Length` too, or any other coding, the answer is refused), or the body runs to the
//! connection's end. 1xx answers, obsolete line folding, oversized heads and bodies are refused.
//! A connection is reused only when the answer was complete, keep-alive and nothing followed it.

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest answer head (status line and header fields). A user in hundreds of groups gets them
/// twice (`X-authentik-groups` and inside the JWT): the nginx tier raised its buffers to 32 KiB for
/// "upstream sent too big header"; this leaves room to spare, and costs nothing until used.
pub const MAX_HEAD: usize = 256 * 1024;
/// Most header fields in one answer.
const MAX_FIELDS: usize = 128;
/// Largest trailer section of a chunked body (read and ignored).
const MAX_TRAILERS: usize = 8 * 1024;

/// Why an answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection ended (closed or reset) before the first byte of an answer.
    #[error("outpost closed the connection before answering")]
    Closed,
    /// The connection failed or ended mid-answer.
    #[error("outpost connection failed mid-answer")]
    Io(#[source] std::io::Error),
    /// The answer broke HTTP/1.1 framing or its limits.
    #[error("malformed outpost answer: {0}")]
    Malformed(&'static str),
    /// The body is larger than the caller allows.
    #[error("outpost answer body too large")]
    TooLarge,
}

/// One answer: status, header fields as ranges into the head bytes, and the whole body.
#[derive(Clone)]
pub struct Answer {
    /// Status code (200..=599).
    pub status: u16,
    head: Bytes,
    fields: Vec<(Range<u32>, Range<u32>)>,
    /// The body, framing removed.
    pub body: Bytes,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values carry cookies and tokens: sizes only.
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("fields", &self.fields.len())
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Answer {
    /// Header fields in wire order, names as sent (any case).
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.fields.iter().map(|(n, v)| {
            (
                &self.head[n.start as usize..n.end as usize],
                &self.head[v.start as usize..v.end as usize],
            )
        })
    }

    /// Number of header fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the answer has no header fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Values of every field named `name` (lowercase).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Parses a complete answer held in memory (tests and benches); the connection-level
    /// verdict (reuse) is dropped.
    pub fn parse_complete(raw: &[u8], limit: usize) -> Result<Answer, WireError> {
        read_ready(raw, limit).map(|(answer, _)| answer)
    }
}

/// Runs [`read_answer`] over a reader that never waits (bytes already in memory).
fn read_ready<R: AsyncRead + Unpin>(mut io: R, limit: usize) -> Result<(Answer, bool), WireError> {
    use std::future::Future;
    let mut buf = BytesMut::new();
    let fut = std::pin::pin!(read_answer(&mut io, &mut buf, limit));
    match fut.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(result) => result,
        std::task::Poll::Pending => Err(WireError::Malformed("reader would wait")),
    }
}

/// How the body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A parsed head: the answer without its body, its framing and whether the connection may stay.
struct Head {
    status: u16,
    len: usize,
    fields: Vec<(Range<u32>, Range<u32>)>,
    framing: Framing,
    keep_alive: bool,
}

/// Reads one answer from `io`, with `buf` holding whatever was already read. Returns the answer and
/// whether the connection can carry another exchange.
pub async fn read_answer<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    limit: usize,
) -> Result<(Answer, bool), WireError> {
    // Parsed only once the bytes hold a blank line, so an answer trickling in a byte at a time
    // costs one scan, not one parse per read.
    let mut scanned: usize = 0;
    let head = loop {
        // The first read usually holds the whole head: parse it at once.
        if scanned == 0 || ends_head(&buf[scanned.saturating_sub(3)..]) {
            if let Some(head) = parse_head(buf)? {
                break head;
            }
        }
        if buf.len() >= MAX_HEAD {
            return Err(WireError::Malformed("head too large"));
        }
        scanned = buf.len();
        match fill(io, buf).await {
            Ok(0) if buf.is_empty() => return Err(WireError::Closed),
            Ok(0) => return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            // A reset before the first byte is the same as a close before it.
            Err(WireError::Io(err)) if buf.is_empty() && is_reset(&err) => {
                return Err(WireError::Closed)
            }
            Err(err) => return Err(err),
        }
    };
    if head.len > MAX_HEAD {
        return Err(WireError::Malformed("head too large"));
    }
    let head_bytes = buf.split_to(head.len).freeze();
    let body = match head.framing {
        Framing::None => Bytes::new(),
        Framing::Length(n) => {
            let n = usize::try_from(n).map_err(|_| WireError::TooLarge)?;
            if n > limit {
                return Err(WireError::TooLarge);
            }
            while buf.len() < n {
                if fill(io, buf).await? == 0 {
                    return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
            buf.split_to(n).freeze()
        }
        Framing::Chunked => read_chunked(io, buf, limit).await?,
        Framing::UntilClose => loop {
            if buf.len() > limit {
                return Err(WireError::TooLarge);
            }
            if fill(io, buf).await? == 0 {
                break buf.split().freeze();
            }
        },
    };
    let reusable = head.keep_alive && head.framing != Framing::UntilClose && buf.is_empty();
    let answer = Answer {
        status: head.status,
        head: head_bytes,
        fields: head.fields,
        body,
    };
    Ok((answer, reusable))
}

/// One read into `buf`; 0 at the end of the stream.
async fn fill<R: AsyncRead + Unpin>(io: &mut R, buf: &mut BytesMut) -> Result<usize, WireError> {
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(8192);
    }
    io.read_buf(buf).await.map_err(WireError::Io)
}

/// Parses the head if `buf` holds all of it.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, WireError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut storage);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(WireError::Malformed("too many fields"))
        }
        Err(_) => return Err(WireError::Malformed("unparsable head")),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err(WireError::Malformed("unparsable head"));
    };
    if !(200..=599).contains(&status) {
        return Err(WireError::Malformed("status outside 200-599"));
    }
    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| {
        let start = (s.as_ptr() as usize - base) as u32;
        start..start + s.len() as u32
    };
    let mut fields = Vec::with_capacity(resp.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = version == 0;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        fields.push((range(name), range(h.value)));
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(h.value).ok_or(WireError::Malformed("bad Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(WireError::Malformed("conflicting Content-Length"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked || !trimmed(h.value).eq_ignore_ascii_case(b"chunked") || version == 0 {
                return Err(WireError::Malformed("unsupported Transfer-Encoding"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',').map(trimmed) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    close = false;
                }
            }
        }
    }
    // A 204 or 304 has no body whatever it declares (RFC 9112 section 6.3); one that declares
    // a body may still send it, so its connection is not reused (security rule 5).
    if matches!(status, 204 | 304) && (chunked || length.is_some_and(|n| n > 0)) {
        close = true;
    }
    let framing = match (status, chunked, length) {
        (204 | 304, _, _) => Framing::None,
        (_, true, Some(_)) => {
            return Err(WireError::Malformed(
                "both Transfer-Encoding and Content-Length",
            ))
        }
        (_, true, None) => Framing::Chunked,
        (_, false, Some(0)) => Framing::None,
        (_, false, Some(n)) => Framing::Length(n),
        (_, false, None) => Framing::UntilClose,
    };
    Ok(Some(Head {
        status,
        len,
        fields,
        framing,
        keep_alive: !close,
    }))
}

/// Whether `bytes` hold the blank line that ends a head (CRLF or bare LF line ends).
fn ends_head(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    while let Some(at) = rest.iter().position(|&b| b == b'\n') {
        rest = &rest[at + 1..];
        if rest.first() == Some(&b'\n') || rest.starts_with(b"\r\n") {
            return true;
        }
    }
    false
}

/// A peer reset or abort: no answer is coming on this connection.
fn is_reset(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(err.kind(), ConnectionReset | ConnectionAborted | BrokenPipe)
}

/// `1*DIGIT`, nothing else (no sign, no spaces inside), at most 15 digits.
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = trimmed(v);
    if v.is_empty() || v.len() > 15 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

fn trimmed(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

/// Reads a chunked body (RFC 9112 section 7.1) to its last chunk and the end of its trailers.
async fn read_chunked<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    limit: usize,
) -> Result<Bytes, WireError> {
    let mut body = BytesMut::new();
    loop {
        let (skip, size) = loop {
            match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete(found)) => break found,
                Ok(httparse::Status::Partial) if buf.len() < 1024 => {}
                _ => return Err(WireError::Malformed("bad chunk size line")),
            }
            if fill(io, buf).await? == 0 {
                return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        };
        buf.advance(skip);
        if size == 0 {
            break;
        }
        let size = usize::try_from(size).map_err(|_| WireError::TooLarge)?;
        if body
            .len()
            .checked_add(size)
            .is_none_or(|total| total > limit)
        {
            return Err(WireError::TooLarge);
        }
        while buf.len() < size + 2 {
            if fill(io, buf).await? == 0 {
                return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(WireError::Malformed("chunk without its CRLF"));
        }
        buf.advance(size + 2);
    }
    // Trailer fields, ignored, up to the empty line.
    let mut seen = 0;
    loop {
        match buf.windows(2).position(|w| w == b"\r\n") {
            Some(0) => {
                buf.advance(2);
                return Ok(body.freeze());
            }
            Some(end) => {
                seen += end + 2;
                buf.advance(end + 2);
            }
            None if fill(io, buf).await? == 0 => {
                return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            None => {}
        }
        if seen + buf.len() > MAX_TRAILERS {
            return Err(WireError::Malformed("trailers too large"));
        }
    }
}

#[cfg(test)]
mod tests;
