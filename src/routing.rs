//! The routing decision, as a pure function: the client's preferred region,
//! the topology and the health snapshot in, an ordered list of candidate
//! backends out. The proxy walks the list; this module does no I/O.

use crate::config::Region;
use crate::health::BackendState;
use crate::state::RegionView;

/// Why a candidate is in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A backend of the client's preferred region.
    Preferred,
    /// A backend of a region on the preferred region's failover list.
    Failover,
}

/// One backend to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Region index.
    pub region: usize,
    /// Backend index within the region.
    pub backend: usize,
    /// Why it was chosen.
    pub reason: Reason,
}

/// The ordered, de-duplicated, bounded list of backends to try for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The region the client would ideally be served by.
    pub preferred: usize,
    /// Candidates, best first; empty when no region can serve.
    pub candidates: Vec<Candidate>,
}

/// Plans a request from a client whose preferred region is `preferred`.
///
/// The preferred region's healthy backends come first, then those of each
/// region on its `failover` list, in order. Within a region the starting
/// backend moves with `rotation`, which spreads requests round robin. At most
/// `max` candidates are returned.
pub fn plan(
    regions: &[Region],
    views: &[RegionView],
    preferred: usize,
    rotation: usize,
    max: usize,
) -> Plan {
    let mut candidates = Vec::with_capacity(max.min(8));
    let Some(home) = regions.get(preferred) else {
        return Plan {
            preferred,
            candidates,
        };
    };
    let order = std::iter::once((preferred, Reason::Preferred))
        .chain(home.failover.iter().map(|&r| (r, Reason::Failover)));
    for (region, reason) in order {
        let Some(view) = views.get(region) else {
            continue;
        };
        let n = view.backends.len();
        if n == 0 {
            continue;
        }
        let start = rotation % n;
        for k in 0..n {
            if candidates.len() == max {
                return Plan {
                    preferred,
                    candidates,
                };
            }
            let backend = (start + k) % n;
            if view.backends[backend].state == BackendState::Up {
                candidates.push(Candidate {
                    region,
                    backend,
                    reason,
                });
            }
        }
    }
    Plan {
        preferred,
        candidates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::state::{BackendView, RegionState};
    use BackendState::*;

    fn regions() -> Vec<Region> {
        let text = r#"
            [[region]]
            name = "us"
            failover = ["eu", "ap"]
            backends = ["http://10.0.0.1:80", "http://10.0.0.2:80", "http://10.0.0.3:80"]
            [[region]]
            name = "eu"
            failover = ["us"]
            backends = ["http://10.1.0.1:80", "http://10.1.0.2:80"]
            [[region]]
            name = "ap"
            backends = ["http://10.2.0.1:80"]
        "#;
        Config::parse("t.toml", text).unwrap().regions
    }

    fn views(states: &[&[BackendState]]) -> Vec<RegionView> {
        states
            .iter()
            .map(|s| RegionView {
                state: RegionState::of(s.iter().copied()),
                backends: s
                    .iter()
                    .map(|&state| BackendView {
                        state,
                        last_error: None,
                    })
                    .collect(),
            })
            .collect()
    }

    fn pairs(p: &Plan) -> Vec<(usize, usize)> {
        p.candidates.iter().map(|c| (c.region, c.backend)).collect()
    }

    #[test]
    fn preferred_region_first_then_failover_in_order() {
        let v = views(&[&[Up, Up, Up], &[Up, Up], &[Up]]);
        let p = plan(&regions(), &v, 0, 0, 10);
        assert_eq!(
            pairs(&p),
            vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0)]
        );
        assert!(p.candidates[..3]
            .iter()
            .all(|c| c.reason == Reason::Preferred));
        assert!(p.candidates[3..]
            .iter()
            .all(|c| c.reason == Reason::Failover));
    }

    #[test]
    fn unhealthy_and_unknown_backends_are_skipped() {
        let v = views(&[&[Down, Up, Unknown], &[Down, Up], &[Up]]);
        let p = plan(&regions(), &v, 0, 0, 10);
        assert_eq!(pairs(&p), vec![(0, 1), (1, 1), (2, 0)]);
    }

    #[test]
    fn a_down_region_fails_over() {
        let v = views(&[&[Down, Down, Down], &[Up, Up], &[Up]]);
        let p = plan(&regions(), &v, 0, 0, 2);
        assert_eq!(pairs(&p), vec![(1, 0), (1, 1)]);
        assert!(p.candidates.iter().all(|c| c.reason == Reason::Failover));
    }

    #[test]
    fn failover_is_not_transitive() {
        // eu fails over to us only, never on to ap.
        let v = views(&[&[Down, Down, Down], &[Down, Down], &[Up]]);
        assert!(plan(&regions(), &v, 1, 0, 10).candidates.is_empty());
        // ap has no failover list at all.
        let v = views(&[&[Up, Up, Up], &[Up, Up], &[Down]]);
        assert!(plan(&regions(), &v, 2, 0, 10).candidates.is_empty());
    }

    #[test]
    fn rotation_spreads_requests_round_robin() {
        let v = views(&[&[Up, Up, Up], &[Up, Up], &[Up]]);
        let firsts: Vec<usize> = (0..6)
            .map(|r| plan(&regions(), &v, 0, r, 1).candidates[0].backend)
            .collect();
        assert_eq!(firsts, vec![0, 1, 2, 0, 1, 2]);
        let p = plan(&regions(), &v, 0, 1, 4);
        assert_eq!(pairs(&p), vec![(0, 1), (0, 2), (0, 0), (1, 1)]);
    }

    #[test]
    fn plans_are_bounded_and_never_repeat_a_backend() {
        let v = views(&[&[Up, Up, Up], &[Up, Up], &[Up]]);
        for max in 0..8 {
            for rotation in 0..7 {
                let p = plan(&regions(), &v, 0, rotation, max);
                assert_eq!(p.candidates.len(), max.min(6));
                let mut seen = pairs(&p);
                seen.sort();
                seen.dedup();
                assert_eq!(seen.len(), p.candidates.len());
            }
        }
    }

    #[test]
    fn unknown_preferred_region_gives_an_empty_plan() {
        let v = views(&[&[Up, Up, Up], &[Up, Up], &[Up]]);
        assert!(plan(&regions(), &v, 7, 0, 10).candidates.is_empty());
    }
}
