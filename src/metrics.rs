//! Prometheus metrics: the request path bumps plain atomics it already
//! holds (one `fetch_add` each, no lock, no allocation); a
//! `prometheus-client` collector reads them, and the state snapshot, when
//! `/metrics` is scraped.
//!
//! Counters keyed by region live in [`Metrics`] by region *name*, so that
//! they keep counting across reloads; each configuration generation holds
//! [`RequestMetrics`], the same counters indexed by its own region numbers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::concurrency::Slots;
use crate::config::Config;
use crate::state::Snapshot;
use crate::status_page::Rescue;

/// Upper bounds of the request duration buckets, in seconds.
const REQUEST_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Upper bounds of the health check duration buckets, in seconds.
const CHECK_BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// Status classes, by the first digit of the status.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Why the status page was served, as [`Rescue::as_str`] names it.
const RESCUES: [&str; 7] = [
    "no_region",
    "drained",
    "backend_failed",
    "backend_timeout",
    "client_timeout",
    "upstream_error",
    "overloaded",
];

/// The public listeners, as `connections_open` labels them.
#[derive(Debug, Clone, Copy)]
pub enum Listener {
    /// `listen.http`.
    Http = 0,
    /// `listen.https`.
    Https = 1,
}

/// What became of an alert, as `alerts_total` labels it.
#[derive(Debug, Clone, Copy)]
pub enum AlertResult {
    /// A webhook accepted it.
    Sent = 0,
    /// A webhook refused it or was unreachable after every retry.
    Failed = 1,
    /// The queue was full and it was dropped unsent.
    Dropped = 2,
}

/// One open client connection, counted until dropped.
#[derive(Debug)]
pub struct OpenConnection {
    metrics: Arc<Metrics>,
    listener: Listener,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.connections[self.listener as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

/// A histogram over fixed buckets, recorded with atomics.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    /// Observations per bucket (not cumulative); the last is above every bound.
    buckets: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: &'static [f64; N]) -> Self {
        Histogram {
            bounds,
            buckets: (0..=N).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.partition_point(|&b| b < secs);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Sum, count and the count of each bucket (the encoder makes them
    /// cumulative).
    fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(N + 1);
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            total += n;
            // prometheus-client writes `f64::MAX` as `+Inf`.
            buckets.push((self.bounds.get(i).copied().unwrap_or(f64::MAX), n));
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, total, buckets)
    }
}

/// The counters of one region, by name.
#[derive(Debug)]
pub struct RegionMetrics {
    requests: [AtomicU64; 5],
    duration: Histogram<12>,
}

impl RegionMetrics {
    fn new() -> Self {
        RegionMetrics {
            requests: Default::default(),
            duration: Histogram::new(&REQUEST_BUCKETS),
        }
    }
}

/// Every metric Meridian records, shared by all generations.
#[derive(Debug)]
pub struct Metrics {
    /// Region counters by name; locked only when a generation is built
    /// and when `/metrics` is scraped.
    regions: Mutex<HashMap<String, Arc<RegionMetrics>>>,
    /// Answers no region served (the status page, redirects, Meridian's own).
    unrouted: Arc<RegionMetrics>,
    /// Failovers by (preferred, served) region name.
    failovers: Mutex<HashMap<(String, String), Arc<AtomicU64>>>,
    /// Requests in flight by (region, backend address), carried over reloads.
    slots: Mutex<HashMap<(String, String), Arc<Slots>>>,
    retries: AtomicU64,
    hedges: AtomicU64,
    queue_timeouts: AtomicU64,
    status_pages: [AtomicU64; 7],
    connections: [AtomicI64; 2],
    reloads: [AtomicU64; 2],
    alerts: [AtomicU64; 3],
    health_checks: Histogram<8>,
    /// DNS lookups by name, off the request path.
    dns: Mutex<BTreeMap<String, DnsCounts>>,
}

/// The outcome of one DNS lookup of a backend name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsResult {
    /// An answer, possibly with no address.
    Answered,
    /// No answer: a timeout, an unreachable or failing name server.
    Failed,
}

/// Lookups of one name and the addresses it has.
#[derive(Debug, Default, Clone, Copy)]
struct DnsCounts {
    answered: u64,
    failed: u64,
    addresses: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            regions: Mutex::default(),
            unrouted: Arc::new(RegionMetrics::new()),
            failovers: Mutex::default(),
            slots: Mutex::default(),
            retries: AtomicU64::new(0),
            hedges: AtomicU64::new(0),
            queue_timeouts: AtomicU64::new(0),
            status_pages: Default::default(),
            connections: Default::default(),
            reloads: Default::default(),
            alerts: Default::default(),
            health_checks: Histogram::new(&CHECK_BUCKETS),
            dns: Mutex::default(),
        }
    }
}

impl Metrics {
    /// The counters `config`'s request path records into.
    pub fn for_config(&self, config: &Config) -> RequestMetrics {
        let mut regions = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        let by_index: Vec<Arc<RegionMetrics>> = config
            .regions
            .iter()
            .map(|r| {
                Arc::clone(
                    regions
                        .entry(r.name.clone())
                        .or_insert_with(|| Arc::new(RegionMetrics::new())),
                )
            })
            .collect();
        drop(regions);
        let mut failovers = self.failovers.lock().unwrap_or_else(|e| e.into_inner());
        let n = config.regions.len();
        let mut matrix = Vec::with_capacity(n * n);
        for from in &config.regions {
            for to in &config.regions {
                matrix.push(Arc::clone(
                    failovers
                        .entry((from.name.clone(), to.name.clone()))
                        .or_default(),
                ));
            }
        }
        drop(failovers);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let by_backend: Vec<Vec<Arc<Slots>>> = config
            .regions
            .iter()
            .map(|r| {
                r.backends
                    .iter()
                    .map(|b| {
                        Arc::clone(
                            slots
                                .entry((r.name.clone(), b.address.clone()))
                                .or_default(),
                        )
                    })
                    .collect()
            })
            .collect();
        // Backends gone from every generation still in use (addresses DNS
        // no longer gives) are forgotten; a slot in flight holds its count.
        slots.retain(|_, s| Arc::strong_count(s) > 1);
        drop(slots);
        RequestMetrics {
            regions: by_index,
            unrouted: Arc::clone(&self.unrouted),
            failovers: matrix,
            width: n,
            slots: by_backend,
        }
    }

    /// A request that waited `limits.backend_queue_timeout` for a full backend.
    pub fn queue_timeout(&self) {
        self.queue_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// A request sent again to another backend after a failure.
    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// A request raced on a second backend because the first was slow.
    pub fn hedge(&self) {
        self.hedges.fetch_add(1, Ordering::Relaxed);
    }

    /// The status page served for `why`.
    pub fn status_page(&self, why: Rescue) {
        if let Some(i) = RESCUES.iter().position(|r| *r == why.as_str()) {
            self.status_pages[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a client connection open on `listener` until the guard is
    /// dropped, however its task ends.
    pub fn open_connection(self: &Arc<Self>, listener: Listener) -> OpenConnection {
        self.connections[listener as usize].fetch_add(1, Ordering::Relaxed);
        OpenConnection {
            metrics: Arc::clone(self),
            listener,
        }
    }

    /// A configuration reload, applied or refused.
    pub fn reload(&self, applied: bool) {
        self.reloads[usize::from(!applied)].fetch_add(1, Ordering::Relaxed);
    }

    /// An alert delivery (or drop) with its `result`.
    pub fn alert(&self, result: AlertResult) {
        self.alerts[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A DNS lookup of `name`; an answer gives its number of `addresses`.
    pub fn dns_lookup(&self, name: &str, result: DnsResult, addresses: Option<usize>) {
        let mut dns = self.dns.lock().unwrap_or_else(|e| e.into_inner());
        let counts = dns.entry(name.to_owned()).or_default();
        match result {
            DnsResult::Answered => counts.answered += 1,
            DnsResult::Failed => counts.failed += 1,
        }
        if let Some(n) = addresses {
            counts.addresses = n;
        }
    }

    /// Forgets the DNS counts of names no longer followed.
    pub fn dns_keep<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let keep: std::collections::BTreeSet<&str> = names.into_iter().collect();
        let mut dns = self.dns.lock().unwrap_or_else(|e| e.into_inner());
        dns.retain(|name, _| keep.contains(name.as_str()));
    }

    /// One active health check took `d`.
    pub fn health_check(&self, d: Duration) {
        self.health_checks.observe(d);
    }

    /// A registry holding every metric, read from these counters,
    /// `snapshot` and the TLS `certificates` in force at scrape time.
    pub fn registry(
        self: &Arc<Self>,
        snapshot: Arc<Snapshot>,
        certificates: Vec<CertExpiry>,
    ) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape {
            metrics: Arc::clone(self),
            snapshot,
            certificates,
        }));
        registry
    }

    /// `/metrics` in the Prometheus text format.
    pub fn render(
        self: &Arc<Self>,
        snapshot: Arc<Snapshot>,
        certificates: Vec<CertExpiry>,
    ) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(
            &mut text,
            &self.registry(snapshot, certificates),
        );
        text
    }
}

/// What one configuration's request path records into.
#[derive(Debug)]
pub struct RequestMetrics {
    regions: Vec<Arc<RegionMetrics>>,
    unrouted: Arc<RegionMetrics>,
    /// `failovers[from * width + to]`.
    failovers: Vec<Arc<AtomicU64>>,
    width: usize,
    /// Requests in flight, by region and backend index.
    slots: Vec<Vec<Arc<Slots>>>,
}

impl RequestMetrics {
    /// The requests in flight on backend `backend` of region `region`.
    pub fn slots(&self, region: usize, backend: usize) -> Option<&Arc<Slots>> {
        self.slots.get(region)?.get(backend)
    }

    /// A request answered with `status` after `elapsed`, served by region
    /// `served` (none for Meridian's own answers) for a client preferring
    /// `preferred`.
    pub fn request(&self, preferred: usize, served: Option<usize>, status: u16, elapsed: Duration) {
        let region = served
            .and_then(|r| self.regions.get(r))
            .unwrap_or(&self.unrouted);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        region.requests[class].fetch_add(1, Ordering::Relaxed);
        region.duration.observe(elapsed);
        if let Some(to) = served.filter(|&to| to != preferred) {
            if let Some(c) = self.failovers.get(preferred * self.width + to) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A TLS certificate in force and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertExpiry {
    /// Its file.
    pub file: String,
    /// Its names, comma-separated.
    pub names: String,
    /// End of validity, in seconds since the Unix epoch.
    pub not_after: i64,
}

/// The collector behind `/metrics`.
#[derive(Debug)]
struct Scrape {
    metrics: Arc<Metrics>,
    snapshot: Arc<Snapshot>,
    certificates: Vec<CertExpiry>,
}

fn counter<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A counter without labels.
fn single_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(
        name,
        help,
        None,
        MetricType::Counter,
    )?)
}

fn gauge<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in values {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram<'a, L: EncodeLabelSet, const N: usize>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, &'a Histogram<N>)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in values {
        let (sum, count, buckets) = h.read();
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.metrics;
        let snapshot = &self.snapshot;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let regions: Vec<(String, Arc<RegionMetrics>)> = {
            let map = m.regions.lock().unwrap_or_else(|e| e.into_inner());
            let mut v: Vec<_> = map
                .iter()
                .map(|(k, r)| (k.clone(), Arc::clone(r)))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v.push(("none".into(), Arc::clone(&m.unrouted)));
            v
        };
        let failovers: Vec<(String, String, u64)> = {
            let map = m.failovers.lock().unwrap_or_else(|e| e.into_inner());
            let mut v: Vec<_> = map
                .iter()
                .filter(|((from, to), _)| from != to)
                .map(|((from, to), c)| (from.clone(), to.clone(), load(c)))
                .collect();
            v.sort();
            v
        };
        // Each configured region with its view.
        let views = || snapshot.config.regions.iter().zip(&snapshot.regions);

        counter(
            &mut encoder,
            "meridian_requests",
            "Requests answered, by serving region (none: Meridian's own answer) and status class.",
            regions.iter().flat_map(|(name, r)| {
                CLASSES.iter().zip(&r.requests).map(move |(class, c)| {
                    ([("region", name.as_str()), ("class", *class)], load(c))
                })
            }),
        )?;
        histogram(
            &mut encoder,
            "meridian_request_duration_seconds",
            "Time from request head to response head, by serving region.",
            regions
                .iter()
                .map(|(name, r)| ([("region", name.as_str())], &r.duration)),
        )?;
        gauge(
            &mut encoder,
            "meridian_backend_up",
            "1 when the backend takes traffic (healthy, not ejected, not drained).",
            views().flat_map(|(rc, rv)| {
                rc.backends.iter().zip(&rv.backends).map(|(bc, bv)| {
                    (
                        [
                            ("region", rc.name.as_str()),
                            ("backend", bc.address.as_str()),
                        ],
                        i64::from(bv.takes_traffic()),
                    )
                })
            }),
        )?;
        gauge(
            &mut encoder,
            "meridian_backend_requests_in_flight",
            "Requests sent to the backend whose response is not finished.",
            snapshot
                .config
                .regions
                .iter()
                .enumerate()
                .flat_map(|(r, rc)| {
                    let requests = &snapshot.generation.metrics;
                    rc.backends.iter().enumerate().map(move |(b, bc)| {
                        (
                            [
                                ("region", rc.name.as_str()),
                                ("backend", bc.address.as_str()),
                            ],
                            requests.slots(r, b).map_or(0, |s| s.taken() as i64),
                        )
                    })
                }),
        )?;
        const STATES: [&str; 5] = ["healthy", "degraded", "down", "drained", "unknown"];
        gauge(
            &mut encoder,
            "meridian_region_state",
            "1 for each region's current state.",
            views().flat_map(|(rc, rv)| {
                STATES.iter().map(|s| {
                    (
                        [("region", rc.name.as_str()), ("state", *s)],
                        i64::from(*s == rv.state.as_str()),
                    )
                })
            }),
        )?;
        gauge(
            &mut encoder,
            "meridian_region_single_failure_domain",
            "1 for a region whose backends taking traffic (two or more) all share one failure domain.",
            views().filter_map(|(rc, rv)| {
                let domain = rv.single_domain.as_deref()?;
                Some(([("region", rc.name.as_str()), ("domain", domain)], 1))
            }),
        )?;
        counter(
            &mut encoder,
            "meridian_failovers",
            "Requests served by another region than the client's preferred one.",
            failovers
                .iter()
                .map(|(from, to, c)| ([("from", from.as_str()), ("to", to.as_str())], *c)),
        )?;
        single_counter(
            &mut encoder,
            "meridian_retries",
            "Requests sent again to another backend after a failure.",
            load(&m.retries),
        )?;
        single_counter(
            &mut encoder,
            "meridian_hedges",
            "Requests raced on a second backend because the first was slow.",
            load(&m.hedges),
        )?;
        single_counter(
            &mut encoder,
            "meridian_backend_queue_timeouts",
            "Attempts given up on a backend at limits.backend_max_requests once the request's limits.backend_queue_timeout was spent.",
            load(&m.queue_timeouts),
        )?;
        counter(
            &mut encoder,
            "meridian_status_pages",
            "Status pages served, by reason.",
            RESCUES
                .iter()
                .zip(&m.status_pages)
                .map(|(r, c)| ([("reason", *r)], load(c))),
        )?;
        {
            let (sum, count, buckets) = m.health_checks.read();
            encoder
                .encode_descriptor(
                    "meridian_health_check_duration_seconds",
                    "Time an active health check took, whatever its result.",
                    None,
                    MetricType::Histogram,
                )?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        let dns: Vec<(String, DnsCounts)> = m
            .dns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, c)| (k.clone(), *c))
            .collect();
        counter(
            &mut encoder,
            "meridian_dns_lookups",
            "DNS lookups of backend names, by name and result (answered, failed).",
            dns.iter().flat_map(|(name, c)| {
                [("answered", c.answered), ("failed", c.failed)]
                    .map(|(result, n)| ([("name", name.as_str()), ("result", result)], n))
            }),
        )?;
        gauge(
            &mut encoder,
            "meridian_dns_addresses",
            "Addresses of each backend name in the last good answer.",
            dns.iter().map(|(name, c)| {
                (
                    [("name", name.as_str())],
                    i64::try_from(c.addresses).unwrap_or(i64::MAX),
                )
            }),
        )?;
        gauge(
            &mut encoder,
            "meridian_connections_open",
            "Client connections open, by listener.",
            ["http", "https"]
                .iter()
                .zip(&m.connections)
                .map(|(l, c)| ([("listener", *l)], c.load(Ordering::Relaxed))),
        )?;
        counter(
            &mut encoder,
            "meridian_config_reloads",
            "Configuration reloads, by result.",
            ["applied", "refused"]
                .iter()
                .zip(&m.reloads)
                .map(|(r, c)| ([("result", *r)], load(c))),
        )?;
        counter(
            &mut encoder,
            "meridian_alerts",
            "Alert deliveries to webhooks, by result (sent, failed after retries, dropped from a full queue).",
            ["sent", "failed", "dropped"]
                .iter()
                .zip(&m.alerts)
                .map(|(r, c)| ([("result", *r)], load(c))),
        )?;
        gauge(
            &mut encoder,
            "meridian_certificate_expiry_timestamp_seconds",
            "End of validity of each TLS certificate in force (Unix time).",
            self.certificates.iter().map(|c| {
                (
                    [("file", c.file.as_str()), ("names", c.names.as_str())],
                    c.not_after,
                )
            }),
        )?;
        gauge(
            &mut encoder,
            "meridian_build_info",
            "Always 1, labelled with the running version.",
            [([("version", env!("CARGO_PKG_VERSION"))], 1)],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_each_bucket_with_an_unbounded_last_one() {
        let h = Histogram::new(&CHECK_BUCKETS);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let (sum, count, buckets) = h.read();
        assert_eq!(count, 3);
        assert!((sum - 60.0035).abs() < 1e-9, "{sum}");
        assert_eq!(buckets[0], (0.001, 1));
        assert_eq!(buckets[1], (0.005, 1));
        assert_eq!(buckets[7], (5.0, 0));
        assert_eq!(buckets[8], (f64::MAX, 1));
    }

    #[test]
    fn an_observation_on_a_bound_counts_in_that_bucket() {
        let h = Histogram::new(&CHECK_BUCKETS);
        h.observe(Duration::from_millis(10));
        let (_, _, buckets) = h.read();
        assert_eq!(buckets[1], (0.005, 0));
        assert_eq!(buckets[2], (0.01, 1));
    }
}
