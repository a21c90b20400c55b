//! A client's region chosen for it rather than by geography: a pin header
//! from a trusted peer (operators, synthetic checks), or a sticky-region
//! cookie that keeps a user who was failed over on the region that served
//! them, so that they are not bounced between regions mid-session.

use std::time::Duration;

use http::header::{HeaderName, COOKIE};
use http::{HeaderMap, HeaderValue};

use crate::config::Region;

/// The region named by `header`, if the request carries one that exists.
pub fn pinned_region(
    headers: &HeaderMap,
    header: &HeaderName,
    regions: &[Region],
) -> Option<usize> {
    let name = headers.get(header)?.to_str().ok()?.trim();
    regions.iter().position(|r| r.name == name)
}

/// The region named by the cookie `cookie`, if the request carries one that exists.
pub fn sticky_region(headers: &HeaderMap, cookie: &str, regions: &[Region]) -> Option<usize> {
    let value = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name.trim() == cookie).then(|| value.trim().trim_matches('"'))
        })?;
    regions.iter().position(|r| r.name == value)
}

/// The `Set-Cookie` value that keeps a user on `region` for `ttl`.
pub fn sticky_cookie(cookie: &str, region: &Region, ttl: Duration) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{cookie}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
        region.name,
        ttl.as_secs()
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn regions() -> Vec<Region> {
        Config::parse(
            "t.toml",
            "[[region]]\nname = \"us\"\nbackends = [\"http://10.0.0.1:80\"]\n[[region]]\nname = \"eu\"\nbackends = [\"http://10.0.0.2:80\"]\n",
        )
        .unwrap()
        .regions
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_pin_header_names_a_region() {
        let pin = HeaderName::from_static("x-meridian-pin");
        let r = regions();
        assert_eq!(
            pinned_region(&headers(&[("x-meridian-pin", "eu")]), &pin, &r),
            Some(1)
        );
        assert_eq!(
            pinned_region(&headers(&[("x-meridian-pin", " us ")]), &pin, &r),
            Some(0)
        );
        assert_eq!(
            pinned_region(&headers(&[("x-meridian-pin", "mars")]), &pin, &r),
            None
        );
        assert_eq!(pinned_region(&headers(&[]), &pin, &r), None);
    }

    #[test]
    fn the_sticky_cookie_is_found_among_others() {
        let r = regions();
        let h = headers(&[("cookie", "a=1; meridian_region=eu; b=2")]);
        assert_eq!(sticky_region(&h, "meridian_region", &r), Some(1));
        let h = headers(&[("cookie", "a=1"), ("cookie", "meridian_region=\"us\"")]);
        assert_eq!(sticky_region(&h, "meridian_region", &r), Some(0));
        let h = headers(&[("cookie", "x_meridian_region=eu")]);
        assert_eq!(sticky_region(&h, "meridian_region", &r), None);
        let h = headers(&[("cookie", "meridian_region=mars")]);
        assert_eq!(sticky_region(&h, "meridian_region", &r), None);
    }

    #[test]
    fn the_cookie_is_set_for_the_whole_site() {
        let r = regions();
        let v = sticky_cookie("meridian_region", &r[1], Duration::from_secs(1800)).unwrap();
        assert_eq!(
            v,
            "meridian_region=eu; Path=/; Max-Age=1800; HttpOnly; SameSite=Lax"
        );
    }
}
