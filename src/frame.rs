//! What the hub hands a connection: the shared text frame, and why the hub closes a socket.
//! A leaf: it imports nothing of the crate's, so the hub, the dialects and `ws` all use it
//! without importing each other.

use async_tungstenite::tungstenite::Utf8Bytes;

/// One serialised text frame, shared by every client it is queued to.
pub type Frame = Utf8Bytes;

/// Why the hub wants a client's connection closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// A frame waited for it longer than `--stall-timeout`.
    TooSlow,
    /// The server is shutting down: say the dialect's goodbye, then close (1001).
    Shutdown,
    /// The client's credential was removed from the credentials file (SIGHUP): say so, then
    /// close (1008).
    Revoked,
}
