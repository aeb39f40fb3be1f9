//! The ActionCable dialect as production runs it: a `CableSession` on a client registered in
//! the hub of an `App`, fed the input's lines as commands (`Script`), with events delivered
//! through `App::ingest` in between (so the live state's call changes reach the `calls`
//! model too). A model written from actioncable.md predicts every confirmation, rejection and
//! message frame, in order.

#![no_main]

use std::cell::RefCell;
use std::rc::Rc;

use callwire::dialect::Session;
use callwire::dialect::cable::{CableSession, MAX_IDENTIFIER, Subscriptions};
use callwire::dialect_label::Dialect;
use callwire::live::LiveState;
use callwire::matcher::MAX_KEY_SEGMENTS;
use callwire::metrics::Metrics;
use callwire_fuzz::{
    CREDENTIALS, LIMITS, ReferenceSelector, Script, Step, app, auth, drain, event, json, visible,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// One subscription: its identifier as sent, its key's account, its selector.
struct Sub {
    identifier: String,
    account: String,
    selector: ReferenceSelector,
}

/// The account and selector a subscription is admitted with, or `None` for a rejection.
fn admit(required: bool, identifier: &str) -> Option<(String, ReferenceSelector)> {
    if identifier.len() > MAX_IDENTIFIER {
        return None;
    }
    let Ok(Value::Object(params)) = serde_json::from_str::<Value>(identifier) else {
        return None;
    };
    if params.get("channel").and_then(Value::as_str) != Some("ApiChannel") {
        return None;
    }
    let key = params.get("key").and_then(Value::as_str);
    let account = if required {
        let (_, _, account) = CREDENTIALS
            .iter()
            .find(|(_, secret, _)| Some(*secret) == key)?;
        (*account).to_owned()
    } else {
        "*".to_owned()
    };
    let selector = match params.get("events") {
        None | Some(Value::Null) => ReferenceSelector::Every,
        Some(Value::String(events)) => match ReferenceSelector::parse(events) {
            ReferenceSelector::Malformed | ReferenceSelector::TooManyModels => return None,
            selector => selector,
        },
        Some(_) => return None,
    };
    Some((account, selector))
}

/// Rails' `camelize` as actioncable.md uses it: a leading run of lowercase letters and digits
/// capitalised, each `_` dropped and the run of letters and digits after it capitalised.
fn camelize(family: &str) -> String {
    fn capitalize(word: &str) -> String {
        let mut chars = word.chars();
        chars.next().map_or_else(String::new, |first| {
            first.to_ascii_uppercase().to_string() + &chars.as_str().to_ascii_lowercase()
        })
    }
    let lead = family
        .bytes()
        .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        .count();
    let mut out = capitalize(&family[..lead]);
    let mut rest = &family[lead..];
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        if c == '_' {
            let word = rest.bytes().take_while(u8::is_ascii_alphanumeric).count();
            out += &capitalize(&rest[..word]);
            rest = &rest[word..];
        } else {
            out.push(c);
        }
    }
    out
}

/// One frame the model expects: identifier, event type, class, and the object it carries
/// (`None` for a call, whose times depend on when it was received).
struct Expected<'a> {
    identifier: &'a str,
    kind: &'static str,
    class: String,
    object: Option<Value>,
    call_id: Option<Value>,
}

fuzz_target!(|data: &[u8]| {
    let script = Script::parse(data);
    let app = app(auth(script.auth));
    let subscriptions = Subscriptions::new(LIMITS.max_bindings, app.interest.share());
    let subscriptions = Rc::new(RefCell::new(subscriptions));
    let client = app
        .hub
        .register(Dialect::Cable, subscriptions.clone())
        .expect("a free slot");
    let mut session = CableSession::new(client.clone(), subscriptions, app.auth.clone());
    assert_eq!(
        session.greeting().map(|frame| json(&frame)),
        Some(json!({"type": "welcome"}))
    );
    // The live state again, to know which call changes each event makes.
    let mut shadow = LiveState::new(
        LIMITS.max_calls,
        LIMITS.events_per_call,
        Rc::new(Metrics::default()),
    );
    let mut subs: Vec<Sub> = Vec::new();
    let mut replies = Vec::new();
    for step in script.steps {
        match step {
            Step::Text(text) => {
                session.on_text(text, &mut replies);
                let expected = (|| {
                    let Ok(Value::Object(command)) = serde_json::from_str::<Value>(text) else {
                        return None;
                    };
                    let Some(Value::String(identifier)) = command.get("identifier") else {
                        return None;
                    };
                    match command.get("command").and_then(Value::as_str) {
                        Some("subscribe") => {
                            if subs.iter().any(|s| s.identifier == *identifier) {
                                return None;
                            }
                            let admitted = (subs.len() < LIMITS.max_bindings)
                                .then(|| admit(script.auth, identifier))
                                .flatten();
                            let Some((account, selector)) = admitted else {
                                return Some((identifier.clone(), "reject_subscription"));
                            };
                            subs.push(Sub {
                                identifier: identifier.clone(),
                                account,
                                selector,
                            });
                            Some((identifier.clone(), "confirm_subscription"))
                        }
                        Some("unsubscribe") => {
                            subs.retain(|s| s.identifier != *identifier);
                            None
                        }
                        _ => None,
                    }
                })();
                let got: Vec<Value> = replies.iter().map(|frame| json(frame)).collect();
                let want: Vec<Value> = expected
                    .into_iter()
                    .map(|(identifier, kind)| json!({"identifier": identifier, "type": kind}))
                    .collect();
                assert_eq!(got, want, "{text:?}");
            }
            Step::Binary(bytes) => {
                session.on_binary(bytes, &mut replies);
                assert!(replies.is_empty(), "binary frames are ignored");
            }
            Step::Event { key, payload } => {
                let changes = shadow.apply(&event(key, payload));
                let event = event(key, payload);
                let data = event.json.clone().unwrap_or_else(|| {
                    Value::String(String::from_utf8_lossy(payload).into_owned())
                });
                let mut expected: Vec<Expected<'_>> = Vec::new();
                for change in changes {
                    for sub in &subs {
                        if visible(change.account.as_deref(), &sub.account)
                            && sub.selector.wants("calls", change.kind as usize)
                        {
                            expected.push(Expected {
                                identifier: &sub.identifier,
                                kind: change.kind.as_str(),
                                class: "Call".to_owned(),
                                object: None,
                                call_id: Some(change.call["id"].clone()),
                            });
                        }
                    }
                }
                let first = key.split('.').next().unwrap_or("");
                let family = (!["", "call", "event"].contains(&first)).then_some(first);
                let routable = key.split('.').count() <= MAX_KEY_SEGMENTS;
                for sub in subs.iter().filter(|_| routable) {
                    if !visible(event.account.as_deref(), &sub.account) {
                        continue;
                    }
                    if sub.selector.wants("events", 0) {
                        expected.push(Expected {
                            identifier: &sub.identifier,
                            kind: "create",
                            class: "Event".to_owned(),
                            object: Some(json!({"routing_key": key, "data": data})),
                            call_id: None,
                        });
                    }
                    if let Some(family) = family
                        && sub.selector.wants(&format!("{family}s"), 1)
                    {
                        expected.push(Expected {
                            identifier: &sub.identifier,
                            kind: "update",
                            class: camelize(family),
                            object: Some(data.clone()),
                            call_id: None,
                        });
                    }
                }
                app.ingest(event);
                let frames = drain(&client);
                let shown = String::from_utf8_lossy(payload);
                assert_eq!(frames.len(), expected.len(), "{key:?} {shown:?}");
                for (frame, want) in frames.iter().zip(&expected) {
                    let sent = json(frame);
                    assert_eq!(sent["identifier"], want.identifier, "{frame}");
                    let message = &sent["message"];
                    assert_eq!(message["event_type"], want.kind, "{frame}");
                    assert_eq!(message["event_class"], *want.class, "{frame}");
                    if let Some(object) = &want.object {
                        assert_eq!(&message["object"], object, "{frame}");
                    }
                    if let Some(id) = &want.call_id {
                        assert_eq!(&message["object"]["id"], id, "{frame}");
                    }
                }
            }
        }
        replies.clear();
        assert!(client.pop().is_none(), "a command queued a frame");
    }
    app.hub.unregister(&client);
});
