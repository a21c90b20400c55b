//! Validation of `[dns]`: the name servers backend host names are resolved
//! with, and the bounds on how long their answers are kept.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::error::Issues;
use super::file::DnsFile;
use super::validate::{duration_within, span};
use super::Dns;

/// Checks `[dns]`; every key has a default.
pub(super) fn check_dns(issues: &mut Issues, dns: DnsFile) -> Dns {
    let DnsFile {
        nameservers,
        min_ttl,
        max_ttl,
        timeout,
    } = dns;
    let defaults = Dns::default();
    let mut servers = Vec::new();
    for server in nameservers.iter().flatten() {
        match nameserver(server.get_ref()) {
            Some(addr) => servers.push(addr),
            None => issues.at(
                span(server),
                "dns.nameservers",
                format!(
                    "invalid name server \"{}\": expected IP or IP:PORT such as \"10.96.0.10\" or \"10.96.0.10:53\"",
                    server.get_ref()
                ),
            ),
        }
    }
    let bounds = (Duration::from_millis(100), Duration::from_secs(24 * 3600));
    let min = duration_within(
        issues,
        "dns.min_ttl",
        min_ttl.as_ref(),
        defaults.min_ttl,
        bounds,
    );
    let max = duration_within(
        issues,
        "dns.max_ttl",
        max_ttl.as_ref(),
        defaults.max_ttl,
        bounds,
    );
    if min > max {
        let at = max_ttl.as_ref().or(min_ttl.as_ref()).map(span);
        issues.at(
            at.unwrap_or(0..0),
            "dns.max_ttl",
            format!(
                "max_ttl ({}) is shorter than min_ttl ({}): records could not be kept as long as min_ttl asks",
                humantime_serde::re::humantime::format_duration(max),
                humantime_serde::re::humantime::format_duration(min)
            ),
        );
    }
    Dns {
        nameservers: servers,
        min_ttl: min,
        max_ttl: max,
        timeout: duration_within(
            issues,
            "dns.timeout",
            timeout.as_ref(),
            defaults.timeout,
            (Duration::from_millis(10), Duration::from_secs(60)),
        ),
    }
}

/// `IP`, `IP:PORT` or `[IPv6]:PORT`; port 53 when none is given.
fn nameserver(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    text.parse::<SocketAddr>().ok().or_else(|| {
        text.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

#[cfg(test)]
mod tests {
    use super::nameserver;

    #[test]
    fn a_name_server_takes_port_53_unless_one_is_given() {
        assert_eq!(nameserver("10.0.0.1"), Some("10.0.0.1:53".parse().unwrap()));
        assert_eq!(
            nameserver("10.0.0.1:5353"),
            Some("10.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(nameserver("::1"), Some("[::1]:53".parse().unwrap()));
        assert_eq!(nameserver("[::1]:54"), Some("[::1]:54".parse().unwrap()));
        assert_eq!(nameserver("dns.local"), None);
        assert_eq!(nameserver("10.0.0.1:x"), None);
    }
}
