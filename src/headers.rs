//! Header hygiene for forwarded messages (RFC 9110 §7.6): hop-by-hop headers
//! are removed in both directions, and requests gain `X-Forwarded-*` and `Via`.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue, CONNECTION, HOST, VIA};
use http::{HeaderMap, Version};

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection and are never forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Names listed in Connection are hop-by-hop too; collect before removing
    // Connection itself. Most messages have none, so nothing is allocated.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        // Connection cannot make Meridian drop the headers it relies on.
        if name != HOST {
            headers.remove(&name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn via_value(version: Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        Version::HTTP_09 => "0.9 meridian",
        Version::HTTP_10 => "1.0 meridian",
        Version::HTTP_2 => "2.0 meridian",
        Version::HTTP_3 => "3.0 meridian",
        _ => "1.1 meridian",
    })
}

/// Appends this hop to `Via`, keeping earlier hops.
fn append_via(headers: &mut HeaderMap, version: Version) {
    headers.append(VIA, via_value(version));
}

/// Prepares a client's request headers for a backend: removes hop-by-hop
/// headers, appends the client to `X-Forwarded-For`, sets
/// `X-Forwarded-Proto` and `X-Forwarded-Host`, and appends `Via`. `Host` is
/// left as it is; the proxy decides it per backend.
pub fn forward_request(
    headers: &mut HeaderMap,
    version: Version,
    client: IpAddr,
    proto: &'static str,
) {
    strip_hop_by_hop(headers);

    // Several X-Forwarded-For lines are one comma-separated list; one
    // string holds it all, with the client last.
    let mut forwarded_for = String::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        if let Ok(v) = value.to_str() {
            forwarded_for.push_str(v);
            forwarded_for.push_str(", ");
        }
    }
    let _ = write!(forwarded_for, "{client}");
    if let Ok(v) = HeaderValue::try_from(forwarded_for) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match headers.get(HOST).cloned() {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
    append_via(headers, version);
}

/// Prepares a backend's response headers for the client.
pub fn forward_response(headers: &mut HeaderMap, version: Version) {
    strip_hop_by_hop(headers);
    append_via(headers, version);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn all(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret, x-other"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic abc"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "3"),
            ("cookie", "a=b"),
        ]);
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept", "cookie"]);
    }

    #[test]
    fn connection_cannot_remove_host() {
        let mut h = map(&[("host", "app.example"), ("connection", "host")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(all(&h, "host"), vec!["app.example"]);
    }

    #[test]
    fn forwarded_for_is_appended_and_proto_host_via_are_set() {
        let mut h = map(&[
            ("host", "app.example"),
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "forged.example"),
            ("via", "1.1 cdn"),
        ]);
        forward_request(
            &mut h,
            Version::HTTP_11,
            "203.0.113.7".parse().unwrap(),
            "http",
        );
        assert_eq!(
            all(&h, "x-forwarded-for"),
            vec!["198.51.100.1, 198.51.100.2, 203.0.113.7"]
        );
        assert_eq!(all(&h, "x-forwarded-proto"), vec!["http"]);
        assert_eq!(all(&h, "x-forwarded-host"), vec!["app.example"]);
        assert_eq!(all(&h, "via"), vec!["1.1 cdn", "1.1 meridian"]);
        assert_eq!(all(&h, "host"), vec!["app.example"]);
    }

    #[test]
    fn first_hop_starts_the_lists() {
        let mut h = map(&[]);
        forward_request(
            &mut h,
            Version::HTTP_10,
            "2001:db8::1".parse().unwrap(),
            "http",
        );
        assert_eq!(all(&h, "x-forwarded-for"), vec!["2001:db8::1"]);
        assert_eq!(all(&h, "via"), vec!["1.0 meridian"]);
        assert!(h.get("x-forwarded-host").is_none());
    }

    #[test]
    fn host_is_left_to_the_proxy() {
        let mut h = map(&[("host", "app.example")]);
        forward_request(
            &mut h,
            Version::HTTP_11,
            "192.0.2.1".parse().unwrap(),
            "http",
        );
        assert_eq!(all(&h, "host"), vec!["app.example"]);
    }

    #[test]
    fn responses_lose_hop_by_hop_headers_and_gain_via() {
        let mut h = map(&[
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/plain"),
        ]);
        forward_response(&mut h, Version::HTTP_11);
        assert_eq!(all(&h, "content-type"), vec!["text/plain"]);
        assert_eq!(all(&h, "via"), vec!["1.1 meridian"]);
        assert!(h.get("connection").is_none() && h.get("transfer-encoding").is_none());
    }
}
