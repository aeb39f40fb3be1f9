//! callwire under systemd: the unit and its environment file (systemd/), the sd_notify
//! protocol as the real binary speaks it (READY=1, WATCHDOG=1, STOPPING=1), and a live
//! `/metrics` scrape checked by Prometheus's own `promtool`.
//!
//! Needs `systemd-analyze` (Debian's systemd) and `promtool` (Debian's prometheus); .ci/run
//! installs both. A missing tool fails its test, never skips it.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Callwire, recv, request, unique};
use serde_json::json;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/callwire.service");
const ENV_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/callwire.env");

/// Runs a tool the test needs; a tool that is not installed fails the test, saying so.
fn run_tool(command: &mut Command, package: &str) -> Output {
    let name = command.get_program().to_string_lossy().into_owned();
    match command.output() {
        Ok(output) => output,
        Err(err) if err.kind() == ErrorKind::NotFound => panic!(
            "{name} is not installed: `apt-get install {package}` (.ci/run installs it); \
             this test does not skip without it"
        ),
        Err(err) => panic!("{name}: {err}"),
    }
}

/// A directory of the test's own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(stem: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique(stem));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    // verify wants ExecStart's binary to exist: check a copy that runs the one cargo built.
    let dir = TempDir::new("callwire-unit-");
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/callwire $CALLWIRE_OPTS"));
    let copy = dir.0.join("callwire.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/callwire", env!("CARGO_BIN_EXE_callwire")),
    )
    .unwrap();
    let output = run_tool(
        Command::new("systemd-analyze").arg("verify").arg(&copy),
        "systemd",
    );
    // verify exits 0 on unknown keys and unparsable values; only silence is clean.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {}: {}\n{said}",
        copy.display(),
        output.status
    );
}

/// Splits a value as systemd splits `$VAR` on an ExecStart line: at whitespace, with quotes
/// respected and then removed.
fn split_like_systemd(value: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote = None;
    for c in value.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    assert!(quote.is_none(), "unbalanced quote in {value}");
    words.extend(word);
    words
}

#[test]
fn the_unit_and_every_example_keep_state_and_the_broker_keeps_a_session() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert!(unit.lines().any(|l| l == "StateDirectory=callwire"));
    let text = std::fs::read_to_string(ENV_FILE).unwrap();
    let examples: Vec<&str> = (text.lines())
        .filter(|l| l.trim_start_matches('#').starts_with("CALLWIRE_OPTS="))
        .collect();
    assert!(!examples.is_empty());
    for line in examples {
        assert!(line.contains("--state-dir /var/lib/callwire"), "{line}");
        assert!(
            line.contains("--mqtt-session") || line.contains("--amqp-queue "),
            "{line}"
        );
    }
}

#[test]
fn every_example_in_the_env_file_is_valid_flags() {
    let text = std::fs::read_to_string(ENV_FILE).unwrap();
    let mut examples = 0;
    let mut active = 0;
    for line in text.lines() {
        let (commented, assignment) = match line.strip_prefix('#') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let Some(value) = assignment.strip_prefix("CALLWIRE_OPTS=") else {
            continue;
        };
        // The env file's own quoting: one double-quoted value.
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or_else(|| panic!("CALLWIRE_OPTS should be double-quoted: {line}"));
        let mut args = vec!["callwire".to_owned()];
        args.extend(split_like_systemd(value));
        if let Err((message, code)) = callwire::cli::parse(&args) {
            panic!("{line}\n  -> {args:?}\n  -> exit {code}: {message}");
        }
        examples += 1;
        active += usize::from(!commented);
    }
    assert!(examples >= 3, "only {examples} examples");
    assert_eq!(active, 1, "exactly one CALLWIRE_OPTS is in force");
    assert_eq!(
        split_like_systemd("--amqp-binding 'call.#' --x \"a b\""),
        ["--amqp-binding", "call.#", "--x", "a b"]
    );
}

/// A `callwire --demo` that reports to a notification socket of the test's own, with a
/// 400 ms watchdog (so a ping every 200 ms).
struct Notified {
    child: Child,
    socket: UnixDatagram,
    log: PathBuf,
    _dir: TempDir,
}

impl Notified {
    fn start(notify_socket: impl FnOnce(&Path) -> (UnixDatagram, String)) -> Notified {
        let dir = TempDir::new("callwire-notify-");
        let (socket, name) = notify_socket(&dir.0);
        let log = dir.0.join("stderr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_callwire"))
            .args(["--demo", "--listen", "127.0.0.1:0"])
            .env("NOTIFY_SOCKET", name)
            .env("WATCHDOG_USEC", "400000")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("callwire starts");
        Notified {
            child,
            socket,
            log,
            _dir: dir,
        }
    }

    /// The next notice, or `None` after `timeout`.
    fn next(&self, timeout: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(err) => panic!("notify socket: {err}"),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The port from the "listening on" line.
    fn port(&self) -> Option<u16> {
        self.log_text().lines().find_map(|line| {
            let address = line.split("listening on 127.0.0.1:").nth(1)?;
            address.trim().parse().ok()
        })
    }
}

impl Drop for Notified {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn has_line(notice: &str, line: &str) -> bool {
    notice.lines().any(|l| l == line)
}

#[test]
fn ready_after_listening_then_watchdog_pings_then_stopping_on_sigterm() {
    let callwire = Notified::start(|dir| {
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        (socket, path.to_str().unwrap().to_owned())
    });

    // READY=1 is the first notice, and by then the port answers.
    let ready = callwire
        .next(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no READY=1 in 10 s: {}", callwire.log_text()));
    assert!(has_line(&ready, "READY=1"), "first notice: {ready:?}");
    let port = callwire
        .port()
        .expect("the \"listening on\" line comes before READY=1");
    assert!(
        ready.contains(&format!("STATUS=serving on 127.0.0.1:{port}")),
        "{ready:?}"
    );
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("READY=1 means it accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // WATCHDOG=1 every 200 ms (half of WATCHDOG_USEC), with a STATUS= line: count them over
    // 2 s, loosely (timers on a loaded machine run late, never early).
    let window = Duration::from_secs(2);
    let start = Instant::now();
    let mut pings = 0;
    while let Some(left) = window.checked_sub(start.elapsed()) {
        let Some(notice) = callwire.next(left.max(Duration::from_millis(1))) else {
            break;
        };
        assert!(has_line(&notice, "WATCHDOG=1"), "unexpected {notice:?}");
        assert!(notice.contains("STATUS=serving on"), "{notice:?}");
        pings += 1;
    }
    assert!(
        (5..=12).contains(&pings),
        "{pings} WATCHDOG=1 in {window:?} at a 200 ms interval"
    );

    // SIGTERM: STOPPING=1, then exit 0.
    let pid = callwire.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let notice = callwire
            .next(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|| panic!("no STOPPING=1 after SIGTERM: {}", callwire.log_text()));
        if has_line(&notice, "STOPPING=1") {
            break;
        }
        assert!(has_line(&notice, "WATCHDOG=1"), "unexpected {notice:?}");
    }
    let mut callwire = callwire;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = callwire.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "callwire did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}: {}", callwire.log_text());
    assert!(callwire.log_text().contains("SIGTERM"));
}

#[test]
fn an_abstract_notify_socket_works_too() {
    let callwire = Notified::start(|_dir| {
        use std::os::linux::net::SocketAddrExt;
        let name = unique("callwire-test-notify-");
        let address = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        (
            UnixDatagram::bind_addr(&address).unwrap(),
            format!("@{name}"),
        )
    });
    let ready = callwire
        .next(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no READY=1 in 10 s: {}", callwire.log_text()));
    assert!(has_line(&ready, "READY=1"), "{ready:?}");
    let ping = callwire.next(Duration::from_secs(2)).expect("a WATCHDOG=1");
    assert!(has_line(&ping, "WATCHDOG=1"), "{ping:?}");
}

/// The metric families the contract names (live-api.md, "Health and metrics"), each with
/// its type and the label it is broken down by.
const FAMILIES: [(&str, &str, &str); 10] = [
    ("callwire_events_in_total", "counter", "source"),
    ("callwire_deliveries_total", "counter", "dialect"),
    ("callwire_events_dropped_total", "counter", "reason"),
    ("callwire_clients", "gauge", "dialect"),
    ("callwire_source_connected", "gauge", "source"),
    ("callwire_source_reconnects_total", "counter", "source"),
    ("callwire_live_calls", "gauge", ""),
    ("callwire_process_resident_memory_bytes", "gauge", ""),
    ("callwire_history_bytes", "gauge", ""),
    ("callwire_history_events", "gauge", ""),
];

/// A sample's value, by its exact name and labels.
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{scrape}"))
        .parse()
        .unwrap()
}

#[test]
fn a_live_scrape_passes_promtool_check_metrics() {
    let callwire = Callwire::start(&["--demo", "--demo-rate", "20"]);
    let mut socket = callwire.ws("/");
    let reply = request(
        &mut socket,
        json!({"action": "subscribe", "data": {"binding": "call.*.*"}}),
    );
    assert_eq!(reply["status"], "success", "{reply}");
    for _ in 0..5 {
        assert_eq!(recv(&mut socket)["action"], "event");
    }

    // The whole answer, head included: the content type is part of the format.
    let mut stream = TcpStream::connect(("127.0.0.1", callwire.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, scrape) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.lines()
            .any(|l| l
                .eq_ignore_ascii_case("content-type: text/plain; version=0.0.4; charset=utf-8")),
        "{head}"
    );

    for (name, kind, label) in FAMILIES {
        assert!(
            scrape.contains(&format!("\n# TYPE {name} {kind}\n"))
                || scrape.starts_with(&format!("# TYPE {name} {kind}\n")),
            "no TYPE {name} {kind}"
        );
        assert!(
            scrape.contains(&format!("# HELP {name} ")),
            "no HELP {name}"
        );
        if !label.is_empty() {
            assert!(
                scrape.contains(&format!("\n{name}{{{label}=\"")),
                "{name} is not broken down by {label}"
            );
        }
    }
    // Taken while a client is connected and events flow.
    assert!(sample(scrape, "callwire_events_in_total{source=\"demo\"}") > 0.0);
    assert!(sample(scrape, "callwire_deliveries_total{dialect=\"blackhole\"}") > 0.0);
    assert_eq!(
        sample(scrape, "callwire_clients{dialect=\"blackhole\"}"),
        1.0
    );
    assert_eq!(
        sample(scrape, "callwire_source_connected{source=\"demo\"}"),
        1.0
    );
    assert!(sample(scrape, "callwire_process_resident_memory_bytes") > 1_000_000.0);
    // Five events came through, so the history holds them, and their bytes.
    assert!(sample(scrape, "callwire_history_events") >= 5.0);
    assert!(sample(scrape, "callwire_history_bytes") > 5.0 * 100.0);

    let mut promtool = Command::new("promtool");
    promtool
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match promtool.spawn() {
        Ok(child) => child,
        Err(err) if err.kind() == ErrorKind::NotFound => panic!(
            "promtool is not installed: `apt-get install prometheus` (.ci/run installs it); \
             this test does not skip without it"
        ),
        Err(err) => panic!("promtool: {err}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}\nscrape:\n{scrape}",
        output.status
    );
}
