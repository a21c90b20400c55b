//! The routing decision in bulk: one million decisions (client address from
//! `X-Forwarded-For`, GeoIP lookup in the built-in database, mapping, plan),
//! counting heap allocations and reading the resident set size before and
//! after, to show that deciding allocates nothing and memory does not grow.
//!
//! Run with `cargo bench --bench decisions`. Under `cargo test` it runs a
//! thousand decisions only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};
use meridian::config::Config;
use meridian::health::BackendState;
use meridian::state::{BackendView, RegionState, RegionView};
use meridian::{geo, routing};

/// Counts allocations made through the system allocator.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

#[allow(unsafe_code)]
// SAFETY: every call is passed on unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CONFIG: &str = r#"
[geo]
default_region = "ap"
trusted_proxies = ["10.0.0.0/8"]
[[geo.override]]
cidr = "192.0.2.0/24"
region = "eu"
[[region]]
name = "us"
countries = ["US", "CA", "MX"]
continents = ["NA", "SA"]
failover = ["eu"]
backends = ["http://10.0.0.1:80", "http://10.0.0.2:80", "http://10.0.0.3:80"]
[[region]]
name = "eu"
continents = ["EU", "AF"]
failover = ["us"]
backends = ["http://10.1.0.1:80", "http://10.1.0.2:80"]
[[region]]
name = "ap"
continents = ["AS", "OC"]
failover = ["us"]
backends = ["http://10.2.0.1:80"]
"#;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let decisions: u32 = if full { 1_000_000 } else { 1_000 };
    let config = Config::parse("decisions.toml", CONFIG).unwrap();
    let db = geo::GeoDb::built_in();
    let locator = geo::Locator::new(&config);
    let trusted = geo::TrustedProxies::new(
        config.geo.trusted_proxies.clone(),
        config.geo.forwarding_header,
    );
    let views: Vec<RegionView> = config
        .regions
        .iter()
        .map(|r| RegionView {
            state: RegionState::Healthy,
            held: false,
            ramp_permille: 1000,
            drained: false,
            backends: vec![
                BackendView {
                    state: BackendState::Up,
                    last_error: None,
                    ejections: 0,
                    drained: false,
                    domain: None,
                    discovered: false,
                };
                r.backends.len()
            ],
            single_domain: None,
        })
        .collect();
    // Clients spread over the whole IPv4 space, each behind a trusted proxy.
    let headers: Vec<HeaderMap> = (0..1024u32)
        .map(|i| {
            let ip = Ipv4Addr::from(i.wrapping_mul(2_654_435_761));
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_static("x-forwarded-for"),
                HeaderValue::from_str(&format!("{ip}, 10.9.9.9")).unwrap(),
            );
            h
        })
        .collect();
    let peer = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));
    let decide = |i: u32| {
        let client = geo::client_ip(peer, &headers[(i % 1024) as usize], &trusted);
        let location = locator.locate(&db, client);
        routing::plan(
            &config.regions,
            &views,
            location.region,
            i as usize,
            u64::from(i),
            3,
        )
    };
    // Warm up: first touches of the mapped database and the code.
    for i in 0..10_000 {
        black_box(decide(i));
    }
    let rss_before = rss_kib();
    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    let started = tokio::time::Instant::now();
    let mut per_region = [0u64; 3];
    for i in 0..decisions {
        let plan = black_box(decide(i));
        per_region[plan.preferred] += 1;
    }
    let took = started.elapsed();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations_before;
    let rss_after = rss_kib();
    println!("decisions:              {decisions}");
    println!(
        "mean time per decision: {:.0} ns",
        took.as_nanos() as f64 / f64::from(decisions)
    );
    println!("heap allocations:       {allocations}");
    println!("resident set before:    {rss_before} KiB");
    println!("resident set after:     {rss_after} KiB");
    println!("preferred us/eu/ap:     {per_region:?}");
    assert_eq!(allocations, 0, "a routing decision allocates nothing");
}
