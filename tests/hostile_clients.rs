//! Slow and idle clients, with the default limits: a slowloris client is
//! closed within `header_read_timeout` (10 s), an upload dripping a byte
//! every 2 s within 30 s, and a crowd of idle and slow connections never
//! keeps a normal client waiting more than a second.

mod common;

use std::time::Duration;

use common::*;
use meridian::server::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Meridian with its default limits in front of one backend.
async fn meridian() -> (Backend, Running) {
    let backend = Backend::start("us-1").await;
    let m = start_healthy(&config_text(&[R("us", &[&backend], &[])], ""), &["us"]).await;
    (backend, m)
}

/// Writes `bytes` one at a time, `every` apart, until the peer closes or
/// answers; returns when that happened and what was answered.
async fn drip(mut s: TcpStream, bytes: &[u8], every: Duration) -> (Duration, String) {
    let started = Instant::now();
    let (mut reader, mut writer) = s.split();
    let mut answer = Vec::new();
    let reading = async {
        let _ = reader.read_to_end(&mut answer).await;
    };
    let writing = async {
        for b in bytes {
            if writer.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(every).await;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = reading => {}
        () = writing => {}
        () = tokio::time::sleep(Duration::from_secs(60)) => panic!("still open after 60 s"),
    }
    (
        started.elapsed(),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_closed_within_the_header_read_timeout() {
    let (backend, m) = meridian().await;
    let s = TcpStream::connect(m.http_addr).await.unwrap();
    let head = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Slow: {}\r\n\r\n",
        "a".repeat(100)
    );
    let (after, answer) = drip(s, head.as_bytes(), Duration::from_millis(500)).await;
    assert!(
        after < Duration::from_secs(12),
        "closed after {after:?}, default header_read_timeout 10 s"
    );
    assert!(!answer.contains("200 OK"), "{answer}");
    assert_eq!(backend.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_dripping_a_byte_every_two_seconds_is_closed_within_30_seconds() {
    let (_backend, m) = meridian().await;
    let mut s = TcpStream::connect(m.http_addr).await.unwrap();
    s.write_all(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    let body: Vec<u8> = (0..1000).map(pattern_byte).collect();
    let (after, answer) = drip(s, &body, Duration::from_secs(2)).await;
    assert!(after < Duration::from_secs(30), "closed after {after:?}");
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_idle_and_slow_connections_never_delays_a_normal_client() {
    let (_backend, m) = meridian().await;
    let mut crowd = Vec::new();
    // 450 connections, 900 descriptors in this process: under the common
    // limit of 1024. `cargo bench --bench hostile_load` opens 11 000.
    for i in 0..450 {
        let mut s = TcpStream::connect(m.http_addr).await.unwrap();
        if i % 6 == 0 {
            // Slowloris: a head that never ends.
            s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
                .await
                .unwrap();
        }
        crowd.push(s);
    }
    for _ in 0..20 {
        let started = Instant::now();
        let (status, _, _) = get(&m, "/", &[]).await;
        assert_eq!(status, http::StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a normal request took {:?} beside 450 idle and slow connections",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(crowd);
    m.shutdown().await;
}
