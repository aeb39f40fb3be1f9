//! The command line (contract: docs/protocols/README.md) and its checks: `callwire [flags]` serves,
//! `callwire simulate [flags]` publishes simulated PBX traffic.
//!
//! Every mistake is one line naming the flag; `main` prints it and exits with code 2.

use std::net::SocketAddr;
use std::time::Duration;

use argh::FromArgs;

use crate::limits::Limits;
use crate::logging::Level;
use crate::origins;
use crate::sim::Profile;
use crate::source::amqp::{AmqpOptions, StreamOptions};
use crate::source::mqtt::MqttOptions;
use crate::state::StateConfig;
use crate::tls::BrokerTls;

/// callwire: bridge a PBX's call events from MQTT or AMQP to websocket clients.
#[derive(FromArgs, Debug)]
pub struct Args {
    #[argh(subcommand)]
    pub command: Option<Command>,

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

    /// keep an MQTT session across restarts: a fixed client id, clean_session off, so the
    /// broker keeps what is published while callwire is away (delivery.md, "Restarts")
    #[argh(switch)]
    pub mqtt_session: bool,

    /// MQTT client id (default with --mqtt-session: callwire- and a hash of the host name,
    /// --listen and the topics, the same at every start; else random per start)
    #[argh(option)]
    pub mqtt_client_id: Option<String>,

    /// AMQP 0-9-1 broker URL, amqp://user:pass@host:5672/%2f
    #[argh(option)]
    pub amqp: Option<String>,

    /// topic exchange to bind to, declared if missing (default callwire)
    #[argh(option, default = "String::from(\"callwire\")")]
    pub amqp_exchange: String,

    /// binding key for callwire's queue; may repeat (default #)
    #[argh(option)]
    pub amqp_binding: Vec<String>,

    /// a named durable AMQP queue that outlives restarts, instead of a private one that goes
    /// with the connection (default: none)
    #[argh(option)]
    pub amqp_queue: Option<String>,

    /// seconds the --amqp-queue may go unused before the broker deletes it (default 3600)
    #[argh(
        option,
        default = "crate::source::amqp::DEFAULT_QUEUE_EXPIRES.as_secs()"
    )]
    pub amqp_queue_expires: u64,

    /// bytes the --amqp-queue holds at most while callwire is away; past it the broker drops
    /// the oldest (default 16777216)
    #[argh(option, default = "crate::source::amqp::DEFAULT_QUEUE_MAX_BYTES")]
    pub amqp_queue_max_bytes: u64,

    /// a RabbitMQ stream to consume instead of a queue, declared if missing and shared by
    /// every bridge of a site: positions are the stream's (default: none)
    #[argh(option)]
    pub amqp_stream: Option<String>,

    /// the --amqp-stream's x-max-length-bytes: past it the broker drops its oldest segments
    /// (default 536870912)
    #[argh(option, default = "crate::source::amqp::DEFAULT_STREAM_MAX_BYTES")]
    pub amqp_stream_max_bytes: u64,

    /// the --amqp-stream's x-max-age in seconds (default 86400)
    #[argh(
        option,
        default = "crate::source::amqp::DEFAULT_STREAM_MAX_AGE.as_secs()"
    )]
    pub amqp_stream_max_age: u64,

    /// no broker: a built-in simulated PBX feeds the bridge
    #[argh(switch)]
    pub demo: bool,

    /// calls per second the demo PBX starts (default 0.5)
    #[argh(option, default = "crate::source::demo::DEFAULT_CALLS_PER_SEC")]
    pub demo_rate: f64,

    /// credentials file (JSON); without it only loopback addresses are served
    #[argh(option)]
    pub auth: Option<String>,

    /// PEM certificate chain to serve https:// and wss:// with (with --tls-key); read again
    /// on SIGHUP
    #[argh(option)]
    pub tls_cert: Option<String>,

    /// PEM private key of --tls-cert; read again on SIGHUP
    #[argh(option)]
    pub tls_key: Option<String>,

    /// PEM file of the certificates that mqtts:// and amqps:// brokers are checked against
    /// (default: the system's roots)
    #[argh(option)]
    pub broker_ca: Option<String>,

    /// serve a non-loopback address without authentication (logged as a warning)
    #[argh(switch)]
    pub insecure_no_auth: bool,

    /// a browser origin, scheme://host[:port], whose pages may use callwire (websockets, REST,
    /// hangups) besides the gateway's own; may repeat; '*' allows any (default: none)
    #[argh(option)]
    pub allowed_origin: Vec<String>,

    /// a host name or address requests may name in Host besides loopback ones, checked only
    /// without --auth (against DNS rebinding); may repeat (default: none)
    #[argh(option)]
    pub allowed_host: Vec<String>,

    /// seconds a websocket has to authenticate with --auth before it is closed (default 10)
    #[argh(option, default = "10")]
    pub auth_timeout: u64,

    /// websockets at once still to authenticate, beside --max-clients (default 64)
    #[argh(option, default = "64")]
    pub max_unauthenticated: usize,

    /// most websocket clients at once (default 512)
    #[argh(option, default = "512")]
    pub max_clients: usize,

    /// most bindings one Blackhole socket may hold (default 32)
    #[argh(option, default = "32")]
    pub max_bindings: usize,

    /// most property filters one iSymphony socket may hold (default 64)
    #[argh(option, default = "64")]
    pub max_filters: usize,

    /// frames queued per client; from half of it the broker waits for the client (default 64)
    #[argh(option, default = "64")]
    pub queue_depth: usize,

    /// bytes queued per client (at least one frame); from half of it the broker waits for the
    /// client (default 1048576)
    #[argh(option, default = "1024 * 1024")]
    pub queue_bytes: usize,

    /// bytes queued to all clients, a frame shared by many counted once; past it frames are
    /// dropped and counted, from half of it the broker waits (default 8388608)
    #[argh(option, default = "8 * 1024 * 1024")]
    pub queue_bytes_total: usize,

    /// seconds a frame may wait for a client before it is closed as too slow (default 5)
    #[argh(option, default = "5")]
    pub stall_timeout: u64,

    /// most live calls kept; past it the oldest is dropped and counted (default 2048)
    #[argh(option, default = "2048")]
    pub max_calls: usize,

    /// recent events kept per live call (default 8)
    #[argh(option, default = "8")]
    pub events_per_call: usize,

    /// MQTT topic prefix that hangup commands are published under (default callwire/command)
    #[argh(option, default = "String::from(\"callwire/command\")")]
    pub command_topic: String,

    /// largest message accepted from a client or the broker, in bytes (default 65536)
    #[argh(option, default = "65536")]
    pub max_message_size: usize,

    /// largest message accepted from a websocket client, in bytes; never above
    /// --max-message-size (default 8192)
    #[argh(option, default = "8192")]
    pub max_request_size: usize,

    /// seconds of silence before an idle socket is pinged, and again before it is closed (default 30)
    #[argh(option, default = "30")]
    pub ping_interval: u64,

    /// websocket and HTTP connections at once from one IP address (default 512)
    #[argh(option, default = "512")]
    pub max_per_ip: usize,

    /// seconds a client has to send its whole request head (default 10)
    #[argh(option, default = "10")]
    pub handshake_timeout: u64,

    /// requests per second one websocket may keep up (default 20)
    #[argh(option, default = "20.0")]
    pub request_rate: f64,

    /// requests one websocket may send in a burst (default 40)
    #[argh(option, default = "40")]
    pub request_burst: u32,

    /// bytes of recent events kept so that clients can resume after a drop (default 2097152)
    #[argh(option, default = "2 * 1024 * 1024")]
    pub history_bytes: usize,

    /// seconds an event stays in the history of recent events (default 300)
    #[argh(option, default = "300")]
    pub history_ttl: u64,

    /// directory where SIGTERM saves the positions, the history and the live calls, and where
    /// the live calls are saved every --state-interval; read back at start-up (default: none)
    #[argh(option)]
    pub state_dir: Option<String>,

    /// seconds between saves of the live calls to --state-dir, when they changed (default 10)
    #[argh(option, default = "10")]
    pub state_interval: u64,

    /// log level: error, warn, info or debug (default info)
    #[argh(option, default = "String::from(\"info\")")]
    pub log_level: String,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Simulate(SimulateArgs),
}

/// publish realistic PBX call lifecycles to a broker, for demos and load
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "simulate")]
pub struct SimulateArgs {
    /// MQTT broker to publish to, mqtt://[user:pass@]host[:port]
    #[argh(option)]
    pub mqtt: Option<String>,

    /// AMQP broker to publish to, amqp://user:pass@host:5672/%2f
    #[argh(option)]
    pub amqp: Option<String>,

    /// topic exchange to publish to over AMQP, declared if missing (default callwire)
    #[argh(option, default = "String::from(\"callwire\")")]
    pub amqp_exchange: String,

    /// event shapes: kazoo, freeswitch, asterisk-ari or asterisk-mqtt (default kazoo)
    #[argh(option, default = "String::from(\"kazoo\")")]
    pub profile: String,

    /// calls started per second (default 5)
    #[argh(option, default = "5.0")]
    pub calls_per_sec: f64,

    /// seconds during which calls start; running calls then finish (default 60)
    #[argh(option, default = "60.0")]
    pub duration: f64,

    /// seed for the generator: the same seed gives the same events (default: from the clock)
    #[argh(option)]
    pub seed: Option<u64>,
}

/// Where the simulator publishes.
#[derive(Debug)]
pub enum SimulateTarget {
    Mqtt(MqttOptions),
    Amqp(AmqpOptions),
}

/// What `callwire simulate` was asked to do, checked.
#[derive(Debug)]
pub struct SimulateConfig {
    pub target: SimulateTarget,
    pub profile: Profile,
    pub calls_per_sec: f64,
    pub duration: std::time::Duration,
    pub seed: Option<u64>,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Run {
    // Both boxed: each is a few hundred bytes, of different sizes, and only one is ever made.
    Serve(Box<Config>),
    Simulate(Box<SimulateConfig>),
}

/// Where events come from.
#[derive(Debug)]
pub enum SourceConfig {
    Mqtt(MqttOptions),
    Amqp(AmqpOptions),
    Demo { calls_per_sec: f64 },
}

/// Everything the server needs, checked.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where hangup commands go over MQTT: `<command_topic>/hangup`.
    pub command_topic: String,
    pub source: SourceConfig,
    pub auth_file: Option<String>,
    /// `--tls-cert` and `--tls-key`: the listener serves TLS only.
    pub tls: Option<TlsFiles>,
    pub insecure_no_auth: bool,
    /// `--allowed-origin`, normalised (`*` kept as it is).
    pub allowed_origins: Vec<String>,
    /// `--allowed-host`, lower-case.
    pub allowed_hosts: Vec<String>,
    pub limits: Limits,
    pub log_level: Level,
    /// `--state-dir` and `--state-interval`, when given.
    pub state: Option<StateConfig>,
}

/// The listener's certificate chain and key files (read by `tls::ListenerTls`).
#[derive(Debug)]
pub struct TlsFiles {
    pub cert: String,
    pub key: String,
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
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => return Err("--tls-cert needs --tls-key".to_owned()),
            (None, Some(_)) => return Err("--tls-key needs --tls-cert".to_owned()),
        };
        let limits = Limits {
            tls: tls.is_some(),
            max_clients: positive("--max-clients", self.max_clients)?,
            max_bindings: positive("--max-bindings", self.max_bindings)?,
            max_filters: positive("--max-filters", self.max_filters)?,
            queue_depth: positive("--queue-depth", self.queue_depth)?,
            queue_bytes: positive("--queue-bytes", self.queue_bytes)?,
            queue_bytes_total: positive("--queue-bytes-total", self.queue_bytes_total)?,
            stall_timeout: Duration::from_secs(positive(
                "--stall-timeout",
                self.stall_timeout as usize,
            )? as u64),
            max_message_size: positive("--max-message-size", self.max_message_size)?,
            max_request_size: positive("--max-request-size", self.max_request_size)?
                .min(self.max_message_size),
            max_calls: positive("--max-calls", self.max_calls)?,
            events_per_call: self.events_per_call,
            ping_interval: Duration::from_secs(positive(
                "--ping-interval",
                self.ping_interval as usize,
            )? as u64),
            max_per_ip: positive("--max-per-ip", self.max_per_ip)?,
            handshake_timeout: Duration::from_secs(positive(
                "--handshake-timeout",
                self.handshake_timeout as usize,
            )? as u64),
            request_rate: if self.request_rate > 0.0 && self.request_rate.is_finite() {
                self.request_rate
            } else {
                return Err(format!(
                    "--request-rate: expected requests per second above 0, got {}",
                    self.request_rate
                ));
            },
            request_burst: positive("--request-burst", self.request_burst as usize)? as u32,
            auth_timeout: Duration::from_secs(positive(
                "--auth-timeout",
                self.auth_timeout as usize,
            )? as u64),
            max_unauthenticated: positive("--max-unauthenticated", self.max_unauthenticated)?,
            history_bytes: positive("--history-bytes", self.history_bytes)?,
            history_ttl: Duration::from_secs(
                positive("--history-ttl", self.history_ttl as usize)? as u64
            ),
        };
        let allowed_origins = (self.allowed_origin.iter())
            .map(|origin| origins::parse_allowed_origin(origin))
            .collect::<Result<_, _>>()?;
        let allowed_hosts = (self.allowed_host.iter())
            .map(|host| origins::parse_allowed_host(host))
            .collect::<Result<_, _>>()?;
        if self.amqp.is_none() && self.amqp_queue.is_some() {
            return Err("--amqp-queue: needs --amqp URL".to_owned());
        }
        if self.amqp.is_none() && self.amqp_stream.is_some() {
            return Err("--amqp-stream: needs --amqp URL".to_owned());
        }
        if (self.amqp.is_some() || self.demo)
            && (self.mqtt_session || self.mqtt_client_id.is_some())
        {
            return Err("--mqtt-session and --mqtt-client-id: need the MQTT source".to_owned());
        }
        let state = match &self.state_dir {
            Some(dir) if dir.is_empty() => return Err("--state-dir: expected a directory".into()),
            Some(dir) => Some(StateConfig {
                dir: dir.into(),
                interval: Duration::from_secs(positive(
                    "--state-interval",
                    self.state_interval as usize,
                )? as u64),
            }),
            None => None,
        };
        let source = if self.demo {
            if self.mqtt.is_some() || self.amqp.is_some() {
                return Err(
                    "--demo: the demo PBX replaces the broker; drop --mqtt and --amqp".to_owned(),
                );
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
        } else if let Some(url) = &self.amqp {
            if self.mqtt.is_some() {
                return Err("--amqp: one source at a time; drop --mqtt or --amqp".to_owned());
            }
            let mut options = AmqpOptions::from_url(url)?;
            options.exchange = self.amqp_exchange;
            options.bindings = if self.amqp_binding.is_empty() {
                vec!["#".to_owned()]
            } else {
                self.amqp_binding
            };
            options.max_message_size = limits.max_message_size;
            options.queue = self.amqp_queue;
            options.queue_expires = Duration::from_secs(positive(
                "--amqp-queue-expires",
                self.amqp_queue_expires as usize,
            )? as u64);
            options.queue_max_bytes =
                positive("--amqp-queue-max-bytes", self.amqp_queue_max_bytes as usize)? as u64;
            options.stream = match self.amqp_stream {
                Some(name) => Some(StreamOptions {
                    name,
                    max_bytes: positive(
                        "--amqp-stream-max-bytes",
                        self.amqp_stream_max_bytes as usize,
                    )? as u64,
                    max_age: Duration::from_secs(positive(
                        "--amqp-stream-max-age",
                        self.amqp_stream_max_age as usize,
                    )? as u64),
                    after: None,
                }),
                None => None,
            };
            options.check()?;
            options
                .tls
                .trust(broker_ca(self.broker_ca.as_deref(), &options.tls)?)?;
            SourceConfig::Amqp(options)
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
            options.clean_session = !self.mqtt_session;
            match self.mqtt_client_id {
                Some(id) if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) => {
                    return Err(format!(
                        "--mqtt-client-id: expected 1 to 256 printable characters, got '{}'",
                        id.escape_debug()
                    ));
                }
                Some(id) => options.client_id = id,
                None if self.mqtt_session => {
                    options.client_id = session_client_id(&host_name(), &listen, &options.topics);
                }
                None => {}
            }
            options
                .tls
                .trust(broker_ca(self.broker_ca.as_deref(), &options.tls)?)?;
            SourceConfig::Mqtt(options)
        };
        Ok(Config {
            listen,
            command_topic: command_topic(self.command_topic)?,
            source,
            auth_file: self.auth,
            tls,
            insecure_no_auth: self.insecure_no_auth,
            allowed_origins,
            allowed_hosts,
            limits,
            log_level,
            state,
        })
    }
}

/// The client id `--mqtt-session` uses unless `--mqtt-client-id` names one: the same at every
/// start of one installation (the broker finds its session again), different for two bridges
/// on one broker (one would take the other's session over). `callwire-` and 14 hex digits of
/// an FNV-1a hash of the host name, the listen address and the topics: 23 characters, what
/// every MQTT 3.1.1 broker accepts.
pub fn session_client_id(host: &str, listen: &SocketAddr, topics: &[String]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let listen = listen.to_string();
    let parts = [host, listen.as_str()]
        .into_iter()
        .chain(topics.iter().map(String::as_str));
    for part in parts {
        for byte in part.bytes().chain([0]) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("callwire-{:014x}", hash & 0x00ff_ffff_ffff_ffff)
}

/// This machine's name, for the session's client id (empty when the kernel does not say).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

/// A prefix that `<prefix>/hangup` makes a topic MQTT can publish to, so that only the call a
/// hangup names can make the broker refuse it (live-api.md).
fn command_topic(prefix: String) -> Result<String, String> {
    let topic_len = prefix.len() + "/hangup".len();
    if prefix.is_empty() || prefix.contains(['+', '#']) || topic_len > usize::from(u16::MAX) {
        return Err(format!(
            "--command-topic: expected a topic without wildcards (+, #) and under 65529 bytes, \
             got '{prefix}'"
        ));
    }
    Ok(prefix)
}

/// `--broker-ca`, which only a TLS broker URL has a use for.
fn broker_ca<'a>(ca: Option<&'a str>, tls: &BrokerTls) -> Result<Option<&'a str>, String> {
    match ca {
        Some(_) if !tls.is_on() => {
            Err("--broker-ca: the broker URL is not TLS; use mqtts:// or amqps://".to_owned())
        }
        ca => Ok(ca),
    }
}

fn positive(flag: &str, value: usize) -> Result<usize, String> {
    if value == 0 {
        Err(format!("{flag}: must be at least 1"))
    } else {
        Ok(value)
    }
}

impl SimulateArgs {
    /// Checks the flags; the error is one line naming the flag.
    pub fn into_config(self) -> Result<SimulateConfig, String> {
        let target = match (self.mqtt, self.amqp) {
            (Some(url), None) => SimulateTarget::Mqtt(MqttOptions::from_url(&url)?),
            (None, Some(url)) => {
                let mut options = AmqpOptions::from_url(&url)?;
                options.exchange = self.amqp_exchange;
                options.check()?;
                SimulateTarget::Amqp(options)
            }
            _ => return Err("simulate: give exactly one of --mqtt URL or --amqp URL".to_owned()),
        };
        let profile = Profile::parse(&self.profile).ok_or_else(|| {
            format!(
                "--profile: expected kazoo, freeswitch, asterisk-ari or asterisk-mqtt, got '{}'",
                self.profile
            )
        })?;
        if !(self.calls_per_sec > 0.0 && self.calls_per_sec <= 10_000.0) {
            return Err(format!(
                "--calls-per-sec: expected a rate in (0, 10000], got {}",
                self.calls_per_sec
            ));
        }
        if !(self.duration > 0.0 && self.duration.is_finite()) {
            return Err(format!(
                "--duration: expected seconds above 0, got {}",
                self.duration
            ));
        }
        Ok(SimulateConfig {
            target,
            profile,
            calls_per_sec: self.calls_per_sec,
            duration: std::time::Duration::from_secs_f64(self.duration),
            seed: self.seed,
        })
    }
}

/// Parses the process's arguments. `Err((message, exit code))`: help goes to stdout with 0,
/// mistakes are one line with 2.
// Never inlined: main's stack frame lasts as long as the process, and this parse inlined
// into it made that frame 50 KiB, all of it touched at start-up and resident for good.
#[inline(never)]
pub fn parse(args: &[String]) -> Result<Run, (String, i32)> {
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
    match parsed.command {
        Some(Command::Simulate(simulate)) => simulate
            .into_config()
            .map(|config| Run::Simulate(Box::new(config))),
        None => parsed
            .into_config()
            .map(|config| Run::Serve(Box::new(config))),
    }
    .map_err(|message| (message, 2))
}

/// Parses `callwire` followed by `args` (for tests).
#[cfg(test)]
fn parse_run(args: &[&str]) -> Result<Run, (String, i32)> {
    let mut all = vec!["callwire".to_owned()];
    all.extend(args.iter().map(|arg| arg.to_string()));
    parse(&all)
}

/// The limits that serve flags give, the defaults for the rest (for other modules' tests).
#[cfg(test)]
pub fn limits_from(flags: &[&str]) -> Limits {
    match parse_run(flags) {
        Ok(Run::Serve(config)) => config.limits,
        other => panic!("not a serve command line {flags:?}: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(args: &[&str]) -> Result<Config, (String, i32)> {
        match parse_run(args)? {
            Run::Serve(config) => Ok(*config),
            other => panic!("expected serve, got {other:?}"),
        }
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
            (&["--tls-cert", "c.pem"], "--tls-cert needs --tls-key"),
            (&["--tls-key", "k.pem"], "--tls-key needs --tls-cert"),
            (
                &["--broker-ca", "ca.pem"],
                "--broker-ca: the broker URL is not TLS",
            ),
            (&["--listen", "0.0.0.0:58080"], "--auth"),
            (&["--max-clients", "0"], "--max-clients"),
            (&["--auth-timeout", "0"], "--auth-timeout"),
            (&["--max-unauthenticated", "0"], "--max-unauthenticated"),
            (
                &["--allowed-origin", "wallboard.example"],
                "--allowed-origin",
            ),
            (
                &["--allowed-origin", "https://w.example/app"],
                "--allowed-origin",
            ),
            (&["--allowed-host", "gateway.lan:80"], "--allowed-host"),
            (&["--log-level", "loud"], "--log-level"),
            (&["--command-topic", "pbx/+/cmd"], "--command-topic"),
            (&["--command-topic", ""], "--command-topic"),
            (&["--demo", "--mqtt", "mqtt://127.0.0.1:1883"], "--demo"),
            (&["--amqp", "http://x"], "--amqp"),
            (&["--amqp", "amqp://h", "--mqtt", "mqtt://h"], "--amqp"),
            (
                &["--amqp", "amqp://h", "--amqp-exchange", ""],
                "--amqp-exchange",
            ),
            (&["simulate"], "--mqtt"),
            (
                &["simulate", "--mqtt", "mqtt://h", "--profile", "pbx9000"],
                "--profile",
            ),
            (
                &["simulate", "--mqtt", "mqtt://h", "--calls-per-sec", "0"],
                "--calls-per-sec",
            ),
        ] {
            let (message, code) = parse_run(args).unwrap_err();
            assert_eq!(code, 2, "{args:?}");
            assert!(
                message.contains(needle) && !message.contains('\n'),
                "{args:?}: {message}"
            );
        }
    }

    #[test]
    fn amqp_and_simulate_parse() {
        match parse_args(&[
            "--amqp",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "--amqp-binding",
            "call.#",
        ])
        .unwrap()
        .source
        {
            SourceConfig::Amqp(options) => {
                assert_eq!(options.exchange, "callwire");
                assert_eq!(options.bindings, vec!["call.#"]);
            }
            other => panic!("expected AMQP, got {other:?}"),
        }
        match parse_run(&[
            "simulate",
            "--amqp",
            "amqp://127.0.0.1",
            "--profile",
            "freeswitch",
            "--seed",
            "7",
        ])
        .unwrap()
        {
            Run::Simulate(config) => {
                assert_eq!(config.profile, Profile::FreeSwitch);
                assert_eq!(config.seed, Some(7));
            }
            other => panic!("expected simulate, got {other:?}"),
        }
    }

    #[test]
    fn browser_flags_repeat_and_default_to_none() {
        let config = parse_args(&[]).unwrap();
        assert!(config.allowed_origins.is_empty() && config.allowed_hosts.is_empty());
        assert_eq!(config.limits.auth_timeout, Duration::from_secs(10));
        let config = parse_args(&[
            "--allowed-origin",
            "https://Wallboard.example",
            "--allowed-origin",
            "*",
            "--allowed-host",
            "Gateway.lan",
            "--allowed-host",
            "10.0.0.2",
        ])
        .unwrap();
        assert_eq!(config.allowed_origins, ["https://wallboard.example", "*"]);
        assert_eq!(config.allowed_hosts, ["gateway.lan", "10.0.0.2"]);
    }

    #[test]
    fn restart_flags_keep_a_session_a_queue_and_a_state_dir() {
        let config = parse_args(&["--mqtt-session", "--state-dir", "/tmp/cw"]).unwrap();
        let SourceConfig::Mqtt(options) = config.source else {
            panic!("expected MQTT");
        };
        assert!(!options.clean_session);
        assert_eq!(options.client_id.len(), 23, "{}", options.client_id);
        let again = parse_args(&["--mqtt-session"]).unwrap();
        let SourceConfig::Mqtt(again) = again.source else {
            panic!("expected MQTT");
        };
        assert_eq!(
            again.client_id, options.client_id,
            "the same at every start"
        );
        let other = parse_args(&["--mqtt-session", "--mqtt-topic", "pbx/#"]).unwrap();
        let SourceConfig::Mqtt(other) = other.source else {
            panic!("expected MQTT");
        };
        assert_ne!(other.client_id, options.client_id, "another bridge");
        let state = config.state.unwrap();
        assert_eq!(state.dir, std::path::Path::new("/tmp/cw"));
        assert_eq!(state.interval, Duration::from_secs(10));
        match parse_args(&["--amqp", "amqp://h", "--amqp-queue", "callwire-gw1"])
            .unwrap()
            .source
        {
            SourceConfig::Amqp(options) => {
                assert_eq!(options.queue.as_deref(), Some("callwire-gw1"));
                assert_eq!(options.queue_expires, Duration::from_secs(3600));
                assert_eq!(options.queue_max_bytes, 16 * 1024 * 1024);
            }
            other => panic!("expected AMQP, got {other:?}"),
        }
        match parse_args(&["--amqp", "amqp://h", "--amqp-stream", "pbx-events"])
            .unwrap()
            .source
        {
            SourceConfig::Amqp(options) => {
                let stream = options.stream.unwrap();
                assert_eq!(stream.name, "pbx-events");
                assert_eq!(stream.epoch(), "stream:pbx-events");
                assert_eq!(stream.max_bytes, 512 * 1024 * 1024);
                assert_eq!(stream.max_age, Duration::from_secs(86400));
                assert_eq!(stream.after, None);
            }
            other => panic!("expected AMQP, got {other:?}"),
        }
        for (args, needle) in [
            (&["--amqp-queue", "q"][..], "--amqp-queue"),
            (
                &["--amqp", "amqp://h", "--amqp-queue", "amq.x"],
                "--amqp-queue",
            ),
            (&["--amqp", "amqp://h", "--mqtt-session"], "--mqtt-session"),
            (&["--amqp-stream", "s"][..], "--amqp-stream"),
            (
                &[
                    "--amqp",
                    "amqp://h",
                    "--amqp-stream",
                    "s",
                    "--amqp-queue",
                    "q",
                ],
                "--amqp-stream",
            ),
            (
                &[
                    "--amqp",
                    "amqp://h",
                    "--amqp-stream",
                    "s",
                    "--amqp-stream-max-age",
                    "0",
                ],
                "--amqp-stream-max-age",
            ),
            (&["--mqtt-client-id", ""], "--mqtt-client-id"),
            (
                &["--state-dir", "/tmp/x", "--state-interval", "0"],
                "--state-interval",
            ),
        ] {
            let (message, code) = parse_run(args).unwrap_err();
            assert!(code == 2 && message.contains(needle), "{args:?}: {message}");
        }
    }

    #[test]
    fn non_loopback_is_allowed_with_auth_or_said_out_loud() {
        assert!(parse_args(&["--listen", "0.0.0.0:1", "--auth", "f.json"]).is_ok());
        assert!(parse_args(&["--listen", "0.0.0.0:1", "--insecure-no-auth"]).is_ok());
    }
}
