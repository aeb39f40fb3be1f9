//! The Blackhole dialect against its contract (blackhole.md), through the real binary: requests,
//! replies and every error string, authentication, account scoping, the event frame, and the
//! connection rules. Events are published with the real `mosquitto_pub` to the shared Mosquitto
//! on 127.0.0.1:1883, each test under a topic prefix of its own.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::error::{Error as WsError, ProtocolError, SubProtocolError};
use tungstenite::handshake::client::generate_request;
use tungstenite::handshake::derive_accept_key;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::Role;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use common::{
    Callwire, Socket, TempFile, drain, mosquitto_pub, read_until_clients, request,
    set_read_timeout, unique, wait_for,
};

/// The shared Mosquitto every MQTT test here publishes to.
const BROKER_PORT: u16 = 1883;

const ACCOUNT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const ACCOUNT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const SECRET_A: &str = "acc-a-s3cret-7f1e";
const SECRET_B: &str = "acc-b-s3cret-29d4";
const SECRET_STAR: &str = "manager-s3cret-88c0";

// ---------------------------------------------------------------------------------------------
// Helpers

/// Credentials for account A (`acc-a`), account B (`acc-b`) and every account (`manager`).
fn credentials() -> TempFile {
    let text = json!({"credentials": [
        {"name": "acc-a", "secret": SECRET_A, "account": ACCOUNT_A},
        {"name": "acc-b", "secret": SECRET_B, "account": ACCOUNT_B},
        {"name": "manager", "secret": SECRET_STAR, "account": "*"},
    ]});
    TempFile::new("callwire-blackhole-creds-", &text.to_string())
}

/// A callwire whose source delivers nothing: subscribed to a topic no one publishes to (a
/// bare callwire would subscribe to `#` on the shared broker and see every other test's events).
fn quiet_callwire(extra: &[&str]) -> Callwire {
    let topic = format!("{}/#", unique("bh-quiet"));
    let mut args = vec!["--mqtt", "mqtt://127.0.0.1:1883", "--mqtt-topic", &topic];
    args.extend_from_slice(extra);
    Callwire::start(&args)
}

/// A callwire fed from `<prefix>/#` on the shared broker, with `<prefix>/` stripped, whose MQTT
/// subscription is known to be live: `token` must name a `*` credential when `extra` has `--auth`.
fn mqtt_callwire(prefix: &str, extra: &[&str], token: Option<&str>) -> Callwire {
    let callwire = Callwire::start_mqtt(1883, prefix, extra);
    warm_up(&callwire, prefix, token);
    callwire
}

/// Waits until the MQTT source is connected, then publishes warm-up messages until one
/// arrives: the broker may take the subscription a moment after the connection.
fn warm_up(callwire: &Callwire, prefix: &str, token: Option<&str>) {
    wait_for(
        "the MQTT source to connect",
        Duration::from_secs(10),
        || callwire.healthz().1["source"]["connected"] == json!(true),
    );
    let mut socket = callwire.ws("/");
    let mut subscribe = json!({"action": "subscribe", "request_id": "warm",
                               "data": {"binding": "warmup.#"}});
    if let Some(token) = token {
        subscribe["auth_token"] = json!(token);
    }
    let reply = request(&mut socket, subscribe);
    assert_eq!(reply["status"], "success", "{reply}");
    for n in 0..100 {
        mosquitto_pub(BROKER_PORT, &format!("{prefix}/warmup/{n}"), "{}");
        if try_recv_text(&mut socket, Duration::from_millis(100)).is_some() {
            return;
        }
    }
    panic!("no warm-up message arrived: {}", callwire.log_text());
}

/// Publishes `payload` on `<prefix>/<rest>`.
fn publish(prefix: &str, rest: &str, payload: &str) {
    mosquitto_pub(BROKER_PORT, &format!("{prefix}/{rest}"), payload);
}

/// The next text frame as sent (not re-serialized); panics on a timeout or a closed socket.
fn recv_text(socket: &mut Socket) -> String {
    loop {
        match socket.read().expect("a frame before the timeout") {
            Message::Text(text) => return text.as_str().to_owned(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The next text frame if one comes within `timeout`.
fn try_recv_text(socket: &mut Socket, timeout: Duration) -> Option<String> {
    set_read_timeout(socket, timeout);
    let deadline = Instant::now() + timeout;
    let mut text = None;
    while Instant::now() < deadline {
        match socket.read() {
            Ok(Message::Text(frame)) => {
                text = Some(frame.as_str().to_owned());
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    set_read_timeout(socket, Duration::from_secs(5));
    text
}

/// Sends a JSON request and returns the raw reply text and the reply parsed.
fn request_raw(socket: &mut Socket, request: &Value) -> (String, Value) {
    socket.send(Message::text(request.to_string())).unwrap();
    let text = recv_text(socket);
    let value = serde_json::from_str(&text).expect("a JSON reply");
    (text, value)
}

fn success(request_id: impl Into<Value>, data: Value) -> Value {
    json!({"action": "reply", "request_id": request_id.into(), "status": "success", "data": data})
}

fn failure(request_id: impl Into<Value>, error: &str) -> Value {
    json!({"action": "reply", "request_id": request_id.into(), "status": "error",
           "data": {"errors": [error]}})
}

/// Proves the socket is open and still answers, in order: a ping gets its own pong.
fn assert_alive(socket: &mut Socket, request_id: &str) {
    let reply = request(socket, json!({"action": "ping", "request_id": request_id}));
    assert_eq!(reply, success(request_id, json!({"response": "pong"})));
}

/// Sends a request that must fail with `error` (request_id echoed), then proves the socket
/// stayed open and gave exactly one reply: the next ping's pong comes next.
fn assert_error(socket: &mut Socket, mut req: Value, error: &str) {
    let id = format!("err-{}", req["action"].as_str().unwrap_or("none"));
    req["request_id"] = json!(id);
    let reply = request(socket, req.clone());
    assert_eq!(reply, failure(id.as_str(), error), "request {req}");
    assert_alive(socket, &format!("{id}-then-ping"));
}

/// The 32-lowercase-hex request_id callwire makes when the client sends none.
fn is_generated_id(id: &Value) -> bool {
    id.as_str().is_some_and(|id| {
        id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn subscribe(socket: &mut Socket, request_id: &str, data: Value) -> Value {
    request(
        socket,
        json!({"action": "subscribe", "request_id": request_id, "data": data}),
    )
}

/// Authenticates and subscribes in one request, and checks it succeeded.
fn subscribe_as(socket: &mut Socket, token: &str, data: Value) {
    let reply = request(
        socket,
        json!({"action": "subscribe", "request_id": "sub", "auth_token": token, "data": data}),
    );
    assert_eq!(reply["status"], "success", "{reply}");
}

/// The next event frame: its raw text and parsed form.
fn next_event(socket: &mut Socket) -> (String, Value) {
    let text = recv_text(socket);
    let event: Value = serde_json::from_str(&text).expect("a JSON event frame");
    assert_eq!(event["action"], "event", "{text}");
    (text, event)
}

/// The routing keys of the next `n` events.
fn next_routing_keys(socket: &mut Socket, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            next_event(socket).1["routing_key"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

fn keys_of(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

// ---------------------------------------------------------------------------------------------
// Subscribe and unsubscribe

#[test]
fn subscribe_replies_with_the_binding_or_list_as_sent() {
    let callwire = quiet_callwire(&[]);
    let mut socket = callwire.ws("/");

    let reply = subscribe(
        &mut socket,
        "r1",
        json!({"binding": "call.CHANNEL_CREATE.*"}),
    );
    assert_eq!(
        reply,
        success(
            "r1",
            json!({"subscribed": "call.CHANNEL_CREATE.*",
                   "subscriptions": ["call.CHANNEL_CREATE.*"]})
        )
    );

    // A list comes back as the list sent (duplicates and all); `subscriptions` lists each
    // binding once, in subscription order.
    let sent = json!(["a.b", "call.CHANNEL_CREATE.*", "a.b", "c.#"]);
    let reply = subscribe(&mut socket, "r2", json!({"bindings": sent}));
    assert_eq!(
        reply,
        success(
            "r2",
            json!({"subscribed": sent,
                   "subscriptions": ["call.CHANNEL_CREATE.*", "a.b", "c.#"]})
        )
    );

    // A one-element list is still a list.
    let reply = subscribe(&mut socket, "r3", json!({"bindings": ["d.e"]}));
    assert_eq!(
        reply,
        success(
            "r3",
            json!({"subscribed": ["d.e"],
                   "subscriptions": ["call.CHANNEL_CREATE.*", "a.b", "c.#", "d.e"]})
        )
    );

    // `binding` wins over `bindings`: the string comes back, the list is not subscribed.
    let reply = subscribe(
        &mut socket,
        "r4",
        json!({"bindings": ["not.this", "nor.this"], "binding": "x.y"}),
    );
    assert_eq!(
        reply,
        success(
            "r4",
            json!({"subscribed": "x.y",
                   "subscriptions": ["call.CHANNEL_CREATE.*", "a.b", "c.#", "d.e", "x.y"]})
        )
    );

    // Subscribing again to a binding already held adds nothing.
    let reply = subscribe(&mut socket, "r5", json!({"binding": "a.b"}));
    assert_eq!(
        reply,
        success(
            "r5",
            json!({"subscribed": "a.b",
                   "subscriptions": ["call.CHANNEL_CREATE.*", "a.b", "c.#", "d.e", "x.y"]})
        )
    );
}

#[test]
fn unsubscribe_replies_with_the_binding_or_list_as_sent() {
    let callwire = quiet_callwire(&[]);
    let mut socket = callwire.ws("/blackhole");
    let reply = subscribe(
        &mut socket,
        "s",
        json!({"bindings": ["a.*", "b.#", "c.c", "d.d"]}),
    );
    assert_eq!(
        reply["data"]["subscriptions"],
        json!(["a.*", "b.#", "c.c", "d.d"])
    );

    let unsubscribe = |socket: &mut Socket, id: &str, data: Value| {
        request(
            socket,
            json!({"action": "unsubscribe", "request_id": id, "data": data}),
        )
    };

    let reply = unsubscribe(&mut socket, "u1", json!({"binding": "b.#"}));
    assert_eq!(
        reply,
        success(
            "u1",
            json!({"unsubscribed": "b.#", "subscriptions": ["a.*", "c.c", "d.d"]})
        )
    );

    // A list, one of which was never subscribed: the list comes back as sent.
    let reply = unsubscribe(
        &mut socket,
        "u2",
        json!({"bindings": ["a.*", "never.subscribed"]}),
    );
    assert_eq!(
        reply,
        success(
            "u2",
            json!({"unsubscribed": ["a.*", "never.subscribed"],
                   "subscriptions": ["c.c", "d.d"]})
        )
    );

    // A binding never subscribed: a success that changes nothing.
    let reply = unsubscribe(&mut socket, "u3", json!({"binding": "nope.#"}));
    assert_eq!(
        reply,
        success(
            "u3",
            json!({"unsubscribed": "nope.#", "subscriptions": ["c.c", "d.d"]})
        )
    );

    // `binding` wins over `bindings`.
    let reply = unsubscribe(
        &mut socket,
        "u4",
        json!({"binding": "c.c", "bindings": ["d.d"]}),
    );
    assert_eq!(
        reply,
        success(
            "u4",
            json!({"unsubscribed": "c.c", "subscriptions": ["d.d"]})
        )
    );

    // A binding subscribed again goes to the end: subscription order.
    let reply = subscribe(&mut socket, "s2", json!({"binding": "a.*"}));
    assert_eq!(reply["data"]["subscriptions"], json!(["d.d", "a.*"]));

    let reply = unsubscribe(&mut socket, "u5", json!({"bindings": ["d.d", "a.*"]}));
    assert_eq!(
        reply,
        success(
            "u5",
            json!({"unsubscribed": ["d.d", "a.*"], "subscriptions": []})
        )
    );
}

#[test]
fn unsubscribing_on_one_socket_never_affects_another() {
    let prefix = unique("bh-unsub");
    let callwire = mqtt_callwire(&prefix, &[], None);
    let mut first = callwire.ws("/");
    let mut second = callwire.ws("/");
    for socket in [&mut first, &mut second] {
        let reply = subscribe(socket, "s", json!({"bindings": ["call.#", "marker.#"]}));
        assert_eq!(reply["status"], "success", "{reply}");
    }
    let reply = request(
        &mut first,
        json!({"action": "unsubscribe", "request_id": "u", "data": {"binding": "call.#"}}),
    );
    assert_eq!(
        reply,
        success(
            "u",
            json!({"unsubscribed": "call.#", "subscriptions": ["marker.#"]})
        )
    );
    // Unsubscribing a binding never subscribed changes nothing on the second socket either.
    let reply = request(
        &mut second,
        json!({"action": "unsubscribe", "request_id": "u", "data": {"binding": "never.#"}}),
    );
    assert_eq!(
        reply["data"]["subscriptions"],
        json!(["call.#", "marker.#"])
    );

    publish(&prefix, "call/CHANNEL_CREATE/u1", r#"{"Call-ID":"u1"}"#);
    publish(&prefix, "marker/m/1", "{}");

    // The second socket still has both bindings; the first sees only the marker, and since
    // events arrive in order, seeing the marker first proves the call event never came.
    assert_eq!(
        next_routing_keys(&mut second, 2),
        ["call.CHANNEL_CREATE.u1", "marker.m.1"]
    );
    assert_eq!(next_routing_keys(&mut first, 1), ["marker.m.1"]);
    assert!(drain(&mut first, Duration::from_millis(200)).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Ping, noop, connection basics

#[test]
fn ping_answers_pong_and_a_missing_action_is_an_empty_success() {
    let callwire = quiet_callwire(&[]);
    for path in ["/", "/blackhole"] {
        let mut socket = callwire.ws(path);
        let reply = request(&mut socket, json!({"action": "ping", "request_id": "p1"}));
        assert_eq!(reply, success("p1", json!({"response": "pong"})));

        let reply = request(&mut socket, json!({"request_id": "n1"}));
        assert_eq!(reply, success("n1", json!({})));

        // A noop carrying a binding subscribes nothing.
        let reply = request(
            &mut socket,
            json!({"request_id": "n2", "data": {"binding": "call.#"}}),
        );
        assert_eq!(reply, success("n2", json!({})));
        let reply = subscribe(&mut socket, "s", json!({"binding": "c.d"}));
        assert_eq!(reply["data"]["subscriptions"], json!(["c.d"]));
    }
}

#[test]
fn nothing_is_sent_on_connect_and_websocket_pings_get_pongs() {
    let callwire = quiet_callwire(&[]);
    let mut socket = callwire.ws("/");
    set_read_timeout(&socket, Duration::from_millis(300));
    match socket.read() {
        Err(WsError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("expected silence after connecting, got {other:?}"),
    }
    set_read_timeout(&socket, Duration::from_secs(5));

    socket
        .send(Message::Ping(tungstenite::Bytes::from_static(
            b"are-you-there",
        )))
        .unwrap();
    loop {
        match socket.read().expect("a pong before the timeout") {
            Message::Pong(payload) => {
                assert_eq!(&payload[..], b"are-you-there");
                break;
            }
            Message::Ping(_) => continue,
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    assert_alive(&mut socket, "after-pong");
}

#[test]
fn idle_sockets_are_pinged_and_silent_ones_closed() {
    let callwire = quiet_callwire(&["--ping-interval", "1"]);
    let mut responsive = callwire.ws("/");
    let mut silent = callwire.ws("/");
    assert_alive(&mut responsive, "r0");
    assert_alive(&mut silent, "s0");
    assert_eq!(callwire.healthz().1["clients"], json!(2));

    // Keep reading the responsive socket (tungstenite answers pings while reading); leave the
    // silent one alone until callwire gives up on it.
    let pinged = read_until_clients(&callwire, &mut responsive, 1);
    assert!(pinged, "the responsive socket was never pinged");

    // The silent socket was pinged, then closed as gone.
    let mut saw_ping = false;
    let mut close = None;
    while let Ok(message) = silent.read() {
        match message {
            Message::Ping(_) => saw_ping = true,
            Message::Close(frame) => {
                close = frame;
                break;
            }
            other => panic!("unexpected frame on the silent socket: {other:?}"),
        }
    }
    assert!(saw_ping, "the silent socket was closed without a ping");
    let close = close.expect("a close frame");
    assert_eq!(close.code, CloseCode::Away);

    assert_alive(&mut responsive, "r1");
    assert_eq!(callwire.healthz().1["clients"], json!(1));
}

#[test]
fn a_requested_subprotocol_is_accepted_without_one() {
    let callwire = quiet_callwire(&[]);
    let url = format!("ws://127.0.0.1:{}/", callwire.port);
    let with_protocol = || {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("foo"));
        request
    };

    // tungstenite's strict client refuses an answer without the subprotocol it asked for; that
    // error (not an HTTP status) proves callwire said 101 with a valid accept key and no
    // Sec-WebSocket-Protocol header.
    match tungstenite::connect(with_protocol()) {
        Err(WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(
            SubProtocolError::NoSubProtocol,
        ))) => {}
        Err(other) => panic!("expected a 101 without a subprotocol, got {other:?}"),
        Ok((_, response)) => panic!("tungstenite accepted {response:?}"),
    }

    // The same request by hand: the answer is a 101 without the header, and the socket works.
    let (bytes, key) = generate_request(with_protocol()).unwrap();
    assert!(
        String::from_utf8_lossy(&bytes).contains("Sec-WebSocket-Protocol: foo\r\n"),
        "the request must offer the subprotocol"
    );
    let mut stream = TcpStream::connect(("127.0.0.1", callwire.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(&bytes).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("the upgrade response");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    assert_eq!(
        header("Sec-WebSocket-Accept"),
        Some(derive_accept_key(key.as_bytes()))
    );
    assert_eq!(header("Sec-WebSocket-Protocol"), None, "{head}");

    let mut socket: Socket =
        WebSocket::from_raw_socket(MaybeTlsStream::Plain(stream), Role::Client, None);
    assert_alive(&mut socket, "with-subprotocol");
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn every_error_keeps_the_socket_open() {
    // Dozens of requests back to back: above the default request rate, which tests/limits.rs
    // covers on its own.
    let callwire = quiet_callwire(&["--request-rate", "1000", "--request-burst", "1000"]);
    let mut socket = callwire.ws("/");

    let missing = "missing required keys : binding";
    for action in ["subscribe", "unsubscribe"] {
        assert_error(&mut socket, json!({"action": action}), missing);
        assert_error(&mut socket, json!({"action": action, "data": {}}), missing);
        assert_error(
            &mut socket,
            json!({"action": action, "data": {"account_id": "*"}}),
            missing,
        );
    }

    let too_deep = vec!["a"; 33].join(".");
    let too_long = "b".repeat(256);
    for bad in ["", too_deep.as_str(), too_long.as_str()] {
        for action in ["subscribe", "unsubscribe"] {
            assert_error(
                &mut socket,
                json!({"action": action, "data": {"binding": bad}}),
                &format!("invalid binding {bad}"),
            );
            assert_error(
                &mut socket,
                json!({"action": action, "data": {"bindings": ["ok.one", bad]}}),
                &format!("invalid binding {bad}"),
            );
        }
    }
    assert_error(
        &mut socket,
        json!({"action": "subscribe", "data": {"binding": 42}}),
        "invalid binding 42",
    );
    assert_error(
        &mut socket,
        json!({"action": "subscribe", "data": {"bindings": ["ok.two", 7]}}),
        "invalid binding 7",
    );
    let reply = request(
        &mut socket,
        json!({"action": "subscribe", "request_id": "s", "data": {"binding": {"a": 1}}}),
    );
    let error = reply["data"]["errors"][0].as_str().unwrap_or_default();
    assert!(
        reply["status"] == "error" && error.starts_with("invalid binding "),
        "{reply}"
    );
    assert_alive(&mut socket, "after-object-binding");

    // No failed request subscribed anything, not even the valid part of a list.
    let reply = subscribe(&mut socket, "check", json!({"binding": "probe.x"}));
    assert_eq!(reply["data"]["subscriptions"], json!(["probe.x"]));

    // The limits themselves are fine: 32 segments, 255 bytes.
    let deepest = vec!["a"; 32].join(".");
    let longest = "b".repeat(255);
    let reply = subscribe(
        &mut socket,
        "edges",
        json!({"bindings": [deepest, longest]}),
    );
    assert_eq!(
        reply["data"]["subscriptions"],
        json!(["probe.x", deepest, longest])
    );

    assert_error(
        &mut socket,
        json!({"action": "subscribe_all", "data": {"binding": "a.b"}}),
        "unknown action subscribe_all",
    );
    assert_error(
        &mut socket,
        json!({"action": "PING"}),
        "unknown action PING",
    );
    let reply = request(&mut socket, json!({"action": 5, "request_id": "n"}));
    let error = reply["data"]["errors"][0].as_str().unwrap_or_default();
    assert!(
        reply["status"] == "error" && error.starts_with("unknown action"),
        "{reply}"
    );
    assert_alive(&mut socket, "after-numeric-action");
}

#[test]
fn too_many_bindings_is_refused_at_the_limit() {
    let callwire = quiet_callwire(&["--max-bindings", "3"]);
    let limit = "too many bindings (limit 3)";

    // A list over the limit at once subscribes nothing.
    let mut socket = callwire.ws("/");
    assert_error(
        &mut socket,
        json!({"action": "subscribe", "data": {"bindings": ["a.1", "a.2", "a.3", "a.4"]}}),
        limit,
    );
    let reply = subscribe(&mut socket, "s1", json!({"bindings": ["a.1", "a.2"]}));
    assert_eq!(reply["data"]["subscriptions"], json!(["a.1", "a.2"]));
    // Two more would be four: refused, and neither is added.
    assert_error(
        &mut socket,
        json!({"action": "subscribe", "data": {"bindings": ["a.3", "a.4"]}}),
        limit,
    );
    let reply = subscribe(&mut socket, "s2", json!({"binding": "a.3"}));
    assert_eq!(reply["data"]["subscriptions"], json!(["a.1", "a.2", "a.3"]));
    assert_error(
        &mut socket,
        json!({"action": "subscribe", "data": {"binding": "a.4"}}),
        limit,
    );
    // At the limit, a binding already held is no new one.
    let reply = subscribe(&mut socket, "s3", json!({"bindings": ["a.1", "a.3"]}));
    assert_eq!(
        reply,
        success(
            "s3",
            json!({"subscribed": ["a.1", "a.3"], "subscriptions": ["a.1", "a.2", "a.3"]})
        )
    );
    // Room made, room taken.
    let reply = request(
        &mut socket,
        json!({"action": "unsubscribe", "request_id": "u", "data": {"binding": "a.2"}}),
    );
    assert_eq!(reply["data"]["subscriptions"], json!(["a.1", "a.3"]));
    let reply = subscribe(&mut socket, "s4", json!({"binding": "a.4"}));
    assert_eq!(reply["data"]["subscriptions"], json!(["a.1", "a.3", "a.4"]));

    // The limit is per socket.
    let mut other = callwire.ws("/");
    let reply = subscribe(&mut other, "o", json!({"bindings": ["b.1", "b.2", "b.3"]}));
    assert_eq!(reply["data"]["subscriptions"], json!(["b.1", "b.2", "b.3"]));
}

#[test]
fn frames_that_are_not_json_objects_are_invalid_json() {
    let callwire = quiet_callwire(&[]);
    let mut socket = callwire.ws("/");
    let mut ids = Vec::new();
    let mut check = |socket: &mut Socket, message: Message| {
        let shown = format!("{message:?}");
        socket.send(message).unwrap();
        let reply: Value = serde_json::from_str(&recv_text(socket)).unwrap();
        assert_eq!(keys_of(&reply), ["action", "data", "request_id", "status"]);
        assert_eq!(
            (&reply["action"], &reply["status"], &reply["data"]),
            (
                &json!("reply"),
                &json!("error"),
                &json!({"errors": ["invalid JSON"]})
            ),
            "{shown}"
        );
        assert!(is_generated_id(&reply["request_id"]), "{shown}: {reply}");
        ids.push(reply["request_id"].clone());
        assert_alive(socket, "after-invalid");
    };
    check(&mut socket, Message::text("not json"));
    check(
        &mut socket,
        Message::text(r#"{"action":"ping","request_id":"x""#),
    );
    check(&mut socket, Message::text(r#"[{"action":"ping"}]"#));
    check(&mut socket, Message::text("[]"));
    check(&mut socket, Message::text(r#""ping""#));
    check(&mut socket, Message::text("42"));
    check(&mut socket, Message::text("null"));
    check(
        &mut socket,
        Message::binary(br#"{"action":"ping","request_id":"bin"}"#.to_vec()),
    );
    check(&mut socket, Message::binary(vec![0xff, 0x00, 0x13]));
    let mut distinct = ids.clone();
    distinct.sort_by_key(Value::to_string);
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "generated ids repeat: {ids:?}");
}

// ---------------------------------------------------------------------------------------------
// request_id

#[test]
fn request_ids_are_echoed_as_sent_or_generated() {
    let callwire = quiet_callwire(&[]);
    let mut socket = callwire.ws("/");
    let echoed = [
        (json!("abc"), r#""request_id":"abc""#),
        (json!(""), r#""request_id":"""#),
        (
            json!("with \"quotes\" é"),
            r#""request_id":"with \"quotes\" é""#,
        ),
        (json!(17), r#""request_id":17"#),
        (json!(-3), r#""request_id":-3"#),
        (json!(1.5), r#""request_id":1.5"#),
        (
            json!(12345678901234567890u64),
            r#""request_id":12345678901234567890"#,
        ),
    ];
    for (id, raw) in echoed {
        let (text, reply) = request_raw(&mut socket, &json!({"action": "ping", "request_id": id}));
        assert_eq!(reply, success(id.clone(), json!({"response": "pong"})));
        assert!(text.contains(raw), "{id} not echoed as sent: {text}");
        // Errors echo it too.
        let (text, reply) = request_raw(&mut socket, &json!({"action": "nope", "request_id": id}));
        assert_eq!(reply, failure(id.clone(), "unknown action nope"));
        assert!(text.contains(raw), "{id} not echoed as sent: {text}");
    }

    let mut generated = Vec::new();
    for request in [
        json!({"action": "ping"}),
        json!({"action": "ping"}),
        json!({}),
        json!({"action": "nope"}),
        json!({"action": "subscribe", "data": {"binding": "a.b"}}),
    ] {
        let reply = common::request(&mut socket, request.clone());
        assert!(
            is_generated_id(&reply["request_id"]),
            "{request} -> {reply}"
        );
        generated.push(reply["request_id"].as_str().unwrap().to_owned());
    }
    generated.sort();
    generated.dedup();
    assert_eq!(generated.len(), 5, "generated ids repeat: {generated:?}");
}

// ---------------------------------------------------------------------------------------------
// Authentication and accounts

#[test]
fn auth_is_checked_until_the_first_valid_token_only() {
    let creds = credentials();
    let callwire = quiet_callwire(&["--auth", creds.path()]);
    let mut socket = callwire.ws("/");
    let required = "authentication token required";

    let reply = request(
        &mut socket,
        json!({"action": "subscribe", "request_id": "sub", "data": {"binding": "call.#"}}),
    );
    assert_eq!(reply, failure("sub", required));
    // Not even a noop before authenticating.
    let reply = request(&mut socket, json!({"request_id": "noop"}));
    assert_eq!(reply, failure("noop", required));
    let reply = request(&mut socket, json!({"action": "ping", "request_id": "p"}));
    assert_eq!(reply, failure("p", required));

    // A bad token is refused and never echoed.
    let bad = "not-the-s3cret-93b7";
    let (text, reply) = request_raw(
        &mut socket,
        &json!({"action": "ping", "request_id": "bad", "auth_token": bad}),
    );
    assert_eq!(reply, failure("bad", "failed to authenticate token"));
    assert!(!text.contains(bad), "the token was echoed: {text}");
    // A secret's prefix is no secret.
    let (text, reply) = request_raw(
        &mut socket,
        &json!({"action": "ping", "request_id": "prefix", "auth_token": &SECRET_A[..10]}),
    );
    assert_eq!(reply, failure("prefix", "failed to authenticate token"));
    assert!(
        !text.contains(&SECRET_A[..10]),
        "the token was echoed: {text}"
    );
    // Still unauthenticated.
    let reply = request(&mut socket, json!({"action": "ping", "request_id": "p2"}));
    assert_eq!(reply, failure("p2", required));

    // One valid token...
    let (text, reply) = request_raw(
        &mut socket,
        &json!({"action": "ping", "request_id": "good", "auth_token": SECRET_A}),
    );
    assert_eq!(reply, success("good", json!({"response": "pong"})));
    assert!(!text.contains(SECRET_A), "the secret was echoed: {text}");
    // ...and later requests need none.
    assert_alive(&mut socket, "later");
    let reply = request(&mut socket, json!({"request_id": "noop2"}));
    assert_eq!(reply, success("noop2", json!({})));
    let reply = subscribe(&mut socket, "s", json!({"binding": "call.#"}));
    assert_eq!(
        reply,
        success(
            "s",
            json!({"subscribed": "call.#", "subscriptions": ["call.#"]})
        )
    );
    // The token is not checked again, and another credential's token does not switch the
    // socket's credential: it still acts for account A.
    let reply = request(
        &mut socket,
        json!({"action": "ping", "request_id": "bad-later", "auth_token": bad}),
    );
    assert_eq!(reply, success("bad-later", json!({"response": "pong"})));
    let reply = request(
        &mut socket,
        json!({"action": "subscribe", "request_id": "switch", "auth_token": SECRET_STAR,
               "data": {"binding": "x.#", "account_id": ACCOUNT_B}}),
    );
    assert_eq!(reply, failure("switch", "unauthorized account id"));

    // Authentication is per socket.
    let mut fresh = callwire.ws("/");
    let reply = request(&mut fresh, json!({"action": "ping", "request_id": "f"}));
    assert_eq!(reply, failure("f", required));
    let reply = request(
        &mut fresh,
        json!({"action": "subscribe", "request_id": "f2", "auth_token": SECRET_STAR,
               "data": {"binding": "call.#", "account_id": "*"}}),
    );
    assert_eq!(reply["status"], "success", "{reply}");

    // Neither secrets nor wrong tokens reach the log.
    let log = callwire.log_text();
    for secret in [SECRET_A, SECRET_B, SECRET_STAR, bad] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

#[test]
fn account_ids_are_limited_to_the_credential() {
    let creds = credentials();
    let callwire = quiet_callwire(&["--auth", creds.path()]);

    let mut desk = callwire.ws("/");
    let reply = request(
        &mut desk,
        json!({"action": "subscribe", "request_id": "own", "auth_token": SECRET_A,
               "data": {"binding": "call.#", "account_id": ACCOUNT_A}}),
    );
    assert_eq!(
        reply,
        success(
            "own",
            json!({"subscribed": "call.#", "subscriptions": ["call.#"]})
        )
    );
    for action in ["subscribe", "unsubscribe"] {
        assert_error(
            &mut desk,
            json!({"action": action, "data": {"binding": "x.#", "account_id": ACCOUNT_B}}),
            "unauthorized account id",
        );
        assert_error(
            &mut desk,
            json!({"action": action, "data": {"binding": "x.#", "account_id": "*"}}),
            "unauthorized wildcard account id",
        );
    }
    // Nothing was subscribed by the refused requests.
    let reply = subscribe(&mut desk, "check", json!({"binding": "call.#"}));
    assert_eq!(reply["data"]["subscriptions"], json!(["call.#"]));

    let mut manager = callwire.ws("/");
    let reply = request(
        &mut manager,
        json!({"action": "subscribe", "request_id": "star", "auth_token": SECRET_STAR,
               "data": {"binding": "a.#", "account_id": "*"}}),
    );
    assert_eq!(reply["status"], "success", "{reply}");
    for (id, account) in [("to-a", ACCOUNT_A), ("to-b", ACCOUNT_B)] {
        let reply = subscribe(
            &mut manager,
            id,
            json!({"binding": format!("{id}.#"), "account_id": account}),
        );
        assert_eq!(reply["status"], "success", "{reply}");
    }
    // The same binding for two accounts is still listed once.
    let reply = subscribe(
        &mut manager,
        "again",
        json!({"binding": "a.#", "account_id": ACCOUNT_A}),
    );
    assert_eq!(
        reply,
        success(
            "again",
            json!({"subscribed": "a.#", "subscriptions": ["a.#", "to-a.#", "to-b.#"]})
        )
    );
}

#[test]
fn name_and_metadata_are_accepted_at_the_top_level_or_in_data() {
    let creds = credentials();
    let callwire = quiet_callwire(&["--auth", creds.path()]);
    let mut socket = callwire.ws("/");
    let name = "My new socket 4e1d";
    let metadata = json!({"test": "metadata-value-77c2"});
    let requests = [
        (
            json!({"action": "subscribe", "request_id": "top", "auth_token": SECRET_A,
                   "name": name, "metadata": metadata,
                   "data": {"binding": "call.CHANNEL_CREATE.*"}}),
            success(
                "top",
                json!({"subscribed": "call.CHANNEL_CREATE.*",
                       "subscriptions": ["call.CHANNEL_CREATE.*"]}),
            ),
        ),
        (
            json!({"action": "subscribe", "request_id": "inside",
                   "data": {"binding": "call.#", "name": name, "metadata": metadata}}),
            success(
                "inside",
                json!({"subscribed": "call.#",
                       "subscriptions": ["call.CHANNEL_CREATE.*", "call.#"]}),
            ),
        ),
        (
            json!({"action": "ping", "request_id": "ping", "name": name, "metadata": metadata}),
            success("ping", json!({"response": "pong"})),
        ),
        (
            json!({"request_id": "noop", "data": {"name": name, "metadata": metadata}}),
            success("noop", json!({})),
        ),
        (
            json!({"action": "unsubscribe", "request_id": "unsub", "name": name,
                   "data": {"binding": "call.#", "metadata": metadata}}),
            success(
                "unsub",
                json!({"unsubscribed": "call.#", "subscriptions": ["call.CHANNEL_CREATE.*"]}),
            ),
        ),
    ];
    for (req, expected) in requests {
        let (text, reply) = request_raw(&mut socket, &req);
        assert_eq!(reply, expected, "request {req}");
        assert!(
            !text.contains("4e1d") && !text.contains("77c2"),
            "name or metadata echoed: {text}"
        );
    }
}

#[test]
fn events_reach_only_their_account() {
    let prefix = unique("bh-acct");
    let creds = credentials();
    let callwire = mqtt_callwire(&prefix, &["--auth", creds.path()], Some(SECRET_STAR));
    let binding = json!({"binding": "call.CHANNEL_CREATE.*"});
    let mut desk_a = callwire.ws("/");
    subscribe_as(&mut desk_a, SECRET_A, binding.clone());
    let mut desk_b = callwire.ws("/");
    subscribe_as(&mut desk_b, SECRET_B, binding.clone());
    let mut manager = callwire.ws("/");
    subscribe_as(&mut manager, SECRET_STAR, binding.clone());
    let mut manager_for_a = callwire.ws("/");
    subscribe_as(
        &mut manager_for_a,
        SECRET_STAR,
        json!({"binding": "call.CHANNEL_CREATE.*", "account_id": ACCOUNT_A}),
    );

    let event = |id: &str, account: Option<&str>| {
        let mut payload = json!({"Event-Name": "CHANNEL_CREATE", "Call-ID": id});
        if let Some(account) = account {
            payload["Account-ID"] = json!(account);
        }
        publish(
            &prefix,
            &format!("call/CHANNEL_CREATE/{id}"),
            &payload.to_string(),
        );
    };
    // Each socket's last expected event comes after every event it must not see, so reading
    // its events in order proves nothing else came in between.
    event("a1", Some(ACCOUNT_A));
    event("b1", Some(ACCOUNT_B));
    event("n1", None);
    event("a2", Some(ACCOUNT_A));
    event("b2", Some(ACCOUNT_B));

    let key = |id: &str| format!("call.CHANNEL_CREATE.{id}");
    let check = |socket: &mut Socket, ids: &[&str], scope: &str| {
        let mut keys = Vec::new();
        for _ in ids {
            let (_, frame) = next_event(socket);
            assert_eq!(
                frame["subscription_key"],
                json!(format!("call.{scope}.CHANNEL_CREATE.*")),
                "{frame}"
            );
            assert_eq!(frame["subscribed_key"], json!("call.CHANNEL_CREATE.*"));
            keys.push(frame["routing_key"].as_str().unwrap().to_owned());
        }
        let expected: Vec<String> = ids.iter().map(|id| key(id)).collect();
        assert_eq!(keys, expected, "scope {scope}");
    };
    check(&mut manager, &["a1", "b1", "n1", "a2", "b2"], "*");
    check(&mut desk_a, &["a1", "a2"], ACCOUNT_A);
    check(&mut desk_b, &["b1", "b2"], ACCOUNT_B);
    check(&mut manager_for_a, &["a1", "a2"], ACCOUNT_A);
    for socket in [&mut desk_a, &mut desk_b, &mut manager, &mut manager_for_a] {
        let extra = drain(socket, Duration::from_millis(200));
        assert!(extra.is_empty(), "unexpected frames: {extra:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Event frames

#[test]
fn event_frames_carry_the_payload_verbatim() {
    let prefix = unique("bh-frame");
    let callwire = mqtt_callwire(&prefix, &[], None);
    let mut socket = callwire.ws("/");
    let reply = subscribe(&mut socket, "s", json!({"binding": "call.#"}));
    assert_eq!(reply["status"], "success", "{reply}");

    // (topic after the prefix, payload, expected name, JSON or not)
    let spaced = format!(
        r#"{{"Event-Name" :  "CHANNEL_CREATE", "Account-ID":"{ACCOUNT_A}",   "Call-ID" : "f1",
  "list": [1, 2 ,3],"nested":{{ "é" : "☎ \"quoted\" \\ \u00e9" }} ,"n":1.50}}"#
    );
    let cases: Vec<(&str, String, &str, bool)> = vec![
        ("call/CHANNEL_CREATE/f1", spaced, "CHANNEL_CREATE", true),
        (
            "call/CHANNEL_ANSWER/f2",
            r#"{"Call-ID":"f2"}"#.to_owned(),
            "CHANNEL_ANSWER",
            true,
        ),
        (
            "call/X/f3",
            r#"{"event_name":"E3","type":"ignored"}"#.to_owned(),
            "E3",
            true,
        ),
        (
            "call/X/f4",
            r#"{"type":"StasisStart"}"#.to_owned(),
            "StasisStart",
            true,
        ),
        (
            "call/X/f5",
            r#"{"event":"ringing"}"#.to_owned(),
            "ringing",
            true,
        ),
        (
            "call/CHANNEL_HOLD/f6",
            "[1, 2]".to_owned(),
            "CHANNEL_HOLD",
            true,
        ),
        (
            "call/CHANNEL_DESTROY/f7",
            r#"not json: he said "hi" \ bye"#.to_owned(),
            "CHANNEL_DESTROY",
            false,
        ),
        (
            "call/CHANNEL_BRIDGE/f8",
            r#"{"Event-Name":"CHANNEL_BRIDGE""#.to_owned(),
            "CHANNEL_BRIDGE",
            false,
        ),
    ];
    for (topic, payload, _, _) in &cases {
        publish(&prefix, topic, payload);
    }
    for (topic, payload, name, is_json) in &cases {
        let (text, frame) = next_event(&mut socket);
        assert_eq!(
            keys_of(&frame),
            [
                "action",
                "data",
                "name",
                "routing_key",
                "subscribed_key",
                "subscription_key"
            ],
            "{text}"
        );
        assert_eq!(
            frame["routing_key"],
            json!(topic.replace('/', ".")),
            "{text}"
        );
        assert_eq!(frame["subscribed_key"], json!("call.#"));
        assert_eq!(frame["subscription_key"], json!("call.*.#"));
        assert_eq!(frame["name"], json!(name), "{text}");
        if *is_json {
            assert!(
                text.contains(&format!(r#""data":{payload}"#)),
                "payload not carried byte for byte:\n{payload}\n{text}"
            );
            let parsed: Value = serde_json::from_str(payload).unwrap();
            assert_eq!(frame["data"], parsed);
        } else {
            assert_eq!(frame["data"], json!(payload), "{text}");
        }
    }
}

#[test]
fn an_event_matching_two_bindings_arrives_once_under_the_first() {
    let prefix = unique("bh-twice");
    let callwire = mqtt_callwire(&prefix, &[], None);
    let mut specific_first = callwire.ws("/");
    let reply = subscribe(
        &mut specific_first,
        "s",
        json!({"bindings": ["call.CHANNEL_CREATE.*", "call.#"]}),
    );
    assert_eq!(reply["status"], "success", "{reply}");
    let mut general_first = callwire.ws("/");
    let reply = subscribe(
        &mut general_first,
        "s",
        json!({"bindings": ["call.#", "call.CHANNEL_CREATE.*"]}),
    );
    assert_eq!(reply["status"], "success", "{reply}");

    publish(&prefix, "call/CHANNEL_CREATE/t1", r#"{"Call-ID":"t1"}"#);
    // Matches `call.#` only: arriving next proves the first event was not sent twice.
    publish(&prefix, "call/CHANNEL_ANSWER/t1", r#"{"Call-ID":"t1"}"#);

    let frames = |socket: &mut Socket| {
        (0..2)
            .map(|_| {
                let (_, frame) = next_event(socket);
                (
                    frame["routing_key"].as_str().unwrap().to_owned(),
                    frame["subscribed_key"].as_str().unwrap().to_owned(),
                )
            })
            .collect::<Vec<_>>()
    };
    let owned = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        frames(&mut specific_first),
        owned(&[
            ("call.CHANNEL_CREATE.t1", "call.CHANNEL_CREATE.*"),
            ("call.CHANNEL_ANSWER.t1", "call.#"),
        ])
    );
    assert_eq!(
        frames(&mut general_first),
        owned(&[
            ("call.CHANNEL_CREATE.t1", "call.#"),
            ("call.CHANNEL_ANSWER.t1", "call.#"),
        ])
    );
    for socket in [&mut specific_first, &mut general_first] {
        let extra = drain(socket, Duration::from_millis(200));
        assert!(extra.is_empty(), "unexpected frames: {extra:?}");
    }
}
