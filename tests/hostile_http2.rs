//! HTTP/2 abuse with frames written by hand (h2c by prior knowledge): rapid
//! resets, stream floods past the concurrency limit, header lists past the
//! size limit and endless CONTINUATION, PING and SETTINGS floods from a
//! client that never reads. Each is bounded: the connection is refused
//! what exceeds the limits, memory stays flat, and another client is
//! served within a second throughout.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use meridian::server::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::time::Instant;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A GET of `/` in HPACK with no dynamic table: `:method GET`, `:path /`,
/// `:scheme http` by static index, `:authority a` as a literal.
fn get_block() -> Vec<u8> {
    vec![0x82, 0x84, 0x86, 0x01, 0x01, b'a']
}

/// A header field `x-big` of `len` bytes, a literal without indexing.
fn big_field(len: usize) -> Vec<u8> {
    let mut f = vec![0x00, 0x05];
    f.extend_from_slice(b"x-big");
    // String length as an HPACK integer with a 7-bit prefix.
    let mut n = len;
    if n < 127 {
        f.push(n as u8);
    } else {
        f.push(127);
        n -= 127;
        while n >= 128 {
            f.push((n % 128 + 128) as u8);
            n /= 128;
        }
        f.push(n as u8);
    }
    f.extend(std::iter::repeat_n(b'v', len));
    f
}

/// What a reader saw of the server's frames.
#[derive(Default)]
struct Seen {
    frames: AtomicUsize,
    resets: AtomicUsize,
    headers: AtomicUsize,
    goaway: AtomicBool,
    closed: AtomicBool,
}

/// Reads and counts the server's frames until the connection ends.
fn read_frames(mut r: OwnedReadHalf) -> Arc<Seen> {
    let seen = Arc::new(Seen::default());
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut head = [0u8; 9];
        loop {
            if r.read_exact(&mut head).await.is_err() {
                s.closed.store(true, Ordering::SeqCst);
                return;
            }
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if r.read_exact(&mut payload).await.is_err() {
                s.closed.store(true, Ordering::SeqCst);
                return;
            }
            s.frames.fetch_add(1, Ordering::SeqCst);
            match head[3] {
                RST_STREAM => s.resets.fetch_add(1, Ordering::SeqCst),
                HEADERS => s.headers.fetch_add(1, Ordering::SeqCst),
                GOAWAY => {
                    s.goaway.store(true, Ordering::SeqCst);
                    0
                }
                _ => 0,
            };
        }
    });
    seen
}

async fn meridian() -> (Backend, Running) {
    let backend = Backend::start("us-1").await;
    let text = config_text(&[R("us", &[&backend], &[])], "")
        .replace("[listen]\n", "[listen]\nh2c = true\n");
    let m = start_healthy(&text, &["us"]).await;
    (backend, m)
}

/// An h2c connection that has sent its preface and an empty SETTINGS.
async fn connect(m: &Running) -> TcpStream {
    let mut s = TcpStream::connect(m.http_addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    s
}

/// Resident memory of this process (Meridian runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A normal HTTP/1.1 client is answered within a second.
async fn served_promptly(m: &Running, during: &str) {
    let started = Instant::now();
    let (status, _, _) = get(m, "/", &[]).await;
    assert_eq!(status, http::StatusCode::OK, "{during}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{during}: a normal request took {:?}",
        started.elapsed()
    );
}

/// Writes `frames` until done, the peer stops reading for 2 s, or it closes.
async fn write_all_frames(w: &mut tokio::net::tcp::OwnedWriteHalf, frames: &[u8]) -> usize {
    let mut written = 0;
    for chunk in frames.chunks(64 * 1024) {
        match tokio::time::timeout(Duration::from_secs(2), w.write_all(chunk)).await {
            Ok(Ok(())) => written += chunk.len(),
            _ => break,
        }
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_resets_cost_no_memory_and_starve_nobody() {
    let (_backend, m) = meridian().await;
    let (r, mut w) = connect(&m).await.into_split();
    let seen = read_frames(r);
    let before = rss_kib();
    let mut attack = Vec::new();
    for i in 0..20_000u32 {
        let stream = 2 * i + 1;
        attack.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &get_block(),
        ));
        attack.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
    }
    let flood = tokio::spawn(async move { write_all_frames(&mut w, &attack).await });
    served_promptly(&m, "during a rapid-reset flood").await;
    flood.await.unwrap();
    served_promptly(&m, "after a rapid-reset flood").await;
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "memory grew {grown} KiB");
    wait_for(
        Duration::from_secs(5),
        "GOAWAY and the connection closed",
        || async { seen.goaway.load(Ordering::SeqCst) && seen.closed.load(Ordering::SeqCst) },
    )
    .await;
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_concurrency_limit_are_refused() {
    let (_backend, m) = meridian().await;
    let (r, mut w) = connect(&m).await.into_split();
    let seen = read_frames(r);
    // 300 requests whose bodies never come: only 100 may be open at once.
    let mut flood = Vec::new();
    for i in 0..300u32 {
        flood.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &get_block()));
    }
    write_all_frames(&mut w, &flood).await;
    wait_for(
        Duration::from_secs(5),
        "streams over the limit refused",
        || async {
            seen.resets.load(Ordering::SeqCst) >= 200 || seen.goaway.load(Ordering::SeqCst)
        },
    )
    .await;
    served_promptly(&m, "with a connection at its stream limit").await;
    drop(w);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_list_past_the_limit_and_endless_continuation_are_refused() {
    let (_backend, m) = meridian().await;
    // One header list of 100 KiB in CONTINUATION frames, over the 64 KiB limit.
    let (r, mut w) = connect(&m).await.into_split();
    let seen = read_frames(r);
    let mut block = get_block();
    block.extend(big_field(100 * 1024));
    let mut frames = Vec::new();
    let mut chunks = block.chunks(16 * 1024).peekable();
    let mut first = true;
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let flags = if last { END_HEADERS | END_STREAM } else { 0 };
        let flags = if first {
            flags | END_STREAM
        } else {
            flags & !END_STREAM
        };
        let kind = if first { HEADERS } else { CONTINUATION };
        frames.extend(frame(kind, flags, 1, chunk));
        first = false;
    }
    write_all_frames(&mut w, &frames).await;
    wait_for(
        Duration::from_secs(5),
        "the oversized list refused",
        || async {
            seen.headers.load(Ordering::SeqCst) > 0
                || seen.resets.load(Ordering::SeqCst) > 0
                || seen.goaway.load(Ordering::SeqCst)
                || seen.closed.load(Ordering::SeqCst)
        },
    )
    .await;
    drop(w);

    // CONTINUATION frames that never end the header block.
    let (r, mut w) = connect(&m).await.into_split();
    let seen = read_frames(r);
    let before = rss_kib();
    let mut frames = frame(HEADERS, END_STREAM, 1, &get_block());
    let filler = big_field(16 * 1024 - 16);
    // 3 MiB: fifty times the limit.
    for _ in 0..200 {
        frames.extend(frame(CONTINUATION, 0, 1, &filler));
    }
    let flood = tokio::spawn(async move { write_all_frames(&mut w, &frames).await });
    served_promptly(&m, "during a CONTINUATION flood").await;
    flood.await.unwrap();
    wait_for(
        Duration::from_secs(5),
        "the endless block refused",
        || async { seen.goaway.load(Ordering::SeqCst) || seen.closed.load(Ordering::SeqCst) },
    )
    .await;
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "memory grew {grown} KiB");
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_settings_floods_from_a_client_that_never_reads_stay_bounded() {
    let (_backend, m) = meridian().await;
    for (kind, payload) in [(PING, vec![0u8; 8]), (SETTINGS, vec![0, 3, 0, 0, 0, 100])] {
        let s = connect(&m).await;
        // The reading half is kept but never read: answers pile up.
        let (_unread, mut w) = s.into_split();
        // 64 MiB of frames: a server that queued an answer to each would
        // grow by more than the bound below.
        let one = frame(kind, 0, 0, &payload);
        let flood: Vec<u8> = one.iter().copied().cycle().take(64 << 20).collect();
        let before = rss_kib();
        let writer = tokio::spawn(async move { write_all_frames(&mut w, &flood).await });
        served_promptly(&m, "during the flood").await;
        let written = writer.await.unwrap();
        served_promptly(&m, "after the flood").await;
        let grown = rss_kib().saturating_sub(before);
        assert!(
            grown < 32 * 1024,
            "frame type {kind}: memory grew {grown} KiB after {written} bytes"
        );
        let _ = DATA;
    }
    m.shutdown().await;
}

#[tokio::test]
async fn the_listener_tells_http2_from_http1_by_the_preface_even_in_pieces() {
    let backend = Backend::start("us-1").await;
    let text = config_text(
        &[R("us", &[&backend], &[])],
        "[limits]\nheader_read_timeout = \"2s\"\n",
    )
    .replace("[listen]\n", "[listen]\nh2c = true\n");
    let m = start_healthy(&text, &["us"]).await;
    let pause = || tokio::time::sleep(Duration::from_millis(60));

    // HTTP/2's preface in three pieces, then a GET: answered over HTTP/2.
    let mut s = TcpStream::connect(m.http_addr).await.unwrap();
    for piece in [&PREFACE[..1], &PREFACE[1..9], &PREFACE[9..]] {
        s.write_all(piece).await.unwrap();
        pause().await;
    }
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    s.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &get_block()))
        .await
        .unwrap();
    let (r, w) = s.into_split();
    let seen = read_frames(r);
    wait_for(Duration::from_secs(5), "an HTTP/2 answer", || async {
        seen.headers.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(!seen.goaway.load(Ordering::SeqCst));
    // This client answers no PING, so a graceful GOAWAY would wait for
    // the hard stop.
    drop(w);

    // HTTP/1.1 that begins like the preface: a `P`, a pause, then the
    // rest of a POST, then another request after the connection rested.
    let mut s = TcpStream::connect(m.http_addr).await.unwrap();
    s.write_all(b"P").await.unwrap();
    pause().await;
    s.write_all(b"OST / HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nhi")
        .await
        .unwrap();
    let mut answer = String::new();
    read_until(&mut s, &mut answer, |t| t.contains("us-1")).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    tokio::time::sleep(meridian::http1::PARK_AFTER + Duration::from_millis(300)).await;
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    read_until(&mut s, &mut answer, |t| t.contains("us-1")).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");

    // A `P` and then silence is closed after the header read timeout.
    let mut s = TcpStream::connect(m.http_addr).await.unwrap();
    s.write_all(b"P").await.unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a lone `P` held its connection");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(4),
        "closed after {waited:?}, not the header read timeout"
    );
    m.shutdown().await;
}
