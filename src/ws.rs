//! One websocket connection after its upgrade: reads requests into the dialect's session,
//! writes its replies and the frames the hub queued, and keeps idle sockets honest.
//!
//! One task per connection, one loop: it waits on whichever comes first (a message from the
//! client, queued frames, the hub asking for a close, the idle timer) and handles it. Writes
//! feed every ready frame to tungstenite and flush once, so a burst becomes one `write`.

use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use futures_lite::FutureExt;
use futures_util::{SinkExt, Stream};
use smol::Timer;
use smol::net::TcpStream;

use crate::dialect::Session;
use crate::hub::{Client, CloseReason, Frame, Hub, Outgoing};
use crate::limits::{Limits, TokenBucket};
use crate::metrics::{Limit, Metrics};

/// tungstenite's read buffer is allocated (and zero-filled) per connection and stays
/// resident; client messages are small, so a small one costs little and reads the same.
const READ_BUFFER: usize = 256;
/// Frames are gathered up to this size before a write; a flush writes whatever is there.
const WRITE_BUFFER: usize = 8 * 1024;

/// How long a goodbye may take before the connection is dropped anyway.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// The websocket settings every connection uses, from the limits.
pub fn config(limits: &Limits) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + 2 * limits.max_message_size)
        .max_message_size(Some(limits.max_message_size))
        .max_frame_size(Some(limits.max_message_size))
}

enum Wake {
    Message(Option<Result<Message, WsError>>),
    Outgoing(Outgoing),
    Tick,
}

/// Why a write did not complete.
enum WriteError {
    Socket,
    Closed(CloseReason),
}

/// Serves one upgraded connection until either side closes it, then leaves the hub.
pub async fn serve(
    stream: TcpStream,
    rest: Vec<u8>,
    client: Rc<Client>,
    mut session: impl Session,
    hub: &Hub,
) {
    let limits = hub.limits();
    let mut ws =
        WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(config(limits)))
            .await;
    let mut replies: Vec<Frame> = session.greeting().into_iter().collect();
    if !replies.is_empty() && write(&mut ws, &client, &mut replies).await.is_err() {
        hub.unregister(&client);
        return;
    }
    let mut idle = Timer::interval(limits.ping_interval);
    let mut bucket = TokenBucket::new(limits.request_rate, limits.request_burst);
    let metrics = hub.metrics();
    let mut heard_since_tick = false;
    let mut pinged = false;
    loop {
        let wake = poll_fn(|cx| {
            if let Poll::Ready(message) = Pin::new(&mut ws).poll_next(cx) {
                return Poll::Ready(Wake::Message(message));
            }
            if let Poll::Ready(outgoing) = client.poll_outgoing(cx) {
                return Poll::Ready(Wake::Outgoing(outgoing));
            }
            if Pin::new(&mut idle).poll_next(cx).is_ready() {
                return Poll::Ready(Wake::Tick);
            }
            Poll::Pending
        })
        .await;
        let result = match wake {
            Wake::Message(Some(Ok(Message::Close(_)))) => {
                // tungstenite has queued the answering close frame, and nothing may follow
                // it: writing a queued event now would fail and drop the connection unanswered.
                let _ = ws.flush().or(after(Duration::from_secs(1))).await;
                break;
            }
            Wake::Message(Some(Ok(message))) => {
                heard_since_tick = true;
                pinged = false;
                take_request(message, &mut session, &mut bucket, metrics, &mut replies);
                write(&mut ws, &client, &mut replies).await
            }
            Wake::Message(Some(Err(err))) => {
                // Say why before hanging up, as RFC 6455 asks (best effort, briefly).
                if matches!(err, WsError::Capacity(_)) {
                    metrics.limit_hits(Limit::MessageSize).inc();
                }
                if let Some(code) = close_code(&err) {
                    let frame = CloseFrame {
                        code,
                        reason: "".into(),
                    };
                    let _ = ws
                        .close(Some(frame))
                        .or(after(Duration::from_secs(1)))
                        .await;
                }
                break;
            }
            Wake::Message(None) => break,
            Wake::Outgoing(Outgoing::Frames) => write(&mut ws, &client, &mut replies).await,
            Wake::Outgoing(Outgoing::Close(reason)) => Err(WriteError::Closed(reason)),
            Wake::Tick => {
                if pinged {
                    // Silent for a whole interval after a ping: gone.
                    metrics.limit_hits(Limit::IdleTimeout).inc();
                    let frame = CloseFrame {
                        code: CloseCode::Away,
                        reason: "ping timeout".into(),
                    };
                    let _ = ws
                        .close(Some(frame))
                        .or(after(Duration::from_secs(1)))
                        .await;
                    break;
                }
                if !heard_since_tick {
                    pinged = true;
                    replies.clear();
                    let ping = ws.send(Message::Ping(Bytes::new()));
                    ping.await.map_err(|_| WriteError::Socket)
                } else {
                    heard_since_tick = false;
                    Ok(())
                }
            }
        };
        match result {
            Ok(()) => {}
            Err(WriteError::Socket) => break,
            // A client too slow to drain its queue is not waited on: drop the connection.
            Err(WriteError::Closed(CloseReason::TooSlow)) => break,
            Err(WriteError::Closed(reason)) => {
                say_goodbye(&mut ws, &client, &session, reason).await;
                break;
            }
        }
    }
    hub.unregister(&client);
}

/// Hands one client message to the session, unless it is over the request rate.
fn take_request(
    message: Message,
    session: &mut impl Session,
    bucket: &mut TokenBucket,
    metrics: &Metrics,
    replies: &mut Vec<Frame>,
) {
    // tungstenite answers pings and close frames itself; only requests reach the session.
    if !matches!(message, Message::Text(_) | Message::Binary(_)) {
        return;
    }
    if !bucket.take() {
        metrics.limit_hits(Limit::RequestRate).inc();
        let text = match &message {
            Message::Text(text) => Some(text.as_str()),
            _ => None,
        };
        session.on_rate_limited(text, replies);
        return;
    }
    match message {
        Message::Text(text) => session.on_text(&text, replies),
        Message::Binary(data) => session.on_binary(&data, replies),
        _ => {}
    }
}

/// Writes the session's replies, then every frame the hub queued, and flushes once. Gives up
/// at once if the hub asks for a close while the socket is not draining.
async fn write(
    ws: &mut WebSocketStream<TcpStream>,
    client: &Client,
    replies: &mut Vec<Frame>,
) -> Result<(), WriteError> {
    let writing = async {
        for reply in replies.drain(..) {
            ws.feed(Message::Text(reply)).await?;
        }
        while let Some(frame) = client.pop() {
            ws.feed(Message::Text(frame)).await?;
        }
        ws.flush().await
    };
    let closed = poll_fn(|cx| client.poll_close(cx).map(Err));
    async { writing.await.map_err(|_| WriteError::Socket) }
        .or(async { closed.await.map_err(WriteError::Closed) })
        .await
}

/// What is still queued, the dialect's goodbye, then a close frame (1001 going away on
/// shutdown, 1008 when the credential was revoked), all within a bounded time.
async fn say_goodbye(
    ws: &mut WebSocketStream<TcpStream>,
    client: &Client,
    session: &impl Session,
    reason: CloseReason,
) {
    let (code, why) = match reason {
        CloseReason::Revoked => (CloseCode::Policy, "credential revoked"),
        _ => (CloseCode::Away, "server shutting down"),
    };
    let goodbye = async {
        while let Some(frame) = client.pop() {
            ws.feed(Message::Text(frame)).await?;
        }
        if let Some(frame) = session.farewell(reason) {
            ws.feed(Message::Text(frame)).await?;
        }
        let close = CloseFrame {
            code,
            reason: why.into(),
        };
        ws.send(Message::Close(Some(close))).await
    };
    let _ = async { goodbye.await.map_err(|_| ()) }
        .or(after(GOODBYE_TIMEOUT))
        .await;
}

/// The close code that explains a read error to the client, if it can still be told.
fn close_code(err: &WsError) -> Option<CloseCode> {
    match err {
        WsError::Capacity(_) => Some(CloseCode::Size),
        WsError::Protocol(_) => Some(CloseCode::Protocol),
        WsError::Utf8(_) => Some(CloseCode::Invalid),
        _ => None,
    }
}

async fn after<T>(delay: Duration) -> Result<(), T> {
    Timer::after(delay).await;
    Ok(())
}
