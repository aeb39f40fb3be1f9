//! The REST live API end to end (live-api.md): the real binary fed through real brokers (the
//! shared Mosquitto on 127.0.0.1:1883 under a unique topic prefix, the RabbitMQ on
//! 127.0.0.1:5672 on a unique exchange), answering plain HTTP. Payloads come from
//! `callwire::sim`, which renders the four PBX shapes of events.md as the PBXs send them; the
//! expected call objects come from a model of the contract written here, not from the crate.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, UNIX_EPOCH};

use async_rs::Runtime;
use callwire::sim::{Profile, SimMessage, Simulator};
use lapin::message::Delivery;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};

use common::{Callwire, Credential, PrivateMosquitto, Subscriber, credentials, unique, wait_for};

/// The shared Mosquitto.
const MQTT_PORT: u16 = 1883;
/// The shared RabbitMQ.
const RABBIT: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// How long any one wait may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(10);

const ACCOUNT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const ACCOUNT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const SECRET_A: &str = "rest-a-s3cret-41c9";
const SECRET_B: &str = "rest-b-s3cret-7d02";
const SECRET_STAR: &str = "rest-manager-s3cret-e5a1";

/// Kazoo's clock origin: seconds from 0000-01-01 to the Unix epoch.
const GREGORIAN_OFFSET: u64 = 62_167_219_200;

// ---------------------------------------------------------------------------------------------
// HTTP

/// A whole HTTP answer.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {:?}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the status and that the body is `{"error": "<a message>"}`; returns the message.
    fn assert_error(&self, status: u16, what: &str) -> String {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        let body = self.json();
        let message = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {body}"));
        assert!(!message.is_empty(), "{what}: {body}");
        assert_eq!(body.as_object().unwrap().len(), 1, "{what}: {body}");
        message.to_owned()
    }
}

/// One request (no body) with its status, headers and body.
fn http(callwire: &Callwire, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", callwire.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8(response).expect("a UTF-8 answer");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no head in {response:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status in {head:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// `GET path` answered 200 with JSON.
fn get(callwire: &Callwire, path: &str, headers: &[(&str, &str)]) -> Value {
    let reply = http(callwire, "GET", path, headers);
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "GET {path}"
    );
    reply.json()
}

/// The live calls (no credential: for a callwire without `--auth`).
fn calls(callwire: &Callwire) -> Vec<Value> {
    match get(callwire, "/rest/live/calls", &[]) {
        Value::Array(calls) => calls,
        other => panic!("/rest/live/calls is not an array: {other}"),
    }
}

fn ids(calls: &Value) -> Vec<String> {
    calls
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {calls}"))
        .iter()
        .map(|call| call["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Resident memory of a process, in kB.
fn vm_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS: line")
}

fn basic(name: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        data_encoding::BASE64.encode(format!("{name}:{secret}").as_bytes())
    )
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

const CREDENTIALS: [Credential; 3] = [
    ("acc-a", SECRET_A, ACCOUNT_A),
    ("acc-b", SECRET_B, ACCOUNT_B),
    ("manager", SECRET_STAR, "*"),
];

// ---------------------------------------------------------------------------------------------
// Feeding events through a real broker

/// A lapin connection to the shared RabbitMQ with publisher confirms, for one exchange (deleted
/// when dropped).
struct Rabbit {
    _conn: Connection,
    channel: Channel,
    exchange: String,
}

impl Rabbit {
    fn connect(exchange: &str) -> Rabbit {
        smol::block_on(async {
            let conn = Connection::connect_with_runtime(
                RABBIT,
                ConnectionProperties::default(),
                Runtime::smol(),
            )
            .await
            .expect("the test connects to RabbitMQ");
            let channel = conn.create_channel().await.unwrap();
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            Rabbit {
                _conn: conn,
                channel,
                exchange: exchange.to_owned(),
            }
        })
    }

    /// Publishes and waits for the broker's confirm.
    fn publish(&self, routing_key: &str, payload: &[u8]) {
        smol::block_on(async {
            self.channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    payload,
                    BasicProperties::default(),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
        });
    }

    /// A server-named, exclusive queue of the test's own, bound to the exchange with `binding`.
    fn bind_queue(&self, binding: &str) -> String {
        smol::block_on(async {
            let queue = self
                .channel
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            let name = queue.name().as_str().to_owned();
            self.channel
                .queue_bind(
                    name.as_str().into(),
                    self.exchange.as_str().into(),
                    binding.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            name
        })
    }

    /// The next message on `queue`, if one is there.
    fn get(&self, queue: &str) -> Option<Delivery> {
        smol::block_on(async {
            self.channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
                .map(|message| message.delivery)
        })
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        let _ = smol::block_on(self.channel.exchange_delete(
            self.exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        ));
    }
}

/// Where the test publishes: MQTT topics under a prefix callwire strips, or an AMQP exchange.
enum Feed {
    Mqtt { port: u16, prefix: String },
    Amqp(Box<Rabbit>),
}

impl Feed {
    /// Publishes a simulated message so that callwire sees the simulator's routing key.
    fn send(&self, msg: &SimMessage) {
        match self {
            Feed::Mqtt { port, prefix } => {
                let topic = msg
                    .mqtt_topic
                    .strip_prefix("pbx/")
                    .unwrap_or(&msg.mqtt_topic);
                mqtt_pub_bytes(*port, &format!("{prefix}/{topic}"), &msg.payload);
            }
            Feed::Amqp(rabbit) => rabbit.publish(&msg.routing_key, &msg.payload),
        }
    }

    /// Publishes `payload` at `path` (`a/b/c`: the routing key `a.b.c`).
    fn raw(&self, path: &str, payload: &[u8]) {
        match self {
            Feed::Mqtt { port, prefix } => {
                mqtt_pub_bytes(*port, &format!("{prefix}/{path}"), payload)
            }
            Feed::Amqp(rabbit) => rabbit.publish(&path.replace('/', "."), payload),
        }
    }
}

/// Publishes any bytes (stdin, `-s`) with the real `mosquitto_pub`, QoS 1.
fn mqtt_pub_bytes(port: u16, topic: &str, payload: &[u8]) {
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-s",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub runs");
    child.stdin.take().unwrap().write_all(payload).unwrap();
    assert!(child.wait().unwrap().success(), "mosquitto_pub failed");
}

/// Publishes one message per line, as fast as `mosquitto_pub -l` goes, QoS 1.
fn mqtt_pub_lines(topic: &str, lines: &[String]) {
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &MQTT_PORT.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-l",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub runs");
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        assert!(!line.is_empty() && !line.contains('\n'));
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success(), "mosquitto_pub -l failed");
}

/// Waits until the source is connected and its subscription live: publishes probes (JSON of
/// no call shape) until `callwire_events_in_total` moves.
fn warm_up(callwire: &Callwire, feed: &Feed) {
    callwire.wait_connected(TIMEOUT);
    let before = callwire.metric("callwire_events_in_total");
    for n in 0..100 {
        feed.raw(&format!("probe/{n}"), br#"{"probe":true}"#);
        for _ in 0..6 {
            if callwire.metric("callwire_events_in_total") > before {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("no probe arrived: {}", callwire.log_text());
}

/// A callwire fed from `<prefix>/#` on MQTT broker `port`, `<prefix>/` stripped, warmed up.
fn start_mqtt_on(port: u16, extra: &[&str]) -> (Callwire, Feed) {
    let prefix = unique("rest");
    let callwire = Callwire::start_mqtt(port, &prefix, extra);
    let feed = Feed::Mqtt { port, prefix };
    warm_up(&callwire, &feed);
    (callwire, feed)
}

fn start_mqtt(extra: &[&str]) -> (Callwire, Feed) {
    start_mqtt_on(MQTT_PORT, extra)
}

/// A callwire consuming FreeSWITCH and probe keys from an exchange of its own on RabbitMQ,
/// warmed up.
fn start_amqp(extra: &[&str]) -> (Callwire, Feed) {
    let exchange = unique("rest-x");
    let mut args = vec![
        "--amqp",
        RABBIT,
        "--amqp-exchange",
        &exchange,
        "--amqp-binding",
        "FreeSWITCH.#",
        "--amqp-binding",
        "probe.#",
    ];
    args.extend_from_slice(extra);
    let callwire = Callwire::start(&args);
    // Connected means the exchange is declared: the test may publish to it.
    callwire.wait_connected(TIMEOUT);
    let feed = Feed::Amqp(Box::new(Rabbit::connect(&exchange)));
    warm_up(&callwire, &feed);
    (callwire, feed)
}

// ---------------------------------------------------------------------------------------------
// Simulated calls, and what the contract says the live API shows of them

/// The simulated runs' wall clock: 2026-11-23T10:15:30.123Z, far from now, so that a call
/// timed by receipt instead of by its events' own timestamps shows.
fn sim_start() -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_795_428_930_123)
}

fn payload(msg: &SimMessage) -> Value {
    serde_json::from_slice(&msg.payload).expect("the simulator sends JSON")
}

/// A non-empty string field.
fn text(value: &Value) -> Option<String> {
    value.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

fn call_id(profile: Profile, p: &Value) -> String {
    let id = match profile {
        Profile::Kazoo => &p["Call-ID"],
        Profile::FreeSwitch => &p["Unique-ID"],
        Profile::AsteriskAri => &p["channel"]["id"],
        Profile::AsteriskMqtt => &p["call_id"],
    };
    text(id).unwrap_or_else(|| panic!("no call id in {p}"))
}

/// The live API's `source` for each shape (live-api.md).
fn source_name(profile: Profile) -> &'static str {
    match profile {
        Profile::Kazoo => "kazoo",
        Profile::FreeSwitch => "freeswitch",
        Profile::AsteriskAri => "asterisk-ari",
        Profile::AsteriskMqtt => "asterisk-mqtt",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Start,
    Answer,
    Hold,
    Unhold,
    Bridge,
    End,
    Other,
}

/// The event's name and what it does to its call (events.md, "PBX event shapes").
fn classify(profile: Profile, p: &Value) -> (String, Kind) {
    match profile {
        Profile::Kazoo | Profile::FreeSwitch => {
            let name = p["Event-Name"].as_str().unwrap().to_owned();
            let kind = match name.as_str() {
                "CHANNEL_CREATE" => Kind::Start,
                "CHANNEL_ANSWER" => Kind::Answer,
                "CHANNEL_HOLD" => Kind::Hold,
                "CHANNEL_UNHOLD" => Kind::Unhold,
                "CHANNEL_BRIDGE" => Kind::Bridge,
                "CHANNEL_DESTROY" => Kind::End,
                "CHANNEL_HANGUP_COMPLETE" if profile == Profile::FreeSwitch => Kind::End,
                _ => Kind::Other,
            };
            (name, kind)
        }
        Profile::AsteriskAri => {
            let name = p["type"].as_str().unwrap().to_owned();
            let up = p["channel"]["state"] == "Up";
            let kind = match name.as_str() {
                "StasisStart" if !up => Kind::Start,
                // The application sees nothing more of a channel that left it.
                "StasisEnd" | "ChannelDestroyed" => Kind::End,
                "ChannelHold" => Kind::Hold,
                "ChannelUnhold" => Kind::Unhold,
                "ChannelEnteredBridge" => Kind::Bridge,
                _ if up => Kind::Answer,
                _ => Kind::Other,
            };
            (name, kind)
        }
        Profile::AsteriskMqtt => {
            let name = p["event"].as_str().unwrap().to_owned();
            let kind = match name.as_str() {
                "ringing" => Kind::Start,
                "answered" => Kind::Answer,
                "hungup" => Kind::End,
                other => panic!("not an AMI bridge event: {other}"),
            };
            (name, kind)
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time in seconds (Howard Hinnant's civil_from_days).
fn rfc3339_seconds(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3_600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// The event's own timestamp, to the second, in RFC 3339 UTC.
fn event_time(profile: Profile, p: &Value) -> String {
    match profile {
        Profile::Kazoo => rfc3339_seconds(p["Timestamp"].as_u64().unwrap() - GREGORIAN_OFFSET),
        Profile::FreeSwitch => {
            let micros: u64 = p["Event-Date-Timestamp"].as_str().unwrap().parse().unwrap();
            rfc3339_seconds(micros / 1_000_000)
        }
        Profile::AsteriskAri | Profile::AsteriskMqtt => {
            let stamp = p["timestamp"].as_str().unwrap();
            assert!(stamp.ends_with("+0000") || stamp.ends_with('Z'), "{stamp}");
            format!("{}Z", &stamp[..19])
        }
    }
}

/// What an event tells of the call: from (number, name), to (number, name), direction, the
/// other leg it links, account.
struct Told {
    from: [Option<String>; 2],
    to: [Option<String>; 2],
    direction: Option<String>,
    other_leg: Option<String>,
    account: Option<String>,
}

fn told(profile: Profile, p: &Value) -> Told {
    match profile {
        Profile::Kazoo => Told {
            from: [text(&p["Caller-ID-Number"]), text(&p["Caller-ID-Name"])],
            to: [text(&p["Callee-ID-Number"]), text(&p["Callee-ID-Name"])],
            direction: text(&p["Call-Direction"]),
            other_leg: text(&p["Other-Leg-Call-ID"]),
            account: text(&p["Account-ID"]),
        },
        Profile::FreeSwitch => Told {
            from: [
                text(&p["Caller-Caller-ID-Number"]),
                text(&p["Caller-Caller-ID-Name"]),
            ],
            to: [text(&p["Caller-Destination-Number"]), None],
            direction: text(&p["Call-Direction"]),
            other_leg: text(&p["Other-Leg-Unique-ID"]),
            account: None,
        },
        Profile::AsteriskAri => {
            let channel = &p["channel"];
            let id = channel["id"].as_str().unwrap();
            let other_leg = (p["type"] == "ChannelEnteredBridge")
                .then(|| p["bridge"]["channels"].as_array())
                .flatten()
                .and_then(|legs| legs.iter().filter_map(text).find(|leg| leg != id));
            Told {
                from: [
                    text(&channel["caller"]["number"]),
                    text(&channel["caller"]["name"]),
                ],
                to: [
                    text(&channel["dialplan"]["exten"]),
                    text(&channel["connected"]["name"]),
                ],
                direction: None,
                other_leg,
                account: None,
            }
        }
        Profile::AsteriskMqtt => Told {
            from: [text(&p["from"]["extension"]), text(&p["from"]["name"])],
            to: [text(&p["to"]["extension"]), text(&p["to"]["name"])],
            direction: None,
            other_leg: None,
            account: None,
        },
    }
}

fn fill(slot: &mut Option<String>, value: Option<String>) {
    if slot.is_none() {
        *slot = value;
    }
}

/// The contract's view of one call, built event by event.
struct Model {
    profile: Profile,
    id: String,
    state: &'static str,
    bridged: bool,
    started_at: Option<String>,
    answered_at: Option<String>,
    from: [Option<String>; 2],
    to: [Option<String>; 2],
    direction: Option<String>,
    other_leg: Option<String>,
    account: Option<String>,
    last_event: String,
    events: u64,
    ended: bool,
}

impl Model {
    fn new(profile: Profile, id: &str) -> Model {
        Model {
            profile,
            id: id.to_owned(),
            state: "ringing",
            bridged: false,
            started_at: None,
            answered_at: None,
            from: [None, None],
            to: [None, None],
            direction: None,
            other_leg: None,
            account: None,
            last_event: String::new(),
            events: 0,
            ended: false,
        }
    }

    fn apply(&mut self, p: &Value) -> Kind {
        let (name, kind) = classify(self.profile, p);
        let at = event_time(self.profile, p);
        let seen = told(self.profile, p);
        self.events += 1;
        self.last_event = name;
        // A call's start is its first event (its CHANNEL_CREATE, StasisStart, ringing).
        fill(&mut self.started_at, Some(at.clone()));
        for (mine, told) in self.from.iter_mut().zip(seen.from) {
            fill(mine, told);
        }
        for (mine, told) in self.to.iter_mut().zip(seen.to) {
            fill(mine, told);
        }
        fill(&mut self.direction, seen.direction);
        fill(&mut self.account, seen.account);
        if kind == Kind::Bridge && seen.other_leg.is_some() {
            self.other_leg = seen.other_leg;
        } else {
            fill(&mut self.other_leg, seen.other_leg);
        }
        match kind {
            Kind::Answer if self.state == "ringing" => {
                self.state = "answered";
                self.answered_at = Some(at);
            }
            Kind::Hold => self.state = "held",
            Kind::Unhold => self.state = if self.bridged { "bridged" } else { "answered" },
            Kind::Bridge => {
                self.bridged = true;
                self.state = "bridged";
            }
            Kind::End => self.ended = true,
            Kind::Start | Kind::Answer | Kind::Other => {}
        }
        kind
    }

    /// The call object live-api.md describes.
    fn expected(&self) -> Value {
        json!({
            "id": self.id,
            "account": self.account,
            "source": source_name(self.profile),
            "state": self.state,
            "direction": self.direction,
            "from": {"number": self.from[0], "name": self.from[1]},
            "to": {"number": self.to[0], "name": self.to[1]},
            "started_at": self.started_at,
            "answered_at": self.answered_at,
            "other_leg": self.other_leg,
            "last_event": self.last_event,
            "events": self.events,
        })
    }
}

/// Every call of a deterministic simulated run, in start order, each with its messages.
fn simulated_calls(profile: Profile, seed: u64) -> Vec<(String, Vec<SimMessage>)> {
    let mut sim = Simulator::new(profile, seed, 1.0, sim_start());
    sim.stop_starting_at(Duration::from_secs(120));
    let mut calls: Vec<(String, Vec<SimMessage>)> = Vec::new();
    for (_, msg) in sim {
        let id = call_id(profile, &payload(&msg));
        match calls.iter_mut().find(|(known, _)| *known == id) {
            Some((_, messages)) => messages.push(msg),
            None => calls.push((id, vec![msg])),
        }
    }
    calls
}

/// A whole simulated call with as many kinds of step as the shape has: start, answer, bridge
/// and hold where it has them, end.
fn full_call(profile: Profile) -> (String, Vec<SimMessage>) {
    let kinds = |messages: &[SimMessage]| -> Vec<Kind> {
        messages
            .iter()
            .map(|m| classify(profile, &payload(m)).1)
            .collect()
    };
    let score = |messages: &[SimMessage]| {
        let kinds = kinds(messages);
        [Kind::Answer, Kind::Bridge, Kind::Hold, Kind::Unhold]
            .iter()
            .filter(|kind| kinds.contains(kind))
            .count()
    };
    let calls = simulated_calls(profile, 7);
    let best = calls
        .iter()
        .max_by_key(|(_, messages)| (score(messages), std::cmp::Reverse(messages.len())))
        .unwrap()
        .clone();
    let kinds = kinds(&best.1);
    assert_eq!(kinds.first(), Some(&Kind::Start), "{profile:?}");
    assert_eq!(kinds.last(), Some(&Kind::End), "{profile:?}");
    assert!(kinds.contains(&Kind::Answer), "{profile:?}: {kinds:?}");
    if profile != Profile::AsteriskMqtt {
        // The AMI bridges carry neither hold nor bridge (events.md).
        assert!(
            kinds.contains(&Kind::Bridge) && kinds.contains(&Kind::Hold),
            "{profile:?}: {kinds:?}"
        );
    }
    best
}

/// The call as `/rest/live/calls` shows it, once it has taken `events` events.
fn wait_call(callwire: &Callwire, id: &str, events: u64) -> Value {
    let mut found = Value::Null;
    wait_for(&format!("call {id} at event {events}"), TIMEOUT, || {
        found = calls(callwire)
            .into_iter()
            .find(|call| call["id"] == id)
            .unwrap_or(Value::Null);
        found["events"] == events
    });
    found
}

fn wait_gone(callwire: &Callwire, id: &str) {
    wait_for(
        &format!("call {id} to leave the live list"),
        TIMEOUT,
        || calls(callwire).iter().all(|call| call["id"] != id),
    );
}

/// Feeds one whole call through `feed`, checking the live API after every step.
fn check_lifecycle(callwire: &Callwire, feed: &Feed, profile: Profile) {
    let (id, messages) = full_call(profile);
    let mut model = Model::new(profile, &id);
    let mut states = Vec::new();
    for msg in &messages {
        feed.send(msg);
        let kind = model.apply(&payload(msg));
        if model.ended {
            wait_gone(callwire, &id);
            let reply = http(callwire, "GET", &format!("/rest/live/calls/{id}"), &[]);
            assert_eq!(reply.status, 404, "{}", reply.body);
            assert_eq!(reply.json(), json!({"error": format!("no call {id}")}));
            break;
        }
        let call = wait_call(callwire, &id, model.events);
        assert_eq!(call, model.expected(), "{profile:?} after {kind:?}");
        assert_eq!(
            get(callwire, &format!("/rest/live/calls/{id}"), &[]),
            call,
            "the instance is the listed call"
        );
        states.push(model.state);
    }
    assert!(model.ended, "{profile:?}: the call never ended");
    assert!(calls(callwire).is_empty());
    assert_eq!(callwire.healthz().1["live_calls"], 0);
    assert_eq!(callwire.metric("callwire_live_calls"), 0);
    let expected_states: &[&str] = if profile == Profile::AsteriskMqtt {
        &["ringing", "answered"]
    } else {
        &["ringing", "answered", "bridged", "held"]
    };
    for state in expected_states {
        assert!(
            states.contains(state),
            "{profile:?} never {state}: {states:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. One lifecycle of each shape, through a real broker

#[test]
fn a_kazoo_call_is_followed_from_create_to_destroy() {
    let (callwire, feed) = start_mqtt(&[]);
    check_lifecycle(&callwire, &feed, Profile::Kazoo);
}

#[test]
fn a_freeswitch_call_over_rabbitmq_is_followed_from_create_to_hangup() {
    let (callwire, feed) = start_amqp(&[]);
    check_lifecycle(&callwire, &feed, Profile::FreeSwitch);
}

#[test]
fn a_freeswitch_call_over_mqtt_is_followed_from_create_to_hangup() {
    let (callwire, feed) = start_mqtt(&[]);
    check_lifecycle(&callwire, &feed, Profile::FreeSwitch);
}

#[test]
fn an_asterisk_ari_call_is_followed_from_stasis_start_to_stasis_end() {
    let (callwire, feed) = start_mqtt(&[]);
    check_lifecycle(&callwire, &feed, Profile::AsteriskAri);
}

#[test]
fn an_ami_to_mqtt_bridge_call_is_followed_from_ringing_to_hungup() {
    let (callwire, feed) = start_mqtt(&[]);
    check_lifecycle(&callwire, &feed, Profile::AsteriskMqtt);
}

// ---------------------------------------------------------------------------------------------
// 3. Sub-resources, extensions, errors, credentials

#[test]
fn a_calls_events_are_its_latest_oldest_first_bounded_by_events_per_call() {
    let (callwire, feed) = start_mqtt(&["--events-per-call", "3"]);
    let (id, messages) = full_call(Profile::Kazoo);
    let live = &messages[..messages.len() - 1];
    assert!(live.len() >= 5, "{} events", live.len());
    let events_path = format!("/rest/live/calls/{id}/events");
    let check = |fed: &[SimMessage]| {
        let events = get(&callwire, &events_path, &[]);
        let events = events.as_array().unwrap();
        let kept = &fed[fed.len().saturating_sub(3)..];
        assert_eq!(events.len(), kept.len(), "{events:?}");
        for (event, msg) in events.iter().zip(kept) {
            assert_eq!(event["routing_key"], msg.routing_key.as_str(), "{event}");
            assert_eq!(event["data"], payload(msg), "the payload, as JSON");
            let received = event["received_at"].as_str().unwrap();
            assert!(
                received.len() == 20 && received.ends_with('Z') && &received[10..11] == "T",
                "{received}"
            );
            assert_eq!(event.as_object().unwrap().len(), 3, "{event}");
        }
    };
    for (n, msg) in live.iter().enumerate() {
        feed.send(msg);
        wait_call(&callwire, &id, n as u64 + 1);
        check(&live[..=n]);
    }
    // The call still counts every event it took.
    assert_eq!(
        get(&callwire, &format!("/rest/live/calls/{id}"), &[])["events"],
        live.len()
    );
    feed.send(messages.last().unwrap());
    wait_gone(&callwire, &id);
    let reply = http(&callwire, "GET", &events_path, &[]);
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json(), json!({"error": format!("no call {id}")}));
}

/// A Kazoo event of a call, written by hand so the parties are known.
fn kazoo_event(name: &str, id: &str, from: (&str, &str), to: (&str, &str)) -> String {
    json!({
        "Event-Name": name, "Call-ID": id, "Call-Direction": "inbound",
        "Caller-ID-Number": from.0, "Caller-ID-Name": from.1,
        "Callee-ID-Number": to.0, "Callee-ID-Name": to.1,
        "Timestamp": 63_962_648_130u64,
    })
    .to_string()
}

#[test]
fn extensions_list_their_live_calls() {
    let (callwire, feed) = start_mqtt(&[]);
    let external = "+14155550100";
    let parties = [
        ("ext-c1", ("201", "Alice"), (external, "")),
        ("ext-c2", ("202", "Bruno"), ("201", "Alice Desk")),
        ("ext-c3", ("203", "Chloe"), ("204", "")),
    ];
    for (id, from, to) in parties {
        let event = kazoo_event("CHANNEL_CREATE", id, from, to);
        feed.raw(&format!("call/CHANNEL_CREATE/{id}"), event.as_bytes());
    }
    wait_for("three calls", TIMEOUT, || calls(&callwire).len() == 3);

    let mut listing: Vec<Value> = get(&callwire, "/rest/live/extensions", &[])
        .as_array()
        .unwrap()
        .clone();
    listing.sort_by(|a, b| a["number"].as_str().cmp(&b["number"].as_str()));
    assert_eq!(
        Value::Array(listing),
        json!([
            {"number": external, "name": null, "calls": ["ext-c1"]},
            {"number": "201", "name": "Alice", "calls": ["ext-c1", "ext-c2"]},
            {"number": "202", "name": "Bruno", "calls": ["ext-c2"]},
            {"number": "203", "name": "Chloe", "calls": ["ext-c3"]},
            {"number": "204", "name": null, "calls": ["ext-c3"]},
        ])
    );
    assert_eq!(
        get(&callwire, "/rest/live/extensions/201", &[]),
        json!({"number": "201", "name": "Alice", "calls": ["ext-c1", "ext-c2"]})
    );
    // A `+` is itself in a path, and may be percent-encoded.
    for path in [
        "/rest/live/extensions/+14155550100",
        "/rest/live/extensions/%2B14155550100",
    ] {
        assert_eq!(
            get(&callwire, path, &[])["calls"],
            json!(["ext-c1"]),
            "{path}"
        );
    }
    let own_calls = get(&callwire, "/rest/live/extensions/201/calls", &[]);
    let c1 = get(&callwire, "/rest/live/calls/ext-c1", &[]);
    let c2 = get(&callwire, "/rest/live/calls/ext-c2", &[]);
    assert_eq!(own_calls, json!([c1, c2]));
    assert_eq!(c2["to"], json!({"number": "201", "name": "Alice Desk"}));
    for path in [
        "/rest/live/extensions/999",
        "/rest/live/extensions/999/calls",
    ] {
        http(&callwire, "GET", path, &[]).assert_error(404, path);
    }

    // The end of a call takes it off its extensions, and an extension with no live call goes.
    let destroy = kazoo_event(
        "CHANNEL_DESTROY",
        "ext-c1",
        ("201", "Alice"),
        (external, ""),
    );
    feed.raw("call/CHANNEL_DESTROY/ext-c1", destroy.as_bytes());
    wait_gone(&callwire, "ext-c1");
    assert_eq!(
        get(&callwire, "/rest/live/extensions/201", &[])["calls"],
        json!(["ext-c2"])
    );
    assert_eq!(
        get(&callwire, "/rest/live/extensions/201/calls", &[]),
        json!([c2])
    );
    http(
        &callwire,
        "GET",
        "/rest/live/extensions/%2B14155550100",
        &[],
    )
    .assert_error(404, "an extension whose only call ended");
}

/// An ARI event of channel `id`, created at 10:15:30 and stamped `at` (HH:MM:SS, same day).
fn ari_event(kind: &str, id: &str, state: &str, at: &str) -> String {
    json!({
        "type": kind, "timestamp": format!("2026-11-23T{at}.500+0000"),
        "application": "callwire",
        "channel": {"id": id, "state": state, "creationtime": "2026-11-23T10:15:30.250+0000",
                    "caller": {"number": "2107", "name": "Front Desk"},
                    "dialplan": {"exten": "2108"}}
    })
    .to_string()
}

#[test]
fn an_ari_call_ends_at_stasis_end_and_a_later_event_brings_it_back() {
    let (callwire, feed) = start_mqtt(&[]);
    let id = "1795428930.4411";
    let send = |kind: &str, state: &str, at: &str| {
        feed.raw(
            &format!("asterisk/ari/{kind}"),
            ari_event(kind, id, state, at).as_bytes(),
        )
    };
    // First seen mid-life, answered: its start is the channel's creation time.
    send("ChannelStateChange", "Up", "10:16:05");
    let call = wait_call(&callwire, id, 1);
    assert_eq!(call["started_at"], "2026-11-23T10:15:30Z", "{call}");
    assert_eq!(call["state"], "answered", "{call}");
    send("StasisEnd", "Up", "10:16:10");
    wait_gone(&callwire, id);
    // The ChannelDestroyed that follows, and a marker call after it: once the marker shows,
    // the destroy was applied and changed nothing.
    send("ChannelDestroyed", "Up", "10:16:11");
    let marker = kazoo_event("CHANNEL_CREATE", "ari-marker", ("1", ""), ("2", ""));
    feed.raw("call/CHANNEL_CREATE/ari-marker", marker.as_bytes());
    wait_call(&callwire, "ari-marker", 1);
    assert_eq!(ids(&json!(calls(&callwire))), ["ari-marker"]);
    // The channel re-enters the application: the call is back.
    send("StasisStart", "Up", "10:16:20");
    let call = wait_call(&callwire, id, 1);
    assert_eq!(call["started_at"], "2026-11-23T10:15:30Z", "{call}");
    assert_eq!(call["last_event"], "StasisStart", "{call}");
}

#[test]
fn a_freeswitch_call_in_a_kazoo_cluster_takes_its_account_from_ecallmgr() {
    let creds = credentials(&CREDENTIALS);
    let (callwire, feed) = start_mqtt(&["--auth", creds.path()]);
    let event = |name: &str| {
        json!({"Event-Name": name, "Unique-ID": "fs-kz-1", "Call-Direction": "inbound",
               "Caller-Caller-ID-Number": "2107", "Caller-Destination-Number": "2108",
               "variable_ecallmgr_Account-ID": ACCOUNT_A,
               "Event-Date-Timestamp": "1795428930123456"})
        .to_string()
    };
    feed.raw(
        "FreeSWITCH/fs1/CHANNEL_CREATE",
        event("CHANNEL_CREATE").as_bytes(),
    );
    let auth_a = basic("acc-a", SECRET_A);
    let auth_b = basic("acc-b", SECRET_B);
    let listed = |auth: &str| get(&callwire, "/rest/live/calls", &[("Authorization", auth)]);
    wait_for("the call in account A", TIMEOUT, || {
        ids(&listed(&auth_a)) == ["fs-kz-1"]
    });
    let call = &listed(&auth_a)[0];
    assert_eq!(call["account"], ACCOUNT_A, "{call}");
    assert_eq!(call["source"], "freeswitch", "{call}");
    assert!(ids(&listed(&auth_b)).is_empty(), "account B sees A's call");
}

#[test]
fn one_call_id_in_two_accounts_is_two_calls() {
    let (callwire, feed) = start_mqtt(&[]);
    let id = "shared-id-77";
    let event = |name: &str, account: &str| {
        let mut event: Value =
            serde_json::from_str(&kazoo_event(name, id, ("201", "A"), ("202", "B"))).unwrap();
        event["Account-ID"] = json!(account);
        event.to_string()
    };
    for account in [ACCOUNT_A, ACCOUNT_B] {
        feed.raw(
            &format!("call/CHANNEL_CREATE/{id}"),
            event("CHANNEL_CREATE", account).as_bytes(),
        );
    }
    wait_for("two calls with one id", TIMEOUT, || {
        calls(&callwire).len() == 2
    });
    let accounts = |calls: &[Value]| {
        let mut accounts: Vec<String> = calls
            .iter()
            .map(|call| call["account"].as_str().unwrap().to_owned())
            .collect();
        accounts.sort();
        accounts
    };
    assert_eq!(accounts(&calls(&callwire)), [ACCOUNT_A, ACCOUNT_B]);
    // The extension in both lists each call, and its calls are the two calls, not one twice.
    assert_eq!(
        get(&callwire, "/rest/live/extensions/201", &[])["calls"],
        json!([id, id])
    );
    let own = get(&callwire, "/rest/live/extensions/201/calls", &[]);
    assert_eq!(accounts(own.as_array().unwrap()), [ACCOUNT_A, ACCOUNT_B]);
    // B's answer moves B's call only.
    feed.raw(
        &format!("call/CHANNEL_ANSWER/{id}"),
        event("CHANNEL_ANSWER", ACCOUNT_B).as_bytes(),
    );
    wait_for("B's call answered", TIMEOUT, || {
        calls(&callwire)
            .iter()
            .any(|call| call["account"] == ACCOUNT_B && call["state"] == "answered")
    });
    let a = calls(&callwire)
        .into_iter()
        .find(|call| call["account"] == ACCOUNT_A)
        .unwrap();
    assert_eq!(
        (a["state"].as_str(), a["events"].as_u64()),
        (Some("ringing"), Some(1))
    );
    // A's end takes A's call only.
    feed.raw(
        &format!("call/CHANNEL_DESTROY/{id}"),
        event("CHANNEL_DESTROY", ACCOUNT_A).as_bytes(),
    );
    wait_for("A's call gone", TIMEOUT, || calls(&callwire).len() == 1);
    let left = calls(&callwire);
    assert_eq!(accounts(&left), [ACCOUNT_B]);
    assert_eq!(left[0]["state"], "answered");
    assert_eq!(
        get(&callwire, &format!("/rest/live/calls/{id}"), &[]),
        left[0]
    );
}

#[test]
fn errors_are_json_with_the_right_status() {
    let (callwire, feed) = start_mqtt(&[]);
    let id = "err-call-1";
    let event = kazoo_event("CHANNEL_CREATE", id, ("201", "Alice"), ("202", "Bruno"));
    feed.raw(&format!("call/CHANNEL_CREATE/{id}"), event.as_bytes());
    wait_call(&callwire, id, 1);

    // 404 for an unknown call, with the contract's exact body.
    for (method, path) in [
        ("GET", "/rest/live/calls/nope"),
        ("GET", "/rest/live/calls/nope/events"),
        ("POST", "/rest/live/calls/nope/hangup"),
    ] {
        let reply = http(&callwire, method, path, &[]);
        assert_eq!(reply.status, 404, "{method} {path}: {}", reply.body);
        assert_eq!(
            reply.json(),
            json!({"error": "no call nope"}),
            "{method} {path}"
        );
    }
    // 404 for a path the live API does not have.
    for path in [
        "/rest/live/nope",
        "/rest/live/calls/err-call-1/nope",
        "/rest/live/calls/err-call-1/events/1",
        "/rest/live/extensions/201/calls/err-call-1",
        "/rest/live/calls/err-call-1/hangup/now",
    ] {
        http(&callwire, "GET", path, &[]).assert_error(404, path);
    }
    // 405 with Allow for a method the path does not take.
    for (method, path, allow) in [
        ("POST", "/rest/live/calls", "GET"),
        ("DELETE", "/rest/live/calls/err-call-1", "GET"),
        ("PUT", "/rest/live/calls/err-call-1/events", "GET"),
        ("GET", "/rest/live/calls/err-call-1/hangup", "POST"),
        ("DELETE", "/rest/live/calls/err-call-1/hangup", "POST"),
        ("POST", "/rest/live/extensions", "GET"),
        ("POST", "/rest/live/extensions/201", "GET"),
        ("POST", "/rest/live/extensions/201/calls", "GET"),
        ("POST", "/v2/websockets", "GET"),
    ] {
        let reply = http(&callwire, method, path, &[]);
        reply.assert_error(405, &format!("{method} {path}"));
        assert_eq!(reply.header("allow"), Some(allow), "{method} {path}");
    }
    // 400 for a malformed path: an empty segment, bad percent-encoding, a segment that is not
    // UTF-8 once decoded.
    for path in [
        "/rest/live/calls//events",
        "/rest/live//calls",
        "/rest/live/calls/%zz",
        "/rest/live/calls/%2",
        "/rest/live/calls/err-call-%1",
        "/rest/live/calls/%ff",
        "/rest/live/calls/%C3%28",
        "/rest/live/calls/%+1",
        "/rest/live/calls/%-1",
        "/rest/live/extensions/%g1/calls",
    ] {
        http(&callwire, "GET", path, &[]).assert_error(400, path);
    }
    // A percent-encoded id is the id.
    assert_eq!(
        get(&callwire, "/rest/live/calls/err%2Dcall%2d1", &[])["id"],
        id
    );
    // 413 for a hangup with a body far larger than a hangup could need.
    let reply = http(
        &callwire,
        "POST",
        &format!("/rest/live/calls/{id}/hangup"),
        &[("Content-Length", "1000000000")],
    );
    reply.assert_error(413, "a huge hangup body");
    // All of it left the call alone and callwire serving.
    assert_eq!(calls(&callwire).len(), 1);
    assert_eq!(callwire.healthz().0, 200);
}

#[test]
fn credentials_are_required_and_scope_what_is_seen() {
    let creds = credentials(&CREDENTIALS);
    let (callwire, feed) = start_mqtt(&["--auth", creds.path()]);
    // A Kazoo call of account A, one of account B, and a FreeSWITCH call (no account).
    let mut picked = Vec::new();
    for (seed, account) in [(1, Some(ACCOUNT_A)), (2, Some(ACCOUNT_B)), (3, None)] {
        let profile = if account.is_some() {
            Profile::Kazoo
        } else {
            Profile::FreeSwitch
        };
        let mut sim = Simulator::new(profile, seed, 1.0, sim_start());
        if let Some(account) = account {
            sim.set_account(account);
        }
        let (_, create) = sim.next().unwrap();
        feed.send(&create);
        picked.push((call_id(profile, &payload(&create)), payload(&create)));
    }
    let [a, b, f] = [0, 1, 2].map(|i| picked[i].0.clone());
    let star = bearer(SECRET_STAR);
    let star_calls = || get(&callwire, "/rest/live/calls", &[("Authorization", &star)]);
    wait_for("three calls", TIMEOUT, || ids(&star_calls()).len() == 3);
    assert_eq!(
        ids(&star_calls()),
        [a.clone(), b.clone(), f.clone()],
        "a * credential sees all, oldest first"
    );
    assert_eq!(
        ids(&get(
            &callwire,
            "/rest/live/calls",
            &[("Authorization", &basic("manager", SECRET_STAR))]
        )),
        [a.clone(), b.clone(), f.clone()]
    );

    // No credential, or a bad one: 401 with the challenge, on every path.
    let paths = [
        ("GET", "/rest/live/calls".to_owned()),
        ("GET", format!("/rest/live/calls/{a}")),
        ("GET", format!("/rest/live/calls/{a}/events")),
        ("POST", format!("/rest/live/calls/{a}/hangup")),
        ("GET", "/rest/live/extensions".to_owned()),
        ("GET", "/rest/live/nope".to_owned()),
    ];
    let bad = [
        None,
        Some(bearer("nope")),
        Some(bearer(&SECRET_A[..SECRET_A.len() - 1])),
        Some(basic("acc-a", "nope")),
        Some(basic("acc-b", SECRET_A)),
        Some("Basic !!!".to_owned()),
        Some(format!("Digest {SECRET_A}")),
        Some(SECRET_A.to_owned()),
    ];
    for (method, path) in &paths {
        for authorization in &bad {
            let headers: Vec<(&str, &str)> = authorization
                .iter()
                .map(|value| ("Authorization", value.as_str()))
                .collect();
            let what = format!("{method} {path} with {authorization:?}");
            let reply = http(&callwire, method, path, &headers);
            reply.assert_error(401, &what);
            assert_eq!(
                reply.header("www-authenticate"),
                Some(r#"Basic realm="callwire""#),
                "{what}"
            );
        }
    }

    // Each account sees only its own calls, by Bearer and by Basic.
    let numbers = |p: &Value| -> Vec<String> {
        let mut numbers: Vec<String> = ["Caller-ID-Number", "Callee-ID-Number"]
            .iter()
            .filter_map(|field| text(&p[field]))
            .collect();
        numbers.sort();
        numbers.dedup();
        numbers
    };
    for (own, others, name, secret, own_payload) in [
        (&a, [&b, &f], "acc-a", SECRET_A, &picked[0].1),
        (&b, [&a, &f], "acc-b", SECRET_B, &picked[1].1),
    ] {
        for authorization in [bearer(secret), basic(name, secret)] {
            let auth = [("Authorization", authorization.as_str())];
            let listed = get(&callwire, "/rest/live/calls", &auth);
            assert_eq!(ids(&listed), [own.as_str()], "{name}");
            assert_eq!(
                get(&callwire, &format!("/rest/live/calls/{own}"), &auth)["id"],
                own.as_str()
            );
            assert_eq!(
                get(&callwire, &format!("/rest/live/calls/{own}/events"), &auth)
                    .as_array()
                    .unwrap()
                    .len(),
                1
            );
            for other in others {
                for (method, path) in [
                    ("GET", format!("/rest/live/calls/{other}")),
                    ("GET", format!("/rest/live/calls/{other}/events")),
                    ("POST", format!("/rest/live/calls/{other}/hangup")),
                ] {
                    let reply = http(&callwire, method, &path, &auth);
                    assert_eq!(reply.status, 404, "{name}: {method} {path}: {}", reply.body);
                    assert_eq!(reply.json(), json!({"error": format!("no call {other}")}));
                }
            }
            let mut seen: Vec<String> = get(&callwire, "/rest/live/extensions", &auth)
                .as_array()
                .unwrap()
                .iter()
                .map(|ext| {
                    assert_eq!(ext["calls"], json!([own]), "{name}: {ext}");
                    ext["number"].as_str().unwrap().to_owned()
                })
                .collect();
            seen.sort();
            assert_eq!(seen, numbers(own_payload), "{name}");
            for number in &seen {
                assert_eq!(
                    get(
                        &callwire,
                        &format!("/rest/live/extensions/{number}/calls"),
                        &auth
                    ),
                    json!([listed[0]])
                );
            }
        }
    }
    // The call with no account is seen only with `*`.
    assert_eq!(
        get(
            &callwire,
            &format!("/rest/live/calls/{f}"),
            &[("Authorization", &star)]
        )["source"],
        "freeswitch"
    );
}

#[test]
fn the_catalogue_lists_kazoo_templates_without_a_credential_and_families_seen_with_one() {
    let creds = credentials(&CREDENTIALS);
    let (callwire, feed) = start_mqtt(&["--auth", creds.path()]);
    let star = basic("manager", SECRET_STAR);
    let catalogue = |headers: &[(&str, &str)]| {
        let reply = http(&callwire, "GET", "/v2/websockets", headers);
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()
    };
    let first = catalogue(&[]);
    assert_eq!(first["status"], "success");
    assert_eq!(
        first["version"],
        format!("callwire {}", env!("CARGO_PKG_VERSION"))
    );
    let call = first["data"]["call"].as_array().expect("data.call");
    for event in ["CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_DESTROY"] {
        assert!(
            call.contains(&json!(format!("call.{event}.{{CALL_ID}}"))),
            "{first}"
        );
    }
    assert!(first["data"].get("conference").is_none(), "{first}");

    let before = callwire.metric("callwire_events_in_total");
    feed.raw("conference/event/room-1/joined", b"{}");
    wait_for("the conference event", TIMEOUT, || {
        callwire.metric("callwire_events_in_total") > before
    });
    // A family name can carry a tenant's secrets (live-api.md): only a credential that may
    // see the event's account sees it; this one has none, so only `*`.
    let anonymous = catalogue(&[]);
    assert_eq!(anonymous, first, "no credential: the templates only");
    let other = catalogue(&[("Authorization", &basic("acc-a", SECRET_A))]);
    assert!(other["data"].get("conference").is_none(), "{other}");
    let after = catalogue(&[("Authorization", &star)]);
    assert_eq!(
        after["data"]["conference"],
        json!(["conference.event.#"]),
        "{after}"
    );
    assert_eq!(after["data"]["call"], first["data"]["call"]);
}

// ---------------------------------------------------------------------------------------------
// 4. Hangup: 202 and the command on the broker

/// The command body live-api.md gives.
fn hangup_command(id: &str, source: &str) -> Value {
    json!({"action": "hangup", "call_id": id, "source": source})
}

#[test]
fn a_hangup_is_published_on_the_mqtt_command_topic() {
    let command_topic = unique("rest-cmd");
    let (callwire, feed) = start_mqtt(&["--command-topic", &command_topic]);
    let (id, messages) = full_call(Profile::Kazoo);
    feed.send(&messages[0]);
    wait_call(&callwire, &id, 1);

    // Subscribed (SUBACK seen) before the POST, so the command cannot slip past.
    let topic = format!("{command_topic}/hangup");
    let sub = Subscriber::start(MQTT_PORT, &topic, &["-C", "1", "-W", "10"]);

    let reply = http(
        &callwire,
        "POST",
        &format!("/rest/live/calls/{id}/hangup"),
        &[],
    );
    assert_eq!(reply.status, 202, "{}", reply.body);
    let (payloads, ended) = sub.payloads();
    assert!(ended.success(), "mosquitto_sub got its one message");
    let command = payloads.first().expect("the hangup command on the broker");
    let command: Value = serde_json::from_str(command).unwrap();
    assert_eq!(command, hangup_command(&id, "kazoo"));
    // Asking for the hangup does not end the call: the PBX's own end event does.
    assert_eq!(calls(&callwire).len(), 1);
    http(&callwire, "POST", "/rest/live/calls/nope/hangup", &[]).assert_error(404, "unknown");
}

#[test]
fn a_hangup_is_published_on_the_amqp_exchange() {
    let (callwire, feed) = start_amqp(&[]);
    let Feed::Amqp(rabbit) = &feed else {
        unreachable!()
    };
    let queue = rabbit.bind_queue("command.hangup.#");
    let (id, messages) = full_call(Profile::FreeSwitch);
    feed.send(&messages[0]);
    wait_call(&callwire, &id, 1);

    let reply = http(
        &callwire,
        "POST",
        &format!("/rest/live/calls/{id}/hangup"),
        &[],
    );
    assert_eq!(reply.status, 202, "{}", reply.body);
    let mut delivery = None;
    wait_for("the hangup command on the exchange", TIMEOUT, || {
        delivery = rabbit.get(&queue);
        delivery.is_some()
    });
    let delivery = delivery.unwrap();
    assert_eq!(delivery.exchange.as_str(), rabbit.exchange);
    assert_eq!(
        delivery.routing_key.as_str(),
        format!("command.hangup.{id}")
    );
    let command: Value = serde_json::from_slice(&delivery.data).unwrap();
    assert_eq!(command, hangup_command(&id, "freeswitch"));
    let reply = http(&callwire, "POST", "/rest/live/calls/nope/hangup", &[]);
    assert_eq!(reply.json(), json!({"error": "no call nope"}));
    assert_eq!(reply.status, 404);
}

#[test]
fn a_hangup_while_the_broker_is_down_is_503() {
    let mut broker = PrivateMosquitto::start();
    let (callwire, feed) = start_mqtt_on(broker.port, &[]);
    let (id, messages) = full_call(Profile::Kazoo);
    feed.send(&messages[0]);
    wait_call(&callwire, &id, 1);

    broker.kill();
    wait_for("/healthz to report the outage", TIMEOUT, || {
        callwire.healthz().0 == 503
    });
    let reply = http(
        &callwire,
        "POST",
        &format!("/rest/live/calls/{id}/hangup"),
        &[],
    );
    reply.assert_error(503, "a hangup with the broker down");
    // The live state is still served while the source is down.
    assert_eq!(ids(&Value::Array(calls(&callwire))), [id.as_str()]);
}

// ---------------------------------------------------------------------------------------------
// 5. Bounded memory, and garbage

#[test]
fn past_max_calls_the_oldest_are_evicted_and_memory_stays_flat() {
    const MAX_CALLS: usize = 50;
    // The history of recent events is a store of its own, bounded by --history-bytes
    // (tests/resume.rs, history's unit tests): small here, it is full before the first measure,
    // so what grows after it is the live calls.
    let (callwire, feed) = start_mqtt(&["--max-calls", "50", "--history-bytes", "65536"]);
    let Feed::Mqtt { prefix, .. } = &feed else {
        unreachable!()
    };
    // 5000 realistic Kazoo call starts, each a call of its own.
    let mut sim = Simulator::new(Profile::Kazoo, 11, 50.0, sim_start());
    let starts: Vec<(String, String)> = sim
        .by_ref()
        .map(|(_, msg)| payload(&msg))
        .filter(|p| p["Event-Name"] == "CHANNEL_CREATE")
        .take(5_000)
        .map(|p| (call_id(Profile::Kazoo, &p), p.to_string()))
        .collect();
    let topic = format!("{prefix}/call/CHANNEL_CREATE");
    let base = callwire.metric("callwire_events_in_total");
    // In batches of 500, each taken in whole before the next: Mosquitto queues at most 1000
    // messages for a subscriber (max_queued_messages) and drops the rest, whoever reads them.
    let feed_calls = |range: std::ops::Range<usize>| {
        for batch in starts[range.clone()].chunks(500) {
            let lines: Vec<String> = batch.iter().map(|(_, p)| p.clone()).collect();
            let target = callwire.metric("callwire_events_in_total") + lines.len() as u64;
            mqtt_pub_lines(&topic, &lines);
            wait_for("a batch of call starts taken in", TIMEOUT, || {
                callwire.metric("callwire_events_in_total") == target
            });
        }
        assert_eq!(
            callwire.metric("callwire_events_in_total"),
            base + range.end as u64
        );
        let listed = calls(&callwire);
        let newest: Vec<String> = starts[range.end - MAX_CALLS..range.end]
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(
            ids(&Value::Array(listed)),
            newest,
            "exactly the newest {MAX_CALLS}, oldest first"
        );
        assert_eq!(callwire.metric("callwire_live_calls"), MAX_CALLS as u64);
        assert_eq!(
            callwire.metric("callwire_live_calls_evicted_total"),
            (range.end - MAX_CALLS) as u64
        );
        assert_eq!(callwire.healthz().1["live_calls"], MAX_CALLS);
    };
    feed_calls(0..1_000);
    let after_1000 = vm_rss_kb(callwire.pid());
    feed_calls(1_000..5_000);
    let after_5000 = vm_rss_kb(callwire.pid());
    assert!(
        after_5000 * 10 <= after_1000 * 11,
        "resident memory grew from {after_1000} kB after 1000 calls to {after_5000} kB after 5000"
    );
    let reported = callwire.metric("callwire_process_resident_memory_bytes");
    assert!(
        reported > 0 && reported / 1024 <= after_5000 * 11 / 10,
        "{reported}"
    );
}

#[test]
fn garbage_payloads_change_no_call_and_crash_nothing() {
    let (mut callwire, feed) = start_mqtt(&[]);
    let (id, messages) = full_call(Profile::Kazoo);
    feed.send(&messages[0]);
    wait_call(&callwire, &id, 1);
    let listed = calls(&callwire);
    let events = get(&callwire, &format!("/rest/live/calls/{id}/events"), &[]);
    let base_in = callwire.metric("callwire_events_in_total");
    let base_not_json = callwire.metric("callwire_events_not_json_total");

    // Random bytes (led by 0xff, never UTF-8, so never JSON), one message each.
    let mut noise = callwire::rng::Rng::new(0x9e37_79b9_7f4a_7c15);
    let mut sent = 0;
    for n in 0..20 {
        let len = 1 + noise.next_u64() % 300;
        let mut bytes = vec![0xff];
        bytes.extend((0..len).map(|_| noise.next_u64() as u8));
        let path = if n % 2 == 0 {
            format!("call/CHANNEL_ANSWER/{id}")
        } else {
            format!("garbage/{n}")
        };
        feed.raw(&path, &bytes);
        sent += 1;
    }
    // Every later event of the call, truncated: never JSON, never a change to the call.
    let Feed::Mqtt { prefix, .. } = &feed else {
        unreachable!()
    };
    let mut cuts = Vec::new();
    for msg in &messages[1..] {
        let text = std::str::from_utf8(&msg.payload).unwrap();
        for cut in (1..text.len()).step_by(23) {
            if text.is_char_boundary(cut) {
                cuts.push(text[..cut].to_owned());
            }
        }
    }
    mqtt_pub_lines(&format!("{prefix}/call/CHANNEL_ANSWER/{id}"), &cuts);
    sent += cuts.len() as u64;

    wait_for("every garbage message taken in", TIMEOUT, || {
        callwire.metric("callwire_events_in_total") == base_in + sent
    });
    assert_eq!(
        callwire.metric("callwire_events_not_json_total"),
        base_not_json + sent,
        "every one counted as not JSON"
    );
    assert!(
        callwire.child.try_wait().unwrap().is_none(),
        "callwire died"
    );
    assert_eq!(callwire.healthz().0, 200);
    assert_eq!(calls(&callwire), listed, "the live calls changed");
    assert_eq!(
        get(&callwire, &format!("/rest/live/calls/{id}/events"), &[]),
        events
    );
    // And the call still moves on its real events.
    feed.send(&messages[1]);
    let call = wait_call(&callwire, &id, 2);
    assert_eq!(call["state"], "answered", "{call}");
}

#[test]
fn the_rfc3339_formatter_here_agrees_with_known_dates() {
    assert_eq!(rfc3339_seconds(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339_seconds(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339_seconds(1_795_428_930), "2026-11-23T10:15:30Z");
}
