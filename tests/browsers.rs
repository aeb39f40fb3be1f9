//! Browsers and other origins (contract: docs/protocols/README.md, "Browsers and other origins";
//! live-api.md, "Catalogue"): the `Host` and `Origin` checks on every dialect, REST and the
//! dashboard, the hangup that no other site can send, the authentication deadline and its own
//! bound, unique secrets, the scoped catalogue, and the stricter request parsing. Everything over
//! real sockets against the real binary, with the shared Mosquitto as the source; the headless
//! Chromium check is in tests/dashboard.rs.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{
    Callwire, Credential, DIALECTS, Dialect, ISYMPHONY_PATH, Socket, Subscriber, TempFile,
    credentials, mosquitto_pub, recv, request, unique, wait_for,
};
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;

const BROKER_PORT: u16 = 1883;
const TIMEOUT: Duration = Duration::from_secs(10);
/// A valid `Sec-WebSocket-Key`: 16 bytes in base64 (RFC 6455's example nonce).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

const ACME: &str = "acacacacacacacacacacacacacacacac";
const OTHER: &str = "0707070707070707070707070707070f";

const CREDENTIALS: [Credential; 3] = [
    ("manager", "manag3r-s3cret", "*"),
    ("acme", "acm3-s3cret", ACME),
    ("other", "0th3r-s3cret", OTHER),
];

fn basic(name: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        data_encoding::BASE64.encode(format!("{name}:{secret}").as_bytes())
    )
}

/// Sends `text` as it is and reads the whole answer until the server closes (a refusal), or
/// only its head (a 101, which stays open); returns the status and all that was read.
fn raw(callwire: &Callwire, text: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", callwire.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(text.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => answer.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&answer).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status == 101 {
        return (status, head);
    }
    // A refusal: the body, then the end of the connection; nothing else may follow.
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    (status, head + &String::from_utf8_lossy(&rest))
}

/// An upgrade request on `path` with the extra header lines given.
fn upgrade_text(path: &str, lines: &[(&str, &str)]) -> String {
    let mut text = format!(
        "GET {path} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n"
    );
    for (name, value) in lines {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text + "\r\n"
}

/// A plain request with the header lines given (no `Host` unless given).
fn request_text(method: &str, path: &str, lines: &[(&str, &str)]) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in lines {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text + "\r\n"
}

fn forbidden(callwire: &Callwire, reason: &str) -> u64 {
    callwire.metric(&format!("callwire_forbidden_total{{reason=\"{reason}\"}}"))
}

fn limit_hits(callwire: &Callwire, limit: &str) -> u64 {
    callwire.metric(&format!("callwire_limit_hits_total{{limit=\"{limit}\"}}"))
}

/// A websocket opened with extra request headers; the server's 101 response too.
fn ws_with(callwire: &Callwire, path: &str, headers: &[(&str, &str)]) -> Socket {
    let mut req = format!("ws://127.0.0.1:{}{path}", callwire.port)
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        req.headers_mut()
            .insert(name, value.parse().expect("a header value"));
    }
    let (socket, response) = tungstenite::connect(req).expect("websocket upgrade");
    assert_eq!(response.status(), 101);
    if let tungstenite::stream::MaybeTlsStream::Plain(stream) = socket.get_ref() {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
    }
    socket
}

/// Shows that a socket is served in its dialect: a request and its answer.
fn assert_served(socket: &mut Socket, dialect: Dialect, secret: Option<&str>) {
    match dialect {
        Dialect::Blackhole => {
            let mut ask = json!({"action": "ping", "request_id": "p"});
            if let Some(secret) = secret {
                ask["auth_token"] = json!(secret);
            }
            let reply = request(socket, ask);
            assert_eq!(reply["status"], "success", "{reply}");
        }
        Dialect::ISymphony => {
            let reply = request(socket, json!({"type": "filter", "filters": []}));
            assert_eq!(reply["status"], "success", "{reply}");
        }
        Dialect::Cable => {
            let welcome = recv(socket);
            assert_eq!(welcome["type"], "welcome", "{welcome}");
            let mut identifier = json!({"channel": "ApiChannel"});
            if let Some(secret) = secret {
                identifier["key"] = json!(secret);
            }
            let identifier = identifier.to_string();
            socket
                .send(Message::text(
                    json!({"command": "subscribe", "identifier": identifier}).to_string(),
                ))
                .unwrap();
            let reply = loop {
                let frame = recv(socket);
                if frame["type"] != "ping" {
                    break frame;
                }
            };
            assert_eq!(reply["type"], "confirm_subscription", "{reply}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Must show 1: Origin on the upgrades of all three dialects

#[test]
fn a_foreign_origin_is_403_on_every_dialect_a_listed_or_own_one_or_none_is_101() {
    let prefix = unique("origins");
    let callwire = Callwire::start_mqtt(
        BROKER_PORT,
        &prefix,
        &["--allowed-origin", "https://wallboard.example"],
    );
    let own = format!("http://127.0.0.1:{}", callwire.port);
    let host = format!("127.0.0.1:{}", callwire.port);
    for dialect in DIALECTS {
        let path = dialect.path();
        for foreign in ["http://evil.example", "null", "http://127.0.0.1:1"] {
            let (status, answer) = raw(
                &callwire,
                &upgrade_text(path, &[("Host", &host), ("Origin", foreign)]),
            );
            assert_eq!(status, 403, "{path} {foreign}: {answer}");
            // One line of reason, a closed connection, and nothing of the dialect.
            let body = answer.split_once("\r\n\r\n").unwrap().1;
            let reason: Value = serde_json::from_str(body).expect("one JSON body, then EOF");
            assert!(
                reason["error"]
                    .as_str()
                    .unwrap()
                    .contains("--allowed-origin"),
                "{reason}"
            );
            assert!(!answer.contains("Sec-WebSocket-Accept"), "{answer}");
        }
        // Listed, own (the dashboard's), or none (a program): served.
        for origin in [Some("https://wallboard.example"), Some(own.as_str()), None] {
            let headers: Vec<(&str, &str)> = origin.iter().map(|o| ("Origin", *o)).collect();
            let mut socket = ws_with(&callwire, path, &headers);
            assert_served(&mut socket, dialect, None);
        }
    }
    assert_eq!(forbidden(&callwire, "origin"), 9);
    let log = callwire.log_text();
    assert!(
        log.contains("403 for GET") && log.contains("evil.example"),
        "{log}"
    );
    // Rate-limited: nine refusals within seconds are one line and a count.
    assert_eq!(log.matches("403 for ").count(), 1, "{log}");
}

// ---------------------------------------------------------------------------------------------
// Must show 2: Host (DNS rebinding), and the hangup no other site can send

#[test]
fn a_rebinding_host_is_403_on_rest_the_dashboard_and_upgrades_unless_allowed() {
    let rebound = [("Host", "rebind.attacker.test:58080")];
    let callwire = Callwire::start(&["--demo"]);
    for path in [
        "/rest/live/calls",
        "/",
        "/dashboard.js",
        "/v2/websockets",
        "/healthz",
    ] {
        let (status, answer) = raw(&callwire, &request_text("GET", path, &rebound));
        assert_eq!(status, 403, "{path}: {answer}");
        assert!(answer.contains("--allowed-host"), "{answer}");
    }
    for dialect in DIALECTS {
        let (status, answer) = raw(&callwire, &upgrade_text(dialect.path(), &rebound));
        assert_eq!(status, 403, "{dialect:?}: {answer}");
    }
    // Loopback names and addresses are the gateway's own.
    for host in ["localhost:1", "127.0.0.1", "[::1]:58080", "dash.localhost"] {
        let (status, _) = raw(&callwire, &request_text("GET", "/", &[("Host", host)]));
        assert_eq!(status, 200, "{host}");
    }
    assert_eq!(forbidden(&callwire, "host"), 8);

    let allowed = Callwire::start(&["--demo", "--allowed-host", "rebind.attacker.test"]);
    for path in ["/rest/live/calls", "/", "/v2/websockets"] {
        let (status, answer) = raw(&allowed, &request_text("GET", path, &rebound));
        assert_eq!(status, 200, "{path}: {answer}");
    }
    for dialect in DIALECTS {
        let (status, answer) = raw(&allowed, &upgrade_text(dialect.path(), &rebound));
        assert_eq!(status, 101, "{dialect:?}: {answer}");
    }
    assert_eq!(forbidden(&allowed, "host"), 0);

    // With --auth, the credential is what protects: the Host is not checked.
    let file = credentials(&CREDENTIALS);
    let with_auth = Callwire::start(&["--demo", "--auth", file.path()]);
    let (status, _) = raw(&with_auth, &request_text("GET", "/", &rebound));
    assert_eq!(status, 200);
}

/// A Kazoo call event of `account`.
fn kazoo(name: &str, call_id: &str, account: &str) -> String {
    json!({
        "Event-Name": name, "Call-ID": call_id, "Account-ID": account,
        "Call-Direction": "inbound",
        "Caller-ID-Number": "201", "Callee-ID-Number": "202",
    })
    .to_string()
}

/// Waits until /rest/live/calls lists `n` calls.
fn wait_calls(callwire: &Callwire, n: usize) {
    wait_for("the calls to be live", TIMEOUT, || {
        let (_, body) = callwire.http("GET", "/rest/live/calls", &[]);
        serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|calls| calls.as_array().map(Vec::len))
            == Some(n)
    });
}

/// A callwire fed from a unique MQTT prefix, hangups going to a unique command topic, with one
/// live call of ACME for each of `ids`; and a subscriber to its hangup commands that stops
/// after `seconds` of quiet.
fn start_with_calls(ids: &[&str], seconds: u32) -> (Callwire, Subscriber) {
    let prefix = unique("browsers-calls");
    let command_topic = unique("browsers-cmd");
    let callwire = Callwire::start_mqtt(BROKER_PORT, &prefix, &["--command-topic", &command_topic]);
    wait_for("the source", TIMEOUT, || callwire.healthz().0 == 200);
    for id in ids {
        let topic = format!("{prefix}/call/CHANNEL_CREATE/{id}");
        mosquitto_pub(BROKER_PORT, &topic, &kazoo("CHANNEL_CREATE", id, ACME));
    }
    wait_calls(&callwire, ids.len());
    let topic = format!("{command_topic}/hangup");
    let subscriber = Subscriber::start(BROKER_PORT, &topic, &["-W", &seconds.to_string()]);
    (callwire, subscriber)
}

/// The call ids of the hangup commands a subscriber received.
fn hangups(subscriber: Subscriber) -> Vec<String> {
    let (payloads, _) = subscriber.payloads();
    payloads
        .iter()
        .map(|payload| {
            let command: Value = serde_json::from_str(payload).unwrap();
            command["call_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn a_cross_origin_or_simple_hangup_is_403_and_publishes_nothing() {
    let (targeted, kept) = (unique("call-a"), unique("call-b"));
    let (callwire, subscriber) = start_with_calls(&[&targeted, &kept], 3);

    let host = format!("127.0.0.1:{}", callwire.port);
    let own = format!("http://{host}");
    let path = format!("/rest/live/calls/{targeted}/hangup");
    for (origin, content_type, reason) in [
        // What a page of another site can send without a preflight.
        (Some("http://evil.example"), Some("text/plain"), "origin"),
        (Some("http://evil.example"), None, "origin"),
        (
            Some("http://evil.example"),
            Some("application/json"),
            "origin",
        ),
        // A form or text body type is refused from anyone, no Origin or own.
        (None, Some("text/plain;charset=UTF-8"), "simple_request"),
        (
            None,
            Some("application/x-www-form-urlencoded"),
            "simple_request",
        ),
        (
            Some(own.as_str()),
            Some("multipart/form-data; boundary=x"),
            "simple_request",
        ),
    ] {
        let mut lines = vec![("Host", host.as_str())];
        lines.extend(origin.map(|o| ("Origin", o)));
        lines.extend(content_type.map(|c| ("Content-Type", c)));
        lines.push(("Content-Length", "0"));
        let before = forbidden(&callwire, reason);
        let (status, answer) = raw(&callwire, &request_text("POST", &path, &lines));
        assert_eq!(status, 403, "{origin:?} {content_type:?}: {answer}");
        assert!(!answer.contains(r#""status":"accepted""#), "{answer}");
        assert_eq!(
            forbidden(&callwire, reason),
            before + 1,
            "counted as {reason}"
        );
    }
    assert_eq!(forbidden(&callwire, "origin"), 3);
    assert_eq!(forbidden(&callwire, "simple_request"), 3);
    // The gateway's own page (JSON) and a program (no Origin, no body type) are served.
    let kept_path = format!("/rest/live/calls/{kept}/hangup");
    let lines = [
        ("Host", host.as_str()),
        ("Origin", own.as_str()),
        ("Content-Type", "application/json"),
    ];
    let (status, answer) = raw(&callwire, &request_text("POST", &kept_path, &lines));
    assert_eq!(status, 202, "{answer}");
    let (status, answer) = raw(
        &callwire,
        &request_text("POST", &kept_path, &[("Host", &host)]),
    );
    assert_eq!(status, 202, "{answer}");

    // On the broker: the two accepted hangups of the kept call, and nothing for the other.
    assert_eq!(hangups(subscriber), [kept.clone(), kept]);
}

// ---------------------------------------------------------------------------------------------
// Must show 4: the authentication deadline, its own bound, and unique secrets

/// A close frame's code, reading past anything else.
fn close_code(socket: &mut Socket) -> (Vec<Value>, Option<CloseCode>) {
    let mut frames = Vec::new();
    loop {
        match socket.read() {
            Ok(Message::Text(text)) => frames.push(serde_json::from_str(&text).unwrap()),
            Ok(Message::Close(frame)) => return (frames, frame.map(|f| f.code)),
            Ok(_) => {}
            Err(err) => panic!("no close frame: {err} after {frames:?}"),
        }
    }
}

#[test]
fn sockets_that_never_authenticate_are_closed_at_the_deadline_and_leave_the_clients_seats_free() {
    let file = credentials(&CREDENTIALS);
    // A quiet source: the iSymphony client below must hear its own answers, not calls.
    let prefix = unique("deadline");
    let callwire = Callwire::start_mqtt(
        BROKER_PORT,
        &prefix,
        &[
            "--auth",
            file.path(),
            "--auth-timeout",
            "3",
            "--max-clients",
            "2",
            "--max-unauthenticated",
            "51",
        ],
    );
    // 50 sockets that never authenticate: 25 Blackhole ones that ask without a token (and
    // answer pings), 25 ActionCable ones that say nothing.
    let mut waiting: Vec<(Dialect, Socket)> = Vec::new();
    for i in 0..50 {
        let dialect = [Dialect::Blackhole, Dialect::Cable][i % 2];
        let mut socket = callwire.ws(dialect.path());
        if dialect == Dialect::Blackhole {
            let reply = request(&mut socket, json!({"action": "ping", "request_id": i}));
            assert_eq!(
                reply["data"]["errors"],
                json!(["authentication token required"])
            );
        }
        waiting.push((dialect, socket));
    }

    // Meanwhile, clients with a credential get both seats of --max-clients 2: an iSymphony
    // one authenticates on its upgrade; a Blackhole one waits on the 51st unauthenticated
    // seat only until its first request, then moves to a client's seat.
    let mut isymphony = ws_with(
        &callwire,
        ISYMPHONY_PATH,
        &[("Authorization", &basic("manager", "manag3r-s3cret"))],
    );
    assert_served(&mut isymphony, Dialect::ISymphony, None);
    let mut blackhole = callwire.ws("/");
    assert_served(&mut blackhole, Dialect::Blackhole, Some("acm3-s3cret"));
    let (status, _) = raw(
        &callwire,
        &upgrade_text(
            ISYMPHONY_PATH,
            &[("Authorization", &basic("other", "0th3r-s3cret"))],
        ),
    );
    assert_eq!(status, 503, "--max-clients 2 are taken");
    assert_eq!(limit_hits(&callwire, "max_clients"), 1);

    // The Blackhole client gave its waiting seat back: one more may wait, then none.
    waiting.push((Dialect::Cable, callwire.ws("/cable")));
    let (status, answer) = raw(&callwire, &upgrade_text("/", &[]));
    assert_eq!(status, 503, "{answer}");
    assert!(answer.contains("waiting to authenticate"), "{answer}");
    assert_eq!(limit_hits(&callwire, "max_unauthenticated"), 1);

    // At the deadline, each of the 51 gets its dialect's refusal, then 1008.
    for (dialect, socket) in &mut waiting {
        let (frames, code) = close_code(socket);
        assert_eq!(code, Some(CloseCode::Policy), "{dialect:?} {frames:?}");
        let last = frames.last().expect("a refusal before the close");
        match dialect {
            Dialect::Blackhole => {
                assert_eq!(last["status"], "error", "{last}");
                assert_eq!(
                    last["data"]["errors"],
                    json!(["authentication token required"])
                );
            }
            _ => assert_eq!(
                *last,
                json!({"type": "disconnect", "reason": "unauthorized", "reconnect": false})
            ),
        }
    }
    assert_eq!(limit_hits(&callwire, "auth_timeout"), 51);
    // The authenticated clients are still served, well past the deadline.
    assert_served(&mut isymphony, Dialect::ISymphony, None);
    let reply = request(&mut blackhole, json!({"action": "ping"}));
    assert_eq!(reply["status"], "success", "{reply}");
    wait_for("the 51 to be gone", TIMEOUT, || {
        callwire.healthz().1["clients"] == json!(2)
    });
}

#[test]
fn a_socket_that_authenticates_in_time_stays_and_takes_a_clients_seat() {
    let file = credentials(&CREDENTIALS);
    let callwire = Callwire::start(&[
        "--demo",
        "--auth",
        file.path(),
        "--auth-timeout",
        "2",
        "--max-clients",
        "1",
    ]);
    let mut cable = callwire.ws("/cable");
    assert_served(&mut cable, Dialect::Cable, Some("acm3-s3cret"));
    // It took the one seat: a second socket that authenticates is closed with 1013.
    let mut late = callwire.ws("/");
    let reply = request(
        &mut late,
        json!({"action": "ping", "auth_token": "0th3r-s3cret"}),
    );
    assert_eq!(reply["status"], "success", "{reply}");
    let (_, code) = close_code(&mut late);
    assert_eq!(code, Some(CloseCode::Again));
    // Past the deadline, the authenticated one is still served.
    std::thread::sleep(Duration::from_secs(3));
    cable.send(Message::Ping(Vec::new().into())).unwrap();
    loop {
        match cable.read().expect("still open") {
            Message::Pong(_) => break,
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
    assert_eq!(limit_hits(&callwire, "auth_timeout"), 0);
}

#[test]
fn two_credentials_with_one_secret_exit_2_at_start_and_are_refused_on_sighup() {
    let duplicated = json!({"credentials": [
        {"name": "desk", "secret": "sh4red-s3cret", "account": ACME},
        {"name": "manager", "secret": "sh4red-s3cret", "account": "*"},
    ]})
    .to_string();
    let file = TempFile::new("callwire-dup-", &duplicated);
    let output = Command::new(env!("CARGO_BIN_EXE_callwire"))
        .args(["--demo", "--listen", "127.0.0.1:0", "--auth", file.path()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("credentials[1] (manager)") && stderr.contains("credentials[0] (desk)"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("sh4red"),
        "the secret is never shown: {stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // Running, then the file gains a duplicate: SIGHUP keeps the old credentials.
    let file = credentials(&CREDENTIALS);
    let callwire = Callwire::start(&["--demo", "--auth", file.path()]);
    let bearer = |secret: &str| format!("Bearer {secret}");
    assert_eq!(
        callwire
            .http(
                "GET",
                "/rest/live/calls",
                &[("Authorization", &bearer("acm3-s3cret"))]
            )
            .0,
        200
    );
    std::fs::write(&file.0, &duplicated).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &callwire.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for("the SIGHUP line", TIMEOUT, || {
        callwire.log_text().contains("SIGHUP:")
    });
    let log = callwire.log_text();
    let line = log.lines().find(|l| l.contains("SIGHUP:")).unwrap();
    assert!(
        line.contains("kept the credentials in force") && line.contains("same secret"),
        "{line}"
    );
    assert!(!log.contains("sh4red"), "{log}");
    for (secret, expected) in [
        ("acm3-s3cret", 200),
        ("manag3r-s3cret", 200),
        ("sh4red-s3cret", 401),
    ] {
        let auth = bearer(secret);
        let status = callwire
            .http("GET", "/rest/live/calls", &[("Authorization", &auth)])
            .0;
        assert_eq!(status, expected, "{secret}");
    }
}

#[test]
fn an_empty_credentials_list_loads_with_a_warning_and_lets_nobody_in() {
    let file = TempFile::new("callwire-empty-", r#"{"credentials": []}"#);
    let callwire = Callwire::start(&["--demo", "--auth", file.path()]);
    let log = callwire.log_text();
    assert!(
        log.contains("holds no credentials: nobody can log in"),
        "{log}"
    );
    assert_eq!(callwire.http("GET", "/rest/live/calls", &[]).0, 401);
}

// ---------------------------------------------------------------------------------------------
// Must show 5: the catalogue's scope, and each parsing rule

#[test]
fn the_catalogue_shows_families_only_to_a_credential_of_their_account() {
    let prefix = unique("catalogue");
    let file = credentials(&CREDENTIALS);
    let callwire = Callwire::start_mqtt(BROKER_PORT, &prefix, &["--auth", file.path()]);
    wait_for("the source", TIMEOUT, || callwire.healthz().0 == 200);
    for (key, account) in [
        ("acmeCorpSecretProject/CALL_PARKED/x1", ACME),
        ("otherTenantFamily/THING/y1", OTHER),
    ] {
        let payload = json!({"Account-ID": account, "n": 1}).to_string();
        mosquitto_pub(BROKER_PORT, &format!("{prefix}/{key}"), &payload);
    }
    let families = |headers: &[(&str, &str)]| -> Vec<String> {
        let (status, body) = callwire.http("GET", "/v2/websockets", headers);
        assert_eq!(status, 200, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        let mut keys: Vec<String> = body["data"].as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let manager = basic("manager", "manag3r-s3cret");
    wait_for("both families", TIMEOUT, || {
        families(&[("Authorization", &manager)]).len() == 3
    });
    assert_eq!(families(&[]), ["call"], "no credential: the templates only");
    let acme = basic("acme", "acm3-s3cret");
    assert_eq!(
        families(&[("Authorization", &acme)]),
        ["acmeCorpSecretProject", "call"]
    );
    assert_eq!(
        families(&[("Authorization", "Bearer 0th3r-s3cret")]),
        ["call", "otherTenantFamily"]
    );
    let (_, body) = callwire.http("GET", "/v2/websockets", &[]);
    assert!(!body.contains("acmeCorpSecretProject"), "{body}");
    let (status, _) = callwire.http("GET", "/v2/websockets", &[("Authorization", "Bearer nope")]);
    assert_eq!(status, 401);
}

#[test]
fn upgrades_need_http_1_1_and_a_16_byte_key() {
    let callwire = Callwire::start(&["--demo"]);
    for dialect in DIALECTS {
        let path = dialect.path();
        let valid = upgrade_text(path, &[("Host", "localhost")]);
        let http10 = valid.replacen("HTTP/1.1", "HTTP/1.0", 1);
        let (status, answer) = raw(&callwire, &http10);
        assert_eq!(status, 400, "{answer}");
        assert!(answer.contains("HTTP/1.1"), "{answer}");
        for key in [
            "abc",
            "YWJj",
            "dGhlIHNhbXBsZSBub25j",
            "dGhlIHNhbXBsZSBub25jZXg=",
            "!!!!",
        ] {
            let text = valid.replace(KEY, key);
            let (status, answer) = raw(&callwire, &text);
            assert_eq!(status, 400, "{key}: {answer}");
            assert!(answer.contains("16 bytes"), "{answer}");
        }
        let twice = valid.replace("\r\n\r\n", &format!("\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"));
        assert_eq!(raw(&callwire, &twice).0, 400, "two keys");
        assert_eq!(raw(&callwire, &valid).0, 101, "{path}");
    }
}

#[test]
fn conflicting_or_overflowing_content_lengths_are_400_and_nothing_is_published() {
    let id = unique("call");
    let (callwire, subscriber) = start_with_calls(&[&id], 2);
    let path = format!("/rest/live/calls/{id}/hangup");
    for lengths in [
        &["0", "5"][..],
        &["0, 5"],
        &["18446744073709551616"],
        &["99999999999999999999999999"],
        &["-1"],
        &["0x10"],
        &[""],
    ] {
        let mut lines = vec![("Host", "localhost")];
        lines.extend(lengths.iter().map(|l| ("Content-Length", *l)));
        let (status, answer) = raw(&callwire, &request_text("POST", &path, &lines));
        assert_eq!(status, 400, "{lengths:?}: {answer}");
    }
    assert_eq!(hangups(subscriber), Vec::<String>::new());
    // The same length twice is one length.
    let lines = [
        ("Host", "localhost"),
        ("Content-Length", "0"),
        ("Content-Length", "0"),
    ];
    let (status, answer) = raw(&callwire, &request_text("GET", "/rest/live/calls", &lines));
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn subprotocols_offered_on_several_lines_are_combined() {
    let callwire = Callwire::start(&["--demo"]);
    let text = upgrade_text(
        "/cable",
        &[
            ("Host", "localhost"),
            ("Sec-WebSocket-Protocol", "actioncable-unsupported"),
            ("Sec-WebSocket-Protocol", "actioncable-v1-json"),
        ],
    );
    let (status, head) = raw(&callwire, &text);
    assert_eq!(status, 101, "{head}");
    assert!(
        head.contains("Sec-WebSocket-Protocol: actioncable-v1-json\r\n"),
        "{head}"
    );
    // So is `Connection` split over two lines.
    let text = upgrade_text("/", &[("Host", "localhost")]).replace(
        "Connection: Upgrade\r\n",
        "Connection: keep-alive\r\nConnection: Upgrade\r\n",
    );
    assert_eq!(raw(&callwire, &text).0, 101);
}
