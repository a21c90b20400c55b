//! Reloading the configuration: `POST /api/v1/reload` and `SIGHUP` put a new
//! file in force without dropping a request or forgetting what health checks
//! found; a file that does not validate changes nothing.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::Method;
use meridian::config::Config;

/// Writes `text` to `path` and starts Meridian from the file.
async fn start_from_file(path: &std::path::Path, text: &str) -> meridian::server::Running {
    std::fs::write(path, text).unwrap();
    let config = Config::load(path).unwrap();
    meridian::server::start(config).await.unwrap()
}

async fn post_reload(m: &meridian::server::Running) -> (u16, serde_json::Value) {
    let admin = m.admin_addr.unwrap();
    let req = empty(Method::POST, format!("http://{admin}/api/v1/reload"));
    let resp = client().request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn a_reload_adds_a_backend_keeps_health_and_drops_no_request() {
    let (us1, us2, eu1) = (
        Backend::start("us-1").await,
        Backend::start("us-2").await,
        Backend::start("eu-1").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meridian.toml");
    let before = config_text(&[R("us", &[&us1], &["eu"]), R("eu", &[&eu1], &["us"])], "");
    let m = start_from_file(&path, &before).await;
    wait_for(Duration::from_secs(5), "both regions healthy", || async {
        region_state(&m, "us").await == "healthy" && region_state(&m, "eu").await == "healthy"
    })
    .await;

    // Steady traffic through the reload: every request must be answered by us.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, addr) = (Arc::clone(&stop), m.http_addr);
        tokio::spawn(async move {
            let (mut ok, mut other) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let req = empty(Method::GET, format!("http://{addr}/"));
                match client().request(req).await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => other.push(r.status().to_string()),
                    Err(e) => other.push(e.to_string()),
                }
            }
            (ok, other)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = config_text(
        &[R("us", &[&us1, &us2], &["eu"]), R("eu", &[&eu1], &["us"])],
        "[status_page]\ntitle = \"Example is resting\"\n",
    );
    std::fs::write(&path, after).unwrap();
    let (status, body) = post_reload(&m).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reloaded"], true);
    assert_eq!(body["generation"], 1);
    assert_eq!(body["restart_needed"], serde_json::json!([]));
    let snapshot = m.shared.load();
    assert_eq!(snapshot.generation.number, 1);
    assert_eq!(
        snapshot.regions[0].backends[0].state,
        meridian::health::BackendState::Up,
        "us-1 stays up across the reload: no region goes back to unknown"
    );
    wait_for(Duration::from_secs(5), "us-2 is checked and up", || async {
        region_state(&m, "us").await == "healthy"
    })
    .await;
    let hits = us2.hits.load(Ordering::Relaxed);
    wait_for(Duration::from_secs(5), "us-2 takes requests", || async {
        us2.hits.load(Ordering::Relaxed) > hits
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (ok, other) = load.await.unwrap();
    assert!(ok > 20, "{ok} requests");
    assert!(other.is_empty(), "failed during the reload: {other:?}");

    // The new status page title is in force.
    for region in ["us", "eu"] {
        let admin = m.admin_addr.unwrap();
        let req = empty(
            Method::POST,
            format!("http://{admin}/api/v1/regions/{region}/drain"),
        );
        assert_eq!(client().request(req).await.unwrap().status(), 200);
    }
    let (status, _, page) = get(&m, "/", &[("accept", "application/json")]).await;
    assert_eq!(status, 503);
    let v: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert_eq!(v["message"], "Example is resting");
    let events = &m.shared.load().events;
    assert!(events
        .iter()
        .any(|e| e.subject == format!("us/{}", us2.addr) && e.to == "up"));
    m.shutdown().await;
}

#[tokio::test]
async fn an_invalid_file_changes_nothing_and_says_why() {
    let us1 = Backend::start("us-1").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meridian.toml");
    let good = config_text(&[R("us", &[&us1], &[])], "");
    let m = start_from_file(&path, &good).await;
    wait_for(Duration::from_secs(5), "us healthy", || async {
        region_state(&m, "us").await == "healthy"
    })
    .await;
    std::fs::write(&path, good.replace("rise = 2", "rise = 0")).unwrap();
    let (status, body) = post_reload(&m).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid configuration: 1 error"),
        "{body}"
    );
    let issue = body["issues"][0].as_str().unwrap();
    assert!(
        issue.contains("meridian.toml") && issue.contains("region[0].health.rise"),
        "{issue}"
    );
    assert_eq!(m.shared.load().generation.number, 0);
    let (status, _, _) = get(&m, "/", &[]).await;
    assert_eq!(status, 200, "still serving with the configuration in force");

    std::fs::remove_file(&path).unwrap();
    let (status, body) = post_reload(&m).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("meridian.toml"),
        "{body}"
    );

    // Settings read only at start-up are named.
    let moved = good.replacen("http = \"127.0.0.1:0\"", "http = \"127.0.0.1:1\"", 1);
    std::fs::write(&path, moved).unwrap();
    let (status, body) = post_reload(&m).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["restart_needed"], serde_json::json!(["listen.http"]));
    m.shutdown().await;
}

#[tokio::test]
async fn a_meridian_started_from_text_has_no_file_to_reload() {
    let us1 = Backend::start("us-1").await;
    let m = start(&config_text(&[R("us", &[&us1], &[])], "")).await;
    let (status, body) = post_reload(&m).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("not started from a configuration file"));
    m.shutdown().await;
}
