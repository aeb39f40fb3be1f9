//! Sources: where events come from (an MQTT or AMQP broker, or the built-in demo PBX), and the health
//! each source reports. A source only produces events; it never sees a client or a dialect.

pub mod amqp;
pub mod demo;
pub mod mqtt;
mod publish_queue;
mod supervisor;
mod url;

use std::cell::Cell;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use crate::event::Event;

/// Where a source hands each event it takes from the broker, and whether it has room for the
/// next one. A source takes an event from the broker only when there is room, so a burst waits
/// in the broker (delivery.md).
pub trait Sink {
    /// Takes one event.
    fn take(&self, event: Event);

    /// Whether an event handed on now has room.
    fn has_room(&self) -> bool;

    /// Ready when [`Sink::has_room`]; otherwise `cx` is woken once it does.
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()>;
}

/// A sink that only takes events (tests, the simulator's echo check) always has room.
impl<F: Fn(Event)> Sink for F {
    fn take(&self, event: Event) {
        self(event)
    }

    fn has_room(&self) -> bool {
        true
    }

    fn poll_room(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

/// Where a source's events go.
pub type EventSink = Rc<dyn Sink>;

/// Waits until `sink` has room for the next event.
pub async fn room(sink: &dyn Sink) {
    poll_fn(|cx| sink.poll_room(cx)).await
}

/// Where commands to the PBX go: back over the source its events came from (live-api.md).
pub enum Commands {
    /// Published to `<topic>/hangup`.
    Mqtt {
        publisher: mqtt::MqttPublisher,
        topic: String,
    },
    /// Published to the source's exchange as `command.hangup.<id>`.
    Amqp(amqp::AmqpPublisher),
    /// The demo PBX takes no commands.
    None,
}

/// Why a hangup command was not put on the broker; each kind asks the caller for something
/// different (live-api.md): try later, change the request, or give up on this source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HangupError {
    /// The source is not connected to its broker: it may be later.
    Disconnected,
    /// The publish queue is full: it may have room later.
    Full,
    /// The broker can never take a command for this call id (an AMQP routing key over 255
    /// bytes: the live state keeps ids of up to 255 bytes, `command.hangup.` makes it longer).
    Unroutable(String),
    /// The demo source takes no commands: no broker will ever take it.
    NoBroker,
}

impl std::fmt::Display for HangupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HangupError::Disconnected => f.write_str("the source is not connected to its broker"),
            HangupError::Full => f.write_str("the source's publish queue is full"),
            HangupError::Unroutable(reason) => f.write_str(reason),
            HangupError::NoBroker => f.write_str("the demo source takes no commands"),
        }
    }
}

impl From<mqtt::PublishError> for HangupError {
    fn from(err: mqtt::PublishError) -> HangupError {
        match err {
            mqtt::PublishError::Disconnected => HangupError::Disconnected,
            mqtt::PublishError::Full => HangupError::Full,
            // The topic is `<--command-topic>/hangup`, checked at start-up, so only a body
            // too large for MQTT, which names the call id, is left.
            other => HangupError::Unroutable(other.to_string()),
        }
    }
}

impl From<amqp::PublishError> for HangupError {
    fn from(err: amqp::PublishError) -> HangupError {
        match err {
            amqp::PublishError::Disconnected => HangupError::Disconnected,
            amqp::PublishError::Full => HangupError::Full,
            amqp::PublishError::InvalidRoutingKey => HangupError::Unroutable(
                "the call id is too long for an AMQP routing key: command.hangup.<id> is over \
                 255 bytes"
                    .to_owned(),
            ),
        }
    }
}

impl Commands {
    /// Puts a hangup command for a call on the broker; the error says why it could not.
    pub fn hangup(&self, call_id: &str, source: &str) -> Result<(), HangupError> {
        let body = serde_json::json!({"action": "hangup", "call_id": call_id, "source": source});
        let body = bytes::Bytes::from(body.to_string());
        match self {
            Commands::Mqtt { publisher, topic } => {
                Ok(publisher.publish(&format!("{topic}/hangup"), body)?)
            }
            Commands::Amqp(publisher) => {
                Ok(publisher.publish(&format!("command.hangup.{call_id}"), body)?)
            }
            Commands::None => Err(HangupError::NoBroker),
        }
    }
}

/// What kind of source feeds the bridge (`/healthz` `source.kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Mqtt,
    Amqp,
    Demo,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Mqtt => "mqtt",
            SourceKind::Amqp => "amqp",
            SourceKind::Demo => "demo",
        }
    }
}

/// The health of the one source: connected or not, since when, and how often it connected.
#[derive(Debug)]
pub struct SourceStatus {
    pub kind: SourceKind,
    connected: Cell<bool>,
    since: Cell<SystemTime>,
    connections: Cell<u64>,
}

impl SourceStatus {
    pub fn new(kind: SourceKind) -> SourceStatus {
        SourceStatus {
            kind,
            connected: Cell::new(false),
            since: Cell::new(SystemTime::now()),
            connections: Cell::new(0),
        }
    }

    pub fn connected(&self) -> bool {
        self.connected.get()
    }

    /// When the source last changed between connected and not.
    pub fn since(&self) -> SystemTime {
        self.since.get()
    }

    /// Successful connections after the first one.
    pub fn reconnects(&self) -> u64 {
        self.connections.get().saturating_sub(1)
    }

    /// Records a change of state (a repeated report of the same state changes nothing).
    pub fn set_connected(&self, connected: bool) {
        if self.connected.replace(connected) == connected {
            return;
        }
        self.since.set(SystemTime::now());
        if connected {
            self.connections.set(self.connections.get() + 1);
        }
    }
}
