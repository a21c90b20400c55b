//! Turns the serde view of the file into a checked [`Config`], collecting every
//! problem rather than stopping at the first.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use base64::Engine as _;
use ipnet::IpNet;
use toml::Spanned;

use super::error::{ConfigError, ConfigIssue, Issues};
use super::file::{self, Dur, FileConfig};
use super::{
    Admin, Backend, Config, Geo, GeoOverride, Health, Limits, Listen, Proxy, Region, StatusPage,
};

/// Continent codes as GeoIP databases spell them.
const CONTINENTS: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

/// Largest logo inlined into the status page.
const MAX_LOGO_BYTES: u64 = 256 * 1024;

/// The smallest head buffer hyper accepts.
const MIN_HEADER_BYTES: i64 = 8192;

/// Most unknown keys reported from one file before reading stops.
const MAX_UNKNOWN_KEYS: usize = 50;

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
    let message = match not_yet_supported(&key, inner.message()) {
        Some(why) => format!("not supported by this version of Meridian: {why}"),
        None => tidy_serde_message(inner.message()),
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

/// Keys of the documented configuration contract that this version does not
/// implement yet, with what to do instead. Refusing them, rather than
/// accepting and ignoring them, means nobody believes a feature is on when
/// it is not.
fn not_yet_supported(key: &str, serde_message: &str) -> Option<&'static str> {
    // `region[3].health.x` and `region[3].backends[1]` are looked up without their indices.
    let mut plain = String::with_capacity(key.len());
    let mut in_index = false;
    for c in key.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            _ if !in_index => plain.push(c),
            _ => {}
        }
    }
    Some(match plain.as_str() {
        "listen.https" | "listen.redirect_to_https" | "tls" => {
            "TLS termination is not available yet; serve plain HTTP with listen.http"
        }
        "listen.proxy_protocol" => "the PROXY protocol is not available yet",
        "admin.state_file" => "drains and incidents are not available yet, so there is no state to keep",
        "geo.database" => {
            "GeoIP lookup is not available yet; choose regions with [[geo.override]] and geo.default_region"
        }
        "geo.trusted_proxies" => {
            "forwarding headers are not used to find the client yet; the client is always the socket peer"
        }
        "region.health.failure_domain_header" => "failure-domain warnings are not available yet",
        "region.backends" if serde_message.contains("map") => {
            "a backend is a URL string; backend tables are not available yet"
        }
        "alerts" => "alert webhooks are not available yet",
        "dns" => "DNS discovery is not available yet; a backend host name is resolved by the system resolver on each new connection",
        _ => return None,
    })
}

/// serde says "unknown field"; users write keys.
fn tidy_serde_message(message: &str) -> String {
    message
        .trim()
        .replace("unknown field", "unknown key")
        .replace("missing field", "missing key")
}

fn span<T>(s: &Spanned<T>) -> Range<usize> {
    s.span()
}

/// Validates everything, recording problems in `issues`. The returned config is
/// only meaningful when no issue was recorded.
fn check(file_name: &str, raw: FileConfig, issues: &mut Issues) -> Config {
    let FileConfig {
        listen,
        admin,
        geo,
        region,
        proxy,
        limits,
        status_page,
    } = raw;

    let listen = Listen {
        http: socket_addr(issues, "listen.http", listen.http.as_ref(), "0.0.0.0:8080"),
    };
    let admin = admin.map(|a| check_admin(issues, a));
    let regions = check_regions(issues, &region);
    let geo = check_geo(issues, geo, &regions);
    let proxy = check_proxy(issues, proxy);
    let limits = check_limits(issues, limits);
    let status_page = check_status_page(issues, status_page);

    Config {
        source: file_name.to_owned(),
        listen,
        admin,
        geo,
        regions,
        proxy,
        limits,
        status_page,
    }
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
    Admin { listen, token }
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

        let backends = check_backends(issues, i, r);
        let health = check_health(issues, i, &r.health);
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

fn check_backends(issues: &mut Issues, i: usize, r: &file::RegionFile) -> Vec<Backend> {
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
    for (j, b) in list.get_ref().iter().enumerate() {
        let key = format!("region[{i}].backends[{j}]");
        match backend_url(b.get_ref()) {
            Ok(backend) if out.iter().any(|o| o.address == backend.address) => {
                issues.at(
                    span(b),
                    key,
                    format!(
                        "backend {} is listed twice in region \"{name}\"",
                        backend.address
                    ),
                );
            }
            Ok(backend) => out.push(backend),
            // The line and column point at it; echoing it would put a password in logs.
            Err(why) if b.get_ref().contains('@') => issues.at(
                span(b),
                key,
                format!("invalid backend URL (not shown: it may hold a password): {why}"),
            ),
            Err(why) => issues.at(
                span(b),
                key,
                format!("invalid backend URL \"{}\": {why}", b.get_ref()),
            ),
        }
    }
    out
}

/// Parses `http://host[:port]` into a backend.
pub(crate) fn backend_url(text: &str) -> Result<Backend, String> {
    const EXPECTED: &str = "expected http://HOST:PORT, such as \"http://10.1.0.10:8080\"";
    // Without "://", "host:8080" would parse as a URL with the scheme "host".
    if !text.contains("://") {
        return Err(format!("missing the \"http://\" scheme; {EXPECTED}"));
    }
    let url = url::Url::parse(text).map_err(|e| format!("{e}; {EXPECTED}"))?;
    match url.scheme() {
        "http" => {}
        "https" => return Err("https backends are not supported yet; use http://".to_owned()),
        other => return Err(format!("unsupported scheme \"{other}\"; {EXPECTED}")),
    }
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
    let host = match url.host() {
        Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
        Some(h) => h.to_string(),
        None => return Err(format!("no host; {EXPECTED}")),
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let address = format!("{host}:{port}");
    let uri: http::Uri = format!("http://{address}")
        .parse()
        .map_err(|e| format!("{e}; {EXPECTED}"))?;
    let host_header =
        http::HeaderValue::from_str(&address).map_err(|e| format!("{e}; {EXPECTED}"))?;
    Ok(Backend {
        url: uri,
        address,
        host_header,
    })
}

fn check_health(issues: &mut Issues, i: usize, raw: &file::HealthFile) -> Health {
    let file::HealthFile {
        path,
        interval,
        timeout,
        rise,
        fall,
    } = raw;
    let key = |k: &str| format!("region[{i}].health.{k}");
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
    Health {
        path,
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
    }
}

fn duration(
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
        };
    };
    let file::GeoFile {
        default_region,
        overrides,
    } = geo;
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
    }
}

/// A CIDR, or a bare address meaning a single host. Host bits are cleared.
fn parse_net(text: &str) -> Option<IpNet> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net.trunc());
    }
    text.parse::<std::net::IpAddr>().ok().map(IpNet::from)
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
    } = raw;
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
            64,
            100_000,
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
        send_timeout,
        shutdown_grace,
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
    }
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
