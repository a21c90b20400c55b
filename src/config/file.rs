//! The configuration file as serde sees it: every table denies unknown keys and
//! keeps the source span of each value that validation may complain about.
//!
//! These types are never used outside `config`; `validate` turns them into the
//! checked [`Config`](super::Config).

use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub listen: ListenFile,
    #[serde(default)]
    pub tls: Option<TlsFile>,
    #[serde(default)]
    pub admin: Option<AdminFile>,
    #[serde(default)]
    pub geo: Option<GeoFile>,
    #[serde(default)]
    pub region: Vec<RegionFile>,
    #[serde(default)]
    pub proxy: ProxyFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub status_page: StatusPageFile,
    #[serde(default)]
    pub alerts: Option<AlertsFile>,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub dns: DnsFile,
}

/// `[dns]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsFile {
    pub nameservers: Option<Vec<Spanned<String>>>,
    pub min_ttl: Option<Spanned<Dur>>,
    pub max_ttl: Option<Spanned<Dur>>,
    pub timeout: Option<Spanned<Dur>>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    pub level: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub access: Option<bool>,
}

/// `[alerts]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsFile {
    pub webhooks: Option<Spanned<Vec<Spanned<String>>>>,
    pub group_window: Option<Spanned<Dur>>,
    pub timeout: Option<Spanned<Dur>>,
    pub retries: Option<Spanned<i64>>,
    pub queue: Option<Spanned<i64>>,
}

/// `[listen]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    pub http: Option<Spanned<String>>,
    pub https: Option<Spanned<String>>,
    pub redirect_to_https: Option<Spanned<bool>>,
    pub h2c: Option<Spanned<bool>>,
    pub proxy_protocol: Option<Spanned<bool>>,
}

/// `[tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub hsts: Option<Spanned<String>>,
    pub reload_interval: Option<Spanned<Dur>>,
    #[serde(default)]
    pub certificate: Vec<CertificateFile>,
    pub acme: Option<AcmeFile>,
}

/// `[tls.acme]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeFile {
    pub directory: Option<Spanned<String>>,
    pub email: Option<Spanned<String>>,
    #[serde(default)]
    pub domains: Vec<Spanned<String>>,
    pub cache: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub renew_before: Option<Spanned<Dur>>,
}

/// `[[tls.certificate]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// `[admin]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub listen: Option<Spanned<String>>,
    pub token_env: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    pub state_file: Option<Spanned<String>>,
}

/// `[geo]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoFile {
    pub database: Option<Spanned<String>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    pub reload_interval: Option<Spanned<Dur>>,
    pub forwarding_header: Option<Spanned<String>>,
    pub pin_header: Option<Spanned<String>>,
    pub sticky_cookie: Option<Spanned<String>>,
    pub sticky_ttl: Option<Spanned<Dur>>,
    pub default_region: Option<Spanned<String>>,
    #[serde(default, rename = "override")]
    pub overrides: Vec<OverrideFile>,
}

/// `[[geo.override]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideFile {
    pub cidr: Spanned<String>,
    pub region: Spanned<String>,
}

/// `[[region]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionFile {
    pub name: Spanned<String>,
    #[serde(default)]
    pub countries: Vec<Spanned<String>>,
    #[serde(default)]
    pub continents: Vec<Spanned<String>>,
    #[serde(default)]
    pub failover: Vec<Spanned<String>>,
    pub backends: Option<Spanned<Vec<Spanned<BackendEntry>>>>,
    #[serde(default)]
    pub health: HealthFile,
    pub min_healthy: Option<Spanned<i64>>,
    pub failback_hold: Option<Spanned<Dur>>,
    pub slow_start: Option<Spanned<Dur>>,
    pub first_byte_timeout: Option<Spanned<Dur>>,
    pub ca_file: Option<Spanned<String>>,
    #[serde(default)]
    pub outlier: OutlierFile,
}

/// One of a region's `backends`: a URL, or a table with its failure domain.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum BackendEntry {
    /// `"http://host:port"`
    Url(String),
    /// `{ url = "http://host:port", domain = "node-a" }`
    Table(BackendTable),
}

/// A backend written as a table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTable {
    pub url: String,
    pub domain: Option<String>,
}

impl BackendEntry {
    /// Its URL.
    pub fn url(&self) -> &String {
        match self {
            BackendEntry::Url(u) => u,
            BackendEntry::Table(t) => &t.url,
        }
    }

    /// Its failure domain, when written.
    pub fn domain(&self) -> Option<&String> {
        match self {
            BackendEntry::Url(_) => None,
            BackendEntry::Table(t) => t.domain.as_ref(),
        }
    }
}

/// `[region.health]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<Dur>>,
    pub timeout: Option<Spanned<Dur>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub method: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub expect_status: Option<Spanned<Vec<Spanned<StatusFile>>>>,
    pub expect_body: Option<Spanned<String>>,
    pub jitter: Option<Spanned<Num>>,
    pub initial_state: Option<Spanned<String>>,
    pub failure_domain_header: Option<Spanned<String>>,
}

/// `[region.outlier]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierFile {
    pub consecutive_failures: Option<Spanned<i64>>,
    pub failures: Option<Spanned<Vec<Spanned<String>>>>,
    pub base_ejection_time: Option<Spanned<Dur>>,
    pub max_ejection_time: Option<Spanned<Dur>>,
    pub max_ejected_percent: Option<Spanned<i64>>,
}

/// `[proxy]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    pub connect_timeout: Option<Spanned<Dur>>,
    pub first_byte_timeout: Option<Spanned<Dur>>,
    pub read_timeout: Option<Spanned<Dur>>,
    pub send_timeout: Option<Spanned<Dur>>,
    pub preserve_host: Option<bool>,
    pub max_attempts: Option<Spanned<i64>>,
    pub pool_idle_timeout: Option<Spanned<Dur>>,
    pub pool_max_idle_per_backend: Option<Spanned<i64>>,
    pub region_header: Option<bool>,
    pub retry_methods: Option<Spanned<Vec<Spanned<String>>>>,
    pub replay_buffer: Option<Spanned<i64>>,
    pub retry_budget_ratio: Option<Spanned<Num>>,
    pub retry_budget_window: Option<Spanned<Dur>>,
    pub retry_budget_min_per_second: Option<Spanned<i64>>,
    pub hedge: Option<bool>,
    pub hedge_min_delay: Option<Spanned<Dur>>,
    pub hedge_max_delay: Option<Spanned<Dur>>,
    pub upgrade_idle_timeout: Option<Spanned<Dur>>,
    pub drain_grace: Option<Spanned<Dur>>,
}

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_connections: Option<Spanned<i64>>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub max_headers: Option<Spanned<i64>>,
    pub header_read_timeout: Option<Spanned<Dur>>,
    pub keepalive_idle_timeout: Option<Spanned<Dur>>,
    pub client_body_timeout: Option<Spanned<Dur>>,
    pub client_body_min_rate: Option<Spanned<i64>>,
    pub send_timeout: Option<Spanned<Dur>>,
    pub shutdown_grace: Option<Spanned<Dur>>,
    pub http2_max_concurrent_streams: Option<Spanned<i64>>,
    pub http2_max_pending_resets: Option<Spanned<i64>>,
    pub backend_max_requests: Option<Spanned<i64>>,
    pub backend_queue_timeout: Option<Spanned<Dur>>,
}

/// `[status_page]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusPageFile {
    pub brand: Option<String>,
    pub title: Option<String>,
    pub message: Option<String>,
    pub logo: Option<Spanned<String>>,
    pub support_url: Option<Spanned<String>>,
    pub accent_color: Option<Spanned<String>>,
    pub retry_after: Option<Spanned<Dur>>,
    pub template: Option<Spanned<String>>,
    pub intercept: Option<Spanned<Vec<Spanned<i64>>>>,
}

/// A duration written the humantime way (`"800ms"`, `"2s"`, `"1m 30s"`).
#[derive(Debug, Clone, Copy)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime_serde::re::humantime::parse_duration(text.trim())
            .map(Dur)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "invalid duration \"{text}\": expected a positive duration such as \"800ms\", \"2s\" or \"1m\""
                ))
            })
    }
}

/// A number written as a float (`0.25`) or a whole number (`0`, `1`).
#[derive(Debug, Clone, Copy)]
pub struct Num(pub f64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Num;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number such as 0.1")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(Num(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// One item of `health.expect_status`: a status code (`200`) or a string
/// holding a code or an inclusive range (`"200"`, `"200-399"`).
#[derive(Debug, Clone)]
pub enum StatusFile {
    Code(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for StatusFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = StatusFile;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a status code such as 200 or a range such as \"200-399\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StatusFile, E> {
                Ok(StatusFile::Code(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StatusFile, E> {
                Ok(StatusFile::Code(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StatusFile, E> {
                Ok(StatusFile::Text(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<StatusFile, E> {
                Ok(StatusFile::Text(v))
            }
        }
        d.deserialize_any(Visitor)
    }
}
