//! The routing decision, as a pure function: the client's preferred region,
//! the topology and the health snapshot in, an ordered list of candidate
//! backends out. The proxy walks the list; this module does no I/O.

use crate::config::Region;
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
    pub candidates: Candidates,
}

/// Most candidates in a plan: the largest `proxy.max_attempts`.
pub const MAX_CANDIDATES: usize = 10;

/// The candidates of a plan, kept inline so that planning allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct Candidates {
    items: [Candidate; MAX_CANDIDATES],
    len: usize,
}

impl Default for Candidates {
    fn default() -> Self {
        let none = Candidate {
            region: 0,
            backend: 0,
            reason: Reason::Preferred,
        };
        Candidates {
            items: [none; MAX_CANDIDATES],
            len: 0,
        }
    }
}

impl Candidates {
    fn push(&mut self, c: Candidate) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = c;
            self.len += 1;
        }
    }
}

impl std::ops::Deref for Candidates {
    type Target = [Candidate];

    fn deref(&self) -> &[Candidate] {
        &self.items[..self.len]
    }
}

impl PartialEq for Candidates {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Candidates {}

/// Plans a request from a client whose preferred region is `preferred`.
///
/// The preferred region's healthy backends come first, then those of each
/// region on its `failover` list, in order. Within a region the starting
/// backend moves with `rotation` over the healthy backends, which spreads
/// requests evenly round robin. At most `max` candidates are returned.
///
/// When a failover region can serve, the preferred region gets at most
/// `max - 1` candidates: a region that died before its checks noticed (the
/// half-dead node of the post-mortem) must not use up every attempt while a
/// healthy region waits. Attempts the failover regions cannot use go back to
/// the preferred region.
///
/// A region waiting out its fail-back hold, and a slow-starting preferred
/// region for the clients (by `client_key`) not yet let back, come last:
/// they serve only when nothing else can.
pub fn plan(
    regions: &[Region],
    views: &[RegionView],
    preferred: usize,
    rotation: usize,
    client_key: u64,
    max: usize,
) -> Plan {
    let mut candidates = Candidates::default();
    let max = max.min(MAX_CANDIDATES);
    let Some(home) = regions.get(preferred) else {
        return Plan {
            preferred,
            candidates,
        };
    };
    let up = |r: usize| {
        views
            .get(r)
            .is_some_and(|v| v.state.serves() && v.healthy_backends() > 0)
    };
    let ready = |r: usize| up(r) && !views[r].held;
    let home_ready = ready(preferred) && admitted(views[preferred].ramp_permille, client_key);
    let home_cap = if max > 1 && home.failover.iter().any(|&r| ready(r)) {
        max - 1
    } else {
        max
    };
    let add =
        |candidates: &mut Candidates, region: usize, reason: Reason, skip: usize, limit: usize| {
            let Some(view) = views.get(region) else {
                return;
            };
            for backend in healthy_in_rotation(view, rotation).skip(skip) {
                if candidates.len() >= limit {
                    return;
                }
                candidates.push(Candidate {
                    region,
                    backend,
                    reason,
                });
            }
        };
    if home_ready {
        add(&mut candidates, preferred, Reason::Preferred, 0, home_cap);
    }
    let home_taken = candidates.len();
    for &region in home.failover.iter().filter(|&&r| ready(r)) {
        add(&mut candidates, region, Reason::Failover, 0, max);
    }
    if home_ready {
        add(
            &mut candidates,
            preferred,
            Reason::Preferred,
            home_taken,
            max,
        );
    } else if up(preferred) {
        add(&mut candidates, preferred, Reason::Preferred, 0, max);
    }
    for &region in home.failover.iter().filter(|&&r| up(r) && !ready(r)) {
        add(&mut candidates, region, Reason::Failover, 0, max);
    }
    Plan {
        preferred,
        candidates,
    }
}

/// Whether a client is among the `permille` thousandths let back.
fn admitted(permille: u16, client_key: u64) -> bool {
    permille >= 1000 || client_key % 1000 < u64::from(permille)
}

/// Indices of the healthy backends of a region, starting at the
/// `rotation`-th healthy one and wrapping around.
fn healthy_in_rotation(view: &RegionView, rotation: usize) -> impl Iterator<Item = usize> + '_ {
    let up = view.healthy_backends();
    let start = if up == 0 { 0 } else { rotation % up };
    let healthy = view
        .backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.takes_traffic())
        .map(|(i, _)| i);
    healthy.clone().skip(start).chain(healthy.take(start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::health::BackendState;
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
            .map(|s| {
                let up = s.iter().filter(|&&b| b == Up).count();
                RegionView {
                    state: RegionState::derive(up, s.len(), true, None, false),
                    held: false,
                    ramp_permille: 1000,
                    drained: false,
                    backends: s
                        .iter()
                        .map(|&state| BackendView {
                            state,
                            last_error: None,
                            ejections: 0,
                            drained: false,
                            domain: None,
                            discovered: false,
                        })
                        .collect(),
                    single_domain: None,
                }
            })
            .collect()
    }

    fn pairs(p: &Plan) -> Vec<(usize, usize)> {
        p.candidates.iter().map(|c| (c.region, c.backend)).collect()
    }

    #[test]
    fn preferred_region_first_then_failover_in_order() {
        let v = views(&[&[Up, Up, Up], &[Up, Up], &[Up]]);
        let p = plan(&regions(), &v, 0, 0, 0, 10);
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
    fn drained_backends_and_regions_are_skipped() {
        let mut v = views(&[&[Up, Up, Up], &[Up, Up], &[Up]]);
        v[0].backends[1].drained = true;
        let p = plan(&regions(), &v, 0, 0, 0, 10);
        assert_eq!(pairs(&p), vec![(0, 0), (0, 2), (1, 0), (1, 1), (2, 0)]);
        // A drained region's healthy backends are not used at all.
        v[1].drained = true;
        v[1].state = RegionState::derive(2, 2, true, None, true);
        let p = plan(&regions(), &v, 1, 0, 0, 10);
        assert_eq!(pairs(&p), vec![(0, 0), (0, 2)], "eu's users go to us");
        let p = plan(&regions(), &v, 0, 0, 0, 10);
        assert!(p.candidates.iter().all(|c| c.region != 1));
        // Every region drained: nothing to try, the status page answers.
        for (i, r) in v.iter_mut().enumerate() {
            r.drained = true;
            r.state = RegionState::derive(1, [3, 2, 1][i], true, None, true);
        }
        assert!(plan(&regions(), &v, 0, 0, 0, 10).candidates.is_empty());
    }

    #[test]
    fn unhealthy_and_unknown_backends_are_skipped() {
        let v = views(&[&[Down, Up, Unknown], &[Down, Up], &[Up]]);
        let p = plan(&regions(), &v, 0, 0, 0, 10);
        assert_eq!(pairs(&p), vec![(0, 1), (1, 1), (2, 0)]);
    }

    #[test]
    fn a_down_region_fails_over() {
        let v = views(&[&[Down, Down, Down], &[Up, Up], &[Up]]);
        let p = plan(&regions(), &v, 0, 0, 0, 2);
        assert_eq!(pairs(&p), vec![(1, 0), (1, 1)]);
        assert!(p.candidates.iter().all(|c| c.reason == Reason::Failover));
    }

    #[test]
    fn failover_is_not_transitive() {
        // eu fails over to us only, never on to ap.
        let v = views(&[&[Down, Down, Down], &[Down, Down], &[Up]]);
        assert!(plan(&regions(), &v, 1, 0, 0, 10).candidates.is_empty());
        // ap has no failover list at all.
        let v = views(&[&[Up, Up, Up], &[Up, Up], &[Down]]);
        assert!(plan(&regions(), &v, 2, 0, 0, 10).candidates.is_empty());
    }

    #[test]
    fn rotation_spreads_requests_round_robin() {
        let v = views(&[&[Up, Up, Up], &[Up, Up], &[Up]]);
        let firsts: Vec<usize> = (0..6)
            .map(|r| plan(&regions(), &v, 0, r, 0, 1).candidates[0].backend)
            .collect();
        assert_eq!(firsts, vec![0, 1, 2, 0, 1, 2]);
        let p = plan(&regions(), &v, 0, 1, 0, 4);
        assert_eq!(pairs(&p), vec![(0, 1), (0, 2), (0, 0), (1, 1)]);
    }

    #[test]
    fn plans_are_bounded_and_never_repeat_a_backend() {
        let v = views(&[&[Up, Up, Up], &[Up, Up], &[Up]]);
        for max in 0..8 {
            for rotation in 0..7 {
                let p = plan(&regions(), &v, 0, rotation, 0, max);
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
        assert!(plan(&regions(), &v, 7, 0, 0, 10).candidates.is_empty());
    }

    #[test]
    fn a_failover_region_keeps_one_attempt_when_the_preferred_region_fills_the_plan() {
        let v = views(&[&[Up, Up, Up], &[Up, Up], &[Up]]);
        let p = plan(&regions(), &v, 0, 0, 0, 3);
        assert_eq!(pairs(&p), vec![(0, 0), (0, 1), (1, 0)]);
        // With nowhere to fail over to, every attempt stays home.
        let v = views(&[&[Up, Up, Up], &[Down, Down], &[Down]]);
        assert_eq!(
            pairs(&plan(&regions(), &v, 0, 0, 0, 3)),
            vec![(0, 0), (0, 1), (0, 2)]
        );
        // A single attempt is the preferred region's.
        let v = views(&[&[Up, Up, Up], &[Up, Up], &[Up]]);
        assert_eq!(pairs(&plan(&regions(), &v, 0, 0, 0, 1)), vec![(0, 0)]);
    }

    #[test]
    fn attempts_the_failover_regions_cannot_use_go_back_home() {
        // us fails over to eu (down) and ap (one backend).
        let v = views(&[&[Up, Up, Up], &[Down, Down], &[Up]]);
        let p = plan(&regions(), &v, 0, 0, 0, 3);
        assert_eq!(pairs(&p), vec![(0, 0), (0, 1), (2, 0)]);
        let p = plan(&regions(), &v, 0, 0, 0, 5);
        assert_eq!(pairs(&p), vec![(0, 0), (0, 1), (0, 2), (2, 0)]);
        let v = views(&[&[Up, Up, Up], &[Up, Down], &[Down]]);
        let p = plan(&regions(), &v, 0, 0, 0, 4);
        assert_eq!(pairs(&p), vec![(0, 0), (0, 1), (0, 2), (1, 0)]);
    }

    #[test]
    fn round_robin_stays_even_when_a_backend_is_down() {
        let v = views(&[&[Up, Down, Up], &[Up, Up], &[Up]]);
        let firsts: Vec<usize> = (0..6)
            .map(|r| plan(&regions(), &v, 0, r, 0, 1).candidates[0].backend)
            .collect();
        assert_eq!(firsts, vec![0, 2, 0, 2, 0, 2]);
    }

    #[test]
    fn ejected_backends_are_skipped() {
        let v = views(&[&[Ejected, Up, Up], &[Up, Up], &[Up]]);
        let p = plan(&regions(), &v, 0, 0, 0, 10);
        assert_eq!(pairs(&p)[..2], [(0, 1), (0, 2)]);
    }

    #[test]
    fn a_held_region_serves_only_when_nothing_else_can() {
        let mut v = views(&[&[Up, Up, Up], &[Up, Up], &[Up]]);
        v[0].held = true;
        let p = plan(&regions(), &v, 0, 0, 0, 10);
        assert_eq!(
            pairs(&p),
            vec![(1, 0), (1, 1), (2, 0), (0, 0), (0, 1), (0, 2)],
            "its users stay on the failover regions"
        );
        // A held failover region goes after the ready ones.
        let mut v = views(&[&[Down, Down, Down], &[Up, Up], &[Up]]);
        v[1].held = true;
        assert_eq!(
            pairs(&plan(&regions(), &v, 0, 0, 0, 10)),
            vec![(2, 0), (1, 0), (1, 1)]
        );
        // Held and nothing else: still served.
        let mut v = views(&[&[Up, Down, Down], &[Down, Down], &[Down]]);
        v[0].held = true;
        assert_eq!(pairs(&plan(&regions(), &v, 0, 0, 0, 10)), vec![(0, 0)]);
    }

    #[test]
    fn slow_start_lets_a_growing_share_of_clients_back() {
        let mut v = views(&[&[Up, Up, Up], &[Up, Up], &[Up]]);
        let back = |v: &[RegionView]| {
            (0..1000u64)
                .filter(|&key| plan(&regions(), v, 0, 0, key, 3).candidates[0].region == 0)
                .collect::<Vec<u64>>()
        };
        v[0].ramp_permille = 0;
        assert!(back(&v).is_empty());
        v[0].ramp_permille = 250;
        let quarter = back(&v);
        assert_eq!(quarter.len(), 250);
        v[0].ramp_permille = 600;
        let more = back(&v);
        assert_eq!(more.len(), 600);
        assert!(
            quarter.iter().all(|k| more.contains(k)),
            "clients let back stay back"
        );
        // A client not yet let back still reaches its region as a last resort.
        let p = plan(&regions(), &v, 0, 0, 999, 10);
        assert_eq!(p.candidates.last().map(|c| c.region), Some(0));
        assert_eq!(p.candidates[0].region, 1);
    }

    #[test]
    fn every_allowed_max_attempts_fits_a_plan() {
        let text = |n: usize| {
            format!("[proxy]\nmax_attempts = {n}\n[[region]]\nname = \"us\"\nbackends = [\"http://10.0.0.1:80\"]\n")
        };
        assert!(Config::parse("t.toml", &text(MAX_CANDIDATES)).is_ok());
        assert!(Config::parse("t.toml", &text(MAX_CANDIDATES + 1)).is_err());
        let v = views(&[&[Up; 3], &[Up; 2], &[Up]]);
        assert_eq!(plan(&regions(), &v, 0, 0, 0, 100).candidates.len(), 6);
    }
}
