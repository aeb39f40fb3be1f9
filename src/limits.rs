//! The limits: every bound the server keeps, fixed at start-up from the command line. The
//! preallocated structures are sized from these, and nothing grows past them.

use std::time::{Duration, Instant};

/// Every bound, fixed at start-up (`--max-clients`, `--max-bindings`, ...).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Websocket clients at once; the hub's slab is this big.
    pub max_clients: usize,
    /// Bindings on one Blackhole socket.
    pub max_bindings: usize,
    /// Property filters on one iSymphony socket.
    pub max_filters: usize,
    /// Frames queued for one client; from half of it the client holds the source.
    pub queue_depth: usize,
    /// How long a frame may wait for its client before the client is closed as too slow.
    pub stall_timeout: Duration,
    /// Live calls kept; past it the oldest is dropped.
    pub max_calls: usize,
    /// Recent events kept per live call.
    pub events_per_call: usize,
    /// Largest message from a client or from the broker, in bytes.
    pub max_message_size: usize,
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
    fn a_bucket_allows_its_burst_then_refuses_until_refilled() {
        let mut bucket = TokenBucket::new(1000.0, 3);
        assert!(bucket.take() && bucket.take() && bucket.take());
        assert!(!bucket.take(), "the burst is spent");
        std::thread::sleep(Duration::from_millis(5));
        assert!(bucket.take(), "refilled at 1000/s");
    }
}
