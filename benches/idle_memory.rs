//! Heap held by an idle keep-alive client connection: Meridian runs
//! in-process in front of a loopback backend, 1 000 clients each send one
//! `GET /`, read the answer and stay connected. A counting allocator gives
//! the live heap bytes before and after, per connection, and which
//! allocation sizes hold them. Unlike RSS, this does not depend on how the
//! allocator lays pages out, so it shows exactly what each connection keeps.
//!
//! Run with `cargo bench --bench idle_memory`. Under `cargo test` it opens
//! 50 connections.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Counts live heap bytes, in total and by allocation size class.
struct Counting;

/// Size classes: powers of two up to 64 KiB, then one for everything larger.
const CLASSES: usize = 18;
static LIVE: AtomicI64 = AtomicI64::new(0);
static BY_CLASS: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];

fn class(size: usize) -> usize {
    (usize::BITS - size.max(1).saturating_sub(1).leading_zeros()).min(CLASSES as u32 - 1) as usize
}

#[allow(unsafe_code)]
// SAFETY: every call is passed on unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        BY_CLASS[class(layout.size())].fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        BY_CLASS[class(layout.size())].fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        BY_CLASS[class(layout.size())].fetch_sub(layout.size() as i64, Ordering::Relaxed);
        BY_CLASS[class(new_size)].fetch_add(new_size as i64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn snapshot() -> (i64, [i64; CLASSES]) {
    (
        LIVE.load(Ordering::SeqCst),
        std::array::from_fn(|i| BY_CLASS[i].load(Ordering::SeqCst)),
    )
}

/// A backend answering every request with `hello`, keep-alive.
async fn backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut have = Vec::new();
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    have.extend_from_slice(&buf[..n]);
                    while let Some(end) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                        have.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello\n";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// One client: a request, its whole answer, then the connection left open.
async fn idle_client(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nhost: app.example\r\nuser-agent: idle/1\r\naccept: */*\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while !got.ends_with(b"hello\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    s
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n: usize = if quick { 50 } else { 1000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let backend = backend().await;
        // A plain listener, then one that also takes HTTP/2 by prior
        // knowledge and must tell the two apart.
        for (what, keys) in [("", ""), (" (listener with h2c = true)", "h2c = true\n")] {
            let text = format!(
                "[listen]\nhttp = \"127.0.0.1:0\"\n{keys}[limits]\nkeepalive_idle_timeout = \"300s\"\n\
                 header_read_timeout = \"300s\"\n[log]\naccess = false\n[proxy]\nregion_header = false\n\
                 [[region]]\nname = \"us\"\nbackends = [\"http://{backend}\"]\n\
                 [region.health]\npath = \"/\"\ninterval = \"60s\"\n"
            );
            let config = meridian::config::Config::parse("idle.toml", &text).unwrap();
            let m = meridian::server::start(config).await.unwrap();
            measure(&m, n, what).await;
            m.shutdown().await;
        }
    });
}

/// Opens `n` idle connections to `m` and prints the heap they hold.
async fn measure(m: &meridian::server::Running, n: usize, what: &str) {
    // The first health check makes the region serve.
    for _ in 0..100 {
        let region = &m.shared.load().regions[0];
        if region.state.serves() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm up: pools, timers, the first connection's one-time costs.
    let mut warm = Vec::new();
    for _ in 0..20 {
        warm.push(idle_client(m.http_addr).await);
    }
    drop(warm);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut clients = Vec::with_capacity(n);
    let (before, classes_before) = snapshot();
    for _ in 0..n {
        clients.push(idle_client(m.http_addr).await);
    }
    // Idle connections give their buffers up once at rest.
    tokio::time::sleep(meridian::http1::PARK_AFTER + Duration::from_millis(500)).await;
    let (after, classes_after) = snapshot();
    let per = (after - before) as f64 / n as f64;
    println!("{n} idle keep-alive connections{what}: {per:.0} heap bytes each");
    let mut by_size = BTreeMap::new();
    for i in 0..CLASSES {
        let delta = (classes_after[i] - classes_before[i]) as f64 / n as f64;
        if delta.abs() >= 16.0 {
            by_size.insert(i, delta);
        }
    }
    for (i, delta) in by_size {
        let upper = if i + 1 == CLASSES {
            "larger".to_owned()
        } else {
            format!("<= {} B", 1u64 << i)
        };
        println!("  allocations {upper:>10}: {delta:>8.0} bytes per connection");
    }
    drop(clients);
}
