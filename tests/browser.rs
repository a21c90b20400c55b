//! The status page in a real browser: headless Chromium, driven over the
//! DevTools protocol, loads the page from an in-process Meridian while no
//! region can serve, sees the brand and the incident, follows an incident
//! update in place, and reloads into the application by itself once a
//! region is healthy again. Every request the page makes is recorded, to
//! show that none leaves Meridian's own origin. A screenshot is saved as
//! `status-page.png` in Cargo's target directory.
//!
//! Needs Chromium (Debian: `apt-get install -y chromium`); without it the
//! test fails and says so, rather than passing without having run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use futures_util::{SinkExt, StreamExt};
use meridian::state::{Control, Incident};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest wait for any one DevTools answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// A small logo, inlined by Meridian as a `data:` URI.
const LOGO: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" width="120" height="32" viewBox="0 0 120 32"><rect width="32" height="32" rx="6" fill="#0b5fff"/><text x="40" y="23" font-family="sans-serif" font-size="20" font-weight="700" fill="#0b5fff">Acme</text></svg>"##;

/// The Chromium executable: `MERIDIAN_CHROMIUM`, or the first of the usual
/// names found on `PATH`.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("MERIDIAN_CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "Chromium is needed for the browser test and was not found on PATH: install the \
         `chromium` package (apt-get install -y chromium), or set MERIDIAN_CHROMIUM to a \
         Chromium or Chrome executable"
    );
}

/// A headless Chromium with its own throw-away profile, killed when dropped.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    devtools: String,
}

impl Browser {
    async fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--no-proxy-server",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start Chromium ({e}): install the `chromium` package")
            });
        // Chromium writes its port and browser path here once it listens.
        let file = profile.path().join("DevToolsActivePort");
        let mut devtools = None;
        wait_for(
            Duration::from_secs(30),
            "Chromium's DevToolsActivePort",
            || {
                let found = read_active_port(&file);
                let ready = found.is_some();
                devtools = found;
                async move { ready }
            },
        )
        .await;
        Browser {
            child,
            _profile: profile,
            devtools: devtools.unwrap(),
        }
    }
}

fn read_active_port(file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut lines = text.lines();
    let port: u16 = lines.next()?.trim().parse().ok()?;
    let path = lines.next()?.trim();
    path.starts_with("/devtools/browser/")
        .then(|| format!("ws://127.0.0.1:{port}{path}"))
}

/// One DevTools connection to the browser, with one page attached in
/// flat mode: commands carry the page's session id.
struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    session: Option<String>,
    /// URLs of every `Network.requestWillBeSent` seen so far.
    requests: Vec<String>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (ws, _) = tokio::time::timeout(CALL_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("DevTools websocket within 20 s")
            .expect("DevTools websocket");
        Cdp {
            ws,
            next_id: 0,
            session: None,
            requests: Vec::new(),
        }
    }

    /// Sends `method` to the page (or the browser before a page is
    /// attached) and returns its result; events read meanwhile are recorded.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .expect("DevTools send");
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within {CALL_TIMEOUT:?}"))
                .expect("DevTools connection open")
                .expect("DevTools message");
            let Message::Text(text) = next else { continue };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if v["id"] == json!(id) {
                if let Some(error) = v.get("error") {
                    panic!("{method} failed: {error}");
                }
                return v["result"].clone();
            }
            if v["method"] == "Network.requestWillBeSent" {
                let url = v["params"]["request"]["url"].as_str().unwrap_or_default();
                self.requests.push(url.to_owned());
            }
        }
    }

    /// Evaluates `expression` in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// The page's visible text (`innerText` leaves hidden elements out).
    async fn text(&mut self) -> String {
        let v = self
            .eval("document.body ? document.body.innerText : ''")
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Polls the page's text until `wanted` holds, or fails with `what` and the text.
    async fn wait_text(&mut self, limit: Duration, what: &str, wanted: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let text = self.text().await;
            if wanted(&text) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out after {limit:?} waiting for: {what}; the page says:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Where the screenshot goes: Cargo's target directory.
fn screenshot_path() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target/tmp has a parent")
        .join("status-page.png")
}

async fn post_incident(m: &meridian::server::Running, title: &str) {
    let control = Control {
        incident: Some(Incident {
            title: title.into(),
            message: "Card payments are queued and will go through. No order is lost.".into(),
            link: Some("https://status.acme.test/incidents/7".into()),
        }),
        ..Control::default()
    };
    assert!(m.shared.set_control(Arc::new(control)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_incident_and_reloads_into_the_app_without_leaving_the_proxy() {
    let assets = tempfile::tempdir().unwrap();
    let logo = assets.path().join("logo.svg");
    std::fs::write(&logo, LOGO).unwrap();
    let us1 = Backend::start("us-1").await;
    let text = config_text(
        &[R("us", &[&us1], &[])],
        &format!(
            "[status_page]\nbrand = \"Acme\"\ntitle = \"Acme is taking a short break\"\n\
             logo = \"{}\"\nsupport_url = \"https://status.acme.test/\"\nretry_after = \"2s\"\n",
            logo.display()
        ),
    );
    let m = start_healthy(&text, &["us"]).await;
    us1.set_up(false);
    wait_for(Duration::from_secs(5), "us down", || async {
        region_state(&m, "us").await == "down"
    })
    .await;
    post_incident(&m, "Payments are delayed").await;

    let mut browser = Browser::launch().await;
    let mut cdp = Cdp::connect(&browser.devtools).await;
    let target = cdp
        .call("Target.createTarget", json!({ "url": "about:blank" }))
        .await;
    let session = cdp
        .call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        )
        .await;
    cdp.session = Some(session["sessionId"].as_str().unwrap().to_owned());
    cdp.call("Network.enable", json!({})).await;
    cdp.call("Page.enable", json!({})).await;
    // A phone: the page must read well at 390 CSS pixels.
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true }),
    )
    .await;

    let origin = format!("http://{}", m.http_addr);
    cdp.call("Page.navigate", json!({ "url": format!("{origin}/cart") }))
        .await;
    cdp.wait_text(Duration::from_secs(15), "the branded page", |t| {
        t.contains("Acme is taking a short break")
    })
    .await;
    let shown = cdp.text().await;
    assert!(shown.contains("Payments are delayed"), "{shown}");
    assert!(shown.contains("Card payments are queued"), "{shown}");
    assert!(
        shown.contains("Follow the updates on this incident"),
        "{shown}"
    );
    assert!(!shown.contains("127.0.0.1"), "{shown}");
    let logo_shown = cdp
        .eval("(function(){var i=document.querySelector('header img');return !!i && i.complete && i.naturalWidth > 0 && i.alt;})()")
        .await;
    assert_eq!(logo_shown, json!("Acme"), "the inlined logo is drawn");
    let fits = cdp
        .eval("document.documentElement.scrollWidth <= window.innerWidth")
        .await;
    assert_eq!(fits, json!(true), "no sideways scrolling on a phone");
    let lang = cdp.eval("document.documentElement.lang").await;
    assert_eq!(lang, json!("en"));

    let shot = cdp
        .call("Page.captureScreenshot", json!({ "format": "png" }))
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("screenshot data"))
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = screenshot_path();
    std::fs::write(&path, &png).unwrap();
    eprintln!(
        "screenshot of the status page: {} ({} bytes)",
        path.display(),
        png.len()
    );

    // An incident update shows up in place, without a reload.
    cdp.eval("window.__sameDocument = true").await;
    post_incident(&m, "Payments are recovering").await;
    cdp.wait_text(Duration::from_secs(15), "the updated incident title", |t| {
        t.contains("Payments are recovering")
    })
    .await;
    assert_eq!(
        cdp.eval("window.__sameDocument === true").await,
        json!(true),
        "updated in place, not reloaded"
    );

    // The region comes back: the page reloads into the application by itself.
    us1.set_up(true);
    cdp.wait_text(
        Duration::from_secs(30),
        "the application's own answer after the reload",
        |t| t.contains(r#""backend":"us-1""#),
    )
    .await;
    assert_eq!(
        cdp.eval("window.__sameDocument === true").await,
        json!(false),
        "a new document"
    );

    // Every request the page made went to Meridian's own origin (or was a
    // data: URI, which needs no network at all).
    let requests = cdp.requests.clone();
    let polls = requests
        .iter()
        .filter(|u| u.starts_with(&format!("{origin}/.well-known/meridian/status")))
        .count();
    assert!(
        polls >= 2,
        "the page polled the status endpoint: {requests:#?}"
    );
    let elsewhere: Vec<&String> = requests
        .iter()
        .filter(|u| !u.starts_with(&format!("{origin}/")) && !u.starts_with("data:"))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "requests left the proxy: {elsewhere:?}"
    );
    eprintln!(
        "{} requests made by the page, {} of them polls, none leaving {origin}",
        requests.len(),
        polls
    );

    drop(cdp);
    let _ = browser.child.kill().await;
    m.shutdown().await;
}
