//! The simulated PBX: call lifecycles shaped as real PBXs send them (events.md, "PBX event
//! shapes"). It is the one generator of fake traffic, behind both `--demo` and `callwire
//! simulate`, so what a newcomer sees in the demo is what a broker would carry.
//!
//! A [`Simulator`] starts calls at a steady average rate and yields every message of every call
//! in time order, as offsets from the start of the run. It is deterministic: the same seed, rate
//! and start time give the same messages, byte for byte. It does no I/O and never sleeps; the
//! caller paces the messages (the demo with timers, `simulate` against a broker).
//!
//! Each message carries both an AMQP routing key and an MQTT topic. The topic is the routing
//! key's segments as levels under the prefix [`MQTT_PREFIX`] (a `%2E` in a segment is a `.` in
//! the level), except for the AMI-to-MQTT bridge profile, whose topic is the bridge's own
//! `asterisk/call/<id>/<event>`. Either way `topic_to_routing_key(topic, Some(MQTT_PREFIX))`
//! gives back the routing key, so `simulate --mqtt` into `callwire --mqtt-strip-prefix pbx/`
//! shows the same keys as `simulate --amqp`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::clock;
use crate::event::topic_to_routing_key;
use crate::rng::Rng;

/// The MQTT topic prefix of the profiles whose natural address is an AMQP routing key.
pub const MQTT_PREFIX: &str = "pbx/";

/// Seconds from 0000-01-01 (proleptic Gregorian) to the Unix epoch: Kazoo's clock origin.
const GREGORIAN_OFFSET: u64 = 62_167_219_200;

/// The FreeSWITCH host name, in the routing key and the payloads.
const FS_HOST: &str = "pbx01";

/// The ARI application the simulated channels enter.
const ARI_APP: &str = "callwire";

/// First names and surnames for extensions: extension `201 + i` is always the same person.
const FIRST_NAMES: [&str; 10] = [
    "Alice", "Bruno", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas",
];
const SURNAMES: [&str; 4] = ["Martin", "Okafor", "Lindqvist", "Tanaka"];

/// Number of extensions, `201` to `240`: one per first name and surname pair.
const EXTENSIONS: u64 = (FIRST_NAMES.len() * SURNAMES.len()) as u64;

/// Caller names as carriers present them (CNAM) for external callers.
const CNAM: [&str; 6] = [
    "WIRELESS CALLER",
    "SAN FRANCISCO CA",
    "OAKLAND CA",
    "ACME SUPPLY CO",
    "GARCIA MARIA",
    "NGUYEN TAN",
];

/// Which PBX's event shapes the simulator speaks (events.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Kazoo `callevt` over AMQP: `call.<Event-Name>.<Call-ID>`.
    Kazoo,
    /// FreeSWITCH `mod_amqp`: `FreeSWITCH.<host>.<Event-Name>.<Subclass>.<Unique-ID>`.
    FreeSwitch,
    /// Asterisk REST Interface events of one Stasis application.
    AsteriskAri,
    /// An AMI-to-MQTT bridge: `asterisk/call/<id>/ringing|answered|hungup`.
    AsteriskMqtt,
}

impl Profile {
    /// The profile named on the command line (`simulate --profile`).
    pub fn parse(name: &str) -> Option<Profile> {
        match name {
            "kazoo" => Some(Profile::Kazoo),
            "freeswitch" => Some(Profile::FreeSwitch),
            "asterisk-ari" => Some(Profile::AsteriskAri),
            "asterisk-mqtt" => Some(Profile::AsteriskMqtt),
            _ => None,
        }
    }

    /// The command-line name, as [`Profile::parse`] takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Kazoo => "kazoo",
            Profile::FreeSwitch => "freeswitch",
            Profile::AsteriskAri => "asterisk-ari",
            Profile::AsteriskMqtt => "asterisk-mqtt",
        }
    }
}

/// One message as a broker would carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimMessage {
    /// AMQP routing key: dot-separated segments.
    pub routing_key: String,
    /// MQTT topic carrying the same message (see the module documentation).
    pub mqtt_topic: String,
    /// The JSON body.
    pub payload: Bytes,
}

/// Deterministic generator of overlapping call lifecycles; an [`Iterator`] of
/// `(offset from the start of the run, message)` in time order.
///
/// Calls start every `1 / calls_per_sec` seconds on average (each gap drawn between half and
/// one and a half times the mean, so starts are steady but not metronomic), the first one at
/// offset zero. Four calls in five are answered after 1 to 7 s of ringing and talk for 3 to
/// 18 s; some of those are bridged to another leg, some put on hold and taken off it. The rest
/// end unanswered (no answer, busy, rejected). Without [`Simulator::stop_starting_at`] the
/// iterator never ends.
#[derive(Debug)]
pub struct Simulator {
    profile: Profile,
    rng: Rng,
    /// Wall-clock time of offset zero, for the payloads' absolute timestamps.
    start: SystemTime,
    /// Mean gap between call starts in seconds; `None` when no call ever starts.
    mean_gap: Option<f64>,
    /// When the next call starts; `None` once starting has stopped.
    next_start: Option<Duration>,
    /// No call starts at or after this offset.
    stop_at: Option<Duration>,
    /// Messages of started calls not yet yielded, earliest first.
    pending: BinaryHeap<Reverse<Pending>>,
    /// Push counter: breaks ties between equal offsets in push order, so one call's messages
    /// never swap.
    pushed: u64,
    /// Kazoo `Account-ID` of every call.
    account: String,
    /// FreeSWITCH `Core-UUID`: one per switch process.
    core_uuid: String,
    /// ARI `asterisk_id`: the system's MAC address.
    asterisk_id: String,
    /// Asterisk's channel counter, behind unique ids (`<secs>.<n>`) and channel names.
    asterisk_counter: u64,
}

impl Simulator {
    /// A simulator of `profile` whose run starts at wall-clock time `start`, starting
    /// `calls_per_sec` calls per second on average (none if it is not a positive number).
    /// Ids, numbers, names and timings all come from `seed`.
    pub fn new(profile: Profile, seed: u64, calls_per_sec: f64, start: SystemTime) -> Simulator {
        let mut rng = Rng::new(seed);
        let account = rng.hex(32);
        let core_uuid = rng.uuid();
        // A locally administered unicast MAC, as a virtual machine would have.
        let asterisk_id = format!(
            "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            rng.below(256),
            rng.below(256),
            rng.below(256),
            rng.below(256),
            rng.below(256)
        );
        // Asterisk counts channels from its boot; a running system is somewhere past zero.
        let asterisk_counter = 1 + rng.below(500);
        let mean_gap = (calls_per_sec > 0.0 && calls_per_sec.is_finite())
            .then(|| 1.0 / calls_per_sec)
            .filter(|gap| gap.is_finite());
        Simulator {
            profile,
            rng,
            start,
            mean_gap,
            next_start: mean_gap.map(|_| Duration::ZERO),
            stop_at: None,
            pending: BinaryHeap::new(),
            pushed: 0,
            account,
            core_uuid,
            asterisk_id,
            asterisk_counter,
        }
    }

    /// Uses `account` as the Kazoo `Account-ID` of every call instead of one drawn from the
    /// seed. The other profiles carry no account (their PBXs have none).
    pub fn set_account(&mut self, account: &str) {
        account.clone_into(&mut self.account);
    }

    /// The Kazoo `Account-ID` of every call.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// Starts no call at or after offset `at`. Calls already started still run to their end,
    /// after which the iterator ends: every call it started has also ended.
    pub fn stop_starting_at(&mut self, at: Duration) {
        self.stop_at = Some(at);
        self.next_start = self.next_start.filter(|next| *next < at);
    }

    fn push(&mut self, at: Duration, msg: SimMessage) {
        self.pushed += 1;
        self.pending.push(Reverse(Pending {
            at,
            seq: self.pushed,
            msg,
        }));
    }

    /// Schedules the call after the one starting at `now`.
    fn schedule_next(&mut self, now: Duration) {
        let gap = self
            .mean_gap
            .map(|mean| mean * (0.5 + self.rng.unit()))
            .and_then(|gap| Duration::try_from_secs_f64(gap).ok())
            // At least a microsecond, so a huge rate still moves time forward.
            .map(|gap| gap.max(Duration::from_micros(1)));
        self.next_start = gap
            .and_then(|gap| now.checked_add(gap))
            .filter(|next| self.stop_at.is_none_or(|stop| *next < stop));
    }

    /// Draws a whole call starting at `at` and queues all its messages.
    fn start_call(&mut self, at: Duration) {
        let call = self.draw_call(at);
        let mut state = CallState::default();
        for (after, step) in self.draw_lifecycle() {
            state.apply(step);
            self.render(&call, step, &state, at + after);
        }
    }

    /// Who calls whom, and the ids the profile gives the call.
    fn draw_call(&mut self, at: Duration) -> Call {
        let roll = self.rng.below(100);
        let (direction, from, to) = if roll < 45 {
            let caller = Party {
                number: self.rng.external_number(),
                name: self.rng.pick(&CNAM).to_string(),
            };
            (Direction::Inbound, caller, self.rng.extension())
        } else if roll < 85 {
            let callee = Party {
                number: self.rng.external_number(),
                // Carriers give no name for the called party.
                name: String::new(),
            };
            (Direction::Outbound, self.rng.extension(), callee)
        } else {
            let from = self.rng.extension();
            let mut to = self.rng.extension();
            while to.number == from.number {
                to = self.rng.extension();
            }
            (Direction::Internal, from, to)
        };
        let created = self.wall(at);
        let (id, other_leg) = match self.profile {
            Profile::Kazoo => (self.rng.base36(20), self.rng.base36(20)),
            Profile::FreeSwitch => (self.rng.uuid(), self.rng.uuid()),
            Profile::AsteriskAri | Profile::AsteriskMqtt => {
                let secs = unix(created).as_secs();
                self.asterisk_counter += 2;
                (
                    format!("{secs}.{}", self.asterisk_counter - 2),
                    format!("{secs}.{}", self.asterisk_counter - 1),
                )
            }
        };
        let endpoint = match direction {
            Direction::Inbound => "trunk",
            Direction::Outbound | Direction::Internal => from.number.as_str(),
        };
        let channel_name = format!("PJSIP/{endpoint}-{:08x}", self.asterisk_counter);
        let bridge_id = self.rng.uuid();
        Call {
            id,
            other_leg,
            bridge_id,
            channel_name,
            direction,
            from,
            to,
            created,
        }
    }

    /// The steps of one call, as offsets from its start, in time order.
    fn draw_lifecycle(&mut self) -> Vec<(Duration, Step)> {
        let rng = &mut self.rng;
        let mut steps = vec![(Duration::ZERO, Step::Create)];
        if rng.below(100) < 80 {
            let answer = rng.span(1_000, 7_000);
            let talk = rng.span(3_000, 18_000);
            steps.push((answer, Step::Answer));
            if rng.below(100) < 40 {
                steps.push((answer + rng.span(50, 500), Step::Bridge));
            }
            // Only calls long enough for a hold to fit between the bridge and the end.
            if talk >= Duration::from_secs(10) && rng.below(100) < 25 {
                let hold = answer + talk.mul_f64(0.2 + 0.3 * rng.unit());
                let unhold =
                    (hold + rng.span(2_000, 8_000)).min(answer + talk - Duration::from_secs(1));
                steps.push((hold, Step::Hold));
                steps.push((unhold, Step::Unhold));
            }
            steps.push((answer + talk, Step::End(Cause::Normal)));
        } else {
            let (cause, ring) = match rng.below(10) {
                0..5 => (Cause::NoAnswer, rng.span(10_000, 25_000)),
                5..8 => (Cause::Busy, rng.span(300, 2_000)),
                _ => (Cause::Rejected, rng.span(1_000, 6_000)),
            };
            steps.push((ring, Step::End(cause)));
        }
        steps
    }

    /// Queues the profile's messages for one step of a call.
    fn render(&mut self, call: &Call, step: Step, state: &CallState, at: Duration) {
        match self.profile {
            Profile::Kazoo => {
                let msg = self.kazoo(call, step, state, at);
                self.push(at, msg);
            }
            Profile::FreeSwitch => {
                let msg = self.freeswitch(call, step, state, at);
                self.push(at, msg);
            }
            Profile::AsteriskAri => self.ari(call, step, state, at),
            Profile::AsteriskMqtt => {
                if let Some(msg) = self.ami_mqtt(call, step, at) {
                    self.push(at, msg);
                }
            }
        }
    }

    /// Kazoo `callevt`: mixed value types, `Timestamp` in Gregorian seconds, the account both
    /// at the top level and in `Custom-Channel-Vars`.
    fn kazoo(&mut self, call: &Call, step: Step, state: &CallState, at: Duration) -> SimMessage {
        let name = step.channel_event();
        let mut payload = json!({
            "Event-Category": "call_event",
            "Event-Name": name,
            "Call-ID": call.id,
            "Account-ID": self.account,
            "Call-Direction": call.direction.as_str(),
            "Caller-ID-Number": call.from.number,
            "Caller-ID-Name": call.from.name,
            "Callee-ID-Number": call.to.number,
            "Callee-ID-Name": call.to.name,
            "Channel-Call-State": step.call_state(),
            "Timestamp": unix(self.wall(at)).as_secs() + GREGORIAN_OFFSET,
            "Msg-ID": self.rng.hex(32),
            "App-Name": "ecallmgr",
            "App-Version": "4.3.0",
            "Node": "ecallmgr@kz1.example.net",
            "Custom-Channel-Vars": {"Account-ID": self.account},
        });
        // Kazoo keeps reporting the other leg once the call is bridged.
        if state.bridged {
            payload["Other-Leg-Call-ID"] = json!(call.other_leg);
        }
        if let Step::End(cause) = step {
            payload["Hangup-Cause"] = json!(cause.name());
        }
        message(format!("{MQTT_PREFIX}call/{name}/{}", call.id), &payload)
    }

    /// FreeSWITCH `mod_amqp`: every value a string, the routing key's subclass segment empty
    /// (channel events have no subclass). The call ends with CHANNEL_HANGUP_COMPLETE only, the
    /// event a `mod_amqp` binding for call state usually takes.
    fn freeswitch(&self, call: &Call, step: Step, state: &CallState, at: Duration) -> SimMessage {
        let name = match step {
            Step::End(_) => "CHANNEL_HANGUP_COMPLETE",
            other => other.channel_event(),
        };
        let (channel_state, answer_state) = match step {
            Step::Create => ("CS_INIT", "ringing"),
            Step::End(_) => ("CS_REPORTING", "hangup"),
            _ => ("CS_EXECUTE", "answered"),
        };
        let channel_name = match call.direction {
            Direction::Inbound => {
                format!("sofia/external/{}@sip.carrier.example", call.from.number)
            }
            Direction::Outbound => format!("sofia/external/{}", call.to.number),
            Direction::Internal => format!("sofia/internal/{}@{FS_HOST}.example", call.from.number),
        };
        let micros = unix(self.wall(at)).as_micros();
        let mut fields = vec![
            ("Event-Name", name.to_owned()),
            ("Core-UUID", self.core_uuid.clone()),
            ("FreeSWITCH-Hostname", FS_HOST.to_owned()),
            ("FreeSWITCH-Switchname", FS_HOST.to_owned()),
            ("FreeSWITCH-IPv4", "10.0.0.10".to_owned()),
            ("Event-Date-Timestamp", micros.to_string()),
            ("Channel-State", channel_state.to_owned()),
            ("Channel-Call-State", step.call_state().to_owned()),
            ("Answer-State", answer_state.to_owned()),
            ("Call-Direction", call.direction.as_str().to_owned()),
            ("Channel-Name", channel_name),
            ("Unique-ID", call.id.clone()),
            ("Caller-Unique-ID", call.id.clone()),
            ("Caller-Caller-ID-Number", call.from.number.clone()),
            ("Caller-Caller-ID-Name", call.from.name.clone()),
            ("Caller-Destination-Number", call.to.number.clone()),
        ];
        if state.bridged {
            fields.push(("Other-Leg-Unique-ID", call.other_leg.clone()));
        }
        if let Step::End(cause) = step {
            fields.push(("Hangup-Cause", cause.name().to_owned()));
        }
        let payload: Map<String, Value> = fields
            .into_iter()
            .map(|(key, value)| (key.to_owned(), Value::String(value)))
            .collect();
        let topic = format!("{MQTT_PREFIX}FreeSWITCH/{FS_HOST}/{name}//{}", call.id);
        message(topic, &Value::Object(payload))
    }

    /// Asterisk ARI, as a Stasis application sees a channel: StasisStart, ChannelStateChange to
    /// `Up`, ChannelEnteredBridge, ChannelHold / ChannelUnhold, then (ChannelLeftBridge,)
    /// StasisEnd and ChannelDestroyed a few milliseconds apart, as Asterisk sends them.
    fn ari(&mut self, call: &Call, step: Step, state: &CallState, at: Duration) {
        let channel = self.ari_channel(call, state);
        let bridge = |channels: Vec<&str>| {
            json!({
                "id": call.bridge_id,
                "technology": "simple_bridge",
                "bridge_type": "mixing",
                "bridge_class": "stasis",
                "creator": "Stasis",
                "name": "",
                "channels": channels,
                "creationtime": ari_time(self.wall(at)),
                "video_mode": "none",
            })
        };
        let events = match step {
            Step::Create => vec![("StasisStart", json!({"args": []}))],
            Step::Answer => vec![("ChannelStateChange", json!({}))],
            Step::Bridge => vec![(
                "ChannelEnteredBridge",
                json!({"bridge": bridge(vec![&call.other_leg, &call.id])}),
            )],
            Step::Hold => vec![("ChannelHold", json!({"musicclass": "default"}))],
            Step::Unhold => vec![("ChannelUnhold", json!({}))],
            Step::End(cause) => {
                let mut events = Vec::with_capacity(3);
                if state.bridged {
                    events.push((
                        "ChannelLeftBridge",
                        json!({"bridge": bridge(vec![&call.other_leg])}),
                    ));
                }
                events.push(("StasisEnd", json!({})));
                events.push((
                    "ChannelDestroyed",
                    json!({"cause": cause.q850(), "cause_txt": cause.text()}),
                ));
                events
            }
        };
        let mut at = at;
        for (kind, mut payload) in events {
            payload["type"] = json!(kind);
            payload["timestamp"] = json!(ari_time(self.wall(at)));
            payload["application"] = json!(ARI_APP);
            payload["asterisk_id"] = json!(self.asterisk_id);
            payload["channel"] = channel.clone();
            let topic = format!("{MQTT_PREFIX}asterisk/ari/{kind}/{}", call.id);
            let msg = message(topic, &payload);
            self.push(at, msg);
            at += Duration::from_millis(2);
        }
    }

    /// The ARI channel snapshot: `Ring` until answered, then `Up` with the connected party.
    fn ari_channel(&self, call: &Call, state: &CallState) -> Value {
        let (channel_state, connected) = if state.answered {
            ("Up", &call.to)
        } else {
            ("Ring", &Party::default())
        };
        let context = match call.direction {
            Direction::Inbound => "from-trunk",
            Direction::Outbound | Direction::Internal => "from-internal",
        };
        json!({
            "id": call.id,
            "name": call.channel_name,
            "state": channel_state,
            "caller": {"name": call.from.name, "number": call.from.number},
            "connected": {"name": connected.name, "number": connected.number},
            "accountcode": "",
            "dialplan": {
                "context": context,
                "exten": call.to.number,
                "priority": 1,
                "app_name": "Stasis",
                "app_data": ARI_APP,
            },
            "creationtime": ari_time(call.created),
            "language": "en",
        })
    }

    /// An AMI-to-MQTT bridge: ringing, answered and hungup only (AMI's hold and bridge events
    /// are not bridged), `cause` as AMI's numeric Q.850 `Cause` with its `cause_txt`.
    fn ami_mqtt(&self, call: &Call, step: Step, at: Duration) -> Option<SimMessage> {
        let event = match step {
            Step::Create => "ringing",
            Step::Answer => "answered",
            Step::End(_) => "hungup",
            Step::Bridge | Step::Hold | Step::Unhold => return None,
        };
        let mut payload = json!({
            "event": event,
            "call_id": call.id,
            "from": {"extension": call.from.number, "name": call.from.name},
            "to": {"extension": call.to.number, "name": call.to.name},
            "timestamp": rfc3339_millis(self.wall(at)),
        });
        if let Step::End(cause) = step {
            payload["cause"] = json!(cause.q850());
            payload["cause_txt"] = json!(cause.text());
        }
        Some(message(
            format!("asterisk/call/{}/{event}", call.id),
            &payload,
        ))
    }

    /// The wall-clock time of offset `at`.
    fn wall(&self, at: Duration) -> SystemTime {
        self.start.checked_add(at).unwrap_or(self.start)
    }
}

impl Iterator for Simulator {
    type Item = (Duration, SimMessage);

    /// The next message in time order, with its offset from the start; `None` once starting
    /// has stopped and every started call has ended.
    fn next(&mut self) -> Option<(Duration, SimMessage)> {
        // A call must be started before any queued message later than its start is yielded.
        while let Some(start) = self.next_start {
            let queued_earlier = self
                .pending
                .peek()
                .is_some_and(|Reverse(first)| first.at < start);
            if queued_earlier {
                break;
            }
            self.start_call(start);
            self.schedule_next(start);
        }
        self.pending
            .pop()
            .map(|Reverse(first)| (first.at, first.msg))
    }
}

/// A message waiting for its time; ordered by time, then push order.
#[derive(Debug)]
struct Pending {
    at: Duration,
    seq: u64,
    msg: SimMessage,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Pending) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Pending) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Pending) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// One call, as every profile renders it.
#[derive(Debug)]
struct Call {
    /// The profile's call id (Kazoo `Call-ID`, FreeSWITCH `Unique-ID`, Asterisk unique id).
    id: String,
    /// The id of the leg a bridge links this call to.
    other_leg: String,
    /// ARI bridge id, used when the call is bridged.
    bridge_id: String,
    /// Asterisk channel name.
    channel_name: String,
    direction: Direction,
    from: Party,
    to: Party,
    created: SystemTime,
}

#[derive(Debug, Default)]
struct Party {
    number: String,
    name: String,
}

/// External caller to an extension, extension to an external number, or extension to
/// extension.
#[derive(Clone, Copy, Debug)]
enum Direction {
    Inbound,
    Outbound,
    Internal,
}

impl Direction {
    /// `Call-Direction` as the switch sees the leg: a call from a phone comes in to the switch
    /// too, so internal calls are `inbound`; outbound calls are the leg toward the carrier.
    fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound | Direction::Internal => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// One step in a call's life.
#[derive(Clone, Copy, Debug)]
enum Step {
    Create,
    Answer,
    Bridge,
    Hold,
    Unhold,
    End(Cause),
}

impl Step {
    /// The Kazoo / FreeSWITCH channel event name.
    fn channel_event(self) -> &'static str {
        match self {
            Step::Create => "CHANNEL_CREATE",
            Step::Answer => "CHANNEL_ANSWER",
            Step::Bridge => "CHANNEL_BRIDGE",
            Step::Hold => "CHANNEL_HOLD",
            Step::Unhold => "CHANNEL_UNHOLD",
            Step::End(_) => "CHANNEL_DESTROY",
        }
    }

    /// FreeSWITCH's `Channel-Call-State` (Kazoo passes it through) after this step.
    fn call_state(self) -> &'static str {
        match self {
            Step::Create => "RINGING",
            Step::Hold => "HELD",
            Step::End(_) => "HANGUP",
            Step::Answer | Step::Bridge | Step::Unhold => "ACTIVE",
        }
    }
}

/// What a call has been through so far, for the fields that report it.
#[derive(Debug, Default)]
struct CallState {
    answered: bool,
    bridged: bool,
}

impl CallState {
    fn apply(&mut self, step: Step) {
        match step {
            Step::Answer => self.answered = true,
            Step::Bridge => self.bridged = true,
            _ => {}
        }
    }
}

/// Why a call ended.
#[derive(Clone, Copy, Debug)]
enum Cause {
    Normal,
    Busy,
    NoAnswer,
    Rejected,
}

impl Cause {
    /// The FreeSWITCH / Kazoo `Hangup-Cause`.
    fn name(self) -> &'static str {
        match self {
            Cause::Normal => "NORMAL_CLEARING",
            Cause::Busy => "USER_BUSY",
            Cause::NoAnswer => "NO_ANSWER",
            Cause::Rejected => "CALL_REJECTED",
        }
    }

    /// The Q.850 cause code, as Asterisk reports it.
    fn q850(self) -> u8 {
        match self {
            Cause::Normal => 16,
            Cause::Busy => 17,
            Cause::NoAnswer => 19,
            Cause::Rejected => 21,
        }
    }

    /// Asterisk's text for the cause (`ast_cause2str`).
    fn text(self) -> &'static str {
        match self {
            Cause::Normal => "Normal Clearing",
            Cause::Busy => "User busy",
            Cause::NoAnswer => "User alerting, no answer",
            Cause::Rejected => "Call Rejected",
        }
    }
}

/// The simulation's draws, on the shared generator (the same seed gives the same calls).
trait Draw {
    fn span(&mut self, lo_ms: u64, hi_ms: u64) -> Duration;
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str;
    fn chars(&mut self, alphabet: &[u8], len: usize) -> String;
    fn hex(&mut self, len: usize) -> String;
    fn base36(&mut self, len: usize) -> String;
    fn uuid(&mut self) -> String;
    fn extension(&mut self) -> Party;
    fn external_number(&mut self) -> String;
}

impl Draw for Rng {
    /// A duration between `lo_ms` and `hi_ms` milliseconds, to the microsecond.
    fn span(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        Duration::from_micros(lo_ms * 1_000 + self.below((hi_ms - lo_ms) * 1_000))
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }

    fn chars(&mut self, alphabet: &[u8], len: usize) -> String {
        (0..len)
            .map(|_| char::from(alphabet[self.below(alphabet.len() as u64) as usize]))
            .collect()
    }

    fn hex(&mut self, len: usize) -> String {
        self.chars(b"0123456789abcdef", len)
    }

    /// Lower-case letters and digits, like Kazoo's generated call ids.
    fn base36(&mut self, len: usize) -> String {
        self.chars(b"0123456789abcdefghijklmnopqrstuvwxyz", len)
    }

    /// A version 4 UUID, as FreeSWITCH makes them.
    fn uuid(&mut self) -> String {
        let variant = char::from(b"89ab"[self.below(4) as usize]);
        format!(
            "{}-{}-4{}-{variant}{}-{}",
            self.hex(8),
            self.hex(4),
            self.hex(3),
            self.hex(3),
            self.hex(12)
        )
    }

    /// One of the extensions `201`..`240`, with its owner's name.
    fn extension(&mut self) -> Party {
        let i = self.below(EXTENSIONS) as usize;
        Party {
            number: (201 + i).to_string(),
            name: format!(
                "{} {}",
                FIRST_NAMES[i % FIRST_NAMES.len()],
                SURNAMES[i / FIRST_NAMES.len()]
            ),
        }
    }

    /// A North American number in 555-0100..0199, the range reserved for fiction.
    fn external_number(&mut self) -> String {
        format!("+1415555{:04}", 100 + self.below(100))
    }
}

/// A message on `topic`, its routing key the topic mapped the way the MQTT source maps it.
fn message(topic: String, payload: &Value) -> SimMessage {
    SimMessage {
        routing_key: topic_to_routing_key(&topic, Some(MQTT_PREFIX)),
        mqtt_topic: topic,
        payload: Bytes::from(payload.to_string()),
    }
}

/// Time since the Unix epoch; times before it count as the epoch.
fn unix(time: SystemTime) -> Duration {
    time.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Formats `time` as the MQTT bridges do: RFC 3339, UTC, milliseconds.
fn rfc3339_millis(time: SystemTime) -> String {
    format!("{}Z", clock::utc(time))
}

/// Formats `time` the way ARI does: ISO 8601, milliseconds, numeric offset without a colon.
fn ari_time(time: SystemTime) -> String {
    format!("{}+0000", clock::utc(time))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const ALL: [Profile; 4] = [
        Profile::Kazoo,
        Profile::FreeSwitch,
        Profile::AsteriskAri,
        Profile::AsteriskMqtt,
    ];

    /// 2026-11-23T10:15:30.123Z.
    fn start() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_795_428_930_123)
    }

    /// Every message of a run that starts calls for `secs` seconds.
    fn run(profile: Profile, seed: u64, secs: u64) -> Vec<(Duration, SimMessage)> {
        let mut sim = Simulator::new(profile, seed, 2.0, start());
        sim.stop_starting_at(Duration::from_secs(secs));
        sim.collect()
    }

    fn json(msg: &SimMessage) -> Value {
        serde_json::from_slice(&msg.payload).expect("payload is JSON")
    }

    #[test]
    fn timestamps_take_each_pbx_form() {
        assert_eq!(rfc3339_millis(start()), "2026-11-23T10:15:30.123Z");
        assert_eq!(ari_time(start()), "2026-11-23T10:15:30.123+0000");
    }

    #[test]
    fn profiles_parse_by_their_names() {
        for profile in ALL {
            assert_eq!(Profile::parse(profile.as_str()), Some(profile));
        }
        assert_eq!(Profile::parse("Kazoo"), None);
    }

    #[test]
    fn same_seed_same_messages_other_seed_other_messages() {
        for profile in ALL {
            assert_eq!(run(profile, 7, 20), run(profile, 7, 20));
            assert_ne!(run(profile, 7, 20), run(profile, 8, 20));
        }
    }

    #[test]
    fn messages_come_in_time_order_and_calls_overlap() {
        let mut sim = Simulator::new(Profile::AsteriskMqtt, 3, 1.0, start());
        let mut live = 0i32;
        let mut most = 0;
        let mut last = Duration::ZERO;
        for (at, msg) in sim.by_ref().take(2_000) {
            assert!(at >= last);
            last = at;
            match json(&msg)["event"].as_str() {
                Some("ringing") => live += 1,
                Some("hungup") => live -= 1,
                _ => {}
            }
            most = most.max(live);
        }
        assert!(most >= 3, "at most {most} calls at once");
        assert!(last > Duration::from_secs(60));
    }

    #[test]
    fn a_finite_run_ends_every_call_it_starts() {
        for profile in ALL {
            let (start_name, end_name) = match profile {
                Profile::Kazoo => ("CHANNEL_CREATE", "CHANNEL_DESTROY"),
                Profile::FreeSwitch => ("CHANNEL_CREATE", "CHANNEL_HANGUP_COMPLETE"),
                Profile::AsteriskAri => ("StasisStart", "ChannelDestroyed"),
                Profile::AsteriskMqtt => ("ringing", "hungup"),
            };
            let messages = run(profile, 11, 60);
            let mut calls: HashMap<String, (u32, u32)> = HashMap::new();
            for (_, msg) in &messages {
                let payload = json(msg);
                let name = ["Event-Name", "type", "event"]
                    .iter()
                    .find_map(|field| payload[field].as_str())
                    .unwrap();
                let id = ["Call-ID", "Unique-ID", "call_id"]
                    .iter()
                    .find_map(|field| payload[field].as_str())
                    .or(payload["channel"]["id"].as_str())
                    .unwrap()
                    .to_owned();
                let entry = calls.entry(id).or_default();
                if name == start_name {
                    assert_eq!(entry, &(0, 0), "{name} first, once");
                    entry.0 += 1;
                } else if name == end_name {
                    assert_eq!(entry, &(1, 0), "{name} after the start, once");
                    entry.1 += 1;
                } else {
                    assert_eq!(entry, &(1, 0), "{name} while the call is live");
                }
            }
            assert!(calls.len() > 60, "{profile:?}: {} calls", calls.len());
            assert!(calls.values().all(|counts| *counts == (1, 1)));
        }
    }

    #[test]
    fn topics_map_back_to_routing_keys() {
        for profile in ALL {
            for (_, msg) in run(profile, 5, 10) {
                let key = topic_to_routing_key(&msg.mqtt_topic, Some(MQTT_PREFIX));
                assert_eq!(key, msg.routing_key);
            }
        }
    }

    #[test]
    fn kazoo_shape() {
        let messages = run(Profile::Kazoo, 1, 30);
        let mut bridged = false;
        for (at, msg) in &messages {
            let payload = json(msg);
            let name = payload["Event-Name"].as_str().unwrap();
            let id = payload["Call-ID"].as_str().unwrap();
            assert_eq!(msg.routing_key, format!("call.{name}.{id}"));
            assert_eq!(payload["Event-Category"], "call_event");
            let account = payload["Account-ID"].as_str().unwrap();
            assert!(account.len() == 32 && account.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(payload["Custom-Channel-Vars"]["Account-ID"], account);
            let unix = (start() + *at)
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            assert_eq!(payload["Timestamp"].as_u64(), Some(unix + 62_167_219_200));
            assert!(["inbound", "outbound"].contains(&payload["Call-Direction"].as_str().unwrap()));
            for field in ["Caller-ID-Number", "Caller-ID-Name", "Callee-ID-Number"] {
                assert!(payload[field].is_string(), "{field}");
            }
            match name {
                "CHANNEL_BRIDGE" => {
                    bridged = true;
                    assert!(payload["Other-Leg-Call-ID"].is_string());
                }
                "CHANNEL_DESTROY" => assert!(payload["Hangup-Cause"].is_string()),
                _ => {}
            }
        }
        assert!(bridged);
    }

    #[test]
    fn kazoo_account_can_be_fixed() {
        let mut sim = Simulator::new(Profile::Kazoo, 1, 1.0, start());
        sim.set_account("4b31dd1d32ce6d249897c06332375d65");
        let (_, msg) = sim.next().unwrap();
        let event = crate::event::Event::new(msg.routing_key, msg.payload);
        assert_eq!(
            event.account.as_deref(),
            Some("4b31dd1d32ce6d249897c06332375d65")
        );
    }

    #[test]
    fn freeswitch_shape() {
        let messages = run(Profile::FreeSwitch, 2, 30);
        let mut names = Vec::new();
        for (at, msg) in &messages {
            let payload = json(msg);
            let object = payload.as_object().unwrap();
            assert!(object.values().all(Value::is_string), "{payload}");
            let name = payload["Event-Name"].as_str().unwrap();
            let id = payload["Unique-ID"].as_str().unwrap();
            assert_eq!(msg.routing_key, format!("FreeSWITCH.pbx01.{name}..{id}"));
            let micros = (start() + *at)
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_micros();
            assert_eq!(payload["Event-Date-Timestamp"], micros.to_string());
            match name {
                "CHANNEL_BRIDGE" => assert!(payload["Other-Leg-Unique-ID"].is_string()),
                "CHANNEL_HANGUP_COMPLETE" => assert!(payload["Hangup-Cause"].is_string()),
                _ => {}
            }
            names.push(name.to_owned());
        }
        for name in [
            "CHANNEL_ANSWER",
            "CHANNEL_BRIDGE",
            "CHANNEL_HOLD",
            "CHANNEL_UNHOLD",
        ] {
            assert!(names.iter().any(|n| n == name), "{name}");
        }
    }

    #[test]
    fn ari_shape() {
        let messages = run(Profile::AsteriskAri, 3, 30);
        for (at, msg) in &messages {
            let payload = json(msg);
            let kind = payload["type"].as_str().unwrap();
            let channel = &payload["channel"];
            let id = channel["id"].as_str().unwrap();
            let (secs, counter) = id.split_once('.').unwrap();
            assert!(secs.parse::<u64>().is_ok() && counter.parse::<u64>().is_ok());
            let key_id = id.replace('.', "%2E");
            assert_eq!(msg.routing_key, format!("asterisk.ari.{kind}.{key_id}"));
            assert_eq!(payload["timestamp"], ari_time(start() + *at));
            assert!(channel["caller"]["number"].is_string());
            assert!(channel["connected"]["name"].is_string());
            assert!(channel["dialplan"]["exten"].is_string());
            assert_eq!(channel["dialplan"]["priority"], 1);
            match kind {
                "StasisStart" => assert_eq!(channel["state"], "Ring"),
                "ChannelStateChange" => assert_eq!(channel["state"], "Up"),
                "ChannelDestroyed" => {
                    assert!(payload["cause"].is_u64());
                    assert!(payload["cause_txt"].is_string());
                }
                _ => {}
            }
        }
    }

    #[test]
    fn ami_mqtt_shape() {
        for (at, msg) in run(Profile::AsteriskMqtt, 4, 30) {
            let payload = json(&msg);
            let event = payload["event"].as_str().unwrap();
            let id = payload["call_id"].as_str().unwrap();
            assert_eq!(msg.mqtt_topic, format!("asterisk/call/{id}/{event}"));
            let key_id = id.replace('.', "%2E");
            assert_eq!(msg.routing_key, format!("asterisk.call.{key_id}.{event}"));
            assert!(payload["from"]["extension"].is_string() && payload["to"]["name"].is_string());
            assert_eq!(payload["timestamp"], rfc3339_millis(start() + at));
            assert_eq!(payload["cause"].is_u64(), event == "hungup");
        }
    }
}
