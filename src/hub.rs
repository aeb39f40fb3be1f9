//! The hub: every connected client, its interest, its bounded outbound queue, and the fan-out
//! of each event to the clients that want it.
//!
//! Fan-out asks each client's dialect whether it wants the event and for which frame; a frame
//! is rendered once per distinct shape (`Renders`) and the same bytes are queued to every
//! client that gets it. Queues are bounded; the policy for a full queue is the hub's:
//!
//! - a frame for a client whose queue is full is dropped for that client and counted
//!   (`dropped{reason="queue_full"}`);
//! - a client that has missed `--max-missed` frames in a row without taking any is closed as
//!   too slow (`dropped{reason="slow_client"}`): its connection is dropped at once, without
//!   waiting on a socket that does not drain.
//!
//! Writing never happens here, so a stalled client can delay nobody: pushing to a queue is a
//! bounded, non-blocking step.
//!
//! The hub also decides when a connection is woken to write what was queued to it: in rounds,
//! at most one per `--flush-interval`. A frame queued after a quiet interval goes out at once;
//! frames queued sooner wait for the next round and share one `write` per client with the
//! frames queued meanwhile. Most of a delivery's CPU is that `write` (the kernel's loopback or
//! network send, not callwire's code), so under load fewer writes is what makes it cheap,
//! while a trickle of events pays no delay at all. A client whose queue is half full is woken
//! at once, so the wait never costs a dropped frame.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Utf8Bytes;
use smol::Timer;

use crate::auth::{Auth, Credential};
use crate::dialect::Dialect;
use crate::dialect::blackhole;
use crate::dialect::cable;
use crate::dialect::isymphony;
use crate::event::Event;
use crate::limits::Limits;
use crate::live::CallChange;
use crate::logging::RateLimit;
use crate::matcher::RoutingKey;
use crate::metrics::{DropReason, Metrics};

/// One serialised text frame, shared by every client it is queued to.
pub type Frame = Utf8Bytes;

/// What a client wants to receive, kept in the form its dialect needs.
#[derive(Debug)]
pub enum Interest {
    Blackhole(blackhole::Subscriptions),
    ISymphony(isymphony::Filters),
    Cable(cable::Subscriptions),
}

impl Interest {
    /// Puts the frames this client gets for an event into `out` (a dialect with several
    /// subscriptions on one socket may send more than one).
    fn route(
        &self,
        event: &Event,
        key: &RoutingKey<'_>,
        renders: &mut Renders,
        out: &mut Vec<Frame>,
    ) {
        match self {
            Interest::Blackhole(subscriptions) => {
                out.extend(subscriptions.route(event, key, &mut renders.blackhole));
            }
            Interest::ISymphony(filters) => {
                out.extend(filters.route(event, &mut renders.isymphony))
            }
            Interest::Cable(subscriptions) => {
                subscriptions.route(event, &mut renders.cable, out);
            }
        }
    }

    /// Puts the frames this client gets for a change of a live call into `out` (only
    /// ActionCable's `calls` model takes them).
    fn route_change(&self, change: &CallChange, renders: &mut Renders, out: &mut Vec<Frame>) {
        if let Interest::Cable(subscriptions) = self {
            subscriptions.route_change(change, &mut renders.cable, out);
        }
    }
}

/// Frames already rendered for the event being fanned out, so each distinct frame is
/// serialised once. Cleared per event; its storage is kept, so steady state allocates only
/// the frames themselves.
#[derive(Debug, Default)]
pub struct Renders {
    pub blackhole: blackhole::Renders,
    pub isymphony: isymphony::Renders,
    pub cable: cable::Renders,
}

impl Renders {
    fn clear(&mut self) {
        self.blackhole.clear();
        self.isymphony.clear();
        self.cable.clear();
    }
}

/// Why the hub wants a client's connection closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// It missed too many frames in a row.
    TooSlow,
    /// The server is shutting down: say the dialect's goodbye, then close (1001).
    Shutdown,
    /// The client's credential was removed from the credentials file (SIGHUP): say so, then
    /// close (1008).
    Revoked,
}

/// What a connection should do next, as the hub sees it.
#[derive(Debug)]
pub enum Outgoing {
    /// Frames are queued: take them with `Client::pop`.
    Frames,
    /// Close the connection.
    Close(CloseReason),
}

#[derive(Debug)]
struct Outbox {
    frames: VecDeque<Frame>,
    /// Frames dropped for this client since it last took one.
    missed_in_row: u32,
    close: Option<CloseReason>,
    waker: Option<Waker>,
}

impl Outbox {
    /// Keeps the connection's waker (a clone only when it changed).
    fn register(&mut self, waker: &Waker) {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.waker = Some(waker.clone());
        }
    }

    /// Wakes the connection, if it waits.
    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// One connected websocket client.
#[derive(Debug)]
pub struct Client {
    slot: usize,
    pub dialect: Dialect,
    /// Who the client proved to be: an iSymphony socket's from its upgrade; `None` until a
    /// Blackhole socket's first valid token.
    pub credential: RefCell<Option<Rc<Credential>>>,
    pub interest: RefCell<Interest>,
    /// Where the client's session counts the limits it hits.
    pub metrics: Rc<Metrics>,
    outbox: RefCell<Outbox>,
}

impl Client {
    /// Waits for frames to send, or for the hub to ask for a close.
    pub fn poll_outgoing(&self, cx: &mut Context<'_>) -> Poll<Outgoing> {
        let mut outbox = self.outbox.borrow_mut();
        if let Some(reason) = outbox.close {
            return Poll::Ready(Outgoing::Close(reason));
        }
        if !outbox.frames.is_empty() {
            return Poll::Ready(Outgoing::Frames);
        }
        outbox.register(cx.waker());
        Poll::Pending
    }

    /// Waits until the hub asks for a close (used while a write is pending).
    pub fn poll_close(&self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        let mut outbox = self.outbox.borrow_mut();
        match outbox.close {
            Some(reason) => Poll::Ready(reason),
            None => {
                outbox.register(cx.waker());
                Poll::Pending
            }
        }
    }

    /// Takes the oldest queued frame; taking one counts as progress for the slow-client rule.
    pub fn pop(&self) -> Option<Frame> {
        let mut outbox = self.outbox.borrow_mut();
        let frame = outbox.frames.pop_front();
        if frame.is_some() {
            outbox.missed_in_row = 0;
        }
        frame
    }

    /// Asks the connection to close; the first reason given stands.
    fn close(&self, reason: CloseReason) {
        let mut outbox = self.outbox.borrow_mut();
        outbox.close.get_or_insert(reason);
        outbox.wake();
    }

    /// Queues a frame under the hub's policy; returns false when it was dropped.
    fn push(&self, frame: Frame, hub: &Hub) -> bool {
        let (limits, metrics, drops_log) = (&hub.limits, &hub.metrics, &hub.drops_log);
        let mut outbox = self.outbox.borrow_mut();
        if outbox.close.is_some() {
            return false;
        }
        let queued = outbox.frames.len() < limits.queue_depth;
        if queued {
            outbox.frames.push_back(frame);
        } else {
            outbox.missed_in_row += 1;
            metrics.dropped(DropReason::QueueFull).inc();
            drops_log.queue_full.report(|held| {
                warn!(
                    "dropped a frame for a {} client whose queue is full{held}",
                    self.dialect.as_str()
                )
            });
            if outbox.missed_in_row >= limits.max_missed {
                outbox.close = Some(CloseReason::TooSlow);
                drops_log.slow.report(|held| {
                    warn!(
                        "closed a {} client that missed {} frames in a row{held}",
                        self.dialect.as_str(),
                        limits.max_missed
                    )
                });
                metrics.dropped(DropReason::SlowClient).inc();
            }
        }
        // A close is not held for the round, nor is a queue that fills within one interval:
        // the interval may delay a frame, never drop one.
        if outbox.close.is_some() || outbox.frames.len() * 2 >= limits.queue_depth {
            outbox.wake();
        } else {
            hub.flush.mark_due(self.slot);
        }
        queued
    }
}

/// The clients to wake in the next round of writes.
#[derive(Debug)]
struct Flush {
    /// Slots of the clients queued a frame since the last round, each at most once: it never
    /// grows past `--max-clients`.
    due: RefCell<Vec<usize>>,
    /// Whether each slot is in `due`.
    marked: RefCell<Vec<bool>>,
    /// The flush task, while it waits for the first frame of the next round.
    flusher: RefCell<Option<Waker>>,
}

impl Flush {
    fn mark_due(&self, slot: usize) {
        let mut marked = self.marked.borrow_mut();
        if std::mem::replace(&mut marked[slot], true) {
            return;
        }
        let mut due = self.due.borrow_mut();
        if due.is_empty() {
            if let Some(flusher) = self.flusher.borrow_mut().take() {
                flusher.wake();
            }
        }
        due.push(slot);
    }
}

/// Every connected client, in a slab preallocated for `--max-clients`.
#[derive(Debug)]
pub struct Hub {
    slots: RefCell<Vec<Option<Rc<Client>>>>,
    free: RefCell<Vec<usize>>,
    connected: Cell<usize>,
    renders: RefCell<Renders>,
    /// Frames one client gets for the event being fanned out; reused, so it never allocates
    /// once warm.
    routed: RefCell<Vec<Frame>>,
    flush: Flush,
    drops_log: DropsLog,
    limits: Limits,
    metrics: Rc<Metrics>,
}

/// The hub is at `--max-clients`.
#[derive(Debug)]
pub struct Full;

impl Hub {
    pub fn new(limits: Limits, metrics: Rc<Metrics>) -> Hub {
        let slots = limits.hub_slots();
        Hub {
            slots: RefCell::new((0..slots).map(|_| None).collect()),
            free: RefCell::new((0..slots).rev().collect()),
            connected: Cell::new(0),
            renders: RefCell::new(Renders::default()),
            routed: RefCell::new(Vec::new()),
            flush: Flush {
                due: RefCell::new(Vec::with_capacity(slots)),
                marked: RefCell::new(vec![false; slots]),
                flusher: RefCell::new(None),
            },
            drops_log: DropsLog::default(),
            limits,
            metrics,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Clients connected now.
    pub fn len(&self) -> usize {
        self.connected.get()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Clients connected now in one dialect.
    pub fn count(&self, dialect: Dialect) -> usize {
        let slots = self.slots.borrow();
        slots
            .iter()
            .flatten()
            .filter(|client| client.dialect == dialect)
            .count()
    }

    /// Takes a slot for a new client, or `Full` at `--max-clients`.
    pub fn register(
        &self,
        dialect: Dialect,
        credential: Option<Rc<Credential>>,
        interest: Interest,
    ) -> Result<Rc<Client>, Full> {
        let slot = self.free.borrow_mut().pop().ok_or(Full)?;
        let client = Rc::new(Client {
            slot,
            dialect,
            credential: RefCell::new(credential),
            interest: RefCell::new(interest),
            metrics: self.metrics.clone(),
            outbox: RefCell::new(Outbox {
                frames: VecDeque::new(),
                missed_in_row: 0,
                close: None,
                waker: None,
            }),
        });
        self.slots.borrow_mut()[slot] = Some(client.clone());
        self.connected.set(self.connected.get() + 1);
        Ok(client)
    }

    /// Frees a client's slot; its queued frames are released with it.
    pub fn unregister(&self, client: &Client) {
        let mut slots = self.slots.borrow_mut();
        if slots[client.slot].take().is_some() {
            self.free.borrow_mut().push(client.slot);
            self.connected.set(self.connected.get() - 1);
        }
    }

    /// Fans one event out to every client that wants it.
    pub fn publish(&self, event: &Event) {
        let Some(key) = RoutingKey::split(&event.routing_key) else {
            self.metrics.dropped(DropReason::KeyTooDeep).inc();
            return;
        };
        let mut renders = self.renders.borrow_mut();
        renders.clear();
        let mut routed = self.routed.borrow_mut();
        let slots = self.slots.borrow();
        for client in slots.iter().flatten() {
            client
                .interest
                .borrow()
                .route(event, &key, &mut renders, &mut routed);
            self.deliver(client, &mut routed);
        }
    }

    /// Fans one change of a live call out to every client that wants it.
    pub fn publish_change(&self, change: &CallChange) {
        let mut renders = self.renders.borrow_mut();
        renders.clear();
        let mut routed = self.routed.borrow_mut();
        let slots = self.slots.borrow();
        for client in slots.iter().flatten() {
            client
                .interest
                .borrow()
                .route_change(change, &mut renders, &mut routed);
            self.deliver(client, &mut routed);
        }
    }

    /// Queues one shared frame to every client of a dialect (ActionCable's pings).
    pub fn broadcast(&self, dialect: Dialect, frame: &Frame) {
        let slots = self.slots.borrow();
        for client in slots.iter().flatten().filter(|c| c.dialect == dialect) {
            client.push(frame.clone(), self);
        }
    }

    /// Wakes the clients queued frames, in rounds at least `--flush-interval` apart; never
    /// finishes.
    pub async fn flush_rounds(&self) {
        let mut timer = Timer::never();
        let mut next_round = Instant::now();
        loop {
            poll_fn(|cx| {
                if self.flush.due.borrow().is_empty() {
                    *self.flush.flusher.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            if Instant::now() < next_round {
                timer.set_at(next_round);
                (&mut timer).await;
            }
            next_round = Instant::now() + self.limits.flush_interval;
            let slots = self.slots.borrow();
            let mut marked = self.flush.marked.borrow_mut();
            for slot in self.flush.due.borrow_mut().drain(..) {
                marked[slot] = false;
                // A slot freed meanwhile is skipped; one taken again is woken for nothing.
                if let Some(client) = &slots[slot] {
                    client.outbox.borrow_mut().wake();
                }
            }
        }
    }

    /// Asks every connection to say its dialect's goodbye and close.
    pub fn close_all(&self) {
        for client in self.slots.borrow().iter().flatten() {
            client.close(CloseReason::Shutdown);
        }
    }

    /// Closes every client holding a credential that `auth` no longer holds (after a
    /// reload); returns how many.
    pub fn close_revoked(&self, auth: &Auth) -> usize {
        let mut closed = 0;
        for client in self.slots.borrow().iter().flatten() {
            let own = client.credential.borrow().clone();
            let interest = client.interest.borrow();
            let subscribed = match &*interest {
                Interest::Cable(subscriptions) => subscriptions
                    .credentials()
                    .find(|c| !auth.holds(c))
                    .cloned(),
                _ => None,
            };
            if own.is_some_and(|c| !auth.holds(&c)) || subscribed.is_some() {
                client.close(CloseReason::Revoked);
                closed += 1;
            }
        }
        closed
    }

    /// Queues the frames routed to one client, counting each delivery.
    fn deliver(&self, client: &Client, routed: &mut Vec<Frame>) {
        for frame in routed.drain(..) {
            if client.push(frame, self) {
                self.metrics.deliveries(client.dialect).inc();
            }
        }
    }
}

/// Rate limits for the log lines that report drops (the counts are in `/metrics`).
#[derive(Debug)]
struct DropsLog {
    queue_full: RateLimit,
    slow: RateLimit,
}

impl Default for DropsLog {
    fn default() -> DropsLog {
        DropsLog {
            queue_full: RateLimit::new(Duration::from_secs(10)),
            slow: RateLimit::new(Duration::from_secs(10)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use futures_lite::{FutureExt, future};

    use super::*;
    use crate::cli;

    /// A waker that counts its wakes.
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Wakes {
        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn hub(flags: &[&str]) -> Hub {
        Hub::new(cli::limits_from(flags), Rc::new(Metrics::default()))
    }

    /// A Blackhole client whose connection waits for frames, and the count of its wakes.
    fn waiting_client(hub: &Hub) -> (Rc<Client>, Arc<Wakes>) {
        let interest = Interest::Blackhole(blackhole::Subscriptions::new(1));
        let client = hub.register(Dialect::Blackhole, None, interest).unwrap();
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        assert!(
            client
                .poll_outgoing(&mut Context::from_waker(&waker))
                .is_pending()
        );
        (client, wakes)
    }

    /// Runs `steps` beside the hub's flush task, for at most 5 s (then it panics rather than
    /// hang).
    fn with_flush_task(hub: &Hub, steps: impl Future<Output = ()>) {
        let give_up = async {
            Timer::after(Duration::from_secs(5)).await;
            panic!("gave up after 5 s: the round never came");
        };
        smol::block_on(steps.or(give_up).or(hub.flush_rounds()));
    }

    /// Runs the hub's flush task until `done`.
    fn flush_until(hub: &Hub, done: impl Fn() -> bool) {
        with_flush_task(hub, async {
            while !done() {
                Timer::after(Duration::from_millis(1)).await;
            }
        });
    }

    #[test]
    fn frames_queued_before_a_round_wake_their_connection_once() {
        let hub = hub(&["--flush-interval", "1"]);
        let (client, wakes) = waiting_client(&hub);
        for text in ["a", "b", "c"] {
            hub.broadcast(Dialect::Blackhole, &Frame::from_static(text));
        }
        assert_eq!(
            wakes.count(),
            0,
            "queuing a frame wakes nobody; the round does"
        );
        flush_until(&hub, || wakes.count() > 0);
        assert_eq!(wakes.count(), 1, "one wake for three frames");
        let popped: Vec<Frame> = std::iter::from_fn(|| client.pop()).collect();
        assert_eq!(popped, ["a", "b", "c"]);
    }

    #[test]
    fn a_frame_after_a_quiet_interval_goes_at_once_and_one_soon_after_waits_for_the_round() {
        let hub = hub(&["--flush-interval", "1000"]);
        let (client, wakes) = waiting_client(&hub);
        let waker = Waker::from(wakes.clone());
        let steps = async {
            hub.broadcast(Dialect::Blackhole, &Frame::from_static("a"));
            // One turn of the flush task, no timer: nothing was written in the last interval.
            future::yield_now().await;
            assert_eq!(wakes.count(), 1, "the first frame went at once");
            assert_eq!(client.pop().as_deref(), Some("a"));
            assert!(
                client
                    .poll_outgoing(&mut Context::from_waker(&waker))
                    .is_pending()
            );
            hub.broadcast(Dialect::Blackhole, &Frame::from_static("b"));
            future::yield_now().await;
            assert_eq!(
                wakes.count(),
                1,
                "the next waits for the round, a second later"
            );
            while wakes.count() < 2 {
                Timer::after(Duration::from_millis(5)).await;
            }
        };
        with_flush_task(&hub, steps);
        assert_eq!(client.pop().as_deref(), Some("b"));
    }

    #[test]
    fn a_close_wakes_its_connection_without_waiting_for_a_round() {
        let hub = hub(&["--flush-interval", "1000"]);
        let (_client, wakes) = waiting_client(&hub);
        hub.broadcast(Dialect::Blackhole, &Frame::from_static("a"));
        assert_eq!(wakes.count(), 0, "the frame waits for the round");
        hub.close_all();
        assert_eq!(wakes.count(), 1, "the close does not");
    }

    #[test]
    fn a_queue_half_full_wakes_its_connection_without_waiting_for_a_round() {
        let hub = hub(&["--flush-interval", "1000", "--queue-depth", "4"]);
        let (client, wakes) = waiting_client(&hub);
        hub.broadcast(Dialect::Blackhole, &Frame::from_static("a"));
        assert_eq!(wakes.count(), 0);
        hub.broadcast(Dialect::Blackhole, &Frame::from_static("b"));
        assert_eq!(wakes.count(), 1, "two of four queued");
        assert_eq!(client.pop().as_deref(), Some("a"));
    }

    #[test]
    fn a_round_wakes_whoever_holds_a_due_slot_now() {
        let hub = hub(&["--flush-interval", "1"]);
        let (gone, gone_wakes) = waiting_client(&hub);
        hub.broadcast(Dialect::Blackhole, &Frame::from_static("a"));
        hub.unregister(&gone);
        // The new client takes the slot that is already due.
        let (_new, wakes) = waiting_client(&hub);
        hub.broadcast(Dialect::Blackhole, &Frame::from_static("b"));
        assert_eq!(hub.flush.due.borrow().len(), 1, "a slot is due once");
        flush_until(&hub, || wakes.count() > 0);
        assert_eq!((gone_wakes.count(), wakes.count()), (0, 1));
    }
}
