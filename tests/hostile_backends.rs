//! Broken backends: whatever a backend sends, the client gets an answer
//! from Meridian, promptly. A response that is not HTTP, or whose framing
//! two parsers could read differently, becomes a 502 page; its connection is
//! never reused, and the failure counts toward passive health. A body cut
//! short is never passed off as complete.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use meridian::server::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A backend written by hand: `/healthz` is answered `200`, every other
/// request with `answer`, after which the connection is closed when
/// `close`, and otherwise stays open (a broken backend does not politely
/// close). Records how many requests each connection carried.
struct BrokenBackend {
    addr: SocketAddr,
    /// Requests read on each connection but health checks.
    per_connection: Arc<Mutex<Vec<Arc<AtomicUsize>>>>,
}

impl BrokenBackend {
    async fn start(answer: &'static [u8], close: bool) -> BrokenBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let per_connection: Arc<Mutex<Vec<Arc<AtomicUsize>>>> = Arc::default();
        let all = Arc::clone(&per_connection);
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let all = Arc::clone(&all);
                tokio::spawn(async move {
                    let count = Arc::new(AtomicUsize::new(0));
                    let mut buf = vec![0u8; 8192];
                    let mut pending = Vec::new();
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            let health = pending.starts_with(b"GET /healthz");
                            pending.drain(..end + 4);
                            if health {
                                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                let _ = s.write_all(ok).await;
                                continue;
                            }
                            if count.fetch_add(1, Ordering::SeqCst) == 0 {
                                all.lock().unwrap().push(Arc::clone(&count));
                            }
                            let _ = s.write_all(answer).await;
                            if close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        BrokenBackend {
            addr,
            per_connection,
        }
    }

    fn requests_per_connection(&self) -> Vec<usize> {
        self.per_connection
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect()
    }
}

async fn meridian(backend: SocketAddr) -> Running {
    let text = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n\
         [[region]]\nname = \"us\"\nbackends = [\"http://{backend}\"]\n\
         [region.health]\ninterval = \"100ms\"\ntimeout = \"300ms\"\n\
         [region.outlier]\nconsecutive_failures = 3\nbase_ejection_time = \"60s\"\n"
    );
    start_healthy(&text, &["us"]).await
}

/// Sends a GET and reads until the connection closes or a second passes
/// without more; the answer and whether it closed.
async fn get_raw(m: &Running, path: &str) -> (String, bool) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
    raw_exchange(m.http_addr, request.as_bytes()).await
}

fn backend_state(m: &Running) -> String {
    let v = serde_json::to_value(meridian::admin::status_body(&m.shared.load())).unwrap();
    v["regions"][0]["backends"][0]["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_broken_response_becomes_a_prompt_502_and_its_connection_is_never_reused() {
    let cases: [(&str, &'static [u8]); 7] = [
        ("not HTTP", b"SSH-2.0-OpenSSH_9.2\r\n\r\n"),
        ("invalid status line", b"HTTP/1.1 2OO OK\r\ncontent-length: 2\r\n\r\nok"),
        (
            "differing Content-Lengths",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        ),
        (
            "Content-Length with Transfer-Encoding",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        (
            "bare CR in a header",
            b"HTTP/1.1 200 OK\r\nx-a: a\rb\r\ncontent-length: 2\r\n\r\nok",
        ),
        (
            "NUL in a header",
            b"HTTP/1.1 200 OK\r\nx-a: a\0b\r\ncontent-length: 2\r\n\r\nok",
        ),
        (
            "obsolete line folding",
            b"HTTP/1.1 200 OK\r\nx-a: a\r\n b\r\ncontent-length: 2\r\n\r\nok",
        ),
    ];
    for (name, answer) in cases {
        let backend = BrokenBackend::start(answer, false).await;
        let m = meridian(backend.addr).await;
        for i in 0..3 {
            let started = tokio::time::Instant::now();
            let (answer, _) = get_raw(&m, "/").await;
            assert!(
                answer.starts_with("HTTP/1.1 502 "),
                "{name}, request {i}: {answer}"
            );
            assert!(
                answer.contains("temporarily unavailable") || answer.contains("<html"),
                "{name}: the branded page: {answer}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{name}: answered promptly, not at a timeout"
            );
        }
        let per_connection = backend.requests_per_connection();
        assert!(!per_connection.is_empty(), "{name}: the backend was asked");
        assert!(
            per_connection.iter().all(|&n| n == 1),
            "{name}: a connection carried more than one request: {per_connection:?}"
        );
        wait_for(Duration::from_secs(2), "the backend ejected", || async {
            backend_state(&m) == "ejected"
        })
        .await;
        m.shutdown().await;
    }
}

#[tokio::test]
async fn a_body_cut_short_is_never_passed_off_as_complete() {
    let cases: [(&str, &'static [u8], &str); 2] = [
        (
            "Content-Length longer than the body",
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this",
            "only this",
        ),
        (
            "invalid chunk after a valid one",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
            "hello",
        ),
    ];
    for (name, answer, sent) in cases {
        let backend = BrokenBackend::start(answer, true).await;
        let m = meridian(backend.addr).await;
        let (answer, closed) = get_raw(&m, "/").await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{name}: {answer}");
        let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
        assert!(body.contains(sent), "{name}: {body:?}");
        if answer.to_ascii_lowercase().contains("content-length: 100") {
            assert!(body.len() < 100, "{name}: {body:?}");
        } else {
            assert!(!body.ends_with("0\r\n\r\n"), "{name}: completed: {body:?}");
        }
        assert!(closed, "{name}: the client's connection is closed");
        m.shutdown().await;
    }
}
