//! Active checks: the [`Probe`] trait, its HTTP implementation on fresh
//! connections (over TLS for `https://` backends, verified as live traffic
//! is), and the jittered loop that reports each result.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use std::sync::Arc;

use crate::config::{Backend, BackendTls, Health};
use crate::metrics::Metrics;
use crate::telemetry::error_chain;

/// Most of a check's response body read to look for `expect_body`.
pub const MAX_CHECK_BODY: usize = 64 * 1024;

/// Why a health check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// No connection or no complete answer.
    #[error("request failed: {0}")]
    Request(String),
    /// No answer within the check's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// An answer with a status outside `expect_status`.
    #[error("status {0}")]
    Status(u16),
    /// An answer whose body lacks `expect_body`.
    #[error("body does not contain {0:?}")]
    Body(String),
}

/// One kind of health check: a single job, so that tests can script their own.
pub trait Probe: Send + Sync + 'static {
    /// Checks `backend` once; the caller applies the timeout. A passing
    /// check returns the failure domain the backend reported, if any.
    fn check(
        &self,
        backend: &Backend,
        health: &Health,
    ) -> impl Future<Output = Result<Option<String>, ProbeError>> + Send;
}

/// The configured request (`GET /healthz` by default) over a fresh
/// connection, passing on an expected status and, when set, a body that
/// contains the expected text.
///
/// Checks never reuse connections: a warm pooled connection would hide a
/// backend that no longer accepts new ones, and checks must not queue behind
/// live traffic. For the same reason a check of an https backend never
/// resumes a TLS session: each one makes the full handshake and certificate
/// check that a new connection of live traffic may have to make.
#[derive(Clone)]
pub struct HttpProbe {
    client: Client<HttpConnector, Empty<Bytes>>,
    /// Opens the TCP connections of checks over TLS.
    tcp: HttpConnector,
}

impl HttpProbe {
    /// A probe whose connections are opened within `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let mut tcp = connector.clone();
        tcp.enforce_http(false);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        HttpProbe { client, tcp }
    }

    /// Sends `request` to an https backend over a new TLS connection,
    /// verified with the region's settings.
    async fn send_tls(
        &self,
        backend: &Backend,
        tls: &BackendTls,
        mut request: http::Request<Empty<Bytes>>,
    ) -> Result<(http::Response<hyper::body::Incoming>, AbortOnDrop), ProbeError> {
        let tcp = self
            .tcp
            .clone()
            .call(backend.url.clone())
            .await
            .map_err(|e| ProbeError::Request(error_chain(&e)))?
            .into_inner();
        let connector =
            tokio_rustls::TlsConnector::from(std::sync::Arc::clone(&tls.settings.checks));
        let stream = connector
            .connect(tls.server_name.clone(), tcp)
            .await
            .map_err(|e| ProbeError::Request(format!("TLS handshake: {e}")))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ProbeError::Request(error_chain(&e)))?;
        // The connection is driven by a task of its own so that the body can
        // be read after the head; the caller holds the returned guard, which
        // aborts the task when the check ends or times out, so a backend
        // that never answers leaves nothing behind.
        let driver = AbortOnDrop(tokio::spawn(connection).abort_handle());
        // Sent on a connection of its own, the request names only its path;
        // the authority goes in Host, as on live traffic.
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *request.uri_mut() = http::Uri::from(path);
        if !request.headers().contains_key(http::header::HOST) {
            request
                .headers_mut()
                .insert(http::header::HOST, backend.host_header.clone());
        }
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ProbeError::Request(error_chain(&e)))?;
        Ok((response, driver))
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Probe for HttpProbe {
    async fn check(
        &self,
        backend: &Backend,
        health: &Health,
    ) -> Result<Option<String>, ProbeError> {
        let uri = format!(
            "{}{}",
            backend.url.to_string().trim_end_matches('/'),
            health.path
        );
        let mut request = http::Request::builder()
            .method(health.method.clone())
            .uri(uri)
            .header(
                http::header::USER_AGENT,
                concat!("meridian-health/", env!("CARGO_PKG_VERSION")),
            )
            .header(http::header::CONNECTION, "close");
        // A backend found by DNS is dialled by address but named by its host
        // name, as live traffic names it; otherwise the URI gives the Host.
        let found_by_dns = backend.discovered_from.is_some();
        if let Some(host) = health
            .host
            .as_ref()
            .or(found_by_dns.then_some(&backend.host_header))
        {
            request = request.header(http::header::HOST, host.clone());
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| ProbeError::Request(e.to_string()))?;
        // `_driver` keeps a TLS check's connection going until the body is read.
        let (response, _driver) = match &backend.tls {
            None => (
                self.client
                    .request(request)
                    .await
                    .map_err(|e| ProbeError::Request(error_chain(&e)))?,
                None,
            ),
            Some(tls) => {
                let (response, driver) = self.send_tls(backend, tls, request).await?;
                (response, Some(driver))
            }
        };
        let status = response.status().as_u16();
        if !health
            .expect_status
            .iter()
            .any(|&(low, high)| (low..=high).contains(&status))
        {
            return Err(ProbeError::Status(status));
        }
        let domain = health
            .failure_domain_header
            .as_ref()
            .and_then(|h| response.headers().get(h))
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 253)
            .map(str::to_owned);
        let Some(expected) = &health.expect_body else {
            return Ok(domain);
        };
        let body = Limited::new(response.into_body(), MAX_CHECK_BODY);
        // A body longer than the limit is searched in its first part.
        let mut seen = Vec::new();
        let mut body = std::pin::pin!(body);
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        seen.extend_from_slice(data);
                    }
                }
                Err(e) if e.is::<http_body_util::LengthLimitError>() => break,
                Err(e) => return Err(ProbeError::Request(e.to_string())),
            }
        }
        if contains(&seen, expected.as_bytes()) {
            Ok(domain)
        } else {
            Err(ProbeError::Body(expected.clone()))
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// `interval` scaled by a random factor in `1 ± jitter`.
fn jittered(interval: Duration, jitter: f64, random: u64) -> Duration {
    // 53 random bits give a uniform fraction in [0, 1).
    let unit = (random >> 11) as f64 / (1u64 << 53) as f64;
    interval.mul_f64(1.0 + jitter * (2.0 * unit - 1.0))
}

/// A small random-number source for jitter: a per-loop random seed, then
/// splitmix64. Jitter needs spread, not secrecy.
struct Spread(u64);

impl Spread {
    fn new() -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0);
        Spread(h.finish())
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// One check result, sent to the state owner.
#[derive(Debug, Clone)]
pub struct Report {
    /// The configuration generation whose indices these are.
    pub generation: u64,
    /// Region index.
    pub region: usize,
    /// Backend index within the region.
    pub backend: usize,
    /// The result.
    pub result: Result<(), ProbeError>,
    /// The failure domain a passing check reported
    /// (`[region.health] failure_domain_header`).
    pub domain: Option<String>,
}

/// Which backend a prober checks, in which configuration generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTarget {
    /// The configuration generation.
    pub generation: u64,
    /// Region index.
    pub region: usize,
    /// Backend index within the region.
    pub backend: usize,
}

/// Checks one backend every `interval` (with jitter) until `stop` is
/// cancelled or the state owner is gone, timing each check into `metrics`.
/// The first check runs at once.
pub async fn probe_loop<P: Probe, T: From<Report>>(
    probe: P,
    target: ProbeTarget,
    backend: Backend,
    health: Health,
    reports: mpsc::Sender<T>,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
) {
    let mut spread = Spread::new();
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        // Waits are measured from the start of each check, so that a slow
        // check does not stretch the interval; a check longer than the
        // interval is followed by the next at once.
        let started = tokio::time::Instant::now();
        next = started + jittered(health.interval, health.jitter, spread.next());
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(health.timeout, probe.check(&backend, &health)) => {
                r.unwrap_or(Err(ProbeError::Timeout(health.timeout)))
            }
        };
        metrics.health_check(started.elapsed());
        let (result, domain) = match result {
            Ok(domain) => (Ok(()), domain),
            Err(e) => (Err(e), None),
        };
        let report = Report {
            generation: target.generation,
            region: target.region,
            backend: target.backend,
            result,
            domain,
        };
        if reports.send(report.into()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe that plays a script: `Some(result)` answers at once, `None` never answers.
    struct Scripted {
        script: std::sync::Mutex<std::collections::VecDeque<Option<Result<(), ProbeError>>>>,
        calls: std::sync::Mutex<Vec<tokio::time::Instant>>,
    }

    impl Probe for std::sync::Arc<Scripted> {
        async fn check(&self, _: &Backend, _: &Health) -> Result<Option<String>, ProbeError> {
            self.calls.lock().unwrap().push(tokio::time::Instant::now());
            let next = self.script.lock().unwrap().pop_front().flatten();
            match next {
                Some(result) => result.map(|()| None),
                None => std::future::pending().await,
            }
        }
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_spreads() {
        let interval = Duration::from_secs(1);
        assert_eq!(jittered(interval, 0.1, 0), Duration::from_millis(900));
        assert_eq!(jittered(interval, 0.0, u64::MAX), interval);
        let mut spread = Spread::new();
        let waits: Vec<Duration> = (0..1000)
            .map(|_| jittered(interval, 0.1, spread.next()))
            .collect();
        assert!(waits
            .iter()
            .all(|w| *w >= Duration::from_millis(900) && *w <= Duration::from_millis(1100)));
        let below = waits.iter().filter(|w| **w < interval).count();
        assert!(
            (350..650).contains(&below),
            "{below} of 1000 below the interval"
        );
    }

    #[test]
    fn body_search_finds_text_anywhere() {
        assert!(contains(b"status: ok\n", b"ok"));
        assert!(!contains(b"status: down", b"ok"));
        assert!(contains(b"", b""));
    }

    #[tokio::test(start_paused = true)]
    async fn the_probe_loop_checks_every_interval_times_out_and_stops() {
        let config = crate::config::Config::parse(
            "t.toml",
            "[[region]]\nname = \"us\"\nbackends = [\"http://10.0.0.1:80\"]\n[region.health]\ninterval = \"1s\"\ntimeout = \"100ms\"\n",
        )
        .unwrap();
        let mut health = config.regions[0].health.clone();
        health.jitter = 0.0;
        let region = &config.regions[0];
        let probe = std::sync::Arc::new(Scripted {
            script: std::sync::Mutex::new(
                [
                    Some(Ok(())),
                    Some(Err(ProbeError::Status(503))),
                    None,
                    Some(Ok(())),
                ]
                .into(),
            ),
            calls: std::sync::Mutex::new(Vec::new()),
        });
        let (tx, mut rx) = mpsc::channel::<Report>(4);
        let stop = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(probe_loop(
            std::sync::Arc::clone(&probe),
            ProbeTarget {
                generation: 0,
                region: 0,
                backend: 0,
            },
            region.backends[0].clone(),
            health,
            tx,
            stop.clone(),
            std::sync::Arc::new(crate::metrics::Metrics::default()),
        ));
        let mut results = Vec::new();
        for _ in 0..4 {
            results.push(rx.recv().await.unwrap().result);
        }
        assert_eq!(
            results,
            vec![
                Ok(()),
                Err(ProbeError::Status(503)),
                Err(ProbeError::Timeout(Duration::from_millis(100))),
                Ok(())
            ]
        );
        let offsets: Vec<Duration> = probe
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|t| *t - started)
            .collect();
        let secs: Vec<u64> = offsets.iter().map(|d| d.as_secs()).collect();
        assert_eq!(
            secs,
            vec![0, 1, 2, 3],
            "one check a second, the first at once"
        );
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the loop stops when cancelled")
            .unwrap();
    }
}
