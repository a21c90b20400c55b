//! Property tests of the parsers and rewriters that see hostile input: the
//! forwarding headers, the request checks, the request-head rewriting, the
//! request-framing scanner and the configuration file. Arbitrary input never panics, and never yields a
//! header value with CR, LF or NUL.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};
use meridian::config::{Config, ForwardingHeader};
use meridian::framing::{Ambiguity, Scanner};
use meridian::geo::{client_ip, TrustedProxies};
use meridian::headers::forward_request;
use meridian::strict::{check, Rules};
use proptest::prelude::*;

/// Header names worth colliding with, and arbitrary tokens.
fn name() -> impl Strategy<Value = HeaderName> {
    prop_oneof![
        prop::sample::select(vec![
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "upgrade",
            "x-forwarded-for",
            "forwarded",
            "via",
            "te",
            "keep-alive",
            "x-forwarded-host",
            "proxy-connection",
        ])
        .prop_map(HeaderName::from_static),
        "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,20}"
            .prop_map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap()),
    ]
}

/// Values as a client could send them: any bytes a header value may hold,
/// weighted towards the separators the parsers split on.
fn value() -> impl Strategy<Value = HeaderValue> {
    let byte = prop_oneof![
        3 => prop::sample::select(b",;=\" \t:[]/\\0123456789abcdef.unknownchunked".to_vec()),
        1 => any::<u8>(),
    ];
    prop::collection::vec(byte, 0..60)
        .prop_filter_map("not a header value", |v| HeaderValue::from_bytes(&v).ok())
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((name(), value()), 0..12).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(n, v);
        }
        map
    })
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn clean(headers: &HeaderMap) -> bool {
    headers
        .values()
        .all(|v| !v.as_bytes().iter().any(|b| matches!(b, b'\r' | b'\n' | 0)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_client_address_is_the_peer_or_a_hop_the_header_names(
        peer in ip(),
        headers in headers(),
        forwarded in any::<bool>(),
    ) {
        let header = if forwarded { ForwardingHeader::Forwarded } else { ForwardingHeader::XForwardedFor };
        let all = "0.0.0.0/0".parse().unwrap();
        let trusted = TrustedProxies::new(vec![all, "::/0".parse().unwrap()], header);
        let client = client_ip(peer, &headers, &trusted);
        let named = headers.values().any(|v| {
            String::from_utf8_lossy(v.as_bytes()).contains(&client.to_string())
                || matches!(client, IpAddr::V4(v4) if String::from_utf8_lossy(v.as_bytes())
                    .contains(&v4.to_ipv6_mapped().to_string()))
        });
        prop_assert!(client == peer.to_canonical() || client == peer || named, "{client} from {headers:?}");
    }

    #[test]
    fn rewriting_a_request_head_keeps_every_value_clean_and_drops_hop_by_hop(
        mut headers in headers(),
        client in ip(),
        tls in any::<bool>(),
    ) {
        forward_request(&mut headers, Version::HTTP_11, client, if tls { "https" } else { "http" });
        prop_assert!(clean(&headers));
        for hop in ["connection", "upgrade", "te", "keep-alive", "proxy-connection"] {
            prop_assert!(!headers.contains_key(hop), "{hop} kept: {headers:?}");
        }
        let xff = headers.get("x-forwarded-for").map(|v| v.to_str().unwrap_or_default().to_owned());
        let client_text = client.to_string();
        prop_assert!(xff.is_none_or(|x| x.ends_with(&client_text)));
        let via = headers.get_all("via").iter().next_back();
        prop_assert!(via.is_some_and(|v| v.as_bytes() == b"1.1 meridian"), "{headers:?}");
    }

    #[test]
    fn a_request_head_that_passes_the_checks_has_one_framing_and_one_host(
        method in prop::sample::select(vec!["GET", "POST", "PUT", "CONNECT", "OPTIONS"]),
        uri in prop::sample::select(vec!["/", "/a?b", "http://a/x", "*", "a:443"]),
        version in prop::sample::select(vec![Version::HTTP_10, Version::HTTP_11, Version::HTTP_2]),
        mut headers in headers(),
    ) {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let uri: Uri = uri.parse().unwrap();
        let rules = Rules { max_head: 64 * 1024, tunnel: false };
        let passed = check(&method, &uri, version, &mut headers, rules).is_ok();
        prop_assert!(clean(&headers));
        if passed {
            prop_assert!(method != Method::CONNECT);
            prop_assert!(headers.get_all("host").iter().count() <= 1);
            if version < Version::HTTP_2 {
                let te = headers.get_all("transfer-encoding").iter().count();
                let cl = headers.get_all("content-length").iter().count();
                prop_assert!(te == 0 || cl == 0, "{headers:?}");
                prop_assert!(cl <= 1, "{headers:?}");
                if te > 0 {
                    prop_assert_eq!(te, 1);
                    let v = headers["transfer-encoding"].to_str().unwrap().trim().to_ascii_lowercase();
                    prop_assert_eq!(v, "chunked");
                }
            }
        }
    }

    #[test]
    fn the_framing_scanner_reads_any_bytes_the_same_however_they_are_split(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            prop::collection::vec(
                prop::sample::select(vec![
                    &b"POST / HTTP/1.1\r\n"[..], b"Content-Length: 3\r\n",
                    b"Transfer-Encoding: chunked\r\n", b"\r\n", b"3\r\n", b"abc",
                    b"0\r\n", b"\n", b" ", b":", b"PRI * HTTP/2.0\r\n", b"ffff",
                ]),
                0..30,
            )
            .prop_map(|parts| parts.concat()),
        ],
        split in any::<prop::sample::Index>(),
    ) {
        let mut whole = Scanner::default();
        whole.feed(&bytes);
        let at = split.index(bytes.len() + 1);
        let mut parts = Scanner::default();
        parts.feed(&bytes[..at]);
        parts.feed(&bytes[at..]);
        prop_assert_eq!(whole.ambiguous(), parts.ambiguous());
        prop_assert_eq!(whole.stopped(), parts.stopped());
    }

    #[test]
    fn well_framed_pipelines_pass_and_a_smuggler_among_them_is_named(
        requests in prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 0..80), any::<bool>(), 1usize..20),
            1..5,
        ),
        smuggler in any::<prop::sample::Index>(),
    ) {
        // Bodies of arbitrary bytes, which may look like heads themselves,
        // framed by Content-Length or by chunks of `size` bytes.
        let framed: Vec<Vec<u8>> = requests
            .iter()
            .map(|(body, chunked, size)| {
                let mut r = b"POST /p HTTP/1.1\r\nHost: a\r\n".to_vec();
                if *chunked {
                    r.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                    for chunk in body.chunks(*size) {
                        r.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                        r.extend_from_slice(chunk);
                        r.extend_from_slice(b"\r\n");
                    }
                    r.extend_from_slice(b"0\r\n\r\n");
                } else {
                    r.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                    r.extend_from_slice(body);
                }
                r
            })
            .collect();
        let mut scanner = Scanner::default();
        scanner.feed(&framed.concat());
        prop_assert_eq!(scanner.ambiguous(), None);

        let k = smuggler.index(framed.len());
        let mut with_smuggler = framed[..k].concat();
        with_smuggler.extend_from_slice(
            b"POST /s HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        );
        with_smuggler.extend_from_slice(&framed[k..].concat());
        let mut scanner = Scanner::default();
        scanner.feed(&with_smuggler);
        prop_assert_eq!(
            scanner.ambiguous(),
            Some((k as u64 + 1, Ambiguity::LengthAndCoding))
        );
    }

    #[test]
    fn any_configuration_text_is_accepted_or_refused_with_a_line_in_the_file(
        text in prop_oneof![
            any::<String>(),
            // Mutations of a valid file: a line removed, doubled or cut.
            (0usize..40, 0usize..3, 0usize..40).prop_map(|(line, how, cut)| mutate(line, how, cut)),
        ],
    ) {
        match Config::parse("prop.toml", &text) {
            Ok(_) => {}
            Err(e) => {
                let lines = text.lines().count().max(1);
                for issue in e.issues() {
                    prop_assert!(issue.line <= lines + 1, "{issue} beyond {lines} lines");
                    prop_assert_eq!(&issue.file, "prop.toml");
                }
            }
        }
    }
}

const VALID: &str = r#"[listen]
http = "127.0.0.1:8080"

[admin]
listen = "127.0.0.1:9901"

[geo]
default_region = "us"
trusted_proxies = ["10.0.0.0/8"]
forwarding_header = "forwarded"

[[geo.override]]
cidr = "203.0.113.0/24"
region = "eu"

[[region]]
name = "us"
countries = ["US", "CA"]
failover = ["eu"]
backends = ["http://10.1.0.10:8080", { url = "https://api.internal", domain = "node-a" }]
min_healthy = 1

[region.health]
path = "/healthz"
interval = "1s"
expect_status = ["200-299"]

[[region]]
name = "eu"
continents = ["EU"]
backends = ["http://web.eu.svc:8080"]

[proxy]
max_attempts = 3

[limits]
max_connections = 100

[dns]
min_ttl = "1s"
"#;

/// `VALID` with line `line` removed (0), doubled (1) or cut at `cut` (2).
fn mutate(line: usize, how: usize, cut: usize) -> String {
    let lines: Vec<&str> = VALID.lines().collect();
    let line = line % lines.len();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if i != line {
            out.push((*l).to_owned());
            continue;
        }
        match how {
            0 => {}
            1 => {
                out.push((*l).to_owned());
                out.push((*l).to_owned());
            }
            _ => out.push(l.chars().take(cut).collect()),
        }
    }
    out.join("\n")
}

#[test]
fn the_base_of_the_configuration_mutations_is_valid() {
    Config::parse("prop.toml", VALID).unwrap();
}
