//! The branded status page, and the one place where Meridian's own error
//! answers are made: every failure to serve a request ends here, never in a
//! raw error body.
//!
//! In the outage Meridian answers, users saw nginx's bare "503 Service
//! Temporarily Unavailable" for about 26 minutes. Browsers get an HTML page
//! rendered from `static/status.html` (or the operator's own template); other
//! clients get JSON.

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use minijinja::Environment;
use serde::Serialize;

use crate::config;

/// The template shipped with Meridian.
pub const DEFAULT_TEMPLATE: &str = include_str!("../static/status.html");

/// Why Meridian answers on its own instead of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rescue {
    /// No region has a healthy backend for this client.
    NoRegion,
    /// Every backend tried failed before answering.
    BackendFailed,
    /// The backend did not start answering within the first-byte timeout.
    BackendTimeout,
    /// The client paused too long in the middle of its request body.
    ClientTimeout,
}

impl Rescue {
    /// The status sent with the page.
    pub fn status(self) -> StatusCode {
        match self {
            Rescue::NoRegion => StatusCode::SERVICE_UNAVAILABLE,
            Rescue::BackendFailed => StatusCode::BAD_GATEWAY,
            Rescue::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            Rescue::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// A short machine-readable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Rescue::NoRegion => "no_region",
            Rescue::BackendFailed => "backend_failed",
            Rescue::BackendTimeout => "backend_timeout",
            Rescue::ClientTimeout => "client_timeout",
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

/// Why the page could not be prepared.
#[derive(Debug, thiserror::Error)]
#[error("status page template: {0}")]
pub struct TemplateError(String);

/// Renders the status page from a compiled template and the `[status_page]` branding.
pub struct StatusPages {
    env: Environment<'static>,
    brand: config::StatusPage,
    retry_after: HeaderValue,
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
    incident: Option<()>,
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
            brand: brand.clone(),
            retry_after,
        };
        pages
            .html(Rescue::NoRegion, &[])
            .map_err(|e| TemplateError(e.to_string()))?;
        Ok(pages)
    }

    fn html(&self, rescue: Rescue, regions: &[PublicRegion]) -> Result<String, minijinja::Error> {
        let b = &self.brand;
        self.env
            .get_template("status.html")?
            .render(minijinja::context! {
                brand => &b.brand,
                title => &b.title,
                message => &b.message,
                logo => &b.logo,
                support_url => &b.support_url,
                accent_color => &b.accent_color,
                retry_after => b.retry_after.as_secs().max(1),
                status => rescue.status().as_u16(),
                reason => rescue.as_str(),
                regions => regions,
            })
    }

    /// The answer for `rescue`: HTML for browsers, JSON for everyone else,
    /// always with `Retry-After` and `Cache-Control: no-store`.
    pub fn respond(
        &self,
        rescue: Rescue,
        regions: &[PublicRegion],
        request_headers: &HeaderMap,
    ) -> Response<Full<Bytes>> {
        let (content_type, body) = if wants_html(request_headers) {
            match self.html(rescue, regions) {
                Ok(html) => ("text/html; charset=utf-8", Bytes::from(html)),
                Err(e) => {
                    tracing::error!(error = %e, "status page template failed; answering JSON");
                    ("application/json", self.json(rescue))
                }
            }
        } else {
            ("application/json", self.json(rescue))
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = rescue.status();
        let h = response.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(RETRY_AFTER, self.retry_after.clone());
        response
    }

    fn json(&self, rescue: Rescue) -> Bytes {
        let error = match rescue {
            Rescue::ClientTimeout => "request_timeout",
            _ => "service_unavailable",
        };
        let body = JsonBody {
            error,
            reason: rescue.as_str(),
            message: &self.brand.title,
            incident: None,
            retry_after: self.brand.retry_after.as_secs().max(1),
        };
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }
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

    #[test]
    fn browsers_get_the_branded_page_with_its_headers() {
        let pages = StatusPages::new(&brand()).unwrap();
        let regions = [
            PublicRegion {
                name: "us".into(),
                up: false,
            },
            PublicRegion {
                name: "eu".into(),
                up: true,
            },
        ];
        let r = pages.respond(
            Rescue::NoRegion,
            &regions,
            &headers("text/html,application/xhtml+xml,*/*;q=0.8"),
        );
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
            !html.contains("src=\"http"),
            "the page loads nothing from elsewhere"
        );
    }

    #[test]
    fn other_clients_get_json() {
        let pages = StatusPages::new(&brand()).unwrap();
        for accept in ["*/*", "application/json", "text/html;q=0"] {
            let r = pages.respond(Rescue::BackendTimeout, &[], &headers(accept));
            assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
            assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
            let v: serde_json::Value = serde_json::from_str(&body(r)).unwrap();
            assert_eq!(v["error"], "service_unavailable");
            assert_eq!(v["reason"], "backend_timeout");
            assert_eq!(v["retry_after"], 17);
        }
        let r = pages.respond(Rescue::BackendFailed, &[], &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn an_operator_template_replaces_the_default_and_a_broken_one_is_refused() {
        let mut b = brand();
        b.template = Some("<p>{{ brand }} / {{ status }}</p>".into());
        let pages = StatusPages::new(&b).unwrap();
        let html = body(pages.respond(Rescue::BackendFailed, &[], &headers("text/html")));
        assert_eq!(html, "<p>Acme &lt;Cloud&gt; / 502</p>");
        b.template = Some("{% if %}".into());
        assert!(StatusPages::new(&b).is_err());
    }
}
