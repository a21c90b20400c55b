//! `/metrics` on the admin listener: it parses as the Prometheus text
//! format, and its values move as requests are served, a region fails over,
//! health changes, the status page is served and the configuration reloads.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use meridian::server::Running;

/// Samples by their full name with labels, as written (`name{a="b"}`),
/// checking every line of the text on the way.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let mut typed = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "unknown type: {line}"
            );
            typed.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line == "# EOF" || line.is_empty() {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad metric name: {line}"
        );
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains_key(*f)))
            .unwrap_or(name);
        assert!(typed.contains_key(family), "sample without TYPE: {line}");
        if let Some(labels) = series.split_once('{').map(|(_, l)| l) {
            assert!(labels.ends_with('}'), "unclosed labels: {line}");
        }
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "duplicate series: {line}"
        );
    }
    samples
}

async fn scrape(m: &Running) -> HashMap<String, f64> {
    let url = format!("http://{}/metrics", m.admin_addr.unwrap());
    let resp = client()
        .request(empty(http::Method::GET, url))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    parse(std::str::from_utf8(&body).unwrap())
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in {samples:#?}"))
}

#[tokio::test]
async fn metrics_parse_and_move_with_traffic_failover_health_and_reloads() {
    let us = Backend::start("us-1").await;
    let eu = Backend::start("eu-1").await;
    let text = config_text(&[R("us", &[&us], &["eu"]), R("eu", &[&eu], &["us"])], "");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meridian.toml");
    std::fs::write(&path, &text).unwrap();
    let config = meridian::config::Config::load(&path).unwrap();
    let m = meridian::server::start(config).await.unwrap();
    wait_for(Duration::from_secs(5), "both regions healthy", || async {
        region_state(&m, "us").await == "healthy" && region_state(&m, "eu").await == "healthy"
    })
    .await;

    let before = scrape(&m).await;
    assert_eq!(
        value(&before, r#"meridian_build_info{version="0.1.0"}"#),
        1.0
    );
    let us_up = format!(
        r#"meridian_backend_up{{region="us",backend="{}"}}"#,
        us.url().trim_start_matches("http://")
    );
    assert_eq!(value(&before, &us_up), 1.0);
    assert_eq!(
        value(
            &before,
            r#"meridian_region_state{region="us",state="healthy"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &before,
            r#"meridian_region_state{region="us",state="down"}"#
        ),
        0.0
    );
    assert!(value(&before, "meridian_health_check_duration_seconds_count") > 0.0);

    for _ in 0..5 {
        let (status, _, _) = get(&m, "/", &[]).await;
        assert_eq!(status, 200);
    }
    let after = scrape(&m).await;
    let us_2xx = r#"meridian_requests_total{region="us",class="2xx"}"#;
    assert_eq!(
        value(&after, us_2xx) - before.get(us_2xx).copied().unwrap_or(0.0),
        5.0
    );
    assert!(
        value(
            &after,
            r#"meridian_request_duration_seconds_count{region="us"}"#
        ) >= 5.0
    );
    let inf = after
        .iter()
        .find(|(k, _)| {
            k.starts_with("meridian_request_duration_seconds_bucket{")
                && k.contains(r#"region="us""#)
                && k.contains(r#"le="+Inf""#)
        })
        .map(|(_, v)| *v)
        .expect("a +Inf bucket for us");
    assert_eq!(
        inf,
        value(
            &after,
            r#"meridian_request_duration_seconds_count{region="us"}"#
        )
    );
    assert!(value(&after, r#"meridian_connections_open{listener="http"}"#) >= 0.0);

    // us goes down: requests fail over to eu and are counted so.
    us.set_up(false);
    wait_for(Duration::from_secs(5), "us down", || async {
        region_state(&m, "us").await == "down"
    })
    .await;
    for _ in 0..3 {
        let (status, _, _) = get(&m, "/", &[]).await;
        assert_eq!(status, 200);
    }
    let down = scrape(&m).await;
    assert_eq!(
        value(&down, r#"meridian_region_state{region="us",state="down"}"#),
        1.0
    );
    assert_eq!(value(&down, &us_up), 0.0);
    assert!(value(&down, r#"meridian_failovers_total{from="us",to="eu"}"#) >= 3.0);
    assert!(value(&down, r#"meridian_requests_total{region="eu",class="2xx"}"#) >= 3.0);

    // Nothing can serve: the status page, counted by reason.
    eu.set_up(false);
    wait_for(Duration::from_secs(5), "eu down", || async {
        region_state(&m, "eu").await == "down"
    })
    .await;
    let (status, _, _) = get(&m, "/", &[("accept", "text/html")]).await;
    assert_eq!(status, 503);
    let dark = scrape(&m).await;
    assert!(value(&dark, r#"meridian_status_pages_total{reason="no_region"}"#) >= 1.0);
    assert!(
        value(
            &dark,
            r#"meridian_requests_total{region="none",class="5xx"}"#
        ) >= 1.0
    );

    // Reloads, applied and refused.
    let reloaded = m.reloader.reload().await;
    assert!(reloaded.is_ok(), "{reloaded:?}");
    std::fs::write(&path, "[[region]]\nname = \"\"\n").unwrap();
    assert!(m.reloader.reload().await.is_err());
    let after_reloads = scrape(&m).await;
    assert_eq!(
        value(
            &after_reloads,
            r#"meridian_config_reloads_total{result="applied"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &after_reloads,
            r#"meridian_config_reloads_total{result="refused"}"#
        ),
        1.0
    );
    // Counters survive the reload: same region names, same series.
    assert!(value(&after_reloads, us_2xx) >= 5.0);
    m.shutdown().await;
}

#[tokio::test]
async fn metrics_need_the_admin_token_when_one_is_set() {
    let us = Backend::start("us-1").await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let text = config_text(&[R("us", &[&us], &[])], "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
            token.display()
        ),
    );
    let m = start(&text).await;
    let url = format!("http://{}/metrics", m.admin_addr.unwrap());
    let resp = client()
        .request(empty(http::Method::GET, &url))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let mut req = empty(http::Method::GET, &url);
    req.headers_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    m.shutdown().await;
}
