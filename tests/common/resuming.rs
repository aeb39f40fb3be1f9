//! A Blackhole client that resumes (delivery.md): it reconnects whenever its connection fails
//! and subscribes again with `since` its position, recording everything it saw; and the count
//! of messages `callwire simulate` published. Shared by tests/resume.rs and tests/restart.rs.

use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::stream::MaybeTlsStream;

/// Waits for `simulate` to end well; returns the messages it published (and saw confirmed by
/// the broker: it exits 1 otherwise).
pub fn published(simulate: Child) -> u64 {
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
#[derive(Clone, Default)]
pub struct Seen {
    pub replies: Vec<Value>,
    pub events: Vec<Value>,
    /// Events that came after a `recovered: true` reply with an offset at or before its
    /// position: the replay.
    pub replayed: usize,
    pub connections: u32,
}

/// A Blackhole client on its own thread that connects to `port`, subscribes to `binding` with
/// `since` its position, and reads until told to stop; whenever its connection fails it
/// connects again and resumes. Its position is the last event's, or, when a reply says
/// `recovered: false` (nothing replayed), the reply's.
pub struct Client {
    pub seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Client {
    pub fn start(port: u16, secret: &'static str, binding: &'static str) -> Client {
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

    pub fn events(&self) -> usize {
        self.seen.lock().unwrap().events.len()
    }

    /// Stops the thread; returns what the client saw.
    pub fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("the client thread");
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}
