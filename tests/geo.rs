//! Geo routing end to end: GeoIP databases written by the test in both
//! schemas, clients placed by `X-Forwarded-For` from a trusted peer, the
//! database swapped while Meridian runs, and corrupt databases refused.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use http::StatusCode;
use mmdb_writer::Writer;
use serde::Serialize;

#[derive(Serialize)]
struct Named {
    iso_code: &'static str,
}

#[derive(Serialize)]
struct ContinentCode {
    code: &'static str,
}

/// A record of MaxMind's GeoIP2 Country schema.
#[derive(Serialize)]
struct MaxMindRecord {
    #[serde(skip_serializing_if = "Option::is_none")]
    country: Option<Named>,
    #[serde(skip_serializing_if = "Option::is_none")]
    registered_country: Option<Named>,
    #[serde(skip_serializing_if = "Option::is_none")]
    continent: Option<ContinentCode>,
}

fn maxmind(
    country: Option<&'static str>,
    registered: Option<&'static str>,
    continent: Option<&'static str>,
) -> MaxMindRecord {
    MaxMindRecord {
        country: country.map(|iso_code| Named { iso_code }),
        registered_country: registered.map(|iso_code| Named { iso_code }),
        continent: continent.map(|code| ContinentCode { code }),
    }
}

/// Writes a GeoIP2-Country-like database.
fn write_maxmind(path: &Path, entries: &[(&str, MaxMindRecord)]) {
    let mut w = Writer::new("GeoIP2-Country");
    for (net, record) in entries {
        w.insert(net.parse::<ipnet::IpNet>().unwrap(), record)
            .unwrap();
    }
    replace(path, &w.to_bytes().unwrap());
}

/// A GeoIP2-Country-like database in a new temporary directory, which lives
/// as long as the returned guard.
fn maxmind_db(entries: &[(&str, MaxMindRecord)]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("country.mmdb");
    write_maxmind(&db, entries);
    (dir, db)
}

/// Writes a flat database whose records carry only `country_code`.
fn write_flat(path: &Path, entries: &[(&str, &str)]) {
    let mut w = Writer::new("iptoasn-country");
    for (net, country) in entries {
        let record: BTreeMap<&str, &str> = [("country_code", *country)].into();
        w.insert(net.parse::<ipnet::IpNet>().unwrap(), &record)
            .unwrap();
    }
    replace(path, &w.to_bytes().unwrap());
}

/// Writes `bytes` next to `path` and renames it over `path`, as geoipupdate does.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct World {
    us: Backend,
    eu: Backend,
    ap: Backend,
}

impl World {
    async fn start() -> World {
        World {
            us: Backend::start("us-1").await,
            eu: Backend::start("eu-1").await,
            ap: Backend::start("ap-1").await,
        }
    }

    /// us claims US and CA and North America, eu claims Europe, ap is the default.
    fn config(&self, db: &Path, trusted: &str) -> String {
        format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n\
             [geo]\ndatabase = \"{}\"\ndefault_region = \"ap\"\nreload_interval = \"100ms\"\ntrusted_proxies = [{trusted}]\n\
             [[geo.override]]\ncidr = \"198.51.100.128/25\"\nregion = \"ap\"\n\
             [[region]]\nname = \"us\"\ncountries = [\"US\", \"CA\"]\ncontinents = [\"NA\"]\nbackends = [\"{}\"]\n[region.health]\ninterval = \"100ms\"\n\
             [[region]]\nname = \"eu\"\ncontinents = [\"EU\"]\nbackends = [\"{}\"]\n[region.health]\ninterval = \"100ms\"\n\
             [[region]]\nname = \"ap\"\nbackends = [\"{}\"]\n[region.health]\ninterval = \"100ms\"\n",
            db.display(),
            self.us.url(),
            self.eu.url(),
            self.ap.url()
        )
    }
}

async fn started(text: &str) -> meridian::server::Running {
    start_healthy(text, &["us", "eu", "ap"]).await
}

/// The region that serves a client at `client`, as a trusted proxy reports it.
async fn region_for(m: &meridian::server::Running, client: &str) -> String {
    let (status, headers, _) = get(m, "/", &[("x-forwarded-for", client)]).await;
    assert_eq!(status, StatusCode::OK);
    headers["x-meridian-region"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn each_mapping_step_with_a_maxmind_database() {
    let (_dir, db) = maxmind_db(&[
        (
            "198.51.100.0/24",
            maxmind(Some("US"), Some("US"), Some("NA")),
        ),
        ("203.0.113.0/24", maxmind(Some("MX"), None, Some("NA"))),
        ("192.0.2.0/24", maxmind(Some("DE"), None, Some("EU"))),
        ("2001:db8:1::/48", maxmind(Some("GB"), None, Some("EU"))),
        ("2001:db8:2::/48", maxmind(Some("CA"), None, Some("NA"))),
        // No country: the registered country decides, continent from the record.
        ("100.64.1.0/24", maxmind(None, Some("CA"), Some("NA"))),
        // A country no region claims, on a continent no region claims.
        ("100.64.2.0/24", maxmind(Some("JP"), None, Some("AS"))),
    ]);
    let w = World::start().await;
    let m = started(&w.config(&db, "\"127.0.0.1\"")).await;
    for (client, region) in [
        ("198.51.100.7", "us"),        // country
        ("203.0.113.7", "us"),         // continent
        ("192.0.2.7", "eu"),           // continent
        ("2001:db8:1::7", "eu"),       // IPv6, continent
        ("2001:db8:2::7", "us"),       // IPv6, country
        ("100.64.1.7", "us"),          // registered country
        ("100.64.2.7", "ap"),          // nothing claimed: default
        ("100.64.3.7", "ap"),          // unknown address: default
        ("198.51.100.200", "ap"),      // an override beats the database
        ("::ffff:198.51.100.7", "us"), // IPv4-mapped IPv6
    ] {
        assert_eq!(region_for(&m, client).await, region, "client {client}");
    }
    m.shutdown().await;
}

#[tokio::test]
async fn a_flat_country_code_database_gets_continents_from_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flat.mmdb");
    write_flat(
        &db,
        &[
            ("198.51.100.0/24", "CA"),
            ("192.0.2.0/24", "FR"),
            ("203.0.113.0/24", "BR"),
            ("2001:db8:1::/48", "IT"),
        ],
    );
    let w = World::start().await;
    let m = started(&w.config(&db, "\"127.0.0.1\"")).await;
    for (client, region) in [
        ("198.51.100.7", "us"),  // country
        ("192.0.2.7", "eu"),     // France is in Europe
        ("203.0.113.7", "ap"),   // Brazil: South America, claimed by nobody
        ("2001:db8:1::7", "eu"), // IPv6
    ] {
        assert_eq!(region_for(&m, client).await, region, "client {client}");
    }
    m.shutdown().await;
}

#[tokio::test]
async fn forwarding_headers_count_only_from_trusted_peers() {
    let (_dir, db) = maxmind_db(&[
        ("198.51.100.0/24", maxmind(Some("US"), None, Some("NA"))),
        ("192.0.2.0/24", maxmind(Some("DE"), None, Some("EU"))),
    ]);
    let w = World::start().await;
    // Nothing trusted: a forged header changes nothing (127.0.0.1 is unknown: ap).
    let m = started(&w.config(&db, "")).await;
    assert_eq!(region_for(&m, "198.51.100.7").await, "ap");
    let (_, headers, _) = get(&m, "/", &[("forwarded", "for=192.0.2.7")]).await;
    assert_eq!(headers["x-meridian-region"], "ap");
    m.shutdown().await;

    let m = started(&w.config(&db, "\"127.0.0.0/8\"")).await;
    assert_eq!(region_for(&m, "198.51.100.7").await, "us");
    // The right-most untrusted hop: a forged entry in front is not believed.
    assert_eq!(region_for(&m, "192.0.2.7, 198.51.100.7").await, "us");
    // Only the configured header counts: a client's Forwarded passed on by
    // a proxy that appends to X-Forwarded-For is not believed.
    let both = [
        ("x-forwarded-for", "198.51.100.7"),
        ("forwarded", "for=\"192.0.2.7:4711\";proto=https"),
    ];
    let (_, headers, _) = get(&m, "/", &both).await;
    assert_eq!(headers["x-meridian-region"], "us");
    m.shutdown().await;

    let text = w.config(&db, "\"127.0.0.0/8\"").replacen(
        "[geo]\n",
        "[geo]\nforwarding_header = \"forwarded\"\n",
        1,
    );
    let m = started(&text).await;
    let (_, headers, _) = get(&m, "/", &both).await;
    assert_eq!(
        headers["x-meridian-region"], "eu",
        "Forwarded, quoted and ported"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn the_database_is_swapped_while_serving_and_a_corrupt_one_refused() {
    let (_dir, db) = maxmind_db(&[("198.51.100.0/24", maxmind(Some("US"), None, Some("NA")))]);
    let w = World::start().await;
    let m = started(&w.config(&db, "\"127.0.0.1\"")).await;
    assert_eq!(region_for(&m, "198.51.100.7").await, "us");

    write_maxmind(
        &db,
        &[("198.51.100.0/24", maxmind(Some("DE"), None, Some("EU")))],
    );
    wait_for(
        Duration::from_secs(5),
        "the new database answers",
        || async { region_for(&m, "198.51.100.7").await == "eu" },
    )
    .await;

    // A corrupt replacement is refused: the last good one keeps answering.
    replace(&db, b"\xab\xcd\xefMaxMind.com this is not a database");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(region_for(&m, "198.51.100.7").await, "eu");
    assert!(m.shared.geodb().name().ends_with("country.mmdb"));

    // And a good one after it is taken.
    write_maxmind(
        &db,
        &[("198.51.100.0/24", maxmind(Some("CA"), None, Some("NA")))],
    );
    wait_for(
        Duration::from_secs(5),
        "the fixed database answers",
        || async { region_for(&m, "198.51.100.7").await == "us" },
    )
    .await;
    m.shutdown().await;
}

#[tokio::test]
async fn a_corrupt_database_at_start_up_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("broken.mmdb");
    std::fs::write(&db, b"not a database at all").unwrap();
    let w = World::start().await;
    let config = meridian::config::Config::parse("t.toml", &w.config(&db, "")).unwrap();
    let err = meridian::server::start(config).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&db.display().to_string()), "{text}");
    assert!(text.contains("not a MaxMind DB file"), "{text}");

    // A database whose search tree is broken is caught by the full check.
    let broken = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/testdata/geoip/GeoIP2-City-Test-Invalid-Node-Count.mmdb");
    if broken.exists() {
        let text = w.config(&broken, "");
        let config = meridian::config::Config::parse("t.toml", &text).unwrap();
        let err = meridian::server::start(config).await.unwrap_err();
        assert!(err.to_string().contains("GeoIP database"), "{err}");
    }
}

#[tokio::test]
async fn without_a_database_the_built_in_one_routes_by_country() {
    let w = World::start().await;
    let text = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[geo]\ndefault_region = \"ap\"\ntrusted_proxies = [\"127.0.0.1\"]\n\
         [[region]]\nname = \"us\"\ncountries = [\"US\"]\nbackends = [\"{}\"]\n[region.health]\ninterval = \"100ms\"\n\
         [[region]]\nname = \"eu\"\ncontinents = [\"EU\"]\nbackends = [\"{}\"]\n[region.health]\ninterval = \"100ms\"\n\
         [[region]]\nname = \"ap\"\nbackends = [\"{}\"]\n[region.health]\ninterval = \"100ms\"\n",
        w.us.url(),
        w.eu.url(),
        w.ap.url()
    );
    let m = started(&text).await;
    assert_eq!(m.shared.geodb().name(), meridian::geo::BUILT_IN_NAME);
    // Google's public resolver is registered in the US.
    assert_eq!(region_for(&m, "8.8.8.8").await, "us");
    assert_eq!(
        region_for(&m, "10.1.2.3").await,
        "ap",
        "private addresses are unknown"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_pin_header_is_honoured_from_trusted_peers_only() {
    let (_dir, db) = maxmind_db(&[("198.51.100.0/24", maxmind(Some("US"), None, Some("NA")))]);
    let w = World::start().await;
    let m = started(&w.config(&db, "\"127.0.0.1\"")).await;
    // From the trusted host itself.
    let (_, headers, _) = get(&m, "/", &[("x-meridian-pin", "eu")]).await;
    assert_eq!(headers["x-meridian-region"], "eu", "pinned");
    let (_, headers, _) = get(&m, "/", &[("x-meridian-pin", "mars")]).await;
    assert_eq!(
        headers["x-meridian-region"], "ap",
        "an unknown region is ignored"
    );
    // A client behind the trusted proxy cannot pin: proxies pass headers on.
    let (_, headers, _) = get(
        &m,
        "/",
        &[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-meridian-pin", "eu"),
        ],
    )
    .await;
    assert_eq!(headers["x-meridian-region"], "us", "not pinned");
    m.shutdown().await;

    let m = started(&w.config(&db, "")).await;
    let (_, headers, _) = get(&m, "/", &[("x-meridian-pin", "eu")]).await;
    assert_eq!(
        headers["x-meridian-region"], "ap",
        "not from an untrusted peer"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_sticky_cookie_keeps_a_failed_over_user_where_they_were_served() {
    let us = Backend::start("us-1").await;
    let eu = Backend::start("eu-1").await;
    let text = config_text_with(
        &[R("us", &[&us], &["eu"]), R("eu", &[&eu], &["us"])],
        "failback_hold = \"0s\"",
        "",
        "[geo]\ndefault_region = \"us\"\nsticky_cookie = \"meridian_region\"\nsticky_ttl = \"10m\"\n",
    );
    let m = start_healthy(&text, &["us", "eu"]).await;
    let (_, headers, _) = get(&m, "/", &[]).await;
    assert_eq!(headers["x-meridian-region"], "us");
    assert!(
        headers.get("set-cookie").is_none(),
        "no cookie for a user at home"
    );

    us.set_up(false);
    // Before the checks notice, a request retried on eu gets no cookie: a
    // retry or hedge that happened to win does not move the user.
    let (_, headers, _) = get(&m, "/", &[]).await;
    assert_eq!(headers["x-meridian-region"], "eu");
    assert!(headers.get("set-cookie").is_none());
    wait_for(Duration::from_secs(5), "us down", || async {
        region_state(&m, "us").await == "down"
    })
    .await;
    let (_, headers, _) = get(&m, "/", &[]).await;
    assert_eq!(headers["x-meridian-region"], "eu");
    assert_eq!(
        headers["set-cookie"],
        "meridian_region=eu; Path=/; Max-Age=600; HttpOnly; SameSite=Lax"
    );

    us.set_up(true);
    wait_for(Duration::from_secs(5), "us back", || async {
        region_state(&m, "us").await == "healthy"
    })
    .await;
    let (_, headers, _) = get(&m, "/", &[("cookie", "meridian_region=eu")]).await;
    assert_eq!(headers["x-meridian-region"], "eu", "the user stays on eu");
    assert!(headers.get("set-cookie").is_none());
    let (_, headers, _) = get(&m, "/", &[]).await;
    assert_eq!(headers["x-meridian-region"], "us", "others are home again");

    // Never honoured for a region that cannot serve.
    eu.set_up(false);
    wait_for(Duration::from_secs(5), "eu down", || async {
        region_state(&m, "eu").await == "down"
    })
    .await;
    let (status, headers, _) = get(&m, "/", &[("cookie", "meridian_region=eu")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-meridian-region"], "us");
    assert_eq!(
        headers["set-cookie"],
        "meridian_region=us; Path=/; Max-Age=600; HttpOnly; SameSite=Lax"
    );
    m.shutdown().await;
}

/// Collects what the access log writes.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn the_access_log_says_where_and_why() {
    // The current-thread runtime of this test runs every task on this
    // thread, so a thread-local subscriber sees them all.
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_env_filter("meridian::access=info")
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Other tests of this binary run beside this one without a subscriber;
    // the access-log callsite's cached interest must count this one.
    tracing::callsite::rebuild_interest_cache();

    let (_dir, db) = maxmind_db(&[("198.51.100.0/24", maxmind(Some("CA"), None, Some("NA")))]);
    let w = World::start().await;
    let m = started(&w.config(&db, "\"127.0.0.1\"")).await;
    get(
        &m,
        "/hello?secret=1",
        &[("x-forwarded-for", "198.51.100.7")],
    )
    .await;
    w.us.set_up(false);
    get(&m, "/again", &[("x-forwarded-for", "198.51.100.8")]).await;
    m.shutdown().await;

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = log.lines().find(|l| l.contains("/hello")).expect(&log);
    for field in [
        "client=198.51.100.7",
        "country=CA",
        "continent=NA",
        "preferred=us",
        "served=us",
        "why=country",
        "path=/hello ",
        "method=GET",
        "status=200",
    ] {
        assert!(line.contains(field), "{field} missing from: {line}");
    }
    assert!(
        !line.contains("secret"),
        "queries stay out of the log: {line}"
    );
    let line = log.lines().find(|l| l.contains("/again")).expect(&log);
    // us has no failover list here, and its checks have not noticed yet:
    // Meridian answers 502 itself.
    assert!(
        line.contains("served=- ") && line.contains("status=502"),
        "{line}"
    );
}

/// Sends `bytes` on a fresh connection and returns everything answered.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n";

fn proxy_v2(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // TCP over IPv4
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&source);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    h
}

#[tokio::test]
async fn the_proxy_protocol_gives_the_client_from_trusted_balancers_only() {
    let (_dir, db) = maxmind_db(&[
        ("198.51.100.0/24", maxmind(Some("US"), None, Some("NA"))),
        ("192.0.2.0/24", maxmind(Some("DE"), None, Some("EU"))),
    ]);
    let w = World::start().await;
    let text = w.config(&db, "\"127.0.0.1\"").replacen(
        "[listen]\n",
        "[listen]\nproxy_protocol = true\n",
        1,
    );
    let m = started(&text).await;

    let mut v1 = b"PROXY TCP4 198.51.100.7 127.0.0.1 4711 80\r\n".to_vec();
    v1.extend_from_slice(REQUEST);
    let answer = raw(m.http_addr, &v1).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("x-meridian-region: us"), "v1: {answer}");

    let mut v2 = proxy_v2([192, 0, 2, 7], 4711);
    v2.extend_from_slice(REQUEST);
    let answer = raw(m.http_addr, &v2).await;
    assert!(answer.contains("x-meridian-region: eu"), "v2: {answer}");

    // Without a header, a trusted balancer's connection is refused: a client
    // passed through at L4 would otherwise speak as the balancer.
    let answer = raw(m.http_addr, REQUEST).await;
    assert_eq!(answer, "");
    // LOCAL (the balancer's own health check) is served as the balancer.
    let mut local = b"PROXY UNKNOWN\r\n".to_vec();
    local.extend_from_slice(REQUEST);
    let answer = raw(m.http_addr, &local).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A broken header ends the connection without a word.
    let answer = raw(
        m.http_addr,
        b"PROXY TCP4 nonsense\r\nGET / HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(answer, "");
    m.shutdown().await;

    // From a peer that is not trusted, a PROXY header is a bad request.
    let text = w.config(&db, "\"10.0.0.0/8\"").replacen(
        "[listen]\n",
        "[listen]\nproxy_protocol = true\n",
        1,
    );
    let m = started(&text).await;
    let answer = raw(m.http_addr, &v1).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    m.shutdown().await;
}
