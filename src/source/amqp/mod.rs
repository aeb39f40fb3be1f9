//! The AMQP 0-9-1 source: lapin on smol, a server-named queue bound to a topic exchange.
//!
//! One driver future (spawned by main on its `LocalExecutor`) owns the connection: it
//! connects, declares the topic exchange, declares an exclusive, auto-delete, server-named
//! queue (with `--amqp-queue`, a named durable one that outlives restarts), binds it with
//! every binding, consumes with a bounded prefetch, hands each delivery to `sink` itself (so
//! the hub only ever runs on the main thread), acks in batches, sends
//! the publishes queued through [`AmqpPublisher`], and on any loss reconnects after a capped,
//! jittered backoff, declaring and binding again.
//!
//! A body announced larger than `--max-message-size` never reaches memory: the socket's read
//! side (`oversize`) hands lapin that delivery empty and drops its body frames as they stream
//! by, and the driver counts it as `too_large` and acks it.
//!
//! Threads: lapin drives each connection's socket from a thread of its own (`lapin-io-loop`,
//! alive while a connection is up or being made). Everything else lapin runs (its RPC loop,
//! heartbeats, promise resolution) is spawned on an executor that this driver runs on the main
//! thread, not on smol's global executor, so the process has 3 threads while connected
//! (main, `async-io`, `lapin-io-loop`) and 2 while the broker is away. A host name is
//! resolved (blocking) on the `lapin-io-loop` thread of the attempt, so it adds no thread.
//!
//! With `--amqp-stream`, it consumes a RabbitMQ stream instead (declared if missing, bound the
//! same way, shared by every bridge of a site): each event then carries the stream's position
//! (epoch `stream:<name>`, offset the stream's offset + 1), and a reconnect reads on from the
//! offset after the last one handed on (delivery.md, "Streams").
//!
//! With no bindings, the source is publish-only: it declares the exchange and consumes
//! nothing (what `callwire simulate --amqp` needs).

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{StreamExt, future};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};

use crate::tls::{BrokerTls, MaybeTls};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ErrorKind, Event as LapinEvent,
    ExchangeKind,
};
use smol::Timer;
use smol::channel::Receiver;

use crate::event::{Event, Position};
use crate::logging::{RateLimit, held_back};
use crate::metrics::Metrics;
use crate::source::publish_queue::{PublishQueue, Refused};
use crate::source::supervisor::{self, Broker, Failure, Logs, within};
use crate::source::url::{self, BrokerUrl, Credential, Path};
use crate::source::{EventSink, SourceStatus, room};

mod archive;
mod kit;
pub mod oversize;

/// The prefetch window: deliveries the broker may send before we ack. Bounds what a burst can
/// pile up in memory to this many messages (each up to `--max-message-size`, the budget's
/// `broker` part); more buys nothing on a LAN, where acks return in well under a millisecond.
pub const PREFETCH: u16 = 32;
/// How many publishes [`AmqpPublisher`] queues before it refuses more.
pub const PUBLISH_QUEUE: usize = 256;
/// `--amqp-queue-expires`' default: a named queue unused for an hour goes (a restart takes
/// seconds, an upgrade minutes; events an hour old describe calls long over).
pub const DEFAULT_QUEUE_EXPIRES: Duration = Duration::from_secs(3600);
/// `--amqp-queue-max-bytes`' default: what the broker keeps for callwire while it is away
/// (at Kazoo's 1-2 KiB per event, some 10 000 events).
pub const DEFAULT_QUEUE_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// `--amqp-stream-max-bytes`' default: the stream's `x-max-length-bytes` (at Kazoo's 1-2 KiB
/// per event, some 300 000 events; the broker keeps it on disk).
pub const DEFAULT_STREAM_MAX_BYTES: u64 = 512 * 1024 * 1024;
/// `--amqp-stream-max-age`' default: the stream's `x-max-age`.
pub const DEFAULT_STREAM_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// AMQP's longest exchange name, routing key or binding key, in bytes.
pub const MAX_SHORT_STRING: usize = 255;

/// Budget for resolving and opening the TCP connection, and again for the AMQP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Budget for declaring, binding and starting to consume.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Budget for closing a connection politely before its socket is shut.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A publish or an ack that cannot be handed to the connection within this long means the
/// link is stuck.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the connected loop looks at the connection's state, to notice a close that
/// produced no error event.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// At most this many deliveries are taken before one multiple-ack covers them.
const ACK_BATCH: usize = 64;
/// Heartbeat asked of the broker unless the URL sets `heartbeat` (the lower value wins).
const HEARTBEAT_SECS: u16 = 20;
/// Frame size asked of the broker unless the URL sets `frame_max`. lapin keeps two ring
/// buffers of 32 frames each, so this bounds them to 1 MiB each (RabbitMQ's own 128 KiB
/// would make them 4 MiB each). Larger bodies are simply split into more frames.
const FRAME_MAX: u32 = 32 * 1024;

/// Where and what to consume.
#[derive(Clone)]
pub struct AmqpOptions {
    /// The broker URL as given (it may hold a password: never log it).
    pub uri: AMQPUri,
    pub exchange: String,
    /// Binding keys for the server-named queue; empty for a publish-only connection.
    pub bindings: Vec<String>,
    /// The largest body delivered; a larger one is acked, dropped and counted.
    pub max_message_size: usize,
    /// `--amqp-queue`: a named durable queue that outlives callwire's restarts (delivery.md,
    /// "Restarts"), instead of an exclusive, auto-delete, server-named one.
    pub queue: Option<String>,
    /// The named queue's `x-expires`: it goes once unused this long.
    pub queue_expires: Duration,
    /// The named queue's `x-max-length-bytes`: past it the broker drops its oldest messages.
    pub queue_max_bytes: u64,
    /// `--amqp-stream`: consume this stream instead of a queue.
    pub stream: Option<StreamOptions>,
    /// TLS (`amqps://`, port 5671 unless given) or not.
    pub tls: BrokerTls,
}

/// A RabbitMQ stream to consume (`--amqp-stream`), and where to start reading it.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    pub name: String,
    /// `x-max-length-bytes`: past it the broker drops the stream's oldest segments.
    pub max_bytes: u64,
    /// `x-max-age`: segments older than this go.
    pub max_age: Duration,
    /// The position (offset + 1) of the last event already recorded (a saved history under
    /// this stream's epoch), to read on after it; `None` reads from the next message on.
    pub after: Option<u64>,
}

impl StreamOptions {
    /// The epoch of the positions taken from this stream: the same on every bridge that reads
    /// it, and across restarts, because the stream's offsets are.
    pub fn epoch(&self) -> String {
        format!("stream:{}", self.name)
    }
}

impl fmt::Debug for AmqpOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpOptions")
            .field("address", &self.address())
            .field("user", &self.uri.authority.userinfo.username)
            .field("password", &"***")
            .field("exchange", &self.exchange)
            .field("bindings", &self.bindings)
            .field("max_message_size", &self.max_message_size)
            .field("queue", &self.queue)
            .field("queue_expires", &self.queue_expires)
            .field("queue_max_bytes", &self.queue_max_bytes)
            .field("stream", &self.stream)
            .field("tls", &self.tls)
            .finish()
    }
}

impl AmqpOptions {
    /// Parses `amqp://user:pass@host:port/vhost` (user and password default to guest, the
    /// port to 5672, the vhost to `/`; `%2f` is `/`). The error is one line naming `--amqp`,
    /// without the password.
    pub fn from_url(url: &str) -> Result<AmqpOptions, String> {
        let shown = url::redact(url, Path::Allowed);
        let expected = "expected amqp://user:pass@host:5672/vhost";
        // lapin's parser checks the scheme, port and query; the user info and the vhost are
        // decoded again below by the crate's one decoder, which refuses a bad escape that
        // lapin's would keep as it is.
        let mut uri: AMQPUri = url.parse().map_err(|err: String| {
            let err = err.replace(url, &shown);
            format!("--amqp: {expected}, got '{shown}': {err}")
        })?;
        let tls = match uri.scheme {
            AMQPScheme::AMQPS => BrokerTls::On(None),
            AMQPScheme::AMQP => BrokerTls::Off,
        };
        let parts = BrokerUrl::split(url, Path::Allowed)
            .ok_or_else(|| format!("--amqp: {expected}, got '{shown}'"))?;
        let (user, password) = parts.credentials().map_err(|(which, e)| match which {
            Credential::User => format!("--amqp: user name in '{shown}': {e}"),
            Credential::Password => format!("--amqp: password in '{shown}': {e}"),
        })?;
        if let Some(user) = user.filter(|user| !user.is_empty()) {
            uri.authority.userinfo.username = user;
        }
        if let Some(password) = password {
            uri.authority.userinfo.password = password;
        }
        // As lapin reads it: no path is the vhost `/`, and `/%2f` is `/` too.
        let path = &parts.tail[..parts.tail.find(['?', '#']).unwrap_or(parts.tail.len())];
        if let Some(vhost) = path.strip_prefix('/') {
            uri.vhost = crate::percent::decode(vhost)
                .map_err(|e| format!("--amqp: vhost in '{shown}': {e}"))?;
        }
        // lapin's parser takes the host from `Url::domain`, which is empty for an IP address:
        // `amqp://10.0.0.5` would quietly become `localhost`. Take an IP literal ourselves.
        if let Some(ip) = parts
            .host_port()
            .ok()
            .and_then(|(host, _)| host.parse::<IpAddr>().ok())
        {
            uri.authority.host = ip.to_string();
        }
        if uri.authority.host.is_empty() {
            return Err(format!("--amqp: missing host in '{shown}' ({expected})"));
        }
        Ok(AmqpOptions {
            uri,
            exchange: "callwire".to_owned(),
            bindings: vec!["#".to_owned()],
            max_message_size: 64 * 1024,
            queue: None,
            queue_expires: DEFAULT_QUEUE_EXPIRES,
            queue_max_bytes: DEFAULT_QUEUE_MAX_BYTES,
            stream: None,
            tls,
        })
    }

    /// Checks what AMQP itself limits: the exchange and every binding fit in 255 bytes, and the
    /// exchange is not the default one. The error is one line naming the flag.
    pub fn check(&self) -> Result<(), String> {
        if self.exchange.is_empty() {
            return Err(
                "--amqp-exchange: the default exchange '' cannot be bound to; name a topic exchange"
                    .to_owned(),
            );
        }
        if self.exchange.len() > MAX_SHORT_STRING {
            return Err(format!(
                "--amqp-exchange: longer than AMQP allows ({MAX_SHORT_STRING} bytes)"
            ));
        }
        let named = [
            ("--amqp-queue", self.queue.as_deref()),
            (
                "--amqp-stream",
                self.stream.as_ref().map(|s| s.name.as_str()),
            ),
        ];
        for (flag, name) in named {
            let Some(name) = name else { continue };
            if name.is_empty() || name.len() > MAX_SHORT_STRING || name.starts_with("amq.") {
                return Err(format!(
                    "{flag}: expected a name of 1 to {MAX_SHORT_STRING} bytes not starting \
                     with 'amq.' (the broker's own), got '{}'",
                    name.chars().take(40).collect::<String>()
                ));
            }
        }
        if self.queue.is_some() && self.stream.is_some() {
            return Err("--amqp-stream: replaces --amqp-queue; give one of them".to_owned());
        }
        if let Some(long) = self.bindings.iter().find(|b| b.len() > MAX_SHORT_STRING) {
            return Err(format!(
                "--amqp-binding: '{}...' is longer than AMQP allows ({MAX_SHORT_STRING} bytes)",
                long.chars().take(40).collect::<String>()
            ));
        }
        Ok(())
    }

    /// `host:port vhost '/'`, for log lines (never the user's password).
    pub fn address(&self) -> String {
        let host = &self.uri.authority.host;
        let port = self.uri.authority.port;
        let vhost = &self.uri.vhost;
        if host.contains(':') {
            format!("[{host}]:{port} vhost '{vhost}'")
        } else {
            format!("{host}:{port} vhost '{vhost}'")
        }
    }
}

/// Why [`AmqpPublisher::publish`] refused a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishError {
    /// The queue holds [`PUBLISH_QUEUE`] messages not yet sent.
    Full,
    /// The source is not connected to the broker (or no longer runs).
    Disconnected,
    /// Longer than AMQP's 255 bytes.
    InvalidRoutingKey,
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PublishError::Full => "AMQP publish queue is full",
            PublishError::Disconnected => "AMQP source is not connected",
            PublishError::InvalidRoutingKey => "AMQP routing key longer than 255 bytes",
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

/// A handle to publish to the source's exchange through its connection.
#[derive(Clone, Debug)]
pub struct AmqpPublisher(PublishQueue<Queued>);

struct Queued {
    at: Instant,
    routing_key: ShortString,
    payload: Bytes,
}

impl AmqpPublisher {
    /// Queues a message for the source's exchange with this routing key. `Ok` means queued:
    /// the driver hands it to the connection shortly (not confirmed by the broker). A message
    /// still queued when the link drops is sent after the reconnect, unless it is older than
    /// 30 s by then.
    pub fn publish(&self, routing_key: &str, payload: Bytes) -> Result<(), PublishError> {
        Ok(self.0.push(queued(routing_key, payload)?)?)
    }

    /// Like [`publish`](Self::publish), but waits for room in the queue instead of returning
    /// [`PublishError::Full`] (for a producer such as the simulator that should slow down
    /// rather than drop). Still `Err(Disconnected)` at once while the broker is away.
    pub async fn publish_wait(
        &self,
        routing_key: &str,
        payload: Bytes,
    ) -> Result<(), PublishError> {
        Ok(self.0.push_waiting(queued(routing_key, payload)?).await?)
    }

    /// Whether the source is connected (publishes are accepted).
    pub fn connected(&self) -> bool {
        self.0.connected()
    }
}

fn queued(routing_key: &str, payload: Bytes) -> Result<Queued, PublishError> {
    let routing_key =
        ShortString::try_new(routing_key).map_err(|_| PublishError::InvalidRoutingKey)?;
    Ok(Queued {
        at: Instant::now(),
        routing_key,
        payload,
    })
}

pub use archive::{ARCHIVE_PREFETCH, StreamArchive};

/// Builds the source: a publisher, with `--amqp-stream` the stream's archive, and the driver future (connect, declare, bind, consume,
/// reconnect, forever) for the caller to spawn on its `LocalExecutor`. Every delivery is
/// handed to `sink` from that future. With `options.bindings` empty the connection is
/// publish-only: it declares the exchange and consumes nothing.
pub fn start(
    options: AmqpOptions,
    status: Rc<SourceStatus>,
    metrics: Rc<Metrics>,
    sink: EventSink,
) -> (
    AmqpPublisher,
    Option<Rc<StreamArchive>>,
    impl Future<Output = ()>,
) {
    let (queue, requests) = smol::channel::bounded(PUBLISH_QUEUE);
    let publisher = AmqpPublisher(PublishQueue::new(queue, status.clone()));
    let mut uri = options.uri.clone();
    uri.query.heartbeat.get_or_insert(HEARTBEAT_SECS);
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    let tasks = Arc::new(smol::Executor::new());
    let max_body = u64::try_from(options.max_message_size).unwrap_or(u64::MAX);
    let skipped = oversize::Skipped::default();
    let stream = options.stream.as_ref().map(|stream| StreamRead {
        epoch: stream.epoch().into(),
        after: stream.after,
    });
    let kit = kit::Kit::new(tasks.clone(), max_body, skipped.clone());
    let connection: Rc<RefCell<Option<Arc<Connection>>>> = Rc::default();
    let archive = options.stream.as_ref().map(|stream| {
        Rc::new(StreamArchive::new(
            // `check` has kept the name within a short string's length.
            ShortString::try_new(stream.name.as_str()).unwrap_or_default(),
            connection.clone(),
            kit.clone(),
            skipped.clone(),
            options.max_message_size,
        ))
    });
    let driver = Driver {
        address: options.address(),
        uri,
        options,
        status,
        metrics,
        sink,
        requests,
        logs: Logs::new("amqp"),
        notice: RateLimit::new(Duration::from_secs(60)),
        kit,
        skipped,
        stream,
        connection,
    };
    // lapin's own futures run on `tasks`, driven here, on the caller's thread.
    let run = async move {
        let mut driver = driver;
        let status = driver.status.clone();
        let address = driver.address.clone();
        tasks
            .run(supervisor::supervise(&mut driver, &status, &address))
            .await
    };
    (publisher, archive, run)
}

/// What the connected loop woke for.
enum Wake {
    /// Boxed: a delivery is large, and the other wakes are frequent.
    Delivery(Box<Option<lapin::Result<Delivery>>>),
    Request(Option<Queued>),
    Event(Option<LapinEvent>),
    Check,
}

/// One connection's socket, shut when the connection ends however it ends, so lapin's I/O
/// thread for it always stops. A socket that arrives after the connection gave up (a connect
/// that outlived its timeout) is shut at once.
#[derive(Clone, Default)]
struct SocketSlot(Arc<Mutex<(Option<std::net::TcpStream>, bool)>>);

impl SocketSlot {
    fn set(&self, socket: std::net::TcpStream) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.1 {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        } else {
            slot.0 = Some(socket);
        }
    }

    fn shut(&self) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.1 = true;
        if let Some(socket) = slot.0.take() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The live connection: closed politely when possible, and its socket shut in any case.
struct Link {
    /// Shared with the stream's archive reads while it serves.
    conn: Arc<Connection>,
    socket: SocketSlot,
}

impl Link {
    async fn close(self) {
        let _ = within(Instant::now() + CLOSE_TIMEOUT, "closing", async {
            self.conn
                .close(200, ShortString::from("callwire"))
                .await
                .map_err(|e| describe(&e))
        })
        .await;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.socket.shut();
    }
}

struct Driver {
    options: AmqpOptions,
    /// The URL with callwire's heartbeat and frame size filled in.
    uri: AMQPUri,
    address: String,
    status: Rc<SourceStatus>,
    metrics: Rc<Metrics>,
    sink: EventSink,
    requests: Receiver<Queued>,
    logs: Logs,
    /// Rate limit for the notice about an exchange declared with other flags.
    notice: RateLimit,
    kit: kit::Kit,
    /// Deliveries whose bodies the socket's filter skipped (`oversize`).
    skipped: oversize::Skipped,
    /// With `--amqp-stream`: where the reading stands.
    stream: Option<StreamRead>,
    /// The connection while it serves, for the stream's archive reads.
    connection: Rc<RefCell<Option<Arc<Connection>>>>,
}

/// Where the reading of a stream stands, across reconnects.
struct StreamRead {
    /// `stream:<name>`, shared by every event's position.
    epoch: Rc<str>,
    /// The position of the last message handed on (or dropped as too large): a reconnect
    /// reads on from the one after it.
    after: Option<u64>,
}

impl Broker for Driver {
    async fn connection(&mut self) -> Failure {
        self.connect_and_serve().await
    }

    fn logs(&mut self) -> &mut Logs {
        &mut self.logs
    }
}

impl Driver {
    /// One connection, from connect to loss.
    async fn connect_and_serve(&mut self) -> Failure {
        if let Err(reason) = self.options.check() {
            return Failure::Setup(reason);
        }
        let link = match self.connect().await {
            Ok(link) => link,
            Err(failure) => return failure,
        };
        let mut events = link.conn.events_listener();
        let setup = future::or(self.setup(&link.conn), async {
            Timer::after(SETUP_TIMEOUT).await;
            Err(Failure::Lost("setting up timed out".to_owned()))
        });
        let (channel, consumer, queue) = match setup.await {
            Ok(ready) => ready,
            Err(failure) => {
                // A refused declaration leaves the connection up: close it politely.
                link.close().await;
                return failure;
            }
        };

        self.status.set_connected(true);
        let consuming = match &queue {
            Some(stream) if self.stream.is_some() => format!(
                ", stream '{stream}' bound with {} binding(s), prefetch {PREFETCH}, reading {}",
                self.options.bindings.len(),
                match self.stream_start() {
                    AMQPValue::LongLongInt(offset) => format!("from offset {offset}"),
                    _ => "from the next message".to_owned(),
                }
            ),
            Some(queue) => format!(
                ", queue '{queue}' bound with {} binding(s), prefetch {PREFETCH}",
                self.options.bindings.len()
            ),
            None => ", publish-only".to_owned(),
        };
        self.logs.connected(format_args!(
            "{} as '{}', exchange '{}'{consuming}",
            self.address, self.options.uri.authority.userinfo.username, self.options.exchange,
        ));
        self.connection.replace(Some(link.conn.clone()));
        let reason = self.serve(&link, &channel, consumer, &mut events).await;
        self.connection.replace(None);
        drop(channel);
        drop(link);
        Failure::Lost(reason)
    }

    /// Resolves, connects and logs in, within [`CONNECT_TIMEOUT`] each.
    async fn connect(&self) -> Result<Link, Failure> {
        let host = self.uri.authority.host.clone();
        let port = self.uri.authority.port;
        let tls = self.options.tls.clone();
        let kit = self.kit.clone();
        let socket = SocketSlot::default();
        let slot = socket.clone();
        // Runs on lapin's I/O thread, a thread of its own with nothing else to do yet: a host
        // name is resolved right there (blocking), so no resolver thread is added. Keeps a
        // handle on the socket so that we can always shut it (and so end that thread).
        let connect = async move |_uri: AMQPUri, _runtime: async_rs::Runtime<kit::Kit>| {
            use std::net::ToSocketAddrs;
            let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => (host.as_str(), port)
                    .to_socket_addrs()
                    .map_err(|e| io::Error::new(e.kind(), format!("resolving '{host}': {e}")))?
                    .collect(),
            };
            let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
            for addr in &addrs {
                let deadline = Instant::now() + CONNECT_TIMEOUT;
                let attempt = within(deadline, "connecting", async {
                    smol::Async::<std::net::TcpStream>::connect(*addr).await
                });
                match attempt.await {
                    Ok(stream) => {
                        if let Ok(handle) = stream.get_ref().try_clone() {
                            slot.set(handle);
                        }
                        // amqps://: the TLS handshake, within the same budget again.
                        let secured = MaybeTls::to_broker(stream, &tls, &host);
                        let stream =
                            within(deadline + CONNECT_TIMEOUT, "the TLS handshake", secured)
                                .await?;
                        // The oversized-body filter reads AMQP frames: above TLS.
                        let stream = oversize::Filtered::new(stream, kit.filter());
                        return Ok(lapin::tcp::AsyncTcpStream::Plain(stream));
                    }
                    Err(e) => last = e,
                }
            }
            Err(lapin::Error::from(last))
        };
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("callwire {}", env!("CARGO_PKG_VERSION")).into());
        let runtime = async_rs::Runtime::new(self.kit.clone());
        let uri = self.uri.clone();
        let opening = async {
            Connection::connector(uri, runtime, connect, properties)
                .await
                .map_err(|e| {
                    if is_refusal(&e) {
                        Failure::Refused(format!(
                            "user '{}': {}",
                            self.options.uri.authority.userinfo.username,
                            describe(&e)
                        ))
                    } else {
                        Failure::Connect(describe(&e))
                    }
                })
        };
        let timeout = async {
            Timer::after(CONNECT_TIMEOUT * 2).await;
            Err(Failure::Connect("the AMQP handshake timed out".to_owned()))
        };
        match future::or(opening, timeout).await {
            Ok(conn) => Ok(Link {
                conn: Arc::new(conn),
                socket,
            }),
            Err(failure) => {
                socket.shut();
                Err(failure)
            }
        }
    }

    /// Declares the exchange, and unless publish-only, the queue, its bindings and the
    /// consumer. Returns the channel, the consumer and the queue's name.
    async fn setup(
        &self,
        conn: &Connection,
    ) -> Result<(Channel, Option<lapin::Consumer>, Option<ShortString>), Failure> {
        let exchange = ShortString::try_new(self.options.exchange.as_str())
            .map_err(|e| Failure::Setup(format!("--amqp-exchange: {e}")))?;
        let channel = self.declare_exchange(conn, &exchange).await?;
        if self.options.bindings.is_empty() {
            return Ok((channel, None, None));
        }
        let lost = |e: lapin::Error| Failure::Lost(describe(&e));
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(lost)?;
        let (queue_name, declare, arguments) = self.queue_declaration();
        let queue = channel
            .queue_declare(queue_name, declare, arguments)
            .await
            .map_err(|e| refused_or(e, "declaring the queue"))?;
        let name = queue.name().clone();
        for binding in &self.options.bindings {
            let key = ShortString::try_new(binding.as_str())
                .map_err(|e| Failure::Setup(format!("--amqp-binding: {e}")))?;
            channel
                .queue_bind(
                    name.clone(),
                    exchange.clone(),
                    key,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| refused_or(e, &format!("binding '{binding}'")))?;
        }
        // A stream is read by every bridge of the site: not exclusively, and from an offset.
        let mut consume_arguments = FieldTable::default();
        if self.stream.is_some() {
            consume_arguments.insert("x-stream-offset".into(), self.stream_start());
        }
        let consumer = channel
            .basic_consume(
                name.clone(),
                ShortString::default(),
                BasicConsumeOptions {
                    exclusive: self.stream.is_none(),
                    ..BasicConsumeOptions::default()
                },
                consume_arguments,
            )
            .await
            .map_err(|e| refused_or(e, "consuming"))?;
        Ok((channel, Some(consumer), Some(name)))
    }

    /// Where a stream's consumer starts: after the last position handed on (a position is
    /// the stream's offset + 1, so that is the offset to read from), else at the next message.
    fn stream_start(&self) -> AMQPValue {
        match self.stream.as_ref().and_then(|stream| stream.after) {
            Some(after) => AMQPValue::LongLongInt(i64::try_from(after).unwrap_or(i64::MAX)),
            None => AMQPValue::LongString("next".into()),
        }
    }

    /// The queue to declare: with `--amqp-stream`, the durable stream, bounded in bytes and
    /// age; with `--amqp-queue`, the named durable queue, bounded in age and bytes for when
    /// callwire never comes back; else an exclusive, auto-delete one the server names.
    fn queue_declaration(&self) -> (ShortString, QueueDeclareOptions, FieldTable) {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        if let Some(stream) = &self.options.stream {
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("stream".into()),
            );
            let max_bytes = i64::try_from(stream.max_bytes).unwrap_or(i64::MAX);
            arguments.insert(
                "x-max-length-bytes".into(),
                AMQPValue::LongLongInt(max_bytes),
            );
            let max_age = format!("{}s", stream.max_age.as_secs());
            arguments.insert("x-max-age".into(), AMQPValue::LongString(max_age.into()));
            // `check` has kept the name within a short string's length.
            let name = ShortString::try_new(stream.name.as_str()).unwrap_or_default();
            return (name, durable, arguments);
        }
        let Some(name) = &self.options.queue else {
            let private = QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            };
            return (ShortString::default(), private, FieldTable::default());
        };
        let mut arguments = FieldTable::default();
        let expires_ms = i64::try_from(self.options.queue_expires.as_millis()).unwrap_or(i64::MAX);
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(expires_ms));
        let max_bytes = i64::try_from(self.options.queue_max_bytes).unwrap_or(i64::MAX);
        arguments.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(max_bytes),
        );
        // `check` has kept the name within a short string's length.
        let name = ShortString::try_new(name.as_str()).unwrap_or_default();
        (name, durable, arguments)
    }

    /// Declares the topic exchange if missing. One that exists as a topic exchange with other
    /// flags (durable, auto-delete) is used as it is; one of another type is an error.
    async fn declare_exchange(
        &self,
        conn: &Connection,
        exchange: &ShortString,
    ) -> Result<Channel, Failure> {
        let lost = |e: lapin::Error| Failure::Lost(describe(&e));
        let name = exchange.as_str();
        let channel = conn.create_channel().await.map_err(lost)?;
        if let Some(kind) = name.strip_prefix("amq.") {
            // The broker's own exchanges cannot be declared, only checked.
            if matches!(kind, "direct" | "fanout" | "headers" | "match") {
                return Err(Failure::Setup(format!(
                    "exchange '{name}' is not a topic exchange; use a topic exchange such as amq.topic"
                )));
            }
            return check_exchange(channel, exchange).await;
        }
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let declared = channel
            .exchange_declare(
                exchange.clone(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await;
        let Err(err) = declared else {
            return Ok(channel);
        };
        let Some((406, message)) = protocol_error(&err) else {
            return Err(refused_or(err, &format!("declaring exchange '{name}'")));
        };
        // RabbitMQ compares the type first: a complaint about another argument means the
        // exchange is a topic exchange declared with other flags.
        if message.contains("'type'") {
            return Err(Failure::Setup(format!(
                "exchange '{name}' exists but is not a topic exchange ({message}); delete it or choose another --amqp-exchange"
            )));
        }
        if let Some(held) = self.notice.check() {
            info!(
                "amqp: exchange '{name}' exists as a topic exchange with other flags ({message}); using it as it is{}",
                held_back(held)
            );
        }
        // The refusal closed that channel.
        let channel = conn.create_channel().await.map_err(lost)?;
        check_exchange(channel, exchange).await
    }

    /// The connected loop; returns only with the reason the link is gone.
    async fn serve(
        &mut self,
        link: &Link,
        channel: &Channel,
        mut consumer: Option<lapin::Consumer>,
        events: &mut (impl futures_lite::Stream<Item = LapinEvent> + Unpin),
    ) -> String {
        let exchange = ShortString::try_new(self.options.exchange.as_str()).unwrap_or_default();
        let mut requests_open = true;
        // One timer for the whole connection, not one per pass of the loop.
        let mut checks = Timer::interval(CHECK_EVERY);
        loop {
            // A delivery is taken only when the hub has room for it: the rest wait in lapin's
            // prefetch window, unacked, and beyond it in the broker's queue.
            let sink = &*self.sink;
            let delivery = async {
                match consumer.as_mut() {
                    Some(consumer) => {
                        room(sink).await;
                        Wake::Delivery(Box::new(consumer.next().await))
                    }
                    None => future::pending().await,
                }
            };
            let requests = &self.requests;
            let request = async {
                if !requests_open {
                    future::pending::<()>().await;
                }
                Wake::Request(requests.recv().await.ok())
            };
            let event = async { Wake::Event(events.next().await) };
            let check = async {
                checks.next().await;
                Wake::Check
            };
            let wake = future::race(future::or(delivery, event), future::or(request, check)).await;
            let result = match wake {
                Wake::Delivery(first) => match consumer.as_mut() {
                    Some(consumer) => self.take_batch(channel.id(), *first, consumer).await,
                    None => Ok(()),
                },
                Wake::Request(Some(queued)) => self.publish(channel, &exchange, queued).await,
                Wake::Request(None) => {
                    // Every publisher is gone: nothing more will be queued.
                    requests_open = false;
                    Ok(())
                }
                Wake::Event(Some(LapinEvent::Error(e))) => Err(describe(&e)),
                Wake::Event(Some(LapinEvent::ConnectionBlocked(reason))) => {
                    warn!("amqp: the broker blocked publishing: {reason}");
                    Ok(())
                }
                Wake::Event(Some(LapinEvent::ConnectionUnblocked)) => {
                    info!("amqp: the broker unblocked publishing");
                    Ok(())
                }
                Wake::Event(Some(_)) => Ok(()),
                Wake::Event(None) => Err("the connection's events ended".to_owned()),
                Wake::Check => {
                    if !link.conn.status().connected() {
                        Err("the connection closed".to_owned())
                    } else if !channel.status().connected() {
                        Err("the broker closed the channel".to_owned())
                    } else {
                        Ok(())
                    }
                }
            };
            if let Err(reason) = result {
                return reason;
            }
        }
    }

    /// Takes `first` and whatever else is ready while the hub has room (up to [`ACK_BATCH`]),
    /// hands each to `sink`, then acks them all with one multiple-ack.
    async fn take_batch(
        &mut self,
        channel: u16,
        first: Option<lapin::Result<Delivery>>,
        consumer: &mut lapin::Consumer,
    ) -> Result<(), String> {
        let mut item = first;
        let mut last = None;
        let mut taken = 0;
        let ended = loop {
            match item {
                Some(Ok(delivery)) => {
                    last = Some(self.take(channel, delivery));
                    taken += 1;
                }
                Some(Err(e)) => break Some(describe(&e)),
                None => break Some("the broker cancelled the consumer".to_owned()),
            }
            if taken >= ACK_BATCH || !self.sink.has_room() {
                break None;
            }
            match future::poll_once(consumer.next()).await {
                Some(next) => item = next,
                None => break None,
            }
        };
        if let Some(acker) = last {
            let options = BasicAckOptions { multiple: true };
            within(Instant::now() + SEND_TIMEOUT, "acking", async {
                acker.ack(options).await.map_err(|e| describe(&e))
            })
            .await?;
        }
        match ended {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    /// Hands one delivery on (or drops it when too large: skipped by the socket's filter from
    /// its content header, or, past the filter's room, collected whole); returns its acker.
    /// From a stream, the event carries the stream's position.
    fn take(&mut self, channel: u16, delivery: Delivery) -> lapin::Acker {
        let position = self.stream_position(&delivery);
        let Delivery {
            delivery_tag,
            routing_key,
            data,
            acker,
            ..
        } = delivery;
        if let (Some(stream), Some(position)) = (&mut self.stream, &position) {
            stream.after = Some(position.offset);
        }
        let skipped = self.skipped.take(channel, delivery_tag);
        let size = skipped.unwrap_or(data.len() as u64);
        if skipped.is_some() || data.len() > self.options.max_message_size {
            self.logs.too_large(
                &self.metrics,
                size,
                routing_key.as_str(),
                self.options.max_message_size,
            );
        } else {
            let mut event = Event::new(routing_key.into(), Bytes::from(data));
            event.position = position;
            self.sink.take(event);
        }
        acker
    }

    /// A stream delivery's position: its `x-stream-offset` header, + 1 (positions start at 1,
    /// delivery.md). A stream delivery without one (never seen from RabbitMQ) goes on unnumbered
    /// and the history numbers it after the last.
    fn stream_position(&self, delivery: &Delivery) -> Option<Position> {
        let stream = self.stream.as_ref()?;
        Some(Position {
            epoch: stream.epoch.clone(),
            offset: archive::position(delivery)?,
        })
    }

    /// One publish from the queue, to the source's exchange.
    async fn publish(
        &mut self,
        channel: &Channel,
        exchange: &ShortString,
        queued: Queued,
    ) -> Result<(), String> {
        if self.logs.stale(queued.at, queued.routing_key.as_str()) {
            return Ok(());
        }
        within(Instant::now() + SEND_TIMEOUT, "publishing", async {
            channel
                .basic_publish(
                    exchange.clone(),
                    queued.routing_key,
                    BasicPublishOptions::default(),
                    &queued.payload,
                    BasicProperties::default(),
                )
                .await
                .map(drop)
                .map_err(|e| format!("publishing: {}", describe(&e)))
        })
        .await
    }
}

/// Checks (a passive declaration) that the topic exchange exists; returns the channel.
async fn check_exchange(channel: Channel, exchange: &ShortString) -> Result<Channel, Failure> {
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            exchange.clone(),
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
        .map_err(|e| refused_or(e, &format!("checking exchange '{exchange}'")))?;
    Ok(channel)
}

/// The reply code and text of an error the broker sent.
fn protocol_error(err: &lapin::Error) -> Option<(u16, String)> {
    match err.kind() {
        ErrorKind::ProtocolError(e) => Some((e.get_id(), e.get_message().to_string())),
        _ => None,
    }
}

/// Login refused (403 ACCESS_REFUSED) or vhost not allowed (530 NOT_ALLOWED).
fn is_refusal(err: &lapin::Error) -> bool {
    matches!(protocol_error(err), Some((403 | 530, _)))
}

/// A refusal by the broker is a setup failure (it recurs until the configuration or the
/// broker changes); anything else is a lost connection.
fn refused_or(err: lapin::Error, what: &str) -> Failure {
    match protocol_error(&err) {
        Some((code, message)) => Failure::Setup(format!("{what}: {code} {message}")),
        None => Failure::Lost(format!("{what}: {}", describe(&err))),
    }
}

/// One line for a lapin error.
fn describe(err: &lapin::Error) -> String {
    match protocol_error(err) {
        Some((code, message)) => format!("{code} {message}"),
        None => err.to_string().replace('\n', " "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn url_parts_and_errors() {
        let o = AmqpOptions::from_url("amqp://bob:s%40cret@10.1.2.3:5673/%2f").unwrap();
        assert_eq!(o.uri.authority.host, "10.1.2.3");
        assert_eq!(o.uri.authority.port, 5673);
        assert_eq!(o.uri.authority.userinfo.username, "bob");
        assert_eq!(o.uri.authority.userinfo.password, "s@cret");
        assert_eq!(o.uri.vhost, "/");
        assert_eq!(o.address(), "10.1.2.3:5673 vhost '/'");
        assert!(!format!("{o:?}").contains("s@cret"));
        assert!(!format!("{o:?}").contains("s%40cret"));

        let o = AmqpOptions::from_url("amqp://[::1]/pbx").unwrap();
        assert_eq!(o.uri.authority.host, "::1");
        assert_eq!(o.uri.vhost, "pbx");
        assert_eq!(o.address(), "[::1]:5672 vhost 'pbx'");
        let o = AmqpOptions::from_url("amqp://rabbit.lan").unwrap();
        assert_eq!(o.uri.authority.host, "rabbit.lan");
        assert_eq!(o.uri.authority.userinfo.username, "guest");

        for bad in [
            "nonsense://x",
            "http://x",
            "amqp://u:hunter2@h:99999/",
            "amqp://u:hunter2@/vhost",
            "amqp://u:hunter2@h/?heartbeat=x",
        ] {
            let e = AmqpOptions::from_url(bad).unwrap_err();
            assert!(e.starts_with("--amqp: "), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let tls = AmqpOptions::from_url("amqps://u:hunter2@h/").unwrap();
        assert!(tls.tls.is_on() && tls.uri.authority.port == 5671);
        assert!(!AmqpOptions::from_url("amqp://h").unwrap().tls.is_on());
        // The crate's one decoder: a sign is not a hex digit (lapin's would keep `%+1`).
        for (bad, part) in [
            ("amqp://bob%+1:hunter2@h/", "user name"),
            ("amqp://bob:hunter2%+1@h/", "password"),
            ("amqp://bob:hunter2@h/v%+1", "vhost"),
        ] {
            let e = AmqpOptions::from_url(bad).unwrap_err();
            assert!(e.starts_with(&format!("--amqp: {part} in ")), "{e}");
            assert!(
                e.contains("percent-encoding") && !e.contains("hunter2"),
                "{e}"
            );
        }
        let o = AmqpOptions::from_url("amqp://h/").unwrap();
        assert_eq!(o.uri.vhost, "");
        let o = AmqpOptions::from_url("amqp://h?heartbeat=5").unwrap();
        assert_eq!(
            (o.uri.vhost.as_str(), o.uri.query.heartbeat),
            ("/", Some(5))
        );
    }

    #[test]
    fn check_names_the_flag() {
        let mut o = AmqpOptions::from_url("amqp://h").unwrap();
        assert_eq!(o.check(), Ok(()));
        o.bindings = vec!["x".repeat(256)];
        assert!(o.check().unwrap_err().starts_with("--amqp-binding"));
        o.bindings.clear();
        o.exchange = String::new();
        assert!(o.check().unwrap_err().starts_with("--amqp-exchange"));
    }

    #[test]
    fn publisher_refuses_while_disconnected_and_long_keys() {
        let status = Rc::new(crate::source::SourceStatus::new(
            crate::source::SourceKind::Amqp,
        ));
        let (publisher, _, _driver) = start(
            AmqpOptions::from_url("amqp://127.0.0.1:1").unwrap(),
            status.clone(),
            Rc::new(Metrics::default()),
            Rc::new(|_| {}),
        );
        assert_eq!(
            publisher.publish("command.hangup.x", Bytes::new()),
            Err(PublishError::Disconnected)
        );
        assert_eq!(
            publisher.publish(&"k".repeat(256), Bytes::new()),
            Err(PublishError::InvalidRoutingKey)
        );
        status.set_connected(true);
        for _ in 0..PUBLISH_QUEUE {
            publisher.publish("k", Bytes::new()).unwrap();
        }
        assert_eq!(
            publisher.publish("k", Bytes::new()),
            Err(PublishError::Full)
        );
    }

    /// Against the shared RabbitMQ: a consuming source and a publish-only one on one
    /// exchange; what either publishes reaches the consumer, keys unchanged.
    #[test]
    fn amqp_publishers_reach_the_consumer_and_publish_only_consumes_nothing() {
        use std::cell::RefCell;

        let exchange = format!(
            "callwire-unit-{}-{:x}",
            std::process::id(),
            Rng::from_clock().next_u64() & 0xffff_ffff
        );
        let mut options = AmqpOptions::from_url("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        options.exchange = exchange.clone();
        let seen: Rc<RefCell<Vec<(String, Bytes)>>> = Rc::default();
        let sink = seen.clone();
        let consumer_status = Rc::new(SourceStatus::new(crate::source::SourceKind::Amqp));
        let (consumer, _, consume) = start(
            options.clone(),
            consumer_status.clone(),
            Rc::new(Metrics::default()),
            Rc::new(move |e: Event| sink.borrow_mut().push((e.routing_key, e.payload))),
        );
        options.bindings.clear();
        let publish_only_status = Rc::new(SourceStatus::new(crate::source::SourceKind::Amqp));
        let (publisher, _, publish_only) = start(
            options,
            publish_only_status.clone(),
            Rc::new(Metrics::default()),
            Rc::new(|_| panic!("a publish-only source delivered")),
        );
        let ex = smol::LocalExecutor::new();
        ex.spawn(consume).detach();
        ex.spawn(publish_only).detach();
        let has = |key: &str, body: &[u8]| {
            seen.borrow()
                .iter()
                .any(|(k, b)| k == key && &b[..] == body)
        };
        async fn wait(what: &str, check: impl Fn() -> bool) {
            let give_up = Instant::now() + Duration::from_secs(10);
            while !check() {
                assert!(Instant::now() < give_up, "gave up waiting for {what}");
                Timer::after(Duration::from_millis(20)).await;
            }
        }
        smol::block_on(ex.run(async {
            wait("both connected", || {
                consumer_status.connected() && publish_only_status.connected()
            })
            .await;
            assert!(publisher.connected());
            let body = br#"{"action":"hangup","call_id":"abc","source":"amqp"}"#;
            publisher
                .publish("command.hangup.abc", Bytes::from_static(body))
                .unwrap();
            wait("the hangup command", || has("command.hangup.abc", body)).await;
            publisher
                .publish_wait("FreeSWITCH.h.CHANNEL_CREATE..u", Bytes::from_static(b"x"))
                .await
                .unwrap();
            consumer
                .publish("", Bytes::from_static(b"empty key"))
                .unwrap();
            wait("the double dot key", || {
                has("FreeSWITCH.h.CHANNEL_CREATE..u", b"x")
            })
            .await;
            wait("the empty key", || has("", b"empty key")).await;
            assert_eq!(seen.borrow().len(), 3);
        }));

        // Leave the shared broker as it was.
        smol::block_on(async {
            let conn = Connection::connect_with_runtime(
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                ConnectionProperties::default(),
                async_rs::Runtime::smol(),
            )
            .await
            .unwrap();
            let channel = conn.create_channel().await.unwrap();
            channel
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await
                .unwrap();
        });
    }
}
