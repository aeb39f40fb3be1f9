//! `callwire simulate` through the real binary: it publishes to a real broker, a running
//! callwire takes the events from there, and a Blackhole client subscribed to `#` must see
//! every call that starts also end. MQTT tests each run a private Mosquitto, because the
//! simulator's topics are fixed (`pbx/...`, `asterisk/call/...`) and would mix on a shared one.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{Callwire, PrivateMosquitto, Socket, drain, mosquitto_pub, request, unique};

/// The RabbitMQ every AMQP test uses, each with an exchange of its own.
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Starts `callwire simulate` with `args`, its stderr kept for the assertions.
fn spawn_simulate(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_callwire"))
        .arg("simulate")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("callwire simulate starts")
}

/// A callwire fed by `source` (with a queue deep enough that a client reading only now and then
/// misses nothing), and a Blackhole socket subscribed to `#` that sees what `probe` publishes.
fn bridge(source: &[&str], probe: impl Fn()) -> (Callwire, Socket) {
    let mut args = source.to_vec();
    args.extend(["--queue-depth", "4096"]);
    let callwire = Callwire::start(&args);
    callwire.wait_connected(Duration::from_secs(10));
    let mut socket = callwire.ws("/");
    let reply = request(
        &mut socket,
        json!({"action": "subscribe", "data": {"binding": "#"}}),
    );
    assert_eq!(reply["status"], "success", "{reply}");
    // The broker may apply callwire's subscription a moment after the connection.
    for _ in 0..50 {
        probe();
        if !drain(&mut socket, Duration::from_millis(200)).is_empty() {
            return (callwire, socket);
        }
    }
    panic!("the probe never arrived: {}", callwire.log_text());
}

/// A callwire on a private Mosquitto, as `simulate --mqtt` feeds it: `pbx/` stripped, so the
/// routing keys are the ones `simulate --amqp` would give.
fn mqtt_bridge(broker: &PrivateMosquitto) -> (Callwire, Socket) {
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let port = broker.port;
    bridge(&["--mqtt", &url, "--mqtt-strip-prefix", "pbx/"], || {
        mosquitto_pub(port, "probe", r#"{"probe":true}"#)
    })
}

/// Runs `callwire simulate` to its end while reading the socket; returns how it exited, its
/// stderr, and every event frame the socket got.
fn simulate_into(socket: &mut Socket, args: &[&str]) -> (ExitStatus, String, Vec<Value>) {
    let mut child = spawn_simulate(args);
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut frames = Vec::new();
    let status = loop {
        frames.extend(drain(socket, Duration::from_millis(100)));
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > give_up {
            let _ = child.kill();
            let _ = child.wait();
            panic!("callwire simulate {args:?} did not end");
        }
    };
    // Events still on their way through callwire.
    frames.extend(drain(socket, Duration::from_millis(500)));
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    frames.retain(|frame| frame["action"] == "event");
    (status, stderr, frames)
}

/// The call id and event name of a Blackhole frame's data, in `profile`'s shape (events.md) as
/// Blackhole normalises it (blackhole.md: `call_id`, not `Call-ID`); `None` for anything else
/// (the probe).
fn call_event<'a>(profile: &str, data: &'a Value) -> Option<(&'a str, &'a str)> {
    let (id, name) = match profile {
        "kazoo" => (&data["call_id"], &data["event_name"]),
        "freeswitch" => (&data["unique_id"], &data["event_name"]),
        "asterisk-ari" => (&data["channel"]["id"], &data["type"]),
        "asterisk-mqtt" => (&data["call_id"], &data["event"]),
        other => panic!("unknown profile {other}"),
    };
    Some((id.as_str()?, name.as_str()?))
}

/// Asserts that the frames hold at least `at_least` calls of `profile`, each started once and
/// ended once, with nothing before the start or after the end.
fn assert_complete_lifecycles(profile: &str, frames: &[Value], at_least: usize) {
    let (start, end) = match profile {
        "kazoo" => ("CHANNEL_CREATE", "CHANNEL_DESTROY"),
        "freeswitch" => ("CHANNEL_CREATE", "CHANNEL_HANGUP_COMPLETE"),
        "asterisk-ari" => ("StasisStart", "ChannelDestroyed"),
        "asterisk-mqtt" => ("ringing", "hungup"),
        other => panic!("unknown profile {other}"),
    };
    // Per call: (starts, ends), in the order the frames came.
    let mut calls: HashMap<&str, (u32, u32)> = HashMap::new();
    for (id, name) in frames
        .iter()
        .filter_map(|frame| call_event(profile, &frame["data"]))
    {
        let seen = calls.entry(id).or_default();
        if name == start {
            assert_eq!(
                *seen,
                (0, 0),
                "{profile}: {name} of {id} is not its first event"
            );
            seen.0 += 1;
        } else if name == end {
            assert_eq!(*seen, (1, 0), "{profile}: {name} of {id} outside its call");
            seen.1 += 1;
        } else {
            assert_eq!(*seen, (1, 0), "{profile}: {name} of {id} outside its call");
        }
    }
    let unfinished: Vec<_> = calls.iter().filter(|(_, seen)| **seen != (1, 1)).collect();
    assert!(
        unfinished.is_empty(),
        "{profile}: calls not complete: {unfinished:?}"
    );
    assert!(
        calls.len() >= at_least,
        "{profile}: {} calls, expected at least {at_least}",
        calls.len()
    );
}

/// The summary line says what the run did.
fn assert_summary(stderr: &str, profile: &str, seed: &str) {
    let summary = stderr
        .lines()
        .find(|line| line.contains("calls started"))
        .unwrap_or_else(|| panic!("no summary in: {stderr}"));
    assert!(
        summary.contains("messages published")
            && summary.contains(&format!("seed {seed}"))
            && summary.contains(&format!("profile {profile}")),
        "{summary}"
    );
}

fn every_call_ends_over_mqtt(profile: &str) {
    let broker = PrivateMosquitto::start();
    let (_callwire, mut socket) = mqtt_bridge(&broker);
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let (status, stderr, frames) = simulate_into(
        &mut socket,
        &[
            "--mqtt",
            &url,
            "--profile",
            profile,
            "--calls-per-sec",
            "20",
            "--duration",
            "2",
            "--seed",
            "42",
        ],
    );
    assert!(status.success(), "{profile}: {status}: {stderr}");
    assert_summary(&stderr, profile, "42");
    assert_complete_lifecycles(profile, &frames, 20);
}

#[test]
fn kazoo_calls_all_end_over_mqtt() {
    every_call_ends_over_mqtt("kazoo");
}

#[test]
fn freeswitch_calls_all_end_over_mqtt() {
    every_call_ends_over_mqtt("freeswitch");
}

#[test]
fn asterisk_ari_calls_all_end_over_mqtt() {
    every_call_ends_over_mqtt("asterisk-ari");
}

#[test]
fn asterisk_mqtt_calls_all_end_over_mqtt() {
    every_call_ends_over_mqtt("asterisk-mqtt");
}

#[test]
fn the_same_seed_gives_the_same_events() {
    const EVENTS: usize = 40;
    let broker = PrivateMosquitto::start();
    let (_callwire, mut socket) = mqtt_bridge(&broker);
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    // The first events of a run, by routing key: Kazoo's keys hold the event name and the
    // call id the seed draws. A prefix is enough, so the run is stopped there.
    let mut first_keys = |seed: &str| -> Vec<String> {
        let mut child = spawn_simulate(&[
            "--mqtt",
            &url,
            "--profile",
            "kazoo",
            "--calls-per-sec",
            "20",
            "--duration",
            "2",
            "--seed",
            seed,
        ]);
        let mut keys = Vec::new();
        let give_up = Instant::now() + Duration::from_secs(15);
        while keys.len() < EVENTS && Instant::now() < give_up {
            keys.extend(
                drain(&mut socket, Duration::from_millis(100))
                    .iter()
                    .filter_map(|frame| frame["routing_key"].as_str().map(str::to_owned)),
            );
        }
        let _ = child.kill();
        let _ = child.wait();
        // What the stopped run had already sent must not leak into the next one.
        drain(&mut socket, Duration::from_millis(500));
        assert!(keys.len() >= EVENTS, "seed {seed}: only {keys:?}");
        keys.truncate(EVENTS);
        keys
    };
    let first = first_keys("7");
    assert!(
        first.iter().all(|key| key.starts_with("call.")),
        "{first:?}"
    );
    assert_eq!(first, first_keys("7"));
    assert_ne!(first, first_keys("8"));
}

#[test]
fn every_call_ends_over_amqp() {
    let exchange = unique("simulate-");
    let probe_exchange = exchange.clone();
    let (_callwire, mut socket) =
        bridge(&["--amqp", AMQP_URL, "--amqp-exchange", &exchange], || {
            amqp_probe(&probe_exchange)
        });
    let (status, stderr, frames) = simulate_into(
        &mut socket,
        &[
            "--amqp",
            AMQP_URL,
            "--amqp-exchange",
            &exchange,
            "--profile",
            "freeswitch",
            "--calls-per-sec",
            "20",
            "--duration",
            "2",
        ],
    );
    assert!(status.success(), "{status}: {stderr}");
    let seed = stderr
        .split("seed ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap_or_else(|| panic!("no seed in: {stderr}"));
    assert_summary(&stderr, "freeswitch", seed);
    assert!(
        frames.iter().all(|frame| frame["routing_key"]
            .as_str()
            .unwrap()
            .starts_with("FreeSWITCH.pbx01.")),
        "AMQP routing keys are the generated ones"
    );
    assert_complete_lifecycles("freeswitch", &frames, 20);
}

/// Publishes a probe to `exchange` with the real `amqp-publish` client (amqp-tools).
fn amqp_probe(exchange: &str) {
    let status = Command::new("amqp-publish")
        .args([
            "--url",
            AMQP_URL,
            "-e",
            exchange,
            "-r",
            "probe",
            "-b",
            r#"{"probe":true}"#,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("amqp-publish runs");
    assert!(status.success(), "amqp-publish failed");
}

#[test]
fn bad_input_exits_2_with_one_line() {
    for (args, needle) in [
        (&[][..], "--mqtt"),
        (
            &["--mqtt", "mqtt://127.0.0.1:1883", "--amqp", AMQP_URL],
            "--amqp",
        ),
        (
            &["--mqtt", "mqtt://127.0.0.1:1883", "--profile", "pbx9000"],
            "--profile",
        ),
        (&["--mqtt", "http://127.0.0.1:1883"], "--mqtt"),
        (
            &["--mqtt", "mqtt://127.0.0.1:1883", "--duration", "0"],
            "--duration",
        ),
    ] {
        let output = spawn_simulate(args).wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn no_broker_exits_1_with_the_reason() {
    let nobody = format!("mqtt://127.0.0.1:{}", common::free_port());
    let output = spawn_simulate(&["--mqtt", &nobody, "--seed", "5"])
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("no connection") && last.contains("seed 5"),
        "{stderr}"
    );
}
