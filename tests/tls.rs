//! TLS (README, "TLS"): the listener with `--tls-cert`/`--tls-key` serving real clients over
//! `wss://` and `https://`, refusing one that does not trust the certificate, and swapping the
//! certificate on SIGHUP for new connections while old ones keep receiving; and the sources
//! over TLS: `mqtts://` to a private Mosquitto with a TLS listener, `amqps://` to the shared
//! RabbitMQ through a TLS-terminating `socat` in front of it. Every certificate comes from a
//! throw-away CA made with `openssl` (tests/common/pki.rs).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use common::pki::{TestCa, fingerprint, https_get};
use common::script::Script;
use common::{Callwire, PrivateMosquitto, free_port, mosquitto_pub, unique, wait_for};

const TIMEOUT: Duration = Duration::from_secs(15);

/// A callwire fed by the demo PBX, serving TLS only with `cert`.
fn tls_callwire(cert: &common::pki::Issued, extra: &[&str]) -> Callwire {
    let mut args = vec![
        "--demo",
        "--demo-rate",
        "20",
        "--tls-cert",
        &cert.cert,
        "--tls-key",
        &cert.key,
    ];
    args.extend_from_slice(extra);
    Callwire::start(&args)
}

/// The Python `websockets` Blackhole client on `wss://localhost:PORT/`, trusting `ca` (`-`:
/// the system's roots).
fn python_client(port: u16, ca: &str) -> Script {
    let url = format!("wss://localhost:{port}/");
    Script::python("wss_blackhole.py", &[&url, ca])
}

fn events_seen(client: &mut Script) -> usize {
    client.pump();
    client.events("event", None).len()
}

#[test]
fn python_and_anycable_over_wss_get_events_and_a_client_without_the_ca_is_refused() {
    let ca = TestCa::new("wss");
    let cert = ca.issue("server");
    let callwire = tls_callwire(&cert, &[]);

    let mut python = python_client(callwire.port, &ca.cert());
    let connected = python.wait_line("the wss:// connection", TIMEOUT, |l| {
        l["event"] == "connected"
    });
    assert_eq!(connected["cert_sha256"], fingerprint(cert.cert.as_ref()));
    python.wait_line("the subscription", TIMEOUT, |l| {
        l["event"] == "reply" && l["status"] == "success"
    });
    python.wait_line("an event over wss://", TIMEOUT, |l| l["event"] == "event");

    // @anycable/core with `ws`, over wss://, trusting the CA through Node's own setting.
    let url = format!("wss://localhost:{}/cable", callwire.port);
    let params = json!({"events": "events"}).to_string();
    let ca_file = ca.cert();
    let env = [("NODE_EXTRA_CA_CERTS", ca_file.as_str())];
    let mut anycable = Script::node_with_env("anycable_ext.mjs", &[&url, &params], &env);
    anycable.wait_line("the cable over wss://", TIMEOUT, |l| {
        l["event"] == "connect"
    });
    anycable.wait_line("the subscription", TIMEOUT, |l| {
        l["event"] == "channel" && l["state"] == "connect"
    });
    let message = anycable.wait_line("a broadcast over wss://", TIMEOUT, |l| {
        l["event"] == "message"
    });
    assert!(message["meta"]["offset"].is_u64(), "{message}");

    // Python trusting only the system's roots: the handshake fails on its side, and callwire
    // counts the failure.
    let mut stranger = python_client(callwire.port, "-");
    let refused = stranger.wait_line("the refusal", TIMEOUT, |l| {
        l["event"] == "refused" || l["event"] == "connected"
    });
    assert_eq!(refused["event"], "refused", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("certificate verify failed"),
        "{refused}"
    );
    // REST and metrics over https:// on the same port.
    let failures = || {
        let (status, body) = https_get(&ca.cert(), callwire.port, "/metrics").unwrap();
        assert_eq!(status, 200);
        metric(&body, "callwire_tls_handshake_failures_total")
    };
    wait_for("the failed handshake counted", TIMEOUT, || failures() >= 1);
    let (status, body) = https_get(&ca.cert(), callwire.port, "/healthz").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["source"]["kind"],
        "demo"
    );
    // A plain-text client on the TLS port is not served.
    let plain = std::net::TcpStream::connect(("127.0.0.1", callwire.port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut plain = plain;
    use std::io::{Read, Write};
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/1.1"),
        "plain HTTP answered on the TLS port"
    );

    // Both clients kept receiving all along.
    let before = events_seen(&mut python);
    wait_for("more events for the Python client", TIMEOUT, || {
        events_seen(&mut python) > before
    });
}

#[test]
fn sighup_gives_new_connections_the_new_certificate_while_old_ones_keep_receiving() {
    let ca = TestCa::new("reload");
    let first = ca.issue("first");
    let second = ca.issue("second");
    // The files callwire reads, replaced in place as an operator's renewal would.
    let (cert_path, key_path) = (ca.path("served.pem"), ca.path("served.key"));
    std::fs::copy(&first.cert, &cert_path).unwrap();
    std::fs::copy(&first.key, &key_path).unwrap();
    let served = common::pki::Issued {
        cert: cert_path.clone(),
        key: key_path.clone(),
    };
    let callwire = tls_callwire(&served, &[]);

    let mut old = python_client(callwire.port, &ca.cert());
    let seen = old.wait_line("the first connection", TIMEOUT, |l| {
        l["event"] == "connected"
    });
    assert_eq!(seen["cert_sha256"], fingerprint(first.cert.as_ref()));
    old.wait_line("an event", TIMEOUT, |l| l["event"] == "event");

    // A broken certificate file on SIGHUP: the one in force stays, and the log says why.
    std::fs::write(&cert_path, "not a certificate\n").unwrap();
    hangup(&callwire, "kept the TLS certificate in force");
    let mut during = python_client(callwire.port, &ca.cert());
    let seen = during.wait_line("a connection after the bad reload", TIMEOUT, |l| {
        l["event"] == "connected"
    });
    assert_eq!(seen["cert_sha256"], fingerprint(first.cert.as_ref()));

    // The renewed certificate: new connections get it.
    std::fs::copy(&second.cert, &cert_path).unwrap();
    std::fs::copy(&second.key, &key_path).unwrap();
    hangup(&callwire, "new connections get the certificate");
    let mut new = python_client(callwire.port, &ca.cert());
    let seen = new.wait_line("a connection after the reload", TIMEOUT, |l| {
        l["event"] == "connected"
    });
    assert_eq!(seen["cert_sha256"], fingerprint(second.cert.as_ref()));
    new.wait_line("an event on the new connection", TIMEOUT, |l| {
        l["event"] == "event"
    });

    // The old connection, on the first certificate, keeps receiving.
    let before = events_seen(&mut old);
    wait_for(
        "events on the old connection after the reload",
        TIMEOUT,
        || events_seen(&mut old) >= before + 5,
    );
    old.pump();
    assert!(
        old.child.try_wait().unwrap().is_none(),
        "the old client ended"
    );
    assert_eq!(
        old.events("connected", None).len(),
        1,
        "the old client reconnected: {}",
        old.transcript()
    );
}

/// Sends SIGHUP and waits for the log line that says how the certificate reload went.
fn hangup(callwire: &Callwire, expected: &str) {
    let before = callwire.log_text().matches(expected).count();
    let status = Command::new("kill")
        .args(["-HUP", &callwire.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for(expected, TIMEOUT, || {
        callwire.log_text().matches(expected).count() > before
    });
}

/// A counter's value in Prometheus text.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[test]
fn mqtts_to_a_private_mosquitto_trusting_the_given_ca_and_not_the_systems() {
    let ca = TestCa::new("mqtts");
    let broker_cert = ca.issue("mosquitto");
    let tls_port = free_port();
    let broker = PrivateMosquitto::start_with(&format!(
        "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
        ca.cert(),
        broker_cert.cert,
        broker_cert.key
    ));
    wait_for("the TLS listener", TIMEOUT, || {
        std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
    });
    let prefix = unique("mqtts");
    let url = format!("mqtts://localhost:{tls_port}");
    let topic = format!("{prefix}/#");
    let strip = format!("{prefix}/");
    let mqtt = [
        "--mqtt",
        url.as_str(),
        "--mqtt-topic",
        &topic,
        "--mqtt-strip-prefix",
        &strip,
    ];
    let ca_file = ca.cert();
    let callwire = Callwire::start(&[&mqtt[..], &["--broker-ca", &ca_file]].concat());
    callwire.wait_connected(TIMEOUT);
    let mut socket = callwire.ws("/");
    let reply = common::request(
        &mut socket,
        json!({"action": "subscribe", "request_id": "1", "data": {"binding": "call.#"}}),
    );
    assert_eq!(reply["status"], "success", "{reply}");
    // Published on the broker's plain listener, delivered over its TLS one.
    mosquitto_pub(
        broker.port,
        &format!("{prefix}/call/CHANNEL_CREATE/tls"),
        r#"{"over":"mqtts"}"#,
    );
    let event = common::recv(&mut socket);
    assert_eq!(event["routing_key"], "call.CHANNEL_CREATE.tls", "{event}");
    assert_eq!(event["data"]["over"], "mqtts", "{event}");

    // Without --broker-ca the system's roots are trusted, and they do not know this CA.
    let untrusting = Callwire::start(&mqtt);
    wait_for("the refused handshake in the log", TIMEOUT, || {
        untrusting
            .log_text()
            .contains("TLS handshake with 'localhost'")
    });
    assert_eq!(untrusting.healthz().0, 503);
    assert!(
        untrusting.log_text().contains("UnknownIssuer"),
        "{}",
        untrusting.log_text()
    );
}

/// A server the test started, listening on `port`; killed when dropped.
struct Listening {
    child: Child,
    port: u16,
}

impl Listening {
    /// Spawns `command` and waits until `port` takes connections.
    fn spawn(mut command: Command, port: u16, what: &str) -> Listening {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{what} runs (tests/run installs it): {e}"));
        wait_for(what, TIMEOUT, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Listening { child, port }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `socat` terminating TLS with `cert` on a free port, forwarding to the shared RabbitMQ.
fn tls_proxy(cert: &common::pki::Issued) -> Listening {
    let port = free_port();
    let mut command = Command::new("socat");
    command
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
            cert.cert, cert.key
        ))
        .arg("TCP:127.0.0.1:5672");
    Listening::spawn(command, port, "socat")
}

#[test]
fn amqps_through_a_tls_terminating_proxy_to_the_shared_rabbitmq() {
    let ca = TestCa::new("amqps");
    let proxy = tls_proxy(&ca.issue("rabbit"));
    let exchange = unique("callwire-amqps");
    let url = format!("amqps://guest:guest@localhost:{}/%2f", proxy.port);
    let ca_file = ca.cert();
    let callwire = Callwire::start(&[
        "--amqp",
        &url,
        "--amqp-exchange",
        &exchange,
        "--broker-ca",
        &ca_file,
    ]);
    callwire.wait_connected(TIMEOUT);
    let mut socket = callwire.ws("/");
    let reply = common::request(
        &mut socket,
        json!({"action": "subscribe", "request_id": "1", "data": {"binding": "call.#"}}),
    );
    assert_eq!(reply["status"], "success", "{reply}");
    // The real publisher, straight to RabbitMQ without TLS: `callwire simulate`.
    let rabbit = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let status = Command::new(common::binary())
        .args(["simulate", "--amqp", rabbit, "--amqp-exchange", &exchange])
        .args(["--calls-per-sec", "5", "--duration", "2", "--seed", "7"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let event = common::recv(&mut socket);
    assert_eq!(event["action"], "event", "{event}");
    assert!(
        event["routing_key"].as_str().unwrap().starts_with("call."),
        "{event}"
    );
    // The exchange was the test's own: leave nothing behind on the shared broker.
    smol::block_on(async {
        let props = lapin::ConnectionProperties::default();
        let conn =
            lapin::Connection::connect_with_runtime(rabbit, props, async_rs::Runtime::smol())
                .await
                .unwrap();
        let channel = conn.create_channel().await.unwrap();
        let options = lapin::options::ExchangeDeleteOptions::default();
        channel
            .exchange_delete(exchange.as_str().into(), options)
            .await
    })
    .unwrap();
}

/// The page of another origin, served over https://: it opens a wss:// Blackhole socket to
/// callwire, subscribes to `call.#` and notes the replies and events it gets.
fn wss_page(callwire_port: u16) -> String {
    format!(
        r#"<!doctype html><title>a wallboard over https</title><script>
const results = {{ opened: false, replies: [], events: [], closed: null, done: false }};
window.results = results;
const ws = new WebSocket('wss://localhost:{callwire_port}/');
ws.onopen = () => {{
  results.opened = true;
  ws.send(JSON.stringify({{ action: 'subscribe', request_id: 'page', data: {{ binding: 'call.#' }} }}));
}};
ws.onmessage = (m) => {{
  const frame = JSON.parse(m.data);
  if (frame.action === 'reply') results.replies.push(frame.status);
  if (frame.action === 'event') results.events.push(frame.name);
  if (results.events.length >= 3) {{ results.done = true; ws.close(); }}
}};
ws.onclose = (e) => {{ results.closed = e.code; results.done = true; }};
setTimeout(() => {{ results.done = true; }}, 15000);
</script>"#
    )
}

/// `openssl s_server` serving the files of the CA's folder over https:// with `cert` and the
/// CA's certificate as its chain.
fn page_server(ca: &TestCa, cert: &common::pki::Issued) -> Listening {
    let port = free_port();
    let mut command = Command::new("openssl");
    command
        .args(["s_server", "-quiet", "-WWW", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "-cert",
            &cert.cert,
            "-key",
            &cert.key,
            "-cert_chain",
            &ca.cert(),
        ])
        .current_dir(&ca.dir);
    Listening::spawn(command, port, "the https page server (openssl s_server)")
}

/// The base64 SHA-256 of a certificate's public key (SubjectPublicKeyInfo), as Chromium's
/// `--ignore-certificate-errors-spki-list` takes it.
fn spki_hash(cert: &str) -> String {
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in '{cert}' -pubkey -noout | openssl pkey -pubin -outform der | \
             openssl dgst -sha256 -binary | base64"
        ))
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[test]
fn chromium_on_an_https_page_of_an_allowed_origin_gets_events_over_wss() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's Chromium is not installed: run `apt-get install chromium`"
    );
    let ca = TestCa::new("browser");
    // Both servers present their certificate with the CA's after it, as a real chain.
    let chained = |issued: common::pki::Issued| {
        let chain = format!("{}.chain", issued.cert);
        let text = std::fs::read_to_string(&issued.cert).unwrap()
            + &std::fs::read_to_string(ca.cert()).unwrap();
        std::fs::write(&chain, text).unwrap();
        common::pki::Issued {
            cert: chain,
            key: issued.key,
        }
    };
    let page_cert = ca.issue("page");
    let page = page_server(&ca, &page_cert);
    let origin = format!("https://localhost:{}", page.port);
    let callwire = tls_callwire(
        &chained(ca.issue("callwire")),
        &["--allowed-origin", &origin],
    );
    std::fs::write(ca.dir.join("wallboard.html"), wss_page(callwire.port)).unwrap();

    let browse = |spki: &str| {
        let script = format!("{}/tests/browser/wss.mjs", env!("CARGO_MANIFEST_DIR"));
        Command::new("node")
            .arg(script)
            .arg(format!("{origin}/wallboard.html"))
            .arg(spki)
            .output()
            .expect("node runs")
    };
    // A Chromium that does not trust the CA does not even load the page.
    let untrusting = browse("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let refused: Value = serde_json::from_slice(&untrusting.stdout).expect("a JSON summary");
    assert_eq!(refused["ok"], false, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("ERR_CERT_AUTHORITY_INVALID"),
        "{refused}"
    );

    let output = browse(&spki_hash(&ca.cert()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the browser test failed:\n{stdout}\n{}\ncallwire's log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        callwire.log_text()
    );
    let summary: Value = serde_json::from_str(stdout.trim()).expect("a JSON summary");
    assert_eq!(summary["origin"], json!(origin), "{summary}");
    let results = &summary["results"];
    assert_eq!(
        results["opened"],
        true,
        "{summary}\n{}",
        callwire.log_text()
    );
    assert_eq!(results["replies"], json!(["success"]), "{summary}");
    assert_eq!(results["events"].as_array().unwrap().len(), 3, "{summary}");
    // The page's origin was let in because it was listed, not because nothing is checked:
    // nothing was refused, and no handshake failed.
    let (status, metrics) = https_get(&ca.cert(), callwire.port, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        metric(&metrics, "callwire_forbidden_total{reason=\"origin\"}"),
        0
    );
    assert_eq!(metric(&metrics, "callwire_tls_handshake_failures_total"), 0);
}
