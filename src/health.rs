//! Backend health: the pure per-backend state machine with rise/fall hysteresis,
//! the [`Probe`] trait with its HTTP implementation, and the probing loop that
//! reports each result to the state owner.
//!
//! A backend that answers slowly is as unhealthy as one that does not answer:
//! every check has a timeout, and a check that runs past it fails. In the
//! outage Meridian answers, a half-alive node was never declared dead.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Backend, Health};
use crate::telemetry::error_chain;

/// Observed health of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Not checked yet; takes no traffic.
    Unknown,
    /// Passing checks; takes traffic.
    Up,
    /// Failing checks; takes no traffic.
    Down,
}

impl BackendState {
    /// The lower-case name used in logs and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Unknown => "unknown",
            BackendState::Up => "up",
            BackendState::Down => "down",
        }
    }
}

/// A change of [`BackendState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: BackendState,
    /// State after.
    pub to: BackendState,
}

/// The current run of identical results, as one value so that passes and
/// failures can never both be counted at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Streak {
    None,
    Passes(u32),
    Failures(u32),
}

/// Rise/fall hysteresis for one backend.
///
/// The first result decides an unknown backend at once, so that Meridian
/// serves within one check of starting; after that `rise` consecutive passes
/// bring a down backend up and `fall` consecutive failures take an up one down.
#[derive(Debug, Clone)]
pub struct HealthMachine {
    state: BackendState,
    streak: Streak,
    rise: u32,
    fall: u32,
}

impl HealthMachine {
    /// A machine in the `Unknown` state.
    pub fn new(rise: u32, fall: u32) -> Self {
        HealthMachine {
            state: BackendState::Unknown,
            streak: Streak::None,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// The current state.
    pub fn state(&self) -> BackendState {
        self.state
    }

    /// Records one check result; returns the transition it caused, if any.
    pub fn observe(&mut self, passed: bool) -> Option<Transition> {
        self.streak = match (self.streak, passed) {
            (Streak::Passes(n), true) => Streak::Passes(n.saturating_add(1)),
            (_, true) => Streak::Passes(1),
            (Streak::Failures(n), false) => Streak::Failures(n.saturating_add(1)),
            (_, false) => Streak::Failures(1),
        };
        let next = match (self.state, self.streak) {
            (BackendState::Unknown, Streak::Passes(_)) => BackendState::Up,
            (BackendState::Unknown, Streak::Failures(_)) => BackendState::Down,
            (BackendState::Down, Streak::Passes(n)) if n >= self.rise => BackendState::Up,
            (BackendState::Up, Streak::Failures(n)) if n >= self.fall => BackendState::Down,
            (state, _) => state,
        };
        if next == self.state {
            return None;
        }
        let t = Transition {
            from: self.state,
            to: next,
        };
        self.state = next;
        Some(t)
    }
}

/// Why a health check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// No connection or no complete answer.
    #[error("request failed: {0}")]
    Request(String),
    /// No answer within the check's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// An answer with a status outside 200-399.
    #[error("status {0}")]
    Status(u16),
}

/// One kind of health check: a single job, so that tests can script their own.
pub trait Probe: Send + Sync + 'static {
    /// Checks `backend` once; the caller applies the timeout.
    fn check(
        &self,
        backend: &Backend,
        health: &Health,
    ) -> impl Future<Output = Result<(), ProbeError>> + Send;
}

/// `GET <path>` over a fresh connection, passing on 200-399.
///
/// Checks never reuse connections: a warm pooled connection would hide a
/// backend that no longer accepts new ones, and checks must not queue behind
/// live traffic.
#[derive(Clone)]
pub struct HttpProbe {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl HttpProbe {
    /// A probe whose connections are opened within `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        HttpProbe { client }
    }
}

impl Probe for HttpProbe {
    async fn check(&self, backend: &Backend, health: &Health) -> Result<(), ProbeError> {
        let uri = format!(
            "{}{}",
            backend.url.to_string().trim_end_matches('/'),
            health.path
        );
        let request = http::Request::get(uri)
            .header(
                http::header::USER_AGENT,
                concat!("meridian-health/", env!("CARGO_PKG_VERSION")),
            )
            .header(http::header::CONNECTION, "close")
            .body(Empty::new())
            .map_err(|e| ProbeError::Request(e.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| ProbeError::Request(error_chain(&e)))?;
        let status = response.status();
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(ProbeError::Status(status.as_u16()))
        }
    }
}

/// One check result, sent to the state owner.
#[derive(Debug, Clone)]
pub struct Report {
    /// Region index.
    pub region: usize,
    /// Backend index within the region.
    pub backend: usize,
    /// The result.
    pub result: Result<(), ProbeError>,
}

/// Checks one backend every `interval` until `stop` is cancelled or the state
/// owner is gone. The first check runs at once.
pub async fn probe_loop<P: Probe>(
    probe: P,
    region: usize,
    backend_index: usize,
    backend: Backend,
    health: Health,
    reports: mpsc::Sender<Report>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(health.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(health.timeout, probe.check(&backend, &health)) => {
                r.unwrap_or(Err(ProbeError::Timeout(health.timeout)))
            }
        };
        let report = Report {
            region,
            backend: backend_index,
            result,
        };
        if reports.send(report).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BackendState::*;
    use super::*;

    fn run(m: &mut HealthMachine, results: &[bool]) -> Vec<Option<(BackendState, BackendState)>> {
        results
            .iter()
            .map(|&r| m.observe(r).map(|t| (t.from, t.to)))
            .collect()
    }

    #[test]
    fn first_result_decides_an_unknown_backend() {
        let mut m = HealthMachine::new(3, 3);
        assert_eq!(m.state(), Unknown);
        assert_eq!(run(&mut m, &[true]), vec![Some((Unknown, Up))]);
        let mut m = HealthMachine::new(3, 3);
        assert_eq!(run(&mut m, &[false]), vec![Some((Unknown, Down))]);
    }

    #[test]
    fn up_goes_down_only_after_fall_consecutive_failures() {
        let mut m = HealthMachine::new(2, 3);
        m.observe(true);
        assert_eq!(
            run(&mut m, &[false, false, true, false, false]),
            vec![None; 5]
        );
        assert_eq!(m.state(), Up);
        assert_eq!(run(&mut m, &[false]), vec![Some((Up, Down))]);
    }

    #[test]
    fn down_comes_back_only_after_rise_consecutive_passes() {
        let mut m = HealthMachine::new(2, 1);
        m.observe(false);
        assert_eq!(run(&mut m, &[true, false, true]), vec![None, None, None]);
        assert_eq!(run(&mut m, &[true]), vec![Some((Down, Up))]);
        assert_eq!(run(&mut m, &[true, true]), vec![None, None]);
    }

    #[test]
    fn rise_and_fall_of_one_flip_on_every_change() {
        let mut m = HealthMachine::new(1, 1);
        assert_eq!(
            run(&mut m, &[true, false, true]),
            vec![Some((Unknown, Up)), Some((Up, Down)), Some((Down, Up))]
        );
    }

    #[test]
    fn long_streaks_do_not_overflow() {
        let mut m = HealthMachine::new(1, 1);
        m.streak = Streak::Passes(u32::MAX);
        m.state = Up;
        assert_eq!(m.observe(true), None);
    }

    /// A probe that plays a script: `Some(result)` answers at once, `None` never answers.
    struct Scripted {
        script: std::sync::Mutex<std::collections::VecDeque<Option<Result<(), ProbeError>>>>,
        calls: std::sync::Mutex<Vec<tokio::time::Instant>>,
    }

    impl Probe for std::sync::Arc<Scripted> {
        async fn check(&self, _: &Backend, _: &Health) -> Result<(), ProbeError> {
            self.calls.lock().unwrap().push(tokio::time::Instant::now());
            let next = self.script.lock().unwrap().pop_front().flatten();
            match next {
                Some(result) => result,
                None => std::future::pending().await,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_probe_loop_checks_every_interval_times_out_and_stops() {
        let config = crate::config::Config::parse(
            "t.toml",
            "[[region]]\nname = \"us\"\nbackends = [\"http://10.0.0.1:80\"]\n[region.health]\ninterval = \"1s\"\ntimeout = \"100ms\"\n",
        )
        .unwrap();
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
        let (tx, mut rx) = mpsc::channel(4);
        let stop = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(probe_loop(
            std::sync::Arc::clone(&probe),
            0,
            0,
            region.backends[0].clone(),
            region.health.clone(),
            tx,
            stop.clone(),
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
