//! Per-backend concurrency: `limits.backend_max_requests` caps the requests
//! a backend has in flight (until their response bodies end), a request for
//! a full backend waits at most `limits.backend_queue_timeout`, then goes to
//! the next candidate, and when none is left gets the status page (503,
//! reason `overloaded`) and is counted. Real backends on loopback.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::StatusCode;
use meridian::server::Running;
use tokio::time::Instant;

/// Starts a `/gated` response: its head and first part arrive, and its body
/// stays open until the backend's `release`. Holds a slot until then.
async fn hold_gated(m: &Running) -> Incoming {
    let url = format!("http://{}/gated", m.http_addr);
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        client().request(empty(http::Method::GET, url)),
    )
    .await
    .expect("head within 5 s")
    .expect("request succeeds");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, Bytes::from_static(b"first"));
    body
}

/// The value of the metric line starting with `prefix`, from `/metrics`.
async fn metric(m: &Running, prefix: &str) -> f64 {
    let url = format!("http://{}/metrics", m.admin_addr.unwrap());
    let resp = client()
        .request(empty(http::Method::GET, url))
        .await
        .unwrap();
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&text).into_owned();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}

const LIMITS: &str = "[limits]\nbackend_max_requests = 2\nbackend_queue_timeout = \"300ms\"\n";

#[tokio::test]
async fn a_full_backend_sheds_after_the_bounded_wait_with_the_status_page() {
    let a = Backend::start("a").await;
    let m = start_healthy(&config_text(&[R("us", &[&a], &[])], LIMITS), &["us"]).await;
    let in_flight = format!(
        "meridian_backend_requests_in_flight{{region=\"us\",backend=\"{}\"}}",
        a.addr
    );

    let held = [hold_gated(&m).await, hold_gated(&m).await];
    assert_eq!(metric(&m, &in_flight).await, 2.0);

    let started = Instant::now();
    let (status, headers, body) = get(&m, "/", &[("accept", "application/json")]).await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("\"overloaded\""), "{body}");
    assert!(headers.contains_key("retry-after"));
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "shed after the queue timeout, not before and not much later: {waited:?}"
    );
    assert_eq!(
        a.hits.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the shed request never reached the backend"
    );
    assert_eq!(
        metric(&m, "meridian_backend_queue_timeouts_total").await,
        1.0
    );
    assert_eq!(
        metric(&m, "meridian_status_pages_total{reason=\"overloaded\"}").await,
        1.0
    );
    assert_eq!(
        region_state(&m, "us").await,
        "healthy",
        "busy is not broken: the backend is not ejected"
    );

    // A slot freed during the wait is taken at once.
    let started = Instant::now();
    let waiting = tokio::spawn({
        let url = format!("http://{}/", m.http_addr);
        async move {
            let resp = client()
                .request(empty(http::Method::GET, url))
                .await
                .unwrap();
            resp.status()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.release.notify_one();
    let status = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK, "served from the freed slot");
    assert!(started.elapsed() < Duration::from_millis(300));

    // Slots are given back when response bodies end, or are dropped.
    drop(held);
    wait_for(Duration::from_secs(2), "no request in flight", || async {
        metric(&m, &in_flight).await == 0.0
    })
    .await;
    let (status, _, _) = get(&m, "/", &[]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_full_backend_sends_requests_to_the_next_region_after_the_wait() {
    let a = Backend::start("a").await;
    let c = Backend::start("c").await;
    // Without hedging, which would send the waiting request to eu sooner.
    let extra = format!("{LIMITS}[proxy]\nhedge = false\n");
    let text = config_text(&[R("us", &[&a], &["eu"]), R("eu", &[&c], &[])], &extra);
    let m = start_healthy(&text, &["us", "eu"]).await;

    let (_, headers, body) = get(&m, "/", &[]).await;
    assert_eq!(
        headers["x-meridian-region"], "us",
        "us is the preferred region: {body}"
    );

    let _held = [hold_gated(&m).await, hold_gated(&m).await];
    let started = Instant::now();
    let (status, headers, body) = get(&m, "/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-meridian-region"], "eu");
    assert_eq!(served_by(&body), "c");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        metric(&m, "meridian_backend_queue_timeouts_total").await,
        1.0
    );
    assert_eq!(
        metric(&m, "meridian_status_pages_total{reason=\"overloaded\"}").await,
        0.0
    );
}

#[tokio::test]
async fn a_hedge_around_a_full_backend_does_not_count_it_as_slow() {
    let a = Backend::start("a").await;
    let c = Backend::start("c").await;
    let text = config_text(&[R("us", &[&a], &["eu"]), R("eu", &[&c], &[])], LIMITS);
    let m = start_healthy(&text, &["us", "eu"]).await;
    let _held = [hold_gated(&m).await, hold_gated(&m).await];

    // More in a row than passive checks need to eject a backend (5).
    for _ in 0..7 {
        let started = Instant::now();
        let (status, headers, _) = get(&m, "/", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-meridian-region"], "eu");
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "hedged to eu before the queue timeout: {:?}",
            started.elapsed()
        );
    }
    let up = format!(
        "meridian_backend_up{{region=\"us\",backend=\"{}\"}}",
        a.addr
    );
    assert_eq!(
        metric(&m, &up).await,
        1.0,
        "waiting for a slot is not a timeout: the full backend stays in"
    );
    assert_eq!(region_state(&m, "us").await, "healthy");
}
