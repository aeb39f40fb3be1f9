//! Every limit through the real binary: the answer a client gets when it bites, and the count
//! under `callwire_limit_hits_total{limit="..."}` in `/metrics` (every other limit's count
//! stays 0). Then credentials reloaded on SIGHUP: revoked sockets closed, a broken file kept
//! out, a new credential let in.
//!
//! Each callwire here has a source that delivers nothing (an MQTT broker address where no
//! broker listens): websocket clients are served all the while, and no event gets in the way.
//! The flag values are small so that every limit bites within a second or two.

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{Frame, Utf8Bytes};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Bytes, Message};

use common::{
    Callwire, Credential, ISYMPHONY_PATH, Socket, TempFile, credentials_json, read_until_clients,
    recv, request, send, set_read_timeout, wait_for,
};

/// Every label of `callwire_limit_hits_total` (src/metrics.rs, `Limit::as_str`).
const LIMITS: [&str; 14] = [
    "max_clients",
    "max_per_ip",
    "handshake_timeout",
    "max_message_size",
    "request_rate",
    "max_bindings",
    "max_filters",
    "idle_timeout",
    "connections",
    "open_files",
    "auth_timeout",
    "max_unauthenticated",
    "stall_timeout",
    "replay",
];

// ---------------------------------------------------------------------------------------------
// Helpers

/// Every `callwire_limit_hits_total` series from one `/metrics` scrape, by label.
fn limit_hits(callwire: &Callwire) -> BTreeMap<String, u64> {
    let (status, body) = callwire.http("GET", "/metrics", &[]);
    assert_eq!(status, 200, "/metrics: {body}");
    let hits: BTreeMap<String, u64> = body
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("callwire_limit_hits_total{limit=\"")?;
            let (label, rest) = rest.split_once("\"}")?;
            Some((label.to_owned(), rest.trim().parse().ok()?))
        })
        .collect();
    let labels: Vec<&str> = hits.keys().map(String::as_str).collect();
    let mut expected = LIMITS.to_vec();
    expected.sort_unstable();
    assert_eq!(labels, expected, "every limit has its series:\n{body}");
    hits
}

/// Asserts the limit counters: the ones named have these counts, every other one is 0.
fn assert_hits(callwire: &Callwire, expected: &[(&str, u64)]) {
    let hits = limit_hits(callwire);
    for limit in LIMITS {
        let want = expected
            .iter()
            .find(|(name, _)| *name == limit)
            .map_or(0, |(_, n)| *n);
        assert_eq!(hits[limit], want, "limit=\"{limit}\" in {hits:?}");
    }
}

fn tcp(socket: &mut Socket) -> &mut TcpStream {
    match socket.get_mut() {
        MaybeTlsStream::Plain(stream) => stream,
        _ => unreachable!("plain ws:// only"),
    }
}

/// Proves a Blackhole socket is open and answers, in order.
fn assert_alive(socket: &mut Socket, request_id: &str) {
    let reply = request(socket, json!({"action": "ping", "request_id": request_id}));
    assert_eq!(
        reply,
        json!({"action": "reply", "request_id": request_id, "status": "success",
               "data": {"response": "pong"}})
    );
}

/// The HTTP status an upgrade on `path` is refused with; panics if it is accepted.
fn refused_upgrade(callwire: &Callwire, path: &str) -> u16 {
    let url = format!("ws://127.0.0.1:{}{path}", callwire.port);
    match tungstenite::connect(url) {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(err) => panic!("{path}: expected an HTTP refusal, got {err}"),
        Ok(_) => panic!("{path}: the upgrade was accepted"),
    }
}

/// Closes a socket from the client side and waits until callwire has dropped the
/// connection (end of stream on the TCP socket): by then the connection no longer counts.
fn close_and_wait(mut socket: Socket) {
    socket.close(None).unwrap();
    loop {
        match socket.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(err) => panic!("expected the close handshake, got {err}"),
        }
    }
    let stream = tcp(&mut socket);
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(err) if err.kind() == ErrorKind::ConnectionReset => return,
            Err(err) => panic!("callwire kept the closed connection open: {err}"),
        }
    }
}

/// What a raw TCP client gets before the server hangs up: every byte, and whether it was
/// dropped (end of stream or reset) rather than timing out.
fn read_until_dropped(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == ErrorKind::ConnectionReset => return received,
            Err(err) => panic!(
                "the connection was not dropped: {err}; got {:?}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
}

/// The status line of the response a fresh TCP connection gets without sending anything.
fn status_line_unasked(callwire: &Callwire) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", callwire.port)).unwrap();
    let response = read_until_dropped(&mut stream, Duration::from_secs(5));
    let response = String::from_utf8_lossy(&response).into_owned();
    response.lines().next().unwrap_or_default().to_owned()
}

/// The next frame that is a close, skipping pings and text; panics on anything else.
fn read_close(socket: &mut Socket) -> (Option<CloseFrame>, Vec<String>) {
    let mut texts = Vec::new();
    loop {
        match socket.read() {
            Ok(Message::Close(frame)) => return (frame, texts),
            Ok(Message::Text(text)) => texts.push(text.as_str().to_owned()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => panic!("unexpected frame before the close: {other:?}"),
            Err(err) => panic!("expected a close frame, got {err} (after {texts:?})"),
        }
    }
}

fn close_code(frame: &Option<CloseFrame>) -> Option<u16> {
    frame.as_ref().map(|f| u16::from(f.code))
}

/// An ActionCable socket, its welcome read.
fn cable(callwire: &Callwire) -> Socket {
    let mut socket = callwire.ws("/cable");
    assert_eq!(recv(&mut socket), json!({"type": "welcome"}));
    socket
}

/// The next ActionCable frame that is not one of its keep-alive pings.
fn cable_recv(socket: &mut Socket) -> Value {
    loop {
        let frame = recv(socket);
        if frame["type"] != "ping" {
            return frame;
        }
    }
}

fn cable_identifier(key: Option<&str>, tag: &str) -> String {
    let mut identifier = json!({"channel": "ApiChannel", "events": "calls", "tag": tag});
    if let Some(key) = key {
        identifier["key"] = json!(key);
    }
    identifier.to_string()
}

fn cable_subscribe(socket: &mut Socket, identifier: &str) {
    send(
        socket,
        json!({"command": "subscribe", "identifier": identifier}),
    );
}

/// Subscribes and returns the reply's type, checking it echoes the identifier.
fn cable_subscribe_reply(socket: &mut Socket, identifier: &str) -> String {
    cable_subscribe(socket, identifier);
    let reply = cable_recv(socket);
    assert_eq!(reply["identifier"], json!(identifier), "{reply}");
    reply["type"].as_str().unwrap_or_default().to_owned()
}

fn filter_message(values: &[&str]) -> Value {
    let filters: Vec<Value> = values
        .iter()
        .map(|v| json!({"property": "type", "value": v}))
        .collect();
    json!({"type": "filter", "filters": filters})
}

fn filter_success(values: &[&str]) -> Value {
    let mut reply = filter_message(values);
    reply["type"] = json!("filterResponse");
    reply["status"] = json!("success");
    reply
}

/// Writes several text frames and flushes once: they leave in one `write`, so callwire
/// reads them back to back (a burst, not a rate).
fn send_burst(socket: &mut Socket, messages: &[Value]) {
    for message in messages {
        socket.write(Message::text(message.to_string())).unwrap();
    }
    socket.flush().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Connection limits

#[test]
fn max_clients_refuses_the_upgrade_with_503_and_counts_it() {
    let callwire = Callwire::quiet(&["--max-clients", "3"]);
    let mut sockets: Vec<Socket> = (0..3).map(|_| callwire.ws("/")).collect();

    // One more, in any dialect: 503 on the upgrade.
    for path in ["/", ISYMPHONY_PATH, "/cable"] {
        assert_eq!(refused_upgrade(&callwire, path), 503, "{path}");
    }
    // The clients in are untouched, and plain HTTP is not a client (nor refused).
    for (i, socket) in sockets.iter_mut().enumerate() {
        assert_alive(socket, &format!("in-{i}"));
    }
    assert_eq!(callwire.healthz().1["clients"], json!(3));
    assert_hits(&callwire, &[("max_clients", 3)]);

    // A client that leaves frees its place.
    close_and_wait(sockets.pop().unwrap());
    wait_for("the closed client to leave", Duration::from_secs(5), || {
        callwire.healthz().1["clients"] == json!(2)
    });
    let mut again = callwire.ws(ISYMPHONY_PATH);
    again
        .send(Message::text(filter_message(&[]).to_string()))
        .unwrap();
    assert_eq!(recv(&mut again), filter_success(&[]));
    assert_eq!(refused_upgrade(&callwire, "/cable"), 503);
    assert_hits(&callwire, &[("max_clients", 4)]);
}

#[test]
fn connections_past_max_per_ip_get_429_and_a_closed_one_frees_a_place() {
    let callwire = Callwire::quiet(&["--max-per-ip", "3"]);
    let mut a = callwire.ws("/");
    let b = callwire.ws(ISYMPHONY_PATH);
    let mut c = callwire.ws("/");

    // Any connection past the limit, websocket or not, is answered 429 at once.
    for _ in 0..2 {
        let status = status_line_unasked(&callwire);
        assert!(status.starts_with("HTTP/1.1 429 "), "{status:?}");
    }
    // The open ones are fine.
    assert_alive(&mut a, "a");
    assert_alive(&mut c, "c");

    // Closing one frees a place: the scrape takes it.
    close_and_wait(b);
    assert_hits(&callwire, &[("max_per_ip", 2)]);

    // And a new websocket may take it, after which the limit bites again.
    let mut d = callwire.ws("/");
    assert_alive(&mut d, "d");
    let status = status_line_unasked(&callwire);
    assert!(status.starts_with("HTTP/1.1 429 "), "{status:?}");
    assert_alive(&mut a, "a-again");
    close_and_wait(d);
    assert_hits(&callwire, &[("max_per_ip", 3)]);
}

#[test]
fn slowloris_clients_are_dropped_at_the_handshake_timeout() {
    let callwire = Callwire::quiet(&["--handshake-timeout", "1"]);
    let mut witness = callwire.ws("/");

    // Connects and sends nothing.
    let mut silent = TcpStream::connect(("127.0.0.1", callwire.port)).unwrap();
    // Sends half a request head and stops.
    let mut half = TcpStream::connect(("127.0.0.1", callwire.port)).unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n")
        .unwrap();
    // Trickles a header a byte at a time, never finishing it: busy, but never done.
    let mut trickle = TcpStream::connect(("127.0.0.1", callwire.port)).unwrap();
    trickle
        .write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        .unwrap();
    trickle
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 256];
    let trickled = loop {
        assert!(
            Instant::now() < deadline,
            "the trickling client was never dropped"
        );
        if trickle.write_all(b"a").is_err() {
            break Vec::new();
        }
        match trickle.read(&mut buf) {
            Ok(0) => break Vec::new(),
            Ok(n) => break buf[..n].to_vec(),
            Err(err) if err.kind() == ErrorKind::ConnectionReset => break Vec::new(),
            Err(_) => continue, // nothing yet: still open
        }
    };
    assert_eq!(
        String::from_utf8_lossy(&trickled),
        "",
        "no answer, just dropped"
    );
    for stream in [&mut silent, &mut half] {
        let answer = read_until_dropped(stream, Duration::from_secs(5));
        assert_eq!(
            String::from_utf8_lossy(&answer),
            "",
            "no answer, just dropped"
        );
    }

    // Everyone else was served all along, and a prompt request head is not timed out.
    assert_alive(&mut witness, "witness");
    assert_eq!(callwire.healthz().1["clients"], json!(1));
    assert_hits(&callwire, &[("handshake_timeout", 3)]);
}

// ---------------------------------------------------------------------------------------------
// Message size

#[test]
fn messages_and_frames_past_max_message_size_are_closed_with_1009() {
    let callwire = Callwire::quiet(&["--max-message-size", "1024"]);
    let mut witness = callwire.ws("/");

    // Exactly at the limit is fine.
    let mut at_limit = callwire.ws("/");
    let mut ping = json!({"action": "ping", "request_id": "big", "pad": ""});
    let pad = 1024 - ping.to_string().len();
    ping["pad"] = json!("x".repeat(pad));
    assert_eq!(ping.to_string().len(), 1024);
    assert_eq!(request(&mut at_limit, ping)["data"]["response"], "pong");

    // One byte more, in one frame: the frame is too big.
    let mut over = json!({"action": "ping", "request_id": "big", "pad": ""});
    over["pad"] = json!("x".repeat(pad + 1));
    at_limit.send(Message::text(over.to_string())).unwrap();
    let (close, texts) = read_close(&mut at_limit);
    assert_eq!(close_code(&close), Some(1009), "{close:?}");
    assert!(texts.is_empty(), "{texts:?}");

    // Frames each under the limit whose message is over it, on every dialect.
    for path in ["/", ISYMPHONY_PATH, "/cable"] {
        let mut socket = callwire.ws(path);
        let part = "y".repeat(600);
        for (opcode, fin) in [
            (Data::Text, false),
            (Data::Continue, false),
            (Data::Continue, true),
        ] {
            let frame = Frame::message(part.clone(), OpCode::Data(opcode), fin);
            socket.write(Message::Frame(frame)).unwrap();
        }
        socket.flush().unwrap();
        let (close, _) = read_close(&mut socket);
        assert_eq!(close_code(&close), Some(1009), "{path}: {close:?}");
    }

    // A binary message too.
    let mut binary = callwire.ws("/");
    binary.send(Message::binary(vec![0u8; 5000])).unwrap();
    let (close, _) = read_close(&mut binary);
    assert_eq!(close_code(&close), Some(1009), "{close:?}");

    assert_alive(&mut witness, "witness");
    assert_hits(&callwire, &[("max_message_size", 5)]);
}

// ---------------------------------------------------------------------------------------------
// Request rate

#[test]
fn blackhole_requests_over_the_rate_are_answered_rate_limit_exceeded() {
    let callwire = Callwire::quiet(&["--request-rate", "2", "--request-burst", "3"]);
    let mut socket = callwire.ws("/");
    let mut other = callwire.ws("/");

    // Six at once: the burst of three is served, the other three refused, each with its id.
    let ids = [
        json!("r1"),
        json!(2),
        json!("r3"),
        json!("r4"),
        json!(5),
        json!("r6"),
    ];
    let requests: Vec<Value> = ids
        .iter()
        .map(|id| json!({"action": "ping", "request_id": id}))
        .collect();
    send_burst(&mut socket, &requests);
    for id in &ids[..3] {
        assert_eq!(
            recv(&mut socket),
            json!({"action": "reply", "request_id": id, "status": "success",
                   "data": {"response": "pong"}})
        );
    }
    for id in &ids[3..] {
        assert_eq!(
            recv(&mut socket),
            json!({"action": "reply", "request_id": id, "status": "error",
                   "data": {"errors": ["rate limit exceeded"]}})
        );
    }
    // A refused request without a usable id gets a generated one, like any other reply.
    send(&mut socket, json!({"action": "ping"}));
    let reply = recv(&mut socket);
    assert_eq!(reply["data"], json!({"errors": ["rate limit exceeded"]}));
    assert!(
        reply["request_id"]
            .as_str()
            .is_some_and(|id| id.len() == 32),
        "{reply}"
    );
    // Websocket pings are not requests: answered, and not counted.
    for i in 0..5u8 {
        socket.send(Message::Ping(Bytes::from(vec![i]))).unwrap();
        match socket.read().unwrap() {
            Message::Pong(data) => assert_eq!(&data[..], [i]),
            other => panic!("expected the pong, got {other:?}"),
        }
    }
    // The bucket is per socket.
    assert_alive(&mut other, "other");
    assert_hits(&callwire, &[("request_rate", 4)]);

    // After a pause the bucket has refilled (2/s, up to 3): requests work again.
    std::thread::sleep(Duration::from_millis(1600));
    for i in 0..3 {
        assert_alive(&mut socket, &format!("again-{i}"));
    }
    assert_hits(&callwire, &[("request_rate", 4)]);
}

#[test]
fn isymphony_filters_over_the_rate_get_no_response_and_are_counted() {
    let callwire = Callwire::quiet(&["--request-rate", "2", "--request-burst", "3"]);
    let mut socket = callwire.ws(ISYMPHONY_PATH);

    let values = ["one", "two", "three", "four", "five"];
    let burst: Vec<Value> = values.iter().map(|v| filter_message(&[v])).collect();
    send_burst(&mut socket, &burst);
    for value in &values[..3] {
        assert_eq!(recv(&mut socket), filter_success(&[value]));
    }
    // Once the bucket has refilled, the next message is answered, and its response is the next
    // frame: the two over the rate got none.
    std::thread::sleep(Duration::from_millis(1600));
    send(&mut socket, filter_message(&["six"]));
    assert_eq!(recv(&mut socket), filter_success(&["six"]));
    assert_hits(&callwire, &[("request_rate", 2)]);
}

#[test]
fn actioncable_subscribes_over_the_rate_get_no_confirm_and_are_counted() {
    let callwire = Callwire::quiet(&["--request-rate", "2", "--request-burst", "3"]);
    let mut socket = cable(&callwire);

    let identifiers: Vec<String> = (0..5)
        .map(|i| cable_identifier(None, &format!("s{i}")))
        .collect();
    let burst: Vec<Value> = identifiers
        .iter()
        .map(|id| json!({"command": "subscribe", "identifier": id}))
        .collect();
    send_burst(&mut socket, &burst);
    for identifier in &identifiers[..3] {
        assert_eq!(
            cable_recv(&mut socket),
            json!({"identifier": identifier, "type": "confirm_subscription"})
        );
    }
    // After the pause, a subscribe dropped over the rate is confirmed now: it was dropped,
    // not taken silently (a second subscribe of a held identifier gets no confirm at all).
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(
        cable_subscribe_reply(&mut socket, &identifiers[3]),
        "confirm_subscription"
    );
    assert_hits(&callwire, &[("request_rate", 2)]);
}

// ---------------------------------------------------------------------------------------------
// Idle sockets

#[test]
fn idle_sockets_that_stop_answering_pings_are_closed_and_counted() {
    let callwire = Callwire::quiet(&["--ping-interval", "1"]);
    let mut responsive = callwire.ws("/");
    let mut silent_blackhole = callwire.ws("/");
    let mut silent_isymphony = callwire.ws(ISYMPHONY_PATH);
    assert_alive(&mut responsive, "r0");
    assert_eq!(callwire.healthz().1["clients"], json!(3));

    // The responsive socket keeps reading (tungstenite answers pings as it reads); the silent
    // ones read nothing until callwire has given up on them.
    let pinged = read_until_clients(&callwire, &mut responsive, 1);
    assert!(pinged, "the responsive socket was never pinged");

    for silent in [&mut silent_blackhole, &mut silent_isymphony] {
        let mut saw_ping = false;
        let close = loop {
            match silent.read().expect("a ping, then a close frame") {
                Message::Ping(_) => saw_ping = true,
                Message::Close(frame) => break frame,
                other => panic!("unexpected frame on a silent socket: {other:?}"),
            }
        };
        assert!(saw_ping, "closed without a ping first");
        let close = close.expect("a close frame with a code");
        assert_eq!(close.code, CloseCode::Away);
        assert_eq!(close.reason.as_str(), "ping timeout");
    }

    assert_alive(&mut responsive, "r1");
    assert_hits(&callwire, &[("idle_timeout", 2)]);
}

// ---------------------------------------------------------------------------------------------
// Bindings and filters

#[test]
fn max_bindings_refuses_blackhole_bindings_and_cable_subscriptions() {
    let callwire = Callwire::quiet(&["--max-bindings", "2"]);

    // Blackhole: one at a time up to the limit, then refused.
    let mut socket = callwire.ws("/");
    for (i, binding) in ["call.CHANNEL_CREATE.*", "call.CHANNEL_ANSWER.*"]
        .iter()
        .enumerate()
    {
        let reply = request(
            &mut socket,
            json!({"action": "subscribe", "request_id": i, "data": {"binding": binding}}),
        );
        assert_eq!(reply["status"], "success", "{reply}");
    }
    let refused = json!({"action": "reply", "request_id": "third", "status": "error",
                         "data": {"errors": ["too many bindings (limit 2)"]}});
    let reply = request(
        &mut socket,
        json!({"action": "subscribe", "request_id": "third",
               "data": {"binding": "call.CHANNEL_DESTROY.*"}}),
    );
    assert_eq!(reply, refused);
    assert_alive(&mut socket, "still-open");
    // A list over the limit on a fresh socket: refused whole.
    let mut fresh = callwire.ws("/");
    let reply = request(
        &mut fresh,
        json!({"action": "subscribe", "request_id": "third",
               "data": {"bindings": ["a.*", "b.*", "c.*"]}}),
    );
    assert_eq!(reply, refused);
    assert_hits(&callwire, &[("max_bindings", 2)]);

    // ActionCable: subscriptions count against the same limit; the third is rejected.
    let mut cable_socket = cable(&callwire);
    let ids: Vec<String> = (0..3)
        .map(|i| cable_identifier(None, &i.to_string()))
        .collect();
    assert_eq!(
        cable_subscribe_reply(&mut cable_socket, &ids[0]),
        "confirm_subscription"
    );
    assert_eq!(
        cable_subscribe_reply(&mut cable_socket, &ids[1]),
        "confirm_subscription"
    );
    assert_eq!(
        cable_subscribe_reply(&mut cable_socket, &ids[2]),
        "reject_subscription"
    );
    // Leaving one frees a place.
    send(
        &mut cable_socket,
        json!({"command": "unsubscribe", "identifier": ids[0]}),
    );
    assert_eq!(
        cable_subscribe_reply(&mut cable_socket, &ids[2]),
        "confirm_subscription"
    );
    assert_hits(&callwire, &[("max_bindings", 3)]);
}

#[test]
fn max_filters_refuses_a_filter_message_with_too_many() {
    let callwire = Callwire::quiet(&["--max-filters", "2"]);
    let mut socket = callwire.ws(ISYMPHONY_PATH);
    send(&mut socket, filter_message(&["login", "logout"]));
    assert_eq!(recv(&mut socket), filter_success(&["login", "logout"]));
    send(&mut socket, filter_message(&["a", "b", "c"]));
    assert_eq!(
        recv(&mut socket),
        json!({"type": "filterResponse", "status": "error",
               "message": "too many filters: 3 given, at most 2 allowed"})
    );
    // The socket stays open and takes a message within the limit.
    send(&mut socket, filter_message(&["c"]));
    assert_eq!(recv(&mut socket), filter_success(&["c"]));
    assert_hits(&callwire, &[("max_filters", 1)]);
}

// ---------------------------------------------------------------------------------------------
// Credentials reloaded on SIGHUP

const SECRET_A: &str = "a-s3cret-5d1f";
const SECRET_B: &str = "b-s3cret-c08e";
const SECRET_C: &str = "c-s3cret-77aa";
const ACCOUNT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// The text of an `--auth` file with the credentials among alice, bob and carol that `names`
/// names.
fn chosen_credentials(names: &[&str]) -> String {
    let all: [Credential; 3] = [
        ("alice", SECRET_A, "*"),
        ("bob", SECRET_B, ACCOUNT_B),
        ("carol", SECRET_C, "*"),
    ];
    let chosen: Vec<Credential> = all.into_iter().filter(|c| names.contains(&c.0)).collect();
    credentials_json(&chosen)
}

fn hangup(callwire: &Callwire) {
    let status = Command::new("kill")
        .args(["-HUP", &callwire.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Sends SIGHUP and waits for the log line that says how the reload went; returns it.
fn reload(callwire: &Callwire, expect: &str) -> String {
    let before = callwire.log_text().matches("SIGHUP:").count();
    hangup(callwire);
    wait_for("the SIGHUP log line", Duration::from_secs(5), || {
        callwire.log_text().matches("SIGHUP:").count() > before
    });
    let log = callwire.log_text();
    let line = log
        .lines()
        .filter(|line| line.contains("SIGHUP:"))
        .nth(before)
        .unwrap()
        .to_owned();
    assert!(line.contains(expect), "{line:?} should say {expect:?}");
    line
}

/// A Blackhole socket authenticated with `secret`.
fn blackhole_as(callwire: &Callwire, secret: &str) -> Socket {
    let mut socket = callwire.ws("/");
    let reply = request(
        &mut socket,
        json!({"action": "subscribe", "request_id": "auth", "auth_token": secret,
               "data": {"account_id": ACCOUNT_B, "binding": "call.*.*"}}),
    );
    assert_eq!(reply["status"], "success", "{reply}");
    socket
}

/// An iSymphony upgrade with HTTP Basic `name:secret`: the socket, or the refusal's status.
fn isymphony_as(callwire: &Callwire, name: &str, secret: &str) -> Result<Socket, u16> {
    let url = format!("ws://127.0.0.1:{}{ISYMPHONY_PATH}", callwire.port);
    let mut upgrade = url.into_client_request().unwrap();
    let basic = format!(
        "Basic {}",
        data_encoding::BASE64.encode(format!("{name}:{secret}").as_bytes())
    );
    upgrade
        .headers_mut()
        .insert("Authorization", HeaderValue::from_str(&basic).unwrap());
    match tungstenite::connect(upgrade) {
        Ok((socket, _)) => {
            set_read_timeout(&socket, Duration::from_secs(5));
            Ok(socket)
        }
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(err) => panic!("iSymphony upgrade: {err}"),
    }
}

/// Proves an iSymphony socket is open and answers.
fn assert_isymphony_alive(socket: &mut Socket) {
    send(socket, filter_message(&["x"]));
    assert_eq!(recv(socket), filter_success(&["x"]));
}

/// Proves an ActionCable socket is open and answers: a new subscription is confirmed.
fn assert_cable_alive(socket: &mut Socket, key: &str, tag: &str) {
    let identifier = cable_identifier(Some(key), tag);
    assert_eq!(
        cable_subscribe_reply(socket, &identifier),
        "confirm_subscription"
    );
}

#[test]
fn sighup_closes_the_sockets_of_a_removed_credential() {
    let file = TempFile::new(
        "callwire-limits-creds-",
        &chosen_credentials(&["alice", "bob"]),
    );
    let callwire = Callwire::quiet(&["--auth", file.path()]);

    let mut blackhole_a = blackhole_as(&callwire, SECRET_A);
    let mut blackhole_b = blackhole_as(&callwire, SECRET_B);
    let mut isymphony_a = isymphony_as(&callwire, "alice", SECRET_A).unwrap();
    let mut isymphony_b = isymphony_as(&callwire, "bob", SECRET_B).unwrap();
    let mut cable_a = cable(&callwire);
    assert_cable_alive(&mut cable_a, SECRET_A, "a");
    let mut cable_b = cable(&callwire);
    assert_cable_alive(&mut cable_b, SECRET_B, "b");
    // One of this socket's subscriptions uses B: the socket goes with it.
    let mut cable_mixed = cable(&callwire);
    assert_cable_alive(&mut cable_mixed, SECRET_A, "mixed-a");
    assert_cable_alive(&mut cable_mixed, SECRET_B, "mixed-b");

    std::fs::write(&file.0, chosen_credentials(&["alice"])).unwrap();
    reload(
        &callwire,
        "1 credential(s) in force; closed 4 socket(s) whose credential was removed",
    );

    // B's sockets: Blackhole and iSymphony are closed with 1008; ActionCable hears the
    // unauthorized disconnect first, then the same close.
    for socket in [&mut blackhole_b, &mut isymphony_b] {
        let (close, texts) = read_close(socket);
        assert!(texts.is_empty(), "{texts:?}");
        let close = close.expect("a close code");
        assert_eq!(close.code, CloseCode::Policy);
        assert_eq!(close.reason, Utf8Bytes::from_static("credential revoked"));
    }
    for socket in [&mut cable_b, &mut cable_mixed] {
        let (close, texts) = read_close(socket);
        let texts: Vec<&String> = texts.iter().filter(|t| !t.contains(r#""ping""#)).collect();
        assert_eq!(
            texts,
            [r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#],
        );
        assert_eq!(close_code(&close), Some(1008));
    }

    // A's sockets keep working.
    assert_alive(&mut blackhole_a, "a-after");
    assert_isymphony_alive(&mut isymphony_a);
    assert_cable_alive(&mut cable_a, SECRET_A, "a-after");
    wait_for("B's sockets to leave", Duration::from_secs(5), || {
        callwire.healthz().1["clients"] == json!(3)
    });

    // B is refused everywhere from now on.
    assert_eq!(isymphony_as(&callwire, "bob", SECRET_B).err(), Some(401));
    let mut socket = callwire.ws("/");
    let reply = request(
        &mut socket,
        json!({"action": "ping", "request_id": "b", "auth_token": SECRET_B}),
    );
    assert_eq!(
        reply["data"]["errors"],
        json!(["failed to authenticate token"])
    );
    let mut socket = cable(&callwire);
    assert_eq!(
        cable_subscribe_reply(&mut socket, &cable_identifier(Some(SECRET_B), "b-after")),
        "reject_subscription"
    );
    assert_hits(&callwire, &[]);
}

#[test]
fn sighup_with_a_broken_file_keeps_the_credentials_and_says_why() {
    let file = TempFile::new(
        "callwire-limits-creds-",
        &chosen_credentials(&["alice", "bob"]),
    );
    let callwire = Callwire::quiet(&["--auth", file.path()]);
    let mut blackhole_a = blackhole_as(&callwire, SECRET_A);
    let mut isymphony_b = isymphony_as(&callwire, "bob", SECRET_B).unwrap();
    let mut cable_b = cable(&callwire);
    assert_cable_alive(&mut cable_b, SECRET_B, "b");

    let without_bob = chosen_credentials(&["alice"]);
    let broken = [
        ("{\"credentials\": [", "is not a credentials file"),
        (
            r#"{"credentials":[{"name":"alice","secret":"","account":"*"}]}"#,
            "needs a non-empty name and secret",
        ),
        // Half of a good file, as an editor that writes in place might leave it.
        (
            &without_bob[..without_bob.len() / 2],
            "is not a credentials file",
        ),
    ];
    for (i, (text, why)) in broken.into_iter().enumerate() {
        std::fs::write(&file.0, text).unwrap();
        let line = reload(
            &callwire,
            &format!("kept the credentials in force: --auth: {}", file.path()),
        );
        assert!(line.contains(why), "{line:?} should say {why:?}");
        assert!(
            !callwire.log_text().contains(SECRET_A),
            "a secret was logged"
        );
        assert_alive(&mut blackhole_a, "a");
        assert_isymphony_alive(&mut isymphony_b);
        assert_cable_alive(&mut cable_b, SECRET_B, &format!("b-{i}"));
    }
    // A file that is gone altogether.
    std::fs::remove_file(&file.0).unwrap();
    reload(
        &callwire,
        "kept the credentials in force: --auth: cannot read",
    );

    // Both credentials still let new clients in.
    let mut isymphony_a = isymphony_as(&callwire, "alice", SECRET_A).unwrap();
    assert_isymphony_alive(&mut isymphony_a);
    let mut blackhole_b = blackhole_as(&callwire, SECRET_B);
    assert_alive(&mut blackhole_b, "b");
    assert_alive(&mut blackhole_a, "a-end");
    assert_eq!(callwire.healthz().1["clients"], json!(5));
}

#[test]
fn sighup_lets_a_new_credential_in_and_leaves_the_others_alone() {
    let file = TempFile::new("callwire-limits-creds-", &chosen_credentials(&["alice"]));
    let callwire = Callwire::quiet(&["--auth", file.path()]);
    let mut blackhole_a = blackhole_as(&callwire, SECRET_A);
    let mut isymphony_a = isymphony_as(&callwire, "alice", SECRET_A).unwrap();
    let mut cable_a = cable(&callwire);
    assert_cable_alive(&mut cable_a, SECRET_A, "a");

    // Not yet.
    assert_eq!(isymphony_as(&callwire, "carol", SECRET_C).err(), Some(401));

    std::fs::write(&file.0, chosen_credentials(&["alice", "carol"])).unwrap();
    reload(
        &callwire,
        "2 credential(s) in force; closed 0 socket(s) whose credential was removed",
    );

    // C works in every dialect.
    let mut blackhole_c = blackhole_as(&callwire, SECRET_C);
    assert_alive(&mut blackhole_c, "c");
    let mut isymphony_c = isymphony_as(&callwire, "carol", SECRET_C).unwrap();
    assert_isymphony_alive(&mut isymphony_c);
    assert_cable_alive(&mut cable_a, SECRET_C, "c");

    // A's sockets were never touched: the same sockets still answer, and nothing else came.
    assert_alive(&mut blackhole_a, "a");
    assert_isymphony_alive(&mut isymphony_a);
    assert_cable_alive(&mut cable_a, SECRET_A, "a-after");
    assert_eq!(callwire.healthz().1["clients"], json!(5));
}
