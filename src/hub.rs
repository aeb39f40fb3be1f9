//! The hub: every connected client, its interest, its bounded outbound queue, and the fan-out
//! of each event to the clients that want it.
//!
//! Fan-out asks each client's dialect whether it wants the event and for which frame; a frame
//! is rendered once per distinct shape (`Renders`) and the same bytes are queued to every
//! client that gets it. The policy for queues is the hub's (delivery.md, "Every reading client
//! gets every event"):
//!
//! - **Backpressure.** A client whose queue holds half of `--queue-depth` or more holds the
//!   source: the source takes the next event from the broker only when no client does
//!   ([`Hub::poll_room`]), so a burst waits in the broker, not in the queues, and a client that
//!   reads never loses a frame to it. The other half is room for an event that gives one
//!   client several frames; a frame that finds the queue full all the same is dropped for that
//!   client and counted (`dropped{reason="queue_full"}`).
//! - **Bytes.** A queue is bounded in bytes too (`--queue-bytes`: from half of it the client
//!   holds the source, past it a frame is dropped for it; a queue always takes one frame), and
//!   so are the queues together: each distinct frame is charged once (`Charge`, shared by every
//!   queue that holds it) to a total that holds the source from half of `--queue-bytes-total`
//!   and past which a frame is dropped for every client it was for. The budget's `queues` part
//!   is that total. What an event rendered and no queue took is let go when its fan-out ends.
//! - **Stalls.** A client whose oldest queued frame has waited `--stall-timeout` (its socket
//!   took nothing that long, or it reads so slowly that it is that far behind) is closed as too
//!   slow ([`Hub::watch_stalls`]): its queue is released at once and counted
//!   (`dropped{reason="slow_client"}`, `limit_hits{limit="stall_timeout"}`), so it holds the
//!   source for at most that long.
//!
//! Writing never happens here: pushing to a queue is a bounded, non-blocking step. A frame
//! queued to an empty queue wakes its connection, which writes everything queued by the time
//! it runs in one vectored `write` (`text_frames`); a frame stays queued, and counted, until
//! the socket has taken all of it. The source places a bounded number of events per turn and
//! then lets the connections run, so under load each round of writes carries what queued
//! during the last one, and with a trickle nothing waits.

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use smol::Timer;

use crate::auth::Auth;
use crate::dialect_label::Dialect;
use crate::event::Event;
use crate::frame::{CloseReason, Frame};
use crate::limits::Limits;
use crate::live::CallChange;
use crate::logging::RateLimit;
use crate::matcher::RoutingKey;
use crate::metrics::{DropReason, Limit, Metrics};

/// What a client wants to receive, kept by its dialect in the form it needs: each dialect
/// implements it for its own state (`dialect::*`), shared with its session, so the hub never
/// names a dialect and a session never asks which dialect a client speaks (anycable-go's hub
/// defines `HubSession` the same way).
pub trait Interest: std::fmt::Debug {
    /// Puts the frames this client gets for an event into `out` (a dialect with several
    /// subscriptions on one socket may send more than one), rendering each distinct frame
    /// once into `renders`.
    fn route(
        &self,
        event: &Event,
        key: &RoutingKey<'_>,
        renders: &mut Renders,
        out: &mut Vec<Frame>,
    );

    /// Puts the frames this client gets for a change of a live call into `out` (only
    /// ActionCable's `calls` model takes them).
    fn route_change(&self, _change: &CallChange, _renders: &mut Renders, _out: &mut Vec<Frame>) {}

    /// Whether the client acts with a credential that `auth` no longer holds (after a reload).
    fn revoked(&self, auth: &Auth) -> bool;
}

/// Frames already rendered for the event being fanned out, one cache per dialect, so each
/// distinct frame is serialised once. Cleared per event; the caches and their storage are
/// kept, so steady state allocates only the frames themselves.
#[derive(Debug, Default)]
pub struct Renders {
    caches: Vec<Box<dyn RenderCache>>,
}

/// One dialect's frames for the event being fanned out.
pub trait RenderCache: Any + std::fmt::Debug {
    fn clear(&mut self);
}

impl Renders {
    /// The cache of type `C`, made on its first use.
    pub fn cache<C: RenderCache + Default>(&mut self) -> &mut C {
        let at = match (self.caches.iter()).position(|c| (**c).type_id() == TypeId::of::<C>()) {
            Some(at) => at,
            None => {
                self.caches.push(Box::new(C::default()));
                self.caches.len() - 1
            }
        };
        let cache: &mut dyn Any = &mut *self.caches[at];
        cache.downcast_mut().expect("found by its type")
    }

    fn clear(&mut self) {
        for cache in &mut self.caches {
            cache.clear();
        }
    }
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
    /// Each frame with the time it was queued, and its share of the hub's byte total.
    frames: VecDeque<(Frame, Instant, Rc<Charge>)>,
    /// Bytes of the frames queued, for `--queue-bytes`.
    bytes: usize,
    /// Whether this queue holds the source (it is counted in `Backpressure::holding`).
    holds: bool,
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

    /// Notes whether this queue holds the source now, by its frames and bytes.
    fn update_hold(&mut self, backpressure: &Backpressure) {
        backpressure.update(&mut self.holds, self.frames.len(), self.bytes);
    }

    /// Wakes the connection, if it waits.
    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// Which clients hold the source, and the bytes queued to all of them, shared by the hub and
/// every client.
#[derive(Debug)]
struct Backpressure {
    /// Frames at which a queue holds the source: half of `--queue-depth`, at least one.
    mark: usize,
    /// Bytes at which a queue holds the source: half of `--queue-bytes`.
    bytes_mark: usize,
    /// Open clients whose queue is at a mark or above.
    holding: Cell<usize>,
    /// Bytes of the distinct frames queued to any client: a frame shared by a thousand
    /// queues is counted once, as it is held once.
    queued: Cell<usize>,
    /// At `--queue-bytes-total` no new frame is queued; from half of it the source is held.
    queued_max: usize,
    /// The source, while it waits for room.
    source: RefCell<Option<Waker>>,
}

impl Backpressure {
    /// Notes whether a queue of `len` frames and `bytes` bytes holds the source now.
    fn update(&self, holds: &mut bool, len: usize, bytes: usize) {
        let now = len >= self.mark || bytes >= self.bytes_mark;
        if now == *holds {
            return;
        }
        *holds = now;
        if now {
            self.holding.set(self.holding.get() + 1);
        } else {
            self.release();
        }
    }

    /// One queue no longer holds the source.
    fn release(&self) {
        self.holding.set(self.holding.get() - 1);
        self.wake_source();
    }

    /// Whether the source may place the next event: no queue holds it, and the queues hold
    /// less than half of `--queue-bytes-total`.
    fn has_room(&self) -> bool {
        self.holding.get() == 0 && 2 * self.queued.get() < self.queued_max
    }

    /// Lets the source go on, if it waits and may.
    fn wake_source(&self) {
        if self.has_room() {
            if let Some(source) = self.source.borrow_mut().take() {
                source.wake();
            }
        }
    }
}

/// One distinct frame's bytes, counted in `Backpressure::queued` while any queue (or the event
/// being fanned out) holds it.
#[derive(Debug)]
struct Charge {
    bytes: usize,
    backpressure: Rc<Backpressure>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        let queued = &self.backpressure.queued;
        queued.set(queued.get() - self.bytes);
        self.backpressure.wake_source();
    }
}

/// One connected websocket client.
#[derive(Debug)]
pub struct Client {
    slot: usize,
    pub dialect: Dialect,
    /// What it wants, shared with its session, which changes it.
    pub interest: Rc<dyn Interest>,
    /// Where the client's session counts the limits it hits.
    pub metrics: Rc<Metrics>,
    backpressure: Rc<Backpressure>,
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

    /// Lends the queued frames, oldest first, to be written; they stay queued (and counted)
    /// until the socket has taken them and the connection pops them.
    pub fn with_queued<R>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &Frame>) -> R) -> R {
        let outbox = self.outbox.borrow();
        f(&mut outbox.frames.iter().map(|(frame, _, _)| frame))
    }

    /// Takes the oldest queued frame once it is written: the client's progress, which may let
    /// the source go on.
    pub fn pop(&self) -> Option<Frame> {
        let mut outbox = self.outbox.borrow_mut();
        let (frame, _, _) = outbox.frames.pop_front()?;
        outbox.bytes -= frame.len();
        outbox.update_hold(&self.backpressure);
        Some(frame)
    }

    /// Since when the oldest queued frame has waited, if one does and the client is still
    /// open (a closing client's goodbye has its own deadline).
    fn waiting_since(&self) -> Option<Instant> {
        let outbox = self.outbox.borrow();
        match outbox.close {
            Some(_) => None,
            None => outbox.frames.front().map(|(_, at, _)| *at),
        }
    }

    /// Asks the connection to close; the first reason given stands. A closed client takes no
    /// more frames, so it no longer holds the source; one too slow to drain loses its queue
    /// at once, counted, rather than when its connection ends.
    fn close(&self, reason: CloseReason) {
        let mut outbox = self.outbox.borrow_mut();
        if outbox.close.is_some() {
            return;
        }
        outbox.close = Some(reason);
        if std::mem::take(&mut outbox.holds) {
            self.backpressure.release();
        }
        if reason == CloseReason::TooSlow {
            let missed = outbox.frames.len() as u64;
            self.metrics.dropped(DropReason::SlowClient).add(missed);
            outbox.frames = VecDeque::new();
            outbox.bytes = 0;
        }
        outbox.wake();
    }

    /// Queues a frame under the hub's policy; returns false when it was dropped. A queue takes
    /// at most `--queue-depth` frames and `--queue-bytes` bytes, but always one frame.
    fn push(&self, frame: Frame, charge: Rc<Charge>, now: Instant, hub: &Hub) -> bool {
        let mut outbox = self.outbox.borrow_mut();
        if outbox.close == Some(CloseReason::TooSlow) {
            self.metrics.dropped(DropReason::SlowClient).inc();
            return false;
        }
        if outbox.close.is_some() {
            return false;
        }
        let over_bytes = outbox.bytes + frame.len() > hub.limits.queue_bytes;
        if outbox.frames.len() >= hub.limits.queue_depth
            || (over_bytes && !outbox.frames.is_empty())
        {
            self.metrics.dropped(DropReason::QueueFull).inc();
            hub.drops_log.queue_full.report(|held| {
                warn!(
                    "dropped a frame for a {} client whose queue is full{held}",
                    self.dialect.as_str()
                )
            });
            return false;
        }
        outbox.bytes += frame.len();
        outbox.frames.push_back((frame, now, charge));
        outbox.update_hold(&self.backpressure);
        // A connection with frames already queued has been woken for them and takes this one
        // in the same write.
        if outbox.frames.len() == 1 {
            outbox.wake();
        }
        true
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
    /// The charge of each distinct frame of the event being fanned out, by its bytes' address
    /// and length; cleared per event, its storage kept.
    charges: RefCell<HashMap<(usize, usize), Rc<Charge>>>,
    backpressure: Rc<Backpressure>,
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
            charges: RefCell::new(HashMap::new()),
            backpressure: Rc::new(Backpressure {
                mark: limits.queue_depth.div_ceil(2),
                bytes_mark: limits.queue_bytes.div_ceil(2),
                holding: Cell::new(0),
                queued: Cell::new(0),
                queued_max: limits.queue_bytes_total,
                source: RefCell::new(None),
            }),
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
        interest: Rc<dyn Interest>,
    ) -> Result<Rc<Client>, Full> {
        let slot = self.free.borrow_mut().pop().ok_or(Full)?;
        let client = Rc::new(Client {
            slot,
            dialect,
            interest,
            metrics: self.metrics.clone(),
            backpressure: self.backpressure.clone(),
            outbox: RefCell::new(Outbox {
                frames: VecDeque::new(),
                bytes: 0,
                holds: false,
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
            if std::mem::take(&mut client.outbox.borrow_mut().holds) {
                self.backpressure.release();
            }
        }
    }

    /// Whether the source may place the next event now: no client's queue holds it, and the
    /// queues hold less than half of `--queue-bytes-total`.
    pub fn has_room(&self) -> bool {
        self.backpressure.has_room()
    }

    /// Waits until the source may place the next event (see [`Hub::has_room`]).
    pub fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.has_room() {
            return Poll::Ready(());
        }
        let mut source = self.backpressure.source.borrow_mut();
        if !source.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *source = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Fans one event out to every client that wants it.
    pub fn publish(&self, event: &Event) {
        let Some(key) = RoutingKey::split(&event.routing_key) else {
            self.metrics.dropped(DropReason::KeyTooDeep).inc();
            return;
        };
        self.fan_out(|interest, renders, routed| interest.route(event, &key, renders, routed));
    }

    /// Fans one change of a live call out to every client that wants it.
    pub fn publish_change(&self, change: &CallChange) {
        self.fan_out(|interest, renders, routed| interest.route_change(change, renders, routed));
    }

    /// Asks every client's interest for its frames (`route`) and queues them.
    fn fan_out(&self, route: impl Fn(&dyn Interest, &mut Renders, &mut Vec<Frame>)) {
        let now = Instant::now();
        let mut renders = self.renders.borrow_mut();
        renders.clear();
        let mut routed = self.routed.borrow_mut();
        let slots = self.slots.borrow();
        for client in slots.iter().flatten() {
            route(&*client.interest, &mut renders, &mut routed);
            self.queue_to(client, &mut routed, now);
        }
        self.done(&mut renders);
    }

    /// Lets go of what the event's fan-out rendered: a frame no queue took is freed now, not
    /// at the next event (after a burst, the last event's frames would stay resident).
    fn done(&self, renders: &mut Renders) {
        renders.clear();
        self.charges.borrow_mut().clear();
    }

    /// Queues one shared frame to every client of a dialect (ActionCable's pings).
    pub fn broadcast(&self, dialect: Dialect, frame: &Frame) {
        let now = Instant::now();
        let slots = self.slots.borrow();
        let charge = self.charge(frame);
        for client in slots.iter().flatten().filter(|c| c.dialect == dialect) {
            match &charge {
                Some(charge) => {
                    client.push(frame.clone(), charge.clone(), now, self);
                }
                None => self.metrics.dropped(DropReason::QueueFull).inc(),
            }
        }
        self.charges.borrow_mut().clear();
    }

    /// Closes every client whose oldest queued frame has waited `--stall-timeout`, at the
    /// moment it has; never finishes. Each pass looks at every slot once and then sleeps until
    /// the oldest frame still waiting comes due (a frame queued later comes due later).
    pub async fn watch_stalls(&self) {
        let stall = self.limits.stall_timeout;
        let mut timer = Timer::never();
        loop {
            let now = Instant::now();
            let mut next = now + stall;
            for client in self.slots.borrow().iter().flatten() {
                let Some(since) = client.waiting_since() else {
                    continue;
                };
                if now.duration_since(since) < stall {
                    next = next.min(since + stall);
                    continue;
                }
                let waited = now.duration_since(since);
                client.close(CloseReason::TooSlow);
                self.metrics.limit_hits(Limit::StallTimeout).inc();
                self.drops_log.slow.report(|held| {
                    warn!(
                        "closed a {} client as too slow: a frame waited {} ms for it{held}",
                        client.dialect.as_str(),
                        waited.as_millis()
                    )
                });
            }
            timer.set_at(next);
            (&mut timer).await;
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
            if client.interest.revoked(auth) {
                client.close(CloseReason::Revoked);
                closed += 1;
            }
        }
        closed
    }

    /// Queues the frames routed to one client, counting each delivery.
    fn queue_to(&self, client: &Client, routed: &mut Vec<Frame>, now: Instant) {
        for frame in routed.drain(..) {
            let Some(charge) = self.charge(&frame) else {
                self.metrics.dropped(DropReason::QueueFull).inc();
                self.drops_log.queue_full.report(|held| {
                    warn!(
                        "dropped a frame for a {} client: the queues hold --queue-bytes-total{held}",
                        client.dialect.as_str()
                    )
                });
                continue;
            };
            if client.push(frame, charge, now, self) {
                self.metrics.deliveries(client.dialect).inc();
            }
        }
    }

    /// The frame's share of the bytes queued to all clients, counted once however many queues
    /// take it; `None` when it would take them past `--queue-bytes-total`.
    fn charge(&self, frame: &Frame) -> Option<Rc<Charge>> {
        let key = (frame.as_str().as_ptr() as usize, frame.len());
        let mut charges = self.charges.borrow_mut();
        if let Some(charge) = charges.get(&key) {
            return Some(charge.clone());
        }
        let queued = &self.backpressure.queued;
        if queued.get() + frame.len() > self.backpressure.queued_max {
            return None;
        }
        queued.set(queued.get() + frame.len());
        let charge = Rc::new(Charge {
            bytes: frame.len(),
            backpressure: self.backpressure.clone(),
        });
        charges.insert(key, charge.clone());
        Some(charge)
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

    use futures_lite::FutureExt;

    use super::*;
    use crate::cli;
    use crate::dialect::blackhole;
    use crate::limits::BytePool;

    /// A waker that counts its wakes.
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Wakes {
        fn new() -> Arc<Wakes> {
            Arc::new(Wakes(AtomicUsize::new(0)))
        }

        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn hub(flags: &[&str]) -> Hub {
        Hub::new(cli::limits_from(flags), Rc::new(Metrics::default()))
    }

    /// A Blackhole client whose connection waits for frames, and the count of its wakes.
    fn waiting_client(hub: &Hub) -> (Rc<Client>, Arc<Wakes>) {
        let interest = blackhole::Subscriptions::new(1, BytePool::new(usize::MAX).share());
        let client = hub
            .register(Dialect::Blackhole, Rc::new(RefCell::new(interest)))
            .unwrap();
        let wakes = Wakes::new();
        let waker = Waker::from(wakes.clone());
        assert!(
            client
                .poll_outgoing(&mut Context::from_waker(&waker))
                .is_pending()
        );
        (client, wakes)
    }

    fn send(hub: &Hub, text: &'static str) {
        hub.broadcast(Dialect::Blackhole, &Frame::from_static(text));
    }

    #[test]
    fn the_first_frame_wakes_its_connection_and_the_rest_ride_along() {
        let hub = hub(&[]);
        let (client, wakes) = waiting_client(&hub);
        for text in ["a", "b", "c"] {
            send(&hub, text);
        }
        assert_eq!(wakes.count(), 1, "one wake for three frames, at once");
        let popped: Vec<Frame> = std::iter::from_fn(|| client.pop()).collect();
        assert_eq!(popped, ["a", "b", "c"]);
    }

    #[test]
    fn a_half_full_queue_holds_the_source_until_its_client_takes_a_frame() {
        let hub = hub(&["--queue-depth", "4"]);
        let (reader, _) = waiting_client(&hub);
        let (slow, _) = waiting_client(&hub);
        let source = Wakes::new();
        let waker = Waker::from(source.clone());
        let mut cx = Context::from_waker(&waker);
        send(&hub, "a");
        assert!(hub.poll_room(&mut cx).is_ready(), "one of four queued");
        send(&hub, "b");
        assert!(hub.poll_room(&mut cx).is_pending(), "two of four queued");
        while reader.pop().is_some() {}
        assert_eq!(source.count(), 0, "the slow client still holds it");
        assert!(hub.poll_room(&mut cx).is_pending());
        assert_eq!(slow.pop().as_deref(), Some("a"));
        assert_eq!(source.count(), 1, "room: the source is woken");
        assert!(hub.has_room());
    }

    #[test]
    fn a_full_queue_drops_and_counts_but_never_past_its_depth() {
        let hub = hub(&["--queue-depth", "2"]);
        let (client, _) = waiting_client(&hub);
        for text in ["a", "b", "c"] {
            send(&hub, text);
        }
        assert_eq!(hub.metrics.dropped(DropReason::QueueFull).get(), 1);
        let popped: Vec<Frame> = std::iter::from_fn(|| client.pop()).collect();
        assert_eq!(popped, ["a", "b"]);
    }

    #[test]
    fn a_queue_is_bounded_in_bytes_too_but_always_takes_one_frame() {
        let hub = hub(&["--queue-bytes", "10"]);
        let (client, _) = waiting_client(&hub);
        send(&hub, "aaaa");
        assert!(hub.has_room(), "4 of 10 bytes");
        send(&hub, "bbbb");
        assert!(
            !hub.has_room(),
            "8 of 10 bytes: past half, the source waits"
        );
        send(&hub, "cccc");
        assert_eq!(hub.metrics.dropped(DropReason::QueueFull).get(), 1);
        while client.pop().is_some() {}
        assert!(hub.has_room());
        send(&hub, "a frame longer than the bound");
        assert_eq!(
            client.pop().as_deref(),
            Some("a frame longer than the bound")
        );
    }

    #[test]
    fn the_bytes_queued_to_all_clients_count_a_shared_frame_once_and_are_bounded() {
        let hub = hub(&["--queue-bytes-total", "20"]);
        let clients: Vec<_> = (0..3).map(|_| waiting_client(&hub).0).collect();
        send(&hub, "12345678");
        assert_eq!(hub.backpressure.queued.get(), 8, "one frame, three queues");
        assert!(hub.has_room(), "8 of 20 bytes");
        send(&hub, "abcdefgh");
        assert!(
            !hub.has_room(),
            "16 of 20 bytes: past half, the source waits"
        );
        send(&hub, "ABCDEFGH");
        assert_eq!(
            hub.metrics.dropped(DropReason::QueueFull).get(),
            3,
            "past the total, dropped for each client and counted"
        );
        for client in &clients[..2] {
            while client.pop().is_some() {}
        }
        assert_eq!(
            hub.backpressure.queued.get(),
            16,
            "still queued to the third"
        );
        hub.unregister(&clients[2]);
        drop(clients);
        assert_eq!(hub.backpressure.queued.get(), 0);
        assert!(hub.has_room());
    }

    #[test]
    fn a_client_that_leaves_or_is_closed_stops_holding_the_source() {
        let hub = hub(&["--queue-depth", "2"]);
        let (gone, _) = waiting_client(&hub);
        let (revoked, _) = waiting_client(&hub);
        send(&hub, "a");
        assert!(!hub.has_room());
        hub.unregister(&gone);
        assert!(!hub.has_room(), "the other still holds it");
        revoked.close(CloseReason::Revoked);
        assert!(hub.has_room());
        assert_eq!(
            revoked.waiting_since(),
            None,
            "its goodbye is not judged a stall"
        );
        assert_eq!(revoked.pop().as_deref(), Some("a"), "kept for its goodbye");
        assert!(hub.has_room());
    }

    #[test]
    fn a_frame_that_waits_the_stall_timeout_closes_its_client_and_its_queue_is_counted() {
        let hub = hub(&["--stall-timeout", "1", "--queue-depth", "4"]);
        let (stalled, stalled_wakes) = waiting_client(&hub);
        let (reader, _) = waiting_client(&hub);
        let steps = async {
            send(&hub, "a");
            send(&hub, "b");
            assert!(!hub.has_room());
            // The reader keeps taking; the stalled client takes nothing.
            let began = Instant::now();
            while stalled.outbox.borrow().close.is_none() {
                while reader.pop().is_some() {}
                Timer::after(Duration::from_millis(20)).await;
            }
            began.elapsed()
        };
        let give_up = async {
            Timer::after(Duration::from_secs(5)).await;
            panic!("gave up after 5 s: the stalled client was never closed");
        };
        let watch = async {
            hub.watch_stalls().await;
            unreachable!("watch_stalls never finishes")
        };
        let waited = smol::block_on(steps.or(give_up).or(watch));
        assert!(
            waited >= Duration::from_millis(900),
            "closed early: {waited:?}"
        );
        assert!(stalled_wakes.count() >= 1);
        assert!(
            hub.has_room(),
            "the closed client no longer holds the source"
        );
        assert_eq!(hub.metrics.dropped(DropReason::SlowClient).get(), 2);
        assert_eq!(hub.metrics.limit_hits(Limit::StallTimeout).get(), 1);
        send(&hub, "c");
        assert_eq!(
            hub.metrics.dropped(DropReason::SlowClient).get(),
            3,
            "a frame for a closed slow client is counted too"
        );
        assert_eq!(stalled.pop(), None);
        assert_eq!(reader.pop().as_deref(), Some("c"));
    }
}
