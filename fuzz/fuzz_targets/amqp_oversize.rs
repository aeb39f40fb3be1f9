//! The AMQP read side (`source::amqp::oversize`): bytes a broker could send, read through
//! `Filtered` from a socket that hands them out in pieces of 1 to 64 bytes, into read buffers
//! of 1 to 64 bytes. The first input byte picks the body limit, the next two seed the cuts.
//! Checks that nothing panics; that what comes out (the bytes, the error, the skipped
//! deliveries) is what the filter makes of the whole stream at once, however it was cut; that
//! with no limit every byte passes unchanged; and that only bodies over the limit are recorded,
//! at most the prefetch window of them, with no more bytes out than in.

#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use callwire::source::amqp::oversize::{Filter, Filtered, SKIPPED, Skip, Skipped};
use futures_lite::AsyncReadExt;
use futures_lite::future::block_on;
use libfuzzer_sys::fuzz_target;

/// xorshift64: the cut sizes, from the input's seed.
struct Cuts(u64);

impl Cuts {
    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 64) as usize + 1
    }
}

/// A socket that hands out the stream in the cuts' pieces.
struct Socket<'a> {
    rest: &'a [u8],
    cuts: Cuts,
}

impl futures_lite::AsyncRead for Socket<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(self.cuts.next()).min(self.rest.len());
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Poll::Ready(Ok(n))
    }
}

type Outcome = (Vec<u8>, Option<String>, Vec<Skip>);

/// The filter given the whole stream at once, with room for all of it.
fn whole(stream: &[u8], max_body: u64) -> Outcome {
    let skipped = Skipped::default();
    let mut filter = Filter::new(max_body, skipped.clone());
    let mut out = vec![0; stream.len()];
    let mut given = 0;
    let mut rest = stream;
    let mut ended = false;
    let error = loop {
        match filter.filter(rest, &mut out[given..]) {
            Ok((0, 0)) if ended => break None,
            Ok((0, 0)) => {
                filter.end();
                ended = true;
            }
            Ok((taken, more)) => {
                rest = &rest[taken..];
                given += more;
            }
            Err(e) => break Some(e.to_owned()),
        }
    };
    out.truncate(given);
    (out, error, skipped.skips())
}

/// The stream read through `Filtered` in pieces.
fn cut(stream: &[u8], max_body: u64, seed: u64) -> Outcome {
    let skipped = Skipped::default();
    let socket = Socket {
        rest: stream,
        cuts: Cuts(seed),
    };
    let mut filtered = Filtered::new(socket, Filter::new(max_body, skipped.clone()));
    let mut reads = Cuts(seed.rotate_left(32) | 1);
    let mut out = Vec::new();
    let error = loop {
        let mut buf = [0; 64];
        let size = reads.next();
        match block_on(filtered.read(&mut buf[..size])) {
            Ok(0) => break None,
            Ok(n) => out.extend(&buf[..n]),
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                break Some(e.to_string());
            }
        }
    };
    (out, error, skipped.skips())
}

fuzz_target!(|data: &[u8]| {
    let [limit, seed_a, seed_b, stream @ ..] = data else {
        return;
    };
    let max_body = match limit {
        0 => 0,
        255 => u64::MAX,
        n => u64::from(*n) * 4,
    };
    let seed = u64::from(*seed_a) << 8 | u64::from(*seed_b) | 1 << 20;
    let all = whole(stream, max_body);
    let pieces = cut(stream, max_body, seed);
    assert_eq!(all, pieces, "limit {max_body}, seed {seed}");

    let (out, error, skips) = all;
    assert!(out.len() <= stream.len());
    assert!(skips.len() <= SKIPPED);
    assert!(skips.iter().all(|s| s.body_size > max_body), "{skips:?}");
    if max_body == u64::MAX {
        assert_eq!((&out[..], error.as_deref()), (stream, None));
    }
    if skips.is_empty() && error.is_none() {
        assert_eq!(out, stream, "nothing skipped, yet changed");
    }
});
