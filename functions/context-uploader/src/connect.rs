//! Where a fetch may connect. The parser checked the URL as written; a public name can still
//! resolve to a private address (DNS rebinding, `127.0.0.1.nip.io`), so every fetch resolves
//! the name here, keeps only the addresses the source rules allow
//! (`klambda_events::ssrf::refused_ip`), and connects to those alone: archives through a
//! connector whose resolver is [`CheckedResolver`], git with the addresses pinned
//! (`http.curloptResolve`) and redirects off.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use klambda_events::ssrf::refused_ip;

/// The addresses `host` (a name or an IP literal) resolves to on `port`, keeping the ones a fetch
/// may connect to. `Ok(Err(reason))` when there is none: the source cannot be fetched, whatever
/// a retry would resolve. `Err` when the name does not resolve now (retryable).
pub async fn checked_addresses(
    host: &str,
    port: u16,
    private_allowed: bool,
) -> std::io::Result<Result<Vec<SocketAddr>, String>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let resolved: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port)).await?.collect(),
    };
    if private_allowed {
        return Ok(Ok(resolved));
    }
    let mut refused = Vec::new();
    let allowed: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(|address| match refused_ip(address.ip()) {
            Some(why) => {
                refused.push(why);
                false
            }
            None => true,
        })
        .collect();
    Ok(if allowed.is_empty() {
        Err(format!(
            "{host} resolves only to addresses the platform does not fetch from ({})",
            refused.join("; ")
        ))
    } else {
        Ok(allowed)
    })
}

/// The git options that make a fetch of the https `url` connect only to the checked addresses
/// of its host and follow no redirect. Other transports (tests' `file`) get none.
pub async fn git_pins(
    url: &str,
    private_allowed: bool,
) -> std::io::Result<Result<Vec<String>, String>> {
    let Ok(parsed) = url.parse::<http::Uri>() else {
        return Ok(Ok(Vec::new()));
    };
    if parsed.scheme_str() != Some("https") {
        return Ok(Ok(Vec::new()));
    }
    let Some(host) = parsed.host() else {
        return Ok(Err("the URL names no host".into()));
    };
    let port = parsed.port_u16().unwrap_or(443);
    let addresses = match checked_addresses(host, port, private_allowed).await? {
        Ok(addresses) => addresses,
        Err(reason) => return Ok(Err(reason)),
    };
    let listed: Vec<String> = addresses
        .iter()
        .map(|a| match a.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        })
        .collect();
    Ok(Ok(vec![
        "-c".into(),
        format!("http.curloptResolve={host}:{port}:{}", listed.join(",")),
        "-c".into(),
        "http.followRedirects=false".into(),
    ]))
}

/// The resolver of the archive client: a name's addresses, only those a fetch may connect to; a
/// name with none fails to resolve, so the connection is never made.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckedResolver {
    /// Tests serve archives on loopback.
    pub private_allowed: bool,
}

impl tower::Service<Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let private_allowed = self.private_allowed;
        Box::pin(async move {
            match checked_addresses(name.as_str(), 0, private_allowed).await? {
                Ok(addresses) => Ok(addresses.into_iter()),
                Err(reason) => Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    reason,
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_and_literals_that_reach_inside_are_refused() {
        for (host, port) in [("localhost", 443), ("127.0.0.1", 443), ("[::1]", 443)] {
            let checked = checked_addresses(host, port, false).await.unwrap();
            assert!(checked.is_err(), "{host}: {checked:?}");
        }
        let allowed = checked_addresses("localhost", 80, true).await.unwrap();
        assert!(allowed.is_ok_and(|a| !a.is_empty()));
        let pins = git_pins("https://localhost/repo.git", false).await.unwrap();
        assert!(pins.is_err_and(|why| why.contains("does not fetch from")));
        let pins = git_pins("https://93.184.216.34:8443/repo.git", false)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            pins,
            [
                "-c",
                "http.curloptResolve=93.184.216.34:8443:93.184.216.34",
                "-c",
                "http.followRedirects=false"
            ]
        );
        assert_eq!(
            git_pins("file:///tmp/repo", false).await.unwrap(),
            Ok(vec![])
        );
    }

    #[tokio::test]
    async fn the_archive_clients_resolver_gives_no_address_inside() {
        use std::str::FromStr as _;
        use tower::ServiceExt as _;
        let name = Name::from_str("localhost").unwrap();
        let refused = CheckedResolver::default().oneshot(name.clone()).await;
        assert_eq!(
            refused.map(|a| a.count()).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::PermissionDenied)
        );
        let allowed = CheckedResolver {
            private_allowed: true,
        }
        .oneshot(name)
        .await;
        assert!(allowed.is_ok_and(|mut a| a.next().is_some()));
    }
}
