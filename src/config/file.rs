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
}

/// `[listen]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    pub http: Option<Spanned<String>>,
}

/// `[admin]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub listen: Option<Spanned<String>>,
    pub token_env: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
}

/// `[geo]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoFile {
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
    pub backends: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub health: HealthFile,
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
    pub send_timeout: Option<Spanned<Dur>>,
    pub shutdown_grace: Option<Spanned<Dur>>,
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
