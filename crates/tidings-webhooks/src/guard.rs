//! The SSRF guard (SPEC §10): webhook URLs must be `https` and must not reach loopback,
//! private, link-local, shared, multicast or metadata addresses. The check runs when a
//! webhook is created or changed, and again on every connection, on the addresses the name
//! resolves to at that moment (so a name that later resolves to 127.0.0.1 — DNS rebinding —
//! is still refused).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use reqwest::Url;

/// Longest accepted webhook URL.
pub const MAX_URL_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("{0}")]
    InvalidUrl(String),
    #[error("{host} resolves to {addr}, a private, loopback, link-local or metadata address")]
    BlockedAddress { host: String, addr: IpAddr },
    #[error("{host} does not resolve: {reason}")]
    Unresolvable { host: String, reason: String },
}

/// Whether an address is one a webhook must never reach.
pub fn is_blocked(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_blocked_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_blocked_v4(v4);
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                // NAT64 64:ff9b::/96 and the IPv4-compatible ::/96 embed an IPv4 address.
                || ((s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0]
                    || s[0..6] == [0, 0, 0, 0, 0, 0])
                    && is_blocked_v4(Ipv4Addr::new(
                        (s[6] >> 8) as u8,
                        s[6] as u8,
                        (s[7] >> 8) as u8,
                        s[7] as u8,
                    )))
                || s[0] == 0x2001 && s[1] == 0x0db8 // documentation
        }
    }
}

fn is_blocked_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16, including the 169.254.169.254 metadata service
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240 // reserved
}

/// Checks a URL's form: `https` (or `http` when private targets are allowed, for local
/// development), a host, no credentials, bounded length. Returns the parsed URL.
pub fn check_url(url: &str, allow_private: bool) -> Result<Url, GuardError> {
    if url.len() > MAX_URL_LEN {
        return Err(GuardError::InvalidUrl(format!(
            "url must be at most {MAX_URL_LEN} characters"
        )));
    }
    let parsed = Url::parse(url)
        .map_err(|e| GuardError::InvalidUrl(format!("url is not a valid URL: {e}")))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => {
            return Err(GuardError::InvalidUrl(
                "url must use https (plain http is allowed only with --allow-private-webhooks)"
                    .into(),
            ));
        }
        other => {
            return Err(GuardError::InvalidUrl(format!(
                "url must use https, not `{other}`"
            )));
        }
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(GuardError::InvalidUrl(
            "url must not carry credentials; authenticate with the signature instead".into(),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(GuardError::InvalidUrl("url has no host".into()));
    }
    if parsed.fragment().is_some() {
        return Err(GuardError::InvalidUrl(
            "url must not have a #fragment".into(),
        ));
    }
    Ok(parsed)
}

/// Resolves the URL's host now and refuses it if any address is blocked.
pub async fn check_target(url: &Url, allow_private: bool) -> Result<(), GuardError> {
    if allow_private {
        return Ok(());
    }
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    resolve_checked(&host, port).await.map(|_| ())
}

/// Resolves `host` and returns its addresses, unless one of them is blocked.
pub async fn resolve_checked(host: &str, port: u16) -> Result<Vec<SocketAddr>, GuardError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| GuardError::Unresolvable {
                host: host.to_string(),
                reason: e.to_string(),
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(GuardError::Unresolvable {
            host: host.to_string(),
            reason: "no addresses".into(),
        });
    }
    // Refuse if any address is blocked: a name with one public and one private record
    // would otherwise reach the private one on some connections.
    if let Some(bad) = addrs.iter().find(|a| is_blocked(a.ip())) {
        return Err(GuardError::BlockedAddress {
            host: host.to_string(),
            addr: bad.ip(),
        });
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_private_loopback_link_local_and_metadata() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            assert!(is_blocked(ip.parse().unwrap()), "{ip} must be blocked");
        }
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "8.8.8.8",
        ] {
            assert!(!is_blocked(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[test]
    fn urls_must_be_https_without_credentials() {
        assert!(check_url("https://hooks.example.com/x", false).is_ok());
        assert!(check_url("http://hooks.example.com/x", false).is_err());
        assert!(check_url("http://127.0.0.1:9000/x", true).is_ok());
        assert!(check_url("ftp://example.com", true).is_err());
        assert!(check_url("https://user:pw@example.com", false).is_err());
        assert!(check_url("not a url", false).is_err());
        assert!(check_url(&format!("https://e.com/{}", "a".repeat(MAX_URL_LEN)), false).is_err());
    }

    #[tokio::test]
    async fn literal_and_resolved_private_targets_are_refused() {
        for url in [
            "https://127.0.0.1/hook",
            "https://[::1]/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://10.0.0.8/",
            "https://localhost/hook",
        ] {
            let parsed = check_url(url, false).unwrap();
            assert!(
                matches!(
                    check_target(&parsed, false).await,
                    Err(GuardError::BlockedAddress { .. })
                ),
                "{url}"
            );
            assert!(check_target(&parsed, true).await.is_ok());
        }
    }
}
