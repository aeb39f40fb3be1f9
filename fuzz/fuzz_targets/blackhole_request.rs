//! The Blackhole dialect as production runs it: a `BlackholeSession` on a client registered in
//! the hub of an `App`, fed the input's lines as requests (`Script`), with events delivered
//! through `App::ingest` in between. A model written from blackhole.md and delivery.md
//! predicts every reply, every event frame and every replay of a `since`, and the two must
//! agree.

#![no_main]

use std::cell::RefCell;
use std::rc::Rc;

use callwire::dialect::Session;
use callwire::dialect::blackhole::{BlackholeSession, Subscriptions};
use callwire::dialect_label::Dialect;
use callwire::matcher::{MAX_BINDING_LEN, MAX_BINDING_SEGMENTS, MAX_KEY_SEGMENTS};
use callwire_fuzz::{
    CREDENTIALS, LIMITS, Script, Step, app, auth, blackhole_data, drain, event, json,
    reference_account, reference_matches, visible,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

/// What blackhole.md says a socket holds.
struct Model {
    required: bool,
    /// The account of the credential the socket proved.
    account: Option<String>,
    /// (binding, scope, the first offset it delivered from), in subscription order.
    items: Vec<(String, String, u64)>,
    /// The bridge's epoch, and every event delivered so far (offset `i + 1` at index `i`):
    /// the fuzz limits' history never drops one.
    epoch: String,
    events: Vec<Delivered>,
    /// The frames the last subscribe replays, in order.
    replay: Vec<Value>,
}

/// One event as the model remembers it.
struct Delivered {
    key: String,
    account: Option<String>,
    name: String,
    data: Value,
}

impl Delivered {
    /// Whether `(binding, scope)` takes it: visible, routable, matching.
    fn taken_by(&self, binding: &str, scope: &str) -> bool {
        self.key.split('.').count() <= MAX_KEY_SEGMENTS
            && visible(self.account.as_deref(), scope)
            && reference_matches(binding, &self.key)
    }

    /// Its frame under `(binding, scope)` (blackhole.md, delivery.md).
    fn frame(&self, binding: &str, scope: &str, epoch: &str, offset: u64) -> Value {
        let subscription_key = match binding.split_once('.') {
            Some((first, rest)) => format!("{first}.{scope}.{rest}"),
            None => format!("{binding}.{scope}"),
        };
        json!({"action": "event", "subscribed_key": binding,
               "subscription_key": subscription_key, "name": self.name,
               "routing_key": self.key, "epoch": epoch, "offset": offset, "data": self.data})
    }
}

fn valid_binding(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_BINDING_LEN
        && text.split('.').count() <= MAX_BINDING_SEGMENTS
}

impl Model {
    /// The reply's `status` and `data` for one request object.
    fn request(&mut self, request: &Map<String, Value>) -> Result<Value, String> {
        let account = match &self.account {
            Some(account) => account.clone(),
            None if !self.required => "*".to_owned(),
            None => {
                let token = request
                    .get("auth_token")
                    .and_then(Value::as_str)
                    .ok_or("authentication token required")?;
                CREDENTIALS
                    .iter()
                    .find(|(_, secret, _)| *secret == token)
                    .map(|(_, _, account)| (*account).to_owned())
                    .ok_or("failed to authenticate token")?
            }
        };
        self.account = Some(account.clone());
        let data = request.get("data").and_then(Value::as_object);
        match request.get("action") {
            None => Ok(json!({})),
            Some(Value::String(action)) if action == "ping" => Ok(json!({"response": "pong"})),
            Some(Value::String(action)) if action == "subscribe" || action == "unsubscribe" => {
                self.subscribe(&account, data, action == "subscribe")
            }
            Some(Value::String(action)) => Err(format!("unknown action {action}")),
            Some(other) => Err(format!("unknown action {other}")),
        }
    }

    fn subscribe(
        &mut self,
        account: &str,
        data: Option<&Map<String, Value>>,
        subscribe: bool,
    ) -> Result<Value, String> {
        let scope = match data.and_then(|d| d.get("account_id")) {
            None | Some(Value::Null) => account,
            Some(Value::String(wanted)) if wanted == "*" && account != "*" => {
                return Err("unauthorized wildcard account id".to_owned());
            }
            Some(Value::String(wanted)) if account == "*" || wanted == account => wanted,
            Some(_) => return Err("unauthorized account id".to_owned()),
        };
        if scope.len() > 64 {
            return Err("unauthorized account id".to_owned());
        }
        let missing = || "missing required keys : binding".to_owned();
        let data = data.ok_or_else(missing)?;
        let one = |value: &Value| match value {
            Value::String(text) if valid_binding(text) => Ok(text.clone()),
            Value::String(text) => Err(format!("invalid binding {text}")),
            other => Err(format!("invalid binding {other}")),
        };
        let requested = match (data.get("binding"), data.get("bindings")) {
            (Some(binding), _) => vec![one(binding)?],
            (None, Some(Value::Array(list))) if !list.is_empty() => {
                list.iter().map(one).collect::<Result<Vec<_>, _>>()?
            }
            (None, Some(Value::Array(_)) | None) => return Err(missing()),
            (None, Some(other)) => return Err(format!("invalid binding {other}")),
        };
        let since = match data.get("since") {
            Some(since) if subscribe => {
                match (
                    since.get("epoch").and_then(Value::as_str),
                    since.get("offset").and_then(Value::as_u64),
                ) {
                    (Some(epoch), Some(offset)) => Some((epoch.to_owned(), offset)),
                    _ => {
                        return Err(format!(
                            "invalid since {since}: expected {{\"epoch\": string, \"offset\": integer}}"
                        ));
                    }
                }
            }
            _ => None,
        };
        let pairs: Vec<(String, String)> = requested
            .iter()
            .map(|binding| (binding.clone(), scope.to_owned()))
            .collect();
        // Kazoo's bh_events: `subscribed` lists every binding on the socket, each once, in
        // subscription order; `unsubscribed` the bindings this request removed.
        let mut unsubscribed: Vec<String> = Vec::new();
        let holds = |items: &[(String, String, u64)], pair: &(String, String)| {
            items.iter().any(|(b, s, _)| *b == pair.0 && *s == pair.1)
        };
        let last = self.events.len() as u64;
        let mut recovered = None;
        if subscribe {
            let mut wanted: Vec<(String, String)> = Vec::new();
            for pair in pairs {
                if !wanted.contains(&pair) {
                    wanted.push(pair);
                }
            }
            let added = wanted.iter().filter(|p| !holds(&self.items, p)).count();
            if self.items.len() + added > LIMITS.max_bindings {
                return Err(format!("too many bindings (limit {})", LIMITS.max_bindings));
            }
            // delivery.md: every event after the position, each once, that a new binding takes
            // and no binding the socket held has already delivered.
            let mut covers_from = last + 1;
            if let Some((epoch, offset)) = &since {
                let ok = *epoch == self.epoch && *offset <= last;
                if ok {
                    for (index, event) in self.events.iter().enumerate().skip(*offset as usize) {
                        let at = index as u64 + 1;
                        let delivered = self
                            .items
                            .iter()
                            .any(|(b, s, from)| *from <= at && event.taken_by(b, s));
                        let taker = wanted.iter().find(|(b, s)| event.taken_by(b, s));
                        if let (false, Some((binding, scope))) = (delivered, taker) {
                            self.replay
                                .push(event.frame(binding, scope, &self.epoch, at));
                        }
                    }
                    covers_from = offset + 1;
                }
                recovered = Some(ok);
            }
            for (binding, scope) in wanted {
                match self
                    .items
                    .iter_mut()
                    .find(|(b, s, _)| *b == binding && *s == scope)
                {
                    Some(item) => item.2 = item.2.min(covers_from),
                    None => self.items.push((binding, scope, covers_from)),
                }
            }
        } else {
            for pair in &pairs {
                if holds(&self.items, pair) && !unsubscribed.contains(&pair.0) {
                    unsubscribed.push(pair.0.clone());
                }
            }
            self.items
                .retain(|(b, s, _)| !pairs.iter().any(|p| p.0 == *b && p.1 == *s));
        }
        let mut listing: Vec<&str> = Vec::new();
        for (binding, _, _) in &self.items {
            if !listing.contains(&binding.as_str()) {
                listing.push(binding);
            }
        }
        if subscribe {
            let mut reply = json!({ "subscribed": listing });
            if let Some(recovered) = recovered {
                reply["recovered"] = json!(recovered);
                reply["epoch"] = json!(self.epoch);
                reply["offset"] = json!(last);
            }
            Ok(reply)
        } else {
            Ok(json!({ "unsubscribed": unsubscribed, "subscribed": listing }))
        }
    }
}

/// Checks a reply frame: one JSON object with the request's id (or a generated one) and the
/// status and data the model expects.
fn check_reply(frame: &str, request_id: Option<&Value>, expected: Result<Value, String>) {
    let reply = json(frame);
    assert_eq!(reply["action"], "reply", "{frame}");
    match request_id {
        Some(id) => assert_eq!(&reply["request_id"], id, "{frame}"),
        None => {
            let id = reply["request_id"].as_str().unwrap_or_default();
            assert!(
                id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "generated request_id: {frame}"
            );
        }
    }
    let (status, data) = match expected {
        Ok(data) => ("success", data),
        Err(error) => ("error", json!({ "errors": [error] })),
    };
    assert_eq!(reply["status"], status, "{frame}");
    assert_eq!(reply["data"], data, "{frame}");
}

fuzz_target!(|data: &[u8]| {
    let script = Script::parse(data);
    let app = app(auth(script.auth));
    let subscriptions = Subscriptions::new(LIMITS.max_bindings, app.interest.share());
    let subscriptions = Rc::new(RefCell::new(subscriptions));
    let client = app
        .hub
        .register(Dialect::Blackhole, subscriptions.clone())
        .expect("a free slot");
    let mut session = BlackholeSession::new(
        client.clone(),
        subscriptions,
        app.auth.clone(),
        app.history.clone(),
    );
    let mut model = Model {
        required: script.auth,
        account: None,
        items: Vec::new(),
        epoch: app.history.borrow().epoch().to_string(),
        events: Vec::new(),
        replay: Vec::new(),
    };
    let mut replies = Vec::new();
    for step in script.steps {
        match step {
            Step::Text(text) => {
                session.on_text(text, &mut replies);
                match serde_json::from_str::<Value>(text) {
                    Ok(Value::Object(request)) => {
                        let id = request
                            .get("request_id")
                            .filter(|id| id.is_string() || id.is_number());
                        model.replay.clear();
                        check_reply(&replies[0], id, model.request(&request));
                    }
                    _ => check_reply(&replies[0], None, Err("invalid JSON".to_owned())),
                }
                // The reply first, then the replay.
                let replayed: Vec<Value> = replies[1..].iter().map(|frame| json(frame)).collect();
                assert_eq!(replayed, model.replay, "{text}");
                model.replay.clear();
            }
            Step::Binary(bytes) => {
                session.on_binary(bytes, &mut replies);
                assert_eq!(replies.len(), 1, "one reply per binary message");
                check_reply(&replies[0], None, Err("invalid JSON".to_owned()));
            }
            Step::Event { key, payload } => {
                let event = event(key, payload);
                let account = reference_account(event.json.as_ref());
                assert_eq!(
                    event.account,
                    account,
                    "{:?}",
                    String::from_utf8_lossy(payload)
                );
                let name = event
                    .json
                    .as_ref()
                    .and_then(|json| {
                        ["Event-Name", "event_name", "type", "event"]
                            .iter()
                            .find_map(|field| json.get(field)?.as_str())
                    })
                    .unwrap_or_else(|| key.split('.').nth(1).unwrap_or(""))
                    .to_owned();
                let data = blackhole_data(payload);
                app.ingest(event);
                let frames = drain(&client);
                let delivered = Delivered {
                    key: key.to_owned(),
                    account,
                    name,
                    data,
                };
                model.events.push(delivered);
                let (delivered, offset) =
                    (&model.events[model.events.len() - 1], model.events.len());
                // The first subscription that matches and may see the event, if any.
                let expected = model
                    .items
                    .iter()
                    .find(|(binding, scope, _)| delivered.taken_by(binding, scope));
                assert_eq!(frames.len(), usize::from(expected.is_some()), "{key:?}");
                if let (Some((binding, scope, _)), Some(frame)) = (expected, frames.first()) {
                    assert_eq!(
                        json(frame),
                        delivered.frame(binding, scope, &model.epoch, offset as u64),
                        "{frame}"
                    );
                }
            }
        }
        replies.clear();
        assert!(client.pop().is_none(), "a request queued a frame");
    }
    app.hub.unregister(&client);
});
