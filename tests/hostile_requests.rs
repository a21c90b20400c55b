//! Hostile clients: raw bytes on a socket, and a backend recording exactly
//! what reaches it. A malformed request gets a clean 4xx (5xx for a coding
//! Meridian does not implement) and nothing reaches the backend; framing two
//! parsers could read differently is never forwarded ambiguously, which the
//! recorded bytes show when read again under lenient framings.

mod common;

use common::recording::{request_lines, Framing, RecordingBackend};
use common::*;
use meridian::server::Running;

async fn meridian(backend: &RecordingBackend) -> Running {
    let text = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n\
         [[region]]\nname = \"us\"\nbackends = [\"{}\"]\n\
         [region.health]\ninterval = \"100ms\"\ntimeout = \"300ms\"\n",
        backend.url()
    );
    start_healthy(&text, &["us"]).await
}

/// Sends `bytes` on a new connection: the answer, and whether it closed.
async fn exchange(m: &Running, bytes: &[u8]) -> (String, bool) {
    raw_exchange(m.http_addr, bytes).await
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

/// Requests refused with their status, and whether the connection must close.
fn refused_cases() -> Vec<(&'static str, Vec<u8>, u16, bool)> {
    let get = |extra: &str| format!("GET / HTTP/1.1\r\nHost: a\r\n{extra}\r\n").into_bytes();
    let post = |extra: &str, body: &str| {
        format!("POST / HTTP/1.1\r\nHost: a\r\n{extra}\r\n{body}").into_bytes()
    };
    let many: String = (0..150).map(|i| format!("x-{i}: a\r\n")).collect();
    vec![
        (
            "junk after the version",
            b"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n".to_vec(),
            400,
            true,
        ),
        ("HTTP/0.9", b"GET /\r\n\r\n".to_vec(), 400, true),
        (
            "invalid method",
            b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            400,
            true,
        ),
        ("space in a header name", get("Fo o: b\r\n"), 400, true),
        ("NUL in a value", get("Foo: a\0b\r\n"), 400, true),
        ("bare CR in a value", get("Foo: a\rb\r\n"), 400, true),
        (
            "control character in a value",
            get("Foo: a\x01b\r\n"),
            400,
            true,
        ),
        ("DEL in a value", get("Foo: a\x7fb\r\n"), 400, true),
        ("obsolete line folding", get("Foo: a\r\n b\r\n"), 400, true),
        ("whitespace before the colon", get("Foo : b\r\n"), 400, true),
        (
            "request target over the cap",
            format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            414,
            true,
        ),
        (
            "head over the cap",
            get(&format!("X-A: {}\r\n", "a".repeat(70_000))),
            431,
            true,
        ),
        ("too many headers", get(&many), 431, true),
        (
            "Content-Length values differ",
            post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
            400,
            true,
        ),
        (
            "Content-Length list differs",
            post("Content-Length: 5, 6\r\n", "hello!"),
            400,
            true,
        ),
        (
            "Content-Length with a sign",
            post("Content-Length: +5\r\n", "hello"),
            400,
            true,
        ),
        (
            "negative Content-Length",
            post("Content-Length: -1\r\n", ""),
            400,
            true,
        ),
        (
            "hexadecimal Content-Length",
            post("Content-Length: 0x5\r\n", "hello"),
            400,
            true,
        ),
        (
            "Content-Length with Transfer-Encoding",
            post(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            400,
            true,
        ),
        (
            "Transfer-Encoding before Content-Length",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                "0\r\n\r\n",
            ),
            400,
            true,
        ),
        (
            "Transfer-Encoding with a tab, and Content-Length",
            post(
                "content-length: 0\r\nTRANSFER-ENCODING:\tchunked\r\n",
                "0\r\n\r\n",
            ),
            400,
            true,
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
            true,
        ),
        (
            "unknown coding alone",
            post("Transfer-Encoding: gzip\r\n", "abc"),
            400,
            true,
        ),
        (
            "chunked not last",
            post("Transfer-Encoding: chunked, gzip\r\n", "0\r\n\r\n"),
            400,
            true,
        ),
        (
            "chunked twice",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            400,
            true,
        ),
        (
            "look-alike coding",
            post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
            400,
            true,
        ),
        (
            "unknown coding before chunked",
            post("Transfer-Encoding: foo, chunked\r\n", "0\r\n\r\n"),
            501,
            true,
        ),
        (
            "invalid chunk size",
            post("Transfer-Encoding: chunked\r\n", "zz\r\nabc\r\n0\r\n\r\n"),
            400,
            true,
        ),
        (
            "chunk size overflow",
            post(
                "Transfer-Encoding: chunked\r\n",
                "fffffffffffffffff\r\nabc\r\n0\r\n\r\n",
            ),
            400,
            true,
        ),
        (
            "no Host in HTTP/1.1",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            400,
            false,
        ),
        ("two Host headers", get("Host: b\r\n"), 400, false),
        (
            "Host with user info",
            b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n".to_vec(),
            400,
            false,
        ),
        (
            "CONNECT",
            b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n".to_vec(),
            405,
            false,
        ),
    ]
}

#[tokio::test]
async fn malformed_requests_get_a_clean_answer_and_nothing_reaches_the_backend() {
    let backend = RecordingBackend::start().await;
    let m = meridian(&backend).await;
    // One ordinary request first: the backend does record what it gets.
    let (answer, _) = exchange(&m, b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let before = backend.total();
    assert!(before > 0);
    for (name, bytes, status, closes) in refused_cases() {
        let (answer, closed) = exchange(&m, &bytes).await;
        assert_eq!(status_of(&answer), status, "{name}: {answer}");
        if closes {
            assert!(closed, "{name}: the connection is closed after the answer");
        }
        assert_eq!(
            backend.total(),
            before,
            "{name}: nothing reached the backend"
        );
    }
    m.shutdown().await;
}

/// A request carrying another one, `/smuggled`, where a second parser
/// might find it.
fn smuggling_cases() -> Vec<(&'static str, Vec<u8>)> {
    let inner = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let chunk = format!("{:x}\r\n{inner}\r\n0\r\n\r\n", inner.len());
    vec![
        (
            "CL.TE: Content-Length covers a request after the last chunk",
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{inner}",
                5 + inner.len()
            )
            .into_bytes(),
        ),
        (
            "TE.CL: a chunk holds a request that Content-Length leaves out",
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{chunk}"
            )
            .into_bytes(),
        ),
        (
            "TE with a tab and Content-Length",
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding:\tchunked\r\n\r\n{chunk}"
            )
            .into_bytes(),
        ),
        (
            "a chunk extension and a trailer",
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{inner}\r\n0\r\nX-Trailer: 1\r\n\r\n",
                inner.len()
            )
            .into_bytes(),
        ),
    ]
}

#[tokio::test]
async fn smuggling_attempts_reach_the_backend_with_one_framing_or_not_at_all() {
    let backend = RecordingBackend::start().await;
    let m = meridian(&backend).await;
    for (name, bytes) in smuggling_cases() {
        let (answer, _) = exchange(&m, &bytes).await;
        let statuses: Vec<u16> = answer
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| status_of(&answer[i..]))
            .collect();
        assert!(!statuses.is_empty(), "{name}: no answer");
        for recorded in backend.bytes() {
            let strict = request_lines(&recorded, Framing::Strict);
            let by_length = request_lines(&recorded, Framing::LengthFirst);
            let by_chunks = request_lines(&recorded, Framing::ChunkedFirst);
            let text = String::from_utf8_lossy(&recorded);
            assert_eq!(strict, by_length, "{name}: framings disagree on\n{text}");
            assert_eq!(strict, by_chunks, "{name}: framings disagree on\n{text}");
            assert!(
                strict
                    .iter()
                    .all(|l| !l.contains("smuggled") && !l.starts_with('<')),
                "{name}: {strict:?} in\n{text}"
            );
        }
        // Where a second request did arrive on the client's connection, it
        // is only ever answered as a request of its own, never as part of
        // the first.
        assert!(statuses.len() <= 2, "{name}: {statuses:?}");
    }
    m.shutdown().await;
}

#[tokio::test]
async fn a_smuggler_behind_an_ordinary_request_is_refused_and_only_the_first_is_forwarded() {
    let backend = RecordingBackend::start().await;
    let m = meridian(&backend).await;
    let bytes = b"POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
        POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n\
        0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let (answer, closed) = exchange(&m, bytes).await;
    let statuses: Vec<u16> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| status_of(&answer[i..]))
        .collect();
    assert_eq!(statuses, [200, 400], "{answer}");
    assert!(closed, "the connection is closed after the refusal");
    let seen = String::from_utf8_lossy(&backend.bytes().concat()).into_owned();
    assert!(seen.contains("POST /first"), "{seen}");
    assert_eq!(
        seen.matches("POST ").count(),
        1,
        "only the first was forwarded: {seen}"
    );
    assert!(
        !seen.contains("/second") && !seen.contains("/smuggled"),
        "{seen}"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn repeated_identical_lengths_reach_the_backend_as_one() {
    let backend = RecordingBackend::start().await;
    let m = meridian(&backend).await;
    let bytes =
        b"POST /twice HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello";
    let (answer, _) = exchange(&m, bytes).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen = String::from_utf8_lossy(&backend.bytes().concat()).to_ascii_lowercase();
    assert_eq!(seen.matches("content-length").count(), 1, "{seen}");
    assert!(
        seen.contains("content-length: 5\r\n") && seen.ends_with("hello"),
        "{seen}"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn upgrades_that_are_not_websocket_are_stripped_never_tunnelled() {
    let backend = RecordingBackend::start().await;
    let m = meridian(&backend).await;
    let cases: [&[u8]; 2] = [
        b"GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        b"GET /foo HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: foo/1\r\n\r\n",
    ];
    for bytes in cases {
        let (answer, _) = exchange(&m, bytes).await;
        assert_eq!(status_of(&answer), 200, "{answer}");
        assert!(!answer.contains("101"), "{answer}");
    }
    let seen = String::from_utf8_lossy(&backend.bytes().concat()).to_ascii_lowercase();
    assert!(
        seen.contains("get /h2c") && seen.contains("get /foo"),
        "{seen}"
    );
    for stripped in ["upgrade", "http2-settings", "h2c\r\n", "foo/1"] {
        assert!(
            !seen.contains(stripped),
            "{stripped} reached the backend:\n{seen}"
        );
    }
    m.shutdown().await;
}
