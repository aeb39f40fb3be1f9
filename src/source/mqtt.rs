//! The MQTT source: rumqttc's codec and state machine driven over smol's `TcpStream`.
//!
//! One task owns the connection: it connects (with a timeout), sends CONNECT and waits for
//! CONNACK itself (that handshake is not part of `MqttState`), subscribes, then reads packets,
//! answers them through `MqttState`, sends keep-alive pings and the publishes queued through
//! [`MqttPublisher`], and on any loss reconnects after a capped, jittered backoff. No tokio
//! runtime and no extra thread: with an IP literal as host the process keeps smol's reactor
//! thread as its only other thread (a hostname is resolved on smol's blocking pool).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt, future};
use rumqttc::{
    ConnectReturnCode, Login, MqttState, Packet, PingReq, Publish, QoS, Request, StateError,
    Subscribe, SubscribeFilter, SubscribeReasonCode,
};
use smol::Timer;
use smol::channel::{Receiver, Sender, TrySendError};
use smol::net::TcpStream;

use crate::event::{self, Event};
use crate::logging::{RateLimit, held_back};
use crate::metrics::{DropReason, Metrics};
use crate::percent;
use crate::rng::Rng;
use crate::source::{Backoff, Deliver, SourceStatus, room};

/// The port of `mqtt://host` with no port.
pub const DEFAULT_PORT: u16 = 1883;
/// The largest payload taken from the broker unless the caller sets another.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;
/// How many publishes [`MqttPublisher`] queues before it refuses more.
pub const PUBLISH_QUEUE: usize = 256;

/// Budget for resolving and connecting, and again for CONNECT/CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A write that cannot finish in this long means the link is dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Our QoS 1 publishes that may await their PUBACK at once.
const MAX_INFLIGHT: u16 = 32;
/// A queued publish not sent within this long (the broker was away) is dropped, not sent late.
const PUBLISH_TTL: Duration = Duration::from_secs(30);
/// A connection that lasted this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// The read buffer's starting size, and the size it returns to after a big message.
const BUF_INITIAL: usize = 4 * 1024;
const BUF_KEEP: usize = 64 * 1024;
const READ_CHUNK_MAX: usize = 256 * 1024;
/// The longest packet other than PUBLISH a broker may send us (a SUBACK is 2 + one byte per
/// filter).
const NON_PUBLISH_MAX: usize = 64 * 1024;
/// Packets taken from the read buffer before the source lets other tasks run: what the
/// connections write in one round under load.
const TAKE_PER_TURN: usize = 64;
/// MQTT's largest remaining length.
const MQTT_MAX_REMAINING: usize = 268_435_455;

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
            .finish()
    }
}

impl MqttOptions {
    /// Parses `mqtt://[user[:pass]@]host[:port]` (port default 1883). User and password are
    /// percent-decoded. Errors are one line naming the problem; they never show the password.
    pub fn from_url(url: &str) -> Result<MqttOptions, String> {
        let shown = redact(url);
        let expected = || format!("--mqtt: expected mqtt://host:port, got '{shown}'");
        let (scheme, rest) = url.split_once("://").ok_or_else(expected)?;
        match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => {}
            "mqtts" | "ssl" | "tls" => {
                return Err(format!(
                    "--mqtt: TLS ({scheme}://) is not supported in this build; use mqtt://host:port, got '{shown}'"
                ));
            }
            "ws" | "wss" => {
                return Err(format!(
                    "--mqtt: MQTT over websockets ({scheme}://) is not supported; use mqtt://host:port, got '{shown}'"
                ));
            }
            _ => return Err(expected()),
        }

        // The last '@' ends the user info, so a password may hold an unencoded '/', '@' or '?'.
        let (userinfo, rest) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (hostport, tail) = rest.split_at(end);
        if !tail.is_empty() && tail != "/" {
            return Err(format!(
                "--mqtt: unexpected '{tail}' after host:port in '{shown}' (expected mqtt://host:port)"
            ));
        }

        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, pass) = match info.split_once(':') {
                    Some((user, pass)) => (user, Some(pass)),
                    None => (info, None),
                };
                let user = percent_decode(user)
                    .map_err(|e| format!("--mqtt: user name in '{shown}': {e}"))?;
                if user.is_empty() {
                    return Err(format!(
                        "--mqtt: empty user name before '@' in '{shown}' (MQTT needs a user name with a password)"
                    ));
                }
                let pass = match pass {
                    Some(pass) => Some(
                        percent_decode(pass)
                            .map_err(|e| format!("--mqtt: password in '{shown}': {e}"))?,
                    ),
                    None => None,
                };
                (Some(user), pass)
            }
        };

        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("--mqtt: missing ']' after IPv6 address in '{shown}'"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!(
                    "--mqtt: '{host}' is not an IPv6 address in '{shown}'"
                ));
            }
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(expected)?),
            };
            (host, port)
        } else {
            match hostport.split_once(':') {
                Some((_, port)) if port.contains(':') => {
                    return Err(format!(
                        "--mqtt: write an IPv6 address in brackets, as mqtt://[::1]:1883, got '{shown}'"
                    ));
                }
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
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
        })
    }

    /// `host:port`, with brackets around an IPv6 address, for log lines.
    fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The URL with any password replaced by `***`, fit for an error message.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A user name or password from the URL, percent-decoded, within MQTT's length limit.
fn percent_decode(text: &str) -> Result<String, String> {
    let text = percent::decode(text).map_err(|e| e.to_string())?;
    if text.len() > usize::from(u16::MAX) {
        return Err("longer than MQTT allows (65535 bytes)".to_owned());
    }
    Ok(text)
}

/// `callwire-` and up to 14 hex digits from the process id and the clock: unique per process
/// and within the 23 characters every MQTT 3.1.1 broker accepts.
fn default_client_id() -> String {
    format!(
        "callwire-{:x}",
        Rng::from_clock().next_u64() & 0x00ff_ffff_ffff_ffff
    )
}

/// Why [`MqttPublisher::publish`] refused a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishError {
    /// The queue holds [`PUBLISH_QUEUE`] messages not yet sent.
    Full,
    /// The source is not connected to the broker (or no longer runs).
    Disconnected,
    /// Empty, longer than 65535 bytes, or holding a wildcard (`+`, `#`).
    InvalidTopic,
    /// Topic and payload exceed MQTT's largest packet.
    TooLarge,
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PublishError::Full => "MQTT publish queue is full",
            PublishError::Disconnected => "MQTT source is not connected",
            PublishError::InvalidTopic => "invalid MQTT topic",
            PublishError::TooLarge => "MQTT message too large",
        })
    }
}

impl std::error::Error for PublishError {}

/// A handle to publish (QoS 1) through the source's connection.
#[derive(Clone)]
pub struct MqttPublisher {
    queue: Sender<Queued>,
    status: Rc<SourceStatus>,
}

impl fmt::Debug for MqttPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttPublisher")
            .field("queued", &self.queue.len())
            .finish()
    }
}

struct Queued {
    at: Instant,
    publish: Publish,
}

impl MqttPublisher {
    /// Queues a QoS 1 publish. `Ok` means queued, not yet acknowledged; a message still queued
    /// or unacknowledged when the link drops is sent again after the reconnect, unless it is
    /// older than 30 s by then.
    pub fn publish(&self, topic: &str, payload: Bytes) -> Result<(), PublishError> {
        if topic.is_empty() || topic.len() > usize::from(u16::MAX) || topic.contains(['+', '#']) {
            return Err(PublishError::InvalidTopic);
        }
        if 2 + topic.len() + 2 + payload.len() > MQTT_MAX_REMAINING {
            return Err(PublishError::TooLarge);
        }
        if !self.status.connected() {
            return Err(PublishError::Disconnected);
        }
        let publish = Publish::from_bytes(topic, QoS::AtLeastOnce, payload);
        let queued = Queued {
            at: Instant::now(),
            publish,
        };
        match self.queue.try_send(queued) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(PublishError::Full),
            Err(TrySendError::Closed(_)) => Err(PublishError::Disconnected),
        }
    }
}

/// Builds the source: a publisher, and the driver future (connect, subscribe, read,
/// reconnect, forever) for the caller to spawn on its `LocalExecutor`.
pub fn start(
    opts: MqttOptions,
    status: Rc<SourceStatus>,
    metrics: Rc<Metrics>,
    deliver: Deliver,
) -> (MqttPublisher, impl Future<Output = ()>) {
    let (queue, requests) = smol::channel::bounded(PUBLISH_QUEUE);
    let publisher = MqttPublisher {
        queue,
        status: status.clone(),
    };
    for topic in &opts.topics {
        if !rumqttc::valid_filter(topic) {
            warn!("mqtt: '{topic}' is not a valid topic filter; the broker may refuse it");
        }
    }
    let driver = Driver {
        address: opts.address(),
        opts,
        status,
        metrics,
        deliver,
        requests,
        requests_open: true,
        retry: VecDeque::new(),
        subscribe_pkid: 0,
        logs: Logs::default(),
    };
    (publisher, driver.run())
}

/// Rate limits for the lines that can repeat.
struct Logs {
    failed: RateLimit,
    lost: RateLimit,
    connected: RateLimit,
    too_large: RateLimit,
    expired: RateLimit,
}

impl Default for Logs {
    fn default() -> Logs {
        Logs {
            failed: RateLimit::new(Duration::from_secs(60)),
            lost: RateLimit::new(Duration::from_secs(10)),
            connected: RateLimit::new(Duration::from_secs(10)),
            too_large: RateLimit::new(Duration::from_secs(10)),
            expired: RateLimit::new(Duration::from_secs(10)),
        }
    }
}

/// How a session ended.
enum Failure {
    /// No connection was established.
    Connect(String),
    /// The broker answered CONNECT with a refusal.
    Refused(ConnectReturnCode),
    /// An established connection was lost.
    Lost(String),
}

struct Driver {
    opts: MqttOptions,
    address: String,
    status: Rc<SourceStatus>,
    metrics: Rc<Metrics>,
    deliver: Deliver,
    requests: Receiver<Queued>,
    requests_open: bool,
    /// Publishes that were unacknowledged when the last connection dropped.
    retry: VecDeque<Queued>,
    subscribe_pkid: u16,
    logs: Logs,
}

impl Driver {
    async fn run(mut self) {
        let mut backoff = Backoff::new(Rng::from_clock());
        let mut state = MqttState::new(MAX_INFLIGHT, false);
        loop {
            let began = Instant::now();
            let failure = self.session(&mut state).await;
            let was_connected = self.status.connected();
            self.status.set_connected(false);
            self.requeue(&mut state);

            if was_connected && began.elapsed() >= STABLE_AFTER {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            let ms = delay.as_millis();
            let address = &self.address;
            match failure {
                Failure::Lost(reason) => {
                    if let Some(held) = self.logs.lost.check() {
                        warn!(
                            "mqtt: connection to {address} lost: {reason}; reconnecting in {ms} ms{}",
                            held_back(held)
                        );
                    }
                }
                Failure::Connect(reason) => {
                    if let Some(held) = self.logs.failed.check() {
                        warn!(
                            "mqtt: cannot connect to {address}: {reason}; retrying in {ms} ms{}",
                            held_back(held)
                        );
                    }
                }
                Failure::Refused(code) => {
                    if let Some(held) = self.logs.failed.check() {
                        let who = match &self.opts.username {
                            Some(user) => format!("user '{user}'"),
                            None => "no user name given".to_owned(),
                        };
                        error!(
                            "mqtt: broker {address} refused the connection: {} ({who}); retrying in {ms} ms{}",
                            refusal(code),
                            held_back(held)
                        );
                    }
                }
            }
            Timer::after(delay).await;
        }
    }

    /// Takes back from the state what the last connection left unacknowledged, to send again.
    fn requeue(&mut self, state: &mut MqttState) {
        let mut unacked: Vec<Publish> = state
            .clean()
            .into_iter()
            .filter_map(|request| match request {
                Request::Publish(publish) => Some(publish),
                _ => None,
            })
            .collect();
        unacked.extend(state.collision.take());
        state.events.clear();
        // Oldest first, ahead of anything retried before (there is nothing: it was sent).
        for mut publish in unacked.into_iter().rev() {
            publish.pkid = 0;
            publish.dup = false;
            // The original queue time is lost in the state; count from the loss instead.
            self.retry.push_front(Queued {
                at: Instant::now(),
                publish,
            });
        }
    }

    /// One connection, from connect to loss.
    async fn session(&mut self, state: &mut MqttState) -> Failure {
        let mut stream = match self.connect().await {
            Ok(stream) => stream,
            Err(e) => return Failure::Connect(e.to_string()),
        };
        let mut inbox = Inbox::new();
        match self.handshake(&mut stream, &mut inbox).await {
            Ok(ConnectReturnCode::Success) => {}
            Ok(code) => return Failure::Refused(code),
            Err(e) => return Failure::Connect(e),
        }
        self.status.set_connected(true);
        if let Some(held) = self.logs.connected.check() {
            info!(
                "mqtt: connected to {} as '{}'{}{}",
                self.address,
                self.opts.client_id,
                match self.opts.topics.len() {
                    0 => String::new(),
                    n => format!(", subscribing to {n} filter(s)"),
                },
                held_back(held)
            );
        }
        match self.serve(state, &mut stream, &mut inbox).await {
            Ok(never) => match never {},
            Err(reason) => Failure::Lost(reason),
        }
    }

    async fn connect(&self) -> io::Result<TcpStream> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let addrs = match self.opts.host.parse::<IpAddr>() {
            // No resolver for an IP literal: no blocking-pool thread.
            Ok(ip) => vec![SocketAddr::new(ip, self.opts.port)],
            Err(_) => {
                let target = (self.opts.host.clone(), self.opts.port);
                within(deadline, "resolving", smol::net::resolve(target)).await?
            }
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
        for addr in addrs {
            match within(deadline, "connecting", TcpStream::connect(addr)).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Sends CONNECT and reads CONNACK, within [`CONNECT_TIMEOUT`].
    async fn handshake(
        &self,
        stream: &mut TcpStream,
        inbox: &mut Inbox,
    ) -> Result<ConnectReturnCode, String> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut connect = rumqttc::Connect::new(self.opts.client_id.clone());
        connect.clean_session = self.opts.clean_session;
        connect.keep_alive = keep_alive_secs(self.opts.keep_alive);
        if let Some(user) = &self.opts.username {
            let password = self.opts.password.clone().unwrap_or_default();
            connect.login = Some(Login::new(user.clone(), password));
        }
        let mut out = BytesMut::with_capacity(128);
        encode(&Packet::Connect(connect), &mut out).map_err(|e| format!("CONNECT: {e}"))?;
        within(deadline, "sending CONNECT", stream.write_all(&out))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match inbox.next(self.opts.max_message_size)? {
                Some(Inbound::Packet(Packet::ConnAck(ack))) => return Ok(ack.code),
                Some(Inbound::Packet(other)) => {
                    return Err(format!("expected CONNACK, got {}", packet_name(&other)));
                }
                Some(Inbound::TooLarge(_)) => return Err("expected CONNACK, got PUBLISH".into()),
                None => {}
            }
            let n = inbox
                .fill(async |dst: &mut [u8]| {
                    within(deadline, "waiting for CONNACK", stream.read(dst)).await
                })
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the broker closed the connection before CONNACK".into());
            }
        }
    }

    /// The connected loop; returns only with the reason the link is gone.
    async fn serve(
        &mut self,
        state: &mut MqttState,
        stream: &mut TcpStream,
        inbox: &mut Inbox,
    ) -> Result<std::convert::Infallible, String> {
        let mut out = BytesMut::with_capacity(256);
        if !self.opts.topics.is_empty() {
            let filters = self
                .opts
                .topics
                .iter()
                .map(|topic| SubscribeFilter::new(topic.clone(), QoS::AtLeastOnce));
            let subscribe = Subscribe::new_many(filters);
            let packet = state
                .handle_outgoing_packet(Request::Subscribe(subscribe))
                .map_err(|e| format!("subscribing: {e}"));
            state.events.clear();
            if let Some(packet) = packet? {
                if let Packet::Subscribe(subscribe) = &packet {
                    self.subscribe_pkid = subscribe.pkid;
                }
                encode(&packet, &mut out).map_err(|e| format!("SUBSCRIBE: {e}"))?;
            }
        }

        let keep_alive = self
            .opts
            .keep_alive
            .min(Duration::from_secs(u64::from(u16::MAX)));
        let mut last_sent = Instant::now();
        let mut ping_sent = last_sent;
        loop {
            let next = self.take_turn(state, inbox, &mut out)?;
            inbox.compact();

            while can_send(state) {
                let Some(queued) = self
                    .retry
                    .pop_front()
                    .or_else(|| self.requests.try_recv().ok())
                else {
                    break;
                };
                self.outgoing(state, queued, &mut out)?;
            }

            if !out.is_empty() {
                within(
                    Instant::now() + WRITE_TIMEOUT,
                    "writing",
                    stream.write_all(&out),
                )
                .await
                .map_err(|e| e.to_string())?;
                last_sent = Instant::now();
                out.clear();
                if out.capacity() > BUF_KEEP {
                    out = BytesMut::with_capacity(256);
                }
            }

            let ping_at = if state.await_pingresp {
                ping_sent + keep_alive
            } else {
                last_sent + keep_alive
            };
            let wants_requests = self.requests_open && can_send(state);
            let requests = &self.requests;
            // While the hub holds the source, the broker's answer to a ping may be behind the
            // publishes left unread: the ping is judged a keep-alive period after reading
            // resumes.
            let answer_unread = state.await_pingresp && matches!(next, Next::Room);
            let tick = async {
                if keep_alive.is_zero() || answer_unread {
                    future::pending::<()>().await;
                }
                Timer::at(ping_at).await;
                Wake::KeepAlive
            };
            let request = async {
                if !wants_requests {
                    future::pending::<()>().await;
                }
                Wake::Request(requests.recv().await.ok())
            };
            // The socket is read only once every packet already buffered is taken: what the
            // hub has no room for stays in the broker (TCP backpressure).
            let deliver = &*self.deliver;
            let read = async {
                match next {
                    Next::Read => {
                        let read = inbox.fill(async |dst: &mut [u8]| stream.read(dst).await);
                        Wake::Read(read.await)
                    }
                    Next::Room => {
                        room(deliver).await;
                        Wake::Take
                    }
                    Next::Turn => {
                        future::yield_now().await;
                        Wake::Take
                    }
                }
            };
            let wake = future::race(read, future::race(request, tick)).await;

            match wake {
                Wake::Read(Ok(0)) => return Err("the broker closed the connection".into()),
                Wake::Read(Ok(_)) => {}
                Wake::Read(Err(e)) => return Err(e.to_string()),
                Wake::Take => {
                    if answer_unread {
                        ping_sent = Instant::now();
                    }
                }
                Wake::Request(Some(queued)) => self.outgoing(state, queued, &mut out)?,
                Wake::Request(None) => self.requests_open = false,
                Wake::KeepAlive => {
                    if !state.await_pingresp && last_sent.elapsed() < keep_alive {
                        continue;
                    }
                    let ping = state.handle_outgoing_packet(Request::PingReq(PingReq));
                    state.events.clear();
                    match ping {
                        Ok(Some(packet)) => {
                            encode(&packet, &mut out).map_err(|e| format!("PINGREQ: {e}"))?;
                            ping_sent = Instant::now();
                        }
                        Ok(None) => {}
                        Err(StateError::AwaitPingResp) => {
                            return Err(format!(
                                "no PINGRESP within {} ms of a ping",
                                keep_alive.as_millis()
                            ));
                        }
                        Err(StateError::CollisionTimeout) => {
                            return Err("the broker does not acknowledge our publishes".into());
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }
        }
    }

    /// Takes the packets already buffered while the hub has room, at most [`TAKE_PER_TURN`];
    /// says what the loop should wait for next.
    fn take_turn(
        &mut self,
        state: &mut MqttState,
        inbox: &mut Inbox,
        out: &mut BytesMut,
    ) -> Result<Next, String> {
        for _ in 0..TAKE_PER_TURN {
            if !self.deliver.has_room() {
                return Ok(Next::Room);
            }
            match inbox.next(self.opts.max_message_size)? {
                Some(inbound) => self.incoming(state, inbound, out)?,
                None => return Ok(Next::Read),
            }
        }
        Ok(Next::Turn)
    }

    /// One packet (or skipped oversized message) from the broker.
    fn incoming(
        &mut self,
        state: &mut MqttState,
        inbound: Inbound,
        out: &mut BytesMut,
    ) -> Result<(), String> {
        let (packet, take) = match inbound {
            Inbound::Packet(packet) => (packet, true),
            Inbound::TooLarge(big) => {
                self.metrics.dropped(DropReason::TooLarge).inc();
                if let Some(held) = self.logs.too_large.check() {
                    warn!(
                        "mqtt: dropped a {} byte message on '{}' (larger than the maximum {} bytes){}",
                        big.payload_len,
                        big.topic,
                        self.opts.max_message_size,
                        held_back(held)
                    );
                }
                if big.qos == QoS::AtMostOnce {
                    return Ok(());
                }
                // Let the state acknowledge it as if it were taken, so the broker's in-flight
                // window does not fill with messages we will never take.
                let mut stand_in = Publish::from_bytes(big.topic, big.qos, Bytes::new());
                stand_in.pkid = big.pkid;
                (Packet::Publish(stand_in), false)
            }
        };
        let delivery = match &packet {
            Packet::Publish(publish) if take => {
                Some((publish.topic.clone(), publish.payload.clone()))
            }
            Packet::SubAck(ack) if ack.pkid == self.subscribe_pkid => {
                for (code, topic) in ack.return_codes.iter().zip(&self.opts.topics) {
                    if *code == SubscribeReasonCode::Failure {
                        warn!("mqtt: the broker refused the subscription to '{topic}'");
                    }
                }
                None
            }
            Packet::ConnAck(_)
            | Packet::Connect(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq
            | Packet::Disconnect => {
                return Err(format!(
                    "unexpected {} from the broker",
                    packet_name(&packet)
                ));
            }
            _ => None,
        };
        let reply = state.handle_incoming_packet(packet);
        state.events.clear();
        if let Some(packet) = reply.map_err(|e| e.to_string())? {
            encode(&packet, out).map_err(|e| e.to_string())?;
        }
        if let Some((topic, payload)) = delivery {
            let key = event::topic_to_routing_key(&topic, self.opts.strip_prefix.as_deref());
            // A copy, always: a share of the read buffer would keep the whole buffer alive as
            // long as any frame of the event is queued, and the buffer could not be compacted
            // after a burst (issue 16: it stayed at megabytes).
            let payload = Bytes::copy_from_slice(&payload);
            self.deliver.deliver(Event::new(key, payload));
        }
        Ok(())
    }

    /// One publish from the queue, through the state (which numbers and tracks it).
    fn outgoing(
        &mut self,
        state: &mut MqttState,
        queued: Queued,
        out: &mut BytesMut,
    ) -> Result<(), String> {
        if queued.at.elapsed() > PUBLISH_TTL {
            if let Some(held) = self.logs.expired.check() {
                warn!(
                    "mqtt: dropped a publish to '{}' queued while the broker was away{}",
                    queued.publish.topic,
                    held_back(held)
                );
            }
            return Ok(());
        }
        let packet = state.handle_outgoing_packet(Request::Publish(queued.publish));
        state.events.clear();
        // `Ok(None)` is a packet id collision: the state holds the publish and sends it when
        // the id is acknowledged; `can_send` stops further publishes until then.
        if let Some(packet) = packet.map_err(|e| format!("publishing: {e}"))? {
            encode(&packet, out).map_err(|e| format!("publishing: {e}"))?;
        }
        Ok(())
    }
}

enum Wake {
    Read(io::Result<usize>),
    /// There may be room, or another turn, for the packets already buffered.
    Take,
    Request(Option<Queued>),
    KeepAlive,
}

/// What the connected loop waits for before it takes packets again.
#[derive(Clone, Copy)]
enum Next {
    /// Every buffered packet is taken: read the socket.
    Read,
    /// The hub has no room: wait for it, leaving the rest in the socket and the broker.
    Room,
    /// A turn's worth was taken: let the connections write it first.
    Turn,
}

/// Whether the state can take another publish without losing one to a packet id collision.
fn can_send(state: &MqttState) -> bool {
    state.collision.is_none() && state.inflight() < MAX_INFLIGHT - 1
}

/// MQTT's keep-alive in whole seconds, rounded up (zero stays zero: off).
fn keep_alive_secs(keep_alive: Duration) -> u16 {
    let secs = keep_alive.as_secs() + u64::from(keep_alive.subsec_nanos() > 0);
    u16::try_from(secs).unwrap_or(u16::MAX)
}

/// Appends a packet to `out`, leaving `out` as it was if the packet cannot be written.
fn encode(packet: &Packet, out: &mut BytesMut) -> Result<(), rumqttc::Error> {
    let mark = out.len();
    packet
        .write(out, MQTT_MAX_REMAINING + 5)
        .map(drop)
        .inspect_err(|_| out.truncate(mark))
}

async fn within<T>(
    deadline: Instant,
    what: &str,
    work: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    future::or(work, async {
        Timer::at(deadline).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} timed out"),
        ))
    })
    .await
}

fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

fn refusal(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::Success => "accepted",
        ConnectReturnCode::RefusedProtocolVersion => "MQTT 3.1.1 not supported",
        ConnectReturnCode::BadClientId => "client id rejected",
        ConnectReturnCode::ServiceUnavailable => "server unavailable",
        ConnectReturnCode::BadUserNamePassword => "bad user name or password",
        ConnectReturnCode::NotAuthorized => "not authorized",
    }
}

/// A message larger than the maximum, skipped without being read into memory.
#[derive(Debug, PartialEq, Eq)]
struct TooLarge {
    topic: String,
    qos: QoS,
    pkid: u16,
    payload_len: usize,
}

#[derive(Debug)]
enum Inbound {
    Packet(Packet),
    TooLarge(TooLarge),
}

/// What the front of the read buffer holds.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// At least this many more bytes are needed to decide.
    Incomplete(usize),
    /// A whole packet of this many bytes, within the limits.
    Ready,
    /// A PUBLISH whose payload is over the maximum; its head (up to the packet id) is here.
    TooLarge {
        qos: QoS,
        topic: std::ops::Range<usize>,
        pkid: u16,
        payload_len: usize,
        frame_len: usize,
    },
    Malformed(&'static str),
}

/// Reads the fixed header (and for an oversized PUBLISH its topic and packet id) at the front
/// of `buf`, to decide whether the packet may be buffered whole or must be skipped.
fn frame(buf: &[u8], max_payload: usize) -> Frame {
    if buf.len() < 2 {
        return Frame::Incomplete(2 - buf.len());
    }
    let mut remaining = 0usize;
    let mut header = 1;
    loop {
        let Some(&byte) = buf.get(header) else {
            return Frame::Incomplete(1);
        };
        remaining |= usize::from(byte & 0x7f) << (7 * (header - 1));
        header += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if header == 5 {
            return Frame::Malformed("malformed remaining length");
        }
    }
    let frame_len = header + remaining;
    let whole = || match frame_len.checked_sub(buf.len()) {
        Some(missing) if missing > 0 => Frame::Incomplete(missing),
        _ => Frame::Ready,
    };
    if buf[0] >> 4 != 3 {
        if remaining > NON_PUBLISH_MAX {
            return Frame::Malformed("a packet other than PUBLISH too long to be real");
        }
        return whole();
    }
    if remaining <= max_payload {
        return whole();
    }
    let qos = match (buf[0] >> 1) & 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return Frame::Malformed("PUBLISH with QoS 3"),
    };
    if buf.len() < header + 2 {
        return Frame::Incomplete(header + 2 - buf.len());
    }
    let topic_len = usize::from(u16::from_be_bytes([buf[header], buf[header + 1]]));
    let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let head = 2 + topic_len + id_len;
    let Some(payload_len) = remaining.checked_sub(head) else {
        return Frame::Malformed("PUBLISH shorter than its own topic");
    };
    if payload_len <= max_payload {
        return whole();
    }
    if buf.len() < header + head {
        return Frame::Incomplete(header + head - buf.len());
    }
    let topic = header + 2..header + 2 + topic_len;
    let pkid = match qos {
        QoS::AtMostOnce => 0,
        _ => u16::from_be_bytes([buf[topic.end], buf[topic.end + 1]]),
    };
    if qos != QoS::AtMostOnce && pkid == 0 {
        return Frame::Malformed("PUBLISH with packet id 0");
    }
    Frame::TooLarge {
        qos,
        topic,
        pkid,
        payload_len,
        frame_len,
    }
}

/// The read side: a buffer that starts small, and the bytes still to skip of an oversized
/// message.
struct Inbox {
    buf: BytesMut,
    skip: usize,
    /// Bytes the packet at the front still needs, as a hint for the next read's size.
    need: usize,
}

impl Inbox {
    fn new() -> Inbox {
        Inbox {
            buf: BytesMut::with_capacity(BUF_INITIAL),
            skip: 0,
            need: 0,
        }
    }

    /// The next packet, `None` when more bytes are needed, `Err` when the stream is broken.
    fn next(&mut self, max_payload: usize) -> Result<Option<Inbound>, String> {
        if self.skip > 0 {
            let n = self.skip.min(self.buf.len());
            self.buf.advance(n);
            self.skip -= n;
            if self.skip > 0 {
                self.need = self.skip;
                return Ok(None);
            }
        }
        match frame(&self.buf, max_payload) {
            Frame::Incomplete(n) => {
                self.need = n;
                Ok(None)
            }
            Frame::Malformed(why) => Err(format!("broken stream from the broker: {why}")),
            Frame::TooLarge {
                qos,
                topic,
                pkid,
                payload_len,
                frame_len,
            } => {
                let topic = String::from_utf8_lossy(&self.buf[topic]).into_owned();
                let n = frame_len.min(self.buf.len());
                self.buf.advance(n);
                self.skip = frame_len - n;
                Ok(Some(Inbound::TooLarge(TooLarge {
                    topic,
                    qos,
                    pkid,
                    payload_len,
                })))
            }
            Frame::Ready => match Packet::read(&mut self.buf, usize::MAX) {
                Ok(packet) => {
                    self.need = 0;
                    Ok(Some(Inbound::Packet(packet)))
                }
                Err(rumqttc::Error::InsufficientBytes(n)) => {
                    self.need = n;
                    Ok(None)
                }
                Err(e) => Err(format!("malformed packet from the broker: {e}")),
            },
        }
    }

    /// Reads once into the buffer through `read`, sized by what the front packet still needs.
    /// Cancel-safe: dropped before it finishes, it leaves the buffer as it was.
    async fn fill<F>(&mut self, read: F) -> io::Result<usize>
    where
        F: AsyncFnOnce(&mut [u8]) -> io::Result<usize>,
    {
        /// Cuts the buffer back to the bytes actually read, also when the read is dropped.
        struct Keep<'a> {
            buf: &'a mut BytesMut,
            len: usize,
        }
        impl Drop for Keep<'_> {
            fn drop(&mut self) {
                self.buf.truncate(self.len);
            }
        }
        let len = self.buf.len();
        let chunk = self.need.clamp(BUF_INITIAL, READ_CHUNK_MAX);
        self.buf.resize(len + chunk, 0);
        let mut keep = Keep {
            buf: &mut self.buf,
            len,
        };
        let result = read(&mut keep.buf[len..]).await;
        if let Ok(n) = &result {
            keep.len = len + (*n).min(chunk);
        }
        result
    }

    /// Lets the buffer go back to its starting size after a big message (not while one is
    /// still arriving or being skipped).
    fn compact(&mut self) {
        if self.buf.capacity() > BUF_KEEP
            && self.buf.len() <= BUF_INITIAL
            && self.need <= BUF_INITIAL
        {
            let mut fresh = BytesMut::with_capacity(BUF_INITIAL);
            fresh.extend_from_slice(&self.buf);
            self.buf = fresh;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceKind;
    use std::cell::{Cell, RefCell};
    use std::process::{Child, Command, Stdio};

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
    fn url_errors_name_the_problem() {
        let e = parse_err("http://x");
        assert_eq!(e, "--mqtt: expected mqtt://host:port, got 'http://x'");
        assert!(parse_err("broker:1883").contains("expected mqtt://host:port"));
        assert!(parse_err("mqtts://host:8883").contains("TLS"));
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

    #[test]
    fn keep_alive_rounds_up_to_whole_seconds() {
        assert_eq!(keep_alive_secs(Duration::from_millis(1500)), 2);
        assert_eq!(keep_alive_secs(Duration::ZERO), 0);
    }

    fn publish_bytes(topic: &str, qos: QoS, pkid: u16, payload: &[u8]) -> BytesMut {
        let mut p = Publish::new(topic, qos, payload.to_vec());
        p.pkid = pkid;
        let mut out = BytesMut::new();
        encode(&Packet::Publish(p), &mut out).unwrap();
        out
    }

    /// Feeds `stream` to an inbox `step` bytes at a time and collects what comes out.
    fn feed(stream: &[u8], step: usize, max: usize) -> Result<Vec<Inbound>, String> {
        let mut inbox = Inbox::new();
        let mut got = Vec::new();
        for chunk in stream.chunks(step) {
            inbox.buf.extend_from_slice(chunk);
            while let Some(inbound) = inbox.next(max)? {
                got.push(inbound);
            }
            inbox.compact();
        }
        if inbox.skip > 0 || !inbox.buf.is_empty() {
            return Err("leftover bytes".into());
        }
        Ok(got)
    }

    #[test]
    fn oversized_publish_is_skipped_exactly() {
        let mut stream = BytesMut::new();
        stream.extend_from_slice(&publish_bytes("a/small", QoS::AtLeastOnce, 1, b"hello"));
        stream.extend_from_slice(&publish_bytes("a/big", QoS::AtLeastOnce, 2, &[7; 70_000]));
        stream.extend_from_slice(&publish_bytes("a/big0", QoS::AtMostOnce, 0, &[8; 5000]));
        stream.extend_from_slice(&[0xd0, 0x00]); // PINGRESP
        stream.extend_from_slice(&publish_bytes("a/edge", QoS::AtMostOnce, 0, &[9; 1000]));
        for step in [1, 3, 100, 4096, 1 << 20] {
            let got = feed(&stream, step, 1000).unwrap();
            assert_eq!(got.len(), 5, "step {step}");
            match &got[0] {
                Inbound::Packet(Packet::Publish(p)) => {
                    assert_eq!(
                        (p.topic.as_str(), &p.payload[..]),
                        ("a/small", &b"hello"[..])
                    );
                }
                other => panic!("{other:?}"),
            }
            match &got[1] {
                Inbound::TooLarge(big) => assert_eq!(
                    big,
                    &TooLarge {
                        topic: "a/big".into(),
                        qos: QoS::AtLeastOnce,
                        pkid: 2,
                        payload_len: 70_000
                    }
                ),
                other => panic!("{other:?}"),
            }
            assert!(
                matches!(&got[2], Inbound::TooLarge(b) if b.payload_len == 5000 && b.pkid == 0)
            );
            assert!(matches!(&got[3], Inbound::Packet(Packet::PingResp)));
            // A payload of exactly the maximum is delivered.
            assert!(
                matches!(&got[4], Inbound::Packet(Packet::Publish(p)) if p.payload.len() == 1000)
            );
        }
    }

    #[test]
    fn garbage_from_the_broker_never_panics() {
        let mut rng = Rng::new(99);
        let mut bytes = Vec::new();
        for round in 0..2000 {
            bytes.clear();
            let len = rng.below(64) as usize;
            for _ in 0..len {
                bytes.push(rng.below(256) as u8);
            }
            if round % 2 == 0 && !bytes.is_empty() {
                bytes[0] = (bytes[0] & 0x0f) | 0x30; // make it look like a PUBLISH
            }
            for max in [0, 8, 1 << 20] {
                let _ = feed(&bytes, 7, max).ok();
            }
        }
        assert!(matches!(
            frame(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], 10),
            Frame::Malformed(_)
        ));
        assert!(matches!(frame(&[0x36, 0x7f, 0, 0], 1), Frame::Malformed(_)));
        assert!(matches!(
            frame(&[0x90, 0xff, 0xff, 0x7f], 1),
            Frame::Malformed(_)
        ));
        assert_eq!(frame(&[0x30], 1), Frame::Incomplete(1));
    }

    // ---- against a scripted broker ----

    async fn read_packet(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Packet> {
        loop {
            match Packet::read(buf, usize::MAX) {
                Ok(packet) => return Some(packet),
                Err(rumqttc::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("client sent garbage: {e}"),
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn send(stream: &mut TcpStream, packet: Packet) {
        let mut out = BytesMut::new();
        encode(&packet, &mut out).unwrap();
        stream.write_all(&out).await.unwrap();
    }

    async fn accept_connect(listener: &smol::net::TcpListener) -> (TcpStream, rumqttc::Connect) {
        let (mut stream, _) = listener.accept().await.unwrap();
        match read_packet(&mut stream, &mut BytesMut::new()).await {
            Some(Packet::Connect(connect)) => (stream, connect),
            other => panic!("expected CONNECT, got {other:?}"),
        }
    }

    fn connack(code: ConnectReturnCode) -> Packet {
        Packet::ConnAck(rumqttc::ConnAck::new(code, false))
    }

    /// Refused credentials, an oversized QoS 1 message (acked, skipped), a normal one, then a
    /// broker that stops answering pings: the driver must notice and reconnect.
    #[test]
    fn mqtt_scripted_broker_refusal_oversize_and_dead_link() {
        let listener = smol::block_on(smol::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut opts = parse(&format!("mqtt://us%65r:p%40ss@127.0.0.1:{port}"));
        opts.topics = vec!["f/#".into()];
        opts.keep_alive = Duration::from_millis(500);
        opts.max_message_size = 100;
        let status = Rc::new(SourceStatus::new(SourceKind::Mqtt));
        let metrics = Rc::new(Metrics::default());
        let (seen, deliver) = recorder();
        let (_publisher, driver) = start(opts, status.clone(), metrics.clone(), deliver);
        let ex = smol::LocalExecutor::new();
        ex.spawn(driver).detach();
        let script = async {
            let (mut s, connect) = accept_connect(&listener).await;
            let login = connect.login.expect("login");
            assert_eq!(
                (login.username.as_str(), login.password.as_str()),
                ("user", "p@ss")
            );
            assert!(connect.clean_session);
            assert_eq!(connect.keep_alive, 1);
            send(&mut s, connack(ConnectReturnCode::BadUserNamePassword)).await;
            drop(s);
            assert!(!status.connected());

            let (mut s, _) = accept_connect(&listener).await;
            send(&mut s, connack(ConnectReturnCode::Success)).await;
            let mut buf = BytesMut::new();
            let subscribe = match read_packet(&mut s, &mut buf).await {
                Some(Packet::Subscribe(subscribe)) => subscribe,
                other => panic!("expected SUBSCRIBE, got {other:?}"),
            };
            assert_eq!(subscribe.filters[0].path, "f/#");
            assert_eq!(subscribe.filters[0].qos, QoS::AtLeastOnce);
            let codes = vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)];
            send(
                &mut s,
                Packet::SubAck(rumqttc::SubAck::new(subscribe.pkid, codes)),
            )
            .await;
            assert!(status.connected());
            assert_eq!(status.reconnects(), 0);

            // An oversized QoS 1 message, written in pieces, then a normal one.
            let mut big = Publish::new("f/big", QoS::AtLeastOnce, vec![b'x'; 500]);
            big.pkid = 7;
            let mut out = BytesMut::new();
            encode(&Packet::Publish(big), &mut out).unwrap();
            for piece in out.chunks(64) {
                s.write_all(piece).await.unwrap();
                Timer::after(Duration::from_millis(5)).await;
            }
            let mut small = Publish::new("f/ok", QoS::AtLeastOnce, b"ok".to_vec());
            small.pkid = 8;
            send(&mut s, Packet::Publish(small)).await;
            let mut acked = Vec::new();
            let mut pings = 0;
            // Never answer a ping: the driver must give up on this link and close it.
            while let Some(packet) = read_packet(&mut s, &mut buf).await {
                match packet {
                    Packet::PubAck(ack) => acked.push(ack.pkid),
                    Packet::PingReq => pings += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(acked, [7, 8]);
            assert_eq!(pings, 1);
            assert!(has(&seen, "f.ok", b"ok"));
            assert_eq!(seen.borrow().len(), 1);
            assert_eq!(metrics.dropped(DropReason::TooLarge).get(), 1);
            wait_for("the loss", || !status.connected()).await;

            let (mut s, _) = accept_connect(&listener).await;
            send(&mut s, connack(ConnectReturnCode::Success)).await;
            assert!(matches!(
                read_packet(&mut s, &mut BytesMut::new()).await,
                Some(Packet::Subscribe(_))
            ));
            assert!(status.connected());
            assert_eq!(status.reconnects(), 1);
        };
        let give_up = async {
            Timer::after(Duration::from_secs(15)).await;
            panic!("the scripted broker test took too long");
        };
        smol::block_on(ex.run(future::or(script, give_up)));
    }

    // ---- against real brokers ----

    struct Broker(Child);

    impl Broker {
        fn start(port: u16) -> Broker {
            let child = Command::new("mosquitto")
                .args(["-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mosquitto");
            Broker(child)
        }
    }

    impl Drop for Broker {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    fn unique() -> String {
        format!(
            "{}-{}",
            std::process::id(),
            Rng::from_clock().next_u64() & 0xffff_ffff
        )
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let give_up = Instant::now() + Duration::from_secs(12);
        while !done() {
            assert!(Instant::now() < give_up, "gave up waiting for {what}");
            Timer::after(Duration::from_millis(20)).await;
        }
    }

    type Seen = Rc<RefCell<Vec<Event>>>;

    fn recorder() -> (Seen, Deliver) {
        let seen: Seen = Rc::default();
        let sink = seen.clone();
        (seen, Rc::new(move |event| sink.borrow_mut().push(event)))
    }

    fn has(seen: &Seen, key: &str, payload: &[u8]) -> bool {
        seen.borrow()
            .iter()
            .any(|e| e.routing_key == key && &e.payload[..] == payload)
    }

    fn mosquitto_pub(port: u16, topic: &str, file: &std::path::Path) {
        let status = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-q",
                "1",
                "-t",
                topic,
                "-f",
            ])
            .arg(file)
            .status()
            .expect("mosquitto_pub");
        assert!(status.success());
    }

    fn thread_names() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .map(|dir| {
                dir.flatten()
                    .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                    .map(|name| name.trim().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn mqtt_delivers_from_the_shared_broker() {
        let root = format!("callwire-test/{}", unique());
        let mut opts = parse("mqtt://127.0.0.1:1883");
        opts.topics = vec![format!("{root}/#")];
        opts.strip_prefix = Some(format!("{root}/"));
        opts.keep_alive = Duration::from_secs(2);
        opts.max_message_size = 1024;
        let status = Rc::new(SourceStatus::new(SourceKind::Mqtt));
        let metrics = Rc::new(Metrics::default());
        let (seen, deliver) = recorder();
        let (publisher, driver) = start(opts, status.clone(), metrics.clone(), deliver);
        assert_eq!(
            publisher.publish("x", Bytes::new()),
            Err(PublishError::Disconnected)
        );
        assert_eq!(
            publisher.publish("a/+", Bytes::new()),
            Err(PublishError::InvalidTopic)
        );

        let ex = smol::LocalExecutor::new();
        ex.spawn(driver).detach();
        let dir = std::env::temp_dir();
        let big_file = dir.join(format!("callwire-mqtt-big-{}", unique()));
        let bin_file = dir.join(format!("callwire-mqtt-bin-{}", unique()));
        smol::block_on(ex.run(async {
            wait_for("connected", || status.connected()).await;
            // Our own publish comes back after our SUBSCRIBE: the subscription is in place.
            let probe = format!("{root}/probe");
            publisher
                .publish(&probe, Bytes::from_static(b"probe"))
                .unwrap();
            wait_for("probe", || has(&seen, "probe", b"probe")).await;

            let binary: Vec<u8> = (0..=255u8).chain([0, b'\n', 0xff]).collect();
            std::fs::write(&bin_file, &binary).unwrap();
            mosquitto_pub(1883, &format!("{root}/call/a.b"), &bin_file);
            wait_for("binary event", || has(&seen, "call.a%2Eb", &binary)).await;

            // Too large: skipped and counted, the connection stays, the next one arrives.
            std::fs::write(&big_file, vec![b'x'; 5000]).unwrap();
            mosquitto_pub(1883, &format!("{root}/big"), &big_file);
            std::fs::write(&bin_file, br#"{"Account-ID":"acc"}"#).unwrap();
            mosquitto_pub(1883, &format!("{root}/after"), &bin_file);
            wait_for("event after the big one", || {
                has(&seen, "after", br#"{"Account-ID":"acc"}"#)
            })
            .await;
            assert_eq!(metrics.dropped(DropReason::TooLarge).get(), 1);
            assert!(!seen.borrow().iter().any(|e| e.routing_key == "big"));
            let account = seen.borrow().last().and_then(|e| e.account.clone());
            assert_eq!(account.as_deref(), Some("acc"));

            // Several keep-alive periods: pings are answered, the link stays up.
            Timer::after(Duration::from_millis(4500)).await;
            assert!(status.connected());
            assert_eq!(status.reconnects(), 0);
            publisher
                .publish(&probe, Bytes::from_static(b"again"))
                .unwrap();
            wait_for("probe after idling", || has(&seen, "probe", b"again")).await;
        }));
        let _ = std::fs::remove_file(&big_file);
        let _ = std::fs::remove_file(&bin_file);
        let threads = thread_names();
        assert!(
            !threads.iter().any(|t| t.starts_with("tokio")),
            "{threads:?}"
        );
    }

    /// A sink whose room the test opens and closes.
    #[derive(Default)]
    struct Gate {
        closed: Cell<bool>,
        source: RefCell<Option<std::task::Waker>>,
        seen: RefCell<Vec<Event>>,
    }

    impl Gate {
        fn set_closed(&self, closed: bool) {
            self.closed.set(closed);
            if let Some(source) = self.source.take() {
                source.wake();
            }
        }
    }

    impl crate::source::Sink for Gate {
        fn deliver(&self, event: Event) {
            assert!(!self.closed.get(), "an event was handed on without room");
            self.seen.borrow_mut().push(event);
        }

        fn has_room(&self) -> bool {
            !self.closed.get()
        }

        fn poll_room(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
            if self.has_room() {
                return std::task::Poll::Ready(());
            }
            *self.source.borrow_mut() = Some(cx.waker().clone());
            std::task::Poll::Pending
        }
    }

    #[test]
    fn mqtt_held_back_past_several_keep_alives_keeps_its_link_and_takes_what_waited() {
        let root = format!("callwire-test/{}", unique());
        let mut opts = parse("mqtt://127.0.0.1:1883");
        opts.topics = vec![format!("{root}/#")];
        opts.strip_prefix = Some(format!("{root}/"));
        opts.keep_alive = Duration::from_secs(1);
        let status = Rc::new(SourceStatus::new(SourceKind::Mqtt));
        let gate = Rc::new(Gate::default());
        let (publisher, driver) = start(
            opts,
            status.clone(),
            Rc::new(Metrics::default()),
            gate.clone(),
        );
        let ex = smol::LocalExecutor::new();
        ex.spawn(driver).detach();
        let got = |payload: &[u8]| gate.seen.borrow().iter().any(|e| &e.payload[..] == payload);
        smol::block_on(ex.run(async {
            wait_for("connected", || status.connected()).await;
            let topic = format!("{root}/held");
            publisher
                .publish(&topic, Bytes::from_static(b"probe"))
                .unwrap();
            wait_for("probe", || got(b"probe")).await;
            gate.set_closed(true);
            for payload in [&b"one"[..], b"two", b"three"] {
                publisher
                    .publish(&topic, Bytes::from_static(payload))
                    .unwrap();
            }
            // Three keep-alive periods with the answers to our pings behind unread publishes.
            Timer::after(Duration::from_millis(3500)).await;
            assert!(
                status.connected() && status.reconnects() == 0,
                "the link was dropped"
            );
            assert!(!got(b"one"), "taken while held");
            gate.set_closed(false);
            wait_for("what waited", || {
                got(b"one") && got(b"two") && got(b"three")
            })
            .await;
            assert_eq!(status.reconnects(), 0);
        }));
    }

    #[test]
    fn mqtt_reconnects_after_a_broker_restart() {
        let port = free_port();
        let mut broker = Some(Broker::start(port));
        let mut opts = parse(&format!("mqtt://127.0.0.1:{port}"));
        opts.topics = vec!["t/#".into()];
        opts.keep_alive = Duration::from_secs(2);
        let status = Rc::new(SourceStatus::new(SourceKind::Mqtt));
        let metrics = Rc::new(Metrics::default());
        let (seen, deliver) = recorder();
        let (publisher, driver) = start(opts, status.clone(), metrics, deliver);
        let ex = smol::LocalExecutor::new();
        ex.spawn(driver).detach();
        let file = std::env::temp_dir().join(format!("callwire-mqtt-re-{}", unique()));
        smol::block_on(ex.run(async {
            wait_for("first connect", || status.connected()).await;
            publisher
                .publish("t/one", Bytes::from_static(b"1"))
                .unwrap();
            wait_for("first event", || has(&seen, "t.one", b"1")).await;

            drop(broker.take());
            wait_for("the loss", || !status.connected()).await;
            assert_eq!(
                publisher.publish("t/x", Bytes::new()),
                Err(PublishError::Disconnected)
            );
            broker = Some(Broker::start(port));
            wait_for("reconnect", || status.connected()).await;
            assert_eq!(status.reconnects(), 1);

            publisher
                .publish("t/two", Bytes::from_static(b"2"))
                .unwrap();
            wait_for("event after reconnect", || has(&seen, "t.two", b"2")).await;
            std::fs::write(&file, b"three").unwrap();
            mosquitto_pub(port, "t/three", &file);
            wait_for("external event after reconnect", || {
                has(&seen, "t.three", b"three")
            })
            .await;
            assert_eq!(status.reconnects(), 1);
        }));
        let _ = std::fs::remove_file(&file);
        drop(broker);
    }
}
