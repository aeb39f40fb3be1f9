//! A TCP proxy on loopback that a test can cut (every connection shut, new ones refused),
//! resume, or freeze (open connections silently carry nothing), to make broker outages and
//! client network drops.

use std::io;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::{free_port, wait_for};

#[derive(Default)]
struct ProxyState {
    /// Whether the proxy listens (false: connections are refused).
    open: AtomicBool,
    /// Whether the listening socket exists right now.
    listening: AtomicBool,
    quit: AtomicBool,
    /// Both ends of every proxied connection, to shut them on a cut.
    conns: Mutex<Vec<TcpStream>>,
    /// Numbers the connections, from 1.
    accepted: AtomicU64,
    /// Connections numbered up to this one are black holes: what they carry is dropped.
    frozen_up_to: AtomicU64,
}

/// Forwards a free port to `upstream` on loopback, one pair of threads per connection.
pub struct Proxy {
    pub port: u16,
    state: Arc<ProxyState>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    /// A proxy to `upstream`, listening at once when `open`.
    pub fn start(upstream: u16, open: bool) -> Proxy {
        let port = free_port();
        let state = Arc::new(ProxyState::default());
        state.open.store(open, Ordering::SeqCst);
        let shared = state.clone();
        let thread = thread::spawn(move || accept_loop(port, upstream, &shared));
        let proxy = Proxy {
            port,
            state,
            thread: Some(thread),
        };
        proxy.wait_listening(open);
        proxy
    }

    fn wait_listening(&self, listening: bool) {
        wait_for("the proxy to switch", Duration::from_secs(5), || {
            self.state.listening.load(Ordering::SeqCst) == listening
        });
    }

    /// Closes every proxied connection and refuses new ones until [`Proxy::resume`].
    pub fn cut(&self) {
        {
            let mut conns = self.state.conns.lock().unwrap();
            self.state.open.store(false, Ordering::SeqCst);
            for conn in conns.drain(..) {
                let _ = conn.shutdown(Shutdown::Both);
            }
        }
        self.wait_listening(false);
    }

    /// Makes every connection open now a black hole (nothing closes, nothing gets through,
    /// as when a link dies silently); later connections work.
    pub fn freeze_existing(&self) {
        let _conns = self.state.conns.lock().unwrap();
        let last = self.state.accepted.load(Ordering::SeqCst);
        self.state.frozen_up_to.store(last, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.state.open.store(true, Ordering::SeqCst);
        self.wait_listening(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.quit.store(true, Ordering::SeqCst);
        self.cut();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(port: u16, upstream_port: u16, state: &Arc<ProxyState>) {
    let mut listener: Option<TcpListener> = None;
    while !state.quit.load(Ordering::SeqCst) {
        if !state.open.load(Ordering::SeqCst) {
            listener = None;
            state.listening.store(false, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(10));
            continue;
        }
        let Some(bound) = &listener else {
            if let Ok(bound) = TcpListener::bind(("127.0.0.1", port)) {
                bound.set_nonblocking(true).unwrap();
                listener = Some(bound);
                state.listening.store(true, Ordering::SeqCst);
            } else {
                thread::sleep(Duration::from_millis(10));
            }
            continue;
        };
        let client = match bound.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(_) => continue,
        };
        let _ = client.set_nonblocking(false);
        let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
            continue;
        };
        let mut conns = state.conns.lock().unwrap();
        if !state.open.load(Ordering::SeqCst) {
            continue; // cut while connecting: drop both
        }
        let number = state.accepted.fetch_add(1, Ordering::SeqCst) + 1;
        conns.push(client.try_clone().unwrap());
        conns.push(upstream.try_clone().unwrap());
        let ends = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
        pump(ends.0, ends.1, number, state.clone());
        pump(upstream, client, number, state.clone());
    }
    state.listening.store(false, Ordering::SeqCst);
}

/// Copies `from` to `to` on a thread of its own until either end closes, dropping what
/// comes once connection `number` is frozen.
fn pump(mut from: TcpStream, mut to: TcpStream, number: u64, state: Arc<ProxyState>) {
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if number <= state.frozen_up_to.load(Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
