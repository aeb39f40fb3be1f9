//! The REST live API (contract: live-api.md): root, instance, sub-resource and action paths
//! over the live calls and extensions, the recent events after a position (delivery.md,
//! `/rest/live/events?since=`), and the `/v2/websockets` binding catalogue.
//!
//! Every answer is scoped to the caller's credential; the routing is a pure function of the
//! request and the state, so it is easy to test and to fuzz.

use std::cell::RefCell;

use serde::Serialize;
use serde_json::{Value, json};

use crate::auth::Auth;
use crate::history::{History, Resume};
use crate::http::{Pieces, Request, Response};
use crate::listing;
use crate::live::{self, LiveState, MAX_ID_LEN};
use crate::percent;
use crate::source::{Commands, HangupError};

/// The Kazoo call events a Blackhole client can bind to, as Crossbar lists them.
const CALL_EVENTS: [&str; 9] = [
    "CHANNEL_CREATE",
    "CHANNEL_ANSWER",
    "CHANNEL_DESTROY",
    "CHANNEL_HOLD",
    "CHANNEL_UNHOLD",
    "CHANNEL_BRIDGE",
    "CHANNEL_UNBRIDGE",
    "PARK_PARKED",
    "PARK_RETRIEVED",
];

/// Most events one `/rest/live/events` answer holds; `more` says there are others.
const EVENTS_PER_RESPONSE: usize = 500;
/// Most payload bytes one `/rest/live/events` answer holds (but always at least one event).
const EVENT_BYTES_PER_RESPONSE: usize = 512 * 1024;

/// Most routing-key families the catalogue remembers.
const CATALOGUE_LIMIT: usize = 256;
/// Longest template the catalogue remembers, in bytes; a longer one is not listed.
const MAX_TEMPLATE: usize = 128;

/// A routing-key family seen, with the template it is listed as and the account of the
/// events it was seen in.
#[derive(Debug)]
struct Family {
    account: Option<String>,
    family: String,
    template: String,
}

/// Routing-key families seen since start-up, for `/v2/websockets`, bounded; a family first
/// seen past the bound is not listed. Each is kept with its account: a family name can carry
/// a tenant's secrets (a project name), so a caller sees only its own account's families.
#[derive(Debug, Default)]
pub struct Catalogue {
    seen: RefCell<Vec<Family>>,
}

impl Catalogue {
    /// The most bytes the catalogue may hold: `CATALOGUE_LIMIT` families, each with its
    /// template and account at their longest.
    pub fn bound() -> usize {
        let texts = 2 * (MAX_TEMPLATE + 16) + MAX_ID_LEN + 16;
        CATALOGUE_LIMIT * (std::mem::size_of::<Family>() + texts)
    }

    /// Notes an event's routing key and account: its first segment is the family, and its
    /// first two segments plus `#` the template.
    pub fn note(&self, routing_key: &str, account: Option<&str>) {
        let mut segments = routing_key.splitn(3, '.');
        let family = segments.next().unwrap_or_default();
        let template = match (segments.next(), segments.next()) {
            (Some(second), Some(_)) => format!("{family}.{second}.#"),
            (Some(second), None) => format!("{family}.{second}"),
            (None, _) => family.to_owned(),
        };
        // Longer ones are kept out, so the catalogue stays small whatever the keys.
        if template.len() > MAX_TEMPLATE || account.is_some_and(|a| a.len() > MAX_ID_LEN) {
            return;
        }
        let mut seen = self.seen.borrow_mut();
        let known = seen.iter().any(|seen| {
            seen.family == family && seen.template == template && seen.account.as_deref() == account
        });
        if !known && seen.len() < CATALOGUE_LIMIT {
            seen.push(Family {
                account: account.map(str::to_owned),
                family: family.to_owned(),
                template,
            });
        }
    }

    /// The templates, plus the families `scope` may see (none for `None`: no credential).
    fn listing(&self, scope: Option<&str>) -> Value {
        let mut families = serde_json::Map::new();
        let call: Vec<Value> = CALL_EVENTS
            .iter()
            .map(|e| json!(format!("call.{e}.{{CALL_ID}}")))
            .collect();
        families.insert("call".to_owned(), Value::Array(call));
        let Some(scope) = scope else {
            return Value::Object(families);
        };
        for seen in self.seen.borrow().iter() {
            if !live::visible(seen.account.as_deref(), scope) {
                continue;
            }
            let list = families
                .entry(seen.family.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = list {
                if !list.contains(&json!(seen.template)) {
                    list.push(json!(seen.template));
                }
            }
        }
        Value::Object(families)
    }
}

/// `GET /v2/websockets`: the catalogue, as Kazoo's Crossbar answers it. No credential is
/// needed for the templates; the families seen are shown to a credential, its account's only
/// (contract: live-api.md). A credential that is sent but wrong is 401, as on the live API.
pub fn websockets(request: &Request, catalogue: &Catalogue, auth: &Auth) -> Response {
    if request.method != "GET" {
        return Response::method_not_allowed("GET");
    }
    let header = request.header("authorization");
    let scope = match auth.by_authorization(header) {
        Some(credential) => Some(credential.account.clone()),
        None if header.is_none() => None,
        None => return unauthorized(),
    };
    let version = concat!("callwire ", env!("CARGO_PKG_VERSION"));
    let listing = catalogue.listing(scope.as_deref());
    Response::json(
        200,
        &json!({"status": "success", "data": listing, "version": version}),
    )
}

/// 401, with the challenge HTTP requires.
fn unauthorized() -> Response {
    let mut response = Response::error(401, "a valid credential is required");
    response
        .headers
        .push(("WWW-Authenticate", "Basic realm=\"callwire\"".to_owned()));
    response
}

/// Everything the live API answers from.
pub struct LiveApi<'a> {
    pub auth: &'a Auth,
    pub live: &'a RefCell<LiveState>,
    pub history: &'a RefCell<History>,
    pub commands: &'a Commands,
}

impl LiveApi<'_> {
    /// Answers one request under `/rest/live`.
    pub fn route(&self, request: &Request) -> Response {
        let Some(credential) = self.auth.by_authorization(request.header("authorization")) else {
            return unauthorized();
        };
        let Some(segments) = segments(&request.path) else {
            return Response::error(400, &format!("malformed path {}", request.path));
        };
        let scope = credential.account.as_str();
        let method = request.method.as_str();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        if segments == ["events"] {
            if method != "GET" {
                return Response::method_not_allowed("GET");
            }
            let since = request.query_param("since");
            return match events_since(&mut self.history.borrow_mut(), since, scope) {
                Ok(answer) => Response::json(200, &answer),
                Err(message) => Response::error(400, &message),
            };
        }
        let live = self.live.borrow();
        match segments.as_slice() {
            ["calls"] => listed(method, || Ok(listing::calls(scope.to_owned(), None))),
            ["calls", id] => read(method, || live.call(scope, id).ok_or_else(|| no_call(id))),
            ["calls", id, "events"] => listed(method, || {
                live.call(scope, id).ok_or_else(|| no_call(id))?;
                Ok(listing::events(scope.to_owned(), (*id).to_owned()))
            }),
            ["calls", id, "hangup"] => {
                if method != "POST" {
                    return Response::method_not_allowed("POST");
                }
                if body_too_large(request) {
                    return Response::error(413, "a hangup takes no body");
                }
                let Some(call) = live.call(scope, id) else {
                    return Response::error(404, &no_call(id));
                };
                match self.commands.hangup(id, call.source.as_str()) {
                    Ok(()) => Response::json(202, &json!({"status": "accepted", "call_id": id})),
                    Err(err) => Response::error(hangup_status(&err), &err.to_string()),
                }
            }
            ["extensions"] => listed(method, || Ok(listing::extensions(scope.to_owned()))),
            ["extensions", number] => listed(method, || {
                let (scope, number) = known_extension(&live, scope, number)?;
                Ok(listing::extension(scope, number))
            }),
            ["extensions", number, "calls"] => listed(method, || {
                let (scope, number) = known_extension(&live, scope, number)?;
                Ok(listing::calls(scope, Some(number)))
            }),
            _ => Response::error(404, &format!("no such resource {}", request.path)),
        }
    }
}

/// The status of a hangup the source did not take (live-api.md): 503 asks to try again later,
/// 422 says this call's command can never be routed, 501 that no broker will ever take one.
fn hangup_status(err: &HangupError) -> u16 {
    match err {
        HangupError::Disconnected | HangupError::Full => 503,
        HangupError::Unroutable(_) => 422,
        HangupError::NoBroker => 501,
    }
}

/// A GET answer: 200 with the value, 404 with the message, 405 for any other method.
fn read<T: Serialize>(method: &str, answer: impl FnOnce() -> Result<T, String>) -> Response {
    if method != "GET" {
        return Response::method_not_allowed("GET");
    }
    match answer() {
        Ok(value) => Response::json(200, &value),
        Err(message) => Response::error(404, &message),
    }
}

/// A GET answer written in pieces: 200 with the listing, 404 with the message, 405 for any
/// other method.
fn listed(method: &str, answer: impl FnOnce() -> Result<Pieces, String>) -> Response {
    if method != "GET" {
        return Response::method_not_allowed("GET");
    }
    match answer() {
        Ok(pieces) => Response::pieces("application/json", pieces),
        Err(message) => Response::error(404, &message),
    }
}

/// The scope and number of an extension that takes part in a live call `scope` may see, or
/// the 404 message.
fn known_extension(
    live: &LiveState,
    scope: &str,
    number: &str,
) -> Result<(String, String), String> {
    match live.calls(scope).any(|call| call.has_number(number)) {
        true => Ok((scope.to_owned(), number.to_owned())),
        false => Err(format!("no extension {number}")),
    }
}

fn no_call(id: &str) -> String {
    format!("no call {id}")
}

/// A body larger than a hangup could need, by its declared length.
fn body_too_large(request: &Request) -> bool {
    const MAX_BODY: u64 = 4096;
    // The server has answered 400 to a length that is not one number.
    matches!(request.content_length(), Ok(Some(length)) if length > MAX_BODY)
}

/// A payload as JSON when it is, else as a JSON string.
fn payload_json(payload: &[u8]) -> Value {
    serde_json::from_slice::<Value>(payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
}

/// `GET /rest/live/events?since=<epoch>:<offset>` (delivery.md): the events after that
/// position that `scope` may see, oldest first, bounded per answer; `next` is the position to
/// ask from next. A position the history cannot resume from gets no events, `recovered:
/// false`, and the current position as `next`.
fn events_since(history: &mut History, since: Option<&str>, scope: &str) -> Result<Value, String> {
    let since = since
        .and_then(percent_decode)
        .ok_or("since=<epoch>:<offset> is required")?;
    let (epoch, offset) = since
        .rsplit_once(':')
        .and_then(|(epoch, offset)| Some((epoch, offset.parse::<u64>().ok()?)))
        .ok_or_else(|| format!("since: expected <epoch>:<offset>, got {since}"))?;
    history.expire(std::time::Instant::now());
    let epoch_now = history.epoch().to_string();
    let mut next = history.last_offset();
    let mut events = Vec::new();
    let mut more = false;
    let recovered = match history.resume(epoch, offset) {
        // The REST resume answers from memory only; a client older than it resyncs.
        Resume::Lost | Resume::Archived { .. } => false,
        Resume::Recovered { from } => {
            let mut bytes = 0;
            for entry in history.entries_from(from) {
                if !entry.visible_to(scope) {
                    continue;
                }
                bytes += entry.payload.len();
                if !events.is_empty()
                    && (events.len() == EVENTS_PER_RESPONSE || bytes > EVENT_BYTES_PER_RESPONSE)
                {
                    // Everything before this entry was answered or not the caller's.
                    next = entry.offset - 1;
                    more = true;
                    break;
                }
                events.push(json!({
                    "offset": entry.offset,
                    "routing_key": &*entry.routing_key,
                    "data": payload_json(&entry.payload),
                }));
            }
            true
        }
    };
    Ok(json!({
        "epoch": epoch_now,
        "recovered": recovered,
        "events": events,
        "next": format!("{epoch_now}:{next}"),
        "more": more,
    }))
}

/// The percent-decoded segments after `/rest/live/`; `None` for a malformed path (an empty
/// segment, bad percent-encoding, or a segment that is not UTF-8). One trailing `/` is allowed.
fn segments(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix("/rest/live/")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    rest.split('/').map(percent_decode).collect()
}

/// A non-empty segment, percent-decoded.
fn percent_decode(segment: &str) -> Option<String> {
    if segment.is_empty() {
        return None;
    }
    percent::decode(segment).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_decoded_segments() {
        assert_eq!(segments("/rest/live/calls").unwrap(), ["calls"]);
        assert_eq!(segments("/rest/live/calls/").unwrap(), ["calls"]);
        assert_eq!(
            segments("/rest/live/calls/1795428935%2E454/events").unwrap(),
            ["calls", "1795428935.454", "events"]
        );
        for malformed in [
            "/rest/live/calls//events",
            "/rest/live/calls/%zz",
            "/rest/live/calls/%2",
            "/rest/live/",
            "/rest/live/calls/%ff",
            "/rest/live/calls/%+1",
        ] {
            assert!(segments(malformed).is_none(), "{malformed}");
        }
    }

    /// A live API over `commands` with one live call for each of `ids`; answers the status of
    /// a hangup of each id in `hangups`, in turn.
    fn hangup_statuses(commands: &Commands, ids: &[&str], hangups: &[&str]) -> Vec<u16> {
        let limits = crate::cli::limits_from(&[]);
        let metrics = std::rc::Rc::new(crate::metrics::Metrics::default());
        let live = RefCell::new(LiveState::new(8, 4, metrics));
        for id in ids {
            let payload = json!({"Event-Name": "CHANNEL_CREATE", "Call-ID": id}).to_string();
            let key = format!("call.CHANNEL_CREATE.{id}");
            live.borrow_mut()
                .apply(&crate::event::Event::new(key, payload.into()));
        }
        let history = RefCell::new(History::new(&limits));
        let auth = Auth::open();
        let api = LiveApi {
            auth: &auth,
            live: &live,
            history: &history,
            commands,
        };
        let hangup = |id: &&str| {
            let line = format!("POST /rest/live/calls/{id}/hangup HTTP/1.1");
            api.route(&crate::http::test_request(&line, &[])).status
        };
        hangups.iter().map(hangup).collect()
    }

    #[test]
    fn a_hangup_on_the_demo_source_is_501_and_an_unknown_call_404() {
        let statuses = hangup_statuses(&Commands::None, &["c1"], &["c1", "c2"]);
        assert_eq!(
            statuses,
            [501, 404],
            "no broker will ever take it: not a 503"
        );
    }

    /// Each way an AMQP publisher refuses a hangup gets its own status: 503 for what may pass
    /// later (not connected, queue full), 422 for a call id no routing key can hold.
    #[test]
    fn a_refused_hangup_is_503_while_it_may_pass_later_and_422_when_it_never_can() {
        use crate::source::amqp::{self, AmqpOptions, PUBLISH_QUEUE};
        use crate::source::{SourceKind, SourceStatus};
        let status = std::rc::Rc::new(SourceStatus::new(SourceKind::Amqp));
        // Never polled: the publisher only queues, which is all a hangup waits for.
        let (publisher, _, _driver) = amqp::start(
            AmqpOptions::from_url("amqp://127.0.0.1:1").unwrap(),
            status.clone(),
            std::rc::Rc::new(crate::metrics::Metrics::default()),
            std::rc::Rc::new(|_| {}),
        );
        let commands = Commands::Amqp(publisher);
        // 241 bytes fit the live state (255) but not `command.hangup.<id>` (255).
        let long = "x".repeat(241);
        let fits = "y".repeat(240);
        let ids = ["c1", long.as_str(), fits.as_str()];
        assert_eq!(hangup_statuses(&commands, &ids, &["c1"]), [503]);
        status.set_connected(true);
        let statuses = hangup_statuses(&commands, &ids, &[&long, &fits]);
        assert_eq!(statuses, [422, 202]);
        // One queued already (`fits`): fill the rest, then one more is refused for now.
        let fill = vec!["c1"; PUBLISH_QUEUE - 1];
        let statuses = hangup_statuses(&commands, &ids, &fill);
        assert!(statuses.iter().all(|&status| status == 202), "{statuses:?}");
        assert_eq!(hangup_statuses(&commands, &ids, &["c1"]), [503]);
    }

    /// Records an event of `account` with `size` bytes of padding.
    fn record(history: &mut History, account: &str, size: usize) {
        let payload = format!(
            r#"{{"Account-ID":"{account}","pad":"{}"}}"#,
            "x".repeat(size)
        );
        let mut event = crate::event::Event::new("k.k".to_owned(), payload.into_bytes().into());
        history.record(&mut event);
    }

    #[test]
    fn events_since_are_scoped_and_paged_by_count_and_bytes() {
        let limits = crate::cli::limits_from(&[]);
        let mut history = History::with_epoch("e1".into(), &limits);
        for n in 0..1200 {
            record(&mut history, if n % 2 == 0 { "a" } else { "b" }, 10);
        }
        let page = |history: &mut History, since: &str, scope: &str| {
            events_since(history, Some(since), scope).unwrap()
        };
        let offsets = |answer: &Value| -> Vec<u64> {
            let events = answer["events"].as_array().unwrap();
            events
                .iter()
                .map(|e| e["offset"].as_u64().unwrap())
                .collect()
        };
        // Every account: 500, 500, then 200, each from where the last stopped.
        let first = page(&mut history, "e1:0", "*");
        assert_eq!(offsets(&first), (1..=500).collect::<Vec<_>>());
        assert_eq!(
            (&first["more"], &first["next"]),
            (&json!(true), &json!("e1:500"))
        );
        let second = page(&mut history, "e1:500", "*");
        assert_eq!(offsets(&second), (501..=1000).collect::<Vec<_>>());
        let last = page(&mut history, "e1:1000", "*");
        assert_eq!(offsets(&last).len(), 200);
        assert_eq!(
            (&last["more"], &last["next"]),
            (&json!(false), &json!("e1:1200"))
        );
        assert_eq!(last["events"][0]["data"]["Account-ID"], "a");
        // One account: only its events, and `next` past the others' too.
        let a = page(&mut history, "e1:1000", "a");
        assert_eq!(offsets(&a), (1001..=1200).step_by(2).collect::<Vec<_>>());
        assert_eq!(a["next"], "e1:1200");
        // The byte bound: large payloads stop a page early, but never before its first.
        for _ in 0..3 {
            record(&mut history, "a", 300 * 1024);
        }
        let big = page(&mut history, "e1:1200", "a");
        assert_eq!(offsets(&big), [1201]);
        assert_eq!(
            (&big["more"], &big["next"]),
            (&json!(true), &json!("e1:1201"))
        );
        // Lost or malformed.
        let lost = page(&mut history, "e0:5", "*");
        assert_eq!(lost["recovered"], false);
        assert_eq!(
            (&lost["events"], &lost["next"]),
            (&json!([]), &json!("e1:1203"))
        );
        for bad in [None, Some("e1"), Some("e1:x"), Some("")] {
            assert!(events_since(&mut history, bad, "*").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_catalogue_lists_kazoo_templates_and_families_seen() {
        let catalogue = Catalogue::default();
        catalogue.note("conference.event.abc.def", None);
        catalogue.note("conference.event.xyz", Some("acc1"));
        catalogue.note("presence", None);
        let listing = catalogue.listing(Some("*"));
        assert!(
            listing["call"]
                .as_array()
                .unwrap()
                .contains(&json!("call.CHANNEL_CREATE.{CALL_ID}"))
        );
        assert_eq!(listing["conference"], json!(["conference.event.#"]));
        assert_eq!(listing["presence"], json!(["presence"]));
        for n in 0..1000 {
            catalogue.note(&format!("f{n}.x"), None);
        }
        assert_eq!(catalogue.seen.borrow().len(), CATALOGUE_LIMIT);
    }

    #[test]
    fn the_catalogue_shows_families_to_their_own_account_only() {
        let catalogue = Catalogue::default();
        catalogue.note("acmeCorpSecretProject.CALL_PARKED.x", Some("acme"));
        catalogue.note("presence.update", Some("other"));
        catalogue.note("system.heartbeat", None);
        let families = |scope| {
            let listing = catalogue.listing(scope);
            let mut keys: Vec<String> = listing.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            keys
        };
        assert_eq!(families(None), ["call"]);
        assert_eq!(families(Some("acme")), ["acmeCorpSecretProject", "call"]);
        assert_eq!(families(Some("other")), ["call", "presence"]);
        assert_eq!(
            families(Some("*")),
            ["acmeCorpSecretProject", "call", "presence", "system"]
        );
    }
}
