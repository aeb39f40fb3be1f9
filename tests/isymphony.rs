//! The iSymphony dialect against its contract (isymphony.md), through the real binary: the
//! seed's filter examples with a real Python client on `ws://name:secret@host` URLs, the filter
//! message and its responses, the matching rules, the 401 before the upgrade, both paths, and
//! account scoping. Events are published with the real `mosquitto_pub` to the shared Mosquitto
//! on 127.0.0.1:1883, each test under a topic prefix of its own.
//!
//! No test waits on the clock to decide what a socket received: an unfiltered witness socket
//! proves a stream went through the hub; each filtered socket then switches to a sentinel filter
//! and a sentinel event is published, so what came before the sentinel is exactly what the
//! socket's filters let in.

mod common;
mod counting_alloc;

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::rc::Rc;
use std::time::Duration;

use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;

use common::{
    Callwire, Credential, Socket, TempFile, credentials, mosquitto_pub, set_read_timeout, unique,
    wait_for,
};
use counting_alloc::allocations_during;

/// The shared Mosquitto every MQTT test here publishes to.
const BROKER_PORT: u16 = 1883;
const PATH: &str = "/communication_manager/ws/event";

const ACCOUNT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const ACCOUNT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const MANAGER: (&str, &str) = ("manager", "manag3rpa55word");
const DESK_A: (&str, &str) = ("desk-a", "4f9c2e7a1b");
const DESK_B: (&str, &str) = ("desk-b", "77d0a5c3e9");

// ---------------------------------------------------------------------------------------------
// Helpers

const CREDENTIALS: [Credential; 3] = [
    (MANAGER.0, MANAGER.1, "*"),
    (DESK_A.0, DESK_A.1, ACCOUNT_A),
    (DESK_B.0, DESK_B.1, ACCOUNT_B),
];

/// `Callwire::start`, made sure the port is served by the callwire it started (two tests may
/// draw the same free port); retried with a new port when it is not.
fn start(args: &[&str]) -> Callwire {
    for _ in 0..5 {
        let mut callwire = Callwire::start(args);
        let mut owned = false;
        wait_for(
            "callwire to own its port, or exit",
            Duration::from_secs(5),
            || {
                owned = owns_listener(&callwire);
                owned || callwire.child.try_wait().unwrap().is_some()
            },
        );
        if owned {
            return callwire;
        }
    }
    panic!("callwire never got a port of its own");
}

/// Whether the process holds the socket listening on 127.0.0.1:`port` (Linux /proc).
fn owns_listener(callwire: &Callwire) -> bool {
    let local = format!("0100007F:{:04X}", callwire.port);
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let Some(inode) = tcp.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 9 && fields[1] == local && fields[3] == "0A").then(|| fields[9].to_owned())
    }) else {
        return false;
    };
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{}/fd", callwire.pid()))
        .map(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|link| link.to_string_lossy() == wanted)
            })
        })
        .unwrap_or(false)
}

/// A callwire fed from `<prefix>/#` on the shared broker, with `--auth` when `auth` is given,
/// whose MQTT subscription is known to be live and drained of warm-up messages.
struct Bridge {
    callwire: Callwire,
    prefix: String,
    /// Who the helpers connect as: the `*` credential, or nobody without `--auth`.
    manager: Option<(&'static str, &'static str)>,
    sentinels: Cell<u32>,
    _creds: Option<TempFile>,
}

impl Bridge {
    fn new(auth: bool, extra: &[&str]) -> Bridge {
        let prefix = unique("isym");
        let topic = format!("{prefix}/#");
        let creds = auth.then(|| credentials(&CREDENTIALS));
        let mut args = vec!["--mqtt", "mqtt://127.0.0.1:1883", "--mqtt-topic", &topic];
        if let Some(creds) = &creds {
            args.extend(["--auth", creds.path()]);
        }
        args.extend_from_slice(extra);
        let bridge = Bridge {
            callwire: start(&args),
            prefix,
            manager: auth.then_some(MANAGER),
            sentinels: Cell::new(0),
            _creds: creds,
        };
        bridge.warm_up();
        bridge
    }

    /// Waits for the MQTT source, publishes warm-up messages until one arrives, then a barrier:
    /// once the barrier is seen, no warm-up message is still on its way.
    fn warm_up(&self) {
        self.callwire.wait_connected(Duration::from_secs(10));
        let mut socket = self.connect(PATH, self.manager);
        set_read_timeout(&socket, Duration::from_millis(100));
        let arrived = (0..100).any(|n| {
            mosquitto_pub(
                BROKER_PORT,
                &format!("{}/warmup/{n}", self.prefix),
                &json!({ "warmup": n }).to_string(),
            );
            matches!(socket.read(), Ok(Message::Text(_)))
        });
        assert!(
            arrived,
            "no warm-up message arrived: {}",
            self.callwire.log_text()
        );
        set_read_timeout(&socket, Duration::from_secs(5));
        let barrier = r#"{"barrier":true}"#;
        self.publish(barrier);
        while recv_text(&mut socket) != barrier {}
    }

    fn publish(&self, payload: &str) {
        mosquitto_pub(BROKER_PORT, &format!("{}/event", self.prefix), payload);
    }

    /// An iSymphony socket on `path`, with HTTP Basic `name:secret` when given.
    fn connect(&self, path: &str, auth: Option<(&str, &str)>) -> Socket {
        try_connect(&self.callwire, path, auth).expect("websocket upgrade")
    }

    /// An unfiltered socket that sees every account.
    fn witness(&self) -> Socket {
        self.connect(PATH, self.manager)
    }

    /// Publishes `payloads` and waits until the witness has them all, in order and verbatim:
    /// JSON byte for byte, anything else as a JSON string.
    fn stream(&self, witness: &mut Socket, payloads: &[&str]) {
        for payload in payloads {
            self.publish(payload);
        }
        for payload in payloads {
            let expected = match serde_json::from_str::<Value>(payload) {
                Ok(_) => (*payload).to_owned(),
                Err(_) => serde_json::to_string(payload).unwrap(),
            };
            assert_eq!(recv_text(witness), expected);
        }
    }

    /// What each socket received so far (responses and sentinels aside). Each switches to a
    /// sentinel filter, then a sentinel event is published for each account and one for none:
    /// what comes before the first one a socket sees is what it got. (A socket that sees
    /// several gets the rest later; they are skipped then.)
    fn collect(&self, sockets: &mut [&mut Socket]) -> Vec<Vec<Value>> {
        let n = self.sentinels.get();
        self.sentinels.set(n + 1);
        let sentinel = json!([{"property": "sentinel", "value": "*"}]);
        let mut received: Vec<Vec<Value>> = Vec::new();
        for socket in sockets.iter_mut() {
            send(socket, json!({"type": "filter", "filters": sentinel}));
            let mut events = Vec::new();
            loop {
                let frame = recv(socket);
                if frame["type"] == "filterResponse" {
                    assert_eq!(frame, success(sentinel.clone()));
                    break;
                }
                if frame.get("sentinel").is_none() {
                    events.push(frame);
                }
            }
            received.push(events);
        }
        for account in [Some(ACCOUNT_A), Some(ACCOUNT_B), None] {
            let mut event = json!({ "sentinel": n });
            if let Some(account) = account {
                event["Account-ID"] = json!(account);
            }
            self.publish(&event.to_string());
        }
        for (socket, events) in sockets.iter_mut().zip(&mut received) {
            loop {
                let frame = recv(socket);
                match frame.get("sentinel") {
                    Some(seen) if *seen == json!(n) => break,
                    Some(_) => {}
                    None => events.push(frame),
                }
            }
        }
        received
    }
}

fn basic(name: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        data_encoding::BASE64.encode(format!("{name}:{secret}").as_bytes())
    )
}

fn try_connect(
    callwire: &Callwire,
    path: &str,
    auth: Option<(&str, &str)>,
) -> Result<Socket, tungstenite::Error> {
    let mut request = format!("ws://127.0.0.1:{}{path}", callwire.port)
        .into_client_request()
        .unwrap();
    if let Some((name, secret)) = auth {
        let value = HeaderValue::from_str(&basic(name, secret)).unwrap();
        request.headers_mut().insert("Authorization", value);
    }
    let (socket, _response) = tungstenite::connect(request)?;
    set_read_timeout(&socket, Duration::from_secs(5));
    Ok(socket)
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

fn recv(socket: &mut Socket) -> Value {
    let text = recv_text(socket);
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

fn send(socket: &mut Socket, message: Value) {
    socket.send(Message::text(message.to_string())).unwrap();
}

/// Sends a text message and returns the response (no events may be on their way).
fn ask(socket: &mut Socket, text: &str) -> Value {
    socket.send(Message::text(text)).unwrap();
    recv(socket)
}

fn filter(pairs: &[(&str, &str)]) -> Value {
    let filters: Vec<Value> = pairs
        .iter()
        .map(|(property, value)| json!({"property": property, "value": value}))
        .collect();
    json!({"type": "filter", "filters": filters})
}

/// Sets the filters and checks the success response.
fn set_filters(socket: &mut Socket, pairs: &[(&str, &str)]) {
    let message = filter(pairs);
    let response = ask(socket, &message.to_string());
    assert_eq!(response, success(message["filters"].clone()));
}

fn success(filters: Value) -> Value {
    json!({"type": "filterResponse", "status": "success", "filters": filters})
}

/// The error message of a `status: error` response (panics on anything else).
fn error_message(response: &Value) -> &str {
    assert_eq!(response["type"], "filterResponse", "{response}");
    assert_eq!(response["status"], "error", "{response}");
    assert_eq!(response.as_object().unwrap().len(), 3, "{response}");
    response["message"].as_str().expect("a message")
}

/// The `seq` of each event.
fn seqs(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["seq"].as_i64().unwrap_or_else(|| panic!("no seq: {e}")))
        .collect()
}

/// An upgrade request written by hand; returns the status line's code, the head and the body.
fn raw_upgrade(
    callwire: &Callwire,
    path: &str,
    authorization: Option<&str>,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", callwire.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(value) = authorization {
        request.push_str(&format!("Authorization: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    let head_end = loop {
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut buf).expect("a response head");
        assert!(n > 0, "closed before a response head");
        response.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&response[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = response[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).expect("the response body");
        assert!(n > 0, "closed before the whole body");
        body.extend_from_slice(&buf[..n]);
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

// ---------------------------------------------------------------------------------------------
// The seed, with a client no one here wrote

#[test]
fn python_client_on_a_name_secret_url_runs_the_seeds_four_examples() {
    let bridge = Bridge::new(true, &[]);
    let script = format!(
        "{}/tests/clients/isymphony_filters.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let output = Command::new("python3")
        .arg(script)
        .args([
            &bridge.callwire.port.to_string(),
            &BROKER_PORT.to_string(),
            &bridge.prefix,
            MANAGER.0,
            MANAGER.1,
        ])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "isymphony_filters.py failed:\n{stdout}\n{}\ncallwire: {}",
        String::from_utf8_lossy(&output.stderr),
        bridge.callwire.log_text()
    );
    for line in [
        "wrong password: 401",
        "type dial: [4, 5]",
        "login or logout: [1, 2, 3, 8, 10]",
        "login or logout, for mikey: [1, 2, 10]",
        "references a user: [1, 2, 3, 4, 6, 8, 9, 10]",
        "seed examples: ok",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no '{line}' in:\n{stdout}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The filter message

#[test]
fn without_filters_everything_and_an_empty_list_clears_them() {
    let bridge = Bridge::new(false, &[]);
    let mut witness = bridge.witness();
    let mut unfiltered = bridge.connect(PATH, None);
    let mut cleared = bridge.connect(PATH, None);
    set_filters(&mut cleared, &[("type", "dial")]);
    set_filters(&mut cleared, &[]);
    let payloads = [
        r#"{"type" : "login",  "seq": 1, "time": 1700000000001, "n": 1.50}"#,
        "not JSON at all",
        r#"[{"seq": 3}]"#,
        r#"{"type":"dial","seq":4}"#,
    ];
    bridge.stream(&mut witness, &payloads);
    let got = bridge.collect(&mut [&mut unfiltered, &mut cleared]);
    for events in got {
        assert_eq!(events.len(), 4, "{events:?}");
        assert_eq!(events[0]["n"], json!(1.5));
        assert_eq!(events[1], json!("not JSON at all"));
        assert_eq!(events[2], json!([{"seq": 3}]));
        assert_eq!(events[3]["seq"], 4);
    }
}

#[test]
fn a_refused_filter_message_leaves_the_previous_filters_in_force() {
    let bridge = Bridge::new(false, &["--max-filters", "3"]);
    let mut witness = bridge.witness();
    let mut socket = bridge.connect(PATH, None);
    set_filters(&mut socket, &[("type", "dial")]);

    let broken = json!({"type": "filter", "filters": [
        {"property": "type", "value": "login"},
        {"property": "type", "value": "logout"},
        {"property": "username"},
    ]});
    let response = ask(&mut socket, &broken.to_string());
    assert_eq!(
        error_message(&response),
        r#"filters[2]: expected {"property": <string>, "value": <string>}"#
    );
    let numeric = json!({"type": "filter", "filters": [{"property": "n", "value": 16}]});
    let response = ask(&mut socket, &numeric.to_string());
    assert!(
        error_message(&response).starts_with("filters[0]: "),
        "{response}"
    );

    let too_many = filter(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]);
    let message = error_message(&ask(&mut socket, &too_many.to_string())).to_owned();
    assert!(
        message.contains("too many filters") && message.contains('3'),
        "{message}"
    );

    for (text, needle) in [
        (r#"{"type": "subscribe", "filters": []}"#, "subscribe"),
        (r#"{"filters": []}"#, "\"type\""),
        (r#"{"type": "filter"}"#, "\"filters\""),
        (
            r#"{"type": "filter", "filters": {"property": "type"}}"#,
            "\"filters\"",
        ),
        (r#"["filter"]"#, "object"),
        ("hello", "invalid JSON"),
    ] {
        let message = error_message(&ask(&mut socket, text)).to_owned();
        assert!(message.contains(needle), "{text}: {message}");
    }
    socket.send(Message::binary(&b"\x01\x02"[..])).unwrap();
    let message = error_message(&recv(&mut socket)).to_owned();
    assert!(message.contains("binary"), "{message}");

    // The socket is open and `type dial` still holds.
    bridge.stream(
        &mut witness,
        &[
            r#"{"type":"login","seq":1}"#,
            r#"{"type":"dial","seq":2}"#,
            r#"{"type":"logout","seq":3}"#,
            r#"{"username":"mikey","seq":4}"#,
        ],
    );
    let got = bridge.collect(&mut [&mut socket]);
    assert_eq!(seqs(&got[0]), [2]);
}

#[test]
fn the_seeds_broken_form_gets_an_error_that_shows_the_right_one() {
    let bridge = Bridge::new(false, &[]);
    let mut socket = bridge.connect("/ws/event", None);
    // Exactly as the seed prints it.
    let seed_form = "{\n \"type\" : \"filter\",\n \"filters\" : [\n    \
                     {\"property\" : \"type\" : \"value\" : \"login\"},\n    \
                     {\"property\" : \"type\" : \"value\" : \"logout\"}\n  ]\n}";
    let response = ask(&mut socket, seed_form);
    let message = error_message(&response);
    assert!(
        message.contains(r#"{"property": "type", "value": "login"}"#),
        "{message}"
    );
    // The example the error shows is itself a filter message the server takes.
    let start = message
        .find(r#"{"type": "filter""#)
        .expect("a whole example");
    let example: Value = serde_json::Deserializer::from_str(&message[start..])
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    let response = ask(&mut socket, &example.to_string());
    assert_eq!(response, success(example["filters"].clone()));
}

// ---------------------------------------------------------------------------------------------
// Matching

#[test]
fn a_wildcard_needs_the_property_present() {
    let bridge = Bridge::new(false, &[]);
    let mut witness = bridge.witness();
    let mut socket = bridge.connect(PATH, None);
    set_filters(&mut socket, &[("extension", "*")]);
    bridge.stream(
        &mut witness,
        &[
            r#"{"seq":1,"extension":"100"}"#,
            r#"{"seq":2}"#,
            r#"{"seq":3,"extension":null}"#,
            r#"{"seq":4,"extension":{"number":"100"}}"#,
            r#"{"seq":5,"extension":""}"#,
            r#"{"seq":6,"Extension":"100"}"#,
            "extension: 100 (not JSON)",
            r#"{"seq":8,"extension":[1,2]}"#,
        ],
    );
    let got = bridge.collect(&mut [&mut socket]);
    assert_eq!(seqs(&got[0]), [1, 3, 4, 5, 8]);
}

#[test]
fn values_compare_as_strings_numbers_and_booleans_by_their_json_text() {
    let bridge = Bridge::new(false, &[]);
    let mut witness = bridge.witness();
    let mut number = bridge.connect(PATH, None);
    let mut boolean = bridge.connect(PATH, None);
    let mut null = bridge.connect(PATH, None);
    let mut object = bridge.connect(PATH, None);
    set_filters(&mut number, &[("priority", "16")]);
    set_filters(&mut boolean, &[("queued", "true")]);
    set_filters(&mut null, &[("queued", "null")]);
    set_filters(&mut object, &[("priority", r#"{"level":16}"#)]);
    bridge.stream(
        &mut witness,
        &[
            r#"{"seq":1,"priority":16}"#,
            r#"{"seq":2,"priority":"16"}"#,
            r#"{"seq":3,"priority":160}"#,
            r#"{"seq":4,"priority":16.5}"#,
            r#"{"seq":5,"priority":[16]}"#,
            r#"{"seq":6,"priority":{"level":16}}"#,
            r#"{"seq":7,"priority":" 16"}"#,
            r#"{"seq":8,"queued":true}"#,
            r#"{"seq":9,"queued":"true"}"#,
            r#"{"seq":10,"queued":false}"#,
            r#"{"seq":11,"queued":null}"#,
            r#"{"seq":12,"queued":"TRUE"}"#,
        ],
    );
    let got = bridge.collect(&mut [&mut number, &mut boolean, &mut null, &mut object]);
    assert_eq!(seqs(&got[0]), [1, 2]);
    assert_eq!(seqs(&got[1]), [8, 9]);
    assert_eq!(seqs(&got[2]), [11]);
    assert_eq!(seqs(&got[3]), Vec::<i64>::new());
}

#[test]
fn dotted_names_walk_into_nested_objects_unless_a_field_has_that_name() {
    let bridge = Bridge::new(false, &[]);
    let mut witness = bridge.witness();
    let mut socket = bridge.connect(PATH, None);
    set_filters(
        &mut socket,
        &[("channel.caller.number", "100"), ("type", "StasisStart")],
    );
    bridge.stream(
        &mut witness,
        &[
            r#"{"seq":1,"type":"StasisStart","channel":{"id":"x","caller":{"number":"100","name":"A"}}}"#,
            r#"{"seq":2,"type":"StasisStart","channel":{"caller":{"number":"101"}}}"#,
            r#"{"seq":3,"type":"ChannelDestroyed","channel":{"caller":{"number":"100"}}}"#,
            r#"{"seq":4,"type":"StasisStart","channel.caller.number":"100"}"#,
            r#"{"seq":5,"type":"StasisStart","channel.caller.number":"999","channel":{"caller":{"number":"100"}}}"#,
            r#"{"seq":6,"type":"StasisStart","channel":{"caller":"100"}}"#,
            r#"{"seq":7,"type":"StasisStart","channel":{"caller":{"number":100}}}"#,
            r#"{"seq":8,"type":"StasisStart","channel":[{"caller":{"number":"100"}}]}"#,
        ],
    );
    let got = bridge.collect(&mut [&mut socket]);
    assert_eq!(seqs(&got[0]), [1, 4, 7]);
}

// ---------------------------------------------------------------------------------------------
// Credentials and paths

#[test]
fn a_bad_or_missing_credential_is_refused_with_401_before_the_upgrade() {
    let creds = credentials(&CREDENTIALS);
    let callwire = start(&[
        "--mqtt",
        "mqtt://127.0.0.1:1883",
        "--mqtt-topic",
        &format!("{}/#", unique("isym-quiet")),
        "--auth",
        creds.path(),
    ]);
    let wrong_password = basic(MANAGER.0, "manag3rpa55wore");
    let wrong_name = basic(DESK_A.0, MANAGER.1);
    let bearer_wrong = "Bearer nope".to_owned();
    for path in [PATH, "/ws/event"] {
        for authorization in [
            None,
            Some(wrong_password.as_str()),
            Some(wrong_name.as_str()),
            Some(bearer_wrong.as_str()),
            Some("Basic !!!"),
        ] {
            let (status, head, body) = raw_upgrade(&callwire, path, authorization);
            assert_eq!(status, 401, "{path} {authorization:?}: {head}");
            assert!(
                head.lines()
                    .any(|line| line
                        .eq_ignore_ascii_case(r#"WWW-Authenticate: Basic realm="callwire""#)),
                "{head}"
            );
            assert!(
                !head.to_ascii_lowercase().contains("sec-websocket-accept"),
                "{head}"
            );
            let body: Value = serde_json::from_str(&body).expect("a JSON body");
            let error = body["error"].as_str().expect("an error");
            assert!(!error.contains(MANAGER.1), "{error}");
        }
    }
    // Through a real client too: refused, with the status it can read.
    match try_connect(&callwire, PATH, Some((MANAGER.0, "wrong"))) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected a 401, got {other:?}"),
    }
    // No refused upgrade took a slot; the right credential is let in.
    assert_eq!(
        callwire.metric("callwire_clients{dialect=\"isymphony\"}"),
        0
    );
    let (status, _, _) = raw_upgrade(&callwire, PATH, Some(&basic(MANAGER.0, MANAGER.1)));
    assert_eq!(status, 101);
    let mut socket = try_connect(&callwire, "/ws/event", Some(DESK_A)).expect("let in");
    set_filters(&mut socket, &[("type", "login")]);
    let mut bearer = format!("ws://127.0.0.1:{}{PATH}", callwire.port)
        .into_client_request()
        .unwrap();
    let value = HeaderValue::from_str(&format!("Bearer {}", DESK_B.1)).unwrap();
    bearer.headers_mut().insert("Authorization", value);
    assert!(tungstenite::connect(bearer).is_ok());
}

#[test]
fn both_paths_serve_the_same_dialect() {
    let bridge = Bridge::new(true, &[]);
    let mut witness = bridge.witness();
    let mut long = bridge.connect(PATH, Some(MANAGER));
    let mut short = bridge.connect("/ws/event", Some(MANAGER));
    set_filters(&mut long, &[("type", "login"), ("type", "logout")]);
    set_filters(&mut short, &[("type", "login"), ("type", "logout")]);
    // The witness and these two (the warm-up socket may take a moment to be gone).
    wait_for("three iSymphony clients", Duration::from_secs(5), || {
        bridge
            .callwire
            .metric("callwire_clients{dialect=\"isymphony\"}")
            == 3
    });
    let login = r#"{"type":"login","time":1700000000001,"username":"mikey","seq":1}"#;
    bridge.stream(
        &mut witness,
        &[
            login,
            r#"{"type":"dial","seq":2}"#,
            r#"{"type":"logout","seq":3}"#,
        ],
    );
    // The frame is the payload itself, byte for byte.
    assert_eq!(recv_text(&mut long), login);
    assert_eq!(recv_text(&mut short), login);
    let got = bridge.collect(&mut [&mut long, &mut short]);
    assert_eq!(seqs(&got[0]), [3]);
    assert_eq!(seqs(&got[1]), [3]);
}

#[test]
fn a_credential_sees_only_its_own_accounts_events() {
    let bridge = Bridge::new(true, &[]);
    let mut witness = bridge.witness();
    let mut desk_a = bridge.connect(PATH, Some(DESK_A));
    let mut desk_b = bridge.connect("/ws/event", Some(DESK_B));
    let mut manager = bridge.connect(PATH, Some(MANAGER));
    let mut desk_a_logins = bridge.connect(PATH, Some(DESK_A));
    set_filters(&mut desk_a_logins, &[("type", "login")]);
    let a_login = format!(r#"{{"seq":1,"type":"login","Account-ID":"{ACCOUNT_A}"}}"#);
    let b_login = format!(r#"{{"seq":2,"type":"login","account_id":"{ACCOUNT_B}"}}"#);
    let a_dial = format!(
        r#"{{"seq":3,"type":"dial","Custom-Channel-Vars":{{"Account-ID":"{ACCOUNT_A}"}}}}"#
    );
    bridge.stream(
        &mut witness,
        &[
            &a_login,
            &b_login,
            &a_dial,
            r#"{"seq":4,"type":"login"}"#,
            "no account here",
        ],
    );
    let got = bridge.collect(&mut [&mut desk_a, &mut desk_b, &mut manager, &mut desk_a_logins]);
    assert_eq!(seqs(&got[0]), [1, 3]);
    assert_eq!(seqs(&got[1]), [2]);
    assert_eq!(got[2].len(), 5, "{:?}", got[2]);
    assert_eq!(seqs(&got[2][..4]), [1, 2, 3, 4]);
    assert_eq!(got[2][4], json!("no account here"));
    assert_eq!(seqs(&got[3]), [1]);
}

// ---------------------------------------------------------------------------------------------
// Routing cost, in process

#[test]
fn fan_out_checks_filters_without_allocating_and_shares_one_frame() {
    use callwire::auth::Auth;
    use callwire::cli::{Run, parse};
    use callwire::dialect::Session;
    use callwire::dialect::isymphony::{Filters, ISymphonySession};
    use callwire::dialect_label::Dialect;
    use callwire::event::Event;
    use callwire::hub::Hub;
    use callwire::metrics::Metrics;

    let sanity = allocations_during(|| {
        std::hint::black_box(Vec::<u8>::with_capacity(1));
    });
    assert!(sanity >= 1, "counting allocator missed a Vec allocation");

    let Ok(Run::Serve(config)) = parse(&["callwire".to_owned()]) else {
        panic!("default flags parse");
    };
    let hub = Hub::new(config.limits, Rc::new(Metrics::default()));
    let credential = Auth::open().by_secret(None).unwrap();
    let filter_sets: [&[(&str, &str)]; 5] = [
        &[("type", "dial")],
        &[("type", "login"), ("type", "logout"), ("username", "mikey")],
        &[("username", "*")],
        &[("priority", "16"), ("channel.caller.number", "100")],
        &[("queued", "true"), ("type", "nothing")],
    ];
    let mut clients = Vec::new();
    for i in 0..50 {
        let unbounded = callwire::limits::BytePool::new(usize::MAX).share();
        let filters = Filters::new(credential.clone(), 64, unbounded);
        let filters = std::rc::Rc::new(std::cell::RefCell::new(filters));
        let client = hub.register(Dialect::ISymphony, filters.clone()).unwrap();
        let mut session = ISymphonySession::new(client.clone(), filters);
        let mut replies = Vec::new();
        session.on_text(
            &filter(filter_sets[i % filter_sets.len()]).to_string(),
            &mut replies,
        );
        let response: Value = serde_json::from_str(replies[0].as_str()).unwrap();
        assert_eq!(response["status"], "success", "{response}");
        clients.push(client);
    }
    let payloads = [
        r#"{"type":"login","username":"mikey","time":1700000000001}"#,
        r#"{"type":"dial","username":"bob"}"#,
        r#"{"type":"userStatus","priority":16,"channel":{"caller":{"number":"100"}}}"#,
        r#"{"type":"linkEnd","queued":true,"priority":16.25}"#,
        "not JSON",
    ];
    let events: Vec<Event> = payloads
        .iter()
        .map(|p| Event::new("call.x".to_owned(), bytes::Bytes::from_static(p.as_bytes())))
        .collect();
    let mut taken = 0usize;
    let drain = |taken: &mut usize| {
        for client in &clients {
            while client.pop().is_some() {
                *taken += 1;
            }
        }
    };
    // Once, so the queues have their capacity.
    for event in &events {
        hub.publish(event);
    }
    drain(&mut taken);
    let first_round = taken;
    assert!(
        first_round > 0 && first_round < 50 * events.len(),
        "{first_round}"
    );

    // Events no client lets in: nothing at all is allocated.
    let rejected = Event::new(
        "call.x".to_owned(),
        bytes::Bytes::from_static(br#"{"type":"agentLogin","priority":"17"}"#),
    );
    let allocations = allocations_during(|| {
        for _ in 0..200 {
            hub.publish(&rejected);
        }
    });
    assert_eq!(allocations, 0, "checking filters allocated");

    // Events many clients take: the frame is the payload's own bytes, shared, so routing to 50
    // clients allocates no more than routing to one would.
    let allocations = allocations_during(|| {
        for _ in 0..20 {
            for event in &events {
                hub.publish(event);
            }
            drain(&mut taken);
        }
    });
    assert_eq!(taken, first_round * 21);
    assert!(
        allocations <= 20 * events.len(),
        "{allocations} allocations for {} events fanned out to 50 clients",
        20 * events.len()
    );
    for client in &clients {
        hub.unregister(client);
    }
}
