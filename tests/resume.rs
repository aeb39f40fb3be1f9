//! Resuming after a network drop (delivery.md): Blackhole clients behind a TCP proxy that the
//! test cuts for 3 s while `callwire simulate` publishes, then resubscribe with `since`; and
//! `GET /rest/live/events?since=`. The truth they are checked against is what an uncut client
//! received, and what `simulate` counted as published.

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime};

use callwire::sim::{Profile, Simulator};
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::stream::MaybeTlsStream;

use common::proxy::Proxy;
use common::{Callwire, PrivateMosquitto, TempFile, blackhole_data, mosquitto_pub, wait_for};

const SEED: u64 = 19;
const MANAGER: &str = "manag3rpa55word";
const DESK: &str = "d35kpa55";
const OTHER: &str = "0th3rpa55";

/// The account `simulate --seed SEED --profile kazoo` puts on every call.
fn simulated_account() -> String {
    Simulator::new(Profile::Kazoo, SEED, 1.0, SystemTime::now())
        .account()
        .to_owned()
}

/// `*`, the simulated calls' account, and an account with no calls.
fn credentials() -> TempFile {
    let text = json!({"credentials": [
        {"name": "manager", "secret": MANAGER, "account": "*"},
        {"name": "desk", "secret": DESK, "account": simulated_account()},
        {"name": "other", "secret": OTHER, "account": "00000000000000000000000000000000"},
    ]});
    TempFile::new("callwire-resume-creds-", &text.to_string())
}

/// A callwire on a private Mosquitto (simulate's topics are fixed), with `extra` flags, and
/// its source connected.
fn bridge(broker: &PrivateMosquitto, creds: &TempFile, extra: &[&str]) -> Callwire {
    let mut args = vec!["--auth", creds.path(), "--queue-depth", "4096"];
    args.extend_from_slice(extra);
    let callwire = Callwire::start_mqtt(broker.port, "pbx", &args);
    wait_for("the source to connect", Duration::from_secs(10), || {
        callwire.healthz().1["source"]["connected"] == true
    });
    callwire
}

/// Runs `callwire simulate` against the broker: kazoo, 20 calls/s, for `seconds`.
fn spawn_simulate(broker: &PrivateMosquitto, seconds: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_callwire"))
        .args(["simulate", "--mqtt"])
        .arg(format!("mqtt://127.0.0.1:{}", broker.port))
        .args(["--profile", "kazoo", "--calls-per-sec", "20"])
        .args(["--duration", seconds, "--seed", &SEED.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("callwire simulate starts")
}

/// Waits for `simulate` to end well; returns the messages it published (and saw confirmed by
/// the broker: it exits 1 otherwise).
fn published(simulate: Child) -> u64 {
    let output = simulate.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "simulate failed: {stderr}");
    stderr
        .lines()
        .find_map(|line| {
            let (_, rest) = line.split_once("calls started, ")?;
            rest.split(' ').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no summary in {stderr}"))
}

/// What one Blackhole client saw: every reply, every event frame, how often it connected.
#[derive(Default)]
struct Seen {
    replies: Vec<Value>,
    events: Vec<Value>,
    /// Events that came after a `recovered: true` reply with an offset at or before its
    /// position: the replay.
    replayed: usize,
    connections: u32,
}

/// A Blackhole client on its own thread that connects to `port`, subscribes to `binding` with
/// `since` its position, and reads until told to stop; whenever its connection fails it
/// connects again and resumes. Its position is the last event's, or, when a reply says
/// `recovered: false` (nothing replayed), the reply's.
struct Client {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Client {
    fn start(port: u16, secret: &'static str, binding: &'static str) -> Client {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopping) = (seen.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut position = json!({"epoch": "", "offset": 0});
            // The position of the last `recovered: true` reply: what comes up to it is replay.
            let mut replay_to = 0;
            while !stopping.load(Ordering::SeqCst) {
                let url = format!("ws://127.0.0.1:{port}/");
                let Ok((mut socket, _)) = tungstenite::connect(url) else {
                    thread::sleep(Duration::from_millis(50));
                    continue;
                };
                if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
                    stream
                        .set_read_timeout(Some(Duration::from_millis(100)))
                        .unwrap();
                }
                shared.lock().unwrap().connections += 1;
                let subscribe = json!({"action": "subscribe", "auth_token": secret,
                    "data": {"binding": binding, "since": position}});
                if socket.send(Message::text(subscribe.to_string())).is_err() {
                    continue;
                }
                loop {
                    let text = match socket.read() {
                        Ok(Message::Text(text)) => text,
                        Ok(_) => continue,
                        Err(tungstenite::Error::Io(e))
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut =>
                        {
                            if stopping.load(Ordering::SeqCst) {
                                return;
                            }
                            continue;
                        }
                        Err(_) => break,
                    };
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    let mut seen = shared.lock().unwrap();
                    if frame["action"] == "event" {
                        if frame["offset"].as_u64().unwrap() <= replay_to {
                            seen.replayed += 1;
                        }
                        position = json!({"epoch": frame["epoch"], "offset": frame["offset"]});
                        seen.events.push(frame);
                    } else {
                        assert_eq!(frame["status"], "success", "{frame}");
                        if frame["data"]["recovered"] == true {
                            replay_to = frame["data"]["offset"].as_u64().unwrap();
                        } else {
                            position = json!({"epoch": frame["data"]["epoch"],
                                              "offset": frame["data"]["offset"]});
                        }
                        seen.replies.push(frame);
                    }
                }
            }
        });
        Client {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn events(&self) -> usize {
        self.seen.lock().unwrap().events.len()
    }

    /// Stops the thread; returns what the client saw.
    fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("the client thread");
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn is_probe(event: &Value) -> bool {
    event["routing_key"] == "probe"
}

fn offsets(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect()
}

/// Whether a binding of literal segments and `*` (or a lone `#`) matches a routing key.
fn matches(binding: &str, key: &str) -> bool {
    if binding == "#" {
        return true;
    }
    let (binding, key): (Vec<&str>, Vec<&str>) =
        (binding.split('.').collect(), key.split('.').collect());
    binding.len() == key.len() && binding.iter().zip(&key).all(|(b, k)| *b == "*" || b == k)
}

/// Reads `GET /rest/live/events` from `since` with `secret`, following `next` while `more`.
fn rest_events(callwire: &Callwire, secret: &str, since: &str) -> (bool, Vec<Value>) {
    let auth = format!("Bearer {secret}");
    let mut since = since.to_owned();
    let mut events = Vec::new();
    loop {
        let path = format!("/rest/live/events?since={since}");
        let (status, body) = callwire.http("GET", &path, &[("Authorization", &auth)]);
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        events.extend(answer["events"].as_array().unwrap().iter().cloned());
        since = answer["next"].as_str().unwrap().to_owned();
        if answer["more"] == false {
            return (answer["recovered"] == true, events);
        }
        assert_eq!(answer["recovered"], true, "{answer}");
    }
}

#[test]
fn blackhole_clients_cut_for_3_s_resume_with_every_matching_event_once_in_order() {
    let broker = PrivateMosquitto::start();
    let creds = credentials();
    let callwire = bridge(&broker, &creds, &[]);
    let proxy = Proxy::start(callwire.port, true);

    // The truth: a client that is never cut, on every event.
    let control = Client::start(callwire.port, MANAGER, "#");
    // The probe: every client is subscribed once the control has it.
    wait_for(
        "the control client's probe",
        Duration::from_secs(10),
        || {
            mosquitto_pub(broker.port, "pbx/probe", r#"{"probe":true}"#);
            thread::sleep(Duration::from_millis(100));
            control.events() > 0
        },
    );
    let cut = [
        ("manager on every event", MANAGER, "#"),
        (
            "manager on one event name",
            MANAGER,
            "call.CHANNEL_DESTROY.*",
        ),
        ("desk on its account's calls", DESK, "call.*.*"),
        ("another account", OTHER, "#"),
    ];
    let clients: Vec<Client> = cut
        .iter()
        .map(|(_, secret, binding)| Client::start(proxy.port, secret, binding))
        .collect();
    for client in &clients {
        wait_for("the clients' first replies", Duration::from_secs(5), || {
            !client.seen.lock().unwrap().replies.is_empty()
        });
    }

    let simulate = spawn_simulate(&broker, "6");
    thread::sleep(Duration::from_millis(1500));
    let before_cut = control.events();
    proxy.cut();
    thread::sleep(Duration::from_secs(3));
    let during_cut = control.events() - before_cut;
    proxy.resume();
    let published = published(simulate);
    // Until the control has every event and the others have had a moment more.
    wait_for(
        "the control client to get every event",
        Duration::from_secs(20),
        || {
            let seen = control.seen.lock().unwrap();
            seen.events.iter().filter(|e| !is_probe(e)).count() as u64 >= published
        },
    );
    thread::sleep(Duration::from_secs(1));

    let control = control.finish();
    let truth = &control.events;
    let calls: Vec<&Value> = truth.iter().filter(|e| !is_probe(e)).collect();
    assert_eq!(calls.len() as u64, published, "every published event");
    let first = truth[0]["offset"].as_u64().unwrap();
    let consecutive: Vec<u64> = (first..first + truth.len() as u64).collect();
    assert_eq!(
        offsets(truth),
        consecutive,
        "the uncut client got every offset once"
    );
    assert!(
        during_cut > 20,
        "events flowed during the cut: {during_cut}"
    );
    eprintln!(
        "simulate published {published}; the uncut client got them all, {during_cut} during the cut"
    );

    let account = simulated_account();
    for ((who, secret, binding), client) in cut.iter().zip(clients) {
        let seen = client.finish();
        // From where its first subscribe started.
        let start = seen.replies[0]["data"]["offset"].as_u64().unwrap();
        let expected: Vec<&Value> = truth
            .iter()
            .filter(|e| e["offset"].as_u64().unwrap() > start)
            .filter(|e| matches(binding, e["routing_key"].as_str().unwrap()))
            .filter(|e| *secret != DESK || e["data"]["account_id"] == json!(account))
            .filter(|_| *secret != OTHER)
            .collect();
        assert_eq!(
            offsets(&seen.events),
            expected
                .iter()
                .map(|e| e["offset"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            "{who}: every matching event once, in order"
        );
        for (got, want) in seen.events.iter().zip(&expected) {
            assert_eq!(
                (&got["routing_key"], &got["data"]),
                (&want["routing_key"], &want["data"]),
                "{who}"
            );
        }
        assert!(seen.connections >= 2, "{who} was cut and came back");
        let recovered: Vec<&Value> = seen.replies[1..]
            .iter()
            .map(|r| &r["data"]["recovered"])
            .collect();
        assert!(
            !recovered.is_empty() && recovered.iter().all(|r| **r == json!(true)),
            "{who}: {recovered:?}"
        );
        eprintln!(
            "{who} ({binding}): {} events, {} of them replayed, {} connections",
            seen.events.len(),
            seen.replayed,
            seen.connections
        );
        if *secret != OTHER {
            assert!(expected.len() > 10, "{who}: {} events", expected.len());
            assert!(
                seen.replayed > 0,
                "{who}: the cut lost events that the replay gave back"
            );
        }
    }

    // The same history over REST, scoped by credential and paged by `next`.
    let epoch = truth[0]["epoch"].as_str().unwrap();
    let since = format!("{epoch}:{}", first - 1);
    let (recovered, events) = rest_events(&callwire, MANAGER, &since);
    assert!(recovered);
    assert_eq!(offsets(&events), offsets(truth));
    for (rest, live) in events.iter().zip(truth) {
        let payload = serde_json::to_vec(&rest["data"]).unwrap();
        assert_eq!(blackhole_data(&payload), live["data"]);
        assert_eq!(rest["routing_key"], live["routing_key"]);
    }
    let (_, events) = rest_events(&callwire, DESK, &since);
    let desk: HashSet<u64> = offsets(&events).into_iter().collect();
    let accounts: HashSet<u64> = calls
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        desk, accounts,
        "the desk sees its account's events, not the probe"
    );
    let (_, events) = rest_events(&callwire, OTHER, &since);
    assert!(events.is_empty());
}

#[test]
fn a_gap_larger_than_the_history_is_told_recovered_false_and_replays_nothing() {
    let broker = PrivateMosquitto::start();
    let creds = credentials();
    // Room for about two simulated events.
    let callwire = bridge(&broker, &creds, &["--history-bytes", "4096"]);
    let proxy = Proxy::start(callwire.port, true);
    let client = Client::start(proxy.port, MANAGER, "#");
    wait_for("the client's probe", Duration::from_secs(10), || {
        mosquitto_pub(broker.port, "pbx/probe", r#"{"probe":true}"#);
        thread::sleep(Duration::from_millis(100));
        client.events() > 0
    });
    let simulate = spawn_simulate(&broker, "5");
    thread::sleep(Duration::from_millis(1500));
    proxy.cut();
    thread::sleep(Duration::from_secs(3));
    proxy.resume();
    published(simulate);
    thread::sleep(Duration::from_secs(1));
    let epoch_probe = {
        let seen = client.seen.lock().unwrap();
        seen.events[0]["epoch"].as_str().unwrap().to_owned()
    };
    let seen = client.finish();

    let replies: Vec<&Value> = seen.replies.iter().map(|r| &r["data"]).collect();
    assert!(replies.len() >= 2, "{replies:?}");
    let resumed = replies[1];
    assert_eq!(resumed["recovered"], false, "{resumed}");
    // Nothing replayed: after the last event before the cut, the next one is live, past the
    // reply's position.
    let events = offsets(&seen.events);
    let resumed_at = resumed["offset"].as_u64().unwrap();
    let before: Vec<u64> = events
        .iter()
        .copied()
        .filter(|o| *o <= resumed_at)
        .collect();
    let after: Vec<u64> = events.iter().copied().filter(|o| *o > resumed_at).collect();
    assert!(!after.is_empty(), "live events after the resume");
    assert_eq!(
        events,
        [before.clone(), after.clone()].concat(),
        "nothing at or before the resume position came after it"
    );
    assert!(
        resumed_at - before.last().unwrap() > 10,
        "the gap was real: {} .. {resumed_at}",
        before.last().unwrap()
    );
    eprintln!(
        "last event before the cut {}, resumed at {resumed_at}: recovered false, {} live events after",
        before.last().unwrap(),
        after.len()
    );
    let consecutive: Vec<u64> = (after[0]..after[0] + after.len() as u64).collect();
    assert_eq!(after, consecutive, "live without a gap");

    // REST says the same of the lost position, and gives where to go on from.
    let since = format!("{epoch_probe}:{}", before.last().unwrap());
    let (status, body) = callwire.http(
        "GET",
        &format!("/rest/live/events?since={since}"),
        &[("Authorization", &format!("Bearer {MANAGER}"))],
    );
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["recovered"], false, "{answer}");
    assert_eq!(answer["events"], json!([]));
    assert_eq!(
        answer["next"],
        json!(format!("{epoch_probe}:{}", after.last().unwrap()))
    );
}
