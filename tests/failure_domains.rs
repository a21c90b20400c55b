//! Failure-domain warnings: when every backend taking traffic in a region
//! reports the same node (the post-mortem's "both web pods on one node"),
//! Meridian says so in the status, the metrics, the events and an alert,
//! and clears it when they spread again. Domains come from a health-check
//! response header or from the configuration.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::webhook::{Receiver, ACCEPT};
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meridian::server::Running;
use serde_json::Value;
use tokio::net::TcpListener;

/// A backend whose health check names its node in `X-Node-Name`.
struct Pod {
    addr: SocketAddr,
    node: Arc<Mutex<String>>,
}

impl Pod {
    async fn start(node: &str) -> Pod {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let node = Arc::new(Mutex::new(node.to_owned()));
        let shared = Arc::clone(&node);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let node = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let node = node.lock().unwrap().clone();
                        async move {
                            let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
                            if req.uri().path() == "/healthz" {
                                r.headers_mut().insert("x-node-name", node.parse().unwrap());
                            }
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Pod { addr, node }
    }

    fn set_node(&self, node: &str) {
        *self.node.lock().unwrap() = node.to_owned();
    }
}

/// A region `us` of `backends` (TOML entries), checked every 100 ms with
/// `health` more keys of `[region.health]`, and `extra` more tables.
async fn start_region(backends: &[String], health: &str, extra: &str) -> Running {
    let text = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{extra}\n\n[[region]]\nname = \"us\"\nbackends = [{}]\n\n[region.health]\ninterval = \"100ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2\n{health}\n",
        backends.join(", ")
    );
    start_healthy(&text, &["us"]).await
}

fn status(m: &Running) -> Value {
    serde_json::to_value(meridian::admin::status_body(&m.shared.load())).unwrap()
}

fn warning(m: &Running) -> Value {
    status(m)["regions"][0]["failure_domain_warning"].clone()
}

async fn metrics(m: &Running) -> String {
    let url = format!("http://{}/metrics", m.admin_addr.unwrap());
    let resp = client()
        .request(empty(http::Method::GET, url))
        .await
        .unwrap();
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

/// The alert about region `us` going `to`, if the webhook got one.
fn alert(receiver: &Receiver, to: &str) -> Option<Value> {
    receiver.messages().iter().find_map(|(_, m)| {
        m["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["region"] == "us" && a["to"] == to)
            .cloned()
    })
}

#[tokio::test]
async fn pods_reporting_one_node_are_a_warning_that_clears_when_they_spread() {
    let a = Pod::start("node-a").await;
    let b = Pod::start("node-a").await;
    let receiver = Receiver::start(ACCEPT).await;
    let m = start_region(
        &[
            format!("\"http://{}\"", a.addr),
            format!("\"http://{}\"", b.addr),
        ],
        "failure_domain_header = \"X-Node-Name\"",
        &format!(
            "[alerts]\nwebhooks = [\"{}\"]\ngroup_window = \"50ms\"",
            receiver.url()
        ),
    )
    .await;
    wait_for(Duration::from_secs(3), "the warning", || async {
        warning(&m) == "node-a"
    })
    .await;
    let s = status(&m);
    assert_eq!(s["regions"][0]["backends"][0]["domain"], "node-a");
    assert_eq!(
        s["regions"][0]["state"], "healthy",
        "a warning, not an outage"
    );
    let event = s["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["to"] == "one_failure_domain")
        .cloned()
        .expect("an event");
    assert_eq!(event["subject"], "us");
    assert!(
        event["reason"].as_str().unwrap().contains("node-a"),
        "{event}"
    );
    let text = metrics(&m).await;
    assert!(
        text.contains("meridian_region_single_failure_domain{region=\"us\",domain=\"node-a\"} 1"),
        "{text}"
    );
    wait_for(Duration::from_secs(3), "the alert", || async {
        alert(&receiver, "one_failure_domain").is_some()
    })
    .await;
    let sent = alert(&receiver, "one_failure_domain").unwrap();
    assert_eq!(sent["evidence"][0]["domain"], "node-a");
    assert!(
        sent["reason"].as_str().unwrap().contains("node-a"),
        "{sent}"
    );

    // The scheduler moves one pod: the warning clears.
    b.set_node("node-b");
    wait_for(Duration::from_secs(3), "the warning cleared", || async {
        warning(&m).is_null()
    })
    .await;
    assert_eq!(status(&m)["regions"][0]["backends"][1]["domain"], "node-b");
    assert!(!metrics(&m)
        .await
        .contains("meridian_region_single_failure_domain{"));
    wait_for(Duration::from_secs(3), "the all-clear alert", || async {
        alert(&receiver, "spread").is_some()
    })
    .await;
    m.shutdown().await;
}

#[tokio::test]
async fn configured_domains_warn_and_different_ones_do_not() {
    let a = Pod::start("ignored").await;
    let b = Pod::start("ignored").await;
    let m = start_region(
        &[
            format!("{{ url = \"http://{}\", domain = \"zone-1\" }}", a.addr),
            format!("{{ url = \"http://{}\", domain = \"zone-1\" }}", b.addr),
        ],
        "",
        "",
    )
    .await;
    wait_for(Duration::from_secs(3), "the warning", || async {
        warning(&m) == "zone-1"
    })
    .await;
    m.shutdown().await;

    let m = start_region(
        &[
            format!("{{ url = \"http://{}\", domain = \"zone-1\" }}", a.addr),
            format!("{{ url = \"http://{}\", domain = \"zone-2\" }}", b.addr),
        ],
        "",
        "",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(warning(&m).is_null(), "{}", status(&m));
    m.shutdown().await;
}
