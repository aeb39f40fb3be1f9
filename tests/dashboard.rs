//! The built-in dashboard at `GET /`: what the server sends, and a real browser using it; and
//! a page of another origin that the same browser shows, refused (docs/protocols/README.md,
//! "Browsers and other origins").
//!
//! The browser tests run tests/browser/dashboard.mjs: Debian's Chromium (/usr/bin/chromium),
//! driven by playwright-core from npm (`npm ci --prefix tests/browser`; `.ci/run` installs
//! both). Screenshots go to target/test-output/dashboard/.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Callwire, TempFile, recv, request};
use serde_json::{Value, json};

/// The demo PBX's account (src/sim.rs).
const DEMO_ACCOUNT: &str = "de0de0de0de0de0de0de0de0de0de0de";

/// A GET; returns the status, the head's lines (lower-cased names) and the body.
fn get(callwire: &Callwire, path: &str) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", callwire.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a whole response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn plain_get_serves_the_page_and_an_upgrade_on_slash_is_still_blackhole() {
    let callwire = Callwire::start(&["--demo", "--demo-rate", "5"]);

    let (status, headers, page) = get(&callwire, "/");
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        page.contains("<title>callwire · live calls</title>"),
        "{page}"
    );
    let policy = header(&headers, "content-security-policy").expect("a CSP");
    assert!(policy.starts_with("default-src 'none'"), "{policy}");
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
    assert!(page.contains(r#"<script src="/dashboard.js" defer></script>"#));
    // Nothing inline for the policy to forbid, nothing fetched from elsewhere.
    assert!(!page.contains("<script>") && !page.contains("<style") && !page.contains("style="));

    for (path, kind) in [
        ("/dashboard.js", "text/javascript; charset=utf-8"),
        ("/dashboard.css", "text/css; charset=utf-8"),
    ] {
        let (status, headers, body) = get(&callwire, path);
        assert_eq!(status, 200, "{path}");
        assert_eq!(header(&headers, "content-type"), Some(kind), "{path}");
        assert!(header(&headers, "content-security-policy").is_some());
        assert!(!body.is_empty());
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path}"
        );
        // Data is rendered with textContent only.
        assert!(!body.contains("innerHTML") && !body.contains("insertAdjacentHTML"));
    }
    assert!(!page.contains("http://") && !page.contains("https://"));
    // A query string is still the page; other paths are still 404.
    assert_eq!(get(&callwire, "/?x=1").0, 200);
    assert_eq!(get(&callwire, "/index.html").0, 404);

    // The same path upgraded is the Blackhole dialect, as before.
    let mut socket = callwire.ws("/");
    let reply = request(
        &mut socket,
        json!({"action": "subscribe", "request_id": "r1", "data": {"binding": "call.*.*"}}),
    );
    assert_eq!(reply["status"], "success", "{reply}");
    assert_eq!(reply["data"]["subscribed"], json!(["call.*.*"]));
    let event: Value = recv(&mut socket);
    assert_eq!(event["action"], "event", "{event}");
    assert!(event["routing_key"].as_str().unwrap().starts_with("call."));
}

/// target/test-output/dashboard, made if missing.
fn output_folder() -> PathBuf {
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-output/dashboard");
    std::fs::create_dir_all(&folder).unwrap();
    folder
}

/// Runs the Playwright script against the page; returns its JSON summary.
fn run_browser(callwire: &Callwire, credential: Option<&str>) -> Value {
    let browser = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci --prefix tests/browser`"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's Chromium is not installed: run `apt-get install chromium`"
    );
    let url = format!("http://127.0.0.1:{}/", callwire.port);
    let output = Command::new("node")
        .arg(browser.join("dashboard.mjs"))
        .arg(&url)
        .arg(output_folder())
        .args(credential)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}\ncallwire's log:\n{}",
        callwire.log_text()
    );
    let summary: Value = serde_json::from_str(stdout.trim()).expect("a JSON summary");
    assert_eq!(summary["ok"], true, "{summary}");
    summary
}

fn check_summary(summary: &Value, screenshot: &str) {
    assert!(summary["calls_seen"].as_u64().unwrap() >= 1, "{summary}");
    assert!(summary["call_ended"].is_string(), "{summary}");
    assert!(
        summary["feed"]["second"].as_u64() > summary["feed"]["first"].as_u64(),
        "{summary}"
    );
    assert!(summary["extension_chips"].as_u64().unwrap() >= 1);
    assert_eq!(summary["foreign"], json!([]), "{summary}");
    let shot = output_folder().join(screenshot);
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "no screenshot at {}", shot.display());
}

#[test]
fn a_browser_sees_live_calls_come_and_go_and_the_feed_move() {
    let callwire = Callwire::start(&["--demo", "--demo-rate", "3"]);
    let summary = run_browser(&callwire, None);
    check_summary(&summary, "dashboard.png");
    assert_eq!(summary["source"], "demo");
}

#[test]
fn with_auth_the_page_asks_for_a_credential_and_uses_it() {
    let credentials = TempFile::new(
        "callwire-dashboard-auth-",
        &json!({"credentials": [
            {"name": "desk", "secret": "d3sk-s3cret", "account": DEMO_ACCOUNT},
        ]})
        .to_string(),
    );
    let callwire = Callwire::start(&["--demo", "--demo-rate", "3", "--auth", credentials.path()]);
    // The REST API the page uses really is closed without the credential.
    assert_eq!(callwire.http("GET", "/rest/live/calls", &[]).0, 401);
    let summary = run_browser(&callwire, Some("desk:d3sk-s3cret"));
    assert_eq!(summary["signed_in"], true, "{summary}");
    check_summary(&summary, "dashboard-signin.png");
}

/// The page a site of another origin would serve: its script opens a websocket in each dialect
/// to callwire and fetches callwire's REST API, and notes what each got.
fn foreign_page(callwire_port: u16) -> String {
    format!(
        r#"<!doctype html><title>another site</title><script>
const base = '127.0.0.1:{callwire_port}';
const results = {{ sockets: {{}}, fetch: null, done: false }};
const socket = (path) => new Promise((resolve) => {{
  const ws = new WebSocket('ws://' + base + path);
  let opened = false;
  ws.onopen = () => {{ opened = true; }};
  ws.onmessage = (m) => {{ results.sockets[path + ' message'] = String(m.data).slice(0, 80); }};
  ws.onclose = (e) => resolve(opened ? 'opened, then closed ' + e.code : 'refused ' + e.code);
  setTimeout(() => resolve(opened ? 'open' : 'pending'), 5000);
}});
(async () => {{
  for (const path of ['/', '/cable', '/communication_manager/ws/event']) {{
    results.sockets[path] = await socket(path);
  }}
  try {{
    const answer = await fetch('http://' + base + '/rest/live/calls');
    results.fetch = 'read ' + answer.status + ': ' + (await answer.text()).slice(0, 80);
  }} catch (err) {{
    results.fetch = 'refused: ' + err.name;
  }}
  results.done = true;
  window.results = results;
}})();
</script>"#
    )
}

/// Serves `page` to every request on a port of its own (another origin than callwire's), for
/// as long as the test runs; returns the port.
fn serve_foreign_page(page: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    port
}

#[test]
fn a_page_of_another_origin_is_refused_while_the_dashboard_works() {
    let callwire = Callwire::start(&["--demo", "--demo-rate", "3"]);
    let foreign_port = serve_foreign_page(foreign_page(callwire.port));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/origins.mjs");
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's Chromium is not installed: run `apt-get install chromium`"
    );
    let output = Command::new("node")
        .arg(script)
        .arg(format!("http://127.0.0.1:{foreign_port}/"))
        .arg(format!("http://127.0.0.1:{}/", callwire.port))
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser test failed:\n{stdout}\n{}\ncallwire's log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        callwire.log_text()
    );
    let summary: Value = serde_json::from_str(stdout.trim()).expect("a JSON summary");
    assert_eq!(
        summary["foreign_origin"],
        json!(format!("http://127.0.0.1:{foreign_port}"))
    );
    // The other origin's page: no socket opened, no message, and no answer it could read.
    let sockets = summary["foreign"]["sockets"].as_object().unwrap();
    assert_eq!(sockets.len(), 3, "{summary}");
    for (path, result) in sockets {
        assert!(
            result.as_str().unwrap().starts_with("refused"),
            "{path}: {result}"
        );
    }
    assert_eq!(
        summary["foreign"]["fetch"], "refused: TypeError",
        "{summary}"
    );
    // Refused by callwire itself (403), not only by the browser's CORS rules: three upgrades
    // and the fetch, each counted.
    let (_, _, metrics) = get(&callwire, "/metrics");
    assert!(
        metrics.contains("callwire_forbidden_total{reason=\"origin\"} 4\n"),
        "{metrics}"
    );
    // The dashboard, on callwire's own origin, in the same browser: live, with calls.
    assert_eq!(summary["dashboard_live"], true, "{summary}");
    assert!(
        summary["dashboard_calls"].as_u64().unwrap() >= 1,
        "{summary}"
    );
}
