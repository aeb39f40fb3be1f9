//! The read side of the AMQP socket: a message body announced larger than
//! `--max-message-size` is skipped as it arrives, so lapin never collects it.
//!
//! lapin hands a delivery out only once its body is whole, and keeps no limit of its own, so a
//! 100 MB message would be read into memory before the driver could see its size. lapin reads
//! every byte through the stream our runtime gives it ([`Filtered`], from `kit`), and
//! [`Filter`] follows the frames there (AMQP 0-9-1, 2.3.5 and 4.2.3: type, channel, size,
//! payload, end octet `0xCE`). It notes each channel's last `basic.deliver` delivery tag; a
//! content header that announces a body over the limit is passed on with body size 0 (lapin
//! completes that delivery, empty, at once), the delivery is recorded in [`Skipped`] for the
//! driver to count and ack, and that channel's body frames are dropped as they stream by until
//! the announced size has gone. Every other byte passes unchanged.
//!
//! Memory: one frame's head at a time (the 7-byte frame header and at most the first 268
//! payload bytes of a method or content header), a read buffer of [`READ_BUF`] bytes, and at
//! most [`SKIPPED`] recorded deliveries.
//!
//! A stream it does not understand (an unknown frame type, a bad end octet, a frame too short
//! for its fields, a content frame out of place) turns the filter transparent for the rest of
//! the connection, so lapin reads those bytes unchanged and reports the error itself. The one
//! error of its own: a body frame being dropped whose end octet is wrong, since the bytes it
//! would take to show lapin the fault are gone.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use futures_lite::{AsyncRead, AsyncWrite};

use super::PREFETCH;

/// How many skipped deliveries can wait for the driver: the broker sends no more unacked
/// deliveries than the prefetch window. Past it (a broker that ignores the window) a large
/// body is passed on whole and dropped by its length once collected, as lapin alone would.
pub const SKIPPED: usize = PREFETCH as usize;
/// Channels followed at once: callwire consumes on one.
const CHANNELS: usize = 4;
/// Bytes read from the socket at a time.
pub const READ_BUF: usize = 32 * 1024;
/// Reads of dropped bytes in one `poll_read` before lapin's I/O loop gets a turn (heartbeats,
/// writes) again.
const READS_PER_POLL: usize = 32;

const FRAME_HEADER: usize = 7;
const FRAME_END: u8 = 0xCE;
const FRAME_METHOD: u8 = 1;
const FRAME_CONTENT_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
/// `basic.deliver`: class 60, method 60.
const BASIC_DELIVER: [u8; 4] = [0, 60, 0, 60];
/// Class and method ids, and a short string's length octet.
const METHOD_IDS: usize = 4;
/// Class id, weight, body size.
const CONTENT_HEADER_FIELDS: usize = 12;
/// The most of a payload ever held: `basic.deliver`'s ids, consumer tag and delivery tag.
const FIELDS_MAX: usize = METHOD_IDS + 1 + 255 + 8;

/// A delivery whose body was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Skip {
    pub channel: u16,
    pub delivery_tag: u64,
    /// The size the content header announced.
    pub body_size: u64,
}

/// The deliveries of one connection whose bodies were skipped: recorded by the filter (on
/// lapin's I/O thread) before lapin sees their content header, taken by the driver as it takes
/// each delivery.
#[derive(Clone, Debug, Default)]
pub struct Skipped(Arc<Mutex<heapless::Vec<Skip, SKIPPED>>>);

impl Skipped {
    fn lock(&self) -> std::sync::MutexGuard<'_, heapless::Vec<Skip, SKIPPED>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a skip; false when [`SKIPPED`] are already waiting.
    fn record(&self, skip: Skip) -> bool {
        self.lock().push(skip).is_ok()
    }

    /// Forgets every skip: delivery tags start again with each connection.
    fn clear(&self) {
        self.lock().clear();
    }

    /// The announced size of this delivery's skipped body, if it was skipped.
    pub fn take(&self, channel: u16, delivery_tag: u64) -> Option<u64> {
        let mut skips = self.lock();
        let at = skips
            .iter()
            .position(|s| s.channel == channel && s.delivery_tag == delivery_tag)?;
        Some(skips.swap_remove(at).body_size)
    }

    /// The skips waiting for the driver, oldest first but for ones taken out of order (for
    /// checks: the fuzz target's).
    pub fn skips(&self) -> Vec<Skip> {
        self.lock().to_vec()
    }

    /// How many skips wait for the driver.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the filter knows of one channel.
#[derive(Clone, Copy, Debug)]
struct ChannelState {
    id: u16,
    /// The tag of the `basic.deliver` whose content header comes next.
    delivery: Option<u64>,
    /// Body bytes still to drop.
    skipping: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Taking the 7-byte frame header into `head`.
    Header,
    /// Taking the payload's first `want` bytes into `head`.
    Fields { want: usize },
    /// The rest of the frame (payload, then end octet) passes.
    Pass { left: u64 },
    /// The rest of a skipped body frame is dropped.
    Drop { left: u64 },
    /// Lost the thread of the frames: every byte passes from here on.
    Transparent,
    /// A dropped body frame had no end octet.
    Broken,
}

/// The frame follower: bytes in, the same bytes out but for skipped bodies. Sans I/O, so that
/// the unit tests and the fuzz target drive it exactly as [`Filtered`] does.
#[derive(Debug)]
pub struct Filter {
    max_body: u64,
    skipped: Skipped,
    channels: heapless::Vec<ChannelState, CHANNELS>,
    state: State,
    /// The frame's head: its header, then the payload fields read so far.
    head: [u8; FRAME_HEADER + FIELDS_MAX],
    held: usize,
    /// Set once the head is decided: `head[written..held]` is still to be written out.
    releasing: bool,
    written: usize,
}

/// The error of [`Filter::filter`].
pub const BROKEN: &str =
    "the broker sent a body frame without its end octet while an oversized message was skipped";

impl Filter {
    /// A filter for a new connection: bodies over `max_body` are skipped and recorded in
    /// `skipped`, which is emptied now.
    pub fn new(max_body: u64, skipped: Skipped) -> Filter {
        skipped.clear();
        Filter {
            max_body,
            skipped,
            channels: heapless::Vec::new(),
            state: State::Header,
            head: [0; FRAME_HEADER + FIELDS_MAX],
            held: 0,
            releasing: false,
            written: 0,
        }
    }

    /// Filters `input` into `output` until one runs out; returns the bytes taken and the
    /// bytes written. `Err(BROKEN)` only once everything before the fault has been returned.
    pub fn filter(
        &mut self,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<(usize, usize), &'static str> {
        let (mut taken, mut given) = (0, 0);
        loop {
            if self.releasing {
                let n = (self.held - self.written).min(output.len() - given);
                output[given..given + n]
                    .copy_from_slice(&self.head[self.written..self.written + n]);
                given += n;
                self.written += n;
                if self.written < self.held {
                    break;
                }
                (self.releasing, self.held, self.written) = (false, 0, 0);
            }
            let rest = &input[taken..];
            match self.state {
                State::Broken => {
                    if taken == 0 && given == 0 {
                        return Err(BROKEN);
                    }
                    break;
                }
                State::Pass { .. } | State::Transparent => {
                    let mut n = rest.len().min(output.len() - given);
                    if let State::Pass { left } = self.state {
                        n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
                    }
                    if n == 0 {
                        break;
                    }
                    output[given..given + n].copy_from_slice(&rest[..n]);
                    taken += n;
                    given += n;
                    if let State::Pass { left } = self.state {
                        self.state = match left - n as u64 {
                            0 if rest[n - 1] == FRAME_END => State::Header,
                            0 => State::Transparent,
                            left => State::Pass { left },
                        };
                    }
                }
                State::Drop { left } => {
                    let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    if n == 0 {
                        break;
                    }
                    taken += n;
                    self.state = match left - n as u64 {
                        0 if rest[n - 1] == FRAME_END => State::Header,
                        0 => State::Broken,
                        left => State::Drop { left },
                    };
                }
                State::Header | State::Fields { .. } => {
                    let want = match self.state {
                        State::Fields { want } => FRAME_HEADER + want,
                        _ => FRAME_HEADER,
                    };
                    let n = (want - self.held).min(rest.len());
                    if n == 0 {
                        break;
                    }
                    self.head[self.held..self.held + n].copy_from_slice(&rest[..n]);
                    self.held += n;
                    taken += n;
                    if self.held == want {
                        self.decide();
                    }
                }
            }
        }
        Ok((taken, given))
    }

    /// The stream ended: what is held is written out as it is.
    pub fn end(&mut self) {
        if matches!(self.state, State::Header | State::Fields { .. }) {
            self.releasing = true;
            self.state = State::Transparent;
        }
    }

    /// The head holds as much as was wanted: what happens to this frame.
    fn decide(&mut self) {
        let head = &self.head;
        let kind = head[0];
        let channel = u16::from_be_bytes([head[1], head[2]]);
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]);
        // Read only where the state says the head holds them.
        let deliver = head[FRAME_HEADER..FRAME_HEADER + METHOD_IDS] == BASIC_DELIVER;
        let mut last_8 = [0; 8];
        let at = self.held.saturating_sub(8);
        last_8.copy_from_slice(&head[at..at + 8]);
        let last_8 = u64::from_be_bytes(last_8);
        let consumer_tag = usize::from(head[FRAME_HEADER + METHOD_IDS]);
        let skipping = self.channel(channel).is_some_and(|c| c.skipping > 0);
        match (self.state, kind) {
            (State::Header, FRAME_BODY) if skipping => {
                let Some(c) = self
                    .channel(channel)
                    .filter(|c| u64::from(size) <= c.skipping)
                else {
                    // More body than the header announced: lapin says so.
                    return self.lose_track();
                };
                c.skipping -= u64::from(size);
                self.held = 0;
                self.state = State::Drop {
                    left: u64::from(size) + 1,
                };
            }
            // Content interrupted on the channel whose body is being dropped.
            (_, FRAME_METHOD | FRAME_CONTENT_HEADER) if skipping => self.lose_track(),
            (State::Header, FRAME_BODY | FRAME_HEARTBEAT) => self.pass(size),
            (State::Header, FRAME_METHOD) => self.want(size, METHOD_IDS),
            (State::Header, FRAME_CONTENT_HEADER) => self.want(size, CONTENT_HEADER_FIELDS),
            (State::Fields { .. }, FRAME_METHOD) if !deliver => {
                if let Some(c) = self.channel(channel) {
                    c.delivery = None;
                }
                self.pass(size);
            }
            (State::Fields { want }, FRAME_METHOD) if want == METHOD_IDS => {
                self.want(size, METHOD_IDS + 1);
            }
            (State::Fields { want }, FRAME_METHOD) if want == METHOD_IDS + 1 => {
                self.want(size, METHOD_IDS + 1 + consumer_tag + 8);
            }
            (State::Fields { .. }, FRAME_METHOD) => {
                self.delivered(channel, last_8);
                self.pass(size);
            }
            (State::Fields { .. }, FRAME_CONTENT_HEADER) => {
                // Class id, weight, then the body size: the head's last 8 bytes.
                let body_size = last_8;
                let (max_body, skipped) = (self.max_body, self.skipped.clone());
                if let Some(c) = self.channel(channel)
                    && let Some(delivery_tag) = c.delivery.take()
                    && body_size > max_body
                    && skipped.record(Skip {
                        channel,
                        delivery_tag,
                        body_size,
                    })
                {
                    c.skipping = body_size;
                    self.head[FRAME_HEADER + 4..FRAME_HEADER + 12].fill(0);
                }
                self.pass(size);
            }
            _ => self.lose_track(),
        }
    }

    /// Takes `fields` bytes of the payload before deciding, if the frame has them.
    fn want(&mut self, size: u32, fields: usize) {
        if u64::from(size) < fields as u64 {
            self.lose_track();
        } else {
            self.state = State::Fields { want: fields };
        }
    }

    /// Writes the head out, then the rest of the frame.
    fn pass(&mut self, size: u32) {
        let payload_held = (self.held - FRAME_HEADER) as u64;
        self.releasing = true;
        self.state = State::Pass {
            left: u64::from(size) - payload_held + 1,
        };
    }

    /// Writes the head out, then everything after it, unchanged.
    fn lose_track(&mut self) {
        self.releasing = true;
        self.state = State::Transparent;
    }

    fn channel(&mut self, id: u16) -> Option<&mut ChannelState> {
        self.channels.iter_mut().find(|c| c.id == id)
    }

    /// A `basic.deliver` on `channel`: its content header comes next.
    fn delivered(&mut self, channel: u16, tag: u64) {
        if let Some(c) = self.channel(channel) {
            c.delivery = Some(tag);
            return;
        }
        let fresh = ChannelState {
            id: channel,
            delivery: Some(tag),
            skipping: 0,
        };
        if self.channels.push(fresh).is_err() {
            // Every slot followed: take one that waits for nothing. With none free the
            // delivery is passed on whole, as lapin alone would.
            if let Some(idle) = self
                .channels
                .iter_mut()
                .find(|c| c.delivery.is_none() && c.skipping == 0)
            {
                *idle = fresh;
            }
        }
    }
}

/// The socket lapin reads and writes, with [`Filter`] on its read side.
#[derive(Debug)]
pub struct Filtered<S> {
    socket: S,
    filter: Filter,
    read: Box<[u8]>,
    start: usize,
    end: usize,
    ended: bool,
}

impl<S> Filtered<S> {
    pub fn new(socket: S, filter: Filter) -> Filtered<S> {
        Filtered {
            socket,
            filter,
            read: vec![0; READ_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            ended: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.socket
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Filtered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut reads = 0;
        loop {
            let (taken, given) = this
                .filter
                .filter(&this.read[this.start..this.end], buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            this.start += taken;
            if given > 0 {
                return Poll::Ready(Ok(given));
            }
            if this.start < this.end {
                continue;
            }
            if this.ended {
                return Poll::Ready(Ok(0));
            }
            if reads == READS_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = ready!(Pin::new(&mut this.socket).poll_read(cx, &mut this.read))?;
            reads += 1;
            (this.start, this.end) = (0, n);
            if n == 0 {
                this.ended = true;
                this.filter.end();
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Filtered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend(channel.to_be_bytes());
        out.extend(u32::try_from(payload.len()).unwrap().to_be_bytes());
        out.extend(payload);
        out.push(FRAME_END);
        out
    }

    fn short(out: &mut Vec<u8>, text: &str) {
        out.push(u8::try_from(text.len()).unwrap());
        out.extend(text.as_bytes());
    }

    fn deliver(channel: u16, consumer_tag: &str, delivery_tag: u64) -> Vec<u8> {
        let mut payload = BASIC_DELIVER.to_vec();
        short(&mut payload, consumer_tag);
        payload.extend(delivery_tag.to_be_bytes());
        payload.push(0);
        short(&mut payload, "callwire");
        short(&mut payload, "call.created.abc");
        frame(FRAME_METHOD, channel, &payload)
    }

    fn header(channel: u16, body_size: u64) -> Vec<u8> {
        let mut payload = vec![0, 60, 0, 0];
        payload.extend(body_size.to_be_bytes());
        // content-type present: "application/json"
        payload.extend([0x80, 0]);
        short(&mut payload, "application/json");
        frame(FRAME_CONTENT_HEADER, channel, &payload)
    }

    fn body(channel: u16, size: usize) -> Vec<u8> {
        let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        frame(FRAME_BODY, channel, &bytes)
    }

    /// A message of `size` bytes in bodies of at most `frame` bytes.
    fn message(channel: u16, tag: u64, size: usize, frame: usize) -> Vec<u8> {
        let mut out = deliver(channel, "amq.ctag-x", tag);
        out.extend(header(channel, size as u64));
        let mut left = size;
        while left > 0 {
            let n = left.min(frame);
            out.extend(body(channel, n));
            left -= n;
        }
        out
    }

    fn heartbeat() -> Vec<u8> {
        frame(FRAME_HEARTBEAT, 0, &[])
    }

    /// What comes out of `stream` fed in pieces of `step` bytes into outputs of `out` bytes;
    /// the error, if any; and what was recorded.
    fn run(
        max: u64,
        stream: &[u8],
        step: usize,
        out: usize,
    ) -> (Vec<u8>, Option<&'static str>, Skipped) {
        let skipped = Skipped::default();
        let mut filter = Filter::new(max, skipped.clone());
        let mut got = Vec::new();
        let mut buf = vec![0; out];
        let mut drain = |filter: &mut Filter, mut piece: &[u8], got: &mut Vec<u8>| loop {
            match filter.filter(piece, &mut buf) {
                Ok((0, 0)) => return None,
                Ok((taken, given)) => {
                    piece = &piece[taken..];
                    got.extend(&buf[..given]);
                }
                Err(e) => return Some(e),
            }
        };
        for piece in stream.chunks(step) {
            if let Some(e) = drain(&mut filter, piece, &mut got) {
                return (got, Some(e), skipped);
            }
        }
        filter.end();
        let error = drain(&mut filter, &[], &mut got);
        (got, error, skipped)
    }

    #[test]
    fn a_message_within_the_limit_passes_unchanged() {
        let mut stream = message(1, 1, 100, 40);
        stream.extend(heartbeat());
        stream.extend(message(1, 2, 0, 40));
        let (out, error, skipped) = run(100, &stream, stream.len(), 4096);
        assert_eq!((out, error), (stream, None));
        assert!(skipped.is_empty());
    }

    #[test]
    fn an_oversized_body_becomes_an_empty_one_and_is_recorded() {
        let mut stream = message(1, 7, 1000, 300);
        stream.extend(heartbeat());
        stream.extend(message(1, 8, 10, 300));
        let (out, error, skipped) = run(100, &stream, stream.len(), 4096);

        let mut expected = deliver(1, "amq.ctag-x", 7);
        expected.extend(header(1, 0));
        expected.extend(heartbeat());
        expected.extend(message(1, 8, 10, 300));
        assert_eq!((out, error), (expected, None));
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped.take(1, 8), None);
        assert_eq!(skipped.take(1, 7), Some(1000));
        assert!(skipped.is_empty());
    }

    #[test]
    fn bodies_on_other_channels_and_heartbeats_between_skipped_frames_pass() {
        // Channel 2's content and a heartbeat come between channel 1's body frames.
        let mut stream = deliver(1, "a", 5);
        stream.extend(header(1, 600));
        stream.extend(body(1, 300));
        stream.extend(heartbeat());
        stream.extend(message(2, 5, 50, 20));
        stream.extend(body(1, 300));
        stream.extend(message(1, 6, 3, 20));
        let (out, error, skipped) = run(100, &stream, stream.len(), 4096);

        let mut expected = deliver(1, "a", 5);
        expected.extend(header(1, 0));
        expected.extend(heartbeat());
        expected.extend(message(2, 5, 50, 20));
        expected.extend(message(1, 6, 3, 20));
        assert_eq!((out, error), (expected, None));
        assert_eq!(skipped.take(1, 5), Some(600));
        assert!(skipped.is_empty());
    }

    /// A stream with every kind of frame, passed and skipped.
    fn mixed_stream() -> Vec<u8> {
        let mut stream = frame(FRAME_METHOD, 0, &[0, 10, 0, 10, 0, 9, 1, 2, 3]);
        stream.extend(message(1, 1, 20, 7));
        stream.extend(heartbeat());
        stream.extend(message(1, 2, 500, 70));
        stream.extend(deliver(1, &"t".repeat(255), u64::MAX));
        stream.extend(header(1, 101));
        stream.extend(body(1, 0));
        stream.extend(body(1, 101));
        stream.extend(message(1, 3, 100, 33));
        stream.extend(frame(
            FRAME_METHOD,
            1,
            &[0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 3, 0],
        ));
        stream
    }

    #[test]
    fn the_output_does_not_depend_on_how_the_stream_is_cut() {
        let stream = mixed_stream();
        let whole = run(100, &stream, stream.len(), 1 << 16);
        assert_eq!(whole.1, None);
        assert_eq!(whole.2.len(), 2);
        assert!(whole.0.len() < stream.len() - 600);
        for step in 1..=stream.len() {
            for out in [1, 2, 7, 19, 64, 4096] {
                let cut = run(100, &stream, step, out);
                assert_eq!(
                    (&cut.0, cut.1),
                    (&whole.0, whole.1),
                    "step {step}, out {out}"
                );
                assert_eq!(cut.2.take(1, 2), Some(500));
                assert_eq!(cut.2.take(1, u64::MAX), Some(101));
            }
        }
        // Two pieces, cut at every byte.
        for at in 0..stream.len() {
            let skipped = Skipped::default();
            let mut filter = Filter::new(100, skipped.clone());
            let mut out = vec![0; 1 << 16];
            let (taken, mut given) = filter.filter(&stream[..at], &mut out).unwrap();
            assert_eq!(taken, at);
            let (taken, more) = filter.filter(&stream[at..], &mut out[given..]).unwrap();
            assert_eq!(taken, stream.len() - at);
            given += more;
            assert_eq!(&out[..given], &whole.0[..], "cut at {at}");
        }
    }

    #[test]
    fn what_it_does_not_understand_passes_unchanged() {
        let mut bad_end = message(1, 1, 10, 10);
        let last = bad_end.len() - 1;
        bad_end[last] = 0;
        let mut bad_end_then_big = bad_end.clone();
        bad_end_then_big.extend(message(1, 2, 1000, 100));
        let mut huge = vec![FRAME_BODY, 0, 1, 0xff, 0xff, 0xff, 0xff];
        huge.extend([1; 100]);
        let mut header_too_short = deliver(1, "a", 1);
        header_too_short.extend(frame(FRAME_CONTENT_HEADER, 1, &[0, 60, 0, 0, 0, 0, 0]));
        header_too_short.extend(body(1, 1000));
        let mut deliver_too_short = frame(FRAME_METHOD, 1, &[0, 60, 0, 60, 9, b'a']);
        deliver_too_short.extend(message(1, 2, 1000, 100));
        let mut unknown_kind = frame(4, 1, &[1, 2, 3]);
        unknown_kind.extend(message(1, 2, 1000, 100));
        let mut method_amid_skip = deliver(1, "a", 1);
        method_amid_skip.extend(header(1, 1000));
        method_amid_skip.extend(body(1, 100));
        method_amid_skip.extend(message(1, 2, 1000, 100));
        let mut body_past_announced = deliver(1, "a", 1);
        body_past_announced.extend(header(1, 150));
        body_past_announced.extend(body(1, 100));
        body_past_announced.extend(body(1, 100));
        body_past_announced.extend(message(1, 2, 1000, 100));
        for (what, stream) in [
            ("a bad end octet", &bad_end_then_big),
            ("a huge frame", &huge),
            ("AMQP's protocol header", &b"AMQP\x00\x00\x09\x01".to_vec()),
            ("a content header too short", &header_too_short),
            ("a deliver too short", &deliver_too_short),
            ("an unknown frame type", &unknown_kind),
        ] {
            for step in [1, 5, stream.len()] {
                let (out, error, skipped) = run(100, stream, step, 4096);
                assert_eq!((&out, error), (stream, None), "{what}");
                assert!(skipped.is_empty(), "{what}");
            }
        }

        // Out of place while a body is dropped: from the fault on, every byte passes.
        let mut skipping = deliver(1, "a", 1);
        skipping.extend(header(1, 0));
        let mut after_method = skipping.clone();
        after_method.extend(message(1, 2, 1000, 100));
        let mut after_body = skipping;
        after_body.extend(body(1, 100));
        after_body.extend(message(1, 2, 1000, 100));
        for (what, stream, expected, size) in [
            (
                "a method amid a skipped body",
                &method_amid_skip,
                after_method,
                1000,
            ),
            (
                "more body than announced",
                &body_past_announced,
                after_body,
                150,
            ),
        ] {
            for step in [1, 5, stream.len()] {
                let (out, error, skipped) = run(100, stream, step, 4096);
                assert_eq!((&out, error), (&expected, None), "{what}");
                assert_eq!(skipped.take(1, 1), Some(size), "{what}");
                assert!(skipped.is_empty(), "{what}");
            }
        }
    }

    #[test]
    fn a_dropped_body_frame_without_its_end_octet_is_an_error_after_what_came_before() {
        let mut stream = message(1, 1, 10, 10);
        stream.extend(deliver(1, "a", 2));
        stream.extend(header(1, 1000));
        let before = stream.clone();
        let mut bad = body(1, 100);
        let last = bad.len() - 1;
        bad[last] = 0;
        stream.extend(bad);
        stream.extend(message(1, 3, 10, 10));
        for step in [1, 3, stream.len()] {
            let (out, error, _) = run(100, &stream, step, 4096);
            let mut expected = before.clone();
            let at = expected.len() - header(1, 0).len();
            expected.truncate(at);
            expected.extend(header(1, 0));
            assert_eq!((out, error), (expected, Some(BROKEN)), "step {step}");
        }
    }

    #[test]
    fn past_the_prefetch_window_an_oversized_body_passes_whole() {
        let mut stream = Vec::new();
        for tag in 1..=SKIPPED as u64 + 2 {
            stream.extend(message(1, tag, 200, 100));
        }
        let (out, error, skipped) = run(100, &stream, stream.len(), 1 << 16);
        assert_eq!(error, None);
        assert_eq!(skipped.len(), SKIPPED);
        let tail = [
            message(1, SKIPPED as u64 + 1, 200, 100),
            message(1, SKIPPED as u64 + 2, 200, 100),
        ]
        .concat();
        assert!(out.ends_with(&tail));
        assert_eq!(skipped.take(1, SKIPPED as u64), Some(200));
        assert_eq!(skipped.take(1, SKIPPED as u64 + 1), None);
    }

    #[test]
    fn a_new_connection_forgets_the_last_ones_skips() {
        let skipped = Skipped::default();
        let stream = message(1, 1, 200, 100);
        let mut filter = Filter::new(100, skipped.clone());
        filter.filter(&stream, &mut [0; 4096]).unwrap();
        assert_eq!(skipped.len(), 1);
        let _next = Filter::new(100, skipped.clone());
        assert!(skipped.is_empty());
    }

    /// A socket that hands out at most `step` bytes a read.
    struct Trickle<'a> {
        rest: &'a [u8],
        step: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step).min(self.rest.len());
            buf[..n].copy_from_slice(&self.rest[..n]);
            self.rest = &self.rest[n..];
            Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn the_socket_reads_through_the_filter_to_the_end() {
        use futures_lite::AsyncReadExt;
        let mut stream = mixed_stream();
        // A frame cut short by the end of the stream: its head is handed on as it came.
        stream.extend(&deliver(1, "a", 9)[..12]);
        let expected = run(100, &stream, stream.len(), 1 << 16).0;
        assert!(expected.ends_with(&deliver(1, "a", 9)[..12]));
        for step in [1, 13, READ_BUF] {
            let socket = Trickle {
                rest: &stream,
                step,
            };
            let mut filtered = Filtered::new(socket, Filter::new(100, Skipped::default()));
            let mut out = Vec::new();
            futures_lite::future::block_on(filtered.read_to_end(&mut out)).unwrap();
            assert_eq!(out, expected, "step {step}");
        }
    }
}
