//! Who a request comes from: the peer's address, or, when the peer is a
//! trusted reverse proxy, the right-most `X-Forwarded-For` entry that is not
//! one. Every per-source limit (device admission, sign-in) keys on it.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use ipnet::IpNet;

/// The address of the client a request comes from (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// The reverse proxies whose `X-Forwarded-For` is believed
/// (`TRUSTED_PROXIES`); the app's state provides them.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl<S> FromRequestParts<S> for ClientAddress
where
    S: Send + Sync,
    TrustedProxies: FromRef<S>,
{
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Infallible> {
        // Requests served without a socket (in-process tests) share one address.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
        let TrustedProxies(trusted) = TrustedProxies::from_ref(state);
        Ok(ClientAddress(client_address(
            peer,
            &parts.headers,
            &trusted,
        )))
    }
}

/// The client behind `peer`: `peer` itself unless it is a trusted proxy, in
/// which case the right-most `X-Forwarded-For` entry that is not a trusted
/// proxy (proxies append the address they heard from).
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |address: &IpAddr| trusted.iter().any(|net| net.contains(address));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map_while(|entry| entry.trim().parse().ok())
        .collect();
    forwarded
        .into_iter()
        .rev()
        .find(|address| !is_trusted(address))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(forwarded: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", forwarded.parse().unwrap());
        headers
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        let forwarded = headers("198.51.100.7, 203.0.113.9, 10.0.0.2");
        assert_eq!(
            client_address(proxy, &forwarded, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap(),
            "the right-most entry that is not a proxy"
        );
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(client_address(stranger, &forwarded, &trusted), stranger);
        assert_eq!(client_address(proxy, &forwarded, &[]), proxy);
        assert_eq!(
            client_address(proxy, &headers("not-an-address"), &trusted),
            proxy
        );
    }
}
