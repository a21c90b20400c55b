//! DNS service discovery against a DNS server started in the test: a name
//! becomes one backend per record, follows its TTL, loses removed records
//! gracefully and keeps its last good set through a DNS outage.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use http::StatusCode;
use http_body_util::BodyExt;
use meridian::server::Running;
use tokio::net::UdpSocket;

/// How the test DNS server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// From its records; a name it lacks is `NXDOMAIN`.
    Answer,
    /// `SERVFAIL` to everything.
    ServFail,
    /// Never answers.
    Silent,
}

#[derive(Debug)]
struct Zone {
    /// Lower-case name without the final dot: addresses and TTL.
    records: HashMap<String, (Vec<IpAddr>, u32)>,
    mode: Mode,
}

/// An authoritative DNS server on UDP loopback, answering A and AAAA
/// queries from records the test changes as it goes.
struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone {
            records: HashMap::new(),
            mode: Mode::Answer,
        }));
        let queries = Arc::new(AtomicUsize::new(0));
        let (z, q) = (Arc::clone(&zone), Arc::clone(&queries));
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                q.fetch_add(1, Ordering::Relaxed);
                let Some(answer) = answer(&z.lock().unwrap(), &query) else {
                    continue;
                };
                let _ = socket.send_to(&answer.to_vec().unwrap(), from).await;
            }
        });
        DnsServer {
            addr,
            zone,
            queries,
            task,
        }
    }

    /// `name` now has `ips`, with `ttl` seconds; no address removes it.
    fn set(&self, name: &str, ips: &[&str], ttl: u32) {
        let mut zone = self.zone.lock().unwrap();
        if ips.is_empty() {
            zone.records.remove(name);
        } else {
            let ips = ips.iter().map(|s| s.parse().unwrap()).collect();
            zone.records.insert(name.to_owned(), (ips, ttl));
        }
    }

    fn mode(&self, mode: Mode) {
        self.zone.lock().unwrap().mode = mode;
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The response to `query` from `zone`, or none when silent.
fn answer(zone: &Zone, query: &Message) -> Option<Message> {
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    response.add_queries(query.queries.iter().cloned());
    match zone.mode {
        Mode::Silent => return None,
        Mode::ServFail => {
            response.metadata.response_code = ResponseCode::ServFail;
            return Some(response);
        }
        Mode::Answer => {}
    }
    for q in &query.queries {
        let name = q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let Some((ips, ttl)) = zone.records.get(&name) else {
            response.metadata.response_code = ResponseCode::NXDomain;
            continue;
        };
        for ip in ips {
            let data = match (q.query_type(), ip) {
                (RecordType::A, IpAddr::V4(v4)) => RData::A(A(*v4)),
                (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
                _ => continue,
            };
            response.add_answer(Record::from_rdata(q.name().clone(), *ttl, data));
        }
    }
    Some(response)
}

/// Two backends on one port, at 127.0.0.2 and 127.0.0.3, as two pods of a
/// headless service would be.
async fn two_pods() -> (Backend, Backend, u16) {
    for _ in 0..20 {
        let first = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        if let Ok(second) = tokio::net::TcpListener::bind(("127.0.0.3", port)).await {
            return (
                Backend::start_on("pod-a", first),
                Backend::start_on("pod-b", second),
                port,
            );
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

fn config(port: u16, dns: &DnsServer, eu: &Backend, extra: &str) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n\
         [dns]\nnameservers = [\"{dns}\"]\nmin_ttl = \"200ms\"\nmax_ttl = \"3s\"\ntimeout = \"300ms\"\n\n\
         [proxy]\npreserve_host = false\n\n\
         [[region]]\nname = \"us\"\nfailover = [\"eu\"]\nbackends = [\"http://web.test:{port}\"]\n\
         [region.health]\ninterval = \"100ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2\n{extra}\n\n\
         [[region]]\nname = \"eu\"\nbackends = [\"{eu}\"]\n\
         [region.health]\ninterval = \"100ms\"\ntimeout = \"300ms\"\n",
        dns = dns.addr,
        eu = eu.url(),
    )
}

/// Region `us`'s backends: address and state.
fn us_backends(m: &Running) -> Vec<(String, String)> {
    let v = serde_json::to_value(meridian::admin::status_body(&m.shared.load())).unwrap();
    v["regions"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            assert_eq!(b["discovered_from"], format!("web.test:{}", b_port(b)));
            (
                b["address"].as_str().unwrap().to_owned(),
                b["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn b_port(b: &serde_json::Value) -> String {
    let address = b["address"].as_str().unwrap();
    address.rsplit(':').next().unwrap().to_owned()
}

/// `web.test` as the status API reports it.
fn name_status(m: &Running) -> serde_json::Value {
    let all = serde_json::to_value(m.reloader.dns_status()).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "web.test")
        .cloned()
        .expect("web.test is followed")
}

async fn wait_for_us(m: &Running, want: &[(&str, &str)], what: &str) {
    wait_for(Duration::from_secs(10), what, || async {
        let have = us_backends(m);
        have.len() == want.len()
            && have
                .iter()
                .zip(want)
                .all(|((a, s), (wa, ws))| a == wa && s == ws)
    })
    .await;
}

#[tokio::test]
async fn a_name_follows_its_records_through_changes_removal_and_an_outage() {
    let dns = DnsServer::start().await;
    let (a, b, port) = two_pods().await;
    let eu = Backend::start("eu-1").await;
    let (pa, pb) = (format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}"));
    dns.set("web.test", &["127.0.0.2"], 1);
    // `initial_state = "up"` would let a backend written in the file take
    // traffic at once; an address DNS adds later is checked first all the same.
    let m = start_healthy(
        &config(port, &dns, &eu, "initial_state = \"up\""),
        &["us", "eu"],
    )
    .await;
    assert_eq!(us_backends(&m), [(pa.clone(), "up".to_owned())]);
    let (status, _, body) = get(&m, "/", &[]).await;
    assert_eq!((status, served_by(&body)), (StatusCode::OK, "pod-a".into()));
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        echo["headers"]["host"][0],
        format!("web.test:{port}"),
        "dialled by address, named by its DNS name"
    );
    let n = name_status(&m);
    assert_eq!(n["addresses"], serde_json::json!(["127.0.0.2"]));
    assert!(
        n["next_lookup_in_s"].as_f64().unwrap() <= 1.0,
        "TTL 1 s: {n}"
    );

    // A request in flight on pod-a when its record goes.
    let client = client();
    let gated = tokio::spawn({
        let url = format!("http://{}/gated", m.http_addr);
        async move {
            let response = client.request(empty(http::Method::GET, url)).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }
    });
    wait_for(
        Duration::from_secs(5),
        "the gated request reaches pod-a",
        || async { a.hits.load(Ordering::Relaxed) >= 2 },
    )
    .await;

    // pod-b appears, unwell: it is checked before it takes any traffic.
    b.set_health(HealthAnswer::Status503);
    dns.set("web.test", &["127.0.0.2", "127.0.0.3"], 1);
    wait_for(Duration::from_secs(5), "pod-b discovered", || async {
        us_backends(&m).len() == 2
    })
    .await;
    assert_ne!(us_backends(&m)[1].1, "up", "a new address starts unknown");
    for _ in 0..10 {
        let (status, _, body) = get(&m, "/", &[]).await;
        assert_eq!((status, served_by(&body)), (StatusCode::OK, "pod-a".into()));
    }
    assert_eq!(b.hits.load(Ordering::Relaxed), 0);
    b.set_health(HealthAnswer::Ok);
    wait_for_us(&m, &[(&pa, "up"), (&pb, "up")], "pod-b up").await;

    // pod-a's record is removed: it takes no new request, and the one in
    // flight finishes.
    dns.set("web.test", &["127.0.0.3"], 1);
    wait_for_us(&m, &[(&pb, "up")], "pod-a gone").await;
    let before = a.hits.load(Ordering::Relaxed);
    for _ in 0..6 {
        let (status, _, body) = get(&m, "/", &[]).await;
        assert_eq!((status, served_by(&body)), (StatusCode::OK, "pod-b".into()));
    }
    assert_eq!(a.hits.load(Ordering::Relaxed), before);
    a.release.notify_one();
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), gated)
        .await
        .expect("the request in flight finishes")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.len() > 1, "both parts of the gated body arrived");

    // A longer TTL is followed, clamped by max_ttl (3 s).
    dns.set("web.test", &["127.0.0.3"], 3600);
    wait_for(
        Duration::from_secs(5),
        "the longer TTL followed",
        || async { name_status(&m)["next_lookup_in_s"].as_f64().unwrap() > 1.5 },
    )
    .await;
    assert!(name_status(&m)["next_lookup_in_s"].as_f64().unwrap() <= 3.0);
    dns.set("web.test", &["127.0.0.3"], 1);

    // The DNS server fails: the last good set stays, the failure is
    // reported and counted, traffic goes on.
    dns.mode(Mode::ServFail);
    wait_for(Duration::from_secs(10), "the failure reported", || async {
        name_status(&m)["failures"].as_u64().unwrap() >= 2
    })
    .await;
    let n = name_status(&m);
    assert!(!n["last_error"].as_str().unwrap().is_empty(), "{n}");
    assert_eq!(n["addresses"], serde_json::json!(["127.0.0.3"]), "{n}");
    dns.mode(Mode::Silent);
    let asked = dns.queries.load(Ordering::Relaxed);
    wait_for(Duration::from_secs(10), "a lookup timed out", || async {
        dns.queries.load(Ordering::Relaxed) > asked
            && name_status(&m)["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("300ms"))
    })
    .await;
    assert_eq!(us_backends(&m), [(pb.clone(), "up".to_owned())]);
    let (status, _, body) = get(&m, "/", &[]).await;
    assert_eq!((status, served_by(&body)), (StatusCode::OK, "pod-b".into()));
    let metrics = m.shared.metrics().render(m.shared.load(), Vec::new());
    let failed = metrics
        .lines()
        .find(|l| l.starts_with("meridian_dns_lookups_total{name=\"web.test\",result=\"failed\"}"))
        .unwrap_or_else(|| panic!("no failure count in:\n{metrics}"));
    assert!(!failed.ends_with(" 0"), "{failed}");
    assert!(
        metrics.contains("meridian_dns_addresses{name=\"web.test\"} 1"),
        "{metrics}"
    );

    // It answers again; then the name goes away and the region with it:
    // its users fail over.
    dns.mode(Mode::Answer);
    wait_for(Duration::from_secs(10), "DNS answers again", || async {
        name_status(&m)["failures"] == 0
    })
    .await;
    dns.set("web.test", &[], 1);
    wait_for(Duration::from_secs(10), "us down", || async {
        region_state(&m, "us").await == "down"
    })
    .await;
    let (status, _, body) = get(&m, "/", &[]).await;
    assert_eq!((status, served_by(&body)), (StatusCode::OK, "eu-1".into()));
    m.shutdown().await;
}

#[tokio::test]
async fn a_name_that_cannot_be_resolved_at_start_up_is_looked_up_until_it_is() {
    let dns = DnsServer::start().await;
    dns.mode(Mode::ServFail);
    let (a, _b, port) = two_pods().await;
    let eu = Backend::start("eu-1").await;
    let m = start_healthy(&config(port, &dns, &eu, ""), &["eu"]).await;
    assert!(us_backends(&m).is_empty());
    assert_eq!(region_state(&m, "us").await, "down");
    let (status, _, body) = get(&m, "/", &[]).await;
    assert_eq!((status, served_by(&body)), (StatusCode::OK, "eu-1".into()));
    assert_eq!(name_status(&m)["resolved"], false);

    dns.set("web.test", &["127.0.0.2"], 1);
    dns.mode(Mode::Answer);
    wait_for(Duration::from_secs(10), "us healthy", || async {
        region_state(&m, "us").await == "healthy"
    })
    .await;
    let (status, _, body) = get(&m, "/", &[]).await;
    assert_eq!((status, served_by(&body)), (StatusCode::OK, "pod-a".into()));
    assert!(a.hits.load(Ordering::Relaxed) >= 1);
    m.shutdown().await;
}

async fn admin_post(m: &Running, path: &str) -> (u16, serde_json::Value) {
    let url = format!("http://{}{path}", m.admin_addr.expect("an admin listener"));
    let response = client()
        .request(empty(http::Method::POST, url))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn a_name_is_drained_as_a_whole_and_a_reload_looks_up_its_new_names_first() {
    let dns = DnsServer::start().await;
    dns.set("web.test", &["127.0.0.2", "127.0.0.3"], 1);
    dns.set("other.test", &["127.0.0.3"], 1);
    let (_a, _b, port) = two_pods().await;
    let eu = Backend::start("eu-1").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meridian.toml");
    let text = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        config(port, &dns, &eu, "")
    );
    std::fs::write(&path, &text).unwrap();
    let m = meridian::server::start(meridian::config::Config::load(&path).unwrap())
        .await
        .unwrap();
    wait_for(Duration::from_secs(10), "both pods up", || async {
        let up = us_backends(&m).iter().filter(|(_, s)| s == "up").count();
        up == 2 && region_state(&m, "eu").await == "healthy"
    })
    .await;

    // Draining the name drains every address it has.
    let name = format!("/api/v1/regions/us/backends/web.test:{port}");
    let (status, body) = admin_post(&m, &format!("{name}/drain")).await;
    assert_eq!(status, 200, "{body}");
    assert!(us_backends(&m).iter().all(|(_, s)| s == "up"));
    let v = serde_json::to_value(meridian::admin::status_body(&m.shared.load())).unwrap();
    let drained: Vec<_> = v["regions"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["drained"].as_bool().unwrap())
        .collect();
    assert_eq!(drained, [true, true]);
    assert!(v["unconfigured_drains"]["backends"]
        .as_array()
        .unwrap()
        .is_empty());
    let (status, _, body) = get(&m, "/", &[]).await;
    assert_eq!((status, served_by(&body)), (StatusCode::OK, "eu-1".into()));
    let (status, body) = admin_post(&m, &format!("{name}/undrain")).await;
    assert_eq!(status, 200, "{body}");
    wait_for(Duration::from_secs(5), "us serving again", || async {
        region_state(&m, "us").await == "healthy"
    })
    .await;

    // A reload to another name: it is looked up before the file is in force.
    std::fs::write(&path, text.replace("web.test", "other.test")).unwrap();
    let reloaded = m.reloader.reload().await.expect("the new file is valid");
    assert!(reloaded.reloaded);
    let v = serde_json::to_value(meridian::admin::status_body(&m.shared.load())).unwrap();
    let backends: Vec<_> = v["regions"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["address"].clone(), b["discovered_from"].clone()))
        .collect();
    assert_eq!(
        backends,
        [(
            serde_json::json!(format!("127.0.0.3:{port}")),
            serde_json::json!(format!("other.test:{port}"))
        )]
    );
    let names: Vec<_> = m
        .reloader
        .dns_status()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["other.test"]);
    let metrics = m.shared.metrics().render(m.shared.load(), Vec::new());
    assert!(!metrics.contains("web.test"), "{metrics}");
    assert!(metrics.contains("meridian_dns_addresses{name=\"other.test\"} 1"));
    m.shutdown().await;
}
