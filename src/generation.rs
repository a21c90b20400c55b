//! Everything the request path builds from one configuration — the
//! locator, trusted proxies, status pages, upstream client, retry budget,
//! latency estimates, round-robin positions and passive-health counters —
//! made together and replaced together when the configuration is reloaded.
//! It travels inside each snapshot, so a request never mixes the region
//! indices of two configurations.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::budget::RetryBudget;
use crate::config::Config;
use crate::geo::{Locator, TrustedProxies};
use crate::health::PassiveCounters;
use crate::latency::Latency;
use crate::metrics::{Metrics, RequestMetrics};
use crate::status_page::{StatusPages, TemplateError};
use crate::upstream::{self, UpstreamClient};

/// The request path's view of one configuration.
#[derive(Debug)]
pub struct Generation {
    /// Counts reloads: 0 for the configuration Meridian started with.
    pub number: u64,
    /// The configuration.
    pub config: Arc<Config>,
    /// Finds each client's preferred region.
    pub locator: Locator,
    /// Peers whose forwarding headers are believed.
    pub trusted: TrustedProxies,
    /// Meridian's own answers.
    pub pages: StatusPages,
    /// The pooled client to backends.
    pub client: UpstreamClient,
    /// Caps retries and hedges to a share of requests.
    pub budget: RetryBudget,
    /// Response-time estimates per region, for hedging delays.
    pub latency: Latency,
    /// Consecutive live failures per backend.
    pub passive: PassiveCounters,
    /// The request counters of this configuration's regions.
    pub metrics: RequestMetrics,
    /// One round-robin counter per preferred region: a shared one would give
    /// each region the same backends whenever traffic alternates regularly.
    rotations: Box<[AtomicUsize]>,
}

impl Generation {
    /// Builds generation `number` from `config`, recording into `metrics`;
    /// fails only on a status page template that does not render.
    pub fn new(
        config: Arc<Config>,
        number: u64,
        metrics: &Metrics,
    ) -> Result<Generation, TemplateError> {
        Ok(Generation {
            number,
            metrics: metrics.for_config(&config),
            locator: Locator::new(&config),
            trusted: TrustedProxies::new(
                config.geo.trusted_proxies.clone(),
                config.geo.forwarding_header,
            ),
            pages: StatusPages::new(&config.status_page)?,
            client: upstream::client(&config),
            budget: RetryBudget::new(&config.proxy.retry_budget, tokio::time::Instant::now()),
            latency: Latency::new(config.regions.len()),
            passive: PassiveCounters::new(&config),
            rotations: config.regions.iter().map(|_| AtomicUsize::new(0)).collect(),
            config,
        })
    }

    /// The next round-robin position for clients preferring `region`.
    pub fn next_rotation(&self, region: usize) -> usize {
        self.rotations
            .get(region)
            .map_or(0, |r| r.fetch_add(1, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_preferred_region_has_its_own_rotation() {
        let text = "[[region]]\nname = \"us\"\nbackends = [\"http://10.0.0.1:80\"]\n\
                    [[region]]\nname = \"eu\"\nbackends = [\"http://10.1.0.1:80\"]\n";
        let generation = Generation::new(
            Arc::new(Config::parse("t.toml", text).unwrap()),
            0,
            &Metrics::default(),
        )
        .unwrap();
        // Alternating traffic still walks each region's backends in turn.
        let seen: Vec<(usize, usize)> = (0..3)
            .map(|_| (generation.next_rotation(0), generation.next_rotation(1)))
            .collect();
        assert_eq!(seen, vec![(0, 0), (1, 1), (2, 2)]);
        assert_eq!(
            generation.next_rotation(9),
            0,
            "an unknown region does not panic"
        );
    }
}
