//! The live state of calls (live-api.md): every call the PBX's events show as live, with its
//! parties, state and recent events, kept from the event stream (events.md, "PBX event
//! shapes"). The REST live API reads it; the ActionCable `calls` model publishes its changes.
//!
//! Memory is bounded and fixed at start-up: calls live in a slab of `max_calls` slots that
//! never grows, linked oldest to newest so listing is in start order and the oldest call can be
//! evicted in constant time when a new one needs room. An index maps call ids to slots.
//!
//! Each call is bounded in bytes, whatever the PBX sends: its text fields are cut at a length
//! (at a character boundary), and it keeps its last `events_per_call` events as copies of at
//! most `CALL_EVENTS_BYTES` of payload in all, a longer payload cut with a mark the REST
//! listing shows. A copy, not a share: a payload may be a slice of the source's read buffer,
//! and keeping the slice would keep the whole buffer. `LiveState::bound` is the table's worst
//! case, `--max-calls` times that of one call.

pub mod saved;
pub mod shapes;

use std::collections::{HashMap, VecDeque, vec_deque};
use std::hash::BuildHasher;
use std::rc::Rc;
use std::time::SystemTime;

use bytes::Bytes;
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::clock;
use crate::event::Event;
use crate::event::Position;
use crate::metrics::Metrics;
use shapes::{CallSource, Observation, Step};

/// Ends remembered so that a late event of an ended call (FreeSWITCH sends CHANNEL_STATE after
/// CHANNEL_HANGUP_COMPLETE) does not bring it back as a call first seen mid-life. Late events
/// follow the end within moments, so the last thousand ends are plenty.
const ENDS_REMEMBERED: usize = 1024;

/// "No slot": the end of the oldest-to-newest list.
const NIL: usize = usize::MAX;

/// Longest call id, account or other leg kept, in bytes (an AMQP short string's length).
pub const MAX_ID_LEN: usize = 255;
/// Longest number, name, direction or event name kept, in bytes.
pub const MAX_TEXT_LEN: usize = 128;
/// Longest routing key kept with a recent event, in bytes.
pub const MAX_KEY_LEN: usize = 255;
/// Payload bytes one call keeps across its recent events; one longer payload is cut to it.
pub const CALL_EVENTS_BYTES: usize = 4 * 1024;
/// What the allocator adds to each of a call's heap blocks, at most (glibc: 16 bytes).
const BLOCK_OVERHEAD: usize = 16;

/// Where a call is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallState {
    /// Started, not answered (also a call first seen at an event that tells nothing more).
    Ringing,
    /// Answered, or taken off hold without having been bridged.
    Answered,
    /// On hold.
    Held,
    /// Bridged to another leg, or taken off hold after having been bridged.
    Bridged,
}

impl CallState {
    /// The live API's name: `ringing`, `answered`, `held` or `bridged`.
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Ringing => "ringing",
            CallState::Answered => "answered",
            CallState::Held => "held",
            CallState::Bridged => "bridged",
        }
    }
}

/// A party to a call; `None` where no event has told it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Party {
    /// The number or extension.
    pub number: Option<String>,
    /// The display name.
    pub name: Option<String>,
}

impl Party {
    /// Fills in what this party lacks from what an event tells.
    fn fill(&mut self, seen: &shapes::PartyRef<'_>) {
        fill(&mut self.number, seen.number, MAX_TEXT_LEN);
        fill(&mut self.name, seen.name, MAX_TEXT_LEN);
    }
}

/// One of a call's recent events, as it came from the broker, its payload copied and cut to
/// what the call may keep.
#[derive(Clone, Debug)]
pub struct RecentEvent {
    /// The event's routing key (cut at `MAX_KEY_LEN`).
    pub routing_key: Box<str>,
    /// When callwire received it.
    pub received_at: SystemTime,
    /// The payload as received, or its first bytes when it was longer than the call keeps.
    pub payload: Bytes,
    /// The payload's length as received: more than `payload.len()` when it was cut.
    pub size: usize,
}

impl RecentEvent {
    /// Copies what a call keeps of `event`: its own buffer, never a share of the source's.
    fn kept(event: &Event) -> RecentEvent {
        let keep = event.payload.len().min(CALL_EVENTS_BYTES);
        RecentEvent {
            routing_key: cap(&event.routing_key, MAX_KEY_LEN).into(),
            received_at: event.received_at,
            payload: Bytes::copy_from_slice(&event.payload[..keep]),
            size: event.payload.len(),
        }
    }

    /// Whether the payload was cut.
    pub fn truncated(&self) -> bool {
        self.payload.len() < self.size
    }
}

/// A live call. Serialises as the live API shows it, fields in the documented order.
#[derive(Debug)]
pub struct Call {
    /// The PBX's id for the call.
    pub id: Rc<str>,
    /// The tenant the call belongs to, from the first of its events that names one.
    pub account: Option<String>,
    /// The shape of the call's events.
    pub source: CallSource,
    /// Where the call is in its life.
    pub state: CallState,
    /// `inbound` or `outbound`, where the PBX tells it.
    pub direction: Option<String>,
    /// The calling party.
    pub from: Party,
    /// The called party.
    pub to: Party,
    /// When the call started, or when it was first seen if its start was missed.
    pub started_at: SystemTime,
    /// When the call was answered, if its answer was seen.
    pub answered_at: Option<SystemTime>,
    /// The leg the call is bridged to.
    pub other_leg: Option<String>,
    /// The name of the call's latest event.
    pub last_event: String,
    /// How many of the call's events were seen.
    pub events: u64,
    /// Whether the call has been bridged: taking it off hold returns it to `bridged`.
    bridged: bool,
    /// The last events, oldest first, at most `events_per_call` and `CALL_EVENTS_BYTES` of
    /// payload.
    recent: VecDeque<RecentEvent>,
    /// Payload bytes in `recent`.
    recent_bytes: usize,
    /// The call's place in start order, for resuming a listing between its pieces.
    pub serial: u64,
}

impl Call {
    /// A call first seen at `seen`, before that event is applied to it.
    fn new(seen: &Observation<'_>, events_per_call: usize, serial: u64) -> Call {
        Call {
            id: Rc::from(cap(seen.id, MAX_ID_LEN)),
            account: None,
            source: seen.source,
            state: CallState::Ringing,
            direction: None,
            from: Party::default(),
            to: Party::default(),
            started_at: seen.created.unwrap_or(seen.at),
            answered_at: None,
            other_leg: None,
            last_event: String::new(),
            events: 0,
            bridged: false,
            recent: VecDeque::with_capacity(events_per_call),
            recent_bytes: 0,
            serial,
        }
    }

    /// Applies one of the call's events: fills in what the call lacked, moves its state, and
    /// keeps the event in the ring.
    fn apply(&mut self, seen: &Observation<'_>, event: &Event, events_per_call: usize) {
        self.events += 1;
        cap(seen.name, MAX_TEXT_LEN).clone_into(&mut self.last_event);
        fill(&mut self.account, event.account.as_deref(), MAX_ID_LEN);
        fill(&mut self.direction, seen.direction, MAX_TEXT_LEN);
        self.from.fill(&seen.from);
        self.to.fill(&seen.to);
        match (seen.step, seen.other_leg) {
            // A new bridge links a new leg.
            (Step::Bridge, Some(other)) => self.other_leg = Some(cap(other, MAX_ID_LEN).to_owned()),
            (_, other) => fill(&mut self.other_leg, other, MAX_ID_LEN),
        }
        match seen.step {
            // ARI reports every event of an answered channel as `Up`: only the first answer of
            // a ringing call moves it (a call first seen held was answered at a time unknown).
            Step::Answer if self.state == CallState::Ringing => {
                self.state = CallState::Answered;
                self.answered_at = Some(seen.at);
            }
            Step::Hold => self.state = CallState::Held,
            Step::Unhold if self.bridged => self.state = CallState::Bridged,
            Step::Unhold => self.state = CallState::Answered,
            Step::Bridge => {
                self.bridged = true;
                self.state = CallState::Bridged;
            }
            Step::Start | Step::Answer | Step::End | Step::Left | Step::Other => {}
        }
        if events_per_call > 0 {
            let kept = RecentEvent::kept(event);
            // Room first, so the ring never grows past its capacity.
            while self.recent.len() == events_per_call
                || self.recent_bytes + kept.payload.len() > CALL_EVENTS_BYTES
            {
                let Some(oldest) = self.recent.pop_front() else {
                    break;
                };
                self.recent_bytes -= oldest.payload.len();
            }
            self.recent_bytes += kept.payload.len();
            self.recent.push_back(kept);
        }
    }

    /// The call as the live API shows it, as a JSON value (for embedding in a frame).
    pub fn to_json(&self) -> Value {
        // Cannot fail: every field is a string, a number or null.
        serde_json::to_value(self).unwrap_or_default()
    }

    /// Whether a credential scoped to `scope` may see this call (as `Event::visible_to`).
    pub fn visible_to(&self, scope: &str) -> bool {
        visible(self.account.as_deref(), scope)
    }

    /// Whether `number` is the calling or the called party's.
    pub fn has_number(&self, number: &str) -> bool {
        [&self.from, &self.to]
            .iter()
            .any(|party| party.number.as_deref() == Some(number))
    }

    /// The call's recent events, oldest first.
    pub fn recent_events(&self) -> vec_deque::Iter<'_, RecentEvent> {
        self.recent.iter()
    }

    /// A change of `kind` carrying the call as it is now.
    fn change(&self, kind: ChangeKind) -> CallChange {
        CallChange {
            kind,
            account: self.account.clone(),
            call: self.to_json(),
            position: None,
        }
    }
}

impl Serialize for Call {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        CallView {
            id: &self.id,
            account: self.account.as_deref(),
            source: self.source.as_str(),
            state: self.state.as_str(),
            direction: self.direction.as_deref(),
            from: &self.from,
            to: &self.to,
            started_at: clock::rfc3339(self.started_at),
            answered_at: self.answered_at.map(clock::rfc3339),
            other_leg: self.other_leg.as_deref(),
            last_event: &self.last_event,
            events: self.events,
        }
        .serialize(serializer)
    }
}

/// The call's wire form: live-api.md's fields, in its order, times in RFC 3339 UTC.
#[derive(Serialize)]
struct CallView<'a> {
    id: &'a str,
    account: Option<&'a str>,
    source: &'static str,
    state: &'static str,
    direction: Option<&'a str>,
    from: &'a Party,
    to: &'a Party,
    started_at: String,
    answered_at: Option<String>,
    other_leg: Option<&'a str>,
    last_event: &'a str,
    events: u64,
}

/// What happened to a call: the ActionCable `calls` model's event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The call started, or was first seen mid-life.
    Create,
    /// Any later event of the live call.
    Update,
    /// The call ended, or was evicted to make room.
    Destroy,
}

impl ChangeKind {
    /// ActionCable's `event_type`: `create`, `update` or `destroy`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Create => "create",
            ChangeKind::Update => "update",
            ChangeKind::Destroy => "destroy",
        }
    }
}

/// A change to one call, to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct CallChange {
    /// What happened.
    pub kind: ChangeKind,
    /// The call's account, for scoping who may see the change.
    pub account: Option<String>,
    /// The call as the live API shows it, after the change.
    pub call: Value,
    /// The position of the event that made the change (set when the event has one).
    pub position: Option<Position>,
}

impl CallChange {
    /// Whether a credential scoped to `scope` may see this change.
    pub fn visible_to(&self, scope: &str) -> bool {
        visible(self.account.as_deref(), scope)
    }
}

/// What one event changed: the call it concerns, and the oldest call if it was evicted to make
/// room for a new one. Iterates the eviction first, so clients see the room made before the
/// new call fills it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    /// The oldest call, destroyed to make room for a new one.
    pub evicted: Option<CallChange>,
    /// The event's own call.
    pub call: Option<CallChange>,
}

impl IntoIterator for Changes {
    type Item = CallChange;
    type IntoIter =
        std::iter::Chain<std::option::IntoIter<CallChange>, std::option::IntoIter<CallChange>>;

    fn into_iter(self) -> Self::IntoIter {
        self.evicted.into_iter().chain(self.call)
    }
}

/// One slot of the slab, linked to its older and newer neighbours while it holds a call.
#[derive(Debug)]
struct Slot {
    call: Option<Call>,
    older: usize,
    newer: usize,
    /// The next live call with the same id in another account (call ids come from callers,
    /// so two tenants may use one).
    same_id: usize,
}

/// The live calls, bounded and preallocated at start-up.
#[derive(Debug)]
pub struct LiveState {
    /// The slab: at most `max_calls` slots, allocated once.
    slots: Vec<Slot>,
    /// Slots whose call has gone, to reuse before adding any.
    free: Vec<usize>,
    max_calls: usize,
    events_per_call: usize,
    /// Ends of the oldest-to-newest list of live calls.
    oldest: usize,
    newest: usize,
    /// Call id to the slot of the newest live call with that id (the others follow `same_id`).
    index: HashMap<Rc<str>, usize>,
    /// How many calls are live (the index counts ids, and two accounts may share one).
    live: usize,
    /// Hashes of the ids and accounts of recently ended or evicted calls, oldest first.
    ended: VecDeque<u64>,
    /// The serial of the next call to start.
    next_serial: u64,
    /// Counts the events that changed a call: the state's timed save writes only when it moved.
    generation: u64,
    metrics: Rc<Metrics>,
}

impl LiveState {
    /// Room for `max_calls` live calls (at least one), each keeping its last `events_per_call`
    /// events; evictions are counted in `metrics`.
    pub fn new(max_calls: usize, events_per_call: usize, metrics: Rc<Metrics>) -> LiveState {
        let max_calls = max_calls.max(1);
        LiveState {
            slots: Vec::with_capacity(max_calls),
            free: Vec::with_capacity(max_calls),
            max_calls,
            events_per_call,
            oldest: NIL,
            newest: NIL,
            // The table rehashes in place instead of growing while it is at most half full,
            // so twice the room keeps it from ever growing as calls come and go.
            index: HashMap::with_capacity(2 * max_calls + 2),
            live: 0,
            ended: VecDeque::with_capacity(ENDS_REMEMBERED),
            next_serial: 0,
            generation: 0,
            metrics,
        }
    }

    /// The most bytes the live calls may hold with these limits: every slot full, every
    /// text at its cut, every call's recent events at their bound, plus the index and the
    /// remembered ends.
    pub fn bound(max_calls: usize, events_per_call: usize) -> usize {
        use std::mem::size_of;
        let texts = 3 * (MAX_ID_LEN + BLOCK_OVERHEAD) + 6 * (MAX_TEXT_LEN + BLOCK_OVERHEAD);
        let recent = events_per_call
            * (size_of::<RecentEvent>() + MAX_KEY_LEN + 2 * BLOCK_OVERHEAD)
            + CALL_EVENTS_BYTES.min(events_per_call * CALL_EVENTS_BYTES);
        // Slab and free list, the index's room for twice the calls (entry plus control byte).
        let slots = size_of::<Slot>() + size_of::<usize>();
        let index = 2 * (size_of::<(Rc<str>, usize)>() + 1);
        let call = slots + index + texts + recent + BLOCK_OVERHEAD;
        max_calls.max(1) * call + ENDS_REMEMBERED * size_of::<u64>()
    }

    /// Applies one event: the call it concerns starts, changes or ends. An event that fits no
    /// PBX shape, the end of an unknown call, and a late event of a call that just ended change
    /// nothing.
    pub fn apply(&mut self, event: &Event) -> Changes {
        let changes = self.change(event);
        if changes != Changes::default() {
            self.generation += 1;
        }
        changes
    }

    /// A number that moves whenever a call changed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The live calls as the state file keeps them, oldest first.
    pub fn saved(&self) -> impl Iterator<Item = saved::SavedCall<'_>> {
        self.calls("*").map(saved::SavedCall::of)
    }

    /// Takes back a call from the state file, as the newest (restore them oldest first); past
    /// `--max-calls` the oldest is dropped, as for a live one. A call already live (same id
    /// and account) is refused, with the reason, as is one the file describes wrongly.
    pub fn restore(&mut self, saved: saved::SavedCall<'_>) -> Result<(), String> {
        let call = saved.into_call(self.events_per_call, self.next_serial)?;
        let account = call.account.as_deref();
        if self.same_id(&call.id).any(|slot| {
            self.slots[slot].call.as_ref().map(|c| c.account.as_deref()) == Some(account)
        }) {
            return Err(format!("call '{}' is in the file twice", call.id));
        }
        if self.live >= self.max_calls {
            self.evict_oldest();
        }
        self.next_serial += 1;
        self.insert(call);
        Ok(())
    }

    fn change(&mut self, event: &Event) -> Changes {
        let Some(seen) = shapes::observe(event) else {
            return Changes::default();
        };
        let account = event
            .account
            .as_deref()
            .map(|account| cap(account, MAX_ID_LEN));
        if let Some(slot) = self.find(seen.id, account) {
            let Some(call) = self.slots[slot].call.as_mut() else {
                return Changes::default();
            };
            call.apply(&seen, event, self.events_per_call);
            if !matches!(seen.step, Step::End | Step::Left) {
                return Changes {
                    evicted: None,
                    call: Some(call.change(ChangeKind::Update)),
                };
            }
            let change = call.change(ChangeKind::Destroy);
            let call = self.remove(slot);
            // A call that only left the source's view may come back; one that ended may not.
            if let (Step::End, Some(call)) = (seen.step, call) {
                self.remember_end(&call);
            }
            return Changes {
                evicted: None,
                call: Some(change),
            };
        }
        let late = seen.step != Step::Start && self.ended_recently(seen.id, account);
        if matches!(seen.step, Step::End | Step::Left) || late {
            return Changes::default();
        }
        let evicted = if self.live >= self.max_calls {
            self.evict_oldest()
        } else {
            None
        };
        let mut call = Call::new(&seen, self.events_per_call, self.next_serial);
        self.next_serial += 1;
        call.apply(&seen, event, self.events_per_call);
        let change = call.change(ChangeKind::Create);
        self.insert(call);
        Changes {
            evicted,
            call: Some(change),
        }
    }

    /// The slot of the live call `id` that an event of `account` belongs to: the one of that
    /// account, or one whose account is not known yet, or any when the event names none.
    fn find(&self, id: &str, account: Option<&str>) -> Option<usize> {
        self.same_id(id).find(|&slot| {
            let call_account = self.slots[slot]
                .call
                .as_ref()
                .and_then(|c| c.account.as_deref());
            call_account.is_none() || account.is_none() || call_account == account
        })
    }

    /// The slots of the live calls with id `id`, newest first.
    fn same_id<'a>(&'a self, id: &str) -> impl Iterator<Item = usize> + 'a {
        let head = self.index.get(cap(id, MAX_ID_LEN)).copied();
        std::iter::successors(head, |&slot| {
            Some(self.slots[slot].same_id).filter(|&s| s != NIL)
        })
    }

    /// How many calls are live.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no call is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The live calls `scope` (`*` or an account) may see, oldest first.
    pub fn calls<'a>(&'a self, scope: &str) -> impl Iterator<Item = &'a Call> {
        Oldest {
            slots: &self.slots,
            next: self.oldest,
        }
        .filter(move |call| call.visible_to(scope))
    }

    /// The live call `id` that `scope` may see (with `*` and an id two accounts share, the
    /// newest).
    pub fn call(&self, scope: &str, id: &str) -> Option<&Call> {
        self.same_id(id)
            .filter_map(|slot| self.slots[slot].call.as_ref())
            .find(|call| call.visible_to(scope))
    }

    /// Puts a new call in a free slot, as the newest. The caller has made room.
    fn insert(&mut self, call: Call) {
        let id = call.id.clone();
        let slot = Slot {
            call: Some(call),
            older: self.newest,
            newer: NIL,
            same_id: NIL,
        };
        let at = match self.free.pop() {
            Some(at) => {
                self.slots[at] = slot;
                at
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        match self.slots.get_mut(self.newest) {
            Some(newest) => newest.newer = at,
            None => self.oldest = at,
        }
        self.newest = at;
        if let Some(next) = self.index.insert(id, at) {
            self.slots[at].same_id = next;
        }
        self.live += 1;
    }

    /// Takes the call out of `slot`, unlinks the slot and frees it.
    fn remove(&mut self, slot: usize) -> Option<Call> {
        let taken = self.slots.get_mut(slot)?;
        let call = taken.call.take()?;
        let (older, newer, same_id) = (taken.older, taken.newer, taken.same_id);
        match self.slots.get_mut(older) {
            Some(older) => older.newer = newer,
            None => self.oldest = newer,
        }
        match self.slots.get_mut(newer) {
            Some(newer) => newer.older = older,
            None => self.newest = older,
        }
        let before = self
            .same_id(&call.id)
            .find(|&s| self.slots[s].same_id == slot);
        match before {
            Some(before) => self.slots[before].same_id = same_id,
            None if same_id == NIL => {
                self.index.remove(&call.id);
            }
            None => {
                self.index.insert(call.id.clone(), same_id);
            }
        }
        self.free.push(slot);
        self.live -= 1;
        Some(call)
    }

    /// Drops the oldest call to make room, counts it, and tells its clients it is gone.
    fn evict_oldest(&mut self) -> Option<CallChange> {
        let call = self.remove(self.oldest)?;
        self.metrics.live_calls_evicted.inc();
        // Its later events must not bring it back and evict another in turn.
        self.remember_end(&call);
        Some(call.change(ChangeKind::Destroy))
    }

    /// Remembers that `call` is gone, forgetting the oldest end remembered if need be.
    fn remember_end(&mut self, call: &Call) {
        if self.ended.len() == ENDS_REMEMBERED {
            self.ended.pop_front();
        }
        let key = self.end_key(&call.id, call.account.as_deref());
        self.ended.push_back(key);
    }

    /// Whether the call `id` of `account` is among the recently ended or evicted.
    fn ended_recently(&self, id: &str, account: Option<&str>) -> bool {
        self.ended.contains(&self.end_key(id, account))
    }

    fn end_key(&self, id: &str, account: Option<&str>) -> u64 {
        self.index.hasher().hash_one((cap(id, MAX_ID_LEN), account))
    }
}

/// The live calls from oldest to newest, following the slab's links.
struct Oldest<'a> {
    slots: &'a [Slot],
    next: usize,
}

impl<'a> Iterator for Oldest<'a> {
    type Item = &'a Call;

    fn next(&mut self) -> Option<&'a Call> {
        let slot = self.slots.get(self.next)?;
        self.next = slot.newer;
        slot.call.as_ref()
    }
}

/// `Event::visible_to`'s rule: `*` sees all, an account only its own, no account only `*`.
pub fn visible(account: Option<&str>, scope: &str) -> bool {
    scope == "*" || account == Some(scope)
}

/// Sets `slot` from `seen`, cut at `max` bytes, if it is still unknown: later events fill in,
/// never overwrite.
fn fill(slot: &mut Option<String>, seen: Option<&str>, max: usize) {
    if slot.is_none() {
        *slot = seen.map(|seen| cap(seen, max).to_owned());
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn cap(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::json;

    use super::*;
    use crate::rng::Rng;
    use crate::sim::{Profile, SimMessage, Simulator};

    const PROFILES: [Profile; 4] = [
        Profile::Kazoo,
        Profile::FreeSwitch,
        Profile::AsteriskAri,
        Profile::AsteriskMqtt,
    ];

    /// 2026-11-23T10:15:30Z in Kazoo's Gregorian seconds.
    const GREGORIAN: u64 = 63_962_648_130;

    /// 2026-11-23T10:15:30.123Z.
    fn start() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_795_428_930_123)
    }

    fn new_state(max_calls: usize, events_per_call: usize) -> LiveState {
        LiveState::new(max_calls, events_per_call, Rc::new(Metrics::default()))
    }

    fn event(payload: &Value) -> Event {
        Event::new("call.test.x".to_owned(), Bytes::from(payload.to_string()))
    }

    /// A Kazoo event of call `id`, `secs` after 10:15:30, with the account if given.
    fn kazoo(name: &str, id: &str, account: Option<&str>, secs: u64) -> Event {
        let mut payload = json!({
            "Event-Name": name, "Call-ID": id, "Timestamp": GREGORIAN + secs,
            "Caller-ID-Number": "201", "Callee-ID-Number": "202",
        });
        if let Some(account) = account {
            payload["Account-ID"] = json!(account);
        }
        event(&payload)
    }

    /// Every message of a run that starts calls for `secs` seconds, with its wall-clock time.
    fn run(profile: Profile, secs: u64) -> Vec<(SystemTime, SimMessage)> {
        let mut sim = Simulator::new(profile, 21, 2.0, start());
        sim.stop_starting_at(Duration::from_secs(secs));
        sim.map(|(offset, msg)| (start() + offset, msg)).collect()
    }

    /// The event names of start, answer, bridge, hold, unhold and end in `profile`.
    fn names(profile: Profile) -> [&'static str; 6] {
        match profile {
            Profile::Kazoo => [
                "CHANNEL_CREATE",
                "CHANNEL_ANSWER",
                "CHANNEL_BRIDGE",
                "CHANNEL_HOLD",
                "CHANNEL_UNHOLD",
                "CHANNEL_DESTROY",
            ],
            Profile::FreeSwitch => [
                "CHANNEL_CREATE",
                "CHANNEL_ANSWER",
                "CHANNEL_BRIDGE",
                "CHANNEL_HOLD",
                "CHANNEL_UNHOLD",
                "CHANNEL_HANGUP_COMPLETE",
            ],
            Profile::AsteriskAri => [
                "StasisStart",
                "ChannelStateChange",
                "ChannelEnteredBridge",
                "ChannelHold",
                "ChannelUnhold",
                // An application sees nothing more of a channel that left it: the call ends at
                // StasisEnd, and the ChannelDestroyed after it changes nothing.
                "StasisEnd",
            ],
            // The bridges carry no bridge or hold events.
            Profile::AsteriskMqtt => ["ringing", "answered", "-", "-", "-", "hungup"],
        }
    }

    /// What a test expects of one message, read from its payload independently of `shapes`.
    struct Expected<'a> {
        id: &'a str,
        name: &'a str,
        from: &'a str,
        to: &'a str,
        direction: Option<&'a str>,
        other_leg: Option<&'a str>,
        /// The timestamp at the precision the profile writes it.
        at: SystemTime,
    }

    fn expected(profile: Profile, p: &Value, at: SystemTime) -> Expected<'_> {
        fn s(v: &Value) -> &str {
            v.as_str().unwrap()
        }
        let since = at.duration_since(UNIX_EPOCH).unwrap();
        let (e, unit) = match profile {
            Profile::Kazoo => (
                Expected {
                    id: s(&p["Call-ID"]),
                    name: s(&p["Event-Name"]),
                    from: s(&p["Caller-ID-Number"]),
                    to: s(&p["Callee-ID-Number"]),
                    direction: p["Call-Direction"].as_str(),
                    other_leg: p["Other-Leg-Call-ID"].as_str(),
                    at,
                },
                1_000_000_000,
            ),
            Profile::FreeSwitch => (
                Expected {
                    id: s(&p["Unique-ID"]),
                    name: s(&p["Event-Name"]),
                    from: s(&p["Caller-Caller-ID-Number"]),
                    to: s(&p["Caller-Destination-Number"]),
                    direction: p["Call-Direction"].as_str(),
                    other_leg: p["Other-Leg-Unique-ID"].as_str(),
                    at,
                },
                1_000,
            ),
            Profile::AsteriskAri => (
                Expected {
                    id: s(&p["channel"]["id"]),
                    name: s(&p["type"]),
                    from: s(&p["channel"]["caller"]["number"]),
                    to: s(&p["channel"]["dialplan"]["exten"]),
                    direction: None,
                    other_leg: p["bridge"]["channels"][0].as_str(),
                    at,
                },
                1_000_000,
            ),
            Profile::AsteriskMqtt => (
                Expected {
                    id: s(&p["call_id"]),
                    name: s(&p["event"]),
                    from: s(&p["from"]["extension"]),
                    to: s(&p["to"]["extension"]),
                    direction: None,
                    other_leg: None,
                    at,
                },
                1_000_000,
            ),
        };
        let truncated = since.as_nanos() / unit * unit;
        Expected {
            at: UNIX_EPOCH + Duration::from_nanos(truncated as u64),
            ..e
        }
    }

    #[test]
    fn every_profile_drives_calls_through_their_lives() {
        for profile in PROFILES {
            let [start_name, answer, bridge, hold, unhold, end] = names(profile);
            let mut live = new_state(1_000, 8);
            let mut bridged: HashMap<String, bool> = HashMap::new();
            let mut counts: HashMap<String, u64> = HashMap::new();
            let mut names_seen = HashSet::new();
            for (at, msg) in run(profile, 60) {
                let payload: Value = serde_json::from_slice(&msg.payload).unwrap();
                let e = expected(profile, &payload, at);
                let before = live.call("*", e.id).map(|call| call.state);
                let changes = live.apply(&Event::new(msg.routing_key, msg.payload));
                let context = format!("{profile:?} {} {}", e.name, e.id);
                assert_eq!(changes.evicted, None, "{context}");
                if e.name == "ChannelDestroyed" {
                    assert!(changes.call.is_none(), "{context}: after StasisEnd");
                    continue;
                }
                let change = changes.call.expect(&context);
                let count = counts.entry(e.id.to_owned()).or_default();
                *count += 1;
                assert_eq!(change.call["events"], *count, "{context}");
                assert_eq!(change.call["last_event"], e.name, "{context}");
                assert_eq!(change.call["source"], profile.as_str(), "{context}");
                names_seen.insert(e.name.to_owned());
                if e.name == end {
                    assert_eq!(change.kind, ChangeKind::Destroy, "{context}");
                    assert!(live.call("*", e.id).is_none(), "{context}");
                    continue;
                }
                let call = live.call("*", e.id).expect(&context);
                assert_eq!(change.call, call.to_json(), "{context}");
                let kind = if e.name == start_name {
                    ChangeKind::Create
                } else {
                    ChangeKind::Update
                };
                assert_eq!(change.kind, kind, "{context}");
                assert_eq!(call.from.number.as_deref(), Some(e.from), "{context}");
                assert_eq!(call.to.number.as_deref(), Some(e.to), "{context}");
                assert_eq!(call.direction.as_deref(), e.direction, "{context}");
                let was_bridged = bridged.entry(e.id.to_owned()).or_default();
                let state = if e.name == start_name {
                    assert_eq!(call.started_at, e.at, "{context}");
                    assert_eq!(change.call["started_at"], clock::rfc3339(e.at));
                    assert_eq!(call.answered_at, None, "{context}");
                    CallState::Ringing
                } else if e.name == answer {
                    assert_eq!(call.answered_at, Some(e.at), "{context}");
                    assert_eq!(change.call["answered_at"], clock::rfc3339(e.at));
                    CallState::Answered
                } else if e.name == bridge {
                    *was_bridged = true;
                    assert!(e.other_leg.is_some(), "{context}");
                    assert_eq!(call.other_leg.as_deref(), e.other_leg, "{context}");
                    CallState::Bridged
                } else if e.name == hold {
                    CallState::Held
                } else if e.name == unhold && *was_bridged {
                    CallState::Bridged
                } else if e.name == unhold {
                    CallState::Answered
                } else {
                    // ARI's StasisEnd, ChannelLeftBridge: the call reports them, its state
                    // stays.
                    before.expect(&context)
                };
                assert_eq!(call.state, state, "{context}");
            }
            assert!(live.is_empty(), "{profile:?}: every call ended");
            assert!(counts.len() > 60, "{profile:?}: {} calls", counts.len());
            let steps: &[&str] = match profile {
                Profile::AsteriskMqtt => &[start_name, answer, end],
                _ => &[start_name, answer, bridge, hold, unhold, end],
            };
            for name in steps {
                assert!(names_seen.contains(*name), "{profile:?} never saw {name}");
            }
        }
    }

    #[test]
    fn the_call_serialises_exactly_as_the_live_api_shows_it() {
        let account = "4b31dd1d32ce6d249897c06332375d65";
        let mut live = new_state(4, 4);
        let mut payload = json!({
            "Event-Name": "CHANNEL_CREATE", "Call-ID": "at6dmu4ffk97vnlp6qfq",
            "Account-ID": account, "Call-Direction": "inbound", "Timestamp": GREGORIAN,
            "Caller-ID-Number": "356", "Caller-ID-Name": "web phone",
            "Callee-ID-Number": "*97", "Callee-ID-Name": "Front Desk",
        });
        live.apply(&event(&payload));
        payload["Event-Name"] = json!("CHANNEL_ANSWER");
        payload["Timestamp"] = json!(GREGORIAN + 3);
        let change = live.apply(&event(&payload)).call.unwrap();
        let documented = r#"{"id":"at6dmu4ffk97vnlp6qfq","account":"4b31dd1d32ce6d249897c06332375d65","source":"kazoo","state":"answered","direction":"inbound","from":{"number":"356","name":"web phone"},"to":{"number":"*97","name":"Front Desk"},"started_at":"2026-11-23T10:15:30Z","answered_at":"2026-11-23T10:15:33Z","other_leg":null,"last_event":"CHANNEL_ANSWER","events":2}"#;
        let call = live.call(account, "at6dmu4ffk97vnlp6qfq").unwrap();
        assert_eq!(serde_json::to_string(call).unwrap(), documented);
        let documented: Value = serde_json::from_str(documented).unwrap();
        assert_eq!(change.call, documented);
        assert_eq!(change.account.as_deref(), Some(account));
        assert_eq!(change.kind.as_str(), "update");
    }

    #[test]
    fn calls_first_seen_mid_life_appear_with_what_their_first_event_tells() {
        for profile in PROFILES {
            let [start_name, answer, bridge, hold, unhold, end] = names(profile);
            let messages = run(profile, 60);
            // When each call started: an ARI call first seen mid-life reports its channel's
            // creation time as its start.
            let started: HashMap<String, SystemTime> = messages
                .iter()
                .filter_map(|(at, msg)| {
                    let payload: Value = serde_json::from_slice(&msg.payload).unwrap();
                    let e = expected(profile, &payload, *at);
                    (e.name == start_name).then(|| (e.id.to_owned(), e.at))
                })
                .collect();
            let mut live = new_state(1_000, 8);
            let mut seen = HashSet::new();
            let mut mid_life = 0;
            for (at, msg) in messages.into_iter().skip(150) {
                let payload: Value = serde_json::from_slice(&msg.payload).unwrap();
                let e = expected(profile, &payload, at);
                let first = seen.insert(e.id.to_owned());
                let changes = live.apply(&Event::new(msg.routing_key, msg.payload));
                let context = format!("{profile:?} {} {}", e.name, e.id);
                if !first {
                    continue;
                }
                let Some(change) = changes.call else {
                    assert!(
                        e.name == end || e.name == "ChannelDestroyed",
                        "{context}: only an end changes nothing"
                    );
                    continue;
                };
                assert_eq!(change.kind, ChangeKind::Create, "{context}");
                if e.name == start_name {
                    continue;
                }
                mid_life += 1;
                let call = live.call("*", e.id).unwrap();
                let started_at = match profile {
                    Profile::AsteriskAri => started[e.id],
                    _ => e.at,
                };
                assert_eq!(call.started_at, started_at, "{context}");
                assert_eq!(call.events, 1, "{context}");
                let (state, answered_at) = if e.name == answer {
                    (CallState::Answered, Some(e.at))
                } else if e.name == bridge {
                    (CallState::Bridged, None)
                } else if e.name == hold {
                    (CallState::Held, None)
                } else if e.name == unhold {
                    (CallState::Answered, None)
                } else {
                    // ARI's StasisEnd, ChannelLeftBridge: every event of an answered channel
                    // says `Up`.
                    assert_eq!(profile, Profile::AsteriskAri, "{context}");
                    if payload["channel"]["state"] == "Up" {
                        (CallState::Answered, Some(e.at))
                    } else {
                        (CallState::Ringing, None)
                    }
                };
                assert_eq!(
                    (call.state, call.answered_at),
                    (state, answered_at),
                    "{context}"
                );
            }
            assert!(mid_life > 0, "{profile:?}");
            assert!(live.is_empty(), "{profile:?}: every call seen ended");
        }
    }

    #[test]
    fn mid_life_by_hand_and_later_events_fill_in() {
        let mut live = new_state(8, 4);
        let change = live
            .apply(&kazoo("CHANNEL_HOLD", "h", None, 5))
            .call
            .unwrap();
        assert_eq!(
            (change.kind, &change.call["state"]),
            (ChangeKind::Create, &json!("held"))
        );
        assert_eq!(change.call["answered_at"], Value::Null);
        live.apply(&kazoo("CHANNEL_UNHOLD", "h", None, 6));
        assert_eq!(live.call("*", "h").unwrap().state, CallState::Answered);

        let mut payload = json!({"Event-Name": "CHANNEL_BRIDGE", "Call-ID": "b",
                                 "Other-Leg-Call-ID": "b2", "Timestamp": GREGORIAN});
        live.apply(&event(&payload));
        payload["Event-Name"] = json!("CHANNEL_HOLD");
        live.apply(&event(&payload));
        assert_eq!(live.call("*", "b").unwrap().state, CallState::Held);
        payload["Event-Name"] = json!("CHANNEL_UNHOLD");
        payload["Caller-ID-Name"] = json!("Alice");
        live.apply(&event(&payload));
        payload["Caller-ID-Name"] = json!("Mallory");
        payload["Event-Name"] = json!("CHANNEL_EXECUTE");
        live.apply(&event(&payload));
        let call = live.call("*", "b").unwrap();
        assert_eq!(call.state, CallState::Bridged);
        assert_eq!(call.other_leg.as_deref(), Some("b2"));
        assert_eq!(call.from.name.as_deref(), Some("Alice"));
        assert_eq!(call.last_event, "CHANNEL_EXECUTE");
        assert_eq!(call.events, 4);

        assert_eq!(
            live.apply(&kazoo("CHANNEL_DESTROY", "never-seen", None, 1)),
            Changes::default()
        );
        assert_eq!(live.len(), 2);
    }

    #[test]
    fn late_events_of_an_ended_call_do_not_bring_it_back() {
        let mut live = new_state(8, 4);
        let fs = |name: &str| event(&json!({"Event-Name": name, "Unique-ID": "u1"}));
        live.apply(&fs("CHANNEL_CREATE"));
        let end = live.apply(&fs("CHANNEL_HANGUP_COMPLETE")).call.unwrap();
        assert_eq!(end.kind, ChangeKind::Destroy);
        for late in ["CHANNEL_STATE", "CHANNEL_CALLSTATE", "CHANNEL_DESTROY"] {
            assert_eq!(live.apply(&fs(late)), Changes::default(), "{late}");
        }
        assert!(live.is_empty());
        // A start is a start, even of an id seen before.
        let again = live.apply(&fs("CHANNEL_CREATE")).call.unwrap();
        assert_eq!(again.kind, ChangeKind::Create);
    }

    #[test]
    fn ari_stasis_end_ends_the_call_and_a_later_event_brings_it_back() {
        let mut live = new_state(8, 4);
        let ari = |kind: &str, state: &str| {
            event(
                &json!({"type": kind, "timestamp": "2026-11-23T10:15:40.000+0000",
                          "channel": {"id": "c1", "state": state,
                                      "creationtime": "2026-11-23T10:15:30.250+0000"}}),
            )
        };
        // First seen mid-life: its start is the channel's creation, not this event's time.
        let created = live.apply(&ari("ChannelStateChange", "Up")).call.unwrap();
        assert_eq!(created.kind, ChangeKind::Create);
        assert_eq!(created.call["started_at"], "2026-11-23T10:15:30Z");
        let left = live.apply(&ari("StasisEnd", "Up")).call.unwrap();
        assert_eq!(left.kind, ChangeKind::Destroy);
        assert!(live.is_empty());
        // The ChannelDestroyed that follows is the end of a call already gone.
        assert_eq!(
            live.apply(&ari("ChannelDestroyed", "Up")),
            Changes::default()
        );
        assert!(live.is_empty());
        // The channel re-enters the application: the call is back.
        let back = live.apply(&ari("StasisStart", "Up")).call.unwrap();
        assert_eq!(back.kind, ChangeKind::Create);
        assert_eq!(live.call("*", "c1").unwrap().state, CallState::Answered);
    }

    #[test]
    fn one_call_id_in_two_accounts_is_two_calls() {
        let mut live = new_state(8, 4);
        let fixed = capacities(&live);
        for account in ["a", "b", "c"] {
            let change = live.apply(&kazoo("CHANNEL_CREATE", "same", Some(account), 0));
            assert_eq!(change.call.unwrap().kind, ChangeKind::Create, "{account}");
        }
        assert_eq!(live.len(), 3);
        for account in ["a", "b", "c"] {
            assert_eq!(
                live.call(account, "same").unwrap().account.as_deref(),
                Some(account)
            );
        }
        // Each account's events go to its own call only.
        live.apply(&kazoo("CHANNEL_ANSWER", "same", Some("b"), 1));
        assert_eq!(live.call("b", "same").unwrap().state, CallState::Answered);
        assert_eq!(live.call("a", "same").unwrap().state, CallState::Ringing);
        assert_eq!(live.call("c", "same").unwrap().events, 1);
        // Ending the middle one of the chain, then the newest, leaves the others reachable.
        let end = live.apply(&kazoo("CHANNEL_DESTROY", "same", Some("b"), 2));
        assert_eq!(end.call.unwrap().account.as_deref(), Some("b"));
        assert!(live.call("b", "same").is_none());
        live.apply(&kazoo("CHANNEL_DESTROY", "same", Some("c"), 3));
        assert_eq!(live.len(), 1);
        assert_eq!(
            live.call("*", "same").unwrap().account.as_deref(),
            Some("a")
        );
        // A late event of b's ended call does not bring it back; a's call is untouched.
        assert_eq!(
            live.apply(&kazoo("CHANNEL_ANSWER", "same", Some("b"), 4)),
            Changes::default()
        );
        live.apply(&kazoo("CHANNEL_DESTROY", "same", Some("a"), 5));
        assert!(live.is_empty() && live.index.is_empty());
        assert_flat(&live, fixed, "after the chain emptied");
    }

    /// Asserts that no structure has grown since `fixed = capacities(live)` was taken.
    fn assert_flat(live: &LiveState, fixed: [usize; 4], context: &str) {
        let now = capacities(live);
        assert_eq!(now[..3], fixed[..3], "{context}");
        // The table's reported capacity is its items plus the room left before it must
        // rehash, so deleted entries lower it until an in-place rehash; growing would double it.
        assert!(
            now[3] <= fixed[3],
            "{context}: index {} > {}",
            now[3],
            fixed[3]
        );
    }

    /// Capacities of the slab, its free list, the remembered ends and the index.
    fn capacities(live: &LiveState) -> [usize; 4] {
        [
            live.slots.capacity(),
            live.free.capacity(),
            live.ended.capacity(),
            live.index.capacity(),
        ]
    }

    #[test]
    fn past_max_calls_the_oldest_is_evicted_and_memory_stays_flat() {
        let metrics = Rc::new(Metrics::default());
        let mut live = LiveState::new(8, 4, metrics.clone());
        let fixed = capacities(&live);
        for n in 0..80 {
            let changes = live.apply(&kazoo("CHANNEL_CREATE", &format!("c{n}"), None, n));
            assert_eq!(changes.call.as_ref().unwrap().kind, ChangeKind::Create);
            match &changes.evicted {
                Some(evicted) => {
                    assert_eq!(evicted.kind, ChangeKind::Destroy);
                    assert_eq!(evicted.call["id"], format!("c{}", n - 8));
                }
                None => assert!(n < 8),
            }
            let order: Vec<_> = changes.into_iter().map(|change| change.kind).collect();
            assert_eq!(order.last(), Some(&ChangeKind::Create));
            assert_eq!(live.len(), (n as usize + 1).min(8));
        }
        assert_eq!(metrics.live_calls_evicted.get(), 72);
        let ids: Vec<_> = live.calls("*").map(|call| call.id.to_string()).collect();
        let newest: Vec<_> = (72..80).map(|n| format!("c{n}")).collect();
        assert_eq!(ids, newest);
        assert_flat(&live, fixed, "after 80 calls");
        // An evicted call's later events do not bring it back.
        assert_eq!(
            live.apply(&kazoo("CHANNEL_ANSWER", "c3", None, 90)),
            Changes::default()
        );
    }

    #[test]
    fn churn_never_grows_the_slab_or_the_index() {
        let max_calls = 64;
        let mut live = new_state(max_calls, 2);
        let fixed = capacities(&live);
        let mut rng = Rng::new(3);
        let mut live_ids: Vec<String> = Vec::new();
        for n in 0..100 * max_calls as u64 {
            let id = format!("call-{n}");
            let (name, id) = match rng.below(4) {
                0 if !live_ids.is_empty() => {
                    let at = rng.below(live_ids.len() as u64) as usize;
                    ("CHANNEL_DESTROY", live_ids.swap_remove(at))
                }
                1 => ("CHANNEL_ANSWER", id),
                _ => ("CHANNEL_CREATE", id),
            };
            live.apply(&kazoo(name, &id, None, n));
            if name != "CHANNEL_DESTROY" {
                live_ids.push(id);
            }
            live_ids.retain(|id| live.call("*", id).is_some());
            assert!(live.len() <= max_calls);
            assert_eq!(live.len(), live_ids.len());
            assert_eq!(live.calls("*").count(), live.len());
            assert_flat(&live, fixed, &format!("after {n} events"));
        }
    }

    #[test]
    fn each_call_keeps_copies_of_its_last_events() {
        let mut live = new_state(4, 4);
        let mut payloads = Vec::new();
        let mut ring = None;
        for n in 0..20 {
            let name = if n == 0 {
                "CHANNEL_CREATE"
            } else {
                "CHANNEL_EXECUTE"
            };
            let mut e = kazoo(name, "c", None, n);
            e.routing_key = format!("call.{name}.{n}");
            payloads.push(e.payload.clone());
            live.apply(&e);
            let recent = &live.call("*", "c").unwrap().recent;
            assert_eq!(recent.len(), (n as usize + 1).min(4));
            ring.get_or_insert(recent.capacity());
            assert_eq!(Some(recent.capacity()), ring, "the ring never grows");
        }
        let recent: Vec<_> = live
            .call("*", "c")
            .map(Call::recent_events)
            .unwrap()
            .collect();
        let keys: Vec<_> = recent.iter().map(|e| &*e.routing_key).collect();
        assert_eq!(
            keys,
            [
                "call.CHANNEL_EXECUTE.16",
                "call.CHANNEL_EXECUTE.17",
                "call.CHANNEL_EXECUTE.18",
                "call.CHANNEL_EXECUTE.19"
            ]
        );
        for (kept, sent) in recent.iter().zip(&payloads[16..]) {
            assert_eq!(kept.payload, sent);
            assert!(!kept.truncated());
            // A share of the event's bytes could keep a whole read buffer alive.
            assert_ne!(kept.payload.as_ptr(), sent.as_ptr(), "copied, not shared");
        }
        assert_eq!(live.call("*", "c").unwrap().events, 20);

        let mut none = new_state(4, 0);
        none.apply(&kazoo("CHANNEL_CREATE", "c", None, 0));
        none.apply(&kazoo("CHANNEL_ANSWER", "c", None, 1));
        assert_eq!(
            none.call("*", "c")
                .map(Call::recent_events)
                .unwrap()
                .count(),
            0
        );
        assert_eq!(none.call("*", "c").unwrap().events, 2);
    }

    #[test]
    fn every_query_is_scoped_by_account() {
        let mut live = new_state(8, 4);
        live.apply(&kazoo("CHANNEL_CREATE", "a1", Some("a"), 0));
        let b = json!({"Event-Name": "CHANNEL_CREATE", "Call-ID": "b1", "Timestamp": GREGORIAN,
                       "Custom-Channel-Vars": {"Account-ID": "b"},
                       "Caller-ID-Number": "202", "Caller-ID-Name": "Bea",
                       "Callee-ID-Number": "+14155550100"});
        live.apply(&event(&b));
        let f = json!({"Event-Name": "CHANNEL_CREATE", "Unique-ID": "f1",
                       "Caller-Caller-ID-Number": "203", "Caller-Destination-Number": "201"});
        let created = live.apply(&event(&f)).call.unwrap();
        assert!(created.visible_to("*") && !created.visible_to("a"));

        let ids = |scope: &str| -> Vec<String> {
            live.calls(scope).map(|call| call.id.to_string()).collect()
        };
        assert_eq!(ids("*"), ["a1", "b1", "f1"]);
        assert_eq!(ids("a"), ["a1"]);
        assert_eq!(ids("b"), ["b1"]);
        assert!(ids("c").is_empty() && ids("").is_empty());

        assert!(live.call("a", "a1").is_some() && live.call("*", "a1").is_some());
        assert!(live.call("a", "b1").is_none() && live.call("a", "f1").is_none());
        assert!(live.call("*", "f1").is_some() && live.call("*", "zz").is_none());
        assert!(live.call("a", "b1").is_none());
        assert_eq!(live.call("b", "b1").unwrap().recent_events().count(), 1);
        assert_eq!(live.call("*", "f1").unwrap().recent_events().count(), 1);
    }

    /// Values of every wrong type, and extremes of the right one.
    fn odd_value(rng: &mut Rng) -> Value {
        match rng.below(12) {
            0 => Value::Null,
            1 => json!(true),
            2 => json!(u64::MAX),
            3 => json!(i64::MIN),
            4 => json!(1e308),
            5 => json!(-0.5),
            6 => json!([]),
            7 => json!({}),
            8 => json!([1, {"id": "x"}]),
            9 => json!(""),
            10 => json!("\u{1F600}".repeat(rng.below(300) as usize)),
            _ => json!({"id": 7, "number": [], "caller": "x"}),
        }
    }

    /// The fields that tell each shape; a wrong type in any of them fits no shape.
    fn identity(profile: Profile) -> &'static [&'static [&'static str]] {
        match profile {
            Profile::Kazoo => &[&["Event-Name"], &["Call-ID"]],
            Profile::FreeSwitch => &[&["Event-Name"], &["Unique-ID"]],
            Profile::AsteriskAri => &[&["type"], &["channel"], &["channel", "id"]],
            Profile::AsteriskMqtt => &[&["event"], &["call_id"]],
        }
    }

    fn set(value: &mut Value, path: &[&str], to: Value) {
        let mut node = value;
        for field in path {
            node = &mut node[*field];
        }
        *node = to;
    }

    #[test]
    fn garbage_changes_nothing_and_never_panics() {
        let mut rng = Rng::new(99);
        let mut live = new_state(16, 4);
        live.apply(&kazoo("CHANNEL_CREATE", "keep", Some("a"), 0));
        let kept = live.call("*", "keep").unwrap().to_json();
        let nothing = |live: &mut LiveState, e: &Event| {
            assert_eq!(live.apply(e), Changes::default(), "{:?}", e.payload);
        };

        for _ in 0..5_000 {
            let len = rng.below(80) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
            if rng.below(2) == 0 {
                bytes.insert(0, b'{');
            }
            nothing(&mut live, &Event::new("k".to_owned(), Bytes::from(bytes)));
        }

        let samples: Vec<_> = PROFILES
            .iter()
            .flat_map(|&profile| {
                run(profile, 5)
                    .into_iter()
                    .map(move |(_, msg)| (profile, msg))
            })
            .collect();
        for (_, msg) in &samples {
            for cut in (0..msg.payload.len()).step_by(3) {
                let e = Event::new(msg.routing_key.clone(), msg.payload.slice(..cut));
                nothing(&mut live, &e);
            }
        }

        for (profile, msg) in &samples {
            let payload: Value = serde_json::from_slice(&msg.payload).unwrap();
            for path in identity(*profile) {
                for _ in 0..8 {
                    let odd = odd_value(&mut rng);
                    if odd.as_str().is_some_and(|s| !s.is_empty()) {
                        // A string of the right type: still an id or a name.
                        continue;
                    }
                    let mut broken = payload.clone();
                    set(&mut broken, path, odd);
                    nothing(&mut live, &event(&broken));
                }
            }
            if *profile == Profile::FreeSwitch {
                // Every FreeSWITCH value is a string: any other type fits no shape.
                for field in payload.as_object().unwrap().keys() {
                    let mut broken = payload.clone();
                    broken[field] = json!(12);
                    nothing(&mut live, &event(&broken));
                }
            }
        }
        assert_eq!(live.len(), 1);
        assert_eq!(live.call("*", "keep").unwrap().to_json(), kept);

        // Wrong types anywhere else: the event may still be a call's, but nothing panics, no
        // wrong type is taken for a value, and the bound holds.
        let mut other = new_state(16, 4);
        for _ in 0..20 {
            for (_, msg) in &samples {
                let mut broken: Value = serde_json::from_slice(&msg.payload).unwrap();
                let fields: Vec<String> = broken.as_object().unwrap().keys().cloned().collect();
                for _ in 0..1 + rng.below(3) {
                    let field = &fields[rng.below(fields.len() as u64) as usize];
                    match broken[field]
                        .as_object()
                        .map(|o| o.keys().cloned().collect::<Vec<_>>())
                    {
                        Some(inner) if !inner.is_empty() && rng.below(2) == 0 => {
                            let key = &inner[rng.below(inner.len() as u64) as usize];
                            broken[field][key] = odd_value(&mut rng);
                        }
                        _ => broken[field] = odd_value(&mut rng),
                    }
                }
                for change in other.apply(&event(&broken)) {
                    for side in ["from", "to"] {
                        for part in ["number", "name"] {
                            let value = &change.call[side][part];
                            assert!(
                                value.is_null() || value.as_str().is_some_and(|s| !s.is_empty())
                            );
                        }
                    }
                }
                assert!(other.len() <= 16);
            }
        }
    }

    #[test]
    fn a_call_holds_its_bound_in_bytes_whatever_the_pbx_sends() {
        let (max_calls, events_per_call) = (4, 8);
        let mut live = new_state(max_calls, events_per_call);
        let long = "\u{e9}".repeat(40_000);
        let big = "x".repeat(60_000);
        for n in 0..3 * max_calls as u64 {
            for step in 0..events_per_call as u64 + 3 {
                let name = if step == 0 {
                    "CHANNEL_CREATE"
                } else {
                    "CHANNEL_EXECUTE"
                };
                let id = format!("{n}-{long}");
                let payload = json!({
                    "Event-Name": name, "Call-ID": id, "Timestamp": GREGORIAN + step,
                    "Caller-ID-Number": long, "Caller-ID-Name": long, "Callee-ID-Name": long,
                    "Other-Leg-Call-ID": long, "Call-Direction": long, "Account-ID": long,
                    "Padding": big,
                });
                let mut e = event(&payload);
                e.routing_key = format!("call.{name}.{long}");
                live.apply(&e);
                // Later events of the same call find it by its cut id.
                assert_eq!(live.len(), (n as usize + 1).min(max_calls));
            }
        }
        let mut held = 0;
        for call in live.calls("*") {
            let texts = [
                Some(&*call.id),
                call.account.as_deref(),
                call.direction.as_deref(),
                call.from.number.as_deref(),
                call.from.name.as_deref(),
                call.to.name.as_deref(),
                call.other_leg.as_deref(),
                Some(call.last_event.as_str()),
            ];
            for text in texts.into_iter().flatten() {
                assert!(text.len() <= MAX_ID_LEN, "{}", text.len());
                held += text.len();
            }
            assert!(call.last_event.len() <= MAX_TEXT_LEN);
            assert!(call.from.name.as_deref().unwrap().len() <= MAX_TEXT_LEN);
            assert_eq!(call.events, events_per_call as u64 + 3);
            let recent: Vec<_> = call.recent_events().collect();
            assert!(!recent.is_empty());
            let payload: usize = recent.iter().map(|e| e.payload.len()).sum();
            assert!(payload <= CALL_EVENTS_BYTES, "{payload}");
            for kept in &recent {
                assert!(kept.truncated(), "a 60 KB payload is cut");
                assert!(kept.size > 60_000);
                assert!(kept.routing_key.len() <= MAX_KEY_LEN);
                held += kept.payload.len() + kept.routing_key.len();
            }
        }
        assert!(
            held <= LiveState::bound(max_calls, events_per_call),
            "{held}"
        );
        assert!(
            cap("\u{e9}\u{e9}", 3) == "\u{e9}",
            "cut at a character boundary"
        );
    }
}
