//! Recognisers for the PBX event shapes that carry call state (events.md, "PBX event shapes to
//! recognise"): Kazoo, FreeSWITCH `mod_amqp`, Asterisk ARI and AMI-to-MQTT bridges.
//!
//! A shape is told by its fields, never by the routing key, so no broker layout can hide a
//! call. Each recogniser reads only the fields it needs and treats a field of the wrong type as
//! absent, so any JSON at all gives an observation or `None`, never a panic. Observations
//! borrow from the event's parsed payload: a call that already knows its parties copies
//! nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::event::Event;

/// Seconds from 0000-01-01 (proleptic Gregorian) to the Unix epoch: Kazoo's clock origin.
const GREGORIAN_OFFSET: u64 = 62_167_219_200;

/// Which PBX shape a call's events have: the call's `source` in the live API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallSource {
    /// Kazoo `callevt` (or its Blackhole-normalised snake_case form).
    Kazoo,
    /// FreeSWITCH `mod_amqp`.
    FreeSwitch,
    /// Asterisk REST Interface events.
    AsteriskAri,
    /// An AMI-to-MQTT bridge.
    AsteriskMqtt,
}

impl CallSource {
    /// The live API's name: `kazoo`, `freeswitch`, `asterisk-ari` or `asterisk-mqtt`.
    pub fn as_str(self) -> &'static str {
        match self {
            CallSource::Kazoo => "kazoo",
            CallSource::FreeSwitch => "freeswitch",
            CallSource::AsteriskAri => "asterisk-ari",
            CallSource::AsteriskMqtt => "asterisk-mqtt",
        }
    }
}

/// What an event does to its call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The call starts ringing.
    Start,
    /// The call is (or is now known to be) answered.
    Answer,
    /// The call is put on hold.
    Hold,
    /// The call is taken off hold.
    Unhold,
    /// The call is bridged to another leg (named in [`Observation::other_leg`] when the event
    /// names it).
    Bridge,
    /// The call ends.
    End,
    /// The call leaves what this source shows (ARI's `StasisEnd`: an application sees nothing
    /// more of a channel that left it). It ends here, but a later event of the same id, if the
    /// channel comes back, starts it again.
    Left,
    /// Any other event of the call: it changes no state, only what the call reports.
    Other,
}

/// A party's number and name as an event gives them; empty strings count as absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartyRef<'a> {
    /// The number or extension.
    pub number: Option<&'a str>,
    /// The display name.
    pub name: Option<&'a str>,
}

/// What one event says about one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation<'a> {
    /// The shape the event had.
    pub source: CallSource,
    /// The call id (Kazoo `Call-ID`, FreeSWITCH `Unique-ID`, ARI `channel.id`, bridge `call_id`).
    pub id: &'a str,
    /// What the event does to the call.
    pub step: Step,
    /// The event's name as the PBX gives it (`CHANNEL_ANSWER`, `StasisStart`, `hungup`, ...).
    pub name: &'a str,
    /// The calling party.
    pub from: PartyRef<'a>,
    /// The called party.
    pub to: PartyRef<'a>,
    /// `Call-Direction`, where the shape has one.
    pub direction: Option<&'a str>,
    /// The leg this call is (or was) bridged to, when the event names it.
    pub other_leg: Option<&'a str>,
    /// The event's own timestamp when it has a usable one, else when callwire received it.
    pub at: SystemTime,
    /// When the call itself began, where the event says (ARI's `channel.creationtime`).
    pub created: Option<SystemTime>,
}

/// Recognises `event` as one of the four shapes, or `None` when it fits none (it still flows
/// to clients; it just changes no call).
pub fn observe(event: &Event) -> Option<Observation<'_>> {
    let fields = event.json.as_ref()?.as_object()?;
    let at = event.received_at;
    // FreeSWITCH first: its CHANNEL_* names would otherwise look like Kazoo's, and only it has
    // every value a string and `Unique-ID` (Kazoo names its call `Call-ID`).
    freeswitch(fields, at)
        .or_else(|| kazoo(fields, at))
        .or_else(|| ari(fields, at))
        .or_else(|| ami_mqtt(fields, at))
}

/// What a `CHANNEL_*` event does to its call, for the two sources that share FreeSWITCH's
/// names; `ends` are the names that end a call, the one place they differ (events.md).
fn channel_step(name: &str, ends: &[&str]) -> Step {
    match name {
        "CHANNEL_CREATE" => Step::Start,
        "CHANNEL_ANSWER" => Step::Answer,
        "CHANNEL_HOLD" => Step::Hold,
        "CHANNEL_UNHOLD" => Step::Unhold,
        "CHANNEL_BRIDGE" => Step::Bridge,
        _ if ends.contains(&name) => Step::End,
        _ => Step::Other,
    }
}

/// Kazoo: `Event-Name`/`event_name` is `CHANNEL_*` or `PARK_*`, the call is `Call-ID`/`call_id`.
fn kazoo(fields: &Map<String, Value>, received_at: SystemTime) -> Option<Observation<'_>> {
    let name = ["Event-Name", "event_name"].iter().find_map(|field| {
        fields
            .get(*field)?
            .as_str()
            .filter(|name| name.starts_with("CHANNEL_") || name.starts_with("PARK_"))
    })?;
    let id = text(fields, &["Call-ID", "call_id"])?;
    let step = channel_step(name, &["CHANNEL_DESTROY"]);
    // Before the callee is known Kazoo leaves Callee-ID empty; the request's user part is the
    // number that was dialled.
    let dialled = || {
        text(fields, &["Request", "request"])
            .and_then(|request| request.split('@').next())
            .filter(|user| !user.is_empty())
    };
    let at = ["Timestamp", "timestamp"]
        .iter()
        .find_map(|field| fields.get(*field).and_then(gregorian_seconds));
    Some(Observation {
        source: CallSource::Kazoo,
        id,
        step,
        name,
        from: PartyRef {
            number: text(fields, &["Caller-ID-Number", "caller_id_number"]),
            name: text(fields, &["Caller-ID-Name", "caller_id_name"]),
        },
        to: PartyRef {
            number: text(fields, &["Callee-ID-Number", "callee_id_number"]).or_else(dialled),
            name: text(fields, &["Callee-ID-Name", "callee_id_name"]),
        },
        direction: text(fields, &["Call-Direction", "call_direction"]),
        other_leg: text(fields, &["Other-Leg-Call-ID", "other_leg_call_id"]),
        at: at.unwrap_or(received_at),
        created: None,
    })
}

/// FreeSWITCH `mod_amqp`: `Event-Name` and `Unique-ID`, every value a string.
fn freeswitch(fields: &Map<String, Value>, received_at: SystemTime) -> Option<Observation<'_>> {
    let name = text(fields, &["Event-Name"])?;
    let id = text(fields, &["Unique-ID"])?;
    if !fields.values().all(Value::is_string) {
        return None;
    }
    let step = channel_step(name, &["CHANNEL_HANGUP_COMPLETE", "CHANNEL_DESTROY"]);
    Some(Observation {
        source: CallSource::FreeSwitch,
        id,
        step,
        name,
        from: PartyRef {
            number: text(fields, &["Caller-Caller-ID-Number"]),
            name: text(fields, &["Caller-Caller-ID-Name"]),
        },
        to: PartyRef {
            number: text(fields, &["Caller-Destination-Number"]),
            name: None,
        },
        direction: text(fields, &["Call-Direction"]),
        other_leg: text(fields, &["Other-Leg-Unique-ID"]),
        at: text(fields, &["Event-Date-Timestamp"])
            .and_then(unix_micros)
            .unwrap_or(received_at),
        created: None,
    })
}

/// Asterisk ARI: `type` plus a `channel` object whose `id` is the call.
fn ari(fields: &Map<String, Value>, received_at: SystemTime) -> Option<Observation<'_>> {
    let kind = text(fields, &["type"])?;
    let channel = object(fields, "channel")?;
    let id = text(channel, &["id"])?;
    let up = text(channel, &["state"]) == Some("Up");
    // ARI names the other leg only as the bridge's other channel.
    let other_leg = (kind == "ChannelEnteredBridge")
        .then(|| object(fields, "bridge")?.get("channels")?.as_array())
        .flatten()
        .and_then(|channels| {
            channels
                .iter()
                .filter_map(Value::as_str)
                .find(|other| !other.is_empty() && *other != id)
        });
    let step = match kind {
        // A channel that enters the application already up was answered before we saw it.
        "StasisStart" if !up => Step::Start,
        "ChannelDestroyed" => Step::End,
        "StasisEnd" => Step::Left,
        "ChannelHold" => Step::Hold,
        "ChannelUnhold" => Step::Unhold,
        "ChannelEnteredBridge" if other_leg.is_some() => Step::Bridge,
        _ if up => Step::Answer,
        _ => Step::Other,
    };
    let caller = object(channel, "caller");
    Some(Observation {
        source: CallSource::AsteriskAri,
        id,
        step,
        name: kind,
        from: PartyRef {
            number: caller.and_then(|caller| text(caller, &["number"])),
            name: caller.and_then(|caller| text(caller, &["name"])),
        },
        to: PartyRef {
            number: object(channel, "dialplan").and_then(|plan| text(plan, &["exten"])),
            name: object(channel, "connected").and_then(|party| text(party, &["name"])),
        },
        direction: None,
        other_leg,
        at: text(fields, &["timestamp"])
            .and_then(iso8601)
            .unwrap_or(received_at),
        created: text(channel, &["creationtime"]).and_then(iso8601),
    })
}

/// AMI-to-MQTT bridge: `event` is `ringing`, `answered` or `hungup`, the call is `call_id`.
fn ami_mqtt(fields: &Map<String, Value>, received_at: SystemTime) -> Option<Observation<'_>> {
    let name = text(fields, &["event"])?;
    let step = match name {
        "ringing" => Step::Start,
        "answered" => Step::Answer,
        "hungup" => Step::End,
        _ => return None,
    };
    let id = text(fields, &["call_id"])?;
    let party = |side| {
        object(fields, side).map_or_else(PartyRef::default, |party| PartyRef {
            number: text(party, &["extension"]),
            name: text(party, &["name"]),
        })
    };
    Some(Observation {
        source: CallSource::AsteriskMqtt,
        id,
        step,
        name,
        from: party("from"),
        to: party("to"),
        direction: None,
        other_leg: None,
        at: text(fields, &["timestamp"])
            .and_then(iso8601)
            .unwrap_or(received_at),
        created: None,
    })
}

/// The first of `names` whose value in `fields` is a non-empty string.
fn text<'a>(fields: &'a Map<String, Value>, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|name| {
        fields
            .get(*name)?
            .as_str()
            .filter(|value| !value.is_empty())
    })
}

/// The object at `name` in `fields`, if it is one.
fn object<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a Map<String, Value>> {
    fields.get(name)?.as_object()
}

/// 10000-01-01T00:00:00Z: the first instant RFC 3339's four-digit year cannot write.
const YEAR_10000: Duration = Duration::from_secs(253_402_300_800);

/// A time `since` the Unix epoch; the epoch itself and anything before it are taken as unset
/// (switches write zero for a time they do not know), and so is anything from the year 10000
/// on, which the live API could not write as RFC 3339 (a timestamp with digits too many).
fn after_epoch(since: Duration) -> Option<SystemTime> {
    if since.is_zero() || since >= YEAR_10000 {
        return None;
    }
    UNIX_EPOCH.checked_add(since)
}

/// Kazoo's `Timestamp`: seconds since 0000-01-01 (Gregorian), as an integer or a float.
fn gregorian_seconds(value: &Value) -> Option<SystemTime> {
    let since = match value.as_u64() {
        Some(secs) => Duration::from_secs(secs.checked_sub(GREGORIAN_OFFSET)?),
        None => Duration::try_from_secs_f64(value.as_f64()? - GREGORIAN_OFFSET as f64).ok()?,
    };
    after_epoch(since)
}

/// FreeSWITCH's `Event-Date-Timestamp`: microseconds since the Unix epoch, as decimal digits.
fn unix_micros(text: &str) -> Option<SystemTime> {
    // `u64::from_str` would also take a leading `+`.
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    after_epoch(Duration::from_micros(text.parse().ok()?))
}

/// ISO 8601 / RFC 3339 date and time with a zone: `2026-11-23T10:15:30.123+0000`, `...+00:00`,
/// `...+00`, `...Z`, the fraction optional (any number of digits, kept to the nanosecond). A
/// time without a zone is refused: it would be local time, which we cannot know.
fn iso8601(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    let separators = b.get(4) == Some(&b'-')
        && b.get(7) == Some(&b'-')
        && matches!(b.get(10), Some(b'T' | b't' | b' '))
        && b.get(13) == Some(&b':')
        && b.get(16) == Some(&b':');
    let in_range = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour <= 23
        && minute <= 59
        // 60: a leap second.
        && second <= 60;
    if !separators || !in_range {
        return None;
    }
    let mut rest = b.get(19..)?;
    let mut nanos = 0;
    if let [b'.' | b',', tail @ ..] = rest {
        let len = tail.iter().take_while(|b| b.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        let (fraction, after) = tail.split_at(len);
        nanos = fraction
            .iter()
            .chain(std::iter::repeat(&b'0'))
            .take(9)
            .fold(0, |n, d| n * 10 + u32::from(d - b'0'));
        rest = after;
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), zone @ ..] => {
            let (hours, minutes) = match zone {
                [_, _] => (digits(zone, 0, 2)?, 0),
                [_, _, _, _] => (digits(zone, 0, 2)?, digits(zone, 2, 2)?),
                [_, _, b':', _, _] => (digits(zone, 0, 2)?, digits(zone, 3, 2)?),
                _ => return None,
            };
            if hours > 23 || minutes > 59 {
                return None;
            }
            let secs = hours * 3_600 + minutes * 60;
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second - offset;
    after_epoch(Duration::new(u64::try_from(secs).ok()?, nanos))
}

/// The `len` ASCII digits at `at` in `b` as a number.
fn digits(b: &[u8], at: usize, len: usize) -> Option<i64> {
    b.get(at..at.checked_add(len)?)?
        .iter()
        .try_fold(0, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
}

/// Days in `month` (1 to 12) of the proleptic Gregorian `year`.
fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date: the inverse of
/// [`crate::clock::civil_from_days`] (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock;
    use bytes::Bytes;

    /// 2026-11-23T10:15:30Z.
    const UNIX: u64 = 1_795_428_930;

    fn event(payload: &str) -> Event {
        Event::new("k".to_owned(), Bytes::copy_from_slice(payload.as_bytes()))
    }

    fn secs(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn gregorian_seconds_are_kazoo_time() {
        let at = |value: Value| gregorian_seconds(&value);
        assert_eq!(at(Value::from(UNIX + GREGORIAN_OFFSET)), Some(secs(UNIX)));
        assert_eq!(
            at(Value::from((UNIX + GREGORIAN_OFFSET) as f64 + 0.5)),
            Some(secs(UNIX) + Duration::from_millis(500))
        );
        for unset in [
            Value::from(0),
            Value::from(GREGORIAN_OFFSET),
            Value::from(-5),
            Value::from(u64::MAX),
            Value::from(f64::MAX),
            Value::from("63962648130"),
            Value::Null,
        ] {
            assert_eq!(at(unset.clone()), None, "{unset}");
        }
    }

    #[test]
    fn microsecond_strings_are_freeswitch_time() {
        assert_eq!(
            unix_micros("1795428930123456"),
            Some(secs(UNIX) + Duration::from_micros(123_456))
        );
        for bad in [
            "",
            "0",
            "+1795428930123456",
            "1.5",
            "-1",
            "99999999999999999999",
        ] {
            assert_eq!(unix_micros(bad), None, "{bad}");
        }
    }

    #[test]
    fn iso8601_takes_every_zone_form() {
        let millis = secs(UNIX) + Duration::from_millis(123);
        assert_eq!(iso8601("2026-11-23T10:15:30.123+0000"), Some(millis));
        assert_eq!(iso8601("2026-11-23T10:15:30.123+00:00"), Some(millis));
        assert_eq!(iso8601("2026-11-23T10:15:30.123Z"), Some(millis));
        assert_eq!(iso8601("2026-11-23t10:15:30.123z"), Some(millis));
        assert_eq!(iso8601("2026-11-23 10:15:30.123+00"), Some(millis));
        assert_eq!(iso8601("2026-11-23T10:15:30Z"), Some(secs(UNIX)));
        assert_eq!(iso8601("2026-11-23T11:15:30+0100"), Some(secs(UNIX)));
        assert_eq!(iso8601("2026-11-23T04:45:30-05:30"), Some(secs(UNIX)));
        assert_eq!(
            iso8601("2026-11-23T10:15:30.1234567891234Z"),
            Some(secs(UNIX) + Duration::from_nanos(123_456_789))
        );
        assert_eq!(iso8601("2000-02-29T00:00:00Z"), Some(secs(951_782_400)));
        assert_eq!(iso8601("1970-01-01T00:00:01Z"), Some(secs(1)));
        for bad in [
            "",
            "2026-11-23T10:15:30",
            "2026-11-23T10:15:30.Z",
            "2026-11-23T10:15:30Z ",
            "2026-11-23T10:15:30+0000x",
            "2026-11-23T10:15:30+000",
            "2026-11-23T10:15:30+2400",
            "2026-11-23T24:00:00Z",
            "2026-11-23T10:60:00Z",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-00-10T00:00:00Z",
            "2026-11-00T00:00:00Z",
            "2026/11/23T10:15:30Z",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "0000-01-01T00:00:00Z",
            "２０２６-11-23T10:15:30Z",
            "2026-11-23T10:15:3é",
        ] {
            assert_eq!(iso8601(bad), None, "{bad}");
        }
    }

    #[test]
    fn times_from_the_year_10000_on_fall_back_to_receipt() {
        // Found by fuzz/pbx_shapes: a FreeSWITCH timestamp with three digits too many made the
        // call's `started_at` "58864-11-16T11:18:0Z", which is not RFC 3339.
        let last = secs(253_402_300_799);
        assert_eq!(clock::rfc3339(last), "9999-12-31T23:59:59Z");
        assert_eq!(
            unix_micros("253402300799999999"),
            Some(last + Duration::from_micros(999_999))
        );
        assert_eq!(unix_micros("253402300800000000"), None);
        assert_eq!(unix_micros("1795428933482223204"), None);
        let kazoo = |secs: u64| gregorian_seconds(&Value::from(secs + GREGORIAN_OFFSET));
        assert_eq!(kazoo(253_402_300_799), Some(last));
        assert_eq!(kazoo(253_402_300_800), None);
        assert_eq!(iso8601("9999-12-31T23:59:59Z"), Some(last));
        // A four-digit year still reaches the year 10000 through its zone.
        assert_eq!(iso8601("9999-12-31T23:59:59-00:01"), None);
        let mut e = event(
            r#"{"Event-Name":"CHANNEL_CREATE","Unique-ID":"u","Event-Date-Timestamp":"1795428933482223204"}"#,
        );
        e.received_at = secs(42);
        assert_eq!(observe(&e).unwrap().at, secs(42));
    }

    #[test]
    fn days_from_civil_inverts_civil_from_days() {
        for days in (-800_000..800_000).step_by(7) {
            let (year, month, day) = clock::civil_from_days(days);
            assert_eq!(
                days_from_civil(year, i64::from(month), i64::from(day)),
                days
            );
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2026, 11, 23), (UNIX / 86_400) as i64);
    }

    #[test]
    fn kazoo_snake_case_and_request_fallback() {
        let e = event(
            r#"{"event_name":"PARK_PARKED","call_id":"c1","caller_id_number":"356",
                "callee_id_number":"","request":"*97@realm.example","call_direction":"inbound",
                "other_leg_call_id":"c2","timestamp":63962648130}"#,
        );
        let seen = observe(&e).unwrap();
        assert_eq!(seen.source, CallSource::Kazoo);
        assert_eq!(
            (seen.id, seen.step, seen.name),
            ("c1", Step::Other, "PARK_PARKED")
        );
        assert_eq!(seen.from.number, Some("356"));
        assert_eq!(seen.to.number, Some("*97"));
        assert_eq!(seen.direction, Some("inbound"));
        assert_eq!(seen.other_leg, Some("c2"));
        assert_eq!(seen.at, secs(UNIX));
    }

    #[test]
    fn timestamps_fall_back_to_receipt() {
        for payload in [
            r#"{"Event-Name":"CHANNEL_CREATE","Call-ID":"c","Timestamp":"soon"}"#,
            r#"{"Event-Name":"CHANNEL_CREATE","Unique-ID":"c","Event-Date-Timestamp":"x"}"#,
            r#"{"type":"StasisStart","channel":{"id":"c"},"timestamp":"2026-11-23T10:15:30"}"#,
            r#"{"event":"ringing","call_id":"c","timestamp":1795428930}"#,
        ] {
            let mut e = event(payload);
            e.received_at = secs(42);
            let seen = observe(&e).unwrap();
            assert_eq!((seen.step, seen.at), (Step::Start, secs(42)), "{payload}");
        }
    }

    #[test]
    fn shapes_are_told_by_their_fields() {
        let source = |payload: &str| observe(&event(payload)).map(|seen| seen.source);
        // FreeSWITCH needs every value a string; with a number it is not FreeSWITCH, and
        // without `Call-ID` it is not Kazoo either.
        assert_eq!(
            source(r#"{"Event-Name":"CHANNEL_ANSWER","Unique-ID":"u"}"#),
            Some(CallSource::FreeSwitch)
        );
        assert_eq!(
            source(r#"{"Event-Name":"CHANNEL_ANSWER","Unique-ID":"u","n":1}"#),
            None
        );
        assert_eq!(
            source(r#"{"Event-Name":"CHANNEL_ANSWER","Call-ID":"c","Timestamp":1}"#),
            Some(CallSource::Kazoo)
        );
        assert_eq!(source(r#"{"Event-Name":"CONF_JOIN","Call-ID":"c"}"#), None);
        assert_eq!(
            source(r#"{"Event-Name":"CHANNEL_ANSWER","Call-ID":""}"#),
            None
        );
        assert_eq!(
            source(r#"{"type":"ChannelVarset","channel":{"id":"1.2"}}"#),
            Some(CallSource::AsteriskAri)
        );
        assert_eq!(source(r#"{"type":"Dial","peer":{"id":"1.2"}}"#), None);
        assert_eq!(source(r#"{"type":"X","channel":"1.2"}"#), None);
        assert_eq!(
            source(r#"{"event":"hungup","call_id":"1.2"}"#),
            Some(CallSource::AsteriskMqtt)
        );
        assert_eq!(source(r#"{"event":"hold","call_id":"1.2"}"#), None);
        assert_eq!(source(r#"["CHANNEL_CREATE"]"#), None);
        assert_eq!(source("not json"), None);
    }

    #[test]
    fn ari_steps_follow_type_then_channel_state() {
        let step = |kind: &str, state: &str| {
            let payload = format!(
                r#"{{"type":"{kind}","channel":{{"id":"1.2","state":"{state}"}},
                    "bridge":{{"channels":["1.2","1.3"]}}}}"#
            );
            let e = event(&payload);
            let seen = observe(&e).unwrap();
            (seen.step, seen.other_leg.map(str::to_owned))
        };
        assert_eq!(step("StasisStart", "Ring"), (Step::Start, None));
        assert_eq!(step("StasisStart", "Up"), (Step::Answer, None));
        assert_eq!(step("ChannelStateChange", "Up"), (Step::Answer, None));
        assert_eq!(step("ChannelStateChange", "Ringing"), (Step::Other, None));
        assert_eq!(step("ChannelHold", "Up"), (Step::Hold, None));
        assert_eq!(step("ChannelUnhold", "Up"), (Step::Unhold, None));
        assert_eq!(
            step("ChannelEnteredBridge", "Up"),
            (Step::Bridge, Some("1.3".to_owned()))
        );
        assert_eq!(step("ChannelDestroyed", "Up"), (Step::End, None));
        // Alone in its bridge, the channel is linked to no other leg yet.
        let alone = r#"{"type":"ChannelEnteredBridge","channel":{"id":"1.2","state":"Up"},
                        "bridge":{"channels":["1.2"]}}"#;
        assert_eq!(observe(&event(alone)).unwrap().step, Step::Answer);
    }
}
