//! Failover under load: backends that refuse, reset, hang, crawl, answer raw
//! 503s or flap, with Meridian in-process in front of them.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

/// What one request of a steady load got.
#[derive(Debug, Clone)]
struct Outcome {
    sent: Instant,
    /// `None` when the request failed without a response.
    status: Option<StatusCode>,
    region: String,
    body: String,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.status == Some(StatusCode::OK)
    }
}

/// GET `/` every `every` for `total`, each in its own task; returns the
/// outcomes in sending order.
async fn steady_load(addr: std::net::SocketAddr, every: Duration, total: Duration) -> Vec<Outcome> {
    let client = client();
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut ticker = tokio::time::interval(every);
    while started.elapsed() < total {
        ticker.tick().await;
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let req = empty(http::Method::GET, format!("http://{addr}/"));
            let answer = tokio::time::timeout(Duration::from_secs(10), async {
                let resp = client.request(req).await.ok()?;
                let status = resp.status();
                let region = resp
                    .headers()
                    .get("x-meridian-region")
                    .map(|v| v.to_str().unwrap_or_default().to_owned())
                    .unwrap_or_default();
                let body = resp.into_body().collect().await.ok()?.to_bytes();
                Some((status, region, String::from_utf8_lossy(&body).into_owned()))
            })
            .await
            .ok()
            .flatten();
            match answer {
                Some((status, region, body)) => Outcome {
                    sent,
                    status: Some(status),
                    region,
                    body,
                },
                None => Outcome {
                    sent,
                    status: None,
                    region: String::new(),
                    body: String::new(),
                },
            }
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn failures(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter(|o| !o.ok())
        .map(|o| format!("{:?} from {:?}: {}", o.status, o.region, o.body))
        .collect()
}

/// us (one backend, failing over to eu) and eu, both healthy.
async fn us_and_eu(region_keys: &str, tail: &str) -> (Backend, Backend, meridian::server::Running) {
    us_and_eu_with(region_keys, tail, "").await
}

/// [`us_and_eu`] with `extra` TOML after the regions.
async fn us_and_eu_with(
    region_keys: &str,
    tail: &str,
    extra: &str,
) -> (Backend, Backend, meridian::server::Running) {
    let us1 = Backend::start("us-1").await;
    let eu1 = Backend::start("eu-1").await;
    let text = config_text_with(
        &[R("us", &[&us1], &["eu"]), R("eu", &[&eu1], &["us"])],
        region_keys,
        tail,
        extra,
    );
    let m = start_healthy(&text, &["us", "eu"]).await;
    (us1, eu1, m)
}

/// Runs a steady load on us, breaks us1 with `fault` after 300 ms, and
/// returns the outcomes.
async fn fault_under_load(
    fault: Fault,
) -> (Vec<Outcome>, Backend, Backend, meridian::server::Running) {
    let (us1, eu1, m) = us_and_eu("", "").await;
    let load = tokio::spawn(steady_load(
        m.http_addr,
        Duration::from_millis(10),
        Duration::from_millis(1500),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    if fault == Fault::None {
        us1.set_up(false);
    } else {
        us1.fail_all(fault);
    }
    let outcomes = load.await.unwrap();
    (outcomes, us1, eu1, m)
}

#[tokio::test]
async fn a_region_that_refuses_connections_costs_no_request() {
    let (outcomes, _us1, eu1, m) = fault_under_load(Fault::None).await;
    assert!(outcomes.len() > 100, "{} requests", outcomes.len());
    assert_eq!(failures(&outcomes), Vec::<String>::new());
    assert!(outcomes.first().unwrap().region == "us");
    assert!(outcomes.last().unwrap().region == "eu");
    assert!(eu1.hits.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert_eq!(region_state(&m, "us").await, "down");
    m.shutdown().await;
}

#[tokio::test]
async fn a_region_that_hangs_after_accepting_costs_no_request() {
    let (outcomes, _us1, _eu1, m) = fault_under_load(Fault::Hang).await;
    assert_eq!(failures(&outcomes), Vec::<String>::new());
    assert!(outcomes.last().unwrap().region == "eu");
    wait_for(Duration::from_secs(5), "us marked down", || async {
        region_state(&m, "us").await == "down"
    })
    .await;
    let status = serde_json::to_value(meridian::admin::status_body(&m.shared.load())).unwrap();
    let us1 = &status["regions"][0]["backends"][0];
    assert!(
        us1["state"] == "ejected" || us1["state"] == "down",
        "a hanging backend is never healthy: {us1}"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_region_answering_raw_503s_shows_none_of_them() {
    let (outcomes, _us1, _eu1, m) = fault_under_load(Fault::Raw503).await;
    assert_eq!(failures(&outcomes), Vec::<String>::new());
    assert!(
        outcomes.iter().all(|o| !o.body.contains("nginx")),
        "a raw 503 body reached a client"
    );
    wait_for(Duration::from_secs(5), "us marked down", || async {
        region_state(&m, "us").await == "down"
    })
    .await;
    m.shutdown().await;
}

#[tokio::test]
async fn a_backend_that_resets_is_retried_and_ejected() {
    let (us1, _eu1, m) = us_and_eu("", "").await;
    // Its checks still pass: only live traffic can tell.
    us1.set_fault(Fault::Reset);
    let outcomes = steady_load(
        m.http_addr,
        Duration::from_millis(10),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(failures(&outcomes), Vec::<String>::new());
    let status = serde_json::to_value(meridian::admin::status_body(&m.shared.load())).unwrap();
    assert_eq!(status["regions"][0]["backends"][0]["state"], "ejected");
    assert_eq!(status["regions"][0]["state"], "down");
    let events = status["events"].as_array().unwrap();
    let ejected = events
        .iter()
        .find(|e| e["to"] == "ejected")
        .expect("an ejection event");
    assert!(
        ejected["reason"]
            .as_str()
            .unwrap()
            .contains("connections reset"),
        "{ejected}"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_slow_backend_is_hedged_and_ejected() {
    let (us1, _eu1, m) = us_and_eu("", "").await;
    us1.set_fault(Fault::Slow);
    let outcomes = steady_load(
        m.http_addr,
        Duration::from_millis(20),
        Duration::from_millis(1000),
    )
    .await;
    assert_eq!(failures(&outcomes), Vec::<String>::new());
    assert!(
        outcomes.iter().any(|o| o.region == "eu"),
        "hedged requests are answered by eu"
    );
    let status = serde_json::to_value(meridian::admin::status_body(&m.shared.load())).unwrap();
    assert_eq!(
        status["regions"][0]["backends"][0]["state"], "ejected",
        "a backend slower than its hedges is taken out: {status}"
    );
    m.shutdown().await;
}

/// The first `n` bytes of the test pattern.
fn pattern(n: u64) -> Vec<u8> {
    (0..n).map(pattern_byte).collect()
}

/// Sends `body` with `method`; returns the status, the serving region and the body.
async fn send(
    m: &meridian::server::Running,
    method: http::Method,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, String, String) {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", m.http_addr))
        .body(Full::new(Bytes::from(body)).boxed_unsync())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .expect("an answer")
        .expect("a response");
    let status = resp.status();
    let region = resp
        .headers()
        .get("x-meridian-region")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, region, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_post_whose_connection_was_refused_is_retried() {
    // Checks every minute: the refusal is found by live traffic alone.
    let us1 = Backend::start("us-1").await;
    let eu1 = Backend::start("eu-1").await;
    let text = config_text_with(
        &[R("us", &[&us1], &["eu"]), R("eu", &[&eu1], &["us"])],
        "",
        "[region.outlier]\nconsecutive_failures = 0",
        "[proxy]\nhedge = false\n",
    )
    .replace("interval = \"100ms\"", "interval = \"60s\"");
    let m = start_healthy(&text, &["us", "eu"]).await;
    us1.set_up(false);
    let answer = send(&m, http::Method::POST, "/sink", Vec::new()).await;
    assert_eq!(answer, (StatusCode::OK, "eu".into(), "0".into()));
    // A body that was never read goes to the next backend as it was.
    let answer = send(&m, http::Method::POST, "/sink", pattern(1000)).await;
    assert_eq!(answer, (StatusCode::OK, "eu".into(), "1000".into()));
    m.shutdown().await;
}

#[tokio::test]
async fn a_post_whose_upstream_reset_after_sending_is_not_retried_but_a_get_is() {
    let (us1, eu1, m) = us_and_eu("", "[region.outlier]\nconsecutive_failures = 0").await;
    us1.set_fault(Fault::Reset);
    let (status, _, _) = send(&m, http::Method::POST, "/anything", b"pay once".to_vec()).await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "a POST the backend may have seen is never sent twice"
    );
    assert_eq!(eu1.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
    let (status, headers, _) = get(&m, "/anything", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-meridian-region"], "eu");
    m.shutdown().await;
}

#[tokio::test]
async fn a_put_with_a_small_body_is_replayed_after_a_reset_when_configured() {
    let (us1, _eu1, m) = us_and_eu("", "[region.outlier]\nconsecutive_failures = 0").await;
    us1.set_fault(Fault::Reset);
    let (status, _, _) = send(&m, http::Method::PUT, "/sink", pattern(5000)).await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "PUT is not retried unless configured"
    );
    m.shutdown().await;

    let (us1, _eu1, m) = us_and_eu_with(
        "",
        "[region.outlier]\nconsecutive_failures = 0",
        "[proxy]\nretry_methods = [\"GET\", \"PUT\"]\nreplay_buffer = 8192\n",
    )
    .await;
    us1.set_fault(Fault::Reset);
    let answer = send(&m, http::Method::PUT, "/sink", pattern(5000)).await;
    assert_eq!(
        answer,
        (StatusCode::OK, "eu".into(), "5000".into()),
        "the replayed body arrived whole"
    );
    // Larger than the replay buffer: streamed once, never retried.
    let (status, _, _) = send(&m, http::Method::PUT, "/sink", pattern(20_000)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    m.shutdown().await;
}

#[tokio::test]
async fn the_retry_budget_caps_retries() {
    let us1 = Backend::start("us-1").await;
    let us2 = Backend::start("us-2").await;
    let text = config_text_with(
        &[R("us", &[&us1, &us2], &[])],
        "",
        "[region.outlier]\nconsecutive_failures = 0",
        "[proxy]\nhedge = false\nretry_budget_ratio = 0.1\nretry_budget_min_per_second = 0\nretry_budget_window = \"60s\"\n",
    );
    let m = start_healthy(&text, &["us"]).await;
    // Both answer 503 to traffic while passing their checks.
    us1.set_fault(Fault::Raw503);
    us2.set_fault(Fault::Raw503);
    for _ in 0..100 {
        let (status, _, _) = get(&m, "/", &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let hits = us1.hits.load(std::sync::atomic::Ordering::Relaxed)
        + us2.hits.load(std::sync::atomic::Ordering::Relaxed);
    let retries = hits - 100;
    assert!(
        (1..=10).contains(&retries),
        "{retries} retries for 100 requests with a 10% budget"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn ejection_time_grows_on_repeats() {
    let us1 = Backend::start("us-1").await;
    let us2 = Backend::start("us-2").await;
    let text = config_text_with(
        &[R("us", &[&us1, &us2], &[])],
        "",
        "[region.outlier]\nconsecutive_failures = 2\nbase_ejection_time = \"300ms\"",
        "[proxy]\nhedge = false\n",
    );
    let m = start_healthy(&text, &["us"]).await;
    // us1 passes its checks but fails every request.
    us1.set_fault(Fault::Raw503);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = Arc::clone(&stop);
        let addr = m.http_addr;
        tokio::spawn(async move {
            let client = client();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let req = empty(http::Method::GET, format!("http://{addr}/"));
                let resp = client.request(req).await.unwrap();
                assert_eq!(resp.status(), StatusCode::OK, "retried on us2");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Measure how long each of the first three ejections lasts.
    let mut spans = Vec::new();
    let mut ejected_at = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while spans.len() < 3 && Instant::now() < deadline {
        let ejected =
            m.shared.load().regions[0].backends[0].state == meridian::health::BackendState::Ejected;
        match (ejected, ejected_at) {
            (true, None) => ejected_at = Some(Instant::now()),
            (false, Some(at)) => {
                spans.push(at.elapsed());
                ejected_at = None;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.await.unwrap();
    assert_eq!(spans.len(), 3, "three ejections: {spans:?}");
    // Seen by polling, so a few milliseconds either way.
    assert!(spans[0] >= Duration::from_millis(250), "{spans:?}");
    assert!(spans[1] >= Duration::from_millis(550), "{spans:?}");
    assert!(spans[2] >= Duration::from_millis(850), "{spans:?}");
    assert!(spans[1] > spans[0] && spans[2] > spans[1], "{spans:?}");
    let status = serde_json::to_value(meridian::admin::status_body(&m.shared.load())).unwrap();
    let reasons: Vec<String> = status["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["to"] == "ejected")
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        reasons[0].contains("ejected for 300ms (ejection 1 in a row)"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("ejected for 600ms (ejection 2 in a row)"),
        "{reasons:?}"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_flapping_region_moves_traffic_at_most_once_per_hold() {
    // Passive checks off: an ejection would hold the region out for its own
    // reasons, and this is about the fail-back hold.
    let (us1, _eu1, m) = us_and_eu(
        "failback_hold = \"1500ms\"",
        "[region.outlier]\nconsecutive_failures = 0",
    )
    .await;
    let load = tokio::spawn(steady_load(
        m.http_addr,
        Duration::from_millis(20),
        Duration::from_millis(4500),
    ));
    // Down and up every 300 ms for 2.4 s: long enough for checks to see
    // both, never up for the whole hold.
    let flap_start = Instant::now();
    for i in 0..8 {
        us1.set_up(i % 2 == 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    us1.set_up(true);
    let flap_end = Instant::now();
    let outcomes = load.await.unwrap();
    assert_eq!(failures(&outcomes), Vec::<String>::new());

    let status = serde_json::to_value(meridian::admin::status_body(&m.shared.load())).unwrap();
    let events = status["events"].as_array().unwrap();
    let us_events: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["subject"] == "us")
        .map(|e| {
            (
                e["from"].as_str().unwrap().to_owned(),
                e["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let downs = us_events.iter().filter(|(_, to)| to == "down").count();
    let returns = us_events.iter().filter(|(from, _)| from == "held").count();
    assert!(downs >= 2, "the checks saw it flap: {us_events:?}");
    assert_eq!(
        returns, 1,
        "users returned once, after the flapping: {us_events:?}"
    );

    // Once traffic left us, it came back only after the flapping ended and
    // the hold passed.
    let first_eu = outcomes
        .iter()
        .position(|o| o.region == "eu")
        .expect("failed over");
    let back: Vec<&Outcome> = outcomes[first_eu..]
        .iter()
        .filter(|o| o.region == "us" && o.sent < flap_end)
        .collect();
    // Requests sent while us was up but not yet seen down may still reach it.
    assert!(
        back.len() <= 3,
        "traffic went back to a flapping region {} times (flapping began at {:?})",
        back.len(),
        flap_start
    );
    assert_eq!(
        outcomes.last().unwrap().region,
        "us",
        "back on us in the end"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn health_checks_use_the_configured_request_and_expectations() {
    let us1 = Backend::start("us-1").await;
    let eu1 = Backend::start("eu-1").await;
    let ap1 = Backend::start("ap-1").await;
    // The echo path shows the Host header it got in its JSON body.
    let text = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\
         [[region]]\nname = \"us\"\nbackends = [\"{}\"]\n[region.health]\ninterval = \"100ms\"\npath = \"/probe\"\nhost = \"health.example\"\nexpect_body = '\"host\":[\"health.example\"]'\n\
         [[region]]\nname = \"eu\"\nbackends = [\"{}\"]\n[region.health]\ninterval = \"100ms\"\nexpect_status = [204]\n\
         [[region]]\nname = \"ap\"\nbackends = [\"{}\"]\n[region.health]\ninterval = \"100ms\"\nexpect_body = \"missing\"\n",
        us1.url(),
        eu1.url(),
        ap1.url()
    );
    let m = start(&text).await;
    wait_for(Duration::from_secs(5), "every region checked", || async {
        region_state(&m, "us").await == "healthy"
            && region_state(&m, "eu").await == "down"
            && region_state(&m, "ap").await == "down"
    })
    .await;
    let status = serde_json::to_value(meridian::admin::status_body(&m.shared.load())).unwrap();
    assert_eq!(
        status["regions"][1]["backends"][0]["last_error"],
        "status 200"
    );
    assert_eq!(
        status["regions"][2]["backends"][0]["last_error"],
        "body does not contain \"missing\""
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_backend_may_take_traffic_before_its_first_check() {
    let us1 = Backend::start("us-1").await;
    // Checks every minute, the first one against a hanging health endpoint:
    // only the initial state can make the region serve.
    us1.set_health(HealthAnswer::Hang);
    let text = config_text_with(&[R("us", &[&us1], &[])], "", "initial_state = \"up\"", "")
        .replace("interval = \"100ms\"", "interval = \"60s\"");
    let m = start(&text).await;
    assert_eq!(region_state(&m, "us").await, "healthy");
    let (status, _, body) = get(&m, "/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served_by(&body), "us-1");
    m.shutdown().await;
}

#[tokio::test]
async fn a_region_first_byte_timeout_bounds_the_wait_on_a_hanging_backend() {
    let us1 = Backend::start("us-1").await;
    let text = config_text_with(
        &[R("us", &[&us1], &[])],
        "first_byte_timeout = \"300ms\"",
        "",
        "[proxy]\nhedge = false\nfirst_byte_timeout = \"60s\"\n",
    );
    let m = start_healthy(&text, &["us"]).await;
    // Within the client's 10 s, though the proxy-wide timeout is 60 s.
    let (status, _, _) = get(&m, "/hang", &[]).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    m.shutdown().await;
}

#[tokio::test]
async fn a_request_with_a_body_of_known_length_is_hedged() {
    let (us1, _eu1, m) = us_and_eu_with(
        "",
        "[region.outlier]\nconsecutive_failures = 0",
        "[proxy]\nretry_methods = [\"GET\", \"PUT\"]\n",
    )
    .await;
    // us answers 400 ms late; the hedge to eu answers first.
    us1.set_fault(Fault::Slow);
    let answer = send(&m, http::Method::PUT, "/sink", pattern(3000)).await;
    assert_eq!(
        answer,
        (StatusCode::OK, "eu".into(), "3000".into()),
        "hedged, with the whole body"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn slow_start_brings_a_returning_region_up_to_its_full_share() {
    // Steps of 200 ms, checks every 100 ms: the steps must not wait for a
    // quiet moment between check results.
    let (us1, _eu1, m) = us_and_eu(
        "failback_hold = \"0s\"\nslow_start = \"4s\"",
        "[region.outlier]\nconsecutive_failures = 0",
    )
    .await;
    us1.set_up(false);
    wait_for(Duration::from_secs(5), "us down", || async {
        region_state(&m, "us").await == "down"
    })
    .await;
    us1.set_up(true);
    wait_for(Duration::from_secs(5), "us ramping", || async {
        let v = &m.shared.load().regions[0];
        v.state.serves() && v.ramp_permille > 0 && v.ramp_permille < 1000
    })
    .await;
    wait_for(Duration::from_secs(8), "us at its full share", || async {
        m.shared.load().regions[0].ramp_permille == 1000
    })
    .await;
    let (_, headers, _) = get(&m, "/", &[]).await;
    assert_eq!(headers["x-meridian-region"], "us");
    m.shutdown().await;
}
