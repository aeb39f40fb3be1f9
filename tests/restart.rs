//! Restarts of callwire (delivery.md, "Restarts"): `callwire simulate` publishes for 60 s at
//! 20 calls/s; 30 s in, callwire is stopped and started again 3 s later with the same
//! `--state-dir` and a source that outlives it (`--mqtt-session` on a private Mosquitto,
//! `--amqp-queue` on the shared RabbitMQ). A resuming Blackhole client and the real
//! `@anycable/core` client reconnect by themselves.
//!
//! - SIGTERM: both get every event `simulate` published (its own count of what the broker
//!   confirmed), each once, in one epoch, resumed (`recovered: true`, `confirm_history`); the
//!   live calls saved at SIGTERM are the ones restored, and `/rest/live/calls` at the end is
//!   what the published events leave live.
//! - `kill -9`: a new epoch, both clients told to resync (`recovered: false`,
//!   `reject_history`), the live calls of the last timed save restored, and `/rest/live/calls`
//!   at the end is what they and the new epoch's events leave live.
//!
//! Each test takes about 75 s; the four run in parallel.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::resuming::{Client, published};
use common::script::Script;
use common::{Callwire, PrivateMosquitto, TempFile, free_port, mosquitto_pub, unique, wait_for};

const SEED: u64 = 1919;
const MANAGER: &str = "manag3rpa55word";
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// How long `simulate` starts calls, and when callwire is stopped.
const SIMULATE_SECS: &str = "60";
const STOP_AFTER: Duration = Duration::from_secs(30);
const DOWN_FOR: Duration = Duration::from_secs(3);

/// Where the events come from.
enum Broker {
    /// `--mqtt-session` on a Mosquitto of the test's own (simulate's topics are fixed), which
    /// keeps however many messages a session missed.
    Mqtt(PrivateMosquitto),
    /// `--amqp-queue` on the shared RabbitMQ, on an exchange of the test's own.
    Amqp { exchange: String, queue: String },
}

impl Broker {
    fn mqtt() -> Broker {
        Broker::Mqtt(PrivateMosquitto::start_with(
            "max_queued_messages 0\nmax_inflight_messages 0",
        ))
    }

    fn amqp() -> Broker {
        Broker::Amqp {
            exchange: unique("restart-x-"),
            queue: unique("restart-q-"),
        }
    }

    /// callwire's source flags.
    fn source_args(&self, client_id: &str) -> Vec<String> {
        let args: Vec<&str> = match self {
            Broker::Mqtt(broker) => {
                return vec![
                    "--mqtt".into(),
                    format!("mqtt://127.0.0.1:{}", broker.port),
                    "--mqtt-topic".into(),
                    "pbx/#".into(),
                    "--mqtt-strip-prefix".into(),
                    "pbx/".into(),
                    "--mqtt-session".into(),
                    "--mqtt-client-id".into(),
                    client_id.into(),
                ];
            }
            Broker::Amqp { exchange, queue } => vec![
                "--amqp",
                AMQP_URL,
                "--amqp-exchange",
                exchange,
                "--amqp-queue",
                queue,
                // The queue outlives the test by two minutes at most.
                "--amqp-queue-expires",
                "120",
            ],
        };
        args.into_iter().map(str::to_owned).collect()
    }

    /// Runs `callwire simulate` against the broker: kazoo, 20 calls/s.
    fn simulate(&self) -> Child {
        let mut command = Command::new(env!("CARGO_BIN_EXE_callwire"));
        command.arg("simulate");
        match self {
            Broker::Mqtt(broker) => {
                command.args(["--mqtt", &format!("mqtt://127.0.0.1:{}", broker.port)]);
            }
            Broker::Amqp { exchange, .. } => {
                command.args(["--amqp", AMQP_URL, "--amqp-exchange", exchange]);
            }
        }
        command
            .args(["--profile", "kazoo", "--calls-per-sec", "20"])
            .args(["--duration", SIMULATE_SECS, "--seed", &SEED.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("callwire simulate starts")
    }
}

/// A directory of the test's own, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One callwire installation: its flags, port and state directory, started as often as asked.
struct Installation {
    args: Vec<String>,
    port: u16,
    state: TempDir,
    _creds: TempFile,
}

impl Installation {
    fn new(broker: &Broker) -> Installation {
        let creds =
            json!({"credentials": [{"name": "manager", "secret": MANAGER, "account": "*"}]});
        let creds = TempFile::new("callwire-restart-creds-", &creds.to_string());
        let state = TempDir(std::env::temp_dir().join(unique("callwire-restart-state-")));
        let mut args = broker.source_args(&unique("cw-"));
        for arg in [
            "--auth",
            creds.path(),
            "--state-dir",
            state.0.to_str().unwrap(),
            "--state-interval",
            "2",
            "--queue-depth",
            "4096",
            // Room for the new epoch's events, read back over REST after a crash.
            "--history-bytes",
            "33554432",
        ] {
            args.push(arg.to_owned());
        }
        Installation {
            args,
            port: free_port(),
            state,
            _creds: creds,
        }
    }

    /// Starts callwire on the installation's port (the clients reconnect to it), its source
    /// connected.
    fn start(&self) -> Callwire {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let callwire = Callwire::start_on(self.port, &args);
        wait_for("the source to connect", Duration::from_secs(15), || {
            callwire.healthz().1["source"]["connected"] == true
        });
        callwire
    }

    /// The saved state file, parsed.
    fn saved(&self) -> Value {
        let text = std::fs::read_to_string(self.state.0.join("state.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

/// The number after `before` in the first line of `log` holding `line`.
fn logged_number(log: &str, line: &str, before: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains(line))
        .find_map(|l| {
            let (head, _) = l.split_once(before)?;
            head.split_whitespace().last()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no '{line}' ... '{before}' in:\n{log}"))
}

fn is_probe(event: &Value) -> bool {
    event["routing_key"] == "probe"
}

/// The call id and event name of a kazoo routing key, `call.<EVENT>.<id>`.
fn call_event(routing_key: &str) -> Option<(&str, &str)> {
    let mut parts = routing_key.splitn(3, '.');
    (parts.next()? == "call").then_some(())?;
    let name = parts.next()?;
    Some((parts.next()?, name))
}

/// The calls that `events` (routing keys, in order) leave live, from `live`: a call's first
/// event makes it live, CHANNEL_DESTROY ends it for good (the live API's rules, live-api.md).
fn left_live<'a>(live: HashSet<String>, keys: impl Iterator<Item = &'a str>) -> HashSet<String> {
    let mut live = live;
    let mut ended = HashSet::new();
    for key in keys {
        let Some((id, name)) = call_event(key) else {
            continue;
        };
        if name == "CHANNEL_DESTROY" {
            live.remove(id);
            ended.insert(id.to_owned());
        } else if !ended.contains(id) {
            live.insert(id.to_owned());
        }
    }
    live
}

/// The ids `/rest/live/calls` lists.
fn listed_calls(callwire: &Callwire) -> HashSet<String> {
    let auth = format!("Bearer {MANAGER}");
    let (status, body) = callwire.http("GET", "/rest/live/calls", &[("Authorization", &auth)]);
    assert_eq!(status, 200, "{body}");
    let calls: Value = serde_json::from_str(&body).unwrap();
    (calls.as_array().unwrap().iter())
        .map(|call| call["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every event of `epoch` the REST history holds, oldest first.
fn rest_events(callwire: &Callwire, epoch: &str) -> Vec<Value> {
    let auth = format!("Bearer {MANAGER}");
    let mut since = format!("{epoch}:0");
    let mut events = Vec::new();
    loop {
        let path = format!("/rest/live/events?since={since}");
        let (status, body) = callwire.http("GET", &path, &[("Authorization", &auth)]);
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["recovered"], true, "{answer}");
        events.extend(answer["events"].as_array().unwrap().iter().cloned());
        since = answer["next"].as_str().unwrap().to_owned();
        if answer["more"] == false {
            return events;
        }
    }
}

/// The real `@anycable/core` client on `/cable`, subscribed to the `events` model.
fn anycable_client(port: u16) -> Script {
    let url = format!("ws://127.0.0.1:{port}/cable");
    let params = json!({"key": MANAGER, "events": "events"}).to_string();
    let mut client = Script::node("anycable_ext.mjs", &[&url, &params]);
    client.wait_line("the subscription", Duration::from_secs(10), |l| {
        l["event"] == "channel" && l["state"] == "connect"
    });
    client
}

/// Offsets of the events, in the order they came.
fn offsets(events: &[&Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect()
}

fn consecutive(offsets: &[u64]) -> bool {
    offsets.windows(2).all(|w| w[1] == w[0] + 1)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    /// `kill -TERM`: callwire saves its state and exits.
    Term,
    /// `kill -9`: nothing saved but the last timed save.
    Kill,
}

fn restart_while_simulating(broker: Broker, stop: Stop) {
    let installation = Installation::new(&broker);
    let mut callwire = installation.start();
    let blackhole = Client::start(installation.port, MANAGER, "#");
    let mut cable = anycable_client(installation.port);
    // The probe: an MQTT subscription may apply a moment after the connection.
    if let Broker::Mqtt(mosquitto) = &broker {
        wait_for("the probe", Duration::from_secs(10), || {
            mosquitto_pub(mosquitto.port, "pbx/probe", r#"{"probe":true}"#);
            thread::sleep(Duration::from_millis(100));
            cable.pump();
            blackhole.events() > 0 && !cable.events("message", None).is_empty()
        });
    }

    let simulate = broker.simulate();
    let started = Instant::now();
    thread::sleep(STOP_AFTER);
    let before_stop = blackhole.events();
    assert!(before_stop > 500, "events flowed: {before_stop}");
    let pid = callwire.pid().to_string();
    match stop {
        Stop::Term => {
            let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            assert!(sent.success());
        }
        Stop::Kill => {
            let sent = Command::new("kill").args(["-KILL", &pid]).status().unwrap();
            assert!(sent.success());
        }
    }
    let status = callwire.child.wait().unwrap();
    let first_log = callwire.log_text();
    drop(callwire);
    // After a crash the file on disk is the last timed save.
    let saved = installation.saved();
    thread::sleep(DOWN_FOR);
    let callwire = installation.start();
    let second_log = callwire.log_text();
    let published = published(simulate);
    let ran_for = started.elapsed();

    let calls = |seen: &[Value]| seen.iter().filter(|e| !is_probe(e)).count() as u64;
    let label = format!(
        "{stop:?} on {}",
        match broker {
            Broker::Mqtt(_) => "MQTT",
            Broker::Amqp { .. } => "AMQP",
        }
    );
    match stop {
        Stop::Term => {
            assert!(
                status.success(),
                "{label}: SIGTERM exits 0: {status}\n{first_log}"
            );
            wait_for(
                "the clients to get every event",
                Duration::from_secs(30),
                || {
                    cable.pump();
                    let cable_calls = (cable.events("message", None).iter())
                        .filter(|m| m["data"]["object"]["routing_key"] != "probe")
                        .count() as u64;
                    calls(&blackhole.seen.lock().unwrap().events) >= published
                        && cable_calls >= published
                },
            );
        }
        Stop::Kill => {
            cable.wait_line("reject_history", Duration::from_secs(30), |l| {
                l["event"] == "info" && l["type"] == "history_not_found"
            });
            // Until simulate's last calls have ended in the table.
            thread::sleep(Duration::from_secs(2));
        }
    }
    thread::sleep(Duration::from_secs(1));
    let live = listed_calls(&callwire);
    cable.command("exit");
    assert!(cable.finish().success());
    let seen = blackhole.finish();
    let events: Vec<&Value> = seen.events.iter().filter(|e| !is_probe(e)).collect();
    let epochs: Vec<&str> = {
        let mut epochs: Vec<&str> = Vec::new();
        for event in &events {
            let epoch = event["epoch"].as_str().unwrap();
            if epochs.last() != Some(&epoch) {
                epochs.push(epoch);
            }
        }
        epochs
    };
    let messages: Vec<Value> = (cable.events("message", None).into_iter())
        .filter(|m| m["data"]["object"]["routing_key"] != "probe")
        .cloned()
        .collect();
    let replies_after_restart: Vec<&Value> = seen.replies[1..]
        .iter()
        .map(|r| &r["data"]["recovered"])
        .collect();
    let saved_calls: HashSet<String> = (saved["calls"].as_array().unwrap().iter())
        .map(|call| call["id"].as_str().unwrap().to_owned())
        .collect();

    match stop {
        Stop::Term => {
            // One epoch, every published event once, in order, to both clients.
            assert_eq!(epochs.len(), 1, "{label}: one epoch: {epochs:?}");
            assert_eq!(
                events.len() as u64,
                published,
                "{label}: Blackhole got every event"
            );
            let got = offsets(&events);
            assert!(consecutive(&got), "{label}: each offset once, in order");
            let distinct: HashSet<(String, String)> = (events.iter())
                .map(|e| (e["routing_key"].to_string(), e["data"].to_string()))
                .collect();
            assert_eq!(distinct.len() as u64, published, "{label}: no event twice");
            assert!(seen.connections >= 2, "{label}: the client came back");
            assert!(
                !replies_after_restart.is_empty()
                    && replies_after_restart.iter().all(|r| **r == json!(true)),
                "{label}: {replies_after_restart:?}"
            );
            // How many events the replay gave depends on what the client had read when the
            // goodbye came (frames queued before it are written first): printed, not asserted.
            // That the position was resumed at all is `recovered: true` in one epoch, above.
            let cable_offsets: Vec<u64> = (messages.iter())
                .map(|m| m["meta"]["offset"].as_u64().unwrap())
                .collect();
            assert_eq!(
                cable_offsets, got,
                "{label}: the cable got every event once, in order"
            );
            for (message, event) in messages.iter().zip(&events) {
                assert_eq!(message["meta"]["epoch"], event["epoch"]);
                assert_eq!(
                    message["data"]["object"]["routing_key"],
                    event["routing_key"]
                );
            }
            let infos: Vec<&Value> = cable.events("info", None);
            assert!(
                infos.iter().any(|i| i["type"] == "history_received")
                    && !infos.iter().any(|i| i["type"] == "history_not_found"),
                "{label}: {}",
                cable.transcript()
            );
            // The calls saved at SIGTERM are the ones restored.
            assert_eq!(saved["kind"], "shutdown", "{label}");
            assert_eq!(saved["positions"]["epoch"], json!(epochs[0]), "{label}");
            let saved_at_stop = logged_number(&first_log, "state: saved epoch", "live call(s)");
            let restored = logged_number(&second_log, "state: resumed epoch", "live call(s)");
            assert_eq!(saved_calls.len() as u64, saved_at_stop, "{label}");
            assert_eq!(restored, saved_at_stop, "{label}");
            assert!(restored > 0, "{label}: calls were live at the stop");
            let expected = left_live(
                HashSet::new(),
                events.iter().map(|e| e["routing_key"].as_str().unwrap()),
            );
            assert_eq!(live, expected, "{label}: /rest/live/calls at the end");
            eprintln!(
                "{label}: simulate published {published} in {:.0} s; Blackhole and cable got \
                 {} each, offsets {}..={} in epoch {}, {} replayed after the restart, no \
                 duplicate; {restored} live calls saved and restored; {} live at the end",
                ran_for.as_secs_f64(),
                events.len(),
                got[0],
                got.last().unwrap(),
                epochs[0],
                seen.replayed,
                live.len()
            );
        }
        Stop::Kill => {
            assert_eq!(epochs.len(), 2, "{label}: a new epoch: {epochs:?}");
            assert_ne!(epochs[0], epochs[1]);
            assert!(
                replies_after_restart.contains(&&json!(false)),
                "{label}: told to resync: {replies_after_restart:?}"
            );
            for epoch in &epochs {
                let of_epoch: Vec<&Value> = (events.iter())
                    .filter(|e| e["epoch"] == *epoch)
                    .copied()
                    .collect();
                let got = offsets(&of_epoch);
                assert!(
                    got.windows(2).all(|w| w[1] > w[0]),
                    "{label}: in order, each once in epoch {epoch}"
                );
            }
            let rejected = (cable.events("frame", None).into_iter())
                .filter(|f| f["data"]["type"] == "reject_history")
                .count();
            assert!(rejected >= 1, "{label}: {}", cable.transcript());
            // The calls of the last timed save came back, and the new epoch's events moved
            // them on.
            assert_eq!(saved["kind"], "timed");
            assert!(saved["positions"].is_null());
            let restored =
                logged_number(&second_log, "restored from the timed save", "live call(s)");
            assert_eq!(restored, saved_calls.len() as u64, "{label}");
            assert!(restored > 0, "{label}: calls were live at the crash");
            let new_epoch = rest_events(&callwire, epochs[1]);
            let expected = left_live(
                saved_calls.clone(),
                new_epoch.iter().map(|e| e["routing_key"].as_str().unwrap()),
            );
            assert_eq!(live, expected, "{label}: /rest/live/calls at the end");
            let by_epoch: HashMap<&str, usize> = epochs
                .iter()
                .map(|epoch| {
                    (
                        *epoch,
                        events.iter().filter(|e| e["epoch"] == *epoch).count(),
                    )
                })
                .collect();
            eprintln!(
                "{label}: simulate published {published} in {:.0} s; epoch {} -> {}; Blackhole \
                 got {by_epoch:?}, told recovered false; cable got reject_history; {restored} \
                 live calls restored from the timed save, {} events in the new epoch, {} live \
                 at the end ({} of them calls the crash lost the end of)",
                ran_for.as_secs_f64(),
                epochs[0],
                epochs[1],
                new_epoch.len(),
                live.len(),
                live.intersection(&saved_calls).count()
            );
        }
    }
}

#[test]
fn mqtt_sigterm_restart_resumes_every_event_once_in_one_epoch() {
    restart_while_simulating(Broker::mqtt(), Stop::Term);
}

#[test]
fn amqp_sigterm_restart_resumes_every_event_once_in_one_epoch() {
    restart_while_simulating(Broker::amqp(), Stop::Term);
}

#[test]
fn mqtt_kill_9_starts_a_new_epoch_with_the_calls_of_the_last_timed_save() {
    restart_while_simulating(Broker::mqtt(), Stop::Kill);
}

#[test]
fn amqp_kill_9_starts_a_new_epoch_with_the_calls_of_the_last_timed_save() {
    restart_while_simulating(Broker::amqp(), Stop::Kill);
}
