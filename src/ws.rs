//! One websocket connection after its upgrade: reads requests into the dialect's session,
//! writes its replies and the frames the hub queued, and keeps idle sockets honest.
//!
//! A `Connection` is its own task and its own future, written by hand: the task's allocation
//! is the connection's state and nothing more, which is what an idle socket costs (an `async
//! fn` would also carry every nested future's state and a second copy of its arguments). Each
//! poll handles whichever is ready (a message from the client, queued frames, the hub asking
//! for a close, the timer). Text frames (replies and what the hub queued) go out from their
//! shared bytes, a batch per vectored write (`text_frames`); tungstenite reads the client's
//! messages and writes only control frames, flushed before any text frame starts.

use std::future::Future;
use std::io::{self, IoSlice, Read};
use std::net::TcpStream;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use async_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};
use futures_lite::{AsyncRead, AsyncWrite};
use futures_util::{Sink, Stream as _};
use smol::{Async, Timer};

use crate::app::App;
use crate::dialect::Session;
use crate::frame::{CloseReason, Frame};
use crate::hub::{Client, Outgoing};
use crate::limits::{Limits, TokenBucket};
use crate::metrics::Limit;
use crate::seats::Seat;
use crate::text_frames::TextWriter;
use crate::tls::MaybeTls;

/// The upgraded socket as tungstenite drives it.
pub type Socket = WebSocketStream<Stream>;

/// A client's connection: plain TCP, or TLS over it (`--tls-cert`).
pub type Stream = MaybeTls<Tcp>;

impl Stream {
    /// Bounds the kernel's send buffer of the socket under it (see [`SEND_BUFFER`]).
    pub fn bound_send_buffer(&self) {
        match self {
            MaybeTls::Plain(tcp) => tcp.bound_send_buffer(),
            MaybeTls::Tls(tls) => tls.get_ref().0.bound_send_buffer(),
        }
    }

    /// Whether a read could find anything (see [`Tcp::may_read`]); under TLS, also while
    /// rustls holds decrypted bytes not yet read.
    fn may_read(&mut self, cx: &mut Context<'_>) -> bool {
        match self {
            MaybeTls::Plain(tcp) => tcp.may_read(cx),
            MaybeTls::Tls(tls) => {
                let (tcp, connection) = tls.get_mut();
                !connection.wants_read() || tcp.may_read(cx)
            }
        }
    }
}

/// A connection's TCP stream, read only once the reactor has seen it readable (under TLS,
/// rustls reads through it).
///
/// A connection's task wakes for every frame the hub queues, and tungstenite tries a read on
/// each wake; on a bare `Async<TcpStream>` that is a `recv` answered EAGAIN, one wasted
/// syscall per delivered event. Here a read that would block is not retried until the reactor
/// reports the socket readable again.
pub struct Tcp {
    io: Async<TcpStream>,
    /// The last read would have blocked.
    drained: bool,
}

impl Tcp {
    pub fn new(io: Async<TcpStream>) -> Tcp {
        Tcp { io, drained: false }
    }

    /// Bounds the kernel's send buffer to [`SEND_BUFFER`], once the socket is a websocket.
    fn bound_send_buffer(&self) {
        // Best effort: a socket that keeps the system's buffer only takes longer to stall.
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(self.io.get_ref(), SEND_BUFFER);
    }

    /// Whether a read could find anything: false only while the last read would have blocked
    /// and the reactor has seen nothing since (`cx` is woken when it does). tungstenite reads
    /// the socket only when its buffer holds no whole frame, so then there is nothing to parse
    /// either, and asking it costs more than the read it would attempt.
    fn may_read(&mut self, cx: &mut Context<'_>) -> bool {
        if self.drained && self.io.poll_readable(cx).is_pending() {
            return false;
        }
        self.drained = false;
        true
    }
}

impl AsyncRead for Tcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.drained {
                // Ready once an event arrived after the registration this call (or an earlier
                // one) made; no syscall either way.
                ready!(self.io.poll_readable(cx))?;
                self.drained = false;
            }
            match self.io.get_ref().read(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => self.drained = true,
                result => return Poll::Ready(result),
            }
        }
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_close(cx)
    }
}

/// tungstenite's read buffer is allocated (and zero-filled) per connection and stays
/// resident; client messages are small, so a small one costs little and reads the same.
pub const READ_BUFFER: usize = 256;
/// The most tungstenite may hold of control frames not yet written: a pong (at most 127
/// bytes, and one at a time) and a close frame. Text frames never pass through it.
pub const CONTROL_BUFFER: usize = 512;
/// The kernel's send buffer per client socket (Linux doubles it for its bookkeeping). Left
/// to itself it grows to `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default: memory per client
/// outside any budget of ours, and minutes of a slow client's backlog hidden from the stall
/// rule (a frame counts as waiting only while it is in the hub's queue). 64 KiB is ample for
/// call events on a LAN.
const SEND_BUFFER: usize = 64 * 1024;

/// How long the hub's goodbye (queued frames, farewell, close frame) may take.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a close of the connection's own (an error, a ping timeout, the client's close)
/// may take to reach the client.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Steps one poll may take before it yields, so that a client that keeps its socket full
/// cannot keep the other tasks waiting.
const STEPS_PER_POLL: usize = 32;

/// The websocket settings every connection uses, from the limits.
pub fn config(limits: &Limits) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Written at once: a control frame waits only while the socket is full.
        .write_buffer_size(0)
        .max_write_buffer_size(CONTROL_BUFFER)
        .max_message_size(Some(limits.max_request_size))
        .max_frame_size(Some(limits.max_request_size))
}

/// What the connection is doing.
enum Phase {
    /// Waiting for a message, queued frames, a close request or the ping timer.
    Idle,
    /// Waiting for the session to have the last request's replies (`Session::poll_waiting`);
    /// requests are not read, nor queued frames written, meanwhile.
    Waiting,
    /// Writing the replies and queued frames. Requests are not read meanwhile, so a client
    /// that does not read cannot make replies pile up.
    Writing,
    /// Ending: what `Closing` says must still go out, then a flush, until done or the timer
    /// (now a deadline) fires.
    Closing(Closing),
}

/// What goes out before the connection ends, in this order.
struct Closing {
    /// The frames the hub still has queued (its closes say goodbye after them; the
    /// connection's own closes do not wait for them).
    queued: bool,
    /// The dialect's farewell.
    farewell: Option<Frame>,
    /// The close frame (none when tungstenite has queued the answer to the client's own).
    close: Option<CloseFrame>,
}

/// One upgraded websocket connection, served until either side closes it; it leaves the hub
/// when dropped.
pub struct Connection<S> {
    ws: Socket,
    client: Rc<Client>,
    session: S,
    app: Rc<App>,
    /// The session's replies not yet written, the next one last.
    replies: Vec<Frame>,
    /// How far the socket has taken the text frame being written.
    writer: TextWriter,
    /// The ping interval while serving; the deadline once closing.
    timer: Timer,
    bucket: TokenBucket,
    phase: Phase,
    heard_since_tick: bool,
    pinged: bool,
    /// The client's place under `--max-clients` or, until it authenticates,
    /// `--max-unauthenticated`.
    seat: Seat,
    /// When an unauthenticated socket is closed (`--auth-timeout`); `None` once it has
    /// authenticated, or when it never had to. Boxed: most sockets never have one, and an
    /// unboxed `Timer` would cost every socket 56 bytes.
    auth_deadline: Option<Box<Timer>>,
}

impl<S: Session> Connection<S> {
    pub fn new(
        ws: Socket,
        client: Rc<Client>,
        session: S,
        app: Rc<App>,
        seat: Seat,
    ) -> Connection<S> {
        let limits = app.hub.limits();
        let auth_deadline = seat
            .is_unauthenticated()
            .then(|| Box::new(Timer::after(limits.auth_timeout)));
        let replies: Vec<Frame> = session.greeting().into_iter().collect();
        Connection {
            ws,
            client,
            timer: Timer::interval(limits.ping_interval),
            bucket: TokenBucket::new(limits.request_rate, limits.request_burst),
            phase: if replies.is_empty() {
                Phase::Idle
            } else {
                Phase::Writing
            },
            replies,
            writer: TextWriter::default(),
            session,
            app,
            heard_since_tick: false,
            pinged: false,
            seat,
            auth_deadline,
        }
    }

    /// Waits for something to do, and does it; `Ready(None)` ends the connection.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Option<Phase>> {
        if let Poll::Ready(closing) = self.poll_authentication(cx) {
            return Poll::Ready(Some(closing));
        }
        if self.ws.get_mut().may_read(cx) {
            if let Poll::Ready(message) = Pin::new(&mut self.ws).poll_next(cx) {
                return Poll::Ready(self.on_message(message));
            }
        }
        match self.client.poll_outgoing(cx) {
            Poll::Ready(Outgoing::Frames) => return Poll::Ready(Some(Phase::Writing)),
            Poll::Ready(Outgoing::Close(reason)) => return Poll::Ready(self.goodbye(reason)),
            Poll::Pending => {}
        }
        if Pin::new(&mut self.timer).poll_next(cx).is_ready() {
            return Poll::Ready(self.on_tick());
        }
        Poll::Pending
    }

    fn on_message(&mut self, message: Option<Result<Message, WsError>>) -> Option<Phase> {
        match message? {
            // tungstenite has queued the answering close frame, and nothing may follow it.
            Ok(Message::Close(_)) => Some(self.closing(None)),
            Ok(message) => {
                self.heard_since_tick = true;
                self.pinged = false;
                self.take_request(message);
                Some(Phase::Waiting)
            }
            Err(err) => {
                // Say why before hanging up, as RFC 6455 asks (best effort, briefly).
                if matches!(err, WsError::Capacity(_)) {
                    self.app.metrics.limit_hits(Limit::MessageSize).inc();
                }
                let code = close_code(&err)?;
                Some(self.closing(Some(CloseFrame {
                    code,
                    reason: Utf8Bytes::default(),
                })))
            }
        }
    }

    /// Hands one client message to the session, unless it is over the request rate.
    fn take_request(&mut self, message: Message) {
        // tungstenite answers pings and close frames itself; only requests reach the session.
        let (text, data) = match &message {
            Message::Text(text) => (Some(text.as_str()), None),
            Message::Binary(data) => (None, Some(&data[..])),
            _ => return,
        };
        if !self.bucket.take() {
            self.app.metrics.limit_hits(Limit::RequestRate).inc();
            self.session.on_rate_limited(text, &mut self.replies);
        } else if let Some(text) = text {
            self.session.on_text(text, &mut self.replies);
        } else if let Some(data) = data {
            self.session.on_binary(data, &mut self.replies);
        }
    }

    /// Until the session has the request's replies; then writes them. A close the hub asks
    /// for meanwhile is said at once.
    fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Poll<Option<Phase>> {
        if self
            .session
            .poll_waiting(cx, &mut self.replies)
            .is_pending()
        {
            return match self.client.poll_close(cx) {
                Poll::Ready(reason) => Poll::Ready(self.goodbye(reason)),
                Poll::Pending => Poll::Pending,
            };
        }
        // Written from the back (`pop`): one request's replies (a Blackhole replay among them)
        // may be thousands of frames, and taking each from the front would move all the rest.
        self.replies.reverse();
        Poll::Ready(Some(Phase::Writing))
    }

    /// Until the socket has authenticated: moves it to a client's seat once it has (closing it
    /// with 1013 when `--max-clients` are taken), or closes it at its deadline with the
    /// dialect's refusal and 1008.
    fn poll_authentication(&mut self, cx: &mut Context<'_>) -> Poll<Phase> {
        let Some(deadline) = &mut self.auth_deadline else {
            return Poll::Pending;
        };
        let (farewell, code, why) = if self.session.authenticated() {
            if self.seat.authenticate().is_ok() {
                self.auth_deadline = None;
                return Poll::Pending;
            }
            self.app.metrics.limit_hits(Limit::MaxClients).inc();
            (None, CloseCode::Again, "too many clients")
        } else if Pin::new(&mut **deadline).poll(cx).is_ready() {
            self.app.metrics.limit_hits(Limit::AuthTimeout).inc();
            let refusal = self.session.auth_refusal();
            (refusal, CloseCode::Policy, "authentication timeout")
        } else {
            return Poll::Pending;
        };
        self.auth_deadline = None;
        self.timer.set_after(CLOSE_TIMEOUT);
        Poll::Ready(Phase::Closing(Closing {
            queued: false,
            farewell,
            close: Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(why),
            }),
        }))
    }

    /// A ping interval has passed: ping a socket that said nothing in it, and close one that
    /// did not answer the last ping either.
    fn on_tick(&mut self) -> Option<Phase> {
        if self.pinged {
            self.app.metrics.limit_hits(Limit::IdleTimeout).inc();
            return Some(self.closing(Some(CloseFrame {
                code: CloseCode::Away,
                reason: Utf8Bytes::from_static("ping timeout"),
            })));
        }
        if self.heard_since_tick {
            self.heard_since_tick = false;
            return Some(Phase::Idle);
        }
        self.pinged = true;
        // tungstenite takes a frame even when its buffer is over the flush threshold (up to
        // the hard limit, far above one ping); the flush happens in `Writing`.
        match Pin::new(&mut self.ws).start_send(Message::Ping(Bytes::new())) {
            Ok(()) => Some(Phase::Writing),
            Err(_) => None,
        }
    }

    /// Writes the replies, then the frames the hub queued, a batch per step, until none is
    /// left. Gives up at once if the hub asks for a close while the socket is not draining.
    fn poll_writing(&mut self, cx: &mut Context<'_>) -> Poll<Option<Phase>> {
        if let Poll::Ready(reason) = self.client.poll_close(cx) {
            return Poll::Ready(self.goodbye(reason));
        }
        let pending = Pending {
            replies: &mut self.replies,
            queued: Some(&self.client),
            farewell: None,
        };
        match ready!(write_frames(&mut self.ws, &mut self.writer, cx, pending)) {
            Ok(true) => Poll::Ready(Some(Phase::Writing)),
            Ok(false) => {
                // Replies are rare; an idle socket should not keep room for them.
                self.replies = Vec::new();
                self.session.replies_written();
                Poll::Ready(Some(Phase::Idle))
            }
            Err(_) => Poll::Ready(None),
        }
    }

    /// The hub asked for a close: the dialect's goodbye, then a close frame (1008 for a client
    /// too slow or whose credential was revoked, 1001 going away on shutdown). The others get
    /// what is queued first; a client too slow has nothing queued any more (the hub released
    /// it), and its goodbye is best effort: it waits at most [`GOODBYE_TIMEOUT`] on a socket
    /// that may never drain.
    fn goodbye(&mut self, reason: CloseReason) -> Option<Phase> {
        // The frame the socket stopped in was the hub's, and a client too slow has lost its
        // queue: nothing valid can follow half a frame, so there is no goodbye to say.
        if reason == CloseReason::TooSlow && self.writer.in_frame() && self.replies.is_empty() {
            return None;
        }
        let (code, why) = match reason {
            CloseReason::TooSlow => (CloseCode::Policy, "too slow"),
            CloseReason::Revoked => (CloseCode::Policy, "credential revoked"),
            CloseReason::Shutdown => (CloseCode::Away, "server shutting down"),
        };
        self.timer.set_after(GOODBYE_TIMEOUT);
        Some(Phase::Closing(Closing {
            queued: true,
            farewell: self.session.farewell(reason),
            close: Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(why),
            }),
        }))
    }

    /// A close of the connection's own: the close frame, if one is still to be sent, briefly.
    fn closing(&mut self, close: Option<CloseFrame>) -> Phase {
        self.timer.set_after(CLOSE_TIMEOUT);
        Phase::Closing(Closing {
            queued: false,
            farewell: None,
            close,
        })
    }

    /// Sends what is left before the end; ends when it is out, on an error, or at the deadline.
    fn poll_closing(&mut self, cx: &mut Context<'_>) -> Poll<Option<Phase>> {
        if Pin::new(&mut self.timer).poll_next(cx).is_ready() {
            return Poll::Ready(None);
        }
        let Phase::Closing(closing) = &mut self.phase else {
            unreachable!("poll_closing outside Phase::Closing");
        };
        let pending = Pending {
            replies: &mut self.replies,
            queued: closing.queued.then_some(&*self.client),
            farewell: Some(&mut closing.farewell),
        };
        match ready!(write_frames(&mut self.ws, &mut self.writer, cx, pending)) {
            // More to write: still closing.
            Ok(true) => {
                return Poll::Ready(Some(std::mem::replace(&mut self.phase, Phase::Idle)));
            }
            Ok(false) => {}
            Err(_) => return Poll::Ready(None),
        }
        let mut ws = Pin::new(&mut self.ws);
        if let Some(close) = closing.close.take() {
            if ws.as_mut().start_send(Message::Close(Some(close))).is_err() {
                return Poll::Ready(None);
            }
        }
        ready!(ws.poll_flush(cx)).ok();
        Poll::Ready(None)
    }
}

impl<S: Session + Unpin> Future for Connection<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        for _ in 0..STEPS_PER_POLL {
            let step = match this.phase {
                Phase::Idle => this.poll_idle(cx),
                Phase::Waiting => this.poll_waiting(cx),
                Phase::Writing => this.poll_writing(cx),
                Phase::Closing(_) => this.poll_closing(cx),
            };
            match ready!(step) {
                Some(phase) => this.phase = phase,
                None => return Poll::Ready(()),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S> Drop for Connection<S> {
    fn drop(&mut self) {
        self.app.hub.unregister(&self.client);
    }
}

/// The text frames a connection has to write, in the order they go out.
struct Pending<'a> {
    /// The session's replies, the next one last.
    replies: &'a mut Vec<Frame>,
    /// The client whose queued frames follow, if they are to be written.
    queued: Option<&'a Client>,
    /// The dialect's farewell, last.
    farewell: Option<&'a mut Option<Frame>>,
}

/// Writes one batch of `pending` and takes what went out off it, after whatever tungstenite
/// still holds (its frames are whole, and ours must not start inside one). Returns whether
/// frames are left.
fn write_frames(
    ws: &mut Socket,
    writer: &mut TextWriter,
    cx: &mut Context<'_>,
    pending: Pending<'_>,
) -> Poll<Result<bool, WsError>> {
    if !writer.in_frame() {
        ready!(Pin::new(&mut *ws).poll_flush(cx))?;
    }
    let Pending {
        replies,
        queued,
        mut farewell,
    } = pending;
    let socket = ws.get_mut();
    let written = {
        let last = farewell.as_deref().and_then(Option::as_ref);
        let replies = &replies[..];
        match queued {
            Some(client) => {
                client.with_queued(|frames| write_batch(socket, writer, cx, replies, frames, last))
            }
            None => write_batch(socket, writer, cx, replies, &mut std::iter::empty(), last),
        }
    };
    let mut written = ready!(written)?;
    if written == 0 {
        return Poll::Ready(Ok(false));
    }
    while written > 0 {
        written -= 1;
        if replies.pop().is_none() && queued.and_then(Client::pop).is_none() {
            farewell.as_deref_mut().and_then(Option::take);
        }
    }
    Poll::Ready(Ok(true))
}

/// One vectored write of the frames in the order they go out: replies (the next one last in
/// `replies`), queued frames, the farewell.
fn write_batch(
    socket: &mut Stream,
    writer: &mut TextWriter,
    cx: &mut Context<'_>,
    replies: &[Frame],
    queued: &mut dyn Iterator<Item = &Frame>,
    farewell: Option<&Frame>,
) -> Poll<io::Result<usize>> {
    let replies = replies.iter().rev().map(|frame| frame.as_bytes());
    let queued = queued.map(|frame| frame.as_bytes());
    let farewell = farewell.map(|frame| frame.as_bytes());
    let mut frames = replies.chain(queued).chain(farewell);
    writer.poll_write(socket, cx, &mut frames)
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
