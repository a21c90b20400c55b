//! The demo, as its printed instructions walk through it: routing by region,
//! a geo override, failover when a region goes off the network, the status
//! page when both are off, and fail-back.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::StatusCode;
use meridian::config::Config;
use meridian::demo::{self, DemoBackends};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A free loopback port (the demo's fixed ports may be taken on a developer machine).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request from `source` (a loopback address) and the raw answer.
async fn raw_get(source: &str, to: SocketAddr, accept: &str) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(to).await.unwrap();
    s.write_all(
        format!("GET / HTTP/1.1\r\nhost: demo\r\naccept: {accept}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn the_demo_shows_routing_failover_and_the_status_page() {
    let mut text = demo::DEMO_CONFIG.to_owned();
    for fixed in [
        "127.0.0.1:8080",
        "127.0.0.1:9901",
        "127.0.0.1:18081",
        "127.0.0.1:18082",
        "127.0.0.1:18091",
    ] {
        text = text.replace(fixed, &format!("127.0.0.1:{}", free_port()));
    }
    let config = Config::parse("demo.toml", &text).unwrap();
    let backends = DemoBackends::start(&config).await.unwrap();
    let control = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control_addr = control.local_addr().unwrap();
    tokio::spawn(backends.clone().serve_control(control));
    let m = meridian::server::start(config).await.unwrap();
    let lines = demo::instructions(m.http_addr, m.admin_addr, control_addr);
    assert!(lines.contains(&format!("curl -s http://{}/", m.http_addr)));
    assert!(lines.contains(&format!("http://{control_addr}/regions/us/down")));
    wait_for(
        Duration::from_secs(5),
        "both demo regions healthy",
        || async {
            region_state(&m, "us").await == "healthy" && region_state(&m, "eu").await == "healthy"
        },
    )
    .await;

    let answer = raw_get("127.0.0.1", m.http_addr, "*/*").await;
    assert!(answer.contains("Hello from region us"), "{answer}");
    let answer = raw_get("127.0.0.2", m.http_addr, "*/*").await;
    assert!(
        answer.contains("Hello from region eu"),
        "the 127.0.0.2 override: {answer}"
    );

    let (_, headers, _) = get(&m, "/", &[("x-forwarded-for", "193.0.6.139")]).await;
    assert_eq!(headers["x-meridian-region"], "eu", "a client in Europe");
    let (_, headers, _) = get(&m, "/", &[("x-meridian-pin", "eu")]).await;
    assert_eq!(headers["x-meridian-region"], "eu", "pinned");

    let control_post = |path: &'static str| async move {
        let req = empty(http::Method::POST, format!("http://{control_addr}{path}"));
        client().request(req).await.unwrap().status()
    };
    // A region answering raw 503s: retried on its failover region, never shown.
    assert_eq!(control_post("/regions/eu/503").await, StatusCode::OK);
    let answer = raw_get("127.0.0.2", m.http_addr, "*/*").await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("Hello from region us"),
        "503s retried: {answer}"
    );
    assert_eq!(control_post("/regions/eu/up").await, StatusCode::OK);
    // A region that hangs after accepting: hedged to its failover region.
    assert_eq!(control_post("/regions/us/hang").await, StatusCode::OK);
    let answer = raw_get("127.0.0.1", m.http_addr, "*/*").await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("Hello from region eu"),
        "hang hedged: {answer}"
    );

    assert_eq!(control_post("/regions/us/down").await, StatusCode::OK);
    let answer = raw_get("127.0.0.1", m.http_addr, "*/*").await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("Hello from region eu"),
        "failover: {answer}"
    );

    assert_eq!(control_post("/regions/eu/down").await, StatusCode::OK);
    wait_for(Duration::from_secs(5), "both demo regions down", || async {
        region_state(&m, "us").await == "down" && region_state(&m, "eu").await == "down"
    })
    .await;
    let answer = raw_get("127.0.0.1", m.http_addr, "text/html").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("The demo application is temporarily unavailable"),
        "{answer}"
    );

    assert_eq!(control_post("/regions/us/up").await, StatusCode::OK);
    wait_for(Duration::from_secs(5), "us back", || async {
        region_state(&m, "us").await == "healthy"
    })
    .await;
    let answer = raw_get("127.0.0.1", m.http_addr, "*/*").await;
    assert!(
        answer.contains("Hello from region us"),
        "fail-back: {answer}"
    );
    assert_eq!(
        control_post("/regions/mars/down").await,
        StatusCode::NOT_FOUND
    );

    backends.stop();
    m.shutdown().await;
}
