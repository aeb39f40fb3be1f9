//! callwire: an edge bridge from a PBX's broker to websocket clients.
//!
//! Data flows one way: a source (`source`) turns deliveries into events (`event`); the hub
//! (`hub`) matches each event against every client's interest and queues one shared frame per
//! client; each dialect (`dialect`) owns its wire format; `server` accepts connections and
//! routes them by path to HTTP (`http`) or a websocket (`ws`). See docs/ARCHITECTURE.md.
//!
//! The wire formats and rules the code follows are in docs/protocols/: a comment that cites
//! `blackhole.md`, `events.md`, `live-api.md`, ... means that folder's file.

#[macro_use]
pub mod logging;

pub mod app;
pub mod auth;
pub mod budget;
pub mod cli;
pub mod clock;
pub mod dialect;
pub mod dialect_label;
pub mod encoding;
pub mod event;
pub mod fds;
pub mod frame;
pub mod history;
pub mod http;
pub mod hub;
pub mod limits;
pub mod listing;
pub mod live;
pub mod matcher;
pub mod metrics;
pub mod notify;
pub mod origins;
pub mod percent;
pub mod rest;
pub mod rng;
pub mod seats;
pub mod server;
pub mod sim;
pub mod simulate;
pub mod source;
pub mod state;
pub mod status;
pub mod text_frames;
pub mod tls;
pub mod trim;
pub mod ws;
