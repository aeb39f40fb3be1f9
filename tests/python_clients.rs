//! Real clients that no one here wrote, driven from `cargo test`: Python's `websockets`.

mod common;

use std::process::Command;

use common::Callwire;

/// Runs a script from tests/clients with the server's port; it asserts, we check it passed.
fn run_client(script: &str, args: &[&str]) -> String {
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python3")
        .arg(path)
        .args(args)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn python_websockets_client_sees_the_demo_calls() {
    let callwire = Callwire::start(&["--demo", "--demo-rate", "5"]);
    let out = run_client("blackhole_demo.py", &[&callwire.port.to_string(), "10"]);
    assert!(out.contains("received 10 events"), "{out}");
}
