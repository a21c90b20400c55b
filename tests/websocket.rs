//! WebSocket pass-through: handshakes follow the same plan as any request,
//! the tunnel copies both ways, survives a failover of other traffic, is
//! closed after the drain grace (and not before), and is counted in the
//! status. Other `Upgrade` protocols are never tunnelled. Over HTTP/2, an
//! RFC 8441 extended CONNECT reaches an HTTP/1.1 backend as a handshake.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{served_by, wait_for, Backend};
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meridian::server::Running;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest any single exchange in these tests may take.
const STEP: Duration = Duration::from_secs(5);

/// A WebSocket echo backend on loopback: `/healthz` answers 200 (or 503
/// once `healthy` is false); a WebSocket handshake on any path is accepted
/// and every message is echoed back.
struct EchoBackend {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
}

impl EchoBackend {
    async fn start() -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let health = Arc::clone(&healthy);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let health = Arc::clone(&health);
                tokio::spawn(async move {
                    let service = service_fn(move |req| echo(req, Arc::clone(&health)));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        EchoBackend { addr, healthy }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn echo(
    mut req: Request<Incoming>,
    healthy: Arc<AtomicBool>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/healthz" {
        let status = if healthy.load(Ordering::Relaxed) {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
        *r.status_mut() = status;
        return Ok(r);
    }
    let key = req.headers().get("sec-websocket-key").cloned();
    let upgrade = req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let (Some(key), true) = (key, upgrade) else {
        return Ok(Response::new(Full::new(Bytes::from_static(
            b"not a websocket",
        ))));
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(Full::new(Bytes::new()))
        .unwrap())
}

/// Regions `(name, backend URL, failover)` on port 0 with fast health
/// checks; `proxy` is added to `[proxy]`. Shutdown waits at most 200 ms for
/// WebSockets still open.
fn config(regions: &[(&str, String, &str)], proxy: &str) -> String {
    let mut t =
        String::from("[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n");
    t.push_str(&format!(
        "[proxy]\n{proxy}\n\n[limits]\nshutdown_grace = \"200ms\"\n\n"
    ));
    for (name, url, failover) in regions {
        let failover = if failover.is_empty() {
            String::new()
        } else {
            format!("\"{failover}\"")
        };
        t.push_str(&format!(
            "[[region]]\nname = \"{name}\"\nfailover = [{failover}]\nbackends = [\"{url}\"]\n\n[region.health]\ninterval = \"100ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2\n\n"
        ));
    }
    t
}

/// Opens a WebSocket through Meridian; returns it and the serving region.
async fn connect(m: &Running) -> (Socket, String) {
    let url = format!("ws://{}/chat", m.http_addr);
    let (ws, response) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake within the step")
        .expect("handshake succeeds");
    let region = response
        .headers()
        .get("x-meridian-region")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (ws, region)
}

/// Sends `msg` and expects it back.
async fn round_trip(ws: &mut Socket, msg: Message) {
    tokio::time::timeout(STEP, ws.send(msg.clone()))
        .await
        .expect("send within the step")
        .expect("send succeeds");
    let back = tokio::time::timeout(STEP, ws.next())
        .await
        .expect("echo within the step")
        .expect("socket open")
        .expect("echo is a message");
    assert_eq!(back, msg);
}

/// Open upgraded connections of `region`, as `/api/v1/status` reports them.
async fn upgraded(m: &Running, region: &str) -> u64 {
    let admin = m.admin_addr.expect("admin listener");
    let req = common::empty(http::Method::GET, format!("http://{admin}/api/v1/status"));
    let resp = tokio::time::timeout(STEP, common::client().request(req))
        .await
        .expect("status within the step")
        .expect("status answers");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == region)
        .and_then(|r| r["upgraded_connections"].as_u64())
        .expect("upgraded_connections in the status")
}

/// Drains (`true`) or undrains region `region` through the admin API.
async fn set_drained(m: &Running, region: &str, drain: bool) {
    let admin = m.admin_addr.expect("admin listener");
    let verb = if drain { "drain" } else { "undrain" };
    let req = common::empty(
        http::Method::POST,
        format!("http://{admin}/api/v1/regions/{region}/{verb}"),
    );
    let resp = tokio::time::timeout(STEP, common::client().request(req))
        .await
        .expect("admin answers within the step")
        .expect("admin answers");
    assert_eq!(resp.status(), StatusCode::OK, "{verb} {region}");
}

/// Whether the socket was closed: a close frame, an error or the end.
async fn closed_within(ws: &mut Socket, limit: Duration) -> bool {
    match tokio::time::timeout(limit, ws.next()).await {
        Err(_) => false,
        Ok(None | Some(Err(_))) => true,
        Ok(Some(Ok(msg))) => msg.is_close(),
    }
}

#[tokio::test]
async fn websocket_messages_are_echoed_both_ways_and_counted() {
    let us = EchoBackend::start().await;
    let m = common::start_healthy(&config(&[("us", us.url(), "")], ""), &["us"]).await;
    assert_eq!(upgraded(&m, "us").await, 0);

    let (mut ws, region) = connect(&m).await;
    assert_eq!(region, "us");
    for i in 0..10 {
        round_trip(&mut ws, Message::text(format!("message {i}"))).await;
    }
    // 1 MiB in one message: copied through fixed buffers, not held whole.
    let big: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    round_trip(&mut ws, Message::binary(big)).await;
    round_trip(&mut ws, Message::text("after the big one")).await;
    assert_eq!(upgraded(&m, "us").await, 1, "one open WebSocket in us");

    let (mut second, _) = connect(&m).await;
    round_trip(&mut second, Message::text("second")).await;
    assert_eq!(upgraded(&m, "us").await, 2);

    tokio::time::timeout(STEP, ws.close(None))
        .await
        .expect("close within the step")
        .expect("close succeeds");
    drop(ws);
    drop(second);
    wait_for(STEP, "no open WebSocket left in us", || async {
        upgraded(&m, "us").await == 0
    })
    .await;
    m.shutdown().await;
}

#[tokio::test]
async fn websocket_survives_while_other_traffic_fails_over() {
    let us = EchoBackend::start().await;
    let eu = EchoBackend::start().await;
    let text = config(&[("us", us.url(), "eu"), ("eu", eu.url(), "us")], "");
    let m = common::start_healthy(&text, &["us", "eu"]).await;
    let (mut ws, region) = connect(&m).await;
    assert_eq!(region, "us", "loopback clients prefer the default region");
    round_trip(&mut ws, Message::text("before")).await;

    // us fails its health checks: new requests go to eu.
    us.healthy.store(false, Ordering::Relaxed);
    wait_for(STEP, "us down", || async {
        common::region_state(&m, "us").await == "down"
    })
    .await;
    let (_, fresh) = connect(&m).await;
    assert_eq!(fresh, "eu", "a new WebSocket fails over");

    // The established one carries on: its backend still answers.
    round_trip(&mut ws, Message::text("during the failover")).await;
    assert_eq!(upgraded(&m, "us").await, 1);
    m.shutdown().await;
}

#[tokio::test]
async fn a_drained_regions_websocket_is_closed_after_the_grace_and_not_before() {
    let us = EchoBackend::start().await;
    let eu = EchoBackend::start().await;
    let text = config(
        &[("us", us.url(), "eu"), ("eu", eu.url(), "us")],
        "drain_grace = \"300ms\"",
    );
    let m = common::start_healthy(&text, &["us", "eu"]).await;
    let (mut on_us, region) = connect(&m).await;
    assert_eq!(region, "us");
    set_drained(&m, "eu", true).await;
    // Taken before the drain, so that the grace cannot have begun earlier.
    let drained = tokio::time::Instant::now();
    set_drained(&m, "us", true).await;
    set_drained(&m, "eu", false).await;
    let (mut on_eu, region) = connect(&m).await;
    assert_eq!(region, "eu", "new WebSockets avoid the drained region");

    // Within the grace, the drained region's socket still works.
    round_trip(&mut on_us, Message::text("in the grace")).await;
    assert!(
        drained.elapsed() < Duration::from_millis(300),
        "the check above ran within the grace; the machine is too slow for this test"
    );
    // After it, the socket is closed, within a bound.
    assert!(
        closed_within(&mut on_us, Duration::from_secs(3)).await,
        "the drained region's WebSocket was closed"
    );
    assert!(
        drained.elapsed() >= Duration::from_millis(300),
        "not before the grace: closed after {:?}",
        drained.elapsed()
    );
    // A socket on a region that was drained and undrained is untouched.
    round_trip(&mut on_eu, Message::text("still here")).await;
    wait_for(
        STEP,
        "the closed WebSocket is no longer counted",
        || async { upgraded(&m, "us").await == 0 },
    )
    .await;
    assert_eq!(upgraded(&m, "eu").await, 1);
    m.shutdown().await;
}

#[tokio::test]
async fn an_undrain_within_the_grace_keeps_the_websocket() {
    let us = EchoBackend::start().await;
    let eu = EchoBackend::start().await;
    let text = config(
        &[("us", us.url(), "eu"), ("eu", eu.url(), "us")],
        "drain_grace = \"400ms\"",
    );
    let m = common::start_healthy(&text, &["us", "eu"]).await;
    let (mut ws, _) = connect(&m).await;
    set_drained(&m, "us", true).await;
    set_drained(&m, "us", false).await;
    assert!(
        !closed_within(&mut ws, Duration::from_millis(800)).await,
        "undrained before the grace ended: the WebSocket stays open"
    );
    round_trip(&mut ws, Message::text("kept")).await;
    m.shutdown().await;
}

#[tokio::test]
async fn an_idle_websocket_is_closed_after_the_upgrade_idle_timeout() {
    let us = EchoBackend::start().await;
    let text = config(&[("us", us.url(), "")], "upgrade_idle_timeout = \"300ms\"");
    let m = common::start_healthy(&text, &["us"]).await;
    let (mut ws, _) = connect(&m).await;
    // Traffic keeps it open past the timeout.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(120)).await;
        round_trip(&mut ws, Message::text("busy")).await;
    }
    assert!(
        closed_within(&mut ws, Duration::from_secs(3)).await,
        "closed once idle"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn hard_shutdown_closes_websockets() {
    let us = EchoBackend::start().await;
    let m = common::start_healthy(&config(&[("us", us.url(), "")], ""), &["us"]).await;
    let (mut ws, _) = connect(&m).await;
    round_trip(&mut ws, Message::text("before")).await;
    // The grace is 200 ms: shutdown then closes what is still open.
    tokio::time::timeout(STEP, m.shutdown())
        .await
        .expect("shutdown waits for WebSockets only within its grace");
    assert!(closed_within(&mut ws, STEP).await, "closed by the shutdown");
}

#[tokio::test]
async fn an_h2c_upgrade_is_not_tunnelled() {
    let b = Backend::start("b").await;
    let text = common::config_text(&[common::R("us", &[&b], &[])], "");
    let m = common::start_healthy(&text, &["us"]).await;
    let (status, _, body) = common::get(
        &m,
        "/plain",
        &[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served_by(&body), "b");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    for name in ["upgrade", "connection", "http2-settings"] {
        assert!(
            v["headers"].get(name).is_none(),
            "the backend never sees {name}: {body}"
        );
    }
    m.shutdown().await;
}

#[tokio::test]
async fn a_refused_handshake_is_passed_on_as_it_is() {
    // A plain backend answers the handshake with 200 and the headers it saw.
    let b = Backend::start("b").await;
    let text = common::config_text(&[common::R("us", &[&b], &[])], "");
    let m = common::start_healthy(&text, &["us"]).await;
    let (status, _, body) = common::get(
        &m,
        "/chat",
        &[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["headers"]["upgrade"][0], "websocket", "{body}");
    assert_eq!(v["headers"]["connection"][0], "upgrade", "{body}");
    assert_eq!(upgraded(&m, "us").await, 0);
    m.shutdown().await;
}

/// Meridian on `us`'s echo backend with h2c by prior knowledge on the plain
/// listener, for WebSocket over HTTP/2 (RFC 8441).
async fn start_h2c(backend_url: String, proxy: &str) -> Running {
    let text = config(&[("us", backend_url, "")], proxy).replace(
        "[listen]\nhttp = \"127.0.0.1:0\"\n",
        "[listen]\nhttp = \"127.0.0.1:0\"\nh2c = true\n",
    );
    common::start_healthy(&text, &["us"]).await
}

/// An HTTP/2 connection to Meridian's plain listener (prior knowledge).
async fn h2_connection(m: &Running) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(m.http_addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// An RFC 8441 extended CONNECT for `path`: the answer's status and headers,
/// and the WebSocket over the stream when it was accepted.
async fn h2_websocket(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    m: &Running,
    path: &str,
) -> (
    StatusCode,
    http::HeaderMap,
    Option<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>>,
) {
    let mut req = Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{}{path}", m.http_addr))
        .header("sec-websocket-version", "13")
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    // The server must have announced SETTINGS_ENABLE_CONNECT_PROTOCOL.
    tokio::time::timeout(STEP, sender.ready())
        .await
        .expect("connection ready within the step")
        .unwrap();
    let mut resp = tokio::time::timeout(STEP, sender.send_request(req))
        .await
        .expect("answer within the step")
        .expect("extended CONNECT is accepted by the server");
    let (status, headers) = (resp.status(), resp.headers().clone());
    if status != StatusCode::OK {
        return (status, headers, None);
    }
    let upgraded = hyper::upgrade::on(&mut resp)
        .await
        .expect("stream upgraded");
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    (status, headers, Some(ws))
}

#[tokio::test]
async fn websocket_over_http2_is_tunnelled_to_an_http1_backend() {
    let us = EchoBackend::start().await;
    let m = start_h2c(us.url(), "").await;
    let mut sender = h2_connection(&m).await;
    let (status, headers, ws) = h2_websocket(&mut sender, &m, "/chat").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-meridian-region"], "us");
    assert!(headers.get("sec-websocket-accept").is_none(), "{headers:?}");
    assert!(headers.get("upgrade").is_none(), "{headers:?}");
    let mut ws = ws.unwrap();
    for msg in [
        Message::text("over http/2"),
        Message::binary(
            (0..256 * 1024u32)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>(),
        ),
    ] {
        ws.send(msg.clone()).await.unwrap();
        let back = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("echo within the step")
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    // A second WebSocket on the same connection, and ordinary requests
    // beside them: streams of one HTTP/2 connection.
    let (_, _, second) = h2_websocket(&mut sender, &m, "/other").await;
    let mut second = second.unwrap();
    second.send(Message::text("two")).await.unwrap();
    let back = tokio::time::timeout(STEP, second.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(back, Message::text("two"));
    assert_eq!(upgraded(&m, "us").await, 2);
    let resp = sender
        .send_request(
            Request::get(format!("http://{}/healthz", m.http_addr))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Shutdown closes it, as over HTTP/1.1.
    drop(second);
    m.shutdown().await;
    assert!(closed_within_h2(&mut ws, STEP).await, "closed at shutdown");
}

async fn closed_within_h2(
    ws: &mut WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
    limit: Duration,
) -> bool {
    match tokio::time::timeout(limit, ws.next()).await {
        Err(_) => false,
        Ok(None | Some(Err(_))) => true,
        Ok(Some(Ok(msg))) => msg.is_close(),
    }
}

#[tokio::test]
async fn an_http2_websocket_to_a_backend_that_does_not_switch_is_refused() {
    // A plain backend answers the translated GET with 200: over HTTP/2 a 2xx
    // would open a tunnel to nothing, so the client gets a 502 instead.
    let b = Backend::start("b").await;
    let m = start_h2c(b.url(), "").await;
    let mut sender = h2_connection(&m).await;
    let (status, _, ws) = h2_websocket(&mut sender, &m, "/chat").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(ws.is_none());
    assert_eq!(upgraded(&m, "us").await, 0);
    m.shutdown().await;
}
