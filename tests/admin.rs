//! The admin listener: liveness without a token, the status API behind one.

mod common;

use std::time::Duration;

use common::*;

async fn admin_get(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value, http::HeaderMap) {
    let mut req = empty(http::Method::GET, format!("http://{addr}{path}"));
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let resp = client().request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::String(
        String::from_utf8_lossy(&body).into_owned(),
    ));
    (status, value, headers)
}

#[tokio::test]
async fn status_needs_the_token_and_lists_regions_and_backends() {
    let us1 = Backend::start("us-1").await;
    let eu1 = Backend::start("eu-1").await;
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, "s3cret-token\n").unwrap();
    let text = config_text(&[R("us", &[&us1], &["eu"]), R("eu", &[&eu1], &["us"])], "").replace(
        "[admin]\n",
        &format!("[admin]\ntoken_file = \"{}\"\n", token_path.display()),
    );
    let m = start(&text).await;
    let admin = m.admin_addr.expect("admin listener");
    wait_for(Duration::from_secs(5), "both regions healthy", || async {
        region_state(&m, "us").await == "healthy" && region_state(&m, "eu").await == "healthy"
    })
    .await;

    let (status, body, _) = admin_get(admin, "/healthz", None).await;
    assert_eq!(status, 200, "{body}");

    let (status, body, headers) = admin_get(admin, "/api/v1/status", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "missing or invalid bearer token");
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, _) = admin_get(admin, "/api/v1/status", Some("s3cret-tokeN")).await;
    assert_eq!(status, 401, "a wrong token is refused");

    let (status, body, _) = admin_get(admin, "/api/v1/status", Some("s3cret-token")).await;
    assert_eq!(status, 200);
    let regions = body["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 2);
    assert_eq!(regions[0]["name"], "us");
    assert_eq!(regions[0]["state"], "healthy");
    assert_eq!(regions[0]["drained"], false);
    assert_eq!(regions[0]["healthy_backends"], 1);
    assert_eq!(regions[0]["failover"][0], "eu");
    assert_eq!(regions[0]["backends"][0]["address"], us1.addr.to_string());
    assert_eq!(regions[0]["backends"][0]["state"], "up");
    assert!(body["incident"].is_null());
    assert!(body["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["subject"] == "eu" && e["to"] == "healthy"));

    let (status, body, _) = admin_get(admin, "/nope", Some("s3cret-token")).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "no such endpoint");
    m.shutdown().await;
}

#[tokio::test]
async fn a_down_backend_is_reported_with_its_last_error() {
    let us1 = Backend::start("us-1").await;
    let m = start(&config_text(&[R("us", &[&us1], &[])], "")).await;
    let admin = m.admin_addr.unwrap();
    us1.set_up(false);
    wait_for(Duration::from_secs(5), "backend down", || async {
        m.shared.load().regions[0].backends[0].state == meridian::health::BackendState::Down
    })
    .await;
    let (status, body, _) = admin_get(admin, "/api/v1/status", None).await;
    assert_eq!(
        status, 200,
        "a loopback admin listener without a token is open"
    );
    let backend = &body["regions"][0]["backends"][0];
    assert_eq!(backend["state"], "down");
    assert!(
        backend["last_error"].as_str().unwrap().contains("onnect"),
        "{backend}"
    );
    m.shutdown().await;
}
