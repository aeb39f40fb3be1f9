//! The Blackhole dialect as production runs it: a `BlackholeSession` on a client registered in
//! the hub of an `App`, fed the input's lines as requests (`Script`), with events delivered
//! through `App::deliver` in between. A model written from blackhole.md predicts every reply
//! and every event frame, and the two must agree.

#![no_main]

use callwire::dialect::Dialect;
use callwire::dialect::Session;
use callwire::dialect::blackhole::{BlackholeSession, Subscriptions};
use callwire::hub::Interest;
use callwire::matcher::{MAX_BINDING_LEN, MAX_BINDING_SEGMENTS, MAX_KEY_SEGMENTS};
use callwire_fuzz::{
    CREDENTIALS, LIMITS, Script, Step, app, auth, drain, event, json, reference_account,
    reference_matches, visible,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

/// What blackhole.md says a socket holds.
struct Model {
    required: bool,
    /// The account of the credential the socket proved.
    account: Option<String>,
    /// (binding, scope), in subscription order.
    items: Vec<(String, String)>,
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
        let pairs: Vec<(String, String)> = requested
            .iter()
            .map(|binding| (binding.clone(), scope.to_owned()))
            .collect();
        // Kazoo's bh_events: `subscribed` lists every binding on the socket, each once, in
        // subscription order; `unsubscribed` the bindings this request removed.
        let mut unsubscribed: Vec<String> = Vec::new();
        if subscribe {
            let mut added: Vec<(String, String)> = Vec::new();
            for pair in pairs {
                if !self.items.contains(&pair) && !added.contains(&pair) {
                    added.push(pair);
                }
            }
            if self.items.len() + added.len() > LIMITS.max_bindings {
                return Err(format!("too many bindings (limit {})", LIMITS.max_bindings));
            }
            self.items.extend(added);
        } else {
            for pair in &pairs {
                if self.items.contains(pair) && !unsubscribed.contains(&pair.0) {
                    unsubscribed.push(pair.0.clone());
                }
            }
            self.items.retain(|item| !pairs.contains(item));
        }
        let mut listing: Vec<&str> = Vec::new();
        for (binding, _) in &self.items {
            if !listing.contains(&binding.as_str()) {
                listing.push(binding);
            }
        }
        if subscribe {
            Ok(json!({ "subscribed": listing }))
        } else {
            Ok(json!({ "unsubscribed": unsubscribed, "subscribed": listing }))
        }
    }
}

/// An event's `data` as blackhole.md says Kazoo sends it: for an object payload, Kazoo's
/// optional default headers (but `Account-ID` and `Call-ID`) deleted at the top level, then
/// every key of every object (inside arrays too) with `-` as `_` and the ASCII and Latin-1
/// capitals in lower case, members whose value is null dropped; any other JSON as it was; a
/// payload that is not JSON as a string.
fn reference_data(json: Option<&Value>, payload: &[u8]) -> Value {
    const PRIVATE: [&str; 14] = [
        "Access-Group", "Defer-Response", "Destination-Server", "Geo-Location", "Log-ID",
        "Node", "Queue-ID", "Raw-Headers", "Server-ID", "Request-From-PID", "Reply-To-PID",
        "AMQP-Broker", "AMQP-Zone", "Deliver-To-PID",
    ];
    fn key(text: &str) -> String {
        text.chars()
            .map(|c| match c {
                '-' => '_',
                'A'..='Z' | 'À'..='Þ' if c != '×' => c.to_lowercase().next().unwrap_or(c),
                other => other,
            })
            .collect()
    }
    fn value(v: &Value) -> Value {
        match v {
            Value::Object(map) => object(map, &[]),
            Value::Array(items) => Value::Array(items.iter().map(value).collect()),
            other => other.clone(),
        }
    }
    fn object(map: &Map<String, Value>, skip: &[&str]) -> Value {
        let mut out = Map::new();
        for (k, v) in map {
            if !v.is_null() && !skip.contains(&k.as_str()) {
                out.insert(key(k), value(v));
            }
        }
        Value::Object(out)
    }
    match json {
        Some(Value::Object(map)) => object(map, &PRIVATE),
        Some(other) => other.clone(),
        None => Value::String(String::from_utf8_lossy(payload).into_owned()),
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
    let interest = Interest::Blackhole(Subscriptions::new(
        LIMITS.max_bindings,
        app.interest.share(),
    ));
    let client = app
        .hub
        .register(Dialect::Blackhole, None, interest)
        .expect("a free slot");
    let mut session = BlackholeSession::new(client.clone(), app.auth.clone());
    let mut model = Model {
        required: script.auth,
        account: None,
        items: Vec::new(),
    };
    let mut replies = Vec::new();
    for step in script.steps {
        match step {
            Step::Text(text) => {
                session.on_text(text, &mut replies);
                assert_eq!(replies.len(), 1, "one reply per request");
                match serde_json::from_str::<Value>(text) {
                    Ok(Value::Object(request)) => {
                        let id = request
                            .get("request_id")
                            .filter(|id| id.is_string() || id.is_number());
                        check_reply(&replies[0], id, model.request(&request));
                    }
                    _ => check_reply(&replies[0], None, Err("invalid JSON".to_owned())),
                }
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
                let data = reference_data(event.json.as_ref(), payload);
                app.deliver(event);
                let frames = drain(&client);
                // The first subscription that matches and may see the event, if any.
                let routable = key.split('.').count() <= MAX_KEY_SEGMENTS;
                let expected = model.items.iter().find(|(binding, scope)| {
                    routable
                        && visible(account.as_deref(), scope)
                        && reference_matches(binding, key)
                });
                assert_eq!(frames.len(), usize::from(expected.is_some()), "{key:?}");
                if let (Some((binding, scope)), Some(frame)) = (expected, frames.first()) {
                    let subscription_key = match binding.split_once('.') {
                        Some((first, rest)) => format!("{first}.{scope}.{rest}"),
                        None => format!("{binding}.{scope}"),
                    };
                    let sent = json(frame);
                    assert_eq!(
                        sent,
                        json!({"action": "event", "subscribed_key": binding,
                               "subscription_key": subscription_key, "name": name,
                               "routing_key": key, "data": data}),
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
