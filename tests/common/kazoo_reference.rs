//! The contract's oracle for Blackhole event data (docs/protocols/blackhole.md, "Events"),
//! written from the contract rather than from the crate. Shared by the integration tests and
//! the fuzz crate (fuzz/src/lib.rs includes this file), so there is one reference to keep true.

use serde_json::Value;

/// What blackhole.md says a Blackhole event's `data` is for `payload`, written from the
/// contract rather than from the crate: for a JSON object, Kazoo's optional default headers
/// (but `Account-ID` and `Call-ID`) deleted at the top level, then every key, through nested
/// objects and the objects in arrays, with `-` as `_` and ASCII and Latin-1 capitals in lower
/// case, and members whose value is `null` dropped; any other JSON as it was; anything else as
/// a JSON string.
pub fn blackhole_data(payload: &[u8]) -> Value {
    const PRIVATE: [&str; 14] = [
        "Access-Group",
        "Defer-Response",
        "Destination-Server",
        "Geo-Location",
        "Log-ID",
        "Node",
        "Queue-ID",
        "Raw-Headers",
        "Server-ID",
        "Request-From-PID",
        "Reply-To-PID",
        "AMQP-Broker",
        "AMQP-Zone",
        "Deliver-To-PID",
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
    fn object(map: &serde_json::Map<String, Value>, skip: &[&str]) -> Value {
        map.iter()
            .filter(|(k, v)| !v.is_null() && !skip.contains(&k.as_str()))
            .map(|(k, v)| (key(k), value(v)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
    fn value(v: &Value) -> Value {
        match v {
            Value::Object(map) => object(map, &[]),
            Value::Array(items) => items.iter().map(value).collect(),
            other => other.clone(),
        }
    }
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => object(&map, &PRIVATE),
        Ok(other) => other,
        Err(_) => Value::String(String::from_utf8_lossy(payload).into_owned()),
    }
}
