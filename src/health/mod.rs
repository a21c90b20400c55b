//! Backend health: the pure per-backend state machine with rise/fall
//! hysteresis ([`HealthMachine`]), active probes (`probe`) and passive
//! outlier detection on live traffic (`outlier`).
//!
//! A backend that answers slowly is as unhealthy as one that does not answer:
//! every check has a timeout, and a check that runs past it fails; live
//! requests that time out or lose a hedge count against it too. In the
//! outage Meridian answers, a half-alive node was never declared dead.

mod outlier;
mod probe;

pub use outlier::{may_eject, Ejection, Failure, PassiveCounters};
pub use probe::{probe_loop, HttpProbe, Probe, ProbeError, ProbeTarget, Report};

use serde::Serialize;

use crate::config::InitialState;

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
    /// Taken out by passive checks for a while; takes no traffic.
    Ejected,
}

impl BackendState {
    /// The lower-case name used in logs and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Unknown => "unknown",
            BackendState::Up => "up",
            BackendState::Down => "down",
            BackendState::Ejected => "ejected",
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

/// Rise/fall hysteresis for one backend's active checks.
///
/// The first result decides an unknown backend at once, so that Meridian
/// serves within one check of starting; after that `rise` consecutive passes
/// bring a down backend up and `fall` consecutive failures take an up one
/// down. The machine is never `Ejected`: ejection is passive checking's
/// verdict, laid over this one.
#[derive(Debug, Clone)]
pub struct HealthMachine {
    state: BackendState,
    streak: Streak,
    rise: u32,
    fall: u32,
}

impl HealthMachine {
    /// A machine in the configured initial state.
    pub fn new(rise: u32, fall: u32, initial: InitialState) -> Self {
        HealthMachine {
            state: match initial {
                InitialState::Unknown => BackendState::Unknown,
                InitialState::Up => BackendState::Up,
                InitialState::Down => BackendState::Down,
            },
            streak: Streak::None,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// The current state.
    pub fn state(&self) -> BackendState {
        self.state
    }

    /// The same machine, state and streak kept, with new thresholds: a
    /// reload must not forget what the checks have found.
    pub fn retuned(&self, rise: u32, fall: u32) -> Self {
        HealthMachine {
            rise: rise.max(1),
            fall: fall.max(1),
            ..self.clone()
        }
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
        let mut m = HealthMachine::new(3, 3, InitialState::Unknown);
        assert_eq!(m.state(), Unknown);
        assert_eq!(run(&mut m, &[true]), vec![Some((Unknown, Up))]);
        let mut m = HealthMachine::new(3, 3, InitialState::Unknown);
        assert_eq!(run(&mut m, &[false]), vec![Some((Unknown, Down))]);
    }

    #[test]
    fn up_goes_down_only_after_fall_consecutive_failures() {
        let mut m = HealthMachine::new(2, 3, InitialState::Unknown);
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
        let mut m = HealthMachine::new(2, 1, InitialState::Unknown);
        m.observe(false);
        assert_eq!(run(&mut m, &[true, false, true]), vec![None, None, None]);
        assert_eq!(run(&mut m, &[true]), vec![Some((Down, Up))]);
        assert_eq!(run(&mut m, &[true, true]), vec![None, None]);
    }

    #[test]
    fn rise_and_fall_of_one_flip_on_every_change() {
        let mut m = HealthMachine::new(1, 1, InitialState::Unknown);
        assert_eq!(
            run(&mut m, &[true, false, true]),
            vec![Some((Unknown, Up)), Some((Up, Down)), Some((Down, Up))]
        );
    }

    #[test]
    fn an_initially_up_backend_needs_fall_failures() {
        let mut m = HealthMachine::new(2, 2, InitialState::Up);
        assert_eq!(m.state(), Up);
        assert_eq!(run(&mut m, &[false, false]), vec![None, Some((Up, Down))]);
    }

    #[test]
    fn an_initially_down_backend_needs_rise_passes() {
        let mut m = HealthMachine::new(3, 2, InitialState::Down);
        assert_eq!(m.state(), Down);
        assert_eq!(
            run(&mut m, &[true, true, true]),
            vec![None, None, Some((Down, Up))]
        );
    }

    #[test]
    fn every_state_and_result_pair_is_defined() {
        // Exhaustive over small rise/fall, states reached and streak lengths:
        // the state only changes at the thresholds, and only towards the result.
        for rise in 1..4 {
            for fall in 1..4 {
                for initial in [InitialState::Unknown, InitialState::Up, InitialState::Down] {
                    for pattern in 0u32..64 {
                        let mut m = HealthMachine::new(rise, fall, initial);
                        let mut passes = 0;
                        let mut fails = 0;
                        for bit in 0..6 {
                            let passed = pattern & (1 << bit) != 0;
                            let before = m.state();
                            let t = m.observe(passed);
                            if passed {
                                passes += 1;
                                fails = 0;
                            } else {
                                fails += 1;
                                passes = 0;
                            }
                            let expected = match (before, passed) {
                                (Unknown, true) => Up,
                                (Unknown, false) => Down,
                                (Down, true) if passes >= rise => Up,
                                (Up, false) if fails >= fall => Down,
                                (s, _) => s,
                            };
                            assert_eq!(
                                m.state(),
                                expected,
                                "rise {rise} fall {fall} {initial:?} {pattern:b} bit {bit}"
                            );
                            assert_eq!(t.is_some(), before != expected);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn long_streaks_do_not_overflow() {
        let mut m = HealthMachine::new(1, 1, InitialState::Unknown);
        m.streak = Streak::Passes(u32::MAX);
        m.state = Up;
        assert_eq!(m.observe(true), None);
    }
}
