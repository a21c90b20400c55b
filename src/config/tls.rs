//! Validation of `[tls]` and the HTTPS keys of `[listen]`: every
//! certificate is read and checked against its key here, so that
//! `meridian check` and start-up name a bad file, its line and its key.

use std::time::Duration;

use toml::Spanned;

use super::error::Issues;
use super::file::{AcmeFile, ListenFile, TlsFile};
use super::validate::{duration, span};
use super::{Acme, CertFiles, Tls};

/// Checks `[tls]` against `[listen]`; `None` when HTTPS is not configured
/// (or when the configuration is invalid anyway).
pub(super) fn check_tls(
    issues: &mut Issues,
    listen: &ListenFile,
    tls: Option<TlsFile>,
) -> Option<Tls> {
    if let Some(r) = listen.redirect_to_https.as_ref().filter(|r| *r.get_ref()) {
        if listen.https.is_none() {
            issues.at(
                span(r),
                "listen.redirect_to_https",
                "there is no HTTPS listener to redirect to: set listen.https and [tls]",
            );
        }
    }
    let tls = match (listen.https.as_ref(), tls) {
        (None, None) => return None,
        (Some(h), None) => {
            issues.at(
                span(h),
                "listen.https",
                "an HTTPS listener needs a certificate: add a [tls] section with cert and key, or [tls.acme]",
            );
            return None;
        }
        (None, Some(t)) => {
            let at = t.cert.as_ref().map_or(0..0, span);
            issues.at(
                at,
                "tls",
                "[tls] is set but listen.https is not: add listen.https = \"0.0.0.0:8443\"",
            );
            return None;
        }
        (Some(_), Some(t)) => t,
    };
    let TlsFile {
        cert,
        key,
        hsts,
        reload_interval,
        certificate,
        acme,
    } = tls;
    let mut certificates = Vec::new();
    match (cert, key) {
        (Some(c), Some(k)) => certificates.push(pair(issues, "tls", &c, &k)),
        // ACME alone: its certificate is the default one.
        (None, None) if acme.is_some() => {}
        (c, k) => {
            let at = c.as_ref().or(k.as_ref()).map_or(0..0, span);
            let missing = if c.is_none() { "tls.cert" } else { "tls.key" };
            issues.at(
                at,
                missing,
                "missing: [tls] needs cert (a PEM chain) and key (its private key), or [tls.acme]; it is the default certificate",
            );
        }
    }
    for (i, extra) in certificate.iter().enumerate() {
        certificates.push(pair(
            issues,
            &format!("tls.certificate[{i}]"),
            &extra.cert,
            &extra.key,
        ));
    }
    let hsts = hsts.and_then(|h| {
        let value = h.get_ref().trim();
        let valid = value
            .split(';')
            .next()
            .and_then(|d| d.trim().strip_prefix("max-age="))
            .is_some_and(|n| n.parse::<u64>().is_ok());
        match http::HeaderValue::from_str(value) {
            Ok(v) if valid => Some(v),
            _ => {
                issues.at(
                    span(&h),
                    "tls.hsts",
                    format!("invalid value \"{value}\": expected \"max-age=SECONDS\", optionally followed by \"; includeSubDomains\" and \"; preload\""),
                );
                None
            }
        }
    });
    let acme = acme.and_then(|a| check_acme(issues, a));
    Some(Tls {
        certificates,
        acme,
        hsts,
        reload_interval: duration(
            issues,
            "tls.reload_interval",
            reload_interval.as_ref(),
            Duration::from_secs(10),
        ),
    })
}

/// One certificate and key, loaded once to find what is wrong with them.
fn pair(
    issues: &mut Issues,
    table: &str,
    cert: &Spanned<String>,
    key: &Spanned<String>,
) -> CertFiles {
    let files = CertFiles {
        cert: cert.get_ref().into(),
        key: key.get_ref().into(),
    };
    if let Err(e) = crate::tls::certs::load(&files.cert, &files.key) {
        let (at, which) = match &e {
            crate::tls::CertError::File { file, .. } if *file == key.get_ref().as_str() => {
                (span(key), "key")
            }
            crate::tls::CertError::Mismatch { .. } => (span(key), "key"),
            _ => (span(cert), "cert"),
        };
        issues.at(at, format!("{table}.{which}"), e.to_string());
    }
    files
}

/// Checks `[tls.acme]`.
fn check_acme(issues: &mut Issues, acme: AcmeFile) -> Option<Acme> {
    // Where a missing key is reported: the table's first key that is there.
    let anchor = [&acme.directory, &acme.email, &acme.cache, &acme.ca_file]
        .into_iter()
        .flatten()
        .map(span)
        .chain(acme.domains.first().map(span))
        .min_by_key(|r| r.start)
        .unwrap_or(0..0);
    let AcmeFile {
        directory,
        email,
        domains,
        cache,
        ca_file,
        renew_before,
    } = acme;
    let directory = match directory {
        Some(d) => match url::Url::parse(d.get_ref()) {
            Ok(u) if matches!(u.scheme(), "https" | "http") && u.host().is_some() => {
                Some(d.get_ref().clone())
            }
            _ => {
                issues.at(
                    span(&d),
                    "tls.acme.directory",
                    format!(
                        "invalid URL \"{}\": expected the ACME directory, such as \"https://acme-v02.api.letsencrypt.org/directory\"",
                        d.get_ref()
                    ),
                );
                None
            }
        },
        None => {
            issues.at(
                anchor.clone(),
                "tls.acme.directory",
                "missing: the ACME directory URL, such as \"https://acme-v02.api.letsencrypt.org/directory\"",
            );
            None
        }
    };
    let email = email.and_then(|e| {
        let value = e.get_ref().trim();
        let valid = value
            .split_once('@')
            .is_some_and(|(user, host)| !user.is_empty() && host.contains('.'))
            && !value
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == ',');
        if valid {
            Some(value.to_owned())
        } else {
            issues.at(
                span(&e),
                "tls.acme.email",
                format!("invalid e-mail address \"{value}\""),
            );
            None
        }
    });
    if domains.is_empty() {
        issues.at(
            anchor.clone(),
            "tls.acme.domains",
            "missing: the names the certificate is for, such as [\"app.example.com\"]",
        );
    }
    let mut names: Vec<String> = Vec::new();
    for d in &domains {
        let name = d
            .get_ref()
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if let Err(reason) = acme_domain(&name) {
            issues.at(
                span(d),
                "tls.acme.domains",
                format!("\"{}\" {reason}", d.get_ref()),
            );
        } else if names.contains(&name) {
            issues.at(
                span(d),
                "tls.acme.domains",
                format!("\"{name}\" is listed twice"),
            );
        } else {
            names.push(name);
        }
    }
    let cache = match cache {
        Some(c) if !c.get_ref().trim().is_empty() => Some(c.get_ref().into()),
        other => {
            issues.at(
                other.as_ref().map_or(anchor, span),
                "tls.acme.cache",
                "missing: a directory where the ACME account and certificate are kept across restarts, such as \"/var/lib/meridian/acme\"",
            );
            None
        }
    };
    let ca_file = ca_file.and_then(|c| {
        let path = std::path::PathBuf::from(c.get_ref());
        match crate::config::TlsSettings::from_ca_file(&path) {
            Ok(_) => Some(path),
            Err(e) => {
                issues.at(span(&c), "tls.acme.ca_file", e.to_string());
                None
            }
        }
    });
    let renew_before = duration(
        issues,
        "tls.acme.renew_before",
        renew_before.as_ref(),
        Duration::from_secs(30 * 24 * 3600),
    );
    Some(Acme {
        directory: directory?,
        email,
        domains: names,
        cache: cache?,
        ca_file,
        renew_before,
    })
}

/// Whether `name` can be validated over HTTP-01: a DNS name, not a
/// wildcard or an address.
fn acme_domain(name: &str) -> Result<(), &'static str> {
    if name.starts_with("*.") {
        return Err("is a wildcard: HTTP-01 cannot validate wildcards; list each name");
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err("is an IP address: expected a DNS name");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err("is not a valid DNS name");
    }
    Ok(())
}
