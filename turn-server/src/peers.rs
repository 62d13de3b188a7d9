//! Which peer addresses a relay may send to: the default denial of addresses that lead
//! into the server's own networks or are no Internet peer at all (the CVE-2020-26262
//! class), the operator's allow- and deny-lists. IPv6 addresses that lead to an IPv4
//! address (IPv4-mapped, NAT64, 6to4) are judged by that IPv4 address as well.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IP network, for allow-lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let p = u32::from(self.prefix.min(32));
                let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let p = u32::from(self.prefix.min(128));
                let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<IpNet, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: bad prefix length"))?
        };
        Ok(IpNet { addr, prefix })
    }
}

/// IPv4 networks denied by default: none of them is a peer on the public Internet, and each
/// may reach something of the server's own (its host, its LAN, a cloud metadata service).
const DENIED_V4: &[(u32, u8)] = &[
    (0x0000_0000, 8),  // 0.0.0.0/8 "this network"
    (0x0A00_0000, 8),  // 10.0.0.0/8 private
    (0x6440_0000, 10), // 100.64.0.0/10 shared CGNAT space (cloud metadata 100.100.100.200)
    (0x7F00_0000, 8),  // 127.0.0.0/8 loopback
    (0xA9FE_0000, 16), // 169.254.0.0/16 link-local (cloud metadata 169.254.169.254)
    (0xAC10_0000, 12), // 172.16.0.0/12 private
    (0xC000_0000, 24), // 192.0.0.0/24 IETF protocol assignments
    (0xC0A8_0000, 16), // 192.168.0.0/16 private
    (0xC612_0000, 15), // 198.18.0.0/15 benchmarking
    (0xE000_0000, 4),  // 224.0.0.0/4 multicast
    (0xF000_0000, 4),  // 240.0.0.0/4 reserved, with 255.255.255.255 broadcast
];

/// 64:ff9b::/96, the NAT64 well-known prefix.
const NAT64_WELL_KNOWN: (u128, u8) = (0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96);

/// IPv6 networks denied by default for themselves. IPv4-mapped (::ffff:0:0/96) and 6to4
/// (2002::/16) are not here: they are judged by the IPv4 address they lead to.
const DENIED_V6: &[(u128, u8)] = &[
    (0, 96),                                         // ::/96 IPv4-compatible, with :: and ::1
    NAT64_WELL_KNOWN,                                // 64:ff9b::/96 NAT64
    (0x0064_ff9b_0001_0000_0000_0000_0000_0000, 48), // 64:ff9b:1::/48 local-use NAT64
    (0xfc00_0000_0000_0000_0000_0000_0000_0000, 7),  // fc00::/7 unique local
    (0xfe80_0000_0000_0000_0000_0000_0000_0000, 10), // fe80::/10 link-local
    (0xfec0_0000_0000_0000_0000_0000_0000_0000, 10), // fec0::/10 site-local (deprecated)
    (0xff00_0000_0000_0000_0000_0000_0000_0000, 8),  // ff00::/8 multicast
];

fn in_v4(a: u32, (net, prefix): (u32, u8)) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    a & mask == net
}

fn in_v6(a: u128, (net, prefix): (u128, u8)) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    a & mask == net
}

/// Whether `ip` itself is in a range denied by default (not looking inside it).
fn own_range_denied(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => DENIED_V4.iter().any(|n| in_v4(u32::from(v4), *n)),
        IpAddr::V6(v6) => DENIED_V6.iter().any(|n| in_v6(u128::from(v6), *n)),
    }
}

/// The IPv4 address a packet to this IPv6 address ends up at, where the address says:
/// NAT64 with the well-known prefix (RFC 6052: the IPv4 in the low 32 bits) and 6to4
/// (RFC 3056: 2002:AABB:CCDD::/48 is tunnelled to AA.BB.CC.DD). The local-use NAT64 prefix
/// 64:ff9b:1::/48 may embed at several offsets (RFC 6052 §2.2), so it has no one answer and
/// stays denied for itself.
///
/// 6to4 is judged by that IPv4 address rather than denied whole: a 6to4 packet is
/// tunnelled to exactly that host, so checking it refuses every private or local
/// destination the prefix can reach, and a (rare) public 6to4 peer still works.
fn leads_to_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let a = u128::from(v6);
    if in_v6(a, NAT64_WELL_KNOWN) {
        return Some(Ipv4Addr::from(a as u32));
    }
    if v6.segments()[0] == 0x2002 {
        return Some(Ipv4Addr::from((a >> 80) as u32));
    }
    None
}

/// Whether relaying to `ip` is refused unless allow-listed: loopback, private, CGNAT,
/// link-local, multicast, reserved, broadcast and unspecified IPv4; IPv4-compatible,
/// unique- and site-local, link-local, multicast IPv6 and the NAT64 prefixes; and IPv4-mapped
/// and 6to4 addresses that lead to a denied IPv4 address.
pub fn denied_by_default(ip: IpAddr) -> bool {
    !allowed(ip, &[], &[])
}

/// Whether relaying to `ip` is allowed: never when `deny` lists it, otherwise unless it is
/// denied by default and `allow` does not list it. An IPv4-mapped address is its IPv4
/// address. A NAT64 or 6to4 address must pass both for itself and for the IPv4 address it
/// leads to, so allowing 64:ff9b::/96 opens public IPv4 through the NAT64 gateway, not the
/// private networks behind it (those need their own IPv4 entry in `allow`).
pub fn allowed(ip: IpAddr, allow: &[IpNet], deny: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        ip => ip,
    };
    if deny.iter().any(|n| n.contains(ip))
        || (own_range_denied(ip) && !allow.iter().any(|n| n.contains(ip)))
    {
        return false;
    }
    match ip {
        IpAddr::V6(v6) => leads_to_v4(v6).is_none_or(|v4| allowed(IpAddr::V4(v4), allow, deny)),
        IpAddr::V4(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// (address, denied by default?, why).
    const DEFAULT_MATRIX: &[(&str, bool, &str)] = &[
        // 0.0.0.0/8 "this network"
        ("0.0.0.0", true, "0/8 first"),
        ("0.1.2.3", true, "0/8 middle"),
        ("0.255.255.255", true, "0/8 last"),
        ("1.0.0.0", false, "above 0/8"),
        // 10.0.0.0/8
        ("9.255.255.255", false, "below 10/8"),
        ("10.0.0.0", true, "10/8 first"),
        ("10.128.0.1", true, "10/8 middle"),
        ("10.255.255.255", true, "10/8 last"),
        ("11.0.0.0", false, "above 10/8"),
        // 100.64.0.0/10 CGNAT, with cloud metadata at 100.100.100.200
        ("100.63.255.255", false, "below 100.64/10"),
        ("100.64.0.0", true, "100.64/10 first"),
        ("100.100.100.200", true, "100.64/10 metadata"),
        ("100.127.255.255", true, "100.64/10 last"),
        ("100.128.0.0", false, "above 100.64/10"),
        // 127.0.0.0/8
        ("126.255.255.255", false, "below 127/8"),
        ("127.0.0.0", true, "127/8 first"),
        ("127.0.0.1", true, "127/8 middle"),
        ("127.255.255.255", true, "127/8 last"),
        ("128.0.0.0", false, "above 127/8"),
        // 169.254.0.0/16
        ("169.253.255.255", false, "below 169.254/16"),
        ("169.254.0.0", true, "169.254/16 first"),
        ("169.254.169.254", true, "169.254/16 metadata"),
        ("169.254.255.255", true, "169.254/16 last"),
        ("169.255.0.0", false, "above 169.254/16"),
        // 172.16.0.0/12
        ("172.15.255.255", false, "below 172.16/12"),
        ("172.16.0.0", true, "172.16/12 first"),
        ("172.20.1.1", true, "172.16/12 middle"),
        ("172.31.255.255", true, "172.16/12 last"),
        ("172.32.0.0", false, "above 172.16/12"),
        // 192.0.0.0/24 IETF protocol assignments
        ("191.255.255.255", false, "below 192.0.0/24"),
        ("192.0.0.0", true, "192.0.0/24 first"),
        ("192.0.0.170", true, "192.0.0/24 middle"),
        ("192.0.0.255", true, "192.0.0/24 last"),
        ("192.0.1.0", false, "above 192.0.0/24"),
        // 192.168.0.0/16
        ("192.167.255.255", false, "below 192.168/16"),
        ("192.168.0.0", true, "192.168/16 first"),
        ("192.168.1.1", true, "192.168/16 middle"),
        ("192.168.255.255", true, "192.168/16 last"),
        ("192.169.0.0", false, "above 192.168/16"),
        // 198.18.0.0/15 benchmarking
        ("198.17.255.255", false, "below 198.18/15"),
        ("198.18.0.0", true, "198.18/15 first"),
        ("198.19.0.1", true, "198.18/15 middle"),
        ("198.19.255.255", true, "198.18/15 last"),
        ("198.20.0.0", false, "above 198.18/15"),
        // 224.0.0.0/4 multicast, then 240.0.0.0/4 reserved, then the broadcast address
        ("223.255.255.255", false, "below 224/4"),
        ("224.0.0.0", true, "224/4 first"),
        ("232.1.2.3", true, "224/4 middle"),
        ("239.255.255.255", true, "224/4 last, just below 240/4"),
        ("240.0.0.0", true, "240/4 first"),
        ("248.1.2.3", true, "240/4 middle"),
        ("255.255.255.254", true, "240/4 last before broadcast"),
        ("255.255.255.255", true, "broadcast"),
        // Public IPv4 stays allowed.
        ("8.8.8.8", false, "public"),
        ("1.1.1.1", false, "public"),
        ("203.0.113.5", false, "documentation range, not denied"),
        // ::/96 IPv4-compatible (holds :: and ::1)
        ("::", true, "::/96 first (unspecified)"),
        ("::1", true, "::/96 loopback"),
        ("::808:808", true, "::/96 middle (::8.8.8.8)"),
        ("::ffff:ffff", true, "::/96 last"),
        ("::1:0:0", false, "above ::/96"),
        // ::ffff:0:0/96 IPv4-mapped: the IPv4 inside decides
        ("::ffff:0.0.0.0", true, "mapped first (0.0.0.0)"),
        ("::ffff:8.8.8.8", false, "mapped public"),
        ("::ffff:10.0.0.1", true, "mapped 10/8"),
        ("::ffff:100.100.100.200", true, "mapped CGNAT"),
        ("::ffff:198.18.0.1", true, "mapped 198.18/15"),
        ("::ffff:255.255.255.255", true, "mapped last (broadcast)"),
        // 64:ff9b::/96 NAT64 well-known prefix
        (
            "64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff",
            false,
            "below 64:ff9b::/96",
        ),
        ("64:ff9b::", true, "64:ff9b::/96 first"),
        ("64:ff9b::808:808", true, "64:ff9b::/96 middle (8.8.8.8)"),
        ("64:ff9b::ffff:ffff", true, "64:ff9b::/96 last"),
        ("64:ff9b::1:0:0", false, "above 64:ff9b::/96"),
        // 64:ff9b:1::/48 NAT64 local-use prefix
        (
            "64:ff9b:0:ffff:ffff:ffff:ffff:ffff",
            false,
            "below 64:ff9b:1::/48",
        ),
        ("64:ff9b:1::", true, "64:ff9b:1::/48 first"),
        ("64:ff9b:1:8000::808:808", true, "64:ff9b:1::/48 middle"),
        (
            "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
            true,
            "64:ff9b:1::/48 last",
        ),
        ("64:ff9b:2::", false, "above 64:ff9b:1::/48"),
        // 2002::/16 6to4: 2002:AABB:CCDD::/48 leads to AA.BB.CC.DD, which decides
        (
            "2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            false,
            "below 2002::/16",
        ),
        ("2002::", true, "2002::/16 first (0.0.0.0)"),
        ("2002:808:808::1", false, "6to4 of 8.8.8.8"),
        ("2002:a00:1::1", true, "6to4 of 10.0.0.1"),
        ("2002:7f00:1::", true, "6to4 of 127.0.0.1"),
        ("2002:6464:64c8:1::1", true, "6to4 of 100.100.100.200"),
        ("2002:c612:1::", true, "6to4 of 198.18.0.1"),
        ("2002:c0a8:101:ffff::", true, "6to4 of 192.168.1.1"),
        (
            "2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            true,
            "2002::/16 last (broadcast)",
        ),
        ("2003::", false, "above 2002::/16"),
        // fc00::/7 unique local
        (
            "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            false,
            "below fc00::/7",
        ),
        ("fc00::", true, "fc00::/7 first"),
        ("fd12:3456::1", true, "fc00::/7 middle"),
        (
            "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            true,
            "fc00::/7 last",
        ),
        ("fe00::", false, "above fc00::/7"),
        // fe80::/10 link-local, then fec0::/10 site-local, then ff00::/8 multicast
        (
            "fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            false,
            "below fe80::/10",
        ),
        ("fe80::", true, "fe80::/10 first"),
        ("fe80::1", true, "fe80::/10 middle"),
        (
            "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            true,
            "fe80::/10 last, below fec0::/10",
        ),
        ("fec0::", true, "fec0::/10 first"),
        ("fed0::1", true, "fec0::/10 middle"),
        (
            "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            true,
            "fec0::/10 last, below ff00::/8",
        ),
        ("ff00::", true, "ff00::/8 first"),
        ("ff02::1", true, "ff00::/8 middle"),
        (
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            true,
            "ff00::/8 last",
        ),
        // Public IPv6 stays allowed.
        ("2001:4860:4860::8888", false, "public"),
        ("2606:4700:4700::1111", false, "public"),
    ];

    #[test]
    fn default_denial_matrix() {
        let mut wrong = Vec::new();
        for (addr, denied, why) in DEFAULT_MATRIX {
            let ip: IpAddr = addr.parse().unwrap();
            if denied_by_default(ip) != *denied || allowed(ip, &[], &[]) == *denied {
                wrong.push(format!("{addr} ({why}): expected denied={denied}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn lists_override_the_default_and_deny_wins() {
        /// (allow, deny, address, allowed?, why)
        type Case = (
            &'static [&'static str],
            &'static [&'static str],
            &'static str,
            bool,
            &'static str,
        );
        let cases: &[Case] = &[
            (&["10.0.0.0/8"], &[], "10.1.2.3", true, "allow-listed"),
            (
                &["10.0.0.0/8"],
                &[],
                "::ffff:10.1.2.3",
                true,
                "allow-listed, mapped",
            ),
            (
                &["10.0.0.0/8"],
                &[],
                "2002:a01:203::",
                true,
                "allow-listed, 6to4",
            ),
            (&["10.0.0.0/8"], &[], "11.0.0.1", true, "public anyway"),
            (
                &["10.0.0.0/8"],
                &[],
                "192.168.0.1",
                false,
                "not the listed net",
            ),
            (
                &["10.0.0.0/8"],
                &["10.1.0.0/16"],
                "10.1.2.3",
                false,
                "deny wins",
            ),
            (
                &["10.0.0.0/8"],
                &["10.1.0.0/16"],
                "10.2.0.1",
                true,
                "outside the deny",
            ),
            (
                &["100.64.0.0/10"],
                &[],
                "100.100.100.200",
                true,
                "CGNAT allow-listed",
            ),
            (
                &["127.0.0.0/8"],
                &[],
                "::1",
                false,
                "v4 loopback listed, not ::1",
            ),
            (&["::1/128"], &[], "::1", true, "::1 listed"),
            (&["fec0::/10"], &[], "fec0::1", true, "site-local listed"),
            (&[], &["8.8.8.0/24"], "8.8.8.8", false, "deny-listed public"),
            (
                &[],
                &["8.8.8.0/24"],
                "::ffff:8.8.8.8",
                false,
                "deny-listed, mapped",
            ),
            (
                &[],
                &["8.8.8.0/24"],
                "2002:808:808::",
                false,
                "deny-listed, via 6to4",
            ),
            (
                &[],
                &["2001:4860::/32"],
                "2001:4860:4860::8888",
                false,
                "deny-listed v6",
            ),
            // NAT64 leads to the IPv4 in its low 32 bits: allowing the prefix opens public
            // IPv4 through the gateway, not the private networks behind it.
            (
                &["64:ff9b::/96"],
                &[],
                "64:ff9b::808:808",
                true,
                "NAT64 to 8.8.8.8",
            ),
            (
                &["64:ff9b::/96"],
                &[],
                "64:ff9b::a00:1",
                false,
                "NAT64 to 10.0.0.1",
            ),
            (
                &["64:ff9b::/96"],
                &[],
                "64:ff9b::a9fe:a9fe",
                false,
                "NAT64 to 169.254.169.254",
            ),
            (
                &["64:ff9b::/96"],
                &[],
                "64:ff9b::6464:64c8",
                false,
                "NAT64 to 100.100.100.200",
            ),
            (
                &["64:ff9b::/96", "10.0.0.0/8"],
                &[],
                "64:ff9b::a00:1",
                true,
                "both listed",
            ),
            (
                &["64:ff9b::/96"],
                &["8.8.8.0/24"],
                "64:ff9b::808:808",
                false,
                "NAT64 to a deny",
            ),
            (
                &["64:ff9b:1::/48"],
                &[],
                "64:ff9b:1::1",
                true,
                "local-use NAT64 listed",
            ),
            (
                &["2002::/16"],
                &[],
                "2002:a00:1::",
                false,
                "6to4 listed, 10.0.0.1 not",
            ),
        ];
        let mut wrong = Vec::new();
        for (allow, deny, addr, ok, why) in cases {
            let ip: IpAddr = addr.parse().unwrap();
            if allowed(ip, &nets(allow), &nets(deny)) != *ok {
                wrong.push(format!(
                    "{addr} allow {allow:?} deny {deny:?} ({why}): expected {ok}"
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
