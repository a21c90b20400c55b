//! `meridian ctl`: the operators' client of the admin API. It turns a
//! command into one API call (`client`), and the JSON answer into a table or
//! a one-line confirmation (`render`, pure). Which address to call comes from
//! `--admin`, the `[admin]` section of a configuration file, `MERIDIAN_ADMIN`
//! or the default, in that order; the token from `MERIDIAN_ADMIN_TOKEN`.
//!
//! May use: `config` (for the admin address of a configuration file).

mod client;
mod render;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use http::Method;
use serde::Serialize;

use crate::config::Config;

pub use client::{call, Answer};
pub use render::{confirmation, status_table, warnings};

/// Where the admin API is looked for when nothing else says.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9901";
/// The environment variable holding the bearer token.
pub const TOKEN_ENV: &str = "MERIDIAN_ADMIN_TOKEN";
/// The environment variable that may hold the admin API's URL.
pub const ADMIN_ENV: &str = "MERIDIAN_ADMIN";
/// How long one call may take, connecting included: a wedged Meridian must
/// not hang an operator's terminal or a script.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Exit codes of `meridian ctl`, for scripts.
pub mod exit {
    /// The admin API could not be reached, did not answer in time, answered
    /// something that is not the admin API, or the configuration file is bad.
    pub const UNREACHABLE: u8 = 1;
    /// The command line is wrong (clap's own code), or so is the `--admin` URL.
    pub const USAGE: u8 = 2;
    /// The API refused the call (4xx): bad token, unknown name, conflict, invalid input.
    pub const REFUSED: u8 = 3;
    /// The API failed (5xx).
    pub const SERVER: u8 = 4;
}

/// One thing an operator asks of Meridian.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Regions, backends, incident and recent events.
    Status,
    /// Drain a region, or one of its backends (`host:port`).
    Drain {
        /// The region's name.
        region: String,
        /// A backend's `host:port`, to drain only it.
        backend: Option<String>,
    },
    /// Undrain a region, or one of its backends (`host:port`).
    Undrain {
        /// The region's name.
        region: String,
        /// A backend's `host:port`, to undrain only it.
        backend: Option<String>,
    },
    /// Post the incident shown on the status page.
    IncidentSet(IncidentText),
    /// Clear the incident.
    IncidentClear,
    /// Re-read the configuration file, as SIGHUP does.
    Reload,
    /// Send a test alert to every webhook.
    AlertsTest,
}

/// The incident as `PUT /api/v1/incident` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IncidentText {
    /// A short headline.
    pub title: String,
    /// What is going on.
    pub message: String,
    /// Where updates are posted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

impl Command {
    /// The HTTP method of its call.
    pub fn method(&self) -> Method {
        match self {
            Command::Status => Method::GET,
            Command::Drain { .. }
            | Command::Undrain { .. }
            | Command::Reload
            | Command::AlertsTest => Method::POST,
            Command::IncidentSet(_) => Method::PUT,
            Command::IncidentClear => Method::DELETE,
        }
    }

    /// The path of its call, names percent-encoded.
    pub fn path(&self) -> String {
        let drain = |region: &str, backend: &Option<String>, verb: &str| match backend {
            None => format!("/api/v1/regions/{}/{verb}", encode_segment(region)),
            Some(b) => format!(
                "/api/v1/regions/{}/backends/{}/{verb}",
                encode_segment(region),
                encode_segment(b)
            ),
        };
        match self {
            Command::Status => "/api/v1/status".to_owned(),
            Command::Drain { region, backend } => drain(region, backend, "drain"),
            Command::Undrain { region, backend } => drain(region, backend, "undrain"),
            Command::IncidentSet(_) | Command::IncidentClear => "/api/v1/incident".to_owned(),
            Command::Reload => "/api/v1/reload".to_owned(),
            Command::AlertsTest => "/api/v1/alerts/test".to_owned(),
        }
    }

    /// The JSON body of its call, if it has one.
    pub fn body(&self) -> Option<String> {
        match self {
            Command::IncidentSet(incident) => {
                Some(serde_json::to_string(incident).expect("strings always serialize"))
            }
            _ => None,
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so that
/// a name can never add a path segment and an IPv6 `[::1]:80` travels intact.
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where the token sent came from, for the message when it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `MERIDIAN_ADMIN_TOKEN`.
    Env,
    /// The `[admin]` section of the configuration file given with `-c`.
    Config,
}

/// The admin API to call and the token to call it with.
#[derive(Clone)]
pub struct Target {
    /// Base URL without a trailing slash, such as `http://127.0.0.1:9901`.
    pub base: String,
    /// The bearer token and where it came from.
    pub token: Option<(String, TokenSource)>,
}

impl std::fmt::Debug for Target {
    // The token is a secret: it stays out of every debug print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|(_, source)| source))
            .finish()
    }
}

/// The token to send: `MERIDIAN_ADMIN_TOKEN` when set, else the one the
/// configuration file's `[admin]` section resolves to.
pub fn token(env: Option<String>, config: Option<&Config>) -> Option<(String, TokenSource)> {
    match env.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()) {
        Some(t) => Some((t, TokenSource::Env)),
        None => config
            .and_then(|c| c.admin.as_ref())
            .and_then(|a| a.token.clone())
            .map(|t| (t, TokenSource::Config)),
    }
}

/// The base URL to call: `flag` (`--admin`) if given, else the admin
/// listener of `config` (the file given with `-c`), else `env`
/// (`MERIDIAN_ADMIN`), else [`DEFAULT_ADMIN`].
pub fn admin_base(
    flag: Option<&str>,
    config: Option<&Config>,
    env: Option<&str>,
) -> Result<String, CtlError> {
    if let Some(url) = flag {
        return base_url(url);
    }
    if let Some(config) = config {
        return match &config.admin {
            Some(admin) => Ok(listener_url(admin.listen)),
            None => Err(CtlError::NoAdmin {
                file: config.source.clone(),
            }),
        };
    }
    match env.map(str::trim).filter(|e| !e.is_empty()) {
        Some(url) => base_url(url),
        None => Ok(DEFAULT_ADMIN.to_owned()),
    }
}

/// The URL that reaches a listener on `addr` from this host: a listener on
/// every address (`0.0.0.0`, `[::]`) is reached on loopback.
pub fn listener_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// Checks a URL given by the operator and returns it as a base without a
/// trailing slash; `host:port` alone means `http://host:port`.
pub fn base_url(given: &str) -> Result<String, CtlError> {
    let bad = |reason: &str| CtlError::BadUrl {
        url: given.to_owned(),
        reason: reason.to_owned(),
    };
    let with_scheme = if given.contains("://") {
        given.to_owned()
    } else {
        format!("http://{given}")
    };
    let url = url::Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "http" {
        // The admin listener speaks plain HTTP; put TLS in front of it with
        // a tunnel, not here.
        return Err(bad("expected an http:// URL such as http://127.0.0.1:9901"));
    }
    let Some(host) = url.host_str() else {
        return Err(bad("it has no host"));
    };
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(bad("expected only a scheme, host, port and optional path"));
    }
    let port = url.port_or_known_default().unwrap_or(80);
    let path = url.path().trim_end_matches('/');
    Ok(format!("http://{host}:{port}{path}"))
}

/// Why a `ctl` command failed; [`CtlError::exit_code`] says how to exit.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// `--admin` or `MERIDIAN_ADMIN` is not a usable URL.
    #[error("invalid admin API URL \"{url}\": {reason}")]
    BadUrl {
        /// As given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration file has no `[admin]` section, so no admin API.
    #[error(
        "{file} has no [admin] section: Meridian serves no admin API with it (or give --admin URL)"
    )]
    NoAdmin {
        /// The configuration file.
        file: String,
    },
    /// No connection could be made.
    #[error(
        "cannot reach the admin API at {url}: {reason} (is Meridian running? is --admin right?)"
    )]
    Unreachable {
        /// The admin API's base URL.
        url: String,
        /// The innermost cause, such as "Connection refused".
        reason: String,
    },
    /// The call took longer than its timeout.
    #[error("the admin API at {url} did not answer within {} s", .timeout.as_secs())]
    Timeout {
        /// The admin API's base URL.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The exchange broke off, or the answer is not the admin API's.
    #[error("unexpected answer from {url}: {reason}")]
    BadAnswer {
        /// The URL called.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// 401: the token is missing or wrong.
    #[error("the admin API refused the call: {message}; {}", token_hint(*.token))]
    Unauthorized {
        /// The server's `error` text.
        message: String,
        /// Where the token sent came from, if one was sent.
        token: Option<TokenSource>,
    },
    /// Another 4xx: unknown name, conflict, invalid input.
    #[error("{message} ({status})")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's `error` text.
        message: String,
        /// Each problem the server listed (`issues`), such as invalid
        /// configuration lines on reload.
        issues: Vec<String>,
    },
    /// 5xx.
    #[error("the admin API failed ({status}): {message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The server's `error` text.
        message: String,
    },
}

fn token_hint(token: Option<TokenSource>) -> String {
    match token {
        None => format!("no token was sent: set {TOKEN_ENV} to the admin token"),
        Some(TokenSource::Env) => format!("check the token in {TOKEN_ENV}"),
        Some(TokenSource::Config) => format!(
            "the configuration file's token was sent: set {TOKEN_ENV} to the token Meridian runs with"
        ),
    }
}

impl CtlError {
    /// The process exit code for this error (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::BadUrl { .. } => exit::USAGE,
            CtlError::Unauthorized { .. } | CtlError::Refused { .. } => exit::REFUSED,
            CtlError::Server { .. } => exit::SERVER,
            CtlError::NoAdmin { .. }
            | CtlError::Unreachable { .. }
            | CtlError::Timeout { .. }
            | CtlError::BadAnswer { .. } => exit::UNREACHABLE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(region: &str, backend: Option<&str>) -> Command {
        Command::Drain {
            region: region.into(),
            backend: backend.map(Into::into),
        }
    }

    #[test]
    fn paths_are_built_with_percent_encoded_names() {
        assert_eq!(Command::Status.path(), "/api/v1/status");
        assert_eq!(drain("us", None).path(), "/api/v1/regions/us/drain");
        assert_eq!(
            Command::Undrain {
                region: "eu-west_1".into(),
                backend: Some("10.0.0.1:8080".into())
            }
            .path(),
            "/api/v1/regions/eu-west_1/backends/10.0.0.1%3A8080/undrain"
        );
        assert_eq!(
            drain("us", Some("[::1]:80")).path(),
            "/api/v1/regions/us/backends/%5B%3A%3A1%5D%3A80/drain"
        );
        // A name cannot climb out of its segment or add a query.
        assert_eq!(
            drain("../status?x=1#y", None).path(),
            "/api/v1/regions/..%2Fstatus%3Fx%3D1%23y/drain"
        );
        assert_eq!(encode_segment("é"), "%C3%A9");
        assert_eq!(Command::Reload.path(), "/api/v1/reload");
        assert_eq!(Command::AlertsTest.path(), "/api/v1/alerts/test");
        assert_eq!(Command::AlertsTest.method(), Method::POST);
        assert_eq!(Command::IncidentClear.method(), Method::DELETE);
    }

    #[test]
    fn an_incident_body_leaves_out_a_missing_link() {
        let set = |link: Option<&str>| {
            Command::IncidentSet(IncidentText {
                title: "T \"q\"".into(),
                message: "M".into(),
                link: link.map(Into::into),
            })
        };
        assert_eq!(
            set(None).body().unwrap(),
            r#"{"title":"T \"q\"","message":"M"}"#
        );
        assert_eq!(
            set(Some("https://s.example")).body().unwrap(),
            r#"{"title":"T \"q\"","message":"M","link":"https://s.example"}"#
        );
        assert_eq!(Command::Status.body(), None);
    }

    #[test]
    fn urls_given_are_checked_and_normalised() {
        for (given, expected) in [
            ("http://127.0.0.1:9901", "http://127.0.0.1:9901"),
            ("http://127.0.0.1:9901/", "http://127.0.0.1:9901"),
            ("127.0.0.1:9911", "http://127.0.0.1:9911"),
            ("http://[::1]:9901", "http://[::1]:9901"),
            ("http://admin.internal", "http://admin.internal:80"),
            ("http://gw:8000/meridian/", "http://gw:8000/meridian"),
        ] {
            assert_eq!(base_url(given).unwrap(), expected, "{given}");
        }
        for bad in [
            "https://127.0.0.1:9901",
            "http://",
            "http://u:p@h:1",
            "http://h:1/?q",
            "ftp://h",
        ] {
            let e = base_url(bad).unwrap_err();
            assert_eq!(e.exit_code(), exit::USAGE, "{bad}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    /// A configuration with `admin` (TOML) and one region; a listener off
    /// loopback needs a token, so `admin` may name `TOKEN_FILE`.
    fn config(admin: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let admin = admin.replace("TOKEN_FILE", &file.display().to_string());
        Config::parse(
            "m.toml",
            &format!("{admin}[[region]]\nname = \"us\"\nbackends = [\"http://10.0.0.1:80\"]\n"),
        )
        .unwrap()
    }

    #[test]
    fn the_default_admin_url_comes_from_the_flag_the_config_the_env_then_the_default() {
        let any = config("[admin]\nlisten = \"0.0.0.0:9911\"\ntoken_file = \"TOKEN_FILE\"\n");
        assert_eq!(
            admin_base(None, Some(&any), Some("http://e:1")).unwrap(),
            "http://127.0.0.1:9911",
            "a listener on every address is reached on loopback"
        );
        let any6 = config("[admin]\nlisten = \"[::]:9912\"\ntoken_file = \"TOKEN_FILE\"\n");
        assert_eq!(
            admin_base(None, Some(&any6), None).unwrap(),
            "http://[::1]:9912"
        );
        let one = config("[admin]\nlisten = \"127.0.0.2:9913\"\n");
        assert_eq!(
            admin_base(None, Some(&one), None).unwrap(),
            "http://127.0.0.2:9913"
        );
        assert_eq!(
            admin_base(Some("10.0.0.5:9901"), Some(&one), Some("http://e:1")).unwrap(),
            "http://10.0.0.5:9901",
            "--admin wins"
        );
        assert_eq!(
            admin_base(None, None, Some("http://e:1")).unwrap(),
            "http://e:1"
        );
        assert_eq!(admin_base(None, None, Some(" ")).unwrap(), DEFAULT_ADMIN);
        assert_eq!(admin_base(None, None, None).unwrap(), DEFAULT_ADMIN);
        let none = config("");
        let e = admin_base(None, Some(&none), None).unwrap_err();
        assert!(
            e.to_string().starts_with("m.toml has no [admin] section"),
            "{e}"
        );
        assert_eq!(e.exit_code(), exit::UNREACHABLE);
    }

    #[test]
    fn the_token_comes_from_the_env_then_the_config_and_is_never_debug_printed() {
        let with = config("[admin]\ntoken_file = \"TOKEN_FILE\"\n");
        assert_eq!(
            token(Some(" from-env ".into()), Some(&with)),
            Some(("from-env".into(), TokenSource::Env))
        );
        assert_eq!(
            token(Some("".into()), Some(&with)),
            Some(("from-file".into(), TokenSource::Config))
        );
        assert_eq!(token(None, None), None);
        let target = Target {
            base: DEFAULT_ADMIN.into(),
            token: token(None, Some(&with)),
        };
        assert!(!format!("{target:?}").contains("from-file"));
    }

    #[test]
    fn errors_name_the_token_variable_and_map_to_exit_codes() {
        let e = CtlError::Unauthorized {
            message: "missing or invalid bearer token".into(),
            token: None,
        };
        assert!(e.to_string().contains("set MERIDIAN_ADMIN_TOKEN"), "{e}");
        assert_eq!(e.exit_code(), exit::REFUSED);
        let e = CtlError::Server {
            status: 503,
            message: "Meridian is shutting down".into(),
        };
        assert_eq!(e.exit_code(), exit::SERVER);
        let e = CtlError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "Connection refused".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot reach the admin API at http://127.0.0.1:1: Connection refused (is Meridian running? is --admin right?)"
        );
        assert_eq!(e.exit_code(), exit::UNREACHABLE);
    }
}
