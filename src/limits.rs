//! The limits: every bound the server keeps, fixed at start-up from the command line. The
//! preallocated structures are sized from these, and nothing grows past them.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Connections being answered at once: reading a request head, writing a plain HTTP answer,
/// or upgrading (a websocket then holds a hub slot instead). Each may hold a request head and
/// a piece of an answer (the budget's `requests` part). At the bound, `server` pauses accepting until
/// one is done: the next connections wait in the kernel's listen queue, which costs callwire
/// nothing, and a burst of reconnecting clients is served in turn rather than refused.
pub const MAX_PENDING: usize = 128;

/// Every bound, fixed at start-up (`--max-clients`, `--max-bindings`, ...).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Whether every connection is TLS (`--tls-cert`): each then holds rustls's state and
    /// buffers, `tls::PER_CONNECTION` at most.
    pub tls: bool,
    /// Websocket clients at once; the hub's slab is this big.
    pub max_clients: usize,
    /// Bindings on one Blackhole socket.
    pub max_bindings: usize,
    /// Property filters on one iSymphony socket.
    pub max_filters: usize,
    /// Frames queued for one client; from half of it the client holds the source.
    pub queue_depth: usize,
    /// Bytes queued for one client (always at least one frame); from half of it the client
    /// holds the source.
    pub queue_bytes: usize,
    /// Bytes of the distinct frames queued to all clients; past it no frame is queued, and
    /// from half of it the source waits.
    pub queue_bytes_total: usize,
    /// How long a frame may wait for its client before the client is closed as too slow.
    pub stall_timeout: Duration,
    /// Live calls kept; past it the oldest is dropped.
    pub max_calls: usize,
    /// Recent events kept per live call.
    pub events_per_call: usize,
    /// Largest message from the broker, in bytes (and so the largest event frame).
    pub max_message_size: usize,
    /// Largest message from a websocket client, in bytes (never above `max_message_size`):
    /// tungstenite holds up to two of them per socket while one arrives.
    pub max_request_size: usize,
    /// Silence before an idle socket is pinged, and again before it is closed.
    pub ping_interval: Duration,
    /// Connections open at once from one IP address.
    pub max_per_ip: usize,
    /// Time a client has to send its whole request head.
    pub handshake_timeout: Duration,
    /// Requests per second one socket may keep up.
    pub request_rate: f64,
    /// Requests one socket may send in a burst.
    pub request_burst: u32,
    /// Bytes the history of recent events may hold (delivery.md).
    pub history_bytes: usize,
    /// Age past which an event leaves the history.
    pub history_ttl: Duration,
    /// Time a websocket has to authenticate, with `--auth`.
    pub auth_timeout: Duration,
    /// Websockets at once still to authenticate, beside `max_clients`.
    pub max_unauthenticated: usize,
}

impl Limits {
    /// The hub's slots: every authenticated client, and every socket still to authenticate
    /// (the seats module keeps each kind within its bound).
    pub fn hub_slots(&self) -> usize {
        self.max_clients + self.max_unauthenticated
    }
}

/// What every socket's bindings, filters and subscriptions may hold in all, on average per
/// client: a bound for all of them together (`--max-bindings` is each socket's own), so that
/// their part of the budget is not `--max-clients` times the largest socket's.
pub const INTEREST_PER_CLIENT: usize = 8 * 1024;

/// Bytes shared by the stores of one kind (every socket's bindings): each holds its share
/// (`Held`) and gives it back when it shrinks or goes, so together they stay within `max`.
#[derive(Debug)]
pub struct BytePool {
    used: Cell<usize>,
    max: usize,
}

impl BytePool {
    pub fn new(max: usize) -> Rc<BytePool> {
        Rc::new(BytePool {
            used: Cell::new(0),
            max,
        })
    }

    /// The pool every socket's interest draws from, with these limits.
    pub fn for_interest(limits: &Limits) -> Rc<BytePool> {
        BytePool::new(limits.max_clients * INTEREST_PER_CLIENT)
    }

    /// A share of nothing yet.
    pub fn share(self: &Rc<BytePool>) -> Held {
        Held {
            pool: self.clone(),
            bytes: 0,
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.get()
    }
}

/// One store's share of a `BytePool`, given back when dropped.
#[derive(Debug)]
pub struct Held {
    pool: Rc<BytePool>,
    bytes: usize,
}

impl Held {
    /// The share held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How much more the share could grow now.
    pub fn room(&self) -> usize {
        self.pool.max - self.pool.used.get()
    }

    /// Makes the share `bytes`; `false`, changing nothing, when growing it would take the pool
    /// past its bound.
    pub fn resize(&mut self, bytes: usize) -> bool {
        let pool = &self.pool;
        let used = pool.used.get() - self.bytes + bytes;
        if bytes > self.bytes && used > pool.max {
            return false;
        }
        pool.used.set(used);
        self.bytes = bytes;
        true
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.resize(0);
    }
}

/// A token bucket: up to `burst` requests at once, refilled at `rate` per second.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    burst: f64,
    rate: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            rate,
            last: Instant::now(),
        }
    }

    /// Takes a token if one is left; `false` means the request is over the limit.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_stay_within_the_pool_and_go_back_when_dropped() {
        let pool = BytePool::new(100);
        let mut a = pool.share();
        let mut b = pool.share();
        assert!(a.resize(60));
        assert!(!b.resize(41), "past the bound");
        assert!(b.resize(40));
        assert!(a.resize(10), "shrinking always fits");
        assert!(b.resize(90));
        assert_eq!(pool.used(), 100);
        drop(b);
        assert_eq!(pool.used(), 10);
        drop(a);
        assert_eq!(pool.used(), 0);
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_until_refilled() {
        let mut bucket = TokenBucket::new(1000.0, 3);
        assert!(bucket.take() && bucket.take() && bucket.take());
        assert!(!bucket.take(), "the burst is spent");
        std::thread::sleep(Duration::from_millis(5));
        assert!(bucket.take(), "refilled at 1000/s");
    }
}
