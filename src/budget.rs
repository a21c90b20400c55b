//! The retry budget: retries and hedges may add at most a share of the
//! requests seen over a sliding window, plus a small floor, so that a sick
//! backend can never turn every request into several (a retry storm).
//!
//! Lock-free: the window is a ring of per-slot atomic counters; a slot is
//! reset by whichever request first finds it stale. Concurrent requests may
//! see a count a few retries off, which a budget can afford.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config;

const SLOTS: usize = 10;

#[derive(Debug, Default)]
struct Slot {
    tick: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// Counts requests and retries over the configured window.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    floor: f64,
    slot_len: Duration,
    start: Instant,
    slots: [Slot; SLOTS],
}

impl RetryBudget {
    /// An empty budget as configured, its clock starting at `start`.
    pub fn new(config: &config::RetryBudget, start: Instant) -> Self {
        RetryBudget {
            ratio: config.ratio,
            floor: f64::from(config.min_per_second) * config.window.as_secs_f64(),
            slot_len: (config.window / SLOTS as u32).max(Duration::from_millis(1)),
            start,
            slots: Default::default(),
        }
    }

    /// Counts one request from a client.
    pub fn request(&self, now: Instant) {
        self.slot(now).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry or hedge from the budget; false when it is spent.
    pub fn try_retry(&self, now: Instant) -> bool {
        let tick = self.tick(now);
        let (mut requests, mut retries) = (0u64, 0u64);
        for slot in &self.slots {
            let t = slot.tick.load(Ordering::Acquire);
            if t + SLOTS as u64 > tick && t <= tick {
                requests += slot.requests.load(Ordering::Relaxed);
                retries += slot.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = self.floor + self.ratio * requests as f64;
        if retries as f64 + 1.0 > allowed {
            return false;
        }
        self.slot(now).retries.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn tick(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start);
        // +1 so that no live slot has the tick 0 of a never-used one.
        (elapsed.as_nanos() / self.slot_len.as_nanos()) as u64 + 1
    }

    fn slot(&self, now: Instant) -> &Slot {
        let tick = self.tick(now);
        let slot = &self.slots[(tick % SLOTS as u64) as usize];
        let seen = slot.tick.load(Ordering::Acquire);
        if seen < tick
            && slot
                .tick
                .compare_exchange(seen, tick, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_second: u32) -> (RetryBudget, Instant) {
        let start = Instant::now();
        let b = RetryBudget::new(
            &config::RetryBudget {
                ratio,
                window: Duration::from_secs(10),
                min_per_second,
            },
            start,
        );
        (b, start)
    }

    fn granted(b: &RetryBudget, now: Instant, tries: usize) -> usize {
        (0..tries).filter(|_| b.try_retry(now)).count()
    }

    #[test]
    fn retries_are_a_share_of_requests() {
        let (b, now) = budget(0.2, 0);
        assert_eq!(granted(&b, now, 5), 0, "nothing without requests");
        for _ in 0..100 {
            b.request(now);
        }
        assert_eq!(granted(&b, now, 50), 20);
    }

    #[test]
    fn the_floor_allows_retries_at_low_traffic() {
        let (b, now) = budget(0.2, 1);
        assert_eq!(granted(&b, now, 50), 10, "1 a second over 10 s");
    }

    #[test]
    fn the_window_slides() {
        let (b, t0) = budget(0.5, 0);
        for _ in 0..10 {
            b.request(t0);
        }
        assert_eq!(granted(&b, t0, 10), 5);
        // Half a window later the old requests and retries still count.
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(granted(&b, t1, 10), 0);
        // A whole window later they are gone.
        let t2 = t0 + Duration::from_secs(11);
        assert_eq!(granted(&b, t2, 10), 0);
        for _ in 0..4 {
            b.request(t2);
        }
        assert_eq!(granted(&b, t2, 10), 2);
    }

    #[test]
    fn a_zero_budget_allows_nothing() {
        let (b, now) = budget(0.0, 0);
        for _ in 0..1000 {
            b.request(now);
        }
        assert!(!b.try_retry(now));
    }
}
