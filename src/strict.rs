//! Checks of a request head that hyper's parser leaves to the application,
//! made before anything is forwarded: framing that two parsers could read
//! differently (RFC 9112 §6), a missing or repeated `Host`, an HTTP/2
//! `:authority` naming another host than `Host`, and `CONNECT`. (An HTTP/1
//! absolute-form target wins over `Host`, as RFC 9112 §3.2.2 says; neither
//! ever chooses where Meridian connects.)
//!
//! hyper already refuses malformed request lines, header names and values
//! (NUL, bare CR, control characters), obsolete line folding, whitespace
//! before the colon, malformed or differing `Content-Length` values and
//! `Transfer-Encoding` whose last coding is not `chunked`. `Content-Length`
//! with `Transfer-Encoding`, which hyper resolves silently, is caught
//! beneath it by `framing`. hyper's cap on the head is a read buffer size,
//! which a head sent in one piece can pass, so the head's size is checked
//! here too. What remains is checked here, as a pure function of the head.

use http::header::{HeaderValue, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode, Uri, Version};

/// Why a request is answered by Meridian without being forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status of the answer.
    pub status: StatusCode,
    /// One sentence for the client, and the log.
    pub reason: &'static str,
    /// The connection is closed after the answer: what follows the head on
    /// it cannot be framed with confidence.
    pub close: bool,
}

impl Refusal {
    fn new(status: StatusCode, reason: &'static str, close: bool) -> Self {
        Refusal {
            status,
            reason,
            close,
        }
    }
}

/// The methods Meridian forwards, for the `Allow` header of a `405`.
pub const ALLOWED: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE";

/// What a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// `limits.max_header_bytes`: the most an HTTP/1 head may take, its
    /// request line and each field counted as sent (name, value, `: ` and
    /// CRLF).
    pub max_head: usize,
    /// The request is an HTTP/2 extended CONNECT that opens a WebSocket,
    /// the one CONNECT Meridian carries.
    pub tunnel: bool,
}

/// Checks a request head, collapsing repeated identical `Content-Length`
/// values into one.
pub fn check(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &mut HeaderMap,
    rules: Rules,
) -> Result<(), Refusal> {
    if version < Version::HTTP_2 {
        size(method, uri, headers, rules.max_head)?;
    }
    if method == Method::CONNECT && !rules.tunnel {
        return Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Meridian is not a forward proxy: CONNECT is not allowed.",
            false,
        ));
    }
    if version < Version::HTTP_2 {
        transfer_coding(version, headers)?;
    }
    // HTTP/2 carries its own framing, but a repeated `Content-Length` would
    // reach an HTTP/1 backend as two lines.
    content_length(headers)?;
    host(uri, version, headers)
}

/// The size of an HTTP/1 head: `414` for a request line, `431` for the
/// whole head over `max`.
fn size(method: &Method, uri: &Uri, headers: &HeaderMap, max: usize) -> Result<(), Refusal> {
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    // "METHOD TARGET HTTP/1.1\r\n": two spaces, eight bytes, CRLF.
    let line = method.as_str().len() + target + 12;
    if line > max {
        return Err(Refusal::new(
            StatusCode::URI_TOO_LONG,
            "The request target is too long.",
            true,
        ));
    }
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if line + fields + 2 > max {
        return Err(Refusal::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "The request head is too large.",
            true,
        ));
    }
    Ok(())
}

/// `Transfer-Encoding` of an HTTP/1 request. (hyper already refuses it in
/// HTTP/1.0, and drops `Content-Length` beside it; both are checked again
/// here so that this function alone states the rules.)
fn transfer_coding(version: Version, headers: &HeaderMap) -> Result<(), Refusal> {
    let bad = |reason| Err(Refusal::new(StatusCode::BAD_REQUEST, reason, true));
    if headers.contains_key(TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return bad("Transfer-Encoding is not allowed in an HTTP/1.0 request.");
        }
        if headers.contains_key(CONTENT_LENGTH) {
            return bad("A request cannot have both Content-Length and Transfer-Encoding.");
        }
        let mut codings = Vec::new();
        for value in headers.get_all(TRANSFER_ENCODING) {
            let Ok(text) = value.to_str() else {
                return bad("Transfer-Encoding is not valid.");
            };
            codings.extend(text.split(',').map(|c| c.trim().to_ascii_lowercase()));
        }
        if codings != ["chunked"] {
            if codings.last().map(String::as_str) != Some("chunked")
                || codings.iter().filter(|c| *c == "chunked").count() > 1
                || codings.iter().any(String::is_empty)
            {
                return bad("Transfer-Encoding must end with chunked, once.");
            }
            return Err(Refusal::new(
                StatusCode::NOT_IMPLEMENTED,
                "Only the chunked transfer coding is supported.",
                true,
            ));
        }
    }
    Ok(())
}

/// `Content-Length`: digits only, every value the same; repeated identical
/// values are collapsed into one.
fn content_length(headers: &mut HeaderMap) -> Result<(), Refusal> {
    let bad = |reason| Err(Refusal::new(StatusCode::BAD_REQUEST, reason, true));
    let mut length: Option<&str> = None;
    let mut repeated = false;
    for value in headers.get_all(CONTENT_LENGTH) {
        let Ok(text) = value.to_str() else {
            return bad("Content-Length is not valid.");
        };
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return bad("Content-Length is not valid.");
            }
            match length {
                None => length = Some(part),
                Some(seen) if seen.trim_start_matches('0') == part.trim_start_matches('0') => {
                    repeated = true;
                }
                Some(_) => return bad("Content-Length values differ."),
            }
        }
    }
    if let (true, Some(length)) = (repeated, length) {
        let one = HeaderValue::from_str(length).expect("digits make a header value");
        headers.insert(CONTENT_LENGTH, one);
    }
    Ok(())
}

/// `Host`: one in HTTP/1.1, at most one in HTTP/2, a valid authority, and
/// in HTTP/2 the same host as `:authority` (RFC 9113 §8.3.1).
fn host(uri: &Uri, version: Version, headers: &HeaderMap) -> Result<(), Refusal> {
    let bad = |reason| Err(Refusal::new(StatusCode::BAD_REQUEST, reason, false));
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return bad("A request has one Host header.");
    }
    let Some(host) = host else {
        return if version == Version::HTTP_11 {
            bad("An HTTP/1.1 request needs a Host header.")
        } else {
            Ok(())
        };
    };
    // RFC 9112 §3.2: an empty Host is what a target without authority gets.
    if host.is_empty() {
        return Ok(());
    }
    let Some((name, port)) = host.to_str().ok().and_then(host_and_port) else {
        return bad("The Host header is not a valid host.");
    };
    if let Some(target) = uri.authority().filter(|_| version >= Version::HTTP_2) {
        let default = if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        let same = target.host().eq_ignore_ascii_case(name)
            && target.port_u16().unwrap_or(default) == port.unwrap_or(default);
        if !same {
            return bad("The :authority and Host headers name different hosts.");
        }
    }
    Ok(())
}

/// `host[:port]` of RFC 9110 §7.2, read without allocating: a registered
/// name (unreserved characters, sub-delimiters, percent escapes) or an IP
/// literal in brackets, and an optional port.
fn host_and_port(text: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let end = rest.find(']')?;
            let literal = &rest[..end];
            let ok = !literal.is_empty()
                && literal
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            if !ok {
                return None;
            }
            (&text[..end + 2], &rest[end + 1..])
        }
        None => {
            let end = text.find(':').unwrap_or(text.len());
            let name = &text[..end];
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b));
            if !ok {
                return None;
            }
            (name, &text[end..])
        }
    };
    let port = match port.strip_prefix(':') {
        None if port.is_empty() => None,
        None => return None,
        // An empty port is allowed, and means the default.
        Some("") => None,
        Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => Some(digits.parse().ok()?),
        Some(_) => return None,
    };
    Some((name, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        method: &str,
        uri: &str,
        version: Version,
        headers: &[(&str, &str)],
    ) -> (Result<(), Refusal>, HeaderMap) {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let rules = Rules {
            max_head: 1024,
            tunnel: false,
        };
        let result = check(&method, &uri.parse().unwrap(), version, &mut map, rules);
        (result, map)
    }

    fn status(method: &str, uri: &str, version: Version, headers: &[(&str, &str)]) -> u16 {
        match run(method, uri, version, headers).0 {
            Ok(()) => 0,
            Err(r) => r.status.as_u16(),
        }
    }

    const V11: Version = Version::HTTP_11;
    const H: (&str, &str) = ("host", "example.com");

    #[test]
    fn ordinary_requests_pass() {
        assert_eq!(status("GET", "/", V11, &[H]), 0);
        assert_eq!(status("POST", "/", V11, &[H, ("content-length", "5")]), 0);
        let chunked = ("transfer-encoding", "Chunked");
        assert_eq!(status("POST", "/", V11, &[H, chunked]), 0);
        assert_eq!(
            status("GET", "/", Version::HTTP_10, &[]),
            0,
            "1.0 needs no Host"
        );
        assert_eq!(status("GET", "/", Version::HTTP_2, &[]), 0);
        assert_eq!(status("GET", "http://EXAMPLE.com/", V11, &[H]), 0);
        assert_eq!(status("GET", "/", V11, &[("host", "example.com:8080")]), 0);
        assert_eq!(status("GET", "/", V11, &[("host", "[::1]:80")]), 0);
    }

    #[test]
    fn framing_two_parsers_could_read_differently_is_refused_and_closes() {
        let te = |v| ("transfer-encoding", v);
        type Case<'a> = (&'a [(&'a str, &'a str)], Version, u16);
        let cases: [Case; 9] = [
            (&[H, ("content-length", "5"), te("chunked")], V11, 400),
            (&[H, te("chunked")], Version::HTTP_10, 400),
            (&[H, te("gzip")], V11, 400),
            (&[H, te("chunked, gzip")], V11, 400),
            (&[H, te("chunked"), te("chunked")], V11, 400),
            (&[H, te("chunked,")], V11, 400),
            (&[H, te("gzip, chunked")], V11, 501),
            (&[H, te("foo, chunked")], V11, 501),
            (
                &[H, ("content-length", "5"), ("content-length", "6")],
                V11,
                400,
            ),
        ];
        for (headers, version, want) in cases {
            let (result, _) = run("POST", "/", version, headers);
            let refusal = result.expect_err("refused");
            assert_eq!(refusal.status.as_u16(), want, "{headers:?}");
            assert!(refusal.close, "{headers:?}: the connection closes");
        }
        for bad in ["+5", "-1", "5a", " ", "0x5", "99999999999999999999"] {
            let (result, _) = run("POST", "/", V11, &[H, ("content-length", bad)]);
            assert_eq!(result.unwrap_err().status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn identical_content_lengths_collapse_into_one() {
        let (result, headers) = run(
            "POST",
            "/",
            V11,
            &[H, ("content-length", "5, 5"), ("content-length", "05")],
        );
        assert_eq!(result, Ok(()));
        let all: Vec<_> = headers.get_all(CONTENT_LENGTH).iter().collect();
        assert_eq!(all, ["5"]);
    }

    #[test]
    fn host_must_be_there_once_and_agree_with_the_target() {
        assert_eq!(status("GET", "/", V11, &[]), 400);
        assert_eq!(status("GET", "/", V11, &[("host", "")]), 0, "RFC 9112 §3.2");
        let h2 = Version::HTTP_2;
        let https = "https://example.com/";
        assert_eq!(status("GET", https, h2, &[("host", "example.com:443")]), 0);
        assert_eq!(status("GET", "https://example.com:443/", h2, &[H]), 0);
        assert_eq!(status("GET", https, h2, &[("host", "EXAMPLE.com")]), 0);
        assert_eq!(status("GET", https, h2, &[("host", "example.com:80")]), 400);
        assert_eq!(
            status(
                "POST",
                "/",
                h2,
                &[("content-length", "1"), ("content-length", "2")]
            ),
            400
        );
        assert_eq!(status("GET", "/", V11, &[H, ("host", "other")]), 400);
        assert_eq!(status("GET", "/", V11, &[H, H]), 400);
        assert_eq!(
            status("GET", "/", V11, &[("host", "user@example.com")]),
            400
        );
        assert_eq!(status("GET", "/", V11, &[("host", "exa mple.com")]), 400);
        assert_eq!(status("GET", "/", V11, &[("host", "example.com/x")]), 400);
        assert_eq!(
            status("GET", "http://other.example/", V11, &[H]),
            0,
            "in HTTP/1 the target wins over Host"
        );
        assert_eq!(
            status(
                "GET",
                "https://example.com/",
                Version::HTTP_2,
                &[("host", "evil")]
            ),
            400
        );
        let (result, _) = run("GET", "/", V11, &[]);
        assert!(
            !result.unwrap_err().close,
            "a Host problem leaves the framing sound"
        );
    }

    #[test]
    fn host_and_port_are_read_as_rfc_9110_says() {
        assert_eq!(host_and_port("example.com"), Some(("example.com", None)));
        assert_eq!(host_and_port("a.b:8080"), Some(("a.b", Some(8080))));
        assert_eq!(host_and_port("a.b:"), Some(("a.b", None)));
        assert_eq!(host_and_port("[::1]:80"), Some(("[::1]", Some(80))));
        assert_eq!(host_and_port("[::1]"), Some(("[::1]", None)));
        for bad in [
            "u@a", "a b", "a/b", ":80", "a:8x", "a:99999", "[::1", "[]", "[::1]x", "a:1:2",
        ] {
            assert_eq!(host_and_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn connect_is_refused_unless_it_opens_a_websocket() {
        assert_eq!(status("CONNECT", "evil.example:443", V11, &[H]), 405);
        let mut headers = HeaderMap::new();
        let uri: Uri = "https://example.com/chat".parse().unwrap();
        let rules = Rules {
            max_head: 1024,
            tunnel: true,
        };
        let ws = check(&Method::CONNECT, &uri, Version::HTTP_2, &mut headers, rules);
        assert_eq!(ws, Ok(()));
    }

    #[test]
    fn an_http1_head_over_the_cap_is_refused_with_414_or_431() {
        // Request line "GET /aaa… HTTP/1.1\r\n": 3 + path + 12 bytes.
        let path = |n: usize| format!("/{}", "a".repeat(n - 1));
        // Line and final CRLF: 3 + 1007 + 12 + 2 = 1024, the cap.
        assert_eq!(
            status("GET", &path(1007), V11, &[]),
            400,
            "fits; Host missing"
        );
        assert_eq!(status("GET", &path(1010), V11, &[H]), 414);
        assert_ne!(status("GET", &path(1009), V11, &[H]), 414, "the line fits");
        let value = "v".repeat(1000);
        let big = [H, ("x-big", value.as_str())];
        let (result, _) = run("GET", "/", V11, &big);
        let refusal = result.unwrap_err();
        assert_eq!(refusal.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert!(refusal.close);
        assert_eq!(
            status("GET", "/", Version::HTTP_2, &big),
            0,
            "HTTP/2 has its own limit"
        );
        // "GET / HTTP/1.1\r\n" 16, Host 4 + 11 + 4, x-big 5 + n + 4, CRLF 2.
        let fits = "v".repeat(1024 - 16 - 19 - 9 - 2);
        assert_eq!(status("GET", "/", V11, &[H, ("x-big", fits.as_str())]), 0);
        let over = format!("{fits}v");
        assert_eq!(status("GET", "/", V11, &[H, ("x-big", over.as_str())]), 431);
    }
}
