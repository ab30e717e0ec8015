//! Which hosts a source may be fetched from. The platform fetches sources from inside the
//! cluster, so a URL pointing at loopback, a private network, link-local (cloud metadata at
//! 169.254.169.254) or a cluster-internal name would let a submission reach what it must not.
//!
//! Two checks, one rule set: the parser checks the URL as written ([`refused_host`]); a public
//! name can still resolve to a private address (DNS rebinding), so the context-uploader checks
//! every address it is about to connect to ([`refused_ip`]) and connects only to those.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::Host;

/// Domain suffixes that only resolve inside a cluster or a private network.
const INTERNAL_SUFFIXES: &[&str] = &[
    ".localhost",
    ".local",
    ".localdomain",
    ".internal",
    ".intranet",
    ".lan",
    ".home.arpa",
    ".svc",
    ".cluster.local",
];

/// Why `host` is refused as a source host, or `None` when it may be fetched from.
pub fn refused_host(host: &Host<&str>) -> Option<String> {
    match host {
        Host::Ipv4(ip) => refused_ip(IpAddr::V4(*ip)),
        Host::Ipv6(ip) => refused_ip(IpAddr::V6(*ip)),
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" {
                return Some("localhost is the platform itself".into());
            }
            if !name.contains('.') {
                return Some(format!(
                    "{name:?} is a single-label name, which resolves to a cluster-internal service; use a fully qualified public name"
                ));
            }
            INTERNAL_SUFFIXES
                .iter()
                .find(|suffix| name.ends_with(*suffix))
                .map(|suffix| {
                    format!("{name:?} ends with {suffix:?}, a private or cluster-internal domain")
                })
        }
    }
}

/// Why `ip` is refused (loopback, private, link-local, …), or `None` for a public address.
pub fn refused_ip(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4).map(|why| format!("{v4} is {why}")),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return refused_v4(v4).map(|why| format!("{v6} embeds {v4}, which is {why}"));
            }
            refused_v6(v6).map(|why| format!("{v6} is {why}"))
        }
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match () {
        () if ip.is_loopback() => "a loopback address",
        () if ip.is_private() => "a private address (RFC 1918)",
        () if ip.is_link_local() => "link-local (cloud metadata lives there)",
        () if a == 0 => "an unspecified ('this network') address",
        () if a == 100 && (64..128).contains(&b) => "carrier-grade NAT space (RFC 6598)",
        () if a == 192 && b == 0 && ip.octets()[2] == 0 => "IETF protocol assignment space",
        () if a == 198 && (b == 18 || b == 19) => "benchmarking space (RFC 2544)",
        () if ip.is_multicast() => "a multicast address",
        () if a >= 240 => "reserved or broadcast space",
        () => return None,
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(match () {
        () if ip.is_loopback() => "the loopback address",
        () if ip.is_unspecified() => "the unspecified address",
        () if first == 0x64 && ip.segments()[1] == 0xff9b && ip.segments()[2] == 1 => {
            "the local-use NAT64 prefix (RFC 8215), which translates to private networks"
        }
        () if first & 0xfe00 == 0xfc00 => "a unique local address (private)",
        () if first & 0xffc0 == 0xfe80 => "link-local",
        () if first & 0xffc0 == 0xfec0 => "site-local (private)",
        () if first & 0xff00 == 0xff00 => "a multicast address",
        () => return None,
    })
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible, NAT64
/// (`64:ff9b::/96`) or 6to4 (`2002::/16`) IPv6 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let mapped = s[..5] == [0; 5] && s[5] == 0xffff;
    let compatible = s[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified();
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4];
    if s[0] == 0x2002 {
        // 6to4: the IPv4 address is the 32 bits after the prefix.
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    (mapped || compatible || nat64).then_some(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_that_reach_inside_are_refused_in_every_spelling() {
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::7f00:1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "fd00::1",
            "fe80::1",
        ] {
            let ip: IpAddr = refused.parse().unwrap();
            assert!(refused_ip(ip).is_some(), "{refused} must be refused");
        }
        for public in ["93.184.216.34", "2606:2800:220:1::1", "2002:5db8:d822::1"] {
            let ip: IpAddr = public.parse().unwrap();
            assert_eq!(refused_ip(ip), None, "{public} is public");
        }
    }
}
