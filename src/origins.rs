//! Who may reach callwire from a browser: the `Host` and `Origin` checks (contract:
//! docs/protocols/README.md, "Browsers and other origins").
//!
//! A browser lets any page it shows open a websocket or send a simple POST to any address, the
//! gateway's loopback included, and DNS rebinding lets such a page pass for the gateway's own
//! name. Programs send no `Origin`, and are unaffected by that check.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::http::Request;
use crate::logging::RateLimit;
use crate::metrics::Forbidden;

/// The `Host` and `Origin` values a request may carry, fixed at start-up from the flags.
#[derive(Debug)]
pub struct Origins {
    /// Whether `Host` is checked: only without `--auth`.
    check_host: bool,
    /// Hosts allowed besides the loopback names and addresses (`--allowed-host`, the listen
    /// address), lower-case, without a port.
    hosts: Vec<String>,
    /// `--allowed-origin` values, as `normalise_origin` gives them.
    origins: Vec<String>,
    /// `--allowed-origin '*'`.
    any_origin: bool,
    /// One log line per interval about refusals, however many there are.
    log: RateLimit,
}

impl Origins {
    /// `allowed_hosts` and `allowed_origins` as `check_host` and `check_origin` accepted them.
    pub fn new(
        listen: SocketAddr,
        auth_required: bool,
        allowed_hosts: Vec<String>,
        allowed_origins: Vec<String>,
    ) -> Origins {
        let mut hosts = allowed_hosts;
        if !listen.ip().is_unspecified() {
            hosts.push(host_text(listen.ip()));
        }
        let any_origin = allowed_origins.iter().any(|origin| origin == "*");
        Origins {
            check_host: !auth_required,
            hosts,
            origins: allowed_origins,
            any_origin,
            log: RateLimit::new(Duration::from_secs(10)),
        }
    }

    /// Whether any origin is allowed (`--allowed-origin '*'`), to be said out loud.
    pub fn allows_any_origin(&self) -> bool {
        self.any_origin
    }

    /// Checks a request's `Host` and `Origin`; the error says which one refused it.
    pub fn check(&self, request: &Request) -> Result<(), Forbidden> {
        let host = request.single_header("host").map_err(|_| Forbidden::Host)?;
        if self.check_host {
            let name = host.and_then(|host| split_authority(host).map(|(name, _)| name));
            // No `Host` at all is an HTTP/1.0 program: every browser sends one.
            let allowed = match (host, name) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(_), Some(name)) => is_loopback(&name) || self.hosts.contains(&name),
            };
            if !allowed {
                return Err(Forbidden::Host);
            }
        }
        match request.single_header("origin") {
            Ok(None) => {}
            Ok(Some(origin)) if self.origin_allowed(origin, host) => {}
            _ => return Err(Forbidden::Origin),
        }
        if is_simple_request(request) {
            return Err(Forbidden::SimpleRequest);
        }
        Ok(())
    }

    /// Whether a browser page of `origin` may talk to the gateway reached as `host`: its own
    /// origin (the dashboard's), or one listed.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        if self.any_origin {
            return true;
        }
        let Some(origin) = normalise_origin(origin) else {
            return false;
        };
        self.origins.contains(&origin) || host.is_some_and(|host| same_origin(&origin, host))
    }

    /// Counts a refusal and logs it, rate-limited; the request's own values are quoted, short.
    pub fn report(&self, reason: Forbidden, request: &Request, metrics: &crate::metrics::Metrics) {
        metrics.forbidden(reason).inc();
        self.log.report(|held| {
            let quoted = |name| {
                let value = request.header(name).unwrap_or("");
                format!("{:?}", value.chars().take(80).collect::<String>())
            };
            warn!(
                "403 for {} {}: Host {} Origin {}: {}{held}",
                request.method,
                request.path.chars().take(80).collect::<String>(),
                quoted("host"),
                quoted("origin"),
                message(reason)
            )
        });
    }
}

/// Whether a request that changes something (anything but GET and HEAD) has a body type that
/// a page of any origin may send without asking first (a CORS "simple request": a form, or
/// text/plain). Such a request could come from another site; the ones callwire takes come
/// without a body type (curl -X POST) or as JSON, which a browser sends cross-origin only
/// after a preflight that callwire never grants.
fn is_simple_request(request: &Request) -> bool {
    if matches!(request.method.as_str(), "GET" | "HEAD") {
        return false;
    }
    let Ok(content_type) = request.single_header("content-type") else {
        return true;
    };
    content_type.is_some_and(|value| {
        let essence = value.split(';').next().unwrap_or("").trim();
        [
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "text/plain",
        ]
        .iter()
        .any(|simple| essence.eq_ignore_ascii_case(simple))
    })
}

/// The one-line reason a 403 gives.
pub fn message(reason: Forbidden) -> &'static str {
    match reason {
        Forbidden::Host => {
            "Host is not a loopback name or address: add the name with --allowed-host \
             (or serve with --auth)"
        }
        Forbidden::Origin => {
            "Origin is not this gateway's own: add the page's origin with --allowed-origin"
        }
        Forbidden::SimpleRequest => {
            "a form or text/plain body is not accepted here (a CORS simple request): send it \
             without a body type, or as application/json"
        }
    }
}

/// `--allowed-host`: a name or an IP address, without scheme or port; lower-cased.
pub fn parse_allowed_host(value: &str) -> Result<String, String> {
    match split_authority(value) {
        Some((name, None)) if !name.is_empty() && !value.contains('/') => Ok(name),
        _ => Err(format!(
            "--allowed-host: expected a host name or address without a port, such as \
             gateway.lan, got '{value}'"
        )),
    }
}

/// `--allowed-origin`: `*`, or `scheme://host[:port]` (what browsers send); normalised.
pub fn parse_allowed_origin(value: &str) -> Result<String, String> {
    if value == "*" {
        return Ok(value.to_owned());
    }
    normalise_origin(value).ok_or_else(|| {
        format!(
            "--allowed-origin: expected '*' or scheme://host[:port], such as \
             https://wallboard.example, got '{value}'"
        )
    })
}

/// An origin as `scheme://host[:port]`, lower-case, with the scheme's default port left out;
/// `None` for anything else (`null`, a path, no host).
fn normalise_origin(origin: &str) -> Option<String> {
    let (scheme, authority) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = default_port(&scheme)?;
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.contains(['/', '?', '#', '@']) {
        return None;
    }
    let (host, port) = split_authority(authority)?;
    if host.is_empty() {
        return None;
    }
    Some(match port {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Whether a normalised origin is the one a page served by the gateway, reached as `host`,
/// has: same host and port (over plain HTTP, or HTTPS through a proxy in front).
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    let (Some(default), Some(theirs), Some(ours)) = (
        default_port(scheme),
        split_authority(rest),
        split_authority(host),
    ) else {
        return false;
    };
    theirs.0 == ours.0 && theirs.1.unwrap_or(default) == ours.1.unwrap_or(default)
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// `host[:port]` or `[v6][:port]` split into the lower-case host (brackets kept off) and the
/// port; `None` when it is not that shape.
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (v6, None),
            _ => (v6, Some(after.strip_prefix(':')?)),
        }
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
        if !host.bytes().all(valid) {
            return None;
        }
        // `localhost.` is `localhost`: one trailing dot only marks the name as absolute.
        (host.strip_suffix('.').unwrap_or(host), port)
    };
    let port = match port {
        Some(port) => Some(port.parse::<u16>().ok()?),
        None => None,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// `localhost`, a name under it (RFC 6761: browsers resolve those to loopback themselves), or
/// a loopback address.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An address as a `Host` header names it, without brackets or port.
fn host_text(ip: IpAddr) -> String {
    ip.to_string().to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(auth: bool, hosts: &[&str], allowed: &[&str]) -> Origins {
        Origins::new(
            "127.0.0.1:58080".parse().unwrap(),
            auth,
            hosts
                .iter()
                .map(|h| parse_allowed_host(h).unwrap())
                .collect(),
            allowed
                .iter()
                .map(|o| parse_allowed_origin(o).unwrap())
                .collect(),
        )
    }

    fn request(headers: &[(&str, &str)]) -> Request {
        crate::http::test_request("GET / HTTP/1.1", headers)
    }

    #[test]
    fn hosts_loopback_listed_or_refused_without_auth() {
        let open = origins(false, &["Gateway.LAN"], &[]);
        for host in [
            "localhost",
            "localhost:58080",
            "localhost.:58080",
            "LOCALHOST",
            "app.localhost:1",
            "127.0.0.1:58080",
            "127.3.2.1",
            "[::1]:58080",
            "gateway.lan:58080",
            "gateway.lan.",
        ] {
            assert_eq!(open.check(&request(&[("Host", host)])), Ok(()), "{host}");
        }
        assert_eq!(open.check(&request(&[])), Ok(()), "no Host: not a browser");
        for host in [
            "rebind.attacker.test",
            "rebind.attacker.test:58080",
            "localhost.attacker.test",
            "10.0.0.5",
            "[::2]",
            "gateway.lan.evil",
            "a b",
            "localhost..",
        ] {
            assert_eq!(
                open.check(&request(&[("Host", host)])),
                Err(Forbidden::Host),
                "{host}"
            );
        }
        let two = request(&[("Host", "localhost"), ("Host", "evil.test")]);
        assert_eq!(open.check(&two), Err(Forbidden::Host));
        let with_auth = origins(true, &[], &[]);
        assert_eq!(
            with_auth.check(&request(&[("Host", "gateway.example")])),
            Ok(())
        );
    }

    #[test]
    fn origins_own_listed_or_refused() {
        let o = origins(false, &[], &["https://Wallboard.example:443/"]);
        let check =
            |host: &str, origin: &str| o.check(&request(&[("Host", host), ("Origin", origin)]));
        assert_eq!(check("127.0.0.1:58080", "http://127.0.0.1:58080"), Ok(()));
        assert_eq!(check("localhost:58080", "http://LOCALHOST:58080"), Ok(()));
        assert_eq!(check("localhost", "http://localhost:80"), Ok(()));
        assert_eq!(
            check("localhost:58080", "https://wallboard.example"),
            Ok(())
        );
        for origin in [
            "http://evil.example",
            "http://127.0.0.1:58081",
            "http://localhost:58080/x",
            "null",
            "file://",
            "ws://127.0.0.1:58080",
            "http://wallboard.example",
        ] {
            assert_eq!(
                check("127.0.0.1:58080", origin),
                Err(Forbidden::Origin),
                "{origin}"
            );
        }
        let any = origins(false, &[], &["*"]);
        assert!(any.allows_any_origin());
        let evil = request(&[("Host", "localhost"), ("Origin", "http://evil.example")]);
        assert_eq!(any.check(&evil), Ok(()));
    }

    #[test]
    fn posts_with_a_form_or_text_body_type_are_refused() {
        let o = origins(false, &[], &[]);
        let post = |content_type: Option<&str>| {
            let lines: Vec<(&str, &str)> = content_type
                .map(|c| ("Content-Type", c))
                .into_iter()
                .collect();
            o.check(&crate::http::test_request(
                "POST /rest/live/calls/x/hangup HTTP/1.1",
                &lines,
            ))
        };
        assert_eq!(post(None), Ok(()));
        assert_eq!(post(Some("application/json")), Ok(()));
        for simple in [
            "text/plain",
            "TEXT/PLAIN; charset=utf-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            assert_eq!(
                post(Some(simple)),
                Err(Forbidden::SimpleRequest),
                "{simple}"
            );
        }
        assert_eq!(
            o.check(&request(&[("Content-Type", "text/plain")])),
            Ok(()),
            "a GET"
        );
    }

    #[test]
    fn flag_values_are_checked() {
        assert_eq!(parse_allowed_host("Gate.LAN").unwrap(), "gate.lan");
        assert_eq!(parse_allowed_host("10.0.0.2").unwrap(), "10.0.0.2");
        for bad in ["gate.lan:80", "http://gate.lan", "", "a/b"] {
            assert!(parse_allowed_host(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_allowed_origin("HTTP://Wall.example:80").unwrap(),
            "http://wall.example"
        );
        for bad in [
            "wall.example",
            "ftp://x",
            "https://x/path",
            "null",
            "https://",
        ] {
            assert!(parse_allowed_origin(bad).is_err(), "{bad}");
        }
    }
}
