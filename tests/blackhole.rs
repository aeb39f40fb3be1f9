//! The Blackhole dialect against its contract (blackhole.md), through the real binary: requests,
//! replies and every error string, authentication, account scoping, the event frame, and the
//! connection rules. Events are published with the real `mosquitto_pub` to the shared Mosquitto
//! on 127.0.0.1:1883, each test under a topic prefix of its own.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

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

use common::script::Script;
use common::{
    Callwire, Credential, Socket, credentials, drain, mosquitto_pub, mqtt_callwire,
    read_until_clients, request, set_read_timeout, unique,
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

const CREDENTIALS: [Credential; 3] = [
    ("acc-a", SECRET_A, ACCOUNT_A),
    ("acc-b", SECRET_B, ACCOUNT_B),
    ("manager", SECRET_STAR, "*"),
];

/// A callwire whose source delivers nothing: subscribed to a topic no one publishes to (a
/// bare callwire would subscribe to `#` on the shared broker and see every other test's events).
fn quiet_callwire(extra: &[&str]) -> Callwire {
    let topic = format!("{}/#", unique("bh-quiet"));
    let mut args = vec!["--mqtt", "mqtt://127.0.0.1:1883", "--mqtt-topic", &topic];
    args.extend_from_slice(extra);
    Callwire::start(&args)
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

/// Subscribes or unsubscribes on `socket` and returns the reply.
fn act(socket: &mut Socket, action: &str, id: &str, data: Value) -> Value {
    request(
        socket,
        json!({"action": action, "request_id": id, "data": data}),
    )
}

#[test]
fn replies_have_the_shapes_of_kazoos_own_assertions() {
    // Kazoo's pqc_blackhole.erl: `[Binding] = subscribed` after one subscribe;
    // `[Binding] = unsubscribed` and `[] = subscribed` after unsubscribing it. The same with
    // the one-string `binding` form and the `bindings` list form.
    let callwire = quiet_callwire(&[]);
    for (form, one) in [
        ("binding", json!("call.CHANNEL_CREATE.*")),
        ("bindings", json!(["call.CHANNEL_CREATE.*"])),
    ] {
        let mut socket = callwire.ws("/");
        let reply = act(&mut socket, "subscribe", "s1", json!({form: one}));
        assert_eq!(
            reply,
            success("s1", json!({"subscribed": ["call.CHANNEL_CREATE.*"]})),
            "{form}"
        );
        let reply = act(&mut socket, "unsubscribe", "u1", json!({form: one}));
        assert_eq!(
            reply,
            success(
                "u1",
                json!({"unsubscribed": ["call.CHANNEL_CREATE.*"], "subscribed": []})
            ),
            "{form}"
        );

        // Two bindings one after the other: the second reply lists both, in order.
        let first = act(&mut socket, "subscribe", "s2", json!({form: one}));
        assert_eq!(
            first["data"],
            json!({"subscribed": ["call.CHANNEL_CREATE.*"]})
        );
        let other = if form == "binding" {
            json!("call.CHANNEL_DESTROY.*")
        } else {
            json!(["call.CHANNEL_DESTROY.*"])
        };
        let second = act(&mut socket, "subscribe", "s3", json!({form: other}));
        assert_eq!(
            second,
            success(
                "s3",
                json!({"subscribed": ["call.CHANNEL_CREATE.*", "call.CHANNEL_DESTROY.*"]})
            ),
            "{form}"
        );
        let reply = act(&mut socket, "unsubscribe", "u2", json!({form: one}));
        assert_eq!(
            reply,
            success(
                "u2",
                json!({"unsubscribed": ["call.CHANNEL_CREATE.*"],
                       "subscribed": ["call.CHANNEL_DESTROY.*"]})
            ),
            "{form}"
        );
    }
}

#[test]
fn subscribe_replies_list_every_binding_on_the_socket() {
    let callwire = quiet_callwire(&[]);
    let mut socket = callwire.ws("/");

    // A list with a duplicate: each binding once, in subscription order.
    let sent = json!(["a.b", "call.CHANNEL_CREATE.*", "a.b", "c.#"]);
    let reply = act(&mut socket, "subscribe", "r1", json!({"bindings": sent}));
    assert_eq!(
        reply,
        success(
            "r1",
            json!({"subscribed": ["a.b", "call.CHANNEL_CREATE.*", "c.#"]})
        )
    );

    // `binding` wins over `bindings`: the list is not subscribed.
    let reply = act(
        &mut socket,
        "subscribe",
        "r2",
        json!({"bindings": ["not.this", "nor.this"], "binding": "x.y"}),
    );
    assert_eq!(
        reply,
        success(
            "r2",
            json!({"subscribed": ["a.b", "call.CHANNEL_CREATE.*", "c.#", "x.y"]})
        )
    );

    // Subscribing again to a binding already held adds nothing and moves nothing.
    let reply = act(&mut socket, "subscribe", "r3", json!({"binding": "a.b"}));
    assert_eq!(
        reply,
        success(
            "r3",
            json!({"subscribed": ["a.b", "call.CHANNEL_CREATE.*", "c.#", "x.y"]})
        )
    );
}

#[test]
fn unsubscribe_replies_list_what_went_and_what_is_left() {
    let callwire = quiet_callwire(&[]);
    let mut socket = callwire.ws("/blackhole");
    let reply = act(
        &mut socket,
        "subscribe",
        "s",
        json!({"bindings": ["a.*", "b.#", "c.c", "d.d"]}),
    );
    assert_eq!(
        reply["data"]["subscribed"],
        json!(["a.*", "b.#", "c.c", "d.d"])
    );

    // A list, one of which was never subscribed: only what this request removed is listed.
    let reply = act(
        &mut socket,
        "unsubscribe",
        "u1",
        json!({"bindings": ["a.*", "never.subscribed"]}),
    );
    assert_eq!(
        reply,
        success(
            "u1",
            json!({"unsubscribed": ["a.*"], "subscribed": ["b.#", "c.c", "d.d"]})
        )
    );

    // A binding never subscribed: a success that changes nothing.
    let reply = act(
        &mut socket,
        "unsubscribe",
        "u2",
        json!({"binding": "nope.#"}),
    );
    assert_eq!(
        reply,
        success(
            "u2",
            json!({"unsubscribed": [], "subscribed": ["b.#", "c.c", "d.d"]})
        )
    );

    // `binding` wins over `bindings`.
    let reply = act(
        &mut socket,
        "unsubscribe",
        "u3",
        json!({"binding": "c.c", "bindings": ["d.d"]}),
    );
    assert_eq!(
        reply,
        success(
            "u3",
            json!({"unsubscribed": ["c.c"], "subscribed": ["b.#", "d.d"]})
        )
    );

    // A binding subscribed again goes to the end: subscription order.
    let reply = act(&mut socket, "subscribe", "s2", json!({"binding": "a.*"}));
    assert_eq!(reply["data"]["subscribed"], json!(["b.#", "d.d", "a.*"]));

    let reply = act(
        &mut socket,
        "unsubscribe",
        "u4",
        json!({"bindings": ["d.d", "a.*", "b.#"]}),
    );
    assert_eq!(
        reply,
        success(
            "u4",
            json!({"unsubscribed": ["d.d", "a.*", "b.#"], "subscribed": []})
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
            json!({"unsubscribed": ["call.#"], "subscribed": ["marker.#"]})
        )
    );
    // Unsubscribing a binding never subscribed changes nothing on the second socket either.
    let reply = request(
        &mut second,
        json!({"action": "unsubscribe", "request_id": "u", "data": {"binding": "never.#"}}),
    );
    assert_eq!(reply["data"]["subscribed"], json!(["call.#", "marker.#"]));

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
        assert_eq!(reply["data"]["subscribed"], json!(["c.d"]));
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
    assert_eq!(reply["data"]["subscribed"], json!(["probe.x"]));

    // The limits themselves are fine: 32 segments, 255 bytes.
    let deepest = vec!["a"; 32].join(".");
    let longest = "b".repeat(255);
    let reply = subscribe(
        &mut socket,
        "edges",
        json!({"bindings": [deepest, longest]}),
    );
    assert_eq!(
        reply["data"]["subscribed"],
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
    assert_eq!(reply["data"]["subscribed"], json!(["a.1", "a.2"]));
    // Two more would be four: refused, and neither is added.
    assert_error(
        &mut socket,
        json!({"action": "subscribe", "data": {"bindings": ["a.3", "a.4"]}}),
        limit,
    );
    let reply = subscribe(&mut socket, "s2", json!({"binding": "a.3"}));
    assert_eq!(reply["data"]["subscribed"], json!(["a.1", "a.2", "a.3"]));
    assert_error(
        &mut socket,
        json!({"action": "subscribe", "data": {"binding": "a.4"}}),
        limit,
    );
    // At the limit, a binding already held is no new one.
    let reply = subscribe(&mut socket, "s3", json!({"bindings": ["a.1", "a.3"]}));
    assert_eq!(
        reply,
        success("s3", json!({"subscribed": ["a.1", "a.2", "a.3"]}))
    );
    // Room made, room taken.
    let reply = request(
        &mut socket,
        json!({"action": "unsubscribe", "request_id": "u", "data": {"binding": "a.2"}}),
    );
    assert_eq!(reply["data"]["subscribed"], json!(["a.1", "a.3"]));
    let reply = subscribe(&mut socket, "s4", json!({"binding": "a.4"}));
    assert_eq!(reply["data"]["subscribed"], json!(["a.1", "a.3", "a.4"]));

    // The limit is per socket.
    let mut other = callwire.ws("/");
    let reply = subscribe(&mut other, "o", json!({"bindings": ["b.1", "b.2", "b.3"]}));
    assert_eq!(reply["data"]["subscribed"], json!(["b.1", "b.2", "b.3"]));
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
    let creds = credentials(&CREDENTIALS);
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
    assert_eq!(reply, success("s", json!({"subscribed": ["call.#"]})));
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
    let creds = credentials(&CREDENTIALS);
    let callwire = quiet_callwire(&["--auth", creds.path()]);

    let mut desk = callwire.ws("/");
    let reply = request(
        &mut desk,
        json!({"action": "subscribe", "request_id": "own", "auth_token": SECRET_A,
               "data": {"binding": "call.#", "account_id": ACCOUNT_A}}),
    );
    assert_eq!(reply, success("own", json!({"subscribed": ["call.#"]})));
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
    assert_eq!(reply["data"]["subscribed"], json!(["call.#"]));

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
        success("again", json!({"subscribed": ["a.#", "to-a.#", "to-b.#"]}))
    );
}

#[test]
fn name_and_metadata_are_accepted_at_the_top_level_or_in_data() {
    let creds = credentials(&CREDENTIALS);
    let callwire = quiet_callwire(&["--auth", creds.path()]);
    let mut socket = callwire.ws("/");
    let name = "My new socket 4e1d";
    let metadata = json!({"test": "metadata-value-77c2"});
    let requests = [
        (
            json!({"action": "subscribe", "request_id": "top", "auth_token": SECRET_A,
                   "name": name, "metadata": metadata,
                   "data": {"binding": "call.CHANNEL_CREATE.*"}}),
            success("top", json!({"subscribed": ["call.CHANNEL_CREATE.*"]})),
        ),
        (
            json!({"action": "subscribe", "request_id": "inside",
                   "data": {"binding": "call.#", "name": name, "metadata": metadata}}),
            success(
                "inside",
                json!({"subscribed": ["call.CHANNEL_CREATE.*", "call.#"]}),
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
                json!({"unsubscribed": ["call.#"], "subscribed": ["call.CHANNEL_CREATE.*"]}),
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
    let creds = credentials(&CREDENTIALS);
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
fn event_frames_carry_kazoos_data_or_the_payload_as_it_was() {
    let prefix = unique("bh-frame");
    let callwire = mqtt_callwire(&prefix, &[], None);
    let mut socket = callwire.ws("/");
    let reply = subscribe(&mut socket, "s", json!({"binding": "call.#"}));
    assert_eq!(reply["status"], "success", "{reply}");

    // (topic after the prefix, payload, expected name, expected data: `None` when the payload
    // must come byte for byte, as a JSON value that is not an object does)
    let spaced = format!(
        r#"{{"Event-Name" :  "CHANNEL_CREATE", "Account-ID":"{ACCOUNT_A}",   "Call-ID" : "f1",
  "list": [1, 2 ,3],"nested":{{ "É-X" : "☎ \"quoted\" \\ \u00e9" }} ,"n":1.50}}"#
    );
    let spaced_data = json!({"event_name": "CHANNEL_CREATE", "account_id": ACCOUNT_A,
                             "call_id": "f1", "list": [1, 2, 3],
                             "nested": {"é_x": "☎ \"quoted\" \\ é"}, "n": 1.5});
    let cases: Vec<(&str, String, &str, Option<Value>)> = vec![
        (
            "call/CHANNEL_CREATE/f1",
            spaced,
            "CHANNEL_CREATE",
            Some(spaced_data),
        ),
        (
            "call/CHANNEL_ANSWER/f2",
            r#"{"Call-ID":"f2","Server-ID":"gone","Gone-Too":null}"#.to_owned(),
            "CHANNEL_ANSWER",
            Some(json!({"call_id": "f2"})),
        ),
        (
            "call/X/f3",
            r#"{"event_name":"E3","type":"ignored"}"#.to_owned(),
            "E3",
            Some(json!({"event_name": "E3", "type": "ignored"})),
        ),
        (
            "call/X/f4",
            r#"{"type":"StasisStart"}"#.to_owned(),
            "StasisStart",
            Some(json!({"type": "StasisStart"})),
        ),
        (
            "call/X/f5",
            r#"{"event":"ringing"}"#.to_owned(),
            "ringing",
            Some(json!({"event": "ringing"})),
        ),
        (
            "call/CHANNEL_HOLD/f6",
            "[1, 2]".to_owned(),
            "CHANNEL_HOLD",
            None,
        ),
        ("call/X/f7", r#" "Just-A-String" "#.to_owned(), "X", None),
        (
            "call/CHANNEL_DESTROY/f8",
            r#"not json: he said "hi" \ bye"#.to_owned(),
            "CHANNEL_DESTROY",
            None,
        ),
        (
            "call/CHANNEL_BRIDGE/f9",
            r#"{"Event-Name":"CHANNEL_BRIDGE""#.to_owned(),
            "CHANNEL_BRIDGE",
            None,
        ),
    ];
    for (topic, payload, _, _) in &cases {
        publish(&prefix, topic, payload);
    }
    let mut last_offset = None;
    for (topic, payload, name, data) in &cases {
        let (text, frame) = next_event(&mut socket);
        // delivery.md: one epoch, and each event one offset after the one before.
        let offset = frame["offset"].as_u64().expect("an offset");
        if let Some(last) = last_offset {
            assert_eq!(offset, last + 1, "{text}");
        }
        last_offset = Some(offset);
        assert!(
            frame["epoch"].as_str().is_some_and(|e| !e.is_empty()),
            "{text}"
        );
        assert_eq!(
            keys_of(&frame),
            [
                "action",
                "data",
                "epoch",
                "name",
                "offset",
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
        match (data, serde_json::from_str::<Value>(payload)) {
            (Some(data), _) => assert_eq!(&frame["data"], data, "{text}"),
            // JSON that is not an object: byte for byte.
            (None, Ok(parsed)) => {
                assert!(
                    text.contains(&format!(r#""data":{payload}"#)),
                    "payload not carried byte for byte:\n{payload}\n{text}"
                );
                assert_eq!(frame["data"], parsed);
            }
            // Not JSON: as a JSON string.
            (None, Err(_)) => assert_eq!(frame["data"], json!(payload), "{text}"),
        }
    }
}

/// What a Blackhole client sees of three PBXs' payloads, key by key (blackhole.md, "Events":
/// `normalize_jobj(public_fields(Payload))`). The expected values are written out by hand.
#[test]
fn real_pbx_payloads_arrive_in_kazoos_public_normalised_form() {
    let prefix = unique("bh-kazoo-data");
    let callwire = mqtt_callwire(&prefix, &[], None);
    let mut socket = callwire.ws("/");
    let reply = subscribe(&mut socket, "s", json!({"binding": "#"}));
    assert_eq!(reply["status"], "success", "{reply}");

    // A Kazoo 4.3 CHANNEL_CREATE as ecallmgr publishes it on `callevt`.
    let kazoo = json!({
        "Event-Category": "call_event", "Event-Name": "CHANNEL_CREATE",
        "Call-ID": "at6dmu4ffk97vnlp6qfq", "Account-ID": ACCOUNT_A,
        "Call-Direction": "inbound", "Caller-ID-Number": "2107", "Caller-ID-Name": "Front Desk",
        "Callee-ID-Number": null, "Channel-Call-State": "RINGING", "Timestamp": 63962648130u64,
        "Msg-ID": "755dacc64944216eeb23f852d12774d4", "Server-ID": "", "Node": "ecallmgr@kz1",
        "App-Name": "ecallmgr", "App-Version": "4.3.0",
        "Custom-Channel-Vars": {"Account-ID": ACCOUNT_A, "Owner-ID": null,
                                "Authorizing-Type": "device", "Node": "kept-below-the-top"},
        "Media-Servers": [{"Media-Server-ID": "fs1", "Zone-Name": "local", "Weight": null},
                          {"Media-Server-ID": "fs2", "Ports": [5060, 5080]}]
    });
    let kazoo_data = json!({
        "event_category": "call_event", "event_name": "CHANNEL_CREATE",
        "call_id": "at6dmu4ffk97vnlp6qfq", "account_id": ACCOUNT_A,
        "call_direction": "inbound", "caller_id_number": "2107", "caller_id_name": "Front Desk",
        "channel_call_state": "RINGING", "timestamp": 63962648130u64,
        "msg_id": "755dacc64944216eeb23f852d12774d4",
        "app_name": "ecallmgr", "app_version": "4.3.0",
        "custom_channel_vars": {"account_id": ACCOUNT_A, "authorizing_type": "device",
                                "node": "kept-below-the-top"},
        "media_servers": [{"media_server_id": "fs1", "zone_name": "local"},
                          {"media_server_id": "fs2", "ports": [5060, 5080]}]
    });
    // FreeSWITCH mod_amqp in a Kazoo cluster: every value a string.
    let freeswitch = json!({
        "Event-Name": "CHANNEL_ANSWER", "Core-UUID": "4b6c1ef4", "FreeSWITCH-Hostname": "fs1",
        "Unique-ID": "fs-call-1", "Caller-Caller-ID-Number": "2107",
        "Caller-Destination-Number": "2108", "Call-Direction": "inbound",
        "variable_ecallmgr_Account-ID": ACCOUNT_A, "Event-Date-Timestamp": "1795428930123456"
    });
    let freeswitch_data = json!({
        "event_name": "CHANNEL_ANSWER", "core_uuid": "4b6c1ef4", "freeswitch_hostname": "fs1",
        "unique_id": "fs-call-1", "caller_caller_id_number": "2107",
        "caller_destination_number": "2108", "call_direction": "inbound",
        "variable_ecallmgr_account_id": ACCOUNT_A, "event_date_timestamp": "1795428930123456"
    });
    // Asterisk ARI: already lower case, nested objects, an empty list.
    let ari = json!({
        "type": "StasisStart", "timestamp": "2026-11-23T10:15:30.123+0000", "args": [],
        "channel": {"id": "1795428930.70", "state": "Ring",
                    "caller": {"name": "NGUYEN TAN", "number": "+14155550140"},
                    "dialplan": {"context": "from-trunk", "exten": "217", "priority": 1},
                    "creationtime": "2026-11-23T10:15:30.123+0000"}
    });
    let cases = [
        (
            "call/CHANNEL_CREATE/k1",
            kazoo.to_string(),
            Some(kazoo_data),
        ),
        (
            "FreeSWITCH/fs1/CHANNEL_ANSWER",
            freeswitch.to_string(),
            Some(freeswitch_data),
        ),
        (
            "asterisk/ari/StasisStart",
            ari.to_string(),
            Some(ari.clone()),
        ),
        // Not an object: as it was.
        ("other/string", r#""Call-ID""#.to_owned(), None),
    ];
    for (topic, payload, _) in &cases {
        publish(&prefix, topic, payload);
    }
    for (topic, payload, expected) in &cases {
        let (text, frame) = next_event(&mut socket);
        assert_eq!(
            frame["routing_key"],
            json!(topic.replace('/', ".")),
            "{text}"
        );
        let Some(expected) = expected else {
            assert!(text.contains(&format!(r#""data":{payload}"#)), "{text}");
            continue;
        };
        let data = frame["data"].as_object().unwrap();
        assert_eq!(
            keys_of(&frame["data"]),
            keys_of(expected),
            "{topic}: {text}"
        );
        for (key, value) in expected.as_object().unwrap() {
            assert_eq!(&data[key], value, "{topic}: data.{key}");
        }
    }
}

/// A client that behaves as Monster UI's socket library (tests/clients/blackhole_monster.js):
/// it registers each binding from the list in `data.subscribed`, and its listeners read the
/// events by Kazoo's names.
#[test]
fn a_monster_ui_style_client_registers_its_bindings_and_reads_kazoo_names() {
    let prefix = unique("bh-monster");
    let creds = credentials(&CREDENTIALS);
    let callwire = mqtt_callwire(&prefix, &["--auth", creds.path()], Some(SECRET_STAR));
    let url = format!("ws://127.0.0.1:{}/", callwire.port);
    let bindings = ["call.CHANNEL_CREATE.*", "call.CHANNEL_DESTROY.*"];
    let mut args = vec![url.as_str(), ACCOUNT_A, SECRET_A];
    args.extend_from_slice(&bindings);
    let mut monster = Script::node("blackhole_monster.js", &args);
    let timeout = Duration::from_secs(10);
    for binding in bindings {
        monster.wait_line(&format!("{binding} registered"), timeout, |l| {
            l["event"] == "registered" && l["binding"] == binding
        });
    }

    let event = |name: &str, id: &str, account: &str| {
        json!({"Event-Category": "call_event", "Event-Name": name, "Call-ID": id,
               "Account-ID": account, "To": "2108@acme.example", "Caller-ID-Number": "2107",
               "Server-ID": "", "Node": "ecallmgr@kz1", "Msg-ID": "m1"})
        .to_string()
    };
    publish(
        &prefix,
        "call/CHANNEL_CREATE/m1",
        &event("CHANNEL_CREATE", "m1", ACCOUNT_A),
    );
    // Another account's call never reaches this socket.
    publish(
        &prefix,
        "call/CHANNEL_CREATE/b1",
        &event("CHANNEL_CREATE", "b1", ACCOUNT_B),
    );
    publish(
        &prefix,
        "call/CHANNEL_DESTROY/m1",
        &event("CHANNEL_DESTROY", "m1", ACCOUNT_A),
    );
    let destroy = monster.wait_line("the destroy", timeout, |l| {
        l["event"] == "received" && l["binding"] == "call.CHANNEL_DESTROY.*"
    });
    assert_eq!(destroy["call_id"], "m1");
    assert_eq!(destroy["to"], "2108@acme.example");
    assert_eq!(destroy["caller_id_number"], "2107");
    // Kazoo's names, and none of its private headers; `binding` is the one Monster UI adds.
    assert_eq!(
        destroy["keys"],
        json!([
            "account_id",
            "binding",
            "call_id",
            "caller_id_number",
            "event_category",
            "event_name",
            "msg_id",
            "to"
        ])
    );

    // Unbinding one: the reply's lists are iterated too.
    monster.command("unbind call.CHANNEL_CREATE.*");
    monster.wait_line("the unbind", timeout, |l| {
        l["event"] == "unregistered" && l["binding"] == "call.CHANNEL_CREATE.*"
    });
    let left = monster.wait_line("what is left", timeout, |l| l["event"] == "left");
    assert_eq!(left["bindings"], json!(["call.CHANNEL_DESTROY.*"]));
    monster.command("exit");
    assert!(monster.finish().success(), "{}", monster.transcript());

    let received: Vec<(String, String)> = monster
        .events("received", None)
        .iter()
        .map(|l| (l["binding"].to_string(), l["call_id"].to_string()))
        .collect();
    assert_eq!(
        received,
        [
            (
                r#""call.CHANNEL_CREATE.*""#.to_owned(),
                r#""m1""#.to_owned()
            ),
            (
                r#""call.CHANNEL_DESTROY.*""#.to_owned(),
                r#""m1""#.to_owned()
            ),
        ]
    );
    assert!(
        monster.events("error", None).is_empty(),
        "{}",
        monster.transcript()
    );
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
