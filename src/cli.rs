//! The command line (contract: README.md) and its checks, turned into a `Config`.
//!
//! Every mistake is one line naming the flag; `main` prints it and exits with code 2.

use std::net::SocketAddr;
use std::time::Duration;

use argh::FromArgs;

use crate::limits::Limits;
use crate::logging::Level;
use crate::source::mqtt::MqttOptions;

/// callwire: bridge a PBX's call events from MQTT to websocket clients.
#[derive(FromArgs, Debug)]
pub struct Args {
    /// address to serve websockets and HTTP on (default 127.0.0.1:58080)
    #[argh(option, default = "String::from(\"127.0.0.1:58080\")")]
    pub listen: String,

    /// MQTT broker URL, mqtt://[user:pass@]host[:port] (default mqtt://127.0.0.1:1883)
    #[argh(option)]
    pub mqtt: Option<String>,

    /// MQTT topic filter to subscribe to; may repeat (default #)
    #[argh(option)]
    pub mqtt_topic: Vec<String>,

    /// prefix dropped from MQTT topics before they become routing keys, e.g. pbx/
    #[argh(option)]
    pub mqtt_strip_prefix: Option<String>,

    /// no broker: a built-in simulated PBX feeds the bridge
    #[argh(switch)]
    pub demo: bool,

    /// calls per second the demo PBX starts (default 0.5)
    #[argh(option, default = "0.5")]
    pub demo_rate: f64,

    /// credentials file (JSON); without it only loopback addresses are served
    #[argh(option)]
    pub auth: Option<String>,

    /// serve a non-loopback address without authentication (logged as a warning)
    #[argh(switch)]
    pub insecure_no_auth: bool,

    /// most websocket clients at once (default 1024)
    #[argh(option, default = "1024")]
    pub max_clients: usize,

    /// most bindings one Blackhole socket may hold (default 32)
    #[argh(option, default = "32")]
    pub max_bindings: usize,

    /// frames queued per client before new ones are dropped for it (default 64)
    #[argh(option, default = "64")]
    pub queue_depth: usize,

    /// frames a client may miss in a row before it is disconnected as too slow (default 256)
    #[argh(option, default = "256")]
    pub max_missed: u32,

    /// largest message accepted from a client or the broker, in bytes (default 65536)
    #[argh(option, default = "65536")]
    pub max_message_size: usize,

    /// seconds of silence before an idle socket is pinged, and again before it is closed (default 30)
    #[argh(option, default = "30")]
    pub ping_interval: u64,

    /// log level: error, warn, info or debug (default info)
    #[argh(option, default = "String::from(\"info\")")]
    pub log_level: String,
}

/// Where events come from.
#[derive(Debug)]
pub enum SourceConfig {
    Mqtt(MqttOptions),
    Demo { calls_per_sec: f64 },
}

/// Everything the server needs, checked.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub source: SourceConfig,
    pub auth_file: Option<String>,
    pub insecure_no_auth: bool,
    pub limits: Limits,
    pub log_level: Level,
}

impl Args {
    /// Checks the flags and builds the configuration; the error is one line naming the flag.
    pub fn into_config(self) -> Result<Config, String> {
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            format!(
                "--listen: expected IP:PORT such as 127.0.0.1:58080, got '{}'",
                self.listen
            )
        })?;
        if !listen.ip().is_loopback() && self.auth.is_none() && !self.insecure_no_auth {
            return Err(format!(
                "--listen {listen} is not a loopback address: pass --auth FILE to require \
                 credentials (or --insecure-no-auth to serve it without any)"
            ));
        }
        let log_level = Level::parse(&self.log_level).ok_or_else(|| {
            format!(
                "--log-level: expected error, warn, info or debug, got '{}'",
                self.log_level
            )
        })?;
        let limits = Limits {
            max_clients: positive("--max-clients", self.max_clients)?,
            max_bindings: positive("--max-bindings", self.max_bindings)?,
            queue_depth: positive("--queue-depth", self.queue_depth)?,
            max_missed: positive("--max-missed", self.max_missed as usize)? as u32,
            max_message_size: positive("--max-message-size", self.max_message_size)?,
            ping_interval: Duration::from_secs(positive(
                "--ping-interval",
                self.ping_interval as usize,
            )? as u64),
        };
        let source = if self.demo {
            if self.mqtt.is_some() {
                return Err("--demo: the demo PBX replaces the broker; drop --mqtt".to_owned());
            }
            if !(self.demo_rate > 0.0 && self.demo_rate <= 1000.0) {
                return Err(format!(
                    "--demo-rate: expected calls per second in (0, 1000], got {}",
                    self.demo_rate
                ));
            }
            SourceConfig::Demo {
                calls_per_sec: self.demo_rate,
            }
        } else {
            let url = self.mqtt.as_deref().unwrap_or("mqtt://127.0.0.1:1883");
            let mut options = MqttOptions::from_url(url)?;
            options.topics = if self.mqtt_topic.is_empty() {
                vec!["#".to_owned()]
            } else {
                self.mqtt_topic
            };
            options.strip_prefix = self.mqtt_strip_prefix;
            options.max_message_size = limits.max_message_size;
            SourceConfig::Mqtt(options)
        };
        Ok(Config {
            listen,
            source,
            auth_file: self.auth,
            insecure_no_auth: self.insecure_no_auth,
            limits,
            log_level,
        })
    }
}

fn positive(flag: &str, value: usize) -> Result<usize, String> {
    if value == 0 {
        Err(format!("{flag}: must be at least 1"))
    } else {
        Ok(value)
    }
}

/// Parses the process's arguments. `Err((message, exit code))`: help goes to stdout with 0,
/// mistakes are one line with 2.
pub fn parse(args: &[String]) -> Result<Config, (String, i32)> {
    let (command, rest) = args
        .split_first()
        .map(|(c, r)| (c.as_str(), r))
        .unwrap_or(("callwire", &[]));
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let parsed = Args::from_args(&[command], &rest).map_err(|exit| match exit.status {
        Ok(()) => (exit.output, 0),
        Err(()) => (
            exit.output
                .lines()
                .next()
                .unwrap_or("bad arguments")
                .to_owned(),
            2,
        ),
    })?;
    parsed.into_config().map_err(|message| (message, 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(args: &[&str]) -> Result<Config, (String, i32)> {
        let mut all = vec!["callwire".to_owned()];
        all.extend(args.iter().map(|arg| arg.to_string()));
        parse(&all)
    }

    #[test]
    fn defaults_follow_the_contract() {
        let config = parse_args(&[]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:58080");
        match config.source {
            SourceConfig::Mqtt(options) => assert_eq!(options.topics, vec!["#"]),
            other => panic!("expected MQTT by default, got {other:?}"),
        }
    }

    #[test]
    fn mistakes_are_one_line_with_exit_code_2() {
        for (args, needle) in [
            (&["--bogus"][..], "--bogus"),
            (&["--listen", "nope"], "--listen"),
            (&["--listen", "0.0.0.0:58080"], "--auth"),
            (&["--max-clients", "0"], "--max-clients"),
            (&["--log-level", "loud"], "--log-level"),
            (&["--demo", "--mqtt", "mqtt://127.0.0.1:1883"], "--demo"),
        ] {
            let (message, code) = parse_args(args).unwrap_err();
            assert_eq!(code, 2, "{args:?}");
            assert!(
                message.contains(needle) && !message.contains('\n'),
                "{args:?}: {message}"
            );
        }
    }

    #[test]
    fn non_loopback_is_allowed_with_auth_or_said_out_loud() {
        assert!(parse_args(&["--listen", "0.0.0.0:1", "--auth", "f.json"]).is_ok());
        assert!(parse_args(&["--listen", "0.0.0.0:1", "--insecure-no-auth"]).is_ok());
    }
}
