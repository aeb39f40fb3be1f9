//! The live API's listings (live-api.md: the calls, the extensions, one extension, the calls
//! of one), written in bounded pieces: a piece is made from the live state when the one
//! before it has been written, and holds `PIECE_BYTES` plus at most one item. Between pieces
//! a listing keeps only its cursor (a call's start serial, an extension's number), so a
//! response costs the same with ten live calls or `--max-calls`, and a client that does not
//! read holds one piece and its socket's buffer.
//!
//! Calls that end between two pieces are not listed; calls that start are, at the end: each
//! call is listed at most once, in start order.

use serde::de::IgnoredAny;

use crate::clock;
use crate::http::Pieces;
use crate::live::{CALL_EVENTS_BYTES, Call, LiveState, MAX_KEY_LEN, RecentEvent};

/// A piece is cut once it holds this many bytes.
pub const PIECE_BYTES: usize = 8 * 1024;
/// The longest item of a listing: a recent event whose kept payload and routing key are
/// written as JSON strings with every byte escaped as `\u00XX` (six bytes), plus its fixed
/// fields (longer than a call with every text at its cut, escaped alike).
pub const MAX_ITEM: usize = 6 * (CALL_EVENTS_BYTES + MAX_KEY_LEN) + 128;
/// Room for one piece: it never grows past this.
pub const PIECE_CAPACITY: usize = PIECE_BYTES + MAX_ITEM;

/// `GET /rest/live/calls`, or with `number` the calls of that extension: a JSON array of
/// the calls `scope` may see, oldest first.
pub fn calls(scope: String, number: Option<String>) -> Pieces {
    pieces(Calls {
        scope,
        number,
        array: Array::default(),
        after: None,
    })
}

/// `GET /rest/live/calls/{id}/events`: a JSON array of the recent events of the call `id`
/// (the caller has checked that `scope` may see it), oldest first. Each event shows its
/// payload as JSON when it is; a payload longer than a call keeps shows as the text of its
/// first bytes, and `truncated` gives its whole length.
pub fn events(scope: String, id: String) -> Pieces {
    pieces(Events {
        scope,
        id,
        array: Array::default(),
        serial: None,
        after: 0,
    })
}

/// `GET /rest/live/extensions`: a JSON array of every number taking part in a live call
/// `scope` may see, in number order, each with its name (from the oldest live call that gives
/// one) and its live calls.
pub fn extensions(scope: String) -> Pieces {
    pieces(Extensions {
        scope,
        array: Array::default(),
        open: None,
        after: None,
    })
}

/// `GET /rest/live/extensions/{number}`: the extension as one JSON object (the caller has
/// checked that it takes part in a live call).
pub fn extension(scope: String, number: String) -> Pieces {
    pieces(One {
        scope,
        extension: Extension::new(number),
    })
}

/// A listing: each call writes its next piece from the live state into `out`, and says
/// whether that was the last.
trait Listing {
    fn fill(&mut self, live: &LiveState, out: &mut Vec<u8>) -> bool;
}

fn pieces(mut listing: impl Listing + 'static) -> Pieces {
    Pieces {
        next: Box::new(move |live, out| listing.fill(live, out)),
        capacity: PIECE_CAPACITY,
    }
}

struct Calls {
    scope: String,
    number: Option<String>,
    array: Array,
    /// The serial of the last call listed.
    after: Option<u64>,
}

impl Listing for Calls {
    fn fill(&mut self, live: &LiveState, out: &mut Vec<u8>) -> bool {
        self.array.open(out);
        for call in calls_after(live, &self.scope, self.after, self.number.as_deref()) {
            if out.len() >= PIECE_BYTES {
                return false;
            }
            self.array.item(out);
            // Cannot fail: every field is a string, a number or null.
            let _ = serde_json::to_writer(&mut *out, call);
            self.after = Some(call.serial);
        }
        self.array.close(out);
        true
    }
}

struct Events {
    scope: String,
    id: String,
    array: Array,
    /// The call being listed: another call of the same id is not it.
    serial: Option<u64>,
    /// How many of the call's events came before the next one to list.
    after: u64,
}

impl Listing for Events {
    fn fill(&mut self, live: &LiveState, out: &mut Vec<u8>) -> bool {
        self.array.open(out);
        let call = live
            .call(&self.scope, &self.id)
            .filter(|call| *self.serial.get_or_insert(call.serial) == call.serial);
        if let Some(call) = call {
            // The ring holds the last of `call.events` events.
            let recent = call.recent_events();
            let first = call.events - recent.len() as u64;
            for (number, event) in (first..).zip(recent) {
                if number < self.after {
                    continue;
                }
                if out.len() >= PIECE_BYTES {
                    return false;
                }
                self.array.item(out);
                write_event(out, event);
                self.after = number + 1;
            }
        }
        self.array.close(out);
        true
    }
}

/// `{"routing_key": ..., "received_at": ..., "data": ...}`, and `"truncated": <length>` when
/// the payload was cut. A payload that is JSON is written as it came: checked, not parsed into
/// a tree (which may take many times its text).
fn write_event(out: &mut Vec<u8>, event: &RecentEvent) {
    out.extend_from_slice(br#"{"routing_key":"#);
    let _ = serde_json::to_writer(&mut *out, &*event.routing_key);
    out.extend_from_slice(br#","received_at":""#);
    out.extend_from_slice(clock::rfc3339(event.received_at).as_bytes());
    out.extend_from_slice(br#"","data":"#);
    let json = !event.truncated() && serde_json::from_slice::<IgnoredAny>(&event.payload).is_ok();
    match json {
        true => out.extend_from_slice(&event.payload),
        false => {
            let text = String::from_utf8_lossy(&event.payload);
            let _ = serde_json::to_writer(&mut *out, &*text);
        }
    }
    if event.truncated() {
        out.extend_from_slice(br#","truncated":"#);
        out.extend_from_slice(event.size.to_string().as_bytes());
    }
    out.push(b'}');
}

struct Extensions {
    scope: String,
    array: Array,
    /// The extension being written, when a piece ended inside it.
    open: Option<Extension>,
    /// The number of the last extension written whole.
    after: Option<String>,
}

impl Listing for Extensions {
    fn fill(&mut self, live: &LiveState, out: &mut Vec<u8>) -> bool {
        self.array.open(out);
        loop {
            if let Some(extension) = self.open.as_mut() {
                if !extension.write(live, &self.scope, out) {
                    return false;
                }
                self.after = self.open.take().map(|extension| extension.number);
            }
            if out.len() >= PIECE_BYTES {
                return false;
            }
            let Some(number) = next_number(live, &self.scope, self.after.as_deref()) else {
                self.array.close(out);
                return true;
            };
            self.array.item(out);
            self.open = Some(Extension::new(number.to_owned()));
        }
    }
}

struct One {
    scope: String,
    extension: Extension,
}

impl Listing for One {
    fn fill(&mut self, live: &LiveState, out: &mut Vec<u8>) -> bool {
        self.extension.write(live, &self.scope, out)
    }
}

/// One extension being written: `{"number": ..., "name": ..., "calls": [ids]}`.
struct Extension {
    number: String,
    head_written: bool,
    calls: Array,
    /// The serial of the last call listed.
    after: Option<u64>,
}

impl Extension {
    fn new(number: String) -> Extension {
        Extension {
            number,
            head_written: false,
            calls: Array::default(),
            after: None,
        }
    }

    /// Writes what is left of the extension, up to a piece's worth; whether it is done.
    fn write(&mut self, live: &LiveState, scope: &str, out: &mut Vec<u8>) -> bool {
        if !self.head_written {
            self.head_written = true;
            out.extend_from_slice(br#"{"number":"#);
            let _ = serde_json::to_writer(&mut *out, &self.number);
            out.extend_from_slice(br#","name":"#);
            let _ = serde_json::to_writer(&mut *out, &name(live, scope, &self.number));
            out.extend_from_slice(br#","calls":"#);
            self.calls.open(out);
        }
        for call in calls_after(live, scope, self.after, Some(&self.number)) {
            if out.len() >= PIECE_BYTES {
                return false;
            }
            self.calls.item(out);
            let _ = serde_json::to_writer(&mut *out, &*call.id);
            self.after = Some(call.serial);
        }
        self.calls.close(out);
        out.push(b'}');
        true
    }
}

/// The calls `scope` may see that started after the call `after`, oldest first; with
/// `number`, only those it takes part in.
fn calls_after<'a>(
    live: &'a LiveState,
    scope: &'a str,
    after: Option<u64>,
    number: Option<&'a str>,
) -> impl Iterator<Item = &'a Call> {
    live.calls(scope)
        .filter(move |call| after.is_none_or(|after| call.serial > after))
        .filter(move |call| number.is_none_or(|number| call.has_number(number)))
}

/// The least number above `after` taking part in a call `scope` may see.
fn next_number<'a>(live: &'a LiveState, scope: &str, after: Option<&str>) -> Option<&'a str> {
    live.calls(scope)
        .flat_map(|call| [&call.from, &call.to])
        .filter_map(|party| party.number.as_deref())
        .filter(|number| after.is_none_or(|after| *number > after))
        .min()
}

/// The extension's name: from the oldest live call that gives one (as `LiveState::extensions`).
fn name<'a>(live: &'a LiveState, scope: &str, number: &str) -> Option<&'a str> {
    live.calls(scope)
        .flat_map(|call| [&call.from, &call.to])
        .filter(|party| party.number.as_deref() == Some(number))
        .find_map(|party| party.name.as_deref())
}

/// A JSON array written across pieces: its bracket once, commas between items.
#[derive(Default)]
struct Array {
    opened: bool,
    items: usize,
}

impl Array {
    fn open(&mut self, out: &mut Vec<u8>) {
        if !std::mem::replace(&mut self.opened, true) {
            out.push(b'[');
        }
    }

    fn item(&mut self, out: &mut Vec<u8>) {
        if self.items > 0 {
            out.push(b',');
        }
        self.items += 1;
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        out.push(b']');
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use bytes::Bytes;
    use serde_json::{Value, json};

    use super::*;
    use crate::event::Event;
    use crate::metrics::Metrics;

    fn apply(live: &mut LiveState, payload: Value) {
        live.apply(&Event::new(
            "call.x".to_owned(),
            Bytes::from(payload.to_string()),
        ));
    }

    /// Kazoo's a1 (account a, 201 to 202), b1 (account b, Bea at 202 to +14155550100) and
    /// FreeSWITCH's f1 (no account, 203 to 201).
    fn three_calls() -> LiveState {
        let mut live = LiveState::new(8, 4, Rc::new(Metrics::default()));
        apply(
            &mut live,
            json!({"Event-Name": "CHANNEL_CREATE", "Call-ID": "a1", "Account-ID": "a",
                   "Caller-ID-Number": "201", "Callee-ID-Number": "202"}),
        );
        apply(
            &mut live,
            json!({"Event-Name": "CHANNEL_CREATE", "Call-ID": "b1",
                   "Custom-Channel-Vars": {"Account-ID": "b"},
                   "Caller-ID-Number": "202", "Caller-ID-Name": "Bea",
                   "Callee-ID-Number": "+14155550100"}),
        );
        apply(
            &mut live,
            json!({"Event-Name": "CHANNEL_CREATE", "Unique-ID": "f1",
                   "Caller-Caller-ID-Number": "203", "Caller-Destination-Number": "201"}),
        );
        live
    }

    /// Every piece of a listing, each checked against the bound, joined and parsed.
    fn drain(mut listing: impl Listing, live: &LiveState) -> (Value, usize) {
        let (mut body, mut pieces) = (Vec::new(), 0);
        let mut piece = Vec::with_capacity(PIECE_CAPACITY);
        loop {
            piece.clear();
            let last = listing.fill(live, &mut piece);
            assert!(piece.len() <= PIECE_CAPACITY, "{}", piece.len());
            assert_eq!(piece.capacity(), PIECE_CAPACITY, "a piece never grows");
            body.extend_from_slice(&piece);
            pieces += 1;
            if last {
                return (serde_json::from_slice(&body).unwrap(), pieces);
            }
        }
    }

    fn extensions_of(live: &LiveState, scope: &str) -> Value {
        let listing = Extensions {
            scope: scope.to_owned(),
            array: Array::default(),
            open: None,
            after: None,
        };
        drain(listing, live).0
    }

    fn extension_of(live: &LiveState, scope: &str, number: &str) -> Value {
        let listing = One {
            scope: scope.to_owned(),
            extension: Extension::new(number.to_owned()),
        };
        drain(listing, live).0
    }

    #[test]
    fn extensions_are_listed_by_number_with_their_calls_and_scoped() {
        let live = three_calls();
        assert_eq!(
            extensions_of(&live, "*"),
            json!([
                {"number": "+14155550100", "name": null, "calls": ["b1"]},
                {"number": "201", "name": null, "calls": ["a1", "f1"]},
                {"number": "202", "name": "Bea", "calls": ["a1", "b1"]},
                {"number": "203", "name": null, "calls": ["f1"]},
            ])
        );
        assert_eq!(
            extensions_of(&live, "a"),
            json!([
                {"number": "201", "name": null, "calls": ["a1"]},
                {"number": "202", "name": null, "calls": ["a1"]},
            ])
        );
        assert_eq!(
            extensions_of(&live, "b"),
            json!([
                {"number": "+14155550100", "name": null, "calls": ["b1"]},
                {"number": "202", "name": "Bea", "calls": ["b1"]},
            ])
        );
        assert_eq!(extensions_of(&live, "c"), json!([]));
        assert_eq!(
            extension_of(&live, "*", "202"),
            json!({"number": "202", "name": "Bea", "calls": ["a1", "b1"]})
        );
        assert_eq!(
            extension_of(&live, "a", "202"),
            json!({"number": "202", "name": null, "calls": ["a1"]})
        );
    }

    #[test]
    fn long_listings_come_in_bounded_pieces_and_whole() {
        let max_calls = 2000;
        let mut live = LiveState::new(max_calls, 1, Rc::new(Metrics::default()));
        // Names of control characters: every byte is written as six.
        let name = "\u{1}".repeat(500);
        for n in 0..max_calls {
            apply(
                &mut live,
                json!({"Event-Name": "CHANNEL_CREATE", "Call-ID": format!("c{n}"),
                       "Caller-ID-Number": "100", "Caller-ID-Name": name,
                       "Callee-ID-Number": format!("{}", n % 300)}),
            );
        }
        let listing = Calls {
            scope: "*".to_owned(),
            number: None,
            array: Array::default(),
            after: None,
        };
        let (calls, pieces) = drain(listing, &live);
        let calls = calls.as_array().unwrap();
        assert_eq!(calls.len(), max_calls);
        assert_eq!(calls[0]["id"], "c0");
        assert_eq!(calls[max_calls - 1]["id"], format!("c{}", max_calls - 1));
        assert!(pieces > 100, "{pieces} pieces");

        // One extension in every call: its call list spans pieces too.
        let all = extensions_of(&live, "*");
        let all = all.as_array().unwrap();
        // 0 to 299 called, and 100 (among them) calling.
        assert_eq!(all.len(), 300);
        let hundred = all.iter().find(|e| e["number"] == "100").unwrap();
        assert_eq!(hundred["calls"].as_array().unwrap().len(), max_calls);
        assert_eq!(extension_of(&live, "*", "100"), *hundred);
    }

    #[test]
    fn calls_that_end_between_pieces_are_left_out_and_none_is_listed_twice() {
        let mut live = LiveState::new(500, 1, Rc::new(Metrics::default()));
        let create = |n: usize| {
            json!({"Event-Name": "CHANNEL_CREATE", "Call-ID": format!("c{n}"),
                   "Caller-ID-Name": "x".repeat(100)})
        };
        for n in 0..400 {
            apply(&mut live, create(n));
        }
        let mut listing = Calls {
            scope: "*".to_owned(),
            number: None,
            array: Array::default(),
            after: None,
        };
        let (mut body, mut piece) = (Vec::new(), Vec::new());
        assert!(!listing.fill(&live, &mut body), "more than one piece");
        let first: usize = body.iter().filter(|&&b| b == b'{').count() / 3;
        // The next call to be listed ends, and new ones start.
        apply(
            &mut live,
            json!({"Event-Name": "CHANNEL_DESTROY", "Call-ID": format!("c{first}")}),
        );
        for n in 400..410 {
            apply(&mut live, create(n));
        }
        loop {
            piece.clear();
            let last = listing.fill(&live, &mut piece);
            body.extend_from_slice(&piece);
            if last {
                break;
            }
        }
        let calls: Value = serde_json::from_slice(&body).unwrap();
        let ids: Vec<&str> = calls
            .as_array()
            .unwrap()
            .iter()
            .map(|call| call["id"].as_str().unwrap())
            .collect();
        let expected: Vec<String> = (0..410)
            .filter(|&n| n != first)
            .map(|n| format!("c{n}"))
            .collect();
        assert_eq!(ids, expected);
    }
}
