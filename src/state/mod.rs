//! Runtime state: one [`Snapshot`] of configuration and health, published
//! whole through an `ArcSwap` by a single owner task. Requests call
//! [`Shared::load`] once and use that consistent view throughout; they never
//! take a lock. What requests learn about backends goes back to the owner as
//! counters and [`Signal`]s.

pub mod control;
mod tracker;
mod upgrades;

pub use control::{BackendRef, Control, Incident};
pub use tracker::Tracker;
pub use upgrades::{OpenUpgrade, UpgradeCounts};

use std::collections::VecDeque;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::alerts::AlertQueue;
use crate::config::Config;
use crate::generation::Generation;
use crate::geo::GeoDb;
use crate::health::{BackendState, Failure, Report};
use crate::metrics::Metrics;

/// Most recent transitions kept for `/api/v1/status`.
pub const MAX_EVENTS: usize = 100;

/// Derived state of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionState {
    /// At least `min_healthy` backends are up.
    Healthy,
    /// Some backends are up, fewer than `min_healthy`; the region serves on those.
    Degraded,
    /// No backend is up and at least one failed; the region cannot serve.
    Down,
    /// An operator stopped new requests to the region.
    Drained,
    /// No backend has been checked yet (just after start); the region cannot serve.
    Unknown,
}

impl RegionState {
    /// Derives the state of a region from its backends: `up` of `total` take
    /// traffic, `checked` says whether any has a verdict yet.
    pub fn derive(
        up: usize,
        total: usize,
        checked: bool,
        min_healthy: Option<usize>,
        drained: bool,
    ) -> RegionState {
        let wanted = min_healthy.unwrap_or(total).clamp(1, total.max(1));
        match (drained, up, checked) {
            (true, _, _) => RegionState::Drained,
            (false, 0, false) => RegionState::Unknown,
            (false, 0, true) => RegionState::Down,
            (false, n, _) if n < wanted => RegionState::Degraded,
            _ => RegionState::Healthy,
        }
    }

    /// Whether a region in this state takes requests.
    pub fn serves(self) -> bool {
        matches!(self, RegionState::Healthy | RegionState::Degraded)
    }

    /// The lower-case name used in logs and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            RegionState::Healthy => "healthy",
            RegionState::Degraded => "degraded",
            RegionState::Down => "down",
            RegionState::Drained => "drained",
            RegionState::Unknown => "unknown",
        }
    }
}

/// What is known of one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendView {
    /// Observed health.
    pub state: BackendState,
    /// Why the last check failed, if it did.
    pub last_error: Option<String>,
    /// Ejections in a row by passive checks (0 when none).
    pub ejections: u32,
    /// An operator drained it: it takes no new requests whatever its health.
    pub drained: bool,
    /// Its failure domain (node, zone): reported by its health check, or configured.
    pub domain: Option<String>,
    /// Its address was found by DNS, under a name of the configuration.
    pub discovered: bool,
}

impl BackendView {
    /// Whether new requests may go to it.
    pub fn takes_traffic(&self) -> bool {
        self.state == BackendState::Up && !self.drained
    }
}

/// What is known of one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionView {
    /// Derived state.
    pub state: RegionState,
    /// The region recovered and waits out its fail-back hold: it serves
    /// only when no other region can.
    pub held: bool,
    /// During slow start, the share of the region's own users sent back to
    /// it, in thousandths; 1000 otherwise.
    pub ramp_permille: u16,
    /// An operator drained it: its state is `drained` whatever its health.
    pub drained: bool,
    /// Backends, in configuration order.
    pub backends: Vec<BackendView>,
    /// Set when every backend taking traffic (two or more) is in this one
    /// failure domain.
    pub single_domain: Option<String>,
}

impl RegionView {
    /// Backends that take traffic: up and not drained.
    pub fn healthy_backends(&self) -> usize {
        self.backends.iter().filter(|b| b.takes_traffic()).count()
    }

    /// The state health checks alone give, ignoring drains of the region
    /// and of its backends.
    pub fn health(&self, min_healthy: Option<usize>) -> RegionState {
        let up = self
            .backends
            .iter()
            .filter(|b| b.state == BackendState::Up)
            .count();
        self.derive(up, min_healthy, false)
    }

    /// The state of the region with `up` backends taking traffic.
    ///
    /// An address DNS added that has no verdict yet neither serves nor
    /// counts against the region: a name scaling up does not degrade it.
    /// A region left with no backend at all (its names have no address)
    /// is down.
    pub fn derive(&self, up: usize, min_healthy: Option<usize>, drained: bool) -> RegionState {
        if self.backends.is_empty() && !drained {
            return RegionState::Down;
        }
        let unknown = |b: &&BackendView| b.state == BackendState::Unknown;
        let counted = self
            .backends
            .iter()
            .filter(|b| !(b.discovered && unknown(b)))
            .count();
        let checked = self.backends.iter().any(|b| !unknown(&b));
        RegionState::derive(up, counted, checked, min_healthy, drained)
    }
}

/// A recorded state change of a region or backend.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When it happened (RFC 3339, UTC).
    pub at: String,
    /// The region name, or `region/host:port` for a backend.
    pub subject: String,
    /// State before.
    pub from: &'static str,
    /// State after.
    pub to: &'static str,
    /// Why.
    pub reason: String,
}

/// One consistent view of configuration and health.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The configuration in force (the same as `generation.config`).
    pub config: Arc<Config>,
    /// What the request path built from that configuration.
    pub generation: Arc<Generation>,
    /// Health of every region, indexed like `config.regions`.
    pub regions: Vec<RegionView>,
    /// Recent transitions, oldest first, at most [`MAX_EVENTS`].
    pub events: Arc<VecDeque<Event>>,
    /// Drains and the incident in force.
    pub control: Arc<Control>,
}

impl Snapshot {
    /// The view before any check has run, from each region's `initial_state`
    /// and the operators' `control`.
    pub fn initial(generation: Arc<Generation>, control: Arc<Control>) -> Snapshot {
        let mut tracker = Tracker::new(Arc::clone(&generation.config));
        tracker.set_control(control, tokio::time::Instant::now());
        tracker.snapshot(&generation)
    }
}

/// What the request path tells the state owner.
#[derive(Debug)]
pub enum Signal {
    /// An active check result.
    Check(Report),
    /// A backend reached its region's `consecutive_failures` on live traffic.
    Eject {
        /// The generation whose indices these are.
        generation: u64,
        /// Region index.
        region: usize,
        /// Backend index within the region.
        backend: usize,
        /// The failure that completed the run.
        failure: Failure,
    },
    /// Operators changed drains or the incident; `done` is told once the
    /// new snapshot is published.
    Control {
        /// The new drains and incident.
        control: Arc<Control>,
        /// Answered after publishing.
        done: oneshot::Sender<()>,
    },
    /// A new configuration: health, drains and events carry over to the
    /// backends and regions it keeps; `done` is told once it is published.
    Reload {
        /// What the request path needs of the new configuration.
        generation: Arc<Generation>,
        /// Answered after publishing.
        done: oneshot::Sender<()>,
    },
}

impl From<Report> for Signal {
    fn from(r: Report) -> Self {
        Signal::Check(r)
    }
}

/// State shared by the request path, the admin API and the owner task.
#[derive(Debug)]
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    signals: mpsc::Sender<Signal>,
    geodb: Arc<ArcSwap<GeoDb>>,
    /// Ticks on every publish, so that long-lived work (upgraded
    /// connections) learns of drains without polling.
    published: watch::Sender<()>,
    upgrades: UpgradeCounts,
    metrics: Arc<Metrics>,
    /// Where region transitions go, when `[alerts]` is set.
    alerts: std::sync::OnceLock<Arc<AlertQueue>>,
}

impl Shared {
    /// Shared state holding the initial snapshot of `generation` with the
    /// drains and incident of `control`; what the request path and the
    /// admin API ask of the state owner goes to `signals`. `generation`
    /// records into `metrics`.
    pub fn new(
        generation: Arc<Generation>,
        control: Control,
        signals: mpsc::Sender<Signal>,
        metrics: Arc<Metrics>,
    ) -> Shared {
        Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::initial(generation, Arc::new(control))),
            signals,
            geodb: Arc::new(ArcSwap::from_pointee(GeoDb::built_in())),
            published: watch::Sender::new(()),
            upgrades: UpgradeCounts::default(),
            metrics,
            alerts: std::sync::OnceLock::new(),
        }
    }

    /// What Meridian counts, for `/metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Marked changed each time a new snapshot is published.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.published.subscribe()
    }

    /// Open upgraded connections per region.
    pub fn upgrades(&self) -> &UpgradeCounts {
        &self.upgrades
    }

    /// The GeoIP database in use.
    pub fn geodb(&self) -> arc_swap::Guard<Arc<GeoDb>> {
        self.geodb.load()
    }

    /// The GeoIP database's slot, for the task that replaces it.
    pub fn geodb_slot(&self) -> Arc<ArcSwap<GeoDb>> {
        Arc::clone(&self.geodb)
    }

    /// Records that a live request failed on a backend of `generation`; a
    /// run long enough asks the owner to eject it. Never waits: when the
    /// owner is behind, the request is dropped and the next run asks again.
    pub fn passive_failure(
        &self,
        generation: &Generation,
        region: usize,
        backend: usize,
        failure: Failure,
    ) {
        if generation.passive.failure(region, backend, failure) {
            let _ = self.signals.try_send(Signal::Eject {
                generation: generation.number,
                region,
                backend,
                failure,
            });
        }
    }

    /// Puts new drains and incident in force, returning once requests see
    /// them; `false` when the state owner has stopped.
    pub async fn set_control(&self, control: Arc<Control>) -> bool {
        let (done, published) = oneshot::channel();
        if self
            .signals
            .send(Signal::Control { control, done })
            .await
            .is_err()
        {
            return false;
        }
        published.await.is_ok()
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Puts a new configuration in force, returning once requests see it;
    /// `false` when the state owner has stopped.
    pub async fn reload(&self, generation: Arc<Generation>) -> bool {
        let (done, published) = oneshot::channel();
        if self
            .signals
            .send(Signal::Reload { generation, done })
            .await
            .is_err()
        {
            return false;
        }
        published.await.is_ok()
    }

    fn publish(&self, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        let before = self.snapshot.swap(Arc::clone(&snapshot));
        self.published.send_replace(());
        if let Some(alerts) = self.alerts.get() {
            alerts.publish(&before, &snapshot);
        }
    }

    /// Region transitions are queued to `alerts` from now on.
    pub fn send_alerts_to(&self, alerts: Arc<AlertQueue>) {
        let _ = self.alerts.set(alerts);
    }
}

/// The single writer of the snapshot: applies check results, ejections and
/// timers (fail-back holds, slow start) through the [`Tracker`], and
/// publishes a new snapshot whenever something changed.
pub async fn run_owner(
    shared: Arc<Shared>,
    mut signals: mpsc::Receiver<Signal>,
    stop: CancellationToken,
) {
    let (mut tracker, mut generation) = {
        let initial = shared.load();
        let mut t = Tracker::new(Arc::clone(&initial.config));
        t.set_control(Arc::clone(&initial.control), tokio::time::Instant::now());
        (t, Arc::clone(&initial.generation))
    };
    loop {
        let deadline = tracker.next_deadline();
        let now = tokio::time::Instant::now;
        let changed = tokio::select! {
            _ = stop.cancelled() => return,
            signal = signals.recv() => match signal {
                None => return,
                // Reports and ejections about an older configuration's
                // indices may still be queued after a reload.
                Some(Signal::Check(r)) if r.generation == generation.number => {
                    let passed = r.result.is_ok();
                    let changed = tracker.check(r.region, r.backend, r.result, now());
                    let domain = passed
                        && tracker.report_domain(r.region, r.backend, r.domain, now());
                    changed || domain
                }
                Some(Signal::Eject { generation: g, region, backend, failure }) if g == generation.number => {
                    tracker.eject(region, backend, failure, now())
                }
                Some(Signal::Check(_) | Signal::Eject { .. }) => false,
                Some(Signal::Control { control, done }) => {
                    tracker.set_control(control, now());
                    shared.publish(tracker.snapshot(&generation));
                    let _ = done.send(());
                    continue;
                }
                Some(Signal::Reload { generation: next, done }) => {
                    tracker = tracker.reload(Arc::clone(&next.config), now());
                    generation = next;
                    shared.publish(tracker.snapshot(&generation));
                    let _ = done.send(());
                    continue;
                }
            },
            () = sleep_until(deadline) => tracker.tick(now()),
        };
        if changed {
            shared.publish(tracker.snapshot(&generation));
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_dns_adds_count_once_checked_and_no_backend_is_down() {
        let backend = |state, discovered| BackendView {
            state,
            last_error: None,
            ejections: 0,
            drained: false,
            domain: None,
            discovered,
        };
        let view = |backends: Vec<BackendView>| RegionView {
            state: RegionState::Unknown,
            held: false,
            ramp_permille: 1000,
            drained: false,
            backends,
            single_domain: None,
        };
        use BackendState::{Down, Unknown, Up};
        let v = view(vec![backend(Up, true), backend(Unknown, true)]);
        assert_eq!(v.derive(1, None, false), RegionState::Healthy);
        assert_eq!(v.health(None), RegionState::Healthy);
        let v = view(vec![backend(Up, false), backend(Unknown, false)]);
        assert_eq!(
            v.derive(1, None, false),
            RegionState::Degraded,
            "a backend of the file counts from the start"
        );
        let v = view(vec![backend(Unknown, true), backend(Unknown, true)]);
        assert_eq!(v.derive(0, None, false), RegionState::Unknown);
        let v = view(vec![backend(Down, true), backend(Unknown, true)]);
        assert_eq!(v.derive(0, None, false), RegionState::Down);
        let v = view(Vec::new());
        assert_eq!(v.derive(0, None, false), RegionState::Down);
        assert_eq!(v.derive(0, None, true), RegionState::Drained);
    }

    #[test]
    fn region_state_is_derived_from_its_backends() {
        use RegionState::*;
        let derive = RegionState::derive;
        // (up, total, checked, min_healthy, drained) -> state
        assert_eq!(derive(2, 2, true, None, false), Healthy);
        assert_eq!(derive(1, 2, true, None, false), Degraded);
        assert_eq!(derive(1, 2, true, Some(1), false), Healthy);
        assert_eq!(derive(2, 3, true, Some(2), false), Healthy);
        assert_eq!(derive(1, 3, true, Some(2), false), Degraded);
        assert_eq!(derive(0, 2, true, Some(1), false), Down);
        assert_eq!(derive(0, 2, false, None, false), Unknown);
        assert_eq!(
            derive(2, 2, true, Some(9), false),
            Healthy,
            "min_healthy above the total means all"
        );
        for up in 0..3 {
            for checked in [false, true] {
                assert_eq!(derive(up, 2, checked, None, true), Drained);
            }
        }
        // Exhaustively over small regions, against the definition: up
        // backends below min_healthy (all, by default) is degraded.
        for total in 1..6usize {
            for up in 0..=total {
                for min in [None, Some(1), Some(2), Some(3), Some(5)] {
                    let wanted = min.unwrap_or(total).min(total);
                    let expected = if up == 0 {
                        Down
                    } else if up < wanted {
                        Degraded
                    } else {
                        Healthy
                    };
                    assert_eq!(
                        derive(up, total, true, min, false),
                        expected,
                        "{up}/{total} {min:?}"
                    );
                    assert_eq!(derive(up, total, true, min, true), Drained);
                }
            }
        }
        for s in [Healthy, Degraded] {
            assert!(s.serves());
        }
        for s in [Down, Drained, Unknown] {
            assert!(!s.serves());
        }
    }
}
