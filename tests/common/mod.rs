//! Test support: real hyper backends on 127.0.0.1:0 that can be taken off the
//! network and brought back, configuration builders, a client, and waiting
//! with a deadline.
#![allow(dead_code)]

pub mod recording;
pub mod webhook;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meridian::config::Config;
use meridian::server::{self, Running};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A deterministic byte stream of `len` bytes in 64 KiB chunks: byte i is `(i * 7 + i / 251) as u8`.
pub struct PatternBody {
    sent: u64,
    len: u64,
}

impl PatternBody {
    pub fn new(len: u64) -> Self {
        PatternBody { sent: 0, len }
    }
}

pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(7).wrapping_add(i / 251)) as u8
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent >= self.len {
            return Poll::Ready(None);
        }
        let n = (self.len - self.sent).min(64 * 1024);
        let start = self.sent;
        let chunk: Vec<u8> = (start..start + n).map(pattern_byte).collect();
        self.sent += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.sent)
    }
}

/// Reads `body` to its end, checking every byte against the pattern; returns the length.
pub async fn check_pattern<B>(mut body: B) -> Result<u64, String>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut offset = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body error after {offset} bytes: {e}"))?;
        if let Ok(data) = frame.into_data() {
            for (k, b) in data.iter().enumerate() {
                let i = offset + k as u64;
                if *b != pattern_byte(i) {
                    return Err(format!("byte {i} is {b}, expected {}", pattern_byte(i)));
                }
            }
            offset += data.len() as u64;
        }
    }
    Ok(offset)
}

/// A body that sends "start" and then stalls forever.
struct StallBody(bool);

impl Body for StallBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.0 {
            return Poll::Pending;
        }
        self.0 = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"start")))))
    }
}

/// A backend written by hand that answers every request `200 ok` and closes
/// the connection about a millisecond later without saying so, as a backend
/// with a very short keep-alive timeout does. Returns its address.
pub async fn closing_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 8192];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            });
        }
    });
    addr
}

/// A backend written by hand that answers health checks (`/healthz`) and
/// drops every other request's connection without a word. Returns its
/// address and the number of requests it dropped.
pub async fn rude_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dropped = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&dropped);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 8192];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if head.starts_with(b"GET /healthz ") {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                } else {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, dropped)
}

/// A backend written by hand that reads a request head, answers nothing and
/// never reads again, as a backend that stops reading an upload does.
pub async fn deaf_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap_or(0);
            if buf[..n].starts_with(b"GET /healthz ") {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            } else {
                held.push(s);
            }
        }
    });
    addr
}

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn text(status: StatusCode, body: String) -> Response<BoxBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *r.status_mut() = status;
    r
}

/// A real backend on loopback. Paths:
/// - `/healthz`: 200 `ok`
/// - `/big?n=BYTES`: a [`PatternBody`] of that length
/// - `/sink` (any method): reads the body, checks the pattern, answers the length
/// - `/slow?ms=N`: answers after N milliseconds
/// - `/hang`: never answers
/// - `/gated`: sends `first`, waits for [`Backend::release`], then sends `second`
/// - `/gated-sink`: reads one frame, signals [`Backend::got_first`], reads the rest, answers the length
/// - `/stall`: answers 200 with the first 5 bytes of a body, then never sends more
/// - anything else: JSON with the backend's name, the path and the headers it received
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
    pub hits: Arc<AtomicUsize>,
    health: Arc<AtomicU8>,
    fault: Arc<AtomicU8>,
    /// Lets a `/gated` response send its second part.
    pub release: Arc<tokio::sync::Notify>,
    /// Signalled when `/gated-sink` has received the first frame of a body.
    pub got_first: Arc<tokio::sync::Notify>,
}

/// How a backend answers live traffic (every path but `/healthz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// As the paths say.
    None = 0,
    /// Reads the request and never answers.
    Hang = 1,
    /// Answers `503` with a bare HTML body, as a proxy in front of a dead app does.
    Raw503 = 2,
    /// Reads the request and closes the connection without a response.
    Reset = 3,
    /// Answers as the paths say, 400 ms late.
    Slow = 4,
    /// Answers `503` with the application's own JSON body ([`JSON_503`]).
    Json503 = 5,
    /// Answers `503` with an HTML body ([`OWN_503`]) and `X-Meridian-Passthrough: 1`.
    Passthrough503 = 6,
    /// Answers `500` with a bare HTML body ([`RAW_500`]).
    Raw500 = 7,
}

/// The body of a [`Fault::Raw503`] answer.
pub const RAW_503: &str =
    "<html><body><h1>503 Service Temporarily Unavailable</h1><hr>nginx</body></html>";

/// The body of a [`Fault::Json503`] answer.
pub const JSON_503: &str = r#"{"error":"maintenance","retry_in":60}"#;

/// The body of a [`Fault::Passthrough503`] answer.
pub const OWN_503: &str = "<html><body>The application's own maintenance page</body></html>";

/// The body of a [`Fault::Raw500`] answer.
pub const RAW_500: &str = "<html><body><h1>500 Internal Server Error</h1></body></html>";

/// How a backend answers its health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HealthAnswer {
    Ok = 0,
    Status503 = 1,
    Hang = 2,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Backend::start_at(name, "127.0.0.1:0").await
    }

    /// A backend listening on `addr` (another loopback address, say).
    pub async fn start_at(name: &str, addr: &str) -> Backend {
        Backend::start_on(name, TcpListener::bind(addr).await.unwrap())
    }

    /// A backend answering on `listener`.
    pub fn start_on(name: &str, listener: TcpListener) -> Backend {
        let addr = listener.local_addr().unwrap();
        let (up, rx) = watch::channel(true);
        let hits = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(AtomicU8::new(HealthAnswer::Ok as u8));
        let fault = Arc::new(AtomicU8::new(Fault::None as u8));
        let release = Arc::new(tokio::sync::Notify::new());
        let got_first = Arc::new(tokio::sync::Notify::new());
        let state = Shared {
            name: name.to_owned(),
            hits: Arc::clone(&hits),
            health: Arc::clone(&health),
            fault: Arc::clone(&fault),
            release: Arc::clone(&release),
            got_first: Arc::clone(&got_first),
        };
        tokio::spawn(serve(Some(listener), addr, state, rx));
        Backend {
            name: name.to_owned(),
            addr,
            up,
            hits,
            health,
            fault,
            release,
            got_first,
        }
    }

    /// Changes how live traffic is answered; `/healthz` is unaffected.
    pub fn set_fault(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::Relaxed);
    }

    /// A whole node failing: live traffic and health checks alike.
    pub fn fail_all(&self, fault: Fault) {
        self.set_fault(fault);
        self.set_health(match fault {
            Fault::None => HealthAnswer::Ok,
            Fault::Raw503 | Fault::Json503 | Fault::Passthrough503 | Fault::Raw500 => {
                HealthAnswer::Status503
            }
            Fault::Hang | Fault::Reset | Fault::Slow => HealthAnswer::Hang,
        });
    }

    /// Changes how `/healthz` answers; other paths are unaffected.
    pub fn set_health(&self, answer: HealthAnswer) {
        self.health.store(answer as u8, Ordering::Relaxed);
    }

    /// Closes the port and drops open connections (`false`), or listens again (`true`).
    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[derive(Clone)]
struct Shared {
    name: String,
    hits: Arc<AtomicUsize>,
    health: Arc<AtomicU8>,
    fault: Arc<AtomicU8>,
    release: Arc<tokio::sync::Notify>,
    got_first: Arc<tokio::sync::Notify>,
}

async fn serve(
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    state: Shared,
    mut up: watch::Receiver<bool>,
) {
    loop {
        if !*up.borrow_and_update() {
            listener = None;
            if up.changed().await.is_err() {
                return;
            }
            continue;
        }
        let l = match listener.take() {
            Some(l) => l,
            None => match TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let (down_tx, _) = tokio::sync::broadcast::channel::<()>(1);
        loop {
            tokio::select! {
                changed = up.changed() => {
                    if changed.is_err() { return }
                    if !*up.borrow() { let _ = down_tx.send(()); break }
                }
                accepted = l.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let state = state.clone();
                    let mut down = down_tx.subscribe();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| handle(state.clone(), req));
                        let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                        tokio::select! {
                            _ = conn => {}
                            _ = down.recv() => {}
                        }
                    });
                }
            }
        }
    }
}

fn query(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

async fn handle(
    state: Shared,
    req: Request<Incoming>,
) -> Result<Response<BoxBody>, std::io::Error> {
    let Shared {
        name,
        hits,
        health,
        fault,
        release,
        got_first,
    } = state;
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        return Ok(match health.load(Ordering::Relaxed) {
            0 => text(StatusCode::OK, "ok".into()),
            1 => text(StatusCode::SERVICE_UNAVAILABLE, "unwell".into()),
            _ => std::future::pending().await,
        });
    }
    hits.fetch_add(1, Ordering::Relaxed);
    match fault.load(Ordering::Relaxed) {
        1 => std::future::pending().await,
        2 => {
            let mut r = text(StatusCode::SERVICE_UNAVAILABLE, RAW_503.into());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/html"),
            );
            return Ok(r);
        }
        // An error from the service makes hyper close the connection unanswered.
        3 => return Err(std::io::Error::other("reset by the test")),
        4 => tokio::time::sleep(Duration::from_millis(400)).await,
        5 => {
            let mut r = text(StatusCode::SERVICE_UNAVAILABLE, JSON_503.into());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            return Ok(r);
        }
        6 => {
            let mut r = text(StatusCode::SERVICE_UNAVAILABLE, OWN_503.into());
            let h = r.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/html"),
            );
            h.insert(
                "x-meridian-passthrough",
                http::HeaderValue::from_static("1"),
            );
            return Ok(r);
        }
        7 => {
            let mut r = text(StatusCode::INTERNAL_SERVER_ERROR, RAW_500.into());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/html"),
            );
            return Ok(r);
        }
        _ => {}
    }
    Ok(match path.as_str() {
        "/big" => {
            let n = query(&req, "n").unwrap_or(0);
            Response::new(PatternBody::new(n).boxed_unsync())
        }
        "/sink" => match check_pattern(req.into_body()).await {
            Ok(n) => text(StatusCode::OK, n.to_string()),
            Err(e) => text(StatusCode::BAD_REQUEST, e),
        },
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query(&req, "ms").unwrap_or(500))).await;
            text(StatusCode::OK, format!("slow answer from {name}"))
        }
        // "first", then "second" once released; "/gated-sized" says its
        // length up front, "/gated" is chunked.
        "/gated" | "/gated-sized" => {
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(1);
            tokio::spawn(async move {
                let _ = tx.send_data(Bytes::from_static(b"first")).await;
                release.notified().await;
                let _ = tx.send_data(Bytes::from_static(b"second")).await;
            });
            let mut r = Response::new(body.boxed_unsync());
            if path == "/gated-sized" {
                r.headers_mut().insert(
                    http::header::CONTENT_LENGTH,
                    http::HeaderValue::from_static("11"),
                );
            }
            r
        }
        "/gated-sink" => {
            let mut body = req.into_body();
            let mut n = 0;
            let mut first = true;
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    n += data.len();
                    if first {
                        first = false;
                        got_first.notify_one();
                    }
                }
            }
            text(StatusCode::OK, n.to_string())
        }
        "/stall" => Response::new(StallBody(false).boxed_unsync()),
        "/hang" => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        _ => {
            let headers: BTreeMap<String, Vec<String>> = req
                .headers()
                .keys()
                .map(|k| {
                    (
                        k.as_str().to_owned(),
                        req.headers()
                            .get_all(k)
                            .iter()
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                            .collect(),
                    )
                })
                .collect();
            let version = format!("{:?}", req.version());
            let body = serde_json::json!({ "backend": name, "path": req.uri().to_string(), "version": version, "headers": headers });
            text(StatusCode::OK, body.to_string())
        }
    })
}

/// A region for [`config_text`]: name, backends, failover.
pub struct R<'a>(pub &'a str, pub &'a [&'a Backend], pub &'a [&'a str]);

/// A configuration on port 0 with fast health checks (every 100 ms, rise 2,
/// fall 2); `extra` is appended as more TOML.
pub fn config_text(regions: &[R], extra: &str) -> String {
    config_text_with(regions, "", "", extra)
}

/// Like [`config_text`], with `region_keys` added to every `[[region]]`
/// table and `tail` (more keys of `[region.health]`, or further region
/// tables such as `[region.outlier]`) after each region's health table.
pub fn config_text_with(regions: &[R], region_keys: &str, tail: &str, extra: &str) -> String {
    let mut t =
        String::from("[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n");
    for R(name, backends, failover) in regions {
        let b: Vec<String> = backends
            .iter()
            .map(|b| format!("\"{}\"", b.url()))
            .collect();
        let f: Vec<String> = failover.iter().map(|f| format!("\"{f}\"")).collect();
        t.push_str(&format!(
            "[[region]]\nname = \"{name}\"\nfailover = [{}]\nbackends = [{}]\n{region_keys}\n[region.health]\ninterval = \"100ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2\n{tail}\n\n",
            f.join(", "),
            b.join(", ")
        ));
    }
    t.push_str(extra);
    t
}

/// Starts Meridian with `text` and waits until every region in `regions` is healthy.
pub async fn start_healthy(text: &str, regions: &[&str]) -> Running {
    let m = start(text).await;
    wait_for(Duration::from_secs(5), "every region healthy", || async {
        for r in regions {
            if region_state(&m, r).await != "healthy" {
                return false;
            }
        }
        true
    })
    .await;
    m
}

/// Starts Meridian with `text` as its configuration.
pub async fn start(text: &str) -> Running {
    let config = Config::parse("test.toml", text)
        .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{text}"));
    server::start(config).await.expect("meridian starts")
}

pub type TestClient = Client<HttpConnector, BoxBody>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A request with no body.
pub fn empty(method: http::Method, url: impl AsRef<str>) -> Request<BoxBody> {
    Request::builder()
        .method(method)
        .uri(url.as_ref())
        .body(Full::new(Bytes::new()).boxed_unsync())
        .unwrap()
}

/// GET `path` from Meridian; returns status, headers and body text.
pub async fn get(
    m: &Running,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let mut req = Request::get(format!("http://{}{path}", m.http_addr));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new()).boxed_unsync()).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .expect("answer within 10 s")
        .expect("request succeeds");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Sends `bytes` on a new connection to `addr`; returns what came back
/// until the connection closed (`true`) or a second passed without more
/// (`false`).
pub async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The peer may answer and close before reading everything.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

/// The backend name in a JSON echo body.
pub fn served_by(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not an echo body: {body}"));
    v["backend"].as_str().unwrap_or_default().to_owned()
}

/// Reads from `s` into `text` until `done(text)` holds, each read within
/// 5 s; a close before that fails the test.
pub async fn read_until(
    s: &mut tokio::net::TcpStream,
    text: &mut String,
    done: impl Fn(&str) -> bool,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    while !done(text) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answered within 5 s")
            .unwrap();
        assert!(n > 0, "closed after {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// Polls `condition` every 20 ms until it holds, or panics after `limit` with `what`.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The state of region `name` as `/api/v1/status` reports it.
pub async fn region_state(m: &Running, name: &str) -> String {
    let status = meridian::admin::status_body(&m.shared.load());
    let v = serde_json::to_value(status).unwrap();
    v["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .map(|r| r["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Starts a 64 MiB upload to `path` on Meridian whose backend stops
/// reading, keeps writing until the buffers on the way fill, and returns
/// the first bytes of Meridian's answer (within 10 s, or panics).
pub async fn upload_until_answered(m: &Running, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(m.http_addr).await.unwrap();
    let len = 64 * 1024 * 1024;
    s.write_all(
        format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (mut reader, mut writer) = s.into_split();
    // Upload until the buffers on the way fill; the writer then blocks.
    tokio::spawn(async move {
        let chunk = vec![b'x'; 1 << 16];
        for _ in 0..len / chunk.len() {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), reader.read(&mut answer))
        .await
        .expect("answered, not hung")
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}
