//! The ActionCable dialect against its contract (actioncable.md), through the real binary and
//! real clients: the official `@rails/actioncable` npm client (tests/clients/cable_official.js,
//! on Node with `ws`), a raw Python `websockets` client (tests/clients/cable_raw.py), and
//! tungstenite or bare TCP for the edges. Events go through the shared Mosquitto on
//! 127.0.0.1:1883 with the real `mosquitto_pub`, each test under a topic prefix of its own.
//!
//! The tests run in parallel, each with its own callwire; the long one is the official
//! client's 20 s keep-alive.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::generate_request;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::Role;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use common::script::Script;
use common::{
    Callwire, Credential, Socket, credentials, mosquitto_pub, mqtt_callwire, set_read_timeout,
    unique,
};

/// The shared Mosquitto every MQTT test here publishes to.
const BROKER_PORT: u16 = 1883;
const TIMEOUT: Duration = Duration::from_secs(10);

const ACCOUNT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const ACCOUNT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const SECRET_A: &str = "cable-a-s3cret-51c2";
const SECRET_B: &str = "cable-b-s3cret-0e7d";
const SECRET_STAR: &str = "cable-manager-s3cret-9ab4";

// ---------------------------------------------------------------------------------------------
// Helpers

const CREDENTIALS: [Credential; 3] = [
    ("desk-a", SECRET_A, ACCOUNT_A),
    ("desk-b", SECRET_B, ACCOUNT_B),
    ("manager", SECRET_STAR, "*"),
];

/// A callwire whose source delivers nothing (its topic is one no one publishes to).
fn quiet_callwire(extra: &[&str]) -> Callwire {
    let topic = format!("{}/#", unique("cable-quiet"));
    let mut args = vec!["--mqtt", "mqtt://127.0.0.1:1883", "--mqtt-topic", &topic];
    args.extend_from_slice(extra);
    Callwire::start(&args)
}

/// A tungstenite socket on /cable, past its welcome.
fn cable(callwire: &Callwire) -> Socket {
    let mut socket = callwire.ws("/cable");
    assert_eq!(read_text(&mut socket), r#"{"type":"welcome"}"#);
    socket
}

/// The next text frame that is not a ping, or `None` once `within` has passed (pings come
/// every 3 s, so the socket's own read timeout alone would never expire).
fn next_frame_within(socket: &mut Socket, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        set_read_timeout(socket, left);
        match socket.read() {
            Ok(Message::Text(text)) if text.starts_with(r#"{"type":"ping""#) => continue,
            Ok(Message::Text(text)) => return Some(text.to_string()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => panic!("expected a text frame, got {other:?}"),
            Err(tungstenite::Error::Io(err))
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(err) => panic!("socket failed: {err}"),
        }
    }
}

/// The next text frame that is not a ping; panics after the read timeout.
fn read_text(socket: &mut Socket) -> String {
    next_frame_within(socket, Duration::from_secs(5)).expect("a frame within 5 s")
}

fn send_text(socket: &mut Socket, text: &str) {
    socket.send(Message::text(text)).unwrap();
}

/// Subscribes and returns the reply's `type`, checking it echoes the identifier.
fn subscribe(socket: &mut Socket, identifier: &str) -> String {
    let command = json!({"command": "subscribe", "identifier": identifier});
    send_text(socket, &command.to_string());
    let reply: Value = serde_json::from_str(&read_text(socket)).unwrap();
    assert_eq!(reply["identifier"], json!(identifier), "{reply}");
    reply["type"].as_str().unwrap().to_owned()
}

/// A Kazoo call event (events.md), of account `account`.
fn kazoo(name: &str, call_id: &str, account: &str) -> String {
    json!({
        "Event-Name": name, "Call-ID": call_id, "Account-ID": account,
        "Call-Direction": "inbound",
        "Caller-ID-Number": "201", "Caller-ID-Name": "Alice",
        "Callee-ID-Number": "202", "Callee-ID-Name": "Bruno",
        "Timestamp": 63_962_648_130u64,
    })
    .to_string()
}

/// Publishes a call's whole life: created, answered, destroyed.
fn publish_call(prefix: &str, call_id: &str, account: &str) {
    for name in ["CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_DESTROY"] {
        let topic = format!("{prefix}/call/{name}/{call_id}");
        mosquitto_pub(BROKER_PORT, &topic, &kazoo(name, call_id, account));
    }
}

/// The (event_type, event_class, object id) of each `received` callback of `sub`.
fn received(script: &Script, sub: &str) -> Vec<(String, String, String)> {
    script
        .events("received", Some(sub))
        .into_iter()
        .map(|line| {
            let data = &line["data"];
            (
                data["event_type"].as_str().unwrap_or("?").to_owned(),
                data["event_class"].as_str().unwrap_or("?").to_owned(),
                data["object"]["id"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

fn triple(kind: &str, class: &str, id: &str) -> (String, String, String) {
    (kind.to_owned(), class.to_owned(), id.to_owned())
}

// ---------------------------------------------------------------------------------------------
// The official client and a raw client, side by side

/// The official client gets `connected`, then exactly the types it selected for a simulated
/// call; a bad key gets `rejected` and the socket stays; another account sees nothing. A raw
/// Python client on the same server gets the same messages, its odd identifier echoed byte
/// for byte.
#[test]
fn official_and_raw_clients_get_the_selected_call_changes() {
    let creds = credentials(&CREDENTIALS);
    let prefix = unique("cable-calls");
    let callwire = mqtt_callwire(&prefix, &["--auth", creds.path()], Some(SECRET_STAR));
    let url = format!("ws://127.0.0.1:{}/cable", callwire.port);
    let call_id = unique("call-");

    let subscriptions = json!([
        {"name": "create_destroy",
         "params": {"channel": "ApiChannel", "key": SECRET_A, "events": "calls#create,destroy"}},
        {"name": "create_update",
         "params": {"channel": "ApiChannel", "key": SECRET_A, "events": "calls"}},
        {"name": "bad_key",
         "params": {"channel": "ApiChannel", "key": "not-a-secret", "events": "calls"}},
        {"name": "other_account",
         "params": {"channel": "ApiChannel", "key": SECRET_B,
                    "events": "calls#create,update,destroy;events"}},
    ]);
    let mut official = Script::node("cable_official.js", &[&url, &subscriptions.to_string()]);
    let odd = format!(
        r#"{{"channel": "ApiChannel","key": "{SECRET_A}",  "events":"calls#create,destroy"}}"#
    );
    let port = callwire.port.to_string();
    let mut raw = Script::python("cable_raw.py", &[&port, &odd, &call_id]);

    for sub in ["create_destroy", "create_update", "other_account"] {
        official.wait_line(&format!("{sub} connected"), TIMEOUT, |l| {
            l["event"] == "connected" && l["sub"] == sub
        });
    }
    official.wait_line("bad_key rejected", TIMEOUT, |l| {
        l["event"] == "rejected" && l["sub"] == "bad_key"
    });
    raw.wait_line("the raw client's subscription", TIMEOUT, |l| {
        l["event"] == "subscribed"
    });

    publish_call(&prefix, &call_id, ACCOUNT_A);

    official.wait_line("the destroy", TIMEOUT, |l| {
        l["event"] == "received"
            && l["sub"] == "create_destroy"
            && l["data"]["event_type"] == "destroy"
    });
    official.wait_line("the update", TIMEOUT, |l| {
        l["event"] == "received" && l["sub"] == "create_update"
    });
    raw.wait_line("the raw client's destroy", TIMEOUT, |l| {
        l["event"] == "done"
    });
    official.command("stats");
    let stats = official.wait_line("stats", TIMEOUT, |l| l["event"] == "stats");
    official.command("exit");
    assert!(official.finish().success(), "{}", official.transcript());
    assert!(raw.finish().success(), "{}", raw.stderr.lock().unwrap());

    // Frames of one socket arrive in order, so after the destroy nothing of this call is
    // still on its way: what is not here was never sent.
    assert_eq!(
        received(&official, "create_destroy"),
        [
            triple("create", "Call", &call_id),
            triple("destroy", "Call", &call_id)
        ],
        "{}",
        official.transcript()
    );
    assert_eq!(
        received(&official, "create_update"),
        [
            triple("create", "Call", &call_id),
            triple("update", "Call", &call_id)
        ],
        "{}",
        official.transcript()
    );
    assert!(received(&official, "other_account").is_empty());
    assert!(official.events("connected", Some("bad_key")).is_empty());
    assert_eq!(stats["connected"], json!(3), "{stats}");
    assert_eq!(stats["rejected"], json!(1), "{stats}");
    assert_eq!(stats["disconnected"], json!(0), "{stats}");
    assert_eq!(stats["open"], json!(true), "{stats}");
    assert_eq!(stats["protocol"], json!("actioncable-v1-json"), "{stats}");

    // The call object is the live API's.
    let create = &official.events("received", Some("create_destroy"))[0]["data"]["object"];
    assert_eq!(create["account"], ACCOUNT_A);
    assert_eq!(create["state"], "ringing");
    assert_eq!(create["from"], json!({"number": "201", "name": "Alice"}));
    assert_eq!(create["to"], json!({"number": "202", "name": "Bruno"}));
    let update = &official.events("received", Some("create_update"))[1]["data"]["object"];
    assert_eq!(update["state"], "answered");
    assert_eq!(update["last_event"], "CHANNEL_ANSWER");

    // The raw client got the same messages, under its identifier as sent.
    let raw_messages: Vec<Value> = raw
        .events("frame", None)
        .iter()
        .map(|line| {
            let frame: Value = serde_json::from_str(line["raw"].as_str().unwrap()).unwrap();
            assert_eq!(frame["identifier"], json!(odd));
            frame["message"].clone()
        })
        .collect();
    let official_messages: Vec<Value> = official
        .events("received", Some("create_destroy"))
        .iter()
        .map(|line| line["data"].clone())
        .collect();
    assert_eq!(raw_messages, official_messages);
    let first = raw.events("frame", None)[0]["raw"]
        .as_str()
        .unwrap()
        .to_owned();
    let echoed = serde_json::to_string(&odd).unwrap();
    assert!(
        first.starts_with(&format!(r#"{{"identifier":{echoed},"message":{{"#)),
        "{first}"
    );
}

// ---------------------------------------------------------------------------------------------
// Keep-alive and shutdown

/// The official client stays connected for 20 s on the server's pings alone (it reconnects
/// after about 6 s of silence), then hears the shutdown's disconnect; callwire exits 0.
#[test]
fn official_client_stays_connected_on_pings_and_hears_the_shutdown() {
    let mut callwire = quiet_callwire(&[]);
    let url = format!("ws://127.0.0.1:{}/cable", callwire.port);
    let subscriptions = json!([{"name": "quiet", "params": {"channel": "ApiChannel"}}]);
    let mut official = Script::node("cable_official.js", &[&url, &subscriptions.to_string()]);
    official.wait_line("connected", TIMEOUT, |l| l["event"] == "connected");

    std::thread::sleep(Duration::from_secs(20));
    official.command("stats");
    let stats = official.wait_line("stats", TIMEOUT, |l| l["event"] == "stats");
    // One connection all along: no stale detection, no reopen, no second welcome.
    assert_eq!(stats["connected"], json!(1), "{}", official.transcript());
    assert_eq!(stats["disconnected"], json!(0), "{}", official.transcript());
    assert_eq!(stats["reconnect_attempts"], json!(0), "{stats}");
    assert_eq!(stats["stale"], json!(false), "{stats}");
    assert_eq!(stats["open"], json!(true), "{stats}");
    // The monitor heard from the server after the confirmation, and nothing but pings came.
    assert_eq!(stats["heard_since_connect"], json!(true), "{stats}");
    assert!(stats["pings"].as_u64().unwrap() >= 2, "{stats}");
    assert_eq!(
        official.events("raw", None).len(),
        2,
        "only the welcome and the confirmation besides pings:\n{}",
        official.transcript()
    );

    let kill = Command::new("kill")
        .args(["-TERM", &callwire.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let disconnected =
        official.wait_line("disconnected", TIMEOUT, |l| l["event"] == "disconnected");
    assert_eq!(
        disconnected["data"],
        json!({"willAttemptReconnect": true}),
        "{}",
        official.transcript()
    );
    // The disconnect frame itself, and the client acting on it (not just on the close).
    let raw: Vec<&Value> = official.events("raw", None);
    assert_eq!(
        raw.last().unwrap()["data"],
        r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#
    );
    assert!(
        official.events("log", None).iter().any(|l| l["text"]
            .as_str()
            .unwrap()
            .contains("Disconnecting. Reason: server_restart")),
        "{}",
        official.transcript()
    );
    official.command("exit");
    assert!(official.finish().success());

    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = callwire.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "callwire did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{}", callwire.log_text());
}

// ---------------------------------------------------------------------------------------------
// The handshake

/// Sends `request` (and `after`, in a second write when given), then returns the response
/// head and a client socket over what follows it.
fn raw_upgrade(callwire: &Callwire, request: &[u8], after: Option<&[u8]>) -> (String, Socket) {
    let mut stream = TcpStream::connect(("127.0.0.1", callwire.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request).unwrap();
    if let Some(after) = after {
        stream.write_all(after).unwrap();
    }
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("the upgrade response");
        head.push(byte[0]);
    }
    let socket = WebSocket::from_raw_socket(MaybeTlsStream::Plain(stream), Role::Client, None);
    (String::from_utf8(head).unwrap(), socket)
}

/// An upgrade request for /cable offering `protocols` (none when empty).
fn upgrade_request(callwire: &Callwire, protocols: &str) -> Vec<u8> {
    let url = format!("ws://127.0.0.1:{}/cable", callwire.port);
    let mut request = url.into_client_request().unwrap();
    if !protocols.is_empty() {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocols).unwrap(),
        );
    }
    generate_request(request).unwrap().0
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A masked client text frame, as a browser would put it on the wire.
fn client_frame(text: &str) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81u8];
    let len = text.len();
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[test]
fn the_subprotocol_is_answered_only_when_offered() {
    let callwire = quiet_callwire(&[]);
    for (offered, answered) in [
        (
            "actioncable-v1-json, actioncable-unsupported",
            Some("actioncable-v1-json"),
        ),
        (
            "actioncable-unsupported, actioncable-v1-json",
            Some("actioncable-v1-json"),
        ),
        ("", None),
        // Only protocols it does not speak: accepted without one, as Rails does.
        ("graphql-ws, actioncable-unsupported", None),
    ] {
        let (head, mut socket) = raw_upgrade(&callwire, &upgrade_request(&callwire, offered), None);
        assert!(head.starts_with("HTTP/1.1 101 "), "{offered}: {head}");
        assert_eq!(
            header(&head, "Sec-WebSocket-Protocol"),
            answered,
            "{offered}: {head}"
        );
        assert_eq!(read_text(&mut socket), r#"{"type":"welcome"}"#, "{offered}");
    }
}

/// A subscribe in the same TCP write as the upgrade request, or right after it before the
/// answer is read, is answered after the welcome, not dropped.
#[test]
fn commands_sent_with_the_upgrade_are_answered_after_the_welcome() {
    let callwire = quiet_callwire(&[]);
    let identifier = r#"{"channel":"ApiChannel","events":"calls"}"#;
    let command = json!({"command": "subscribe", "identifier": identifier}).to_string();
    let confirm = format!(
        r#"{{"identifier":{},"type":"confirm_subscription"}}"#,
        serde_json::to_string(identifier).unwrap()
    );
    let request = upgrade_request(&callwire, "actioncable-v1-json, actioncable-unsupported");

    let mut together = request.clone();
    together.extend(client_frame(&command));
    together.extend(client_frame(&command)); // a duplicate: ignored
    let (head, mut socket) = raw_upgrade(&callwire, &together, None);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(read_text(&mut socket), r#"{"type":"welcome"}"#);
    assert_eq!(read_text(&mut socket), confirm);

    let (head, mut socket) = raw_upgrade(&callwire, &request, Some(&client_frame(&command)));
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(read_text(&mut socket), r#"{"type":"welcome"}"#);
    assert_eq!(read_text(&mut socket), confirm);

    // The duplicate got no second confirmation: the next frame answers the next command.
    let other = r#"{"channel":"ApiChannel","events":"events"}"#;
    let (_, mut first) = raw_upgrade(&callwire, &together, None);
    assert_eq!(read_text(&mut first), r#"{"type":"welcome"}"#);
    assert_eq!(read_text(&mut first), confirm);
    assert_eq!(subscribe(&mut first, other), "confirm_subscription");
}

// ---------------------------------------------------------------------------------------------
// Commands

/// Garbage, binary frames, unknown commands, `message` commands and unsubscribing an unknown
/// identifier are ignored without a reply, and the connection keeps working.
#[test]
fn anything_not_understood_is_ignored_and_the_socket_stays() {
    let creds = credentials(&CREDENTIALS);
    let callwire = quiet_callwire(&["--auth", creds.path()]);
    let mut socket = cable(&callwire);
    let good = json!({"channel": "ApiChannel", "key": SECRET_A}).to_string();
    for text in [
        "not json",
        "[1,2]",
        "\"subscribe\"",
        "{}",
        r#"{"command":"subscribe"}"#,
        r#"{"command":"subscribe","identifier":{"channel":"ApiChannel"}}"#,
        r#"{"command":"unsubscribe","identifier":"{\"channel\":\"ApiChannel\",\"key\":\"nobody\"}"}"#,
        r#"{"command":"message","identifier":"{}","data":"{\"action\":\"x\"}"}"#,
        r#"{"command":"dance","identifier":"{\"channel\":\"ApiChannel\"}"}"#,
        r#"{"command":7,"identifier":"x"}"#,
    ] {
        send_text(&mut socket, text);
    }
    socket
        .send(Message::binary(vec![0u8, 159, 146, 150]))
        .unwrap();
    socket
        .send(Message::binary(b"{\"command\":\"subscribe\"}".to_vec()))
        .unwrap();
    // Nothing came back for any of them: the next frame is this subscribe's confirmation.
    assert_eq!(subscribe(&mut socket, &good), "confirm_subscription");

    // Rejections keep the socket too.
    for identifier in [
        json!({"channel": "ApiChannel", "key": "wrong"}).to_string(),
        json!({"channel": "ApiChannel"}).to_string(),
        json!({"channel": "ApiChannel", "key": ""}).to_string(),
        json!({"channel": "OtherChannel", "key": SECRET_A}).to_string(),
        json!({"channel": "ApiChannel", "key": SECRET_A, "events": "calls#"}).to_string(),
        json!({"channel": "ApiChannel", "key": SECRET_A, "events": 5}).to_string(),
        "not json at all".to_owned(),
        "[\"ApiChannel\"]".to_owned(),
    ] {
        assert_eq!(
            subscribe(&mut socket, &identifier),
            "reject_subscription",
            "{identifier}"
        );
    }
    // A rejected identifier may be tried again, and is answered again.
    let wrong = json!({"channel": "ApiChannel", "key": "wrong"}).to_string();
    assert_eq!(subscribe(&mut socket, &wrong), "reject_subscription");
    // A duplicate of a subscribed identifier is ignored: the next frame answers the next
    // subscribe (`subscribe` checks the identifier).
    send_text(
        &mut socket,
        &json!({"command": "subscribe", "identifier": good}).to_string(),
    );
    let other = json!({"channel": "ApiChannel", "key": SECRET_A, "events": "x"}).to_string();
    assert_eq!(subscribe(&mut socket, &other), "confirm_subscription");
    // Unsubscribing has no reply, and the identifier may then subscribe again (were it still
    // subscribed, this subscribe would be ignored and the read would time out).
    send_text(
        &mut socket,
        &json!({"command": "unsubscribe", "identifier": good}).to_string(),
    );
    assert_eq!(subscribe(&mut socket, &good), "confirm_subscription");
}

#[test]
fn subscriptions_per_socket_are_bounded_by_max_bindings() {
    let callwire = quiet_callwire(&["--max-bindings", "2"]);
    let mut socket = cable(&callwire);
    let id = |n: u32| json!({"channel": "ApiChannel", "events": format!("m{n}")}).to_string();
    assert_eq!(subscribe(&mut socket, &id(1)), "confirm_subscription");
    assert_eq!(subscribe(&mut socket, &id(2)), "confirm_subscription");
    assert_eq!(subscribe(&mut socket, &id(3)), "reject_subscription");
    send_text(
        &mut socket,
        &json!({"command": "unsubscribe", "identifier": id(1)}).to_string(),
    );
    assert_eq!(subscribe(&mut socket, &id(3)), "confirm_subscription");
    // Another socket has its own room.
    let mut other = cable(&callwire);
    assert_eq!(subscribe(&mut other, &id(1)), "confirm_subscription");
}

// ---------------------------------------------------------------------------------------------
// Models

/// The `events` model carries every event; other families are models of their own; `call`
/// and `event` families make none; a space in the selector is kept; an unsubscribed
/// identifier gets nothing more.
#[test]
fn events_and_family_models() {
    let prefix = unique("cable-models");
    let callwire = mqtt_callwire(&prefix, &[], None);
    let mut socket = cable(&callwire);
    let all = r#"{"channel":"ApiChannel"}"#;
    let events = r#"{"channel":"ApiChannel","events":"events;faxs#create"}"#;
    let spaced = r#"{"channel":"ApiChannel","events":"conferences; events"}"#;
    let leaving = r#"{"channel":"ApiChannel","events":"conferences#update"}"#;
    for identifier in [all, events, spaced, leaving] {
        assert_eq!(subscribe(&mut socket, identifier), "confirm_subscription");
    }
    send_text(
        &mut socket,
        &json!({"command": "unsubscribe", "identifier": leaving}).to_string(),
    );

    let joined = r#"{"event" : "joined", "member": 7}"#;
    mosquitto_pub(
        BROKER_PORT,
        &format!("{prefix}/conference/room1/joined"),
        joined,
    );
    mosquitto_pub(BROKER_PORT, &format!("{prefix}/fax_job/done"), "not json");
    mosquitto_pub(BROKER_PORT, &format!("{prefix}/event/x"), "{}");
    mosquitto_pub(BROKER_PORT, &format!("{prefix}/end"), "{}");

    let mut frames: Vec<(String, Value)> = Vec::new();
    // The last frame is the `events` subscription's for `end`.
    while frames
        .last()
        .is_none_or(|(id, m)| id != events || m["object"]["routing_key"] != "end")
    {
        let text = read_text(&mut socket);
        let frame: Value = serde_json::from_str(&text).unwrap();
        let identifier = frame["identifier"].as_str().unwrap().to_owned();
        frames.push((identifier, frame["message"].clone()));
        assert!(frames.len() < 20, "{frames:?}");
    }
    let summary: Vec<(&str, &str, &str)> = frames
        .iter()
        .map(|(identifier, m)| {
            (
                identifier.as_str(),
                m["event_type"].as_str().unwrap(),
                m["event_class"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            // conference.room1.joined
            (all, "create", "Event"),
            (all, "update", "Conference"),
            (events, "create", "Event"),
            (spaced, "update", "Conference"),
            // fax_job.done: the model is `fax_jobs`, so `faxs` never fires
            (all, "create", "Event"),
            (all, "update", "FaxJob"),
            (events, "create", "Event"),
            // event.x: no family model
            (all, "create", "Event"),
            (events, "create", "Event"),
            // end
            (all, "create", "Event"),
            (all, "update", "End"),
            (events, "create", "Event"),
        ]
    );
    assert_eq!(
        frames[0].1["object"],
        json!({"routing_key": "conference.room1.joined", "data": {"event": "joined", "member": 7}})
    );
    assert_eq!(
        frames[1].1["object"],
        json!({"event": "joined", "member": 7})
    );
    assert_eq!(
        frames[4].1["object"],
        json!({"routing_key": "fax_job.done", "data": "not json"})
    );
    assert_eq!(frames[5].1["object"], json!("not json"));
}

/// Events and call changes reach a subscription only if its key's account may see them.
#[test]
fn account_scoping_follows_each_subscriptions_key() {
    let creds = credentials(&CREDENTIALS);
    let prefix = unique("cable-accounts");
    let callwire = mqtt_callwire(&prefix, &["--auth", creds.path()], Some(SECRET_STAR));
    let mut socket = cable(&callwire);
    let a = json!({"channel": "ApiChannel", "key": SECRET_A, "events": "calls#create;events"})
        .to_string();
    let b = json!({"channel": "ApiChannel", "key": SECRET_B, "events": "calls#create;events"})
        .to_string();
    let star =
        json!({"channel": "ApiChannel", "key": SECRET_STAR, "events": "calls#create;events"})
            .to_string();
    for identifier in [&a, &b, &star] {
        assert_eq!(subscribe(&mut socket, identifier), "confirm_subscription");
    }
    let call_b = unique("call-b-");
    let topic = format!("{prefix}/call/CHANNEL_CREATE/{call_b}");
    mosquitto_pub(
        BROKER_PORT,
        &topic,
        &kazoo("CHANNEL_CREATE", &call_b, ACCOUNT_B),
    );
    mosquitto_pub(BROKER_PORT, &format!("{prefix}/x/no-account"), "{}");
    mosquitto_pub(
        BROKER_PORT,
        &format!("{prefix}/end"),
        &json!({"Account-ID": ACCOUNT_A}).to_string(),
    );

    let mut seen: Vec<(String, String)> = Vec::new();
    loop {
        let frame: Value = serde_json::from_str(&read_text(&mut socket)).unwrap();
        let who = match frame["identifier"].as_str().unwrap() {
            id if id == a => "a",
            id if id == b => "b",
            id if id == star => "star",
            other => panic!("unknown identifier {other}"),
        };
        let message = &frame["message"];
        let what = match message["event_class"].as_str().unwrap() {
            "Call" => "call".to_owned(),
            _ => message["object"]["routing_key"]
                .as_str()
                .unwrap()
                .to_owned(),
        };
        let done = what == "end" && who == "star";
        seen.push((who.to_owned(), what));
        if done {
            break;
        }
    }
    let seen: Vec<(&str, &str)> = seen.iter().map(|(w, x)| (w.as_str(), x.as_str())).collect();
    let key = format!("call.CHANNEL_CREATE.{call_b}");
    assert_eq!(
        seen,
        [
            // The call change goes out before the event that made it.
            ("b", "call"),
            ("star", "call"),
            ("b", key.as_str()),
            ("star", key.as_str()),
            ("star", "x.no-account"),
            ("a", "end"),
            ("star", "end"),
        ]
    );
}
