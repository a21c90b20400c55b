//! The state owner's logic, with time passed in: active check results,
//! passive ejections and timers in, a new [`Snapshot`] and events out.
//!
//! A region that went down and recovers is held for its `failback_hold`
//! before its users return: it must stay up for the whole hold, so a
//! flapping region never drags traffic back and forth. After the hold, with
//! `slow_start`, its users return a share at a time.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{BackendView, Control, Event, RegionState, RegionView, Snapshot, MAX_EVENTS};
use crate::config::{Config, InitialState};
use crate::generation::Generation;
use crate::health::{may_eject, BackendState, Ejection, Failure, HealthMachine, ProbeError};

/// How often the share of a slow-starting region is raised.
const RAMP_STEPS: u32 = 20;

#[derive(Debug, Clone)]
struct BackendTrack {
    machine: HealthMachine,
    ejection: Ejection,
}

impl BackendTrack {
    fn state(&self) -> BackendState {
        if self.ejection.is_ejected() {
            BackendState::Ejected
        } else {
            self.machine.state()
        }
    }
}

#[derive(Debug, Clone, Default)]
struct RegionTrack {
    /// Went down since its users last returned: a recovery is held.
    was_down: bool,
    hold_until: Option<Instant>,
    ramp_from: Option<Instant>,
    /// When the slow-start share is raised next: a fixed time, so that
    /// check results arriving in between do not keep pushing it back.
    ramp_next: Option<Instant>,
}

impl RegionTrack {
    fn start_ramp(&mut self, now: Instant, slow_start: Duration) {
        self.ramp_from = Some(now);
        self.ramp_next = Some(now + ramp_step(slow_start));
    }

    fn stop_ramp(&mut self) {
        self.ramp_from = None;
        self.ramp_next = None;
    }
}

fn ramp_step(slow_start: Duration) -> Duration {
    (slow_start / RAMP_STEPS).max(Duration::from_millis(10))
}

/// Health of every backend and region, and the recent events.
#[derive(Debug, Clone)]
pub struct Tracker {
    config: Arc<Config>,
    views: Vec<RegionView>,
    backends: Vec<Vec<BackendTrack>>,
    regions: Vec<RegionTrack>,
    events: VecDeque<Event>,
    events_shared: Arc<VecDeque<Event>>,
    control: Arc<Control>,
}

impl Tracker {
    /// Every backend in its region's `initial_state`.
    pub fn new(config: Arc<Config>) -> Tracker {
        let backends: Vec<Vec<BackendTrack>> = config
            .regions
            .iter()
            .map(|r| {
                r.backends
                    .iter()
                    .map(|_| BackendTrack {
                        machine: HealthMachine::new(
                            r.health.rise,
                            r.health.fall,
                            r.health.initial_state,
                        ),
                        ejection: Ejection::default(),
                    })
                    .collect()
            })
            .collect();
        let views = config
            .regions
            .iter()
            .zip(&backends)
            .map(|(r, tracks)| {
                let backends: Vec<BackendView> = tracks
                    .iter()
                    .zip(&r.backends)
                    .map(|(t, b)| BackendView {
                        state: t.state(),
                        last_error: None,
                        ejections: 0,
                        drained: false,
                        domain: b.domain.clone(),
                        discovered: b.discovered_from.is_some(),
                    })
                    .collect();
                let mut view = RegionView {
                    state: RegionState::Unknown,
                    held: false,
                    ramp_permille: 1000,
                    drained: false,
                    backends,
                    single_domain: None,
                };
                let up = view.healthy_backends();
                view.state = view.derive(up, r.min_healthy, false);
                view
            })
            .collect();
        Tracker {
            regions: vec![RegionTrack::default(); config.regions.len()],
            config,
            views,
            backends,
            events: VecDeque::new(),
            events_shared: Arc::new(VecDeque::new()),
            control: Arc::new(Control::default()),
        }
    }

    /// Applies operators' drains; their changes become events.
    pub fn set_control(&mut self, control: Arc<Control>, now: Instant) {
        for region in 0..self.views.len() {
            let cfg = &self.config.regions[region];
            let name = cfg.name.clone();
            let mut changes = Vec::new();
            for (bi, b) in cfg.backends.iter().enumerate() {
                let drained = control.drains(&name, b);
                let view = &mut self.views[region].backends[bi];
                if view.drained != drained {
                    view.drained = drained;
                    let (from, to) = if drained {
                        (view.state.as_str(), "drained")
                    } else {
                        ("drained", view.state.as_str())
                    };
                    changes.push((format!("{name}/{}", b.address), from, to, drained));
                }
            }
            for (subject, from, to, drained) in changes {
                let reason = if drained {
                    "drained by an operator"
                } else {
                    "undrained by an operator"
                };
                tracing::warn!(backend = %subject, from, to, reason, "backend drain changed");
                self.push_event(&subject, from, to, reason);
            }
            self.views[region].drained = control.region_drained(&name);
            self.refresh_region(region, now);
        }
        let change = match (&self.control.incident, &control.incident) {
            (None, Some(new)) => Some(("none", "posted", new.title.as_str())),
            (Some(old), Some(new)) if old != new => Some(("posted", "updated", new.title.as_str())),
            (Some(old), None) => Some(("posted", "cleared", old.title.as_str())),
            _ => None,
        };
        if let Some((from, to, title)) = change {
            let reason = title.to_owned();
            tracing::info!(from, to, title = %reason, "incident changed");
            self.push_event("incident", from, to, &reason);
        }
        self.control = control;
    }

    /// The tracker for `config`, keeping what is known of the regions (by
    /// name) and backends (by address) it shares with this one: their
    /// health, ejections, holds, drains and the events so far. Regions and
    /// backends it adds start in their `initial_state`.
    pub fn reload(&self, config: Arc<Config>, now: Instant) -> Tracker {
        let mut next = Tracker::new(Arc::clone(&config));
        next.events = self.events.clone();
        next.events_shared = Arc::clone(&self.events_shared);
        for (ri, region) in config.regions.iter().enumerate() {
            let Some(oi) = self
                .config
                .regions
                .iter()
                .position(|r| r.name == region.name)
            else {
                continue;
            };
            let old = &self.config.regions[oi];
            next.regions[ri] = self.regions[oi].clone();
            let (view, old_view) = (&mut next.views[ri], &self.views[oi]);
            view.state = old_view.state;
            view.held = old_view.held;
            view.ramp_permille = old_view.ramp_permille;
            view.drained = old_view.drained;
            view.single_domain = old_view.single_domain.clone();
            for (bi, backend) in region.backends.iter().enumerate() {
                let Some(ob) = old
                    .backends
                    .iter()
                    .position(|b| b.address == backend.address)
                else {
                    // An address DNS gives a running region is checked
                    // before it takes traffic, whatever `initial_state` says.
                    if backend.discovered_from.is_some() {
                        let (rise, fall) = (region.health.rise, region.health.fall);
                        let machine = HealthMachine::new(rise, fall, InitialState::Unknown);
                        view.backends[bi].state = machine.state();
                        next.backends[ri][bi].machine = machine;
                    }
                    continue;
                };
                let track = &self.backends[oi][ob];
                next.backends[ri][bi] = BackendTrack {
                    machine: track
                        .machine
                        .retuned(region.health.rise, region.health.fall),
                    ejection: track.ejection.clone(),
                };
                view.backends[bi] = old_view.backends[ob].clone();
                view.backends[bi].discovered = backend.discovered_from.is_some();
            }
        }
        // What the new composition of each region makes of its state.
        for region in 0..next.views.len() {
            next.refresh_region(region, now);
        }
        // The incident is the same; only drains of regions and backends
        // new to this configuration are news.
        next.control = Arc::clone(&self.control);
        next.set_control(Arc::clone(&self.control), now);
        next
    }

    /// The current view, with what the request path built from the same configuration.
    pub fn snapshot(&self, generation: &Arc<Generation>) -> Snapshot {
        debug_assert!(Arc::ptr_eq(&self.config, &generation.config));
        Snapshot {
            generation: Arc::clone(generation),
            config: Arc::clone(&self.config),
            regions: self.views.clone(),
            events: Arc::clone(&self.events_shared),
            control: Arc::clone(&self.control),
        }
    }

    /// Applies one active check result; true when the view changed.
    pub fn check(
        &mut self,
        region: usize,
        backend: usize,
        result: Result<(), ProbeError>,
        now: Instant,
    ) -> bool {
        let Some(track) = self
            .backends
            .get_mut(region)
            .and_then(|r| r.get_mut(backend))
        else {
            return false;
        };
        let before = track.state();
        track.machine.observe(result.is_ok());
        let returned = result.is_ok() && track.ejection.check_passed(now);
        let after = track.state();
        let error = result.err().map(|e| e.to_string());
        let view = &mut self.views[region].backends[backend];
        let mut changed = view.last_error != error;
        view.last_error = error.clone();
        if before != after {
            view.state = after;
            let reason = match (error, returned) {
                (Some(e), _) => e,
                (None, true) => "ejection time over and health check passed".to_owned(),
                (None, false) => "health check passed".to_owned(),
            };
            self.backend_event(region, backend, before, after, &reason);
            self.refresh_region(region, now);
            changed = true;
        }
        changed
    }

    /// Ejects a backend after a run of failures on live traffic, unless it is
    /// not up or the region's `max_ejected_percent` forbids; true when it did.
    pub fn eject(&mut self, region: usize, backend: usize, failure: Failure, now: Instant) -> bool {
        let Some(cfg) = self.config.regions.get(region) else {
            return false;
        };
        let Some(tracks) = self.backends.get(region) else {
            return false;
        };
        if tracks
            .get(backend)
            .is_none_or(|t| t.state() != BackendState::Up)
        {
            return false;
        }
        let ejected = tracks.iter().filter(|t| t.ejection.is_ejected()).count();
        let outlier = &cfg.outlier;
        if !may_eject(ejected, tracks.len(), outlier.max_ejected_percent) {
            tracing::warn!(
                backend = %format_args!("{}/{}", cfg.name, cfg.backends[backend].address),
                ejected,
                max_ejected_percent = outlier.max_ejected_percent,
                "not ejected: the region's ejection cap is reached"
            );
            return false;
        }
        let track = &mut self.backends[region][backend];
        let time = track
            .ejection
            .eject(now, outlier.base_ejection_time, outlier.max_ejection_time);
        let streak = track.ejection.streak();
        let view = &mut self.views[region].backends[backend];
        view.state = BackendState::Ejected;
        view.ejections = streak;
        let reason = format!(
            "{} consecutive failures on live traffic, the last of them {failure}; ejected for {} (ejection {streak} in a row)",
            outlier.consecutive_failures,
            humantime_serde::re::humantime::format_duration(time),
        );
        self.backend_event(
            region,
            backend,
            BackendState::Up,
            BackendState::Ejected,
            &reason,
        );
        self.refresh_region(region, now);
        true
    }

    /// Ends fail-back holds and advances slow starts due at `now`; true when
    /// the view changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        let mut changed = false;
        let config = Arc::clone(&self.config);
        for (region, cfg) in config.regions.iter().enumerate() {
            let track = &mut self.regions[region];
            if track.hold_until.is_some_and(|t| now >= t) {
                track.hold_until = None;
                track.was_down = false;
                self.views[region].held = false;
                if !cfg.slow_start.is_zero() {
                    track.start_ramp(now, cfg.slow_start);
                    self.views[region].ramp_permille = 0;
                }
                let reason = format!(
                    "up for the whole fail-back hold of {}; its users return",
                    humantime_serde::re::humantime::format_duration(cfg.failback_hold)
                );
                let name = cfg.name.clone();
                tracing::info!(region = %name, %reason, "fail-back");
                self.push_event(&name, "held", "serving", &reason);
                changed = true;
            }
            let track = &mut self.regions[region];
            if let Some(from) = track.ramp_from {
                let share = permille(now.saturating_duration_since(from), cfg.slow_start);
                if share >= 1000 {
                    track.stop_ramp();
                } else {
                    track.ramp_next = Some(now + ramp_step(cfg.slow_start));
                }
                if self.views[region].ramp_permille != share {
                    self.views[region].ramp_permille = share;
                    changed = true;
                }
            }
        }
        changed
    }

    /// When [`Tracker::tick`] has work next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.regions
            .iter()
            .filter_map(|t| match (t.hold_until, t.ramp_next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            })
            .min()
    }

    /// Records the failure domain a passing check of `backend` reported
    /// (or the configured one when it reported none); true when the view
    /// changed.
    pub fn report_domain(
        &mut self,
        region: usize,
        backend: usize,
        reported: Option<String>,
        now: Instant,
    ) -> bool {
        let Some(cfg) = self
            .config
            .regions
            .get(region)
            .and_then(|r| r.backends.get(backend))
        else {
            return false;
        };
        let domain = reported.or_else(|| cfg.domain.clone());
        let view = &mut self.views[region].backends[backend];
        if view.domain == domain {
            return false;
        }
        view.domain = domain;
        self.refresh_region(region, now);
        true
    }

    /// Warns when every backend taking traffic in `region` shares one
    /// failure domain: the single point of failure of the post-mortem.
    fn refresh_domain_warning(&mut self, region: usize) {
        let view = &self.views[region];
        let single = single_failure_domain(view);
        if single == view.single_domain {
            return;
        }
        let name = self.config.regions[region].name.clone();
        let (from, to, reason) = match &single {
            Some(domain) => {
                let reason = format!(
                    "all {} backends taking traffic are in failure domain {domain}: one failure there takes the region down",
                    view.healthy_backends()
                );
                tracing::warn!(region = %name, %domain, "{reason}");
                ("spread", "one_failure_domain", reason)
            }
            None => {
                let reason =
                    "backends taking traffic are spread over failure domains again".to_owned();
                tracing::info!(region = %name, "{reason}");
                ("one_failure_domain", "spread", reason)
            }
        };
        self.views[region].single_domain = single;
        self.push_event(&name, from, to, &reason);
    }

    fn refresh_region(&mut self, region: usize, now: Instant) {
        self.refresh_domain_warning(region);
        let cfg = &self.config.regions[region];
        let view = &mut self.views[region];
        let up = view.healthy_backends();
        let before = view.state;
        let after = view.derive(up, cfg.min_healthy, view.drained);
        if after == before {
            return;
        }
        view.state = after;
        let track = &mut self.regions[region];
        let mut reason = match (before, after) {
            (_, RegionState::Drained) => "drained by an operator".to_owned(),
            (RegionState::Drained, _) => format!(
                "undrained by an operator; {up} of {} backends up",
                view.backends.len()
            ),
            _ => {
                let drained = view.backends.iter().filter(|b| b.drained).count();
                if view.backends.is_empty() {
                    "no backend: its DNS names have no address".to_owned()
                } else if drained > 0 {
                    format!(
                        "{up} of {} backends take traffic ({drained} drained)",
                        view.backends.len()
                    )
                } else {
                    format!("{up} of {} backends up", view.backends.len())
                }
            }
        };
        if !after.serves() {
            // Down because its backends are drained is an operator's
            // decision, not a failure: undraining them is not a recovery to hold.
            if after == RegionState::Down && view.health(cfg.min_healthy) == RegionState::Down {
                track.was_down = true;
            }
            track.hold_until = None;
            track.stop_ramp();
            view.held = false;
            view.ramp_permille = 1000;
        } else if !before.serves() && track.was_down {
            if !cfg.failback_hold.is_zero() {
                track.hold_until = Some(now + cfg.failback_hold);
                view.held = true;
                reason.push_str(&format!(
                    "; its users return after a fail-back hold of {}",
                    humantime_serde::re::humantime::format_duration(cfg.failback_hold)
                ));
            } else {
                track.was_down = false;
                if !cfg.slow_start.is_zero() {
                    track.start_ramp(now, cfg.slow_start);
                    view.ramp_permille = 0;
                }
            }
        } else if before == RegionState::Drained && after.serves() && !cfg.slow_start.is_zero() {
            // An undrained region's caches are cold too: its users return gradually.
            track.start_ramp(now, cfg.slow_start);
            view.ramp_permille = 0;
        }
        let name = cfg.name.clone();
        if after.serves() {
            tracing::info!(region = %name, from = before.as_str(), to = after.as_str(), %reason, "region state changed");
        } else {
            tracing::warn!(region = %name, from = before.as_str(), to = after.as_str(), %reason, "region state changed");
        }
        self.push_event(&name, before.as_str(), after.as_str(), &reason);
    }

    fn backend_event(
        &mut self,
        region: usize,
        backend: usize,
        from: BackendState,
        to: BackendState,
        reason: &str,
    ) {
        let cfg = &self.config.regions[region];
        let subject = format!("{}/{}", cfg.name, cfg.backends[backend].address);
        if to == BackendState::Up {
            tracing::info!(backend = %subject, from = from.as_str(), to = to.as_str(), %reason, "backend state changed");
        } else {
            tracing::warn!(backend = %subject, from = from.as_str(), to = to.as_str(), %reason, "backend state changed");
        }
        self.push_event(&subject, from.as_str(), to.as_str(), reason);
    }

    fn push_event(&mut self, subject: &str, from: &'static str, to: &'static str, reason: &str) {
        push_event(&mut self.events, subject, from, to, reason);
        self.events_shared = Arc::new(self.events.clone());
    }
}

/// The one failure domain of a region's backends taking traffic, when
/// there are at least two of them and they all report the same one.
pub fn single_failure_domain(view: &RegionView) -> Option<String> {
    let mut serving = view.backends.iter().filter(|b| b.takes_traffic());
    let first = serving.next()?.domain.clone()?;
    let mut count = 1;
    for b in serving {
        if b.domain.as_deref() != Some(first.as_str()) {
            return None;
        }
        count += 1;
    }
    (count >= 2).then_some(first)
}

fn permille(elapsed: Duration, total: Duration) -> u16 {
    if total.is_zero() || elapsed >= total {
        return 1000;
    }
    (elapsed.as_nanos() * 1000 / total.as_nanos()) as u16
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
        at: humantime_serde::re::humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        subject: subject.to_owned(),
        from,
        to,
        reason: reason.to_owned(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use BackendState::{Down, Ejected, Unknown, Up};

    const PASS: Result<(), ProbeError> = Ok(());

    fn fail() -> Result<(), ProbeError> {
        Err(ProbeError::Status(503))
    }

    fn tracker(extra: &str, backends: usize) -> Tracker {
        let list: Vec<String> = (1..=backends)
            .map(|i| format!("\"http://10.0.0.{i}:80\""))
            .collect();
        let text = format!(
            "[[region]]\nname = \"us\"\nfailover = [\"eu\"]\nbackends = [{}]\n{extra}\n\
             [[region]]\nname = \"eu\"\nbackends = [\"http://10.1.0.1:80\"]\n",
            list.join(", ")
        );
        Tracker::new(Arc::new(Config::parse("t.toml", &text).unwrap()))
    }

    fn tracker_with(backends: usize, edit: impl FnOnce(&mut Config)) -> Tracker {
        let mut t = tracker("", backends);
        let mut config = (*t.config).clone();
        edit(&mut config);
        t = Tracker::new(Arc::new(config));
        t
    }

    fn states(t: &Tracker, region: usize) -> Vec<BackendState> {
        t.views[region].backends.iter().map(|b| b.state).collect()
    }

    fn last_event(t: &Tracker) -> (String, &'static str, &'static str) {
        let e = t.events.back().expect("an event");
        (e.subject.clone(), e.from, e.to)
    }

    #[test]
    fn region_states_follow_checks() {
        let mut t = tracker("", 2);
        let now = Instant::now();
        assert_eq!(t.views[0].state, RegionState::Unknown);
        assert!(t.check(0, 0, PASS, now));
        assert_eq!(t.views[0].state, RegionState::Degraded);
        t.check(0, 1, PASS, now);
        assert_eq!(t.views[0].state, RegionState::Healthy);
        t.check(0, 0, fail(), now);
        assert_eq!(t.views[0].state, RegionState::Healthy, "fall is 2");
        t.check(0, 0, fail(), now);
        assert_eq!(states(&t, 0), vec![Down, Up]);
        assert_eq!(t.views[0].state, RegionState::Degraded);
        assert_eq!(last_event(&t), ("us".into(), "healthy", "degraded"));
        t.check(0, 1, fail(), now);
        t.check(0, 1, fail(), now);
        assert_eq!(t.views[0].state, RegionState::Down);
    }

    #[test]
    fn a_repeated_failure_with_the_same_error_changes_nothing() {
        let mut t = tracker("", 1);
        let now = Instant::now();
        assert!(t.check(0, 0, fail(), now));
        assert!(!t.check(0, 0, fail(), now));
    }

    #[test]
    fn initial_state_up_serves_before_any_check() {
        let t = tracker_with(2, |c| {
            c.regions[0].health.initial_state = crate::config::InitialState::Up
        });
        assert_eq!(t.views[0].state, RegionState::Healthy);
        assert_eq!(states(&t, 0), vec![Up, Up]);
        assert_eq!(states(&t, 1), vec![Unknown]);
    }

    #[test]
    fn min_healthy_decides_degraded() {
        let mut t = tracker_with(3, |c| c.regions[0].min_healthy = Some(2));
        let now = Instant::now();
        t.check(0, 0, PASS, now);
        assert_eq!(t.views[0].state, RegionState::Degraded);
        t.check(0, 1, PASS, now);
        assert_eq!(t.views[0].state, RegionState::Healthy);
        t.check(0, 2, fail(), now);
        assert_eq!(t.views[0].state, RegionState::Healthy);
    }

    #[test]
    fn ejection_takes_a_backend_out_until_a_check_passes_after_its_time() {
        let mut t = tracker("", 2);
        let now = Instant::now();
        t.check(0, 0, PASS, now);
        t.check(0, 1, PASS, now);
        assert!(t.eject(0, 0, Failure::Connect, now));
        assert_eq!(states(&t, 0), vec![Ejected, Up]);
        assert_eq!(t.views[0].state, RegionState::Degraded);
        assert_eq!(last_event(&t).2, "degraded");
        assert!(t
            .events
            .iter()
            .any(|e| e.to == "ejected" && e.subject == "us/10.0.0.1:80"));
        assert!(!t.eject(0, 0, Failure::Connect, now), "already ejected");
        assert!(
            !t.eject(0, 1, Failure::Connect, now),
            "the cap of 50% keeps one of two"
        );
        t.check(0, 0, PASS, now + Duration::from_secs(4));
        assert_eq!(states(&t, 0), vec![Ejected, Up], "5 s not over");
        t.check(0, 0, PASS, now + Duration::from_secs(5));
        assert_eq!(states(&t, 0), vec![Up, Up]);
        assert_eq!(t.views[0].state, RegionState::Healthy);
        // The next ejection soon after lasts twice as long.
        let later = now + Duration::from_secs(6);
        assert!(t.eject(0, 0, Failure::Status(503), later));
        assert_eq!(t.views[0].backends[0].ejections, 2);
        t.check(0, 0, PASS, later + Duration::from_secs(9));
        assert_eq!(states(&t, 0)[0], Ejected);
        t.check(0, 0, PASS, later + Duration::from_secs(10));
        assert_eq!(states(&t, 0)[0], Up);
    }

    #[test]
    fn an_ejected_backend_whose_checks_fail_stays_out_until_it_rises() {
        let mut t = tracker("", 1);
        let now = Instant::now();
        t.check(0, 0, PASS, now);
        assert!(t.eject(0, 0, Failure::Timeout, now));
        assert_eq!(
            t.views[0].state,
            RegionState::Down,
            "a single backend may be ejected"
        );
        t.check(0, 0, fail(), now + Duration::from_secs(6));
        t.check(0, 0, fail(), now + Duration::from_secs(7));
        assert_eq!(states(&t, 0), vec![Ejected]);
        t.check(0, 0, PASS, now + Duration::from_secs(8));
        assert_eq!(
            states(&t, 0),
            vec![Down],
            "ejection over, but down by its checks"
        );
        t.check(0, 0, PASS, now + Duration::from_secs(9));
        assert_eq!(states(&t, 0), vec![Up]);
    }

    #[test]
    fn only_up_backends_are_ejected() {
        let mut t = tracker("", 1);
        let now = Instant::now();
        assert!(!t.eject(0, 0, Failure::Connect, now), "unknown");
        t.check(0, 0, fail(), now);
        assert!(!t.eject(0, 0, Failure::Connect, now), "down");
        assert!(!t.eject(5, 0, Failure::Connect, now), "no such region");
        assert!(!t.eject(0, 5, Failure::Connect, now), "no such backend");
    }

    fn bring_up(t: &mut Tracker, now: Instant) {
        t.check(0, 0, PASS, now);
        t.check(0, 0, PASS, now);
    }

    fn take_down(t: &mut Tracker, now: Instant) {
        t.check(0, 0, fail(), now);
        t.check(0, 0, fail(), now);
    }

    #[test]
    fn a_recovered_region_is_held_for_the_fail_back_hold() {
        let mut t = tracker("", 1);
        let t0 = Instant::now();
        bring_up(&mut t, t0);
        assert!(!t.views[0].held, "no hold at start");
        assert_eq!(t.next_deadline(), None);
        take_down(&mut t, t0);
        assert_eq!(t.views[0].state, RegionState::Down);
        bring_up(&mut t, t0 + Duration::from_secs(1));
        assert_eq!(t.views[0].state, RegionState::Healthy);
        assert!(t.views[0].held);
        let due = t0 + Duration::from_secs(6);
        assert_eq!(t.next_deadline(), Some(due));
        assert!(!t.tick(due - Duration::from_millis(1)));
        assert!(t.views[0].held);
        assert!(t.tick(due));
        assert!(!t.views[0].held);
        assert_eq!(last_event(&t), ("us".into(), "held", "serving"));
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn a_flapping_region_never_finishes_its_hold() {
        let mut t = tracker("", 1);
        let t0 = Instant::now();
        bring_up(&mut t, t0);
        let mut now = t0;
        for _ in 0..10 {
            take_down(&mut t, now);
            now += Duration::from_secs(1);
            bring_up(&mut t, now);
            assert!(t.views[0].held);
            now += Duration::from_secs(1);
            t.tick(now);
            assert!(t.views[0].held, "held while it flaps");
        }
        now += Duration::from_secs(5);
        t.tick(now);
        assert!(!t.views[0].held, "released once up for the whole hold");
    }

    #[test]
    fn a_region_down_from_the_start_is_held_when_it_comes_up() {
        let mut t = tracker("", 1);
        let t0 = Instant::now();
        t.check(0, 0, fail(), t0);
        assert_eq!(t.views[0].state, RegionState::Down);
        bring_up(&mut t, t0);
        assert!(t.views[0].held);
    }

    #[test]
    fn zero_hold_returns_at_once_and_slow_start_ramps() {
        let mut t = tracker_with(1, |c| {
            c.regions[0].failback_hold = Duration::ZERO;
            c.regions[0].slow_start = Duration::from_secs(10);
        });
        let t0 = Instant::now();
        bring_up(&mut t, t0);
        assert_eq!(t.views[0].ramp_permille, 1000, "no ramp at start");
        take_down(&mut t, t0);
        bring_up(&mut t, t0);
        assert!(!t.views[0].held);
        assert_eq!(t.views[0].ramp_permille, 0);
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(500)));
        // Check results in between do not move the next step.
        t.check(0, 0, PASS, t0 + Duration::from_millis(300));
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(500)));
        t.tick(t0 + Duration::from_millis(500));
        assert_eq!(t.views[0].ramp_permille, 50);
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(1000)));
        t.tick(t0 + Duration::from_secs(5));
        assert_eq!(t.views[0].ramp_permille, 500);
        t.tick(t0 + Duration::from_secs(11));
        assert_eq!(t.views[0].ramp_permille, 1000);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn slow_start_follows_the_hold() {
        let mut t = tracker_with(1, |c| {
            c.regions[0].failback_hold = Duration::from_secs(2);
            c.regions[0].slow_start = Duration::from_secs(4);
        });
        let t0 = Instant::now();
        bring_up(&mut t, t0);
        take_down(&mut t, t0);
        bring_up(&mut t, t0);
        assert!(t.views[0].held);
        t.tick(t0 + Duration::from_secs(2));
        assert!(!t.views[0].held);
        assert_eq!(t.views[0].ramp_permille, 0);
        t.tick(t0 + Duration::from_secs(3));
        assert_eq!(t.views[0].ramp_permille, 250);
        // Going down ends the ramp; the next recovery is held again.
        take_down(&mut t, t0 + Duration::from_secs(3));
        assert_eq!(t.views[0].ramp_permille, 1000);
        bring_up(&mut t, t0 + Duration::from_secs(4));
        assert!(t.views[0].held);
    }

    fn control(edit: impl FnOnce(&mut Control)) -> Arc<Control> {
        let mut c = Control::default();
        edit(&mut c);
        Arc::new(c)
    }

    #[test]
    fn a_drained_region_is_drained_whatever_its_health_and_comes_back_on_undrain() {
        let mut t = tracker("", 1);
        let t0 = Instant::now();
        bring_up(&mut t, t0);
        assert_eq!(t.views[0].state, RegionState::Healthy);
        t.set_control(
            control(|c| {
                c.drained_regions.insert("us".into());
            }),
            t0,
        );
        assert_eq!(t.views[0].state, RegionState::Drained);
        assert!(t.control.region_drained("us"));
        assert_eq!(last_event(&t), ("us".into(), "healthy", "drained"));
        // Health checks go on underneath and are seen once undrained.
        take_down(&mut t, t0);
        assert_eq!(t.views[0].state, RegionState::Drained);
        assert_eq!(t.views[0].health(None), RegionState::Down);
        bring_up(&mut t, t0);
        t.set_control(control(|_| {}), t0);
        assert_eq!(t.views[0].state, RegionState::Healthy);
        assert!(!t.views[0].held, "an undrain is not a recovery to hold");
        assert_eq!(last_event(&t), ("us".into(), "drained", "healthy"));
    }

    #[test]
    fn a_drained_backend_takes_no_traffic_and_the_region_state_follows() {
        let mut t = tracker("", 2);
        let t0 = Instant::now();
        for b in 0..2 {
            t.check(0, b, PASS, t0);
            t.check(0, b, PASS, t0);
        }
        let address = t.config.regions[0].backends[1].address.clone();
        t.set_control(
            control(|c| {
                c.drained_backends.insert(crate::state::BackendRef {
                    region: "us".into(),
                    backend: address.clone(),
                });
            }),
            t0,
        );
        let view = &t.views[0];
        assert!(view.backends[1].drained && !view.backends[1].takes_traffic());
        assert_eq!(view.backends[1].state, Up, "its health is still known");
        assert_eq!(view.healthy_backends(), 1);
        assert_eq!(view.state, RegionState::Degraded);
        assert!(t
            .events
            .iter()
            .any(|e| e.subject == format!("us/{address}") && e.from == "up" && e.to == "drained"));
        t.set_control(control(|_| {}), t0);
        assert_eq!(t.views[0].state, RegionState::Healthy);
        assert_eq!(last_event(&t).2, "healthy");
    }

    #[test]
    fn a_region_down_only_by_drained_backends_is_not_held_when_they_return() {
        let mut t = tracker_with(1, |c| c.regions[0].failback_hold = Duration::from_secs(5));
        let t0 = Instant::now();
        bring_up(&mut t, t0);
        let address = t.config.regions[0].backends[0].address.clone();
        let drained = control(|c| {
            c.drained_backends.insert(crate::state::BackendRef {
                region: "us".into(),
                backend: address.clone(),
            });
        });
        t.set_control(drained, t0);
        assert_eq!(t.views[0].state, RegionState::Down);
        assert_eq!(
            t.views[0].health(None),
            RegionState::Healthy,
            "its checks pass"
        );
        let last = t.events.back().unwrap();
        assert_eq!(last.reason, "0 of 1 backends take traffic (1 drained)");
        t.set_control(control(|_| {}), t0);
        assert_eq!(t.views[0].state, RegionState::Healthy);
        assert!(!t.views[0].held, "an undrain is not a recovery");
    }

    #[test]
    fn an_undrained_region_slow_starts_and_incidents_are_events() {
        let mut t = tracker_with(1, |c| c.regions[0].slow_start = Duration::from_secs(4));
        let t0 = Instant::now();
        bring_up(&mut t, t0);
        t.set_control(
            control(|c| {
                c.drained_regions.insert("us".into());
            }),
            t0,
        );
        t.set_control(control(|_| {}), t0 + Duration::from_secs(1));
        assert_eq!(t.views[0].ramp_permille, 0, "its users return gradually");
        t.tick(t0 + Duration::from_secs(3));
        assert_eq!(t.views[0].ramp_permille, 500);
        let incident = |title: &str| {
            control(|c| {
                c.incident = Some(crate::state::Incident {
                    title: title.into(),
                    message: "m".into(),
                    link: None,
                })
            })
        };
        t.set_control(incident("a"), t0);
        assert_eq!(last_event(&t), ("incident".into(), "none", "posted"));
        t.set_control(incident("b"), t0);
        assert_eq!(last_event(&t), ("incident".into(), "posted", "updated"));
        t.set_control(control(|_| {}), t0);
        assert_eq!(last_event(&t), ("incident".into(), "posted", "cleared"));
    }

    #[test]
    fn an_address_found_by_dns_later_starts_unknown_even_with_initial_state_up() {
        let up = |c: &mut Config| {
            c.regions[0].health.initial_state = crate::config::InitialState::Up;
        };
        let t = tracker_with(1, up);
        assert_eq!(states(&t, 0), vec![Up]);
        let template = Config::parse(
            "t.toml",
            "[[region]]\nname = \"us\"\nbackends = [\"http://web.svc:80\"]\n[[region]]\nname = \"eu\"\nbackends = [\"http://10.1.0.1:80\"]\n",
        )
        .unwrap();
        let ips = ["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        let (mut config, _) = crate::discovery::expand(
            &template,
            &std::collections::BTreeMap::from([("web.svc".to_owned(), ips.to_vec())]),
        );
        up(&mut config);
        let r = t.reload(Arc::new(config), Instant::now());
        assert_eq!(
            states(&r, 0),
            vec![Up, Unknown],
            "10.0.0.1 keeps its health, 10.0.0.2 is checked first"
        );
    }

    #[test]
    fn a_reload_keeps_what_is_known_of_the_regions_and_backends_it_keeps() {
        let mut t = tracker("", 2);
        let t0 = Instant::now();
        for b in 0..2 {
            t.check(0, b, PASS, t0);
        }
        t.check(1, 0, fail(), t0);
        let kept = t.config.regions[0].backends[0].address.clone();
        t.set_control(
            control(|c| {
                c.drained_regions.insert("ap".into());
                c.incident = Some(crate::state::Incident {
                    title: "t".into(),
                    message: "m".into(),
                    link: None,
                });
            }),
            t0,
        );
        let events_before = t.events.len();
        // us keeps its first backend and gets a new one; eu goes; ap comes,
        // and was drained by name before it existed.
        let text = format!(
            "[[region]]\nname = \"ap\"\nbackends = [\"http://10.2.0.1:80\"]\n\
             [[region]]\nname = \"us\"\nbackends = [\"http://{kept}\", \"http://10.0.0.9:80\"]\n\
             [region.health]\nrise = 5\n"
        );
        let config = Arc::new(Config::parse("t.toml", &text).unwrap());
        let mut r = t.reload(config, t0);
        assert_eq!(
            r.views[1].backends[0].state, Up,
            "a kept backend keeps its health"
        );
        assert_eq!(
            r.views[1].backends[1].state, Unknown,
            "a new one starts unknown"
        );
        assert_eq!(r.views[1].state, RegionState::Degraded);
        assert_eq!(
            r.views[0].state,
            RegionState::Drained,
            "a drain applies to a region that comes back"
        );
        assert!(r.control.incident.is_some());
        let news: Vec<_> = r
            .events
            .iter()
            .skip(events_before)
            .map(|e| (e.subject.as_str(), e.from, e.to))
            .collect();
        assert_eq!(
            news,
            vec![("us", "healthy", "degraded"), ("ap", "unknown", "drained")],
            "only real changes are events"
        );
        // The kept backend's machine has the new thresholds and its streak.
        for _ in 0..2 {
            r.check(1, 0, fail(), t0);
        }
        assert_eq!(r.views[1].backends[0].state, Down);
        for _ in 0..4 {
            r.check(1, 0, PASS, t0);
        }
        assert_eq!(r.views[1].backends[0].state, Down, "rise is now 5");
        r.check(1, 0, PASS, t0);
        assert_eq!(r.views[1].backends[0].state, Up);
    }

    #[test]
    fn one_failure_domain_needs_two_serving_backends_all_in_it() {
        let b = |state, domain: Option<&str>| BackendView {
            state,
            last_error: None,
            ejections: 0,
            drained: false,
            domain: domain.map(str::to_owned),
            discovered: false,
        };
        let region = |backends| RegionView {
            state: RegionState::Healthy,
            held: false,
            ramp_permille: 1000,
            drained: false,
            backends,
            single_domain: None,
        };
        let one = |v: Vec<BackendView>| single_failure_domain(&region(v));
        assert_eq!(
            one(vec![b(Up, Some("n1")), b(Up, Some("n1"))]).as_deref(),
            Some("n1")
        );
        assert_eq!(one(vec![b(Up, Some("n1")), b(Up, Some("n2"))]), None);
        assert_eq!(
            one(vec![b(Up, Some("n1")), b(Up, None)]),
            None,
            "unknown is not the same"
        );
        assert_eq!(one(vec![b(Up, Some("n1"))]), None, "one backend alone");
        assert_eq!(
            one(vec![
                b(Up, Some("n1")),
                b(Up, Some("n1")),
                b(Down, Some("n2"))
            ])
            .as_deref(),
            Some("n1"),
            "only backends taking traffic count"
        );
        let mut drained = b(Up, Some("n2"));
        drained.drained = true;
        assert_eq!(
            one(vec![b(Up, Some("n1")), b(Up, Some("n1")), drained]).as_deref(),
            Some("n1")
        );
        assert_eq!(one(vec![b(Ejected, Some("n1")), b(Up, Some("n1"))]), None);
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
