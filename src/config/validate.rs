//! Turns the serde view of the file into a checked [`Config`], collecting every
//! problem rather than stopping at the first.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use ipnet::IpNet;
use toml::Spanned;

use super::backend_tls::{self, BackendTls, Roots, TlsSettings};
use super::error::{ConfigError, ConfigIssue, Issues};
use super::file::{self, Dur, FileConfig, Num, StatusFile};
use super::{
    Admin, Backend, Config, FailureKinds, ForwardingHeader, Geo, GeoOverride, Health, Hedge,
    InitialState, Limits, Listen, Outlier, Proxy, Region, RetryBudget, StatusPage,
};

/// Continent codes as GeoIP databases spell them.
const CONTINENTS: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

/// Largest logo inlined into the status page.
const MAX_LOGO_BYTES: u64 = 256 * 1024;

/// The smallest head buffer hyper accepts.
const MIN_HEADER_BYTES: i64 = 8192;

/// Most unknown keys reported from one file before reading stops.
const MAX_UNKNOWN_KEYS: usize = 50;

/// Methods an active health check may use.
const HEALTH_METHODS: [&str; 4] = ["GET", "HEAD", "OPTIONS", "POST"];

/// Methods that may be retried or hedged: the idempotent ones (RFC 9110, 9.2.2).
const RETRY_METHODS: [&str; 6] = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"];

/// Standard methods that are not idempotent, refused in `proxy.retry_methods`
/// with the reason.
const NON_IDEMPOTENT_METHODS: [&str; 3] = ["POST", "PATCH", "CONNECT"];

/// `region.outlier.failures` names, in the order of [`FailureKinds`]' fields.
const FAILURE_KINDS: [&str; 5] = ["connect", "reset", "timeout", "gateway", "5xx"];

/// Statuses replaced by the status page when `status_page.intercept` is not set.
const DEFAULT_INTERCEPT: [u16; 3] = [502, 503, 504];

/// Largest `proxy.replay_buffer`: 16 MiB.
const MAX_REPLAY_BUFFER: i64 = 16 << 20;

pub(super) fn parse(file_name: &str, text: &str) -> Result<Config, ConfigError> {
    let mut found = Vec::new();
    let mut current = std::borrow::Cow::Borrowed(text);
    // serde stops at the first unknown key. Each one is reported, then blanked
    // out (offsets kept, so lines stay right) and the file read again, so that
    // one run of `meridian check` lists every unknown key and every other
    // problem after them.
    let raw = loop {
        let de = toml::Deserializer::new(&current);
        match serde_path_to_error::deserialize::<_, FileConfig>(de) {
            Ok(raw) => break Some(raw),
            Err(e) => {
                let (issue, unknown_at) = shape_issue(file_name, text, e);
                found.push(issue);
                let blanked = unknown_at
                    .filter(|_| found.len() < MAX_UNKNOWN_KEYS)
                    .and_then(|at| blank_key_value(&current, at));
                match blanked {
                    Some(next) => current = std::borrow::Cow::Owned(next),
                    None => break None,
                }
            }
        }
    };
    if let Some(raw) = raw {
        let mut issues = Issues::new(file_name, text);
        let config = check(file_name, raw, &mut issues);
        if issues.is_empty() && found.is_empty() {
            return Ok(config);
        }
        found.extend(issues.into_vec());
    }
    Err(ConfigError::Invalid(found))
}

/// The issue for a serde error, and where its key starts when the error is
/// an unknown key (which can be blanked out and reading resumed).
fn shape_issue(
    file_name: &str,
    text: &str,
    e: serde_path_to_error::Error<toml::de::Error>,
) -> (ConfigIssue, Option<usize>) {
    let key = e.path().to_string();
    let inner = e.into_inner();
    let start = inner.span().map(|s| s.start);
    let (line, column) = start.map_or((1, 1), |s| super::error::line_col(text, s));
    // Spanned values add a private segment to the path that users never wrote.
    let key = key.replace(".$__serde_spanned_private_value", "");
    let key = if key == "." { String::new() } else { key };
    let unknown_at = start.filter(|_| inner.message().starts_with("unknown field"));
    // serde names its own enum; users wrote a backend.
    let message = if key.contains("backends[") && inner.message().contains("untagged") {
        "invalid backend: expected a URL string such as \"http://10.0.0.1:8080\", or a table { url = \"http://10.0.0.1:8080\", domain = \"node-a\" }".to_owned()
    } else {
        tidy_serde_message(inner.message())
    };
    let issue = ConfigIssue {
        file: file_name.to_owned(),
        line,
        column,
        key,
        message,
    };
    (issue, unknown_at)
}

/// `text` with the `key = value` pair whose key starts at `key_start`
/// replaced by spaces (newlines kept, so every offset stays the same), or
/// `None` when it is not a plain key-value pair (a whole table, say).
fn blank_key_value(text: &str, key_start: usize) -> Option<String> {
    use toml_edit::{Item, TableLike, Value};

    fn find(table: &dyn TableLike, key_start: usize) -> Option<std::ops::Range<usize>> {
        for (name, item) in table.iter() {
            let (key, _) = table.get_key_value(name)?;
            if key.span().is_some_and(|s| s.start == key_start) {
                return match item {
                    Item::Value(v) => v.span().map(|v| key_start..v.end),
                    _ => None,
                };
            }
            let nested = match item {
                Item::Table(t) => find(t, key_start),
                Item::ArrayOfTables(a) => a.iter().find_map(|t| find(t, key_start)),
                Item::Value(Value::InlineTable(t)) => find(t, key_start),
                _ => None,
            };
            if nested.is_some() {
                return nested;
            }
        }
        None
    }

    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let range = find(doc.as_table(), key_start)?;
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..range.start]);
    // One space per byte, so that multi-byte characters keep their width too.
    out.extend(
        text[range.clone()]
            .bytes()
            .map(|b| if b == b'\n' { '\n' } else { ' ' }),
    );
    out.push_str(&text[range.end..]);
    Some(out)
}

/// serde says "unknown field"; users write keys.
fn tidy_serde_message(message: &str) -> String {
    message
        .trim()
        .replace("unknown field", "unknown key")
        .replace("missing field", "missing key")
}

pub(super) fn span<T>(s: &Spanned<T>) -> Range<usize> {
    s.span()
}

/// Validates everything, recording problems in `issues`. The returned config is
/// only meaningful when no issue was recorded.
fn check(file_name: &str, raw: FileConfig, issues: &mut Issues) -> Config {
    let FileConfig {
        listen,
        tls,
        admin,
        geo,
        region,
        proxy,
        limits,
        status_page,
        alerts,
        log,
        dns,
    } = raw;

    let listen_file = listen;
    let listen = Listen {
        http: socket_addr(
            issues,
            "listen.http",
            listen_file.http.as_ref(),
            "0.0.0.0:8080",
        ),
        https: listen_file
            .https
            .as_ref()
            .map(|h| socket_addr(issues, "listen.https", Some(h), "0.0.0.0:8443")),
        redirect_to_https: listen_file
            .redirect_to_https
            .as_ref()
            .is_some_and(|p| *p.get_ref()),
        h2c: listen_file.h2c.as_ref().is_some_and(|p| *p.get_ref()),
        proxy_protocol: listen_file
            .proxy_protocol
            .as_ref()
            .is_some_and(|p| *p.get_ref()),
    };
    let tls = super::tls::check_tls(issues, &listen_file, tls);
    let admin = admin.map(|a| check_admin(issues, a));
    let regions = check_regions(issues, &region);
    let geo = check_geo(issues, geo, &regions);
    if let Some(p) = &listen_file.proxy_protocol {
        if *p.get_ref() && geo.trusted_proxies.is_empty() {
            issues.at(
                span(p),
                "listen.proxy_protocol",
                "the PROXY protocol is read only from geo.trusted_proxies, and none is set: list your load balancers there",
            );
        }
    }
    let proxy = check_proxy(issues, proxy);
    let limits = check_limits(issues, limits);
    let status_page = check_status_page(issues, status_page);
    let alerts = alerts.and_then(|a| super::alerts::check_alerts(issues, a));
    let log = check_log(issues, log);
    let dns = super::dns::check_dns(issues, dns);

    Config {
        source: file_name.to_owned(),
        path: None,
        listen,
        tls,
        admin,
        geo,
        regions,
        proxy,
        limits,
        status_page,
        alerts,
        log,
        dns,
    }
}

fn check_log(issues: &mut Issues, raw: file::LogFile) -> super::Log {
    let mut log = super::Log::default();
    if let Some(level) = raw.level {
        match tracing_subscriber::EnvFilter::try_new(level.get_ref()) {
            Ok(_) => log.level = level.get_ref().clone(),
            Err(e) => issues.at(
                span(&level),
                "log.level",
                format!(
                    "invalid filter \"{}\" ({e}): expected a level such as \"info\" or \"warn\", or directives such as \"info,meridian::access=off\"",
                    level.get_ref()
                ),
            ),
        }
    }
    if let Some(format) = raw.format {
        match format.get_ref().as_str() {
            "plain" => log.format = super::LogFormat::Plain,
            "json" => log.format = super::LogFormat::Json,
            other => issues.at(
                span(&format),
                "log.format",
                format!("invalid format \"{other}\": expected \"plain\" or \"json\""),
            ),
        }
    }
    log.access = raw.access.unwrap_or(true);
    log
}

fn socket_addr(
    issues: &mut Issues,
    key: &str,
    value: Option<&Spanned<String>>,
    default: &str,
) -> SocketAddr {
    let fallback: SocketAddr = default.parse().expect("default address parses");
    let Some(value) = value else { return fallback };
    value.get_ref().parse().unwrap_or_else(|_| {
        issues.at(
            span(value),
            key,
            format!(
                "invalid address \"{}\": expected IP:PORT such as \"0.0.0.0:8080\" or \"[::]:8080\"",
                value.get_ref()
            ),
        );
        fallback
    })
}

fn check_admin(issues: &mut Issues, admin: file::AdminFile) -> Admin {
    let file::AdminFile {
        listen,
        token_env,
        token_file,
        state_file,
    } = admin;
    let listen_span = listen.as_ref().map(span);
    // A token that was asked for but could not be read is reported on its own.
    let token_configured = token_env.is_some() || token_file.is_some();
    let listen = socket_addr(issues, "admin.listen", listen.as_ref(), "127.0.0.1:9901");
    let token = match (token_env, token_file) {
        (Some(env), Some(_)) => {
            issues.at(
                span(&env),
                "admin.token_env",
                "set either token_env or token_file, not both",
            );
            None
        }
        (Some(env), None) => match std::env::var(env.get_ref()) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
            _ => {
                issues.at(
                    span(&env),
                    "admin.token_env",
                    format!(
                        "environment variable {} is not set or empty: expected the admin bearer token in it",
                        env.get_ref()
                    ),
                );
                None
            }
        },
        (None, Some(path)) => match std::fs::read_to_string(path.get_ref()) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
            Ok(_) => {
                issues.at(
                    span(&path),
                    "admin.token_file",
                    format!(
                        "{} is empty: expected the admin bearer token in it",
                        path.get_ref()
                    ),
                );
                None
            }
            Err(e) => {
                issues.at(
                    span(&path),
                    "admin.token_file",
                    format!("cannot read {}: {e}", path.get_ref()),
                );
                None
            }
        },
        (None, None) => None,
    };
    if token.is_none() && !token_configured && !listen.ip().is_loopback() {
        issues.at(
            listen_span.unwrap_or(0..0),
            "admin.listen",
            format!(
                "the admin listener {listen} is not on loopback, so it needs a token: set admin.token_env or admin.token_file"
            ),
        );
    }
    let state_file = state_file.and_then(|f| {
        let path = std::path::PathBuf::from(f.get_ref());
        // The file itself may not exist yet; its directory must, or no drain
        // could ever be saved.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        if f.get_ref().is_empty() || path.is_dir() {
            issues.at(
                span(&f),
                "admin.state_file",
                format!("\"{}\" is not a file name: expected a path such as /var/lib/meridian/state.json", f.get_ref()),
            );
            None
        } else if !dir.is_dir() {
            issues.at(
                span(&f),
                "admin.state_file",
                format!(
                    "directory {} does not exist: create it, or point state_file elsewhere",
                    dir.display()
                ),
            );
            None
        } else {
            Some(path)
        }
    });
    Admin {
        listen,
        token,
        state_file,
    }
}

fn check_regions(issues: &mut Issues, raw: &[file::RegionFile]) -> Vec<Region> {
    if raw.is_empty() {
        issues.at(
            0..0,
            "region",
            "no region is configured: expected at least one [[region]] with a name and backends",
        );
    }
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, r) in raw.iter().enumerate() {
        let name = r.name.get_ref().as_str();
        let key = format!("region[{i}].name");
        if !valid_name(name) {
            issues.at(
                span(&r.name),
                key,
                format!("invalid region name \"{name}\": expected letters, digits, '-' or '_'"),
            );
        } else if index.contains_key(name) {
            issues.at(
                span(&r.name),
                key,
                format!("duplicate region name \"{name}\": each [[region]] needs its own name"),
            );
        } else {
            index.insert(name, i);
        }
    }

    let mut country_owner: HashMap<String, (usize, &str)> = HashMap::new();
    let mut continent_owner: HashMap<String, (usize, &str)> = HashMap::new();
    let mut tls = TlsChoices::default();
    let mut regions = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let name = r.name.get_ref().as_str();
        let countries = codes(
            issues,
            &r.countries,
            &format!("region[{i}].countries"),
            (i, name),
            &mut country_owner,
            |c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()),
            "an ISO 3166-1 alpha-2 country code such as \"US\"",
        );
        let continents = codes(
            issues,
            &r.continents,
            &format!("region[{i}].continents"),
            (i, name),
            &mut continent_owner,
            |c| CONTINENTS.contains(&c),
            "one of AF AN AS EU NA OC SA",
        );

        let mut failover = Vec::new();
        for (j, f) in r.failover.iter().enumerate() {
            let key = format!("region[{i}].failover[{j}]");
            match index.get(f.get_ref().as_str()) {
                None => issues.at(
                    span(f),
                    key,
                    format!(
                        "unknown region \"{}\": expected one of {}",
                        f.get_ref(),
                        names(&index)
                    ),
                ),
                Some(&target) if target == i => issues.at(
                    span(f),
                    key,
                    format!("region \"{name}\" cannot fail over to itself"),
                ),
                Some(target) if failover.contains(target) => issues.at(
                    span(f),
                    key,
                    format!("region \"{}\" is listed twice", f.get_ref()),
                ),
                Some(&target) => failover.push(target),
            }
        }

        let roots = match &r.ca_file {
            None => RegionRoots::System,
            Some(f) => match TlsSettings::from_ca_file(Path::new(f.get_ref())) {
                Ok(settings) => RegionRoots::CaFile(Arc::new(settings)),
                Err(e) => {
                    issues.at(span(f), format!("region[{i}].ca_file"), e.to_string());
                    RegionRoots::Invalid
                }
            },
        };
        let backends = check_backends(issues, i, r, &roots, &mut tls);
        let health = check_health(issues, i, &r.health);
        let min_healthy = r.min_healthy.as_ref().and_then(|m| {
            let n = *m.get_ref();
            let key = format!("region[{i}].min_healthy");
            let most = backends.len().max(1) as i64;
            // A DNS name may stand for any number of backends: the region's
            // state clamps min_healthy to the backends there are.
            let named = backends.iter().any(|b| b.dns_name().is_some());
            if n < 1 {
                issues.at(
                    span(m),
                    key,
                    format!("{n} is out of range: expected a whole number from 1 to {most}, the number of backends of region \"{name}\""),
                );
                None
            } else if n > most && !backends.is_empty() && !named {
                issues.at(
                    span(m),
                    key,
                    format!(
                        "{n} is more than the {most} backend{} of region \"{name}\": expected a whole number from 1 to {most}",
                        if most == 1 { "" } else { "s" }
                    ),
                );
                None
            } else {
                Some(n as usize)
            }
        });
        let first_byte_timeout = r.first_byte_timeout.as_ref().map(|t| {
            duration(
                issues,
                &format!("region[{i}].first_byte_timeout"),
                Some(t),
                Duration::from_secs(30),
            )
        });
        regions.push(Region {
            name: name.to_owned(),
            countries,
            continents,
            failover,
            // An invalid name is already reported; the value is then never used.
            name_header: http::HeaderValue::from_str(name)
                .unwrap_or_else(|_| http::HeaderValue::from_static("invalid")),
            backends,
            health,
            min_healthy,
            failback_hold: duration_or_zero(r.failback_hold.as_ref(), Duration::from_secs(5)),
            slow_start: duration_or_zero(r.slow_start.as_ref(), Duration::ZERO),
            first_byte_timeout,
            outlier: check_outlier(issues, i, &r.outlier),
            ca_file: r.ca_file.as_ref().map(|f| PathBuf::from(f.get_ref())),
        });
    }
    regions
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn names(index: &HashMap<&str, usize>) -> String {
    let mut v: Vec<(&str, usize)> = index.iter().map(|(k, v)| (*k, *v)).collect();
    v.sort_by_key(|(_, i)| *i);
    let v: Vec<String> = v.into_iter().map(|(k, _)| format!("\"{k}\"")).collect();
    if v.is_empty() {
        "the names given in [[region]] (none is configured)".to_owned()
    } else {
        v.join(", ")
    }
}

/// Checks a list of country or continent codes, upper-cases them, and refuses
/// a code already claimed by another region.
fn codes<'a>(
    issues: &mut Issues,
    raw: &[Spanned<String>],
    key: &str,
    region: (usize, &'a str),
    owners: &mut HashMap<String, (usize, &'a str)>,
    valid: impl Fn(&str) -> bool,
    expected: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    for (j, c) in raw.iter().enumerate() {
        let code = c.get_ref().trim().to_ascii_uppercase();
        let key = format!("{key}[{j}]");
        if !valid(&code) {
            issues.at(
                span(c),
                key,
                format!("invalid code \"{}\": expected {expected}", c.get_ref()),
            );
            continue;
        }
        match owners.get(&code) {
            Some(owner) if owner.0 == region.0 => {
                issues.at(
                    span(c),
                    key,
                    format!("\"{code}\" is listed twice in region \"{}\"", region.1),
                );
            }
            Some((_, owner)) => {
                issues.at(
                    span(c),
                    key,
                    format!("\"{code}\" is already claimed by region \"{owner}\": each code may belong to one region only"),
                );
            }
            None => {
                owners.insert(code.clone(), region);
                out.push(code);
            }
        }
    }
    out
}

/// What a region's https backends are verified against.
enum RegionRoots {
    /// The system's roots (no `ca_file`).
    System,
    /// Only the region's `ca_file`.
    CaFile(Arc<TlsSettings>),
    /// A `ca_file` that is already reported as an error.
    Invalid,
}

/// The TLS settings of one file's https backends, so that the system's
/// roots are read at most once per load, and only when a backend needs them.
#[derive(Default)]
struct TlsChoices {
    system: Option<Arc<TlsSettings>>,
    /// Which region first named each https address, with its roots:
    /// connections are pooled by address, so one address is verified one way.
    seen: HashMap<String, (String, Roots)>,
}

impl TlsChoices {
    fn system(&mut self) -> Result<Arc<TlsSettings>, String> {
        if let Some(s) = &self.system {
            return Ok(Arc::clone(s));
        }
        let settings = Arc::new(TlsSettings::system().map_err(|e| e.to_string())?);
        self.system = Some(Arc::clone(&settings));
        Ok(settings)
    }
}

fn check_backends(
    issues: &mut Issues,
    i: usize,
    r: &file::RegionFile,
    roots: &RegionRoots,
    tls: &mut TlsChoices,
) -> Vec<Backend> {
    let name = r.name.get_ref();
    let Some(list) = r.backends.as_ref().filter(|b| !b.get_ref().is_empty()) else {
        let at = r.backends.as_ref().map_or_else(|| span(&r.name), span);
        issues.at(
            at,
            format!("region[{i}].backends"),
            format!("region \"{name}\" has no backends: expected backends = [\"http://host:port\", ...]"),
        );
        return Vec::new();
    };
    let mut out: Vec<Backend> = Vec::new();
    for (j, entry) in list.get_ref().iter().enumerate() {
        let key = format!("region[{i}].backends[{j}]");
        // Spans cover the whole entry: a URL string or a table.
        let b = entry;
        let url = entry.get_ref().url();
        let domain = match entry.get_ref().domain() {
            Some(d) if d.trim().is_empty() || d.len() > 253 => {
                issues.at(
                    span(entry),
                    format!("{key}.domain"),
                    "expected the name of the backend's node or zone (1 to 253 characters)",
                );
                None
            }
            Some(d) => Some(d.trim().to_owned()),
            None => None,
        };
        match backend_url(url) {
            // The admin API names a backend by its address alone, so an
            // http and an https backend on one address would be one name.
            Ok(parsed) if out.iter().any(|o| o.address == parsed.backend.address) => {
                issues.at(
                    span(b),
                    key,
                    format!(
                        "backend {} is listed twice in region \"{name}\"",
                        parsed.backend.address
                    ),
                );
            }
            Ok(mut backend) => {
                if let Some(server_name) = backend.https_name.take() {
                    let settings = match roots {
                        RegionRoots::System => tls.system(),
                        RegionRoots::CaFile(s) => Ok(Arc::clone(s)),
                        RegionRoots::Invalid => Err(String::new()),
                    };
                    let settings = match settings {
                        Ok(s) => s,
                        Err(why) => {
                            if !why.is_empty() {
                                issues.at(span(b), key, why);
                            }
                            continue;
                        }
                    };
                    let first = tls
                        .seen
                        .entry(backend.backend.address.clone())
                        .or_insert_with(|| (name.clone(), settings.roots.clone()));
                    if first.1 != settings.roots {
                        issues.at(
                            span(b),
                            key,
                            format!(
                                "https backend {} is also in region \"{}\", verified against {}: connections to one address are pooled together, so give both regions the same ca_file",
                                backend.backend.address, first.0, first.1
                            ),
                        );
                        continue;
                    }
                    backend.backend.tls = Some(BackendTls {
                        server_name,
                        settings,
                    });
                }
                backend.backend.domain = domain;
                out.push(backend.backend);
            }
            // The line and column point at it; echoing it would put a password in logs.
            Err(why) if url.contains('@') => issues.at(
                span(b),
                key,
                format!("invalid backend URL (not shown: it may hold a password): {why}"),
            ),
            Err(why) => issues.at(
                span(b),
                key,
                format!("invalid backend URL \"{url}\": {why}"),
            ),
        }
    }
    out
}

/// A backend URL as parsed, before its TLS settings are known.
pub(crate) struct ParsedBackend {
    /// The backend, with `tls` still `None`.
    pub(crate) backend: Backend,
    /// For an `https://` URL, the name its certificate must carry.
    pub(crate) https_name: Option<rustls::pki_types::ServerName<'static>>,
}

/// Parses `http://host[:port]` or `https://host[:port]` into a backend.
pub(crate) fn backend_url(text: &str) -> Result<ParsedBackend, String> {
    const EXPECTED: &str =
        "expected http://HOST:PORT or https://HOST:PORT, such as \"http://10.1.0.10:8080\"";
    // Without "://", "host:8080" would parse as a URL with the scheme "host".
    if !text.contains("://") {
        return Err(format!("missing the \"http://\" scheme; {EXPECTED}"));
    }
    let url = url::Url::parse(text).map_err(|e| format!("{e}; {EXPECTED}"))?;
    let https = match url.scheme() {
        "http" => false,
        "https" => true,
        other => return Err(format!("unsupported scheme \"{other}\"; {EXPECTED}")),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "credentials are not allowed in a backend URL; {EXPECTED}"
        ));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "a backend URL has no path, query or fragment; {EXPECTED}"
        ));
    }
    let (host, https_name) = match url.host() {
        Some(url::Host::Ipv6(ip)) => (format!("[{ip}]"), url::Host::Ipv6(ip)),
        Some(h) => (h.to_string(), h),
        None => return Err(format!("no host; {EXPECTED}")),
    };
    let https_name = if https {
        Some(backend_tls::server_name(&https_name)?)
    } else {
        None
    };
    let port = url
        .port_or_known_default()
        .unwrap_or(if https { 443 } else { 80 });
    let address = format!("{host}:{port}");
    let uri: http::Uri = format!("{}://{address}", url.scheme())
        .parse()
        .map_err(|e| format!("{e}; {EXPECTED}"))?;
    let host_header =
        http::HeaderValue::from_str(&address).map_err(|e| format!("{e}; {EXPECTED}"))?;
    Ok(ParsedBackend {
        backend: Backend {
            url: uri,
            address,
            host_header,
            tls: None,
            domain: None,
            discovered_from: None,
        },
        https_name,
    })
}

fn check_health(issues: &mut Issues, i: usize, raw: &file::HealthFile) -> Health {
    let file::HealthFile {
        method,
        path,
        host,
        expect_status,
        expect_body,
        interval,
        timeout,
        rise,
        fall,
        jitter,
        initial_state,
        failure_domain_header,
    } = raw;
    let key = |k: &str| format!("region[{i}].health.{k}");
    let method = match method {
        None => http::Method::GET,
        Some(m) => {
            http_method(issues, m, &key("method"), &HEALTH_METHODS).unwrap_or(http::Method::GET)
        }
    };
    let path = match path {
        Some(p)
            if !p.get_ref().starts_with('/')
                || p.get_ref().parse::<http::uri::PathAndQuery>().is_err() =>
        {
            issues.at(
                span(p),
                key("path"),
                format!(
                    "invalid path \"{}\": expected a path starting with '/', such as \"/healthz\"",
                    p.get_ref()
                ),
            );
            "/healthz".to_owned()
        }
        Some(p) => p.get_ref().clone(),
        None => "/healthz".to_owned(),
    };
    let host = host.as_ref().and_then(|h| match host_header(h.get_ref()) {
        Some(v) => Some(v),
        None => {
            issues.at(
                span(h),
                key("host"),
                format!(
                    "invalid Host header \"{}\": expected a host or host:port without spaces, slashes or credentials, such as \"www.example.com\" or \"10.1.0.10:8080\"",
                    h.get_ref()
                ),
            );
            None
        }
    });
    let expect_status = match expect_status {
        None => vec![(200, 399)],
        Some(list) => check_expect_status(issues, &key("expect_status"), list),
    };
    let expect_body = match expect_body {
        None => None,
        Some(b) if b.get_ref().is_empty() => {
            issues.at(
                span(b),
                key("expect_body"),
                "is empty: expected the text a healthy response body contains, or leave the key out",
            );
            None
        }
        Some(b) if method == http::Method::HEAD => {
            issues.at(
                span(b),
                key("expect_body"),
                "a response to HEAD has no body, so expect_body could never match: use method = \"GET\", or leave expect_body out",
            );
            None
        }
        Some(b) => Some(b.get_ref().clone()),
    };
    let jitter = fraction(issues, &key("jitter"), jitter.as_ref(), 0.1, 0.5);
    let initial_state = match initial_state {
        None => InitialState::Unknown,
        Some(s) => match s.get_ref().as_str() {
            "unknown" => InitialState::Unknown,
            "up" => InitialState::Up,
            "down" => InitialState::Down,
            other => {
                issues.at(
                    span(s),
                    key("initial_state"),
                    format!(
                        "invalid initial state \"{other}\": expected \"unknown\", \"up\" or \"down\""
                    ),
                );
                InitialState::Unknown
            }
        },
    };
    let failure_domain_header = failure_domain_header.as_ref().and_then(|h| {
        match http::HeaderName::from_bytes(h.get_ref().trim().as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                issues.at(
                    span(h),
                    key("failure_domain_header"),
                    format!(
                        "invalid header name \"{}\": expected a name such as \"X-Node-Name\"",
                        h.get_ref()
                    ),
                );
                None
            }
        }
    });
    Health {
        method,
        path,
        host,
        expect_status,
        expect_body,
        failure_domain_header,
        interval: duration(
            issues,
            &key("interval"),
            interval.as_ref(),
            Duration::from_secs(1),
        ),
        timeout: duration(
            issues,
            &key("timeout"),
            timeout.as_ref(),
            Duration::from_millis(800),
        ),
        rise: count(issues, &key("rise"), rise.as_ref(), 2, 1000) as u32,
        fall: count(issues, &key("fall"), fall.as_ref(), 2, 1000) as u32,
        jitter,
        initial_state,
    }
}

/// A method among `allowed`, written in upper case (methods are case-sensitive).
fn http_method(
    issues: &mut Issues,
    value: &Spanned<String>,
    key: &str,
    allowed: &[&str],
) -> Option<http::Method> {
    let text = value.get_ref().as_str();
    let expected = allowed.join(", ");
    if allowed.contains(&text) {
        return http::Method::from_bytes(text.as_bytes()).ok();
    }
    let upper = text.to_ascii_uppercase();
    let message = if allowed.contains(&upper.as_str()) {
        format!("invalid method \"{text}\": methods are case-sensitive; expected \"{upper}\"")
    } else {
        format!("invalid method \"{text}\": expected one of {expected}")
    };
    issues.at(span(value), key, message);
    None
}

/// A `Host` header value: a host name or address, with an optional port
/// (`www.example.com`, `10.1.0.10:8080`, `[::1]:8080`).
fn host_header(text: &str) -> Option<http::HeaderValue> {
    let (host_ok, port) = if let Some(rest) = text.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (ip.parse::<std::net::Ipv6Addr>().is_ok(), port)
    } else {
        let (host, port) = match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        };
        let ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        (ok, port)
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
    });
    if !host_ok || !port_ok {
        return None;
    }
    http::HeaderValue::from_str(text).ok()
}

/// `health.expect_status`: codes and inclusive ranges, as `(low, high)`.
fn check_expect_status(
    issues: &mut Issues,
    key: &str,
    list: &Spanned<Vec<Spanned<StatusFile>>>,
) -> Vec<(u16, u16)> {
    const EXPECTED: &str =
        "expected a status code from 100 to 599, such as 200, or an inclusive range such as \"200-399\"";
    if list.get_ref().is_empty() {
        issues.at(
            span(list),
            key,
            "no status is listed, so every check would fail: expected at least one code or range, such as [\"200-399\"]",
        );
        return vec![(200, 399)];
    }
    let code = |text: &str| -> Option<u16> {
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse::<u16>().ok()
    };
    let mut out = Vec::new();
    for (j, item) in list.get_ref().iter().enumerate() {
        let key = format!("{key}[{j}]");
        let range = match item.get_ref() {
            StatusFile::Code(n) if (100..=599).contains(n) => Ok((*n as u16, *n as u16)),
            StatusFile::Code(n) => Err(format!("{n} is out of range: {EXPECTED}")),
            StatusFile::Text(t) => {
                let (low, high) = t.split_once('-').unwrap_or((t, t));
                match (code(low), code(high)) {
                    (Some(low), Some(high))
                        if !(100..=599).contains(&low) || !(100..=599).contains(&high) =>
                    {
                        Err(format!("\"{t}\" is out of range: {EXPECTED}"))
                    }
                    (Some(low), Some(high)) if low > high => Err(format!(
                        "invalid status range \"{t}\": {low} is larger than {high}; expected LOW-HIGH with LOW <= HIGH, such as \"200-399\""
                    )),
                    (Some(low), Some(high)) => Ok((low, high)),
                    _ => Err(format!("invalid status \"{t}\": {EXPECTED}")),
                }
            }
        };
        match range {
            Ok(r) => out.push(r),
            Err(message) => issues.at(span(item), key, message),
        }
    }
    out
}

fn check_outlier(issues: &mut Issues, i: usize, raw: &file::OutlierFile) -> Outlier {
    let file::OutlierFile {
        consecutive_failures,
        failures,
        base_ejection_time,
        max_ejection_time,
        max_ejected_percent,
    } = raw;
    let key = |k: &str| format!("region[{i}].outlier.{k}");
    let consecutive_failures = ranged(
        issues,
        &key("consecutive_failures"),
        consecutive_failures.as_ref(),
        5,
        (0, 1000),
        "a whole number",
    ) as u32;
    let failures = match failures {
        None => FailureKinds {
            connect: true,
            reset: true,
            timeout: true,
            gateway: true,
            server_error: false,
        },
        Some(list) => {
            let expected = FAILURE_KINDS
                .iter()
                .map(|k| format!("\"{k}\""))
                .collect::<Vec<_>>()
                .join(", ");
            if list.get_ref().is_empty() && consecutive_failures != 0 {
                issues.at(
                    span(list),
                    key("failures"),
                    format!(
                        "no failure kind is listed, so no backend would ever be ejected: expected some of {expected}, or consecutive_failures = 0 to turn passive checks off"
                    ),
                );
            }
            let mut seen = [false; FAILURE_KINDS.len()];
            for (j, f) in list.get_ref().iter().enumerate() {
                let key = format!("{}[{j}]", key("failures"));
                match FAILURE_KINDS.iter().position(|k| k == f.get_ref()) {
                    None => issues.at(
                        span(f),
                        key,
                        format!(
                            "unknown failure kind \"{}\": expected one of {expected}",
                            f.get_ref()
                        ),
                    ),
                    Some(k) if seen[k] => {
                        issues.at(span(f), key, format!("\"{}\" is listed twice", f.get_ref()))
                    }
                    Some(k) => seen[k] = true,
                }
            }
            let [connect, reset, timeout, gateway, server_error] = seen;
            FailureKinds {
                connect,
                reset,
                timeout,
                gateway,
                server_error,
            }
        }
    };
    let base = duration(
        issues,
        &key("base_ejection_time"),
        base_ejection_time.as_ref(),
        Duration::from_secs(5),
    );
    let max = duration(
        issues,
        &key("max_ejection_time"),
        max_ejection_time.as_ref(),
        Duration::from_secs(300),
    );
    not_shorter(
        issues,
        (&key("max_ejection_time"), max_ejection_time.as_ref(), max),
        (
            &key("base_ejection_time"),
            base_ejection_time.as_ref(),
            base,
        ),
    );
    Outlier {
        consecutive_failures,
        failures,
        base_ejection_time: base,
        max_ejection_time: max,
        max_ejected_percent: ranged(
            issues,
            &key("max_ejected_percent"),
            max_ejected_percent.as_ref(),
            50,
            (0, 100),
            "a percentage",
        ) as u8,
    }
}

/// Reports a `longer` duration (a maximum) that is shorter than `shorter` (its
/// minimum). Each is `(key, value as written, value used)`. The issue is at
/// the maximum when it is written, else at the minimum.
fn not_shorter(
    issues: &mut Issues,
    longer: (&str, Option<&Spanned<Dur>>, Duration),
    shorter: (&str, Option<&Spanned<Dur>>, Duration),
) {
    let (long_key, long_value, long) = longer;
    let (short_key, short_value, short) = shorter;
    if long >= short {
        return;
    }
    let fmt = humantime_serde::re::humantime::format_duration;
    let name = |k: &str| k.rsplit('.').next().unwrap_or(k).to_owned();
    let (long_name, short_name) = (name(long_key), name(short_key));
    if let Some(v) = long_value {
        issues.at(
            span(v),
            long_key,
            format!(
                "{} is shorter than {short_name} ({}): expected at least {short_name}",
                fmt(long),
                fmt(short)
            ),
        );
    } else if let Some(v) = short_value {
        issues.at(
            span(v),
            short_key,
            format!(
                "{} is longer than {long_name} ({}, its default): expected at most {long_name}, or set {long_name} too",
                fmt(short),
                fmt(long)
            ),
        );
    }
}

/// A fraction from 0 to `max`.
fn fraction(
    issues: &mut Issues,
    key: &str,
    value: Option<&Spanned<Num>>,
    default: f64,
    max: f64,
) -> f64 {
    match value {
        None => default,
        Some(v) if !(0.0..=max).contains(&v.get_ref().0) => {
            issues.at(
                span(v),
                key,
                format!(
                    "{} is out of range: expected a number from 0.0 to {max:.1}",
                    v.get_ref().0
                ),
            );
            default
        }
        Some(v) => v.get_ref().0,
    }
}

/// A duration where zero is allowed (and means "off").
fn duration_or_zero(value: Option<&Spanned<Dur>>, default: Duration) -> Duration {
    value.map_or(default, |v| v.get_ref().0)
}

/// A duration from `min` to `max`.
pub(super) fn duration_within(
    issues: &mut Issues,
    key: &str,
    value: Option<&Spanned<Dur>>,
    default: Duration,
    (min, max): (Duration, Duration),
) -> Duration {
    let fmt = humantime_serde::re::humantime::format_duration;
    match value {
        None => default,
        Some(v) if v.get_ref().0 < min || v.get_ref().0 > max => {
            issues.at(
                span(v),
                key,
                format!(
                    "{} is out of range: expected a duration from {} to {}",
                    fmt(v.get_ref().0),
                    fmt(min),
                    fmt(max)
                ),
            );
            default
        }
        Some(v) => v.get_ref().0,
    }
}

/// A whole number from `min` to `max`; `what` names it in messages ("a whole number").
pub(super) fn ranged(
    issues: &mut Issues,
    key: &str,
    value: Option<&Spanned<i64>>,
    default: i64,
    (min, max): (i64, i64),
    what: &str,
) -> i64 {
    match value {
        None => default,
        Some(v) if *v.get_ref() < min || *v.get_ref() > max => {
            issues.at(
                span(v),
                key,
                format!(
                    "{} is out of range: expected {what} from {min} to {max}",
                    v.get_ref()
                ),
            );
            default
        }
        Some(v) => *v.get_ref(),
    }
}

pub(super) fn duration(
    issues: &mut Issues,
    key: &str,
    value: Option<&Spanned<Dur>>,
    default: Duration,
) -> Duration {
    match value {
        None => default,
        Some(v) if v.get_ref().0.is_zero() => {
            issues.at(
                span(v),
                key,
                "must be greater than zero: expected a duration such as \"800ms\" or \"2s\"",
            );
            default
        }
        Some(v) => v.get_ref().0,
    }
}

fn count(
    issues: &mut Issues,
    key: &str,
    value: Option<&Spanned<i64>>,
    default: usize,
    max: i64,
) -> usize {
    match value {
        None => default,
        Some(v) if *v.get_ref() < 1 || *v.get_ref() > max => {
            issues.at(
                span(v),
                key,
                format!(
                    "{} is out of range: expected a whole number from 1 to {max}",
                    v.get_ref()
                ),
            );
            default
        }
        Some(v) => *v.get_ref() as usize,
    }
}

fn check_geo(issues: &mut Issues, geo: Option<file::GeoFile>, regions: &[Region]) -> Geo {
    let index: HashMap<&str, usize> = regions
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.as_str(), i))
        .collect();
    let Some(geo) = geo else {
        return Geo {
            default_region: 0,
            overrides: Vec::new(),
            database: None,
            trusted_proxies: Vec::new(),
            forwarding_header: ForwardingHeader::default(),
            reload_interval: Duration::from_secs(10),
            pin_header: Some(http::HeaderName::from_static(DEFAULT_PIN_HEADER)),
            sticky_cookie: None,
            sticky_ttl: DEFAULT_STICKY_TTL,
        };
    };
    let file::GeoFile {
        default_region,
        overrides,
        database,
        trusted_proxies,
        reload_interval,
        forwarding_header,
        pin_header,
        sticky_cookie,
        sticky_ttl,
    } = geo;
    let forwarding_header = match forwarding_header {
        None => ForwardingHeader::default(),
        Some(h) => {
            match h.get_ref().to_ascii_lowercase().as_str() {
                "x-forwarded-for" => ForwardingHeader::XForwardedFor,
                "forwarded" => ForwardingHeader::Forwarded,
                other => {
                    issues.at(
                    span(&h),
                    "geo.forwarding_header",
                    format!("unknown header \"{other}\": expected \"x-forwarded-for\" or \"forwarded\""),
                );
                    ForwardingHeader::default()
                }
            }
        }
    };
    let pin_header = match pin_header {
        None => Some(http::HeaderName::from_static(DEFAULT_PIN_HEADER)),
        Some(h) if h.get_ref().is_empty() => None,
        Some(h) => match http::HeaderName::from_bytes(h.get_ref().as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                issues.at(
                    span(&h),
                    "geo.pin_header",
                    format!("invalid header name \"{}\": expected letters, digits and '-', such as \"X-Meridian-Pin\", or \"\" to turn pinning off", h.get_ref()),
                );
                None
            }
        },
    };
    let sticky_cookie = sticky_cookie.and_then(|c| {
        let name = c.get_ref();
        let valid = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if valid {
            Some(name.clone())
        } else {
            issues.at(
                span(&c),
                "geo.sticky_cookie",
                format!("invalid cookie name \"{name}\": expected letters, digits, '-' or '_', such as \"meridian_region\""),
            );
            None
        }
    });
    let sticky_ttl = duration(
        issues,
        "geo.sticky_ttl",
        sticky_ttl.as_ref(),
        DEFAULT_STICKY_TTL,
    );
    let database = database.and_then(|d| {
        let path = std::path::PathBuf::from(d.get_ref());
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Some(path),
            Ok(_) => {
                issues.at(
                    span(&d),
                    "geo.database",
                    format!(
                        "{} is not a file: expected a MaxMind DB (.mmdb) file",
                        d.get_ref()
                    ),
                );
                None
            }
            Err(e) => {
                issues.at(
                    span(&d),
                    "geo.database",
                    format!("cannot read {}: {e}", d.get_ref()),
                );
                None
            }
        }
    });
    let mut trusted = Vec::new();
    for (j, t) in trusted_proxies.iter().enumerate() {
        match parse_net(t.get_ref()) {
            Some(net) => trusted.push(net),
            None => issues.at(
                span(t),
                format!("geo.trusted_proxies[{j}]"),
                format!(
                    "invalid CIDR \"{}\": expected an address or network such as \"10.0.0.0/8\" or \"2001:db8::/32\"",
                    t.get_ref()
                ),
            ),
        }
    }
    let reload_interval = duration(
        issues,
        "geo.reload_interval",
        reload_interval.as_ref(),
        Duration::from_secs(10),
    );
    let default_region = match default_region {
        None => 0,
        Some(d) => index.get(d.get_ref().as_str()).copied().unwrap_or_else(|| {
            issues.at(
                span(&d),
                "geo.default_region",
                format!(
                    "unknown region \"{}\": expected one of {}",
                    d.get_ref(),
                    names(&index)
                ),
            );
            0
        }),
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (j, o) in overrides.iter().enumerate() {
        let net = parse_net(o.cidr.get_ref());
        let net = match net {
            Some(n) => n,
            None => {
                issues.at(
                    span(&o.cidr),
                    format!("geo.override[{j}].cidr"),
                    format!(
                        "invalid CIDR \"{}\": expected an address or network such as \"192.0.2.0/24\" or \"2001:db8::/32\"",
                        o.cidr.get_ref()
                    ),
                );
                continue;
            }
        };
        if !seen.insert(net) {
            issues.at(
                span(&o.cidr),
                format!("geo.override[{j}].cidr"),
                format!("{net} is listed twice"),
            );
            continue;
        }
        match index.get(o.region.get_ref().as_str()) {
            Some(&region) => out.push(GeoOverride { net, region }),
            None => issues.at(
                span(&o.region),
                format!("geo.override[{j}].region"),
                format!(
                    "unknown region \"{}\": expected one of {}",
                    o.region.get_ref(),
                    names(&index)
                ),
            ),
        }
    }
    Geo {
        default_region,
        overrides: out,
        database,
        trusted_proxies: trusted,
        forwarding_header,
        reload_interval,
        pin_header,
        sticky_cookie,
        sticky_ttl,
    }
}

/// `geo.pin_header` by default.
const DEFAULT_PIN_HEADER: &str = "x-meridian-pin";

/// `geo.sticky_ttl` by default: about one visit.
const DEFAULT_STICKY_TTL: Duration = Duration::from_secs(30 * 60);

/// A CIDR, or a bare address meaning a single host. Host bits are cleared.
fn parse_net(text: &str) -> Option<IpNet> {
    let text = text.trim();
    let net = match text.parse::<IpNet>() {
        Ok(net) => net.trunc(),
        Err(_) => IpNet::from(text.parse::<std::net::IpAddr>().ok()?),
    };
    // Clients are matched as IPv4 once an IPv4-mapped address is unwrapped,
    // so an IPv4-mapped network is written the same way.
    if let IpNet::V6(v6) = net {
        if let (Some(v4), true) = (v6.addr().to_ipv4_mapped(), v6.prefix_len() >= 96) {
            return ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .ok()
                .map(IpNet::V4);
        }
    }
    Some(net)
}

fn check_proxy(issues: &mut Issues, raw: file::ProxyFile) -> Proxy {
    let file::ProxyFile {
        connect_timeout,
        first_byte_timeout,
        read_timeout,
        send_timeout,
        preserve_host,
        max_attempts,
        pool_idle_timeout,
        pool_max_idle_per_backend,
        retry_methods,
        replay_buffer,
        retry_budget_ratio,
        retry_budget_window,
        retry_budget_min_per_second,
        hedge,
        hedge_min_delay,
        hedge_max_delay,
        region_header,
        upgrade_idle_timeout,
        drain_grace,
    } = raw;
    let retry_methods = match retry_methods {
        None => vec![http::Method::GET, http::Method::HEAD, http::Method::OPTIONS],
        Some(list) => {
            let mut out: Vec<http::Method> = Vec::new();
            for (j, m) in list.get_ref().iter().enumerate() {
                let key = format!("proxy.retry_methods[{j}]");
                let upper = m.get_ref().to_ascii_uppercase();
                if NON_IDEMPOTENT_METHODS.contains(&upper.as_str()) {
                    issues.at(
                        span(m),
                        key,
                        format!(
                            "{upper} is not idempotent, so it can never be retried or hedged once a backend may have seen it: expected idempotent methods among {}",
                            RETRY_METHODS.join(", ")
                        ),
                    );
                    continue;
                }
                match http_method(issues, m, &key, &RETRY_METHODS) {
                    Some(method) if out.contains(&method) => {
                        issues.at(span(m), key, format!("{method} is listed twice"))
                    }
                    Some(method) => out.push(method),
                    None => {}
                }
            }
            out
        }
    };
    let retry_budget = RetryBudget {
        ratio: fraction(
            issues,
            "proxy.retry_budget_ratio",
            retry_budget_ratio.as_ref(),
            0.2,
            1.0,
        ),
        window: duration_within(
            issues,
            "proxy.retry_budget_window",
            retry_budget_window.as_ref(),
            Duration::from_secs(10),
            (Duration::from_secs(1), Duration::from_secs(60)),
        ),
        min_per_second: ranged(
            issues,
            "proxy.retry_budget_min_per_second",
            retry_budget_min_per_second.as_ref(),
            10,
            (0, 100_000),
            "a whole number",
        ) as u32,
    };
    let min_delay = duration(
        issues,
        "proxy.hedge_min_delay",
        hedge_min_delay.as_ref(),
        Duration::from_millis(50),
    );
    let max_delay = duration(
        issues,
        "proxy.hedge_max_delay",
        hedge_max_delay.as_ref(),
        Duration::from_millis(250),
    );
    not_shorter(
        issues,
        ("proxy.hedge_max_delay", hedge_max_delay.as_ref(), max_delay),
        ("proxy.hedge_min_delay", hedge_min_delay.as_ref(), min_delay),
    );
    let hedge = hedge.unwrap_or(true).then_some(Hedge {
        min_delay,
        max_delay,
    });
    Proxy {
        connect_timeout: duration(
            issues,
            "proxy.connect_timeout",
            connect_timeout.as_ref(),
            Duration::from_secs(2),
        ),
        first_byte_timeout: duration(
            issues,
            "proxy.first_byte_timeout",
            first_byte_timeout.as_ref(),
            Duration::from_secs(30),
        ),
        read_timeout: duration(
            issues,
            "proxy.read_timeout",
            read_timeout.as_ref(),
            Duration::from_secs(60),
        ),
        send_timeout: duration(
            issues,
            "proxy.send_timeout",
            send_timeout.as_ref(),
            Duration::from_secs(60),
        ),
        preserve_host: preserve_host.unwrap_or(true),
        max_attempts: count(issues, "proxy.max_attempts", max_attempts.as_ref(), 3, 10),
        pool_idle_timeout: duration(
            issues,
            "proxy.pool_idle_timeout",
            pool_idle_timeout.as_ref(),
            Duration::from_secs(4),
        ),
        pool_max_idle_per_backend: count(
            issues,
            "proxy.pool_max_idle_per_backend",
            pool_max_idle_per_backend.as_ref(),
            1024,
            100_000,
        ),
        region_header: region_header.unwrap_or(true),
        retry_methods,
        replay_buffer: ranged(
            issues,
            "proxy.replay_buffer",
            replay_buffer.as_ref(),
            64 * 1024,
            (0, MAX_REPLAY_BUFFER),
            "a number of bytes",
        ) as usize,
        retry_budget,
        hedge,
        upgrade_idle_timeout: duration(
            issues,
            "proxy.upgrade_idle_timeout",
            upgrade_idle_timeout.as_ref(),
            Duration::from_secs(60),
        ),
        drain_grace: duration_within(
            issues,
            "proxy.drain_grace",
            drain_grace.as_ref(),
            Duration::from_secs(30),
            (Duration::ZERO, Duration::from_secs(24 * 3600)),
        ),
    }
}

fn check_limits(issues: &mut Issues, raw: file::LimitsFile) -> Limits {
    let file::LimitsFile {
        max_connections,
        max_header_bytes,
        max_headers,
        header_read_timeout,
        keepalive_idle_timeout,
        client_body_timeout,
        client_body_min_rate,
        send_timeout,
        shutdown_grace,
        http2_max_concurrent_streams,
        http2_max_pending_resets,
        backend_max_requests,
        backend_queue_timeout,
    } = raw;
    let max_header_bytes = match max_header_bytes {
        Some(v) if *v.get_ref() < MIN_HEADER_BYTES || *v.get_ref() > 1 << 20 => {
            issues.at(
                span(&v),
                "limits.max_header_bytes",
                format!("{} is out of range: expected a number of bytes from {MIN_HEADER_BYTES} to 1048576", v.get_ref()),
            );
            64 * 1024
        }
        Some(v) => *v.get_ref() as usize,
        None => 64 * 1024,
    };
    Limits {
        http2_max_concurrent_streams: count(
            issues,
            "limits.http2_max_concurrent_streams",
            http2_max_concurrent_streams.as_ref(),
            100,
            10_000,
        ) as u32,
        http2_max_pending_resets: count(
            issues,
            "limits.http2_max_pending_resets",
            http2_max_pending_resets.as_ref(),
            20,
            10_000,
        ),
        max_connections: count(
            issues,
            "limits.max_connections",
            max_connections.as_ref(),
            10_000,
            1_000_000,
        ),
        max_header_bytes,
        max_headers: count(
            issues,
            "limits.max_headers",
            max_headers.as_ref(),
            100,
            10_000,
        ),
        header_read_timeout: duration(
            issues,
            "limits.header_read_timeout",
            header_read_timeout.as_ref(),
            Duration::from_secs(10),
        ),
        keepalive_idle_timeout: duration(
            issues,
            "limits.keepalive_idle_timeout",
            keepalive_idle_timeout.as_ref(),
            Duration::from_secs(5),
        ),
        client_body_timeout: duration(
            issues,
            "limits.client_body_timeout",
            client_body_timeout.as_ref(),
            Duration::from_secs(60),
        ),
        client_body_min_rate: ranged(
            issues,
            "limits.client_body_min_rate",
            client_body_min_rate.as_ref(),
            500,
            (0, 1 << 30),
            "a number of bytes per second (0 turns it off)",
        ) as u64,
        send_timeout: duration(
            issues,
            "limits.send_timeout",
            send_timeout.as_ref(),
            Duration::from_secs(60),
        ),
        shutdown_grace: duration(
            issues,
            "limits.shutdown_grace",
            shutdown_grace.as_ref(),
            Duration::from_secs(30),
        ),
        backend_max_requests: count(
            issues,
            "limits.backend_max_requests",
            backend_max_requests.as_ref(),
            1_000,
            1_000_000,
        ),
        backend_queue_timeout: duration_within(
            issues,
            "limits.backend_queue_timeout",
            backend_queue_timeout.as_ref(),
            Duration::from_secs(1),
            (Duration::ZERO, Duration::from_secs(60)),
        ),
    }
}

fn check_status_page(issues: &mut Issues, raw: file::StatusPageFile) -> StatusPage {
    let file::StatusPageFile {
        brand,
        title,
        message,
        logo,
        support_url,
        accent_color,
        retry_after,
        template,
        intercept,
    } = raw;
    let brand = brand.unwrap_or_else(|| "Meridian".to_owned());
    let title = title.unwrap_or_else(|| format!("{brand} is temporarily unavailable"));
    let message = message.unwrap_or_else(|| {
        "We are working on it and will be back shortly. This page reloads by itself when service returns.".to_owned()
    });
    let logo = logo.and_then(|l| match read_logo(l.get_ref()) {
        Ok(uri) => Some(uri),
        Err(why) => {
            issues.at(span(&l), "status_page.logo", why);
            None
        }
    });
    let support_url = support_url.and_then(|u| match url::Url::parse(u.get_ref()) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https" | "mailto") => {
            Some(parsed.to_string())
        }
        _ => {
            issues.at(
                span(&u),
                "status_page.support_url",
                format!(
                    "invalid URL \"{}\": expected an http(s) or mailto: URL",
                    u.get_ref()
                ),
            );
            None
        }
    });
    let accent_color = match accent_color {
        Some(c) if valid_color(c.get_ref()) => c.get_ref().to_ascii_lowercase(),
        Some(c) => {
            issues.at(
                span(&c),
                "status_page.accent_color",
                format!(
                    "invalid colour \"{}\": expected #rgb or #rrggbb",
                    c.get_ref()
                ),
            );
            "#2f5bea".to_owned()
        }
        None => "#2f5bea".to_owned(),
    };
    let template = template.and_then(|t| match std::fs::read_to_string(t.get_ref()) {
        Ok(src) => Some(src),
        Err(e) => {
            issues.at(
                span(&t),
                "status_page.template",
                format!("cannot read {}: {e}", t.get_ref()),
            );
            None
        }
    });
    StatusPage {
        brand,
        title,
        message,
        logo,
        support_url,
        accent_color,
        retry_after: duration(
            issues,
            "status_page.retry_after",
            retry_after.as_ref(),
            Duration::from_secs(30),
        ),
        template,
        intercept: check_intercept(issues, intercept),
    }
}

/// `status_page.intercept`: server errors only, each once. A 4xx is the
/// application talking to its user, never an outage to hide.
fn check_intercept(
    issues: &mut Issues,
    raw: Option<Spanned<Vec<Spanned<i64>>>>,
) -> Vec<http::StatusCode> {
    let Some(list) = raw else {
        return DEFAULT_INTERCEPT
            .iter()
            .filter_map(|&c| http::StatusCode::from_u16(c).ok())
            .collect();
    };
    let mut out: Vec<http::StatusCode> = Vec::new();
    for (j, code) in list.get_ref().iter().enumerate() {
        let key = format!("status_page.intercept[{j}]");
        let value = *code.get_ref();
        let status = u16::try_from(value)
            .ok()
            .filter(|c| (500..=599).contains(c))
            .and_then(|c| http::StatusCode::from_u16(c).ok());
        match status {
            None => issues.at(
                span(code),
                key,
                format!("{value} is not a server error: expected a status code from 500 to 599"),
            ),
            Some(s) if out.contains(&s) => {
                issues.at(span(code), key, format!("{value} is listed twice"))
            }
            Some(s) => out.push(s),
        }
    }
    out
}

fn valid_color(c: &str) -> bool {
    let Some(hex) = c.strip_prefix('#') else {
        return false;
    };
    matches!(hex.len(), 3 | 6) && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads a logo file into a `data:` URI so that the page needs no other request.
fn read_logo(path: &str) -> Result<String, String> {
    let mime = match path
        .rsplit('.')
        .next()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        _ => {
            return Err(format!(
                "unsupported logo \"{path}\": expected an .svg, .png, .jpg, .gif or .webp file"
            ))
        }
    };
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    if meta.len() > MAX_LOGO_BYTES {
        return Err(format!(
            "{path} is {} bytes: expected a logo of at most {MAX_LOGO_BYTES} bytes",
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    Ok(format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}
