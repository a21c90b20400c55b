//! Observed time to first byte per region, as a moving average kept in one
//! atomic, and the hedging delay derived from it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::Hedge;

/// A moving average of time to first byte for each region, in microseconds
/// (0 before the first sample).
#[derive(Debug)]
pub struct Latency {
    micros: Box<[AtomicU64]>,
}

impl Latency {
    /// No samples for `regions` regions.
    pub fn new(regions: usize) -> Self {
        Latency {
            micros: (0..regions).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Adds a sample with weight 1/8.
    pub fn observe(&self, region: usize, took: Duration) {
        let Some(avg) = self.micros.get(region) else {
            return;
        };
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = avg.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            Some(if old == 0 {
                sample
            } else {
                (old * 7 + sample) / 8
            })
        });
    }

    /// The moving average, if there is one.
    pub fn average(&self, region: usize) -> Option<Duration> {
        let m = self.micros.get(region)?.load(Ordering::Relaxed);
        (m > 0).then(|| Duration::from_micros(m))
    }

    /// When to hedge a request to `region`: four times its average, within
    /// the configured bounds; the upper bound before any sample.
    pub fn hedge_delay(&self, region: usize, hedge: &Hedge) -> Duration {
        match self.average(region) {
            Some(avg) => (avg * 4).clamp(hedge.min_delay, hedge.max_delay),
            None => hedge.max_delay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEDGE: Hedge = Hedge {
        min_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(250),
    };

    #[test]
    fn the_hedge_delay_follows_the_average_within_bounds() {
        let l = Latency::new(2);
        assert_eq!(l.hedge_delay(0, &HEDGE), HEDGE.max_delay, "no samples yet");
        l.observe(0, Duration::from_millis(20));
        assert_eq!(l.average(0), Some(Duration::from_millis(20)));
        assert_eq!(l.hedge_delay(0, &HEDGE), Duration::from_millis(80));
        l.observe(1, Duration::from_millis(1));
        assert_eq!(l.hedge_delay(1, &HEDGE), HEDGE.min_delay);
        for _ in 0..100 {
            l.observe(1, Duration::from_secs(1));
        }
        assert_eq!(l.hedge_delay(1, &HEDGE), HEDGE.max_delay);
        assert_eq!(l.hedge_delay(9, &HEDGE), HEDGE.max_delay, "unknown region");
    }

    #[test]
    fn the_average_moves_an_eighth_of_the_way() {
        let l = Latency::new(1);
        l.observe(0, Duration::from_millis(80));
        l.observe(0, Duration::from_millis(160));
        assert_eq!(l.average(0), Some(Duration::from_millis(90)));
    }
}
