//! The memory budget: from the limits, the most bytes each store may hold, and their total,
//! known before the first client connects. Logged at start-up as one line and shown in
//! `/metrics` (`callwire_memory_budget_bytes{part=...}`).
//!
//! Each part is the worst case of a store whose bound is enforced where the store lives (the
//! module named beside it); this module only adds them up. What is not here is the process's
//! fixed part: its code, its stacks and the allocator's own state, measured once at start-up
//! (`VmRSS`) and about the same with any limits. `/proc/<pid>/status`'s `VmHWM` stays within
//! the budget plus that fixed part.

use std::fmt::Write;

use crate::history;
use crate::http::MAX_HEAD;
use crate::limits::{INTEREST_PER_CLIENT, Limits, MAX_PENDING};
use crate::listing::PIECE_CAPACITY;
use crate::live::LiveState;
use crate::rest::Catalogue;
use crate::source::amqp::{ARCHIVE_PREFETCH, PREFETCH};
use crate::state;
use crate::tls;
use crate::ws::{CONTROL_BUFFER, READ_BUFFER};

/// What one connected client costs besides the bounds below, whatever it does: its task and
/// `ws::Connection`, the hub's `Client`, tungstenite's state, the reactor's registration and the
/// ping timer's entry (2.3 KiB measured for an idle subscribed socket, docs/ARCHITECTURE.md),
/// with room for the allocator's rounding.
pub const CLIENT_STATE: usize = 4 * 1024;

/// What one connection being answered (before an upgrade, or a plain HTTP request) costs
/// besides its buffers: its task, the timer, the reactor's registration.
const PENDING_STATE: usize = 2 * 1024;

/// The frame an event becomes may be this many times its payload: a payload that is not JSON
/// is sent as a JSON string, and a control byte is written as `\u00XX`.
pub const FRAME_EXPANSION: usize = 6;
/// What a frame adds around its payload: the dialect's envelope, routing key and names.
pub const FRAME_ENVELOPE: usize = 4 * 1024;

/// A JSON text parsed into a `serde_json::Value` may take this many bytes per byte of text:
/// `[0,0,...]` is a `Value` per two bytes, in a `Vec` that may have doubled. An event's payload
/// and a client's request are parsed once each, one at a time.
pub const PARSED_PER_BYTE: usize = std::mem::size_of::<serde_json::Value>();

/// One part of the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Per client, whatever it does (`hub`, `ws`).
    Clients,
    /// Every client's bindings, filters and subscriptions, and a Blackhole socket's name and
    /// metadata: a pool they share (`limits::BytePool`), charged by `dialect`.
    Bindings,
    /// Each client's incoming message, as tungstenite assembles it (`ws`).
    WsRead,
    /// Each client's control frames being written, in tungstenite's write buffer (`ws`).
    WsWrite,
    /// rustls's state and buffers of each connection, with `--tls-cert` (`tls`); none without.
    Tls,
    /// Frames queued to clients: `--queue-bytes-total` (`hub`).
    Queues,
    /// The live calls (`live`).
    LiveCalls,
    /// Recent events kept for clients that resume: `--history-bytes` and its slots (`history`).
    History,
    /// Frames replayed to clients that resumed, until written: twice `--history-bytes`
    /// (`history::replay_bytes`, charged by `dialect`).
    Replays,
    /// Connections being answered: request heads, REST answers (`server`, `http`, `listing`),
    /// and the one client request being parsed (`dialect`).
    Requests,
    /// Messages taken from the broker and not yet handed on (`source`).
    Broker,
    /// The routing-key families seen (`rest`).
    Catalogue,
    /// A save to `--state-dir`: the buffer it streams through and one payload in base64
    /// (`state`), counted whether or not `--state-dir` is given.
    State,
}

impl Part {
    pub const ALL: [Part; 13] = [
        Part::Clients,
        Part::Bindings,
        Part::WsRead,
        Part::WsWrite,
        Part::Tls,
        Part::Queues,
        Part::LiveCalls,
        Part::History,
        Part::Replays,
        Part::Requests,
        Part::Broker,
        Part::Catalogue,
        Part::State,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Part::Clients => "clients",
            Part::Bindings => "bindings",
            Part::WsRead => "ws_read",
            Part::WsWrite => "ws_write",
            Part::Tls => "tls",
            Part::Queues => "queues",
            Part::LiveCalls => "live_calls",
            Part::History => "history",
            Part::Replays => "replays",
            Part::Requests => "requests",
            Part::Broker => "broker",
            Part::Catalogue => "catalogue",
            Part::State => "state",
        }
    }
}

/// The most bytes each part may hold with a set of limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    parts: [usize; Part::ALL.len()],
}

impl Budget {
    pub fn new(limits: &Limits) -> Budget {
        let clients = limits.max_clients;
        let frame = max_frame(limits);
        let mut parts = [0; Part::ALL.len()];
        for part in Part::ALL {
            parts[part as usize] = match part {
                Part::Clients => clients * CLIENT_STATE,
                Part::Bindings => clients * INTEREST_PER_CLIENT,
                // A frame being read and a fragmented message being assembled, each up to the
                // limit, beside the read buffer.
                Part::WsRead => clients * (READ_BUFFER + 2 * limits.max_request_size),
                // Text frames are written from the queues' bytes (`text_frames`); tungstenite
                // holds only control frames, and refuses more than `CONTROL_BUFFER` of them.
                Part::WsWrite => clients * CONTROL_BUFFER,
                // Every client, and every connection in its handshake or being answered.
                Part::Tls if limits.tls => (clients + MAX_PENDING) * tls::PER_CONNECTION,
                Part::Tls => 0,
                // Distinct frames, however many queues share them (`hub::Charge`).
                Part::Queues => limits.queue_bytes_total,
                Part::LiveCalls => LiveState::bound(limits.max_calls, limits.events_per_call),
                Part::History => history::worst_case_bytes(limits),
                Part::Replays => history::replay_bytes(limits),
                Part::Requests => {
                    MAX_PENDING * pending_connection() + PARSED_PER_BYTE * limits.max_request_size
                }
                // The prefetch window (AMQP; MQTT reads one message at a time), a stream's
                // archive read's (`--amqp-stream`, one read at a time; what it returns is held
                // in the replay room), and the event being handed on, parsed, with a frame
                // being rendered.
                Part::Broker => {
                    let window = PREFETCH as usize + ARCHIVE_PREFETCH as usize;
                    (window + PARSED_PER_BYTE) * limits.max_message_size + frame
                }
                Part::Catalogue => Catalogue::bound(),
                Part::State => state::WRITE_BUFFER + limits.max_message_size.div_ceil(3) * 4,
            };
        }
        Budget { parts }
    }

    /// The most bytes one part may hold.
    pub fn part(&self, part: Part) -> usize {
        self.parts[part as usize]
    }

    /// The parts there are with these limits: all but `tls` without TLS, where it is nothing.
    pub fn parts(&self) -> impl Iterator<Item = Part> + '_ {
        Part::ALL
            .into_iter()
            .filter(|&part| part != Part::Tls || self.part(part) > 0)
    }

    /// The sum of the parts.
    pub fn total(&self) -> usize {
        self.parts.iter().sum()
    }

    /// The start-up log line: the total, then each part, in MiB.
    pub fn line(&self) -> String {
        let mut line = format!("memory budget {}:", mib(self.total()));
        for part in self.parts() {
            let _ = write!(line, " {} {}", part.as_str(), mib(self.part(part)));
        }
        line.push_str(" (plus the fixed part, measured idle)");
        line
    }
}

/// The largest frame an event may become.
pub fn max_frame(limits: &Limits) -> usize {
    FRAME_EXPANSION * limits.max_message_size + FRAME_ENVELOPE
}

/// One connection being answered: the head being read and the request parsed from it, then
/// the answer (a piece of a listing, or a whole body no larger than a piece).
fn pending_connection() -> usize {
    PENDING_STATE + 2 * MAX_HEAD + PIECE_CAPACITY
}

/// Bytes as MiB with one decimal.
fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::limits_from;

    #[test]
    fn the_line_names_every_part_and_the_parts_add_up() {
        let budget = Budget::new(&limits_from(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]));
        let line = budget.line();
        for part in Part::ALL {
            assert!(budget.part(part) > 0, "{part:?}");
            assert!(line.contains(&format!(" {} ", part.as_str())), "{line}");
        }
        let sum: usize = Part::ALL.iter().map(|&part| budget.part(part)).sum();
        assert_eq!(sum, budget.total());
    }

    #[test]
    fn per_client_parts_grow_with_max_clients_and_the_rest_does_not() {
        let one = Budget::new(&limits_from(&["--max-clients", "1000"]));
        let ten = Budget::new(&limits_from(&["--max-clients", "10000"]));
        for part in Part::ALL {
            let per_client = matches!(
                part,
                Part::Clients | Part::Bindings | Part::WsRead | Part::WsWrite
            );
            if part == Part::Tls {
                assert_eq!((one.part(part), ten.part(part)), (0, 0), "without TLS");
                continue;
            }
            match per_client {
                true => assert_eq!(ten.part(part), 10 * one.part(part), "{part:?}"),
                false => assert_eq!(ten.part(part), one.part(part), "{part:?}"),
            }
        }
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;
    use crate::cli::limits_from;

    #[test]
    fn tls_adds_rustls_per_connection_and_nothing_else() {
        let flags = ["--max-clients", "100"];
        let plain = Budget::new(&limits_from(&flags));
        let with_tls = [&flags[..], &["--tls-cert", "c.pem", "--tls-key", "k.pem"]].concat();
        let tls = Budget::new(&limits_from(&with_tls));
        assert_eq!(
            tls.part(Part::Tls),
            (100 + MAX_PENDING) * tls::PER_CONNECTION
        );
        assert_eq!(tls.total() - plain.total(), tls.part(Part::Tls));
        assert!(!plain.line().contains(" tls ") && tls.line().contains(" tls "));
    }
}
