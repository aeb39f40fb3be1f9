//! Text frames written to a client straight from their shared bytes.
//!
//! A frame the hub queued is one set of bytes shared by every client it is for. tungstenite
//! would copy it into each client's write buffer before writing it, so that a client whose
//! socket is full holds a private copy of the frame it is stuck on: up to `--max-clients`
//! copies of the largest frame, the biggest part of the memory budget. Here each frame's
//! header (2 to 10 bytes, RFC 6455 section 5.2; a server's frames are not masked) is built on
//! the stack and written with the frame's own bytes in one vectored write, a batch of frames at
//! a time, and a frame that went out in part is resumed from where the socket stopped taking
//! it. Nothing is copied and nothing is allocated.
//!
//! tungstenite still reads the client's messages and writes the control frames (pings, pongs,
//! closes); `ws::Connection` flushes those before it writes text frames here and lets
//! tungstenite write again only between whole frames, so the two never interleave.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_lite::AsyncWrite;

/// The most frames one vectored write carries (`IOV_MAX` is 1024; two slices per frame).
const BATCH: usize = 64;
/// The longest frame header: opcode byte, length byte, 64-bit extended length.
const MAX_HEADER: usize = 10;

/// Where a connection is in the frames it is writing: how much of the first one the socket
/// has taken.
#[derive(Debug, Default)]
pub struct TextWriter {
    written: usize,
}

impl TextWriter {
    /// Whether a frame went out in part: the next bytes on the socket must be its rest.
    pub fn in_frame(&self) -> bool {
        self.written > 0
    }

    /// Writes the frames `pending` yields, the first from where the last write stopped, in as
    /// few writes as the socket allows, until at least one frame is out. Returns how many
    /// frames are out (the caller takes them off its queue), or 0 when `pending` is empty.
    pub fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        socket: &mut W,
        cx: &mut Context<'_>,
        pending: &mut dyn Iterator<Item = &[u8]>,
    ) -> Poll<io::Result<usize>> {
        let mut payloads: [&[u8]; BATCH] = [&[]; BATCH];
        let mut count = 0;
        for payload in pending.take(BATCH) {
            payloads[count] = payload;
            count += 1;
        }
        if count == 0 {
            return Poll::Ready(Ok(0));
        }
        let mut headers = [[0u8; MAX_HEADER]; BATCH];
        let mut header_lens = [0usize; BATCH];
        for i in 0..count {
            header_lens[i] = header(payloads[i].len(), &mut headers[i]);
        }
        loop {
            let mut slices = [IoSlice::new(&[]); 2 * BATCH];
            let mut skip = self.written;
            for i in 0..count {
                let header = &headers[i][..header_lens[i]];
                let from_header = skip.min(header.len());
                let from_payload = (skip - from_header).min(payloads[i].len());
                slices[2 * i] = IoSlice::new(&header[from_header..]);
                slices[2 * i + 1] = IoSlice::new(&payloads[i][from_payload..]);
                skip -= from_header + from_payload;
            }
            let taken =
                ready!(Pin::new(&mut *socket).poll_write_vectored(cx, &slices[..2 * count]))?;
            if taken == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let mut through = self.written + taken;
            let mut finished = 0;
            while finished < count && through >= header_lens[finished] + payloads[finished].len() {
                through -= header_lens[finished] + payloads[finished].len();
                finished += 1;
            }
            self.written = through;
            if finished > 0 {
                return Poll::Ready(Ok(finished));
            }
        }
    }
}

/// Writes the header of an unmasked, final text frame of `len` bytes; returns its length.
fn header(len: usize, out: &mut [u8; MAX_HEADER]) -> usize {
    out[0] = 0x81; // FIN, opcode 1 (text)
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_tungstenite::tungstenite::protocol::frame::FrameHeader;
    use std::io::Cursor;

    /// A socket that takes at most `step` bytes per write, and nothing after `limit` bytes.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
        limit: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let room = this.limit - this.out.len();
            if room == 0 {
                return Poll::Pending;
            }
            let n = buf.len().min(this.step).min(room);
            this.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Parses the text frames in `bytes` with tungstenite's own header parser.
    fn parse(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut cursor = Cursor::new(bytes);
        let mut frames = Vec::new();
        while (cursor.position() as usize) < bytes.len() {
            let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final && header.mask.is_none());
            let at = cursor.position() as usize;
            frames.push(bytes[at..at + len as usize].to_vec());
            cursor.set_position((at + len as usize) as u64);
        }
        frames
    }

    #[test]
    fn frames_of_every_header_size_survive_any_split_of_the_writes() {
        let payloads: Vec<Vec<u8>> = [0usize, 1, 125, 126, 127, 65535, 65536, 70000, 3]
            .iter()
            .map(|&len| (0..len).map(|i| b'a' + (i % 26) as u8).collect())
            .collect();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for step in [1, 7, 4096, usize::MAX] {
            let mut socket = Trickle {
                out: Vec::new(),
                step,
                limit: usize::MAX,
            };
            let mut writer = TextWriter::default();
            let mut next = 0;
            while next < payloads.len() {
                let mut pending = payloads[next..].iter().map(|p| &p[..]);
                match writer.poll_write(&mut socket, &mut cx, &mut pending) {
                    Poll::Ready(Ok(finished)) => next += finished,
                    other => panic!("{other:?}"),
                }
            }
            assert!(!writer.in_frame());
            assert_eq!(parse(&socket.out), payloads, "step {step}");
        }
    }

    #[test]
    fn a_full_socket_leaves_the_frame_in_part_and_resumes_it() {
        let payload = vec![b'x'; 1000];
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut socket = Trickle {
            out: Vec::new(),
            step: usize::MAX,
            limit: 300,
        };
        let mut writer = TextWriter::default();
        let mut pending = std::iter::once(&payload[..]);
        assert!(
            writer
                .poll_write(&mut socket, &mut cx, &mut pending)
                .is_pending()
        );
        assert!(writer.in_frame());
        socket.limit = usize::MAX;
        let mut pending = std::iter::once(&payload[..]);
        assert!(matches!(
            writer.poll_write(&mut socket, &mut cx, &mut pending),
            Poll::Ready(Ok(1))
        ));
        assert!(!writer.in_frame());
        assert_eq!(parse(&socket.out), vec![payload]);
        let mut none = std::iter::empty();
        assert!(matches!(
            writer.poll_write(&mut socket, &mut cx, &mut none),
            Poll::Ready(Ok(0))
        ));
    }
}
