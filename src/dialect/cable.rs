//! The ActionCable dialect (contract: actioncable.md): metasmoke's `ApiChannel` over the
//! ActionCable JSON protocol, so the real `@rails/actioncable` client works unchanged.
//!
//! A socket holds subscriptions, each named by its identifier: the string the client sent,
//! kept as it is and echoed in every frame of that subscription (the client matches frames to
//! subscriptions by string equality). Each subscription has its key's credential (its account
//! scope) and its `events` selector, parsed by metasmoke's rules (`Selector`).
//!
//! What the models carry: `calls` is the live state's call changes (`Hub::publish_change`),
//! `events` every event, and every other routing-key family a model of its own (the first
//! segment plus `s`). Per event or call change each message body is rendered once, and each
//! frame once per distinct identifier (`Renders`), so clients with the same identifier share
//! the same bytes.
//!
//! A client that offers `actioncable-v1-ext-json` speaks AnyCable's extended protocol
//! (delivery.md): its broadcasts carry a stream, the epoch and the offset; its `history`
//! requests are answered from the history; its welcome carries a session id, and a reconnect
//! that presents that id gets its subscriptions back (`SavedSessions`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::auth::{Auth, Credential};
use crate::dialect::{Session, push_json_str};
use crate::dialect_label::Dialect;
use crate::event::Event;
use crate::event::Position;
use crate::frame::{CloseReason, Frame};
use crate::history::{ArchiveError, Entry, History, PendingRead, Resume};
use crate::hub::{self, Client, Hub, Interest, RenderCache};
use crate::limits::Held;
use crate::live::{CallChange, ChangeKind};
use crate::matcher::RoutingKey;
use crate::metrics::{Limit, Metrics};

/// The subprotocol the official client needs in the upgrade's answer.
pub const SUBPROTOCOL: &str = "actioncable-v1-json";
/// AnyCable's extended protocol, as `@anycable/core` asks for it.
pub const SUBPROTOCOL_EXTENDED: &str = "actioncable-v1-ext-json";

/// How often every ActionCable socket gets a ping (the client gives up after about 6 s).
pub const PING_INTERVAL: Duration = Duration::from_secs(3);

/// The one channel there is.
const CHANNEL: &str = "ApiChannel";

/// Longest identifier accepted; a longer one is rejected. metasmoke's are about 100 bytes.
pub const MAX_IDENTIFIER: usize = 1024;

/// Most distinct models one selector may name; more is a rejection.
pub const MAX_MODELS: usize = 32;

const WELCOME: &str = r#"{"type":"welcome"}"#;
const SERVER_RESTART: &str = r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#;
/// The goodbye when the socket's key was removed from the credentials file.
const UNAUTHORIZED: &str = r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#;

/// The model of every event.
const EVENTS_MODEL: &str = "events";
/// The model of the live state's call changes.
const CALLS_MODEL: &str = "calls";
/// Routing-key families that make no model of their own: `call` is the `calls` model (from the
/// live state), and `event` would be named `events`, which is every event's model.
const NO_FAMILY_MODEL: [&str; 2] = ["call", "event"];

/// A set of event types (`create`, `update`, `destroy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Types(u8);

impl Types {
    /// What a model named without `#` gets, and every model when `events` is absent.
    const CREATE_UPDATE: Types =
        Types(1 << ChangeKind::Create as u8 | 1 << ChangeKind::Update as u8);

    /// The type a name stands for; a name that is no type stands for none (it never fires).
    fn named(name: &str) -> Types {
        match name {
            "create" => Types(1 << ChangeKind::Create as u8),
            "update" => Types(1 << ChangeKind::Update as u8),
            "destroy" => Types(1 << ChangeKind::Destroy as u8),
            _ => Types(0),
        }
    }

    fn has(self, kind: ChangeKind) -> bool {
        self.0 & (1 << kind as u8) != 0
    }
}

/// Why a subscription is rejected (said only in the debug log: the client just gets
/// `reject_subscription`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The identifier is longer than `MAX_IDENTIFIER`.
    IdentifierTooLong,
    /// The identifier is not a JSON object.
    NotAnObject,
    /// `channel` is not `ApiChannel`.
    UnknownChannel,
    /// The key is missing or no credential's secret.
    BadKey,
    /// `events` is not a string.
    EventsNotAString,
    /// A part `model#` names no types.
    MalformedPart,
    /// More than `MAX_MODELS` models.
    TooManyModels,
    /// The socket has `--max-bindings` subscriptions already.
    TooManySubscriptions,
    /// Every socket's subscriptions together have taken their part of the budget
    /// (`limits::INTEREST_PER_CLIENT`).
    NoRoom,
}

/// Which models and event types a subscription wants: its `events` parameter, by metasmoke's
/// rules (see `Selector::parse`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    /// `None` when no `events` was given: every model, `create` and `update`.
    models: Option<Vec<(Box<str>, Types)>>,
}

impl Selector {
    /// The bytes the selector's models take.
    fn footprint(&self) -> usize {
        self.models.as_ref().map_or(0, |models| {
            let names: usize = models.iter().map(|(name, _)| name.len()).sum();
            models.capacity() * std::mem::size_of::<(Box<str>, Types)>() + names
        })
    }

    /// Parses an `events` parameter, as metasmoke does:
    ///
    /// - absent, `null` or blank (Rails' `present?` is false): every model, create and update;
    /// - otherwise split on `;` (Ruby's `String#split`: trailing empty fields are dropped, an
    ///   empty field elsewhere is the model `""`); a part with `#` is `model#type,type,...`
    ///   (split on `#`, the first field the model, the second the types split on `,`), a part
    ///   without is `model` with create and update. Nothing is trimmed.
    /// - a part with `#` and no types after it (`calls#`, `#`) is malformed: a rejection where
    ///   metasmoke would raise. A type that is not create, update or destroy never fires.
    pub fn parse(events: Option<&Value>) -> Result<Selector, Refusal> {
        match events {
            None | Some(Value::Null) => Ok(Selector { models: None }),
            Some(Value::String(text)) => Selector::parse_str(text),
            Some(_) => Err(Refusal::EventsNotAString),
        }
    }

    fn parse_str(text: &str) -> Result<Selector, Refusal> {
        if text.chars().all(char::is_whitespace) {
            return Ok(Selector { models: None });
        }
        let mut models: Vec<(Box<str>, Types)> = Vec::new();
        for part in ruby_split(text, ';') {
            let (model, types) = if part.contains('#') {
                let mut fields = ruby_split(part, '#');
                let model = fields.next().unwrap_or("");
                let Some(names) = fields.next() else {
                    return Err(Refusal::MalformedPart);
                };
                let types = ruby_split(names, ',')
                    .map(Types::named)
                    .fold(Types(0), |all, one| Types(all.0 | one.0));
                (model, types)
            } else {
                (part, Types::CREATE_UPDATE)
            };
            if let Some((_, known)) = models.iter_mut().find(|(name, _)| **name == *model) {
                known.0 |= types.0;
            } else if models.len() == MAX_MODELS {
                return Err(Refusal::TooManyModels);
            } else {
                models.push((model.into(), types));
            }
        }
        Ok(Selector {
            models: Some(models),
        })
    }

    /// Whether the subscription wants events of type `kind` of the model `model`.
    pub fn wants(&self, model: &str, kind: ChangeKind) -> bool {
        match &self.models {
            None => kind != ChangeKind::Destroy,
            Some(models) => models
                .iter()
                .any(|(name, types)| **name == *model && types.has(kind)),
        }
    }

    /// `wants` for the model of a routing-key family: `family` plus `s`, without building it.
    fn wants_family(&self, family: &str, kind: ChangeKind) -> bool {
        match &self.models {
            None => kind != ChangeKind::Destroy,
            Some(models) => models
                .iter()
                .any(|(name, types)| name.strip_prefix(family) == Some("s") && types.has(kind)),
        }
    }
}

/// Ruby's `String#split` with a one-character separator: trailing empty fields are dropped
/// (so `""` has no fields at all), every other field is kept as it is.
fn ruby_split(text: &str, separator: char) -> impl Iterator<Item = &str> {
    let kept = text.trim_end_matches(separator);
    kept.split(separator).filter(move |_| !kept.is_empty())
}

/// The routing-key family that makes a model of its own, if any: the key's first segment,
/// unless it is empty, `call` or `event` (see `NO_FAMILY_MODEL`).
fn family_of(routing_key: &str) -> Option<&str> {
    let first = routing_key.split('.').next().unwrap_or("");
    (!first.is_empty() && !NO_FAMILY_MODEL.contains(&first)).then_some(first)
}

/// A family's `event_class`, as Rails' `camelize` makes it (acronyms aside): a leading run of
/// lowercase letters and digits is capitalised, and every `_` is dropped, the run of letters
/// and digits after it capitalised: `conference` is `Conference`, `parking_lot` `ParkingLot`.
fn camelize(family: &str) -> String {
    fn capitalize(out: &mut String, word: &str) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.extend(chars.map(|c| c.to_ascii_lowercase()));
        }
    }
    let bytes = family.as_bytes();
    let run = |from: usize, word: fn(&u8) -> bool| {
        from + bytes[from..].iter().take_while(|b| word(b)).count()
    };
    let mut out = String::with_capacity(family.len());
    let lead = run(0, |b| b.is_ascii_lowercase() || b.is_ascii_digit());
    capitalize(&mut out, &family[..lead]);
    let mut at = lead;
    while at < bytes.len() {
        if bytes[at] == b'_' {
            let end = run(at + 1, u8::is_ascii_alphanumeric);
            capitalize(&mut out, &family[at + 1..end]);
            at = end;
        } else {
            let ch = family[at..].chars().next().unwrap_or_default();
            out.push(ch);
            at += ch.len_utf8();
        }
    }
    out
}

/// One subscription: the identifier as sent, its key's credential, and what it wants.
#[derive(Debug)]
struct Subscription {
    identifier: Rc<str>,
    credential: Rc<Credential>,
    selector: Selector,
    /// The first offset it gets live; `None` while a restored subscription waits for the
    /// client's `history` request, which replays what it missed and then makes it live.
    live_from: Option<u64>,
    /// Names its streams (extended protocol), `stream_tag` of the identifier: hashed once.
    tag: u32,
}

/// FNV-1a of an identifier: the tag of its subscription's streams, the same on every
/// connection, so that a client's positions outlive a reconnect.
fn stream_tag(identifier: &str) -> u32 {
    identifier.bytes().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// A socket's subscriptions, in subscription order, at most `--max-bindings` of them.
#[derive(Debug)]
pub struct Subscriptions {
    items: Vec<Subscription>,
    limit: usize,
    /// The socket speaks AnyCable's extended protocol: frames carry positions.
    extended: bool,
    /// The room the subscriptions take, held in the pool every socket's interest shares.
    held: Held,
}

impl Subscriptions {
    pub fn new(limit: usize, held: Held) -> Subscriptions {
        Subscriptions {
            items: Vec::new(),
            limit,
            extended: false,
            held,
        }
    }

    /// The subscriptions of a socket that speaks AnyCable's extended protocol.
    pub fn extended(limit: usize, held: Held) -> Subscriptions {
        Subscriptions {
            extended: true,
            ..Subscriptions::new(limit, held)
        }
    }

    /// The bytes the subscriptions take: each one, its identifier and its selector's models.
    fn footprint(&self) -> usize {
        let subscriptions = self.items.capacity() * std::mem::size_of::<Subscription>();
        let owned: usize = self
            .items
            .iter()
            .map(|s| s.identifier.len() + s.selector.footprint())
            .sum();
        subscriptions + owned
    }

    /// The frames this socket gets for an event: per subscription whose account may see it,
    /// one for the `events` model and one for the event's family model, as selected.
    pub fn route(&self, event: &Event, renders: &mut Renders, out: &mut Vec<Frame>) {
        for subscription in self.items.iter().filter(|s| s.live_from.is_some()) {
            self.route_to(subscription, event, |_| true, renders, out);
        }
    }

    /// The frames of one subscription for an event, for the models `unseen` lets through.
    fn route_to(
        &self,
        subscription: &Subscription,
        event: &Event,
        unseen: impl Fn(Body) -> bool,
        renders: &mut Renders,
        out: &mut Vec<Frame>,
    ) {
        if !event.visible_to(&subscription.credential.account) {
            return;
        }
        let selector = &subscription.selector;
        let family = family_of(&event.routing_key);
        let at = self.at(subscription, event.position.as_ref(), family.unwrap_or(""));
        if selector.wants(EVENTS_MODEL, ChangeKind::Create) && unseen(Body::Event) {
            out.push(renders.frame(at, Body::Event, || event_body(event)));
        }
        if let Some(family) = family
            && selector.wants_family(family, ChangeKind::Update)
            && unseen(Body::Family)
        {
            out.push(renders.frame(at, Body::Family, || family_body(event, family)));
        }
    }

    /// The frames this socket gets for a change of a live call (the `calls` model).
    pub fn route_change(&self, change: &CallChange, renders: &mut Renders, out: &mut Vec<Frame>) {
        for subscription in self.items.iter().filter(|s| s.live_from.is_some()) {
            if change.visible_to(&subscription.credential.account)
                && subscription.selector.wants(CALLS_MODEL, change.kind)
            {
                let at = self.at(subscription, change.position.as_ref(), "");
                out.push(renders.frame(at, Body::Call, || call_body(change)));
            }
        }
    }

    /// Where a frame of `subscription` goes: its identifier, and on an extended socket the
    /// position it carries.
    fn at<'a>(
        &self,
        subscription: &'a Subscription,
        position: Option<&'a Position>,
        family: &'a str,
    ) -> Addressed<'a> {
        Addressed {
            identifier: &subscription.identifier,
            stream: position
                .filter(|_| self.extended)
                .map(|position| (subscription.tag, position)),
            family,
        }
    }

    fn find(&self, identifier: &str) -> Option<&Subscription> {
        self.items.iter().find(|s| *s.identifier == *identifier)
    }
}

/// The message bodies one event or call change can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    Call,
    Event,
    Family,
}

impl Body {
    /// The stream its frames carry on an extended socket (delivery.md): the model's name, and
    /// the subscription's tag.
    fn stream(self, family: &str, tag: u32) -> String {
        match self {
            Body::Call => format!("{CALLS_MODEL}/{tag:08x}"),
            Body::Event => format!("{EVENTS_MODEL}/{tag:08x}"),
            Body::Family => format!("{family}s/{tag:08x}"),
        }
    }

    /// Which body a stream of a subscription tagged `tag` carries.
    fn of_stream(stream: &str, tag: u32) -> Option<Body> {
        let (model, stream_tag) = stream.rsplit_once('/')?;
        if u32::from_str_radix(stream_tag, 16) != Ok(tag) {
            return None;
        }
        Some(match model {
            CALLS_MODEL => Body::Call,
            EVENTS_MODEL => Body::Event,
            _ => Body::Family,
        })
    }
}

/// Where a frame goes: its subscription's identifier and, on an extended socket, the
/// subscription's stream tag and the position the frame carries.
#[derive(Clone, Copy)]
struct Addressed<'a> {
    identifier: &'a Rc<str>,
    stream: Option<(u32, &'a Position)>,
    /// The event's family, which names a family frame's stream (else empty).
    family: &'a str,
}

/// What has been rendered for the event (or call change) being fanned out: each body once,
/// and each frame once per identifier and protocol. Cleared per event; its storage is kept.
#[derive(Debug, Default)]
pub struct Renders {
    bodies: [Option<String>; 3],
    /// Per identifier: the frames of each body, plain then extended.
    frames: HashMap<Rc<str>, [Option<Frame>; 6]>,
}

impl RenderCache for Renders {
    fn clear(&mut self) {
        self.bodies = Default::default();
        self.frames.clear();
    }
}

impl Renders {
    fn frame(&mut self, at: Addressed<'_>, body: Body, render: impl FnOnce() -> String) -> Frame {
        let slot = body as usize + if at.stream.is_some() { 3 } else { 0 };
        if let Some(frame) = self
            .frames
            .get(&**at.identifier)
            .and_then(|frames| frames[slot].as_ref())
        {
            return frame.clone();
        }
        let text = self.bodies[body as usize].get_or_insert_with(render);
        let stream = at
            .stream
            .map(|(tag, position)| (body.stream(at.family, tag), position));
        let frame = Frame::from(message_frame(at.identifier, text, stream));
        self.frames.entry(at.identifier.clone()).or_default()[slot] = Some(frame.clone());
        frame
    }
}

/// `{"identifier":"<identifier>","message":<body>}`, and on an extended socket the stream,
/// epoch and offset after it.
fn message_frame(identifier: &str, body: &str, stream: Option<(String, &Position)>) -> String {
    let mut out = String::with_capacity(32 + identifier.len() + identifier.len() / 2 + body.len());
    out.push_str(r#"{"identifier":"#);
    push_json_str(&mut out, identifier);
    out.push_str(r#","message":"#);
    out.push_str(body);
    if let Some((stream, position)) = stream {
        use std::fmt::Write;
        out.push_str(r#","stream_id":"#);
        push_json_str(&mut out, &stream);
        out.push_str(r#","epoch":"#);
        push_json_str(&mut out, &position.epoch);
        let _ = write!(out, r#","offset":{}"#, position.offset);
    }
    out.push('}');
    out
}

/// `{"identifier":"<identifier>","type":"<kind>"}`: a confirmation or a rejection.
fn reply_frame(identifier: &str, kind: &str) -> Frame {
    let mut out = String::with_capacity(48 + identifier.len() + identifier.len() / 2);
    out.push_str(r#"{"identifier":"#);
    push_json_str(&mut out, identifier);
    out.push_str(r#","type":"#);
    push_json_str(&mut out, kind);
    out.push('}');
    Frame::from(out)
}

/// The start of a message body: `{"event_type":"<kind>","event_class":"<class>","object":`.
fn body_head(kind: ChangeKind, class: &str, capacity: usize) -> String {
    let mut out = String::with_capacity(64 + class.len() + capacity);
    out.push_str(r#"{"event_type":"#);
    push_json_str(&mut out, kind.as_str());
    out.push_str(r#","event_class":"#);
    push_json_str(&mut out, class);
    out.push_str(r#","object":"#);
    out
}

/// The event's payload: its own bytes when it is JSON, else the payload as a JSON string.
fn push_payload(out: &mut String, event: &Event) {
    match std::str::from_utf8(&event.payload) {
        Ok(json) if event.json.is_some() => out.push_str(json),
        _ => push_json_str(out, &String::from_utf8_lossy(&event.payload)),
    }
}

/// The `calls` model: the call as the live API shows it.
fn call_body(change: &CallChange) -> String {
    let call = change.call.to_string();
    let mut out = body_head(change.kind, "Call", call.len());
    out.push_str(&call);
    out.push('}');
    out
}

/// The `events` model: `{"routing_key": ..., "data": <payload>}`.
fn event_body(event: &Event) -> String {
    let size = event.routing_key.len() + event.payload.len() + 32;
    let mut out = body_head(ChangeKind::Create, "Event", size);
    out.push_str(r#"{"routing_key":"#);
    push_json_str(&mut out, &event.routing_key);
    out.push_str(r#","data":"#);
    push_payload(&mut out, event);
    out.push_str("}}");
    out
}

/// A family's model: the payload itself.
fn family_body(event: &Event, family: &str) -> String {
    let mut out = body_head(ChangeKind::Update, &camelize(family), event.payload.len());
    push_payload(&mut out, event);
    out.push('}');
    out
}

/// The ping every ActionCable socket gets every `PING_INTERVAL`: the time in Unix seconds.
pub fn ping_frame(now: SystemTime) -> Frame {
    let seconds = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    Frame::from(format!(r#"{{"type":"ping","message":{seconds}}}"#))
}

/// Pings every ActionCable socket every `PING_INTERVAL`, forever: one timer for the process,
/// one frame per tick shared by every socket.
pub async fn send_pings(hub: &Hub) {
    use futures_lite::StreamExt;
    let mut ticks = smol::Timer::interval(PING_INTERVAL);
    while ticks.next().await.is_some() {
        hub.broadcast(Dialect::Cable, &ping_frame(SystemTime::now()));
    }
}

/// The subscriptions of extended sockets that ended, kept for `--history-ttl` so that a
/// reconnect presenting the session id gets them back, at most `--max-clients` sessions (the
/// oldest goes first). A session id is spent when it is presented.
#[derive(Debug)]
pub struct SavedSessions {
    saved: RefCell<std::collections::VecDeque<Saved>>,
    max: usize,
    ttl: Duration,
}

#[derive(Debug)]
struct Saved {
    sid: Box<str>,
    at: Instant,
    subscriptions: Vec<Subscription>,
}

impl SavedSessions {
    pub fn new(max: usize, ttl: Duration) -> SavedSessions {
        SavedSessions {
            saved: RefCell::new(std::collections::VecDeque::new()),
            max,
            ttl,
        }
    }

    /// Sessions kept now.
    pub fn len(&self) -> usize {
        self.saved.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expire(&self) {
        let mut saved = self.saved.borrow_mut();
        while saved.front().is_some_and(|s| s.at.elapsed() > self.ttl) {
            saved.pop_front();
        }
    }

    fn save(&self, sid: Box<str>, subscriptions: Vec<Subscription>) {
        self.expire();
        let mut saved = self.saved.borrow_mut();
        if saved.len() == self.max {
            saved.pop_front();
        }
        saved.push_back(Saved {
            sid,
            at: Instant::now(),
            subscriptions,
        });
    }

    /// The subscriptions saved under `sid` whose keys `auth` still holds, if any. A session id
    /// stands for its keys, so it is compared in constant time, against every saved one.
    fn take(&self, sid: &str, auth: &Auth) -> Option<Vec<Subscription>> {
        self.expire();
        let mut saved = self.saved.borrow_mut();
        let found = saved.iter().fold(None, |found, s| {
            let same = crate::auth::constant_time_eq(s.sid.as_bytes(), sid.as_bytes());
            if same { Some(s.sid.clone()) } else { found }
        })?;
        let index = saved.iter().position(|s| s.sid == found)?;
        let mut subscriptions = saved.remove(index)?.subscriptions;
        subscriptions.retain(|s| auth.holds(&s.credential));
        (!subscriptions.is_empty()).then_some(subscriptions)
    }
}

/// A new session id: 128 bits from the kernel's generator (it restores a session's keys, so
/// it must not be guessable), as 32 hex digits.
fn session_id() -> Box<str> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        // No /dev/urandom: ids that restore nothing rather than guessable ones.
        return "".into();
    }
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into()
}

/// What a socket that speaks AnyCable's extended protocol keeps beside its subscriptions.
struct Extended {
    history: Rc<RefCell<History>>,
    saved: Rc<SavedSessions>,
    /// This connection's session id (told in the welcome; its subscriptions are saved under
    /// it when the connection ends).
    sid: Box<str>,
    /// The identifiers restored from the session the upgrade presented, for the welcome.
    restored: Option<Vec<Rc<str>>>,
    /// Room for the frames a history request replayed until they are written
    /// (`history::replay_bytes`), and for the entries read from the archive until rendered.
    replaying: Held,
    /// A history request whose answer reads the archive (one at a time: the connection reads
    /// no command meanwhile), answered again once the read is done.
    waiting: Option<Box<Waiting>>,
    /// For that request answered again: what the read gave.
    archived: Option<Archived>,
}

/// A history request waiting for the archive.
struct Waiting {
    identifier: Box<str>,
    request: Option<Value>,
    read: PendingRead,
}

/// What an archive read gave a history request: the entries before offset `until`.
struct Archived {
    until: u64,
    read: Result<Vec<Entry>, ArchiveError>,
}

/// The hub asks a socket's subscriptions for its frames; its session changes them.
impl Interest for RefCell<Subscriptions> {
    fn route(
        &self,
        event: &Event,
        _key: &RoutingKey<'_>,
        renders: &mut hub::Renders,
        out: &mut Vec<Frame>,
    ) {
        self.borrow().route(event, renders.cache(), out);
    }

    fn route_change(&self, change: &CallChange, renders: &mut hub::Renders, out: &mut Vec<Frame>) {
        self.borrow().route_change(change, renders.cache(), out);
    }

    /// Any of its subscriptions was admitted with a key that is no longer held.
    fn revoked(&self, auth: &Auth) -> bool {
        let subscriptions = self.borrow();
        (subscriptions.items.iter()).any(|subscription| !auth.holds(&subscription.credential))
    }
}

impl Extended {
    /// Answers a history request for one subscription (`answer_history`).
    fn answer(
        &mut self,
        subscriptions: &mut Subscriptions,
        identifier: &str,
        request: Option<&Value>,
        metrics: &Metrics,
        replies: &mut Vec<Frame>,
    ) {
        let history = &mut self.history.borrow_mut();
        let archived = self.archived.take();
        let replaying = &mut self.replaying;
        let answer = Answer {
            identifier,
            request,
            archived: archived.as_ref(),
            metrics,
        };
        let Some((from, until)) =
            answer_history(subscriptions, history, replaying, answer, replies)
        else {
            return;
        };
        // Half the room for what the read holds, held from now on; the frames rendered from
        // it take the rest.
        let reserved = self.replaying.room() / 2;
        let read = history.archive(from, until, reserved).unwrap_or_else(|| {
            Box::pin(std::future::ready(Err(ArchiveError::Failed(
                "no archive".to_owned(),
            ))))
        });
        let read = PendingRead::new(read, until, reserved, &mut self.replaying);
        self.waiting = Some(Box::new(Waiting {
            identifier: identifier.into(),
            request: request.cloned(),
            read,
        }));
    }

    /// Once the archive read is done: answers the request that waited for it, its entries
    /// (held in the replay room until rendered) before the history's.
    fn poll_waiting(
        &mut self,
        cx: &mut Context<'_>,
        subscriptions: &RefCell<Subscriptions>,
        metrics: &Metrics,
        replies: &mut Vec<Frame>,
    ) -> Poll<()> {
        let Some(waiting) = &mut self.waiting else {
            return Poll::Ready(());
        };
        let Poll::Ready((read, charged)) = waiting.read.poll(cx, &mut self.replaying) else {
            return Poll::Pending;
        };
        let waiting = self.waiting.take().expect("polled just above");
        self.archived = Some(Archived {
            until: waiting.read.until,
            read,
        });
        let subscriptions = &mut *subscriptions.borrow_mut();
        let request = waiting.request.as_ref();
        self.answer(
            subscriptions,
            &waiting.identifier,
            request,
            metrics,
            replies,
        );
        // The entries are rendered (or given up) by now.
        self.archived = None;
        self.replaying
            .resize(self.replaying.bytes().saturating_sub(charged));
        Poll::Ready(())
    }
}

/// A history request to answer, and what the archive gave it if it waited for it.
struct Answer<'a> {
    identifier: &'a str,
    request: Option<&'a Value>,
    archived: Option<&'a Archived>,
    metrics: &'a Metrics,
}

/// One ActionCable socket's command handling.
pub struct CableSession {
    client: Rc<Client>,
    /// The socket's subscriptions, shared with the hub (`client.interest`).
    subscriptions: Rc<RefCell<Subscriptions>>,
    auth: Rc<Auth>,
    /// `None` on a plain `actioncable-v1-json` socket (boxed: most sockets are plain).
    extended: Option<Box<Extended>>,
    /// A subscription was confirmed: the socket proved a key (any, without `--auth`).
    authenticated: bool,
}

impl CableSession {
    pub fn new(
        client: Rc<Client>,
        subscriptions: Rc<RefCell<Subscriptions>>,
        auth: Rc<Auth>,
    ) -> CableSession {
        CableSession {
            client,
            subscriptions,
            auth,
            extended: None,
            authenticated: false,
        }
    }

    /// A socket that speaks AnyCable's extended protocol; `restore` is the session id its
    /// upgrade presented. The restored subscriptions wait for the client's `history` request
    /// before they go live, so that what they missed comes first, in order.
    pub fn extended(
        client: Rc<Client>,
        subscriptions: Rc<RefCell<Subscriptions>>,
        auth: Rc<Auth>,
        history: Rc<RefCell<History>>,
        saved: Rc<SavedSessions>,
        restore: Option<&str>,
    ) -> CableSession {
        let restored = restore
            .filter(|sid| !sid.is_empty())
            .and_then(|sid| saved.take(sid, &auth))
            .map(|restored| {
                let mut subscriptions = subscriptions.borrow_mut();
                let ids = restored.iter().map(|s| s.identifier.clone()).collect();
                subscriptions.items = restored;
                for subscription in &mut subscriptions.items {
                    subscription.live_from = None;
                }
                ids
            });
        let replaying = history.borrow().replay_share();
        CableSession {
            client,
            subscriptions,
            auth,
            // Restored subscriptions' keys were checked again: the socket has proved one.
            authenticated: restored.is_some(),
            extended: Some(Box::new(Extended {
                replaying,
                history,
                saved,
                sid: session_id(),
                restored,
                waiting: None,
                archived: None,
            })),
        }
    }

    /// Handles one command; whatever it answers goes into `replies`. Anything that is not a
    /// subscribe or an unsubscribe (or, extended, a history request) with a string identifier
    /// is ignored, as Rails does.
    fn handle(&mut self, text: &str, replies: &mut Vec<Frame>) {
        let Ok(Value::Object(command)) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let Some(Value::String(identifier)) = command.get("identifier") else {
            return;
        };
        let mut borrowed = self.subscriptions.borrow_mut();
        let subscriptions = &mut *borrowed;
        match command.get("command").and_then(Value::as_str) {
            Some("subscribe") => {
                if subscriptions.find(identifier).is_some() {
                    return;
                }
                let admitted = if subscriptions.items.len() >= subscriptions.limit {
                    self.client.metrics.limit_hits(Limit::Bindings).inc();
                    Err(Refusal::TooManySubscriptions)
                } else {
                    admit(&self.auth, identifier)
                };
                // Where its live frames start: what came before is the history's to answer.
                let next = self
                    .extended
                    .as_ref()
                    .map_or(0, |extended| extended.history.borrow().last_offset() + 1);
                let admitted = admitted.and_then(|(credential, selector)| {
                    // One at a time, exactly: most sockets hold one subscription, and `Vec`'s
                    // doubling would keep room for three more on each.
                    subscriptions.items.reserve_exact(1);
                    subscriptions.items.push(Subscription {
                        identifier: identifier.as_str().into(),
                        credential,
                        selector,
                        live_from: Some(next),
                        tag: stream_tag(identifier),
                    });
                    if subscriptions.held.resize(subscriptions.footprint()) {
                        return Ok(());
                    }
                    subscriptions.items.pop();
                    subscriptions.items.shrink_to_fit();
                    self.client.metrics.limit_hits(Limit::Bindings).inc();
                    Err(Refusal::NoRoom)
                });
                match admitted {
                    Ok(()) => {
                        self.authenticated = true;
                        replies.push(reply_frame(identifier, "confirm_subscription"));
                        // AnyCable's client asks for what it missed with the subscribe.
                        if let (Some(extended), Some(request)) =
                            (&mut self.extended, command.get("history"))
                        {
                            let metrics = &self.client.metrics;
                            let request = Some(request);
                            extended.answer(subscriptions, identifier, request, metrics, replies);
                        }
                    }
                    Err(refusal) => {
                        debug!("actioncable: rejected a subscription: {refusal:?}");
                        replies.push(reply_frame(identifier, "reject_subscription"));
                    }
                }
            }
            Some("unsubscribe") => {
                subscriptions
                    .items
                    .retain(|s| *s.identifier != **identifier);
                subscriptions.items.shrink_to_fit();
                subscriptions.held.resize(subscriptions.footprint());
            }
            Some("history") => {
                if let Some(extended) = &mut self.extended {
                    let metrics = &self.client.metrics;
                    let request = command.get("history");
                    extended.answer(subscriptions, identifier, request, metrics, replies);
                }
            }
            _ => {}
        }
    }
}

/// Answers a history request for one subscription (delivery.md, AnyCable's extended
/// protocol): the frames it missed, oldest first, each once, then `confirm_history`; or
/// `reject_history` when the history cannot give them all. A subscription restored from a
/// saved session goes live after it.
///
/// The request names a position per stream the client saw (`streams`), or a time (`since`,
/// Unix seconds). A stream of the subscription with no position saw no frame, so it missed
/// nothing before the other streams' last frame: frames are written in order. The `calls`
/// model's changes are the live state's, not kept in the history: a subscription that selects
/// them and missed an event it may see gets `reject_history` (reload `/rest/live/calls`).
///
/// A position older than the history, when the history has an archive (`--amqp-stream`), is
/// not answered yet: the offsets to read from it are returned (`from`, up to `until`), and the
/// request is answered again with what the read gave (`Answer::archived`).
fn answer_history(
    subscriptions: &mut Subscriptions,
    history: &mut History,
    replaying: &mut Held,
    answer: Answer<'_>,
    replies: &mut Vec<Frame>,
) -> Option<(u64, u64)> {
    let Answer {
        identifier,
        request,
        archived,
        metrics,
    } = answer;
    let Some(index) = subscriptions
        .items
        .iter()
        .position(|s| *s.identifier == *identifier)
    else {
        replies.push(reply_frame(identifier, "reject_history"));
        return None;
    };
    history.expire(Instant::now());
    let subscription = &subscriptions.items[index];
    let mut frames = Vec::new();
    let room = replaying.room();
    let answered = replay(
        subscriptions,
        subscription,
        history,
        (request, archived),
        room,
        &mut frames,
    );
    if let Replayed::Archive { from, until } = answered {
        return Some((from, until));
    }
    let last = history.last_offset();
    let subscription = &mut subscriptions.items[index];
    subscription.live_from.get_or_insert(last + 1);
    match answered {
        Replayed::Frames(bytes) if replaying.resize(replaying.bytes() + bytes) => {
            replies.append(&mut frames);
            replies.push(reply_frame(identifier, "confirm_history"));
        }
        Replayed::Frames(_) | Replayed::NoRoom => {
            metrics.limit_hits(Limit::Replay).inc();
            replies.push(reply_frame(identifier, "reject_history"));
        }
        Replayed::Lost => replies.push(reply_frame(identifier, "reject_history")),
        Replayed::Archive { .. } => unreachable!("returned above"),
    }
    None
}

/// What a history request could be answered with.
enum Replayed {
    /// Frames of this many bytes, every one the subscription missed.
    Frames(usize),
    /// The history no longer holds all it missed, or the request names no position in it.
    Lost,
    /// The frames (or the entries read from the archive) would not fit beside the replays
    /// waiting to be written.
    NoRoom,
    /// The history no longer holds all it missed but its archive does: offsets `from` up to
    /// `until` are to be read from it first.
    Archive { from: u64, until: u64 },
}

/// The frames `subscription` missed since the request's position (the archive's entries
/// first, when the request waited for them), up to where it went live, at most `room` bytes
/// of them.
fn replay(
    subscriptions: &Subscriptions,
    subscription: &Subscription,
    history: &History,
    request: (Option<&Value>, Option<&Archived>),
    room: usize,
    out: &mut Vec<Frame>,
) -> Replayed {
    replay_within(subscriptions, subscription, history, request, room, out)
        .unwrap_or(Replayed::Lost)
}

fn replay_within(
    subscriptions: &Subscriptions,
    subscription: &Subscription,
    history: &History,
    (request, archived): (Option<&Value>, Option<&Archived>),
    room: usize,
    out: &mut Vec<Frame>,
) -> Option<Replayed> {
    let request = request?.as_object()?;
    let tag = subscription.tag;
    let positions = stream_positions(request, tag, history.epoch())?;
    let (after, resume) = match (positions.values().min(), positions.values().max()) {
        (Some(&least), Some(&most)) => {
            let after = least.min(most.saturating_sub(1));
            (after, history.resume(history.epoch(), after))
        }
        _ => {
            let since = request.get("since")?.as_u64()?;
            let since = UNIX_EPOCH + Duration::from_secs(since);
            (0, history.resume_from_time(since))
        }
    };
    let (read, resume) = match (resume, archived) {
        (Resume::Archived { until }, None) => {
            return Some(Replayed::Archive {
                from: after + 1,
                until,
            });
        }
        // Read: what the history holds from where the read stopped follows it.
        (Resume::Archived { .. }, Some(archived)) => match &archived.read {
            Ok(entries) => (
                &entries[..],
                history.resume(history.epoch(), archived.until - 1),
            ),
            Err(ArchiveError::TooLarge) => return Some(Replayed::NoRoom),
            Err(_) => return None,
        },
        (resume, _) => (&[][..], resume),
    };
    let Resume::Recovered { from } = resume else {
        return None;
    };
    // Frames of a stream with no position are new from the other streams' last frame on.
    let unseen_from = positions
        .values()
        .max()
        .map_or(0, |most| most.saturating_sub(1));
    let live_from = subscription.live_from.unwrap_or(u64::MAX);
    let account = &subscription.credential.account;
    let missed = read
        .iter()
        .chain(history.entries_from(from))
        .take_while(|entry| entry.offset < live_from)
        .filter(|entry| entry.visible_to(account));
    let wants_calls = [ChangeKind::Create, ChangeKind::Update, ChangeKind::Destroy]
        .into_iter()
        .any(|kind| subscription.selector.wants(CALLS_MODEL, kind));
    let seen = |body: Body, family: &str| {
        let stream = body.stream(family, tag);
        positions.get(&stream).copied().unwrap_or(unseen_from)
    };
    let mut renders = Renders::default();
    let mut bytes = 0;
    for entry in missed {
        if wants_calls && entry.offset > seen(Body::Call, "") {
            return None;
        }
        let event = entry.to_event(history.epoch());
        let family = family_of(&event.routing_key).unwrap_or("");
        let unseen = |body: Body| entry.offset > seen(body, family);
        renders.clear();
        let before = out.len();
        subscriptions.route_to(subscription, &event, unseen, &mut renders, out);
        bytes += out[before..].iter().map(|frame| frame.len()).sum::<usize>();
        if bytes > room {
            return Some(Replayed::NoRoom);
        }
    }
    Some(Replayed::Frames(bytes))
}

/// The positions a history request gives for the streams of the subscription tagged `tag`;
/// `None` when one is malformed or in another epoch (nothing can be replayed from it).
fn stream_positions(
    request: &Map<String, Value>,
    tag: u32,
    epoch: &str,
) -> Option<HashMap<String, u64>> {
    let mut positions = HashMap::new();
    let Some(streams) = request.get("streams") else {
        return Some(positions);
    };
    for (stream, position) in streams.as_object()? {
        if Body::of_stream(stream, tag).is_none() {
            continue;
        }
        if position.get("epoch")?.as_str()? != epoch {
            return None;
        }
        positions.insert(stream.clone(), position.get("offset")?.as_u64()?);
    }
    Some(positions)
}

/// Checks a subscription's identifier: the channel, the key (any, or none, without `--auth`),
/// the selector. Returns the key's credential and the selector.
fn admit(auth: &Auth, identifier: &str) -> Result<(Rc<Credential>, Selector), Refusal> {
    if identifier.len() > MAX_IDENTIFIER {
        return Err(Refusal::IdentifierTooLong);
    }
    let Ok(Value::Object(params)) = serde_json::from_str::<Value>(identifier) else {
        return Err(Refusal::NotAnObject);
    };
    if params.get("channel").and_then(Value::as_str) != Some(CHANNEL) {
        return Err(Refusal::UnknownChannel);
    }
    let key = params.get("key").and_then(Value::as_str);
    let credential = auth.by_secret(key).ok_or(Refusal::BadKey)?;
    let selector = Selector::parse(params.get("events"))?;
    Ok((credential, selector))
}

impl Session for CableSession {
    fn on_text(&mut self, text: &str, replies: &mut Vec<Frame>) {
        self.handle(text, replies);
    }

    fn poll_waiting(&mut self, cx: &mut Context<'_>, replies: &mut Vec<Frame>) -> Poll<()> {
        match &mut self.extended {
            Some(extended) => {
                let metrics = &self.client.metrics;
                extended.poll_waiting(cx, &self.subscriptions, metrics, replies)
            }
            None => Poll::Ready(()),
        }
    }

    fn replies_written(&mut self) {
        if let Some(extended) = &mut self.extended {
            extended.replaying.resize(0);
        }
    }

    /// Binary frames are ignored, as Rails does.
    fn on_binary(&mut self, _data: &[u8], _replies: &mut Vec<Frame>) {}

    /// The welcome; an extended socket's carries its session id, and whether (and which)
    /// subscriptions were restored.
    fn greeting(&self) -> Option<Frame> {
        let Some(extended) = &self.extended else {
            return Some(Frame::from_static(WELCOME));
        };
        let mut welcome = serde_json::json!({"type": "welcome", "sid": &*extended.sid});
        if let Some(restored) = &extended.restored {
            let ids: Vec<&str> = restored.iter().map(|id| &**id).collect();
            welcome["restored"] = Value::Bool(true);
            welcome["restored_ids"] = serde_json::json!(ids);
        }
        Some(Frame::from(welcome.to_string()))
    }

    fn authenticated(&self) -> bool {
        self.authenticated
    }

    fn auth_refusal(&mut self) -> Option<Frame> {
        Some(Frame::from_static(UNAUTHORIZED))
    }

    fn farewell(&self, reason: CloseReason) -> Option<Frame> {
        Some(Frame::from_static(match reason {
            CloseReason::Revoked => UNAUTHORIZED,
            _ => SERVER_RESTART,
        }))
    }
}

/// An extended socket's subscriptions are saved under its session id when it ends, for a
/// reconnect that presents the id.
impl Drop for CableSession {
    fn drop(&mut self) {
        let Some(extended) = &self.extended else {
            return;
        };
        let mut borrowed = self.subscriptions.borrow_mut();
        let subscriptions = &mut *borrowed;
        if !subscriptions.items.is_empty() && !extended.sid.is_empty() {
            let items = std::mem::take(&mut subscriptions.items);
            extended.saved.save(extended.sid.clone(), items);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;

    use crate::limits::BytePool;

    use ChangeKind::{Create, Destroy, Update};

    fn selector(events: &str) -> Selector {
        Selector::parse(Some(&json!(events))).unwrap()
    }

    /// The (model, type) pairs a selector wants among `models`.
    fn wanted(selector: &Selector, models: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for model in models {
            for kind in [Create, Update, Destroy] {
                if selector.wants(model, kind) {
                    out.push(format!("{model}#{}", kind.as_str()));
                }
            }
        }
        out
    }

    const MODELS: [&str; 5] = ["calls", "events", " events", "conferences", ""];

    #[test]
    fn a_bare_model_is_create_and_update() {
        assert_eq!(
            wanted(&selector("calls"), &MODELS),
            ["calls#create", "calls#update"]
        );
    }

    #[test]
    fn types_after_a_hash_are_exactly_those() {
        assert_eq!(wanted(&selector("calls#create"), &MODELS), ["calls#create"]);
        assert_eq!(
            wanted(&selector("calls#create,destroy"), &MODELS),
            ["calls#create", "calls#destroy"]
        );
        assert_eq!(
            wanted(&selector("calls#create,update;events"), &MODELS),
            [
                "calls#create",
                "calls#update",
                "events#create",
                "events#update"
            ]
        );
        // The same model twice: the types add up.
        assert_eq!(
            wanted(&selector("calls#destroy;calls#create"), &MODELS),
            ["calls#create", "calls#destroy"]
        );
        // Unknown types never fire; nothing is trimmed in types either.
        assert!(wanted(&selector("calls#created, update"), &MODELS).is_empty());
        // Ruby's split: `calls##create` has an empty second field, so no types.
        assert!(wanted(&selector("calls##create"), &MODELS).is_empty());
        // ... and a third field is never read.
        assert_eq!(
            wanted(&selector("calls#update#create"), &MODELS),
            ["calls#update"]
        );
    }

    #[test]
    fn nothing_is_trimmed() {
        let spaced = selector("calls; events");
        assert_eq!(
            wanted(&spaced, &MODELS),
            [
                "calls#create",
                "calls#update",
                " events#create",
                " events#update"
            ]
        );
        assert!(!spaced.wants("events", Create));
        assert!(wanted(&selector(" calls"), &["calls"]).is_empty());
        assert!(wanted(&selector("calls "), &["calls"]).is_empty());
    }

    #[test]
    fn absent_null_or_blank_events_select_every_model_create_and_update() {
        for every in [
            Selector::parse(None).unwrap(),
            Selector::parse(Some(&Value::Null)).unwrap(),
            selector(""),
            selector("  "),
        ] {
            assert_eq!(every, Selector { models: None });
            assert!(every.wants("calls", Create) && every.wants("calls", Update));
            assert!(!every.wants("calls", Destroy));
            assert!(every.wants("anything", Update) && every.wants_family("conference", Update));
        }
    }

    #[test]
    fn ruby_split_drops_trailing_empty_fields_only() {
        let fields = |text| ruby_split(text, ';').collect::<Vec<_>>();
        assert_eq!(fields("calls;"), ["calls"]);
        assert_eq!(fields("calls;;"), ["calls"]);
        assert_eq!(fields(";calls"), ["", "calls"]);
        assert_eq!(fields("a;;b"), ["a", "", "b"]);
        assert!(fields(";").is_empty() && fields(";;").is_empty());
        assert_eq!(selector("calls;"), selector("calls"));
        // An empty field in the middle names the model "", which never fires.
        assert_eq!(
            wanted(&selector("calls;;events#create"), &MODELS),
            [
                "calls#create",
                "calls#update",
                "events#create",
                "#create",
                "#update"
            ]
        );
        // Only separators: present, so not "every model"; no fields, so nothing.
        assert_eq!(selector(";").models, Some(vec![]));
    }

    #[test]
    fn a_part_with_a_hash_and_no_types_is_malformed() {
        for events in ["calls#", "#", "##", "calls;events#", "calls#;events"] {
            assert_eq!(
                Selector::parse(Some(&json!(events))),
                Err(Refusal::MalformedPart),
                "{events}"
            );
        }
        // A comma alone is a type list with no types in it (Ruby's split), not malformed.
        assert!(wanted(&selector("calls#,"), &MODELS).is_empty());
        // `#create` names the model "".
        assert_eq!(wanted(&selector("#create"), &MODELS), ["#create"]);
    }

    #[test]
    fn events_that_are_not_a_string_are_rejected() {
        for events in [
            json!(1),
            json!(["calls"]),
            json!({"calls": true}),
            json!(false),
        ] {
            assert_eq!(
                Selector::parse(Some(&events)),
                Err(Refusal::EventsNotAString),
                "{events}"
            );
        }
    }

    #[test]
    fn unknown_models_are_accepted_and_never_fire() {
        let unknown = selector("posts;feedbacks#create");
        assert!(wanted(&unknown, &MODELS).is_empty());
        assert!(!unknown.wants_family("conference", Update));
        assert!(unknown.wants("posts", Update));
    }

    #[test]
    fn family_models_are_the_first_segment_plus_s() {
        let families = selector("conferences;faxs#update;presences#create");
        assert!(families.wants_family("conference", Update));
        assert!(families.wants_family("fax", Update));
        assert!(!families.wants_family("presence", Update));
        assert!(!families.wants_family("conferences", Update));
        assert!(!families.wants_family("conf", Update));
        assert_eq!(family_of("conference.member.joined"), Some("conference"));
        assert_eq!(family_of("fax"), Some("fax"));
        assert_eq!(family_of("call.CHANNEL_CREATE.x"), None);
        assert_eq!(family_of("event.x"), None);
        assert_eq!(family_of(".x"), None);
        assert_eq!(family_of(""), None);
    }

    #[test]
    fn too_many_models_are_rejected() {
        let fits: Vec<String> = (0..MAX_MODELS).map(|n| format!("m{n}")).collect();
        assert!(Selector::parse(Some(&json!(fits.join(";")))).is_ok());
        // The same model again is no new model.
        let again = format!("{};m0#destroy", fits.join(";"));
        assert!(Selector::parse(Some(&json!(again))).is_ok());
        let over = format!("{};one_more", fits.join(";"));
        assert_eq!(
            Selector::parse(Some(&json!(over))),
            Err(Refusal::TooManyModels)
        );
    }

    #[test]
    fn classes_are_camelized() {
        assert_eq!(camelize("conference"), "Conference");
        assert_eq!(camelize("parking_lot"), "ParkingLot");
        assert_eq!(camelize("fax2mail"), "Fax2mail");
        assert_eq!(camelize("FreeSWITCH"), "FreeSWITCH");
        assert_eq!(camelize("foo_BAR"), "FooBar");
        assert_eq!(camelize("a__b"), "AB");
        assert_eq!(camelize("trailing_"), "Trailing");
        assert_eq!(camelize("a-b_c"), "A-bC");
        assert_eq!(camelize("é_x"), "éX");
    }

    #[test]
    fn admission_checks_channel_key_and_selector() {
        let open = Auth::open();
        let ok = admit(&open, r#"{"channel":"ApiChannel"}"#).unwrap();
        assert!(ok.0.sees_all() && ok.1 == Selector { models: None });
        assert!(
            admit(
                &open,
                r#"{"channel":"ApiChannel","key":7,"events":"calls"}"#
            )
            .is_ok()
        );
        assert_eq!(
            admit(&open, r#"{"channel":"OtherChannel"}"#).unwrap_err(),
            Refusal::UnknownChannel
        );
        assert_eq!(admit(&open, "not json").unwrap_err(), Refusal::NotAnObject);
        assert_eq!(
            admit(&open, r#"["ApiChannel"]"#).unwrap_err(),
            Refusal::NotAnObject
        );
        assert_eq!(
            admit(&open, r#"{"channel":"ApiChannel","events":"calls#"}"#).unwrap_err(),
            Refusal::MalformedPart
        );
        let long = format!(
            r#"{{"channel":"ApiChannel","events":"{}"}}"#,
            "x".repeat(MAX_IDENTIFIER)
        );
        assert_eq!(admit(&open, &long).unwrap_err(), Refusal::IdentifierTooLong);
    }

    fn event(key: &str, payload: &str) -> Event {
        Event::new(key.to_owned(), Bytes::copy_from_slice(payload.as_bytes()))
    }

    fn subscriptions(identifiers: &[&str]) -> Subscriptions {
        let open = Auth::open();
        let mut subscriptions = Subscriptions::new(8, BytePool::new(usize::MAX).share());
        for identifier in identifiers {
            let (credential, selector) = admit(&open, identifier).unwrap();
            subscriptions.items.push(Subscription {
                identifier: (*identifier).into(),
                credential,
                selector,
                live_from: Some(0),
                tag: stream_tag(identifier),
            });
        }
        subscriptions
    }

    #[test]
    fn identifiers_are_echoed_byte_for_byte() {
        let odd = "{\"channel\": \"ApiChannel\",\n \"key\":\"k\\\\\" ,\"events\":\"calls;events\"}";
        let subscriptions = subscriptions(&[odd]);
        let mut out = Vec::new();
        let mut renders = Renders::default();
        subscriptions.route(
            &event("conference.x", r#"{"a" : 1}"#),
            &mut renders,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        let frame: Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(frame["identifier"], json!(odd));
        assert_eq!(
            out[0].as_str(),
            format!(
                r#"{{"identifier":{},"message":{{"event_type":"create","event_class":"Event","object":{{"routing_key":"conference.x","data":{{"a" : 1}}}}}}}}"#,
                serde_json::to_string(odd).unwrap()
            )
        );
        let confirm = reply_frame(odd, "confirm_subscription");
        let confirm: Value = serde_json::from_str(&confirm).unwrap();
        assert_eq!(
            confirm,
            json!({"identifier": odd, "type": "confirm_subscription"})
        );
    }

    #[test]
    fn frames_per_model_and_shared_per_identifier() {
        let a = r#"{"channel":"ApiChannel","events":"conferences;events"}"#;
        let b = r#"{"channel":"ApiChannel","events":"conferences"}"#;
        let first = subscriptions(&[a, b]);
        let second = subscriptions(&[a]);
        let mut renders = Renders::default();
        let (mut one, mut two) = (Vec::new(), Vec::new());
        let conference = event("conference.joined", "not json");
        first.route(&conference, &mut renders, &mut one);
        second.route(&conference, &mut renders, &mut two);
        assert_eq!(one.len(), 3);
        assert_eq!(two.len(), 2);
        // Same identifier, same bytes.
        assert_eq!(one[0].as_str().as_ptr(), two[0].as_str().as_ptr());
        assert_eq!(one[1].as_str().as_ptr(), two[1].as_str().as_ptr());
        let message =
            |frame: &Frame| serde_json::from_str::<Value>(frame).unwrap()["message"].clone();
        assert_eq!(
            message(&one[0]),
            json!({"event_type": "create", "event_class": "Event",
                   "object": {"routing_key": "conference.joined", "data": "not json"}})
        );
        assert_eq!(
            message(&one[1]),
            json!({"event_type": "update", "event_class": "Conference", "object": "not json"})
        );
        assert_eq!(message(&one[2]), message(&one[1]));

        // `call` and `event` families make no model of their own.
        renders.clear();
        let mut out = Vec::new();
        let every = subscriptions(&[r#"{"channel":"ApiChannel"}"#]);
        every.route(
            &event("call.CHANNEL_CREATE.x", "{}"),
            &mut renders,
            &mut out,
        );
        renders.clear();
        every.route(&event("event.x", "{}"), &mut renders, &mut out);
        let classes: Vec<Value> = out
            .iter()
            .map(|f| message(f)["event_class"].clone())
            .collect();
        assert_eq!(classes, [json!("Event"), json!("Event")]);
    }

    /// An extended session on a hub of its own, with a history of its own, and what it saw.
    struct ExtendedSocket {
        hub: crate::hub::Hub,
        history: Rc<RefCell<History>>,
        saved: Rc<SavedSessions>,
        client: Rc<Client>,
        session: CableSession,
    }

    impl ExtendedSocket {
        fn open(restore: Option<&str>, saved: Option<Rc<SavedSessions>>) -> ExtendedSocket {
            let limits = crate::cli::limits_from(&[]);
            let metrics = Rc::new(crate::metrics::Metrics::default());
            let hub = crate::hub::Hub::new(limits, metrics);
            let history = Rc::new(RefCell::new(History::with_epoch("e1".into(), &limits)));
            let saved = saved.unwrap_or_else(|| Rc::new(SavedSessions::new(4, limits.history_ttl)));
            let pool = crate::limits::BytePool::new(usize::MAX);
            let subscriptions = Rc::new(RefCell::new(Subscriptions::extended(8, pool.share())));
            let client = hub.register(Dialect::Cable, subscriptions.clone()).unwrap();
            let auth = Rc::new(Auth::open());
            let session = CableSession::extended(
                client.clone(),
                subscriptions,
                auth,
                history.clone(),
                saved.clone(),
                restore,
            );
            ExtendedSocket {
                hub,
                history,
                saved,
                client,
                session,
            }
        }

        fn publish(&self, key: &str) {
            let mut event = event(key, r#"{"n":1}"#);
            self.history.borrow_mut().record(&mut event);
            self.hub.publish(&event);
        }

        fn send(&mut self, command: Value) -> Vec<Value> {
            let mut replies = Vec::new();
            self.session.on_text(&command.to_string(), &mut replies);
            replies
                .iter()
                .map(|f| serde_json::from_str(f).unwrap())
                .collect()
        }

        fn queued(&self) -> Vec<Value> {
            std::iter::from_fn(|| self.client.pop())
                .map(|f| serde_json::from_str(&f).unwrap())
                .collect()
        }

        fn welcome(&self) -> Value {
            serde_json::from_str(&self.session.greeting().unwrap()).unwrap()
        }
    }

    const EVENTS_AND_CONFERENCES: &str =
        r#"{"channel":"ApiChannel","events":"events;conferences"}"#;

    /// (stream model, offset) of each message frame.
    fn positions(frames: &[Value]) -> Vec<(String, u64)> {
        frames
            .iter()
            .filter(|f| f.get("message").is_some())
            .map(|f| {
                let stream = f["stream_id"].as_str().unwrap();
                let model = stream.split('/').next().unwrap().to_owned();
                assert_eq!(f["epoch"], "e1");
                (model, f["offset"].as_u64().unwrap())
            })
            .collect()
    }

    #[test]
    fn extended_frames_carry_streams_and_history_replays_each_unseen_frame_once() {
        let mut socket = ExtendedSocket::open(None, None);
        let welcome = socket.welcome();
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["sid"].as_str().unwrap().len(), 32);
        socket.publish("conference.a"); // 1: an events and a conferences frame
        socket.publish("presence.x"); // 2: an events frame
        socket.publish("conference.b"); // 3: both
        // The client saw the events frame of 1 (on an earlier connection) and no conference
        // frame: conferences 1 is unseen, as is everything after 1.
        let tag = stream_tag(EVENTS_AND_CONFERENCES);
        let events_stream = format!("events/{tag:08x}");
        let answer = socket.send(
            json!({"command": "subscribe", "identifier": EVENTS_AND_CONFERENCES,
            "history": {"since": 0, "streams": {&events_stream: {"epoch": "e1", "offset": 1}}}}),
        );
        assert_eq!(answer[0]["type"], "confirm_subscription");
        assert_eq!(
            positions(&answer),
            [
                ("conferences".into(), 1),
                ("events".into(), 2),
                ("events".into(), 3),
                ("conferences".into(), 3)
            ]
        );
        assert_eq!(answer[2]["stream_id"], json!(events_stream));
        assert_eq!(answer.last().unwrap()["type"], "confirm_history");
        // Then live, from the next event.
        socket.publish("presence.y");
        assert_eq!(positions(&socket.queued()), [("events".into(), 4)]);
        // Asked again on the same connection: nothing it got live is sent twice.
        let conferences_stream = format!("conferences/{tag:08x}");
        let answer = socket.send(
            json!({"command": "history", "identifier": EVENTS_AND_CONFERENCES,
            "history": {"streams": {&events_stream: {"epoch": "e1", "offset": 3},
                                    &conferences_stream: {"epoch": "e1", "offset": 3}}}}),
        );
        assert_eq!(answer.len(), 1);
        assert_eq!(answer[0]["type"], "confirm_history");

        // Another epoch, or a time before the history began, or nothing: rejected.
        for request in [
            json!({"streams": {&events_stream: {"epoch": "e0", "offset": 1}}}),
            json!({"since": 0}),
            json!(null),
        ] {
            let answer = socket.send(json!({"command": "history",
                "identifier": EVENTS_AND_CONFERENCES, "history": request}));
            assert_eq!(answer.len(), 1, "{request}");
            assert_eq!(answer[0]["type"], "reject_history", "{request}");
        }
    }

    #[test]
    fn a_history_request_older_than_the_history_is_answered_from_the_archive_then_the_history() {
        let mut socket = ExtendedSocket::open(None, None);
        let small = crate::cli::limits_from(&["--history-bytes", "1200"]);
        *socket.history.borrow_mut() = History::with_epoch("e1".into(), &small);
        let mut recorded = Vec::new();
        for n in 1..=30u64 {
            let mut event = event(&format!("presence.x{n}"), r#"{"n":1}"#);
            socket.history.borrow_mut().record(&mut event);
            recorded.push((n, event));
        }
        let oldest = socket
            .history
            .borrow()
            .entries_from(0)
            .next()
            .unwrap()
            .offset;
        assert!(oldest > 10, "the history lost the first events: {oldest}");
        (socket.history.borrow_mut()).set_archive(Rc::new(crate::history::Recorded(recorded)));
        let identifier = r#"{"channel":"ApiChannel","events":"events"}"#;
        let stream = format!("events/{:08x}", stream_tag(identifier));
        let from = oldest - 4;
        let answer = socket.send(json!({"command": "subscribe", "identifier": identifier,
            "history": {"streams": {&stream: {"epoch": "e1", "offset": from}}}}));
        assert_eq!(answer.len(), 1, "the history answer waits for the archive");
        assert_eq!(answer[0]["type"], "confirm_subscription");
        let mut replies = Vec::new();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(
            socket
                .session
                .poll_waiting(&mut cx, &mut replies)
                .is_ready()
        );
        let answer: Vec<Value> = (replies.iter())
            .map(|f| serde_json::from_str(f).unwrap())
            .collect();
        let expected: Vec<(String, u64)> = (from + 1..=30).map(|n| ("events".into(), n)).collect();
        assert_eq!(
            positions(&answer),
            expected,
            "the archive's, then the history's"
        );
        assert_eq!(answer.last().unwrap()["type"], "confirm_history");
        socket.publish("presence.y");
        assert_eq!(positions(&socket.queued()), [("events".into(), 31)]);

        // More than the replay room (a small one here): rejected, counted.
        let extended = socket.session.extended.as_mut().unwrap();
        extended.replaying = crate::limits::BytePool::new(1000).share();
        let metrics = &socket.client.metrics;
        let hits = metrics.limit_hits(Limit::Replay).get();
        let answer = socket.send(json!({"command": "history", "identifier": identifier,
            "history": {"streams": {&stream: {"epoch": "e1", "offset": 0}}}}));
        assert!(answer.is_empty());
        let mut replies = Vec::new();
        assert!(
            socket
                .session
                .poll_waiting(&mut cx, &mut replies)
                .is_ready()
        );
        assert_eq!(replies.len(), 1);
        let answer: Value = serde_json::from_str(&replies[0]).unwrap();
        assert_eq!(answer["type"], "reject_history");
        let metrics = &socket.client.metrics;
        assert_eq!(metrics.limit_hits(Limit::Replay).get(), hits + 1);
    }

    #[test]
    fn the_calls_model_is_not_replayed_and_a_saved_session_is_restored_once() {
        let mut socket = ExtendedSocket::open(None, None);
        let calls = r#"{"channel":"ApiChannel","events":"calls;events"}"#;
        let stream = format!("calls/{:08x}", stream_tag(calls));
        socket.publish("call.CHANNEL_CREATE.x");
        socket.publish("call.CHANNEL_ANSWER.x");
        let answer = socket.send(json!({"command": "subscribe", "identifier": calls,
            "history": {"streams": {&stream: {"epoch": "e1", "offset": 1}}}}));
        assert_eq!(answer.len(), 2);
        assert_eq!(
            answer[1]["type"], "reject_history",
            "calls changes are state"
        );
        // Nothing missed: nothing to replay, confirmed.
        let events = format!("events/{:08x}", stream_tag(calls));
        let answer = socket.send(json!({"command": "history", "identifier": calls,
            "history": {"streams": {&stream: {"epoch": "e1", "offset": 2},
                                    &events: {"epoch": "e1", "offset": 2}}}}));
        assert_eq!(answer.len(), 1);
        assert_eq!(answer[0]["type"], "confirm_history");

        // The session ends: its subscriptions are saved under its id.
        let sid = socket.welcome()["sid"].as_str().unwrap().to_owned();
        let saved = socket.saved.clone();
        drop(socket);
        assert_eq!(saved.len(), 1);
        let wrong = ExtendedSocket::open(Some("0123"), Some(saved.clone()));
        assert_eq!(wrong.welcome().get("restored"), None);
        let mut restored = ExtendedSocket::open(Some(&sid), Some(saved.clone()));
        let welcome = restored.welcome();
        assert_eq!(welcome["restored"], true);
        assert_eq!(welcome["restored_ids"], json!([calls]));
        assert_ne!(welcome["sid"], json!(sid));
        assert!(saved.is_empty(), "an id is spent once presented");
        // Not live until its history request; then live.
        restored.publish("presence.y");
        assert!(restored.queued().is_empty());
        let answer = restored.send(json!({"command": "history", "identifier": calls,
            "history": {"streams": {}}}));
        assert_eq!(answer[0]["type"], "reject_history", "no position, no time");
        restored.publish("presence.z");
        assert_eq!(positions(&restored.queued()), [("events".into(), 2)]);
    }

    #[test]
    fn call_changes_by_type() {
        let change = |kind, account: Option<&str>| CallChange {
            kind,
            account: account.map(str::to_owned),
            call: json!({"id": "c1", "state": "ringing"}),
            position: None,
        };
        let subscriptions =
            subscriptions(&[r#"{"channel":"ApiChannel","events":"calls#create,destroy"}"#]);
        let mut renders = Renders::default();
        let mut out = Vec::new();
        for kind in [Create, Update, Destroy] {
            renders.clear();
            subscriptions.route_change(&change(kind, Some("acc")), &mut renders, &mut out);
        }
        let types: Vec<Value> = out
            .iter()
            .map(|f| serde_json::from_str::<Value>(f).unwrap()["message"]["event_type"].clone())
            .collect();
        assert_eq!(types, [json!("create"), json!("destroy")]);
        let message: Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(
            message["message"],
            json!({"event_type": "create", "event_class": "Call",
                   "object": {"id": "c1", "state": "ringing"}})
        );
    }

    #[test]
    fn pings_carry_unix_seconds() {
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            ping_frame(at).as_str(),
            r#"{"type":"ping","message":1700000000}"#
        );
    }
}
