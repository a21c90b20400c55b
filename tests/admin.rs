//! The admin listener: liveness without a token, the status API behind one.

mod common;

use std::time::Duration;

use common::*;
use http::Method;

const TOKEN: &str = "s3cret-token";

/// Two healthy regions, us and eu (two backends), failing over to each other,
/// with a token file and a state file in `dir`.
async fn two_regions(
    dir: &std::path::Path,
    us: &[&Backend],
    eu: &[&Backend],
) -> meridian::server::Running {
    let token_path = dir.join("token");
    std::fs::write(&token_path, format!("{TOKEN}\n")).unwrap();
    let text = config_text(&[R("us", us, &["eu"]), R("eu", eu, &["us"])], "").replace(
        "[admin]\n",
        &format!(
            "[admin]\ntoken_file = \"{}\"\nstate_file = \"{}\"\n",
            token_path.display(),
            dir.join("state.json").display()
        ),
    );
    start_healthy(&text, &["us", "eu"]).await
}

/// Region names of the next `n` answers to a client placed in us.
async fn served(m: &meridian::server::Running, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..n {
        let (status, _, body) = get(m, "/", &[]).await;
        assert_eq!(status, 200, "{body}");
        names.push(served_by(&body));
    }
    names
}

async fn admin_get(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value, http::HeaderMap) {
    admin_call(addr, http::Method::GET, path, token, "").await
}

/// One admin API call; the body is the answer's JSON (or its text).
async fn admin_call(
    addr: std::net::SocketAddr,
    method: http::Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value, http::HeaderMap) {
    use http_body_util::BodyExt as _;
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(
            http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap();
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

#[tokio::test]
async fn drains_move_traffic_and_answer_with_the_resulting_object() {
    let (us1, eu1, eu2) = (
        Backend::start("us-1").await,
        Backend::start("eu-1").await,
        Backend::start("eu-2").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let m = two_regions(dir.path(), &[&us1], &[&eu1, &eu2]).await;
    let admin = m.admin_addr.unwrap();
    let t = Some(TOKEN);
    // The default region of a loopback client is the first one.
    assert!(served(&m, 4).await.iter().all(|b| b == "us-1"));

    let (status, body, _) =
        admin_call(admin, Method::POST, "/api/v1/regions/us/drain", t, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "us");
    assert_eq!(body["state"], "drained");
    assert_eq!(body["health"], "healthy");
    assert_eq!(body["drained"], true);
    assert!(body.get("warnings").is_none(), "eu still serves: {body}");
    assert!(
        served(&m, 4).await.iter().all(|b| b.starts_with("eu-")),
        "no new request reaches a drained region"
    );
    let (status, body, _) =
        admin_call(admin, Method::POST, "/api/v1/regions/us/drain", t, "").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("region \"us\" is already drained"))
    );

    // A drained backend takes no new requests; its region serves on the others.
    let eu2_path = format!("/api/v1/regions/eu/backends/{}/drain", eu2.addr);
    let (status, body, _) = admin_call(admin, Method::POST, &eu2_path, t, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["address"], eu2.addr.to_string());
    assert_eq!(body["drained"], true);
    assert_eq!(body["state"], "up");
    assert!(served(&m, 6).await.iter().all(|b| b == "eu-1"));
    let (status, _, _) = admin_call(admin, Method::POST, &eu2_path, t, "").await;
    assert_eq!(status, 409);

    let (_, status_body, _) = admin_get(admin, "/api/v1/status", t).await;
    let us = &status_body["regions"][0];
    assert_eq!(
        (us["state"].as_str(), us["drained"].as_bool()),
        (Some("drained"), Some(true))
    );
    let eu = &status_body["regions"][1];
    assert_eq!(eu["healthy_backends"], 1);
    assert_eq!(eu["backends"][1]["drained"], true);
    let events = status_body["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["subject"] == "us"
            && e["to"] == "drained"
            && e["reason"] == "drained by an operator"),
        "{events:?}"
    );
    assert!(events
        .iter()
        .any(|e| e["subject"] == format!("eu/{}", eu2.addr) && e["to"] == "drained"));

    // Undrain both; undraining twice is a conflict.
    let undrain_eu2 = eu2_path.replace("/drain", "/undrain");
    let (status, body, _) = admin_call(admin, Method::POST, &undrain_eu2, t, "").await;
    assert_eq!((status, body["drained"].as_bool()), (200, Some(false)));
    let (status, body, _) = admin_call(admin, Method::POST, &undrain_eu2, t, "").await;
    assert_eq!(status, 409, "{body}");
    let (status, body, _) =
        admin_call(admin, Method::POST, "/api/v1/regions/us/undrain", t, "").await;
    assert_eq!((status, body["state"].as_str()), (200, Some("healthy")));
    let (status, body, _) =
        admin_call(admin, Method::POST, "/api/v1/regions/us/undrain", t, "").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("region \"us\" is not drained"))
    );
    assert!(served(&m, 4).await.iter().all(|b| b == "us-1"));

    // Unknown names are 404s, with JSON errors.
    for path in [
        "/api/v1/regions/ap/drain".to_owned(),
        "/api/v1/regions/ap/undrain".to_owned(),
        format!("/api/v1/regions/us/backends/{}/drain", eu1.addr),
        "/api/v1/regions/eu/backends/10.9.9.9:80/undrain".to_owned(),
    ] {
        let (status, body, _) = admin_call(admin, Method::POST, &path, t, "").await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().starts_with("no region")
                || body["error"].as_str().unwrap().contains("has no backend"),
            "{body}"
        );
    }
    let (status, body, _) = admin_call(admin, Method::GET, "/api/v1/regions/us/drain", t, "").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (405, Some("method not allowed here"))
    );
    m.shutdown().await;
}

#[tokio::test]
async fn every_endpoint_needs_the_token() {
    let (us1, eu1) = (Backend::start("us-1").await, Backend::start("eu-1").await);
    let dir = tempfile::tempdir().unwrap();
    let m = two_regions(dir.path(), &[&us1], &[&eu1]).await;
    let admin = m.admin_addr.unwrap();
    let backend = format!("/api/v1/regions/us/backends/{}", us1.addr);
    let calls = [
        (Method::GET, "/api/v1/status".to_owned(), ""),
        (Method::POST, "/api/v1/regions/us/drain".to_owned(), ""),
        (Method::POST, "/api/v1/regions/us/undrain".to_owned(), ""),
        (Method::POST, format!("{backend}/drain"), ""),
        (Method::POST, format!("{backend}/undrain"), ""),
        (
            Method::PUT,
            "/api/v1/incident".to_owned(),
            r#"{"title":"t","message":"m"}"#,
        ),
        (Method::DELETE, "/api/v1/incident".to_owned(), ""),
        (Method::POST, "/api/v1/reload".to_owned(), ""),
    ];
    for (method, path, body) in &calls {
        for token in [None, Some("wrong"), Some("s3cret-toke")] {
            let (status, answer, headers) =
                admin_call(admin, method.clone(), path, token, body).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {answer}");
            assert_eq!(answer["error"], "missing or invalid bearer token");
            assert_eq!(headers["www-authenticate"], "Bearer");
        }
    }
    // Nothing was changed by the refused calls.
    let snapshot = m.shared.load();
    assert!(snapshot.control.drained_regions.is_empty());
    assert!(snapshot.control.incident.is_none());
    assert!(!dir.path().join("state.json").exists());
    m.shutdown().await;
}

#[tokio::test]
async fn incidents_are_set_checked_and_cleared() {
    let (us1, eu1) = (Backend::start("us-1").await, Backend::start("eu-1").await);
    let dir = tempfile::tempdir().unwrap();
    let m = two_regions(dir.path(), &[&us1], &[&eu1]).await;
    let admin = m.admin_addr.unwrap();
    let t = Some(TOKEN);
    let incident = r#"{"title": "Checkout errors", "message": "Payments fail for some users.", "link": "https://status.example.com/i/42"}"#;
    let (status, body, _) = admin_call(admin, Method::PUT, "/api/v1/incident", t, incident).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["title"], "Checkout errors");
    assert_eq!(body["link"], "https://status.example.com/i/42");
    let (_, status_body, _) = admin_get(admin, "/api/v1/status", t).await;
    assert_eq!(
        status_body["incident"]["message"],
        "Payments fail for some users."
    );

    for (bad, fragment) in [
        ("{\"title\": \"x\"", "invalid incident JSON"),
        (r#"{"title": "only a title"}"#, "missing field `message`"),
        (r#"{"title": "", "message": "m"}"#, "non-empty title"),
        (
            r#"{"title": "t", "message": "m", "link": "ftp://x"}"#,
            "invalid link",
        ),
    ] {
        let (status, body, _) = admin_call(admin, Method::PUT, "/api/v1/incident", t, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(fragment),
            "{bad}: {body}"
        );
    }
    let too_big = format!(r#"{{"title": "t", "message": "{}"}}"#, "m".repeat(100_000));
    let (status, _, _) = admin_call(admin, Method::PUT, "/api/v1/incident", t, &too_big).await;
    assert_eq!(status, 413, "a body over the cap is refused");
    assert_eq!(
        m.shared
            .load()
            .control
            .incident
            .as_ref()
            .map(|i| i.title.as_str()),
        Some("Checkout errors"),
        "refused calls leave the incident as it was"
    );

    let (status, body, _) = admin_call(admin, Method::DELETE, "/api/v1/incident", t, "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["incident"].is_null(), "{body}");
    assert!(m.shared.load().control.incident.is_none());
    let (status, body, _) = admin_call(admin, Method::DELETE, "/api/v1/incident", t, "").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("no incident is set"))
    );
    m.shutdown().await;
}

#[tokio::test]
async fn draining_the_last_region_warns_and_users_get_the_status_page() {
    let (us1, eu1) = (Backend::start("us-1").await, Backend::start("eu-1").await);
    let dir = tempfile::tempdir().unwrap();
    let m = two_regions(dir.path(), &[&us1], &[&eu1]).await;
    let admin = m.admin_addr.unwrap();
    let t = Some(TOKEN);
    let (_, body, _) = admin_call(admin, Method::POST, "/api/v1/regions/eu/drain", t, "").await;
    assert!(body.get("warnings").is_none(), "{body}");
    let (status, body, _) =
        admin_call(admin, Method::POST, "/api/v1/regions/us/drain", t, "").await;
    assert_eq!(status, 200, "draining the last region is allowed: {body}");
    let warning = body["warnings"][0].as_str().unwrap();
    assert!(warning.starts_with("no region can serve now"), "{warning}");
    let (status, headers, page) = get(&m, "/", &[("accept", "application/json")]).await;
    assert_eq!(status, 503, "{page}");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers.contains_key("retry-after"));
    let v: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert_eq!(v["error"], "service_unavailable");
    assert_eq!(
        (
            us1.hits.load(std::sync::atomic::Ordering::Relaxed),
            eu1.hits.load(std::sync::atomic::Ordering::Relaxed)
        ),
        (0, 0),
        "no backend saw a live request after both drains"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_request_in_flight_finishes_across_a_drain() {
    let (us1, eu1) = (Backend::start("us-1").await, Backend::start("eu-1").await);
    let dir = tempfile::tempdir().unwrap();
    let m = two_regions(dir.path(), &[&us1], &[&eu1]).await;
    let admin = m.admin_addr.unwrap();
    let req = empty(Method::GET, format!("http://{}/gated", m.http_addr));
    let response = client().request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let (status, _, _) = admin_call(
        admin,
        Method::POST,
        "/api/v1/regions/us/drain",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(served(&m, 2).await.iter().all(|b| b == "eu-1"));
    us1.release.notify_one();
    let body = tokio::time::timeout(
        Duration::from_secs(5),
        http_body_util::BodyExt::collect(response.into_body()),
    )
    .await
    .expect("the response in flight completes")
    .expect("without an error")
    .to_bytes();
    assert!(body.ends_with(b"second"), "{body:?}");
    m.shutdown().await;
}

#[tokio::test]
async fn drains_and_the_incident_survive_a_restart() {
    let (us1, eu1) = (Backend::start("us-1").await, Backend::start("eu-1").await);
    let dir = tempfile::tempdir().unwrap();
    let m = two_regions(dir.path(), &[&us1], &[&eu1]).await;
    let admin = m.admin_addr.unwrap();
    let t = Some(TOKEN);
    admin_call(admin, Method::POST, "/api/v1/regions/us/drain", t, "").await;
    let backend = format!("/api/v1/regions/eu/backends/{}/drain", eu1.addr);
    let (status, _, _) = admin_call(admin, Method::POST, &backend, t, "").await;
    assert_eq!(status, 200);
    let (status, _, _) = admin_call(
        admin,
        Method::PUT,
        "/api/v1/incident",
        t,
        r#"{"title":"Maintenance","message":"Back at 10:00 UTC."}"#,
    )
    .await;
    assert_eq!(status, 200);
    m.shutdown().await;

    let saved = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(
        saved.contains("\"us\"") && saved.contains("Maintenance"),
        "{saved}"
    );
    let m = two_regions_unchecked(dir.path(), &[&us1], &[&eu1]).await;
    let snapshot = m.shared.load();
    assert_eq!(
        snapshot.regions[0].state,
        meridian::state::RegionState::Drained,
        "drained from the first snapshot on"
    );
    assert!(snapshot.regions[1].backends[0].drained);
    assert_eq!(
        snapshot.control.incident.as_ref().unwrap().title,
        "Maintenance"
    );
    let (_, body, _) = admin_get(m.admin_addr.unwrap(), "/api/v1/status", t).await;
    assert_eq!(body["regions"][0]["drained"], true);
    assert_eq!(body["incident"]["message"], "Back at 10:00 UTC.");
    m.shutdown().await;
}

/// Like [`two_regions`], without waiting for health (a drained region never turns healthy).
async fn two_regions_unchecked(
    dir: &std::path::Path,
    us: &[&Backend],
    eu: &[&Backend],
) -> meridian::server::Running {
    let text = config_text(&[R("us", us, &["eu"]), R("eu", eu, &["us"])], "").replace(
        "[admin]\n",
        &format!(
            "[admin]\ntoken_file = \"{}\"\nstate_file = \"{}\"\n",
            dir.join("token").display(),
            dir.join("state.json").display()
        ),
    );
    start(&text).await
}

#[tokio::test]
async fn a_corrupt_state_file_is_set_aside_and_meridian_starts() {
    let (us1, eu1) = (Backend::start("us-1").await, Backend::start("eu-1").await);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    std::fs::write(
        dir.path().join("state.json"),
        "{\"version\": 1, \"drained_regions\": [\"us\"",
    )
    .unwrap();
    let m = two_regions_unchecked(dir.path(), &[&us1], &[&eu1]).await;
    assert!(m.shared.load().control.drained_regions.is_empty());
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("state.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the corrupt file is kept beside: {aside:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join(&aside[0])).unwrap(),
        "{\"version\": 1, \"drained_regions\": [\"us\""
    );
    // And the next change writes a good file again.
    let (status, _, _) = admin_call(
        m.admin_addr.unwrap(),
        Method::POST,
        "/api/v1/regions/eu/drain",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 200);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("state.json")).unwrap())
            .unwrap();
    assert_eq!(saved["drained_regions"][0], "eu");
    m.shutdown().await;
}

#[tokio::test]
async fn a_drain_of_a_region_a_reload_removed_is_shown_and_can_be_lifted() {
    let (us1, eu1) = (Backend::start("us-1").await, Backend::start("eu-1").await);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let text = |regions: &[R]| {
        config_text(regions, "").replace(
            "[admin]\n",
            &format!(
                "[admin]\ntoken_file = \"{}\"\nstate_file = \"{}\"\n",
                token.display(),
                dir.path().join("state.json").display()
            ),
        )
    };
    let path = dir.path().join("meridian.toml");
    std::fs::write(
        &path,
        text(&[R("us", &[&us1], &["eu"]), R("eu", &[&eu1], &["us"])]),
    )
    .unwrap();
    let m = meridian::server::start(meridian::config::Config::load(&path).unwrap())
        .await
        .unwrap();
    let admin = m.admin_addr.unwrap();
    let t = Some(TOKEN);
    let backend = format!("/api/v1/regions/us/backends/{}", us1.addr);
    for call in [
        "/api/v1/regions/eu/drain".to_owned(),
        format!("{backend}/drain"),
    ] {
        let (status, body, _) = admin_call(admin, Method::POST, &call, t, "").await;
        assert_eq!(status, 200, "{call}: {body}");
    }
    // eu goes, and us gets another backend: both drains are kept by name.
    let us2 = Backend::start("us-2").await;
    std::fs::write(&path, text(&[R("us", &[&us2], &[])])).unwrap();
    let (status, body, _) = admin_call(admin, Method::POST, "/api/v1/reload", t, "").await;
    assert_eq!(status, 200, "{body}");
    let (_, status_body, _) = admin_get(admin, "/api/v1/status", t).await;
    assert_eq!(
        status_body["unconfigured_drains"]["regions"],
        serde_json::json!(["eu"])
    );
    assert_eq!(
        status_body["unconfigured_drains"]["backends"][0]["backend"],
        us1.addr.to_string()
    );
    // They can be lifted, but nothing unconfigured can be drained anew.
    let (status, body, _) =
        admin_call(admin, Method::POST, "/api/v1/regions/eu/undrain", t, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["drained"].as_bool(), body["configured"].as_bool()),
        (Some(false), Some(false))
    );
    let (status, body, _) =
        admin_call(admin, Method::POST, &format!("{backend}/undrain"), t, "").await;
    assert_eq!(
        (status, body["configured"].as_bool()),
        (200, Some(false)),
        "{body}"
    );
    let (status, _, _) = admin_call(admin, Method::POST, "/api/v1/regions/eu/drain", t, "").await;
    assert_eq!(status, 404);
    let (status, _, _) = admin_call(admin, Method::POST, "/api/v1/regions/eu/undrain", t, "").await;
    assert_eq!(status, 404, "lifted: now it is just an unknown region");
    let (_, status_body, _) = admin_get(admin, "/api/v1/status", t).await;
    assert_eq!(
        status_body["unconfigured_drains"]["regions"],
        serde_json::json!([])
    );
    m.shutdown().await;
}
