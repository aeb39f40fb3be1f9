//! The event: what every source turns a broker delivery into (contract: events.md).
//!
//! An event is parsed once, here, when it enters the bridge. Everything downstream (the hub,
//! the dialects, the live state) reads this one parsed form; nothing re-parses the payload.

use std::rc::Rc;
use std::time::SystemTime;

use bytes::Bytes;
use serde_json::Value;

/// Payload fields that name the event's account, in the contract's order of preference.
const ACCOUNT_PATHS: [&[&str]; 5] = [
    &["Account-ID"],
    &["account_id"],
    &["Custom-Channel-Vars", "Account-ID"],
    &["custom_channel_vars", "account_id"],
    // What Kazoo's ecallmgr sets on FreeSWITCH channels, seen in `mod_amqp` events of a Kazoo
    // cluster.
    &["variable_ecallmgr_Account-ID"],
];

/// Payload fields that name the event, in order of preference (blackhole.md, `name`).
const NAME_FIELDS: [&str; 4] = ["Event-Name", "event_name", "type", "event"];

/// Where an event stands in the bridge's history (`history` gives it; delivery.md,
/// "Positions").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// Names one unbroken history; a client's position in another epoch means nothing here.
    pub epoch: Rc<str>,
    /// From 1 for the epoch's first event, one more for each event after it.
    pub offset: u64,
}

/// One event, as taken from the broker.
#[derive(Debug)]
pub struct Event {
    /// Dot-separated segments, as AMQP has them (empty segments kept).
    pub routing_key: String,
    /// The body exactly as the broker delivered it; forwarded, never rewritten.
    pub payload: Bytes,
    /// The payload parsed as JSON, or `None` when it is not JSON.
    pub json: Option<Value>,
    /// The tenant the event belongs to, if the payload names one.
    pub account: Option<String>,
    /// When callwire took it from the broker.
    pub received_at: SystemTime,
    /// Its place in the history, given when it enters the bridge (`App::ingest`).
    pub position: Option<Position>,
}

impl Event {
    /// Builds an event from a delivery: parses the payload once and finds its account.
    pub fn new(routing_key: String, payload: Bytes) -> Event {
        let json = serde_json::from_slice::<Value>(&payload).ok();
        let account = json.as_ref().and_then(account_of).map(str::to_owned);
        Event {
            routing_key,
            payload,
            json,
            account,
            received_at: SystemTime::now(),
            position: None,
        }
    }

    /// The event's name: the payload's `Event-Name`, `event_name`, `type` or `event`, else
    /// the routing key's second segment (else the empty string).
    pub fn name(&self) -> &str {
        let from_payload = self.json.as_ref().and_then(|json| {
            NAME_FIELDS
                .iter()
                .find_map(|field| json.get(field).and_then(Value::as_str))
        });
        from_payload.unwrap_or_else(|| self.routing_key.split('.').nth(1).unwrap_or(""))
    }

    /// Whether a subscriber scoped to `scope` may see this event: `*` sees every event, an
    /// account sees only its own, and an event with no account is seen only by `*`.
    pub fn visible_to(&self, scope: &str) -> bool {
        visible(self.account.as_deref(), scope)
    }
}

/// Whether a subscriber scoped to `scope` may see an event of `account` (`Event::visible_to`).
pub fn visible(account: Option<&str>, scope: &str) -> bool {
    scope == "*" || account == Some(scope)
}

/// The first non-empty string at one of the account paths.
fn account_of(json: &Value) -> Option<&str> {
    ACCOUNT_PATHS.iter().find_map(|path| {
        let mut node = json;
        for field in *path {
            node = node.get(field)?;
        }
        node.as_str().filter(|account| !account.is_empty())
    })
}

/// Maps an MQTT topic to a routing key: strips `strip_prefix` if the topic starts with it,
/// writes each `.` inside a level as `%2E`, then turns each `/` into `.`.
pub fn topic_to_routing_key(topic: &str, strip_prefix: Option<&str>) -> String {
    let topic = strip_prefix
        .and_then(|prefix| topic.strip_prefix(prefix))
        .unwrap_or(topic);
    let mut key = String::with_capacity(topic.len() + 8);
    for ch in topic.chars() {
        match ch {
            '.' => key.push_str("%2E"),
            '/' => key.push('.'),
            other => key.push(other),
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str, payload: &str) -> Event {
        Event::new(key.to_owned(), Bytes::copy_from_slice(payload.as_bytes()))
    }

    #[test]
    fn topic_levels_become_segments() {
        assert_eq!(topic_to_routing_key("pbx/call/a.b", None), "pbx.call.a%2Eb");
        assert_eq!(topic_to_routing_key("pbx/call/X", Some("pbx/")), "call.X");
        assert_eq!(
            topic_to_routing_key("other/call/X", Some("pbx/")),
            "other.call.X"
        );
        assert_eq!(topic_to_routing_key("a//b", None), "a..b");
    }

    #[test]
    fn account_follows_the_contract_order() {
        let e = event("k", r#"{"account_id":"b","Account-ID":"a"}"#);
        assert_eq!(e.account.as_deref(), Some("a"));
        let e = event(
            "k",
            r#"{"Account-ID":"","Custom-Channel-Vars":{"Account-ID":"c"}}"#,
        );
        assert_eq!(e.account.as_deref(), Some("c"));
        let e = event("k", r#"{"custom_channel_vars":{"account_id":"d"}}"#);
        assert_eq!(e.account.as_deref(), Some("d"));
        let e = event(
            "k",
            r#"{"variable_ecallmgr_Account-ID":"e","Unique-ID":"u"}"#,
        );
        assert_eq!(e.account.as_deref(), Some("e"));
        let e = event(
            "k",
            r#"{"variable_ecallmgr_Account-ID":"e","account_id":"b"}"#,
        );
        assert_eq!(e.account.as_deref(), Some("b"));
        let e = event("k", r#"{"Account-ID":7}"#);
        assert_eq!(e.account, None);
        let e = event("k", "not json");
        assert_eq!((e.account, e.json), (None, None));
    }

    #[test]
    fn name_prefers_payload_fields_then_second_segment() {
        assert_eq!(
            event("call.X.y", r#"{"Event-Name":"CHANNEL_CREATE"}"#).name(),
            "CHANNEL_CREATE"
        );
        assert_eq!(
            event("call.X.y", r#"{"event":"ringing","type":"t"}"#).name(),
            "t"
        );
        assert_eq!(
            event("call.CHANNEL_ANSWER.y", "[]").name(),
            "CHANNEL_ANSWER"
        );
        assert_eq!(event("call", "x").name(), "");
    }

    #[test]
    fn visibility_by_account() {
        let e = event("k", r#"{"Account-ID":"a"}"#);
        assert!(e.visible_to("*") && e.visible_to("a") && !e.visible_to("b"));
        let e = event("k", "{}");
        assert!(e.visible_to("*") && !e.visible_to("a"));
    }
}
