//! DNS service discovery: a backend whose host is a name (a Kubernetes
//! headless service, say) becomes one backend per A/AAAA record, resolved
//! with hickory-resolver and resolved again when the records expire
//! (their TTL clamped to `[dns] min_ttl`/`max_ttl`).
//!
//! [`expand`] is the pure part: the configuration as written plus the known
//! addresses give the configuration the request path uses. [`Discovery`]
//! keeps the addresses: an answer replaces them (an empty answer empties
//! them), a failed lookup keeps the last good set and is retried sooner.
//! A changed set is put in force by the reloader, like a new file, so that
//! health carries over by address: a new address starts unknown and is
//! checked before it takes traffic, a vanished one takes no new requests
//! while those in flight finish.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use serde::Serialize;
use tokio::time::Instant;

use crate::config::{Backend, BackendTls, Config, Dns};
use crate::metrics::{DnsResult, Metrics};

/// `template` with each backend whose host is a name replaced by one
/// backend per address `addresses` knows for it, in address order, and
/// what was left out, in words.
///
/// A name without addresses contributes no backend. An address already in
/// the region (written literally, or found under another name) is not
/// added twice. Connections to an https address are pooled and verified
/// one way, so an address that two names would reach with different TLS
/// settings (server name, roots) goes to the first only.
pub fn expand(
    template: &Config,
    addresses: &BTreeMap<String, Vec<IpAddr>>,
) -> (Config, Vec<String>) {
    let mut config = template.clone();
    let mut left_out = Vec::new();
    let mut trust: BTreeMap<String, BackendTls> = template
        .regions
        .iter()
        .flat_map(|r| &r.backends)
        .filter(|b| b.dns_name().is_none())
        .filter_map(|b| Some((b.address.clone(), b.tls.clone()?)))
        .collect();
    for region in &mut config.regions {
        let mut backends: Vec<Backend> = Vec::with_capacity(region.backends.len());
        for backend in &region.backends {
            let found = match backend.dns_name() {
                None => vec![backend.clone()],
                Some(name) => addresses
                    .get(name)
                    .into_iter()
                    .flatten()
                    .map(|ip| at_address(backend, *ip))
                    .collect(),
            };
            for b in found {
                if backends.iter().any(|o| o.address == b.address) {
                    continue;
                }
                if let Some(tls) = &b.tls {
                    let first = trust
                        .entry(b.address.clone())
                        .or_insert_with(|| tls.clone());
                    if first != tls {
                        left_out.push(format!(
                            "{} (from {}) is left out of region \"{}\": the address is already reached over TLS as {:?}",
                            b.address,
                            b.discovered_from.as_deref().unwrap_or("?"),
                            region.name,
                            first.server_name
                        ));
                        continue;
                    }
                }
                backends.push(b);
            }
        }
        region.backends = backends;
    }
    (config, left_out)
}

/// `backend`, dialled at `ip`: the name stays in `Host` and in TLS.
fn at_address(backend: &Backend, ip: IpAddr) -> Backend {
    let address = SocketAddr::new(ip, backend.port()).to_string();
    let scheme = backend.url.scheme_str().unwrap_or("http");
    let url = format!("{scheme}://{address}")
        .parse()
        .expect("a scheme and a socket address make a URI");
    Backend {
        url,
        address,
        host_header: backend.host_header.clone(),
        tls: backend.tls.clone(),
        domain: backend.domain.clone(),
        discovered_from: Some(backend.address.clone()),
    }
}

/// The names `config` asks to resolve.
fn names_of(config: &Config) -> BTreeSet<String> {
    config
        .regions
        .iter()
        .flat_map(|r| &r.backends)
        .filter_map(|b| b.dns_name().map(str::to_owned))
        .collect()
}

/// What `/api/v1/status` shows of one name.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NameStatus {
    /// The host name, as configured.
    pub name: String,
    /// The addresses in use, from the last good answer.
    pub addresses: Vec<IpAddr>,
    /// Whether any answer has come yet.
    pub resolved: bool,
    /// Lookups failed in a row since the last good answer.
    pub failures: u32,
    /// The last failure, until an answer comes.
    pub last_error: Option<String>,
    /// Seconds until the next lookup, as of [`NameStatus::now`].
    pub next_lookup_in_s: f64,
    /// When the next lookup is due.
    #[serde(skip)]
    pub next_lookup: Instant,
}

impl NameStatus {
    /// This status with the seconds to the next lookup counted from now.
    pub fn now(mut self) -> Self {
        self.next_lookup_in_s = self
            .next_lookup
            .saturating_duration_since(Instant::now())
            .as_secs_f64();
        self
    }
}

/// One name and what is known of it.
#[derive(Debug, Clone)]
struct Name {
    /// The last good answer; `None` until the first.
    addresses: Option<Vec<IpAddr>>,
    next: Instant,
    failures: u32,
    last_error: Option<String>,
}

/// The outcome of one lookup: addresses and how long they hold, or why not.
type Answer = Result<(Vec<IpAddr>, Duration), String>;

/// The names of a configuration and their addresses.
#[derive(Clone)]
pub struct Discovery {
    settings: Dns,
    /// Built on the first lookup, so that a configuration without names
    /// never reads `/etc/resolv.conf`.
    resolver: Option<TokioResolver>,
    names: BTreeMap<String, Name>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("settings", &self.settings)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Discovery with `settings`, counting lookups in `metrics`.
    pub fn new(settings: Dns, metrics: Arc<Metrics>) -> Discovery {
        Discovery {
            settings,
            resolver: None,
            names: BTreeMap::new(),
            metrics,
        }
    }

    /// Follows the names of `config` from now on: new ones are due at
    /// once, dropped ones are forgotten, and new `[dns]` settings make
    /// every name due again with a resolver built from them.
    pub fn track(&mut self, config: &Config) {
        let now = Instant::now();
        if config.dns != self.settings {
            self.settings = config.dns.clone();
            self.resolver = None;
            for name in self.names.values_mut() {
                name.next = now;
            }
        }
        let wanted = names_of(config);
        self.names.retain(|n, _| wanted.contains(n));
        for n in wanted {
            self.names.entry(n).or_insert(Name {
                addresses: None,
                next: now,
                failures: 0,
                last_error: None,
            });
        }
    }

    /// The names followed.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(String::as_str)
    }

    /// When the next lookup is due; `None` without names.
    pub fn next_due(&self) -> Option<Instant> {
        self.names.values().map(|n| n.next).min()
    }

    /// Looks up every name whose time has come; `true` when a set of
    /// addresses changed.
    pub async fn resolve_due(&mut self) -> bool {
        let now = Instant::now();
        self.resolve(|n| n.next <= now).await
    }

    /// Looks up every name that has no answer yet (at start-up, and for
    /// names a reload adds); `true` when a set of addresses changed.
    pub async fn resolve_unanswered(&mut self) -> bool {
        self.resolve(|n| n.addresses.is_none()).await
    }

    async fn resolve(&mut self, due: impl Fn(&Name) -> bool) -> bool {
        let names: Vec<String> = self
            .names
            .iter()
            .filter(|(_, n)| due(n))
            .map(|(k, _)| k.clone())
            .collect();
        if names.is_empty() {
            return false;
        }
        let resolver = match self.resolver() {
            Ok(r) => r.clone(),
            Err(e) => {
                let mut changed = false;
                for name in names {
                    changed |= self.record(&name, Err(e.clone()));
                }
                return changed;
            }
        };
        let timeout = self.settings.timeout;
        let mut lookups = tokio::task::JoinSet::new();
        for name in names {
            let resolver = resolver.clone();
            lookups.spawn(async move {
                let answer = lookup(&resolver, &name, timeout).await;
                (name, answer)
            });
        }
        let mut changed = false;
        while let Some(done) = lookups.join_next().await {
            if let Ok((name, answer)) = done {
                changed |= self.record(&name, answer);
            }
        }
        changed
    }

    /// Takes in one lookup's outcome; `true` when the addresses changed.
    fn record(&mut self, name: &str, answer: Answer) -> bool {
        let (min, max) = (self.settings.min_ttl, self.settings.max_ttl);
        let Some(state) = self.names.get_mut(name) else {
            return false;
        };
        let now = Instant::now();
        match answer {
            Ok((mut addresses, ttl)) => {
                addresses.sort();
                addresses.dedup();
                self.metrics
                    .dns_lookup(name, DnsResult::Answered, Some(addresses.len()));
                state.next = now + ttl.clamp(min, max);
                state.failures = 0;
                state.last_error = None;
                if state.addresses.as_ref() == Some(&addresses) {
                    return false;
                }
                match &state.addresses {
                    None => tracing::info!(name, ?addresses, "DNS name resolved"),
                    Some(old) => {
                        tracing::info!(name, from = ?old, to = ?addresses, "DNS name's addresses changed")
                    }
                }
                if addresses.is_empty() {
                    tracing::warn!(
                        name,
                        "DNS name has no address: its backends take no traffic"
                    );
                }
                state.addresses = Some(addresses);
                true
            }
            Err(error) => {
                self.metrics.dns_lookup(name, DnsResult::Failed, None);
                state.failures = state.failures.saturating_add(1);
                // Sooner than a good answer would be asked again, but never
                // faster than min_ttl: 1, 2, 4 … times it, at most max_ttl.
                let backoff = min
                    .saturating_mul(1 << (state.failures - 1).min(16))
                    .min(max);
                state.next = now + backoff;
                tracing::warn!(
                    name,
                    error = %error,
                    failures = state.failures,
                    kept = ?state.addresses,
                    "DNS lookup failed: the last good addresses stay in use"
                );
                state.last_error = Some(error);
                false
            }
        }
    }

    fn resolver(&mut self) -> Result<&TokioResolver, String> {
        if self.resolver.is_none() {
            self.resolver = Some(build_resolver(&self.settings)?);
        }
        Ok(self.resolver.as_ref().expect("set above"))
    }

    /// The configuration the request path uses for `template`, with the
    /// addresses known now.
    pub fn expand(&self, template: &Config) -> Config {
        let known: BTreeMap<String, Vec<IpAddr>> = self
            .names
            .iter()
            .filter_map(|(k, n)| Some((k.clone(), n.addresses.clone()?)))
            .collect();
        let (config, left_out) = expand(template, &known);
        for why in left_out {
            tracing::warn!("{why}");
        }
        config
    }

    /// Every name, for `/api/v1/status`.
    pub fn status(&self) -> Vec<NameStatus> {
        self.names
            .iter()
            .map(|(k, n)| {
                NameStatus {
                    name: k.clone(),
                    addresses: n.addresses.clone().unwrap_or_default(),
                    resolved: n.addresses.is_some(),
                    failures: n.failures,
                    last_error: n.last_error.clone(),
                    next_lookup_in_s: 0.0,
                    next_lookup: n.next,
                }
                .now()
            })
            .collect()
    }
}

/// A resolver from `settings`: the system's configuration unless name
/// servers are given, answers cached no longer than `max_ttl` so that a
/// due lookup really asks.
fn build_resolver(settings: &Dns) -> Result<TokioResolver, String> {
    let mut builder = if settings.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| {
            format!("cannot read the system resolver configuration ({e}); set [dns] nameservers")
        })?
    } else {
        let servers = settings
            .nameservers
            .iter()
            .map(|addr| {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                server
            })
            .collect();
        Resolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options = builder.options_mut();
    // `lookup` bounds the whole lookup by `timeout`; the resolver's own
    // limit is only a backstop, so that the error says which limit it was.
    options.timeout = settings.timeout.saturating_mul(2);
    options.attempts = 1;
    options.positive_min_ttl = Some(settings.min_ttl);
    options.positive_max_ttl = Some(settings.max_ttl);
    options.negative_min_ttl = Some(settings.min_ttl);
    options.negative_max_ttl = Some(settings.max_ttl);
    builder.build().map_err(|e| e.to_string())
}

/// Resolves the A and AAAA records of `name` within `timeout`. No such
/// name, or no record of a family, is an answer: no address of it. Any
/// other outcome of either query (a timeout, `SERVFAIL`) fails the whole
/// lookup, so that a failure of one family never passes for its absence.
async fn lookup(resolver: &TokioResolver, name: &str, timeout: Duration) -> Answer {
    let both = async {
        let (v4, v6) = tokio::join!(resolver.ipv4_lookup(name), resolver.ipv6_lookup(name));
        let mut addresses = Vec::new();
        let mut ttl: Option<Duration> = None;
        for (family, result) in [("A", v4), ("AAAA", v6)] {
            let found = match result {
                Ok(found) => found,
                Err(e) if e.is_no_records_found() => continue,
                Err(e) => return Err(format!("{family} query: {e}")),
            };
            for record in found.answers() {
                let ip = match &record.data {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(a) => IpAddr::V6(a.0),
                    _ => continue,
                };
                addresses.push(ip);
                let t = Duration::from_secs(u64::from(record.ttl));
                ttl = Some(ttl.map_or(t, |m| m.min(t)));
            }
        }
        Ok((addresses, ttl.unwrap_or_default()))
    };
    match tokio::time::timeout(timeout, both).await {
        Ok(answer) => answer,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime_serde::re::humantime::format_duration(timeout)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(backends: &str) -> Config {
        Config::parse(
            "t.toml",
            &format!("[[region]]\nname = \"us\"\nbackends = [{backends}]\n[[region]]\nname = \"eu\"\nbackends = [\"http://10.9.0.1:80\"]\n"),
        )
        .unwrap()
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn addresses(c: &Config, region: usize) -> Vec<&str> {
        c.regions[region]
            .backends
            .iter()
            .map(|b| b.address.as_str())
            .collect()
    }

    #[test]
    fn a_name_becomes_one_backend_per_address_keeping_its_name_for_host() {
        let template = config("\"http://web.svc:8080\"");
        let known = BTreeMap::from([("web.svc".into(), ips(&["10.0.0.2", "fd00::1"]))]);
        let (c, _) = expand(&template, &known);
        assert_eq!(addresses(&c, 0), ["10.0.0.2:8080", "[fd00::1]:8080"]);
        for b in &c.regions[0].backends {
            assert_eq!(b.host_header, "web.svc:8080");
            assert_eq!(b.discovered_from.as_deref(), Some("web.svc:8080"));
            assert_eq!(
                b.dns_name(),
                None,
                "an expanded backend is not resolved again"
            );
        }
        assert_eq!(c.regions[0].backends[1].url, "http://[fd00::1]:8080/");
        assert_eq!(addresses(&c, 1), ["10.9.0.1:80"], "literal addresses stay");
    }

    #[test]
    fn a_name_without_addresses_gives_no_backend_and_duplicates_are_dropped() {
        let template = config("\"http://10.0.0.2:80\", \"http://a.svc\", \"http://b.svc\"");
        let (c, _) = expand(&template, &BTreeMap::new());
        assert_eq!(addresses(&c, 0), ["10.0.0.2:80"]);
        let known = BTreeMap::from([
            ("a.svc".into(), ips(&["10.0.0.2", "10.0.0.3"])),
            ("b.svc".into(), ips(&["10.0.0.3", "10.0.0.4"])),
        ]);
        let (c, _) = expand(&template, &known);
        assert_eq!(
            addresses(&c, 0),
            ["10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]
        );
        assert_eq!(
            c.regions[0].backends[1].discovered_from.as_deref(),
            Some("a.svc:80"),
            "the first name to give an address keeps it"
        );
    }

    #[test]
    fn an_https_name_keeps_its_tls_server_name() {
        let template = config("\"https://api.svc\"");
        let known = BTreeMap::from([("api.svc".into(), ips(&["10.0.0.7"]))]);
        let (c, _) = expand(&template, &known);
        let b = &c.regions[0].backends[0];
        assert_eq!(b.url, "https://10.0.0.7:443/");
        let tls = b.tls.as_ref().expect("https keeps its TLS settings");
        assert_eq!(format!("{:?}", tls.server_name), "DnsName(\"api.svc\")");
    }

    #[test]
    fn an_https_address_reached_under_two_names_keeps_the_first_names_tls() {
        let template = Config::parse(
            "t.toml",
            "[[region]]\nname = \"us\"\nbackends = [\"https://a.svc\"]\n[[region]]\nname = \"eu\"\nbackends = [\"https://b.svc\", \"https://c.svc\"]\n",
        )
        .unwrap();
        let known = BTreeMap::from([
            ("a.svc".into(), ips(&["10.0.0.7"])),
            ("b.svc".into(), ips(&["10.0.0.7"])),
            ("c.svc".into(), ips(&["10.0.0.8"])),
        ]);
        let (c, left_out) = expand(&template, &known);
        assert_eq!(addresses(&c, 0), ["10.0.0.7:443"]);
        assert_eq!(addresses(&c, 1), ["10.0.0.8:443"]);
        assert_eq!(left_out.len(), 1);
        assert!(
            left_out[0].starts_with("10.0.0.7:443 (from b.svc:443) is left out of region \"eu\""),
            "{left_out:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn answers_replace_addresses_and_failures_keep_them_with_backoff() {
        let template = config("\"http://web.svc\"");
        let mut d = Discovery::new(Dns::default(), Arc::new(Metrics::default()));
        d.track(&template);
        assert_eq!(d.next_due(), Some(Instant::now()));
        assert!(d.record(
            "web.svc",
            Ok((ips(&["10.0.0.3", "10.0.0.2"]), Duration::from_secs(30)))
        ));
        assert_eq!(
            d.status()[0].addresses,
            ips(&["10.0.0.2", "10.0.0.3"]),
            "sorted"
        );
        assert_eq!(d.next_due(), Some(Instant::now() + Duration::from_secs(30)));
        // The same answer changes nothing; a TTL beyond max_ttl is clamped.
        assert!(!d.record(
            "web.svc",
            Ok((ips(&["10.0.0.2", "10.0.0.3"]), Duration::from_secs(3600)))
        ));
        assert_eq!(d.next_due(), Some(Instant::now() + Duration::from_secs(60)));
        // Failures keep the set and back off from min_ttl.
        for wait in [1, 2, 4] {
            assert!(!d.record("web.svc", Err("timed out".into())));
            assert_eq!(
                d.next_due(),
                Some(Instant::now() + Duration::from_secs(wait))
            );
        }
        let s = &d.status()[0];
        assert_eq!(
            (s.failures, s.last_error.as_deref()),
            (3, Some("timed out"))
        );
        assert_eq!(
            addresses(&d.expand(&template), 0),
            ["10.0.0.2:80", "10.0.0.3:80"]
        );
        // An empty answer is an answer.
        assert!(d.record("web.svc", Ok((Vec::new(), Duration::ZERO))));
        assert_eq!(
            d.next_due(),
            Some(Instant::now() + Duration::from_secs(1)),
            "min_ttl"
        );
        assert!(d.expand(&template).regions[0].backends.is_empty());
        assert_eq!(d.status()[0].failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn tracking_a_new_configuration_forgets_dropped_names() {
        let mut d = Discovery::new(Dns::default(), Arc::new(Metrics::default()));
        d.track(&config("\"http://a.svc\", \"http://b.svc\""));
        assert!(d.record("a.svc", Ok((ips(&["10.0.0.2"]), Duration::from_secs(5)))));
        d.track(&config("\"http://a.svc\", \"http://c.svc\""));
        let names: Vec<_> = d
            .status()
            .into_iter()
            .map(|s| (s.name, s.resolved))
            .collect();
        assert_eq!(names, [("a.svc".into(), true), ("c.svc".into(), false)]);
        assert_eq!(d.next_due(), Some(Instant::now()), "c.svc is due at once");
        assert!(!d.record("b.svc", Ok((ips(&["10.0.0.9"]), Duration::from_secs(5)))));
    }
}
