//! Runtime state: one [`Snapshot`] of configuration and health, published
//! whole through an `ArcSwap` by a single owner task. Requests call
//! [`Shared::load`] once and use that consistent view throughout; they never
//! take a lock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::{BackendState, HealthMachine, Report};

/// Most recent transitions kept for `/api/v1/status`.
pub const MAX_EVENTS: usize = 100;

/// Derived state of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionState {
    /// Every backend is up.
    Healthy,
    /// Some backends are up, some are not; the region serves on those that are.
    Degraded,
    /// No backend is up and at least one failed its checks; the region cannot serve.
    Down,
    /// No backend has been checked yet (just after start); the region cannot serve.
    Unknown,
}

impl RegionState {
    /// Derives the state from the states of the region's backends.
    pub fn of(backends: impl IntoIterator<Item = BackendState>) -> RegionState {
        let (mut up, mut down, mut total) = (0usize, 0usize, 0usize);
        for b in backends {
            total += 1;
            up += usize::from(b == BackendState::Up);
            down += usize::from(b == BackendState::Down);
        }
        match (up, down) {
            (0, 0) => RegionState::Unknown,
            (0, _) => RegionState::Down,
            (n, _) if n == total => RegionState::Healthy,
            _ => RegionState::Degraded,
        }
    }

    /// The lower-case name used in logs and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            RegionState::Healthy => "healthy",
            RegionState::Degraded => "degraded",
            RegionState::Down => "down",
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
}

/// What is known of one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionView {
    /// Derived state.
    pub state: RegionState,
    /// Backends, in configuration order.
    pub backends: Vec<BackendView>,
}

impl RegionView {
    /// Backends that take traffic.
    pub fn healthy_backends(&self) -> usize {
        self.backends
            .iter()
            .filter(|b| b.state == BackendState::Up)
            .count()
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
    /// The configuration in force.
    pub config: Arc<Config>,
    /// Health of every region, indexed like `config.regions`.
    pub regions: Vec<RegionView>,
    /// Recent transitions, oldest first, at most [`MAX_EVENTS`].
    pub events: Arc<VecDeque<Event>>,
}

impl Snapshot {
    /// The view before any check has run: every backend and region unknown.
    pub fn initial(config: Arc<Config>) -> Snapshot {
        let regions = config
            .regions
            .iter()
            .map(|r| RegionView {
                state: RegionState::Unknown,
                backends: vec![
                    BackendView {
                        state: BackendState::Unknown,
                        last_error: None,
                    };
                    r.backends.len()
                ],
            })
            .collect();
        Snapshot {
            config,
            regions,
            events: Arc::new(VecDeque::new()),
        }
    }
}

/// State shared by the request path, the admin API and the owner task.
#[derive(Debug)]
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    /// One round-robin counter per preferred region: a shared one would give
    /// each region the same backends whenever traffic alternates regularly.
    rotations: Box<[AtomicUsize]>,
}

impl Shared {
    /// Shared state holding the initial snapshot of `config`.
    pub fn new(config: Arc<Config>) -> Shared {
        let rotations = config.regions.iter().map(|_| AtomicUsize::new(0)).collect();
        Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::initial(config)),
            rotations,
        }
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The next round-robin position for clients preferring `region`.
    pub fn next_rotation(&self, region: usize) -> usize {
        self.rotations
            .get(region)
            .map_or(0, |r| r.fetch_add(1, Ordering::Relaxed))
    }

    fn publish(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }
}

fn now_rfc3339() -> String {
    humantime_serde::re::humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The single writer of the snapshot: applies health reports to the state
/// machines and publishes a new snapshot whenever something changed.
pub async fn run_owner(
    shared: Arc<Shared>,
    mut reports: mpsc::Receiver<Report>,
    stop: CancellationToken,
) {
    let mut current = (*shared.load()).clone();
    let mut machines: Vec<Vec<HealthMachine>> = current
        .config
        .regions
        .iter()
        .map(|r| {
            r.backends
                .iter()
                .map(|_| HealthMachine::new(r.health.rise, r.health.fall))
                .collect()
        })
        .collect();
    let mut events: VecDeque<Event> = (*current.events).clone();
    loop {
        let report = tokio::select! {
            _ = stop.cancelled() => return,
            r = reports.recv() => match r { Some(r) => r, None => return },
        };
        let Some(machine) = machines
            .get_mut(report.region)
            .and_then(|m| m.get_mut(report.backend))
        else {
            continue;
        };
        let config = Arc::clone(&current.config);
        let region_cfg = &config.regions[report.region];
        let address = &region_cfg.backends[report.backend].address;
        let error = report.result.as_ref().err().map(ToString::to_string);
        let transition = machine.observe(report.result.is_ok());
        let view = &mut current.regions[report.region];
        let backend = &mut view.backends[report.backend];
        let error_changed = backend.last_error != error;
        backend.last_error = error.clone();
        let Some(t) = transition else {
            if error_changed {
                shared.publish(current.clone());
            }
            continue;
        };
        backend.state = t.to;
        let reason = error.unwrap_or_else(|| "health check passed".to_owned());
        let subject = format!("{}/{}", region_cfg.name, address);
        tracing::info!(backend = %subject, from = t.from.as_str(), to = t.to.as_str(), %reason, "backend state changed");
        push_event(
            &mut events,
            &subject,
            t.from.as_str(),
            t.to.as_str(),
            &reason,
        );

        let before = view.state;
        view.state = RegionState::of(view.backends.iter().map(|b| b.state));
        if view.state != before {
            let reason = format!(
                "{} of {} backends up",
                view.healthy_backends(),
                view.backends.len()
            );
            if view.state == RegionState::Down {
                tracing::warn!(region = %region_cfg.name, from = before.as_str(), to = view.state.as_str(), %reason, "region state changed");
            } else {
                tracing::info!(region = %region_cfg.name, from = before.as_str(), to = view.state.as_str(), %reason, "region state changed");
            }
            push_event(
                &mut events,
                &region_cfg.name,
                before.as_str(),
                view.state.as_str(),
                &reason,
            );
        }
        current.events = Arc::new(events.clone());
        shared.publish(current.clone());
    }
}

fn push_event(
    events: &mut VecDeque<Event>,
    subject: &str,
    from: &'static str,
    to: &'static str,
    reason: &str,
) {
    if events.len() == MAX_EVENTS {
        events.pop_front();
    }
    events.push_back(Event {
        at: now_rfc3339(),
        subject: subject.to_owned(),
        from,
        to,
        reason: reason.to_owned(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use BackendState::*;

    #[test]
    fn region_state_follows_its_backends() {
        assert_eq!(RegionState::of([Up, Up]), RegionState::Healthy);
        assert_eq!(RegionState::of([Up, Down]), RegionState::Degraded);
        assert_eq!(RegionState::of([Up, Unknown]), RegionState::Degraded);
        assert_eq!(RegionState::of([Down, Unknown]), RegionState::Down);
        assert_eq!(RegionState::of([Unknown, Unknown]), RegionState::Unknown);
        assert_eq!(RegionState::of([]), RegionState::Unknown);
    }

    #[test]
    fn each_preferred_region_has_its_own_rotation() {
        let text = "[[region]]\nname = \"us\"\nbackends = [\"http://10.0.0.1:80\"]\n\
                    [[region]]\nname = \"eu\"\nbackends = [\"http://10.1.0.1:80\"]\n";
        let shared = Shared::new(Arc::new(Config::parse("t.toml", text).unwrap()));
        // Alternating traffic still walks each region's backends in turn.
        let seen: Vec<(usize, usize)> = (0..3)
            .map(|_| (shared.next_rotation(0), shared.next_rotation(1)))
            .collect();
        assert_eq!(seen, vec![(0, 0), (1, 1), (2, 2)]);
        assert_eq!(
            shared.next_rotation(9),
            0,
            "an unknown region does not panic"
        );
    }

    #[test]
    fn events_are_capped() {
        let mut events = VecDeque::new();
        for i in 0..MAX_EVENTS + 5 {
            push_event(&mut events, &format!("r{i}"), "up", "down", "x");
        }
        assert_eq!(events.len(), MAX_EVENTS);
        assert_eq!(events.front().map(|e| e.subject.as_str()), Some("r5"));
    }
}
