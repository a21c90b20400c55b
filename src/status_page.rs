//! The branded status page, and the one place where Meridian's own error
//! answers are made: every failure to serve a request ends here, never in a
//! raw error body.
//!
//! In the outage Meridian answers, users saw nginx's bare "503 Service
//! Temporarily Unavailable" for about 26 minutes. Browsers get an HTML page
//! rendered from `static/status.html` (or the operator's own template); other
//! clients get JSON.

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE,
    RETRY_AFTER, VARY, X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::Full;
use minijinja::Environment;
use serde::Serialize;

use crate::config;

/// The template shipped with Meridian.
pub const DEFAULT_TEMPLATE: &str = include_str!("../static/status.html");

/// The public status endpoint on the proxy listener, answered by Meridian
/// itself before any routing; the page polls it to know when to reload.
pub const STATUS_PATH: &str = "/.well-known/meridian/status";

/// A backend answer carrying this header is the application's own and is
/// never replaced by the page; Meridian removes the header on the way out.
pub const X_MERIDIAN_PASSTHROUGH: HeaderName = HeaderName::from_static("x-meridian-passthrough");

/// The page's `Content-Security-Policy`: inline style and script only, images
/// only as `data:` URIs, fetches only to Meridian's own origin, so that the
/// page provably loads nothing from elsewhere during an outage.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
                       img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
                       frame-ancestors 'none'";

/// Longest incident title shown, in characters; longer ones are cut.
pub const MAX_INCIDENT_TITLE: usize = 120;
/// Longest incident message shown, in characters; longer ones are cut.
pub const MAX_INCIDENT_MESSAGE: usize = 1000;
/// Longest incident link shown, in bytes; a longer one is left out.
pub const MAX_INCIDENT_LINK: usize = 500;

/// Longest wait between two polls of [`STATUS_PATH`] by the page, in seconds.
const MAX_POLL_SECS: u64 = 5;

/// The default template's card colour in light mode, against which the
/// accent colour is checked before it is used for link text.
const CARD_LIGHT: [u8; 3] = [0xff, 0xff, 0xff];
/// The card colour in dark mode.
const CARD_DARK: [u8; 3] = [0x1b, 0x20, 0x27];
/// Link text in light mode when the accent is too pale: the body text colour.
const INK_LIGHT: &str = "#1b1f24";
/// Link text in dark mode when the accent is too dark.
const INK_DARK: &str = "#eef1f5";

/// WCAG AA contrast for normal text.
const MIN_CONTRAST: f64 = 4.5;

/// Why Meridian answers on its own instead of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rescue {
    /// No region has a healthy backend for this client.
    NoRegion,
    /// No region can serve because operators drained every one of them.
    Drained,
    /// Every backend tried failed before answering.
    BackendFailed,
    /// The backend did not start answering within the first-byte timeout.
    BackendTimeout,
    /// The client paused too long in the middle of its request body.
    ClientTimeout,
    /// The client's request body broke (invalid chunked framing, say):
    /// answered with a plain `400`, never the page, and the connection closed.
    ClientBody,
    /// A backend answered with a status listed in `status_page.intercept`;
    /// the page keeps that status.
    Upstream(StatusCode),
    /// Every backend that could serve was at `limits.backend_max_requests`
    /// for longer than `limits.backend_queue_timeout`: load shed.
    Overloaded,
}

impl Rescue {
    /// The status sent with the page.
    pub fn status(self) -> StatusCode {
        match self {
            Rescue::NoRegion | Rescue::Drained | Rescue::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Rescue::BackendFailed => StatusCode::BAD_GATEWAY,
            Rescue::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            Rescue::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            Rescue::ClientBody => StatusCode::BAD_REQUEST,
            Rescue::Upstream(status) => status,
        }
    }

    /// A short machine-readable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Rescue::NoRegion => "no_region",
            Rescue::Drained => "drained",
            Rescue::BackendFailed => "backend_failed",
            Rescue::BackendTimeout => "backend_timeout",
            Rescue::ClientTimeout => "client_timeout",
            Rescue::ClientBody => "client_body",
            Rescue::Upstream(_) => "upstream_error",
            Rescue::Overloaded => "overloaded",
        }
    }
}

/// A region as the public may see it: its name and whether it serves, never an address.
#[derive(Debug, Clone, Serialize)]
pub struct PublicRegion {
    /// Region name.
    pub name: String,
    /// Whether it has a healthy backend.
    pub up: bool,
}

/// The operators' incident as the public sees it: text cut to a bounded
/// length, so that the page stays small whatever was posted, and a link
/// kept only when it is a plain http(s) URL, so that it can never run script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PublicIncident<'a> {
    /// A short headline.
    pub title: &'a str,
    /// What is going on.
    pub message: &'a str,
    /// Where updates are posted.
    pub link: Option<&'a str>,
}

impl<'a> PublicIncident<'a> {
    /// The public form of an incident with `title`, `message` and `link`.
    pub fn new(title: &'a str, message: &'a str, link: Option<&'a str>) -> Self {
        PublicIncident {
            title: cut(title, MAX_INCIDENT_TITLE),
            message: cut(message, MAX_INCIDENT_MESSAGE),
            link: link.filter(|l| public_link(l)),
        }
    }
}

/// `text` cut to at most `max` characters.
fn cut(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

fn public_link(link: &str) -> bool {
    let lower = link.get(..8).unwrap_or(link).to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://"))
        && link.len() <= MAX_INCIDENT_LINK
        && !link.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// What the public may know at the moment of an answer: the regions by
/// name and whether each serves, and the incident.
#[derive(Debug, Clone, Copy)]
pub struct Situation<'a> {
    /// Every region, in configuration order.
    pub regions: &'a [PublicRegion],
    /// The incident, if one is posted.
    pub incident: Option<PublicIncident<'a>>,
}

impl Situation<'_> {
    /// `"up"` when at least one region serves, else `"down"`.
    pub fn state(&self) -> &'static str {
        state_name(self.regions.iter().any(|r| r.up))
    }
}

fn state_name(up: bool) -> &'static str {
    if up {
        "up"
    } else {
        "down"
    }
}

/// Why the page could not be prepared.
#[derive(Debug, thiserror::Error)]
#[error("status page template: {0}")]
pub struct TemplateError(String);

/// Renders the status page from a compiled template and the `[status_page]` branding.
pub struct StatusPages {
    env: Environment<'static>,
    brand: config::StatusPage,
    retry_after: HeaderValue,
    /// Link colours readable on the light and on the dark card.
    link_colors: (String, String),
}

impl std::fmt::Debug for StatusPages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusPages")
            .field("brand", &self.brand.brand)
            .finish()
    }
}

#[derive(Serialize)]
struct JsonBody<'a> {
    error: &'static str,
    reason: &'static str,
    message: &'a str,
    incident: Option<PublicIncident<'a>>,
    retry_after: u64,
}

#[derive(Serialize)]
struct PublicStatus<'a> {
    state: &'static str,
    incident: Option<PublicIncident<'a>>,
    retry_after: u64,
}

impl StatusPages {
    /// Compiles the template and renders it once, so that a broken template is
    /// found at start-up rather than during an outage.
    pub fn new(brand: &config::StatusPage) -> Result<StatusPages, TemplateError> {
        let mut env = Environment::new();
        let source = brand
            .template
            .clone()
            .unwrap_or_else(|| DEFAULT_TEMPLATE.to_owned());
        env.add_template_owned("status.html", source)
            .map_err(|e| TemplateError(e.to_string()))?;
        let retry_after = HeaderValue::from(brand.retry_after.as_secs().max(1));
        let pages = StatusPages {
            env,
            link_colors: (
                readable_on(&brand.accent_color, CARD_LIGHT, INK_LIGHT),
                readable_on(&brand.accent_color, CARD_DARK, INK_DARK),
            ),
            brand: brand.clone(),
            retry_after,
        };
        let sample = PublicIncident::new("title", "message", Some("https://example.com/"));
        for incident in [None, Some(sample)] {
            let situation = Situation {
                regions: &[],
                incident,
            };
            pages
                .html(Rescue::NoRegion, &situation)
                .map_err(|e| TemplateError(e.to_string()))?;
        }
        Ok(pages)
    }

    fn retry_secs(&self) -> u64 {
        self.brand.retry_after.as_secs().max(1)
    }

    fn html(&self, rescue: Rescue, situation: &Situation<'_>) -> Result<String, minijinja::Error> {
        let b = &self.brand;
        let retry_after = self.retry_secs();
        self.env
            .get_template("status.html")?
            .render(minijinja::context! {
                brand => &b.brand,
                title => &b.title,
                message => &b.message,
                logo => &b.logo,
                support_url => &b.support_url,
                accent_color => &b.accent_color,
                link_color => &self.link_colors.0,
                link_color_dark => &self.link_colors.1,
                retry_after => retry_after,
                poll => retry_after.min(MAX_POLL_SECS),
                status => rescue.status().as_u16(),
                reason => rescue.as_str(),
                regions => situation.regions,
                incident => situation.incident,
                state => situation.state(),
                status_url => STATUS_PATH,
            })
    }

    /// The answer for `rescue`: HTML for browsers, JSON for everyone else,
    /// always with `Retry-After` and `Cache-Control: no-store`.
    pub fn respond(
        &self,
        rescue: Rescue,
        situation: &Situation<'_>,
        request_headers: &HeaderMap,
    ) -> Response<Full<Bytes>> {
        let html = if wants_html(request_headers) {
            match self.html(rescue, situation) {
                Ok(html) => Some(Bytes::from(html)),
                Err(e) => {
                    tracing::error!(error = %e, "status page template failed; answering JSON");
                    None
                }
            }
        } else {
            None
        };
        let is_html = html.is_some();
        let body = html.unwrap_or_else(|| self.json(rescue, situation.incident));
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = rescue.status();
        let h = response.headers_mut();
        if is_html {
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        } else {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        // The same URL answers HTML or JSON by `Accept`.
        h.insert(VARY, HeaderValue::from_static("accept"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(RETRY_AFTER, self.retry_after.clone());
        response
    }

    fn json(&self, rescue: Rescue, incident: Option<PublicIncident<'_>>) -> Bytes {
        let error = match rescue {
            Rescue::ClientTimeout => "request_timeout",
            Rescue::ClientBody => "bad_request",
            _ => "service_unavailable",
        };
        let body = JsonBody {
            error,
            reason: rescue.as_str(),
            message: &self.brand.title,
            incident,
            retry_after: self.retry_secs(),
        };
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }

    /// The answer of [`STATUS_PATH`]: `{"state", "incident", "retry_after"}`
    /// for `GET` and `HEAD`, where `up` says whether any region serves; 405
    /// for any other method. Never names an address or a backend.
    pub fn public_status(
        &self,
        method: &Method,
        up: bool,
        incident: Option<PublicIncident<'_>>,
    ) -> Response<Full<Bytes>> {
        let allowed = method == Method::GET || method == Method::HEAD;
        let (status, body) = if allowed {
            let body = PublicStatus {
                state: state_name(up),
                incident,
                retry_after: self.retry_secs(),
            };
            (
                StatusCode::OK,
                serde_json::to_vec(&body).unwrap_or_default(),
            )
        } else {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                br#"{"error":"method_not_allowed"}"#.to_vec(),
            )
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        let h = response.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        if !allowed {
            h.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        response
    }
}

/// Whether a backend's answer may be replaced by the page under the
/// `intercept` list: its status is listed, and it is not the application
/// speaking on purpose (a JSON body, or the passthrough header).
pub fn intercepts(intercept: &[StatusCode], status: StatusCode, headers: &HeaderMap) -> bool {
    intercept.contains(&status)
        && !headers.contains_key(X_MERIDIAN_PASSTHROUGH)
        && !headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json)
}

/// `application/json`, or any `+json` type such as `application/problem+json`.
fn is_json(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || media.ends_with("+json")
}

/// `accent` when its contrast with `card` reaches [`MIN_CONTRAST`], else
/// `ink`: operators choose the accent for their brand, not for legibility.
fn readable_on(accent: &str, card: [u8; 3], ink: &str) -> String {
    match parse_hex(accent) {
        Some(rgb) if contrast(rgb, card) >= MIN_CONTRAST => accent.to_owned(),
        _ => ink.to_owned(),
    }
}

/// `#rgb` or `#rrggbb` as three bytes.
fn parse_hex(colour: &str) -> Option<[u8; 3]> {
    let hex = colour.strip_prefix('#')?;
    let digit = |i: usize, n: usize| u8::from_str_radix(hex.get(i..i + n)?, 16).ok();
    match hex.len() {
        3 => Some([digit(0, 1)? * 17, digit(1, 1)? * 17, digit(2, 1)? * 17]),
        6 => Some([digit(0, 2)?, digit(2, 2)?, digit(4, 2)?]),
        _ => None,
    }
}

/// WCAG 2 contrast ratio of two sRGB colours.
fn contrast(a: [u8; 3], b: [u8; 3]) -> f64 {
    fn luminance(c: [u8; 3]) -> f64 {
        let lin = |v: u8| {
            let v = f64::from(v) / 255.0;
            if v <= 0.039_28 {
                v / 12.92
            } else {
                ((v + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2])
    }
    let (la, lb) = (luminance(a), luminance(b));
    (la.max(lb) + 0.05) / (la.min(lb) + 0.05)
}

/// Browsers list `text/html` in `Accept`; API clients and tools do not.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let media = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
            });
            media.eq_ignore_ascii_case("text/html") && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn brand() -> config::StatusPage {
        config::StatusPage {
            brand: "Acme <Cloud>".into(),
            title: "Acme is down".into(),
            message: "Back soon.".into(),
            logo: None,
            support_url: Some("https://status.acme.test/".into()),
            accent_color: "#123456".into(),
            retry_after: Duration::from_secs(17),
            template: None,
            intercept: vec![StatusCode::BAD_GATEWAY, StatusCode::SERVICE_UNAVAILABLE],
        }
    }

    fn headers(accept: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_str(accept).unwrap());
        h
    }

    fn body(r: Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt;
        let bytes = block_on(r.into_body().collect()).unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    const BROWSER: &str = "text/html,application/xhtml+xml,*/*;q=0.8";

    fn regions() -> [PublicRegion; 2] {
        [
            PublicRegion {
                name: "us".into(),
                up: false,
            },
            PublicRegion {
                name: "eu".into(),
                up: true,
            },
        ]
    }

    fn nothing() -> Situation<'static> {
        Situation {
            regions: &[],
            incident: None,
        }
    }

    #[test]
    fn browsers_get_the_branded_page_with_its_headers() {
        let pages = StatusPages::new(&brand()).unwrap();
        let regions = regions();
        let situation = Situation {
            regions: &regions,
            incident: None,
        };
        let r = pages.respond(Rescue::NoRegion, &situation, &headers(BROWSER));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[RETRY_AFTER], "17");
        assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(r.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        let html = body(r);
        assert!(html.contains("<title>Acme is down</title>"), "{html}");
        assert!(
            html.contains("Acme &lt;Cloud&gt;"),
            "brand must be escaped: {html}"
        );
        assert!(html.contains("--accent: #123456"));
        assert!(html.contains("status.acme.test"));
        assert!(html.contains("us: unavailable") && html.contains("eu: up"));
        assert!(
            html.contains(r#"data-state="up""#),
            "a region serves, so the page was rendered while up: {html}"
        );
        assert!(
            html.contains(r#"id="incident" class="incident" aria-labelledby="incident-title" aria-live="polite" hidden"#),
            "no incident, so its section is hidden: {html}"
        );
        assert!(html.contains(r#"<noscript><meta http-equiv="refresh" content="17"></noscript>"#));
        assert!(
            html.contains(r#"data-poll="5""#),
            "polls every min(17, 5) s"
        );
    }

    #[test]
    fn the_html_page_forbids_loading_anything_from_elsewhere() {
        let pages = StatusPages::new(&brand()).unwrap();
        let r = pages.respond(Rescue::NoRegion, &nothing(), &headers(BROWSER));
        let csp = r.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        for directive in [
            "img-src data:",
            "connect-src 'self'",
            "style-src 'unsafe-inline'",
            "script-src 'unsafe-inline'",
            "base-uri 'none'",
            "form-action 'none'",
        ] {
            assert!(
                csp.split("; ").any(|d| d == directive),
                "{directive}: {csp}"
            );
        }
        assert!(!csp.contains("http"), "no origin but our own: {csp}");
        assert_eq!(r.headers()[X_CONTENT_TYPE_OPTIONS], "nosniff");
        // JSON needs no policy: a browser never renders it as a document.
        let r = pages.respond(Rescue::NoRegion, &nothing(), &headers("application/json"));
        assert!(r.headers().get(CONTENT_SECURITY_POLICY).is_none());
    }

    #[test]
    fn the_incident_is_rendered_escaped_with_its_link() {
        let pages = StatusPages::new(&brand()).unwrap();
        let incident = PublicIncident::new(
            "Payments <b>down</b>",
            "Card payments fail & we're on it.\n<script>alert(1)</script>",
            Some("https://status.acme.test/incidents/42?a=1&b=\"2\""),
        );
        let situation = Situation {
            regions: &[],
            incident: Some(incident),
        };
        let html = body(pages.respond(Rescue::Drained, &situation, &headers(BROWSER)));
        assert!(
            html.contains(r#"<h2 id="incident-title">Payments &lt;b&gt;down&lt;&#x2f;b&gt;</h2>"#),
            "{html}"
        );
        assert!(
            html.contains(
                "Card payments fail &amp; we&#x27;re on it.\n&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"
            ),
            "{html}"
        );
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(
            html.contains(r#"href="https:&#x2f;&#x2f;status.acme.test&#x2f;incidents&#x2f;42?a=1&amp;b=&quot;2&quot;""#),
            "{html}"
        );
        assert!(
            !html.contains(r#"id="incident-more" hidden"#),
            "the link is shown"
        );
        assert!(
            !html.contains(r#"aria-live="polite" hidden"#),
            "the incident is shown"
        );
        assert!(html.contains(r#"data-state="down""#));
        assert!(html.contains("Error 503."));
    }

    #[test]
    fn only_plain_http_links_reach_the_public_and_text_is_bounded() {
        for bad in [
            "javascript:alert(1)",
            "JAVASCRIPT:alert(1)",
            "data:text/html,hi",
            "//evil.test/",
            "https://a.test/ x",
            "https://a.test/\n",
        ] {
            assert_eq!(PublicIncident::new("t", "m", Some(bad)).link, None, "{bad}");
        }
        let long = format!("https://a.test/{}", "x".repeat(MAX_INCIDENT_LINK));
        assert_eq!(PublicIncident::new("t", "m", Some(&long)).link, None);
        for good in ["https://a.test/", "HTTP://a.test/x?y=1"] {
            assert_eq!(PublicIncident::new("t", "m", Some(good)).link, Some(good));
        }
        let title = "é".repeat(MAX_INCIDENT_TITLE + 5);
        let message = "ü".repeat(MAX_INCIDENT_MESSAGE + 5);
        let i = PublicIncident::new(&title, &message, None);
        assert_eq!(i.title.chars().count(), MAX_INCIDENT_TITLE);
        assert_eq!(i.message.chars().count(), MAX_INCIDENT_MESSAGE);
        let short = PublicIncident::new("Short", "Also short", None);
        assert_eq!((short.title, short.message), ("Short", "Also short"));
    }

    #[test]
    fn the_page_stays_under_20_kb_with_the_largest_incident() {
        let pages = StatusPages::new(&brand()).unwrap();
        // '"' is the character whose escape is longest (&quot;).
        let title = "\"".repeat(MAX_INCIDENT_TITLE * 2);
        let message = "\"".repeat(MAX_INCIDENT_MESSAGE * 2);
        let link = format!("https://a.test/{}", "&".repeat(MAX_INCIDENT_LINK - 15));
        let incident = PublicIncident::new(&title, &message, Some(&link));
        assert!(incident.link.is_some());
        let regions: Vec<PublicRegion> = (0..8)
            .map(|i| PublicRegion {
                name: format!("region-{i}"),
                up: false,
            })
            .collect();
        let situation = Situation {
            regions: &regions,
            incident: Some(incident),
        };
        let html = body(pages.respond(Rescue::NoRegion, &situation, &headers(BROWSER)));
        assert!(html.len() < 20 * 1024, "{} bytes", html.len());
        assert!(html.contains(&"&quot;".repeat(MAX_INCIDENT_MESSAGE)));
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        let pages = StatusPages::new(&brand()).unwrap();
        let incident = PublicIncident::new("t", "m", Some("https://status.acme.test/"));
        let regions = regions();
        let situation = Situation {
            regions: &regions,
            incident: Some(incident),
        };
        let html = body(pages.respond(Rescue::NoRegion, &situation, &headers(BROWSER)));
        for attribute in [
            "src=", "srcset=", "url(", "@import", "<link", "<iframe", "<object",
        ] {
            for (at, _) in html.match_indices(attribute) {
                let after = &html[at + attribute.len()..];
                let after = after.trim_start_matches(['"', '\'', ' ']);
                assert!(
                    after.starts_with("data:"),
                    "{attribute} loads something: {}",
                    &html[at..(at + 80).min(html.len())]
                );
            }
        }
        // The only fetch is of Meridian's own endpoint, by path.
        assert!(
            html.contains(&format!(
                r#"data-status-url="{}""#,
                STATUS_PATH.replace('/', "&#x2f;")
            )),
            "{html}"
        );
        assert_eq!(html.matches("fetch(").count(), 1);
        // Absolute URLs appear only in links for users to follow (escaped
        // in attributes, so `:&#x2f;&#x2f;`), never in anything loaded.
        for (at, _) in html
            .match_indices(":&#x2f;&#x2f;")
            .chain(html.match_indices("://"))
        {
            let before = &html[..at];
            let attribute = before.rfind("=\"").map(|i| &before[..i]);
            assert!(
                attribute.is_some_and(|a| a.ends_with(" href") && !before[a.len()..].contains(' ')),
                "{}",
                &html[at.saturating_sub(60)..at]
            );
        }
    }

    #[test]
    fn link_text_has_enough_contrast_in_light_and_dark() {
        // The default accent reads on white but not on the dark card.
        assert_eq!(readable_on("#2f5bea", CARD_LIGHT, INK_LIGHT), "#2f5bea");
        assert_eq!(readable_on("#2f5bea", CARD_DARK, INK_DARK), INK_DARK);
        // A pale accent is replaced on white and kept on dark.
        assert_eq!(readable_on("#ffd700", CARD_LIGHT, INK_LIGHT), INK_LIGHT);
        assert_eq!(readable_on("#ffd700", CARD_DARK, INK_DARK), "#ffd700");
        assert_eq!(readable_on("#fff", CARD_LIGHT, INK_LIGHT), INK_LIGHT);
        assert!((contrast([0, 0, 0], [255, 255, 255]) - 21.0).abs() < 1e-9);
        // Every text colour of the default template, on its background.
        let css = |name: &str, dark: bool| -> [u8; 3] {
            let key = format!("--{name}: #");
            let part = if dark {
                DEFAULT_TEMPLATE
                    .split("prefers-color-scheme: dark")
                    .nth(1)
                    .unwrap()
            } else {
                DEFAULT_TEMPLATE
            };
            let at = part.find(&key).unwrap_or_else(|| panic!("{key}")) + key.len() - 1;
            parse_hex(&part[at..at + 7]).unwrap()
        };
        for dark in [false, true] {
            for text in ["ink", "muted", "up", "down"] {
                for back in ["card", "bg"] {
                    let c = contrast(css(text, dark), css(back, dark));
                    assert!(c >= MIN_CONTRAST, "{text} on {back} (dark: {dark}): {c:.2}");
                }
            }
        }
        assert_eq!(css("card", false), CARD_LIGHT);
        assert_eq!(css("card", true), CARD_DARK);
    }

    #[test]
    fn other_clients_get_json_with_the_real_incident() {
        let pages = StatusPages::new(&brand()).unwrap();
        for accept in ["*/*", "application/json", "text/html;q=0"] {
            let r = pages.respond(Rescue::BackendTimeout, &nothing(), &headers(accept));
            assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
            assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
            assert_eq!(r.headers()[RETRY_AFTER], "17");
            assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
            let v: serde_json::Value = serde_json::from_str(&body(r)).unwrap();
            assert_eq!(v["error"], "service_unavailable");
            assert_eq!(v["reason"], "backend_timeout");
            assert_eq!(v["message"], "Acme is down");
            assert_eq!(v["retry_after"], 17);
            assert!(v["incident"].is_null());
        }
        let incident = PublicIncident::new(
            "DB failover",
            "Writes are paused.",
            Some("https://s.test/1"),
        );
        let situation = Situation {
            regions: &[],
            incident: Some(incident),
        };
        let r = pages.respond(
            Rescue::Upstream(StatusCode::SERVICE_UNAVAILABLE),
            &situation,
            &HeaderMap::new(),
        );
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let v: serde_json::Value = serde_json::from_str(&body(r)).unwrap();
        assert_eq!(v["reason"], "upstream_error");
        assert_eq!(
            v["incident"],
            serde_json::json!({"title": "DB failover", "message": "Writes are paused.", "link": "https://s.test/1"})
        );
        let r = pages.respond(Rescue::Drained, &nothing(), &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let v: serde_json::Value = serde_json::from_str(&body(r)).unwrap();
        assert_eq!(v["reason"], "drained");
        let r = pages.respond(Rescue::ClientTimeout, &nothing(), &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
        let v: serde_json::Value = serde_json::from_str(&body(r)).unwrap();
        assert_eq!(v["error"], "request_timeout");
    }

    #[test]
    fn the_public_status_says_up_or_down_and_nothing_more() {
        let pages = StatusPages::new(&brand()).unwrap();
        let r = pages.public_status(&Method::GET, false, None);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(
            body(r),
            r#"{"state":"down","incident":null,"retry_after":17}"#
        );
        let incident = PublicIncident::new("T", "M", None);
        let r = pages.public_status(&Method::HEAD, true, Some(incident));
        assert_eq!(
            body(r),
            r#"{"state":"up","incident":{"title":"T","message":"M","link":null},"retry_after":17}"#
        );
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            let r = pages.public_status(&method, true, None);
            assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
            assert_eq!(r.headers()[ALLOW], "GET, HEAD");
            assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
        }
    }

    #[test]
    fn only_the_listed_statuses_of_pages_that_are_not_the_apps_own_are_intercepted() {
        let list = brand().intercept;
        let with = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            h
        };
        let html = with(&[("content-type", "text/html")]);
        assert!(intercepts(&list, StatusCode::SERVICE_UNAVAILABLE, &html));
        assert!(intercepts(
            &list,
            StatusCode::BAD_GATEWAY,
            &HeaderMap::new()
        ));
        assert!(
            !intercepts(&list, StatusCode::GATEWAY_TIMEOUT, &html),
            "not listed"
        );
        assert!(!intercepts(&list, StatusCode::INTERNAL_SERVER_ERROR, &html));
        assert!(!intercepts(&[], StatusCode::SERVICE_UNAVAILABLE, &html));
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
        ] {
            let h = with(&[("content-type", json)]);
            assert!(
                !intercepts(&list, StatusCode::SERVICE_UNAVAILABLE, &h),
                "{json}"
            );
        }
        let h = with(&[
            ("content-type", "text/html"),
            ("x-meridian-passthrough", "1"),
        ]);
        assert!(!intercepts(&list, StatusCode::SERVICE_UNAVAILABLE, &h));
        let h = with(&[("content-type", "text/jsonish")]);
        assert!(intercepts(&list, StatusCode::SERVICE_UNAVAILABLE, &h));
    }

    #[test]
    fn an_operator_template_replaces_the_default_and_a_broken_one_is_refused() {
        let mut b = brand();
        b.template = Some(
            "<p>{{ brand }} / {{ status }}{% if incident %} / {{ incident.title }}{% endif %}</p>"
                .into(),
        );
        let pages = StatusPages::new(&b).unwrap();
        let html = body(pages.respond(Rescue::BackendFailed, &nothing(), &headers("text/html")));
        assert_eq!(html, "<p>Acme &lt;Cloud&gt; / 502</p>");
        b.template = Some("{% if %}".into());
        assert!(StatusPages::new(&b).is_err());
        // A template that only fails once an incident is posted is found at start-up.
        b.template = Some("{% if incident %}{{ incident.title | nosuchfilter }}{% endif %}".into());
        assert!(StatusPages::new(&b).is_err());
    }
}
