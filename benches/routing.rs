//! Micro-benchmarks of the request path's pure parts: the client address,
//! the GeoIP lookup and mapping, the routing plan, the whole routing
//! decision, header rewriting, status page rendering, and metrics.
//!
//! Run with `cargo bench --bench routing`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue, Version};
use meridian::config::Config;
use meridian::health::BackendState;
use meridian::state::{BackendView, RegionState, RegionView};
use meridian::status_page::{PublicIncident, PublicRegion, Rescue, Situation, StatusPages};
use meridian::{geo, headers, routing};

const CONFIG: &str = r#"
[geo]
default_region = "us"
trusted_proxies = ["10.0.0.0/8"]
[[geo.override]]
cidr = "10.0.0.0/8"
region = "eu"
[[geo.override]]
cidr = "10.1.0.0/16"
region = "us"
[[region]]
name = "us"
countries = ["US", "CA"]
continents = ["NA", "SA"]
failover = ["eu"]
backends = ["http://10.0.0.1:80", "http://10.0.0.2:80", "http://10.0.0.3:80", "http://10.0.0.4:80"]
[[region]]
name = "eu"
failover = ["us"]
backends = ["http://10.1.0.1:80", "http://10.1.0.2:80"]
"#;

fn views(us: BackendState) -> Vec<RegionView> {
    let view = |n: usize, s: BackendState| RegionView {
        state: if s == BackendState::Up {
            RegionState::Healthy
        } else {
            RegionState::Down
        },
        held: false,
        ramp_permille: 1000,
        drained: false,
        backends: vec![
            BackendView {
                state: s,
                last_error: None,
                ejections: 0,
                drained: false,
                domain: None,
                discovered: false,
            };
            n
        ],
        single_domain: None,
    };
    vec![view(4, us), view(2, BackendState::Up)]
}

fn bench_routing(c: &mut Criterion) {
    let config = Config::parse("bench.toml", CONFIG).unwrap();
    let healthy = views(BackendState::Up);
    let us_down = views(BackendState::Down);
    let db = geo::GeoDb::built_in();
    let locator = geo::Locator::new(&config);
    let trusted = geo::TrustedProxies::new(
        config.geo.trusted_proxies.clone(),
        config.geo.forwarding_header,
    );
    let overridden = "10.1.2.3".parse().unwrap();
    let public = "8.8.8.8".parse().unwrap();
    c.bench_function("geo: override", |b| {
        b.iter(|| locator.locate(black_box(&db), black_box(overridden)))
    });
    c.bench_function("geo: built-in database lookup and mapping", |b| {
        b.iter(|| locator.locate(black_box(&db), black_box(public)))
    });
    let mut forwarded = HeaderMap::new();
    forwarded.insert(
        HeaderName::from_static("x-forwarded-for"),
        HeaderValue::from_static("8.8.8.8, 10.9.9.9"),
    );
    let peer = "10.0.0.7".parse().unwrap();
    c.bench_function(
        "geo::client_ip (X-Forwarded-For from a trusted proxy)",
        |b| b.iter(|| geo::client_ip(black_box(peer), black_box(&forwarded), &trusted)),
    );
    let mut rotation = 0usize;
    c.bench_function(
        "routing decision (client address, lookup, mapping, plan)",
        |b| {
            b.iter(|| {
                rotation = rotation.wrapping_add(1);
                let client = geo::client_ip(black_box(peer), black_box(&forwarded), &trusted);
                let location = locator.locate(&db, client);
                routing::plan(
                    &config.regions,
                    black_box(&healthy),
                    location.region,
                    rotation,
                    7,
                    3,
                )
            })
        },
    );
    c.bench_function("routing::plan (preferred healthy)", |b| {
        b.iter(|| {
            rotation = rotation.wrapping_add(1);
            routing::plan(&config.regions, black_box(&healthy), 0, rotation, 7, 3)
        })
    });
    c.bench_function("routing::plan (failover)", |b| {
        b.iter(|| {
            rotation = rotation.wrapping_add(1);
            routing::plan(&config.regions, black_box(&us_down), 0, rotation, 7, 3)
        })
    });
}

fn browser_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "app.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"),
        ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        ("accept-language", "en-US,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "session=abcdef0123456789; theme=dark"),
        ("connection", "keep-alive"),
        ("x-forwarded-for", "198.51.100.7"),
    ] {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn bench_headers(c: &mut Criterion) {
    let template = browser_headers();
    let client = "203.0.113.9".parse().unwrap();
    c.bench_function("headers::forward_request (8 headers)", |b| {
        b.iter_batched(
            || template.clone(),
            |mut h| {
                headers::forward_request(&mut h, Version::HTTP_11, client, "http");
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn bench_status_page(c: &mut Criterion) {
    let config = Config::parse("bench.toml", CONFIG).unwrap();
    let pages = StatusPages::new(&config.status_page).unwrap();
    let regions = vec![
        PublicRegion {
            name: "us".into(),
            up: false,
        },
        PublicRegion {
            name: "eu".into(),
            up: false,
        },
    ];
    let html = browser_headers();
    let json = HeaderMap::new();
    let plain = Situation {
        regions: &regions,
        incident: None,
    };
    let with_incident = Situation {
        regions: &regions,
        incident: Some(PublicIncident::new(
            INCIDENT_TITLE,
            INCIDENT_MESSAGE,
            Some("https://status.example.com/incidents/2026-01-01"),
        )),
    };
    c.bench_function("status_page html", |b| {
        b.iter(|| pages.respond(Rescue::NoRegion, black_box(&plain), &html))
    });
    c.bench_function("status_page json", |b| {
        b.iter(|| pages.respond(Rescue::NoRegion, black_box(&plain), &json))
    });
    c.bench_function("status_page html, with an incident", |b| {
        b.iter(|| pages.respond(Rescue::NoRegion, black_box(&with_incident), &html))
    });
    c.bench_function("status_page json, with an incident", |b| {
        b.iter(|| pages.respond(Rescue::NoRegion, black_box(&with_incident), &json))
    });
    c.bench_function("status_page public endpoint, with an incident", |b| {
        b.iter(|| pages.public_status(&http::Method::GET, false, black_box(with_incident.incident)))
    });
}

/// An incident of a realistic length: a headline and a few sentences.
const INCIDENT_TITLE: &str = "Checkout and sign-in are unavailable";
const INCIDENT_MESSAGE: &str = "A database failover in our US region is taking longer than \
expected. Orders placed before 14:05 UTC are safe. We will post the next update within 30 \
minutes; this page reloads by itself as soon as service returns.";

/// `/metrics` of a configuration with 10 regions of 10 backends each, after
/// some traffic in every region.
fn bench_metrics(c: &mut Criterion) {
    use std::sync::Arc;
    let mut text = String::new();
    for r in 0..10 {
        let backends: Vec<String> = (0..10)
            .map(|b| format!("\"http://10.{r}.0.{b}:80\""))
            .collect();
        text.push_str(&format!(
            "[[region]]\nname = \"r{r}\"\nbackends = [{}]\n",
            backends.join(", ")
        ));
    }
    let config = Arc::new(Config::parse("bench.toml", &text).unwrap());
    let metrics = Arc::new(meridian::metrics::Metrics::default());
    let generation = Arc::new(meridian::generation::Generation::new(config, 0, &metrics).unwrap());
    for r in 0..10 {
        for status in [200, 404, 503] {
            generation.metrics.request(
                r,
                Some((r + 1) % 10),
                status,
                std::time::Duration::from_millis(3),
            );
        }
    }
    let snapshot = Arc::new(meridian::state::Snapshot::initial(
        Arc::clone(&generation),
        Arc::default(),
    ));
    let scraped = metrics.render(Arc::clone(&snapshot), Vec::new());
    assert!(scraped.contains("meridian_backend_up{region=\"r9\",backend=\"10.9.0.9:80\"} 0"));
    c.bench_function("metrics: /metrics text, 10 regions x 10 backends", |b| {
        b.iter(|| black_box(metrics.render(Arc::clone(&snapshot), Vec::new())).len())
    });
    c.bench_function("metrics: record one request", |b| {
        b.iter(|| {
            generation.metrics.request(
                black_box(1),
                black_box(Some(2)),
                black_box(200),
                black_box(std::time::Duration::from_micros(800)),
            )
        })
    });
}

criterion_group!(
    benches,
    bench_routing,
    bench_headers,
    bench_status_page,
    bench_metrics
);
criterion_main!(benches);
