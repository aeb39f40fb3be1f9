//! The application's shared state, and the path every event takes through it.
//!
//! One `App` per process, shared by `Rc` between the source's sink and every connection
//! handler. Single-threaded, so its mutable parts are `RefCell`s that are never
//! held across an `.await`.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::task::{Context, Poll};

use crate::auth::Auth;
use crate::dialect::cable::SavedSessions;
use crate::event::Event;
use crate::history::History;
use crate::hub::Hub;
use crate::limits::BytePool;
use crate::live::LiveState;
use crate::metrics::Metrics;
use crate::origins::Origins;
use crate::rest::Catalogue;
use crate::seats::Seats;
use crate::source::{Commands, Sink, SourceStatus};

pub struct App {
    pub hub: Hub,
    pub auth: Rc<Auth>,
    pub source: Rc<SourceStatus>,
    pub metrics: Rc<Metrics>,
    pub live: RefCell<LiveState>,
    /// Positions and recent events; shared with the Blackhole sessions, which replay from it.
    pub history: Rc<RefCell<History>>,
    /// The subscriptions of ended ActionCable sessions, for AnyCable's session restore.
    pub cable_sessions: Rc<SavedSessions>,
    pub catalogue: Catalogue,
    pub commands: Commands,
    /// The `Host` and `Origin` checks every request passes first.
    pub origins: Origins,
    /// `--max-clients` and `--max-unauthenticated`, held by each websocket.
    pub seats: Seats,
    /// The room every socket's bindings, filters and subscriptions share.
    pub interest: Rc<BytePool>,
    /// Set at SIGTERM: the source takes no more events (they stay in the broker), so the state
    /// saved after it holds every event that was acknowledged.
    pub stopping: Cell<bool>,
}

impl App {
    /// Takes one event through the bridge: counts it, gives it its position and keeps it in
    /// the history, notes its routing-key family, applies it to the live calls and fans out
    /// what that changed (ActionCable's `calls`), then fans the event out to the clients that
    /// want it.
    pub fn ingest(&self, mut event: Event) {
        if !self.history.borrow_mut().record(&mut event) {
            // A stream read again from an earlier offset after a reconnect: every client that
            // should have it has it.
            return;
        }
        self.metrics.events_in.inc();
        if event.json.is_none() {
            self.metrics.events_not_json.inc();
        }
        self.catalogue
            .note(&event.routing_key, event.account.as_deref());
        let changes = self.live.borrow_mut().apply(&event);
        for mut change in changes {
            change.position.clone_from(&event.position);
            self.hub.publish_change(&change);
        }
        self.hub.publish(&event);
    }
}

/// The source's way into the app. It holds the app weakly: the source is built before the app
/// (the app needs its command publisher), and its task cannot run before the app exists.
pub struct ToApp(pub Weak<App>);

impl Sink for ToApp {
    fn take(&self, event: Event) {
        if let Some(app) = self.0.upgrade() {
            app.ingest(event);
        }
    }

    /// Room is the hub's: no client's queue holds the source. A stopping bridge has none.
    fn has_room(&self) -> bool {
        self.0
            .upgrade()
            .is_none_or(|app| !app.stopping.get() && app.hub.has_room())
    }

    /// A stopping bridge never has room again: the process exits.
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        match self.0.upgrade() {
            Some(app) if app.stopping.get() => Poll::Pending,
            Some(app) => app.hub.poll_room(cx),
            None => Poll::Ready(()),
        }
    }
}
