//! Server-side request forgery guard for URLs users hand to the server (git sources): a host
//! that resolves to loopback, link-local, private, shared (CGNAT), unspecified or multicast
//! addresses is refused unless the administrator allowed private URLs. IPv6 addresses that
//! wrap an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) are judged by that address. Checked at submission;
//! DNS could change before git connects (rebinding), so this stops casual probing of the
//! internal network, not a determined attacker controlling DNS — documented as such.

use std::net::IpAddr;

/// The host part of a git URL (`scheme://[user@]host[:port]/…` or scp-style `user@host:path`).
///
/// A URL with a scheme is read by the same WHATWG parser the HTTP client uses, so the host
/// checked is the host connected to (`http://127.0.0.1?@example.com/` is 127.0.0.1, not
/// example.com); one it cannot parse has no host and is refused.
pub(crate) fn url_host(url: &str) -> Option<String> {
    if url.contains("://") {
        let parsed = reqwest::Url::parse(url).ok()?;
        let host = parsed.host_str()?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        return (!host.is_empty()).then(|| host.to_ascii_lowercase());
    }
    let rest = url.split(':').next()?;
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next().map(str::to_owned);
    }
    let host = host.split(':').next()?;
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Whether `ip` is somewhere a user must not point the server at.
pub(crate) fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(v6) => {
            if embedded_ipv4(v6).is_some_and(|v4| is_internal(IpAddr::V4(v4))) {
                return true;
            }
            let segments = v6.segments();
            let first = segments[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                // 64:ff9b:1::/48, local-use NAT64 (RFC 8215): translated into the operator's
                // own network, with the IPv4 address at a position only the operator knows.
                || segments[..3] == [0x64, 0xff9b, 1]
        }
    }
}

/// The IPv4 address an IPv6 address stands for, where the IPv6 form is only a wrapper that a
/// translator or tunnel turns back into IPv4: IPv4-mapped `::ffff:a.b.c.d` and -compatible
/// `::a.b.c.d`, well-known NAT64 `64:ff9b::a.b.c.d` (RFC 6052), 6to4 `2002:aabb:ccdd::/48`
/// (RFC 3056), and Teredo `2001:0::/32` (RFC 4380), which carries two: the server's and the
/// client's (stored inverted); the client's is returned when it is internal, else the server's.
fn embedded_ipv4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    use std::net::Ipv4Addr;
    let s = v6.segments();
    let pair = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = v6.to_ipv4() {
        return Some(v4); // mapped or compatible
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(pair(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(pair(s[1], s[2]));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        let server = pair(s[2], s[3]);
        let client = pair(!s[6], !s[7]);
        let internal = |ip: Ipv4Addr| is_internal(IpAddr::V4(ip));
        return Some(if internal(client) { client } else { server });
    }
    None
}

/// Refuses `url` when its host resolves to an internal address.
pub(crate) async fn check_public(url: &str) -> Result<(), String> {
    if url.starts_with("file://") {
        return Ok(()); // governed by `allow_local_git`
    }
    let host = url_host(url).ok_or_else(|| {
        format!(
            "cannot find the host in {:?}",
            gilgal_build::git::redact_urls(url)
        )
    })?;
    let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host.as_str(), 0))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .map(|a| a.ip())
            .collect(),
    };
    if let Some(ip) = addresses.into_iter().find(|ip| is_internal(*ip)) {
        return Err(format!(
            "{host} resolves to the internal address {ip}; the server does not fetch from its own network (an administrator can allow it with --allow-private-urls)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_checked_is_the_host_connected_to() {
        for tricky in [
            "http://127.0.0.1?@example.com/",
            "http://127.0.0.1#@example.com/",
            "http://127.0.0.1\\@example.com/",
            "http://user@127.0.0.1/x",
        ] {
            assert_eq!(url_host(tricky).as_deref(), Some("127.0.0.1"), "{tricky}");
        }
        assert_eq!(url_host("http://[::1]:8080/x").as_deref(), Some("::1"));
        assert_eq!(url_host("http://exa mple.com/"), None);
    }

    #[test]
    fn hosts_are_found_in_every_git_url_form() {
        assert_eq!(
            url_host("https://github.com/a/b.git").as_deref(),
            Some("github.com")
        );
        assert_eq!(
            url_host("https://u:p@Git.Example.org:8443/x").as_deref(),
            Some("git.example.org")
        );
        assert_eq!(
            url_host("git@github.com:a/b.git").as_deref(),
            Some("github.com")
        );
        assert_eq!(url_host("ssh://git@[::1]:22/x").as_deref(), Some("::1"));
    }

    #[test]
    fn internal_ranges_are_recognised() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in ["140.82.112.3", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn ipv6_wrappers_of_internal_ipv4_addresses_are_internal() {
        for (internal, why) in [
            ("::ffff:10.0.0.1", "IPv4-mapped"),
            ("::127.0.0.1", "IPv4-compatible"),
            ("::a9fe:a9fe", "IPv4-compatible metadata address"),
            ("64:ff9b::7f00:1", "NAT64 of 127.0.0.1"),
            ("64:ff9b::a9fe:a9fe", "NAT64 of 169.254.169.254"),
            ("64:ff9b::c0a8:101", "NAT64 of 192.168.1.1"),
            (
                "64:ff9b:1::8c52:7003",
                "local-use NAT64, any embedded address",
            ),
            ("64:ff9b:1:2::a00:1", "local-use NAT64 /48"),
            ("2002:7f00:1::1", "6to4 of 127.0.0.1"),
            ("2002:a00:1::", "6to4 of 10.0.0.1"),
            ("2002:a9fe:a9fe::1", "6to4 of 169.254.169.254"),
            ("2001:0:a00:1::1", "Teredo server 10.0.0.1"),
            (
                "2001:0:4136:e378:8000:63bf:80ff:fffe",
                "Teredo client 127.0.0.1 (inverted)",
            ),
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}: {why}");
        }
        for public in [
            "64:ff9b::8c52:7003",
            "2002:8c52:7003::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn plain_internal_ranges_stay_internal() {
        for internal in ["::1", "fd00::1", "fe80::1", "ff02::1", "::"] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in ["140.82.112.3", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn loopback_urls_are_refused() {
        let refused = check_public("http://127.0.0.1:8080/repo.git")
            .await
            .unwrap_err();
        assert!(refused.contains("internal address"), "{refused}");
        assert!(check_public("https://localhost/x.git").await.is_err());
    }
}
