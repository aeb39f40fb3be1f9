//! What the MQTT source connects to and how: the options, and the `mqtt://` URL they are
//! parsed from.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::rng::Rng;
use crate::source::url::{self, BrokerUrl, Credential, HostError, Path};
use crate::tls::BrokerTls;

/// The port of `mqtt://host` with no port.
pub const DEFAULT_PORT: u16 = 1883;
/// The port of `mqtts://host` with no port.
pub const DEFAULT_TLS_PORT: u16 = 8883;
/// The largest payload taken from the broker unless the caller sets another.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;

/// Where and how to connect, and what to subscribe to.
#[derive(Clone)]
pub struct MqttOptions {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Filters subscribed with QoS 1 after every connect; empty for publish-only use.
    pub topics: Vec<String>,
    /// Taken off the front of a topic before it becomes a routing key.
    pub strip_prefix: Option<String>,
    pub client_id: String,
    /// `false` with `--mqtt-session`: the broker keeps the session (subscriptions and the QoS 1
    /// messages published meanwhile) while callwire is away, under a fixed `client_id`.
    pub clean_session: bool,
    /// Ping after this long without sending; zero turns keep-alive off.
    pub keep_alive: Duration,
    /// The largest payload delivered; a larger message is skipped and counted.
    pub max_message_size: usize,
    /// TLS (`mqtts://`) or not.
    pub tls: BrokerTls,
}

impl fmt::Debug for MqttOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("topics", &self.topics)
            .field("strip_prefix", &self.strip_prefix)
            .field("client_id", &self.client_id)
            .field("clean_session", &self.clean_session)
            .field("keep_alive", &self.keep_alive)
            .field("max_message_size", &self.max_message_size)
            .field("tls", &self.tls)
            .finish()
    }
}

impl MqttOptions {
    /// Parses `mqtt://[user[:pass]@]host[:port]` (port default 1883), or `mqtts://` (TLS,
    /// port default 8883, trusting the system's roots until [`BrokerTls::trust`] says else). User and password are
    /// percent-decoded. Errors are one line naming the problem; they never show the password.
    pub fn from_url(url: &str) -> Result<MqttOptions, String> {
        let shown = url::redact(url, Path::None);
        let expected = || format!("--mqtt: expected mqtt://host:port, got '{shown}'");
        let parts = BrokerUrl::split(url, Path::None).ok_or_else(expected)?;
        let scheme = parts.scheme;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => BrokerTls::Off,
            "mqtts" | "ssl" | "tls" => BrokerTls::On(None),
            "ws" | "wss" => {
                return Err(format!(
                    "--mqtt: MQTT over websockets ({scheme}://) is not supported; use mqtt://host:port, got '{shown}'"
                ));
            }
            _ => return Err(expected()),
        };
        let tail = parts.tail;
        if !tail.is_empty() && tail != "/" {
            return Err(format!(
                "--mqtt: unexpected '{tail}' after host:port in '{shown}' (expected mqtt://host:port)"
            ));
        }

        let (username, password) = parts.credentials().map_err(|(which, e)| match which {
            Credential::User => format!("--mqtt: user name in '{shown}': {e}"),
            Credential::Password => format!("--mqtt: password in '{shown}': {e}"),
        })?;
        if username.as_deref() == Some("") {
            return Err(format!(
                "--mqtt: empty user name before '@' in '{shown}' (MQTT needs a user name with a password)"
            ));
        }
        for (what, text) in [("user name", &username), ("password", &password)] {
            if text
                .as_ref()
                .is_some_and(|text| text.len() > usize::from(u16::MAX))
            {
                return Err(format!(
                    "--mqtt: {what} in '{shown}': longer than MQTT allows (65535 bytes)"
                ));
            }
        }

        let (host, port) = parts.host_port().map_err(|e| match e {
            HostError::UnclosedBracket => {
                format!("--mqtt: missing ']' after IPv6 address in '{shown}'")
            }
            HostError::NotIpv6(host) => {
                format!("--mqtt: '{host}' is not an IPv6 address in '{shown}'")
            }
            HostError::AfterBracket => expected(),
            HostError::Unbracketed => format!(
                "--mqtt: write an IPv6 address in brackets, as mqtt://[::1]:1883, got '{shown}'"
            ),
        })?;
        if host.is_empty() {
            return Err(format!(
                "--mqtt: missing host in '{shown}' (expected mqtt://host:port)"
            ));
        }
        let valid_name = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if host.parse::<IpAddr>().is_err() && !valid_name {
            return Err(format!("--mqtt: invalid host '{host}' in '{shown}'"));
        }
        let port = match port {
            None if tls.is_on() => DEFAULT_TLS_PORT,
            None => DEFAULT_PORT,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => return Err(format!("--mqtt: invalid port '{port}' in '{shown}'")),
            },
        };

        Ok(MqttOptions {
            host: host.to_owned(),
            port,
            username,
            password,
            topics: Vec::new(),
            strip_prefix: None,
            client_id: default_client_id(),
            clean_session: true,
            keep_alive: Duration::from_secs(30),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            tls,
        })
    }

    /// `host:port`, with brackets around an IPv6 address, for log lines.
    pub(super) fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `callwire-` and up to 14 hex digits from the process id and the clock: unique per process
/// and within the 23 characters every MQTT 3.1.1 broker accepts.
fn default_client_id() -> String {
    format!(
        "callwire-{:x}",
        Rng::from_clock().next_u64() & 0x00ff_ffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> MqttOptions {
        MqttOptions::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn parse_err(url: &str) -> String {
        match MqttOptions::from_url(url) {
            Ok(opts) => panic!("{url} parsed as {opts:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn url_host_and_port() {
        let o = parse("mqtt://broker.example:1884");
        assert_eq!((o.host.as_str(), o.port), ("broker.example", 1884));
        assert_eq!((o.username, o.password), (None, None));
        let o = parse("mqtt://10.0.0.5");
        assert_eq!((o.host.as_str(), o.port), ("10.0.0.5", 1883));
        let o = parse("MQTT://localhost:1883/");
        assert_eq!((o.host.as_str(), o.port), ("localhost", 1883));
        let o = parse("mqtt://[::1]:2883");
        assert_eq!((o.host.as_str(), o.port), ("::1", 2883));
        assert_eq!(o.address(), "[::1]:2883");
        let o = parse("mqtt://[fe80::1]");
        assert_eq!((o.host.as_str(), o.port), ("fe80::1", 1883));
        assert!(o.topics.is_empty() && o.strip_prefix.is_none());
        assert!(o.client_id.starts_with("callwire-") && o.client_id.len() <= 23);
    }

    #[test]
    fn url_credentials_are_percent_decoded() {
        let o = parse("mqtt://bob:s%40cr%3At@host:1883");
        assert_eq!(o.username.as_deref(), Some("bob"));
        assert_eq!(o.password.as_deref(), Some("s@cr:t"));
        let o = parse("mqtt://al%20ice@host");
        assert_eq!(o.username.as_deref(), Some("al ice"));
        assert_eq!(o.password, None);
        // A raw '@' or '/' in the password: the last '@' ends the user info.
        let o = parse("mqtt://bob:p@ss/w@host");
        assert_eq!(o.password.as_deref(), Some("p@ss/w"));
        assert_eq!(o.host, "host");
        let o = parse("mqtt://bob:@host");
        assert_eq!(o.password.as_deref(), Some(""));
        let o = parse("mqtt://b%C3%B6b:x@host");
        assert_eq!(o.username.as_deref(), Some("böb"));
    }

    #[test]
    fn mqtts_is_tls_on_8883_unless_a_port_is_given() {
        let o = parse("mqtts://broker.lan");
        assert!(o.tls.is_on());
        assert_eq!((o.host.as_str(), o.port), ("broker.lan", DEFAULT_TLS_PORT));
        assert_eq!(parse("ssl://h:9883").port, 9883);
        assert!(!parse("mqtt://h").tls.is_on());
    }

    #[test]
    fn url_errors_name_the_problem() {
        let e = parse_err("http://x");
        assert_eq!(e, "--mqtt: expected mqtt://host:port, got 'http://x'");
        assert!(parse_err("broker:1883").contains("expected mqtt://host:port"));
        assert!(parse_err("ws://host").contains("websockets"));
        assert!(parse_err("mqtt://host:port").contains("invalid port 'port'"));
        assert!(parse_err("mqtt://host:0").contains("invalid port '0'"));
        assert!(parse_err("mqtt://host:65536").contains("invalid port"));
        assert!(parse_err("mqtt://host:").contains("invalid port ''"));
        assert!(parse_err("mqtt://:1883").contains("missing host"));
        assert!(parse_err("mqtt://").contains("missing host"));
        assert!(parse_err("mqtt://host/topic").contains("'/topic'"));
        assert!(parse_err("mqtt://host?x=1").contains("'?x=1'"));
        assert!(parse_err("mqtt://::1").contains("brackets"));
        assert!(parse_err("mqtt://[::1").contains("']'"));
        assert!(parse_err("mqtt://[nope]:1").contains("not an IPv6"));
        assert!(parse_err("mqtt://ho st").contains("invalid host"));
        assert!(parse_err("mqtt://:pw@host").contains("empty user name"));
        assert!(parse_err("mqtt://bob%zz:pw@host").contains("percent-encoding"));
        // A sign is not a hex digit (this copy once took `%+1` for byte 1).
        assert!(parse_err("mqtt://bob%+1:pw@host").contains("percent-encoding"));
        assert!(parse_err("mqtt://bob:%ff@host").contains("UTF-8"));
        for e in [
            parse_err("mqtt://bob:hunter2@host:x"),
            parse_err("mqtt://bob:hunter2%@h"),
        ] {
            assert!(!e.contains("hunter2") && e.contains("***"), "{e}");
            assert!(!e.contains('\n'));
        }
        let o = parse("mqtt://bob:hunter2@host");
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}
