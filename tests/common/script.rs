//! Real clients run as child processes (tests/clients): each prints one JSON line per thing it
//! sees, and reads commands on stdin.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A client script running beside the test; its stdout lines (JSON) are collected as they
/// come, its stderr kept for failure messages.
pub struct Script {
    pub name: String,
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub lines: Receiver<Value>,
    pub seen: Vec<Value>,
    pub stderr: Arc<Mutex<String>>,
}

impl Script {
    /// `node tests/clients/<script> args...`: the official client needs `npm ci` there first.
    pub fn node(script: &str, args: &[&str]) -> Script {
        Script::node_with_env(script, args, &[])
    }

    /// As `node`, with `env` added to its environment (`NODE_EXTRA_CA_CERTS`, ...).
    pub fn node_with_env(script: &str, args: &[&str], env: &[(&str, &str)]) -> Script {
        let modules = format!("{}/tests/clients/node_modules", env!("CARGO_MANIFEST_DIR"));
        assert!(
            std::path::Path::new(&modules).exists(),
            "the npm packages are missing: run `npm ci --prefix tests/clients`"
        );
        Script::start("node", script, args, env)
    }

    pub fn python(script: &str, args: &[&str]) -> Script {
        Script::spawn("python3", script, args)
    }

    pub fn spawn(program: &str, script: &str, args: &[&str]) -> Script {
        Script::start(program, script, args, &[])
    }

    fn start(program: &str, script: &str, args: &[&str], env: &[(&str, &str)]) -> Script {
        let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new(program)
            .arg(&path)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("{program} {script} starts: {err}"));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let kept = stderr.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            kept.lock().unwrap().push_str(&text);
        });
        Script {
            name: script.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Takes the lines printed so far.
    pub fn pump(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// Waits until a line satisfies `check`; returns it.
    pub fn wait_line(
        &mut self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.seen.iter().find(|line| check(line)) {
                return found.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) => self.seen.push(line),
                Err(_) if Instant::now() < deadline => {}
                Err(_) => panic!(
                    "{}: timed out waiting for {what}; printed:\n{}\nstderr:\n{}",
                    self.name,
                    self.transcript(),
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    /// Writes one command line to the script.
    pub fn command(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Closes its stdin and waits for it to exit; returns its status.
    pub fn finish(&mut self) -> ExitStatus {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader thread ends at EOF: take what is left.
                std::thread::sleep(Duration::from_millis(50));
                self.pump();
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The lines of one kind (`event`) for one subscription (`sub`, if given).
    pub fn events(&self, event: &str, sub: Option<&str>) -> Vec<&Value> {
        self.seen
            .iter()
            .filter(|line| line["event"] == event && sub.is_none_or(|sub| line["sub"] == sub))
            .collect()
    }

    pub fn transcript(&self) -> String {
        let lines: Vec<String> = self.seen.iter().map(Value::to_string).collect();
        lines.join("\n")
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
