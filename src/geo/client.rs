//! The client's address: the socket peer, or — only when the peer is a
//! trusted proxy — the right-most untrusted hop named by the one forwarding
//! header the trusted proxies maintain: `X-Forwarded-For` (the default) or
//! `Forwarded` (RFC 7239). The other header is never read, since a client can
//! send it through proxies that do not touch it. A forged header from an
//! untrusted peer changes nothing, and one forged hop in front of a trusted
//! chain is never believed over the hop a trusted proxy saw.

use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderName, FORWARDED};
use http::HeaderMap;
use ipnet::IpNet;

pub use crate::config::ForwardingHeader;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The networks whose forwarding header is believed (`geo.trusted_proxies`),
/// and which header that is (`geo.forwarding_header`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: ForwardingHeader,
}

impl TrustedProxies {
    /// Trusts `nets` to maintain `header`.
    pub fn new(nets: Vec<IpNet>, header: ForwardingHeader) -> Self {
        TrustedProxies { nets, header }
    }

    /// Whether `ip` is one of them.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// Whether any network is trusted at all.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

/// The socket peer, with IPv4-mapped IPv6 addresses turned back into IPv4
/// so that IPv4 CIDRs match them.
pub fn peer_ip(peer: SocketAddr) -> IpAddr {
    peer.ip().to_canonical()
}

/// The client's address for a request from `peer` carrying `headers`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let mut hops = Hops::default();
    match trusted.header {
        ForwardingHeader::Forwarded => {
            for v in headers.get_all(FORWARDED) {
                let v = v.as_bytes();
                // A quote left open would swallow the elements a proxy
                // appended after it: such a line is split on every comma.
                let quotes = balanced_quotes(v);
                for_each_element(v, quotes, |e| hops.push(forwarded_for(e)));
            }
        }
        ForwardingHeader::XForwardedFor => {
            for v in headers.get_all(X_FORWARDED_FOR) {
                // Quotes mean nothing in X-Forwarded-For.
                for_each_element(v.as_bytes(), false, |e| hops.push(parse_node(trim(e))));
            }
        }
    }
    rightmost_untrusted(peer, &hops, trusted)
}

/// Whether every quoted string of a header value is closed.
fn balanced_quotes(value: &[u8]) -> bool {
    let (mut quoted, mut escaped) = (false, false);
    for &b in value {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ => {}
        }
    }
    !quoted
}

/// Hops kept from a forwarding header: the nearest ones, which are all a
/// walk from the right can reach through trusted proxies.
const MAX_HOPS: usize = 16;

/// The last [`MAX_HOPS`] hops of a header, on the stack.
#[derive(Default)]
struct Hops {
    ring: [Option<IpAddr>; MAX_HOPS],
    pushed: usize,
}

impl Hops {
    fn push(&mut self, hop: Option<IpAddr>) {
        self.ring[self.pushed % MAX_HOPS] = hop;
        self.pushed += 1;
    }

    /// The kept hops, nearest first.
    fn nearest_first(&self) -> impl Iterator<Item = Option<IpAddr>> + '_ {
        let kept = self.pushed.min(MAX_HOPS);
        (1..=kept).map(move |k| self.ring[(self.pushed - k) % MAX_HOPS])
    }
}

/// Walks the hops from the nearest: the first untrusted one is the client.
/// A hop that is not an address (`unknown`, an obfuscated name, garbage)
/// ends the walk at the last trusted hop, as does a chain of trusted hops
/// (longer than [`MAX_HOPS`], at its `MAX_HOPS`-th hop).
fn rightmost_untrusted(peer: IpAddr, hops: &Hops, trusted: &TrustedProxies) -> IpAddr {
    let mut client = peer;
    for hop in hops.nearest_first() {
        let Some(ip) = hop else {
            return client;
        };
        let ip = ip.to_canonical();
        if !trusted.contains(ip) {
            return ip;
        }
        client = ip;
    }
    client
}

/// Calls `f` with each non-empty element of a comma-separated header value;
/// with `quotes`, commas inside quoted strings stay in their element.
fn for_each_element<'a>(value: &'a [u8], quotes: bool, mut f: impl FnMut(&'a [u8])) {
    let mut emit = |e: &'a [u8]| {
        if !trim(e).is_empty() {
            f(e);
        }
    };
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &b) in value.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' if quotes => quoted = !quoted,
            b',' if !quoted => {
                emit(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    emit(&value[start..]);
}

fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

/// The `for=` node of one `Forwarded` element, if it is an address and
/// the only one.
fn forwarded_for(element: &[u8]) -> Option<IpAddr> {
    let names_for = |pair: &[u8]| {
        let pair = trim(pair);
        pair.len() > 3
            && pair[..3].eq_ignore_ascii_case(b"for")
            && trim(&pair[3..]).starts_with(b"=")
    };
    if element
        .split(|&b| b == b';')
        .filter(|p| names_for(p))
        .count()
        != 1
    {
        return None;
    }
    element.split(|&b| b == b';').find_map(|pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (&pair[..eq], &pair[eq + 1..]);
        if !trim(name).eq_ignore_ascii_case(b"for") {
            return None;
        }
        let value = trim(value);
        let value = match value {
            [b'"', inner @ .., b'"'] => inner,
            v => v,
        };
        Some(parse_node(value))
    })?
}

/// An address as a node of `Forwarded` or `X-Forwarded-For` writes it:
/// `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]`, `[2001:db8::1]:4711`, or
/// a bare IPv6 address.
fn parse_node(node: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(node).ok()?;
    if let Some(rest) = text.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        if !(after.is_empty() || valid_port(after.strip_prefix(':')?)) {
            return None;
        }
        return ip.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    let (ip, port) = text.rsplit_once(':')?;
    if !valid_port(port) {
        return None;
    }
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// A port, or an obfuscated one (`_abc`), as RFC 7239 §6 allows.
fn valid_port(port: &str) -> bool {
    port.parse::<u16>().is_ok()
        || (port.starts_with('_')
            && port.len() > 1
            && port[1..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]
    }

    fn trusted() -> TrustedProxies {
        TrustedProxies::new(nets(), ForwardingHeader::XForwardedFor)
    }

    fn trusted_fwd() -> TrustedProxies {
        TrustedProxies::new(nets(), ForwardingHeader::Forwarded)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("forwarded", "for=198.51.100.2"),
        ]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), &h, &trusted()),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &TrustedProxies::default()),
            ip("10.0.0.1"),
            "nothing trusted, nothing believed"
        );
    }

    #[test]
    fn x_forwarded_for_gives_the_rightmost_untrusted_hop() {
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7, 10.0.0.5")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted()),
            ip("198.51.100.7")
        );
        // Split over two header lines, in order.
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "198.51.100.7, 10.0.0.5"),
        ]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted()),
            ip("198.51.100.7")
        );
        // Every hop trusted: the farthest.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.5")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("10.9.9.9"));
        // Ports, brackets, mapped addresses.
        let h = headers(&[("x-forwarded-for", "198.51.100.7:5555")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted()),
            ip("198.51.100.7")
        );
        let h = headers(&[("x-forwarded-for", "[2001:db8::7]:443")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("2001:db8::7"));
        let h = headers(&[("x-forwarded-for", "::ffff:198.51.100.7")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted()),
            ip("198.51.100.7")
        );
        let h = headers(&[("x-forwarded-for", "2001:db8::9")]);
        assert_eq!(client_ip(ip("fd00::1"), &h, &trusted()), ip("2001:db8::9"));
    }

    #[test]
    fn garbage_ends_the_walk_at_the_last_trusted_hop() {
        let h = headers(&[("x-forwarded-for", "198.51.100.7, not-an-ip, 10.0.0.5")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("10.0.0.5"));
        let h = headers(&[("x-forwarded-for", "garbage")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("10.0.0.1"));
        let h = headers(&[("x-forwarded-for", "")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_is_parsed_per_rfc_7239_when_configured() {
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            (
                "forwarded",
                "for=192.0.2.60;proto=http;by=203.0.113.43, For=\"[2001:db8:cafe::17]:4711\"",
            ),
        ]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted_fwd()),
            ip("2001:db8:cafe::17")
        );
        let h = headers(&[("forwarded", "for=192.0.2.43, for=10.0.0.3;proto=https")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted_fwd()),
            ip("192.0.2.43")
        );
        let h = headers(&[("forwarded", "for=\"192.0.2.43:80\"")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted_fwd()),
            ip("192.0.2.43")
        );
        let h = headers(&[("forwarded", "proto=https;for=\"[2001:db8::1]\";by=x")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted_fwd()),
            ip("2001:db8::1")
        );
        // A quoted comma does not split an element.
        let h = headers(&[("forwarded", "for=192.0.2.9;ext=\"a,b\"")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted_fwd()),
            ip("192.0.2.9")
        );
        // unknown, obfuscated, and elements without for= stop at the trusted hop.
        for v in [
            "for=unknown",
            "for=_hidden",
            "proto=http",
            "for=\"[2001:db8::1\"",
        ] {
            let h = headers(&[("forwarded", v)]);
            assert_eq!(
                client_ip(ip("10.0.0.1"), &h, &trusted_fwd()),
                ip("10.0.0.1"),
                "{v}"
            );
        }
        // An obfuscated port is fine.
        let h = headers(&[("forwarded", "for=\"192.0.2.43:_p1\"")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted_fwd()),
            ip("192.0.2.43")
        );
    }

    #[test]
    fn only_the_configured_header_is_read() {
        // Proxies that append to X-Forwarded-For pass a client's Forwarded on.
        let h = headers(&[
            ("forwarded", "for=9.9.9.9"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted()),
            ip("198.51.100.7")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted_fwd()), ip("9.9.9.9"));
        let h = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted_fwd()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn an_open_quote_cannot_swallow_the_hop_a_proxy_appended() {
        // A proxy appending to the client's own line.
        let h = headers(&[("forwarded", "for=9.9.9.9;x=\", for=198.51.100.7")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted_fwd()),
            ip("198.51.100.7")
        );
        // Quotes mean nothing in X-Forwarded-For.
        let h = headers(&[("x-forwarded-for", "\", 198.51.100.7")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted()),
            ip("198.51.100.7")
        );
        // Two for= in one element: neither is believed.
        let h = headers(&[("forwarded", "for=9.9.9.9;for=198.51.100.7")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted_fwd()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn a_long_trusted_chain_is_walked_to_its_kept_end() {
        let mut chain: Vec<String> = vec!["198.51.100.9".into()];
        chain.extend((0..40).map(|i| format!("10.0.0.{i}")));
        let h = headers(&[("x-forwarded-for", &chain.join(", "))]);
        // The 16 nearest hops are kept: the walk ends at the farthest of them.
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("10.0.0.24"));
        let h = headers(&[("x-forwarded-for", &chain[..10].join(", "))]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted()),
            ip("198.51.100.9")
        );
    }

    #[test]
    fn peers_are_canonical() {
        let peer: SocketAddr = "[::ffff:10.1.2.3]:5000".parse().unwrap();
        assert_eq!(peer_ip(peer), ip("10.1.2.3"));
    }
}
