//! Fan-out benchmark: callwire against the servers a user could deploy instead, in the same
//! run, with the same clients, events and rates: Mosquitto's own websocket listener, Node-RED
//! (`mqtt in` to `websocket out`) and rumqttd (MQTT over websockets).
//!
//! ```sh
//! tests/bench/install-peers.sh          # once: Node-RED and rumqttd (each optional)
//! cargo bench --bench fanout             # 500 × 100/s, 2000 × 100/s, 2000 × 10/s, 5 s each
//! cargo bench --bench fanout -- --scenario 10000x100 --seconds 10
//! ```
//!
//! Per scenario (N clients, R events/s for S seconds, E = R × S events), in order:
//!
//! 1. Starts a private Mosquitto (Debian's build has libwebsockets linked in) with an MQTT
//!    listener and a websockets listener on free loopback ports.
//! 2. Mosquitto: opens N MQTT-over-websocket clients (subprotocol `mqtt`), each with CONNECT +
//!    SUBSCRIBE `pbx/call/#` at QoS 0; waits until they are idle; publishes E events at R/s to
//!    the MQTT listener; counts the PUBLISH packets the clients receive.
//! 3. callwire: the release `callwire` with `--mqtt` at the same Mosquitto (`--mqtt-topic
//!    'pbx/#' --mqtt-strip-prefix pbx/`); N Blackhole clients bound to `call.#`.
//! 4. Node-RED (when `tests/bench/peers/node_modules` has it): `node red.js` with a flow of
//!    `mqtt in` (`pbx/call/#`, QoS 0, payload as a UTF-8 string) from the same Mosquitto to
//!    `websocket out` on `/ws/events`; N plain websocket clients, each text frame one event.
//! 5. rumqttd (when `target/peers/bin/rumqttd` is there): its own MQTT and websocket
//!    listeners; the same N MQTT-over-websocket clients as Mosquitto's, events published to it.
//! 6. Floor: N loopback TCP pairs, one plain `write` of a real callwire event frame (the first
//!    one a client received, header and all) to each, E times; CPU of the writing thread
//!    around the write loops only. The reading ends are in a helper process (this binary,
//!    `--floor-sink`) that drains them from an epoll loop, so each write pays for waking its
//!    reader as a server's does, and no process needs more than about N descriptors.
//!
//! 7. The TLS row, after the scenarios (`tls_idle`): memory per idle connection with
//!    `--tls-cert`, beside the same number of plain ones (`--tls-clients N`, default 2000;
//!    `--tls-only` runs nothing else).
//!
//! A peer that is not installed is said to be skipped. Each server's CPU is utime + stime from
//! `/proc/<pid>/stat` around the publish phase; memory is VmRSS from `/proc/<pid>/status`
//! before any client connects and after all N are subscribed and idle. Latency is receipt time
//! in the load generator minus the `ts_us` each event carries (micros since the epoch, stamped
//! by the publisher just before its write). callwire's and Node-RED's latency include
//! Mosquitto's hop to them: that is how they are deployed.
//!
//! The load generator is one thread with a level-triggered epoll loop over non-blocking
//! sockets: one `read` per readiness, websocket frame headers only, and the timestamp read
//! from the tail of the payload. The publisher is a second thread speaking plain MQTT 3.1.1.
//!
//! Read the CPU figures with the latency beside them: a server that writes several queued
//! frames per system call spends less CPU per delivery and delays the frames it holds.
//! callwire writes whatever queued while its last round of writes went out, so its batches
//! grow only when the load does.
//!
//! It prints, with the issue's targets as PASS or MISS; it asserts nothing about time. It exits
//! non-zero only when a server did not deliver N × E events, or when the run could not be set
//! up.

mod tls_idle;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The account every event names (callwire runs without `--auth`, so every client sees it).
const ACCOUNT: &str = "4b31dd1d32ce6d249897c06332375d65";
/// What a Blackhole client binds, and what a Mosquitto client subscribes to.
const BINDING: &str = "call.#";
const MQTT_FILTER: &str = "pbx/call/#";
/// The start of every Blackhole event frame's payload.
const EVENT_PREFIX: &[u8] = br#"{"action":"event""#;
/// How long a server may go without delivering anything, once publishing is over, before the
/// phase gives up on the missing deliveries.
const STALL: Duration = Duration::from_secs(10);
/// How long clients sit idle before the "idle" memory sample.
const SETTLE: Duration = Duration::from_secs(1);
/// The load generator's read buffer.
const SCRATCH: usize = 64 * 1024;
/// Clients set up together, one step at a time.
const SETUP_BATCH: usize = 250;
/// Node-RED's `websocket out` path.
const NODE_RED_PATH: &str = "/ws/events";

fn main() -> ExitCode {
    let words: Vec<String> = std::env::args().collect();
    if words.get(1).map(String::as_str) == Some(FLOOR_SINK) {
        return match floor_sink(&words[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("fanout {FLOOR_SINK}: {message}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match Args::parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("fanout: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("fanout: {message}");
            ExitCode::from(2)
        }
    }
}

const USAGE: &str = "usage: cargo bench --bench fanout -- [--scenario NxR]... [--seconds S]
  --scenario NxR  N websocket clients per server, R events per second; repeat it for more
                  (default: 500x100, 2000x100 and 2000x10, the issue's targets)
  --seconds S     seconds of events per server and scenario (default 5)
  --callwire-arg ARG
                  one more argument for callwire (repeat it for more), e.g.
                  --callwire-arg=--max-bindings --callwire-arg=1
  --tls-clients N  clients in the TLS row: memory per idle connection, plain and TLS
                  (default 2000)
  --tls-only      only the TLS row, no fan-out scenario
  --callwire-bin PATH
                  measure another build of callwire (e.g. the static musl one the README's
                  \"Cross build\" describes) instead of the one cargo bench built";

/// N clients receiving R events a second.
#[derive(Clone, Copy)]
struct Scenario {
    clients: usize,
    rate: f64,
}

struct Args {
    scenarios: Vec<Scenario>,
    seconds: f64,
    /// Extra arguments for callwire, after the bench's own. callwire refuses a flag given
    /// twice, so these can only add flags the bench does not set.
    callwire_args: Vec<String>,
    /// Another build of callwire to measure (a static or size-optimised one); by default the
    /// one `cargo bench` built.
    callwire_bin: Option<String>,
    /// Clients in the TLS row (`tls_idle`).
    tls_clients: usize,
    /// Only the TLS row.
    tls_only: bool,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut args = Args {
            scenarios: Vec::new(),
            seconds: 5.0,
            callwire_args: Vec::new(),
            callwire_bin: None,
            tls_clients: 2000,
            tls_only: false,
        };
        let mut words = std::env::args().skip(1);
        while let Some(word) = words.next() {
            let (flag, inline) = match word.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (word.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| words.next())
                    .ok_or(format!("{flag} needs a value"))
            };
            match flag.as_str() {
                // `cargo bench` passes `--bench` to every bench binary.
                "--bench" => {}
                "--scenario" => {
                    let text = value()?;
                    let (clients, rate) = text
                        .split_once('x')
                        .ok_or(format!("--scenario: expected NxR, got {text}"))?;
                    args.scenarios.push(Scenario {
                        clients: number(&flag, clients)?,
                        rate: positive(&flag, rate)?,
                    });
                }
                "--seconds" => args.seconds = positive(&flag, &value()?)?,
                "--callwire-arg" => args.callwire_args.push(value()?),
                "--callwire-bin" => args.callwire_bin = Some(value()?),
                "--tls-clients" => args.tls_clients = number(&flag, &value()?)?,
                "--tls-only" => args.tls_only = true,
                "--help" | "-h" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                _ => return Err(format!("unknown argument {word}")),
            }
        }
        if args.scenarios.is_empty() && !args.tls_only {
            args.scenarios = [(500, 100.0), (2000, 100.0), (2000, 10.0)]
                .map(|(clients, rate)| Scenario { clients, rate })
                .to_vec();
        }
        Ok(args)
    }

    /// Events published per server in a scenario.
    fn events(&self, scenario: Scenario) -> usize {
        ((scenario.rate * self.seconds).round() as usize).max(1)
    }
}

fn positive(flag: &str, text: &str) -> Result<f64, String> {
    text.parse()
        .ok()
        .filter(|r: &f64| r.is_finite() && *r > 0.0)
        .ok_or(format!("{flag}: not a positive number: {text}"))
}

fn number(flag: &str, text: &str) -> Result<usize, String> {
    text.parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or(format!("{flag}: not a positive whole number: {text}"))
}

fn run(args: &Args) -> Result<bool, String> {
    let most = (args.scenarios.iter().map(|s| s.clients))
        .chain([args.tls_clients])
        .max()
        .unwrap_or(0);
    // N clients here, their servers' N sockets there; the floor's N readers are in a helper
    // process of their own, so no process needs much more than N.
    let fds = raise_fd_limit(most as u64 + 1024)?;
    let peers = Peers::find();
    eprintln!("fanout: fd limit {fds}; {}", peers.describe());
    let mut sittings = Vec::new();
    for &scenario in &args.scenarios {
        sittings.push(sitting(args, scenario, &peers)?);
    }
    let tls_row = tls_idle::measure(args, args.tls_clients)?;
    println!();
    println!("{}", peers.describe());
    for sitting in &sittings {
        report(args, sitting);
    }
    tls_idle::report(&tls_row);
    if !args.tls_only {
        targets(&sittings);
    }
    let mut complete = true;
    for result in sittings.iter().flat_map(|s| &s.results) {
        if result.deliveries != result.expected {
            complete = false;
            println!(
                "\nINCOMPLETE: {} at {} clients delivered {} of {} ({} missing; {} clients short, {} closed)",
                result.name,
                result.clients,
                result.deliveries,
                result.expected,
                result.expected.saturating_sub(result.deliveries),
                result.clients_short,
                result.closed
            );
        }
    }
    Ok(complete)
}

/// Every server measured in one scenario, and the floor.
struct Sitting {
    scenario: Scenario,
    events: usize,
    /// callwire first, then the peers that ran.
    results: Vec<PhaseResult>,
    floor: Floor,
    frame: Vec<u8>,
}

impl Sitting {
    fn callwire(&self) -> &PhaseResult {
        &self.results[0]
    }

    fn peers(&self) -> &[PhaseResult] {
        &self.results[1..]
    }

    fn peer(&self, name: &str) -> Option<&PhaseResult> {
        self.peers().iter().find(|p| p.name == name)
    }

    /// The lowest of a figure among the peers.
    fn best(&self, figure: impl Fn(&PhaseResult) -> f64) -> f64 {
        self.peers()
            .iter()
            .map(figure)
            .fold(f64::INFINITY, f64::min)
    }
}

/// The optional peers, where they are installed.
struct Peers {
    node_red: Option<PathBuf>,
    rumqttd: Option<PathBuf>,
}

impl Peers {
    fn find() -> Peers {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let node_red = root.join("tests/bench/peers/node_modules/node-red/red.js");
        let rumqttd = root.join("target/peers/bin/rumqttd");
        Peers {
            node_red: node_red.is_file().then_some(node_red),
            rumqttd: rumqttd.is_file().then_some(rumqttd),
        }
    }

    fn describe(&self) -> String {
        let say = |name: &str, found: &Option<PathBuf>| match found {
            Some(path) => format!("{name}: {}", path.display()),
            None => format!("{name}: skipped, not installed (tests/bench/install-peers.sh)"),
        };
        format!(
            "peers: mosquitto; {}; {}",
            say("node-red", &self.node_red),
            say("rumqttd", &self.rumqttd)
        )
    }
}

/// One scenario: every server in turn, then the floor.
fn sitting(args: &Args, scenario: Scenario, peers: &Peers) -> Result<Sitting, String> {
    let n = scenario.clients;
    let e = args.events(scenario);
    let dir = TempDir::new()?;
    let mqtt_port = free_port();
    let ws_port = free_port();
    eprintln!(
        "fanout: {n} clients, {e} events at {}/s per server; work dir {}",
        scenario.rate,
        dir.0.display()
    );
    let load = Load {
        clients: n,
        events: e,
        rate: scenario.rate,
    };
    let mosquitto = Server::mosquitto(&dir.0, mqtt_port, ws_port)?;
    let mosquitto_result = phase("mosquitto", &mosquitto, Dialect::Mqtt, mqtt_port, load)?;
    let callwire = Server::callwire(&dir.0, mqtt_port, args, n)?;
    let mut results = vec![phase(
        "callwire",
        &callwire,
        Dialect::Blackhole,
        mqtt_port,
        load,
    )?];
    drop(callwire);
    results.push(mosquitto_result);
    if let Some(red) = &peers.node_red {
        let node_red = Server::node_red(&dir.0, red, mqtt_port)?;
        results.push(phase(
            "node-red",
            &node_red,
            Dialect::Text,
            mqtt_port,
            load,
        )?);
    }
    drop(mosquitto);
    if let Some(bin) = &peers.rumqttd {
        let (rumqttd, own_mqtt) = Server::rumqttd(&dir.0, bin, n)?;
        results.push(phase("rumqttd", &rumqttd, Dialect::Mqtt, own_mqtt, load)?);
    }

    let frame = results[0]
        .sample_frame
        .clone()
        .ok_or("callwire delivered no event frame to measure the floor with")?;
    eprintln!(
        "fanout: floor: one write of a {}-byte frame to each of {n} loopback sockets, {e} times",
        frame.len()
    );
    let floor = write_floor(n, e, &frame)?;
    Ok(Sitting {
        scenario,
        events: e,
        results,
        floor,
        frame,
    })
}

/// What one phase offers a server.
#[derive(Clone, Copy)]
struct Load {
    clients: usize,
    events: usize,
    rate: f64,
}

// ---------------------------------------------------------------------------------------------
// The servers

/// A server process of the run, killed when dropped.
struct Server {
    child: Child,
    /// Where its websocket clients connect: port and path.
    port: u16,
    path: &'static str,
    log: PathBuf,
}

impl Server {
    fn mosquitto(dir: &Path, mqtt_port: u16, ws_port: u16) -> Result<Server, String> {
        let conf = dir.join("mosquitto.conf");
        // max_queued_messages bounds QoS 0 packets waiting per client too: high enough that
        // nothing is dropped however far behind the broker falls.
        let text = format!(
            "listener {mqtt_port} 127.0.0.1\n\
             listener {ws_port} 127.0.0.1\n\
             protocol websockets\n\
             allow_anonymous true\n\
             persistence false\n\
             max_queued_messages 10000000\n\
             set_tcp_nodelay true\n\
             connection_messages false\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n"
        );
        std::fs::write(&conf, text).map_err(|e| format!("writing {}: {e}", conf.display()))?;
        let log = dir.join("mosquitto.log");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(open_log(&log)?)
            .spawn()
            .map_err(|e| format!("starting mosquitto: {e} (apt-get install mosquitto)"))?;
        let mut server = Server {
            child,
            port: ws_port,
            path: "/",
            log,
        };
        server.wait_listening("mosquitto", &[mqtt_port, ws_port])?;
        Ok(server)
    }

    /// Waits until the server accepts connections on every port.
    fn wait_listening(&mut self, name: &str, ports: &[u16]) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        for &port in ports {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                self.check_alive(name)?;
                if Instant::now() > deadline {
                    return Err(format!(
                        "{name} never listened on {port}: {}",
                        self.log_text()
                    ));
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Node-RED with one flow: `mqtt in` from the Mosquitto at `mqtt_port` to `websocket out`
    /// on [`NODE_RED_PATH`]; no editor, no admin API, nothing sent off the machine.
    fn node_red(dir: &Path, red: &Path, mqtt_port: u16) -> Result<Server, String> {
        let user_dir = dir.join("node-red");
        std::fs::create_dir_all(&user_dir).map_err(|e| format!("node-red dir: {e}"))?;
        let port = free_port();
        let flows = format!(
            r#"[
  {{"id":"broker","type":"mqtt-broker","name":"mosquitto","broker":"127.0.0.1","port":"{mqtt_port}",
    "clientid":"","autoConnect":true,"usetls":false,"protocolVersion":"4","keepalive":"60",
    "cleansession":true}},
  {{"id":"listener","type":"websocket-listener","path":"{NODE_RED_PATH}","wholemsg":"false"}},
  {{"id":"flow","type":"tab","label":"fanout"}},
  {{"id":"in","type":"mqtt in","z":"flow","topic":"pbx/call/#","qos":"0","datatype":"utf8",
    "broker":"broker","nl":false,"rap":true,"rh":0,"inputs":0,"wires":[["out"]]}},
  {{"id":"out","type":"websocket out","z":"flow","server":"listener","client":"","wires":[]}}
]"#
        );
        let write = |name: &str, text: &str| {
            let path = user_dir.join(name);
            std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))
        };
        write("flows.json", &flows)?;
        write(
            "settings.js",
            &format!(
                r#"module.exports = {{
  uiHost: "127.0.0.1", uiPort: {port}, flowFile: "flows.json",
  httpAdminRoot: false, disableEditor: true, credentialSecret: false,
  diagnostics: {{ enabled: false, ui: false }},
  telemetry: {{ enabled: false, updateNotification: false }},
  externalModules: {{ autoInstall: false, palette: {{ allowInstall: false }}, modules: {{ allowInstall: false }} }},
  logging: {{ console: {{ level: "info", metrics: false, audit: false }} }}
}};
"#
            ),
        )?;
        let log = dir.join("node-red.log");
        let child = Command::new("node")
            .arg(red)
            .arg("--userDir")
            .arg(&user_dir)
            .arg("--settings")
            .arg(user_dir.join("settings.js"))
            .stdout(open_log(&log)?)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting node-red: {e}"))?;
        let mut server = Server {
            child,
            port,
            path: NODE_RED_PATH,
            log,
        };
        server.wait_listening("node-red", &[port])?;
        server.wait_log("node-red", "Connected to broker")?;
        Ok(server)
    }

    /// rumqttd with an MQTT listener and a websocket one; returns it and its MQTT port.
    fn rumqttd(dir: &Path, bin: &Path, clients: usize) -> Result<(Server, u16), String> {
        let (mqtt_port, ws_port) = (free_port(), free_port());
        let connections = clients + 64;
        let config = dir.join("rumqttd.toml");
        let text = format!(
            "id = 0\n\
             [router]\nid = 0\nmax_connections = {connections}\nmax_outgoing_packet_count = 200\n\
             max_segment_size = 104857600\nmax_segment_count = 10\n\
             [v4.1]\nname = \"v4-1\"\nlisten = \"127.0.0.1:{mqtt_port}\"\nnext_connection_delay_ms = 0\n\
             [v4.1.connections]\nconnection_timeout_ms = 60000\nmax_payload_size = 20480\n\
             max_inflight_count = 100\ndynamic_filters = true\n\
             [ws.1]\nname = \"ws-1\"\nlisten = \"127.0.0.1:{ws_port}\"\nnext_connection_delay_ms = 0\n\
             [ws.1.connections]\nconnection_timeout_ms = 60000\nmax_client_id_len = 256\n\
             throttle_delay_ms = 0\nmax_payload_size = 20480\nmax_inflight_count = 500\n\
             max_inflight_size = 1024\n"
        );
        std::fs::write(&config, text).map_err(|e| format!("writing {}: {e}", config.display()))?;
        let log = dir.join("rumqttd.log");
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .stdout(open_log(&log)?)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting rumqttd: {e}"))?;
        let mut server = Server {
            child,
            port: ws_port,
            path: "/",
            log,
        };
        server.wait_listening("rumqttd", &[mqtt_port, ws_port])?;
        Ok((server, mqtt_port))
    }

    /// Waits until the server's log says `line`.
    fn wait_log(&mut self, name: &str, line: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log_text().contains(line) {
            self.check_alive(name)?;
            if Instant::now() > deadline {
                return Err(format!("{name} never said '{line}': {}", self.log_text()));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn callwire(dir: &Path, mqtt_port: u16, args: &Args, clients: usize) -> Result<Server, String> {
        let mut server = Server::start_callwire(dir, mqtt_port, args, clients, &[])?;
        let deadline = Instant::now() + Duration::from_secs(10);
        // Wait until its MQTT source is connected and subscribed.
        while http_status(server.port, "/healthz") != Some(200) {
            server.check_alive("callwire")?;
            if Instant::now() > deadline {
                return Err(format!(
                    "callwire never connected to the private Mosquitto: {}",
                    server.log_text()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// Starts callwire fed by the Mosquitto at `mqtt_port`, with room for `clients`, plus
    /// `extra` flags; returns once it listens.
    fn start_callwire(
        dir: &Path,
        mqtt_port: u16,
        args: &Args,
        clients: usize,
        extra: &[&str],
    ) -> Result<Server, String> {
        let log = dir.join("callwire.log");
        let exe = args
            .callwire_bin
            .as_deref()
            .unwrap_or(env!("CARGO_BIN_EXE_callwire"));
        // Limits that only some builds have: raised past N where `--help` lists them.
        let help = Command::new(exe)
            .arg("--help")
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default();
        let above_n = (clients + 64).to_string();
        let optional: Vec<&str> = [("--max-per-ip", above_n.as_str())]
            .into_iter()
            .filter(|(flag, _)| help.contains(&format!("{flag} ")))
            .flat_map(|(flag, value)| [flag, value])
            .collect();
        let child = Command::new(exe)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--mqtt", &format!("mqtt://127.0.0.1:{mqtt_port}")])
            .args(["--mqtt-topic", "pbx/#", "--mqtt-strip-prefix", "pbx/"])
            .args(["--max-clients", &above_n])
            // All clients come from 127.0.0.1.
            .args(&optional)
            // No keep-alive pings inside a run.
            .args(["--ping-interval", "3600"])
            .args(&args.callwire_args)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(open_log(&log)?)
            .spawn()
            .map_err(|e| format!("starting callwire: {e}"))?;
        let mut server = Server {
            child,
            port: 0,
            path: "/",
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.port == 0 {
            let text = server.log_text();
            if let Some(port) = text.lines().find_map(|line| {
                let address = line.split("listening on 127.0.0.1:").nth(1)?;
                address.trim().parse::<u16>().ok()
            }) {
                server.port = port;
                break;
            }
            server.check_alive("callwire")?;
            if Instant::now() > deadline {
                return Err(format!("callwire never listened: {text}"));
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn check_alive(&mut self, name: &str) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{name} exited ({status}): {}", self.log_text())),
            Err(e) => Err(format!("{name}: {e}")),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn open_log(path: &Path) -> Result<std::fs::File, String> {
    std::fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))
}

/// A plain `GET`; the status, if the server answered at all.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).ok()?;
    let text = std::str::from_utf8(&head[..n]).ok()?;
    text.split(' ').nth(1)?.parse().ok()
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> Result<u64, String> {
    status_kib(pid, "VmRSS")
}

/// Resident KiB of the files a process maps other than its own executable: the shared
/// libraries of a dynamically linked build (none for a static one), from `/proc/<pid>/smaps`.
fn shared_library_kib(pid: u32) -> Result<u64, String> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(|e| format!("reading /proc/{pid}/exe: {e}"))?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| format!("reading /proc/{pid}/smaps: {e}"))?;
    let mut in_library = false;
    let mut kib = 0;
    for line in smaps.lines() {
        // A mapping's header is `start-end perms offset dev inode [path]`; its fields follow,
        // one `Name: value` a line.
        let mut fields = line.split_whitespace();
        if fields.next().is_some_and(|range| range.contains('-')) {
            in_library = fields
                .nth(4)
                .is_some_and(|path| path.starts_with('/') && Path::new(path) != exe);
        } else if let (true, Some(rest)) = (in_library, line.strip_prefix("Rss:")) {
            kib += parse_kib(rest).ok_or(format!("/proc/{pid}/smaps: {line}"))?;
        }
    }
    Ok(kib)
}

/// One `... kB` field of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(parse_kib)
        .ok_or(format!("no {field} in /proc/{pid}/status"))
}

/// `   1234 kB`, as `/proc` writes sizes.
fn parse_kib(text: &str) -> Option<u64> {
    text.trim().trim_end_matches("kB").trim().parse().ok()
}

/// utime and stime of a process (all its threads), in seconds.
fn cpu_seconds(pid: u32) -> Result<(f64, f64), String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("reading /proc/{pid}/stat: {e}"))?;
    // The command name may hold spaces: count fields after its closing parenthesis. Field 3
    // (state) is the first there; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (Some(utime), Some(stime)) = (ticks(11), ticks(12)) else {
        return Err(format!("unexpected /proc/{pid}/stat: {stat}"));
    };
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((utime as f64 / hz, stime as f64 / hz))
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Micros since the epoch: the clock the publisher stamps events with.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Raises the soft descriptor limit to `want` (and the hard one, as root, if need be); returns
/// the limit in force, or an error if it is still too low.
fn raise_fd_limit(want: u64) -> Result<u64, String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(format!("getrlimit: {}", io::Error::last_os_error()));
    }
    if limit.rlim_cur >= want {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: limit.rlim_max.max(want),
    };
    // SAFETY: `raised` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(want);
    }
    let capped = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &capped) };
    Err(format!(
        "need {want} file descriptors, the hard limit is {} and could not be raised \
         (run as root, or raise `ulimit -Hn`)",
        limit.rlim_max
    ))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A private directory for the run's config and logs, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, String> {
        let path = std::env::temp_dir().join(format!(
            "callwire-fanout-{}-{}",
            std::process::id(),
            now_us()
        ));
        std::fs::create_dir_all(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// One phase: N clients on one server, E events through it

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// Blackhole JSON over websocket text frames (callwire).
    Blackhole,
    /// MQTT 3.1.1 packets inside websocket binary frames (Mosquitto, rumqttd).
    Mqtt,
    /// The event's payload as a text frame, nothing to subscribe to (Node-RED).
    Text,
}

struct PhaseResult {
    name: &'static str,
    clients: usize,
    rss_idle_kib: u64,
    anon_idle_kib: u64,
    libs_idle_kib: u64,
    rss_clients_kib: u64,
    cpu_s: f64,
    /// The part of `cpu_s` in user space (the rest is the kernel's, mostly socket writes).
    user_cpu_s: f64,
    deliveries: u64,
    expected: u64,
    clients_short: usize,
    closed: u64,
    unexpected: u64,
    /// Microseconds, sorted.
    latencies: Vec<u32>,
    load_cpu_s: f64,
    setup_s: f64,
    deliver_s: f64,
    /// One event frame as received, websocket header included.
    sample_frame: Option<Vec<u8>>,
}

impl PhaseResult {
    fn cpu_per_delivery(&self) -> f64 {
        self.cpu_s / self.deliveries.max(1) as f64
    }

    fn kib_per_client(&self) -> f64 {
        (self.rss_clients_kib as f64 - self.rss_idle_kib as f64) / self.clients as f64
    }

    fn latency(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 * q).ceil() as usize).clamp(1, self.latencies.len());
        f64::from(self.latencies[i - 1])
    }
}

fn phase(
    name: &'static str,
    server: &Server,
    dialect: Dialect,
    mqtt_port: u16,
    load: Load,
) -> Result<PhaseResult, String> {
    let n = load.clients;
    let (port, path) = (server.port, server.path);
    let pid = server.pid();
    thread::sleep(SETTLE);
    let rss_idle_kib = rss_kib(pid)?;
    // The part of it that is the process's own: the rest is clean pages of the binary and the
    // shared libraries, mapped from the page cache (fault-around maps up to 64 KiB per fault).
    let anon_idle_kib = status_kib(pid, "RssAnon")?;
    let libs_idle_kib = shared_library_kib(pid)?;

    eprint!("fanout: {name}: connecting {n} clients ... ");
    let setup = Instant::now();
    let mut conns = Vec::with_capacity(n);
    // In batches, each step for the whole batch before the next: Mosquitto's websockets are
    // serviced on its loop's ticks, so one client at a time would wait a tick per step.
    for first in (0..n).step_by(SETUP_BATCH) {
        let batch = first..(first + SETUP_BATCH).min(n);
        let failed = |i: usize| move |e: io::Error| format!("{name}: client {i} of {n}: {e}");
        let mut streams = Vec::with_capacity(batch.len());
        for i in batch.clone() {
            streams.push(start_client(port, path, dialect).map_err(failed(i))?);
        }
        let mut buffers = Vec::with_capacity(batch.len());
        for (i, stream) in batch.clone().zip(&mut streams) {
            buffers.push(subscribe_client(stream, dialect, i).map_err(failed(i))?);
        }
        for ((i, stream), buffer) in batch.zip(streams).zip(buffers) {
            conns.push(finish_client(stream, dialect, buffer).map_err(failed(i))?);
        }
    }
    let setup_s = setup.elapsed().as_secs_f64();
    eprintln!("{setup_s:.2} s");
    thread::sleep(SETTLE);
    let rss_clients_kib = rss_kib(pid)?;

    let mut tally = Tally {
        dialect,
        latencies: Vec::with_capacity(n * load.events),
        deliveries: 0,
        closed: 0,
        unexpected: 0,
        sample_frame: None,
    };
    let poller = Epoll::new(conns.iter().map(|c| c.stream.as_raw_fd()))?;
    let mut scratch = vec![0u8; SCRATCH];

    eprint!(
        "fanout: {name}: publishing {} events at {}/s ... ",
        load.events, load.rate
    );
    let expected = (n * load.events) as u64;
    let cpu_before = cpu_seconds(pid)?;
    let load_before = thread_cpu_seconds();
    let start = Instant::now();
    let (events, rate) = (load.events, load.rate);
    let publisher = thread::spawn(move || publish(mqtt_port, events, rate));
    let publish_time = Duration::from_secs_f64(events as f64 / rate);
    let hard_deadline = start + publish_time + Duration::from_secs(600);
    let mut last_progress = Instant::now();
    let mut ready = vec![epoll_event(0); 1024];
    while tally.deliveries < expected {
        let before = tally.deliveries;
        let count = poller.wait(&mut ready, 100)?;
        for event in &ready[..count] {
            // epoll_event is packed: copy the field out, never borrow it.
            let token = event.u64;
            let conn = &mut conns[token as usize];
            if !read_ready(conn, &mut scratch, &mut tally) {
                poller.remove(conn.stream.as_raw_fd());
            }
        }
        let now = Instant::now();
        if tally.deliveries != before {
            last_progress = now;
        }
        let published = publisher.is_finished();
        if (published && now - last_progress > STALL) || now > hard_deadline {
            break;
        }
    }
    let deliver_s = start.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds(pid)?;
    let user_cpu_s = cpu_after.0 - cpu_before.0;
    let cpu_s = user_cpu_s + cpu_after.1 - cpu_before.1;
    let load_cpu_s = thread_cpu_seconds() - load_before;
    eprintln!("{deliver_s:.2} s");
    match publisher.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("{name}: publisher failed: {e}")),
        Err(_) => return Err(format!("{name}: publisher panicked")),
    }

    let per_client = load.events as u32;
    let clients_short = conns.iter().filter(|c| c.received != per_client).count();
    drop(poller);
    drop(conns);
    tally.latencies.sort_unstable();
    Ok(PhaseResult {
        name,
        clients: n,
        rss_idle_kib,
        anon_idle_kib,
        libs_idle_kib,
        rss_clients_kib,
        cpu_s,
        user_cpu_s,
        deliveries: tally.deliveries,
        expected,
        clients_short,
        closed: tally.closed,
        unexpected: tally.unexpected,
        latencies: tally.latencies,
        load_cpu_s,
        setup_s,
        deliver_s,
        sample_frame: tally.sample_frame,
    })
}

/// What the load generator has seen in a phase.
struct Tally {
    dialect: Dialect,
    deliveries: u64,
    latencies: Vec<u32>,
    closed: u64,
    /// Frames or packets that were neither an event nor a ping.
    unexpected: u64,
    sample_frame: Option<Vec<u8>>,
}

impl Tally {
    /// One delivery, with its latency if its timestamp could be read.
    fn delivered(&mut self, message: &[u8], received_us: u64) {
        self.deliveries += 1;
        match stamp(message) {
            Some(sent_us) => {
                let latency = received_us.saturating_sub(sent_us);
                self.latencies
                    .push(u32::try_from(latency).unwrap_or(u32::MAX));
            }
            None => self.unexpected += 1,
        }
    }
}

/// The `ts_us` at the end of a message: the payload's last field, so the digits sit just
/// before the closing braces (one for the payload, one more for a Blackhole frame).
fn stamp(message: &[u8]) -> Option<u64> {
    let mut end = message.len();
    while end > 0 && message[end - 1] == b'}' {
        end -= 1;
    }
    let mut start = end;
    while start > 0 && message[start - 1].is_ascii_digit() {
        start -= 1;
    }
    if start == end || end - start > 19 || !message[..start].ends_with(b"\"ts_us\":") {
        return None;
    }
    let mut value = 0u64;
    for &digit in &message[start..end] {
        value = value * 10 + u64::from(digit - b'0');
    }
    Some(value)
}

/// One client connection of the load generator.
struct Conn {
    stream: TcpStream,
    /// Bytes of an incomplete websocket frame from the last read.
    carry: Vec<u8>,
    /// Bytes of an incomplete MQTT packet from the last binary frame.
    mqtt_carry: Vec<u8>,
    received: u32,
}

/// One `read` on a ready socket, and every complete frame in it. False when the socket is
/// finished (closed or failed).
fn read_ready(conn: &mut Conn, scratch: &mut [u8], tally: &mut Tally) -> bool {
    let kept = conn.carry.len();
    scratch[..kept].copy_from_slice(&conn.carry);
    let n = match (&conn.stream).read(&mut scratch[kept..]) {
        Ok(0) => {
            tally.closed += 1;
            return false;
        }
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return true,
        Err(_) => {
            tally.closed += 1;
            return false;
        }
    };
    let received_us = now_us();
    let data = &scratch[..kept + n];
    let mut at = 0;
    let mut open = true;
    while let Some(frame) = ws_frame(&data[at..]) {
        let whole = &data[at..at + frame.len];
        let payload = &whole[frame.header..];
        match frame.opcode {
            // Text, binary and continuation frames.
            0..=2 => match tally.dialect {
                Dialect::Blackhole => {
                    if frame.fin && payload.starts_with(EVENT_PREFIX) {
                        conn.received += 1;
                        tally.delivered(payload, received_us);
                        if tally.sample_frame.is_none() {
                            tally.sample_frame = Some(whole.to_vec());
                        }
                    } else {
                        tally.unexpected += 1;
                    }
                }
                Dialect::Mqtt => mqtt_bytes(conn, payload, received_us, tally),
                Dialect::Text => {
                    conn.received += 1;
                    tally.delivered(payload, received_us);
                }
            },
            // Close.
            8 => {
                tally.closed += 1;
                open = false;
            }
            // Ping: answer it (masked, as a client must), best effort.
            9 => {
                let pong = client_frame(0x8A, payload);
                let _ = (&conn.stream).write(&pong);
            }
            // Pong.
            10 => {}
            _ => tally.unexpected += 1,
        }
        at += frame.len;
    }
    conn.carry.clear();
    conn.carry.extend_from_slice(&data[at..]);
    open
}

/// Feeds a binary frame's payload to a connection's MQTT packet stream: a frame may hold
/// several packets, or part of one.
fn mqtt_bytes(conn: &mut Conn, payload: &[u8], received_us: u64, tally: &mut Tally) {
    if conn.mqtt_carry.is_empty() {
        let used = mqtt_packets(payload, &mut conn.received, received_us, tally);
        conn.mqtt_carry.extend_from_slice(&payload[used..]);
    } else {
        conn.mqtt_carry.extend_from_slice(payload);
        let buffer = std::mem::take(&mut conn.mqtt_carry);
        let used = mqtt_packets(&buffer, &mut conn.received, received_us, tally);
        conn.mqtt_carry = buffer;
        conn.mqtt_carry.drain(..used);
    }
}

/// Counts the complete PUBLISH packets at the start of `buffer`; returns the bytes used.
fn mqtt_packets(buffer: &[u8], received: &mut u32, received_us: u64, tally: &mut Tally) -> usize {
    let mut at = 0;
    while let Some(packet) = mqtt_packet(&buffer[at..]) {
        let bytes = &buffer[at..at + packet.len];
        if packet.kind == 3 {
            *received += 1;
            // The payload runs to the packet's end, so its stamp ends the packet.
            tally.delivered(bytes, received_us);
        } else {
            tally.unexpected += 1;
        }
        at += packet.len;
    }
    at
}

// ---------------------------------------------------------------------------------------------
// Wire formats, client side

struct WsFrame {
    fin: bool,
    opcode: u8,
    /// Header bytes, then payload bytes; `len` is both.
    header: usize,
    len: usize,
}

/// The websocket frame at the start of `data`, if it is all there. Server frames are not
/// masked; a masked one is skipped whole all the same.
fn ws_frame(data: &[u8]) -> Option<WsFrame> {
    let (&b0, &b1) = (data.first()?, data.get(1)?);
    let (length, mut header) = match b1 & 0x7F {
        126 => (
            u64::from(u16::from_be_bytes([*data.get(2)?, *data.get(3)?])),
            4,
        ),
        127 => (u64::from_be_bytes(data.get(2..10)?.try_into().ok()?), 10),
        short => (u64::from(short), 2),
    };
    if b1 & 0x80 != 0 {
        header += 4;
    }
    let len = header + usize::try_from(length).ok()?;
    (data.len() >= len).then_some(WsFrame {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0F,
        header,
        len,
    })
}

/// A masked client frame: `first` is FIN + opcode.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(first);
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

struct MqttPacket {
    /// The control packet type (the first byte's high nibble).
    kind: u8,
    len: usize,
}

/// The MQTT packet at the start of `data`, if it is all there.
fn mqtt_packet(data: &[u8]) -> Option<MqttPacket> {
    let first = *data.first()?;
    let mut remaining = 0usize;
    let mut at = 1;
    loop {
        let byte = *data.get(at)?;
        remaining |= usize::from(byte & 0x7F) << (7 * (at - 1));
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if at > 4 {
            // Malformed; take what is there so the stream does not stall.
            return Some(MqttPacket {
                kind: 0,
                len: data.len(),
            });
        }
    }
    let len = at + remaining;
    (data.len() >= len).then_some(MqttPacket {
        kind: first >> 4,
        len,
    })
}

/// An MQTT packet: fixed header with the remaining length, then `body`.
fn mqtt_encode(first: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(first);
    let mut remaining = body.len();
    loop {
        let mut byte = (remaining % 128) as u8;
        remaining /= 128;
        if remaining > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if remaining == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
}

fn mqtt_string(text: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// CONNECT, MQTT 3.1.1, clean session, a keep-alive of 600 s (nothing to ping during a run;
/// rumqttd refuses none at all).
fn mqtt_connect(client_id: &str, out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(16 + client_id.len());
    mqtt_string("MQTT", &mut body);
    body.extend_from_slice(&[4, 0x02]);
    body.extend_from_slice(&600u16.to_be_bytes());
    mqtt_string(client_id, &mut body);
    mqtt_encode(0x10, &body, out);
}

/// SUBSCRIBE to one filter at QoS 0.
fn mqtt_subscribe(filter: &str, out: &mut Vec<u8>) {
    let mut body = vec![0, 1];
    mqtt_string(filter, &mut body);
    body.push(0);
    mqtt_encode(0x82, &body, out);
}

// ---------------------------------------------------------------------------------------------
// Setting up a client: blocking, one at a time, before any event flows

/// Connects and sends the upgrade request for `path`.
fn start_client(port: u16, path: &str, dialect: Dialect) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let protocol = match dialect {
        Dialect::Mqtt => "Sec-WebSocket-Protocol: mqtt\r\n",
        Dialect::Blackhole | Dialect::Text => "",
    };
    let upgrade = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{protocol}\r\n"
    );
    stream.write_all(upgrade.as_bytes())?;
    Ok(stream)
}

/// Reads the upgrade's answer and sends the subscription; returns the bytes read past the
/// answer.
fn subscribe_client(stream: &mut TcpStream, dialect: Dialect, index: usize) -> io::Result<Vec<u8>> {
    let mut buffer = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_some(stream, &mut buffer)?;
    };
    if !buffer.starts_with(b"HTTP/1.1 101") {
        let head = String::from_utf8_lossy(&buffer[..head_end]);
        return Err(io::Error::other(format!("upgrade refused: {head}")));
    }
    buffer.drain(..head_end);
    match dialect {
        Dialect::Blackhole => {
            let request = format!(
                r#"{{"action":"subscribe","request_id":"s{index}","data":{{"binding":"{BINDING}"}}}}"#
            );
            stream.write_all(&client_frame(0x81, request.as_bytes()))?;
        }
        Dialect::Mqtt => {
            let mut packets = Vec::new();
            mqtt_connect(
                &format!("fanout-{}-{index}", std::process::id()),
                &mut packets,
            );
            mqtt_subscribe(MQTT_FILTER, &mut packets);
            stream.write_all(&client_frame(0x82, &packets))?;
        }
        Dialect::Text => {}
    }
    Ok(buffer)
}

/// Waits for the subscription's answer; the connection, non-blocking, ready for events.
fn finish_client(mut stream: TcpStream, dialect: Dialect, mut buffer: Vec<u8>) -> io::Result<Conn> {
    match dialect {
        Dialect::Blackhole => {
            let reply = loop {
                match ws_frame(&buffer) {
                    Some(frame) => {
                        let payload = buffer[frame.header..frame.len].to_vec();
                        buffer.drain(..frame.len);
                        if frame.opcode == 1 {
                            break payload;
                        }
                    }
                    None => read_some(&mut stream, &mut buffer)?,
                }
            };
            let reply = String::from_utf8_lossy(&reply);
            if !reply.contains(r#""status":"success""#) {
                return Err(io::Error::other(format!("subscribe refused: {reply}")));
            }
        }
        Dialect::Mqtt => {
            let mut mqtt = Vec::new();
            let (mut connack, mut suback) = (false, false);
            while !(connack && suback) {
                match ws_frame(&buffer) {
                    Some(frame) => {
                        mqtt.extend_from_slice(&buffer[frame.header..frame.len]);
                        buffer.drain(..frame.len);
                    }
                    None => read_some(&mut stream, &mut buffer)?,
                }
                while let Some(packet) = mqtt_packet(&mqtt) {
                    let bytes: Vec<u8> = mqtt.drain(..packet.len).collect();
                    match packet.kind {
                        2 if bytes.get(3) == Some(&0) => connack = true,
                        9 if bytes.last() == Some(&0) => suback = true,
                        _ => {
                            return Err(io::Error::other(format!(
                                "unexpected MQTT reply {bytes:02x?}"
                            )));
                        }
                    }
                }
            }
        }
        Dialect::Text => {}
    }
    stream.set_read_timeout(None)?;
    stream.set_nonblocking(true)?;
    Ok(Conn {
        stream,
        carry: buffer,
        mqtt_carry: Vec::new(),
        received: 0,
    })
}

fn read_some(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed by the server",
        ));
    }
    buffer.extend_from_slice(&chunk[..n]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The publisher: plain MQTT 3.1.1 over TCP, QoS 0, at a fixed rate

fn publish(port: u16, events: usize, rate: f64) -> io::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut packet = Vec::with_capacity(512);
    mqtt_connect(&format!("fanout-pub-{}", std::process::id()), &mut packet);
    stream.write_all(&packet)?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack)?;
    if connack[0] != 0x20 || connack[3] != 0 {
        return Err(io::Error::other(format!("CONNACK {connack:02x?}")));
    }
    let tag = std::process::id() & 0xFF_FFFF;
    let start = Instant::now();
    let mut body = Vec::with_capacity(512);
    for i in 0..events {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let call_id = format!("fo{tag:06x}{i:012}");
        body.clear();
        mqtt_string(&format!("pbx/call/CHANNEL_CREATE/{call_id}"), &mut body);
        body.extend_from_slice(event_payload(&call_id, now_us()).as_bytes());
        packet.clear();
        mqtt_encode(0x30, &body, &mut packet);
        stream.write_all(&packet)?;
    }
    stream.write_all(&[0xE0, 0])?;
    Ok(())
}

/// A Kazoo-shaped CHANNEL_CREATE of about 170 bytes, its publish time as the last field.
fn event_payload(call_id: &str, ts_us: u64) -> String {
    format!(
        r#"{{"Event-Name":"CHANNEL_CREATE","Call-ID":"{call_id}","Account-ID":"{ACCOUNT}","Caller-ID-Number":"+14155550100","ts_us":{ts_us}}}"#
    )
}

// ---------------------------------------------------------------------------------------------
// The load generator's epoll loop

fn epoll_event(token: u64) -> libc::epoll_event {
    libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    }
}

/// A level-triggered epoll set over a phase's connections; each is known by its index.
struct Epoll {
    fd: i32,
}

impl Epoll {
    fn new(fds: impl IntoIterator<Item = i32>) -> Result<Epoll, String> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(format!("epoll_create1: {}", io::Error::last_os_error()));
        }
        let poller = Epoll { fd };
        for (i, socket) in fds.into_iter().enumerate() {
            let mut event = epoll_event(i as u64);
            // SAFETY: both descriptors are open and `event` is a valid epoll_event.
            let rc = unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, socket, &mut event) };
            if rc != 0 {
                return Err(format!("epoll_ctl: {}", io::Error::last_os_error()));
            }
        }
        Ok(poller)
    }

    /// Waits up to `timeout_ms`; how many of `ready` hold ready connections.
    fn wait(&self, ready: &mut [libc::epoll_event], timeout_ms: i32) -> Result<usize, String> {
        // SAFETY: `ready` is valid for `ready.len()` events.
        let n = unsafe {
            libc::epoll_wait(self.fd, ready.as_mut_ptr(), ready.len() as i32, timeout_ms)
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(format!("epoll_wait: {error}"))
        }
    }

    fn remove(&self, socket: i32) {
        // SAFETY: both descriptors are open; a null event is allowed for EPOLL_CTL_DEL.
        unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_DEL, socket, std::ptr::null_mut()) };
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.fd) };
    }
}

// ---------------------------------------------------------------------------------------------
// The floor: one plain write per delivery

struct Floor {
    cpu_s: f64,
    writes: u64,
    short_writes: u64,
    /// CPU per write of each round, to show how steady the floor was.
    rounds: Vec<f64>,
}

impl Floor {
    fn per_write(&self) -> f64 {
        self.cpu_s / self.writes.max(1) as f64
    }

    /// The (lower, upper) quartiles of the rounds' CPU per write.
    fn quartiles(&self) -> (f64, f64) {
        let mut rounds = self.rounds.clone();
        rounds.sort_by(f64::total_cmp);
        let at = |q: f64| rounds.get((rounds.len() as f64 * q) as usize).copied();
        (at(0.25).unwrap_or(f64::NAN), at(0.75).unwrap_or(f64::NAN))
    }
}

/// The hidden first argument that makes this binary the floor's reading side.
const FLOOR_SINK: &str = "--floor-sink";

/// N loopback TCP pairs; E rounds of one `write` of `frame` to each; the writing thread's CPU
/// around the write loops only.
///
/// The reading ends live in a helper process (this binary again, as `--floor-sink`), which
/// drains them from an epoll loop as the load generator does, and reports each round drained
/// so that every round starts with empty sockets.
fn write_floor(n: usize, rounds: usize, frame: &[u8]) -> Result<Floor, String> {
    let fail = |e: io::Error| format!("floor: {e}");
    let listener = TcpListener::bind("127.0.0.1:0").map_err(fail)?;
    let port = listener.local_addr().map_err(fail)?.port();
    let exe = std::env::current_exe().map_err(fail)?;
    let mut sink = Command::new(exe)
        .args([FLOOR_SINK, &port.to_string(), &n.to_string()])
        .arg(frame.len().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(fail)?;
    let mut drained = sink.stdout.take().ok_or("floor: no pipe from the sink")?;
    let mut writers = Vec::with_capacity(n);
    for _ in 0..n {
        let (writer, _) = listener.accept().map_err(fail)?;
        // As a server's socket: no Nagle, non-blocking.
        writer.set_nodelay(true).map_err(fail)?;
        writer.set_nonblocking(true).map_err(fail)?;
        writers.push(writer);
    }
    // The sink says it is ready to read once all its sockets are connected.
    let mut byte = [0u8; 1];
    drained.read_exact(&mut byte).map_err(fail)?;
    let mut floor = Floor {
        cpu_s: 0.0,
        writes: 0,
        short_writes: 0,
        rounds: Vec::with_capacity(rounds),
    };
    for _ in 0..rounds {
        let start = thread_cpu_seconds();
        for writer in &writers {
            // SAFETY: the descriptor is open (its stream is alive in `writers`) and `frame`
            // is valid for `frame.len()` bytes.
            let written =
                unsafe { libc::write(writer.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
            if written != frame.len() as isize {
                floor.short_writes += 1;
            }
        }
        let spent = thread_cpu_seconds() - start;
        floor.cpu_s += spent;
        floor.writes += writers.len() as u64;
        floor.rounds.push(spent / writers.len() as f64);
        drained.read_exact(&mut byte).map_err(fail)?;
    }
    drop(writers);
    let _ = sink.wait();
    Ok(floor)
}

/// The floor's reading side: `--floor-sink PORT N FRAME_LEN`. Connects N sockets, writes one
/// byte to stdout when ready, then one byte each time another N × FRAME_LEN bytes have been
/// read; exits when every socket is closed.
fn floor_sink(words: &[String]) -> Result<(), String> {
    let number = |i: usize| -> Result<usize, String> {
        words
            .get(i)
            .and_then(|w| w.parse().ok())
            .ok_or(format!("usage: {FLOOR_SINK} PORT N FRAME_LEN"))
    };
    let (port, n, frame_len) = (number(0)?, number(1)?, number(2)?);
    let fail = |e: io::Error| e.to_string();
    let port = u16::try_from(port).map_err(|e| e.to_string())?;
    let mut readers = Vec::with_capacity(n);
    for _ in 0..n {
        let reader = TcpStream::connect(("127.0.0.1", port)).map_err(fail)?;
        reader.set_nonblocking(true).map_err(fail)?;
        readers.push(reader);
    }
    let poller = Epoll::new(readers.iter().map(|r| r.as_raw_fd()))?;
    let mut out = io::stdout().lock();
    out.write_all(b"r")
        .and_then(|()| out.flush())
        .map_err(fail)?;
    let round = n * frame_len;
    let (mut total, mut next, mut open) = (0usize, round, n);
    let mut ready = vec![epoll_event(0); 1024];
    let mut buffer = vec![0u8; SCRATCH];
    while open > 0 {
        let count = poller.wait(&mut ready, 1000)?;
        for event in &ready[..count] {
            let token = event.u64;
            let mut reader = &readers[token as usize];
            match reader.read(&mut buffer) {
                Ok(0) => {
                    poller.remove(reader.as_raw_fd());
                    open -= 1;
                }
                Ok(read) => total += read,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    poller.remove(reader.as_raw_fd());
                    open -= 1;
                }
            }
        }
        while total >= next {
            out.write_all(b".")
                .and_then(|()| out.flush())
                .map_err(fail)?;
            next += round;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The report

fn report(args: &Args, sitting: &Sitting) {
    let Scenario { clients, rate } = sitting.scenario;
    let payload = event_payload("fo000000000000000000", now_us()).len();
    println!();
    println!(
        "== {clients} clients per server, {} events at {rate}/s; payload {payload} B; \
         callwire event frame {} B on the wire",
        sitting.events,
        sitting.frame.len()
    );
    if !args.callwire_args.is_empty() {
        println!("callwire's own flags: {}", args.callwire_args.join(" "));
    }
    let results = &sitting.results;
    let row = |label: &str, cells: &dyn Fn(&PhaseResult) -> String| {
        print!("{label:<38}");
        for result in results {
            print!(" {:>12}", cells(result));
        }
        println!();
    };
    row("", &|p| p.name.to_owned());
    row(
        &format!("deliveries (want {})", sitting.callwire().expected),
        &|p| p.deliveries.to_string(),
    );
    row("server CPU, publish phase (s)", &|p| {
        format!("{:.2}", p.cpu_s)
    });
    row("server CPU per delivery (µs)", &|p| {
        format!("{:.3}", p.cpu_per_delivery() * 1e6)
    });
    row("  of which user space (µs)", &|p| {
        format!("{:.3}", p.user_cpu_s / p.deliveries.max(1) as f64 * 1e6)
    });
    row("memory per idle connection (KiB)", &|p| {
        format!("{:.2}", p.kib_per_client())
    });
    let mib = |kib: u64| format!("{:.2}", kib as f64 / 1024.0);
    row("idle RSS, no clients (MiB)", &|p| mib(p.rss_idle_kib));
    row("  of which shared libraries (MiB)", &|p| {
        mib(p.libs_idle_kib)
    });
    row("  of which private (RssAnon, MiB)", &|p| {
        mib(p.anon_idle_kib)
    });
    row(&format!("RSS with {clients} idle clients (MiB)"), &|p| {
        mib(p.rss_clients_kib)
    });
    for (label, q) in [("p50", 0.50), ("p99", 0.99), ("max", 1.0)] {
        row(&format!("latency publish→receipt {label} (ms)"), &|p| {
            format!("{:.3}", p.latency(q) / 1000.0)
        });
    }
    let offered = clients as f64 * rate / 1000.0;
    row(
        &format!("delivery rate (k/s; offered {offered:.0})"),
        &|p| format!("{:.1}", p.deliveries as f64 / p.deliver_s / 1000.0),
    );
    row("publish phase, wall (s)", &|p| {
        format!("{:.2}", p.deliver_s)
    });
    row("client setup, wall (s)", &|p| format!("{:.2}", p.setup_s));
    row("load generator CPU per delivery (µs)", &|p| {
        format!("{:.3}", p.load_cpu_s / p.deliveries.max(1) as f64 * 1e6)
    });
    row("clients short / closed / unexpected", &|p| {
        format!("{}/{}/{}", p.clients_short, p.closed, p.unexpected)
    });
    let callwire = sitting.callwire();
    let figures: [(&str, Figure); 4] = [
        ("CPU per delivery", PhaseResult::cpu_per_delivery),
        ("memory per idle connection", PhaseResult::kib_per_client),
        ("latency p50", |p| p.latency(0.5)),
        ("latency p99", |p| p.latency(0.99)),
    ];
    for (label, figure) in figures {
        print!("callwire/peer, {label:<26}");
        for peer in sitting.peers() {
            print!("  {} {}", peer.name, ratio(figure(callwire), figure(peer)));
        }
        println!();
    }
    let floor = &sitting.floor;
    let (q1, q3) = floor.quartiles();
    println!(
        "write floor: {:.3} µs CPU per write(2) of {} B ({} writes, rounds' quartiles {:.3}–{:.3} µs{}); \
         callwire/floor = {}",
        floor.per_write() * 1e6,
        sitting.frame.len(),
        floor.writes,
        q1 * 1e6,
        q3 * 1e6,
        if floor.short_writes > 0 {
            format!(", {} short", floor.short_writes)
        } else {
            String::new()
        },
        ratio(callwire.cpu_per_delivery(), floor.per_write())
    );
    if callwire.libs_idle_kib > 0 {
        println!(
            "(this callwire is dynamically linked: {:.2} MiB of its idle RSS is shared \
             libraries; the release binaries .ci/cross builds are static, measured with \
             --callwire-bin target/x86_64-unknown-linux-musl/release/callwire)",
            callwire.libs_idle_kib as f64 / 1024.0
        );
    }
}

/// One figure of a server's run.
type Figure = fn(&PhaseResult) -> f64;

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.3}", a / b)
    } else {
        "-".to_owned()
    }
}

/// The issue's targets, each where its scenario ran (a target whose scenario or peer did not
/// run is said to be unmeasured).
fn targets(sittings: &[Sitting]) {
    let find = |clients: usize, rate: f64| {
        sittings
            .iter()
            .find(|s| s.scenario.clients == clients && s.scenario.rate == rate)
    };
    let ms = |us: f64| format!("{:.3} ms", us / 1000.0);
    let us = |s: f64| format!("{:.3} µs", s * 1e6);
    println!();
    println!("targets (issue 15, \"Must show\" 4):");
    let target = |name: &str, measured: Option<(String, String, bool)>| match measured {
        Some((value, bound, ok)) => println!(
            "  {:<4}  {name:<58} {value:>12}  (bound {bound})",
            if ok { "PASS" } else { "MISS" }
        ),
        None => println!("  ----  {name:<58} not measured in this run"),
    };
    let at_500 = find(500, 100.0).filter(|s| !s.peers().is_empty());
    target(
        "500 × 100/s: p50 ≤ the best peer's p50",
        at_500.map(|s| {
            let (c, bound) = (s.callwire().latency(0.5), s.best(|p| p.latency(0.5)));
            (ms(c), ms(bound), c <= bound)
        }),
    );
    target(
        "500 × 100/s: p99 ≤ 1.2 × the best peer's p99",
        at_500.map(|s| {
            let c = s.callwire().latency(0.99);
            let bound = 1.2 * s.best(|p| p.latency(0.99));
            (ms(c), ms(bound), c <= bound)
        }),
    );
    let at_2000 = find(2000, 100.0);
    target(
        "2000 × 100/s: CPU per delivery ≤ 0.3 × mosquitto's",
        at_2000.and_then(|s| {
            let bound = 0.3 * s.peer("mosquitto")?.cpu_per_delivery();
            let c = s.callwire().cpu_per_delivery();
            Some((us(c), us(bound), c <= bound))
        }),
    );
    target(
        "2000 × 100/s: CPU per delivery ≤ 0.5 × the best peer's",
        at_2000.map(|s| {
            let bound = 0.5 * s.best(PhaseResult::cpu_per_delivery);
            let c = s.callwire().cpu_per_delivery();
            (us(c), us(bound), c <= bound)
        }),
    );
    target(
        "2000 × 100/s: every delivery made",
        at_2000.map(|s| {
            let c = s.callwire();
            (
                c.deliveries.to_string(),
                c.expected.to_string(),
                c.deliveries == c.expected,
            )
        }),
    );
    target(
        "2000 × 10/s: p50 ≤ 0.6 × mosquitto's p50",
        find(2000, 10.0).and_then(|s| {
            let bound = 0.6 * s.peer("mosquitto")?.latency(0.5);
            let c = s.callwire().latency(0.5);
            Some((ms(c), ms(bound), c <= bound))
        }),
    );
    target(
        "memory per idle connection ≤ 0.5 × mosquitto's (2000 × 100/s)",
        at_2000.and_then(|s| {
            let bound = 0.5 * s.peer("mosquitto")?.kib_per_client();
            let c = s.callwire().kib_per_client();
            Some((format!("{c:.2} KiB"), format!("{bound:.2} KiB"), c <= bound))
        }),
    );
    target(
        "idle RSS with the MQTT source ≤ 2 MiB (earlier issue)",
        sittings.first().map(|s| {
            let kib = s.callwire().rss_idle_kib;
            (
                format!("{:.2} MiB", kib as f64 / 1024.0),
                "2.00 MiB".to_owned(),
                kib <= 2048,
            )
        }),
    );
}
