//! Validation of `[tls]` and the HTTPS keys of `[listen]`: every
//! certificate is read and checked against its key here, so that
//! `meridian check` and start-up name a bad file, its line and its key.

use std::time::Duration;

use toml::Spanned;

use super::error::Issues;
use super::file::{ListenFile, TlsFile};
use super::validate::{duration, span};
use super::{CertFiles, Tls};

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
                "an HTTPS listener needs a certificate: add a [tls] section with cert and key",
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
    } = tls;
    let mut certificates = Vec::new();
    match (cert, key) {
        (Some(c), Some(k)) => certificates.push(pair(issues, "tls", &c, &k)),
        (c, k) => {
            let at = c.as_ref().or(k.as_ref()).map_or(0..0, span);
            let missing = if c.is_none() { "tls.cert" } else { "tls.key" };
            issues.at(
                at,
                missing,
                "missing: [tls] needs cert (a PEM chain) and key (its private key); it is the default certificate",
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
    Some(Tls {
        certificates,
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
