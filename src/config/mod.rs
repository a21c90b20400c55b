//! Configuration: the TOML file is parsed into serde types (`file`), then
//! validated into the checked [`Config`] used everywhere else. Every problem is
//! collected and reported with the file, line, column and key.
//!
//! Relative paths in the file (`logo`, `template`, `token_file`, `ca_file`)
//! are resolved against the current working directory, as the process sees
//! it at start-up.

mod alerts;
mod backend_tls;
mod dns;
mod error;
mod file;
#[cfg(test)]
mod tests;
mod tls;
mod validate;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

pub use backend_tls::{BackendTls, BackendTlsError, Roots, TlsSettings};
pub use error::{ConfigError, ConfigIssue};

/// A validated configuration. Regions are referred to by their index in `regions`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration came from, as given (used in messages).
    pub source: String,
    /// The file it was loaded from, re-read on reload; `None` for a
    /// configuration given as text (the demo, tests).
    pub path: Option<std::path::PathBuf>,
    /// Public listeners.
    pub listen: Listen,
    /// TLS termination, when `listen.https` is set.
    pub tls: Option<Tls>,
    /// The admin listener, when `[admin]` is present.
    pub admin: Option<Admin>,
    /// How a client's preferred region is chosen.
    pub geo: Geo,
    /// Every region, in file order.
    pub regions: Vec<Region>,
    /// How requests are forwarded to backends.
    pub proxy: Proxy,
    /// Resource limits of the public listener.
    pub limits: Limits,
    /// Branding of the status page served when no region can serve.
    pub status_page: StatusPage,
    /// `[alerts]`: where region transitions are pushed. None without the table.
    pub alerts: Option<Alerts>,
    /// `[log]`: the log's format and level, and the access log.
    pub log: Log,
    /// `[dns]`: how backend host names are resolved into backends.
    pub dns: Dns,
}

/// `[dns]`: backend host names are resolved into one backend per address,
/// and resolved again when their records expire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// Name servers asked instead of those of `/etc/resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
    /// Records are kept at least this long, whatever their TTL. Default 1 s.
    pub min_ttl: Duration,
    /// Records are asked again after this long at most. Default 60 s.
    pub max_ttl: Duration,
    /// Longest one resolution may take. Default 2 s.
    pub timeout: Duration,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            nameservers: Vec::new(),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(2),
        }
    }
}

/// `[log]`: how Meridian logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    /// A `tracing` filter such as `info` or `info,meridian::access=off`;
    /// `RUST_LOG` wins when set. Default `info`.
    pub level: String,
    /// One line per event (`plain`, the default) or one JSON object (`json`).
    pub format: LogFormat,
    /// One event per request, with the routing decision. Default true.
    pub access: bool,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: LogFormat::Plain,
            access: true,
        }
    }
}

/// How log events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// `[alerts]`: webhooks told of every region transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alerts {
    /// URLs each alert is POSTed to (Slack-compatible JSON).
    pub webhooks: Vec<http::Uri>,
    /// Transitions within this window of the first go out as one message. Default 2 s.
    pub group_window: Duration,
    /// Longest one delivery may take. Default 5 s.
    pub timeout: Duration,
    /// Deliveries tried again after a failure, 1 s, 2 s, 4 s … apart. Default 3.
    pub retries: u32,
    /// Alerts waiting to be sent; beyond it the oldest is dropped. Default 100.
    pub queue: usize,
}

/// `[listen]`: where clients connect.
#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    /// Plain HTTP listener. Default `0.0.0.0:8080`.
    pub http: SocketAddr,
    /// HTTPS listener, terminating TLS with `[tls]`. No default.
    pub https: Option<SocketAddr>,
    /// Plain HTTP is answered `308` to the HTTPS URL. Default false.
    pub redirect_to_https: bool,
    /// HTTP/2 by prior knowledge (h2c) on the plain listener. Default false.
    pub h2c: bool,
    /// Read a PROXY protocol (v1 or v2) header from `geo.trusted_proxies`
    /// peers before the request. Default false.
    pub proxy_protocol: bool,
}

/// `[tls]`: certificates for `listen.https`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// `cert`/`key` first (the default for an unknown or missing SNI name),
    /// then each `[[tls.certificate]]`.
    pub certificates: Vec<CertFiles>,
    /// `Strict-Transport-Security` sent on answers over TLS. No default.
    pub hsts: Option<http::HeaderValue>,
    /// How often the files are checked for a change. Default 10 s.
    pub reload_interval: Duration,
    /// `[tls.acme]`: certificates obtained and renewed automatically.
    pub acme: Option<Acme>,
}

/// `[tls.acme]`: an ACME account and the domains it keeps a certificate for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// The ACME directory URL.
    pub directory: String,
    /// Contact e-mail of the account, if any.
    pub email: Option<String>,
    /// The names of the certificate, in order (lower case, no wildcards).
    pub domains: Vec<String>,
    /// Where the account key and the certificate are kept across restarts.
    pub cache: std::path::PathBuf,
    /// Roots that the ACME server's own HTTPS certificate is checked against,
    /// instead of the system's (a private or test CA).
    pub ca_file: Option<std::path::PathBuf>,
    /// A certificate is renewed this long before it expires. Default 30 days.
    pub renew_before: Duration,
}

/// One certificate's PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The chain, leaf first.
    pub cert: std::path::PathBuf,
    /// The private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: std::path::PathBuf,
}

/// `[admin]`: the operators' listener.
#[derive(Clone, PartialEq)]
pub struct Admin {
    /// Address of the admin listener. Default `127.0.0.1:9901`.
    pub listen: SocketAddr,
    /// Bearer token for `/api/v1`; `None` leaves a loopback-only API open.
    pub token: Option<String>,
    /// Where drains and the incident are saved; `None` keeps them in memory only.
    pub state_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("state_file", &self.state_file)
            .finish()
    }
}

/// `[geo]`: the preferred region of a client.
#[derive(Debug, Clone)]
pub struct Geo {
    /// Region used when nothing else matches. Default: the first region.
    pub default_region: usize,
    /// `[[geo.override]]` CIDRs, matched longest prefix first.
    pub overrides: Vec<GeoOverride>,
    /// A MaxMind DB file (`database`); `None` uses the built-in country database.
    pub database: Option<std::path::PathBuf>,
    /// Peers whose forwarding header is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// The forwarding header the trusted proxies maintain. Default `X-Forwarded-For`.
    pub forwarding_header: ForwardingHeader,
    /// How often the database file is checked for a new version. Default 10 s.
    pub reload_interval: Duration,
    /// Request header naming a region, honoured from trusted proxies only.
    /// Default `X-Meridian-Pin`; `None` when set to `""`.
    pub pin_header: Option<http::HeaderName>,
    /// Name of the sticky-region cookie; `None` (the default) turns it off.
    pub sticky_cookie: Option<String>,
    /// Lifetime of the sticky-region cookie. Default 30 minutes.
    pub sticky_ttl: Duration,
}

/// `geo.forwarding_header`: the header trusted proxies maintain; the other
/// one is never read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardingHeader {
    /// `"x-forwarded-for"`, which nearly every proxy appends to.
    #[default]
    XForwardedFor,
    /// `"forwarded"` (RFC 7239).
    Forwarded,
}

/// One `[[geo.override]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoOverride {
    /// Client network.
    pub net: IpNet,
    /// Index of the region it is sent to.
    pub region: usize,
}

/// One `[[region]]`.
#[derive(Debug, Clone)]
pub struct Region {
    /// Unique name (`us`, `eu`, ...).
    pub name: String,
    /// ISO 3166-1 alpha-2 country codes this region serves.
    pub countries: Vec<String>,
    /// Continent codes (AF AN AS EU NA OC SA) this region serves.
    pub continents: Vec<String>,
    /// Regions to try, in order, when this one cannot serve.
    pub failover: Vec<usize>,
    /// The name as a header value, for `X-Meridian-Region` on every response.
    pub name_header: http::HeaderValue,
    /// The region's backends.
    pub backends: Vec<Backend>,
    /// Active health check settings.
    pub health: Health,
    /// Backends that must be up for the region to count as healthy rather
    /// than degraded (`min_healthy`). Default: all of them.
    pub min_healthy: Option<usize>,
    /// How long a region that was down must stay up before its users are
    /// sent back to it (`failback_hold`). Default 5 s.
    pub failback_hold: Duration,
    /// After the hold, the share of the region's users sent back to it grows
    /// linearly over this time (`slow_start`). Default zero: all at once.
    pub slow_start: Duration,
    /// Overrides `proxy.first_byte_timeout` for this region's backends.
    pub first_byte_timeout: Option<Duration>,
    /// Passive health checking of live traffic.
    pub outlier: Outlier,
    /// The only CA certificates its https backends are verified against
    /// (`ca_file`, PEM); `None` uses the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

/// One backend of a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `http://host:port` or `https://host:port`, without path.
    pub url: http::Uri,
    /// `host:port`, the backend's name in the admin API and logs.
    pub address: String,
    /// `address` as a `Host` header value, for when the client's is not kept.
    pub host_header: http::HeaderValue,
    /// How an `https://` backend is reached over TLS; `None` for `http://`.
    pub tls: Option<BackendTls>,
    /// The failure domain (node, zone) it runs in, as the configuration says.
    pub domain: Option<String>,
    /// For a backend found by DNS: the configured `name:port` whose record
    /// gave its address. `url` and `address` then hold the address, while
    /// `host_header` and the TLS server name keep the name.
    pub discovered_from: Option<String>,
}

impl Backend {
    /// The host name to resolve into backends, when the configured host is
    /// a name rather than an IP address.
    pub fn dns_name(&self) -> Option<&str> {
        if self.discovered_from.is_some() {
            return None;
        }
        let host = self.url.host()?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<std::net::IpAddr>().is_err().then_some(host)
    }

    /// The port connections go to.
    pub fn port(&self) -> u16 {
        let default = if self.url.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        self.url.port_u16().unwrap_or(default)
    }
}

/// `[region.health]`: the active health check.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// Request method. Default `GET`.
    pub method: http::Method,
    /// Path requested. Default `/healthz`.
    pub path: String,
    /// `Host` header of checks. Default: the backend's `host:port`.
    pub host: Option<http::HeaderValue>,
    /// Statuses that pass, as inclusive ranges. Default 200-399.
    pub expect_status: Vec<(u16, u16)>,
    /// Text the response body must contain, when set (the body is read up to 64 KiB).
    pub expect_body: Option<String>,
    /// A response header of the check naming the backend's failure domain
    /// (its node or zone), overriding the configured one.
    pub failure_domain_header: Option<http::HeaderName>,
    /// Time between checks. Default 1 s.
    pub interval: Duration,
    /// Time a check may take. Default 800 ms.
    pub timeout: Duration,
    /// Consecutive passes that bring a down backend up. Default 2.
    pub rise: u32,
    /// Consecutive failures that take an up backend down. Default 2.
    pub fall: u32,
    /// Each wait between checks is `interval` times a random factor in
    /// `1 ± jitter`, so that checks of many backends do not synchronise.
    /// From 0 to 0.5. Default 0.1.
    pub jitter: f64,
    /// State of a backend before its first check. Default `Unknown`.
    pub initial_state: InitialState,
}

/// `health.initial_state`: what a backend is before its first check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialState {
    /// Takes no traffic until its first check passes (`"unknown"`).
    Unknown,
    /// Takes traffic at once; `fall` failures take it down (`"up"`).
    Up,
    /// Takes no traffic until `rise` checks pass (`"down"`).
    Down,
}

/// `[region.outlier]`: passive health checking. Consecutive failures of live
/// requests eject a backend at once, for a time that grows with each
/// ejection; active checks bring it back once the time is over.
#[derive(Debug, Clone, PartialEq)]
pub struct Outlier {
    /// Consecutive failures that eject a backend; 0 turns passive checks off. Default 5.
    pub consecutive_failures: u32,
    /// Which failures count. Default: connect, reset, timeout, gateway.
    pub failures: FailureKinds,
    /// Ejection time of a first ejection; the n-th in a row lasts n times as long. Default 5 s.
    pub base_ejection_time: Duration,
    /// Longest ejection. Default 300 s.
    pub max_ejection_time: Duration,
    /// Largest share of the region's backends ejected at once, in percent.
    /// One backend may always be ejected, unless this is 0. Default 50.
    pub max_ejected_percent: u8,
}

/// The kinds of request failure that `[region.outlier]` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureKinds {
    /// `"connect"`: the connection could not be opened.
    pub connect: bool,
    /// `"reset"`: the connection closed before a response head.
    pub reset: bool,
    /// `"timeout"`: no response head within the first-byte timeout, or a
    /// hedged request answered first elsewhere.
    pub timeout: bool,
    /// `"gateway"`: a 502, 503 or 504 answer.
    pub gateway: bool,
    /// `"5xx"`: any 500-599 answer (includes `gateway`).
    pub server_error: bool,
}

/// `[proxy]`: forwarding to backends.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// Time allowed to open a backend connection. Default 2 s.
    pub connect_timeout: Duration,
    /// Time from the request being sent whole to the response head. Default 30 s.
    pub first_byte_timeout: Duration,
    /// Longest pause between two pieces of a backend's response body; after
    /// it the client's connection is closed, so a cut body never passes for
    /// a complete one. Default 60 s (nginx's `proxy_read_timeout`).
    pub read_timeout: Duration,
    /// Longest a write to a backend may wait for the backend to read, as when
    /// it stops reading a request body. Default 60 s.
    pub send_timeout: Duration,
    /// Forward the client's `Host` unchanged (default) rather than the backend's.
    pub preserve_host: bool,
    /// Most backends one request is tried on. Default 3.
    pub max_attempts: usize,
    /// How long an idle pooled backend connection is kept. Default 4 s:
    /// shorter than the keep-alive timeout of common backends (Node.js 5 s),
    /// so that Meridian, not the backend, closes idle connections and a
    /// request is never written to a connection the backend is closing.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per backend. Default 1024: HTTP/2
    /// clients multiplex many requests, each needing its own HTTP/1.1
    /// backend connection, and one closed for want of room is one more
    /// connect per request.
    pub pool_max_idle_per_backend: usize,
    /// Name the serving region in an `X-Meridian-Region` response header. Default true.
    pub region_header: bool,
    /// Methods retried after the backend may have seen the request (a reset,
    /// a first-byte timeout, a 502/503/504) and hedged. Only idempotent
    /// methods are allowed. Default GET, HEAD, OPTIONS.
    pub retry_methods: Vec<http::Method>,
    /// Largest request body kept for a retry (`replay_buffer`, bytes); a
    /// larger body streams and is not retried. Default 64 KiB.
    pub replay_buffer: usize,
    /// Bounds retries and hedges together.
    pub retry_budget: RetryBudget,
    /// Hedging of slow idempotent requests; `None` when `hedge = false`.
    pub hedge: Option<Hedge>,
    /// Longest an upgraded connection (WebSocket) may carry nothing in
    /// either direction before it is closed. Default 60 s, as nginx's
    /// `proxy_read_timeout`, which is what closes WebSockets behind nginx.
    pub upgrade_idle_timeout: Duration,
    /// How long upgraded connections on a drained region or backend keep
    /// going before they are closed, so that clients can finish and
    /// reconnect elsewhere; 0 closes them at once. Default 30 s.
    pub drain_grace: Duration,
}

/// `proxy.retry_budget_*`: retries and hedges may add at most `ratio` of
/// the requests seen in `window`, plus `min_per_second`. Retries of requests
/// that never reached a backend (connection refused) are not counted, nor the
/// one retry per request on a keep-alive connection that closed as it was reused.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudget {
    /// `retry_budget_ratio`, from 0 to 1. Default 0.2.
    pub ratio: f64,
    /// `retry_budget_window`, from 1 s to 60 s. Default 10 s.
    pub window: Duration,
    /// `retry_budget_min_per_second`, always allowed. Default 10.
    pub min_per_second: u32,
}

/// `proxy.hedge_*`: an idempotent request with no response head after a
/// delay derived from the region's observed latency (four times its moving
/// average, kept between `min_delay` and `max_delay`) is also sent to the
/// next candidate; the first answer wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hedge {
    /// `hedge_min_delay`. Default 50 ms.
    pub min_delay: Duration,
    /// `hedge_max_delay`. Default 250 ms.
    pub max_delay: Duration,
}

/// `[limits]`: bounds on what clients may hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Streams a client may have open at once on one HTTP/2 connection. Default 100.
    pub http2_max_concurrent_streams: u32,
    /// Streams a client may reset before they are processed, before the
    /// connection is closed (rapid-reset protection). Default 20.
    pub http2_max_pending_resets: usize,
    /// Client connections served at once; more wait in the accept backlog. Default 10 000.
    pub max_connections: usize,
    /// Largest request head (request line and headers) in bytes; more is a 431. Default 64 KiB.
    pub max_header_bytes: usize,
    /// Most header fields in a request; more is a 431. Default 100.
    pub max_headers: usize,
    /// Time a client has to send a complete request head. Default 10 s.
    pub header_read_timeout: Duration,
    /// Time an idle keep-alive connection is kept open. Default 5 s (as Apache's `KeepAliveTimeout`).
    pub keepalive_idle_timeout: Duration,
    /// Longest pause between two pieces of a client's request body. Default
    /// 60 s (nginx's `client_body_timeout`); after it the request ends with 408.
    pub client_body_timeout: Duration,
    /// Bytes per second a request body must average, judged after each 20 s
    /// spent waiting for the client; a slower one ends with 408. gRPC calls
    /// are exempt. 0 turns it off. Default 500 (as Apache's
    /// `RequestReadTimeout body=…,MinRate=500`).
    pub client_body_min_rate: u64,
    /// Longest a write to a client may wait for the client to read. Default
    /// 60 s (nginx's `send_timeout`); after it the connection is closed.
    pub send_timeout: Duration,
    /// Time requests in flight get to finish on shutdown. Default 30 s.
    pub shutdown_grace: Duration,
    /// Requests one backend serves at once, from the request sent until its
    /// response body is done. Default 1 000.
    pub backend_max_requests: usize,
    /// Longest a request waits for a full backend before it goes to the next
    /// candidate, or gets the status page. Default 1 s.
    pub backend_queue_timeout: Duration,
}

/// `[status_page]`: branding of the page shown when nothing can serve.
#[derive(Debug, Clone)]
pub struct StatusPage {
    /// Company or product name. Default "Meridian".
    pub brand: String,
    /// Page heading.
    pub title: String,
    /// Text under the heading.
    pub message: String,
    /// The logo as a `data:` URI, so that the page loads nothing from elsewhere.
    pub logo: Option<String>,
    /// Where users can read more.
    pub support_url: Option<String>,
    /// Accent colour, `#rgb` or `#rrggbb`. Default `#2f5bea`.
    pub accent_color: String,
    /// `Retry-After` sent with the page. Default 30 s.
    pub retry_after: Duration,
    /// The operator's own template source, replacing `static/status.html`.
    pub template: Option<String>,
    /// Backend answers with these statuses (500–599) are replaced by the
    /// status page, unless they are JSON or carry `X-Meridian-Passthrough`.
    /// Default 502, 503 and 504; empty turns interception off.
    pub intercept: Vec<http::StatusCode>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let mut config = Config::parse(&file, &text)?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Validates configuration `text`; `file` names it in messages.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        validate::parse(file, text)
    }

    /// Index of the region called `name`.
    pub fn region_index(&self, name: &str) -> Option<usize> {
        self.regions.iter().position(|r| r.name == name)
    }

    /// Settings that are valid but probably not what was meant.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.limits.keepalive_idle_timeout > self.limits.header_read_timeout {
            out.push(format!(
                "limits.keepalive_idle_timeout ({:?}) is longer than limits.header_read_timeout ({:?}): idle connections close after the shorter one, because the wait for the next request head counts as reading headers",
                self.limits.keepalive_idle_timeout, self.limits.header_read_timeout
            ));
        }
        let mut no_system_roots = false;
        for r in &self.regions {
            let https = r.backends.iter().filter_map(|b| b.tls.as_ref());
            if r.ca_file.is_some() && https.clone().next().is_none() {
                out.push(format!(
                    "region \"{}\": ca_file is set but none of its backends uses https://, so it is not used",
                    r.name
                ));
            }
            no_system_roots |= https
                .into_iter()
                .any(|t| t.settings.roots == Roots::System { certificates: 0 });
            if r.health.timeout > r.health.interval {
                out.push(format!(
                    "region \"{}\": health.timeout ({:?}) is longer than health.interval ({:?}): a hanging backend is checked less often than configured",
                    r.name, r.health.timeout, r.health.interval
                ));
            }
            if let Some(hedge) = &self.proxy.hedge {
                let (timeout, key) = match r.first_byte_timeout {
                    Some(t) => (t, "first_byte_timeout"),
                    None => (self.proxy.first_byte_timeout, "proxy.first_byte_timeout"),
                };
                if timeout < hedge.max_delay {
                    out.push(format!(
                        "region \"{}\": {key} ({:?}) is shorter than proxy.hedge_max_delay ({:?}): a slow request may time out before it is hedged",
                        r.name, timeout, hedge.max_delay
                    ));
                }
            }
        }
        if no_system_roots {
            out.push(
                "no system root certificate could be loaded: https backends without ca_file will fail certificate verification; install the system's CA certificates or set ca_file".to_owned(),
            );
        }
        out
    }

    /// A short human summary, as printed by `meridian check`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "{}: OK", self.source);
        let _ = writeln!(out, "listen: http {}", self.listen.http);
        match &self.admin {
            Some(a) => {
                let auth = if a.token.is_some() {
                    "token"
                } else {
                    "no token"
                };
                let _ = writeln!(out, "admin:  {} ({auth})", a.listen);
            }
            None => {
                let _ = writeln!(out, "admin:  off");
            }
        }
        let _ = writeln!(out, "regions:");
        for r in &self.regions {
            let failover: Vec<&str> = r
                .failover
                .iter()
                .map(|&i| self.regions[i].name.as_str())
                .collect();
            let failover = if failover.is_empty() {
                "none".to_owned()
            } else {
                failover.join(" -> ")
            };
            let _ = writeln!(
                out,
                "  {} ({} backend{}; failover: {}; health: {} {} every {}, timeout {}, rise {}, fall {})",
                r.name,
                r.backends.len(),
                if r.backends.len() == 1 { "" } else { "s" },
                failover,
                r.health.method,
                r.health.path,
                humantime_serde::re::humantime::format_duration(r.health.interval),
                humantime_serde::re::humantime::format_duration(r.health.timeout),
                r.health.rise,
                r.health.fall,
            );
            for b in &r.backends {
                let by_dns = if b.dns_name().is_some() {
                    " (a DNS name: one backend per address)"
                } else {
                    ""
                };
                match &b.tls {
                    Some(tls) => {
                        let _ = writeln!(
                            out,
                            "    https://{}{by_dns} (verified against {})",
                            b.address, tls.settings.roots
                        );
                    }
                    None => {
                        let _ = writeln!(out, "    http://{}{by_dns}", b.address);
                    }
                }
            }
            if !r.countries.is_empty() {
                let _ = writeln!(out, "    countries: {}", r.countries.join(" "));
            }
            if !r.continents.is_empty() {
                let _ = writeln!(out, "    continents: {}", r.continents.join(" "));
            }
            let passive = if r.outlier.consecutive_failures == 0 {
                "off".to_owned()
            } else {
                format!(
                    "eject after {} failures in a row, for {} and longer",
                    r.outlier.consecutive_failures,
                    humantime_serde::re::humantime::format_duration(r.outlier.base_ejection_time)
                )
            };
            let _ = writeln!(
                out,
                "    passive checks: {passive}; fail-back hold {}",
                humantime_serde::re::humantime::format_duration(r.failback_hold)
            );
        }
        let _ = writeln!(
            out,
            "geo: {} override{}, default region {}",
            self.geo.overrides.len(),
            if self.geo.overrides.len() == 1 {
                ""
            } else {
                "s"
            },
            self.regions[self.geo.default_region].name
        );
        if self
            .regions
            .iter()
            .flat_map(|r| &r.backends)
            .any(|b| b.dns_name().is_some())
        {
            let servers = if self.dns.nameservers.is_empty() {
                "the name servers of /etc/resolv.conf".to_owned()
            } else {
                let list: Vec<String> =
                    self.dns.nameservers.iter().map(|a| a.to_string()).collect();
                list.join(", ")
            };
            let _ = writeln!(
                out,
                "dns: backend names asked of {servers}, again after their TTL ({} to {})",
                humantime_serde::re::humantime::format_duration(self.dns.min_ttl),
                humantime_serde::re::humantime::format_duration(self.dns.max_ttl),
            );
        }
        out
    }
}
