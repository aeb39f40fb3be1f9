//! A live call as the state file keeps it (`state`, delivery.md "Restarts"): every field the
//! table holds, its recent events included, so that a call restored after a restart goes on
//! exactly as it would have. Restoring cuts every text and the recent events to the bounds a
//! live call keeps, whatever the file says: a state file is input like any other.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::shapes::CallSource;
use super::{
    CALL_EVENTS_BYTES, Call, CallState, MAX_ID_LEN, MAX_KEY_LEN, MAX_TEXT_LEN, Party, RecentEvent,
    cap,
};
use crate::encoding::{base64, from_nanos, nanos};

/// One call in the file. Borrowed from the table when saved, owned when read back.
#[derive(Serialize, Deserialize)]
pub struct SavedCall<'a> {
    id: Cow<'a, str>,
    account: Option<Cow<'a, str>>,
    source: Cow<'a, str>,
    state: Cow<'a, str>,
    direction: Option<Cow<'a, str>>,
    from: SavedParty<'a>,
    to: SavedParty<'a>,
    /// Nanoseconds since the Unix epoch, as every time in the file.
    started_at: u64,
    answered_at: Option<u64>,
    other_leg: Option<Cow<'a, str>>,
    last_event: Cow<'a, str>,
    events: u64,
    bridged: bool,
    recent: Vec<SavedRecent<'a>>,
}

#[derive(Serialize, Deserialize)]
struct SavedParty<'a> {
    number: Option<Cow<'a, str>>,
    name: Option<Cow<'a, str>>,
}

#[derive(Serialize, Deserialize)]
struct SavedRecent<'a> {
    routing_key: Cow<'a, str>,
    received_at: u64,
    #[serde(with = "base64")]
    payload: Cow<'a, [u8]>,
    size: usize,
}

fn text(value: &Option<String>) -> Option<Cow<'_, str>> {
    value.as_deref().map(Cow::Borrowed)
}

/// An owned text from the file, cut to `max` bytes.
fn capped(value: Option<Cow<'_, str>>, max: usize) -> Option<String> {
    value.map(|value| cap(&value, max).to_owned())
}

impl<'a> SavedCall<'a> {
    /// The call as the file keeps it, borrowing from the table.
    pub fn of(call: &'a Call) -> SavedCall<'a> {
        let party = |party: &'a Party| SavedParty {
            number: text(&party.number),
            name: text(&party.name),
        };
        SavedCall {
            id: Cow::Borrowed(&call.id),
            account: text(&call.account),
            source: Cow::Borrowed(call.source.as_str()),
            state: Cow::Borrowed(call.state.as_str()),
            direction: text(&call.direction),
            from: party(&call.from),
            to: party(&call.to),
            started_at: nanos(call.started_at),
            answered_at: call.answered_at.map(nanos),
            other_leg: text(&call.other_leg),
            last_event: Cow::Borrowed(&call.last_event),
            events: call.events,
            bridged: call.bridged,
            recent: (call.recent.iter())
                .map(|recent| SavedRecent {
                    routing_key: Cow::Borrowed(&recent.routing_key),
                    received_at: nanos(recent.received_at),
                    payload: Cow::Borrowed(&recent.payload),
                    size: recent.size,
                })
                .collect(),
        }
    }

    /// The call again, within a live call's bounds (`events_per_call`, the text lengths, the
    /// recent events' bytes), with its place `serial` in start order. An unknown source or
    /// state is refused with the reason.
    pub fn into_call(self, events_per_call: usize, serial: u64) -> Result<Call, String> {
        const SOURCES: [CallSource; 4] = [
            CallSource::Kazoo,
            CallSource::FreeSwitch,
            CallSource::AsteriskAri,
            CallSource::AsteriskMqtt,
        ];
        const STATES: [CallState; 4] = [
            CallState::Ringing,
            CallState::Answered,
            CallState::Held,
            CallState::Bridged,
        ];
        let source = SOURCES
            .into_iter()
            .find(|s| s.as_str() == self.source)
            .ok_or_else(|| format!("call '{}': unknown source '{}'", self.id, self.source))?;
        let state = STATES
            .into_iter()
            .find(|s| s.as_str() == self.state)
            .ok_or_else(|| format!("call '{}': unknown state '{}'", self.id, self.state))?;
        let party = |party: SavedParty<'_>| Party {
            number: capped(party.number, MAX_TEXT_LEN),
            name: capped(party.name, MAX_TEXT_LEN),
        };
        let mut recent = VecDeque::with_capacity(events_per_call);
        let mut recent_bytes = 0;
        // The newest events a live call would keep: the last `events_per_call`, within
        // `CALL_EVENTS_BYTES` of payload.
        for saved in self.recent.into_iter().rev().take(events_per_call) {
            let keep = saved.payload.len().min(CALL_EVENTS_BYTES);
            if recent_bytes + keep > CALL_EVENTS_BYTES {
                break;
            }
            recent_bytes += keep;
            recent.push_front(RecentEvent {
                routing_key: cap(&saved.routing_key, MAX_KEY_LEN).into(),
                received_at: from_nanos(saved.received_at),
                payload: Bytes::copy_from_slice(&saved.payload[..keep]),
                size: saved.size.max(keep),
            });
        }
        Ok(Call {
            id: Rc::from(cap(&self.id, MAX_ID_LEN)),
            account: capped(self.account, MAX_ID_LEN),
            source,
            state,
            direction: capped(self.direction, MAX_TEXT_LEN),
            from: party(self.from),
            to: party(self.to),
            started_at: from_nanos(self.started_at),
            answered_at: self.answered_at.map(from_nanos),
            other_leg: capped(self.other_leg, MAX_ID_LEN),
            last_event: cap(&self.last_event, MAX_TEXT_LEN).to_owned(),
            events: self.events,
            bridged: self.bridged,
            recent,
            recent_bytes,
            serial,
        })
    }
}
