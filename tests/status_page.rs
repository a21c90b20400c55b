//! The status page end to end: Meridian in-process in front of real hyper
//! backends on loopback. What users see when nothing can serve (HTML and
//! JSON, the incident, no internal address), the public status endpoint,
//! and backends' own error pages intercepted or passed through.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::StatusCode;
use meridian::state::{Control, Incident};

const BROWSER: (&str, &str) = (
    "accept",
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
);
const API: (&str, &str) = ("accept", "application/json");
const STATUS: &str = "/.well-known/meridian/status";

/// Branding every test here uses, and more `[status_page]` keys.
fn branding(more: &str) -> String {
    format!(
        "[status_page]\nbrand = \"Acme\"\ntitle = \"Acme is taking a break\"\nretry_after = \"12s\"\n{more}"
    )
}

/// Meridian in front of one region, "us", with one healthy backend.
async fn one_region(more: &str) -> (Backend, meridian::server::Running) {
    let us1 = Backend::start("us-1").await;
    let text = config_text_with(
        &[R("us", &[&us1], &[])],
        "",
        // Outlier ejection would turn a backend answering errors into a
        // region that is down; these tests are about the answers themselves.
        "[region.outlier]\nconsecutive_failures = 0",
        &branding(more),
    );
    let m = start_healthy(&text, &["us"]).await;
    (us1, m)
}

fn incident() -> Incident {
    Incident {
        title: "Payments <delayed>".into(),
        message: "Card payments are queued & will go through.".into(),
        link: Some("https://status.acme.test/incidents/7".into()),
    }
}

async fn post_incident(m: &meridian::server::Running, incident: Option<Incident>) {
    let control = Control {
        incident,
        ..Control::clone(&m.shared.load().control)
    };
    assert!(m.shared.set_control(Arc::new(control)).await);
}

async fn wait_down(m: &meridian::server::Running) {
    wait_for(Duration::from_secs(5), "us down", || async {
        region_state(m, "us").await == "down"
    })
    .await;
}

/// The backend's address appears nowhere in what the public gets.
fn assert_no_address(backend: &Backend, text: &str) {
    let port = backend.addr.port().to_string();
    assert!(
        !text.contains("127.0.0.1") && !text.contains(&port),
        "an internal address ({}) leaked: {text}",
        backend.addr
    );
}

#[tokio::test]
async fn browsers_get_the_branded_page_with_the_incident_and_no_address() {
    let (us1, m) = one_region("").await;
    us1.set_up(false);
    wait_down(&m).await;
    post_incident(&m, Some(incident())).await;

    let (status, headers, body) = get(&m, "/checkout", &[BROWSER]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "12");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'") && csp.contains("img-src data:"));
    assert!(
        body.contains("<title>Acme is taking a break</title>"),
        "{body}"
    );
    assert!(body.contains(">Acme<"), "the brand: {body}");
    assert!(body.contains("Payments &lt;delayed&gt;"), "{body}");
    assert!(body.contains("Card payments are queued &amp; will go through."));
    assert!(
        body.contains("status.acme.test&#x2f;incidents&#x2f;7"),
        "{body}"
    );
    assert!(body.contains("us: unavailable"));
    assert!(body.contains(r#"data-state="down""#));
    assert!(body.len() < 20 * 1024, "{} bytes", body.len());
    assert_no_address(&us1, &body);
    for (name, value) in &headers {
        assert_no_address(&us1, &format!("{name}: {value:?}"));
    }
    m.shutdown().await;
}

#[tokio::test]
async fn api_clients_get_json_with_the_real_incident_and_the_same_headers() {
    let (us1, m) = one_region("").await;
    us1.set_up(false);
    wait_down(&m).await;
    post_incident(&m, Some(incident())).await;

    for accept in [API, ("accept", "*/*")] {
        let (status, headers, body) = get(&m, "/api/orders", &[accept]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["retry-after"], "12");
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(headers["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "error": "service_unavailable",
                "reason": "no_region",
                "message": "Acme is taking a break",
                "incident": {
                    "title": "Payments <delayed>",
                    "message": "Card payments are queued & will go through.",
                    "link": "https://status.acme.test/incidents/7",
                },
                "retry_after": 12,
            })
        );
        assert_no_address(&us1, &body);
    }

    // Cleared, the incident is gone from the answer at once.
    post_incident(&m, None).await;
    let (_, _, body) = get(&m, "/api/orders", &[API]).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["incident"].is_null(), "{body}");
    m.shutdown().await;
}

#[tokio::test]
async fn the_public_endpoint_says_up_or_down_with_the_incident_and_never_proxies() {
    let (us1, m) = one_region("").await;
    let (status, headers, body) = get(&m, STATUS, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["content-type"], "application/json");
    assert!(
        headers.get("x-meridian-region").is_none(),
        "answered by Meridian itself"
    );
    assert_eq!(body, r#"{"state":"up","incident":null,"retry_after":12}"#);
    // Query strings and HEAD are answered the same way.
    let (status, _, _) = get(&m, &format!("{STATUS}?t=1"), &[BROWSER]).await;
    assert_eq!(status, StatusCode::OK);
    let head = common::empty(
        http::Method::HEAD,
        format!("http://{}{STATUS}", m.http_addr),
    );
    let resp = client().request(head).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");

    post_incident(&m, Some(incident())).await;
    let (_, _, body) = get(&m, STATUS, &[]).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "up");
    assert_eq!(v["incident"]["title"], "Payments <delayed>");
    assert_eq!(
        v["incident"]["link"],
        "https://status.acme.test/incidents/7"
    );

    us1.set_up(false);
    wait_down(&m).await;
    let (status, _, body) = get(&m, STATUS, &[]).await;
    assert_eq!(status, StatusCode::OK, "the endpoint itself is fine");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "down");
    assert_eq!(v["retry_after"], 12);
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["incident", "retry_after", "state"], "nothing more");
    assert_no_address(&us1, &body);

    for method in [http::Method::POST, http::Method::PUT, http::Method::DELETE] {
        let req = common::empty(method.clone(), format!("http://{}{STATUS}", m.http_addr));
        let resp = client().request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(resp.headers()["allow"], "GET, HEAD");
    }
    assert_eq!(
        us1.hits.load(Ordering::Relaxed),
        0,
        "no request to the endpoint reached the backend"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_raw_503_from_a_backend_becomes_the_status_page() {
    let (us1, m) = one_region("").await;
    us1.set_fault(Fault::Raw503);
    post_incident(&m, Some(incident())).await;

    let (status, headers, body) = get(&m, "/", &[BROWSER]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "12");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers.contains_key("content-security-policy"));
    assert!(!body.contains("nginx"), "the raw page is gone: {body}");
    assert!(body.contains("Acme is taking a break"), "{body}");
    assert!(body.contains("Payments &lt;delayed&gt;"), "{body}");
    assert!(
        body.contains(r#"data-state="up""#),
        "rendered while a region serves, so the page reloads only after Retry-After"
    );
    assert_no_address(&us1, &body);

    let (status, _, body) = get(&m, "/api", &[API]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["reason"], "upstream_error");
    assert_eq!(v["incident"]["title"], "Payments <delayed>");
    assert!(
        us1.hits.load(Ordering::Relaxed) >= 2,
        "the backend answered"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn an_intercepted_status_is_kept_and_only_listed_statuses_are_intercepted() {
    let (us1, m) = one_region("intercept = [500]\n").await;
    us1.set_fault(Fault::Raw500);
    let (status, _, body) = get(&m, "/", &[API]).await;
    assert_eq!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "the backend's status"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["reason"], "upstream_error");
    // 503 is not in this list: the backend's page passes.
    us1.set_fault(Fault::Raw503);
    let (status, _, body) = get(&m, "/", &[BROWSER]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, RAW_503);
    m.shutdown().await;
}

#[tokio::test]
async fn the_apps_own_json_and_passthrough_503s_reach_the_client() {
    let (us1, m) = one_region("").await;
    us1.set_fault(Fault::Json503);
    let (status, headers, body) = get(&m, "/api", &[BROWSER]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, JSON_503, "the application's JSON, untouched");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.get("content-security-policy").is_none());

    us1.set_fault(Fault::Passthrough503);
    let (status, headers, body) = get(&m, "/", &[BROWSER]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, OWN_503);
    assert!(
        headers.get("x-meridian-passthrough").is_none(),
        "the header is Meridian's, not the client's: {headers:?}"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn an_empty_intercept_list_lets_raw_503s_through() {
    let (us1, m) = one_region("intercept = []\n").await;
    us1.set_fault(Fault::Raw503);
    let (status, headers, body) = get(&m, "/", &[BROWSER]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, RAW_503);
    assert_eq!(headers["content-type"], "text/html");
    assert!(headers.get("content-security-policy").is_none());
    m.shutdown().await;
}

#[tokio::test]
async fn every_region_drained_says_so() {
    let (us1, m) = one_region("").await;
    let control = Control {
        drained_regions: ["us".to_owned()].into(),
        ..Control::default()
    };
    assert!(m.shared.set_control(Arc::new(control)).await);
    let (status, headers, body) = get(&m, "/", &[API]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "12");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["reason"], "drained", "{body}");
    let (_, _, body) = get(&m, STATUS, &[]).await;
    assert!(body.contains(r#""state":"down""#), "{body}");
    assert_eq!(us1.hits.load(Ordering::Relaxed), 0);
    m.shutdown().await;
}
