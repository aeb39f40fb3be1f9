//! Shared test harness: runs the real `callwire` binary on a free port, talks to it over real
//! sockets, and runs private brokers for tests that must kill one.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod kazoo_reference;
pub mod pki;
pub mod proxy;
pub mod resuming;
pub mod script;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

/// The websocket path iSymphony clients connect to.
pub const ISYMPHONY_PATH: &str = "/communication_manager/ws/event";

/// The three dialects, as a client picks one: by path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dialect {
    Blackhole,
    ISymphony,
    Cable,
}

pub const DIALECTS: [Dialect; 3] = [Dialect::Blackhole, Dialect::ISymphony, Dialect::Cable];

impl Dialect {
    pub fn path(self) -> &'static str {
        match self {
            Dialect::Blackhole => "/",
            Dialect::ISymphony => ISYMPHONY_PATH,
            Dialect::Cable => "/cable",
        }
    }
}

/// A port nobody listens on right now (for private brokers, which cannot report theirs).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A name no other test (or earlier run) uses: for topics, exchanges, queues and log files.
/// The count tells apart two tests of one process that ask in the same clock tick.
pub fn unique(prefix: &str) -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}{}x{}x{count}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// Polls `check` until it holds, or panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `callwire` binary the tests run: this build's, or another build of the same source
/// named by `CALLWIRE_BIN` (the static musl one, to measure its allocator with the memory
/// attacks).
pub fn binary() -> std::path::PathBuf {
    std::env::var_os("CALLWIRE_BIN").map_or_else(
        || env!("CARGO_BIN_EXE_callwire").into(),
        std::path::PathBuf::from,
    )
}

/// The `callwire` binary, to run under a limit of `open_files` open files, soft and hard.
pub fn limit_open_files(open_files: u64) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(binary());
    let limit = libc::rlimit {
        rlim_cur: open_files as libc::rlim_t,
        rlim_max: open_files as libc::rlim_t,
    };
    // SAFETY: only setrlimit, async-signal-safe, runs between fork and exec.
    unsafe {
        command.pre_exec(move || match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        });
    }
    command
}

/// A field of `/proc/<pid>/status` given in kB (`VmRSS`, `VmHWM`), in bytes.
pub fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kb * 1024
}

/// A temporary file, removed when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(stem: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(unique(stem));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

/// One credential of an `--auth` file: name, secret, and account (`*` for every account).
pub type Credential<'a> = (&'a str, &'a str, &'a str);

/// The text of an `--auth` file that holds `set`.
pub fn credentials_json(set: &[Credential]) -> String {
    let list: Vec<Value> = (set.iter())
        .map(|(name, secret, account)| {
            serde_json::json!({"name": name, "secret": secret, "account": account})
        })
        .collect();
    serde_json::json!({ "credentials": list }).to_string()
}

/// An `--auth` file that holds `set`, removed when dropped.
pub fn credentials(set: &[Credential]) -> TempFile {
    TempFile::new("callwire-creds-", &credentials_json(set))
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A running `callwire`, killed when dropped. Its stderr goes to a file the test can read.
pub struct Callwire {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Callwire {
    /// Starts the binary with `args` plus `--listen 127.0.0.1:0`, and learns the port the
    /// system chose from its "listening on" log line: no window in which another test could
    /// take the port. (A test that sets `--log-level` above info cannot use this.)
    pub fn start(args: &[&str]) -> Callwire {
        Callwire::start_command(Command::new(binary()), args, 0)
    }

    /// As `start`, on a port the test chose (one its clients reconnect to across restarts).
    pub fn start_on(port: u16, args: &[&str]) -> Callwire {
        Callwire::start_command(Command::new(binary()), args, port)
    }

    /// A callwire whose source never delivers: its broker address has no broker behind it.
    pub fn quiet(extra: &[&str]) -> Callwire {
        let broker = format!("mqtt://127.0.0.1:{}", free_port());
        let mut args = vec!["--mqtt", broker.as_str()];
        args.extend_from_slice(extra);
        Callwire::start(&args)
    }

    /// As `start`, under a limit of `open_files` open files, soft and hard (what
    /// `prlimit --nofile=N:N` sets).
    pub fn start_with_open_files(open_files: u64, args: &[&str]) -> Callwire {
        Callwire::start_command(limit_open_files(open_files), args, 0)
    }

    /// Starts `command` with `args`, listening on `port` (0: the system's choice).
    fn start_command(mut command: Command, args: &[&str], port: u16) -> Callwire {
        let log = std::env::temp_dir().join(format!("{}.log", unique("callwire-test-")));
        let child = command
            .args(args)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("callwire starts");
        let mut callwire = Callwire {
            child,
            port: 0,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = callwire.log_text();
            let port = text.lines().find_map(|line| {
                let address = line.split("listening on 127.0.0.1:").nth(1)?;
                address.trim().parse::<u16>().ok()
            });
            if let Some(port) = port {
                callwire.port = port;
                return callwire;
            }
            if let Some(status) = callwire.child.try_wait().unwrap() {
                panic!("callwire exited with {status}: {text}");
            }
            assert!(Instant::now() < deadline, "callwire never listened: {text}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the binary fed from `<prefix>/#` on the MQTT broker at 127.0.0.1:`port`, with
    /// `<prefix>/` stripped from each topic, plus `extra`.
    pub fn start_mqtt(port: u16, prefix: &str, extra: &[&str]) -> Callwire {
        let url = format!("mqtt://127.0.0.1:{port}");
        let topic = format!("{prefix}/#");
        let strip = format!("{prefix}/");
        let mut args = vec![
            "--mqtt",
            &url,
            "--mqtt-topic",
            &topic,
            "--mqtt-strip-prefix",
            &strip,
        ];
        args.extend_from_slice(extra);
        Callwire::start(&args)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Opens a websocket on `path`, with a read timeout so a test never hangs.
    pub fn ws(&self, path: &str) -> Socket {
        let url = format!("ws://127.0.0.1:{}{path}", self.port);
        let (socket, _response) = tungstenite::connect(url).expect("websocket upgrade");
        if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
        }
        socket
    }

    /// A plain HTTP request; returns the status and the body.
    pub fn http(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// One series from a `/metrics` scrape, as printed (`callwire_clients{dialect="blackhole"}`),
    /// or for a bare name (`callwire_events_in_total`) the sum of its family's samples; panics
    /// when there is none.
    pub fn metric(&self, series: &str) -> u64 {
        let (status, body) = self.http("GET", "/metrics", &[]);
        assert_eq!(status, 200, "{body}");
        let samples: Vec<u64> = body
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (printed, value) = line.rsplit_once(' ')?;
                let family = printed.split('{').next()?;
                let wanted = printed == series || (!series.contains('{') && family == series);
                wanted.then(|| value.parse().ok())?
            })
            .collect();
        assert!(!samples.is_empty(), "no {series} in:\n{body}");
        samples.iter().sum()
    }

    /// Waits up to `within` for the first client closed as too slow.
    pub fn wait_stall_close(&self, within: Duration) {
        wait_for("a client to be closed as too slow", within, || {
            self.metric("callwire_limit_hits_total{limit=\"stall_timeout\"}") == 1
        });
    }

    /// After a client was closed as too slow: no frame was dropped for a full queue (a
    /// reader lost nothing), and the closed client's connection ends, leaving `clients`
    /// Blackhole clients.
    pub fn assert_stall_settled(&self, clients: u64) {
        let full = "callwire_events_dropped_total{reason=\"queue_full\"}";
        assert_eq!(self.metric(full), 0, "{full}");
        wait_for(
            "the closed client's connection to end",
            Duration::from_secs(5),
            || self.metric("callwire_clients{dialect=\"blackhole\"}") == clients,
        );
    }

    pub fn healthz(&self) -> (u16, Value) {
        let (status, body) = self.http("GET", "/healthz", &[]);
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Waits up to `within` for `/healthz` to say the source is connected.
    pub fn wait_connected(&self, within: Duration) {
        wait_for("the source to connect", within, || {
            let (status, body) = self.healthz();
            status == 200 && body["source"]["connected"] == true
        });
    }

    /// Opens `/cable` offering AnyCable's extended protocol, with `headers`; returns the
    /// socket and its welcome.
    pub fn extended_cable(&self, headers: &[(&'static str, &str)]) -> (Socket, Value) {
        use tungstenite::client::IntoClientRequest;
        let url = format!("ws://127.0.0.1:{}/cable", self.port);
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "actioncable-v1-ext-json".parse().unwrap(),
        );
        for (name, value) in headers {
            request.headers_mut().insert(*name, value.parse().unwrap());
        }
        let (mut socket, response) = tungstenite::connect(request).expect("websocket upgrade");
        assert_eq!(
            response.headers()["sec-websocket-protocol"],
            "actioncable-v1-ext-json"
        );
        set_read_timeout(&socket, Duration::from_secs(5));
        let welcome = recv(&mut socket);
        (socket, welcome)
    }
}

/// A callwire fed from `<prefix>/#` on the shared broker, `<prefix>/` stripped, whose MQTT
/// subscription is known to be live: the broker may take the subscription a moment after the
/// connection, so warm-up messages are published until one reaches a Blackhole socket, which
/// is then closed and has left. `token`: a `*` credential's secret when `extra` has `--auth`.
pub fn mqtt_callwire(prefix: &str, extra: &[&str], token: Option<&str>) -> Callwire {
    let callwire = Callwire::start_mqtt(1883, prefix, extra);
    callwire.wait_connected(Duration::from_secs(10));
    let mut socket = callwire.ws("/");
    let mut subscribe = serde_json::json!({"action": "subscribe", "request_id": "warm",
                                           "data": {"binding": "warmup.#"}});
    if let Some(token) = token {
        subscribe["auth_token"] = token.into();
    }
    let reply = request(&mut socket, subscribe);
    assert_eq!(reply["status"], "success", "{reply}");
    set_read_timeout(&socket, Duration::from_millis(100));
    let arrived = (0..100).any(|n| {
        mosquitto_pub(1883, &format!("{prefix}/warmup/{n}"), "{}");
        matches!(socket.read(), Ok(Message::Text(_)))
    });
    assert!(
        arrived,
        "no warm-up message arrived: {}",
        callwire.log_text()
    );
    drop(socket);
    wait_for(
        "the warm-up socket to leave",
        Duration::from_secs(10),
        || callwire.healthz().1["clients"] == 0,
    );
    callwire
}

impl Drop for Callwire {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Sends a JSON request as a text frame.
/// How long a read on `socket` may block.
pub fn set_read_timeout(socket: &Socket, timeout: Duration) {
    if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
        stream.set_read_timeout(Some(timeout)).unwrap();
    }
}

/// Keeps reading `socket` (tungstenite answers pings as it reads) until callwire counts
/// `clients` connected, as the idle-ping tests wait for silent sockets to be dropped. Returns
/// whether `socket` was pinged meanwhile.
pub fn read_until_clients(callwire: &Callwire, socket: &mut Socket, clients: u64) -> bool {
    let mut pinged = false;
    set_read_timeout(socket, Duration::from_millis(50));
    wait_for(
        "callwire to close the silent sockets",
        Duration::from_secs(10),
        || {
            while let Ok(message) = socket.read() {
                pinged |= matches!(message, Message::Ping(_));
            }
            callwire.healthz().1["clients"] == serde_json::json!(clients)
        },
    );
    set_read_timeout(socket, Duration::from_secs(5));
    pinged
}

pub fn send(socket: &mut Socket, request: Value) {
    socket.send(Message::text(request.to_string())).unwrap();
}

/// The next text frame, parsed; panics on a timeout or a closed socket.
pub fn recv(socket: &mut Socket) -> Value {
    loop {
        match socket.read().expect("a frame before the timeout") {
            Message::Text(text) => return serde_json::from_str(&text).expect("a JSON frame"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Sends a request and returns the reply.
pub fn request(socket: &mut Socket, request: Value) -> Value {
    send(socket, request);
    recv(socket)
}

/// Reads frames until `quiet` passes with none; returns them all.
pub fn drain(socket: &mut Socket, quiet: Duration) -> Vec<Value> {
    if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
        stream.set_read_timeout(Some(quiet)).unwrap();
    }
    let mut frames = Vec::new();
    while let Ok(message) = socket.read() {
        if let Message::Text(text) = message {
            frames.push(serde_json::from_str(&text).unwrap());
        }
    }
    if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
    }
    frames
}

/// Publishes one message to an MQTT broker with the real `mosquitto_pub` client.
pub fn mosquitto_pub(port: u16, topic: &str, payload: &str) {
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            payload,
        ])
        .status()
        .expect("mosquitto_pub runs");
    assert!(status.success(), "mosquitto_pub failed");
}

/// `mosquitto_sub` on one topic of the Mosquitto at `port`, subscribed (its SUBACK seen) by
/// the time `start` returns, so nothing published afterwards can slip past it.
pub struct Subscriber {
    child: Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Subscriber {
    /// Subscribes at QoS 1 to `topic`, with `limits` such as `-C 1` (stop after one message)
    /// or `-W 3` (stop after 3 s).
    pub fn start(port: u16, topic: &str, limits: &[&str]) -> Subscriber {
        use std::io::BufRead;
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .args(["-q", "1", "-d", "-t", topic, "-F", "payload:%p"])
            .args(limits)
            .stdout(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub runs");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        lines
            .by_ref()
            .map(Result::unwrap)
            .find(|line| line.contains("received SUBACK"))
            .expect("mosquitto_sub subscribed");
        Subscriber { child, lines }
    }

    /// Every payload received until the subscriber stopped (at its limit), and how it ended.
    pub fn payloads(mut self) -> (Vec<String>, std::process::ExitStatus) {
        let payloads = self
            .lines
            .by_ref()
            .map_while(Result::ok)
            .filter_map(|line| line.strip_prefix("payload:").map(str::to_owned))
            .collect();
        (payloads, self.child.wait().unwrap())
    }
}

/// A Mosquitto of the test's own on a free port, killed when dropped.
pub struct PrivateMosquitto {
    child: Option<Child>,
    pub port: u16,
    /// Its configuration file, when it has settings beyond the port.
    config: Option<TempFile>,
}

impl PrivateMosquitto {
    pub fn start() -> PrivateMosquitto {
        let mut broker = PrivateMosquitto {
            child: None,
            port: free_port(),
            config: None,
        };
        broker.restart();
        broker
    }

    /// Starts one with `settings` (mosquitto.conf lines) beside a loopback listener.
    pub fn start_with(settings: &str) -> PrivateMosquitto {
        let port = free_port();
        let text = format!("listener {port} 127.0.0.1\nallow_anonymous true\n{settings}\n");
        let mut broker = PrivateMosquitto {
            child: None,
            port,
            config: Some(TempFile::new("mosquitto-conf-", &text)),
        };
        broker.restart();
        broker
    }

    /// Starts it (again) on the same port and waits until it accepts connections.
    pub fn restart(&mut self) {
        let port = self.port.to_string();
        let args = match &self.config {
            Some(config) => ["-c", config.path()],
            None => ["-p", port.as_str()],
        };
        let child = Command::new("mosquitto")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        let port = self.port;
        wait_for("the private mosquitto", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateMosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}
