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

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::app::App;
use crate::auth::{Auth, Credential};
use crate::dialect::{Dialect, Session, push_json_str};
use crate::event::Event;
use crate::hub::{Client, CloseReason, Frame, Interest};
use crate::limits::Held;
use crate::live::{CallChange, ChangeKind};
use crate::metrics::Limit;

/// The subprotocol the official client needs in the upgrade's answer.
pub const SUBPROTOCOL: &str = "actioncable-v1-json";

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
}

impl Subscriptions {
    /// The credentials the socket's subscriptions were admitted with.
    pub fn credentials(&self) -> impl Iterator<Item = &Rc<Credential>> {
        self.items
            .iter()
            .map(|subscription| &subscription.credential)
    }
}

/// A socket's subscriptions, in subscription order, at most `--max-bindings` of them.
#[derive(Debug)]
pub struct Subscriptions {
    items: Vec<Subscription>,
    limit: usize,
    /// The room the subscriptions take, held in the pool every socket's interest shares.
    held: Held,
}

impl Subscriptions {
    pub fn new(limit: usize, held: Held) -> Subscriptions {
        Subscriptions {
            items: Vec::new(),
            limit,
            held,
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
        if self.items.is_empty() {
            return;
        }
        let family = family_of(&event.routing_key);
        for subscription in &self.items {
            if !event.visible_to(&subscription.credential.account) {
                continue;
            }
            let selector = &subscription.selector;
            if selector.wants(EVENTS_MODEL, ChangeKind::Create) {
                let identifier = &subscription.identifier;
                out.push(renders.frame(identifier, Body::Event, || event_body(event)));
            }
            if let Some(family) = family
                && selector.wants_family(family, ChangeKind::Update)
            {
                let identifier = &subscription.identifier;
                out.push(renders.frame(identifier, Body::Family, || family_body(event, family)));
            }
        }
    }

    /// The frames this socket gets for a change of a live call (the `calls` model).
    pub fn route_change(&self, change: &CallChange, renders: &mut Renders, out: &mut Vec<Frame>) {
        for subscription in &self.items {
            if change.visible_to(&subscription.credential.account)
                && subscription.selector.wants(CALLS_MODEL, change.kind)
            {
                let identifier = &subscription.identifier;
                out.push(renders.frame(identifier, Body::Call, || call_body(change)));
            }
        }
    }

    fn find(&self, identifier: &str) -> Option<&Subscription> {
        self.items.iter().find(|s| *s.identifier == *identifier)
    }
}

/// The message bodies one event or call change can have.
#[derive(Clone, Copy, Debug)]
enum Body {
    Call,
    Event,
    Family,
}

/// What has been rendered for the event (or call change) being fanned out: each body once,
/// and each frame once per identifier. Cleared per event; its storage is kept.
#[derive(Debug, Default)]
pub struct Renders {
    bodies: [Option<String>; 3],
    frames: HashMap<Rc<str>, [Option<Frame>; 3]>,
}

impl Renders {
    pub fn clear(&mut self) {
        self.bodies = Default::default();
        self.frames.clear();
    }

    fn frame(
        &mut self,
        identifier: &Rc<str>,
        body: Body,
        render: impl FnOnce() -> String,
    ) -> Frame {
        let slot = body as usize;
        if let Some(frame) = self
            .frames
            .get(&**identifier)
            .and_then(|frames| frames[slot].as_ref())
        {
            return frame.clone();
        }
        let body = self.bodies[slot].get_or_insert_with(render);
        let frame = Frame::from(message_frame(identifier, body));
        self.frames.entry(identifier.clone()).or_default()[slot] = Some(frame.clone());
        frame
    }
}

/// `{"identifier":"<identifier>","message":<body>}`.
fn message_frame(identifier: &str, body: &str) -> String {
    let mut out = String::with_capacity(32 + identifier.len() + identifier.len() / 2 + body.len());
    out.push_str(r#"{"identifier":"#);
    push_json_str(&mut out, identifier);
    out.push_str(r#","message":"#);
    out.push_str(body);
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
pub async fn send_pings(app: Rc<App>) {
    use futures_lite::StreamExt;
    let mut ticks = smol::Timer::interval(PING_INTERVAL);
    while ticks.next().await.is_some() {
        app.hub
            .broadcast(Dialect::Cable, &ping_frame(SystemTime::now()));
    }
}

/// One ActionCable socket's command handling.
pub struct CableSession {
    client: Rc<Client>,
    auth: Rc<Auth>,
    /// A subscription was confirmed: the socket proved a key (any, without `--auth`).
    authenticated: bool,
}

impl CableSession {
    pub fn new(client: Rc<Client>, auth: Rc<Auth>) -> CableSession {
        CableSession {
            client,
            auth,
            authenticated: false,
        }
    }

    /// The reply to one command, if it has one. Anything that is not a subscribe or an
    /// unsubscribe with a string identifier is ignored, as Rails does.
    fn handle(&mut self, text: &str) -> Option<Frame> {
        let Ok(Value::Object(command)) = serde_json::from_str::<Value>(text) else {
            return None;
        };
        let Some(Value::String(identifier)) = command.get("identifier") else {
            return None;
        };
        let mut interest = self.client.interest.borrow_mut();
        let Interest::Cable(subscriptions) = &mut *interest else {
            return None;
        };
        match command.get("command").and_then(Value::as_str) {
            Some("subscribe") => {
                if subscriptions.find(identifier).is_some() {
                    return None;
                }
                let admitted = if subscriptions.items.len() >= subscriptions.limit {
                    self.client.metrics.limit_hits(Limit::Bindings).inc();
                    Err(Refusal::TooManySubscriptions)
                } else {
                    admit(&self.auth, identifier)
                };
                let admitted = admitted.and_then(|(credential, selector)| {
                    // One at a time, exactly: most sockets hold one subscription, and `Vec`'s
                    // doubling would keep room for three more on each.
                    subscriptions.items.reserve_exact(1);
                    subscriptions.items.push(Subscription {
                        identifier: identifier.as_str().into(),
                        credential,
                        selector,
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
                        Some(reply_frame(identifier, "confirm_subscription"))
                    }
                    Err(refusal) => {
                        debug!("actioncable: rejected a subscription: {refusal:?}");
                        Some(reply_frame(identifier, "reject_subscription"))
                    }
                }
            }
            Some("unsubscribe") => {
                subscriptions
                    .items
                    .retain(|s| *s.identifier != **identifier);
                subscriptions.items.shrink_to_fit();
                subscriptions.held.resize(subscriptions.footprint());
                None
            }
            _ => None,
        }
    }
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
        replies.extend(self.handle(text));
    }

    /// Binary frames are ignored, as Rails does.
    fn on_binary(&mut self, _data: &[u8], _replies: &mut Vec<Frame>) {}

    fn greeting(&self) -> Option<Frame> {
        Some(Frame::from_static(WELCOME))
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

    #[test]
    fn call_changes_by_type() {
        let change = |kind, account: Option<&str>| CallChange {
            kind,
            account: account.map(str::to_owned),
            call: json!({"id": "c1", "state": "ringing"}),
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
