//! Certificates without a human: Meridian obtains a certificate from a real
//! ACME CA — Debian's `pebble`, started by the test with its DNS server
//! `pebble-challtestsrv` answering 127.0.0.1 for every name — proving the
//! names with HTTP-01 on its plain listener (behind the HTTPS redirect),
//! serves it over TLS, renews a stored certificate that is close to expiry,
//! and reuses a stored one across a restart without asking the CA again.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const DOMAINS: [&str; 2] = ["app.example.com", "www.example.com"];

/// A port free at the time of asking: pebble must know Meridian's plain
/// port before either starts, and pebble's own ports are chosen alike.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA for pebble's own HTTPS API, and its certificate for 127.0.0.1.
struct ApiCa {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn api_ca() -> ApiCa {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pebble API test CA");
    let ca = params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    ApiCa {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// pebble and its DNS server, killed when dropped.
struct Pebble {
    _pebble: Child,
    _dns: Child,
    /// The ACME directory URL.
    directory: String,
    /// pebble's management API (its issuing roots).
    management: u16,
    /// The PEM file Meridian trusts pebble's API with.
    api_ca_file: String,
    api_ca_pem: String,
}

impl Pebble {
    /// Starts pebble, validating HTTP-01 on `http_port`, and waits until its
    /// directory answers.
    async fn start(dir: &Path, http_port: u16) -> Pebble {
        let ca = api_ca();
        std::fs::write(dir.join("api-ca.pem"), &ca.ca_pem).unwrap();
        std::fs::write(dir.join("api.pem"), &ca.cert_pem).unwrap();
        std::fs::write(dir.join("api.key"), &ca.key_pem).unwrap();
        let (acme, management, dns_port, dns_management) =
            (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": dir.join("api.pem"),
                "privateKey": dir.join("api.key"),
                "httpPort": http_port,
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let dns = Command::new("pebble-challtestsrv")
            .args([
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-management",
                &format!("127.0.0.1:{dns_management}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("pebble-challtestsrv runs (Debian package pebble; scripts/ensure-test-tools.sh installs it)");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // Validate at once, and never refuse a good nonce: the test is
            // about Meridian, not about pebble's chaos.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect(
                "pebble runs (Debian package pebble; scripts/ensure-test-tools.sh installs it)",
            );
        let pebble = Pebble {
            _pebble: pebble,
            _dns: dns,
            directory: format!("https://127.0.0.1:{acme}/dir"),
            management,
            api_ca_file: dir.join("api-ca.pem").display().to_string(),
            api_ca_pem: ca.ca_pem,
        };
        wait_for(Duration::from_secs(20), "pebble's directory", || async {
            pebble.fetch(acme, "/dir").await.is_some()
        })
        .await;
        pebble
    }

    /// GET `path` from pebble's API on `port`, trusting the test's CA.
    async fn fetch(&self, port: u16, path: &str) -> Option<Bytes> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.api_ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let stream = tls_connect(port, "127.0.0.1", roots).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header("host", "127.0.0.1")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        Some(resp.into_body().collect().await.ok()?.to_bytes())
    }

    /// The roots pebble issues under (random for each pebble run).
    async fn issuing_roots(&self) -> rustls::RootCertStore {
        let pem = self
            .fetch(self.management, "/roots/0")
            .await
            .expect("pebble's root");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        roots
    }
}

/// A verifying TLS connection to 127.0.0.1:`port` for `name`.
async fn tls_connect(
    port: u16,
    name: &str,
    roots: rustls::RootCertStore,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
}

/// Meridian on `http_port`, HTTPS redirect on, with only ACME certificates.
async fn start_meridian(
    backend: &Backend,
    http_port: u16,
    pebble: &Pebble,
    cache: &Path,
) -> meridian::server::Running {
    let domains: Vec<String> = DOMAINS.iter().map(|d| format!("\"{d}\"")).collect();
    let text = config_text(&[R("us", &[backend], &[])], "").replace(
        "[listen]\nhttp = \"127.0.0.1:0\"\n",
        &format!(
            "[listen]\nhttp = \"127.0.0.1:{http_port}\"\nhttps = \"127.0.0.1:0\"\nredirect_to_https = true\n\n[tls.acme]\ndirectory = \"{}\"\nemail = \"ops@example.com\"\ndomains = [{}]\ncache = \"{}\"\nca_file = \"{}\"\n\n",
            pebble.directory,
            domains.join(", "),
            cache.display(),
            pebble.api_ca_file,
        ),
    );
    start_healthy(&text, &["us"]).await
}

/// `/api/v1/status` of `m`.
async fn status(m: &meridian::server::Running) -> serde_json::Value {
    let url = format!("http://{}/api/v1/status", m.admin_addr.unwrap());
    let resp = client()
        .request(empty(http::Method::GET, url))
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// Waits until the ACME state is `state`; the status then, or a panic
/// with the last one seen.
async fn wait_for_acme(
    m: &meridian::server::Running,
    state: &str,
    limit: Duration,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let s = status(m).await;
        if s["acme"]["state"] == state {
            return s;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("ACME not {state} within {limit:?}: {:#}", s["acme"]);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leaf certificate `m` serves for `name` and the answer to a GET over
/// it, verified against `roots`.
async fn verified_get(
    m: &meridian::server::Running,
    name: &str,
    roots: rustls::RootCertStore,
) -> (Vec<u8>, u16) {
    let stream = tls_connect(m.https_addr.unwrap().port(), name, roots)
        .await
        .unwrap_or_else(|e| panic!("TLS for {name} verifies against pebble's root: {e}"));
    let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", name)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    (leaf, resp.status().as_u16())
}

/// A self-signed certificate for the domains that expires in two days, as
/// a stored ACME certificate due for renewal.
fn seed_expiring(cache: &Path) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(DOMAINS.iter().map(|d| d.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(88);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(2);
    let cert = params.self_signed(&key).unwrap();
    std::fs::create_dir_all(cache).unwrap();
    std::fs::write(cache.join("certificate.pem"), cert.pem()).unwrap();
    std::fs::write(cache.join("key.pem"), key.serialize_pem()).unwrap();
    cert.der().to_vec()
}

#[tokio::test]
async fn a_certificate_is_issued_by_pebble_renewed_and_reused_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("acme");
    let seeded = seed_expiring(&cache);
    let http_port = free_port();
    let pebble = Pebble::start(dir.path(), http_port).await;
    let backend = Backend::start("us-1").await;

    let m = start_meridian(&backend, http_port, &pebble, &cache).await;
    let s = wait_for_acme(&m, "valid", Duration::from_secs(60)).await;
    assert_eq!(s["acme"]["domains"], serde_json::json!(DOMAINS));
    assert!(s["acme"]["next_attempt"].is_string(), "{s}");
    let certs = s["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 1, "{s}");
    let mut names: Vec<&str> = certs[0]["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, DOMAINS);
    assert_eq!(certs[0]["expires_soon"], false, "{s}");

    // Both names verify against pebble's issuing root, and requests reach
    // the application over TLS; the expiring stored certificate is replaced.
    let roots = pebble.issuing_roots().await;
    let (issued, status_code) = verified_get(&m, DOMAINS[0], roots.clone()).await;
    assert_eq!(status_code, 200);
    assert_ne!(issued, seeded, "the expiring certificate was renewed");
    let (other, _) = verified_get(&m, DOMAINS[1], roots.clone()).await;
    assert_eq!(other, issued, "one certificate carries both names");

    // Stored for the next start, keys readable by the owner only.
    use std::os::unix::fs::PermissionsExt;
    for file in ["account.json", "key.pem", "certificate.pem"] {
        let mode = std::fs::metadata(cache.join(file))
            .unwrap_or_else(|e| panic!("{file} stored: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{file} has mode {mode:o}");
    }
    let stored = std::fs::read(cache.join("certificate.pem")).unwrap();
    let account = std::fs::read(cache.join("account.json")).unwrap();

    // A challenge path with no challenge offered still goes to the
    // application over the redirect, not to a Meridian answer.
    let (code, headers, _) = get(
        &m,
        "/.well-known/acme-challenge/unknown",
        &[("host", DOMAINS[0])],
    )
    .await;
    assert_eq!(code, 200, "{headers:?}");

    // A restart reuses the stored certificate and account: the CA is not
    // asked again, so the same certificate serves at once.
    m.shutdown().await;
    let m = start_meridian(&backend, http_port, &pebble, &cache).await;
    assert_eq!(status(&m).await["acme"]["state"], "valid");
    let (again, _) = verified_get(&m, DOMAINS[0], roots).await;
    assert_eq!(again, issued);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        std::fs::read(cache.join("certificate.pem")).unwrap(),
        stored
    );
    assert_eq!(std::fs::read(cache.join("account.json")).unwrap(), account);
    m.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_ca_is_reported_and_https_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("us-1").await;
    let closed = free_port();
    let text = config_text(&[R("us", &[&backend], &[])], "").replace(
        "[listen]\nhttp = \"127.0.0.1:0\"\n",
        &format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n\n[tls.acme]\ndirectory = \"https://127.0.0.1:{closed}/dir\"\ndomains = [\"app.example.com\"]\ncache = \"{}\"\n\n",
            dir.path().join("acme").display(),
        ),
    );
    let m = start_healthy(&text, &["us"]).await;
    let s = wait_for_acme(&m, "failing", Duration::from_secs(10)).await;
    assert!(
        s["acme"]["last_error"].as_str().unwrap().contains("ACME"),
        "{s}"
    );
    assert!(s["acme"]["next_attempt"].is_string(), "{s}");
    assert_eq!(s["certificates"], serde_json::json!([]));
    // With no certificate yet, a handshake is refused, not hung; plain
    // HTTP keeps serving.
    let handshake = tokio::time::timeout(
        Duration::from_secs(5),
        tls_connect(
            m.https_addr.unwrap().port(),
            "app.example.com",
            rustls::RootCertStore::empty(),
        ),
    )
    .await
    .expect("the handshake ends");
    assert!(handshake.is_err());
    let (code, _, _) = get(&m, "/", &[]).await;
    assert_eq!(code, 200);
    m.shutdown().await;
}
