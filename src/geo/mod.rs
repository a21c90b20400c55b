//! Where a client is and which region should serve it: the client's address
//! (`client`), what a GeoIP database says of it (`db`, with the built-in
//! country → continent table in `continents`), and the mapping to a region:
//! `[[geo.override]]` CIDRs (longest prefix wins), then the region claiming
//! the country, then the region claiming the continent, then
//! `geo.default_region`. A pin header from a trusted peer or a sticky-region
//! cookie (`pin`) may choose instead. `watch` re-opens the database file
//! when it changes.

mod client;
mod continents;
mod db;
mod pin;
mod watch;

pub use client::{client_ip, peer_ip, ForwardingHeader, TrustedProxies};
pub use continents::continent_of;
pub use db::{DbError, GeoDb, Place, BUILT_IN_NAME};
pub use pin::{pinned_region, sticky_cookie, sticky_region};
pub use watch::watch;

use std::net::IpAddr;

use crate::config::{Config, GeoOverride};

/// Why a client's preferred region is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A `[[geo.override]]` CIDR contains the client.
    Override,
    /// A region claims the client's country.
    Country,
    /// A region claims the client's continent.
    Continent,
    /// Nothing matched: `geo.default_region`.
    Default,
    /// A trusted peer named the region in the pin header.
    Pin,
    /// The sticky-region cookie named a region that can serve.
    Sticky,
}

impl Why {
    /// The lower-case name used in the access log.
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Override => "override",
            Why::Country => "country",
            Why::Continent => "continent",
            Why::Default => "default",
            Why::Pin => "pin",
            Why::Sticky => "sticky",
        }
    }
}

/// Where a client is, and the region preferred for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Country and continent, as far as the database knows.
    pub place: Place,
    /// Index of the preferred region.
    pub region: usize,
    /// How the region was chosen.
    pub why: Why,
}

/// Slots of the country table: one per pair of letters.
const COUNTRY_SLOTS: usize = 26 * 26;

fn country_slot(code: [u8; 2]) -> Option<usize> {
    let [a, b] = code;
    (a.is_ascii_uppercase() && b.is_ascii_uppercase())
        .then(|| usize::from(a - b'A') * 26 + usize::from(b - b'A'))
}

/// The mapping from places to regions, built once from the configuration so
/// that a lookup allocates nothing.
#[derive(Debug, Clone)]
pub struct Locator {
    overrides: Vec<GeoOverride>,
    countries: Box<[Option<u16>]>,
    continents: Vec<([u8; 2], usize)>,
    default_region: usize,
}

impl Locator {
    /// The mapping of `config`.
    pub fn new(config: &Config) -> Locator {
        let mut countries = vec![None; COUNTRY_SLOTS].into_boxed_slice();
        let mut continents = Vec::new();
        for (i, r) in config.regions.iter().enumerate() {
            let index = u16::try_from(i).unwrap_or(u16::MAX);
            for c in &r.countries {
                if let Some(slot) = two_letters(c).and_then(country_slot) {
                    countries[slot].get_or_insert(index);
                }
            }
            for c in &r.continents {
                if let Some(code) = two_letters(c) {
                    continents.push((code, i));
                }
            }
        }
        let mut overrides = config.geo.overrides.clone();
        // Longest prefix first, so that the first match wins.
        overrides.sort_by_key(|o| std::cmp::Reverse(o.net.prefix_len()));
        Locator {
            overrides,
            countries,
            continents,
            default_region: config.geo.default_region,
        }
    }

    /// The preferred region of a client at `ip`, using `db` unless an
    /// override decides first.
    pub fn locate(&self, db: &GeoDb, ip: IpAddr) -> Location {
        if let Some(o) = self.overrides.iter().find(|o| o.net.contains(&ip)) {
            return Location {
                place: Place::default(),
                region: o.region,
                why: Why::Override,
            };
        }
        let place = db.place(ip);
        self.map(place)
    }

    /// The region for a known place.
    pub fn map(&self, place: Place) -> Location {
        let by_country = place
            .country
            .and_then(country_slot)
            .and_then(|slot| self.countries[slot]);
        if let Some(region) = by_country {
            return Location {
                place,
                region: usize::from(region),
                why: Why::Country,
            };
        }
        let by_continent = place
            .continent
            .and_then(|c| self.continents.iter().find(|(code, _)| *code == c));
        if let Some(&(_, region)) = by_continent {
            return Location {
                place,
                region,
                why: Why::Continent,
            };
        }
        Location {
            place,
            region: self.default_region,
            why: Why::Default,
        }
    }
}

fn two_letters(text: &str) -> Option<[u8; 2]> {
    match text.as_bytes() {
        &[a, b] => Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()]),
        _ => None,
    }
}

/// A two-letter code as logs write it, `-` when unknown; writing it allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(pub Option<[u8; 2]>);

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some([a, b]) if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                write!(f, "{}{}", char::from(a), char::from(b))
            }
            _ => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            "t.toml",
            r#"
            [geo]
            default_region = "ap"
            [[geo.override]]
            cidr = "10.0.0.0/8"
            region = "eu"
            [[geo.override]]
            cidr = "10.1.0.0/16"
            region = "ap"
            [[geo.override]]
            cidr = "2001:db8::/32"
            region = "eu"
            [[region]]
            name = "us"
            countries = ["US", "CA"]
            continents = ["NA", "SA"]
            backends = ["http://10.0.0.1:80"]
            [[region]]
            name = "eu"
            countries = ["GB"]
            continents = ["EU", "AF"]
            backends = ["http://10.0.0.2:80"]
            [[region]]
            name = "ap"
            backends = ["http://10.0.0.3:80"]
            "#,
        )
        .unwrap()
    }

    fn place(country: Option<&[u8; 2]>, continent: Option<&[u8; 2]>) -> Place {
        Place {
            country: country.copied(),
            continent: continent.copied(),
        }
    }

    #[test]
    fn country_then_continent_then_default() {
        let l = Locator::new(&config());
        let m = |c, k| {
            let loc = l.map(place(c, k));
            (loc.region, loc.why)
        };
        assert_eq!(m(Some(b"US"), Some(b"NA")), (0, Why::Country));
        assert_eq!(m(Some(b"GB"), Some(b"EU")), (1, Why::Country));
        // A country no region claims falls to its continent...
        assert_eq!(m(Some(b"MX"), Some(b"NA")), (0, Why::Continent));
        assert_eq!(m(Some(b"DE"), Some(b"EU")), (1, Why::Continent));
        // ...and a country claimed wins over its continent's region.
        assert_eq!(m(Some(b"GB"), Some(b"NA")), (1, Why::Country));
        assert_eq!(m(Some(b"JP"), Some(b"AS")), (2, Why::Default));
        assert_eq!(m(None, None), (2, Why::Default));
        assert_eq!(m(None, Some(b"SA")), (0, Why::Continent));
    }

    #[test]
    fn overrides_win_longest_prefix_first_before_any_lookup() {
        let l = Locator::new(&config());
        let db = GeoDb::built_in();
        let at = |ip: &str| {
            let loc = l.locate(&db, ip.parse().unwrap());
            (loc.region, loc.why)
        };
        assert_eq!(at("10.9.9.9"), (1, Why::Override));
        assert_eq!(at("10.1.9.9"), (2, Why::Override));
        assert_eq!(at("2001:db8::1"), (1, Why::Override));
        // 8.8.8.8 is registered in the US in the built-in database.
        assert_eq!(at("8.8.8.8"), (0, Why::Country));
        assert_eq!(at("192.168.1.1"), (2, Why::Default));
    }

    #[test]
    fn codes_are_written_as_two_letters() {
        assert_eq!(Code(Some(*b"US")).to_string(), "US");
        assert_eq!(Code(None).to_string(), "-");
        assert_eq!(Code(Some(*b"u1")).to_string(), "-");
    }
}
