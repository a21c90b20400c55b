//! Header hygiene for forwarded messages (RFC 9110 §7.6): hop-by-hop headers
//! are removed in both directions, and requests gain `X-Forwarded-*` and `Via`.
//! The one exception is a WebSocket handshake, whose `Connection: upgrade`
//! and `Upgrade: websocket` are put back after the hygiene.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{
    Entry, HeaderName, HeaderValue, CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION,
    SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, TE, TRAILER, TRANSFER_ENCODING,
    UPGRADE, VIA,
};
use http::{HeaderMap, Method, Version};

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection and are never forwarded. Parsed
/// names, not strings: removing by a string parses it on every call.
static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Removes hop-by-hop headers, including every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names present, each compared with the nine, instead
    // of a hashed lookup per hop-by-hop name: most messages carry none of
    // them, or only `Connection: keep-alive`.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // Names listed in Connection are hop-by-hop too; collect before
        // removing Connection itself. Tokens that are hop-by-hop anyway
        // (`keep-alive`, `upgrade`) or name nothing present (`close`) cost
        // no allocation.
        let mut named: Vec<HeaderName> = Vec::new();
        let tokens = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim);
        for token in tokens {
            let hop = HOP_BY_HOP
                .iter()
                .any(|h| h.as_str().eq_ignore_ascii_case(token));
            // A hashed lookup: a client's long list costs one per token.
            if hop || !headers.contains_key(token) {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                // Connection cannot make Meridian drop the headers it relies on.
                if name != HOST {
                    named.push(name);
                }
            }
        }
        for name in named {
            headers.remove(&name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
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
    // Up to four headers are added; one growth instead of several.
    headers.reserve(4);

    // Several X-Forwarded-For lines are one comma-separated list; one
    // string holds it all, with the client last.
    let mut forwarded_for = String::new();
    let entry = headers.entry(X_FORWARDED_FOR);
    if let Entry::Occupied(earlier) = &entry {
        for value in earlier.iter() {
            if let Ok(v) = value.to_str() {
                forwarded_for.push_str(v);
                forwarded_for.push_str(", ");
            }
        }
    }
    push_ip(&mut forwarded_for, client);
    if let Ok(v) = HeaderValue::try_from(forwarded_for) {
        // Replaces every earlier line with the one list.
        match entry {
            Entry::Occupied(mut earlier) => {
                earlier.insert(v);
            }
            Entry::Vacant(first) => {
                first.insert(v);
            }
        }
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

/// Appends `ip` in its usual text form. IPv4, by far the most common, is
/// written digit by digit: `Display` for addresses pads through a
/// formatter and costs more than the rest of the header work together.
fn push_ip(out: &mut String, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        let _ = write!(out, "{ip}");
        return;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
}

/// Whether `Connection` lists `token`, compared case-insensitively.
pub fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The first entry of the comma-separated header `name` whose name (before
/// any `/version`) is `token`, compared case-insensitively.
fn lists(headers: &HeaderMap, name: HeaderName, token: &str) -> Option<HeaderValue> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        // A protocol may carry a version (`websocket/13`); the name decides.
        .find(|t| {
            t.split('/')
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case(token))
        })
        .and_then(|t| HeaderValue::from_str(t).ok())
}

/// The protocol an HTTP/1.1 WebSocket handshake asks for (its `websocket`
/// token from `Upgrade`, as the client spelled it): a GET whose `Connection`
/// lists `upgrade`. `None` for any other request, whose `Upgrade` (`h2c`,
/// say) stays hop-by-hop and is removed.
pub fn websocket_upgrade(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Option<HeaderValue> {
    // HTTP/2 has no Upgrade (RFC 9113 §8.2.2); WebSocket over it uses
    // extended CONNECT instead.
    if method != Method::GET || version != Version::HTTP_11 {
        return None;
    }
    lists(headers, CONNECTION, "upgrade")?;
    lists(headers, UPGRADE, "websocket")
}

/// Whether a request is a WebSocket handshake over HTTP/2 (RFC 8441): an
/// extended CONNECT whose `:protocol` is `websocket`.
pub fn websocket_connect(
    method: &Method,
    version: Version,
    protocol: Option<&hyper::ext::Protocol>,
) -> bool {
    method == Method::CONNECT
        && version == Version::HTTP_2
        && protocol.is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// Turns the head of an RFC 8441 handshake into the HTTP/1.1 one a backend
/// expects (RFC 6455 §4.1): a GET with a fresh `Sec-WebSocket-Key`, which
/// HTTP/2 clients do not send, and version 13 unless the client named one.
/// `Connection` and `Upgrade` are added by [`restore_upgrade`].
pub fn websocket_over_http1(headers: &mut HeaderMap, key: [u8; 16]) {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    if let Ok(key) = HeaderValue::from_str(&key) {
        headers.insert(SEC_WEBSOCKET_KEY, key);
    }
    headers
        .entry(SEC_WEBSOCKET_VERSION)
        .or_insert(HeaderValue::from_static("13"));
}

/// Turns a backend's `101` into the `200` that accepts an RFC 8441
/// handshake: no `Sec-WebSocket-Accept`, which has no meaning over HTTP/2.
pub fn websocket_accepted_over_http2(headers: &mut HeaderMap) {
    headers.remove(SEC_WEBSOCKET_ACCEPT);
}

/// Whether a backend's `101` switches to WebSocket, the only protocol
/// Meridian tunnels.
pub fn switches_to_websocket(headers: &HeaderMap) -> bool {
    lists(headers, UPGRADE, "websocket").is_some()
}

/// Puts back, after [`strip_hop_by_hop`], the two headers that ask the next
/// hop to switch to `protocol`.
pub fn restore_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, protocol);
}

/// Prepares a backend's response headers for the client.
pub fn forward_response(headers: &mut HeaderMap, version: Version) {
    strip_hop_by_hop(headers);
    append_via(headers, version);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_are_written_as_display_writes_them() {
        let octets = [0u8, 1, 9, 10, 42, 99, 100, 101, 199, 200, 250, 255];
        for &a in &octets {
            for &b in &octets {
                let v4 = std::net::Ipv4Addr::new(a, b, b, a);
                let mut out = String::new();
                push_ip(&mut out, IpAddr::V4(v4));
                assert_eq!(out, v4.to_string());
            }
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let mut out = String::from("x, ");
        push_ip(&mut out, v6);
        assert_eq!(out, "x, 2001:db8::1");
    }

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
        // Removal reorders the rest; the order of different names carries
        // no meaning (RFC 9110 §5.3).
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["cookie", "x-kept"]);
    }

    #[test]
    fn only_an_http2_extended_connect_for_websocket_is_an_rfc8441_handshake() {
        let ws = hyper::ext::Protocol::from_static("WebSocket");
        let other = hyper::ext::Protocol::from_static("connect-udp");
        assert!(websocket_connect(
            &Method::CONNECT,
            Version::HTTP_2,
            Some(&ws)
        ));
        assert!(!websocket_connect(
            &Method::CONNECT,
            Version::HTTP_2,
            Some(&other)
        ));
        assert!(!websocket_connect(&Method::CONNECT, Version::HTTP_2, None));
        assert!(!websocket_connect(&Method::GET, Version::HTTP_2, Some(&ws)));
        assert!(!websocket_connect(
            &Method::CONNECT,
            Version::HTTP_11,
            Some(&ws)
        ));
    }

    #[test]
    fn an_rfc8441_handshake_gets_a_fresh_key_and_keeps_a_given_version() {
        let mut h = map(&[
            ("sec-websocket-key", "client-sent"),
            ("sec-websocket-protocol", "chat"),
        ]);
        websocket_over_http1(&mut h, [7; 16]);
        assert_eq!(h["sec-websocket-key"], "BwcHBwcHBwcHBwcHBwcHBw==");
        assert_eq!(h.get_all("sec-websocket-key").iter().count(), 1);
        assert_eq!(h["sec-websocket-version"], "13");
        assert_eq!(h["sec-websocket-protocol"], "chat");
        let mut h = map(&[("sec-websocket-version", "8")]);
        websocket_over_http1(&mut h, [0; 16]);
        assert_eq!(h["sec-websocket-version"], "8");
        let mut h = map(&[
            ("sec-websocket-accept", "x"),
            ("sec-websocket-protocol", "chat"),
        ]);
        websocket_accepted_over_http2(&mut h);
        assert!(h.get("sec-websocket-accept").is_none());
        assert_eq!(h["sec-websocket-protocol"], "chat");
    }

    #[test]
    fn only_an_http11_get_asking_for_websocket_is_an_upgrade() {
        let ws = |method: Method, version: Version, pairs: &[(&str, &str)]| {
            websocket_upgrade(&method, version, &map(pairs)).map(|v| v.to_str().unwrap().to_owned())
        };
        let handshake = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert_eq!(
            ws(Method::GET, Version::HTTP_11, &handshake).as_deref(),
            Some("WebSocket"),
            "case-insensitive, and the client's spelling is kept"
        );
        assert_eq!(
            ws(
                Method::GET,
                Version::HTTP_11,
                &[("connection", "upgrade"), ("upgrade", "h2c, websocket/13")]
            )
            .as_deref(),
            Some("websocket/13"),
            "only the websocket token goes on"
        );
        for pairs in [
            &[("connection", "upgrade"), ("upgrade", "h2c")][..],
            &[("upgrade", "websocket")][..],
            &[("connection", "close"), ("upgrade", "websocket")][..],
            &[("connection", "upgrade")][..],
            &[("connection", "upgrade"), ("upgrade", "websockets")][..],
        ] {
            assert_eq!(ws(Method::GET, Version::HTTP_11, pairs), None, "{pairs:?}");
        }
        assert_eq!(ws(Method::POST, Version::HTTP_11, &handshake), None);
        assert_eq!(ws(Method::GET, Version::HTTP_10, &handshake), None);
        assert_eq!(ws(Method::GET, Version::HTTP_2, &handshake), None);
    }

    #[test]
    fn a_websocket_handshake_keeps_its_upgrade_after_hygiene() {
        let mut h = map(&[
            ("connection", "Upgrade, x-secret"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        let protocol = websocket_upgrade(&Method::GET, Version::HTTP_11, &h).unwrap();
        strip_hop_by_hop(&mut h);
        restore_upgrade(&mut h, protocol);
        assert_eq!(all(&h, "connection"), vec!["upgrade"]);
        assert_eq!(all(&h, "upgrade"), vec!["websocket"]);
        assert!(h.get("x-secret").is_none());
        assert_eq!(
            all(&h, "sec-websocket-key"),
            vec!["dGhlIHNhbXBsZSBub25jZQ=="]
        );
        assert!(switches_to_websocket(&h));
        assert!(!switches_to_websocket(&map(&[("upgrade", "h2c")])));
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        for hop in &HOP_BY_HOP {
            let mut h = map(&[("x-kept", "1"), (hop.as_str(), "v"), ("cookie", "a=b")]);
            strip_hop_by_hop(&mut h);
            let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(names, vec!["x-kept", "cookie"], "{hop}");
        }
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_untouched() {
        let pairs = [("host", "app.example"), ("x-one", "1"), ("accept", "*/*")];
        let mut h = map(&pairs);
        strip_hop_by_hop(&mut h);
        assert_eq!(h, map(&pairs));
    }

    #[test]
    fn any_header_named_in_connection_goes_whatever_its_case() {
        let mut h = map(&[
            ("connection", "Close, X-Hop"),
            ("close", "a header, oddly"),
            ("x-hop", "1"),
            ("x-kept", "2"),
        ]);
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
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
