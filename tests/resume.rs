//! Resuming after a network drop (delivery.md): Blackhole clients behind a TCP proxy that the
//! test cuts for 3 s while `callwire simulate` publishes, then resubscribe with `since`;
//! `GET /rest/live/events?since=`; and the real `@anycable/core` client (tests/clients,
//! `anycable_ext.mjs`) restoring its session and asking for its history. The truth they are checked against is what an uncut client
//! received, and what `simulate` counted as published.

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, SystemTime};

use callwire::sim::{Profile, Simulator};
use serde_json::{Value, json};

use common::kazoo_reference::blackhole_data;
use common::proxy::Proxy;
use common::resuming::{Client, Seen, published};
use common::script::Script;
use common::{Callwire, PrivateMosquitto, TempFile, credentials, mosquitto_pub, wait_for};

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
/// The manager, the simulator's account's desk, and a desk of an account no call is in.
fn desk_credentials() -> TempFile {
    let account = simulated_account();
    credentials(&[
        ("manager", MANAGER, "*"),
        ("desk", DESK, &account),
        ("other", OTHER, "00000000000000000000000000000000"),
    ])
}

/// A callwire on a private Mosquitto (simulate's topics are fixed), with `extra` flags, and
/// its source connected.
fn bridge(broker: &PrivateMosquitto, creds: &TempFile, extra: &[&str]) -> Callwire {
    let mut args = vec!["--auth", creds.path(), "--queue-depth", "4096"];
    args.extend_from_slice(extra);
    let callwire = Callwire::start_mqtt(broker.port, "pbx", &args);
    callwire.wait_connected(Duration::from_secs(10));
    callwire
}

/// A private broker, the credentials, a callwire on them with `extra` flags, and a proxy in
/// front of it that the test can cut.
fn proxied_bridge(extra: &[&str]) -> (PrivateMosquitto, TempFile, Callwire, Proxy) {
    let broker = PrivateMosquitto::start();
    let creds = desk_credentials();
    let callwire = bridge(&broker, &creds, extra);
    let proxy = Proxy::start(callwire.port, true);
    (broker, creds, callwire, proxy)
}

/// Publishes a probe event now and then until `arrived` says the clients have it (the
/// broker may apply callwire's subscription a moment after the connection).
fn probe_until(broker: &PrivateMosquitto, mut arrived: impl FnMut() -> bool) {
    wait_for("the probe", Duration::from_secs(10), || {
        mosquitto_pub(broker.port, "pbx/probe", r#"{"probe":true}"#);
        thread::sleep(Duration::from_millis(100));
        arrived()
    });
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
    let (broker, _creds, callwire, proxy) = proxied_bridge(&[]);

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
        }
        // Events of every name flowed during the cut; one name alone may have had none then.
        if *secret != OTHER && (*binding == "#" || *binding == "call.*.*") {
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
    // Room for about two simulated events.
    let (broker, _creds, callwire, proxy) = proxied_bridge(&["--history-bytes", "4096"]);
    let client = Client::start(proxy.port, MANAGER, "#");
    probe_until(&broker, || client.events() > 0);
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

/// The real `@anycable/core` client on `/cable` through `proxy`, subscribed to the `events`
/// model.
fn anycable_client(proxy: &Proxy) -> Script {
    let url = format!("ws://127.0.0.1:{}/cable", proxy.port);
    let params = json!({"key": MANAGER, "events": "events"}).to_string();
    let mut client = Script::node("anycable_ext.mjs", &[&url, &params]);
    client.wait_line("the subscription", Duration::from_secs(10), |l| {
        l["event"] == "channel" && l["state"] == "connect"
    });
    client
}

/// The offsets of the messages an `anycable_ext.mjs` client printed, from their positions.
fn message_offsets(client: &Script) -> Vec<u64> {
    client
        .events("message", None)
        .iter()
        .map(|m| m["meta"]["offset"].as_u64().unwrap())
        .collect()
}

/// Cuts `proxy` for 3 s while `simulate` publishes (starting 1.5 s into a 6 s run), then
/// waits for the client to reconnect and for `simulate` to end; returns what it published.
fn cut_while_simulating(broker: &PrivateMosquitto, proxy: &Proxy, client: &mut Script) -> u64 {
    let simulate = spawn_simulate(broker, "6");
    thread::sleep(Duration::from_millis(1500));
    proxy.cut();
    client.wait_line(
        "the cable to notice the cut",
        Duration::from_secs(10),
        |l| l["event"] == "disconnect",
    );
    thread::sleep(Duration::from_secs(3));
    proxy.resume();
    client.wait_line("the cable to reconnect", Duration::from_secs(15), |l| {
        l["event"] == "connect" && l["reconnect"] == true
    });
    published(simulate)
}

#[test]
fn an_anycable_client_cut_for_3_s_is_restored_and_gets_every_broadcast_once_in_order() {
    let (broker, _creds, callwire, proxy) = proxied_bridge(&[]);
    let control = Client::start(callwire.port, MANAGER, "#");
    let mut client = anycable_client(&proxy);
    probe_until(&broker, || {
        client.pump();
        control.events() > 0 && !client.events("message", None).is_empty()
    });

    let published = cut_while_simulating(&broker, &proxy, &mut client);
    let calls = |seen: &Seen| seen.events.iter().filter(|e| !is_probe(e)).count() as u64;
    wait_for(
        "the control client to get every event",
        Duration::from_secs(20),
        || calls(&control.seen.lock().unwrap()) >= published,
    );
    let last = control.seen.lock().unwrap().events.last().unwrap()["offset"].clone();
    wait_for("the cable to catch up", Duration::from_secs(20), || {
        client.pump();
        client
            .events("message", None)
            .last()
            .map(|m| &m["meta"]["offset"])
            == Some(&last)
    });
    client.command("exit");
    assert!(client.finish().success());
    let truth = control.finish().events;
    assert_eq!(
        calls(&Seen {
            events: truth.clone(),
            ..Seen::default()
        }),
        published
    );

    // Every broadcast once, in order: the offsets are the uncut client's from the cable's
    // first message on, and each message is the event at its offset.
    let offsets = message_offsets(&client);
    let first = offsets[0];
    let expected: Vec<&Value> = truth
        .iter()
        .filter(|e| e["offset"].as_u64().unwrap() >= first)
        .collect();
    assert_eq!(
        offsets,
        expected
            .iter()
            .map(|e| e["offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        "every event once, in order"
    );
    let messages = client.events("message", None);
    for (message, event) in messages.iter().zip(&expected) {
        assert_eq!(
            message["data"]["object"]["routing_key"],
            event["routing_key"]
        );
        assert_eq!(message["meta"]["epoch"], event["epoch"]);
        let payload = serde_json::to_vec(&message["data"]["object"]["data"]).unwrap();
        assert_eq!(blackhole_data(&payload), event["data"]);
    }
    // Restored, not subscribed again, and the history confirmed.
    let connects = client.events("connect", None);
    assert_eq!(connects.len(), 2, "{}", client.transcript());
    assert_eq!(connects[1]["restored"], true, "{}", client.transcript());
    let welcomes: Vec<&Value> = client
        .events("frame", None)
        .into_iter()
        .filter(|f| f["data"]["type"] == "welcome")
        .collect();
    assert_eq!(welcomes[1]["data"]["restored"], true);
    assert!(
        welcomes[1]["data"]["sid"] != welcomes[0]["data"]["sid"],
        "a new session id"
    );
    let subscribes = client
        .events("frame", None)
        .into_iter()
        .filter(|f| f["data"]["type"] == "confirm_subscription")
        .count();
    assert_eq!(subscribes, 1, "restored without subscribing again");
    let infos: Vec<&Value> = client.events("info", None);
    assert!(
        infos.iter().any(|i| i["type"] == "history_received"),
        "{}",
        client.transcript()
    );
    assert!(!infos.iter().any(|i| i["type"] == "history_not_found"));
    // The history's answer: the messages between the restoring welcome and confirm_history.
    let is_frame =
        |line: &Value, kind: &str| line["event"] == "frame" && line["data"]["type"] == kind;
    let restored_at = client
        .seen
        .iter()
        .rposition(|l| is_frame(l, "welcome"))
        .unwrap();
    let confirmed_at = client
        .seen
        .iter()
        .rposition(|l| is_frame(l, "confirm_history"))
        .unwrap();
    let replayed = client.seen[restored_at..confirmed_at]
        .iter()
        .filter(|l| l["event"] == "message")
        .count();
    assert!(
        replayed > 20,
        "the cut lost events that the history gave back: {replayed}"
    );
    eprintln!(
        "anycable: simulate published {published}; {} messages, offsets {first}..={}, \
         restored, {replayed} from the history",
        offsets.len(),
        offsets.last().unwrap()
    );
}

#[test]
fn an_anycable_client_whose_gap_outgrew_the_history_gets_reject_history() {
    let (broker, _creds, _callwire, proxy) = proxied_bridge(&["--history-bytes", "4096"]);
    let mut client = anycable_client(&proxy);
    probe_until(&broker, || {
        client.pump();
        !client.events("message", None).is_empty()
    });
    cut_while_simulating(&broker, &proxy, &mut client);
    client.wait_line("reject_history", Duration::from_secs(10), |l| {
        l["event"] == "info" && l["type"] == "history_not_found"
    });
    thread::sleep(Duration::from_secs(1));
    client.command("exit");
    assert!(client.finish().success());
    let rejected = client
        .events("frame", None)
        .into_iter()
        .filter(|f| f["data"]["type"] == "reject_history")
        .count();
    assert_eq!(rejected, 1, "{}", client.transcript());
    // Nothing replayed: the messages after the gap are live, consecutive, past it.
    let offsets = message_offsets(&client);
    let gap = offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(gap > 10, "the gap was real: {offsets:?}");
    let mut sorted = offsets.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(offsets, sorted, "in order, each once");
}

#[test]
fn a_session_id_in_the_restore_header_restores_the_subscriptions_once() {
    let creds = desk_credentials();
    let callwire = Callwire::start(&["--demo", "--demo-rate", "20", "--auth", creds.path()]);
    let identifier =
        json!({"channel": "ApiChannel", "key": MANAGER, "events": "events"}).to_string();
    let (mut socket, welcome) = callwire.extended_cable(&[]);
    let sid = welcome["sid"].as_str().unwrap().to_owned();
    common::send(
        &mut socket,
        json!({"command": "subscribe", "identifier": identifier}),
    );
    assert_eq!(common::recv(&mut socket)["type"], "confirm_subscription");
    drop(socket);
    // The server saves the session when it sees the connection end.
    let header = [("X-AnyCable-Restore-Sid", sid.as_str())];
    let mut restored = None;
    wait_for("a restored welcome", Duration::from_secs(5), || {
        let (socket, welcome) = callwire.extended_cable(&header);
        let done = welcome["restored"] == true;
        restored = done.then_some((socket, welcome));
        done
    });
    let (mut socket, welcome) = restored.unwrap();
    assert_eq!(welcome["restored_ids"], json!([identifier]));
    // Its history request: an answer, then live events; no second confirm_subscription.
    common::send(
        &mut socket,
        json!({"command": "history", "identifier": identifier, "history": {"since": 0}}),
    );
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let frame = common::recv(&mut socket);
        if frame["type"] != "ping" {
            kinds.push(frame["type"].as_str().unwrap_or("message").to_owned());
        }
    }
    assert_eq!(
        kinds[0], "reject_history",
        "before callwire began: cannot be whole"
    );
    assert_eq!(kinds[1..], ["message", "message"]);
    // Spent: presenting it again restores nothing.
    let (_, again) = callwire.extended_cable(&header);
    assert_eq!(again.get("restored"), None);
}
