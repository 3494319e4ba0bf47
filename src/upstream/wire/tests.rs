//! Framing, limits and reuse of the wire reader, on answers held in memory (whole, and a byte
//! per read so every "need more" branch runs).

use super::*;

fn read(raw: &[u8]) -> Result<(Answer, bool), WireError> {
    read_ready(raw, 1024)
}

/// The same bytes delivered one at a time: every "need more" branch runs.
fn read_bytewise(raw: &[u8]) -> Result<(Answer, bool), WireError> {
    read_ready(tokio_test_reader(raw), 1024)
}

/// A reader that returns one byte per read.
fn tokio_test_reader(raw: &[u8]) -> impl AsyncRead + Unpin + '_ {
    struct OneByte<'a>(&'a [u8]);
    impl AsyncRead for OneByte<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            out: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some((first, rest)) = self.0.split_first() {
                out.put_slice(&[*first]);
                self.0 = rest;
            }
            std::task::Poll::Ready(Ok(()))
        }
    }
    OneByte(raw)
}

const OK: &[u8] =
    b"HTTP/1.1 200 OK\r\nX-Authentik-Username: akadmin\r\nContent-Length: 2\r\n\r\nok";

#[test]
fn content_length_answer_is_read_whole_and_reusable() {
    for (answer, reusable) in [read(OK).unwrap(), read_bytewise(OK).unwrap()] {
        assert_eq!(answer.status, 200);
        assert_eq!(&answer.body[..], b"ok");
        assert!(reusable);
        let names: Vec<&[u8]> = answer.headers().map(|(n, _)| n).collect();
        assert_eq!(names, [&b"X-Authentik-Username"[..], b"Content-Length"]);
        assert_eq!(
            answer.values("x-authentik-username").next(),
            Some(&b"akadmin"[..])
        );
    }
}

#[test]
fn chunked_answer_is_decoded_with_extensions_and_trailers() {
    let raw = b"HTTP/1.1 302 Found\r\nTransfer-Encoding: chunked\r\n\r\n\
                5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    for (answer, reusable) in [read(raw).unwrap(), read_bytewise(raw).unwrap()] {
        assert_eq!(answer.status, 302);
        assert_eq!(&answer.body[..], b"hello world");
        assert!(reusable);
    }
}

#[test]
fn close_delimited_and_connection_close_answers_are_not_reused() {
    let (a, reusable) = read(b"HTTP/1.1 200 OK\r\n\r\nuntil the end").unwrap();
    assert_eq!(&a.body[..], b"until the end");
    assert!(!reusable);
    let (_, reusable) =
        read(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert!(!reusable);
    let (_, reusable) = read(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert!(!reusable);
    let (_, reusable) =
        read(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert!(reusable);
}

#[test]
fn a_bodiless_status_that_declares_a_body_is_not_reused() {
    // The declared bytes may arrive after the head: the connection cannot be trusted again.
    for head in [
        &b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n"[..],
        b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        let (a, reusable) = read(head).unwrap();
        assert!(a.body.is_empty());
        assert!(!reusable, "{}", String::from_utf8_lossy(head));
    }
    let (_, reusable) = read(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert!(reusable);
}

#[test]
fn bytes_after_the_answer_forbid_reuse() {
    let (_, reusable) =
        read(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\n").unwrap();
    assert!(!reusable, "a 204 has no body: what follows is not ours");
}

#[test]
fn framing_violations_are_refused() {
    for raw in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: a\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Nul: a\0b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
    ] {
        let got = read(raw);
        assert!(
            matches!(got, Err(WireError::Malformed(_))),
            "{:?}: {got:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn limits_hold() {
    let big = b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n";
    assert!(matches!(read(big), Err(WireError::TooLarge)));
    let mut chunks = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunks.extend_from_slice(b"200\r\n");
        chunks.extend_from_slice(&[b'a'; 0x200]);
        chunks.extend_from_slice(b"\r\n");
    }
    assert!(matches!(read(&chunks), Err(WireError::TooLarge)));
    let mut unbounded = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
    unbounded.extend_from_slice(&[b'a'; 1025]);
    assert!(matches!(read(&unbounded), Err(WireError::TooLarge)));
    let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
    while head.len() <= MAX_HEAD {
        head.extend_from_slice(b"X-Padding: 0123456789012345678901234567890123456789\r\n");
    }
    assert!(matches!(read(&head), Err(WireError::Malformed(_))));
    let many: Vec<u8> = std::iter::once(&b"HTTP/1.1 200 OK\r\n"[..])
        .chain(std::iter::repeat_n(&b"A: b\r\n"[..], MAX_FIELDS + 1))
        .chain(std::iter::once(&b"\r\n"[..]))
        .flatten()
        .copied()
        .collect();
    assert!(matches!(read(&many), Err(WireError::Malformed(_))));
}

#[test]
fn a_sixteen_digit_chunk_size_is_too_large_not_a_panic() {
    let raw =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\nFFFFFFFFFFFFFFFE\r\n";
    assert!(matches!(read(raw), Err(WireError::TooLarge)));
    assert!(matches!(read_bytewise(raw), Err(WireError::TooLarge)));
}

#[test]
fn a_head_over_the_bound_is_refused_even_when_it_arrives_at_once() {
    let mut raw = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
    raw.resize(MAX_HEAD + 100, b'a');
    raw.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
    let mut io = &raw[..];
    let mut buf = BytesMut::with_capacity(4 * MAX_HEAD);
    let fut = std::pin::pin!(read_answer(&mut io, &mut buf, 1024));
    use std::future::Future;
    let got = fut.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
    assert!(matches!(
        got,
        std::task::Poll::Ready(Err(WireError::Malformed("head too large")))
    ));
}

#[test]
fn bare_lf_heads_parse() {
    let (a, _) = read(b"HTTP/1.1 200 OK\nX-Authentik-Username: a\nContent-Length: 0\n\n").unwrap();
    assert_eq!(a.values("x-authentik-username").next(), Some(&b"a"[..]));
}

#[test]
fn truncation_is_an_io_error_and_silence_is_closed() {
    assert!(matches!(read(b""), Err(WireError::Closed)));
    for raw in [
        &b"HTTP/1.1 200 OK\r\nContent-Le"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
    ] {
        assert!(matches!(read(raw), Err(WireError::Io(_))), "{raw:?}");
    }
}
