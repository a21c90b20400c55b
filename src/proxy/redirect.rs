//! `listen.redirect_to_https`: plain HTTP answered with `308` to the same
//! URL over HTTPS, except what must stay reachable over plain HTTP.

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, HOST, LOCATION};
use http::{Request, Response, StatusCode};
use http_body_util::Full;

use crate::body::ResponseBody;

/// Paths answered over plain HTTP even when redirecting: ACME's HTTP-01
/// challenges must be, and the status page's poll is harmless.
const KEEP_PLAIN: [&str; 2] = [
    "/.well-known/acme-challenge/",
    crate::status_page::STATUS_PATH,
];

/// The redirect for `request` to the HTTPS listener on `port`, or `None`
/// when it is served over plain HTTP.
pub(super) fn to_https<B>(port: u16, request: &Request<B>) -> Option<Response<ResponseBody>> {
    let path = request.uri().path();
    if KEEP_PLAIN.iter().any(|keep| path.starts_with(keep)) {
        return None;
    }
    let location = request
        .uri()
        .host()
        .map(str::to_owned)
        .or_else(|| {
            request
                .headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
                .map(|a| a.host().to_owned())
        })
        .and_then(|host| {
            let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
            let url = if port == 443 {
                format!("https://{host}{target}")
            } else {
                format!("https://{host}:{port}{target}")
            };
            HeaderValue::try_from(url).ok()
        });
    let (status, body) = match &location {
        Some(_) => (
            StatusCode::PERMANENT_REDIRECT,
            "This site is served over HTTPS.\n",
        ),
        None => (StatusCode::BAD_REQUEST, "A Host header is needed.\n"),
    };
    let mut response = Response::new(ResponseBody::local(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(location) = location {
        headers.insert(LOCATION, location);
    }
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(port: u16, uri: &str, host: Option<&str>) -> (u16, Option<String>) {
        let mut r = Request::get(uri);
        if let Some(h) = host {
            r = r.header(HOST, h);
        }
        match to_https(port, &r.body(()).unwrap()) {
            None => (0, None),
            Some(resp) => (
                resp.status().as_u16(),
                resp.headers()
                    .get(LOCATION)
                    .map(|l| l.to_str().unwrap().to_owned()),
            ),
        }
    }

    #[test]
    fn plain_requests_go_to_the_same_url_over_https() {
        let c443 = 443;
        assert_eq!(
            location(c443, "/cart?id=7", Some("shop.example.com:80")),
            (308, Some("https://shop.example.com/cart?id=7".into()))
        );
        assert_eq!(
            location(8443, "/", Some("shop.example.com")),
            (308, Some("https://shop.example.com:8443/".into()))
        );
        assert_eq!(
            location(c443, "http://a.example/x", None),
            (308, Some("https://a.example/x".into())),
            "absolute form"
        );
        assert_eq!(
            location(c443, "/", None),
            (400, None),
            "no host: no redirect anywhere"
        );
        assert_eq!(
            location(c443, "/", Some("evil.example/path")),
            (400, None),
            "a Host that is not an authority"
        );
    }

    #[test]
    fn acme_challenges_and_the_status_poll_stay_on_plain_http() {
        assert_eq!(
            location(443, "/.well-known/acme-challenge/abc", Some("a.example")),
            (0, None)
        );
        assert_eq!(
            location(443, crate::status_page::STATUS_PATH, Some("a.example")),
            (0, None)
        );
    }
}
