//! The AMQP source end to end: the real binary against the RabbitMQ on 127.0.0.1:5672
//! (guest/guest), events published with the real lapin client, Blackhole clients on the other
//! side. Each test uses an exchange of its own (deleted at the end); callwire's queues are
//! server-named, exclusive and auto-delete. Broker outages are made with a small TCP proxy the
//! test can cut.

mod common;

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use async_rs::Runtime;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{Value, json};
use tungstenite::Message;

use common::kazoo_reference::blackhole_data;
use common::proxy::Proxy;
use common::{Callwire, Socket, drain, request, set_read_timeout, unique, wait_for};

const RABBIT_PORT: u16 = 5672;

fn url(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

// ---------------------------------------------------------------------------------------------
// A real AMQP client for the test's side

/// A lapin connection straight to RabbitMQ (never through the proxy), with publisher confirms,
/// that deletes the test's exchange when dropped.
struct Client {
    _conn: Connection,
    channel: Channel,
    exchange: String,
}

impl Client {
    fn connect(exchange: &str) -> Client {
        smol::block_on(async {
            let conn = Connection::connect_with_runtime(
                &url(RABBIT_PORT),
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
            Client {
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

    /// Publishes messages `from..to` without waiting between them, then waits for every
    /// confirm. Message `n` goes to `burst.<n>` as `{"n":<n>,"filler":"x..."}` with `filler`
    /// bytes of filler.
    fn publish_burst(&self, from: usize, to: usize, filler: usize) {
        let filler = "x".repeat(filler);
        smol::block_on(async {
            let mut confirms = Vec::with_capacity(to - from);
            for i in from..to {
                let payload = format!(r#"{{"n":{i},"filler":"{filler}"}}"#);
                let confirm = self
                    .channel
                    .basic_publish(
                        self.exchange.as_str().into(),
                        format!("burst.{i}").as_str().into(),
                        BasicPublishOptions::default(),
                        payload.as_bytes(),
                        BasicProperties::default(),
                    )
                    .await
                    .expect("publish");
                confirms.push(confirm);
            }
            for confirm in confirms {
                confirm.await.expect("confirm");
            }
        });
    }

    fn declare(&self, kind: ExchangeKind) {
        smol::block_on(async {
            self.channel
                .exchange_declare(
                    self.exchange.as_str().into(),
                    kind,
                    ExchangeDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        });
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = smol::block_on(self.channel.exchange_delete(
            self.exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn subscribe(socket: &mut Socket, binding: &str) {
    let reply = request(
        socket,
        json!({"action": "subscribe", "data": {"binding": binding}}),
    );
    assert_eq!(reply["status"], "success", "{reply}");
}

fn degraded(callwire: &Callwire) -> bool {
    let (status, body) = callwire.healthz();
    status == 503 && body["status"] == "degraded" && body["source"]["connected"] == false
}

/// Waits for the AMQP source to connect.
fn wait_connected(callwire: &Callwire) {
    callwire.wait_connected(Duration::from_secs(15));
    assert_eq!(callwire.healthz().1["source"]["kind"], "amqp");
}

/// The next text frame, raw (to compare payload bytes) and parsed.
fn frame(socket: &mut Socket) -> (String, Value) {
    loop {
        match socket.read().expect("a frame before the timeout") {
            Message::Text(text) => {
                let value = serde_json::from_str(&text).expect("a JSON frame");
                return (text.to_string(), value);
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads the next event and checks its routing key, its binding, and its data: Kazoo's
/// normalised form of an object payload, any other payload byte for byte.
fn expect_event(socket: &mut Socket, routing_key: &str, binding: &str, payload: &str) {
    let (raw, event) = frame(socket);
    assert_eq!(event["action"], "event", "{raw}");
    assert_eq!(event["routing_key"], routing_key, "{raw}");
    assert_eq!(event["subscribed_key"], binding, "{raw}");
    match serde_json::from_str::<Value>(payload) {
        Ok(Value::Object(_)) => {
            assert_eq!(event["data"], blackhole_data(payload.as_bytes()), "{raw}")
        }
        _ => assert!(
            raw.contains(&format!(r#""data":{payload}}}"#)),
            "payload not verbatim: {raw}"
        ),
    }
}

fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
                .map(|name| name.trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn amqp_events_reach_blackhole_clients_with_keys_unchanged_and_kazoos_data() {
    let exchange = unique("callwire-test-");
    let client = Client::connect(&exchange);
    let callwire = Callwire::start(&[
        "--amqp",
        &url(RABBIT_PORT),
        "--amqp-exchange",
        &exchange,
        "--amqp-binding",
        "FreeSWITCH.#",
        "--amqp-binding",
        "call.#",
        "--max-message-size",
        "4096",
    ]);
    wait_connected(&callwire);
    let mut fs = callwire.ws("/");
    let mut call = callwire.ws("/blackhole");
    let mut all = callwire.ws("/");
    subscribe(&mut fs, "FreeSWITCH.*.CHANNEL_CREATE.#");
    subscribe(&mut call, "call.*.*");
    subscribe(&mut all, "#");

    let uuid = "7f4de4bc-17d7-11dd-b7a0-db4edd065621";
    let fs_key = format!("FreeSWITCH.pbx01.CHANNEL_CREATE..{uuid}");
    let fs_payload = format!(
        r#"{{"Event-Name":"CHANNEL_CREATE","Unique-ID":"{uuid}", "Caller-Caller-ID-Number" : "1001","Event-Date-Timestamp":"1700000000000000","n":1.50,"u":"caf\u00e9 \"q\""}}"#
    );
    client.publish(&fs_key, fs_payload.as_bytes());
    expect_event(
        &mut fs,
        &fs_key,
        "FreeSWITCH.*.CHANNEL_CREATE.#",
        &fs_payload,
    );
    expect_event(&mut all, &fs_key, "#", &fs_payload);

    let answer_payload = r#"{"Event-Name" :  "CHANNEL_ANSWER",  "Call-ID":"abc", "n": 1.50e0}"#;
    client.publish("call.CHANNEL_ANSWER.abc", answer_payload.as_bytes());
    // Not bound by callwire's queue: the broker never routes it to callwire.
    client.publish("other.CHANNEL_ANSWER.abc", br#"{"unbound":true}"#);
    // Too large: acked, dropped and counted; what follows still arrives.
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(5000));
    client.publish("call.big.x", big.as_bytes());
    let odd_key = "call.a..b.";
    let odd_payload = r#"[1, 2 ,3]"#;
    client.publish(odd_key, odd_payload.as_bytes());

    expect_event(
        &mut call,
        "call.CHANNEL_ANSWER.abc",
        "call.*.*",
        answer_payload,
    );
    expect_event(&mut all, "call.CHANNEL_ANSWER.abc", "#", answer_payload);
    // One queue, in order: had the unbound or the big one been delivered, it would come first.
    expect_event(&mut all, odd_key, "#", odd_payload);

    assert!(drain(&mut fs, Duration::from_millis(300)).is_empty());
    assert!(drain(&mut call, Duration::from_millis(100)).is_empty());
    assert!(drain(&mut all, Duration::from_millis(100)).is_empty());
    assert_eq!(
        callwire.metric("callwire_events_dropped_total{reason=\"too_large\"}"),
        1
    );
    assert_eq!(
        callwire.metric("callwire_events_in_total{source=\"amqp\"}"),
        3
    );
    let log = callwire.log_text();
    assert!(
        log.contains("dropped a 5010 byte message on 'call.big.x'"),
        "{log}"
    );
    assert!(!log.contains(":guest@"), "{log}");

    let names = thread_names(callwire.pid());
    eprintln!("threads in AMQP mode: {} {names:?}", names.len());
    assert!(!names.iter().any(|n| n.starts_with("tokio")), "{names:?}");
}

#[test]
fn amqp_burst_beyond_the_prefetch_window_is_consumed_whole() {
    let exchange = unique("callwire-test-");
    let client = Client::connect(&exchange);
    let callwire = Callwire::start(&["--amqp", &url(RABBIT_PORT), "--amqp-exchange", &exchange]);
    wait_connected(&callwire);
    // Ten prefetch windows: delivery would stop after the first without working acks.
    client.publish_burst(0, 2560, 0);
    wait_for("the whole burst", Duration::from_secs(15), || {
        callwire.metric("callwire_events_in_total{source=\"amqp\"}") == 2560
    });
    // Every delivery acked, as the broker counts them.
    let queue = queue_name(&callwire);
    wait_for("no unacked messages", Duration::from_secs(10), || {
        unacked(&queue) == Some(0)
    });
    let mut socket = callwire.ws("/");
    subscribe(&mut socket, "#");
    client.publish("after.burst", br#"{"last":true}"#);
    expect_event(&mut socket, "after.burst", "#", r#"{"last":true}"#);
}

/// The name of callwire's queue, from its log.
fn queue_name(callwire: &Callwire) -> String {
    let log = callwire.log_text();
    log.split("queue '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or_else(|| panic!("no queue name in the log: {log}"))
        .to_owned()
}

/// The broker's count of delivered, unacknowledged messages on `queue` (`rabbitmqctl`).
fn unacked(queue: &str) -> Option<u64> {
    queue_count(queue, "messages_unacknowledged")
}

/// One of the broker's counts for `queue`, such as `messages_ready` (`rabbitmqctl`).
fn queue_count(queue: &str, column: &str) -> Option<u64> {
    let output = Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "name", column])
        .stdin(Stdio::null())
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            let (name, count) = line.split_once('\t')?;
            (name == queue).then(|| count.trim().parse().ok())?
        })
}

/// A backlog of 10,000 messages of 1 KB waiting in callwire's queue while a client that never
/// reads holds the source: the reader beside it gets every one in order once the non-reader is
/// closed as too slow, and nothing is dropped for it. (callwire's queue is server-named and
/// exclusive, so it cannot exist before callwire connects; the backlog builds behind the
/// stall instead, and the test reads it off the broker.)
#[test]
fn amqp_backlog_reaches_a_reader_whole_while_a_non_reader_is_closed_in_time() {
    const AHEAD: usize = 1000;
    const BACKLOG: usize = 10_000;
    let exchange = unique("callwire-test-");
    let client = Client::connect(&exchange);
    let stall = Duration::from_secs(10);
    let callwire = Callwire::start(&[
        "--amqp",
        &url(RABBIT_PORT),
        "--amqp-exchange",
        &exchange,
        "--stall-timeout",
        "10",
    ]);
    wait_connected(&callwire);
    let mut reader = callwire.ws("/");
    let mut idle = callwire.ws("/");
    subscribe(&mut reader, "#");
    subscribe(&mut idle, "#");
    // The reader waits out the stall.
    set_read_timeout(&reader, stall * 2);
    let reading = thread::spawn(move || {
        for n in 0..AHEAD + BACKLOG {
            let (raw, event) = frame(&mut reader);
            assert_eq!(event["data"]["n"], n, "missed or reordered: {raw}");
        }
        reader
    });
    // Enough to fill what the non-reader's socket holds and then its queue: from here on the
    // source waits for it.
    client.publish_burst(0, AHEAD, 1000);
    wait_for("the non-reader to hold the source", stall, || {
        let taken = callwire.metric("callwire_events_in_total{source=\"amqp\"}");
        thread::sleep(Duration::from_millis(200));
        taken == callwire.metric("callwire_events_in_total{source=\"amqp\"}")
    });
    let held = Instant::now();
    client.publish_burst(AHEAD, AHEAD + BACKLOG, 1000);
    let queue = queue_name(&callwire);
    let ready = queue_count(&queue, "messages_ready").unwrap_or(0);
    eprintln!("waiting in callwire's queue behind the stall: {ready}");
    assert!(
        ready as usize >= BACKLOG,
        "only {ready} messages waited in the queue"
    );
    callwire.wait_stall_close(
        (held + stall + Duration::from_secs(5)).saturating_duration_since(Instant::now()),
    );
    let reader = reading.join().unwrap();
    assert!(callwire.metric("callwire_events_dropped_total{reason=\"slow_client\"}") >= 32);
    callwire.assert_stall_settled(1);
    drop((reader, idle));
}

#[test]
fn amqp_recovers_from_a_cut_link_without_the_clients_noticing() {
    let exchange = unique("callwire-test-");
    let client = Client::connect(&exchange);
    let proxy = Proxy::start(RABBIT_PORT, true);
    let callwire = Callwire::start(&[
        "--amqp",
        &url(proxy.port),
        "--amqp-exchange",
        &exchange,
        "--amqp-binding",
        "call.#",
    ]);
    wait_connected(&callwire);
    let mut socket = callwire.ws("/");
    subscribe(&mut socket, "call.#");
    client.publish("call.before.1", br#"{"n":1}"#);
    expect_event(&mut socket, "call.before.1", "call.#", r#"{"n":1}"#);
    assert_eq!(
        callwire.metric("callwire_source_reconnects_total{source=\"amqp\"}"),
        0
    );

    proxy.cut();
    wait_for(
        "/healthz to report the cut",
        Duration::from_secs(10),
        || degraded(&callwire),
    );
    // Let at least one reconnect be refused.
    wait_for("a refused reconnect", Duration::from_secs(10), || {
        callwire.log_text().contains("cannot connect")
    });
    assert!(degraded(&callwire));
    proxy.resume();
    wait_connected(&callwire);

    // The same socket, never reconnected, gets what is published after the recovery: the new
    // queue is bound again.
    client.publish("call.after.2", br#"{"n": 2}"#);
    expect_event(&mut socket, "call.after.2", "call.#", r#"{"n": 2}"#);
    client.publish("call..3", br#""three""#);
    expect_event(&mut socket, "call..3", "call.#", r#""three""#);
    assert!(callwire.metric("callwire_source_reconnects_total{source=\"amqp\"}") >= 1);
    assert_eq!(
        callwire.metric("callwire_source_connected{source=\"amqp\"}"),
        1
    );
    // The cut connection's I/O thread is gone: one lapin thread, whatever the reconnects.
    wait_for("one lapin I/O thread", Duration::from_secs(5), || {
        let names = thread_names(callwire.pid());
        names.iter().filter(|n| *n == "lapin-io-loop").count() == 1 && names.len() <= 3
    });
    let log = callwire.log_text();
    assert!(!log.contains(":guest@") && !log.contains("guest:"), "{log}");
}

#[test]
fn amqp_notices_a_silently_dead_link_by_heartbeat() {
    let exchange = unique("callwire-test-");
    let client = Client::connect(&exchange);
    let proxy = Proxy::start(RABBIT_PORT, true);
    let url = format!("{}?heartbeat=1", url(proxy.port));
    let callwire = Callwire::start(&["--amqp", &url, "--amqp-exchange", &exchange]);
    wait_connected(&callwire);
    let mut socket = callwire.ws("/");
    subscribe(&mut socket, "#");
    client.publish("call.before", br#"{"n":1}"#);
    expect_event(&mut socket, "call.before", "#", r#"{"n":1}"#);

    // Nothing closes: only the missing heartbeats can tell.
    proxy.freeze_existing();
    wait_for(
        "/healthz to report the dead link",
        Duration::from_secs(10),
        || degraded(&callwire),
    );
    wait_connected(&callwire);
    client.publish("call.after", br#"{"n":2}"#);
    expect_event(&mut socket, "call.after", "#", r#"{"n":2}"#);
    assert!(
        callwire.log_text().contains("lost"),
        "{}",
        callwire.log_text()
    );
    // The dead connection's I/O thread did not stay behind.
    wait_for("one lapin I/O thread", Duration::from_secs(5), || {
        let names = thread_names(callwire.pid());
        names.iter().filter(|n| *n == "lapin-io-loop").count() == 1
    });
}

#[test]
fn amqp_broker_absent_at_start_up_is_waited_for() {
    let exchange = unique("callwire-test-");
    let client = Client::connect(&exchange);
    let proxy = Proxy::start(RABBIT_PORT, false);
    let callwire = Callwire::start(&["--amqp", &url(proxy.port), "--amqp-exchange", &exchange]);
    let mut socket = callwire.ws("/");
    let pong = request(&mut socket, json!({"action": "ping", "request_id": "p1"}));
    assert_eq!(pong["data"]["response"], "pong", "{pong}");
    wait_for("a refused connect", Duration::from_secs(10), || {
        callwire.log_text().contains("cannot connect")
    });
    assert!(degraded(&callwire), "{:?}", callwire.healthz());
    // Nothing but the main thread and the reactor while the broker is away.
    let names = thread_names(callwire.pid());
    assert!(!names.iter().any(|n| n == "lapin-io-loop"), "{names:?}");

    proxy.resume();
    wait_connected(&callwire);
    subscribe(&mut socket, "#");
    client.publish(
        "call.CHANNEL_CREATE.late",
        br#"{"Event-Name":"CHANNEL_CREATE"}"#,
    );
    expect_event(
        &mut socket,
        "call.CHANNEL_CREATE.late",
        "#",
        r#"{"Event-Name":"CHANNEL_CREATE"}"#,
    );
    assert_eq!(recv_nothing(&mut socket), 0);
}

fn recv_nothing(socket: &mut Socket) -> usize {
    drain(socket, Duration::from_millis(200)).len()
}

#[test]
fn amqp_exchange_of_another_type_is_a_clear_error() {
    let exchange = unique("callwire-test-");
    let client = Client::connect(&exchange);
    client.declare(ExchangeKind::Fanout);
    let callwire = Callwire::start(&["--amqp", &url(RABBIT_PORT), "--amqp-exchange", &exchange]);
    wait_for("the type error in the log", Duration::from_secs(10), || {
        callwire.log_text().contains("is not a topic exchange")
    });
    assert!(degraded(&callwire));
    let log = callwire.log_text();
    let line = log
        .lines()
        .find(|line| line.contains("is not a topic exchange"))
        .unwrap();
    assert!(line.starts_with("error"), "{line}");
    assert!(line.contains(&exchange), "{line}");
    assert!(line.contains("retrying in"), "{line}");
}

#[test]
fn amqp_bad_url_exits_2_naming_the_flag() {
    let output = Command::new(env!("CARGO_BIN_EXE_callwire"))
        .args(["--amqp", "nonsense://x", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .expect("callwire runs");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--amqp"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_callwire"))
        .args([
            "--amqp",
            "amqp://bob:hunter2@h:99999/",
            "--listen",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("callwire runs");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--amqp") && !stderr.contains("hunter2"),
        "{stderr}"
    );
}
