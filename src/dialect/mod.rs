//! The websocket dialects: each owns its wire format, its requests and replies, and how it
//! renders an event. A dialect reads events from the hub; it never talks to a source.

pub mod blackhole;
pub mod cable;
pub mod isymphony;
pub mod kazoo_json;

use std::task::{Context, Poll};

use crate::frame::{CloseReason, Frame};

/// One websocket connection's request handling, in its dialect.
pub trait Session {
    /// Handles one text message; whatever must be said back goes into `replies`.
    fn on_text(&mut self, text: &str, replies: &mut Vec<Frame>);
    /// Handles one binary message.
    fn on_binary(&mut self, data: &[u8], replies: &mut Vec<Frame>);

    /// Ready once the last request has its replies in `replies`; pending while it waits for
    /// something outside the socket (a Blackhole resume reading the source's archive, which
    /// gives up on its own after `history::ARCHIVE_TIMEOUT`). The connection reads no other
    /// request meanwhile, so a socket waits for one thing at a time.
    fn poll_waiting(&mut self, _cx: &mut Context<'_>, _replies: &mut Vec<Frame>) -> Poll<()> {
        Poll::Ready(())
    }

    /// A request over `--request-rate`, not handled (`text` when it was a text message).
    /// Dialects that can say so reply; the others drop it silently (it is counted).
    fn on_rate_limited(&mut self, _text: Option<&str>, _replies: &mut Vec<Frame>) {}

    /// Whether the socket has proved a credential, or needs none.
    fn authenticated(&self) -> bool {
        true
    }

    /// The frame sent before the close (1008) when `--auth-timeout` passes before the socket
    /// authenticated.
    fn auth_refusal(&mut self) -> Option<Frame> {
        None
    }

    /// The replies handed out so far are written: what held room for them may let it go.
    fn replies_written(&mut self) {}

    /// The frame sent right after the upgrade, before any request is read.
    fn greeting(&self) -> Option<Frame> {
        None
    }

    /// The frame sent before the close frame when the hub closes the socket (shutdown, or a
    /// revoked credential).
    fn farewell(&self, _reason: CloseReason) -> Option<Frame> {
        None
    }
}

/// Appends `text` as a JSON string literal, quotes included.
pub fn push_json_str(out: &mut String, text: &str) {
    use std::fmt::Write;
    out.push('"');
    let bytes = text.as_bytes();
    let mut start = 0;
    // Runs that need no escape are copied whole: most text is such a run.
    while let Some(run) = bytes[start..]
        .iter()
        .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
    {
        let at = start + run;
        out.push_str(&text[start..at]);
        match bytes[at] {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            control => {
                let _ = write!(out, "\\u{control:04x}");
            }
        }
        start = at + 1;
    }
    out.push_str(&text[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_round_trip() {
        for text in ["plain", "quote \" back \\ slash", "ctl \u{1} \n \t é ☎", ""] {
            let mut out = String::new();
            push_json_str(&mut out, text);
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), text);
            assert_eq!(out, serde_json::to_string(text).unwrap());
        }
    }
}
