//! Customer-supplied S3 endpoints: parsed the way Carbon's API takes them
//! (`nyc3.digitaloceanspaces.com`, scheme optional), classified (S3 or Spaces, region), and
//! checked against the configured policy before any request: allowed hosts only, https only,
//! and never an address on this machine's private networks unless a test configuration says so.

use std::net::IpAddr;

use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};

use super::SourceKind;
use crate::error::{ErrorCode, FileError};

/// A parsed endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `scheme://host[:port]`, what the S3 client is given.
    pub url: String,
    /// The host name or address, lowercase.
    pub host: String,
    /// The port.
    pub port: u16,
    /// Whether the scheme is https.
    pub https: bool,
    /// S3 or DigitalOcean Spaces.
    pub kind: SourceKind,
    /// The signing region: the Spaces region from the host, else the AWS region in the host,
    /// else `us-east-1`.
    pub region: String,
}

/// Hosts contacted when configuration does not say otherwise.
/// (S3's own hosts only: `*.amazonaws.com` would also admit EC2 machines' public names.)
pub const DEFAULT_ALLOWED_HOSTS: &[&str] = &[
    "s3.amazonaws.com",
    "s3.*.amazonaws.com",
    "*.digitaloceanspaces.com",
];

impl Endpoint {
    /// Parses `raw`; https is implied without a scheme.
    ///
    /// # Errors
    /// A sentence saying what is malformed (usage error).
    pub fn parse(raw: &str) -> Result<Endpoint, String> {
        let raw = raw.trim();
        if raw.contains('@') {
            // user:password@host: refuse without echoing it.
            return Err("endpoint must not contain credentials (user@host)".to_owned());
        }
        let (scheme, rest) = raw.split_once("://").unwrap_or(("https", raw));
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            other => {
                return Err(format!(
                    "endpoint `{raw}`: scheme `{other}` is not http or https"
                ));
            }
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
            return Err(format!(
                "endpoint `{raw}` must be a host, optionally with scheme and port"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("endpoint `{raw}`: bad port `{port}`"))?;
                (host, port)
            }
            _ => (authority, if https { 443 } else { 80 }),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if host.is_empty() {
            return Err(format!("endpoint `{raw}` has no host"));
        }
        let (kind, region) = if let Some(region) = host.strip_suffix(".digitaloceanspaces.com") {
            (
                SourceKind::Spaces,
                region.rsplit('.').next().unwrap_or(region).to_owned(),
            )
        } else {
            let region = host
                .strip_suffix(".amazonaws.com")
                .and_then(|h| h.split(['.', '-']).next().filter(|p| *p == "s3").map(|_| h))
                .and_then(|h| h.strip_prefix("s3.").or_else(|| h.strip_prefix("s3-")))
                .filter(|r| !r.is_empty() && !r.contains('.'))
                .unwrap_or("us-east-1")
                .to_owned();
            (SourceKind::S3, region)
        };
        let scheme = if https { "https" } else { "http" };
        let url = if host.contains(':') {
            format!("{scheme}://[{host}]:{port}")
        } else {
            format!("{scheme}://{host}:{port}")
        };
        Ok(Endpoint {
            url,
            host,
            port,
            https,
            kind,
            region,
        })
    }
}

/// Which endpoints may be contacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// Host patterns: exact names, or `*.domain` for any subdomain.
    pub allowed_hosts: Vec<String>,
    /// Allow http and private, loopback and link-local addresses (local test servers only).
    pub allow_private: bool,
}

impl EndpointPolicy {
    /// Checks the endpoint's scheme and host, then every address it resolves to.
    ///
    /// # Errors
    /// `ENDPOINT_NOT_ALLOWED` naming the host and the reason.
    pub async fn check(&self, endpoint: &Endpoint) -> Result<(), FileError> {
        self.check_name(endpoint)?;
        let refuse = |why: String| {
            FileError::permanent(
                ErrorCode::EndpointNotAllowed,
                format!("endpoint {}: {why}", endpoint.host),
            )
        };
        let addresses = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|err| {
                FileError::transient(
                    ErrorCode::SourceUnavailable,
                    format!("resolving {}: {err}", endpoint.host),
                )
            })?;
        for address in addresses {
            if !self.allow_private && is_internal(address.ip()) {
                return Err(refuse(format!(
                    "resolves to internal address {}",
                    address.ip()
                )));
            }
        }
        Ok(())
    }
}

impl EndpointPolicy {
    /// The checks that need no DNS: scheme and host against the allowed hosts.
    ///
    /// # Errors
    /// `ENDPOINT_NOT_ALLOWED` naming the host and the reason.
    pub fn check_name(&self, endpoint: &Endpoint) -> Result<(), FileError> {
        if self.allow_private {
            return Ok(());
        }
        let refuse = |why: &str| {
            FileError::permanent(
                ErrorCode::EndpointNotAllowed,
                format!("endpoint {}: {why}", endpoint.host),
            )
        };
        if !endpoint.https {
            return Err(refuse("only https endpoints are allowed"));
        }
        if !self
            .allowed_hosts
            .iter()
            .any(|pattern| host_matches(pattern, &endpoint.host))
        {
            return Err(refuse("host is not in s3.allowed_hosts"));
        }
        Ok(())
    }
}

/// The DNS resolver of S3 clients for customer endpoints: resolves as the system does and
/// refuses internal addresses, so a name that passed [`EndpointPolicy::check`] cannot be
/// pointed at an internal address afterwards (DNS rebinding) — every connection is checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedResolver;

/// What a [`GuardedResolver`] fails with; S3 errors are classified `ENDPOINT_NOT_ALLOWED` when
/// it is their cause.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to internal address {address}, which is not allowed")]
pub struct RefusedAddress {
    /// The name resolved.
    pub host: String,
    /// The first internal address it resolved to.
    pub address: IpAddr,
}

impl ResolveDns for GuardedResolver {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
        DnsFuture::new(async move {
            let addresses: Vec<IpAddr> = tokio::net::lookup_host((name, 0))
                .await
                .map_err(ResolveDnsError::new)?
                .map(|address| address.ip())
                .collect();
            if let Some(&address) = addresses.iter().find(|ip| is_internal(**ip)) {
                return Err(ResolveDnsError::new(RefusedAddress {
                    host: name.to_owned(),
                    address,
                }));
            }
            Ok(addresses)
        })
    }
}

/// `pattern` is a host name in which a `*` label stands for exactly one label.
fn host_matches(pattern: &str, host: &str) -> bool {
    let (pattern, host): (Vec<&str>, Vec<&str>) =
        (pattern.split('.').collect(), host.split('.').collect());
    pattern.len() == host.len()
        && pattern
            .iter()
            .zip(&host)
            .all(|(p, h)| *p == "*" && !h.is_empty() || p.eq_ignore_ascii_case(h))
}

/// Loopback, private, link-local (cloud metadata), shared, unspecified and similar addresses.
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || (a == 192 && b == 0 && c == 0)
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let first = segments[0];
            // IPv4 carried inside IPv6: mapped, compatible, NAT64 and 6to4.
            let [_, _, _, _, _, _, hi, lo] = segments;
            let embedded =
                std::net::Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
            let [x0, x1, ..] = segments;
            let sixtofour = std::net::Ipv4Addr::new(
                (x1 >> 8) as u8,
                x1 as u8,
                (segments[2] >> 8) as u8,
                segments[2] as u8,
            );
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_internal(IpAddr::V4(v4)))
                || (segments[..6].iter().all(|s| *s == 0) && is_internal(IpAddr::V4(embedded)))
                || (segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                    && is_internal(IpAddr::V4(embedded)))
                || (x0 == 0x2002 && is_internal(IpAddr::V4(sixtofour)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_endpoints_as_carbon_takes_them() {
        let e = Endpoint::parse("nyc3.digitaloceanspaces.com").unwrap();
        assert_eq!(
            (e.url.as_str(), e.kind, e.region.as_str()),
            (
                "https://nyc3.digitaloceanspaces.com:443",
                SourceKind::Spaces,
                "nyc3"
            )
        );
        let e = Endpoint::parse("https://s3.eu-west-1.amazonaws.com/").unwrap();
        assert_eq!((e.kind, e.region.as_str()), (SourceKind::S3, "eu-west-1"));
        let e = Endpoint::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            (e.https, e.port, e.host.as_str()),
            (false, 9000, "127.0.0.1")
        );
        for bad in [
            "ftp://x.com",
            "https://",
            "host/path",
            "user@host",
            "host:notaport",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn policy_refuses_internal_and_unlisted_endpoints() {
        let strict = EndpointPolicy {
            allowed_hosts: DEFAULT_ALLOWED_HOSTS
                .iter()
                .map(ToString::to_string)
                .collect(),
            allow_private: false,
        };
        for raw in [
            "http://nyc3.digitaloceanspaces.com",
            "https://evil.example.com",
            "https://169.254.169.254",
            "https://localhost:9000",
        ] {
            let err = strict
                .check(&Endpoint::parse(raw).unwrap())
                .await
                .unwrap_err();
            assert_eq!(err.code, ErrorCode::EndpointNotAllowed, "{raw}");
        }
        // An allowed name that resolves to an internal address is still refused.
        let tricky = EndpointPolicy {
            allowed_hosts: vec!["localhost".to_owned()],
            allow_private: false,
        };
        let err = tricky
            .check(&Endpoint::parse("https://localhost").unwrap())
            .await
            .unwrap_err();
        assert!(err.message.contains("internal address"), "{}", err.message);
        let test = EndpointPolicy {
            allowed_hosts: Vec::new(),
            allow_private: true,
        };
        assert!(
            test.check(&Endpoint::parse("http://127.0.0.1:9000").unwrap())
                .await
                .is_ok()
        );
        assert!(host_matches(
            "*.digitaloceanspaces.com",
            "nyc3.digitaloceanspaces.com"
        ));
        assert!(!host_matches(
            "*.digitaloceanspaces.com",
            "evildigitaloceanspaces.com"
        ));
    }
}
