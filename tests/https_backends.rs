//! `https://` backends: a small hyper server behind tokio-rustls on
//! 127.0.0.1, with certificates from a private CA made in the test, reached
//! through Meridian. Covers verification against a region's `ca_file`, the
//! host name used for SNI and verification, health checks over TLS,
//! failover when verification fails, handshake failures and stalls as
//! failed connections, the send timeout over TLS, and `ca_file` errors.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{
    get, region_state, served_by, start, start_healthy, upload_until_answered, wait_for, Backend,
};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meridian::config::Config;
use meridian::server::Running;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A private certificate authority, and its certificate as a PEM file.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    _dir: tempfile::TempDir,
    /// The CA certificate, for `ca_file`.
    pem_path: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("Meridian test CA {name}"),
        );
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, cert.pem()).unwrap();
        Ca {
            cert,
            key,
            _dir: dir,
            pem_path: path.display().to_string(),
        }
    }

    /// A server certificate for `names` (IP addresses become IP SANs) and its key.
    fn issue(&self, names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "backend");
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (
            cert.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

/// What an HTTPS backend saw.
#[derive(Default)]
struct Seen {
    /// Requests other than `/healthz`.
    hits: AtomicUsize,
    /// `/healthz` requests.
    checks: AtomicUsize,
    /// Connections whose first request was not a health check: live traffic.
    traffic_connections: AtomicUsize,
    /// The SNI of each completed handshake (`-` when none was sent).
    sni: Mutex<Vec<String>>,
    /// The ALPN protocol of each completed handshake (`-` when none).
    alpn: Mutex<Vec<String>>,
    /// Handshakes that failed, as when the client refused the certificate.
    failed_handshakes: AtomicUsize,
    /// The TLS version of each completed handshake.
    versions: Mutex<Vec<rustls::ProtocolVersion>>,
}

/// An HTTPS backend on 127.0.0.1 (HTTP/1.1 over TLS 1.2 or 1.3). Paths:
/// `/healthz` answers `ok`; `/deaf` never reads its body nor answers;
/// anything else answers JSON with the backend's name, the path, the
/// headers and the SNI of its connection.
struct TlsBackend {
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsBackend {
    async fn start(
        name: &str,
        chain: (CertificateDer<'static>, PrivateKeyDer<'static>),
    ) -> TlsBackend {
        TlsBackend::start_with(name, chain, rustls::DEFAULT_VERSIONS).await
    }

    async fn start_with(
        name: &str,
        chain: (CertificateDer<'static>, PrivateKeyDer<'static>),
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> TlsBackend {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![chain.0], chain.1)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let name = name.to_owned();
        let state = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let seen = Arc::clone(&state);
                let name = name.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        seen.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let (_, conn) = tls.get_ref();
                    let sni = conn.server_name().unwrap_or("-").to_owned();
                    let alpn = conn
                        .alpn_protocol()
                        .map_or("-".to_owned(), |p| String::from_utf8_lossy(p).into_owned());
                    seen.sni.lock().unwrap().push(sni.clone());
                    seen.alpn.lock().unwrap().push(alpn);
                    if let Some(v) = conn.protocol_version() {
                        seen.versions.lock().unwrap().push(v);
                    }
                    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
                    let service = service_fn(move |req| {
                        let first_request = first.swap(false, Ordering::SeqCst);
                        answer(
                            name.clone(),
                            sni.clone(),
                            Arc::clone(&seen),
                            first_request,
                            req,
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsBackend { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

async fn answer(
    name: String,
    sni: String,
    seen: Arc<Seen>,
    first_request: bool,
    req: Request<Incoming>,
) -> Result<Response<BoxBody>, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        seen.checks.fetch_add(1, Ordering::SeqCst);
        return Ok(Response::new(Full::new(Bytes::from("ok")).boxed_unsync()));
    }
    seen.hits.fetch_add(1, Ordering::SeqCst);
    if first_request {
        seen.traffic_connections.fetch_add(1, Ordering::SeqCst);
    }
    if path == "/deaf" {
        // Holds the body unread, as a backend that stopped reading does.
        let _body = req;
        return std::future::pending().await;
    }
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = serde_json::json!({
        "backend": name,
        "path": req.uri().to_string(),
        "headers": headers,
        "sni": sni,
    });
    Ok(Response::new(
        Full::new(Bytes::from(body.to_string())).boxed_unsync(),
    ))
}

/// Region `us` with the HTTPS backend `us_url` and `us_keys`, failing over
/// to region `eu` with the plain backend `eu`; `health` is each region's
/// `[region.health]` body.
fn config(us_url: &str, us_keys: &str, eu: &Backend, health: &str, extra: &str) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n\
         [[region]]\nname = \"us\"\nfailover = [\"eu\"]\nbackends = [\"{us_url}\"]\n{us_keys}\n[region.health]\n{health}\n\n\
         [[region]]\nname = \"eu\"\nbackends = [\"{}\"]\n[region.health]\n{health}\n\n{extra}",
        eu.url()
    )
}

const FAST: &str = "interval = \"100ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2\n";

/// The state of backend `address` of `region`, and the reason of its latest event.
fn backend(m: &Running, region: &str, address: &str) -> (String, String) {
    let status = meridian::admin::status_body(&m.shared.load());
    let v = serde_json::to_value(status).unwrap();
    let state = v["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == region)
        .and_then(|r| {
            r["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["address"] == address)
        })
        .map(|b| b["state"].as_str().unwrap().to_owned())
        .unwrap_or_default();
    let subject = format!("{region}/{address}");
    let reason = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["subject"] == subject)
        .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    (state, reason)
}

/// Waits until backend `address` of region `us` is down, and returns the reason.
async fn wait_down(m: &Running, address: &str) -> String {
    wait_for(Duration::from_secs(5), "the https backend down", || async {
        backend(m, "us", address).0 == "down"
    })
    .await;
    backend(m, "us", address).1
}

#[tokio::test]
async fn an_https_backend_with_its_ca_file_serves_and_is_checked_over_tls() {
    let ca = Ca::new("a");
    let us = TlsBackend::start("us-tls", ca.issue(&["127.0.0.1"])).await;
    let eu = Backend::start("eu-1").await;
    let text = config(
        &us.url(),
        &format!("ca_file = \"{}\"", ca.pem_path),
        &eu,
        FAST,
        "",
    );
    let m = start_healthy(&text, &["us", "eu"]).await;
    assert_eq!(backend(&m, "us", &us.addr.to_string()).0, "up");
    assert!(
        us.seen.checks.load(Ordering::SeqCst) >= 1,
        "checks ran over TLS"
    );

    for i in 0..5 {
        let (status, headers, body) = get(&m, &format!("/hello?i={i}"), &[]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(served_by(&body), "us-tls");
        assert_eq!(headers["x-meridian-region"], "us");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["path"], format!("/hello?i={i}"), "origin-form target");
        assert_eq!(
            v["headers"]["host"],
            m.http_addr.to_string(),
            "the client's Host is kept (preserve_host)"
        );
        assert_eq!(v["sni"], "-", "TLS sends no SNI for an IP address");
    }
    assert_eq!(
        us.seen.traffic_connections.load(Ordering::SeqCst),
        1,
        "live traffic reuses one pooled TLS connection"
    );
    assert!(
        us.seen.alpn.lock().unwrap().iter().all(|p| p == "http/1.1"),
        "ALPN is http/1.1"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn tls_1_2_and_tls_1_3_backends_are_both_reached() {
    let ca = Ca::new("a");
    let v12 = TlsBackend::start_with(
        "us-tls12",
        ca.issue(&["127.0.0.1"]),
        &[&rustls::version::TLS12],
    )
    .await;
    let v13 = TlsBackend::start_with(
        "eu-tls13",
        ca.issue(&["127.0.0.1"]),
        &[&rustls::version::TLS13],
    )
    .await;
    let text = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\
         [[region]]\nname = \"us\"\nbackends = [\"{}\"]\nca_file = \"{ca}\"\n[region.health]\n{FAST}\n\
         [[region]]\nname = \"eu\"\nbackends = [\"{}\"]\nca_file = \"{ca}\"\n[region.health]\n{FAST}\n\
         [proxy]\nregion_header = true\n[geo]\npin_header = \"X-Pin\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        v12.url(),
        v13.url(),
        ca = ca.pem_path,
    );
    let m = start_healthy(&text, &["us", "eu"]).await;
    for (region, name) in [("us", "us-tls12"), ("eu", "eu-tls13")] {
        let (status, _, body) = get(&m, "/", &[("x-pin", region)]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(served_by(&body), name);
    }
    assert!(v12
        .seen
        .versions
        .lock()
        .unwrap()
        .iter()
        .all(|v| *v == rustls::ProtocolVersion::TLSv1_2));
    assert!(v13
        .seen
        .versions
        .lock()
        .unwrap()
        .iter()
        .all(|v| *v == rustls::ProtocolVersion::TLSv1_3));
    m.shutdown().await;
}

#[tokio::test]
async fn sni_and_verification_use_the_backend_host_name() {
    let ca = Ca::new("a");
    let us = TlsBackend::start("us-tls", ca.issue(&["localhost"])).await;
    let eu = Backend::start("eu-1").await;
    let url = format!("https://localhost:{}", us.addr.port());
    // `localhost` is 127.0.0.1 and ::1, and the backend listens on the
    // first only: one of the two backends it becomes is enough, and the
    // region, down while only ::1 had been checked, is not held.
    let text = config(
        &url,
        &format!(
            "ca_file = \"{}\"\nmin_healthy = 1\nfailback_hold = \"0s\"",
            ca.pem_path
        ),
        &eu,
        FAST,
        "[proxy]\npreserve_host = false\n",
    );
    let m = start_healthy(&text, &["us", "eu"]).await;
    let (status, _, body) = get(&m, "/", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(served_by(&body), "us-tls");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["sni"], "localhost");
    assert_eq!(
        v["headers"]["host"],
        format!("localhost:{}", us.addr.port()),
        "without preserve_host, Host is the backend's address"
    );
    assert!(us.seen.sni.lock().unwrap().iter().all(|s| s == "localhost"));
    m.shutdown().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_verification_and_traffic_fails_over() {
    let ca = Ca::new("a");
    let other = Ca::new("b");
    let us = TlsBackend::start("us-tls", ca.issue(&["127.0.0.1"])).await;
    let eu = Backend::start("eu-1").await;
    let text = config(
        &us.url(),
        &format!("ca_file = \"{}\"", other.pem_path),
        &eu,
        FAST,
        "",
    );
    let m = start(&text).await;
    let reason = wait_down(&m, &us.addr.to_string()).await;
    assert!(reason.contains("certificate"), "reason: {reason}");
    assert_ne!(region_state(&m, "us").await, "healthy");
    let (status, headers, body) = get(&m, "/", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(served_by(&body), "eu-1");
    assert_eq!(headers["x-meridian-region"], "eu");
    assert_eq!(us.seen.hits.load(Ordering::SeqCst), 0);
    assert_eq!(
        us.seen.checks.load(Ordering::SeqCst),
        0,
        "no check got past the handshake"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn without_ca_file_the_system_roots_do_not_know_a_private_ca() {
    let ca = Ca::new("a");
    let us = TlsBackend::start("us-tls", ca.issue(&["127.0.0.1"])).await;
    let eu = Backend::start("eu-1").await;
    let text = config(&us.url(), "", &eu, FAST, "");
    let m = start(&text).await;
    let reason = wait_down(&m, &us.addr.to_string()).await;
    assert!(reason.contains("certificate"), "reason: {reason}");
    let (status, _, body) = get(&m, "/", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(served_by(&body), "eu-1");
    assert_eq!(us.seen.hits.load(Ordering::SeqCst), 0);
    m.shutdown().await;
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let ca = Ca::new("a");
    let us = TlsBackend::start("us-tls", ca.issue(&["other.example", "10.9.9.9"])).await;
    let eu = Backend::start("eu-1").await;
    let text = config(
        &us.url(),
        &format!("ca_file = \"{}\"", ca.pem_path),
        &eu,
        FAST,
        "",
    );
    let m = start(&text).await;
    let reason = wait_down(&m, &us.addr.to_string()).await;
    assert!(reason.contains("not valid for name"), "reason: {reason}");
    let (status, _, body) = get(&m, "/", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(served_by(&body), "eu-1");
    assert_eq!(us.seen.hits.load(Ordering::SeqCst), 0);
    m.shutdown().await;
}

#[tokio::test]
async fn a_failed_handshake_on_live_traffic_is_retried_on_another_backend() {
    // The backend starts up and is checked once an hour, one failure short
    // of `fall`: live traffic reaches it, fails the handshake, and goes on
    // to the failover region as after a refused connection.
    let ca = Ca::new("a");
    let other = Ca::new("b");
    let us = TlsBackend::start("us-tls", ca.issue(&["127.0.0.1"])).await;
    let eu = Backend::start("eu-1").await;
    let health = "interval = \"1h\"\ninitial_state = \"up\"\nfall = 2\n";
    let text = config(
        &us.url(),
        &format!("ca_file = \"{}\"", other.pem_path),
        &eu,
        health,
        "",
    );
    let m = start_healthy(&text, &["us", "eu"]).await;
    for _ in 0..3 {
        let (status, headers, body) = get(&m, "/", &[]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(served_by(&body), "eu-1");
        assert_eq!(headers["x-meridian-region"], "eu");
    }
    assert_eq!(us.seen.hits.load(Ordering::SeqCst), 0);
    assert!(
        us.seen.failed_handshakes.load(Ordering::SeqCst) >= 4,
        "the first check and each of the three requests tried the backend"
    );
    assert_eq!(
        backend(&m, "us", &us.addr.to_string()).0,
        "up",
        "still one failure short of fall"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_backend_that_never_finishes_the_handshake_is_a_failed_connection() {
    // Accepts TCP connections and never says a word: only a bound on the
    // handshake keeps requests from waiting on it for ever.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let eu = Backend::start("eu-1").await;
    let health = "interval = \"1h\"\ninitial_state = \"up\"\n";
    let text = config(
        &format!("https://{addr}"),
        "",
        &eu,
        health,
        "[proxy]\nconnect_timeout = \"300ms\"\n",
    );
    let m = start_healthy(&text, &["us", "eu"]).await;
    let started = tokio::time::Instant::now();
    let (status, _, body) = get(&m, "/", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(served_by(&body), "eu-1");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "failed over after the connect timeout, took {:?}",
        started.elapsed()
    );
    m.shutdown().await;
    held.abort();
}

#[tokio::test]
async fn a_backend_that_stops_reading_over_tls_is_given_up_on_after_the_send_timeout() {
    let ca = Ca::new("a");
    let us = TlsBackend::start("us-tls", ca.issue(&["127.0.0.1"])).await;
    let text = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[proxy]\nsend_timeout = \"300ms\"\n[[region]]\nname = \"us\"\nbackends = [\"{}\"]\nca_file = \"{}\"\n[region.health]\ninterval = \"1h\"\n",
        us.url(),
        ca.pem_path
    );
    let m = start(&text).await;
    wait_for(Duration::from_secs(5), "healthy", || async {
        region_state(&m, "us").await == "healthy"
    })
    .await;
    let answer = upload_until_answered(&m, "/deaf").await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert_eq!(us.seen.hits.load(Ordering::SeqCst), 1);
    m.shutdown().await;
}

#[test]
fn ca_file_errors_name_the_file_the_line_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let missing = dir.path().join("missing.pem");
    for (path, says) in [
        (&missing, "cannot read"),
        (&empty, "contains no certificate"),
    ] {
        let text = format!(
            "[[region]]\nname = \"us\"\nbackends = [\"https://10.1.0.10:8443\"]\nca_file = \"{}\"\n",
            path.display()
        );
        let error = Config::parse("edge.toml", &text).unwrap_err().to_string();
        assert!(
            error.starts_with("edge.toml:4:11: `region[0].ca_file`: "),
            "{error}"
        );
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains(says), "{error}");
    }
}
