//! Kazoo's public, normalised form of an event payload: what Kazoo's Blackhole puts in an
//! event frame's `data` (blackhole.md, "Events"), whatever PBX the payload came from.
//!
//! Kazoo sends `normalize_jobj(public_fields(Payload))`: its optional default headers removed
//! at the top level, then every key rewritten (`-` to `_`, Latin-1 capitals to lower case) and
//! every member whose value is `null` dropped, recursively through objects and the objects
//! inside arrays. Values are never changed. Written straight into the frame being rendered, so
//! the normalised payload is never built as a second tree.

use std::fmt::Write;

use serde_json::{Map, Value};

use super::push_json_str;

/// Kazoo's optional default headers that `kz_api:public_fields` deletes from the top level
/// (`OPTIONAL_DEFAULT_HEADERS` less `Account-ID` and `Call-ID`, which clients read).
const PRIVATE_HEADERS: [&str; 14] = [
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

/// Appends the public, normalised form of `payload` (a JSON object) to `out`.
pub fn push_public_normalized(out: &mut String, payload: &Map<String, Value>) {
    push_object(out, payload, |key| !PRIVATE_HEADERS.contains(&key));
}

/// Kazoo's key rule (`kz_json:normalize_key`): `-` becomes `_`; `A`-`Z` and the Latin-1
/// capitals (U+00C0-U+00D6, U+00D8-U+00DE) become lower case; everything else stays.
pub fn normalize_key_char(ch: char) -> char {
    match ch {
        '-' => '_',
        'A'..='Z' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{DE}' => {
            // Each of these has its lower case 0x20 above it (U+00D7 `×` is the one exception
            // in the range, and is excluded).
            char::from_u32(ch as u32 + 0x20).unwrap_or(ch)
        }
        other => other,
    }
}

/// An object's members whose key `keep` accepts and whose value is not `null`, normalised.
fn push_object(out: &mut String, object: &Map<String, Value>, keep: impl Fn(&str) -> bool) {
    out.push('{');
    let mut first = true;
    for (key, value) in object {
        if value.is_null() || !keep(key) {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        push_key(out, key);
        out.push(':');
        push_value(out, value);
    }
    out.push('}');
}

fn push_key(out: &mut String, key: &str) {
    if key.chars().all(|ch| normalize_key_char(ch) == ch) {
        push_json_str(out, key);
    } else {
        let normalized: String = key.chars().map(normalize_key_char).collect();
        push_json_str(out, &normalized);
    }
}

fn push_value(out: &mut String, value: &Value) {
    match value {
        Value::Object(object) => push_object(out, object, |_| true),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_value(out, item);
            }
            out.push(']');
        }
        Value::String(text) => push_json_str(out, text),
        Value::Number(number) => {
            let _ = write!(out, "{number}");
        }
        Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
        Value::Null => out.push_str("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn normalized(payload: Value) -> Value {
        let mut out = String::new();
        push_public_normalized(&mut out, payload.as_object().unwrap());
        serde_json::from_str(&out).unwrap()
    }

    fn key(text: &str) -> String {
        text.chars().map(normalize_key_char).collect()
    }

    #[test]
    fn dashes_and_ascii_capitals() {
        assert_eq!(key("Call-ID"), "call_id");
        assert_eq!(key("Caller-ID-Number"), "caller_id_number");
        assert_eq!(key("already_snake"), "already_snake");
        assert_eq!(key("AZaz-_"), "azaz__");
    }

    #[test]
    fn latin1_capitals_are_lowered_and_the_rest_stays() {
        // Every capital of U+00C0-U+00D6 and U+00D8-U+00DE, against its small letter.
        for upper in ('\u{C0}'..='\u{D6}').chain('\u{D8}'..='\u{DE}') {
            let lower = char::from_u32(upper as u32 + 0x20).unwrap();
            assert_eq!(normalize_key_char(upper), lower, "{upper}");
            assert!(lower.is_lowercase(), "{lower}");
        }
        assert_eq!(key("ÀÉÎÕÖØÞ"), "àéîõöøþ");
        // U+00D7 (×) is not a letter; U+00DF (ß) and the small letters are already small.
        assert_eq!(key("×ßàÿ"), "×ßàÿ");
        // Digits and other scripts (Greek, Cyrillic, Latin Extended) stay as they are.
        assert_eq!(key("0123456789"), "0123456789");
        assert_eq!(key("ΣΩЖĀŁ"), "ΣΩЖĀŁ");
        assert_eq!(key("Ā-Ж"), "Ā_Ж");
    }

    #[test]
    fn private_headers_go_at_the_top_level_only() {
        let payload = json!({
            "Server-ID": "s", "Node": "n", "Msg-ID": "m", "Account-ID": "a", "Call-ID": "c",
            "Geo-Location": "g", "AMQP-Broker": "b", "Raw-Headers": "r",
            "Custom-Channel-Vars": {"Node": "kept", "Server-ID": "kept"}
        });
        assert_eq!(
            normalized(payload),
            json!({"msg_id": "m", "account_id": "a", "call_id": "c",
                   "custom_channel_vars": {"node": "kept", "server_id": "kept"}})
        );
    }

    #[test]
    fn nulls_are_dropped_through_objects_and_arrays_and_values_never_change() {
        let payload = json!({
            "A-B": null,
            "List": [{"X-Y": 1, "Gone": null}, null, "Text-Value", [{"Deep-Key": true}]],
            "Obj": {"Inner-Null": null, "Inner": {"Big-Num": 1.5e300, "Neg": -7}},
            "Str": "Value-With-CAPS"
        });
        assert_eq!(
            normalized(payload),
            json!({
                "list": [{"x_y": 1}, null, "Text-Value", [{"deep_key": true}]],
                "obj": {"inner": {"big_num": 1.5e300, "neg": -7}},
                "str": "Value-With-CAPS"
            })
        );
    }
}
