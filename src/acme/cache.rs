//! The ACME cache directory: the account's credentials and the certificate
//! with its key, each written atomically and readable by the owner only, so
//! that a restart reuses them instead of asking the CA again.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use instant_acme::AccountCredentials;

use super::AcmeError;
use crate::tls::{certs, LoadedCert};

/// The account's credentials.
pub const ACCOUNT: &str = "account.json";
/// The certificate chain, leaf first.
pub const CERT: &str = "certificate.pem";
/// The certificate's private key.
pub const KEY: &str = "key.pem";

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> AcmeError + '_ {
    move |source| AcmeError::Cache {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the cache directory, readable by the owner only.
pub fn prepare(dir: &Path) -> Result<(), AcmeError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error(dir))
}

/// The stored credentials of the account at `directory`, if any. Those of
/// another directory, or unreadable ones, are not used (and are logged).
pub fn account(dir: &Path, directory: &str) -> Option<AccountCredentials> {
    let path = dir.join(ACCOUNT);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the ACME account; a new one is created");
            return None;
        }
    };
    let value: serde_json::Value = match serde_json::from_slice(&text) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "the ACME account file is not valid JSON; a new account is created");
            return None;
        }
    };
    if value.get("directory").and_then(|d| d.as_str()) != Some(directory) {
        tracing::info!(file = %path.display(), directory, "the stored ACME account is for another directory; a new one is created");
        return None;
    }
    match serde_json::from_value(value) {
        Ok(credentials) => Some(credentials),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "the ACME account file cannot be used; a new account is created");
            None
        }
    }
}

/// Stores the account's credentials. A failure is logged, not returned: the
/// account works from memory, and ordering again for want of a file would
/// only create accounts the CA limits.
pub fn save_account(dir: &Path, credentials: &AccountCredentials) {
    if let Err(e) = write_account(dir, credentials) {
        tracing::warn!(error = %e, "the ACME account cannot be stored; it will not survive a restart");
    }
}

fn write_account(dir: &Path, credentials: &AccountCredentials) -> Result<(), AcmeError> {
    let path = dir.join(ACCOUNT);
    let mut bytes = serde_json::to_vec_pretty(credentials)
        .map_err(|e| io_error(&path)(std::io::Error::other(e)))?;
    bytes.push(b'\n');
    crate::atomic_file::write(&path, &bytes).map_err(io_error(&path))
}

/// The stored certificate, if there is one that loads.
pub fn certificate(dir: &Path) -> Option<LoadedCert> {
    let (cert, key) = paths(dir);
    if !cert.exists() {
        return None;
    }
    match certs::load(&cert, &key) {
        Ok(loaded) => Some(loaded),
        Err(e) => {
            tracing::warn!(error = %e, "the stored ACME certificate cannot be used; a new one is ordered");
            None
        }
    }
}

/// Checks a new certificate and its key (that they load and belong
/// together), then stores them. A store that fails is logged: the
/// certificate serves from memory, and is ordered again after a restart.
pub fn save_certificate(
    dir: &Path,
    chain_pem: &str,
    key_pem: &str,
) -> Result<LoadedCert, AcmeError> {
    let (cert, key) = paths(dir);
    let loaded = certs::from_pem(chain_pem.as_bytes(), key_pem.as_bytes(), &cert, &key)
        .map_err(AcmeError::Certificate)?;
    // The key first: a crash between the two writes leaves a pair that
    // does not match, which is refused and ordered again, never served.
    let stored = crate::atomic_file::write(&key, key_pem.as_bytes())
        .map_err(io_error(&key))
        .and_then(|()| {
            crate::atomic_file::write(&cert, chain_pem.as_bytes()).map_err(io_error(&cert))
        });
    if let Err(e) = stored {
        tracing::warn!(error = %e, "the ACME certificate cannot be stored; it serves from memory and is ordered again after a restart");
    }
    Ok(loaded)
}

fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(CERT), dir.join(KEY))
}

/// When `cert` should be replaced: `renew_before` ahead of its expiry, but
/// not before half its lifetime (a `renew_before` longer than what the CA
/// issues must not order a certificate after every issuance), or now when
/// it does not carry every one of `domains`.
pub fn renewal_due(
    cert: &LoadedCert,
    domains: &[String],
    renew_before: std::time::Duration,
) -> SystemTime {
    let covers = domains.iter().all(|d| cert.names.contains(d));
    if !covers {
        return SystemTime::UNIX_EPOCH;
    }
    let lifetime = cert
        .not_after
        .duration_since(cert.not_before)
        .unwrap_or_default();
    let before_expiry = cert
        .not_after
        .checked_sub(renew_before)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    before_expiry.max(cert.not_before + lifetime / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(86_400);

    fn cert(names: &[&str], not_before: SystemTime, days: u64) -> LoadedCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let self_signed = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut loaded =
            save_certificate(dir.path(), &self_signed.pem(), &key.serialize_pem()).unwrap();
        loaded.not_before = not_before;
        loaded.not_after = not_before + DAY * days as u32;
        loaded
    }

    #[test]
    fn renewal_is_due_renew_before_the_expiry() {
        let start = SystemTime::UNIX_EPOCH + DAY * 20_000;
        let c = cert(&["a.example"], start, 90);
        let domains = vec!["a.example".to_string()];
        assert_eq!(renewal_due(&c, &domains, DAY * 30), start + DAY * 60);
    }

    #[test]
    fn renewal_waits_for_half_the_lifetime_when_renew_before_is_longer() {
        let start = SystemTime::UNIX_EPOCH + DAY * 20_000;
        let c = cert(&["a.example"], start, 10);
        let domains = vec!["a.example".to_string()];
        assert_eq!(renewal_due(&c, &domains, DAY * 30), start + DAY * 5);
    }

    #[test]
    fn a_certificate_missing_a_configured_name_is_due_now() {
        let start = SystemTime::UNIX_EPOCH + DAY * 20_000;
        let c = cert(&["a.example"], start, 90);
        let domains = vec!["a.example".to_string(), "b.example".to_string()];
        assert_eq!(renewal_due(&c, &domains, DAY), SystemTime::UNIX_EPOCH);
    }

    #[test]
    fn a_stored_pair_is_read_back_and_a_mismatched_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(certificate(dir.path()).is_none());
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        save_certificate(dir.path(), &pem, &key.serialize_pem()).unwrap();
        assert_eq!(certificate(dir.path()).unwrap().names, ["a.example"]);
        let other = rcgen::KeyPair::generate().unwrap();
        assert!(save_certificate(dir.path(), &pem, &other.serialize_pem()).is_err());
        assert_eq!(
            certificate(dir.path()).unwrap().names,
            ["a.example"],
            "a refused pair is not stored"
        );
        // A directory that cannot be written: the certificate still serves.
        let gone = dir.path().join("missing");
        assert_eq!(
            save_certificate(&gone, &pem, &key.serialize_pem())
                .unwrap()
                .names,
            ["a.example"]
        );
        assert!(certificate(&gone).is_none());
    }

    #[test]
    fn an_account_for_another_directory_or_corrupt_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        assert!(account(dir.path(), "https://ca.example/dir").is_none());
        std::fs::write(dir.path().join(ACCOUNT), "{not json").unwrap();
        assert!(account(dir.path(), "https://ca.example/dir").is_none());
        std::fs::write(
            dir.path().join(ACCOUNT),
            r#"{"id":"x","key_pkcs8":"AA","directory":"https://other.example/dir"}"#,
        )
        .unwrap();
        assert!(account(dir.path(), "https://ca.example/dir").is_none());
    }
}
