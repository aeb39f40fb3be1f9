//! Resilience through the real binary and real websocket clients: a minute of client churn
//! (memory and descriptors come back), a flood of upgrades past `--max-clients` (503, and the
//! connected clients miss nothing), account isolation across every dialect and the REST live
//! API (and no secret in a debug log), and SIGTERM with 1000 clients connected (each hears its
//! dialect's goodbye; the process exits 0 within 5 s).
//!
//! The many-client tests drive their clients from a few threads, each holding a few hundred
//! tungstenite clients on non-blocking sockets and waiting on them with poll(2). They share
//! the machine's two cores, so they run one at a time (`HEAVY`).
//!
//! Broker faults are covered elsewhere: tests/bridge.rs (`a_broker_restart_is_invisible_to_
//! websocket_clients`) and tests/amqp.rs (`amqp_recovers_from_a_cut_link_without_the_clients_
//! noticing`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callwire::rng::Rng;
use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use common::{
    Callwire, Credential, DIALECTS, Dialect, TempFile, credentials, mosquitto_pub, mqtt_callwire,
    unique, wait_for,
};

/// The shared Mosquitto the MQTT-fed tests publish to.
const BROKER_PORT: u16 = 1883;
const CABLE_PROTOCOL: &str = "actioncable-v1-json";
/// How long one blocking step of a client (connect, upgrade, a read in a blocking test) may take.
const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// The many-client tests, one at a time.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> MutexGuard<'static, ()> {
    HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Clients

type Ws = WebSocket<TcpStream>;

impl Dialect {
    /// Client `n` of a mixed fleet.
    fn nth(n: usize) -> Dialect {
        DIALECTS[n % DIALECTS.len()]
    }
}

/// Opens a websocket as each dialect's real clients do: the ActionCable subprotocol offered on
/// `/cable`, HTTP Basic on the upgrade when `basic` is given. Blocking, each step bounded.
fn open(
    port: u16,
    dialect: Dialect,
    basic: Option<(&str, &str)>,
) -> Result<Ws, tungstenite::Error> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut request = format!("ws://127.0.0.1:{port}{}", dialect.path()).into_client_request()?;
    if dialect == Dialect::Cable {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(CABLE_PROTOCOL),
        );
    }
    if let Some((name, secret)) = basic {
        let header = format!("Basic {}", basic_token(name, secret));
        request
            .headers_mut()
            .insert("Authorization", HeaderValue::from_str(&header).unwrap());
    }
    match tungstenite::client(request, stream) {
        Ok((ws, _response)) => Ok(ws),
        Err(HandshakeError::Failure(err)) => Err(err),
        Err(HandshakeError::Interrupted(_)) => Err(tungstenite::Error::Io(std::io::Error::new(
            ErrorKind::TimedOut,
            "the upgrade timed out",
        ))),
    }
}

fn basic_token(name: &str, secret: &str) -> String {
    data_encoding::BASE64.encode(format!("{name}:{secret}").as_bytes())
}

fn send_text(ws: &mut Ws, text: &str) -> Result<(), tungstenite::Error> {
    ws.send(Message::text(text))
}

/// Whether a frame answers the client's subscription: `Some(Ok)` confirmed, `Some(Err)`
/// refused, `None` something else (an ActionCable welcome or ping, an iSymphony event that
/// came before its filter took effect).
fn confirmation(dialect: Dialect, text: &str) -> Option<Result<(), String>> {
    let frame: Value = serde_json::from_str(text).ok()?;
    let verdict = |ok: bool| Some(if ok { Ok(()) } else { Err(text.to_owned()) });
    match dialect {
        Dialect::Blackhole if frame["action"] == "reply" => verdict(frame["status"] == "success"),
        Dialect::ISymphony if frame["type"] == "filterResponse" => {
            verdict(frame["status"] == "success")
        }
        Dialect::Cable if frame["type"] == "confirm_subscription" => verdict(true),
        Dialect::Cable if frame["type"] == "reject_subscription" => verdict(false),
        _ => None,
    }
}

/// Whether a frame after the subscription is an event (cheap: no parse).
fn is_event(dialect: Dialect, text: &str) -> bool {
    match dialect {
        Dialect::Blackhole => text.starts_with(r#"{"action":"event""#),
        Dialect::ISymphony => !text.starts_with(r#"{"type":"filterResponse""#),
        Dialect::Cable => text.starts_with(r#"{"identifier""#) && text.contains(r#""message":"#),
    }
}

/// What each dialect sends to subscribe in the many-client tests (no `--auth`).
#[derive(Clone)]
struct Subscribe {
    blackhole: String,
    isymphony: String,
    cable: String,
}

impl Subscribe {
    /// The demo's CHANNEL_CREATEs (20 a second at `--demo-rate 20`) in every dialect.
    fn demo_creates() -> Subscribe {
        let identifier = json!({"channel": "ApiChannel", "events": "calls#create"}).to_string();
        Subscribe {
            blackhole: json!({"action": "subscribe", "request_id": "churn",
                              "data": {"binding": "call.CHANNEL_CREATE.*"}})
            .to_string(),
            isymphony: json!({"type": "filter", "filters": [
                {"property": "Event-Name", "value": "CHANNEL_CREATE"}]})
            .to_string(),
            cable: json!({"command": "subscribe", "identifier": identifier}).to_string(),
        }
    }

    fn text(&self, dialect: Dialect) -> &str {
        match dialect {
            Dialect::Blackhole => &self.blackhole,
            Dialect::ISymphony => &self.isymphony,
            Dialect::Cable => &self.cable,
        }
    }
}

/// Opens a client and sends its subscription; the socket is non-blocking on return.
fn open_subscribing(port: u16, dialect: Dialect, subscribe: &Subscribe) -> Result<Ws, String> {
    let mut ws = open(port, dialect, None).map_err(|err| format!("{dialect:?} upgrade: {err}"))?;
    send_text(&mut ws, subscribe.text(dialect))
        .map_err(|err| format!("{dialect:?} subscribe: {err}"))?;
    ws.get_ref()
        .set_nonblocking(true)
        .map_err(|err| err.to_string())?;
    Ok(ws)
}

/// What one non-blocking read gave.
enum Read {
    Message(Message),
    /// Nothing more for now.
    Idle,
    /// The connection is over (after a close handshake, or not).
    Ended(String),
}

fn read_nb(ws: &mut Ws) -> Read {
    match ws.read() {
        Ok(message) => Read::Message(message),
        Err(tungstenite::Error::Io(err)) if err.kind() == ErrorKind::WouldBlock => Read::Idle,
        Err(tungstenite::Error::ConnectionClosed) => Read::Ended("closed".to_owned()),
        Err(err) => Read::Ended(err.to_string()),
    }
}

/// Waits at most `timeout` for any of `fds` (negative ones are skipped) to be readable;
/// returns the indexes of those that are.
fn readable(fds: &[i32], timeout: Duration) -> Vec<usize> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `polls` is a live, exclusively borrowed array of `polls.len()` pollfd structs.
    let ready = unsafe {
        libc::poll(
            polls.as_mut_ptr(),
            polls.len() as libc::nfds_t,
            timeout.as_millis() as libc::c_int,
        )
    };
    if ready <= 0 {
        return Vec::new();
    }
    polls
        .iter()
        .enumerate()
        .filter(|(_, poll)| poll.revents != 0)
        .map(|(i, _)| i)
        .collect()
}

fn fd(ws: &Ws) -> i32 {
    ws.get_ref().as_raw_fd()
}

/// Sends SIGTERM with the real `kill`.
fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// VmRSS of a process, in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// VmHWM (peak resident memory) of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmHWM line")
}

/// Descriptors a process has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn healthz_clients(callwire: &Callwire) -> u64 {
    callwire.healthz().1["clients"].as_u64().unwrap_or(u64::MAX)
}

/// A generator from a seed that each run draws and prints, so that a failure reproduces.
fn seeded(what: &str) -> Rng {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("{what}: seed {seed}");
    Rng::new(seed)
}

/// True in about `percent` of the draws.
fn chance(rng: &mut Rng, percent: u64) -> bool {
    rng.below(100) < percent
}

// ---------------------------------------------------------------------------------------------
// A fleet: clients that subscribe once, then read until told what they wanted

/// One client of a fleet and what it saw after its subscription was confirmed.
struct Member<S> {
    dialect: Dialect,
    ws: Option<Ws>,
    confirmed: bool,
    state: S,
    /// The close frame's code, once one came (`Some(None)`: a close frame without a code).
    close: Option<Option<u16>>,
    /// Why the connection ended, once it did.
    ended: Option<String>,
}

/// Threads a fleet's clients are spread over.
const FLEET_THREADS: usize = 4;

/// Starts `dialects.len()` clients on `FLEET_THREADS` threads. Each opens and subscribes its
/// clients, counts each confirmation in `confirmed`, then hands every later text frame to
/// `on_text`, until each of its clients has ended or is `finished`, or `deadline` passes.
fn spawn_fleet<S, T, F>(
    port: u16,
    dialects: Vec<Dialect>,
    subscribe: Subscribe,
    on_text: T,
    finished: F,
    confirmed: Arc<AtomicUsize>,
    deadline: Instant,
) -> Vec<JoinHandle<Vec<Member<S>>>>
where
    S: Default + Send + 'static,
    T: Fn(&mut S, &str) + Send + Clone + 'static,
    F: Fn(&S) -> bool + Send + Clone + 'static,
{
    let per_thread = dialects.len().div_ceil(FLEET_THREADS);
    dialects
        .chunks(per_thread)
        .map(|share| {
            let share = share.to_vec();
            let subscribe = subscribe.clone();
            let on_text = on_text.clone();
            let finished = finished.clone();
            let confirmed = confirmed.clone();
            thread::spawn(move || {
                fleet_worker(
                    port, share, &subscribe, &on_text, &finished, &confirmed, deadline,
                )
            })
        })
        .collect()
}

fn fleet_worker<S: Default>(
    port: u16,
    dialects: Vec<Dialect>,
    subscribe: &Subscribe,
    on_text: &impl Fn(&mut S, &str),
    finished: &impl Fn(&S) -> bool,
    confirmed: &AtomicUsize,
    deadline: Instant,
) -> Vec<Member<S>> {
    let mut members: Vec<Member<S>> = dialects
        .into_iter()
        .map(|dialect| {
            let (ws, ended) = match open_subscribing(port, dialect, subscribe) {
                Ok(ws) => (Some(ws), None),
                Err(err) => (None, Some(err)),
            };
            Member {
                dialect,
                ws,
                confirmed: false,
                state: S::default(),
                close: None,
                ended,
            }
        })
        .collect();
    while Instant::now() < deadline {
        let waiting = |m: &Member<S>| m.ws.is_some() && !(m.confirmed && finished(&m.state));
        if !members.iter().any(waiting) {
            break;
        }
        let fds: Vec<i32> = members
            .iter()
            .map(|m| m.ws.as_ref().map_or(-1, fd))
            .collect();
        for i in readable(&fds, Duration::from_millis(100)) {
            let member = &mut members[i];
            let Some(ws) = member.ws.as_mut() else {
                continue;
            };
            loop {
                match read_nb(ws) {
                    Read::Idle => break,
                    Read::Ended(why) => {
                        member.ended = Some(why);
                        member.ws = None;
                        break;
                    }
                    Read::Message(Message::Text(text)) if member.confirmed => {
                        on_text(&mut member.state, &text);
                    }
                    Read::Message(Message::Text(text)) => {
                        match confirmation(member.dialect, &text) {
                            Some(Ok(())) => {
                                member.confirmed = true;
                                confirmed.fetch_add(1, Ordering::SeqCst);
                            }
                            Some(Err(refusal)) => {
                                member.ended = Some(format!("refused: {refusal}"));
                                member.ws = None;
                                break;
                            }
                            None => {}
                        }
                    }
                    Read::Message(Message::Close(frame)) => {
                        member.close = Some(frame.map(|f| u16::from(f.code)));
                    }
                    Read::Message(_) => {}
                }
            }
        }
    }
    members
}

fn join_fleet<S>(handles: Vec<JoinHandle<Vec<Member<S>>>>) -> Vec<Member<S>> {
    handles
        .into_iter()
        .flat_map(|handle| handle.join().expect("a fleet thread"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Churn

const CHURN_CLIENTS: usize = 1000;
const CHURN_THREADS: usize = 4;
const CHURN_TIME: Duration = Duration::from_secs(60);
/// Long enough that the churn after it seldom reaches a higher peak of connections in flight
/// (resident memory is a high-water mark: measured, it steps up a little in the first rounds
/// of churn after a short warm-up, then stays flat).
const WARM_UP_TIME: Duration = Duration::from_secs(15);
/// Longest a churning client may wait for its subscription's answer or its close handshake.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// How a churning client leaves.
#[derive(Clone, Copy, Debug)]
enum Leave {
    /// A close frame, then waits for the server's close and the end of the connection.
    Close,
    /// A close frame, then hangs up without waiting.
    CloseAndGo,
    /// Hangs up without a word.
    Vanish,
}

const LEAVES: [Leave; 3] = [Leave::Close, Leave::CloseAndGo, Leave::Vanish];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Subscribing,
    Receiving,
    Closing,
}

/// One connection of a churning client.
struct Churner {
    ws: Ws,
    dialect: Dialect,
    stage: Stage,
    events_left: u32,
    leave: Leave,
    since: Instant,
}

#[derive(Debug, Default)]
struct ChurnReport {
    /// Subscriptions confirmed, by dialect.
    sessions: [usize; 3],
    /// Events received.
    events: usize,
    /// Connections left, by `Leave`.
    left: [usize; 3],
    /// Connections that sent half a request head and hung up.
    abandoned: usize,
    failures: usize,
    /// The first few failures, said.
    said: Vec<String>,
}

impl ChurnReport {
    fn fail(&mut self, what: String) {
        self.failures += 1;
        if self.said.len() < 20 {
            self.said.push(what);
        }
    }

    fn add(&mut self, other: ChurnReport) {
        for i in 0..3 {
            self.sessions[i] += other.sessions[i];
            self.left[i] += other.left[i];
        }
        self.events += other.events;
        self.abandoned += other.abandoned;
        self.failures += other.failures;
        self.said.extend(other.said);
    }
}

impl Churner {
    /// Takes what the socket has; returns true when the connection is over.
    fn pump(&mut self, report: &mut ChurnReport, ending: bool) -> bool {
        loop {
            match read_nb(&mut self.ws) {
                Read::Idle => return false,
                Read::Ended(why) => {
                    if self.stage == Stage::Closing {
                        report.left[0] += 1;
                    } else {
                        report.fail(format!(
                            "{:?} connection ended while {:?}: {why}",
                            self.dialect, self.stage
                        ));
                    }
                    return true;
                }
                Read::Message(Message::Text(text)) => match self.stage {
                    Stage::Subscribing => match confirmation(self.dialect, &text) {
                        Some(Ok(())) => {
                            self.stage = Stage::Receiving;
                            report.sessions[self.dialect as usize] += 1;
                            if (self.events_left == 0 || ending) && self.go(report) {
                                return true;
                            }
                        }
                        Some(Err(refusal)) => {
                            report.fail(format!(
                                "{:?} subscription refused: {refusal}",
                                self.dialect
                            ));
                            return true;
                        }
                        None => {}
                    },
                    Stage::Receiving if is_event(self.dialect, &text) => {
                        report.events += 1;
                        self.events_left = self.events_left.saturating_sub(1);
                        if self.events_left == 0 && self.go(report) {
                            return true;
                        }
                    }
                    Stage::Receiving | Stage::Closing => {}
                },
                Read::Message(Message::Close(frame)) if self.stage != Stage::Closing => {
                    report.fail(format!(
                        "{:?} closed by the server: {frame:?}",
                        self.dialect
                    ));
                    return true;
                }
                Read::Message(_) => {}
            }
        }
    }

    /// Leaves as planned; returns true when the connection is gone at once.
    fn go(&mut self, report: &mut ChurnReport) -> bool {
        match self.leave {
            Leave::Close => {
                // Non-blocking: the close frame may only be queued, and goes out with the
                // next read.
                let _ = self.ws.close(None);
                let _ = self.ws.flush();
                self.stage = Stage::Closing;
                self.since = Instant::now();
                false
            }
            Leave::CloseAndGo => {
                let _ = self.ws.close(None);
                let _ = self.ws.flush();
                report.left[1] += 1;
                true
            }
            Leave::Vanish => {
                report.left[2] += 1;
                true
            }
        }
    }
}

/// Half a request head, then a hang-up: a connection that never becomes a client.
fn abandon_request_head(port: u16) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
}

/// `count` churning clients: each connects, subscribes, takes a few events (none, sometimes),
/// leaves one of three ways, and comes back as a new connection, until `until`; then every
/// client leaves and the worker returns.
fn churn_worker(port: u16, first: usize, count: usize, until: Instant, seed: u64) -> ChurnReport {
    let subscribe = Subscribe::demo_creates();
    let mut rng = Rng::new(seed);
    let mut report = ChurnReport::default();
    let mut slots: Vec<Option<Churner>> = (0..count).map(|_| None).collect();
    let hard_stop = until + Duration::from_secs(30);
    loop {
        let now = Instant::now();
        let opening = now < until;
        if opening {
            for (i, slot) in slots.iter_mut().enumerate() {
                if slot.is_some() {
                    continue;
                }
                if chance(&mut rng, 5) {
                    match abandon_request_head(port) {
                        Ok(()) => report.abandoned += 1,
                        Err(err) => report.fail(format!("half a request head: {err}")),
                    }
                }
                let dialect = Dialect::nth(first + i);
                match open_subscribing(port, dialect, &subscribe) {
                    Ok(ws) => {
                        *slot = Some(Churner {
                            ws,
                            dialect,
                            stage: Stage::Subscribing,
                            events_left: rng.below(6) as u32,
                            leave: LEAVES[rng.below(3) as usize],
                            since: Instant::now(),
                        })
                    }
                    Err(err) => report.fail(err),
                }
            }
        } else {
            // Time is up: whoever is receiving leaves now.
            for slot in slots.iter_mut() {
                if let Some(churner) = slot {
                    if churner.stage == Stage::Receiving && churner.go(&mut report) {
                        *slot = None;
                    }
                }
            }
            if slots.iter().all(Option::is_none) {
                return report;
            }
            if now > hard_stop {
                let stuck = slots.iter().flatten().count();
                report.fail(format!("{stuck} client(s) never finished"));
                return report;
            }
        }
        let fds: Vec<i32> = slots
            .iter()
            .map(|slot| slot.as_ref().map_or(-1, |c| fd(&c.ws)))
            .collect();
        for i in readable(&fds, Duration::from_millis(50)) {
            if let Some(churner) = slots[i].as_mut() {
                if churner.pump(&mut report, !opening) {
                    slots[i] = None;
                }
            }
        }
        let now = Instant::now();
        for slot in slots.iter_mut() {
            let stale = slot.as_ref().is_some_and(|c| {
                c.stage != Stage::Receiving && now.duration_since(c.since) > STEP_TIMEOUT
            });
            if stale {
                let churner = slot.take().unwrap();
                report.fail(format!(
                    "{:?} client stuck {:?} for {STEP_TIMEOUT:?}",
                    churner.dialect, churner.stage
                ));
            }
        }
    }
}

/// Runs `CHURN_CLIENTS` churning clients for `time`.
fn churn(port: u16, time: Duration, rng: &mut Rng) -> ChurnReport {
    let until = Instant::now() + time;
    let per_thread = CHURN_CLIENTS / CHURN_THREADS;
    let workers: Vec<JoinHandle<ChurnReport>> = (0..CHURN_THREADS)
        .map(|t| {
            let seed = rng.next_u64();
            thread::spawn(move || churn_worker(port, t * per_thread, per_thread, until, seed))
        })
        .collect();
    let mut report = ChurnReport::default();
    for worker in workers {
        report.add(worker.join().expect("a churn thread"));
    }
    report
}

/// Waits until the hub has no client and the process's descriptors are back to `baseline`
/// (or, with no baseline, have not changed for a second); returns their count then, or at
/// most 15 s later.
fn settle(callwire: &Callwire, baseline: Option<usize>) -> usize {
    wait_for(
        "the hub to reach 0 clients",
        Duration::from_secs(30),
        || healthz_clients(callwire) == 0,
    );
    let pid = callwire.pid();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = open_fds(pid);
    let mut unchanged = 0;
    loop {
        let settled = match baseline {
            Some(baseline) => last == baseline,
            None => unchanged >= 5,
        };
        if settled || Instant::now() > deadline {
            return last;
        }
        thread::sleep(Duration::from_millis(200));
        let now = open_fds(pid);
        unchanged = if now == last { unchanged + 1 } else { 0 };
        last = now;
    }
}

/// A minute of 1000 clients at a time connecting, subscribing and leaving, in all three
/// dialects, with events flowing: afterwards the process's resident memory is within 10 % of
/// what it was after a warm-up round, and its descriptors are back to what they were.
#[test]
fn a_minute_of_churn_leaves_memory_and_descriptors_where_they_were() {
    let _heavy = heavy();
    let mut rng = seeded("churn");
    // The live state is bounded by `--max-calls`, and the history of recent events by
    // `--history-bytes`: bounds the demo fills within the warm-up (20 calls a second) keep their
    // growth out of the comparison, so what is compared is what the churn leaves behind.
    let mut callwire = Callwire::start(&[
        "--demo",
        "--demo-rate",
        "20",
        "--max-calls",
        "100",
        "--history-bytes",
        "65536",
        "--max-clients",
        "4096",
        "--max-per-ip",
        "8192",
    ]);
    let pid = callwire.pid();
    let start_rss = vm_rss_kib(pid);
    let start_fds = open_fds(pid);

    // Warm-up: the allocator's first touch, the live state filling up, the hub's slab used.
    let warm = churn(callwire.port, WARM_UP_TIME, &mut rng);
    assert_eq!(warm.failures, 0, "warm-up failures: {:#?}", warm.said);
    let fds_before = settle(&callwire, None);
    let rss_before = vm_rss_kib(pid);
    let peak_before = vm_hwm_kib(pid);

    let report = churn(callwire.port, CHURN_TIME, &mut rng);
    let fds_after = settle(&callwire, Some(fds_before));
    let rss_after = vm_rss_kib(pid);
    let peak_after = vm_hwm_kib(pid);
    let health = callwire.healthz();
    println!(
        "churn: at start {start_rss} KiB, {start_fds} fds; warm-up {warm:?}\n\
         before {rss_before} KiB (peak {peak_before}), {fds_before} fds; \
         after {rss_after} KiB (peak {peak_after}), {fds_after} fds\n\
         {report:?}\nhealthz {health:?}"
    );

    assert_eq!(report.failures, 0, "churn failures: {:#?}", report.said);
    assert!(
        callwire.child.try_wait().unwrap().is_none(),
        "callwire exited"
    );
    assert_eq!(health.0, 200, "{health:?}");
    // Real churn: many times the fleet's size, in every dialect, every way of leaving, with
    // events received all along.
    let sessions: usize = report.sessions.iter().sum();
    assert!(
        sessions >= 5 * CHURN_CLIENTS,
        "only {sessions} sessions: {report:?}"
    );
    assert!(report.sessions.iter().all(|&n| n > 0), "{report:?}");
    assert!(report.left.iter().all(|&n| n > 0), "{report:?}");
    assert!(report.events >= sessions, "{report:?}");

    assert_eq!(
        fds_after, fds_before,
        "descriptors: {fds_before} before the churn, {fds_after} after"
    );
    assert!(
        rss_after * 10 <= rss_before * 11,
        "resident memory grew more than 10 %: {rss_before} KiB before, {rss_after} KiB after"
    );
}

// ---------------------------------------------------------------------------------------------
// Flood at max clients

/// Sequence numbers of a Blackhole client's events, in arrival order.
#[derive(Debug, Default)]
struct Sequence(Vec<u64>);

fn note_seq(state: &mut Sequence, text: &str) {
    let frame: Value = serde_json::from_str(text).expect("a JSON frame");
    if frame["action"] == "event" {
        state.0.push(frame["data"]["seq"].as_u64().expect("a seq"));
    }
}

/// The next text frame (pings skipped), parsed; `None` on a timeout or a closed socket.
fn read_json(ws: &mut Ws) -> Option<Value> {
    loop {
        match ws.read().ok()? {
            Message::Text(text) => return serde_json::from_str(&text).ok(),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

/// Publishes `{"seq": n}` for each n in `seqs` on one topic, through one `mosquitto_pub -l`
/// (QoS 1, in order), a line every `pace`.
fn publish_seqs(topic: &str, seqs: std::ops::Range<u64>, pace: Duration) {
    let mut publisher = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &BROKER_PORT.to_string()])
        .args(["-q", "1", "-t", topic, "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub runs");
    let mut stdin = publisher.stdin.take().unwrap();
    for seq in seqs {
        writeln!(stdin, r#"{{"seq":{seq}}}"#).unwrap();
        stdin.flush().unwrap();
        thread::sleep(pace);
    }
    drop(stdin);
    assert!(publisher.wait().unwrap().success(), "mosquitto_pub failed");
}

/// At `--max-clients` 200, 100 more upgrades in all three dialects, all at once and while
/// events flow, are each answered 503; the 200 connected clients receive every event, in
/// order, before, during and after the flood.
#[test]
fn a_flood_past_max_clients_is_refused_503_and_the_connected_miss_nothing() {
    const MAX: usize = 200;
    const EXTRA: usize = 100;
    const DURING: u64 = 150;
    const AFTER: u64 = 150;
    let _heavy = heavy();
    let prefix = unique("flood");
    let callwire = mqtt_callwire(
        &prefix,
        &["--max-clients", "200", "--max-per-ip", "4096"],
        None,
    );
    let port = callwire.port;
    let total = DURING + AFTER;
    let subscribe = Subscribe {
        blackhole: json!({"action": "subscribe", "request_id": "flood",
                          "data": {"binding": "call.#"}})
        .to_string(),
        isymphony: String::new(),
        cable: String::new(),
    };
    let confirmed = Arc::new(AtomicUsize::new(0));
    let fleet = spawn_fleet(
        port,
        vec![Dialect::Blackhole; MAX],
        subscribe,
        note_seq,
        move |seen: &Sequence| seen.0.len() as u64 >= total,
        confirmed.clone(),
        Instant::now() + Duration::from_secs(120),
    );
    wait_for(
        "200 confirmed subscriptions",
        Duration::from_secs(60),
        || confirmed.load(Ordering::SeqCst) == MAX,
    );
    assert_eq!(healthz_clients(&callwire), MAX as u64);

    let topic = format!("{prefix}/call/CHANNEL_CREATE/flood");
    let during = {
        let topic = topic.clone();
        thread::spawn(move || publish_seqs(&topic, 0..DURING, Duration::from_millis(10)))
    };
    let flood: Vec<JoinHandle<Result<u16, String>>> = (0..EXTRA)
        .map(|n| {
            thread::spawn(move || match open(port, Dialect::nth(n), None) {
                Ok(_) => Ok(101),
                Err(tungstenite::Error::Http(response)) => Ok(response.status().as_u16()),
                Err(err) => Err(err.to_string()),
            })
        })
        .collect();
    let statuses: Vec<Result<u16, String>> = flood
        .into_iter()
        .map(|upgrade| upgrade.join().unwrap())
        .collect();
    during.join().unwrap();
    assert_eq!(
        healthz_clients(&callwire),
        MAX as u64,
        "the flood changed the client count"
    );
    publish_seqs(&topic, DURING..total, Duration::from_millis(10));

    let members = join_fleet(fleet);
    let refused = statuses.iter().filter(|s| **s == Ok(503)).count();
    println!("flood: {refused} of {EXTRA} extra upgrades answered 503");
    assert_eq!(refused, EXTRA, "statuses: {statuses:?}");
    let expected: Vec<u64> = (0..total).collect();
    let mut short = Vec::new();
    for (n, member) in members.iter().enumerate() {
        assert!(
            member.confirmed,
            "client {n} not subscribed: {:?}",
            member.ended
        );
        if member.state.0 != expected {
            short.push((n, member.state.0.len(), member.ended.clone()));
        }
    }
    assert!(
        short.is_empty(),
        "{} of {MAX} clients missed or reordered events (client, events received, end): {:?}",
        short.len(),
        &short[..short.len().min(10)]
    );
    assert_eq!(healthz_clients(&callwire), MAX as u64);
}

// ---------------------------------------------------------------------------------------------
// SIGTERM with 1000 clients

/// The last text frame a client had when its connection ended, and how many it had.
#[derive(Debug, Default)]
struct LastText {
    count: usize,
    last: Option<String>,
}

fn note_last(state: &mut LastText, text: &str) {
    state.count += 1;
    state.last = Some(text.to_owned());
}

/// SIGTERM with 1000 clients connected in all three dialects, events flowing: every client
/// hears its dialect's goodbye (Blackhole and iSymphony a close frame 1001; ActionCable the
/// `server_restart` disconnect with `reconnect: true`, then a close frame), and the process
/// exits 0 within 5 s of the signal.
#[test]
fn sigterm_with_1000_clients_says_each_dialects_goodbye_and_exits_0_within_5_s() {
    const CLIENTS: usize = 1000;
    let _heavy = heavy();
    let mut callwire = Callwire::start(&[
        "--demo",
        "--demo-rate",
        "20",
        "--max-clients",
        "1024",
        "--max-per-ip",
        "4096",
    ]);
    let confirmed = Arc::new(AtomicUsize::new(0));
    let fleet = spawn_fleet(
        callwire.port,
        (0..CLIENTS).map(Dialect::nth).collect(),
        Subscribe::demo_creates(),
        note_last,
        |_: &LastText| false,
        confirmed.clone(),
        Instant::now() + Duration::from_secs(120),
    );
    wait_for(
        "1000 confirmed subscriptions",
        Duration::from_secs(60),
        || confirmed.load(Ordering::SeqCst) == CLIENTS,
    );
    assert_eq!(healthz_clients(&callwire), CLIENTS as u64);

    sigterm(callwire.pid());
    let signalled = Instant::now();
    let deadline = signalled + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = callwire.child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let exited_after = signalled.elapsed();
    let log = callwire.log_text();
    println!("sigterm: {status:?} after {exited_after:?}");
    // (Still running: dropping `callwire` kills it, which ends the clients' threads too.)
    let status = status.unwrap_or_else(|| panic!("still running 5 s after SIGTERM:\n{log}"));
    assert!(status.success(), "exited with {status}:\n{log}");
    let members = join_fleet(fleet);

    let server_restart =
        json!({"type": "disconnect", "reason": "server_restart", "reconnect": true});
    let mut wrong: Vec<String> = Vec::new();
    let mut per_dialect: BTreeMap<Dialect, usize> = BTreeMap::new();
    for (n, member) in members.iter().enumerate() {
        let said = format!(
            "client {n} ({:?}): close {:?}, last text {:?}, ended {:?}",
            member.dialect, member.close, member.state.last, member.ended
        );
        let goodbye = match member.dialect {
            Dialect::Blackhole | Dialect::ISymphony => {
                member.close == Some(Some(u16::from(CloseCode::Away)))
            }
            Dialect::Cable => {
                let last: Option<Value> = member
                    .state
                    .last
                    .as_deref()
                    .and_then(|text| serde_json::from_str(text).ok());
                member.close.is_some() && last.as_ref() == Some(&server_restart)
            }
        };
        if !member.confirmed || !goodbye || member.ended.is_none() {
            wrong.push(said);
        } else {
            *per_dialect.entry(member.dialect).or_default() += 1;
        }
    }
    println!("sigterm: goodbyes heard {per_dialect:?}");
    assert!(
        wrong.is_empty(),
        "{} of {CLIENTS} clients did not hear their goodbye, e.g. {:#?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
}

// ---------------------------------------------------------------------------------------------
// Account isolation

const ACCOUNTS: [&str; 3] = [
    "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1",
    "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2",
    "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3",
];
/// One credential per account, then the `*` one.
const CREDENTIALS: [(&str, &str); 4] = [
    ("iso-desk-a", "iso-a-s3cret-4e1f9b"),
    ("iso-desk-b", "iso-b-s3cret-c07a2d"),
    ("iso-desk-c", "iso-c-s3cret-91bd6e"),
    ("iso-manager", "iso-manager-s3cret-5d28aa"),
];
const STAR: usize = 3;
/// Secrets no credential has, tried where a real client might mistype one.
const WRONG_SECRETS: [&str; 3] = [
    "iso-a-s3cret-4e1f9X",
    "iso-wrong-cable-key-0b3c",
    "iso-wrong-bearer-77a1e4",
];

fn scope_name(scope: usize) -> &'static str {
    ["A", "B", "C", "*"][scope]
}

/// Whether `scope` (an account's index, or `STAR`) may see something of `account`.
fn visible(account: Option<usize>, scope: usize) -> bool {
    scope == STAR || account == Some(scope)
}

fn isolation_credentials() -> TempFile {
    let mut set: Vec<Credential> = (0..3)
        .map(|i| (CREDENTIALS[i].0, CREDENTIALS[i].1, ACCOUNTS[i]))
        .collect();
    set.push((CREDENTIALS[STAR].0, CREDENTIALS[STAR].1, "*"));
    credentials(&set)
}

/// An event's account by events.md's rule: the first non-empty string of `Account-ID`,
/// `account_id`, `Custom-Channel-Vars.Account-ID`, `custom_channel_vars.account_id`.
fn account_of(payload: &Value) -> Option<usize> {
    let paths: [&[&str]; 4] = [
        &["Account-ID"],
        &["account_id"],
        &["Custom-Channel-Vars", "Account-ID"],
        &["custom_channel_vars", "account_id"],
    ];
    let account = paths.iter().find_map(|path| {
        let value = path.iter().try_fold(payload, |v, key| v.get(key))?;
        value.as_str().filter(|s| !s.is_empty())
    })?;
    Some(
        ACCOUNTS
            .iter()
            .position(|a| *a == account)
            .unwrap_or_else(|| panic!("an account the test never used: {account}")),
    )
}

/// Puts `account` where Kazoo and its relatives do: `placement` picks the field.
fn place_account(payload: &mut Value, account: Option<usize>, placement: u64) {
    let Some(account) = account else { return };
    let account = ACCOUNTS[account];
    match placement % 3 {
        0 => payload["Account-ID"] = json!(account),
        1 => payload["Custom-Channel-Vars"] = json!({"Account-ID": account}),
        _ => payload["account_id"] = json!(account),
    }
}

/// One event the isolation test publishes.
#[derive(Debug)]
struct Sent {
    seq: u64,
    account: Option<usize>,
    /// The topic under the test's prefix, which is also the routing key with `/` for `.`.
    topic: String,
    payload: Value,
}

/// A call of the isolation test.
#[derive(Debug)]
struct TestCall {
    id: String,
    account: usize,
    from: (String, String),
    to: (String, String),
    /// The Kazoo events still to publish, in order.
    events: Vec<&'static str>,
}

/// Random Kazoo call lifecycles and other events of three accounts (and some of none),
/// interleaved; a call's own events stay in order. Returns the events with their sequence
/// numbers, and every call by id.
fn random_events(rng: &mut Rng) -> (Vec<Sent>, BTreeMap<String, TestCall>) {
    // Each stream is a call (its events in order) or one other event.
    enum Stream {
        Call(String),
        Other(&'static str, Option<usize>),
    }
    let mut calls: BTreeMap<String, TestCall> = BTreeMap::new();
    let mut streams: Vec<Stream> = Vec::new();
    for account in 0..3 {
        for n in 0..(6 + rng.below(6)) {
            let id = format!(
                "iso-{}-{n}-{:08x}",
                scope_name(account),
                rng.next_u64() as u32
            );
            // Extension numbers overlap across accounts on purpose; names say whose they are.
            let from_number = format!("20{}", rng.below(4));
            let to_number = format!("30{}", rng.below(3));
            let mut events = vec!["CHANNEL_CREATE"];
            if chance(rng, 70) {
                events.push("CHANNEL_ANSWER");
            }
            if chance(rng, 45) {
                events.push("CHANNEL_DESTROY");
            }
            calls.insert(
                id.clone(),
                TestCall {
                    id: id.clone(),
                    account,
                    from: (
                        from_number.clone(),
                        format!("caller {from_number} of {}", scope_name(account)),
                    ),
                    to: (
                        to_number.clone(),
                        format!("desk {to_number} of {}", scope_name(account)),
                    ),
                    events,
                },
            );
            streams.push(Stream::Call(id));
        }
        for _ in 0..(3 + rng.below(4)) {
            let family = ["presence", "conference"][rng.below(2) as usize];
            streams.push(Stream::Other(family, Some(account)));
        }
    }
    for _ in 0..4 {
        streams.push(Stream::Other("system", None));
    }
    let mut sent = Vec::new();
    while !streams.is_empty() {
        let pick = rng.below(streams.len() as u64) as usize;
        let seq = sent.len() as u64;
        let placement = rng.next_u64();
        match &streams[pick] {
            Stream::Call(id) => {
                let call = calls.get_mut(id).unwrap();
                let name = call.events.remove(0);
                let mut payload = json!({
                    "Event-Name": name, "Call-ID": call.id, "Call-Direction": "inbound",
                    "Caller-ID-Number": call.from.0, "Caller-ID-Name": call.from.1,
                    "Callee-ID-Number": call.to.0, "Callee-ID-Name": call.to.1,
                    "Timestamp": 63_962_648_130u64 + seq, "Test-Seq": seq,
                });
                place_account(&mut payload, Some(call.account), placement);
                sent.push(Sent {
                    seq,
                    account: Some(call.account),
                    topic: format!("call/{name}/{}", call.id),
                    payload,
                });
                if call.events.is_empty() {
                    streams.swap_remove(pick);
                }
            }
            Stream::Other(family, account) => {
                let (family, account) = (*family, *account);
                let mut payload = match family {
                    "presence" => json!({"Presence-ID": "201@example.net", "State": "early"}),
                    "conference" => json!({"Event-Name": "participant_joined",
                                           "Conference-ID": format!("conf-{seq}")}),
                    _ => json!({"Node": "kz1.example.net", "Uptime": seq}),
                };
                payload["Test-Seq"] = json!(seq);
                place_account(&mut payload, account, placement);
                sent.push(Sent {
                    seq,
                    account,
                    topic: format!("{family}/update/{seq}"),
                    payload,
                });
                streams.swap_remove(pick);
            }
        }
    }
    // Restore each call's event list (it was consumed above) for the expectations.
    for event in &sent {
        if let Some(id) = event.payload["Call-ID"].as_str() {
            let name = ["CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_DESTROY"]
                .into_iter()
                .find(|name| event.payload["Event-Name"] == *name)
                .unwrap();
            calls.get_mut(id).unwrap().events.push(name);
        }
    }
    (sent, calls)
}

/// One isolation client: a dialect, a scope, and its socket (blocking, subscribed).
struct Watcher {
    dialect: Dialect,
    scope: usize,
    ws: Ws,
    /// The ActionCable identifier, byte for byte.
    identifier: String,
}

/// Connects and subscribes one client of `scope` in `dialect` with its own credential, and
/// nothing narrower than everything: Blackhole binds `#`, iSymphony sets no filter,
/// ActionCable leaves `events` out (every model).
fn watcher(port: u16, dialect: Dialect, scope: usize) -> Watcher {
    let (name, secret) = CREDENTIALS[scope];
    let basic = (dialect == Dialect::ISymphony).then_some((name, secret));
    let mut ws = open(port, dialect, basic).expect("an upgrade");
    let mut identifier = String::new();
    match dialect {
        Dialect::Blackhole => {
            let subscribe = json!({"action": "subscribe", "request_id": "iso",
                                   "auth_token": secret, "data": {"binding": "#"}});
            send_text(&mut ws, &subscribe.to_string()).unwrap();
            let reply = read_json(&mut ws).expect("a reply");
            assert_eq!(reply["status"], "success", "{reply}");
        }
        Dialect::ISymphony => {}
        Dialect::Cable => {
            assert_eq!(read_json(&mut ws), Some(json!({"type": "welcome"})));
            identifier = json!({"channel": "ApiChannel", "key": secret}).to_string();
            let subscribe = json!({"command": "subscribe", "identifier": identifier});
            send_text(&mut ws, &subscribe.to_string()).unwrap();
            let reply = read_json(&mut ws).expect("a reply");
            assert_eq!(reply["type"], "confirm_subscription", "{reply}");
        }
    }
    Watcher {
        dialect,
        scope,
        ws,
        identifier,
    }
}

/// What one frame tells about isolation: whose it is, and which event it carries (its
/// `Test-Seq`) or which call.
#[derive(Debug)]
enum Seen {
    /// An event, in the dialect's main form (Blackhole event, iSymphony payload,
    /// ActionCable `events` model).
    Event { seq: u64, account: Option<usize> },
    /// An ActionCable family model's update (its object is the payload).
    Family { seq: u64, account: Option<usize> },
    /// An ActionCable `calls` change.
    Call {
        kind: String,
        id: String,
        account: Option<usize>,
    },
}

/// The event's sequence number at `key`: `Test-Seq` as published, `test_seq` in Blackhole's
/// normalised data.
fn seq_of(payload: &Value, key: &str) -> u64 {
    payload[key]
        .as_u64()
        .unwrap_or_else(|| panic!("a frame without {key}: {payload}"))
}

/// A watcher's dialect and scope, and what it saw (`watch`).
type Watched = (Dialect, usize, Result<Vec<Seen>, String>);

/// Reads what a watcher was sent until the event `stop` (by seq); returns what it saw, or
/// why it could not.
fn watch(mut watcher: Watcher, stop: u64) -> Result<Vec<Seen>, String> {
    let mut seen = Vec::new();
    // ActionCable's pings every 3 s would keep a read timeout from ever expiring.
    let deadline = Instant::now() + 2 * IO_TIMEOUT;
    loop {
        let frame = read_json(&mut watcher.ws).filter(|_| Instant::now() < deadline);
        let Some(frame) = frame else {
            return Err(format!(
                "{:?} of {}: the socket ended or went quiet after {} frames",
                watcher.dialect,
                scope_name(watcher.scope),
                seen.len()
            ));
        };
        let item = match watcher.dialect {
            Dialect::Blackhole => {
                if frame["action"] != "event" {
                    return Err(format!("unexpected Blackhole frame {frame}"));
                }
                let data = &frame["data"];
                Seen::Event {
                    seq: seq_of(data, "test_seq"),
                    account: account_of(data),
                }
            }
            Dialect::ISymphony => Seen::Event {
                seq: seq_of(&frame, "Test-Seq"),
                account: account_of(&frame),
            },
            Dialect::Cable => {
                if frame["type"] == "ping" {
                    continue;
                }
                if frame["identifier"] != watcher.identifier.as_str() {
                    return Err(format!("unexpected ActionCable frame {frame}"));
                }
                let message = &frame["message"];
                let object = &message["object"];
                match message["event_class"].as_str() {
                    Some("Call") => {
                        let owner = object["account"]
                            .as_str()
                            .map(|a| ACCOUNTS.iter().position(|x| *x == a).unwrap_or(usize::MAX));
                        Seen::Call {
                            kind: message["event_type"].as_str().unwrap_or("").to_owned(),
                            id: object["id"].as_str().unwrap_or("").to_owned(),
                            account: owner,
                        }
                    }
                    Some("Event") => Seen::Event {
                        seq: seq_of(&object["data"], "Test-Seq"),
                        account: account_of(&object["data"]),
                    },
                    _ => Seen::Family {
                        seq: seq_of(object, "Test-Seq"),
                        account: account_of(object),
                    },
                }
            }
        };
        let done = matches!(item, Seen::Event { seq, .. } if seq == stop);
        seen.push(item);
        if done {
            return Ok(seen);
        }
    }
}

/// A REST GET with a credential; the status and the body parsed.
fn rest_get(callwire: &Callwire, path: &str, authorization: &str) -> (u16, Value) {
    let (status, body) = callwire.http("GET", path, &[("Authorization", authorization)]);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn basic_header(scope: usize) -> String {
    let (name, secret) = CREDENTIALS[scope];
    format!("Basic {}", basic_token(name, secret))
}

fn bearer_header(scope: usize) -> String {
    format!("Bearer {}", CREDENTIALS[scope].1)
}

/// Random call events of three accounts, and a few of none, pushed through all three dialects
/// and the REST live API with a credential per account and a `*` one: nobody sees another
/// account's event or call, each sees every one of its own, the `*` credential sees all. Run
/// at debug level, the log never holds a secret (nor a wrong one tried, nor a Basic token).
#[test]
fn accounts_never_see_each_others_events_or_calls_and_secrets_never_reach_the_log() {
    let mut rng = seeded("isolation");
    let creds = isolation_credentials();
    let prefix = unique("iso");
    let callwire = mqtt_callwire(
        &prefix,
        &[
            "--auth",
            creds.path(),
            "--log-level",
            "debug",
            "--queue-depth",
            "1024",
        ],
        Some(CREDENTIALS[STAR].1),
    );
    let port = callwire.port;
    let (mut sent, calls) = random_events(&mut rng);
    // Two rounds of one end marker per account, then one of no account: each account's
    // watchers read to their second marker, so everything published before it, the other
    // accounts' first markers included, has had its chance to reach them; `*` reads to the last.
    let mut stops = [0u64; 4];
    for round in 0..2 {
        for (account, stop) in stops.iter_mut().take(3).enumerate() {
            let seq = sent.len() as u64;
            let mut payload = json!({"Test-Seq": seq, "end": round});
            place_account(&mut payload, Some(account), rng.next_u64());
            sent.push(Sent {
                seq,
                account: Some(account),
                topic: format!("end/{round}/{seq}"),
                payload,
            });
            *stop = seq;
        }
    }
    let last = sent.len() as u64;
    sent.push(Sent {
        seq: last,
        account: None,
        topic: format!("end/last/{last}"),
        payload: json!({"Test-Seq": last, "end": "last"}),
    });
    stops[STAR] = last;

    let watchers: Vec<JoinHandle<Watched>> = (0..4)
        .flat_map(|scope| DIALECTS.map(|dialect| (scope, dialect)))
        .map(|(scope, dialect)| {
            let watcher = watcher(port, dialect, scope);
            let stop = stops[scope];
            thread::spawn(move || (dialect, scope, watch(watcher, stop)))
        })
        .collect();
    for event in &sent {
        mosquitto_pub(
            BROKER_PORT,
            &format!("{prefix}/{}", event.topic),
            &event.payload.to_string(),
        );
    }
    let account_of_call = |id: &str| calls.get(id).map(|call| call.account);

    for handle in watchers {
        let (dialect, scope, result) = handle.join().unwrap();
        let who = format!("{dialect:?} client of {}", scope_name(scope));
        let seen = result.unwrap_or_else(|err| panic!("{who}: {err}"));
        let expected: Vec<u64> = sent
            .iter()
            .filter(|e| e.seq <= stops[scope] && visible(e.account, scope))
            .map(|e| e.seq)
            .collect();
        let mut events = Vec::new();
        let mut created = BTreeSet::new();
        for item in &seen {
            match item {
                Seen::Event { seq, account } | Seen::Family { seq, account } => {
                    let truth = sent[*seq as usize].account;
                    assert_eq!(
                        *account, truth,
                        "{who}: event {seq} read with another account"
                    );
                    assert!(visible(truth, scope), "{who} saw event {seq} of {truth:?}");
                    if matches!(item, Seen::Event { .. }) {
                        events.push(*seq);
                    }
                }
                Seen::Call { kind, id, account } => {
                    let truth = account_of_call(id);
                    assert!(
                        truth.is_some(),
                        "{who} saw a call the test never made: {id}"
                    );
                    assert_eq!(
                        *account, truth,
                        "{who}: call {id} shown with another account"
                    );
                    assert!(visible(truth, scope), "{who} saw call {id} of {truth:?}");
                    if kind == "create" {
                        created.insert(id.clone());
                    }
                }
            }
        }
        assert_eq!(
            events, expected,
            "{who}: not exactly its own events, in order"
        );
        if dialect == Dialect::Cable {
            let own: BTreeSet<String> = calls
                .values()
                .filter(|call| visible(Some(call.account), scope))
                .map(|call| call.id.clone())
                .collect();
            assert_eq!(created, own, "{who}: not exactly its own calls created");
        }
    }

    // REST: the live calls each credential may see, with Basic and with Bearer.
    let live = |scope: usize| -> BTreeSet<String> {
        calls
            .values()
            .filter(|call| visible(Some(call.account), scope))
            .filter(|call| !call.events.contains(&"CHANNEL_DESTROY"))
            .map(|call| call.id.clone())
            .collect()
    };
    for scope in 0..4 {
        for authorization in [basic_header(scope), bearer_header(scope)] {
            let who = format!("REST as {} ({})", scope_name(scope), &authorization[..6]);
            let (status, listing) = rest_get(&callwire, "/rest/live/calls", &authorization);
            assert_eq!(status, 200, "{who}: {listing}");
            let listing = listing.as_array().expect("an array of calls");
            let ids: BTreeSet<String> = listing
                .iter()
                .map(|call| call["id"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(ids, live(scope), "{who}: not exactly its own live calls");
            for call in listing {
                let id = call["id"].as_str().unwrap();
                assert_eq!(
                    call["account"],
                    ACCOUNTS[account_of_call(id).unwrap()],
                    "{who}: {call}"
                );
            }
            let (status, extensions) = rest_get(&callwire, "/rest/live/extensions", &authorization);
            assert_eq!(status, 200, "{who}: {extensions}");
            for extension in extensions.as_array().expect("an array of extensions") {
                for id in extension["calls"].as_array().unwrap() {
                    let id = id.as_str().unwrap();
                    assert!(live(scope).contains(id), "{who}: extension {extension}");
                }
                if scope != STAR {
                    let name = extension["name"].as_str().unwrap_or("");
                    assert!(
                        name.ends_with(&format!(" of {}", scope_name(scope))),
                        "{who}: extension named from another account: {extension}"
                    );
                }
            }
        }
        if scope == STAR {
            continue;
        }
        // Another account's call is not there at all; one's own is, with only its own events.
        for call in calls.values() {
            let path = format!("/rest/live/calls/{}", call.id);
            let (status, body) = rest_get(&callwire, &path, &basic_header(scope));
            let (events_status, events) =
                rest_get(&callwire, &format!("{path}/events"), &bearer_header(scope));
            if call.account != scope || !live(STAR).contains(&call.id) {
                assert_eq!(
                    status,
                    404,
                    "{} asked for {}: {body}",
                    scope_name(scope),
                    call.id
                );
                assert_eq!(events_status, 404, "{}: {events}", scope_name(scope));
            } else {
                assert_eq!(status, 200, "{body}");
                assert_eq!(events_status, 200, "{events}");
                for event in events.as_array().unwrap() {
                    assert_eq!(account_of(&event["data"]), Some(scope), "{event}");
                }
            }
        }
    }
    let (status, _) = callwire.http("GET", "/rest/live/calls", &[]);
    assert_eq!(status, 401);

    // Wrong secrets, and a right one asking for another account, where clients send them.
    let mut blackhole = open(port, Dialect::Blackhole, None).unwrap();
    send_text(
        &mut blackhole,
        &json!({"action": "subscribe", "request_id": "w1", "auth_token": WRONG_SECRETS[0],
                "data": {"binding": "#"}})
        .to_string(),
    )
    .unwrap();
    let reply = read_json(&mut blackhole).unwrap();
    assert_eq!(
        reply["data"]["errors"],
        json!(["failed to authenticate token"])
    );
    send_text(
        &mut blackhole,
        &json!({"action": "subscribe", "request_id": "w2", "auth_token": CREDENTIALS[0].1,
                "data": {"binding": "#", "account_id": ACCOUNTS[1]}})
        .to_string(),
    )
    .unwrap();
    let reply = read_json(&mut blackhole).unwrap();
    assert_eq!(reply["data"]["errors"], json!(["unauthorized account id"]));
    let mut cable = open(port, Dialect::Cable, None).unwrap();
    read_json(&mut cable).unwrap();
    let identifier = json!({"channel": "ApiChannel", "key": WRONG_SECRETS[1]}).to_string();
    send_text(
        &mut cable,
        &json!({"command": "subscribe", "identifier": identifier}).to_string(),
    )
    .unwrap();
    assert_eq!(
        read_json(&mut cable).unwrap()["type"],
        "reject_subscription"
    );
    match open(
        port,
        Dialect::ISymphony,
        Some((CREDENTIALS[0].0, WRONG_SECRETS[0])),
    ) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("a wrong iSymphony password was let in: {:?}", other.is_ok()),
    }
    let wrong_bearer = format!("Bearer {}", WRONG_SECRETS[2]);
    assert_eq!(
        rest_get(&callwire, "/rest/live/calls", &wrong_bearer).0,
        401
    );

    let log = callwire.log_text();
    // A debug line (`debug ...`, or `<7>...` under journald) shows the level was in force.
    assert!(
        log.lines()
            .any(|line| line.starts_with("debug") || line.starts_with("<7>")),
        "no debug line in the log, so it proves little:\n{log}"
    );
    let mut secrets: Vec<String> = CREDENTIALS.iter().map(|(_, s)| s.to_string()).collect();
    secrets.extend(WRONG_SECRETS.iter().map(|s| s.to_string()));
    secrets.extend(CREDENTIALS.iter().map(|(n, s)| basic_token(n, s)));
    secrets.push(basic_token(CREDENTIALS[0].0, WRONG_SECRETS[0]));
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "{secret} is in the log:\n{log}"
        );
    }
    println!(
        "isolation: {} events, {} calls; log of {} lines holds no secret",
        sent.len(),
        calls.len(),
        log.lines().count()
    );
}

/// A call id that another account's events reuse: the first account's call, its events and
/// its ActionCable `calls` changes show nothing of the other account, and the other account
/// neither sees the call nor ends it.
#[test]
fn a_call_id_reused_by_another_account_leaves_the_first_accounts_call_alone() {
    let creds = isolation_credentials();
    let prefix = unique("iso-reuse");
    let callwire = mqtt_callwire(
        &prefix,
        &["--auth", creds.path()],
        Some(CREDENTIALS[STAR].1),
    );
    let watcher_a = watcher(callwire.port, Dialect::Cable, 0);
    let id = unique("shared-call-");
    let publish = |seq: u64, name: &str, account: usize| {
        let payload = json!({
            "Event-Name": name, "Call-ID": id, "Account-ID": ACCOUNTS[account],
            "Call-Direction": "inbound", "Caller-ID-Number": "201",
            "Callee-ID-Number": "301", "Test-Seq": seq,
        });
        let topic = format!("{prefix}/call/{name}/{id}");
        mosquitto_pub(BROKER_PORT, &topic, &payload.to_string());
    };
    publish(0, "CHANNEL_CREATE", 0);
    publish(1, "CHANNEL_ANSWER", 1);
    let end = json!({"Account-ID": ACCOUNTS[0], "Test-Seq": 2});
    mosquitto_pub(BROKER_PORT, &format!("{prefix}/end/a"), &end.to_string());
    let seen = watch(watcher_a, 2).unwrap();
    let changes: Vec<&str> = seen
        .iter()
        .filter_map(|item| match item {
            Seen::Call { kind, .. } => Some(kind.as_str()),
            _ => None,
        })
        .collect();

    let path = format!("/rest/live/calls/{id}");
    let (status, call) = rest_get(&callwire, &path, &basic_header(0));
    let (_, events) = rest_get(&callwire, &format!("{path}/events"), &basic_header(0));
    let (_, listing_b) = rest_get(&callwire, "/rest/live/calls", &basic_header(1));
    let star = watcher(callwire.port, Dialect::Blackhole, STAR);
    publish(3, "CHANNEL_DESTROY", 1);
    let end = json!({"Test-Seq": 4});
    mosquitto_pub(BROKER_PORT, &format!("{prefix}/end/star"), &end.to_string());
    // Through the hub, so through the live state too.
    watch(star, 4).unwrap();
    let (status_after, call_after) = rest_get(&callwire, &path, &basic_header(0));

    println!(
        "reuse: A's changes {changes:?}; A's call {status} {call}; its events {events}; \
         B's listing {listing_b}; after B's destroy {status_after} {call_after}"
    );
    assert_eq!(status, 200, "{call}");
    let accounts: Vec<Option<usize>> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|event| account_of(&event["data"]))
        .collect();
    assert_eq!(
        accounts,
        [Some(0)],
        "A's call holds another account's event: {events}"
    );
    assert_eq!(
        changes,
        ["create"],
        "B's event changed A's call in A's eyes"
    );
    assert_eq!(call["state"], "ringing", "{call}");
    assert!(
        listing_b
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["account"] == ACCOUNTS[1]),
        "{listing_b}"
    );
    assert_eq!(
        status_after, 200,
        "B's CHANNEL_DESTROY ended A's call: {call_after}"
    );
}
