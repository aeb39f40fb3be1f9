//! The iSymphony dialect as production runs it: an `ISymphonySession` on a client registered in
//! the hub of an `App`, fed the input's lines as filter messages (`Script`), with events
//! delivered through `App::ingest` in between. The filter message is checked against a parser
//! written from isymphony.md, and every delivery against a filter evaluation written from it.

#![no_main]

use std::cell::RefCell;
use std::rc::Rc;

use callwire::dialect::Session;
use callwire::dialect::isymphony::{Filters, ISymphonySession};
use callwire::dialect_label::Dialect;
use callwire::matcher::MAX_KEY_SEGMENTS;
use callwire_fuzz::{LIMITS, Script, Step, app, auth, drain, event, json, visible};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

/// The filters a filter message sets (duplicates dropped), or `None` for an error.
fn parse(text: &str) -> Option<Vec<(String, String)>> {
    let Ok(Value::Object(message)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    if message.get("type")? != "filter" {
        return None;
    }
    let list = message.get("filters")?.as_array()?;
    if list.len() > LIMITS.max_filters {
        return None;
    }
    let mut filters: Vec<(String, String)> = Vec::new();
    for item in list {
        let field = |name| item.get(name)?.as_str().map(str::to_owned);
        let filter = (field("property")?, field("value")?);
        if !filters.contains(&filter) {
            filters.push(filter);
        }
    }
    Some(filters)
}

/// A property: the top-level field of that exact name, else a dotted path through objects.
fn lookup<'a>(fields: &'a Map<String, Value>, property: &str) -> Option<&'a Value> {
    if let Some(value) = fields.get(property) {
        return Some(value);
    }
    if !property.contains('.') {
        return None;
    }
    let mut node: Option<&Value> = None;
    for segment in property.split('.') {
        node = Some(match node {
            None => fields.get(segment)?,
            Some(parent) => parent.as_object()?.get(segment)?,
        });
    }
    node
}

/// Whether `text` is a JSON number, exactly (RFC 8259's grammar, no whitespace).
fn is_json_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    let int_start = i;
    let int = digits(&mut i);
    if int == 0 || (int > 1 && b[int_start] == b'0') {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// A value against a filter value, compared as strings: a string by its text, a number,
/// boolean or null by its JSON text (the same number written another way is the same text,
/// as `1.50` and `1.5`); objects and arrays only match `*`, which is handled by the caller.
fn value_matches(value: &Value, wanted: &str) -> bool {
    match value {
        Value::String(text) => text == wanted,
        Value::Number(number) => {
            let same = serde_json::from_str::<Value>(wanted).ok();
            let same = same
                .as_ref()
                .and_then(Value::as_number)
                .map(ToString::to_string);
            is_json_number(wanted) && same == Some(number.to_string())
        }
        Value::Bool(true) => wanted == "true",
        Value::Bool(false) => wanted == "false",
        Value::Null => wanted == "null",
        Value::Array(_) | Value::Object(_) => false,
    }
}

/// Whether an event's payload passes the filters: same property OR, different properties AND.
fn passes(filters: &[(String, String)], payload: Option<&Value>) -> bool {
    if filters.is_empty() {
        return true;
    }
    let Some(Value::Object(fields)) = payload else {
        return false;
    };
    filters.iter().all(|(property, _)| {
        lookup(fields, property).is_some_and(|value| {
            filters
                .iter()
                .filter(|(p, _)| p == property)
                .any(|(_, wanted)| wanted == "*" || value_matches(value, wanted))
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let script = Script::parse(data);
    let app = app(auth(script.auth));
    // With credentials, the socket is the one-account `desk`.
    let secret = script.auth.then_some("d35k");
    let credential = app.auth.by_secret(secret).expect("a credential");
    let account = credential.account.clone();
    let filters = Filters::new(credential, LIMITS.max_filters, app.interest.share());
    let filters = Rc::new(RefCell::new(filters));
    let client = app
        .hub
        .register(Dialect::ISymphony, filters.clone())
        .expect("a free slot");
    let mut session = ISymphonySession::new(client.clone(), filters);
    let mut filters: Vec<(String, String)> = Vec::new();
    let mut replies = Vec::new();
    for step in script.steps {
        match step {
            Step::Text(text) => {
                session.on_text(text, &mut replies);
                assert_eq!(replies.len(), 1, "one response per message");
                let response = json(&replies[0]);
                assert_eq!(response["type"], "filterResponse", "{}", &replies[0]);
                match parse(text) {
                    Some(set) => {
                        let listing: Vec<Value> = set
                            .iter()
                            .map(|(p, v)| json!({"property": p, "value": v}))
                            .collect();
                        assert_eq!(
                            response,
                            json!({"type": "filterResponse", "status": "success", "filters": listing}),
                            "{text:?}"
                        );
                        filters = set;
                    }
                    None => {
                        assert_eq!(response["status"], "error", "{text:?}");
                        let message = response["message"].as_str().unwrap_or_default();
                        assert!(!message.is_empty(), "{}", &replies[0]);
                    }
                }
            }
            Step::Binary(bytes) => {
                session.on_binary(bytes, &mut replies);
                assert_eq!(replies.len(), 1, "one response per message");
                assert_eq!(json(&replies[0])["status"], "error");
            }
            Step::Event { key, payload } => {
                let event = event(key, payload);
                let expected = key.split('.').count() <= MAX_KEY_SEGMENTS
                    && visible(event.account.as_deref(), &account)
                    && passes(&filters, event.json.as_ref());
                // The payload itself when it is JSON, else the payload as a JSON string.
                let verbatim = event.json.is_some();
                let as_string = Value::String(String::from_utf8_lossy(payload).into_owned());
                app.ingest(event);
                let frames = drain(&client);
                let shown = String::from_utf8_lossy(payload);
                assert_eq!(
                    frames.len(),
                    usize::from(expected),
                    "event {shown:?} under filters {filters:?}"
                );
                if let Some(sent) = frames.first() {
                    if verbatim {
                        assert_eq!(sent.as_bytes(), payload);
                    } else {
                        assert_eq!(json(sent), as_string, "{sent}");
                    }
                }
            }
        }
        replies.clear();
        assert!(client.pop().is_none(), "a message queued a frame");
    }
    app.hub.unregister(&client);
});
