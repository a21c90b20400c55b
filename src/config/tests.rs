//! Unit tests of configuration parsing and validation: every rejected file must
//! name the file, the line and the key, and say what is expected.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

const FILE: &str = "test.toml";

/// Parses `text`, which must be valid.
#[track_caller]
fn accepted(text: &str) -> Config {
    Config::parse(FILE, text).unwrap_or_else(|e| panic!("expected a valid config, got:\n{e}"))
}

/// Parses `text`, which must be rejected, and returns every issue found.
#[track_caller]
fn rejected(text: &str) -> Vec<ConfigIssue> {
    match Config::parse(FILE, text) {
        Ok(_) => panic!("expected this config to be rejected:\n{text}"),
        Err(e) => {
            assert!(
                !e.issues().is_empty(),
                "an invalid config lists no issue: {e}"
            );
            e.issues().to_vec()
        }
    }
}

/// The 1-based line of `text` that contains `needle`, which must be on exactly one line.
#[track_caller]
fn line_of(text: &str, needle: &str) -> usize {
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(lines.len(), 1, "{needle:?} must be on exactly one line");
    lines[0]
}

/// Asserts that `issue` is in test.toml at `line`, is about `key`, and that its
/// message contains `fragment`.
#[track_caller]
fn assert_issue(issue: &ConfigIssue, line: usize, key: &str, fragment: &str) {
    assert_eq!(issue.file, FILE, "file of {issue}");
    assert_eq!(issue.line, line, "line of {issue}");
    assert_eq!(issue.key, key, "key of {issue}");
    assert!(
        issue.message.contains(fragment),
        "message of {issue}\nlacks {fragment:?}"
    );
}

/// Asserts that `text` is rejected with exactly one issue, on the line that
/// contains `at`, about `key`, with `fragment` in its message.
#[track_caller]
fn assert_only_issue(text: &str, at: &str, key: &str, fragment: &str) -> ConfigIssue {
    let issues = rejected(text);
    assert_eq!(issues.len(), 1, "expected exactly one issue: {issues:#?}");
    assert_issue(&issues[0], line_of(text, at), key, fragment);
    issues[0].clone()
}

// ---------------------------------------------------------------------------
// Syntax and unknown keys (reported by the TOML/serde layer)
// ---------------------------------------------------------------------------

#[test]
fn toml_syntax_error_has_the_line_and_no_key() {
    let text = r#"
[listen]
http = "0.0.0.0:8080

[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]
"#;
    assert_only_issue(text, "http =", "", "invalid basic string");

    let text = r#"
[[region]]
name =
backends = ["http://10.1.0.10:8080"]
"#;
    let issue = assert_only_issue(text, "name =", "", "expected");
    assert_eq!(issue.column, 7, "column of {issue}");
}

#[test]
fn unknown_top_level_key_is_named() {
    let text = r#"
colour = "blue"

[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]
"#;
    assert_only_issue(
        text,
        "colour",
        "colour",
        "unknown key `colour`, expected one of `listen`, `tls`, `admin`",
    );
}

#[test]
fn unknown_key_in_listen_is_named() {
    let text = r#"
[listen]
htp = "0.0.0.0:8080"

[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]
"#;
    assert_only_issue(
        text,
        "htp =",
        "listen.htp",
        "unknown key `htp`, expected one of `http`, `https`",
    );
}

#[test]
fn unknown_key_in_region_is_named() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]
weight = 3
"#;
    assert_only_issue(
        text,
        "weight",
        "region[0].weight",
        "unknown key `weight`, expected one of `name`",
    );
}

#[test]
fn unknown_key_in_region_health_is_named_with_its_region_index() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[[region]]
name = "eu"
backends = ["http://10.2.0.10:8080"]

[region.health]
paht = "/healthz"
"#;
    assert_only_issue(
        text,
        "paht",
        "region[1].health.paht",
        "unknown key `paht`, expected one of `path`",
    );
}

#[test]
fn region_without_name_is_reported_at_its_table() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[[region]] # nameless
backends = ["http://10.2.0.10:8080"]
"#;
    assert_only_issue(text, "# nameless", "region[1]", "missing key `name`");
}

// ---------------------------------------------------------------------------
// Regions
// ---------------------------------------------------------------------------

#[test]
fn no_region_at_all_is_reported() {
    let issues = rejected("[listen]\nhttp = \"0.0.0.0:8080\"\n");
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert_issue(&issues[0], 1, "region", "expected at least one [[region]]");
}

#[test]
fn unknown_region_without_any_region_says_none_is_configured() {
    let text = "[geo]\ndefault_region = \"us\"\n";
    let issues = rejected(text);
    assert_eq!(issues.len(), 2, "{issues:#?}");
    assert_issue(&issues[0], 1, "region", "expected at least one [[region]]");
    assert_issue(
        &issues[1],
        2,
        "geo.default_region",
        "unknown region \"us\": expected one of the names given in [[region]] (none is configured)",
    );
}

#[test]
fn duplicate_region_name_is_reported_on_the_second() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[[region]]
name = "us" # again
backends = ["http://10.2.0.10:8080"]
"#;
    assert_only_issue(
        text,
        "# again",
        "region[1].name",
        "duplicate region name \"us\": each [[region]] needs its own name",
    );
}

#[test]
fn region_without_backends_key_is_reported_at_its_name() {
    let text = r#"
[[region]]
name = "us"
countries = ["US"]
"#;
    assert_only_issue(
        text,
        "name =",
        "region[0].backends",
        "region \"us\" has no backends: expected backends = [",
    );
}

#[test]
fn region_with_empty_backends_is_reported_at_the_list() {
    let text = r#"
[[region]]
name = "us"
backends = []
"#;
    assert_only_issue(
        text,
        "backends =",
        "region[0].backends",
        "has no backends: expected backends = [",
    );
}

#[test]
fn failover_to_an_unknown_region_lists_the_known_ones() {
    let text = r#"
[[region]]
name = "us"
failover = ["eu", "ap"]
backends = ["http://10.1.0.10:8080"]

[[region]]
name = "eu"
backends = ["http://10.2.0.10:8080"]
"#;
    assert_only_issue(
        text,
        "failover",
        "region[0].failover[1]",
        "unknown region \"ap\": expected one of \"us\", \"eu\"",
    );
}

#[test]
fn failover_to_itself_is_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[[region]]
name = "eu"
failover = ["eu"]
backends = ["http://10.2.0.10:8080"]
"#;
    assert_only_issue(
        text,
        "failover",
        "region[1].failover[0]",
        "region \"eu\" cannot fail over to itself",
    );
}

#[test]
fn unknown_default_region_lists_the_known_ones() {
    let text = r#"
[geo]
default_region = "ap"

[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]
"#;
    assert_only_issue(
        text,
        "default_region",
        "geo.default_region",
        "unknown region \"ap\": expected one of \"us\"",
    );
}

#[test]
fn country_claimed_by_two_regions_names_the_first_owner() {
    let text = r#"
[[region]]
name = "us"
countries = ["US", "CA"]
backends = ["http://10.1.0.10:8080"]

[[region]]
name = "eu"
countries = ["DE", "us"]
backends = ["http://10.2.0.10:8080"]
"#;
    assert_only_issue(
        text,
        "\"DE\"",
        "region[1].countries[1]",
        "\"US\" is already claimed by region \"us\": each code may belong to one region only",
    );
}

#[test]
fn continent_claimed_by_two_regions_names_the_first_owner() {
    let text = r#"
[[region]]
name = "us"
continents = ["NA", "SA"]
backends = ["http://10.1.0.10:8080"]

[[region]]
name = "eu"
continents = ["EU", "SA"]
backends = ["http://10.2.0.10:8080"]
"#;
    assert_only_issue(
        text,
        "\"EU\"",
        "region[1].continents[1]",
        "\"SA\" is already claimed by region \"us\"",
    );
}

#[test]
fn invalid_country_code_says_what_is_expected() {
    let text = r#"
[[region]]
name = "us"
countries = ["US", "USA"]
backends = ["http://10.1.0.10:8080"]
"#;
    assert_only_issue(
        text,
        "countries",
        "region[0].countries[1]",
        "invalid code \"USA\": expected an ISO 3166-1 alpha-2 country code",
    );
}

#[test]
fn invalid_continent_code_lists_the_valid_ones() {
    let text = r#"
[[region]]
name = "eu"
continents = ["Europe"]
backends = ["http://10.2.0.10:8080"]
"#;
    assert_only_issue(
        text,
        "continents",
        "region[0].continents[0]",
        "expected one of AF AN AS EU NA OC SA",
    );
}

#[test]
fn invalid_backend_urls_say_why_and_what_is_expected() {
    let cases = [
        ("10.1.0.10:8080", "missing the \"http://\" scheme"),
        ("web.internal:8080", "missing the \"http://\" scheme"),
        ("http://10.1.0.10:8080/app", "no path, query or fragment"),
        ("http://10.1.0.10:8080/?x=1", "no path, query or fragment"),
        ("ftp://10.1.0.10:21", "unsupported scheme \"ftp\""),
        (
            "http://user:secret@10.1.0.10:8080",
            "credentials are not allowed",
        ),
        ("http://10.1.0.10:99999", "invalid port number"),
    ];
    for (url, why) in cases {
        let text = format!(
            "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.11:8080\", \"{url}\"]\n"
        );
        let issue = assert_only_issue(&text, "backends", "region[0].backends[1]", why);
        if url.contains('@') {
            assert!(
                !issue.message.contains("secret"),
                "no password in messages: {issue}"
            );
        } else {
            assert!(
                issue
                    .message
                    .starts_with(&format!("invalid backend URL \"{url}\"")),
                "{issue}"
            );
        }
        assert!(
            issue.message.contains("expected http://HOST:PORT"),
            "{issue}"
        );
    }
}

/// A PEM file holding one self-signed CA certificate, in a directory that
/// lives as long as the returned guard.
fn ca_pem() -> (tempfile::TempDir, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    write_file(&cert.pem())
}

/// A file holding `text`, and its path.
fn write_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, text).unwrap();
    (dir, path.display().to_string())
}

#[test]
fn https_backends_are_accepted_with_their_host_as_tls_name() {
    let (_dir, ca) = ca_pem();
    let text = format!(
        "[[region]]\nname = \"us\"\nca_file = \"{ca}\"\nbackends = [\"https://10.1.0.10:8443\", \"https://api.internal\", \"https://[::1]:9443\", \"http://10.1.0.11:8080\"]\n"
    );
    let config = accepted(&text);
    let region = &config.regions[0];
    assert_eq!(region.ca_file.as_deref(), Some(std::path::Path::new(&ca)));
    let b = &region.backends;
    assert_eq!(b[0].url, "https://10.1.0.10:8443/");
    assert_eq!(b[0].address, "10.1.0.10:8443");
    assert_eq!(
        b[1].address, "api.internal:443",
        "443 is https's default port"
    );
    assert_eq!(b[1].host_header, "api.internal:443");
    assert_eq!(b[2].address, "[::1]:9443");
    let names: Vec<String> = b[..3]
        .iter()
        .map(|b| b.tls.as_ref().unwrap().server_name.to_str().into_owned())
        .collect();
    assert_eq!(names, ["10.1.0.10", "api.internal", "::1"]);
    assert!(matches!(
        b[0].tls.as_ref().unwrap().server_name,
        rustls::pki_types::ServerName::IpAddress(_)
    ));
    assert!(b[3].tls.is_none(), "an http backend has no TLS");
    assert_eq!(
        b[0].tls.as_ref().unwrap().settings.roots,
        Roots::CaFile {
            path: ca.clone().into(),
            certificates: 1
        }
    );
    for tls in b[..3].iter().map(|b| b.tls.as_ref().unwrap()) {
        let traffic = &tls.settings.traffic;
        assert_eq!(traffic.alpn_protocols, [b"http/1.1".to_vec()]);
        assert!(
            std::sync::Arc::ptr_eq(traffic, &b[0].tls.as_ref().unwrap().settings.traffic),
            "one region shares one set of settings"
        );
    }
    assert!(config
        .summary()
        .contains("https://10.1.0.10:8443 (verified against ca_file"));
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
}

#[test]
fn https_backends_without_ca_file_use_the_system_roots() {
    let text = "[[region]]\nname = \"us\"\nbackends = [\"https://10.1.0.10:8443\"]\n[[region]]\nname = \"eu\"\nbackends = [\"https://10.2.0.10:8443\"]\n";
    let config = accepted(text);
    let us = config.regions[0].backends[0].tls.as_ref().unwrap();
    let eu = config.regions[1].backends[0].tls.as_ref().unwrap();
    assert!(matches!(us.settings.roots, Roots::System { .. }));
    assert!(
        std::sync::Arc::ptr_eq(&us.settings, &eu.settings),
        "the system's roots are read once per configuration"
    );
    assert!(config.regions[0].ca_file.is_none());
}

#[test]
fn a_missing_ca_file_names_file_line_and_key() {
    let text = "[[region]]\nname = \"us\"\nbackends = [\"https://10.1.0.10:8443\"]\nca_file = \"/nonexistent/meridian-ca.pem\"\n";
    let issue = assert_only_issue(
        text,
        "ca_file",
        "region[0].ca_file",
        "cannot read /nonexistent/meridian-ca.pem",
    );
    assert!(
        issue
            .message
            .contains("expected a PEM file of one or more CA certificates"),
        "{issue}"
    );
}

#[test]
fn a_ca_file_without_a_certificate_is_refused() {
    let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    for (what, content) in [("empty", String::new()), ("a key only", key)] {
        let (_dir, path) = write_file(&content);
        let text = format!(
            "[[region]]\nname = \"us\"\nbackends = [\"https://10.1.0.10:8443\"]\nca_file = \"{path}\"\n"
        );
        let issues = rejected(&text);
        assert_eq!(issues.len(), 1, "{what}: {issues:#?}");
        assert_issue(
            &issues[0],
            4,
            "region[0].ca_file",
            &format!("{path} contains no certificate"),
        );
    }
}

#[test]
fn a_ca_file_with_a_broken_certificate_is_refused() {
    let (_dir, path) = write_file(
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    );
    let text = format!(
        "[[region]]\nname = \"us\"\nbackends = [\"https://10.1.0.10:8443\"]\nca_file = \"{path}\"\n"
    );
    assert_only_issue(
        &text,
        "ca_file",
        "region[0].ca_file",
        &format!("certificate 1 of {path} cannot be used as a CA"),
    );
}

#[test]
fn one_https_address_is_verified_one_way() {
    let (_dir, ca) = ca_pem();
    let text = format!(
        "[[region]]\nname = \"us\"\nca_file = \"{ca}\"\nbackends = [\"https://10.1.0.10:8443\"]\n[[region]]\nname = \"eu\"\nbackends = [\"https://10.1.0.10:8443\"]\n"
    );
    let issues = rejected(&text);
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert_issue(
        &issues[0],
        7,
        "region[1].backends[0]",
        "https backend 10.1.0.10:8443 is also in region \"us\", verified against ca_file",
    );
    // One address in one region is one backend in the admin API, whatever the scheme.
    let text = "[[region]]\nname = \"us\"\nbackends = [\"https://10.1.0.10:8443\", \"http://10.1.0.10:8443\"]\n";
    assert_only_issue(
        text,
        "backends",
        "region[0].backends[1]",
        "backend 10.1.0.10:8443 is listed twice in region \"us\"",
    );
}

#[test]
fn an_unused_ca_file_is_a_warning() {
    let (_dir, ca) = ca_pem();
    let text = format!(
        "[[region]]\nname = \"us\"\nca_file = \"{ca}\"\nbackends = [\"http://10.1.0.10:8080\"]\n"
    );
    let config = accepted(&text);
    assert_eq!(
        config.warnings(),
        ["region \"us\": ca_file is set but none of its backends uses https://, so it is not used"]
    );
}

#[test]
fn the_same_backend_twice_is_refused() {
    // Port 80 is the default, so these are the same backend.
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10", "http://10.1.0.10:80"]
"#;
    assert_only_issue(
        text,
        "backends",
        "region[0].backends[1]",
        "backend 10.1.0.10:80 is listed twice in region \"us\"",
    );
}

// ---------------------------------------------------------------------------
// Health checks, durations and counts
// ---------------------------------------------------------------------------

#[test]
fn zero_interval_and_zero_timeout_are_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[region.health]
interval = "0s"
timeout = "0ms"
"#;
    let issues = rejected(text);
    assert_eq!(issues.len(), 2, "{issues:#?}");
    assert_issue(
        &issues[0],
        line_of(text, "interval"),
        "region[0].health.interval",
        "must be greater than zero: expected a duration such as",
    );
    assert_issue(
        &issues[1],
        line_of(text, "timeout"),
        "region[0].health.timeout",
        "must be greater than zero",
    );
}

#[test]
fn negative_duration_is_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[region.health]
timeout = "-1s"
"#;
    assert_only_issue(
        text,
        "timeout",
        "region[0].health.timeout",
        "invalid duration \"-1s\": expected a positive duration such as \"800ms\"",
    );
}

#[test]
fn garbage_duration_is_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[proxy]
connect_timeout = "soon"
"#;
    assert_only_issue(
        text,
        "connect_timeout",
        "proxy.connect_timeout",
        "invalid duration \"soon\": expected a positive duration",
    );
}

#[test]
fn duration_given_as_a_number_is_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[region.health]
interval = 5
"#;
    assert_only_issue(
        text,
        "interval",
        "region[0].health.interval",
        "expected a string",
    );
}

#[test]
fn zero_rise_and_fall_are_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[region.health]
rise = 0
fall = 0
"#;
    let issues = rejected(text);
    assert_eq!(issues.len(), 2, "{issues:#?}");
    assert_issue(
        &issues[0],
        line_of(text, "rise"),
        "region[0].health.rise",
        "0 is out of range: expected a whole number from 1 to 1000",
    );
    assert_issue(
        &issues[1],
        line_of(text, "fall"),
        "region[0].health.fall",
        "0 is out of range: expected a whole number from 1 to 1000",
    );
}

#[test]
fn negative_rise_is_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[region.health]
rise = -1
"#;
    assert_only_issue(
        text,
        "rise",
        "region[0].health.rise",
        "-1 is out of range: expected a whole number from 1 to 1000",
    );
}

#[test]
fn health_path_must_start_with_a_slash() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[region.health]
path = "healthz"
"#;
    assert_only_issue(
        text,
        "path",
        "region[0].health.path",
        "expected a path starting with '/'",
    );
}

#[test]
fn health_method_must_be_one_of_the_check_methods() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[region.health]
method = "PUT"
"#;
    assert_only_issue(
        text,
        "method",
        "region[0].health.method",
        "invalid method \"PUT\": expected one of GET, HEAD, OPTIONS, POST",
    );
}

#[test]
fn health_method_in_lower_case_is_refused_with_the_upper_case_form() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[region.health]
method = "head"
"#;
    assert_only_issue(
        text,
        "method",
        "region[0].health.method",
        "methods are case-sensitive; expected \"HEAD\"",
    );
}

#[test]
fn invalid_health_host_says_what_is_expected() {
    for host in [
        "",
        "www.example.com/x",
        "a b",
        "user@example.com",
        "example.com:http",
        "example.com:",
    ] {
        let text = format!(
            "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n\n[region.health]\nhost = \"{host}\"\n"
        );
        assert_only_issue(
            &text,
            "host =",
            "region[0].health.host",
            &format!("invalid Host header \"{host}\": expected a host or host:port"),
        );
    }
}

#[test]
fn health_host_accepts_names_addresses_and_ports() {
    for host in [
        "www.example.com",
        "www.example.com:8443",
        "10.1.0.10",
        "[::1]:8080",
    ] {
        let text = format!(
            "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n\n[region.health]\nhost = \"{host}\"\n"
        );
        let config = accepted(&text);
        assert_eq!(
            config.regions[0]
                .health
                .host
                .as_ref()
                .map(|h| h.to_str().unwrap()),
            Some(host)
        );
    }
}

#[test]
fn reversed_expect_status_range_is_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[region.health]
expect_status = [200, "399-200"]
"#;
    assert_only_issue(
        text,
        "expect_status",
        "region[0].health.expect_status[1]",
        "invalid status range \"399-200\": 399 is larger than 200; expected LOW-HIGH with LOW <= HIGH",
    );
}

#[test]
fn invalid_expect_status_items_say_what_is_expected() {
    let cases = [
        (
            "99",
            "99 is out of range: expected a status code from 100 to 599",
        ),
        ("600", "600 is out of range"),
        ("\"200-700\"", "\"200-700\" is out of range"),
        ("\"2xx\"", "invalid status \"2xx\": expected a status code"),
        ("\"200-\"", "invalid status \"200-\""),
        ("\"-200\"", "invalid status \"-200\""),
        (
            "true",
            "expected a status code such as 200 or a range such as \"200-399\"",
        ),
    ];
    for (item, why) in cases {
        let text = format!(
            "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n\n[region.health]\nexpect_status = [{item}]\n"
        );
        assert_only_issue(
            &text,
            "expect_status",
            "region[0].health.expect_status[0]",
            why,
        );
    }
}

#[test]
fn empty_expect_status_is_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[region.health]
expect_status = []
"#;
    assert_only_issue(
        text,
        "expect_status",
        "region[0].health.expect_status",
        "no status is listed, so every check would fail",
    );
}

#[test]
fn expect_status_accepts_codes_single_strings_and_ranges() {
    let config = accepted(
        r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[region.health]
expect_status = [204, "200", "300-302", "100-599"]
"#,
    );
    assert_eq!(
        config.regions[0].health.expect_status,
        [(204, 204), (200, 200), (300, 302), (100, 599)]
    );
}

#[test]
fn empty_expect_body_is_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[region.health]
expect_body = ""
"#;
    assert_only_issue(
        text,
        "expect_body",
        "region[0].health.expect_body",
        "is empty: expected the text a healthy response body contains",
    );
}

#[test]
fn expect_body_with_head_checks_is_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[region.health]
method = "HEAD"
expect_body = "ok"
"#;
    assert_only_issue(
        text,
        "expect_body",
        "region[0].health.expect_body",
        "a response to HEAD has no body, so expect_body could never match",
    );
}

#[test]
fn jitter_out_of_range_is_refused() {
    for (jitter, shown) in [("0.9", "0.9"), ("-0.1", "-0.1"), ("1", "1"), ("nan", "NaN")] {
        let text = format!(
            "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n\n[region.health]\njitter = {jitter}\n"
        );
        assert_only_issue(
            &text,
            "jitter",
            "region[0].health.jitter",
            &format!("{shown} is out of range: expected a number from 0.0 to 0.5"),
        );
    }
}

#[test]
fn jitter_accepts_a_whole_zero_and_refuses_a_string() {
    let config = accepted(
        "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n\n[region.health]\njitter = 0\n",
    );
    assert_eq!(config.regions[0].health.jitter, 0.0);

    let text =
        "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n\n[region.health]\njitter = \"10%\"\n";
    assert_only_issue(
        text,
        "jitter",
        "region[0].health.jitter",
        "expected a number such as 0.1",
    );
}

#[test]
fn unknown_initial_state_lists_the_valid_ones() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[region.health]
initial_state = "maybe"
"#;
    assert_only_issue(
        text,
        "initial_state",
        "region[0].health.initial_state",
        "invalid initial state \"maybe\": expected \"unknown\", \"up\" or \"down\"",
    );
}

// ---------------------------------------------------------------------------
// Degraded regions, fail-back and first-byte timeouts
// ---------------------------------------------------------------------------

#[test]
fn min_healthy_above_the_backend_count_is_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080", "http://10.1.0.11:8080"]
min_healthy = 3
"#;
    assert_only_issue(
        text,
        "min_healthy",
        "region[0].min_healthy",
        "3 is more than the 2 backends of region \"us\": expected a whole number from 1 to 2",
    );
}

#[test]
fn zero_min_healthy_is_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]
min_healthy = 0
"#;
    assert_only_issue(
        text,
        "min_healthy",
        "region[0].min_healthy",
        "0 is out of range: expected a whole number from 1 to 1",
    );
}

#[test]
fn zero_failback_hold_and_slow_start_are_allowed_and_mean_off() {
    let config = accepted(
        r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]
failback_hold = "0s"
slow_start = "0s"
"#,
    );
    assert_eq!(config.regions[0].failback_hold, Duration::ZERO);
    assert_eq!(config.regions[0].slow_start, Duration::ZERO);
}

#[test]
fn zero_region_first_byte_timeout_is_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]
first_byte_timeout = "0ms"
"#;
    assert_only_issue(
        text,
        "first_byte_timeout",
        "region[0].first_byte_timeout",
        "must be greater than zero",
    );
}

// ---------------------------------------------------------------------------
// Outlier detection
// ---------------------------------------------------------------------------

#[test]
fn unknown_and_repeated_failure_kinds_are_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[region.outlier]
failures = ["connect", "4xx", "connect"]
"#;
    let issues = rejected(text);
    assert_eq!(issues.len(), 2, "{issues:#?}");
    let line = line_of(text, "failures");
    assert_issue(
        &issues[0],
        line,
        "region[0].outlier.failures[1]",
        "unknown failure kind \"4xx\": expected one of \"connect\", \"reset\", \"timeout\", \"gateway\", \"5xx\"",
    );
    assert_issue(
        &issues[1],
        line,
        "region[0].outlier.failures[2]",
        "\"connect\" is listed twice",
    );
}

#[test]
fn empty_failures_need_passive_checks_off() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[region.outlier]
failures = []
"#;
    assert_only_issue(
        text,
        "failures",
        "region[0].outlier.failures",
        "no failure kind is listed, so no backend would ever be ejected",
    );

    let config = accepted(
        "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n\n[region.outlier]\nconsecutive_failures = 0\nfailures = []\n",
    );
    let o = &config.regions[0].outlier;
    assert_eq!(o.consecutive_failures, 0);
    assert_eq!(
        o.failures,
        FailureKinds {
            connect: false,
            reset: false,
            timeout: false,
            gateway: false,
            server_error: false,
        }
    );
}

#[test]
fn max_ejection_time_shorter_than_base_is_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[region.outlier]
base_ejection_time = "30s"
max_ejection_time = "10s"
"#;
    assert_only_issue(
        text,
        "max_ejection_time",
        "region[0].outlier.max_ejection_time",
        "10s is shorter than base_ejection_time (30s): expected at least base_ejection_time",
    );

    // With the maximum left at its default, the base is what was written wrong.
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[region.outlier]
base_ejection_time = "10m"
"#;
    assert_only_issue(
        text,
        "base_ejection_time",
        "region[0].outlier.base_ejection_time",
        "10m is longer than max_ejection_time (5m, its default)",
    );
}

#[test]
fn outlier_numbers_out_of_range_are_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[region.outlier]
consecutive_failures = 1001
base_ejection_time = "0s"
max_ejected_percent = 101
"#;
    let issues = rejected(text);
    assert_eq!(issues.len(), 3, "{issues:#?}");
    assert_issue(
        &issues[0],
        line_of(text, "consecutive_failures"),
        "region[0].outlier.consecutive_failures",
        "1001 is out of range: expected a whole number from 0 to 1000",
    );
    assert_issue(
        &issues[1],
        line_of(text, "base_ejection_time"),
        "region[0].outlier.base_ejection_time",
        "must be greater than zero",
    );
    assert_issue(
        &issues[2],
        line_of(text, "max_ejected_percent"),
        "region[0].outlier.max_ejected_percent",
        "101 is out of range: expected a percentage from 0 to 100",
    );
}

#[test]
fn unknown_key_in_region_outlier_is_named() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[region.outlier]
interval = "10s"
"#;
    assert_only_issue(
        text,
        "interval",
        "region[0].outlier.interval",
        "unknown key `interval`, expected one of `consecutive_failures`",
    );
}

// ---------------------------------------------------------------------------
// Retries, retry budget and hedging
// ---------------------------------------------------------------------------

#[test]
fn non_idempotent_retry_methods_are_refused_with_the_reason() {
    for method in ["POST", "PATCH", "post"] {
        let text = format!(
            "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n\n[proxy]\nretry_methods = [\"GET\", \"{method}\"]\n"
        );
        let issue = assert_only_issue(
            &text,
            "retry_methods",
            "proxy.retry_methods[1]",
            "is not idempotent, so it can never be retried or hedged once a backend may have seen it: expected idempotent methods among GET, HEAD, OPTIONS, PUT, DELETE, TRACE",
        );
        assert!(
            issue.message.starts_with(&method.to_ascii_uppercase()),
            "{issue}"
        );
    }
}

#[test]
fn unknown_repeated_and_lower_case_retry_methods_are_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[proxy]
retry_methods = ["GET", "FETCH", "get", "GET"]
"#;
    let issues = rejected(text);
    assert_eq!(issues.len(), 3, "{issues:#?}");
    let line = line_of(text, "retry_methods");
    assert_issue(
        &issues[0],
        line,
        "proxy.retry_methods[1]",
        "invalid method \"FETCH\": expected one of GET, HEAD, OPTIONS, PUT, DELETE, TRACE",
    );
    assert_issue(
        &issues[1],
        line,
        "proxy.retry_methods[2]",
        "methods are case-sensitive; expected \"GET\"",
    );
    assert_issue(
        &issues[2],
        line,
        "proxy.retry_methods[3]",
        "GET is listed twice",
    );
}

#[test]
fn empty_retry_methods_retries_nothing() {
    let config = accepted(
        "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n\n[proxy]\nretry_methods = []\nreplay_buffer = 0\n",
    );
    assert!(config.proxy.retry_methods.is_empty());
    assert_eq!(config.proxy.replay_buffer, 0);
}

#[test]
fn retry_and_hedge_numbers_out_of_range_are_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[proxy]
replay_buffer = 16777217
retry_budget_ratio = 1.5
retry_budget_window = "500ms"
retry_budget_min_per_second = -1
hedge_min_delay = "0s"
"#;
    let issues = rejected(text);
    assert_eq!(issues.len(), 5, "{issues:#?}");
    assert_issue(
        &issues[0],
        line_of(text, "retry_budget_ratio"),
        "proxy.retry_budget_ratio",
        "1.5 is out of range: expected a number from 0.0 to 1.0",
    );
    assert_issue(
        &issues[1],
        line_of(text, "retry_budget_window"),
        "proxy.retry_budget_window",
        "500ms is out of range: expected a duration from 1s to 1m",
    );
    assert_issue(
        &issues[2],
        line_of(text, "retry_budget_min_per_second"),
        "proxy.retry_budget_min_per_second",
        "-1 is out of range: expected a whole number from 0 to 100000",
    );
    assert_issue(
        &issues[3],
        line_of(text, "hedge_min_delay"),
        "proxy.hedge_min_delay",
        "must be greater than zero",
    );
    assert_issue(
        &issues[4],
        line_of(text, "replay_buffer"),
        "proxy.replay_buffer",
        "16777217 is out of range: expected a number of bytes from 0 to 16777216",
    );
}

#[test]
fn retry_budget_ratio_accepts_whole_zero_and_one() {
    for (ratio, expected) in [("0", 0.0), ("1", 1.0), ("0.05", 0.05)] {
        let config = accepted(&format!(
            "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n\n[proxy]\nretry_budget_ratio = {ratio}\n"
        ));
        assert_eq!(config.proxy.retry_budget.ratio, expected);
    }
}

#[test]
fn hedge_max_delay_shorter_than_min_is_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[proxy]
hedge_min_delay = "100ms"
hedge_max_delay = "80ms"
"#;
    assert_only_issue(
        text,
        "hedge_max_delay",
        "proxy.hedge_max_delay",
        "80ms is shorter than hedge_min_delay (100ms): expected at least hedge_min_delay",
    );
}

#[test]
fn upgrade_keys_have_defaults_and_a_zero_drain_grace_is_allowed() {
    let region = "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n";
    let config = accepted(region);
    assert_eq!(config.proxy.upgrade_idle_timeout, Duration::from_secs(60));
    assert_eq!(config.proxy.drain_grace, Duration::from_secs(30));
    let config = accepted(&format!("{region}\n[proxy]\ndrain_grace = \"0s\"\n"));
    assert_eq!(config.proxy.drain_grace, Duration::ZERO);
}

#[test]
fn zero_upgrade_idle_timeout_and_a_drain_grace_over_a_day_are_refused() {
    let region = "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n\n[proxy]\n";
    assert_only_issue(
        &format!("{region}upgrade_idle_timeout = \"0s\"\n"),
        "upgrade_idle_timeout",
        "proxy.upgrade_idle_timeout",
        "must be greater than zero",
    );
    assert_only_issue(
        &format!("{region}drain_grace = \"2days\"\n"),
        "drain_grace",
        "proxy.drain_grace",
        "2days is out of range: expected a duration from 0s to 1day",
    );
}

#[test]
fn hedge_false_turns_hedging_off() {
    let config = accepted(
        "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n\n[proxy]\nhedge = false\n",
    );
    assert_eq!(config.proxy.hedge, None);
}

#[test]
fn first_byte_timeout_shorter_than_hedge_max_delay_is_a_warning() {
    let config = accepted(
        r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]
first_byte_timeout = "200ms"

[[region]]
name = "eu"
backends = ["http://10.2.0.10:8080"]

[proxy]
first_byte_timeout = "100ms"
"#,
    );
    assert_eq!(
        config.warnings(),
        [
            "region \"us\": first_byte_timeout (200ms) is shorter than proxy.hedge_max_delay (250ms): a slow request may time out before it is hedged",
            "region \"eu\": proxy.first_byte_timeout (100ms) is shorter than proxy.hedge_max_delay (250ms): a slow request may time out before it is hedged",
        ]
    );
    // Without hedging there is nothing to warn about.
    let config = accepted(
        "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\nfirst_byte_timeout = \"100ms\"\n\n[proxy]\nhedge = false\n",
    );
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
}

// ---------------------------------------------------------------------------
// Geo overrides
// ---------------------------------------------------------------------------

#[test]
fn invalid_override_cidr_is_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[[geo.override]]
cidr = "10.0.0.0/33"
region = "us"
"#;
    assert_only_issue(
        text,
        "cidr",
        "geo.override[0].cidr",
        "invalid CIDR \"10.0.0.0/33\": expected an address or network such as \"192.0.2.0/24\"",
    );
}

#[test]
fn override_to_an_unknown_region_is_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[[geo.override]]
cidr = "192.0.2.0/24"
region = "us"

[[geo.override]]
cidr = "198.51.100.0/24"
region = "mars"
"#;
    assert_only_issue(
        text,
        "mars",
        "geo.override[1].region",
        "unknown region \"mars\": expected one of \"us\"",
    );
}

// ---------------------------------------------------------------------------
// Listeners, limits, admin, status page
// ---------------------------------------------------------------------------

#[test]
fn invalid_listen_address_says_what_is_expected() {
    let text = r#"
[listen]
http = "8080"

[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]
"#;
    assert_only_issue(
        text,
        "http =",
        "listen.http",
        "invalid address \"8080\": expected IP:PORT such as \"0.0.0.0:8080\"",
    );
}

#[test]
fn max_header_bytes_below_8192_is_refused() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[limits]
max_header_bytes = 4096
"#;
    assert_only_issue(
        text,
        "max_header_bytes",
        "limits.max_header_bytes",
        "4096 is out of range: expected a number of bytes from 8192 to 1048576",
    );
}

#[test]
fn admin_on_a_public_address_needs_a_token() {
    let text = r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[admin]
listen = "0.0.0.0:9901"
"#;
    assert_only_issue(
        text,
        "listen =",
        "admin.listen",
        "is not on loopback, so it needs a token: set admin.token_env or admin.token_file",
    );
}

#[test]
fn admin_on_loopback_without_token_is_allowed() {
    let config =
        accepted("[admin]\n\n[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n");
    let admin = config.admin.expect("[admin] is present");
    assert_eq!(
        admin.listen,
        "127.0.0.1:9901".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(admin.token, None);
    assert_eq!(admin.state_file, None);
}

#[test]
fn admin_state_file_needs_an_existing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.json");
    let text = format!(
        "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n\n[admin]\nstate_file = \"{}\"\n",
        file.display()
    );
    let admin = accepted(&text).admin.expect("[admin] is present");
    assert_eq!(admin.state_file.as_deref(), Some(file.as_path()));
    let text = "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n\n[admin]\nstate_file = \"/nonexistent/meridian/state.json\"\n";
    assert_only_issue(
        text,
        "state_file =",
        "admin.state_file",
        "directory /nonexistent/meridian does not exist: create it, or point state_file elsewhere",
    );
    let text = format!(
        "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n\n[admin]\nstate_file = \"{}\"\n",
        dir.path().display()
    );
    assert_only_issue(
        &text,
        "state_file =",
        "admin.state_file",
        "is not a file name",
    );
}

#[test]
fn admin_token_env_naming_an_unset_variable_is_refused() {
    const VAR: &str = "MERIDIAN_CONFIG_TEST_UNSET_TOKEN_3F9A";
    std::env::remove_var(VAR);
    // On a public address: the unset variable is the one problem to report.
    let text = format!(
        r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[admin]
listen = "0.0.0.0:9901"
token_env = "{VAR}"
"#
    );
    assert_only_issue(
        &text,
        "token_env",
        "admin.token_env",
        &format!("environment variable {VAR} is not set or empty: expected the admin bearer token"),
    );
}

#[test]
fn admin_token_is_read_from_token_env() {
    const VAR: &str = "MERIDIAN_CONFIG_TEST_SET_TOKEN_7B21";
    std::env::set_var(VAR, "  s3cret\n");
    let text = format!(
        r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[admin]
listen = "0.0.0.0:9901"
token_env = "{VAR}"
"#
    );
    let admin = accepted(&text).admin.expect("[admin] is present");
    assert_eq!(admin.token.as_deref(), Some("s3cret"));
    assert!(
        !format!("{admin:?}").contains("s3cret"),
        "Debug must not print the token"
    );
}

#[test]
fn bad_accent_colour_is_refused() {
    for colour in ["blue", "#12345", "2f5bea", "#ggg"] {
        let text = format!(
            "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n\n[status_page]\naccent_color = \"{colour}\"\n"
        );
        assert_only_issue(
            &text,
            "accent_color",
            "status_page.accent_color",
            &format!("invalid colour \"{colour}\": expected #rgb or #rrggbb"),
        );
    }
}

#[test]
fn bad_support_url_is_refused() {
    for url in ["status.example.com", "ftp://status.example.com/"] {
        let text = format!(
            "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n\n[status_page]\nsupport_url = \"{url}\"\n"
        );
        assert_only_issue(
            &text,
            "support_url",
            "status_page.support_url",
            &format!("invalid URL \"{url}\": expected an http(s) or mailto: URL"),
        );
    }
}

#[test]
fn intercept_takes_server_errors_once_each_and_may_be_empty() {
    let base =
        "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n\n[status_page]\n";
    let c = accepted(&format!("{base}intercept = [500, 599, 503]\n"));
    assert_eq!(c.status_page.intercept, [500, 599, 503]);
    let c = accepted(&format!("{base}intercept = []\n"));
    assert!(
        c.status_page.intercept.is_empty(),
        "[] turns interception off"
    );
    for (list, bad, fragment) in [
        (
            "[502, 404]",
            1,
            "404 is not a server error: expected a status code from 500 to 599",
        ),
        ("[600]", 0, "600 is not a server error"),
        ("[-503]", 0, "-503 is not a server error"),
        ("[503, 503]", 1, "503 is listed twice"),
    ] {
        let text = format!("{base}intercept = {list}\n");
        assert_only_issue(
            &text,
            "intercept",
            &format!("status_page.intercept[{bad}]"),
            fragment,
        );
    }
    let issues = rejected(&format!("{base}intercept = [\"503\"]\n"));
    assert_eq!(issues[0].key, "status_page.intercept[0]", "{issues:#?}");
    assert!(issues[0].message.contains("invalid type"), "{issues:#?}");
}

// ---------------------------------------------------------------------------
// Several problems at once
// ---------------------------------------------------------------------------

#[test]
fn every_independent_problem_is_reported() {
    let text = r#"
[listen]
http = "localhost:8080"

[admin]
listen = "0.0.0.0:9901"

[[region]]
name = "us"
countries = ["USA"]
failover = ["ap"]
backends = ["10.1.0.10:8080"]

[region.health]
interval = "0s"
fall = 0

[limits]
max_header_bytes = 100

[status_page]
accent_color = "blue"
"#;
    let issues = rejected(text);
    let found: Vec<(usize, &str)> = issues.iter().map(|i| (i.line, i.key.as_str())).collect();
    let expected = [
        (line_of(text, "http ="), "listen.http"),
        (line_of(text, "listen = "), "admin.listen"),
        (line_of(text, "countries"), "region[0].countries[0]"),
        (line_of(text, "failover"), "region[0].failover[0]"),
        (line_of(text, "backends"), "region[0].backends[0]"),
        (line_of(text, "interval"), "region[0].health.interval"),
        (line_of(text, "fall"), "region[0].health.fall"),
        (line_of(text, "max_header_bytes"), "limits.max_header_bytes"),
        (line_of(text, "accent_color"), "status_page.accent_color"),
    ];
    assert_eq!(found, expected, "{issues:#?}");
    assert!(issues.iter().all(|i| i.file == FILE));

    // The error's Display lists one problem per line, each with file:line:column.
    let err = Config::parse(FILE, text).unwrap_err();
    let shown = err.to_string();
    assert_eq!(shown.lines().count(), expected.len(), "{shown}");
    assert!(shown.starts_with("test.toml:3:8: `listen.http`: invalid address"));
}

// ---------------------------------------------------------------------------
// Accepted configurations
// ---------------------------------------------------------------------------

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let config = accepted(
        r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[[region]]
name = "eu"
backends = ["http://10.2.0.10"]
"#,
    );
    assert_eq!(config.source, FILE);
    assert_eq!(
        config.listen.http,
        "0.0.0.0:8080".parse::<SocketAddr>().unwrap()
    );
    assert!(config.admin.is_none());
    assert_eq!(config.geo.default_region, 0, "the first region");
    assert!(config.geo.overrides.is_empty());

    assert_eq!(config.regions.len(), 2);
    let eu = &config.regions[1];
    assert_eq!(eu.name, "eu");
    assert!(eu.countries.is_empty() && eu.continents.is_empty() && eu.failover.is_empty());
    assert_eq!(eu.backends[0].address, "10.2.0.10:80", "port 80 by default");
    for r in &config.regions {
        assert_eq!(
            r.health,
            Health {
                method: http::Method::GET,
                path: "/healthz".to_owned(),
                host: None,
                expect_status: vec![(200, 399)],
                expect_body: None,
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(800),
                rise: 2,
                fall: 2,
                jitter: 0.1,
                initial_state: InitialState::Unknown,
                failure_domain_header: None,
            }
        );
        assert_eq!(r.min_healthy, None, "all backends");
        assert_eq!(r.failback_hold, Duration::from_secs(5));
        assert_eq!(r.slow_start, Duration::ZERO);
        assert_eq!(r.first_byte_timeout, None);
        assert_eq!(
            r.outlier,
            Outlier {
                consecutive_failures: 5,
                failures: FailureKinds {
                    connect: true,
                    reset: true,
                    timeout: true,
                    gateway: true,
                    server_error: false,
                },
                base_ejection_time: Duration::from_secs(5),
                max_ejection_time: Duration::from_secs(300),
                max_ejected_percent: 50,
            }
        );
    }

    let p = &config.proxy;
    assert_eq!(p.connect_timeout, Duration::from_secs(2));
    assert_eq!(p.first_byte_timeout, Duration::from_secs(30));
    assert_eq!(p.read_timeout, Duration::from_secs(60));
    assert_eq!(p.send_timeout, Duration::from_secs(60));
    assert!(p.preserve_host);
    assert_eq!(p.max_attempts, 3);
    assert_eq!(p.pool_idle_timeout, Duration::from_secs(4));
    assert_eq!(p.pool_max_idle_per_backend, 1024);
    assert_eq!(
        p.retry_methods,
        [http::Method::GET, http::Method::HEAD, http::Method::OPTIONS]
    );
    assert_eq!(p.replay_buffer, 65536);
    assert_eq!(
        p.retry_budget,
        RetryBudget {
            ratio: 0.2,
            window: Duration::from_secs(10),
            min_per_second: 10,
        }
    );
    assert_eq!(
        p.hedge,
        Some(Hedge {
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(250),
        })
    );

    let l = &config.limits;
    assert_eq!(l.max_connections, 10_000);
    assert_eq!(l.max_header_bytes, 64 * 1024);
    assert_eq!(l.max_headers, 100);
    assert_eq!(l.header_read_timeout, Duration::from_secs(10));
    assert_eq!(l.keepalive_idle_timeout, Duration::from_secs(5));
    assert_eq!(l.client_body_timeout, Duration::from_secs(60));
    assert_eq!(l.client_body_min_rate, 500);
    assert_eq!(l.send_timeout, Duration::from_secs(60));
    assert_eq!(l.shutdown_grace, Duration::from_secs(30));
    assert_eq!(l.backend_max_requests, 1_000);
    assert_eq!(l.backend_queue_timeout, Duration::from_secs(1));

    let s = &config.status_page;
    assert_eq!(s.brand, "Meridian");
    assert_eq!(s.title, "Meridian is temporarily unavailable");
    assert!(!s.message.is_empty());
    assert_eq!(s.logo, None);
    assert_eq!(s.support_url, None);
    assert_eq!(s.accent_color, "#2f5bea");
    assert_eq!(s.retry_after, Duration::from_secs(30));
    assert_eq!(s.template, None);
    assert_eq!(s.intercept, [502, 503, 504]);
}

#[test]
fn full_config_keeps_every_value_given() {
    let config = accepted(
        r##"
[listen]
http = "[::]:80"

[geo]
default_region = "eu"

[[geo.override]]
cidr = "192.0.2.0/24"
region = "us"

[[region]]
name = "us"
countries = ["US", "CA"]
continents = ["NA"]
failover = ["eu"]
backends = ["http://10.1.0.10:8080", "http://10.1.0.11:8080"]

min_healthy = 1
failback_hold = "30s"
slow_start = "2m"
first_byte_timeout = "5s"

[region.health]
method = "HEAD"
path = "/ready"
host = "health.example.com:8443"
expect_status = [204, "200-299"]
interval = "2s"
timeout = "1s 500ms"
rise = 3
fall = 5
jitter = 0.25
initial_state = "up"

[region.outlier]
consecutive_failures = 3
failures = ["reset", "5xx"]
base_ejection_time = "10s"
max_ejection_time = "1m"
max_ejected_percent = 100

[[region]]
name = "eu"
continents = ["EU"]
failover = ["us"]
backends = ["http://10.2.0.10:8080"]

[region.health]
method = "POST"
expect_body = "ok"
initial_state = "down"

[proxy]
connect_timeout = "500ms"
first_byte_timeout = "1m"
read_timeout = "45s"
send_timeout = "50s"
preserve_host = false
max_attempts = 2
pool_idle_timeout = "30s"
pool_max_idle_per_backend = 8
retry_methods = ["GET", "PUT", "DELETE"]
replay_buffer = 1048576
retry_budget_ratio = 0.5
retry_budget_window = "30s"
retry_budget_min_per_second = 0
hedge = true
hedge_min_delay = "20ms"
hedge_max_delay = "1s"
upgrade_idle_timeout = "5m"
drain_grace = "10s"

[limits]
max_connections = 500
max_header_bytes = 8192
max_headers = 50
header_read_timeout = "5s"
keepalive_idle_timeout = "20s"
client_body_timeout = "7s"
client_body_min_rate = 0
send_timeout = "8s"
shutdown_grace = "15s"
backend_max_requests = 64
backend_queue_timeout = "0s"

[status_page]
brand = "Example"
message = "Back soon."
support_url = "https://status.example.com"
accent_color = "#ABC"
retry_after = "1m"
"##,
    );
    assert_eq!(config.listen.http, "[::]:80".parse::<SocketAddr>().unwrap());
    assert_eq!(config.geo.default_region, 1);
    assert_eq!(config.geo.overrides.len(), 1);
    assert_eq!(config.geo.overrides[0].region, 0);
    let us = &config.regions[0];
    assert_eq!(us.countries, ["US", "CA"]);
    assert_eq!(us.continents, ["NA"]);
    assert_eq!(us.failover, [1]);
    assert_eq!(config.regions[1].failover, [0]);
    assert_eq!(us.backends.len(), 2);
    assert_eq!(
        us.health,
        Health {
            method: http::Method::HEAD,
            path: "/ready".to_owned(),
            host: Some(http::HeaderValue::from_static("health.example.com:8443")),
            expect_status: vec![(204, 204), (200, 299)],
            expect_body: None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_millis(1500),
            rise: 3,
            fall: 5,
            jitter: 0.25,
            initial_state: InitialState::Up,
            failure_domain_header: None,
        }
    );
    assert_eq!(us.min_healthy, Some(1));
    assert_eq!(us.failback_hold, Duration::from_secs(30));
    assert_eq!(us.slow_start, Duration::from_secs(120));
    assert_eq!(us.first_byte_timeout, Some(Duration::from_secs(5)));
    assert_eq!(
        us.outlier,
        Outlier {
            consecutive_failures: 3,
            failures: FailureKinds {
                connect: false,
                reset: true,
                timeout: false,
                gateway: false,
                server_error: true,
            },
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(60),
            max_ejected_percent: 100,
        }
    );
    let eu = &config.regions[1];
    assert_eq!(eu.health.path, "/healthz", "defaults per region");
    assert_eq!(eu.health.method, http::Method::POST);
    assert_eq!(eu.health.expect_body.as_deref(), Some("ok"));
    assert_eq!(eu.health.initial_state, InitialState::Down);
    assert_eq!(eu.health.expect_status, [(200, 399)]);
    assert_eq!(eu.failback_hold, Duration::from_secs(5));
    assert_eq!(eu.outlier.consecutive_failures, 5);

    let p = &config.proxy;
    assert_eq!(p.connect_timeout, Duration::from_millis(500));
    assert_eq!(p.first_byte_timeout, Duration::from_secs(60));
    assert_eq!(p.read_timeout, Duration::from_secs(45));
    assert_eq!(p.send_timeout, Duration::from_secs(50));
    assert!(!p.preserve_host);
    assert_eq!(p.max_attempts, 2);
    assert_eq!(p.pool_idle_timeout, Duration::from_secs(30));
    assert_eq!(p.pool_max_idle_per_backend, 8);
    assert_eq!(
        p.retry_methods,
        [http::Method::GET, http::Method::PUT, http::Method::DELETE]
    );
    assert_eq!(p.replay_buffer, 1 << 20);
    assert_eq!(
        p.retry_budget,
        RetryBudget {
            ratio: 0.5,
            window: Duration::from_secs(30),
            min_per_second: 0,
        }
    );
    assert_eq!(
        p.hedge,
        Some(Hedge {
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_secs(1),
        })
    );

    let l = &config.limits;
    assert_eq!(l.max_connections, 500);
    assert_eq!(l.max_header_bytes, 8192, "the minimum itself is allowed");
    assert_eq!(l.max_headers, 50);
    assert_eq!(l.header_read_timeout, Duration::from_secs(5));
    assert_eq!(l.keepalive_idle_timeout, Duration::from_secs(20));
    assert_eq!(l.client_body_timeout, Duration::from_secs(7));
    assert_eq!(l.client_body_min_rate, 0, "0 turns it off");
    assert_eq!(l.send_timeout, Duration::from_secs(8));
    assert_eq!(l.shutdown_grace, Duration::from_secs(15));
    assert_eq!(l.backend_max_requests, 64);
    assert_eq!(l.backend_queue_timeout, Duration::ZERO, "0 sheds at once");

    let s = &config.status_page;
    assert_eq!(s.brand, "Example");
    assert_eq!(
        s.title, "Example is temporarily unavailable",
        "title follows brand"
    );
    assert_eq!(s.message, "Back soon.");
    assert_eq!(
        s.support_url.as_deref(),
        Some("https://status.example.com/")
    );
    assert_eq!(s.accent_color, "#abc");
    assert_eq!(s.retry_after, Duration::from_secs(60));
}

#[test]
fn country_and_continent_codes_are_upper_cased() {
    let config = accepted(
        r#"
[[region]]
name = "us"
countries = ["us", "Ca", " mx "]
continents = ["na", "sa"]
backends = ["http://10.1.0.10:8080"]
"#,
    );
    assert_eq!(config.regions[0].countries, ["US", "CA", "MX"]);
    assert_eq!(config.regions[0].continents, ["NA", "SA"]);
}

#[test]
fn bare_override_addresses_become_single_hosts_and_host_bits_are_cleared() {
    let config = accepted(
        r#"
[[region]]
name = "us"
backends = ["http://10.1.0.10:8080"]

[[geo.override]]
cidr = "203.0.113.7"
region = "us"

[[geo.override]]
cidr = "2001:db8::1"
region = "us"

[[geo.override]]
cidr = "198.51.100.77/24"
region = "us"
"#,
    );
    let nets: Vec<String> = config
        .geo
        .overrides
        .iter()
        .map(|o| o.net.to_string())
        .collect();
    assert_eq!(
        nets,
        ["203.0.113.7/32", "2001:db8::1/128", "198.51.100.0/24"]
    );
}

#[test]
fn ipv6_backend_keeps_its_brackets() {
    let config = accepted(
        r#"
[[region]]
name = "us"
backends = ["http://[::1]:8080", "http://[2001:db8::10]"]
"#,
    );
    let backends = &config.regions[0].backends;
    assert_eq!(backends[0].address, "[::1]:8080");
    assert_eq!(backends[0].url, "http://[::1]:8080/");
    assert_eq!(backends[1].address, "[2001:db8::10]:80");
}

#[test]
fn summary_names_regions_backends_and_failover_order() {
    let config = accepted(
        r#"
[admin]
listen = "127.0.0.1:9901"

[geo]
default_region = "eu"

[[region]]
name = "us"
countries = ["US"]
failover = ["eu", "ap"]
backends = ["http://10.1.0.10:8080", "http://10.1.0.11:8080"]

[[region]]
name = "eu"
continents = ["EU"]
backends = ["http://10.2.0.10:8080"]

[region.health]
path = "/up"
timeout = "500ms"

[[region]]
name = "ap"
failover = ["us"]
backends = ["http://10.3.0.10:8080"]
failback_hold = "0s"
[region.outlier]
consecutive_failures = 0
"#,
    );
    let summary = config.summary();
    let lines: Vec<&str> = summary.lines().collect();
    let expected = [
        "test.toml: OK",
        "listen: http 0.0.0.0:8080",
        "admin:  127.0.0.1:9901 (no token)",
        "regions:",
        "  us (2 backends; failover: eu -> ap; health: GET /healthz every 1s, timeout 800ms, rise 2, fall 2)",
        "    http://10.1.0.10:8080",
        "    http://10.1.0.11:8080",
        "    countries: US",
        "    passive checks: eject after 5 failures in a row, for 5s and longer; fail-back hold 5s",
        "  eu (1 backend; failover: none; health: GET /up every 1s, timeout 500ms, rise 2, fall 2)",
        "    http://10.2.0.10:8080",
        "    continents: EU",
        "    passive checks: eject after 5 failures in a row, for 5s and longer; fail-back hold 5s",
        "  ap (1 backend; failover: us; health: GET /healthz every 1s, timeout 800ms, rise 2, fall 2)",
        "    http://10.3.0.10:8080",
        "    passive checks: off; fail-back hold 0s",
        "geo: 0 overrides, default region eu",
    ];
    assert_eq!(lines, expected, "{summary}");
}

#[test]
fn summary_says_which_backends_are_dns_names_and_who_is_asked() {
    let config = accepted(
        "[dns]\nnameservers = [\"10.96.0.10\"]\n[[region]]\nname = \"us\"\nbackends = [\"http://web.svc:8080\", \"http://10.0.0.1:80\"]\n",
    );
    let summary = config.summary();
    assert!(
        summary.contains("    http://web.svc:8080 (a DNS name: one backend per address)\n    http://10.0.0.1:80\n"),
        "{summary}"
    );
    assert!(
        summary.ends_with(
            "dns: backend names asked of 10.96.0.10:53, again after their TTL (1s to 1m)\n"
        ),
        "{summary}"
    );
}

#[test]
fn region_index_finds_regions_by_name() {
    let config = accepted(
        "[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n\n[[region]]\nname = \"eu\"\nbackends = [\"http://10.2.0.10:8080\"]\n",
    );
    assert_eq!(config.region_index("eu"), Some(1));
    assert_eq!(config.region_index("ap"), None);
}

// ---------------------------------------------------------------------------
// The reference configuration shipped in config/
// ---------------------------------------------------------------------------

#[test]
fn reference_config_is_valid() {
    let config = Config::load(concat!(env!("CARGO_MANIFEST_DIR"), "/config/meridian.toml"))
        .unwrap_or_else(|e| panic!("config/meridian.toml is invalid:\n{e}"));
    assert_eq!(config.regions.len(), 2);
    let us = config.region_index("us").expect("region us");
    let eu = config.region_index("eu").expect("region eu");
    assert_eq!(config.regions[us].failover, [eu]);
    assert_eq!(config.regions[eu].failover, [us]);
    assert!(config.admin.is_some(), "the reference config shows [admin]");
    assert!(!config.geo.overrides.is_empty(), "and a [[geo.override]]");
    assert_eq!(
        config.warnings(),
        Vec::<String>::new(),
        "and warns about nothing"
    );

    // Region "us" and [proxy] show the newer keys with their default values.
    let defaults = accepted("[[region]]\nname = \"us\"\nbackends = [\"http://10.1.0.10:8080\"]\n");
    let (shown, default) = (&config.regions[us], &defaults.regions[0]);
    assert_eq!(shown.health, default.health);
    assert_eq!(shown.outlier, default.outlier);
    assert_eq!(shown.failback_hold, default.failback_hold);
    assert_eq!(shown.slow_start, default.slow_start);
    assert_eq!(shown.min_healthy, Some(shown.backends.len()));
    let (shown, default) = (&config.proxy, &defaults.proxy);
    assert_eq!(shown.retry_methods, default.retry_methods);
    assert_eq!(shown.replay_buffer, default.replay_buffer);
    assert_eq!(shown.retry_budget, default.retry_budget);
    assert_eq!(shown.hedge, default.hedge);
    assert_eq!(shown.upgrade_idle_timeout, default.upgrade_idle_timeout);
    assert_eq!(shown.drain_grace, default.drain_grace);
    assert_eq!(
        config.status_page.intercept, defaults.status_page.intercept,
        "[status_page] shows intercept with its default"
    );
    assert_eq!(
        config.limits, defaults.limits,
        "[limits] shows its defaults"
    );
    assert_eq!(
        (config.listen.redirect_to_https, config.listen.h2c),
        (false, false)
    );
}

// ---------------------------------------------------------------------------
// HTTPS: [listen] https and [tls]
// ---------------------------------------------------------------------------

/// A self-signed certificate for `name` as `stem.pem` and `stem.key` in `dir`.
fn write_certificate(dir: &std::path::Path, stem: &str, name: &str) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
}

fn https_config(dir: &std::path::Path, tls: &str) -> String {
    format!(
        "[listen]\nhttps = \"127.0.0.1:8443\"\n\n[tls]\n{}\n{ONE_REGION}",
        tls.replace("DIR", &dir.display().to_string())
    )
}

#[test]
fn tls_certificates_are_read_at_load() {
    let dir = tempfile::tempdir().unwrap();
    write_certificate(dir.path(), "a", "a.example");
    write_certificate(dir.path(), "b", "b.example");
    let config = accepted(&https_config(
        dir.path(),
        "cert = \"DIR/a.pem\"\nkey = \"DIR/a.key\"\nhsts = \"max-age=600; includeSubDomains\"\n[[tls.certificate]]\ncert = \"DIR/b.pem\"\nkey = \"DIR/b.key\"",
    ));
    let tls = config.tls.expect("[tls]");
    assert_eq!(tls.certificates.len(), 2);
    assert_eq!(tls.certificates[1].cert, dir.path().join("b.pem"));
    assert_eq!(tls.hsts.unwrap(), "max-age=600; includeSubDomains");
    assert_eq!(tls.reload_interval, Duration::from_secs(10));
    assert_eq!(config.listen.https, Some("127.0.0.1:8443".parse().unwrap()));
}

#[test]
fn bad_tls_files_are_named_with_their_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    write_certificate(dir.path(), "a", "a.example");
    write_certificate(dir.path(), "b", "b.example");
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate\n").unwrap();
    let cases = [
        ("cert = \"DIR/missing.pem\"\nkey = \"DIR/a.key\"", "cert =", "tls.cert", "missing.pem: cannot read it"),
        ("cert = \"DIR/garbage.pem\"\nkey = \"DIR/a.key\"", "cert =", "tls.cert", "garbage.pem: no certificate in it"),
        ("cert = \"DIR/a.pem\"\nkey = \"DIR/garbage.pem\"", "key =", "tls.key", "garbage.pem: no PEM block"),
        ("cert = \"DIR/a.pem\"\nkey = \"DIR/b.key\"", "key =", "tls.key", "b.key does not go with"),
        ("cert = \"DIR/a.pem\"", "cert =", "tls.key", "missing: [tls] needs cert"),
        (
            "cert = \"DIR/a.pem\"\nkey = \"DIR/a.key\"\n[[tls.certificate]]\ncert = \"DIR/b.pem\"\nkey = \"DIR/a.key\"",
            "SECOND key =",
            "tls.certificate[0].key",
            "a.key does not go with",
        ),
        ("cert = \"DIR/a.pem\"\nkey = \"DIR/a.key\"\nhsts = \"1 year\"", "hsts =", "tls.hsts", "expected \"max-age=SECONDS\""),
    ];
    for (tls, at, key, fragment) in cases {
        let text = https_config(dir.path(), tls);
        let at = at.replace("DIR", &dir.path().display().to_string());
        let issues = rejected(&text);
        assert_eq!(issues.len(), 1, "{tls}: {issues:#?}");
        let line = match at.strip_prefix("SECOND ") {
            Some(prefix) => {
                text.lines()
                    .enumerate()
                    .filter(|(_, l)| l.starts_with(prefix))
                    .nth(1)
                    .unwrap()
                    .0
                    + 1
            }
            None => line_of(&text, &at),
        };
        assert_issue(&issues[0], line, key, fragment);
    }
}

#[test]
fn https_and_tls_and_redirects_need_each_other() {
    let dir = tempfile::tempdir().unwrap();
    write_certificate(dir.path(), "a", "a.example");
    let text = format!("[listen]\nhttps = \"127.0.0.1:8443\"\n{ONE_REGION}");
    assert_only_issue(
        &text,
        "https =",
        "listen.https",
        "needs a certificate: add a [tls] section",
    );
    let text = format!(
        "[tls]\ncert = \"{0}/a.pem\"\nkey = \"{0}/a.key\"\n{ONE_REGION}",
        dir.path().display()
    );
    assert_only_issue(&text, "cert =", "tls", "listen.https is not");
    let text = format!("[listen]\nredirect_to_https = true\n{ONE_REGION}");
    assert_only_issue(
        &text,
        "redirect_to_https",
        "listen.redirect_to_https",
        "no HTTPS listener",
    );
    for (key, value, fragment) in [
        ("http2_max_concurrent_streams", "0", "out of range"),
        ("http2_max_pending_resets", "100000", "out of range"),
        ("backend_max_requests", "0", "out of range"),
        ("backend_queue_timeout", "\"2m\"", "out of range"),
    ] {
        let text = format!("[limits]\n{key} = {value}\n{ONE_REGION}");
        assert_only_issue(&text, key, &format!("limits.{key}"), fragment);
    }
}

#[test]
fn acme_alone_is_enough_for_https() {
    let dir = tempfile::tempdir().unwrap();
    let config = accepted(&https_config(
        dir.path(),
        "[tls.acme]\ndirectory = \"https://ca.example/dir\"\nemail = \"ops@example.com\"\ndomains = [\"App.Example.com\", \"www.example.com.\"]\ncache = \"DIR/acme\"",
    ));
    let tls = config.tls.expect("[tls]");
    assert!(tls.certificates.is_empty());
    let acme = tls.acme.expect("[tls.acme]");
    assert_eq!(acme.directory, "https://ca.example/dir");
    assert_eq!(acme.email.as_deref(), Some("ops@example.com"));
    assert_eq!(acme.domains, ["app.example.com", "www.example.com"]);
    assert_eq!(acme.cache, dir.path().join("acme"));
    assert_eq!(acme.ca_file, None);
    assert_eq!(acme.renew_before, Duration::from_secs(30 * 86_400));
}

#[test]
fn bad_acme_keys_are_named_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let good =
        "directory = \"https://ca.example/dir\"\ndomains = [\"a.example\"]\ncache = \"DIR/acme\"";
    let with = |line: &str| {
        let key = line.split(' ').next().unwrap();
        let kept: Vec<&str> = good.lines().filter(|l| !l.starts_with(key)).collect();
        format!("[tls.acme]\n{}\n{line}", kept.join("\n"))
    };
    let cases = [
        (
            with("directory = \"ftp://ca\""),
            "directory =",
            "tls.acme.directory",
            "invalid URL",
        ),
        (
            with("email = \"nobody\""),
            "email =",
            "tls.acme.email",
            "invalid e-mail",
        ),
        (
            with("domains = [\"*.a.example\"]"),
            "domains =",
            "tls.acme.domains",
            "wildcard",
        ),
        (
            with("domains = [\"10.0.0.1\"]"),
            "domains =",
            "tls.acme.domains",
            "IP address",
        ),
        (
            with("domains = [\"a..example\"]"),
            "domains =",
            "tls.acme.domains",
            "not a valid DNS name",
        ),
        (
            with("domains = [\"a.example\", \"A.example\"]"),
            "domains =",
            "tls.acme.domains",
            "listed twice",
        ),
        (
            with("domains = []"),
            "directory =",
            "tls.acme.domains",
            "missing",
        ),
        (
            with("ca_file = \"DIR/none.pem\""),
            "ca_file =",
            "tls.acme.ca_file",
            "none.pem",
        ),
        (
            with("renew_before = \"0s\""),
            "renew_before =",
            "tls.acme.renew_before",
            "greater than zero",
        ),
        (
            "[tls.acme]\ndomains = [\"a.example\"]\ncache = \"DIR/acme\"".to_string(),
            "domains =",
            "tls.acme.directory",
            "missing",
        ),
        (
            "[tls.acme]\ndirectory = \"https://ca.example/dir\"\ndomains = [\"a.example\"]"
                .to_string(),
            "directory =",
            "tls.acme.cache",
            "missing",
        ),
    ];
    for (tls, at, key, fragment) in cases {
        let text = https_config(dir.path(), &tls);
        let issues = rejected(&text);
        assert_eq!(issues.len(), 1, "{tls}: {issues:#?}");
        assert_issue(&issues[0], line_of(&text, at), key, fragment);
    }
}

#[test]
fn alerts_take_webhooks_and_bounded_delivery_settings() {
    let c = accepted(&format!(
        "[alerts]\nwebhooks = [\"https://hooks.example.com/T/B/X\", \"http://127.0.0.1:9/hook\"]\n{ONE_REGION}"
    ));
    let a = c.alerts.expect("[alerts]");
    assert_eq!(a.webhooks.len(), 2);
    assert_eq!(a.webhooks[1], "http://127.0.0.1:9/hook");
    assert_eq!(a.group_window, Duration::from_secs(2));
    assert_eq!(a.timeout, Duration::from_secs(5));
    assert_eq!((a.retries, a.queue), (3, 100));
    let c = accepted(&format!(
        "[alerts]\nwebhooks = [\"http://h/\"]\ngroup_window = \"0s\"\ntimeout = \"1s\"\nretries = 0\nqueue = 5\n{ONE_REGION}"
    ));
    let a = c.alerts.unwrap();
    assert_eq!(
        (a.group_window, a.timeout, a.retries, a.queue),
        (Duration::ZERO, Duration::from_secs(1), 0, 5)
    );
    for (keys, at, key, fragment) in [
        ("webhooks = []", "webhooks", "alerts.webhooks", "missing"),
        (
            "webhooks = [\"ftp://h/\"]",
            "webhooks",
            "alerts.webhooks",
            "invalid URL",
        ),
        (
            "webhooks = [\"http://h/\"]\ngroup_window = \"2m\"",
            "group_window",
            "alerts.group_window",
            "out of range",
        ),
        (
            "webhooks = [\"http://h/\"]\nretries = 11",
            "retries",
            "alerts.retries",
            "out of range",
        ),
        (
            "webhooks = [\"http://h/\"]\nqueue = 0",
            "queue",
            "alerts.queue",
            "out of range",
        ),
    ] {
        assert_only_issue(
            &format!("[alerts]\n{keys}\n{ONE_REGION}"),
            at,
            key,
            fragment,
        );
    }
}

#[test]
fn log_format_level_and_access_log() {
    let c = accepted(ONE_REGION);
    assert_eq!(c.log, crate::config::Log::default());
    assert_eq!(c.log.format, crate::config::LogFormat::Plain);
    let c = accepted(&format!(
        "[log]\nlevel = \"warn,meridian::access=info\"\nformat = \"json\"\naccess = false\n{ONE_REGION}"
    ));
    assert_eq!(c.log.level, "warn,meridian::access=info");
    assert_eq!(c.log.format, crate::config::LogFormat::Json);
    assert!(!c.log.access);
    assert_only_issue(
        &format!("[log]\nformat = \"xml\"\n{ONE_REGION}"),
        "format",
        "log.format",
        "expected \"plain\" or \"json\"",
    );
    assert_only_issue(
        &format!("[log]\nlevel = \"info,=x=y\"\n{ONE_REGION}"),
        "level",
        "log.level",
        "invalid filter",
    );
}

#[test]
fn missing_file_is_a_read_error_without_issues() {
    let err = Config::load("/nonexistent/meridian-test.toml").unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert!(err.issues().is_empty());
    assert!(err.to_string().contains("/nonexistent/meridian-test.toml"));
}

const NAMED_REGION: &str = "[[region]]\nname = \"us\"\nbackends = [\"http://web.internal:8080\"]\n";

#[test]
fn dns_defaults_and_settings_are_read() {
    let c = accepted(NAMED_REGION);
    assert_eq!(c.dns, Dns::default());
    assert_eq!(c.regions[0].backends[0].dns_name(), Some("web.internal"));
    let c = accepted(&format!(
        "[dns]\nnameservers = [\"10.96.0.10\", \"[::1]:5353\"]\nmin_ttl = \"5s\"\nmax_ttl = \"5m\"\ntimeout = \"500ms\"\n{NAMED_REGION}"
    ));
    assert_eq!(
        c.dns.nameservers,
        [
            "10.96.0.10:53".parse::<SocketAddr>().unwrap(),
            "[::1]:5353".parse().unwrap()
        ]
    );
    assert_eq!(
        (c.dns.min_ttl, c.dns.max_ttl, c.dns.timeout),
        (
            Duration::from_secs(5),
            Duration::from_secs(300),
            Duration::from_millis(500)
        )
    );
}

#[test]
fn dns_problems_name_their_key_and_line() {
    let text = format!("[dns]\nnameservers = [\"ns.local\"]\n{NAMED_REGION}");
    assert_only_issue(
        &text,
        "ns.local",
        "dns.nameservers",
        "expected IP or IP:PORT",
    );
    let text = format!("[dns]\nmin_ttl = \"10s\"\nmax_ttl = \"2s\"\n{NAMED_REGION}");
    assert_only_issue(&text, "max_ttl", "dns.max_ttl", "shorter than min_ttl");
    let text = format!("[dns]\nmin_ttl = \"1ms\"\n{NAMED_REGION}");
    assert_only_issue(&text, "min_ttl", "dns.min_ttl", "");
    let text = format!("[dns]\nttl = \"1s\"\n{NAMED_REGION}");
    assert_only_issue(&text, "ttl", "dns.ttl", "unknown key");
}

#[test]
fn only_host_names_are_resolved() {
    let c = accepted(
        "[[region]]\nname = \"us\"\nbackends = [\"http://10.0.0.1:80\", \"http://[::1]:80\", \"https://api.internal\"]\n",
    );
    let names: Vec<_> = c.regions[0].backends.iter().map(|b| b.dns_name()).collect();
    assert_eq!(names, [None, None, Some("api.internal")]);
    assert_eq!(c.regions[0].backends[2].port(), 443);
}

#[test]
fn backends_may_be_tables_with_a_failure_domain_and_checks_may_report_one() {
    let c = accepted(
        "[[region]]\nname = \"us\"\nbackends = [\"http://10.0.0.1:80\", { url = \"http://10.0.0.2:80\", domain = \" node-a \" }, { url = \"http://10.0.0.3:80\" }]\n[region.health]\nfailure_domain_header = \"X-Node-Name\"\n",
    );
    let r = &c.regions[0];
    let domains: Vec<Option<&str>> = r.backends.iter().map(|b| b.domain.as_deref()).collect();
    assert_eq!(domains, [None, Some("node-a"), None]);
    assert_eq!(r.backends[1].address, "10.0.0.2:80");
    assert_eq!(
        r.health.failure_domain_header.as_ref().unwrap(),
        "x-node-name"
    );
    for (text, line, key, fragment) in [
        (
            "backends = [5]",
            3,
            "region[0].backends[0]",
            "expected a URL string",
        ),
        (
            "backends = [{ url = \"http://h:1\", zone = \"a\" }]",
            3,
            "region[0].backends[0]",
            "expected a URL string",
        ),
        (
            "backends = [{ url = \"http://h:1\", domain = \" \" }]",
            3,
            "region[0].backends[0].domain",
            "node or zone",
        ),
        (
            "backends = [{ url = \"ftp://h:1\" }]",
            3,
            "region[0].backends[0]",
            "invalid backend URL",
        ),
        (
            "backends = [\"http://h:1\"]\n[region.health]\nfailure_domain_header = \"X Node\"",
            5,
            "region[0].health.failure_domain_header",
            "invalid header name",
        ),
    ] {
        let err = Config::parse("test.toml", &format!("[[region]]\nname = \"us\"\n{text}\n"))
            .unwrap_err();
        let issue = &err.issues()[0];
        assert_eq!(
            (issue.line, issue.key.as_str()),
            (line, key),
            "{text}: {issue}"
        );
        assert!(issue.message.contains(fragment), "{text}: {issue}");
    }
}

#[test]
fn every_unknown_key_and_every_other_problem_are_reported_in_one_run() {
    let text = "[listen]\nhtp = \"0.0.0.0:80\"\n\n[[region]]\nname = \"us\"\nbackends = [\"http://10.0.0.1:80\"]\nfailover = [\"mars\"]\nnote = \"\"\"é—ü\nmulti-line\"\"\"\n[region.health]\nintervall = [\n  \"1s\",\n]\nrise = 0\n";
    let err = Config::parse("test.toml", text).unwrap_err();
    let found: Vec<(usize, &str)> = err
        .issues()
        .iter()
        .map(|i| (i.line, i.key.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![
            (2, "listen.htp"),
            (8, "region[0].note"),
            (11, "region[0].health.intervall"),
            (7, "region[0].failover[0]"),
            (14, "region[0].health.rise"),
        ],
        "{err}"
    );
    assert!(
        err.issues()[2]
            .message
            .contains("expected one of `path`, `interval`"),
        "{err}"
    );
}

#[test]
fn an_unknown_table_stops_reading_there() {
    let text = "[cache]\nsize = 1\n[listen]\nhtp = \"x\"\n";
    let err = Config::parse("test.toml", text).unwrap_err();
    assert_eq!(err.issues().len(), 1, "{err}");
    assert_eq!(err.issues()[0].key, "cache");
}

// ---------------------------------------------------------------------------
// GeoIP database and trusted proxies
// ---------------------------------------------------------------------------

const ONE_REGION: &str = "[[region]]\nname = \"us\"\nbackends = [\"http://10.0.0.1:80\"]\n";

#[test]
fn geo_database_trusted_proxies_and_reload_interval() {
    let c = accepted(ONE_REGION);
    assert_eq!(c.geo.database, None, "the built-in database");
    assert!(
        c.geo.trusted_proxies.is_empty(),
        "no proxy trusted by default"
    );
    assert_eq!(c.geo.reload_interval, Duration::from_secs(10));

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("country.mmdb");
    std::fs::write(&db, b"checked when Meridian starts").unwrap();
    let text = format!(
        "[geo]\ndatabase = \"{}\"\ntrusted_proxies = [\"10.0.0.0/8\", \"2001:db8::1\"]\nreload_interval = \"30s\"\n{ONE_REGION}",
        db.display()
    );
    let c = accepted(&text);
    assert_eq!(c.geo.database.as_deref(), Some(db.as_path()));
    assert_eq!(
        c.geo.trusted_proxies,
        vec![
            "10.0.0.0/8".parse::<ipnet::IpNet>().unwrap(),
            "2001:db8::1/128".parse().unwrap()
        ]
    );
    assert_eq!(c.geo.reload_interval, Duration::from_secs(30));
}

#[test]
fn a_missing_geo_database_or_bad_trusted_proxy_is_named() {
    let text = format!("[geo]\ndatabase = \"/nonexistent/country.mmdb\"\n{ONE_REGION}");
    assert_only_issue(
        &text,
        "database",
        "geo.database",
        "cannot read /nonexistent/country.mmdb",
    );
    let text = format!("[geo]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0/8\"]\n{ONE_REGION}");
    assert_only_issue(
        &text,
        "trusted_proxies",
        "geo.trusted_proxies[1]",
        "invalid CIDR \"10.0.0/8\"",
    );
    let text = format!("[geo]\nreload_interval = \"0s\"\n{ONE_REGION}");
    assert_only_issue(
        &text,
        "reload_interval",
        "geo.reload_interval",
        "greater than zero",
    );
}

#[test]
fn pin_header_sticky_cookie_and_region_header() {
    let c = accepted(ONE_REGION);
    assert_eq!(
        c.geo.pin_header.as_ref().map(|h| h.as_str()),
        Some("x-meridian-pin")
    );
    assert_eq!(c.geo.sticky_cookie, None, "off by default");
    assert_eq!(c.geo.sticky_ttl, Duration::from_secs(1800));
    assert!(c.proxy.region_header);
    let c = accepted(&format!(
        "[geo]\npin_header = \"X-Route-To\"\nsticky_cookie = \"region\"\nsticky_ttl = \"1h\"\n[proxy]\nregion_header = false\n{ONE_REGION}"
    ));
    assert_eq!(
        c.geo.pin_header.as_ref().map(|h| h.as_str()),
        Some("x-route-to")
    );
    assert_eq!(c.geo.sticky_cookie.as_deref(), Some("region"));
    assert_eq!(c.geo.sticky_ttl, Duration::from_secs(3600));
    assert!(!c.proxy.region_header);
    let c = accepted(&format!("[geo]\npin_header = \"\"\n{ONE_REGION}"));
    assert_eq!(c.geo.pin_header, None, "\"\" turns pinning off");
    assert_only_issue(
        &format!("[geo]\npin_header = \"X Route\"\n{ONE_REGION}"),
        "pin_header",
        "geo.pin_header",
        "invalid header name \"X Route\"",
    );
    assert_only_issue(
        &format!("[geo]\nsticky_cookie = \"a=b\"\n{ONE_REGION}"),
        "sticky_cookie",
        "geo.sticky_cookie",
        "invalid cookie name \"a=b\"",
    );
}

#[test]
fn forwarding_header_and_proxy_protocol_need_their_context() {
    assert_eq!(
        accepted(ONE_REGION).geo.forwarding_header,
        ForwardingHeader::XForwardedFor
    );
    let c = accepted(&format!(
        "[geo]\nforwarding_header = \"Forwarded\"\n{ONE_REGION}"
    ));
    assert_eq!(c.geo.forwarding_header, ForwardingHeader::Forwarded);
    assert_only_issue(
        &format!("[geo]\nforwarding_header = \"x-real-ip\"\n{ONE_REGION}"),
        "forwarding_header",
        "geo.forwarding_header",
        "expected \"x-forwarded-for\" or \"forwarded\"",
    );
    assert_only_issue(
        &format!("[listen]\nproxy_protocol = true\n{ONE_REGION}"),
        "proxy_protocol",
        "listen.proxy_protocol",
        "geo.trusted_proxies",
    );
    let c = accepted(&format!(
        "[listen]\nproxy_protocol = true\n[geo]\ntrusted_proxies = [\"::ffff:10.0.0.0/104\"]\n{ONE_REGION}"
    ));
    assert!(c.listen.proxy_protocol);
    assert_eq!(
        c.geo.trusted_proxies,
        vec!["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()],
        "IPv4-mapped networks are matched as IPv4"
    );
}
