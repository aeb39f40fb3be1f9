//! Broker URLs, `scheme://[user[:password]@]host[:port][/path]`: the one place that splits
//! them into user info, host, port and the rest, percent-decodes the user info (with
//! `crate::percent`) and hides the password in anything shown.

use crate::percent::{self, DecodeError};

/// Whether a URL of this kind has a path after the authority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// No path (MQTT): the last `@` ends the user info, so a password may hold an unencoded
    /// `/`, `@` or `?`.
    None,
    /// A path (AMQP's vhost) may follow: the authority ends at the first `/`, `?` or `#`.
    Allowed,
}

/// A URL split at its delimiters, nothing decoded or checked yet.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BrokerUrl<'a> {
    pub scheme: &'a str,
    /// `user[:password]`, as written.
    userinfo: Option<&'a str>,
    /// `host[:port]`, an IPv6 host in brackets.
    hostport: &'a str,
    /// The path, query and fragment, as written (empty when there are none).
    pub tail: &'a str,
}

/// What is wrong with the host and port.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HostError<'a> {
    /// `[` with no `]`.
    UnclosedBracket,
    /// Brackets around something that is not an IPv6 address.
    NotIpv6(&'a str),
    /// An IPv6 address written without brackets.
    Unbracketed,
    /// Something other than `:port` after the `]`.
    AfterBracket,
}

/// Which part of the user info could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Credential {
    User,
    Password,
}

impl<'a> BrokerUrl<'a> {
    /// Splits `url`; `None` when it has no `scheme://`.
    pub(crate) fn split(url: &'a str, path: Path) -> Option<BrokerUrl<'a>> {
        let (scheme, rest) = url.split_once("://")?;
        let (userinfo, rest) = match userinfo_end(rest, path) {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (hostport, tail) = rest.split_at(end);
        Some(BrokerUrl {
            scheme,
            userinfo,
            hostport,
            tail,
        })
    }

    /// The user name and the password, percent-decoded; `(None, None)` without user info.
    #[allow(clippy::type_complexity)]
    pub(crate) fn credentials(
        &self,
    ) -> Result<(Option<String>, Option<String>), (Credential, DecodeError)> {
        let Some(info) = self.userinfo else {
            return Ok((None, None));
        };
        let (user, password) = match info.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (info, None),
        };
        let user = percent::decode(user).map_err(|e| (Credential::User, e))?;
        let password = password
            .map(percent::decode)
            .transpose()
            .map_err(|e| (Credential::Password, e))?;
        Ok((Some(user), password))
    }

    /// The host (without brackets) and the port as written, if any.
    pub(crate) fn host_port(&self) -> Result<(&'a str, Option<&'a str>), HostError<'a>> {
        let hostport = self.hostport;
        if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or(HostError::UnclosedBracket)?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(HostError::NotIpv6(host));
            }
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or(HostError::AfterBracket)?),
            };
            return Ok((host, port));
        }
        match hostport.split_once(':') {
            Some((_, port)) if port.contains(':') => Err(HostError::Unbracketed),
            Some((host, port)) => Ok((host, Some(port))),
            None => Ok((hostport, None)),
        }
    }
}

/// Where the user info ends (its `@`), if there is any.
fn userinfo_end(rest: &str, path: Path) -> Option<usize> {
    match path {
        Path::None => rest.rfind('@'),
        Path::Allowed => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            rest[..end].rfind('@')
        }
    }
}

/// `url` with any password replaced by `***`, fit for an error message.
pub(crate) fn redact(url: &str, path: Path) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some(at) = userinfo_end(rest, path) else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_the_right_at_sign() {
        let url = BrokerUrl::split("mqtt://bob:p@ss/w@host:1883", Path::None).unwrap();
        assert_eq!(url.host_port(), Ok(("host", Some("1883"))));
        assert_eq!(
            url.credentials(),
            Ok((Some("bob".into()), Some("p@ss/w".into())))
        );
        assert_eq!(url.tail, "");

        let url = BrokerUrl::split("amqp://u:pw@h/v@x", Path::Allowed).unwrap();
        assert_eq!(url.host_port(), Ok(("h", None)));
        assert_eq!(url.tail, "/v@x");
        assert_eq!(url.credentials(), Ok((Some("u".into()), Some("pw".into()))));
        assert_eq!(
            redact("amqp://u:pw@h/v@x", Path::Allowed),
            "amqp://u:***@h/v@x"
        );
        assert_eq!(redact("amqp://h/a:b@c", Path::Allowed), "amqp://h/a:b@c");
        assert_eq!(redact("mqtt://u:p@ss@h", Path::None), "mqtt://u:***@h");
        assert_eq!(redact("mqtt://u@h", Path::None), "mqtt://u@h");
        assert_eq!(redact("no scheme", Path::None), "no scheme");
        assert_eq!(BrokerUrl::split("host:1883", Path::None), None);
    }

    #[test]
    fn hosts_and_their_errors() {
        let host = |url| BrokerUrl::split(url, Path::Allowed).unwrap().host_port();
        assert_eq!(host("x://[::1]:5"), Ok(("::1", Some("5"))));
        assert_eq!(host("x://[::1]"), Ok(("::1", None)));
        assert_eq!(host("x://10.0.0.1/v"), Ok(("10.0.0.1", None)));
        assert_eq!(host("x://h:"), Ok(("h", Some(""))));
        assert_eq!(host("x://[::1"), Err(HostError::UnclosedBracket));
        assert_eq!(host("x://[nope]"), Err(HostError::NotIpv6("nope")));
        assert_eq!(host("x://::1"), Err(HostError::Unbracketed));
        assert_eq!(host("x://[::1]5"), Err(HostError::AfterBracket));
    }

    #[test]
    fn credentials_are_percent_decoded_strictly() {
        let creds = |url| BrokerUrl::split(url, Path::None).unwrap().credentials();
        assert_eq!(
            creds("mqtt://b%C3%B6b:s%40cr%3At@h"),
            Ok((Some("böb".into()), Some("s@cr:t".into())))
        );
        assert_eq!(creds("mqtt://h"), Ok((None, None)));
        assert_eq!(
            creds("mqtt://al%20ice@h"),
            Ok((Some("al ice".into()), None))
        );
        // A sign is not a hex digit: `%+1` is refused, in the user name and in the password.
        assert_eq!(
            creds("mqtt://bob%+1:pw@h"),
            Err((Credential::User, DecodeError::BadEscape))
        );
        assert_eq!(
            creds("mqtt://bob:pw%+1@h"),
            Err((Credential::Password, DecodeError::BadEscape))
        );
        assert_eq!(
            creds("mqtt://bob:%ff@h"),
            Err((Credential::Password, DecodeError::NotUtf8))
        );
    }
}
