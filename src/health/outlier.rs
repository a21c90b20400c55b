//! Passive health checking: live requests count consecutive failures per
//! backend on the request path (one atomic each, no lock), and a backend that
//! reaches the threshold is ejected for a time that grows with each ejection
//! in a row, as Envoy's outlier detection does.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Config, FailureKinds};

/// How a live request failed on a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be opened.
    Connect,
    /// The connection closed before a response head.
    Reset,
    /// No response head in time, or a hedge answered first elsewhere.
    Timeout,
    /// The backend answered with this 5xx status.
    Status(u16),
}

impl Failure {
    /// Whether `kinds` counts this failure.
    pub fn counted_by(self, kinds: &FailureKinds) -> bool {
        match self {
            Failure::Connect => kinds.connect,
            Failure::Reset => kinds.reset,
            Failure::Timeout => kinds.timeout,
            Failure::Status(502..=504) => kinds.gateway || kinds.server_error,
            Failure::Status(500..=599) => kinds.server_error,
            Failure::Status(_) => false,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect => f.write_str("connection failures"),
            Failure::Reset => f.write_str("connections reset"),
            Failure::Timeout => f.write_str("timeouts"),
            Failure::Status(s) => write!(f, "{s} answers"),
        }
    }
}

/// Consecutive counted failures of every backend, indexed like the
/// configuration's regions and backends.
#[derive(Debug)]
pub struct PassiveCounters {
    counts: Box<[Box<[AtomicU32]>]>,
    thresholds: Box<[u32]>,
    kinds: Box<[FailureKinds]>,
}

impl PassiveCounters {
    /// Zeroed counters for every backend of `config`.
    pub fn new(config: &Config) -> Self {
        PassiveCounters {
            counts: config
                .regions
                .iter()
                .map(|r| r.backends.iter().map(|_| AtomicU32::new(0)).collect())
                .collect(),
            thresholds: config
                .regions
                .iter()
                .map(|r| r.outlier.consecutive_failures)
                .collect(),
            kinds: config.regions.iter().map(|r| r.outlier.failures).collect(),
        }
    }

    /// Records a request that went well: the run of failures is over.
    pub fn success(&self, region: usize, backend: usize) {
        if let Some(c) = self.counter(region, backend) {
            // Reading first keeps the common case free of writes to a shared line.
            if c.load(Ordering::Relaxed) != 0 {
                c.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Records a failure; true when it completes a run of the region's
    /// `consecutive_failures`, which starts a new run.
    pub fn failure(&self, region: usize, backend: usize, failure: Failure) -> bool {
        let threshold = self.thresholds.get(region).copied().unwrap_or(0);
        let counted = self
            .kinds
            .get(region)
            .is_some_and(|k| failure.counted_by(k));
        let Some(c) = self.counter(region, backend) else {
            return false;
        };
        if threshold == 0 || !counted {
            return false;
        }
        let n = c.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= threshold {
            c.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    fn counter(&self, region: usize, backend: usize) -> Option<&AtomicU32> {
        self.counts.get(region).and_then(|r| r.get(backend))
    }
}

/// Ejection bookkeeping of one backend (pure; time is passed in).
///
/// The n-th ejection in a row lasts n × `base`, at most `max`. Each `base`
/// of good service since the last ejection ended forgives one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ejection {
    streak: u32,
    until: Option<Instant>,
    ended: Option<Instant>,
}

impl Ejection {
    /// Whether the backend is ejected now.
    pub fn is_ejected(&self) -> bool {
        self.until.is_some()
    }

    /// Ejections in the current streak.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// When the current ejection may end.
    pub fn until(&self) -> Option<Instant> {
        self.until
    }

    /// Ejects the backend at `now`; returns for how long.
    pub fn eject(&mut self, now: Instant, base: Duration, max: Duration) -> Duration {
        if let Some(ended) = self.ended {
            let good = now.saturating_duration_since(ended);
            let forgiven = if base.is_zero() {
                u32::MAX
            } else {
                u32::try_from(good.as_nanos() / base.as_nanos()).unwrap_or(u32::MAX)
            };
            self.streak = self.streak.saturating_sub(forgiven);
        }
        self.streak = self.streak.saturating_add(1);
        let time = base.saturating_mul(self.streak).min(max);
        self.until = Some(now + time);
        time
    }

    /// A passing active check at `now` ends an ejection whose time is over;
    /// true when it did.
    pub fn check_passed(&mut self, now: Instant) -> bool {
        match self.until {
            Some(until) if now >= until => {
                self.until = None;
                self.ended = Some(now);
                true
            }
            _ => false,
        }
    }
}

/// Whether one more of `total` backends may be ejected while `ejected`
/// already are: at most `max_percent` of them, but one always may (a region
/// of one backend would otherwise never eject), unless `max_percent` is 0.
pub fn may_eject(ejected: usize, total: usize, max_percent: u8) -> bool {
    if max_percent == 0 || ejected >= total {
        return false;
    }
    ejected == 0 || (ejected + 1) * 100 <= total * usize::from(max_percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(5);
    const MAX: Duration = Duration::from_secs(60);

    #[test]
    fn ejections_in_a_row_grow_up_to_the_cap() {
        let t0 = Instant::now();
        let mut e = Ejection::default();
        let mut now = t0;
        let mut times = Vec::new();
        for _ in 0..15 {
            let time = e.eject(now, BASE, MAX);
            times.push(time.as_secs());
            assert!(e.is_ejected());
            assert!(
                !e.check_passed(now + time - Duration::from_millis(1)),
                "not before its time"
            );
            now += time;
            assert!(e.check_passed(now));
            assert!(!e.is_ejected());
        }
        assert_eq!(&times[..4], &[5, 10, 15, 20]);
        assert_eq!(*times.last().unwrap(), 60);
    }

    #[test]
    fn good_service_forgives_ejections() {
        let t0 = Instant::now();
        let mut e = Ejection::default();
        let mut now = t0;
        for _ in 0..3 {
            now += e.eject(now, BASE, MAX);
            e.check_passed(now);
        }
        assert_eq!(e.streak(), 3);
        // 10 s of good service forgive two steps: the next ejection is the second.
        now += Duration::from_secs(10);
        assert_eq!(e.eject(now, BASE, MAX), Duration::from_secs(10));
        now += Duration::from_secs(10);
        e.check_passed(now);
        now += Duration::from_secs(3600);
        assert_eq!(
            e.eject(now, BASE, MAX),
            BASE,
            "long good service forgives all"
        );
    }

    #[test]
    fn counters_eject_on_the_threshold_and_reset_on_success() {
        let text = "[[region]]\nname = \"us\"\nbackends = [\"http://10.0.0.1:80\", \"http://10.0.0.2:80\"]\n";
        let mut config = Config::parse("t.toml", text).unwrap();
        config.regions[0].outlier.consecutive_failures = 3;
        let c = PassiveCounters::new(&config);
        assert!(!c.failure(0, 0, Failure::Connect));
        assert!(!c.failure(0, 0, Failure::Reset));
        c.success(0, 0);
        assert!(!c.failure(0, 0, Failure::Timeout));
        assert!(!c.failure(0, 0, Failure::Status(503)));
        assert!(!c.failure(0, 1, Failure::Connect), "counted per backend");
        assert!(c.failure(0, 0, Failure::Status(502)), "third in a row");
        assert!(!c.failure(0, 0, Failure::Connect), "a new run starts");
        // Not counted by default: a 500 is often one request's own bug.
        for _ in 0..10 {
            assert!(!c.failure(0, 1, Failure::Status(500)));
        }
        assert!(
            !c.failure(9, 9, Failure::Connect),
            "unknown backends are ignored"
        );
    }

    #[test]
    fn passive_checks_can_be_off() {
        let text = "[[region]]\nname = \"us\"\nbackends = [\"http://10.0.0.1:80\"]\n";
        let mut config = Config::parse("t.toml", text).unwrap();
        config.regions[0].outlier.consecutive_failures = 0;
        let c = PassiveCounters::new(&config);
        assert!((0..100).all(|_| !c.failure(0, 0, Failure::Connect)));
    }

    #[test]
    fn failure_kinds_select_what_counts() {
        let none = FailureKinds {
            connect: false,
            reset: false,
            timeout: false,
            gateway: false,
            server_error: false,
        };
        let all = [
            Failure::Connect,
            Failure::Reset,
            Failure::Timeout,
            Failure::Status(503),
            Failure::Status(500),
        ];
        assert!(all.iter().all(|f| !f.counted_by(&none)));
        let five = FailureKinds {
            server_error: true,
            ..none
        };
        assert!(Failure::Status(500).counted_by(&five));
        assert!(Failure::Status(503).counted_by(&five));
        assert!(!Failure::Status(404).counted_by(&five));
        let gateway = FailureKinds {
            gateway: true,
            ..none
        };
        assert!(Failure::Status(504).counted_by(&gateway));
        assert!(!Failure::Status(501).counted_by(&gateway));
    }

    #[test]
    fn the_ejected_share_is_capped_but_one_may_always_go() {
        assert!(may_eject(0, 1, 50));
        assert!(!may_eject(1, 1, 100));
        assert!(may_eject(0, 2, 10));
        assert!(!may_eject(1, 2, 50));
        assert!(may_eject(1, 2, 100));
        assert!(may_eject(1, 4, 50));
        assert!(!may_eject(2, 4, 50));
        assert!(!may_eject(0, 4, 0));
    }
}
