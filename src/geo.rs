//! The client's preferred region: `[[geo.override]]` CIDRs (longest prefix
//! wins), then `geo.default_region`. The GeoIP database lookup slots in
//! between the two.

use std::net::{IpAddr, SocketAddr};

use crate::config::Geo;

/// The client address of a connection, with IPv4-mapped IPv6 addresses
/// turned back into IPv4 so that IPv4 CIDRs match them.
pub fn client_ip(peer: SocketAddr) -> IpAddr {
    peer.ip().to_canonical()
}

/// Index of the region preferred for a client at `ip`.
pub fn preferred_region(geo: &Geo, ip: IpAddr) -> usize {
    geo.overrides
        .iter()
        .filter(|o| o.net.contains(&ip))
        .max_by_key(|o| o.net.prefix_len())
        .map_or(geo.default_region, |o| o.region)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GeoOverride;

    fn geo() -> Geo {
        let o = |net: &str, region| GeoOverride {
            net: net.parse().unwrap(),
            region,
        };
        Geo {
            default_region: 0,
            overrides: vec![
                o("10.0.0.0/8", 1),
                o("10.1.0.0/16", 2),
                o("2001:db8::/32", 1),
                o("10.1.2.3/32", 3),
            ],
        }
    }

    #[test]
    fn longest_prefix_wins_whatever_the_order() {
        let g = geo();
        assert_eq!(preferred_region(&g, "10.9.9.9".parse().unwrap()), 1);
        assert_eq!(preferred_region(&g, "10.1.9.9".parse().unwrap()), 2);
        assert_eq!(preferred_region(&g, "10.1.2.3".parse().unwrap()), 3);
        assert_eq!(preferred_region(&g, "2001:db8::1".parse().unwrap()), 1);
    }

    #[test]
    fn unmatched_clients_get_the_default_region() {
        assert_eq!(preferred_region(&geo(), "192.0.2.1".parse().unwrap()), 0);
        assert_eq!(preferred_region(&geo(), "2001:db9::1".parse().unwrap()), 0);
    }

    #[test]
    fn ipv4_mapped_addresses_match_ipv4_networks() {
        let peer: SocketAddr = "[::ffff:10.1.2.3]:5000".parse().unwrap();
        assert_eq!(client_ip(peer), "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(preferred_region(&geo(), client_ip(peer)), 3);
    }
}
