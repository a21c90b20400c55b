//! TLS termination on `listen.https`: protocol versions, ALPN, SNI,
//! certificates rotated while a download is in flight, a broken replacement
//! refused, HTTP/2 to an HTTP/1.1 backend, redirect and HSTS, expiry
//! warnings. Certificates are made by the tests with rcgen.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A self-signed certificate for `names`, valid for `days`, written as
/// `stem.pem` and `stem.key` in `dir`; returns its DER.
fn certificate(dir: &std::path::Path, stem: &str, names: &[&str], days: i64) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
    cert.der().to_vec()
}

/// Accepts any server certificate: these tests look at which one was sent.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects over TLS with SNI `name`, offering `alpn` and only `version`
/// when given.
async fn connect(
    addr: std::net::SocketAddr,
    name: &str,
    alpn: &[&[u8]],
    version: Option<&'static rustls::SupportedProtocolVersion>,
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = match version {
        Some(v) => vec![v],
        None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
}

fn served_cert(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Meridian with one region on `backend`, HTTPS with `dir`'s `a` (default)
/// and `b` certificates, checked for changes every 100 ms; `extra` is more TOML.
async fn start_https(
    dir: &std::path::Path,
    backend: &Backend,
    extra: &str,
) -> meridian::server::Running {
    let text = config_text(&[R("us", &[backend], &[])], extra).replace(
        "[listen]\nhttp = \"127.0.0.1:0\"\n",
        &format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n\n[tls]\ncert = \"{0}/a.pem\"\nkey = \"{0}/a.key\"\nreload_interval = \"100ms\"\nhsts = \"max-age=63072000; includeSubDomains\"\n[[tls.certificate]]\ncert = \"{0}/b.pem\"\nkey = \"{0}/b.key\"\n\n",
            dir.display()
        ),
    );
    start_healthy(&text, &["us"]).await
}

/// One HTTP/1.1 GET of `path` over `stream`; status, headers and body.
async fn get_h1(stream: TlsStream<TcpStream>, path: &str) -> (u16, http::HeaderMap, Bytes) {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "a.example")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    (
        parts.status.as_u16(),
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn versions_alpn_and_sni_choose_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    let a = certificate(dir.path(), "a", &["a.example"], 90);
    let b = certificate(dir.path(), "b", &["b.example", "*.b.example"], 90);
    let us1 = Backend::start("us-1").await;
    let m = start_https(dir.path(), &us1, "").await;
    let addr = m.https_addr.expect("https listener");

    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let s = connect(addr, "a.example", &[b"h2", b"http/1.1"], Some(version))
            .await
            .unwrap();
        assert_eq!(s.get_ref().1.protocol_version(), Some(version.version));
        assert_eq!(
            s.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "h2 is preferred"
        );
    }
    let s = connect(addr, "a.example", &[b"http/1.1"], None)
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

    let by_name = |name: &'static str| async move {
        served_cert(&connect(addr, name, &[b"http/1.1"], None).await.unwrap())
    };
    assert_eq!(by_name("b.example").await, b);
    assert_eq!(by_name("www.b.example").await, b, "a wildcard name");
    assert_eq!(by_name("B.EXAMPLE").await, b, "names are case-insensitive");
    assert_eq!(by_name("a.example").await, a);
    assert_eq!(
        by_name("unknown.example").await,
        a,
        "the default certificate"
    );

    // Over TLS, backends learn the scheme, and clients get HSTS.
    let s = connect(addr, "a.example", &[b"http/1.1"], None)
        .await
        .unwrap();
    let (status, headers, body) = get_h1(s, "/hello").await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");
    m.shutdown().await;
}

#[tokio::test]
async fn http2_streams_reach_an_http1_backend() {
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "a", &["a.example"], 90);
    certificate(dir.path(), "b", &["b.example"], 90);
    let us1 = Backend::start("us-1").await;
    let m = start_https(dir.path(), &us1, "").await;
    let s = connect(m.https_addr.unwrap(), "a.example", &[b"h2"], None)
        .await
        .unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let requests = (0..100).map(|i| {
        let mut sender = sender.clone();
        async move {
            let req = http::Request::get(format!("https://a.example/stream/{i}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 200);
        let echo: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(echo["path"], format!("/stream/{i}"));
        assert_eq!(echo["version"], "HTTP/1.1", "the backend speaks HTTP/1.1");
        assert_eq!(echo["headers"]["host"][0], "a.example", "from :authority");
        assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");
    }
    m.shutdown().await;
}

#[tokio::test]
async fn a_certificate_rotates_under_a_download_and_a_broken_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let old = certificate(dir.path(), "a", &["a.example"], 90);
    certificate(dir.path(), "b", &["b.example"], 90);
    let us1 = Backend::start("us-1").await;
    let m = start_https(dir.path(), &us1, "").await;
    let addr = m.https_addr.unwrap();

    // A 64 MiB download starts on the old certificate.
    let s = connect(addr, "a.example", &[b"http/1.1"], None)
        .await
        .unwrap();
    assert_eq!(served_cert(&s), old);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let len: u64 = 64 << 20;
    let req = http::Request::get(format!("/big?n={len}"))
        .header("host", "a.example")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());

    let new = certificate(dir.path(), "a", &["a.example"], 90);
    wait_for(
        Duration::from_secs(5),
        "new connections get the new certificate",
        || async {
            served_cert(
                &connect(addr, "a.example", &[b"http/1.1"], None)
                    .await
                    .unwrap(),
            ) == new
        },
    )
    .await;
    let rest = check_pattern_from(body, first.into_data().unwrap()).await;
    assert_eq!(rest, len, "the download in flight completes");

    // A broken replacement is refused; the certificate in force keeps serving.
    std::fs::write(
        dir.path().join("a.pem"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        served_cert(
            &connect(addr, "a.example", &[b"http/1.1"], None)
                .await
                .unwrap()
        ),
        new
    );
    // A key that is not the certificate's is refused too.
    certificate(dir.path(), "c", &["a.example"], 90);
    std::fs::copy(dir.path().join("c.pem"), dir.path().join("a.pem")).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        served_cert(
            &connect(addr, "a.example", &[b"http/1.1"], None)
                .await
                .unwrap()
        ),
        new
    );
    m.shutdown().await;
}

/// Reads the rest of a pattern body whose first frame was `first`; returns the total length.
async fn check_pattern_from(mut body: hyper::body::Incoming, first: Bytes) -> u64 {
    let mut at = 0u64;
    let mut check = |chunk: &Bytes| {
        for &byte in chunk.iter() {
            assert_eq!(byte, pattern_byte(at), "byte {at}");
            at += 1;
        }
    };
    check(&first);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            check(&data);
        }
    }
    at
}

#[tokio::test]
async fn plain_http_is_redirected_except_the_status_poll() {
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "a", &["a.example"], 90);
    let us1 = Backend::start("us-1").await;
    let text = config_text(&[R("us", &[&us1], &[])], "").replace(
        "[listen]\nhttp = \"127.0.0.1:0\"\n",
        &format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\nredirect_to_https = true\n\n[tls]\ncert = \"{0}/a.pem\"\nkey = \"{0}/a.key\"\n\n",
            dir.path().display()
        ),
    );
    let m = start_healthy(&text, &["us"]).await;
    let port = m.https_addr.unwrap().port();
    let (status, headers, _) = get(&m, "/cart?id=7", &[("host", "shop.example:8080")]).await;
    assert_eq!(status, 308);
    assert_eq!(
        headers["location"],
        format!("https://shop.example:{port}/cart?id=7")
    );
    assert!(
        !headers.contains_key("strict-transport-security"),
        "HSTS is sent over TLS only"
    );
    let (status, _, body) = get(&m, "/.well-known/meridian/status", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(us1.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
    m.shutdown().await;
}

#[tokio::test]
async fn a_certificate_close_to_expiry_is_flagged_in_the_status() {
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "a", &["a.example"], 90);
    certificate(dir.path(), "b", &["b.example"], 5);
    let us1 = Backend::start("us-1").await;
    let m = start_https(dir.path(), &us1, "").await;
    let admin = m.admin_addr.unwrap();
    let req = empty(http::Method::GET, format!("http://{admin}/api/v1/status"));
    let resp = client().request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let certs = status["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 2);
    assert_eq!(certs[0]["names"][0], "a.example");
    assert_eq!(certs[0]["expires_soon"], false);
    assert_eq!(certs[1]["names"][0], "b.example");
    assert_eq!(certs[1]["expires_soon"], true);
    assert!(
        matches!(certs[1]["days_left"].as_i64(), Some(4 | 5)),
        "{}",
        certs[1]
    );
    // The same expiry in /metrics, for alert rules.
    let req = empty(http::Method::GET, format!("http://{admin}/metrics"));
    let resp = client().request(req).await.unwrap();
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("meridian_certificate_expiry_timestamp_seconds{")
                && l.contains(r#"names="b.example""#)
        })
        .unwrap_or_else(|| panic!("no expiry of b.example in:\n{text}"));
    let not_after: i64 = line.rsplit_once(' ').unwrap().1.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let days = (not_after - now) / 86_400;
    assert!(matches!(days, 4 | 5), "{line}");
    m.shutdown().await;
}

#[tokio::test]
async fn a_reload_swaps_certificates_and_refuses_broken_ones() {
    let dir = tempfile::tempdir().unwrap();
    let old = certificate(dir.path(), "a", &["a.example"], 90);
    certificate(dir.path(), "b", &["b.example"], 90);
    let us1 = Backend::start("us-1").await;
    // The files are checked only hourly: the reload must do it.
    let text = config_text(&[R("us", &[&us1], &[])], "").replace(
        "[listen]\nhttp = \"127.0.0.1:0\"\n",
        &format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n\n[tls]\ncert = \"{0}/a.pem\"\nkey = \"{0}/a.key\"\nreload_interval = \"1h\"\n\n",
            dir.path().display()
        ),
    );
    let path = dir.path().join("meridian.toml");
    std::fs::write(&path, &text).unwrap();
    let m = meridian::server::start(meridian::config::Config::load(&path).unwrap())
        .await
        .unwrap();
    let addr = m.https_addr.unwrap();
    let reload = || async {
        let admin = m.admin_addr.unwrap();
        let req = empty(http::Method::POST, format!("http://{admin}/api/v1/reload"));
        let resp = client().request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        )
    };
    let new = certificate(dir.path(), "a", &["a.example"], 90);
    let (status, body) = reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        served_cert(
            &connect(addr, "a.example", &[b"http/1.1"], None)
                .await
                .unwrap()
        ),
        new
    );
    assert_ne!(old, new);
    // A key that does not match: the file does not validate, nothing changes.
    certificate(dir.path(), "c", &["a.example"], 90);
    std::fs::copy(dir.path().join("c.key"), dir.path().join("a.key")).unwrap();
    let (status, body) = reload().await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["issues"][0].as_str().unwrap().contains("tls.key"),
        "{body}"
    );
    assert_eq!(
        served_cert(
            &connect(addr, "a.example", &[b"http/1.1"], None)
                .await
                .unwrap()
        ),
        new
    );
    m.shutdown().await;
}

#[tokio::test]
async fn h2c_by_prior_knowledge_on_the_plain_listener_when_enabled() {
    let us1 = Backend::start("us-1").await;
    let h2 = |addr: std::net::SocketAddr| async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .ok()?;
        tokio::spawn(conn);
        let req = http::Request::get(format!("http://{addr}/x"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
            .await
            .ok()?
            .ok()?;
        Some((resp.status(), resp.version()))
    };
    let text = config_text(&[R("us", &[&us1], &[])], "").replace(
        "[listen]\nhttp = \"127.0.0.1:0\"\n",
        "[listen]\nhttp = \"127.0.0.1:0\"\nh2c = true\n",
    );
    let m = start_healthy(&text, &["us"]).await;
    assert_eq!(
        h2(m.http_addr).await,
        Some((http::StatusCode::OK, http::Version::HTTP_2))
    );
    let (status, _, _) = get(&m, "/x", &[]).await;
    assert_eq!(status, 200, "HTTP/1.1 still works beside it");
    m.shutdown().await;

    let m = start_healthy(&config_text(&[R("us", &[&us1], &[])], ""), &["us"]).await;
    assert_eq!(h2(m.http_addr).await, None, "off by default");
    m.shutdown().await;
}

#[tokio::test]
async fn over_http2_failover_and_the_status_page_behave_the_same() {
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "a", &["a.example"], 90);
    let (us1, eu1) = (Backend::start("us-1").await, Backend::start("eu-1").await);
    let text = config_text(&[R("us", &[&us1], &["eu"]), R("eu", &[&eu1], &["us"])], "").replace(
        "[listen]\nhttp = \"127.0.0.1:0\"\n",
        &format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n\n[tls]\ncert = \"{0}/a.pem\"\nkey = \"{0}/a.key\"\n\n",
            dir.path().display()
        ),
    );
    let m = start_healthy(&text, &["us", "eu"]).await;
    let s = connect(m.https_addr.unwrap(), "a.example", &[b"h2"], None)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut h2_get = |accept: &'static str| {
        let req = http::Request::get("https://a.example/")
            .header("accept", accept)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let sent = sender.send_request(req);
        async move {
            let resp = sent.await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (status, body) = h2_get("*/*").await;
    assert_eq!((status, served_by(&body)), (200, "us-1".to_owned()));

    // us hangs: the request is hedged to eu, as over HTTP/1.1.
    us1.fail_all(Fault::Hang);
    let (status, body) = h2_get("*/*").await;
    assert_eq!((status, served_by(&body)), (200, "eu-1".to_owned()));

    // Nothing can serve: the status page, as JSON and as HTML.
    eu1.fail_all(Fault::Reset);
    wait_for(Duration::from_secs(5), "both regions down", || async {
        region_state(&m, "us").await == "down" && region_state(&m, "eu").await == "down"
    })
    .await;
    let (status, body) = h2_get("application/json").await;
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "service_unavailable");
    let (status, body) = h2_get("text/html").await;
    assert_eq!(status, 503);
    assert!(body.contains("<!doctype html>"), "{body}");
    m.shutdown().await;
}
