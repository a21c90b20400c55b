//! Alerts within seconds: every region transition, and the moment no region
//! can serve (the status page is serving), is pushed to each `[alerts]`
//! webhook as Slack-compatible JSON (`text`) with structured fields and the
//! evidence (each backend's state, last check error and ejections).
//!
//! The state owner finds transitions by comparing each snapshot it
//! publishes with the previous one, and queues them here without waiting:
//! the queue is bounded and a full one drops its oldest alert (counted). A
//! worker groups what arrives within `group_window` of the first into one
//! message — a flapping region gives one alert, not one per flap — and
//! delivers it off the request path, each try bounded by `timeout` and
//! retried `retries` times, 1 s, 2 s, 4 s … apart.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Alerts as AlertsConfig;
use crate::metrics::{AlertResult, Metrics};
use crate::state::{RegionState, Snapshot};

/// The subject of the alert sent when no region can serve.
pub const ALL_REGIONS: &str = "*";

/// One backend as an alert shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// Its `host:port`.
    pub backend: String,
    /// Its health (`up`, `down`, `ejected`, `unknown`).
    pub state: &'static str,
    /// Why its last active check failed, if it did.
    pub last_error: Option<String>,
    /// Passive ejections in a row (live traffic failing on it).
    pub ejections: u32,
    /// Drained by an operator.
    pub drained: bool,
    /// Its failure domain (node, zone), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

/// A region changed state (or, for [`ALL_REGIONS`], every region stopped or
/// resumed serving).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// The region's name, or `*`.
    pub region: String,
    /// State before.
    pub from: String,
    /// State after.
    pub to: String,
    /// Why, as the state owner logged it.
    pub reason: String,
    /// When (RFC 3339, UTC).
    pub time: String,
    /// The region's backends when it happened.
    pub evidence: Vec<Evidence>,
}

/// Transitions between two snapshots, by region name: one per region whose
/// state differs, and one for `*` when serving stopped or resumed.
pub fn transitions(before: &Snapshot, after: &Snapshot) -> Vec<Transition> {
    let time =
        humantime_serde::re::humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let mut out = Vec::new();
    for (rc, rv) in after.config.regions.iter().zip(&after.regions) {
        let Some(old) = before
            .config
            .regions
            .iter()
            .position(|r| r.name == rc.name)
            .map(|i| &before.regions[i])
        else {
            continue;
        };
        // The first checks after a start or a reload find a region
        // healthy: news only when it is not.
        let first_checks = old.state == RegionState::Unknown && rv.state == RegionState::Healthy;
        if old.state != rv.state && !first_checks {
            let reason = after
                .events
                .iter()
                .rev()
                .find(|e| e.subject == rc.name && e.to == rv.state.as_str())
                .map(|e| e.reason.clone())
                .unwrap_or_default();
            out.push(Transition {
                region: rc.name.clone(),
                from: old.state.as_str().to_owned(),
                to: rv.state.as_str().to_owned(),
                reason,
                time: time.clone(),
                evidence: evidence(rc, rv),
            });
        }
        let (from, to, reason) = match (&old.single_domain, &rv.single_domain) {
            (a, b) if a == b => continue,
            (_, Some(domain)) => (
                "spread",
                "one_failure_domain",
                format!("every backend taking traffic is in failure domain {domain}: one failure there takes the region down"),
            ),
            (Some(domain), None) => (
                "one_failure_domain",
                "spread",
                format!("backends are no longer all in failure domain {domain}"),
            ),
            (None, None) => continue,
        };
        out.push(Transition {
            region: rc.name.clone(),
            from: from.into(),
            to: to.into(),
            reason,
            time: time.clone(),
            evidence: evidence(rc, rv),
        });
    }
    out
}

/// Whether some region can serve, once every region has been checked.
fn serving(s: &Snapshot) -> Option<bool> {
    s.regions
        .iter()
        .all(|r| r.state != RegionState::Unknown)
        .then(|| s.regions.iter().any(|r| r.state.serves()))
}

/// The `*` transition `snapshot` makes against `last`, the serving state
/// last seen with every region checked (so that an outage found by the
/// first checks is told too); updates `last`.
pub fn serving_transition(last: &mut Option<bool>, snapshot: &Snapshot) -> Option<Transition> {
    let now = serving(snapshot)?;
    let before = last.replace(now);
    // At start, a service that serves is not news; one that cannot is.
    if before.unwrap_or(true) == now {
        return None;
    }
    let (from, to, reason) = if now {
        ("status_page", "serving", "a region can serve again")
    } else {
        (
            "serving",
            "status_page",
            "no region can serve: every client gets the status page",
        )
    };
    Some(Transition {
        region: ALL_REGIONS.into(),
        from: from.into(),
        to: to.into(),
        reason: reason.into(),
        time: humantime_serde::re::humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        evidence: Vec::new(),
    })
}

/// Each backend of a region as an alert shows it.
fn evidence(rc: &crate::config::Region, rv: &crate::state::RegionView) -> Vec<Evidence> {
    rc.backends
        .iter()
        .zip(&rv.backends)
        .map(|(bc, bv)| Evidence {
            backend: bc.address.clone(),
            state: bv.state.as_str(),
            last_error: bv.last_error.clone(),
            ejections: bv.ejections,
            drained: bv.drained,
            domain: bv.domain.clone(),
        })
        .collect()
}

/// A region's transitions within one window, as one entry of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grouped {
    /// The region's name, or `*`.
    pub region: String,
    /// State before the first transition of the window.
    pub from: String,
    /// State after the last.
    pub to: String,
    /// Why the last happened.
    pub reason: String,
    /// When the last happened.
    pub time: String,
    /// Transitions in the window (more than 1: the region flapped).
    pub transitions: usize,
    /// The region's backends at the last transition.
    pub evidence: Vec<Evidence>,
}

/// What a webhook receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// One line per region, for Slack and the like.
    pub text: String,
    /// The same, structured.
    pub alerts: Vec<Grouped>,
    /// Alerts dropped because the queue was full since the last message.
    pub dropped: u64,
}

/// Groups `batch` by region, in order of first appearance: the flap damper.
pub fn group(batch: Vec<Transition>, dropped: u64) -> Message {
    let mut alerts: Vec<Grouped> = Vec::new();
    for t in batch {
        match alerts.iter_mut().find(|g| g.region == t.region) {
            Some(g) => {
                g.to = t.to;
                g.reason = t.reason;
                g.time = t.time;
                g.evidence = t.evidence;
                g.transitions += 1;
            }
            None => alerts.push(Grouped {
                region: t.region,
                from: t.from,
                to: t.to,
                reason: t.reason,
                time: t.time,
                transitions: 1,
                evidence: t.evidence,
            }),
        }
    }
    let lines: Vec<String> = alerts.iter().map(line).collect();
    let mut text = lines.join("\n");
    if dropped > 0 {
        text.push_str(&format!(
            "\n({dropped} older alerts dropped: the alert queue was full)"
        ));
    }
    Message {
        text,
        alerts,
        dropped,
    }
}

fn line(g: &Grouped) -> String {
    let subject = if g.region == ALL_REGIONS {
        "Every region".to_owned()
    } else {
        format!("Region {}", g.region)
    };
    let mut line = match g.to.as_str() {
        "one_failure_domain" => format!("Meridian: {subject} has a single point of failure"),
        "spread" => format!("Meridian: {subject} is spread over failure domains again"),
        to => format!("Meridian: {subject} is {to} (was {})", g.from),
    };
    if g.transitions > 1 {
        line.push_str(&format!(
            ", after {} changes: it is flapping",
            g.transitions
        ));
    }
    if !g.reason.is_empty() {
        line.push_str(&format!(": {}", g.reason));
    }
    let failing: Vec<String> = g
        .evidence
        .iter()
        .filter(|e| e.state != "up")
        .map(|e| match &e.last_error {
            Some(err) => format!("{} {} ({err})", e.backend, e.state),
            None => format!("{} {}", e.backend, e.state),
        })
        .collect();
    if !failing.is_empty() {
        line.push_str(&format!(". Backends: {}", failing.join("; ")));
    }
    line
}

/// The bounded queue between the state owner and the delivery worker.
#[derive(Debug)]
pub struct AlertQueue {
    queue: Mutex<VecDeque<Transition>>,
    /// Whether some region could serve, as last alerted.
    serving: Mutex<Option<bool>>,
    capacity: usize,
    dropped: std::sync::atomic::AtomicU64,
    ready: Notify,
}

impl AlertQueue {
    /// A queue holding at most `capacity` alerts.
    pub fn new(capacity: usize) -> AlertQueue {
        AlertQueue {
            queue: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            serving: Mutex::new(None),
            capacity: capacity.max(1),
            dropped: Default::default(),
            ready: Notify::new(),
        }
    }

    /// Queues `t` without waiting; a full queue drops its oldest alert.
    /// Returns whether one was dropped.
    pub fn push(&self, t: Transition) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = q.len() >= self.capacity;
        if dropped {
            q.pop_front();
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        q.push_back(t);
        drop(q);
        self.ready.notify_one();
        dropped
    }

    /// Queues the transitions from `before` to `after`.
    pub fn publish(&self, before: &Snapshot, after: &Snapshot) {
        let star = {
            let mut last = self.serving.lock().unwrap_or_else(|e| e.into_inner());
            serving_transition(&mut last, after)
        };
        for t in transitions(before, after).into_iter().chain(star) {
            self.push(t);
        }
    }

    fn take(&self) -> (Vec<Transition>, u64) {
        let batch = self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        let dropped = self.dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
        (batch, dropped)
    }
}

/// The HTTP client webhooks are reached with: plain or TLS (system roots).
pub type WebhookClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client for webhooks; `connect_timeout` bounds the TCP connect.
pub fn client(connect_timeout: Duration) -> WebhookClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.enforce_http(false);
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::certs::provider())
        .with_safe_default_protocol_versions()
        .map(|b| {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            b.with_root_certificates(roots).with_no_client_auth()
        })
        .expect("the default protocol versions are supported");
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

/// Why one delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// No answer within `[alerts] timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The webhook could not be reached.
    #[error("{0}")]
    Request(String),
    /// The webhook answered with an error status.
    #[error("answered {0}")]
    Status(u16),
}

/// POSTs `message` to `url` once, within `timeout`.
pub async fn deliver_once(
    client: &WebhookClient,
    url: &http::Uri,
    message: &Message,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let body = serde_json::to_vec(message).unwrap_or_default();
    let request = http::Request::post(url.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("meridian/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| DeliveryError::Request(e.to_string()))?;
    let attempt = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| DeliveryError::Request(crate::telemetry::error_chain(&e)))?;
        let status = response.status();
        // Read (a bounded amount of) the answer so the connection can be reused.
        let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await;
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status(status.as_u16()))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(DeliveryError::Timeout(timeout)))
}

/// Delivers `message` to `url`, retrying with backoff; records and logs
/// the result.
pub async fn deliver(
    client: &WebhookClient,
    url: &http::Uri,
    message: &Message,
    config: &AlertsConfig,
    metrics: &Metrics,
) {
    let mut delay = Duration::from_secs(1);
    let mut tries = 0;
    loop {
        match deliver_once(client, url, message, config.timeout).await {
            Ok(()) => {
                metrics.alert(AlertResult::Sent);
                return;
            }
            Err(e) if tries >= config.retries => {
                metrics.alert(AlertResult::Failed);
                tracing::error!(webhook = %redacted(url), error = %e, tries = tries + 1, "alert not delivered");
                return;
            }
            Err(e) => {
                tracing::warn!(webhook = %redacted(url), error = %e, retry_in = ?delay, "alert delivery failed; retrying");
                tries += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// A webhook URL for the log: scheme and host only, since the path of a
/// Slack-style webhook is its secret.
pub fn redacted(url: &http::Uri) -> String {
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}/…",
        url.scheme_str().unwrap_or("http"),
        url.host().unwrap_or("")
    )
}

/// Delivers what `queue` receives until `stop`: waits for a first alert,
/// then `group_window` for more, then sends them as one message to every
/// webhook at once.
pub async fn run(
    queue: Arc<AlertQueue>,
    config: AlertsConfig,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let client = client(config.timeout);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = queue.ready.notified() => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(config.group_window) => {}
        }
        let (batch, dropped) = queue.take();
        if batch.is_empty() {
            continue;
        }
        for _ in 0..dropped {
            metrics.alert(AlertResult::Dropped);
        }
        let message = Arc::new(group(batch, dropped));
        tracing::info!(alert = %message.text, webhooks = config.webhooks.len(), "sending alert");
        let mut deliveries = tokio::task::JoinSet::new();
        for url in config.webhooks.clone() {
            let (client, message, config, metrics) = (
                client.clone(),
                Arc::clone(&message),
                config.clone(),
                Arc::clone(&metrics),
            );
            deliveries.spawn(async move {
                deliver(&client, &url, &message, &config, &metrics).await;
            });
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = deliveries.join_all() => {}
        }
    }
}

/// The message `meridian ctl alerts test` sends.
pub fn test_message() -> Message {
    group(
        vec![Transition {
            region: ALL_REGIONS.into(),
            from: "test".into(),
            to: "test".into(),
            reason: "a test alert sent by an operator (meridian ctl alerts test)".into(),
            time: humantime_serde::re::humantime::format_rfc3339_seconds(SystemTime::now())
                .to_string(),
            evidence: Vec::new(),
        }],
        0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(region: &str, from: &str, to: &str) -> Transition {
        Transition {
            region: region.into(),
            from: from.into(),
            to: to.into(),
            reason: format!("{from} to {to}"),
            time: "2026-01-01T00:00:00Z".into(),
            evidence: vec![Evidence {
                backend: "10.0.0.1:80".into(),
                state: if to == "down" { "down" } else { "up" },
                last_error: (to == "down").then(|| "connection refused".into()),
                ejections: 0,
                drained: false,
                domain: None,
            }],
        }
    }

    #[test]
    fn transitions_of_a_window_are_grouped_by_region_in_order() {
        let m = group(
            vec![
                t("us", "healthy", "down"),
                t("eu", "healthy", "degraded"),
                t("us", "down", "healthy"),
                t("us", "healthy", "down"),
            ],
            0,
        );
        assert_eq!(m.alerts.len(), 2);
        let us = &m.alerts[0];
        assert_eq!(
            (us.region.as_str(), us.from.as_str(), us.to.as_str()),
            ("us", "healthy", "down")
        );
        assert_eq!(us.transitions, 3);
        assert_eq!(us.reason, "healthy to down");
        assert_eq!(m.alerts[1].transitions, 1);
        let lines: Vec<&str> = m.text.lines().collect();
        assert_eq!(
            lines[0],
            "Meridian: Region us is down (was healthy), after 3 changes: it is flapping: healthy to down. Backends: 10.0.0.1:80 down (connection refused)"
        );
        assert_eq!(
            lines[1],
            "Meridian: Region eu is degraded (was healthy): healthy to degraded"
        );
    }

    #[test]
    fn the_all_regions_alert_and_drops_are_said_plainly() {
        let mut all = t(ALL_REGIONS, "serving", "status_page");
        all.evidence.clear();
        let m = group(vec![all], 2);
        assert!(
            m.text
                .starts_with("Meridian: Every region is status_page (was serving)"),
            "{}",
            m.text
        );
        assert!(
            m.text
                .ends_with("(2 older alerts dropped: the alert queue was full)"),
            "{}",
            m.text
        );
        assert_eq!(m.dropped, 2);
    }

    #[test]
    fn a_full_queue_drops_its_oldest_alert_and_counts_it() {
        let q = AlertQueue::new(2);
        assert!(!q.push(t("a", "healthy", "down")));
        assert!(!q.push(t("b", "healthy", "down")));
        assert!(q.push(t("c", "healthy", "down")));
        let (batch, dropped) = q.take();
        let regions: Vec<&str> = batch.iter().map(|t| t.region.as_str()).collect();
        assert_eq!(regions, ["b", "c"]);
        assert_eq!(dropped, 1);
        let (batch, dropped) = q.take();
        assert!(batch.is_empty());
        assert_eq!(dropped, 0);
    }

    #[test]
    fn a_webhook_is_logged_without_its_secret_path() {
        let url: http::Uri = "https://hooks.slack.com/services/T0/B0/XXXX"
            .parse()
            .unwrap();
        assert_eq!(redacted(&url), "https://hooks.slack.com/…");
        let url: http::Uri = "http://user:secret@10.0.0.1:8080/hook".parse().unwrap();
        assert_eq!(redacted(&url), "http://10.0.0.1:8080/…");
    }
}
