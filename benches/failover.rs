//! Failover scenario runner: replays outages of a half-alive node against an
//! in-process Meridian under steady load, and prints what the clients saw.
//!
//! Run with `cargo bench --bench failover` (optionally followed by a scenario
//! name, such as `cargo bench --bench failover -- hang`). Under
//! `cargo test --all-targets` it does nothing.
//!
//! Every scenario starts a fresh Meridian with two regions of one real hyper
//! backend each: "us" (the clients' default region, failing over to "eu")
//! and "eu" (failing over to "us"). A client sends `GET /` at 200 requests/s
//! for 2 s, then the us backend fails for 6 s, then it recovers and the load
//! goes on until traffic is back on us (or 15 s passed).
//!
//! Meridian alerts a webhook receiver of the runner's own; the table says
//! how long after the fault the first alert about us arrived. Health checks
//! run every 500 ms; `--interval=MS` changes that (the alert figure of the
//! README uses `--interval=1000`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meridian::config::Config;
use meridian::server::{self, Running};
use meridian::state::RegionState;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant, MissedTickBehavior};
use tokio_util::task::TaskTracker;

/// Time between two requests of the load (200 requests/s).
const PERIOD: Duration = Duration::from_millis(5);
/// Steady load before the fault.
const WARM_UP: Duration = Duration::from_secs(2);
/// How long the fault lasts.
const FAULT: Duration = Duration::from_secs(6);
/// Longest load after recovery.
const AFTER_RECOVERY: Duration = Duration::from_secs(15);
/// Traffic counts as back on us once this long of sent requests all went there.
const SETTLED: Duration = Duration::from_secs(1);
/// A request with no complete answer after this counts as failed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Half-period of the flapping fault.
const FLAP: Duration = Duration::from_secs(1);
/// Body of the backends' own 503.
const RAW_503: &str = "<html>nginx 503</html>";

// --- Backends ---------------------------------------------------------------

/// How a backend behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answers 200 with its name.
    Ok,
    /// Not listening: connections are refused, open ones are closed.
    Refuse,
    /// Accepts connections and reads requests, never answers.
    Hang,
    /// Answers everything, health checks included, with nginx's 503.
    Raw503,
}

/// A real hyper backend on loopback whose mode can be switched at run time.
struct Backend {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let (mode, rx) = watch::channel(Mode::Ok);
        let task = tokio::spawn(serve_backend(listener, addr, name, rx));
        Backend { addr, mode, task }
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_backend(
    listener: TcpListener,
    addr: SocketAddr,
    name: &'static str,
    mut mode: watch::Receiver<Mode>,
) {
    let mut listener = Some(listener);
    loop {
        if *mode.borrow_and_update() == Mode::Refuse {
            // Dropping the listener closes the port: connects are refused.
            listener = None;
            if mode.changed().await.is_err() {
                return;
            }
            continue;
        }
        let l = match listener.take() {
            Some(l) => l,
            None => match TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(_) => {
                    sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
        };
        loop {
            tokio::select! {
                changed = mode.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *mode.borrow() == Mode::Refuse {
                        break;
                    }
                }
                accepted = l.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_connection(stream, name, mode.clone()));
                }
            }
        }
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    name: &'static str,
    mut mode: watch::Receiver<Mode>,
) {
    let service = {
        let mode = mode.clone();
        service_fn(move |req| answer(name, *mode.borrow(), req))
    };
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    // A backend that stops listening has died: its connections die with it.
    let refused = async {
        loop {
            if *mode.borrow_and_update() == Mode::Refuse || mode.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = conn => {}
        _ = refused => {}
    }
}

async fn answer(
    name: &'static str,
    mode: Mode,
    _req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match mode {
        Mode::Hang => std::future::pending().await,
        Mode::Raw503 => (StatusCode::SERVICE_UNAVAILABLE, RAW_503),
        Mode::Ok | Mode::Refuse => (StatusCode::OK, name),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    Ok(response)
}

// --- Scenarios --------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Refuse,
    Hang,
    /// `Hang` with passive checks off: only hedging and the active checks.
    HangActiveOnly,
    Raw503,
    Flap,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::Refuse,
        Scenario::Hang,
        Scenario::HangActiveOnly,
        Scenario::Raw503,
        Scenario::Flap,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Refuse => "refuse",
            Scenario::Hang => "hang",
            Scenario::HangActiveOnly => "hang-no-passive",
            Scenario::Raw503 => "raw503",
            Scenario::Flap => "flap",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Scenario::Refuse => "us backend stops listening (connection refused)",
            Scenario::Hang => "us backend accepts and reads requests, never answers",
            Scenario::HangActiveOnly => {
                "as hang, with passive checks off: hedging and active checks alone"
            }
            Scenario::Raw503 => "us backend answers everything with nginx's raw 503",
            Scenario::Flap => "us backend alternates raw 503 / healthy every 1 s",
        }
    }
}

fn config_text(
    us: SocketAddr,
    eu: SocketAddr,
    passive: bool,
    webhook: SocketAddr,
    interval: Duration,
) -> String {
    let outlier = if passive {
        ""
    } else {
        "[region.outlier]\nconsecutive_failures = 0\n"
    };
    let interval = interval.as_millis();
    let timeout = (interval * 4 / 5).max(1);
    format!(
        r#"[listen]
http = "127.0.0.1:0"

[alerts]
webhooks = ["http://{webhook}/hook"]

[geo]
default_region = "us"

[[region]]
name = "us"
failover = ["eu"]
backends = ["http://{us}"]

[region.health]
interval = "{interval}ms"
timeout = "{timeout}ms"
{outlier}
[[region]]
name = "eu"
failover = ["us"]
backends = ["http://{eu}"]

[region.health]
interval = "{interval}ms"
timeout = "{timeout}ms"
"#
    )
}

/// A webhook on loopback: when each alert message arrived, and its JSON.
async fn webhook() -> (SocketAddr, Arc<Mutex<Vec<(Instant, serde_json::Value)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let log = Arc::clone(&log);
                    async move {
                        let at = Instant::now();
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        if let Ok(body) = body {
                            if let Ok(json) = serde_json::from_slice(&body) {
                                log.lock().expect("webhook lock").push((at, json));
                            }
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received)
}

/// One request of the load, as the client saw it.
#[derive(Debug, Clone)]
struct Record {
    sent: Instant,
    latency: Duration,
    /// The status, or `None` when no complete answer came.
    status: Option<StatusCode>,
    /// The `x-meridian-region` header.
    region: Option<String>,
    /// The body is a backend's raw 503.
    raw_503: bool,
    /// Why no complete answer came.
    error: Option<String>,
}

impl Record {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.is_success())
    }

    fn served_by(&self, region: &str) -> bool {
        self.ok() && self.region.as_deref() == Some(region)
    }

    fn failure(&self) -> String {
        match (&self.status, &self.error) {
            (_, Some(e)) => format!("error: {e}"),
            (Some(s), None) => format!(
                "{} (x-meridian-region: {}){}",
                s.as_u16(),
                self.region.as_deref().unwrap_or("none"),
                if self.raw_503 {
                    ", raw nginx 503 body"
                } else {
                    ""
                }
            ),
            (None, None) => "no answer".into(),
        }
    }
}

/// A change of region states seen by the poller.
#[derive(Debug, Clone)]
struct StateSample {
    at: Instant,
    us: RegionState,
    us_held: bool,
    eu: RegionState,
    /// Why the us backend's last check failed, if it did.
    us_error: Option<String>,
}

/// What one scenario measured.
struct Outcome {
    scenario: Scenario,
    t0: Instant,
    t_fault: Instant,
    t_recover: Instant,
    records: Vec<Record>,
    states: Vec<StateSample>,
    settled: bool,
    /// When the first alert about us reached the webhook.
    alert_at: Option<Instant>,
}

type LoadClient = Client<HttpConnector, Empty<Bytes>>;

async fn send_one(client: LoadClient, url: Arc<str>, records: Arc<Mutex<Vec<Record>>>) {
    let sent = Instant::now();
    let request = Request::get(&*url)
        .body(Empty::new())
        .expect("valid request");
    let result = tokio::time::timeout(CLIENT_TIMEOUT, async {
        let response = client.request(request).await.map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        })?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok::<_, String>((parts, body))
    })
    .await;
    let latency = sent.elapsed();
    let record = match result {
        Ok(Ok((parts, body))) => Record {
            sent,
            latency,
            status: Some(parts.status),
            region: parts
                .headers
                .get("x-meridian-region")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            raw_503: String::from_utf8_lossy(&body).contains("nginx 503"),
            error: None,
        },
        Ok(Err(e)) => Record {
            sent,
            latency,
            status: None,
            region: None,
            raw_503: false,
            error: Some(e),
        },
        Err(_) => Record {
            sent,
            latency,
            status: None,
            region: None,
            raw_503: false,
            error: Some(format!("client timeout after {CLIENT_TIMEOUT:?}")),
        },
    };
    records.lock().expect("records lock").push(record);
}

/// Whether every request sent in the last [`SETTLED`] (of those answered)
/// after `since` was served by us, and at least one was.
fn back_on_us(records: &[Record], since: Instant) -> bool {
    let after: Vec<&Record> = records.iter().filter(|r| r.sent >= since).collect();
    let Some(latest) = after.iter().map(|r| r.sent).max() else {
        return false;
    };
    let last_other = after
        .iter()
        .filter(|r| !r.served_by("us"))
        .map(|r| r.sent)
        .max();
    let first_us = after
        .iter()
        .filter(|r| r.served_by("us"))
        .map(|r| r.sent)
        .min();
    match (first_us, last_other) {
        (None, _) => false,
        (Some(f), None) => latest.duration_since(f) >= SETTLED,
        (Some(_), Some(o)) => latest.duration_since(o) >= SETTLED,
    }
}

async fn run(scenario: Scenario, interval: Duration) -> Result<(Outcome, Config), String> {
    let us = Backend::start("us-1").await;
    let eu = Backend::start("eu-1").await;
    let (hook, alerts) = webhook().await;
    let text = config_text(
        us.addr,
        eu.addr,
        scenario != Scenario::HangActiveOnly,
        hook,
        interval,
    );
    let config =
        Config::parse("failover.toml", &text).map_err(|e| format!("config invalid: {e}"))?;
    let running: Running = server::start(config.clone())
        .await
        .map_err(|e| format!("meridian does not start: {e}"))?;
    let shared = Arc::clone(&running.shared);

    // Both regions must serve before the load starts.
    let ready_by = Instant::now() + Duration::from_secs(10);
    loop {
        let snapshot = shared.load();
        if snapshot.regions.iter().all(|r| r.state.serves() && !r.held) {
            break;
        }
        if Instant::now() >= ready_by {
            return Err("regions did not become healthy within 10 s".into());
        }
        sleep(Duration::from_millis(10)).await;
    }

    // Region state poller.
    let states = Arc::new(Mutex::new(Vec::<StateSample>::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let poller = {
        let states = Arc::clone(&states);
        let shared = Arc::clone(&shared);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                let snapshot = shared.load();
                let sample = StateSample {
                    at: Instant::now(),
                    us: snapshot.regions[0].state,
                    us_held: snapshot.regions[0].held,
                    eu: snapshot.regions[1].state,
                    us_error: snapshot.regions[0].backends[0].last_error.clone(),
                };
                let mut states = states.lock().expect("states lock");
                let changed = states.last().is_none_or(|last| {
                    (last.us, last.us_held, last.eu) != (sample.us, sample.us_held, sample.eu)
                });
                if changed {
                    states.push(sample);
                }
            }
        })
    };

    // Load.
    let records = Arc::new(Mutex::new(Vec::<Record>::with_capacity(8192)));
    let requests = TaskTracker::new();
    let t0 = Instant::now();
    let load = {
        let client: LoadClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let url: Arc<str> = format!("http://{}/", running.http_addr).into();
        let records = Arc::clone(&records);
        let requests = requests.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(t0, PERIOD);
            tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                requests.spawn(send_one(
                    client.clone(),
                    Arc::clone(&url),
                    Arc::clone(&records),
                ));
            }
        })
    };

    // Fault.
    // Halfway between two requests, so that none is sent at the very instant.
    sleep_until(t0 + WARM_UP + PERIOD / 2).await;
    let t_fault = Instant::now();
    let flapper = match scenario {
        Scenario::Refuse => {
            us.set(Mode::Refuse);
            None
        }
        Scenario::Hang | Scenario::HangActiveOnly => {
            us.set(Mode::Hang);
            None
        }
        Scenario::Raw503 => {
            us.set(Mode::Raw503);
            None
        }
        Scenario::Flap => {
            let mode = us.mode.clone();
            Some(tokio::spawn(async move {
                let mut failing = true;
                loop {
                    mode.send_replace(if failing { Mode::Raw503 } else { Mode::Ok });
                    failing = !failing;
                    sleep(FLAP).await;
                }
            }))
        }
    };

    // Recovery.
    sleep_until(t_fault + FAULT).await;
    if let Some(flapper) = flapper {
        flapper.abort();
        let _ = flapper.await;
    }
    us.set(Mode::Ok);
    let t_recover = Instant::now();

    let mut settled = false;
    while Instant::now() < t_recover + AFTER_RECOVERY {
        sleep(Duration::from_millis(100)).await;
        if back_on_us(&records.lock().expect("records lock"), t_recover) {
            settled = true;
            break;
        }
    }

    stop_tx.send_replace(true);
    let _ = load.await;
    let _ = poller.await;
    requests.close();
    if tokio::time::timeout(CLIENT_TIMEOUT + Duration::from_secs(1), requests.wait())
        .await
        .is_err()
    {
        eprintln!("{}: requests still in flight at the end", scenario.name());
    }
    if tokio::time::timeout(Duration::from_secs(5), running.shutdown())
        .await
        .is_err()
    {
        eprintln!("{}: Meridian did not shut down within 5 s", scenario.name());
    }
    drop(us);
    drop(eu);

    let mut records = std::mem::take(&mut *records.lock().expect("records lock"));
    records.sort_by_key(|r| r.sent);
    let states = std::mem::take(&mut *states.lock().expect("states lock"));
    // The first alert about us after the fault.
    let alert_at = alerts
        .lock()
        .expect("webhook lock")
        .iter()
        .filter(|(at, _)| *at >= t_fault)
        .find(|(_, m)| {
            m["alerts"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a["region"] == "us"))
        })
        .map(|(at, _)| *at);
    Ok((
        Outcome {
            scenario,
            t0,
            t_fault,
            t_recover,
            records,
            states,
            settled,
            alert_at,
        },
        config,
    ))
}

// --- Report -----------------------------------------------------------------

fn secs(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.2} s", d.as_secs_f64()),
        None => "—".into(),
    }
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Region switches between consecutive answered requests (by send time)
/// sent in `from..to`, starting from `baseline` (where traffic went before).
fn switches(records: &[Record], baseline: &str, from: Instant, to: Instant) -> usize {
    let mut previous = Some(baseline);
    let mut n = 0;
    for r in records
        .iter()
        .filter(|r| r.sent >= from && r.sent < to && r.ok())
    {
        let region = r.region.as_deref();
        if previous.is_some() && region != previous {
            n += 1;
        }
        previous = region;
    }
    n
}

/// The send time after which every answered request in `from..to` was
/// served by `region`, as a time since `from`; `None` if the last one was not.
fn all_on(records: &[Record], region: &str, from: Instant, to: Instant) -> Option<Duration> {
    let window: Vec<&Record> = records
        .iter()
        .filter(|r| r.sent >= from && r.sent < to && r.ok())
        .collect();
    let last = window.last()?;
    if !last.served_by(region) {
        return None;
    }
    let start = match window.iter().rposition(|r| !r.served_by(region)) {
        Some(i) => window[i + 1].sent,
        None => window[0].sent,
    };
    Some(start.duration_since(from))
}

struct Row {
    cells: Vec<String>,
}

fn row(o: &Outcome) -> Row {
    let r = &o.records;
    let failed = r.iter().filter(|r| !r.ok()).count();
    let raw = r.iter().filter(|r| r.raw_503).count();
    let mut after: Vec<Duration> = r
        .iter()
        .filter(|r| r.sent >= o.t_fault)
        .map(|r| r.latency)
        .collect();
    after.sort();
    let worst = after.last().copied().unwrap_or_default();
    let p99 = after
        .get((after.len() * 99 / 100).min(after.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default();
    let to_eu = all_on(r, "eu", o.t_fault, o.t_recover);
    let us_down = o
        .states
        .iter()
        .find(|s| s.at >= o.t_fault && !s.us.serves())
        .map(|s| s.at.duration_since(o.t_fault));
    let end = r.last().map(|r| r.sent + PERIOD).unwrap_or(o.t_recover);
    let first_us = r
        .iter()
        .find(|r| r.sent >= o.t_recover && r.served_by("us"))
        .map(|r| r.sent.duration_since(o.t_recover));
    let all_us = if o.settled {
        all_on(r, "us", o.t_recover, end)
    } else {
        None
    };
    Row {
        cells: vec![
            o.scenario.name().into(),
            r.len().to_string(),
            failed.to_string(),
            raw.to_string(),
            millis(worst),
            millis(p99),
            secs(to_eu),
            secs(us_down),
            secs(o.alert_at.map(|a| a.duration_since(o.t_fault))),
            secs(first_us),
            secs(all_us),
            switches(r, "us", o.t_fault, o.t_recover).to_string(),
        ],
    }
}

const HEADERS: [&str; 12] = [
    "scenario",
    "requests",
    "failed",
    "raw 503 bodies",
    "worst latency after fault",
    "p99 after fault",
    "fault → all on eu",
    "fault → us not serving",
    "fault → alert delivered",
    "recovery → first on us",
    "recovery → all on us",
    "switches in fault window",
];

fn print_table(rows: &[Row]) {
    println!("| {} |", HEADERS.join(" | "));
    println!(
        "|{}",
        HEADERS
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for row in rows {
        println!("| {} |", row.cells.join(" | "));
    }
}

/// Signed seconds of `t` relative to `base`.
fn rel(t: Instant, base: Instant) -> String {
    if t >= base {
        format!("+{:.2} s", t.duration_since(base).as_secs_f64())
    } else {
        format!("-{:.2} s", base.duration_since(t).as_secs_f64())
    }
}

fn print_details(o: &Outcome) {
    println!("### {} — {}\n", o.scenario.name(), o.scenario.description());
    println!(
        "Times relative to the fault; recovery at {}, load ended at {}{}.",
        rel(o.t_recover, o.t_fault),
        rel(
            o.records.last().map(|r| r.sent).unwrap_or(o.t_recover),
            o.t_fault
        ),
        if o.settled {
            ""
        } else {
            " (traffic not settled back on us)"
        }
    );
    println!(
        "Region states: {}",
        o.states
            .iter()
            .map(|s| format!(
                "{} us={}{}{} eu={}",
                rel(s.at, o.t_fault),
                s.us.as_str(),
                if s.us_held { "(held)" } else { "" },
                match (&s.us_error, s.us.serves()) {
                    (Some(e), false) => format!(" ({e})"),
                    _ => String::new(),
                },
                s.eu.as_str()
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let phases = [
        ("warm-up", o.t0, o.t_fault),
        ("fault", o.t_fault, o.t_recover),
        ("after recovery", o.t_recover, o.t_recover + AFTER_RECOVERY),
    ];
    println!(
        "Served by (x-meridian-region of 2xx answers): {}",
        phases
            .iter()
            .map(|(name, from, to)| {
                let mut by: BTreeMap<&str, usize> = BTreeMap::new();
                for r in o.records.iter().filter(|r| r.sent >= *from && r.sent < *to) {
                    if r.ok() {
                        *by.entry(r.region.as_deref().unwrap_or("none")).or_default() += 1;
                    }
                }
                let by: Vec<String> = by.iter().map(|(k, v)| format!("{k} {v}")).collect();
                format!("{name}: {}", by.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    );
    let mut failures: BTreeMap<String, (usize, Instant, Instant, Duration)> = BTreeMap::new();
    for r in o.records.iter().filter(|r| !r.ok()) {
        let e = failures
            .entry(r.failure())
            .or_insert((0, r.sent, r.sent, Duration::ZERO));
        e.0 += 1;
        e.1 = e.1.min(r.sent);
        e.2 = e.2.max(r.sent);
        e.3 = e.3.max(r.latency);
    }
    if failures.is_empty() {
        println!("Failed requests: none.");
    } else {
        println!("Failed requests:");
        for (what, (n, first, last, worst)) in &failures {
            println!(
                "- {n} × {what}, sent from {} to {}, slowest {}",
                rel(*first, o.t_fault),
                rel(*last, o.t_fault),
                millis(*worst)
            );
        }
    }
    println!();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("failover scenarios are not run as tests: use `cargo bench --bench failover`");
        return;
    }
    let filter = args.iter().find(|a| !a.starts_with('-')).cloned();
    let interval = args
        .iter()
        .find_map(|a| a.strip_prefix("--interval="))
        .map_or(Duration::from_millis(500), |ms| {
            Duration::from_millis(ms.parse().expect("--interval=MILLISECONDS"))
        });
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| filter.as_deref().is_none_or(|f| s.name().contains(f)))
        .collect();
    if scenarios.is_empty() {
        eprintln!(
            "no scenario matches {:?}; scenarios: refuse, hang, raw503, flap",
            filter.unwrap_or_default()
        );
        std::process::exit(2);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let mut outcomes = Vec::new();
        let mut config = None;
        for scenario in scenarios {
            eprintln!("running {} ...", scenario.name());
            match run(scenario, interval).await {
                Ok((outcome, c)) => {
                    outcomes.push(outcome);
                    config = Some(c);
                }
                Err(e) => {
                    eprintln!("{}: {e}", scenario.name());
                    std::process::exit(1);
                }
            }
        }
        let Some(config) = config else { return };
        let us = &config.regions[0];
        let h = &us.health;
        println!("## Meridian failover scenarios\n");
        println!(
            "Config (both regions): health interval {:?}, timeout {:?}, rise {}, fall {}, \
             jitter {}, failback_hold {:?}, slow_start {}; outlier consecutive_failures {}, \
             base_ejection_time {:?}; proxy first_byte_timeout {:?}, connect_timeout {:?}, \
             max_attempts {}, hedge {}, retry budget {} + {}/s.",
            h.interval,
            h.timeout,
            h.rise,
            h.fall,
            h.jitter,
            us.failback_hold,
            humantime_serde::re::humantime::format_duration(us.slow_start),
            us.outlier.consecutive_failures,
            us.outlier.base_ejection_time,
            config.proxy.first_byte_timeout,
            config.proxy.connect_timeout,
            config.proxy.max_attempts,
            match &config.proxy.hedge {
                Some(hedge) => format!("{:?}..{:?}", hedge.min_delay, hedge.max_delay),
                None => "off".into(),
            },
            config.proxy.retry_budget.ratio,
            config.proxy.retry_budget.min_per_second,
        );
        println!(
            "Load: GET / at {} requests/s, client timeout {:?}; warm-up {:?}, fault {:?}, \
             then until all traffic is back on us for {:?} (at most {:?}).\n",
            1000 / PERIOD.as_millis(),
            CLIENT_TIMEOUT,
            WARM_UP,
            FAULT,
            SETTLED,
            AFTER_RECOVERY
        );
        let rows: Vec<Row> = outcomes.iter().map(row).collect();
        print_table(&rows);
        println!();
        for o in &outcomes {
            print_details(o);
        }
    });
}
