//! End to end: Meridian in-process in front of real hyper backends on loopback.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MB_100: u64 = 100 * 1024 * 1024;

/// Meridian in front of one region, "us", with one healthy backend; `extra` is more TOML.
async fn one_region(extra: &str) -> (Backend, meridian::server::Running) {
    let us1 = Backend::start("us-1").await;
    let m = start(&config_text(&[R("us", &[&us1], &[])], extra)).await;
    wait_for(Duration::from_secs(5), "us healthy", || async {
        region_state(&m, "us").await == "healthy"
    })
    .await;
    (us1, m)
}

/// Meridian in front of `backends` (addresses) in region "us", probed
/// every `interval`, once the region is healthy; `proxy` is the body of a
/// `[proxy]` section, or empty.
async fn in_front_of(
    backends: &[std::net::SocketAddr],
    proxy: &str,
    interval: &str,
) -> meridian::server::Running {
    let urls: Vec<String> = backends.iter().map(|a| format!("\"http://{a}\"")).collect();
    let text = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[proxy]\n{proxy}\n[[region]]\nname = \"us\"\nbackends = [{}]\n[region.health]\ninterval = \"{interval}\"\n",
        urls.join(", ")
    );
    let m = start(&text).await;
    wait_for(Duration::from_secs(5), "healthy", || async {
        region_state(&m, "us").await == "healthy"
    })
    .await;
    m
}

/// Meridian in front of "us" (failing over to "eu") and "eu" (failing over
/// to "us"), one backend each, both healthy; `extra` is more TOML.
async fn us_and_eu(extra: &str) -> (Backend, Backend, meridian::server::Running) {
    let us1 = Backend::start("us-1").await;
    let eu1 = Backend::start("eu-1").await;
    let m = start(&config_text(
        &[R("us", &[&us1], &["eu"]), R("eu", &[&eu1], &["us"])],
        extra,
    ))
    .await;
    wait_for(Duration::from_secs(5), "both regions healthy", || async {
        region_state(&m, "us").await == "healthy" && region_state(&m, "eu").await == "healthy"
    })
    .await;
    (us1, eu1, m)
}

async fn two_regions() -> (Backend, Backend, Backend, meridian::server::Running) {
    let us1 = Backend::start("us-1").await;
    let us2 = Backend::start("us-2").await;
    let eu1 = Backend::start("eu-1").await;
    let text = config_text_with(
        &[R("us", &[&us1, &us2], &["eu"]), R("eu", &[&eu1], &["us"])],
        "failback_hold = \"1s\"",
        "",
        "[geo]\ndefault_region = \"us\"\n",
    );
    let m = start(&text).await;
    wait_for(Duration::from_secs(5), "both regions healthy", || async {
        region_state(&m, "us").await == "healthy" && region_state(&m, "eu").await == "healthy"
    })
    .await;
    (us1, us2, eu1, m)
}

#[tokio::test]
async fn requests_reach_the_preferred_region_round_robin() {
    let (_us1, _us2, _eu1, m) = two_regions().await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (status, headers, body) = get(&m, "/hello?x=1", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-meridian-region"], "us");
        seen.push(served_by(&body));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec!["us-1", "us-1", "us-2", "us-2"],
        "round robin over the us backends"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_geo_override_picks_the_region() {
    let (_us1, _eu1, m) = us_and_eu("[geo]\ndefault_region = \"us\"\n[[geo.override]]\ncidr = \"127.0.0.0/8\"\nregion = \"eu\"\n").await;
    let (_, headers, body) = get(&m, "/", &[]).await;
    assert_eq!(served_by(&body), "eu-1");
    assert_eq!(headers["x-meridian-region"], "eu");
    m.shutdown().await;
}

#[tokio::test]
async fn the_backend_sees_clean_forwarding_headers() {
    let (_us1, _us2, _eu1, m) = two_regions().await;
    let (_, headers, body) = get(
        &m,
        "/echo",
        &[
            ("host", "app.example.com"),
            ("x-forwarded-for", "198.51.100.9"),
            ("connection", "x-private"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let h = &v["headers"];
    assert_eq!(h["host"][0], "app.example.com", "Host is preserved");
    assert_eq!(h["x-forwarded-for"][0], "198.51.100.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-forwarded-host"][0], "app.example.com");
    assert_eq!(h["via"][0], "1.1 meridian");
    for gone in ["x-private", "keep-alive", "proxy-authorization"] {
        assert!(
            h.get(gone).is_none(),
            "{gone} must not reach the backend: {h}"
        );
    }
    assert_eq!(headers["via"], "1.1 meridian");
    assert_eq!(v["path"], "/echo");
    m.shutdown().await;
}

#[tokio::test]
async fn a_region_that_stops_listening_fails_over_and_comes_back_after_rise() {
    let (us1, us2, _eu1, m) = two_regions().await;
    us1.set_up(false);
    us2.set_up(false);
    // Even before the checks notice, a refused connection moves on to eu.
    let (status, headers, body) = get(&m, "/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-meridian-region"], "eu");
    assert_eq!(served_by(&body), "eu-1");

    wait_for(
        Duration::from_secs(5),
        "us marked down by health checks",
        || async { region_state(&m, "us").await == "down" },
    )
    .await;
    for _ in 0..3 {
        let (status, _, body) = get(&m, "/", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(served_by(&body), "eu-1");
    }
    let events = serde_json::to_value(meridian::admin::status_body(&m.shared.load())).unwrap()
        ["events"]
        .clone();
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["subject"] == "us" && e["to"] == "down"),
        "the transition is recorded: {events}"
    );

    us1.set_up(true);
    us2.set_up(true);
    wait_for(
        Duration::from_secs(5),
        "us back after rise good checks",
        || async { region_state(&m, "us").await == "healthy" },
    )
    .await;
    // Its users stay on eu for the fail-back hold.
    assert!(m.shared.load().regions[0].held);
    let (_, headers, _) = get(&m, "/", &[]).await;
    assert_eq!(
        headers["x-meridian-region"], "eu",
        "held for the fail-back hold"
    );
    wait_for(Duration::from_secs(5), "the hold is over", || async {
        !m.shared.load().regions[0].held
    })
    .await;
    let (_, headers, _) = get(&m, "/", &[]).await;
    assert_eq!(headers["x-meridian-region"], "us");
    m.shutdown().await;
}

#[tokio::test]
async fn the_status_page_answers_when_every_backend_is_down() {
    let (us1, eu1, m) = us_and_eu("[status_page]\nbrand = \"Acme\"\ntitle = \"Acme is taking a break\"\nretry_after = \"12s\"\n").await;
    us1.set_up(false);
    eu1.set_up(false);
    wait_for(Duration::from_secs(5), "both regions down", || async {
        region_state(&m, "us").await == "down" && region_state(&m, "eu").await == "down"
    })
    .await;

    let (status, headers, body) = get(&m, "/", &[("accept", "text/html,*/*;q=0.8")]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "12");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(body.contains("Acme is taking a break"), "{body}");
    assert!(body.contains("us: unavailable") && body.contains("eu: unavailable"));
    assert!(
        !body.contains("127.0.0.1"),
        "no internal address on the public page"
    );

    let (status, headers, body) = get(&m, "/api/thing", &[("accept", "application/json")]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "12");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "service_unavailable");
    assert_eq!(v["retry_after"], 12);
    m.shutdown().await;
}

#[tokio::test]
async fn a_backend_that_never_answers_gets_the_page_within_the_first_byte_timeout() {
    let (_us1, m) = one_region("[proxy]\nfirst_byte_timeout = \"300ms\"\n").await;
    let started = tokio::time::Instant::now();
    let (status, headers, _) = get(&m, "/hang", &[]).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers["cache-control"], "no-store");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the timeout, not hung"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_100_mb_response_streams_through_intact() {
    let (_us1, _us2, _eu1, m) = two_regions().await;
    let req = empty(
        http::Method::GET,
        format!("http://{}/big?n={MB_100}", m.http_addr),
    );
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let n = check_pattern(resp.into_body())
        .await
        .expect("every byte intact");
    assert_eq!(n, MB_100);
    m.shutdown().await;
}

#[tokio::test]
async fn a_100_mb_request_body_streams_through_intact() {
    let (_us1, _us2, _eu1, m) = two_regions().await;
    let req = Request::post(format!("http://{}/sink", m.http_addr))
        .body(PatternBody::new(MB_100).boxed_unsync())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(String::from_utf8_lossy(&body), MB_100.to_string());
    m.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish() {
    let (_us1, _us2, _eu1, m) = two_regions().await;
    let addr = m.http_addr;
    let slow = tokio::spawn(async move {
        let req = empty(http::Method::GET, format!("http://{addr}/slow?ms=700"));
        let resp = client()
            .request(req)
            .await
            .expect("answered despite shutdown");
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    });
    // Shut down once the request has reached a backend.
    let hits = || {
        _us1.hits.load(std::sync::atomic::Ordering::Relaxed)
            + _us2.hits.load(std::sync::atomic::Ordering::Relaxed)
    };
    wait_for(
        Duration::from_secs(5),
        "slow request reached a backend",
        || async { hits() == 1 },
    )
    .await;
    m.shutdown().await;
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("slow answer from us-"), "{body}");
    // After shutdown nothing listens any more.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn an_oversized_request_head_is_refused_with_431() {
    let (us1, m) = one_region("[limits]\nmax_header_bytes = 8192\n").await;
    let mut s = tokio::net::TcpStream::connect(m.http_addr).await.unwrap();
    let big = "a".repeat(16 * 1024);
    s.write_all(format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(
        us1.hits.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing reached the backend"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let (_us1, m) =
        one_region("[limits]\nkeepalive_idle_timeout = \"300ms\"\nheader_read_timeout = \"10s\"\n")
            .await;
    let mut s = tokio::net::TcpStream::connect(m.http_addr).await.unwrap();
    // Started before the request, so the idle time measured here can only
    // be longer than Meridian's, never shorter.
    let started = tokio::time::Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then silence: the connection must be closed by Meridian.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "idle connection was not closed");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed too early: {:?}",
        started.elapsed()
    );
    m.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let (_us1, m) =
        one_region("[limits]\nmax_connections = 1\nkeepalive_idle_timeout = \"10s\"\n").await;
    let request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut first = tokio::net::TcpStream::connect(m.http_addr).await.unwrap();
    first.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // The second connection is accepted by the kernel but not served while
    // the first one holds the only slot.
    let mut second = tokio::net::TcpStream::connect(m.http_addr).await.unwrap();
    second.write_all(request).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond max_connections");

    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .expect("served once the first connection closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    m.shutdown().await;
}

#[tokio::test]
async fn a_client_too_slow_to_send_its_request_head_is_dropped() {
    let (us1, m) = one_region("[limits]\nheader_read_timeout = \"300ms\"\n").await;
    let mut s = tokio::net::TcpStream::connect(m.http_addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a slow-header client must be dropped");
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
    assert_eq!(
        us1.hits.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing reached the backend"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_request_body_goes_to_the_failover_region_when_the_first_backend_refuses() {
    let us1 = Backend::start("us-1").await;
    let eu1 = Backend::start("eu-1").await;
    // Checks every hour: only the first check runs, so Meridian still
    // believes us-1 is up when it stops listening.
    let text = config_text(&[R("us", &[&us1], &["eu"]), R("eu", &[&eu1], &["us"])], "")
        .replace("interval = \"100ms\"", "interval = \"1h\"");
    let m = start(&text).await;
    wait_for(Duration::from_secs(5), "both healthy", || async {
        region_state(&m, "us").await == "healthy" && region_state(&m, "eu").await == "healthy"
    })
    .await;
    us1.set_up(false);
    let len = 3 * 1024 * 1024 + 17;
    let req = Request::post(format!("http://{}/sink", m.http_addr))
        .body(PatternBody::new(len).boxed_unsync())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-meridian-region"], "eu");
    assert_eq!(
        region_state(&m, "us").await,
        "healthy",
        "the refusal, not a health check, moved it"
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        len.to_string(),
        "the whole body arrived"
    );
    assert_eq!(eu1.hits.load(std::sync::atomic::Ordering::Relaxed), 1);
    m.shutdown().await;
}

/// The backend view of backend 0 of region 0.
fn first_backend(m: &meridian::server::Running) -> meridian::state::BackendView {
    m.shared.load().regions[0].backends[0].clone()
}

#[tokio::test]
async fn a_backend_whose_check_answers_503_is_taken_out_and_its_traffic_fails_over() {
    let us1 = Backend::start("us-1").await;
    let eu1 = Backend::start("eu-1").await;
    let m = start(&config_text(
        &[R("us", &[&us1], &["eu"]), R("eu", &[&eu1], &["us"])],
        "",
    ))
    .await;
    wait_for(Duration::from_secs(5), "us healthy", || async {
        region_state(&m, "us").await == "healthy"
    })
    .await;
    us1.set_health(HealthAnswer::Status503);
    wait_for(Duration::from_secs(5), "us down", || async {
        region_state(&m, "us").await == "down"
    })
    .await;
    assert_eq!(first_backend(&m).last_error.as_deref(), Some("status 503"));
    let (_, headers, body) = get(&m, "/", &[]).await;
    assert_eq!(headers["x-meridian-region"], "eu");
    assert_eq!(served_by(&body), "eu-1");
    m.shutdown().await;
}

#[tokio::test]
async fn a_backend_whose_check_hangs_is_down_not_alive() {
    // The half-alive node of the post-mortem: it accepts connections and never answers.
    let (us1, m) = one_region("").await;
    us1.set_health(HealthAnswer::Hang);
    wait_for(Duration::from_secs(5), "us down", || async {
        region_state(&m, "us").await == "down"
    })
    .await;
    let error = first_backend(&m).last_error.unwrap_or_default();
    assert!(error.starts_with("no answer within"), "{error}");
    us1.set_health(HealthAnswer::Ok);
    wait_for(Duration::from_secs(5), "us back", || async {
        region_state(&m, "us").await == "healthy"
    })
    .await;
    assert_eq!(first_backend(&m).last_error, None);
    m.shutdown().await;
}

#[tokio::test]
async fn a_response_body_that_stalls_is_cut_off_never_passed_as_complete() {
    let (_us1, m) = one_region("[proxy]\nread_timeout = \"300ms\"\n").await;
    let req = empty(http::Method::GET, format!("http://{}/stall", m.http_addr));
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .expect("the stalled body must end within the read timeout, not hang");
    assert!(
        body.is_err(),
        "a cut body must end in an error, not look complete"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_slow_upload_is_not_a_slow_backend() {
    // first_byte_timeout is 400 ms; the upload takes about 1.5 s.
    let (_us1, m) = one_region("[proxy]\nfirst_byte_timeout = \"400ms\"\n").await;
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(1);
    let req = Request::post(format!("http://{}/sink", m.http_addr))
        .body(body.boxed_unsync())
        .unwrap();
    let sender = tokio::spawn(async move {
        let all: Vec<u8> = (0..15 * 1024u64).map(pattern_byte).collect();
        for chunk in all.chunks(1024) {
            tx.send_data(Bytes::copy_from_slice(chunk)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let resp = client().request(req).await.unwrap();
    sender.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&body), "15360");
    m.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_in_the_middle_of_its_body_gets_408() {
    let (_us1, m) = one_region("[limits]\nclient_body_timeout = \"300ms\"\n").await;
    let mut s = tokio::net::TcpStream::connect(m.http_addr).await.unwrap();
    s.write_all(b"POST /sink HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n")
        .await
        .unwrap();
    let start: Vec<u8> = (0..100u64).map(pattern_byte).collect();
    s.write_all(&start).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut answer))
        .await
        .expect("answered within the client body timeout")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    m.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_after_the_send_timeout() {
    let (_us1, m) = one_region("[limits]\nsend_timeout = \"300ms\"\n").await;
    let mut s = tokio::net::TcpStream::connect(m.http_addr).await.unwrap();
    s.write_all(format!("GET /big?n={MB_100} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Read nothing for well over the send timeout...
    tokio::time::sleep(Duration::from_secs(1)).await;
    // ...then only what was already buffered arrives, and the connection is gone.
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was not closed");
    assert!(
        (total as u64) < MB_100,
        "the whole body arrived: {total} bytes"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_backend_that_closes_keep_alive_connections_early_costs_no_request() {
    let addr = closing_backend().await;
    let m = in_front_of(&[addr], "", "100ms").await;
    let client = client();
    let mut failures = Vec::new();
    for i in 0..200 {
        let req = empty(http::Method::GET, format!("http://{}/{i}", m.http_addr));
        let status = client.request(req).await.unwrap().status();
        if status != StatusCode::OK {
            failures.push((i, status));
        }
    }
    assert!(
        failures.is_empty(),
        "requests lost to closing connections: {failures:?}"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_what_is_still_open_after_the_grace_period() {
    let (us1, m) = one_region("[limits]\nshutdown_grace = \"300ms\"\n").await;
    let addr = m.http_addr;
    let hanging = tokio::spawn(async move {
        let req = empty(http::Method::GET, format!("http://{addr}/hang"));
        client().request(req).await.map(|r| r.status())
    });
    wait_for(
        Duration::from_secs(5),
        "the request reached the backend",
        || async { us1.hits.load(std::sync::atomic::Ordering::Relaxed) == 1 },
    )
    .await;
    tokio::time::timeout(Duration::from_secs(5), m.shutdown())
        .await
        .expect("shutdown ends soon after the grace period");
    let outcome = tokio::time::timeout(Duration::from_secs(5), hanging)
        .await
        .expect("the client is released")
        .unwrap();
    assert!(
        outcome.is_err(),
        "the hanging request's connection was closed: {outcome:?}"
    );
}

#[tokio::test]
async fn an_absolute_form_target_sets_the_host_the_backend_sees() {
    let (_us1, _us2, _eu1, m) = two_regions().await;
    let mut s = tokio::net::TcpStream::connect(m.http_addr).await.unwrap();
    s.write_all(b"GET http://abs.example/x?y=1 HTTP/1.1\r\nhost: other.example\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let json = &answer[answer.find('{').expect("an echo body")..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["headers"]["host"][0], "abs.example");
    assert_eq!(
        v["path"], "/x?y=1",
        "the backend gets an origin-form target"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_response_is_streamed_not_buffered() {
    streams_part_by_part("/gated").await;
}

#[tokio::test]
async fn a_response_of_known_length_is_streamed_not_held_for_its_rest() {
    // Meridian holds a piece back for a turn when the rest of a body is
    // short, so that it can go out in one write with it; only for a turn.
    streams_part_by_part("/gated-sized").await;
}

/// The backend sends its second part only after the client has received
/// the first through Meridian: a proxy that buffered whole bodies, or
/// waited for the rest, would wait forever.
async fn streams_part_by_part(path: &str) {
    let (us1, m) = one_region("").await;
    let req = empty(http::Method::GET, format!("http://{}{path}", m.http_addr));
    let mut body = client().request(req).await.unwrap().into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first part arrives before the backend finishes")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    us1.release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");
    m.shutdown().await;
}

#[tokio::test]
async fn a_request_body_is_streamed_not_buffered() {
    // The client sends the rest only after the backend has received the
    // first part through Meridian.
    let (us1, m) = one_region("").await;
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(1);
    let req = Request::post(format!("http://{}/gated-sink", m.http_addr))
        .body(body.boxed_unsync())
        .unwrap();
    let response = tokio::spawn(client().request(req));
    tx.send_data(Bytes::from_static(b"first")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), us1.got_first.notified())
        .await
        .expect("the backend gets the first part before the client finishes");
    tx.send_data(Bytes::from_static(b"second")).await.unwrap();
    drop(tx);
    let resp = response.await.unwrap().unwrap();
    let n = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(n, "11");
    m.shutdown().await;
}

#[tokio::test]
async fn a_backend_that_stops_reading_an_upload_is_given_up_on_after_the_send_timeout() {
    let addr = deaf_backend().await;
    let m = in_front_of(&[addr], "send_timeout = \"300ms\"", "1h").await;
    let answer = upload_until_answered(&m, "/upload").await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    m.shutdown().await;
}

#[tokio::test]
async fn a_request_without_a_body_fails_over_when_connecting_stalls() {
    // A backend whose accept queue is full drops new connection attempts:
    // the connect timeout (1 s), not the first-byte timeout (300 ms), must
    // decide, and a failed connect goes to the failover region.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let stalled = listener.local_addr().unwrap();
    let eu1 = Backend::start("eu-1").await;
    let text = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[proxy]\nconnect_timeout = \"1s\"\nfirst_byte_timeout = \"300ms\"\n\
         [[region]]\nname = \"us\"\nfailover = [\"eu\"]\nbackends = [\"http://{stalled}\"]\n[region.health]\ninterval = \"1h\"\n\
         [[region]]\nname = \"eu\"\nbackends = [\"{}\"]\n[region.health]\ninterval = \"1h\"\n",
        eu1.url()
    );
    // Answer the first health check by hand, then stop accepting.
    let checker = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        listener
    });
    let m = start(&text).await;
    wait_for(Duration::from_secs(5), "both healthy", || async {
        region_state(&m, "us").await == "healthy" && region_state(&m, "eu").await == "healthy"
    })
    .await;
    let _listener = checker.await.unwrap();
    // Fill the accept queue so that further handshakes are not completed.
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(stalled),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let (status, headers, body) = get(&m, "/", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-meridian-region"], "eu");
    m.shutdown().await;
}

#[tokio::test]
async fn a_dropped_connection_is_retried_once_per_request_not_once_per_backend() {
    let (a, dropped_a) = rude_backend().await;
    let (b, dropped_b) = rude_backend().await;
    let m = in_front_of(&[a, b], "", "1h").await;
    let (status, _, _) = get(&m, "/", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let tries = dropped_a.load(std::sync::atomic::Ordering::SeqCst)
        + dropped_b.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(tries, 3, "first backend twice, the second once");
    // A POST is not idempotent: one try only.
    let req = empty(http::Method::POST, format!("http://{}/", m.http_addr));
    assert_eq!(
        client().request(req).await.unwrap().status(),
        StatusCode::BAD_GATEWAY
    );
    let after = dropped_a.load(std::sync::atomic::Ordering::SeqCst)
        + dropped_b.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(after, tries + 1);
    m.shutdown().await;
}

#[tokio::test]
async fn credentials_in_an_absolute_form_target_never_reach_the_backend() {
    let (_us1, _us2, _eu1, m) = two_regions().await;
    let mut s = tokio::net::TcpStream::connect(m.http_addr).await.unwrap();
    s.write_all(b"GET http://alice:s3cret@abs.example:8080/x HTTP/1.1\r\nhost: other.example\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains("s3cret"), "{answer}");
    let json = &answer[answer.find('{').expect("an echo body")..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["headers"]["host"][0], "abs.example:8080");
    m.shutdown().await;
}

/// Status lines in `text` (the test backend's JSON names the version too,
/// but never followed by a space).
fn answers(text: &str) -> usize {
    text.matches("HTTP/1.1 ").count() + text.matches("HTTP/1.0 ").count()
}

/// Reads from `s` until `text` holds `count` answers, within 5 s.
async fn read_answers(s: &mut tokio::net::TcpStream, text: &mut String, count: usize) {
    common::read_until(s, text, |t| answers(t) >= count).await;
}

#[tokio::test]
async fn a_keep_alive_connection_serves_pipelined_requests_then_more_after_waiting() {
    let (us1, m) = one_region("").await;
    let before = us1.hits.load(std::sync::atomic::Ordering::Relaxed);
    let mut s = tokio::net::TcpStream::connect(m.http_addr).await.unwrap();
    let get = "GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    let post = "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello";
    // Three requests in one write, one of them with a body.
    s.write_all(format!("{get}{post}{get}").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    read_answers(&mut s, &mut text, 3).await;
    // The connection then waits; it is still there for the next request,
    // and for one whose head arrives in pieces.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(get.as_bytes()).await.unwrap();
    read_answers(&mut s, &mut text, 4).await;
    s.write_all(b"GET / HT").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"TP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    read_answers(&mut s, &mut text, 5).await;
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 5, "{text}");
    assert!(!text.contains("connection: close"), "{text}");
    assert_eq!(
        us1.hits.load(std::sync::atomic::Ordering::Relaxed) - before,
        5,
        "each request reached the backend once"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn an_answer_given_before_the_request_body_was_read_closes_the_connection() {
    let (us1, m) = one_region("").await;
    let before = us1.hits.load(std::sync::atomic::Ordering::Relaxed);
    let mut s = tokio::net::TcpStream::connect(m.http_addr).await.unwrap();
    // Meridian answers its own status endpoint without reading the body;
    // the rest of that body, which reads like a request, must not be
    // taken for the next one.
    let rest = "GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    let head = format!(
        "POST /.well-known/meridian/status HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\nhello",
        5 + rest.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut text = String::new();
    read_answers(&mut s, &mut text, 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = s.write_all(rest.as_bytes()).await;
    let mut tail = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut tail)).await;
    assert!(closed.is_ok(), "the connection was left open");
    text.push_str(&String::from_utf8_lossy(&tail));
    assert_eq!(answers(&text), 1, "{text}");
    assert_eq!(
        us1.hits.load(std::sync::atomic::Ordering::Relaxed),
        before,
        "nothing reached the backend"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn http_1_0_keeps_the_connection_only_when_asked() {
    let (_us1, m) = one_region("").await;
    let mut s = tokio::net::TcpStream::connect(m.http_addr).await.unwrap();
    let kept = "GET / HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n";
    s.write_all(kept.as_bytes()).await.unwrap();
    let mut text = String::new();
    read_answers(&mut s, &mut text, 1).await;
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    assert!(text.contains("connection: keep-alive"), "{text}");
    s.write_all(b"GET / HTTP/1.0\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut tail = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut tail)).await;
    assert!(
        closed.is_ok(),
        "a plain HTTP/1.0 request ends the connection"
    );
    let tail = String::from_utf8_lossy(&tail);
    assert!(tail.starts_with("HTTP/1.0 200"), "{tail}");
    m.shutdown().await;
}

#[tokio::test]
async fn a_waiting_keep_alive_connection_closes_at_once_on_shutdown() {
    let (_us1, m) = one_region("[limits]\nkeepalive_idle_timeout = \"60s\"\n").await;
    let mut s = tokio::net::TcpStream::connect(m.http_addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    read_answers(&mut s, &mut text, 1).await;
    let stopping = tokio::spawn(m.shutdown());
    let mut tail = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut tail)).await;
    assert!(closed.is_ok(), "the waiting connection was not closed");
    assert!(tail.is_empty(), "{}", String::from_utf8_lossy(&tail));
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("shutdown did not wait for the idle connection")
        .unwrap();
}

#[tokio::test]
async fn requests_are_served_after_the_connection_has_rested() {
    let (_us1, m) = one_region("").await;
    let rest = meridian::http1::PARK_AFTER + Duration::from_millis(500);
    let mut s = tokio::net::TcpStream::connect(m.http_addr).await.unwrap();
    // Quiet before the first request, then between two requests, then in
    // the middle of a head: each longer than a connection waits before it
    // gives its buffers up.
    tokio::time::sleep(rest).await;
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    read_answers(&mut s, &mut text, 1).await;
    tokio::time::sleep(rest).await;
    s.write_all(b"GET / HTTP/1.1\r\nho").await.unwrap();
    tokio::time::sleep(rest).await;
    s.write_all(b"st: x\r\n\r\n").await.unwrap();
    read_answers(&mut s, &mut text, 2).await;
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    m.shutdown().await;
}

#[tokio::test]
async fn a_head_dripping_across_rests_is_still_bounded_by_the_header_read_timeout() {
    let (us1, m) = one_region("[limits]\nheader_read_timeout = \"2s\"\n").await;
    let before = us1.hits.load(std::sync::atomic::Ordering::Relaxed);
    let mut s = tokio::net::TcpStream::connect(m.http_addr).await.unwrap();
    let started = tokio::time::Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let mut closed = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if s.write_all(b"x").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1024];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "still open after {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed only after {:?}",
        started.elapsed()
    );
    assert_eq!(us1.hits.load(std::sync::atomic::Ordering::Relaxed), before);
    m.shutdown().await;
}

#[tokio::test]
async fn a_slow_reader_gets_the_whole_answer_before_a_closing_connection_closes() {
    let (_us1, m) = one_region("").await;
    let n: usize = 8 * 1024 * 1024;
    let mut s = tokio::net::TcpStream::connect(m.http_addr).await.unwrap();
    s.write_all(
        format!("GET /big?n={n} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    // Pauses longer than a connection's rest near the end, where the
    // backend's answer may have ended in Meridian while the socket is
    // still full: nothing Meridian holds may be dropped with the
    // connection.
    let mut got = Vec::with_capacity(n + 1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut pauses = vec![n / 8, n / 4, 3 * n / 8];
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("no stall");
        match r {
            Ok(0) | Err(_) => break,
            Ok(k) => got.extend_from_slice(&buf[..k]),
        }
        if pauses.last().is_some_and(|&left| got.len() + left >= n) {
            pauses.pop();
            tokio::time::sleep(meridian::http1::PARK_AFTER + Duration::from_millis(300)).await;
        }
    }
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    let body = &got[head_end..];
    if head.contains("transfer-encoding: chunked") {
        assert!(body.ends_with(b"\r\n0\r\n\r\n"), "chunked answer cut short");
        assert!(body.len() > n, "{} of {n} bytes", body.len());
    } else {
        assert_eq!(body.len(), n, "{head}");
    }
    m.shutdown().await;
}

/// A backend that answers every request head at once, before it reads any
/// body, then reads the body its head announces and adds up its bytes.
async fn early_answer_backend() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counter = std::sync::Arc::clone(&counter);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                    pending.drain(..end + 4);
                    let mut left: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(ok).await.is_err() {
                        return;
                    }
                    while left > 0 {
                        if pending.is_empty() {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => pending.extend_from_slice(&buf[..n]),
                            }
                        }
                        let take = left.min(pending.len());
                        pending.drain(..take);
                        left -= take;
                        counter.fetch_add(take, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    (addr, received)
}

#[tokio::test]
async fn an_upload_answered_before_its_end_is_still_sent_whole() {
    use std::sync::atomic::Ordering;
    let (addr, received) = early_answer_backend().await;
    let m = in_front_of(&[addr], "", "100ms").await;
    let before = received.load(Ordering::SeqCst);
    // Sent whole before a byte of the answer is read, as many clients do;
    // more than the socket buffers on the way hold.
    let len = 16 * 1024 * 1024;
    let mut s = tokio::net::TcpStream::connect(m.http_addr).await.unwrap();
    let upload = async {
        s.write_all(
            format!("POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {len}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let chunk = vec![b'x'; 1 << 16];
        for _ in 0..len / chunk.len() {
            s.write_all(&chunk).await.unwrap();
        }
        // The whole answer, however the reads split it; any other answer
        // as soon as its head is in.
        let mut answer = String::new();
        read_until(&mut s, &mut answer, |t| {
            t.ends_with("ok") || (t.contains("\r\n\r\n") && !t.starts_with("HTTP/1.1 200 "))
        })
        .await;
        answer
    };
    let answer = tokio::time::timeout(Duration::from_secs(20), upload)
        .await
        .expect("the upload went through, not hung");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    wait_for(
        Duration::from_secs(5),
        "the whole body at the backend",
        || async { received.load(Ordering::SeqCst) - before == len },
    )
    .await;
    m.shutdown().await;
}
