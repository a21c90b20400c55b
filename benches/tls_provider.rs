//! Which rustls crypto provider Meridian terminates TLS with: aws-lc-rs
//! (the one it uses) against ring, on what the proxy pays for — the server
//! side of a full TLS 1.3 handshake with an EC P-256 certificate, and
//! encrypting 64 KiB of response body into TLS records.
//!
//!   cargo bench --bench tls_provider
//!
//! Both sides run in memory on one thread; only the server's calls are
//! timed. Each figure is the median of 5 rounds. Under `cargo test` (no
//! `--bench` argument) it runs one short round, to prove it works.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

fn configs(provider: CryptoProvider) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let provider = Arc::new(provider);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["bench.example".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = CertificateDer::from(cert.der().to_vec());
    let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![der.clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(der).unwrap();
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every handshake a full one.
    client.resumption = rustls::client::Resumption::disabled();
    (Arc::new(server), Arc::new(client))
}

/// Feeds `bytes` to `conn` and processes them.
fn feed<D>(conn: &mut rustls::ConnectionCommon<D>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        conn.read_tls(&mut bytes).unwrap();
        conn.process_new_packets().unwrap();
    }
}

/// Everything `conn` has to send.
fn drain<D>(conn: &mut rustls::ConnectionCommon<D>) -> Vec<u8> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// One full handshake; returns the server's time and both connections.
fn handshake(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
) -> (Duration, ServerConnection, ClientConnection) {
    let name = ServerName::try_from("bench.example").unwrap();
    let mut c = ClientConnection::new(Arc::clone(client), name).unwrap();
    let mut s = ServerConnection::new(Arc::clone(server)).unwrap();
    let mut spent = Duration::ZERO;
    while c.is_handshaking() || s.is_handshaking() {
        let to_server = drain(&mut c);
        let t = Instant::now();
        feed(&mut s, &to_server);
        let to_client = drain(&mut s);
        spent += t.elapsed();
        feed(&mut c, &to_client);
    }
    (spent, s, c)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn measure(name: &str, provider: CryptoProvider, rounds: usize, handshakes: usize, bodies: usize) {
    let (server, client) = configs(provider);
    let mut per_handshake = Vec::new();
    let mut per_body = Vec::new();
    let body = vec![7u8; 64 * 1024];
    for _ in 0..rounds {
        let mut spent = Duration::ZERO;
        for _ in 0..handshakes {
            spent += handshake(&server, &client).0;
        }
        per_handshake.push(spent.as_secs_f64() / handshakes as f64);

        let (_, mut s, mut c) = handshake(&server, &client);
        let mut sink = vec![0u8; body.len()];
        let mut spent = Duration::ZERO;
        for _ in 0..bodies {
            let t = Instant::now();
            s.writer().write_all(&body).unwrap();
            let records = drain(&mut s);
            spent += t.elapsed();
            // The client reads as it goes: its plaintext buffer is bounded.
            let (mut tls, mut read) = (&records[..], 0);
            while !tls.is_empty() {
                c.read_tls(&mut tls).unwrap();
                c.process_new_packets().unwrap();
                loop {
                    match c.reader().read(&mut sink) {
                        Ok(0) => break,
                        Ok(n) => read += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            assert_eq!(read, body.len());
        }
        per_body.push(spent.as_secs_f64() / bodies as f64);
    }
    let hs = median(per_handshake);
    let enc = median(per_body);
    println!(
        "| {name} | {:.0} µs | {:.2} s | {:.1} µs | {:.2} GB/s |",
        hs * 1e6,
        hs * 1000.0,
        enc * 1e6,
        body.len() as f64 / enc / 1e9
    );
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (rounds, handshakes, bodies) = if bench { (5, 500, 2000) } else { (1, 3, 3) };
    println!("| provider | server CPU per full handshake | per 1000 handshakes | encrypting 64 KiB | rate |");
    println!("|---|---|---|---|---|");
    // aws-lc-rs prefers the post-quantum hybrid X25519MLKEM768 when the
    // client offers it, as current browsers do; ring has no ML-KEM.
    measure(
        "aws-lc-rs, X25519MLKEM768",
        rustls::crypto::aws_lc_rs::default_provider(),
        rounds,
        handshakes,
        bodies,
    );
    let mut x25519 = rustls::crypto::aws_lc_rs::default_provider();
    x25519.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    measure("aws-lc-rs, X25519", x25519, rounds, handshakes, bodies);
    measure(
        "ring, X25519",
        rustls::crypto::ring::default_provider(),
        rounds,
        handshakes,
        bodies,
    );
}
