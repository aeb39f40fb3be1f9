//! The four PBX shape recognisers (`live::shapes::observe`) and the live state they drive
//! (`LiveState::apply`): each input line is an event payload. Each observation is checked
//! against a recogniser written from events.md's table, each change against a model of the
//! live calls (start, answer, hold, bridge, end, eviction of the oldest, late events of ended
//! calls), and after every event the state's listings against the model.

#![no_main]

use std::collections::VecDeque;
use std::rc::Rc;

use callwire::live::shapes::{Step, observe};
use callwire::live::{CALL_EVENTS_BYTES, ChangeKind, LiveState, MAX_ID_LEN};
use callwire::metrics::Metrics;
use callwire_fuzz::{LIMITS, event, is_rfc3339_seconds, reference_account, visible};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

/// What events.md says an event is: (source, call id, step).
fn recognise(fields: &Map<String, Value>) -> Option<(&'static str, &str, Step)> {
    /// A non-empty string field.
    fn s<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
        map.get(name)?.as_str().filter(|s| !s.is_empty())
    }
    // FreeSWITCH: `Event-Name` and `Unique-ID`, every value a string.
    if let (Some(name), Some(id)) = (s(fields, "Event-Name"), s(fields, "Unique-ID"))
        && fields.values().all(Value::is_string)
    {
        let step = match name {
            "CHANNEL_CREATE" => Step::Start,
            "CHANNEL_ANSWER" => Step::Answer,
            "CHANNEL_HOLD" => Step::Hold,
            "CHANNEL_UNHOLD" => Step::Unhold,
            "CHANNEL_BRIDGE" => Step::Bridge,
            "CHANNEL_HANGUP_COMPLETE" | "CHANNEL_DESTROY" => Step::End,
            _ => Step::Other,
        };
        return Some(("freeswitch", id, step));
    }
    // Kazoo: `Event-Name`/`event_name` is CHANNEL_* or PARK_*, the call `Call-ID`/`call_id`.
    let kazoo_name = ["Event-Name", "event_name"]
        .into_iter()
        .filter_map(|field| s(fields, field))
        .find(|name| name.starts_with("CHANNEL_") || name.starts_with("PARK_"));
    if let (Some(name), Some(id)) = (kazoo_name, s(fields, "Call-ID").or(s(fields, "call_id"))) {
        let step = match name {
            "CHANNEL_CREATE" => Step::Start,
            "CHANNEL_ANSWER" => Step::Answer,
            "CHANNEL_HOLD" => Step::Hold,
            "CHANNEL_UNHOLD" => Step::Unhold,
            "CHANNEL_BRIDGE" => Step::Bridge,
            "CHANNEL_DESTROY" => Step::End,
            _ => Step::Other,
        };
        return Some(("kazoo", id, step));
    }
    // ARI: `type` plus a `channel` object with an `id`.
    if let Some(kind) = s(fields, "type")
        && let Some(channel) = fields.get("channel").and_then(Value::as_object)
        && let Some(id) = s(channel, "id")
    {
        let up = channel.get("state").and_then(Value::as_str) == Some("Up");
        let bridged_to_another = kind == "ChannelEnteredBridge"
            && fields
                .get("bridge")
                .and_then(|b| b.get("channels"))
                .and_then(Value::as_array)
                .is_some_and(|channels| {
                    channels
                        .iter()
                        .filter_map(Value::as_str)
                        .any(|other| !other.is_empty() && other != id)
                });
        let step = match kind {
            "StasisStart" if !up => Step::Start,
            "ChannelDestroyed" => Step::End,
            "StasisEnd" => Step::Left,
            "ChannelHold" => Step::Hold,
            "ChannelUnhold" => Step::Unhold,
            "ChannelEnteredBridge" if bridged_to_another => Step::Bridge,
            _ if up => Step::Answer,
            _ => Step::Other,
        };
        return Some(("asterisk-ari", id, step));
    }
    // AMI-to-MQTT bridge: `event` ringing, answered or hungup, the call `call_id`.
    let step = match s(fields, "event")? {
        "ringing" => Step::Start,
        "answered" => Step::Answer,
        "hungup" => Step::End,
        _ => return None,
    };
    Some(("asterisk-mqtt", s(fields, "call_id")?, step))
}

/// A live call as the model keeps it.
struct Call {
    id: String,
    account: Option<String>,
    state: &'static str,
    bridged: bool,
    events: u64,
    /// The payload bytes each recent event keeps, oldest first.
    kept: VecDeque<usize>,
}

impl Call {
    fn apply(&mut self, step: Step, account: &Option<String>, size: usize) {
        self.events += 1;
        if LIMITS.events_per_call > 0 {
            // The last events that fit both the count and the bytes a call keeps; a longer
            // payload is cut to the bytes.
            self.kept.push_back(size.min(CALL_EVENTS_BYTES));
            while self.kept.len() > LIMITS.events_per_call
                || self.kept.iter().sum::<usize>() > CALL_EVENTS_BYTES
            {
                self.kept.pop_front();
            }
        }
        if self.account.is_none() {
            self.account.clone_from(account);
        }
        match step {
            Step::Answer if self.state == "ringing" => self.state = "answered",
            Step::Hold => self.state = "held",
            Step::Unhold => self.state = if self.bridged { "bridged" } else { "answered" },
            Step::Bridge => {
                self.bridged = true;
                self.state = "bridged";
            }
            _ => {}
        }
    }

    /// (kind, id, state, events, account) of a change carrying this call.
    fn change(&self, kind: ChangeKind) -> (ChangeKind, String, String, u64, Option<String>) {
        (
            kind,
            self.id.clone(),
            self.state.to_owned(),
            self.events,
            self.account.clone(),
        )
    }
}

/// The live calls, oldest first, and the (id, account) of the last 1024 ended or evicted.
#[derive(Default)]
struct Model {
    calls: Vec<Call>,
    ended: VecDeque<(String, Option<String>)>,
}

impl Model {
    fn end(&mut self, call: &Call) {
        if self.ended.len() == 1024 {
            self.ended.pop_front();
        }
        self.ended
            .push_back((call.id.clone(), call.account.clone()));
    }

    fn apply(
        &mut self,
        id: &str,
        step: Step,
        account: &Option<String>,
        size: usize,
    ) -> Vec<(ChangeKind, String, String, u64, Option<String>)> {
        // Ids and accounts are kept cut to their longest.
        let id = cut(id, MAX_ID_LEN);
        let account = &account
            .as_deref()
            .map(|account| cut(account, MAX_ID_LEN).to_owned());
        // The newest live call of that id whose account is the event's, or unknown, or any
        // when the event names none: one call id may be two accounts' calls.
        let own = |c: &Call| {
            c.id == id && (c.account.is_none() || account.is_none() || c.account == *account)
        };
        let ends = matches!(step, Step::End | Step::Left);
        if let Some(at) = self.calls.iter().rposition(own) {
            self.calls[at].apply(step, account, size);
            if !ends {
                return vec![self.calls[at].change(ChangeKind::Update)];
            }
            let call = self.calls.remove(at);
            // StasisEnd: the channel left the application and may come back.
            if step == Step::End {
                self.end(&call);
            }
            return vec![call.change(ChangeKind::Destroy)];
        }
        let late = step != Step::Start
            && self
                .ended
                .iter()
                .any(|(ended, of)| ended == id && of == account);
        if ends || late {
            return Vec::new();
        }
        let mut changes = Vec::new();
        if self.calls.len() >= LIMITS.max_calls {
            let oldest = self.calls.remove(0);
            self.end(&oldest);
            changes.push(oldest.change(ChangeKind::Destroy));
        }
        let mut call = Call {
            id: id.to_owned(),
            account: None,
            state: "ringing",
            bridged: false,
            events: 0,
            kept: VecDeque::new(),
        };
        call.apply(step, account, size);
        changes.push(call.change(ChangeKind::Create));
        self.calls.push(call);
        changes
    }
}

fuzz_target!(|data: &[u8]| {
    let mut live = LiveState::new(
        LIMITS.max_calls,
        LIMITS.events_per_call,
        Rc::new(Metrics::default()),
    );
    let mut model = Model::default();
    for payload in data.split(|&b| b == b'\n') {
        let event = event("pbx.fuzz", payload);
        let account = reference_account(event.json.as_ref());
        assert_eq!(event.account, account);
        let expected = event
            .json
            .as_ref()
            .and_then(Value::as_object)
            .and_then(recognise);
        let seen = observe(&event);
        assert_eq!(
            seen.as_ref().map(|o| (o.source.as_str(), o.id, o.step)),
            expected,
            "{:?}",
            String::from_utf8_lossy(payload)
        );
        if let Some(seen) = &seen {
            assert!(!seen.name.is_empty());
            for party in [seen.from, seen.to] {
                assert_ne!(party.number, Some(""));
                assert_ne!(party.name, Some(""));
            }
        }

        let changes: Vec<_> = live
            .apply(&event)
            .into_iter()
            .map(|c| {
                let call = &c.call;
                for time in [&call["started_at"], &call["answered_at"]] {
                    assert!(
                        time.is_null() || time.as_str().is_some_and(is_rfc3339_seconds),
                        "a time in the live API: {time} from {:?}",
                        String::from_utf8_lossy(payload)
                    );
                }
                assert_eq!(c.account.as_deref(), call["account"].as_str());
                (
                    c.kind,
                    call["id"].as_str().unwrap_or_default().to_owned(),
                    call["state"].as_str().unwrap_or_default().to_owned(),
                    call["events"].as_u64().unwrap_or_default(),
                    c.account.clone(),
                )
            })
            .collect();
        let want = match expected {
            Some((_, id, step)) => model.apply(id, step, &account, payload.len()),
            None => Vec::new(),
        };
        assert_eq!(changes, want, "{:?}", String::from_utf8_lossy(payload));

        // The listings agree with the model, whoever asks.
        assert_eq!(live.len(), model.calls.len());
        let mut scopes = vec!["*", "acc1"];
        scopes.extend(model.calls.iter().filter_map(|c| c.account.as_deref()));
        for scope in scopes {
            let listed: Vec<&str> = live.calls(scope).map(|c| &*c.id).collect();
            let modelled: Vec<&str> = model
                .calls
                .iter()
                .filter(|c| visible(c.account.as_deref(), scope))
                .map(|c| c.id.as_str())
                .collect();
            assert_eq!(listed, modelled, "calls({scope:?})");
            for id in model.calls.iter().map(|c| &c.id) {
                // The newest call of that id the scope may see.
                let call = model
                    .calls
                    .iter()
                    .rev()
                    .find(|c| c.id == *id && visible(c.account.as_deref(), scope));
                let found = live.call(scope, id);
                assert_eq!(found.is_some(), call.is_some());
                if let (Some(found), Some(call)) = (found, call) {
                    assert_eq!(found.account, call.account);
                    assert_eq!(found.state.as_str(), call.state);
                    let recent: Vec<usize> = found
                        .recent_events()
                        .map(|event| event.payload.len())
                        .collect();
                    assert_eq!(recent, Vec::from(call.kept.clone()));
                }
            }
        }
    }
});

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let end = text
        .char_indices()
        .map(|(at, ch)| at + ch.len_utf8())
        .take_while(|&end| end <= max)
        .last()
        .unwrap_or(0);
    &text[..end]
}
