//! Reading a certificate chain and its private key from PEM files, and
//! what the server needs to know of them: the names they are for and when
//! they expire.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::Serialize;

/// A certificate whose expiry is this close is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Why a certificate or key cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CertError {
    /// A file cannot be read or holds no PEM block of the expected kind.
    #[error("{file}: {reason}")]
    File {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The key is not the certificate's, or cannot be used for signing.
    #[error("{key} does not go with {cert}: {reason}")]
    Mismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// A usable certificate: chain, key and what it is for.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    /// What rustls serves.
    pub certified: Arc<CertifiedKey>,
    /// DNS names of its subject alternative names (lower case, maybe `*.` wildcards).
    pub names: Vec<String>,
    /// Start of validity of the leaf certificate.
    pub not_before: SystemTime,
    /// End of validity of the leaf certificate.
    pub not_after: SystemTime,
    /// The certificate file.
    pub cert_file: PathBuf,
}

/// What `/api/v1/status` shows of a certificate.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CertStatus {
    /// The certificate file.
    pub file: String,
    /// Names it is for.
    pub names: Vec<String>,
    /// End of validity (RFC 3339, UTC).
    pub not_after: String,
    /// Whole days left (negative once expired).
    pub days_left: i64,
    /// It expires within 14 days, or has expired.
    pub expires_soon: bool,
}

impl LoadedCert {
    /// Its status at `now`.
    pub fn status(&self, now: SystemTime) -> CertStatus {
        let left = match self.not_after.duration_since(now) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        CertStatus {
            file: self.cert_file.display().to_string(),
            names: self.names.clone(),
            not_after: humantime_serde::re::humantime::format_rfc3339_seconds(self.not_after)
                .to_string(),
            days_left: left.div_euclid(86_400),
            expires_soon: left < EXPIRY_WARNING.as_secs() as i64,
        }
    }
}

/// The crypto provider Meridian terminates TLS with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads `cert` (a PEM chain, leaf first) and `key` (PKCS#8, PKCS#1 RSA or
/// SEC1 EC), and checks that they belong together.
pub fn load(cert: &Path, key: &Path) -> Result<LoadedCert, CertError> {
    let read = |file: &Path| {
        std::fs::read(file).map_err(|e| CertError::File {
            file: file.display().to_string(),
            reason: format!("cannot read it: {e}"),
        })
    };
    from_pem(&read(cert)?, &read(key)?, cert, key)
}

/// The same from PEM text already read; `cert` and `key` name where it
/// came from (or where it should have been stored) in messages.
pub fn from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert: &Path,
    key: &Path,
) -> Result<LoadedCert, CertError> {
    let file_error = |file: &Path, reason: String| CertError::File {
        file: file.display().to_string(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert, pem_reason(e)))?;
    let Some(leaf) = chain.first() else {
        return Err(file_error(
            cert,
            "no certificate in it: expected a PEM \"BEGIN CERTIFICATE\" block".into(),
        ));
    };
    let (names, not_before, not_after) =
        inspect(leaf).map_err(|reason| file_error(cert, reason))?;
    let private =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| file_error(key, pem_reason(e)))?;
    let certified =
        CertifiedKey::from_der(chain, private, &provider()).map_err(|e| CertError::Mismatch {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            reason: e.to_string(),
        })?;
    Ok(LoadedCert {
        certified: Arc::new(certified),
        names,
        not_before,
        not_after,
        cert_file: cert.to_path_buf(),
    })
}

fn pem_reason(e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => format!("cannot read it: {io}"),
        Error::NoItemsFound => "no PEM block of the expected kind in it".into(),
        other => format!("not valid PEM: {other:?}"),
    }
}

/// The DNS names and the validity of a leaf certificate.
fn inspect(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, SystemTime, SystemTime), String> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        // Old certificates name their host in the subject's common name only.
        for cn in parsed.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_ascii_lowercase());
            }
        }
    }
    let time = |t: ASN1Time| UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64);
    let validity = parsed.validity();
    Ok((names, time(validity.not_before), time(validity.not_after)))
}
