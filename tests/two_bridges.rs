//! Two bridges, one site (README, "More than one gateway"; delivery.md, "Streams"): two
//! callwire instances read one RabbitMQ stream (`--amqp-stream`) on the shared broker, behind
//! HAProxy started from the repo's `deploy/haproxy/callwire.cfg` (addresses given through its
//! environment variables, `balance first` so every client lands on the first bridge).
//! `callwire simulate` publishes to the exchange; a resuming Blackhole client (`since`) and the
//! real `@anycable/core` client connect through HAProxy. Midway the bridge serving them is
//! killed with `kill -9`: both reconnect through HAProxy to the other bridge and resume there
//! (`recovered: true`, `confirm_history`), and each gets every event `simulate` published
//! (its own count of what the broker confirmed) exactly once, in order, under the stream's
//! epoch. The stream and the exchange are deleted at the end.
//!
//! A resume older than a bridge's history (a tiny `--history-bytes`) is read from the stream:
//! Blackhole's `since` gets `recovered: true`, every matching event once, in order, then live
//! ones; an AnyCable `history` request (the extended protocol, spoken directly) gets its
//! frames then `confirm_history`; peak memory within the budget. One too large for the replay
//! room is told `recovered: false` and counted.
//!
//! And one bridge alone: its broker connection cut (a TCP proxy) and then a SIGTERM restart
//! with `--state-dir`, while `simulate` publishes: it reads the stream on from the offset
//! after the last event it handed on, each time, so its resuming client gets every event once.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use serde_json::{Value, json};

use common::proxy::Proxy;
use common::resuming::{Client, Seen, published};
use common::script::Script;
use common::{
    Callwire, TempFile, drain, free_port, recv, request, send, status_bytes, unique, wait_for,
};

const MANAGER: &str = "manag3rpa55word";
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The test's exchange and stream on the shared RabbitMQ, deleted when dropped (a stream
/// stays on the broker's disk otherwise).
struct Names {
    exchange: String,
    stream: String,
}

impl Names {
    /// A fresh exchange and stream named after `what`, with the manager's credentials file,
    /// and the epoch the stream's positions carry.
    fn site(what: &str) -> (Names, String, TempFile) {
        let names = Names {
            exchange: unique(&format!("{what}-x-")),
            stream: unique(&format!("{what}-s-")),
        };
        let epoch = format!("stream:{}", names.stream);
        let creds =
            json!({"credentials": [{"name": "manager", "secret": MANAGER, "account": "*"}]});
        let creds = TempFile::new(&format!("callwire-{what}-creds-"), &creds.to_string());
        (names, epoch, creds)
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        smol::block_on(async {
            let Ok(conn) = Connection::connect_with_runtime(
                AMQP_URL,
                ConnectionProperties::default(),
                async_rs::Runtime::smol(),
            )
            .await
            else {
                return;
            };
            if let Ok(channel) = conn.create_channel().await {
                let _ = (channel
                    .queue_delete(self.stream.as_str().into(), QueueDeleteOptions::default()))
                .await;
                let _ = (channel.exchange_delete(
                    self.exchange.as_str().into(),
                    ExchangeDeleteOptions::default(),
                ))
                .await;
            }
            let _ = conn.close(200, "done".into()).await;
        });
    }
}

/// HAProxy from the repo's config, in the foreground, stopped when dropped.
struct Haproxy {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Haproxy {
    fn start(gateways: [u16; 2]) -> Haproxy {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy/callwire.cfg");
        let port = free_port();
        let log = std::env::temp_dir().join(format!("{}.log", unique("haproxy-two-bridges-")));
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&config)
            .env("CALLWIRE_FRONT", format!("127.0.0.1:{port}"))
            .env("CALLWIRE_GW1", format!("127.0.0.1:{}", gateways[0]))
            .env("CALLWIRE_GW2", format!("127.0.0.1:{}", gateways[1]))
            .env("CALLWIRE_STATS", format!("127.0.0.1:{}", free_port()))
            .env("CALLWIRE_BALANCE", "first")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("haproxy starts (apt-get install haproxy; tests/run installs it)");
        Haproxy { child, port, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /healthz` through HAProxy.
    fn healthz(&self) -> Option<u16> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let request = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        answer.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A bridge's flags: reading the test's stream, bound with `#`.
fn stream_args<'a>(names: &'a Names, creds: &'a TempFile, amqp_url: &'a str) -> Vec<&'a str> {
    vec![
        "--amqp",
        amqp_url,
        "--amqp-exchange",
        &names.exchange,
        "--amqp-binding",
        "#",
        "--amqp-stream",
        &names.stream,
        // The test's stream is small and short-lived.
        "--amqp-stream-max-bytes",
        "16777216",
        "--amqp-stream-max-age",
        "600",
        "--auth",
        creds.path(),
        "--queue-depth",
        "4096",
        "--history-bytes",
        "33554432",
    ]
}

fn bridge(names: &Names, creds: &TempFile) -> Callwire {
    let callwire = Callwire::start(&stream_args(names, creds, AMQP_URL));
    callwire.wait_connected(Duration::from_secs(15));
    callwire
}

/// `callwire simulate` on the test's exchange: kazoo, 20 calls/s for 20 s.
fn simulate(names: &Names, seed: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_callwire"))
        .args(["simulate", "--amqp", AMQP_URL, "--amqp-exchange"])
        .arg(&names.exchange)
        .args(["--profile", "kazoo", "--calls-per-sec", "20"])
        .args(["--duration", "20", "--seed", seed])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("callwire simulate starts")
}

/// Asserts that a Blackhole client got each of the `published` events once, in order, in the
/// stream's `epoch`, and that each of its resumes (every subscribe after the first) was
/// recovered (`when` says where, for the message); returns the offsets it got.
fn assert_each_once_and_resumed(seen: &Seen, published: u64, epoch: &str, when: &str) -> Vec<u64> {
    assert_eq!(seen.events.len() as u64, published, "every event");
    assert!(seen.events.iter().all(|e| e["epoch"] == epoch));
    let got = offsets(&seen.events, |e| &e["offset"]);
    assert_eq!(
        got,
        (1..=published).collect::<Vec<u64>>(),
        "each stream offset once, in order"
    );
    let resumed: Vec<&Value> = seen.replies[1..]
        .iter()
        .map(|r| &r["data"]["recovered"])
        .collect();
    assert!(
        !resumed.is_empty() && resumed.iter().all(|r| **r == json!(true)),
        "resumed {when}: {resumed:?}"
    );
    got
}

fn offsets(events: &[Value], offset: impl Fn(&Value) -> &Value) -> Vec<u64> {
    events.iter().map(|e| offset(e).as_u64().unwrap()).collect()
}

#[test]
fn a_client_of_a_killed_bridge_resumes_on_the_other_through_haproxy() {
    let (names, epoch, creds) = Names::site("two-bridges");
    let mut first = bridge(&names, &creds);
    let second = bridge(&names, &creds);
    let mut haproxy = Haproxy::start([first.port, second.port]);
    wait_for("HAProxy to serve /healthz", Duration::from_secs(15), || {
        if let Some(status) = haproxy.child.try_wait().unwrap() {
            panic!("haproxy exited with {status}: {}", haproxy.log_text());
        }
        haproxy.healthz() == Some(200)
    });

    let blackhole = Client::start(haproxy.port, MANAGER, "#");
    let url = format!("ws://127.0.0.1:{}/cable", haproxy.port);
    let params = json!({"key": MANAGER, "events": "events"}).to_string();
    let mut cable = Script::node("anycable_ext.mjs", &[&url, &params]);
    cable.wait_line("the subscription", Duration::from_secs(10), |l| {
        l["event"] == "channel" && l["state"] == "connect"
    });
    wait_for(
        "both clients on the first bridge",
        Duration::from_secs(10),
        || first.metric("callwire_clients") == 2 && second.metric("callwire_clients") == 0,
    );

    let simulate = simulate(&names, "2020");
    wait_for("events to flow", Duration::from_secs(30), || {
        blackhole.events() > 300
    });
    let killed = Command::new("kill")
        .args(["-KILL", &first.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    first.child.wait().unwrap();
    let before_kill = blackhole.events();
    let published = published(simulate);
    assert!(
        (before_kill as u64) < published,
        "the kill came while simulate published"
    );

    wait_for(
        "both clients to get every event",
        Duration::from_secs(60),
        || {
            cable.pump();
            blackhole.events() as u64 >= published
                && cable.events("message", None).len() as u64 >= published
        },
    );
    // Anything more would be a duplicate: give it a moment to show.
    std::thread::sleep(Duration::from_secs(1));
    cable.pump();
    let on_second = second.metric("callwire_clients");
    cable.command("exit");
    assert!(cable.finish().success());
    let seen = blackhole.finish();

    // Blackhole: every event once, in order, in the stream's epoch, resumed on the second.
    let got = assert_each_once_and_resumed(&seen, published, &epoch, "on the second bridge");
    let distinct: HashSet<(String, String)> = (seen.events.iter())
        .map(|e| (e["routing_key"].to_string(), e["data"].to_string()))
        .collect();
    assert_eq!(distinct.len() as u64, published, "no event twice");
    assert!(seen.connections >= 2, "the client came back");
    assert_eq!(on_second, 2, "both clients are on the second bridge");

    // @anycable/core: the same events, once, in order, its history confirmed.
    let messages: Vec<Value> = cable.events("message", None).into_iter().cloned().collect();
    assert_eq!(
        offsets(&messages, |m| &m["meta"]["offset"]),
        got,
        "the cable got every event once, in order"
    );
    for (message, event) in messages.iter().zip(&seen.events) {
        assert_eq!(message["meta"]["epoch"], event["epoch"]);
        assert_eq!(
            message["data"]["object"]["routing_key"],
            event["routing_key"]
        );
    }
    let infos: Vec<&Value> = cable.events("info", None);
    let reconnects = (cable.events("connect", None).into_iter())
        .filter(|c| c["reconnect"] == true)
        .count();
    assert!(
        reconnects >= 1,
        "the cable came back: {}",
        cable.transcript()
    );
    assert!(
        infos.iter().any(|i| i["type"] == "history_received")
            && !infos.iter().any(|i| i["type"] == "history_not_found"),
        "{}",
        cable.transcript()
    );
    eprintln!(
        "two bridges on stream {}: simulate published {published}; {before_kill} read before \
         the kill -9 of the first bridge; Blackhole and @anycable/core got {} each, offsets \
         {}..={}, {} replayed by the second bridge, {} Blackhole connection(s), {reconnects} \
         cable reconnect(s)",
        names.stream,
        seen.events.len(),
        got[0],
        got.last().unwrap(),
        seen.replayed,
        seen.connections,
    );
}

/// A bridge on a fixed port (its client reconnects there after a restart), through `proxy` to
/// RabbitMQ, keeping its state in `state`.
fn bridge_at(port: u16, args: &[&str], state: &Path) -> Callwire {
    let log = std::env::temp_dir().join(format!("{}.log", unique("callwire-stream-")));
    let child = Command::new(common::binary())
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("callwire starts");
    let mut callwire = Callwire { child, port, log };
    wait_for("callwire to listen", Duration::from_secs(10), || {
        if let Some(status) = callwire.child.try_wait().unwrap() {
            panic!("callwire exited with {status}: {}", callwire.log_text());
        }
        callwire.log_text().contains("listening on")
    });
    callwire.wait_connected(Duration::from_secs(15));
    callwire
}

/// The offset a stream is read from, as the connection's log line says (`None`: the next
/// message), for each connection in order.
fn read_from(log: &str) -> Vec<Option<u64>> {
    log.lines()
        .filter(|line| line.contains("amqp: connected") && line.contains(", stream '"))
        .map(|line| {
            let (_, offset) = line.split_once("reading from offset ")?;
            offset.trim().parse().ok()
        })
        .collect()
}

#[test]
fn a_bridge_reads_the_stream_on_after_a_broker_cut_and_a_restart_with_its_state() {
    let (names, epoch, creds) = Names::site("stream-restart");
    let state = std::env::temp_dir().join(unique("callwire-stream-state-"));
    let proxy = Proxy::start(5672, true);
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let args = stream_args(&names, &creds, &url);
    let port = free_port();
    let mut callwire = bridge_at(port, &args, &state);
    let blackhole = Client::start(port, MANAGER, "#");
    wait_for("the client", Duration::from_secs(10), || {
        !blackhole.seen.lock().unwrap().replies.is_empty()
    });

    let simulate = simulate(&names, "2121");
    wait_for("events to flow", Duration::from_secs(30), || {
        blackhole.events() > 200
    });
    proxy.cut();
    wait_for(
        "the bridge to see the broker gone",
        Duration::from_secs(30),
        || callwire.healthz().0 == 503,
    );
    let before_cut = blackhole.events();
    proxy.resume();
    wait_for(
        "events again after the cut",
        Duration::from_secs(30),
        || blackhole.events() > before_cut + 200,
    );
    let sent = Command::new("kill")
        .args(["-TERM", &callwire.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let stopped = callwire.child.wait().unwrap();
    let first_log = callwire.log_text();
    assert!(stopped.success(), "SIGTERM exits 0: {stopped}\n{first_log}");
    drop(callwire);
    let before_restart = blackhole.events() as u64;
    let callwire = bridge_at(port, &args, &state);
    let second_log = callwire.log_text();
    let published = published(simulate);
    wait_for(
        "the client to get every event",
        Duration::from_secs(60),
        || blackhole.events() as u64 >= published,
    );
    std::thread::sleep(Duration::from_secs(1));
    drop(callwire);
    let _ = std::fs::remove_dir_all(&state);
    let seen = blackhole.finish();

    // The first start reads from the next message, the restart from the offset after the
    // saved history. (The reconnect after the cut logs no line of its own: that it read on
    // from where it was is the gapless offsets below, simulate publishing all along.)
    assert_eq!(
        read_from(&first_log),
        [None],
        "the first start reads the next message on:\n{first_log}"
    );
    assert!(first_log.contains("lost"), "the cut was seen:\n{first_log}");
    let saved: u64 = (first_log.lines())
        .find_map(|line| {
            let (_, rest) =
                line.split_once(&format!("state: saved epoch {epoch} up to offset "))?;
            rest.split(',').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no save at SIGTERM:\n{first_log}"));
    assert!(
        saved >= before_restart,
        "{saved} saved, {before_restart} read"
    );
    assert_eq!(
        read_from(&second_log),
        [Some(saved)],
        "the restart reads on after the saved history:\n{second_log}"
    );
    assert!(
        before_restart < published,
        "simulate published while the bridge was stopped"
    );

    assert_each_once_and_resumed(&seen, published, &epoch, "after the restart");
    eprintln!(
        "one bridge on stream {}: simulate published {published}; the broker cut after \
         {before_cut}, the SIGTERM restart after {before_restart} (saved through offset \
         {saved}, read on from stream offset {saved}); the client got {} once each, in \
         order, {} connection(s)",
        names.stream,
        seen.events.len(),
        seen.connections
    );
}

/// Publishes `count` small events to the exchange, numbered from `first`, with publisher
/// confirms: four kinds of event in turn, so a binding on one kind matches every fourth.
fn publish_small(exchange: &str, first: u64, count: u64) {
    publish(exchange, first, count, 0);
}

/// Publishes `count` events numbered from `first` (as `publish_small`), each padded with
/// `padding` bytes.
fn publish(exchange: &str, first: u64, count: u64, padding: usize) {
    use lapin::BasicProperties;
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    smol::block_on(async {
        let conn = Connection::connect_with_runtime(
            AMQP_URL,
            ConnectionProperties::default(),
            async_rs::Runtime::smol(),
        )
        .await
        .unwrap();
        let channel = conn.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for n in first..first + count {
            let kind = [
                "CHANNEL_CREATE",
                "CHANNEL_ANSWER",
                "CHANNEL_BRIDGE",
                "CHANNEL_DESTROY",
            ][(n % 4) as usize];
            let body = json!({"Account-ID": "acct", "Call-ID": format!("c{n}"), "n": n,
                              "pad": "p".repeat(padding)});
            channel
                .basic_publish(
                    exchange.into(),
                    format!("call.{kind}.c{n}").as_str().into(),
                    BasicPublishOptions::default(),
                    body.to_string().as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let _ = conn.close(200, "done".into()).await;
    });
}

/// Subscribes with `since` in the stream's epoch; returns the reply and the events replayed.
fn resume(callwire: &Callwire, epoch: &str, binding: &str, offset: u64) -> (Value, Vec<Value>) {
    let mut socket = callwire.ws("/");
    let reply = request(
        &mut socket,
        json!({"action": "subscribe", "auth_token": MANAGER, "data": {"binding": binding,
               "since": {"epoch": epoch, "offset": offset}}}),
    );
    let events = drain(&mut socket, Duration::from_millis(500));
    (reply["data"].clone(), events)
}

#[test]
fn a_resume_older_than_the_history_is_read_from_the_stream_within_the_budget() {
    let (names, epoch, creds) = Names::site("stream-archive");
    let mut args = stream_args(&names, &creds, AMQP_URL);
    // A history of a few dozen of these events; replays may hold twice that until written.
    let at = args.iter().position(|a| *a == "--history-bytes").unwrap();
    args[at + 1] = "16384";
    let callwire = Callwire::start(&args);
    callwire.wait_connected(Duration::from_secs(15));
    const PUBLISHED: u64 = 400;
    publish_small(&names.exchange, 1, PUBLISHED);
    // The bridge has read them all when a resume from a position it cannot know says so.
    wait_for(
        "the bridge to read every event",
        Duration::from_secs(30),
        || {
            let (reply, _) = resume(&callwire, "another", "x.y", 0);
            reply["offset"] == PUBLISHED
        },
    );
    let held = callwire.metric("callwire_history_events");
    assert!(held < 150, "the history holds only the last {held} events");
    let oldest_held = PUBLISHED - held + 1;
    let budget = callwire.metric("callwire_memory_budget_bytes{part=\"total\"}");
    let steady = status_bytes(callwire.pid(), "VmRSS");

    // From 60 events before the history: each CHANNEL_CREATE after the position, once, in
    // order, from the stream and then from memory, then the live ones.
    let from = oldest_held - 60;
    let mut socket = callwire.ws("/");
    send(
        &mut socket,
        json!({"action": "subscribe", "auth_token": MANAGER, "data": {
            "binding": "call.CHANNEL_CREATE.*", "since": {"epoch": &epoch, "offset": from}}}),
    );
    let reply = recv(&mut socket);
    assert_eq!(reply["data"]["recovered"], true, "{reply}");
    assert_eq!(reply["data"]["epoch"], epoch.as_str());
    assert_eq!(reply["data"]["offset"], PUBLISHED);
    let replayed = drain(&mut socket, Duration::from_millis(500));
    let expected: Vec<u64> = (from + 1..=PUBLISHED).filter(|n| n % 4 == 0).collect();
    assert_eq!(offsets(&replayed, |e| &e["offset"]), expected);
    assert!(replayed.iter().all(|e| {
        e["epoch"] == epoch.as_str()
            && e["data"]["n"] == e["offset"]
            && e["routing_key"]
                .as_str()
                .unwrap()
                .starts_with("call.CHANNEL_CREATE.")
    }));
    publish_small(&names.exchange, PUBLISHED + 1, 8);
    let live = drain(&mut socket, Duration::from_millis(1000));
    assert_eq!(
        offsets(&live, |e| &e["offset"]),
        [PUBLISHED + 4, PUBLISHED + 8],
        "then live, once each"
    );
    let peak = status_bytes(callwire.pid(), "VmHWM");
    eprintln!(
        "resume from offset {from}, the history holding {oldest_held}..={PUBLISHED}: {} \
         replayed ({} read from the stream); VmHWM {} KiB (budget {} KiB + steady {} KiB)",
        replayed.len(),
        expected.iter().filter(|&&n| n < oldest_held).count(),
        peak / 1024,
        budget / 1024,
        steady / 1024
    );
    assert!(peak <= budget + steady, "peak {peak}");

    // AnyCable's extended protocol: a `history` request from before the history, on events
    // of about 1 KiB (the room holds a history's frames and a few read from the stream).
    let identifier =
        json!({"channel": "ApiChannel", "key": MANAGER, "events": "events"}).to_string();
    let (mut live, _) = callwire.extended_cable(&[]);
    let subscribe = json!({"command": "subscribe", "identifier": &identifier});
    assert_eq!(
        request(&mut live, subscribe.clone())["type"],
        "confirm_subscription"
    );
    let first_padded = PUBLISHED + 9;
    publish(&names.exchange, first_padded, 40, 1024);
    let last = first_padded + 39;
    let frames = drain(&mut live, Duration::from_millis(1000));
    let stream = frames.iter().find_map(|f| f["stream_id"].as_str()).unwrap();
    let held = callwire.metric("callwire_history_events");
    assert!(held < 20, "the history holds only the last {held} events");
    let from = last - held - 3;
    let (mut cable, _) = callwire.extended_cable(&[]);
    let mut history_request = subscribe;
    history_request["history"] = json!({"streams": {stream: {"epoch": &epoch, "offset": from}}});
    send(&mut cable, history_request);
    let answer = drain(&mut cable, Duration::from_millis(1000));
    let kinds: Vec<&str> = (answer.iter())
        .filter_map(|f| f["type"].as_str())
        .filter(|kind| *kind != "ping")
        .collect();
    assert_eq!(
        kinds,
        ["confirm_subscription", "confirm_history"],
        "{answer:?}"
    );
    let messages: Vec<Value> = (answer.iter())
        .filter(|f| f.get("message").is_some())
        .cloned()
        .collect();
    assert_eq!(
        offsets(&messages, |m| &m["offset"]),
        (from + 1..=last).collect::<Vec<u64>>(),
        "the cable got the stream's, then the history's, once each, in order"
    );
    let peak = status_bytes(callwire.pid(), "VmHWM");
    eprintln!(
        "cable history from offset {from}, the history holding {}..={last}: {} replayed (3 \
         read from the stream); VmHWM {} KiB",
        last - held + 1,
        messages.len(),
        peak / 1024
    );
    assert!(peak <= budget + steady, "peak {peak}");

    // From the stream's start, with every event: more than the replay room holds. Not
    // recovered, nothing replayed, counted; and live events go on.
    let hits = callwire.metric("callwire_limit_hits_total{limit=\"replay\"}");
    let (reply, events) = resume(&callwire, &epoch, "#", 0);
    assert_eq!(reply["recovered"], false, "{reply}");
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(
        callwire.metric("callwire_limit_hits_total{limit=\"replay\"}"),
        hits + 1
    );
}
