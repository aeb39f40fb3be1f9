//! The MQTT read side (`source::mqtt::packet_head`): bytes a broker could send, fed to the
//! inbox in pieces. The first input byte picks the piece size and the payload limit. Checks
//! that nothing panics, that what comes out does not depend on how the bytes were cut, and
//! that every packet the inbox hands out is the one rumqttc reads from the same bytes.

#![no_main]

use callwire::source::mqtt::packet_head::{Inbound, Inbox, PacketHead, scan};
use futures_lite::future::block_on;
use libfuzzer_sys::fuzz_target;

/// What the inbox takes out of `stream` fed `step` bytes at a time, up to the first error.
fn take_all(stream: &[u8], step: usize, max_payload: usize) -> (Vec<Inbound>, Option<String>) {
    let mut inbox = Inbox::new();
    let mut got = Vec::new();
    let mut rest = stream;
    loop {
        loop {
            match inbox.next(max_payload) {
                Ok(Some(inbound)) => got.push(inbound),
                Ok(None) => break,
                Err(e) => return (got, Some(e)),
            }
        }
        inbox.compact();
        if rest.is_empty() {
            return (got, None);
        }
        // The real read path: `fill` offers a buffer, the "socket" copies at most `step`.
        let n = block_on(inbox.fill(async |dst: &mut [u8]| {
            let n = dst.len().min(step).min(rest.len());
            dst[..n].copy_from_slice(&rest[..n]);
            Ok(n)
        }))
        .unwrap();
        rest = &rest[n..];
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(knobs & 0x0f) + 1;
    let max_payload = match knobs >> 4 {
        0 => 0,
        15 => usize::MAX,
        n => 1 << n,
    };
    let whole = take_all(stream, stream.len().max(1), max_payload);
    let pieces = take_all(stream, step, max_payload);
    assert_eq!(whole, pieces, "step {step}, max {max_payload}");

    // A packet handed out whole is what rumqttc reads at that point of the stream.
    let mut at = 0;
    for inbound in &whole.0 {
        let head = scan(&stream[at..], max_payload);
        match inbound {
            Inbound::Packet(packet) => {
                assert_eq!(head, PacketHead::Ready);
                let mut bytes = bytes::BytesMut::from(&stream[at..]);
                let before = bytes.len();
                let read = rumqttc::Packet::read(&mut bytes, usize::MAX).expect("rumqttc reads it");
                assert_eq!(&read, packet);
                at += before - bytes.len();
            }
            Inbound::TooLarge(big) => match head {
                PacketHead::TooLarge(head) => {
                    assert!(head.payload_len > max_payload);
                    assert_eq!((big.pkid, big.payload_len), (head.pkid, head.payload_len));
                    at += head.frame_len;
                }
                other => panic!("skipped, but the head says {other:?}"),
            },
        }
    }
});
