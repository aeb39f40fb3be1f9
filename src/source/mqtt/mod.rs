//! The MQTT source: rumqttc's codec and state machine driven over smol's `TcpStream`, or TLS
//! over it for `mqtts://` (`tls::MaybeTls`).
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

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt, future};
use rumqttc::{
    ConnectReturnCode, Login, MqttState, Packet, PingReq, Publish, QoS, Request, StateError,
    Subscribe, SubscribeFilter, SubscribeReasonCode,
};
use smol::Timer;
use smol::channel::Receiver;
use smol::net::TcpStream;

use crate::tls::MaybeTls;

use crate::event::{self, Event};
use crate::metrics::Metrics;
use crate::source::publish_queue::{PublishQueue, Refused};
use crate::source::supervisor::{self, Broker, Failure, Logs, within};
use crate::source::{EventSink, SourceStatus, room};

mod options;
pub mod packet_head;

pub use options::{DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PORT, MqttOptions};
use packet_head::{BUF_KEEP, Inbound, Inbox};

/// How many publishes [`MqttPublisher`] queues before it refuses more.
pub const PUBLISH_QUEUE: usize = 256;

/// Budget for resolving and connecting, and again for CONNECT/CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A write that cannot finish in this long means the link is dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Our QoS 1 publishes that may await their PUBACK at once.
const MAX_INFLIGHT: u16 = 32;
/// Packets taken from the read buffer before the source lets other tasks run: what the
/// connections write in one round under load.
const TAKE_PER_TURN: usize = 64;
/// MQTT's largest remaining length.
const MQTT_MAX_REMAINING: usize = 268_435_455;

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

impl From<Refused> for PublishError {
    fn from(refused: Refused) -> PublishError {
        match refused {
            Refused::Full => PublishError::Full,
            Refused::Disconnected => PublishError::Disconnected,
        }
    }
}

/// A handle to publish (QoS 1) through the source's connection.
#[derive(Clone, Debug)]
pub struct MqttPublisher(PublishQueue<Queued>);

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
        let publish = Publish::from_bytes(topic, QoS::AtLeastOnce, payload);
        let queued = Queued {
            at: Instant::now(),
            publish,
        };
        Ok(self.0.push(queued)?)
    }
}

/// Builds the source: a publisher, and the driver future (connect, subscribe, read,
/// reconnect, forever) for the caller to spawn on its `LocalExecutor`.
pub fn start(
    opts: MqttOptions,
    status: Rc<SourceStatus>,
    metrics: Rc<Metrics>,
    sink: EventSink,
) -> (MqttPublisher, impl Future<Output = ()>) {
    let (queue, requests) = smol::channel::bounded(PUBLISH_QUEUE);
    let publisher = MqttPublisher(PublishQueue::new(queue, status.clone()));
    for topic in &opts.topics {
        if !rumqttc::valid_filter(topic) {
            warn!("mqtt: '{topic}' is not a valid topic filter; the broker may refuse it");
        }
    }
    let mut source = Source {
        driver: Driver {
            address: opts.address(),
            opts,
            status,
            metrics,
            sink,
            requests,
            requests_open: true,
            retry: VecDeque::new(),
            subscribe_pkid: 0,
            logs: Logs::new("mqtt"),
        },
        state: MqttState::new(MAX_INFLIGHT, false),
    };
    let run = async move {
        let status = source.driver.status.clone();
        let address = source.driver.address.clone();
        supervisor::supervise(&mut source, &status, &address).await
    };
    (publisher, run)
}

/// The driver and the protocol state of its connections, as the supervisor runs them.
struct Source {
    driver: Driver,
    state: MqttState,
}

impl Broker for Source {
    async fn connection(&mut self) -> Failure {
        self.driver.connect_and_serve(&mut self.state).await
    }

    fn after_loss(&mut self) {
        self.driver.requeue(&mut self.state);
    }

    fn logs(&mut self) -> &mut Logs {
        &mut self.driver.logs
    }
}

/// One MQTT connection's work: the handshake, subscribing, reading, publishing, pinging.
struct Driver {
    opts: MqttOptions,
    address: String,
    status: Rc<SourceStatus>,
    metrics: Rc<Metrics>,
    sink: EventSink,
    requests: Receiver<Queued>,
    requests_open: bool,
    /// Publishes that were unacknowledged when the last connection dropped.
    retry: VecDeque<Queued>,
    subscribe_pkid: u16,
    logs: Logs,
}

impl Driver {
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
    async fn connect_and_serve(&mut self, state: &mut MqttState) -> Failure {
        let mut stream = match self.connect().await {
            Ok(stream) => stream,
            Err(e) => return Failure::Connect(e.to_string()),
        };
        let mut inbox = Inbox::new();
        match self.handshake(&mut stream, &mut inbox).await {
            Ok(ConnectReturnCode::Success) => {}
            Ok(code) => return Failure::Refused(self.refused(code)),
            Err(e) => return Failure::Connect(e),
        }
        self.status.set_connected(true);
        let subscribing = match self.opts.topics.len() {
            0 => String::new(),
            n => format!(", subscribing to {n} filter(s)"),
        };
        self.logs.connected(format_args!(
            "{} as '{}'{subscribing}",
            self.address, self.opts.client_id
        ));
        match self.serve(state, &mut stream, &mut inbox).await {
            Ok(never) => match never {},
            Err(reason) => Failure::Lost(reason),
        }
    }

    /// Whom the broker refused, and why (for the supervisor's line).
    fn refused(&self, code: ConnectReturnCode) -> String {
        let who = match &self.opts.username {
            Some(user) => format!("user '{user}'"),
            None => "no user name given".to_owned(),
        };
        format!("the connection: {} ({who})", refusal(code))
    }

    /// Connects, and with `mqtts://` makes the TLS handshake, within [`CONNECT_TIMEOUT`].
    async fn connect(&self) -> io::Result<MaybeTls<TcpStream>> {
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
                    let secured = MaybeTls::to_broker(stream, &self.opts.tls, &self.opts.host);
                    return within(deadline, "the TLS handshake", secured).await;
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Sends CONNECT and reads CONNACK, within [`CONNECT_TIMEOUT`].
    async fn handshake(
        &self,
        stream: &mut MaybeTls<TcpStream>,
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
        within(deadline, "sending CONNECT", send(stream, &out))
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
        stream: &mut MaybeTls<TcpStream>,
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
                    send(stream, &out),
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
            let sink = &*self.sink;
            let read = async {
                match next {
                    Next::Read => {
                        let read = inbox.fill(async |dst: &mut [u8]| stream.read(dst).await);
                        Wake::Read(read.await)
                    }
                    Next::Room => {
                        room(sink).await;
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
            if !self.sink.has_room() {
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
                self.logs.too_large(
                    &self.metrics,
                    big.payload_len,
                    &big.topic,
                    self.opts.max_message_size,
                );
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
            self.sink.take(Event::new(key, payload));
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
        if self.logs.stale(queued.at, &queued.publish.topic) {
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

/// Writes `bytes` and flushes them: under TLS the last record is out only once flushed.
async fn send(stream: &mut MaybeTls<TcpStream>, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
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
pub(crate) fn encode(packet: &Packet, out: &mut BytesMut) -> Result<(), rumqttc::Error> {
    let mark = out.len();
    packet
        .write(out, MQTT_MAX_REMAINING + 5)
        .map(drop)
        .inspect_err(|_| out.truncate(mark))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_rounds_up_to_whole_seconds() {
        assert_eq!(keep_alive_secs(Duration::from_millis(1500)), 2);
        assert_eq!(keep_alive_secs(Duration::ZERO), 0);
    }
}
