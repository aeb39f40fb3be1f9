//! The limits: every bound the server keeps, fixed at start-up from the command line. The
//! preallocated structures are sized from these, and nothing grows past them.

use std::time::Duration;

/// Every bound, fixed at start-up (`--max-clients`, `--max-bindings`, ...).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Websocket clients at once; the hub's slab is this big.
    pub max_clients: usize,
    /// Bindings on one Blackhole socket.
    pub max_bindings: usize,
    /// Property filters on one iSymphony socket.
    pub max_filters: usize,
    /// Frames queued for one client.
    pub queue_depth: usize,
    /// Frames a client may miss in a row before it is closed as too slow.
    pub max_missed: u32,
    /// Live calls kept; past it the oldest is dropped.
    pub max_calls: usize,
    /// Recent events kept per live call.
    pub events_per_call: usize,
    /// Largest message from a client or from the broker, in bytes.
    pub max_message_size: usize,
    /// Silence before an idle socket is pinged, and again before it is closed.
    pub ping_interval: Duration,
}
