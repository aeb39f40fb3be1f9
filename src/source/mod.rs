//! Sources: where events come from (an MQTT broker, or the built-in demo PBX), and the health
//! each source reports. A source only produces events; it never sees a client or a dialect.

pub mod demo;
pub mod mqtt;

use std::cell::Cell;
use std::rc::Rc;
use std::time::SystemTime;

use crate::event::Event;

/// Where a source hands each event it takes from the broker.
pub type Deliver = Rc<dyn Fn(Event)>;

/// What kind of source feeds the bridge (`/healthz` `source.kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Mqtt,
    Demo,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Mqtt => "mqtt",
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
