//! The Kazoo Blackhole dialect (contract: blackhole.md): binding subscriptions, their replies
//! and errors, account rules, the event frame, and resuming from a position (delivery.md:
//! `since`, `recovered`).

use std::cell::RefCell;
use std::rc::Rc;
use std::task::{Context, Poll};

use serde_json::{Map, Value, json};

use crate::auth::{Auth, Credential};
use crate::dialect::{Session, kazoo_json, push_json_str};
use crate::event::Event;
use crate::frame::Frame;
use crate::history::{ArchiveError, Entry, History, PendingRead, Resume};
use crate::hub::{self, Client, Interest, RenderCache};
use crate::limits::Held;
use crate::matcher::{Binding, RoutingKey};
use crate::metrics::Limit;
use crate::rng::Rng;

/// Longest account id a subscription may name.
const MAX_ACCOUNT_LEN: usize = 64;

/// The account a subscription is for: one account, or `*`.
type Scope = heapless::String<MAX_ACCOUNT_LEN>;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Subscription {
    binding: Binding,
    scope: Scope,
}

/// A subscription on a socket, and the first offset from which it has delivered every event
/// it matches (live or replayed): a replay skips what the socket's subscriptions already
/// delivered.
#[derive(Debug)]
struct Subscribed {
    subscription: Subscription,
    covers_from: u64,
}

impl Subscribed {
    fn takes(&self, account: Option<&str>, key: &RoutingKey<'_>) -> bool {
        crate::event::visible(account, &self.subscription.scope)
            && self.subscription.binding.matches(key)
    }
}

/// A socket's bindings, in subscription order, at most `--max-bindings` of them, their room
/// held in the pool every socket's interest shares.
#[derive(Debug)]
pub struct Subscriptions {
    items: Vec<Subscribed>,
    limit: usize,
    /// The room of the bindings and of the socket's name and metadata, in the pool.
    held: Held,
    /// Bytes of the socket's name and metadata (kept by its session, held here).
    named: usize,
    /// Set by the first request with a valid token (or at once without `--auth`).
    credential: Option<Rc<Credential>>,
}

/// What one binding holds: it is stored inline (the binding's text and ends, the account).
const SUBSCRIPTION_BYTES: usize = std::mem::size_of::<Subscribed>();

impl Subscriptions {
    /// At most `limit` bindings, their room held in `held`'s pool.
    pub fn new(limit: usize, held: Held) -> Subscriptions {
        Subscriptions {
            // Grown on demand up to `limit`: reserving room for every binding up front would
            // cost each idle socket kilobytes it may never use.
            items: Vec::new(),
            limit,
            held,
            named: 0,
            credential: None,
        }
    }

    /// Holds room for `items` bindings and `named` bytes of name and metadata; `false`,
    /// changing nothing, when that would take the pool past its bound.
    fn hold(&mut self, items: usize, named: usize) -> bool {
        if !self.held.resize(items * SUBSCRIPTION_BYTES + named) {
            return false;
        }
        self.named = named;
        true
    }

    /// The frame for this socket, if one of its bindings matches an event its account may
    /// see. A socket whose bindings match twice gets the event once, under the first.
    pub fn route(
        &self,
        event: &Event,
        key: &RoutingKey<'_>,
        renders: &mut Renders,
    ) -> Option<Frame> {
        let held = self
            .items
            .iter()
            .find(|held| held.takes(event.account.as_deref(), key))?;
        Some(renders.frame(event, &held.subscription))
    }

    fn holds(&self, subscription: &Subscription) -> bool {
        self.items
            .iter()
            .any(|held| held.subscription == *subscription)
    }

    /// Every binding on the socket, each once, in subscription order.
    fn listing(&self) -> Vec<&str> {
        let mut listed: Vec<&str> = Vec::with_capacity(self.items.len());
        for held in &self.items {
            let text = held.subscription.binding.as_str();
            if !listed.contains(&text) {
                listed.push(text);
            }
        }
        listed
    }
}

/// The hub asks a socket's bindings for its frames; its session changes them.
impl Interest for RefCell<Subscriptions> {
    fn route(
        &self,
        event: &Event,
        key: &RoutingKey<'_>,
        renders: &mut hub::Renders,
        out: &mut Vec<Frame>,
    ) {
        out.extend(self.borrow().route(event, key, renders.cache()));
    }

    fn revoked(&self, auth: &Auth) -> bool {
        (self.borrow().credential.as_ref()).is_some_and(|credential| !auth.holds(credential))
    }
}

/// Event frames rendered for the current event, one per distinct (binding, account), and the
/// event's `data` as Blackhole sends it, rendered once for all of them.
#[derive(Debug, Default)]
pub struct Renders {
    frames: Vec<(Subscription, Frame)>,
    data: String,
}

impl RenderCache for Renders {
    fn clear(&mut self) {
        self.frames.clear();
        self.data.clear();
    }
}

impl Renders {
    fn frame(&mut self, event: &Event, subscription: &Subscription) -> Frame {
        if let Some((_, frame)) = self.frames.iter().find(|(s, _)| s == subscription) {
            return frame.clone();
        }
        if self.data.is_empty() {
            render_data(&mut self.data, event);
        }
        let frame = Frame::from(render_event(event, subscription, &self.data));
        self.frames.push((subscription.clone(), frame.clone()));
        frame
    }
}

/// An event's `data`: Kazoo's public, normalised form of a JSON object payload; any other JSON
/// as it was; a payload that is not JSON as a JSON string.
fn render_data(out: &mut String, event: &Event) {
    match &event.json {
        Some(Value::Object(payload)) => kazoo_json::push_public_normalized(out, payload),
        Some(_) => match std::str::from_utf8(&event.payload) {
            Ok(json) => out.push_str(json),
            Err(_) => push_json_str(out, &String::from_utf8_lossy(&event.payload)),
        },
        None => push_json_str(out, &String::from_utf8_lossy(&event.payload)),
    }
}

/// The event frame of blackhole.md around the rendered `data`.
fn render_event(event: &Event, subscription: &Subscription, data: &str) -> String {
    let binding = subscription.binding.as_str();
    let mut out =
        String::with_capacity(128 + 2 * binding.len() + event.routing_key.len() + data.len());
    out.push_str(r#"{"action":"event","subscribed_key":"#);
    push_json_str(&mut out, binding);
    out.push_str(r#","subscription_key":"#);
    let (first, rest) = match binding.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (binding, None),
    };
    let mut subscription_key = String::with_capacity(binding.len() + subscription.scope.len() + 1);
    subscription_key.push_str(first);
    subscription_key.push('.');
    subscription_key.push_str(&subscription.scope);
    if let Some(rest) = rest {
        subscription_key.push('.');
        subscription_key.push_str(rest);
    }
    push_json_str(&mut out, &subscription_key);
    out.push_str(r#","name":"#);
    push_json_str(&mut out, event.name());
    out.push_str(r#","routing_key":"#);
    push_json_str(&mut out, &event.routing_key);
    if let Some(position) = &event.position {
        use std::fmt::Write;
        out.push_str(r#","epoch":"#);
        push_json_str(&mut out, &position.epoch);
        let _ = write!(out, r#","offset":{}"#, position.offset);
    }
    // `data` last: it is the payload's bytes when they are JSON but not an object.
    out.push_str(r#","data":"#);
    out.push_str(data);
    out.push('}');
    out
}

/// The error a request without a token gets, and the last word to a socket that sent none
/// within `--auth-timeout`.
const TOKEN_REQUIRED: &str = "authentication token required";

/// What a socket is told when every socket's bindings together have taken their part of the
/// budget (`limits::INTEREST_PER_CLIENT`).
const NO_ROOM: &str = "no room for more bindings on this server";

/// One Blackhole socket's request handling.
pub struct BlackholeSession {
    client: Rc<Client>,
    /// The socket's bindings and credential, shared with the hub (`client.interest`).
    subscriptions: Rc<RefCell<Subscriptions>>,
    auth: Rc<Auth>,
    history: Rc<RefCell<History>>,
    /// The socket's friendly name and metadata, kept as JSON text (a parsed `Value` may take
    /// many times its text), their room held with the socket's bindings (`Subscriptions`).
    name: Option<Box<str>>,
    metadata: Option<Box<str>>,
    ids: Rng,
    /// Room for the frames a resume replayed until they are written (`history::replay_bytes`),
    /// and for the entries read from the archive until they are rendered.
    replaying: Held,
    /// A subscribe whose resume reads the archive (one at a time: the connection reads no
    /// request meanwhile), handled again once the read is done.
    waiting: Option<Box<Waiting>>,
    /// For that subscribe handled again: the offset the read stopped before, and what it read.
    archived: Option<(u64, Result<Vec<Entry>, ArchiveError>)>,
}

/// A subscribe waiting for the archive.
struct Waiting {
    request: Map<String, Value>,
    read: PendingRead,
}

impl BlackholeSession {
    pub fn new(
        client: Rc<Client>,
        subscriptions: Rc<RefCell<Subscriptions>>,
        auth: Rc<Auth>,
        history: Rc<RefCell<History>>,
    ) -> BlackholeSession {
        let replaying = history.borrow().replay_share();
        BlackholeSession {
            client,
            subscriptions,
            auth,
            history,
            replaying,
            waiting: None,
            archived: None,
            name: None,
            metadata: None,
            ids: Rng::from_clock(),
        }
    }

    fn reply(&mut self, request_id: Option<Value>, result: Result<Value, String>) -> Frame {
        let request_id = request_id.unwrap_or_else(|| Value::String(self.ids.hex32()));
        let reply = match result {
            Ok(data) => {
                json!({"action": "reply", "request_id": request_id, "status": "success", "data": data})
            }
            Err(error) => {
                json!({"action": "reply", "request_id": request_id, "status": "error", "data": {"errors": [error]}})
            }
        };
        Frame::from(reply.to_string())
    }

    /// Handles one request; a subscribe that resumes puts the events it replays in `replay`.
    fn handle(
        &mut self,
        request: &Map<String, Value>,
        replay: &mut Vec<Frame>,
    ) -> Result<Value, String> {
        let credential = self.authenticate(request)?;
        let data = request.get("data").and_then(Value::as_object);
        let given = |field: &str| {
            let value = request
                .get(field)
                .or_else(|| data.and_then(|d| d.get(field)));
            value.map(|value| value.to_string().into_boxed_str())
        };
        let (name, metadata) = (given("name"), given("metadata"));
        if name.is_some() || metadata.is_some() {
            let length = |given: &Option<Box<str>>, kept: &Option<Box<str>>| {
                given
                    .as_ref()
                    .or(kept.as_ref())
                    .map_or(0, |text| text.len())
            };
            let bytes = length(&name, &self.name) + length(&metadata, &self.metadata);
            let mut borrowed = self.subscriptions.borrow_mut();
            let subscriptions = &mut *borrowed;
            if !subscriptions.hold(subscriptions.items.capacity(), bytes) {
                self.client.metrics.limit_hits(Limit::Bindings).inc();
                return Err(NO_ROOM.to_owned());
            }
            self.name = name.or(self.name.take());
            self.metadata = metadata.or(self.metadata.take());
        }
        match request.get("action") {
            None => Ok(json!({})),
            Some(Value::String(action)) => match action.as_str() {
                "ping" => Ok(json!({"response": "pong"})),
                "subscribe" => self.subscribe(&credential, data, Some(replay)),
                "unsubscribe" => self.subscribe(&credential, data, None),
                other => Err(format!("unknown action {other}")),
            },
            Some(other) => Err(format!("unknown action {other}")),
        }
    }

    /// The socket's credential: the one it already proved, or the one its token names now.
    fn authenticate(&mut self, request: &Map<String, Value>) -> Result<Rc<Credential>, String> {
        if let Some(credential) = &self.subscriptions.borrow().credential {
            return Ok(credential.clone());
        }
        let token = request.get("auth_token").and_then(Value::as_str);
        if token.is_none() && self.auth.required() {
            return Err(TOKEN_REQUIRED.to_owned());
        }
        let credential = self
            .auth
            .by_secret(token)
            .ok_or_else(|| "failed to authenticate token".to_owned())?;
        self.subscriptions.borrow_mut().credential = Some(credential.clone());
        Ok(credential)
    }

    /// Subscribes (`replay` is where a resume's events go) or unsubscribes (`None`).
    fn subscribe(
        &mut self,
        credential: &Credential,
        data: Option<&Map<String, Value>>,
        replay: Option<&mut Vec<Frame>>,
    ) -> Result<Value, String> {
        let scope = scope_for(credential, data.and_then(|d| d.get("account_id")))?;
        let requested = requested_bindings(data)?;
        let since = match &replay {
            Some(_) => since(data)?,
            None => None,
        };
        let mut borrowed = self.subscriptions.borrow_mut();
        let subscriptions = &mut *borrowed;
        let requested_here = requested.iter().map(|binding| Subscription {
            binding: binding.clone(),
            scope: scope.clone(),
        });
        if let Some(replay) = replay {
            let mut wanted: Vec<Subscription> = Vec::new();
            for subscription in requested_here {
                if !wanted.contains(&subscription) {
                    wanted.push(subscription);
                }
            }
            let added = wanted.iter().filter(|s| !subscriptions.holds(s)).count();
            let room = subscriptions.items.len() + added;
            if room > subscriptions.limit {
                self.client.metrics.limit_hits(Limit::Bindings).inc();
                return Err(format!("too many bindings (limit {})", subscriptions.limit));
            }
            let room = room.max(subscriptions.items.capacity());
            if !subscriptions.hold(room, subscriptions.named) {
                self.client.metrics.limit_hits(Limit::Bindings).inc();
                return Err(NO_ROOM.to_owned());
            }
            let mut history = self.history.borrow_mut();
            history.expire(std::time::Instant::now());
            let Some((epoch, offset)) = since.as_ref() else {
                return Ok(self.subscribed(subscriptions, &history, wanted, added, None));
            };
            let offset = *offset;
            let resume = history.resume(epoch, offset);
            let (entries, resume) = match (resume, self.archived.take()) {
                (Resume::Archived { until }, None) => {
                    // Half the room for what the read holds, held from now on; the frames
                    // rendered from it take the rest.
                    let reserved = self.replaying.room() / 2;
                    let read = history.archive(offset + 1, until, reserved);
                    if let Some(read) = read {
                        let read = PendingRead::new(read, until, reserved, &mut self.replaying);
                        // Handled again once read (`poll_waiting`): nothing changes until then.
                        self.waiting = Some(Box::new(Waiting {
                            request: Map::new(),
                            read,
                        }));
                        return Ok(Value::Null);
                    }
                    (Vec::new(), Resume::Lost)
                }
                // Read: what the history holds from where the read stopped follows it.
                (Resume::Archived { .. }, Some((until, Ok(entries)))) => {
                    (entries, history.resume(epoch, until - 1))
                }
                (Resume::Archived { .. }, Some((_, Err(ArchiveError::TooLarge)))) => {
                    self.client.metrics.limit_hits(Limit::Replay).inc();
                    (Vec::new(), Resume::Lost)
                }
                (Resume::Archived { .. }, Some((_, Err(_)))) => (Vec::new(), Resume::Lost),
                (resume, _) => (Vec::new(), resume),
            };
            let recovered = match resume {
                Resume::Recovered { from } => {
                    let room = self.replaying.room();
                    let start = replay.len();
                    let entries = entries.iter().chain(history.entries_from(from));
                    let epoch = history.epoch();
                    let rendered =
                        render_replay(entries, epoch, subscriptions, &wanted, room, replay);
                    let held = self.replaying.bytes();
                    if rendered.is_some_and(|bytes| self.replaying.resize(held + bytes)) {
                        true
                    } else {
                        replay.truncate(start);
                        self.client.metrics.limit_hits(Limit::Replay).inc();
                        false
                    }
                }
                Resume::Archived { .. } | Resume::Lost => false,
            };
            let covers_from = recovered.then_some(offset + 1);
            return Ok(self.subscribed(subscriptions, &history, wanted, added, Some(covers_from)));
        }
        let mut unsubscribed: Vec<&str> = Vec::new();
        for (subscription, binding) in requested_here.zip(&requested) {
            let text = binding.as_str();
            if subscriptions.holds(&subscription) {
                subscriptions
                    .items
                    .retain(|held| held.subscription != subscription);
                if !unsubscribed.contains(&text) {
                    unsubscribed.push(text);
                }
            }
        }
        subscriptions.items.shrink_to_fit();
        subscriptions.hold(subscriptions.items.capacity(), subscriptions.named);
        Ok(json!({ "unsubscribed": unsubscribed, "subscribed": subscriptions.listing() }))
    }

    /// Adds `wanted` to the socket's subscriptions, covering from `covers_from` (a resume
    /// recovered: the offset after the client's) or the next event, and says so: the reply.
    /// `resumed` is `None` without a `since`, else what it recovered.
    fn subscribed(
        &self,
        subscriptions: &mut Subscriptions,
        history: &History,
        wanted: Vec<Subscription>,
        added: usize,
        resumed: Option<Option<u64>>,
    ) -> Value {
        let covers_from = resumed.flatten().unwrap_or(history.last_offset() + 1);
        // Exactly: a `Binding` is a few hundred bytes inline, and `Vec`'s doubling would
        // keep room for three more on every socket that subscribes once.
        subscriptions.items.reserve_exact(added);
        for subscription in wanted {
            match subscriptions
                .items
                .iter_mut()
                .find(|held| held.subscription == subscription)
            {
                Some(held) => held.covers_from = held.covers_from.min(covers_from),
                None => subscriptions.items.push(Subscribed {
                    subscription,
                    covers_from,
                }),
            }
        }
        // As Kazoo's bh_events: `subscribed` lists every binding now on the socket.
        let mut reply = json!({ "subscribed": subscriptions.listing() });
        if let Some(recovered) = resumed {
            // delivery.md: where the live events go on from, to resume from next time.
            reply["recovered"] = json!(recovered.is_some());
            reply["epoch"] = json!(&**history.epoch());
            reply["offset"] = json!(history.last_offset());
        }
        reply
    }
}

/// The account a request acts for: its `account_id` if the credential may use it, else the
/// credential's own.
fn scope_for(credential: &Credential, requested: Option<&Value>) -> Result<Scope, String> {
    let account = match requested {
        None | Some(Value::Null) => credential.account.as_str(),
        Some(Value::String(account)) if account == "*" && !credential.sees_all() => {
            return Err("unauthorized wildcard account id".to_owned());
        }
        Some(Value::String(account)) if credential.sees_all() || *account == credential.account => {
            account
        }
        Some(_) => return Err("unauthorized account id".to_owned()),
    };
    Scope::try_from(account).map_err(|_| "unauthorized account id".to_owned())
}

/// Renders, in order, the `entries` (the archive's, then the history's) that one of `wanted` takes and
/// that none of the socket's subscriptions already delivered: the rules and the frame of a
/// live event, each event once, under the first of `wanted` that takes it. Returns the bytes
/// rendered, or `None` as soon as they pass `room`.
fn render_replay<'a>(
    entries: impl Iterator<Item = &'a Entry>,
    epoch: &Rc<str>,
    subscriptions: &Subscriptions,
    wanted: &[Subscription],
    room: usize,
    replay: &mut Vec<Frame>,
) -> Option<usize> {
    let mut renders = Renders::default();
    let mut bytes = 0;
    for entry in entries {
        let Some(key) = RoutingKey::split(&entry.routing_key) else {
            continue;
        };
        let account = entry.account.as_deref();
        let delivered = subscriptions
            .items
            .iter()
            .any(|held| held.covers_from <= entry.offset && held.takes(account, &key));
        if delivered {
            continue;
        }
        let Some(subscription) = wanted
            .iter()
            .find(|s| crate::event::visible(account, &s.scope) && s.binding.matches(&key))
        else {
            continue;
        };
        renders.clear();
        let frame = renders.frame(&entry.to_event(epoch), subscription);
        bytes += frame.len();
        if bytes > room {
            return None;
        }
        replay.push(frame);
    }
    Some(bytes)
}

/// A subscribe's `since` (delivery.md): `{"epoch": "<epoch>", "offset": <offset>}`.
fn since(data: Option<&Map<String, Value>>) -> Result<Option<(String, u64)>, String> {
    let Some(since) = data.and_then(|d| d.get("since")) else {
        return Ok(None);
    };
    let epoch = since.get("epoch").and_then(Value::as_str);
    let offset = since.get("offset").and_then(Value::as_u64);
    match (epoch, offset) {
        (Some(epoch), Some(offset)) => Ok(Some((epoch.to_owned(), offset))),
        _ => Err(format!(
            "invalid since {since}: expected {{\"epoch\": string, \"offset\": integer}}"
        )),
    }
}

/// The bindings a request names (`binding` wins over `bindings`).
fn requested_bindings(data: Option<&Map<String, Value>>) -> Result<Vec<Binding>, String> {
    let missing = || "missing required keys : binding".to_owned();
    let data = data.ok_or_else(missing)?;
    let parse = |value: &Value| match value {
        Value::String(text) => Binding::parse(text).map_err(|_| format!("invalid binding {text}")),
        other => Err(format!("invalid binding {other}")),
    };
    match (data.get("binding"), data.get("bindings")) {
        (Some(binding), _) => Ok(vec![parse(binding)?]),
        (None, Some(Value::Array(list))) if !list.is_empty() => list.iter().map(parse).collect(),
        (None, Some(Value::Array(_))) | (None, None) => Err(missing()),
        (None, Some(other)) => Err(format!("invalid binding {other}")),
    }
}

impl BlackholeSession {
    /// Handles one request and puts the reply, then what it replays, in `replies`; nothing
    /// when the request waits for the archive (`waiting`).
    fn answer(&mut self, request: Map<String, Value>, replies: &mut Vec<Frame>) {
        let request_id = match request.get("request_id") {
            Some(id @ (Value::String(_) | Value::Number(_))) => Some(id.clone()),
            _ => None,
        };
        let mut replay = Vec::new();
        let result = self.handle(&request, &mut replay);
        if let Some(waiting) = &mut self.waiting {
            waiting.request = request;
            return;
        }
        replies.push(self.reply(request_id, result));
        // The reply first, then what it replays: later events are queued by the hub,
        // and the connection writes replies before queued frames.
        replies.append(&mut replay);
    }
}

impl Session for BlackholeSession {
    fn on_text(&mut self, text: &str, replies: &mut Vec<Frame>) {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(request)) => self.answer(request, replies),
            _ => replies.push(self.reply(None, Err("invalid JSON".to_owned()))),
        }
    }

    /// A subscribe waiting for the archive is handled again once the read is done: its
    /// entries, held in the replay room until rendered, come before the history's.
    fn poll_waiting(&mut self, cx: &mut Context<'_>, replies: &mut Vec<Frame>) -> Poll<()> {
        let Some(waiting) = &mut self.waiting else {
            return Poll::Ready(());
        };
        let Poll::Ready((read, charged)) = waiting.read.poll(cx, &mut self.replaying) else {
            return Poll::Pending;
        };
        let waiting = self.waiting.take().expect("polled just above");
        self.archived = Some((waiting.read.until, read));
        self.answer(waiting.request, replies);
        // The entries are rendered (or given up) by now.
        self.archived = None;
        self.replaying
            .resize(self.replaying.bytes().saturating_sub(charged));
        Poll::Ready(())
    }

    fn on_rate_limited(&mut self, text: Option<&str>, replies: &mut Vec<Frame>) {
        let request_id = text
            .and_then(|text| serde_json::from_str::<Value>(text).ok())
            .and_then(|request| match request.get("request_id") {
                Some(id @ (Value::String(_) | Value::Number(_))) => Some(id.clone()),
                _ => None,
            });
        replies.push(self.reply(request_id, Err("rate limit exceeded".to_owned())));
    }

    fn on_binary(&mut self, _data: &[u8], replies: &mut Vec<Frame>) {
        replies.push(self.reply(None, Err("invalid JSON".to_owned())));
    }

    fn replies_written(&mut self) {
        self.replaying.resize(0);
    }

    fn authenticated(&self) -> bool {
        self.subscriptions.borrow().credential.is_some()
    }

    fn auth_refusal(&mut self) -> Option<Frame> {
        Some(self.reply(None, Err(TOKEN_REQUIRED.to_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli;
    use crate::dialect_label::Dialect;
    use crate::hub::Hub;
    use crate::metrics::Metrics;

    /// Sends one request; returns the reply and the frames that followed it, parsed.
    fn ask(session: &mut BlackholeSession, request: Value) -> (Value, Vec<Value>) {
        let mut replies = Vec::new();
        session.on_text(&request.to_string(), &mut replies);
        let mut frames = replies
            .iter()
            .map(|frame| serde_json::from_str::<Value>(frame).unwrap());
        let reply = frames.next().unwrap();
        (reply, frames.collect())
    }

    /// A Blackhole socket registered in `hub`, as `server` makes one (without `--auth`).
    fn socket(
        hub: &Hub,
        subscriptions: Subscriptions,
        history: &Rc<RefCell<History>>,
    ) -> (Rc<Client>, BlackholeSession) {
        let subscriptions = Rc::new(RefCell::new(subscriptions));
        let client = hub
            .register(Dialect::Blackhole, subscriptions.clone())
            .unwrap();
        let auth = Rc::new(Auth::open());
        let session = BlackholeSession::new(client.clone(), subscriptions, auth, history.clone());
        (client, session)
    }

    fn offsets(frames: &[Value]) -> Vec<u64> {
        frames
            .iter()
            .map(|f| f["offset"].as_u64().unwrap())
            .collect()
    }

    /// Sends one request that waits for the archive; returns the reply and what followed it
    /// once the read is done.
    fn ask_waiting(session: &mut BlackholeSession, request: Value) -> (Value, Vec<Value>) {
        let mut replies = Vec::new();
        session.on_text(&request.to_string(), &mut replies);
        assert!(replies.is_empty(), "nothing before the archive is read");
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(session.poll_waiting(&mut cx, &mut replies).is_ready());
        assert!(session.waiting.is_none() && session.archived.is_none());
        let mut frames = replies
            .iter()
            .map(|frame| serde_json::from_str::<Value>(frame).unwrap());
        let reply = frames.next().unwrap();
        (reply, frames.collect())
    }

    #[test]
    fn a_resume_older_than_the_history_replays_the_archive_then_the_history_once() {
        let limits = cli::limits_from(&["--history-bytes", "1200"]);
        let hub = Hub::new(limits, Rc::new(Metrics::default()));
        let history = Rc::new(RefCell::new(History::new(&limits)));
        let mut recorded = Vec::new();
        for n in 1..=30u64 {
            let account = if n % 3 == 0 { "b" } else { "a" };
            let payload = format!(r#"{{"Account-ID":"{account}","n":{n}}}"#);
            let mut event = Event::new(format!("call.E.{n}"), payload.into_bytes().into());
            history.borrow_mut().record(&mut event);
            recorded.push((n, event));
        }
        let oldest = history.borrow().entries_from(0).next().unwrap().offset;
        assert!(oldest > 20, "the history lost the first events: {oldest}");
        let epoch = history.borrow().epoch().to_string();
        let pool = crate::limits::BytePool::new(usize::MAX);
        let (_client, mut session) = socket(&hub, Subscriptions::new(8, pool.share()), &history);
        let resume = |offset: u64| {
            json!({"action": "subscribe", "data": {"binding": "call.#", "account_id": "a",
                   "since": {"epoch": epoch, "offset": offset}}})
        };
        // Without an archive: not recovered, as before.
        let (reply, replayed) = ask(&mut session, resume(1));
        assert_eq!(reply["data"]["recovered"], false);
        assert!(replayed.is_empty());

        history
            .borrow_mut()
            .set_archive(Rc::new(crate::history::Recorded(recorded)));
        let (_client, mut session) = socket(&hub, Subscriptions::new(8, pool.share()), &history);
        let from = oldest - 4;
        let (reply, replayed) = ask_waiting(&mut session, resume(from));
        assert_eq!(reply["data"]["recovered"], true, "{reply}");
        assert_eq!(reply["data"]["offset"], 30);
        let expected: Vec<u64> = (from + 1..=30).filter(|n| n % 3 != 0).collect();
        assert_eq!(
            offsets(&replayed),
            expected,
            "account a's, from the archive then the history, once each"
        );
        assert!(session.replaying.bytes() > 0, "the frames hold their room");
        session.replies_written();
        assert_eq!(session.replaying.bytes(), 0);

        // More than the replay room: not recovered, counted.
        let hits = hub.metrics().limit_hits(Limit::Replay).get();
        let (reply, replayed) = ask_waiting(&mut session, {
            let mut resume = resume(0);
            resume["data"]["binding"] = json!("#");
            resume["data"]["account_id"] = json!("*");
            resume
        });
        assert_eq!(reply["data"]["recovered"], false, "{reply}");
        assert!(replayed.is_empty());
        assert_eq!(hub.metrics().limit_hits(Limit::Replay).get(), hits + 1);
    }

    #[test]
    fn a_subscribe_since_replays_what_its_bindings_and_account_take_each_once() {
        let hub = Hub::new(cli::limits_from(&[]), Rc::new(Metrics::default()));
        let history = Rc::new(RefCell::new(History::new(hub.limits())));
        let pool = crate::limits::BytePool::new(usize::MAX);
        let (client, mut session) = socket(&hub, Subscriptions::new(8, pool.share()), &history);
        let publish = |key: &str, account: &str| {
            let payload = format!(r#"{{"Account-ID":"{account}","Event-Name":"E"}}"#);
            let mut event = Event::new(key.to_owned(), payload.into_bytes().into());
            history.borrow_mut().record(&mut event);
            hub.publish(&event);
        };
        publish("call.CREATE.1", "a");
        publish("call.CREATE.2", "b");
        publish("other.x", "a");
        publish("call.DESTROY.1", "a");
        let epoch = history.borrow().epoch().to_string();

        let (reply, replayed) = ask(
            &mut session,
            json!({"action": "subscribe", "data": {"binding": "call.#", "account_id": "a",
                   "since": {"epoch": epoch, "offset": 0}}}),
        );
        assert_eq!(
            reply["data"],
            json!({"subscribed": ["call.#"], "recovered": true, "epoch": epoch, "offset": 4})
        );
        assert_eq!(offsets(&replayed), [1, 4], "account b's event is not a's");
        assert_eq!(replayed[1]["routing_key"], "call.DESTROY.1");
        assert_eq!(replayed[1]["epoch"], json!(epoch));
        assert_eq!(replayed[1]["subscribed_key"], "call.#");

        // `#` takes every event of a, but `call.#` already delivered 1 and 4.
        let (reply, replayed) = ask(
            &mut session,
            json!({"action": "subscribe", "data": {"binding": "#", "account_id": "a",
                   "since": {"epoch": epoch, "offset": 0}}}),
        );
        assert_eq!(reply["data"]["subscribed"], json!(["call.#", "#"]));
        assert_eq!(offsets(&replayed), [3]);

        // Live from here: once, under the first binding that takes it.
        publish("call.HANGUP.1", "a");
        let live: Vec<Value> = std::iter::from_fn(|| client.pop())
            .map(|frame| serde_json::from_str(&frame).unwrap())
            .collect();
        assert_eq!(offsets(&live), [5]);
        assert_eq!(live[0]["subscribed_key"], "call.#");

        for (since, why) in [
            (json!({"epoch": "other", "offset": 0}), "another epoch"),
            (
                json!({"epoch": epoch, "offset": 6}),
                "an offset not yet given",
            ),
        ] {
            let (reply, replayed) = ask(
                &mut session,
                json!({"action": "subscribe", "data": {"binding": "x.y", "since": since}}),
            );
            assert_eq!(reply["data"]["recovered"], false, "{why}");
            assert_eq!(reply["data"]["offset"], 5, "{why}");
            assert!(replayed.is_empty(), "{why}");
        }
        let (reply, _) = ask(
            &mut session,
            json!({"action": "subscribe", "data": {"binding": "x.y", "since": {"offset": 1}}}),
        );
        assert_eq!(reply["status"], "error", "{reply}");
    }

    #[test]
    fn replays_waiting_to_be_written_share_a_bounded_room_and_give_it_back() {
        // A history of 8 KiB: replays may hold 16 KiB until written.
        let hub = Hub::new(
            cli::limits_from(&["--history-bytes", "8192"]),
            Rc::new(Metrics::default()),
        );
        let history = Rc::new(RefCell::new(History::new(hub.limits())));
        let pool = crate::limits::BytePool::new(usize::MAX);
        let mut sockets: Vec<BlackholeSession> = (0..4)
            .map(|_| socket(&hub, Subscriptions::new(8, pool.share()), &history).1)
            .collect();
        // Five events of 1 KiB: each socket's replay is about 5.5 KiB of frames.
        for n in 0..5 {
            let payload = format!(r#"{{"n":{n},"filler":"{}"}}"#, "x".repeat(1024));
            let mut event = Event::new(format!("call.E.{n}"), payload.into_bytes().into());
            history.borrow_mut().record(&mut event);
        }
        let epoch = history.borrow().epoch().to_string();
        let resume = json!({"action": "subscribe", "data": {"binding": "call.#",
                            "since": {"epoch": epoch, "offset": 0}}});
        let resume_on = |session: &mut BlackholeSession| ask(session, resume.clone());
        for session in &mut sockets[..2] {
            let (reply, replayed) = resume_on(session);
            assert_eq!(reply["data"]["recovered"], true, "{reply}");
            assert_eq!(offsets(&replayed), [1, 2, 3, 4, 5]);
        }
        // The third does not fit beside the two waiting to be written: told to resync.
        let (reply, replayed) = resume_on(&mut sockets[2]);
        assert_eq!(reply["data"]["recovered"], false, "{reply}");
        assert!(replayed.is_empty());
        assert_eq!(hub.metrics().limit_hits(Limit::Replay).get(), 1);
        // Once the first socket's replay is written, its room serves the next resume.
        sockets[0].replies_written();
        let (reply, replayed) = resume_on(&mut sockets[3]);
        assert_eq!(reply["data"]["recovered"], true, "{reply}");
        assert_eq!(replayed.len(), 5);
    }

    #[test]
    fn numeric_request_ids_come_back_as_the_number_sent() {
        // Found by fuzz/blackhole_request: serde_json's default float parsing may be a unit in
        // the last place off, so `1.3077777777777777e+33` came back as `...775e+33` and a
        // client matching replies by id missed its reply (Cargo.toml: `float_roundtrip`).
        // The default limits, as the command line gives them.
        let hub = Hub::new(cli::limits_from(&[]), Rc::new(Metrics::default()));
        let pool = crate::limits::BytePool::new(usize::MAX);
        let history = Rc::new(RefCell::new(History::new(hub.limits())));
        let (_, mut session) = socket(&hub, Subscriptions::new(1, pool.share()), &history);
        for id in [
            "1.3077777777777777e+33",
            "1307777777777777777777777777777777",
            "0.30000000000000004",
            "-2.2250738585072014e-308",
            "18446744073709551615",
            "7",
        ] {
            let mut replies = Vec::new();
            session.on_text(
                &format!(r#"{{"action":"ping","request_id":{id}}}"#),
                &mut replies,
            );
            // Read the echoed number as a client would, with an exact parser (not serde_json's).
            let echoed = replies[0]
                .split_once(r#""request_id":"#)
                .and_then(|(_, rest)| rest.split(',').next())
                .unwrap();
            assert_eq!(
                echoed.parse::<f64>(),
                id.parse::<f64>(),
                "{id} came back as {echoed}"
            );
        }
    }

    #[test]
    fn every_socket_s_bindings_share_one_pool_and_give_their_room_back() {
        use crate::limits::BytePool;
        let limits = cli::limits_from(&[]);
        let hub = Hub::new(limits, Rc::new(Metrics::default()));
        // Room for three bindings in all, and a short name.
        let pool = BytePool::new(3 * SUBSCRIPTION_BYTES + 16);
        let socket = || {
            let history = Rc::new(RefCell::new(History::new(hub.limits())));
            socket(&hub, Subscriptions::new(32, pool.share()), &history)
        };
        let ((first, mut one), (second, mut two)) = (socket(), socket());
        let ask = |session: &mut BlackholeSession, request: Value| -> Value {
            let mut replies = Vec::new();
            session.on_text(&request.to_string(), &mut replies);
            serde_json::from_str(&replies[0]).unwrap()
        };
        let subscribe = |bindings: &[&str]| json!({"action": "subscribe", "request_id": 1, "data": {"bindings": bindings}});
        let reply = ask(&mut one, subscribe(&["call.a", "call.b"]));
        assert_eq!(reply["status"], "success", "{reply}");
        let reply = ask(&mut two, subscribe(&["call.c", "call.d"]));
        assert_eq!(reply["data"]["errors"][0], NO_ROOM, "{reply}");
        let reply = ask(&mut two, subscribe(&["call.c"]));
        assert_eq!(reply["status"], "success", "{reply}");
        assert_eq!(pool.used(), 3 * SUBSCRIPTION_BYTES);
        let reply = ask(&mut one, json!({"action": "ping", "name": "x".repeat(30)}));
        assert_eq!(reply["data"]["errors"][0], NO_ROOM, "{reply}");
        let reply = ask(&mut one, json!({"action": "ping", "name": "desk"}));
        assert_eq!(reply["status"], "success", "{reply}");
        // Unsubscribing gives the room back; a socket that goes gives back all it held.
        let unsubscribe = json!({"action": "unsubscribe", "data": {"binding": "call.a"}});
        assert_eq!(ask(&mut one, unsubscribe)["status"], "success");
        assert_eq!(ask(&mut two, subscribe(&["call.d"]))["status"], "success");
        drop(two);
        hub.unregister(&second);
        drop(second);
        assert_eq!(pool.used(), SUBSCRIPTION_BYTES + "\"desk\"".len());
        drop(one);
        hub.unregister(&first);
        drop(first);
        assert_eq!(pool.used(), 0);
    }
}
