//! Counters for `/metrics`: what came in, what went out, and what was dropped and why.
//!
//! Single-threaded, so plain `Cell`s: counting costs an add, never a lock or an atomic.

use std::cell::Cell;

use crate::dialect_label::Dialect;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(Cell<u64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.set(self.0.get() + n);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// Why something was dropped instead of delivered. Every drop is counted under one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A client's outbound queue was full; the frame was not queued for it.
    QueueFull,
    /// A frame for a client closed as too slow: queued when it was closed, or routed to it
    /// before its connection ended.
    SlowClient,
    /// A broker message was larger than `--max-message-size`.
    TooLarge,
    /// A routing key had more segments than can be matched.
    KeyTooDeep,
}

impl DropReason {
    pub const ALL: [DropReason; 4] = [
        DropReason::QueueFull,
        DropReason::SlowClient,
        DropReason::TooLarge,
        DropReason::KeyTooDeep,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::SlowClient => "slow_client",
            DropReason::TooLarge => "too_large",
            DropReason::KeyTooDeep => "key_too_deep",
        }
    }
}

/// A limit that can bite (issue: every limit has a clear answer and a count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `--max-clients`: the upgrade was answered 503.
    MaxClients,
    /// `--max-per-ip`: the connection was answered 429.
    PerIp,
    /// `--handshake-timeout`: the request head never arrived whole.
    HandshakeTimeout,
    /// `--max-message-size`: the socket was closed with 1009.
    MessageSize,
    /// `--request-rate`: a request was refused or dropped.
    RequestRate,
    /// `--max-bindings` (Blackhole bindings, ActionCable subscriptions).
    Bindings,
    /// `--max-filters` (iSymphony).
    Filters,
    /// `--ping-interval`: an idle socket stopped answering pings.
    IdleTimeout,
    /// `limits::MAX_PENDING` connections were being answered: accepting paused until one was
    /// done.
    Connections,
    /// No file descriptor was left for a new connection: it was answered 503 (`fds::Spare`).
    OpenFiles,
    /// `--auth-timeout`: a socket did not authenticate in time and was closed with 1008.
    AuthTimeout,
    /// `--max-unauthenticated`: the upgrade was answered 503.
    Unauthenticated,
    /// `--stall-timeout`: a socket was closed as too slow.
    StallTimeout,
    /// The replays waiting to be written had taken their part of the budget: a resume was
    /// answered as not recovered (`history::replay_bytes`).
    Replay,
}

impl Limit {
    pub const ALL: [Limit; 14] = [
        Limit::MaxClients,
        Limit::PerIp,
        Limit::HandshakeTimeout,
        Limit::MessageSize,
        Limit::RequestRate,
        Limit::Bindings,
        Limit::Filters,
        Limit::IdleTimeout,
        Limit::Connections,
        Limit::OpenFiles,
        Limit::AuthTimeout,
        Limit::Unauthenticated,
        Limit::StallTimeout,
        Limit::Replay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Limit::MaxClients => "max_clients",
            Limit::PerIp => "max_per_ip",
            Limit::HandshakeTimeout => "handshake_timeout",
            Limit::MessageSize => "max_message_size",
            Limit::RequestRate => "request_rate",
            Limit::Bindings => "max_bindings",
            Limit::Filters => "max_filters",
            Limit::IdleTimeout => "idle_timeout",
            Limit::Connections => "connections",
            Limit::OpenFiles => "open_files",
            Limit::AuthTimeout => "auth_timeout",
            Limit::Unauthenticated => "max_unauthenticated",
            Limit::StallTimeout => "stall_timeout",
            Limit::Replay => "replay",
        }
    }
}

/// Why a request was refused with 403 (contract: docs/protocols/README.md, "Browsers and other
/// origins").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forbidden {
    /// Without `--auth`, a `Host` that is neither loopback nor `--allowed-host` (DNS rebinding).
    Host,
    /// An `Origin` that is neither the gateway's own nor `--allowed-origin`.
    Origin,
    /// A hangup sent as a CORS simple request (a form or text body type).
    SimpleRequest,
}

impl Forbidden {
    pub const ALL: [Forbidden; 3] = [Forbidden::Host, Forbidden::Origin, Forbidden::SimpleRequest];

    pub fn as_str(self) -> &'static str {
        match self {
            Forbidden::Host => "host",
            Forbidden::Origin => "origin",
            Forbidden::SimpleRequest => "simple_request",
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Events taken from the source.
    pub events_in: Counter,
    /// Events whose payload was not JSON (still delivered, as a JSON string).
    pub events_not_json: Counter,
    /// Live calls dropped, oldest first, to make room past `--max-calls`.
    pub live_calls_evicted: Counter,
    /// TLS handshakes that failed (`--tls-cert`): a client that does not trust the
    /// certificate, a plain client on the TLS port, a scan.
    pub tls_handshake_failures: Counter,
    /// Frames queued to clients, one per client per event, by dialect.
    deliveries: [Counter; Dialect::ALL.len()],
    dropped: [Counter; DropReason::ALL.len()],
    limit_hits: [Counter; Limit::ALL.len()],
    forbidden: [Counter; Forbidden::ALL.len()],
}

impl Metrics {
    pub fn deliveries(&self, dialect: Dialect) -> &Counter {
        &self.deliveries[dialect as usize]
    }

    /// How often a limit bit.
    pub fn limit_hits(&self, limit: Limit) -> &Counter {
        &self.limit_hits[limit as usize]
    }

    pub fn dropped(&self, reason: DropReason) -> &Counter {
        &self.dropped[reason as usize]
    }

    /// Requests refused with 403, by reason.
    pub fn forbidden(&self, reason: Forbidden) -> &Counter {
        &self.forbidden[reason as usize]
    }
}
