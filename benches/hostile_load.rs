//! Memory under hostile load: the Meridian binary (a process of its own, so
//! that its RSS is its own) in front of an in-process backend, while this
//! runner opens, phase after phase and keeping each:
//!
//! 1. 10 000 keep-alive connections, each idle after one request;
//! 2. 1 000 slowloris connections, sending a header byte every 5 s;
//! 3. 100 clients asking for a 100 MB response and never reading it.
//!
//! A normal client sends `GET /` every 100 ms throughout, from a thread of
//! its own; the backend gives each connection a thread, so that neither the
//! hostile clients nor the 100 MB streams delay it here rather than in
//! Meridian. The table gives Meridian's RSS after each phase, what each
//! connection added (for the idle ones, also 3 s later, once the allocator
//! has given back what they used for their first request), the peak RSS
//! and the normal requests' median and slowest times in each phase (one
//! slow request can be the machine's doing; a slow median is Meridian's).
//!
//! Run with `cargo bench --bench hostile_load`. Under `cargo test
//! --all-targets` it does nothing. Needs `ulimit -n` above 22 000.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, Instant};

const IDLE: usize = 10_000;
const SLOWLORIS: usize = 1_000;
const NON_READERS: usize = 100;
const BIG: usize = 100 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Runs `task` on a runtime of its own, on a thread of its own, so that
/// the hostile clients' work cannot delay it: what is measured is Meridian.
fn on_own_runtime<F>(task: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()> + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(task());
    });
}

/// `/big` streams 100 MB; anything else is a short `ok`. Each connection
/// has a thread of its own, so that the kernel shares the CPU between the
/// streams and a normal request: the backend is never what delays it.
fn backend() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            stream.set_nonblocking(true).unwrap();
            on_own_runtime(move || async move {
                serve_backend(TcpStream::from_std(stream).unwrap()).await;
            });
        }
    });
    addr
}

async fn serve_backend(stream: TcpStream) {
    let service = service_fn(|req: Request<Incoming>| async move {
        let body: Body = if req.uri().path() == "/big" {
            let chunk = Bytes::from(vec![b'x'; CHUNK]);
            let frames = futures_util::stream::iter(
                (0..BIG / CHUNK).map(move |_| Ok(Frame::data(chunk.clone()))),
            );
            StreamBody::new(frames).boxed()
        } else {
            Full::new(Bytes::from_static(b"ok")).boxed()
        };
        Ok::<_, Infallible>(Response::new(body))
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One request on a fresh connection; the time to its whole answer.
async fn probe(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    get_ok(addr).await.expect("the probe failed");
    started.elapsed()
}

/// A keep-alive connection left idle after one request.
async fn idle(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    while !got.ends_with(b"ok") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the answer");
        got.extend_from_slice(&buf[..n]);
    }
    s
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("the hostile load is not run as a test: use `cargo bench --bench hostile_load`");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let backend = backend();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("meridian.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttp = \"{addr}\"\n\
             [limits]\nmax_connections = 20000\nheader_read_timeout = \"300s\"\n\
             keepalive_idle_timeout = \"300s\"\nsend_timeout = \"300s\"\n\
             [log]\naccess = false\n\
             [[region]]\nname = \"us\"\nbackends = [\"http://{backend}\"]\n\
             [region.health]\npath = \"/\"\n"
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["run", "-c"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("meridian starts");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), get_ok(addr)).await {
            break;
        }
        assert!(Instant::now() < deadline, "Meridian does not answer");
        sleep(Duration::from_millis(100)).await;
    }

    // The normal client, and a sampler of the peak RSS.
    let normal = Probes::default();
    let peak = Arc::new(AtomicU64::new(0));
    let (s, p) = (normal.clone(), Arc::clone(&peak));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let halt = Arc::clone(&stop);
    on_own_runtime(move || async move {
        while !halt.load(Ordering::Relaxed) {
            let took = probe(addr).await;
            s.record(took);
            p.fetch_max(rss_kib(pid), Ordering::Relaxed);
            sleep(Duration::from_millis(100)).await;
        }
    });

    sleep(Duration::from_secs(1)).await;
    let base = rss_kib(pid);
    let mut rows = vec![("started".to_owned(), 0usize, base, normal.take())];

    let mut idle_conns = Vec::with_capacity(IDLE);
    for _ in 0..IDLE / 500 {
        let batch: Vec<_> = (0..500).map(|_| tokio::spawn(idle(addr))).collect();
        for b in batch {
            idle_conns.push(b.await.unwrap());
        }
    }
    sleep(Duration::from_secs(2)).await;
    rows.push((
        format!("+ {IDLE} idle keep-alive"),
        IDLE,
        rss_kib(pid),
        normal.take(),
    ));
    // Each held its first request's buffers for a second; what the
    // allocator frees reaches the OS a little later.
    sleep(Duration::from_secs(3)).await;
    rows.push((
        format!("the same {IDLE}, 3 s later"),
        0,
        rss_kib(pid),
        normal.take(),
    ));

    let mut slow = Vec::with_capacity(SLOWLORIS);
    for _ in 0..SLOWLORIS {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    let dripping = tokio::spawn(async move {
        loop {
            sleep(Duration::from_secs(5)).await;
            for s in &mut slow {
                let _ = s.write_all(b"a").await;
            }
        }
    });
    sleep(Duration::from_secs(2)).await;
    rows.push((
        format!("+ {SLOWLORIS} slowloris"),
        SLOWLORIS,
        rss_kib(pid),
        normal.take(),
    ));

    let mut stalled = Vec::with_capacity(NON_READERS);
    for _ in 0..NON_READERS {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    // Long enough for every buffer on the way to fill.
    sleep(Duration::from_secs(10)).await;
    rows.push((
        format!("+ {NON_READERS} never reading 100 MB"),
        NON_READERS,
        rss_kib(pid),
        normal.take(),
    ));
    sleep(Duration::from_secs(5)).await;
    let settled = rss_kib(pid);
    let last = normal.take();

    stop.store(true, Ordering::Relaxed);
    dripping.abort();
    let _ = child.kill();
    let _ = child.wait();

    println!(
        "| phase | Meridian RSS, MB | added per connection, KB | normal requests: median / slowest, ms |"
    );
    println!("|---|---|---|---|");
    let mut previous = base;
    // A row of no new connections gives what the previous row's cost once settled.
    let mut counted = (base, 0);
    for (name, n, rss, slow) in &rows {
        let per = match (*n, counted.1) {
            (0, 0) => "-".to_owned(),
            (0, before) => format!("{:.1}", (*rss as f64 - counted.0 as f64) / before as f64),
            (n, _) => {
                counted = (previous, n);
                format!("{:.1}", (*rss as f64 - previous as f64) / n as f64)
            }
        };
        println!("| {name} | {:.1} | {per} | {slow} |", *rss as f64 / 1024.0);
        previous = *rss;
    }
    println!(
        "\npeak RSS {:.1} MB; 5 s later {:.1} MB (normal requests meanwhile: {last} ms)",
        peak.load(Ordering::Relaxed) as f64 / 1024.0,
        settled as f64 / 1024.0,
    );
    drop(idle_conns);
    drop(stalled);
}

/// The normal client's request times since they were last taken.
#[derive(Clone, Default)]
struct Probes(Arc<std::sync::Mutex<Vec<Duration>>>);

impl Probes {
    fn record(&self, took: Duration) {
        self.0.lock().unwrap().push(took);
    }

    /// The median and slowest of the times recorded since the last call.
    fn take(&self) -> Phase {
        let mut times = std::mem::take(&mut *self.0.lock().unwrap());
        times.sort_unstable();
        Phase {
            median: times.get(times.len() / 2).copied(),
            slowest: times.last().copied(),
        }
    }
}

/// The normal requests of one phase.
struct Phase {
    median: Option<Duration>,
    slowest: Option<Duration>,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.median, self.slowest) {
            (Some(m), Some(s)) => write!(
                f,
                "{:.1} / {:.1}",
                m.as_secs_f64() * 1e3,
                s.as_secs_f64() * 1e3
            ),
            _ => f.write_str("none"),
        }
    }
}

/// `GET /` on a fresh connection, answered `200`.
async fn get_ok(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await?;
    if answer.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        let head = String::from_utf8_lossy(&answer[..answer.len().min(400)]).into_owned();
        Err(std::io::Error::other(format!("answered {head:?}")))
    }
}
