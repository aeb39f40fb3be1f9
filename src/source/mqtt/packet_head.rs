//! The MQTT read side, without I/O: the scanner that reads a packet's fixed header (and for an
//! oversized PUBLISH its topic and packet id) to decide whether the packet may be buffered
//! whole or must be skipped, and the inbox that buffers what the broker sends, takes whole
//! packets off its front, and streams past oversized messages without holding them.

use std::io;

use bytes::{Buf, BytesMut};
use rumqttc::{Packet, QoS};

/// The read buffer's starting size, and the size it returns to after a big message.
const BUF_INITIAL: usize = 4 * 1024;
pub(super) const BUF_KEEP: usize = 64 * 1024;
const READ_CHUNK_MAX: usize = 256 * 1024;
/// The longest packet other than PUBLISH a broker may send us (a SUBACK is 2 + one byte per
/// filter).
const NON_PUBLISH_MAX: usize = 64 * 1024;

/// A message larger than the maximum, skipped without being read into memory.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge {
    pub topic: String,
    pub qos: QoS,
    /// Zero for QoS 0.
    pub pkid: u16,
    pub payload_len: usize,
}

/// What the inbox takes off the front of the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    Packet(Packet),
    TooLarge(TooLarge),
}

/// What the front of the read buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum PacketHead {
    /// At least this many more bytes are needed to decide.
    Incomplete(usize),
    /// A whole packet of this many bytes, within the limits.
    Ready,
    /// A PUBLISH whose payload is over the maximum; its head (up to the packet id) is here.
    TooLarge(OversizedHead),
    Malformed(&'static str),
}

/// The head of an oversized PUBLISH, as found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct OversizedHead {
    pub qos: QoS,
    /// Where the topic is in the buffer.
    pub topic: std::ops::Range<usize>,
    /// Zero for QoS 0.
    pub pkid: u16,
    pub payload_len: usize,
    /// The whole packet's length, the bytes to skip.
    pub frame_len: usize,
}

/// Reads the fixed header (and for an oversized PUBLISH its topic and packet id) at the front
/// of `buf`, to decide whether the packet may be buffered whole or must be skipped.
pub fn scan(buf: &[u8], max_payload: usize) -> PacketHead {
    if buf.len() < 2 {
        return PacketHead::Incomplete(2 - buf.len());
    }
    let mut remaining = 0usize;
    let mut header = 1;
    loop {
        let Some(&byte) = buf.get(header) else {
            return PacketHead::Incomplete(1);
        };
        remaining |= usize::from(byte & 0x7f) << (7 * (header - 1));
        header += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if header == 5 {
            return PacketHead::Malformed("malformed remaining length");
        }
    }
    let frame_len = header + remaining;
    let whole = || match frame_len.checked_sub(buf.len()) {
        Some(missing) if missing > 0 => PacketHead::Incomplete(missing),
        _ => PacketHead::Ready,
    };
    if buf[0] >> 4 != 3 {
        if remaining > NON_PUBLISH_MAX {
            return PacketHead::Malformed("a packet other than PUBLISH too long to be real");
        }
        return whole();
    }
    if remaining <= max_payload {
        return whole();
    }
    let qos = match (buf[0] >> 1) & 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return PacketHead::Malformed("PUBLISH with QoS 3"),
    };
    if buf.len() < header + 2 {
        return PacketHead::Incomplete(header + 2 - buf.len());
    }
    let topic_len = usize::from(u16::from_be_bytes([buf[header], buf[header + 1]]));
    let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let head = 2 + topic_len + id_len;
    let Some(payload_len) = remaining.checked_sub(head) else {
        return PacketHead::Malformed("PUBLISH shorter than its own topic");
    };
    if payload_len <= max_payload {
        return whole();
    }
    if buf.len() < header + head {
        return PacketHead::Incomplete(header + head - buf.len());
    }
    let topic = header + 2..header + 2 + topic_len;
    let pkid = match qos {
        QoS::AtMostOnce => 0,
        _ => u16::from_be_bytes([buf[topic.end], buf[topic.end + 1]]),
    };
    if qos != QoS::AtMostOnce && pkid == 0 {
        return PacketHead::Malformed("PUBLISH with packet id 0");
    }
    PacketHead::TooLarge(OversizedHead {
        qos,
        topic,
        pkid,
        payload_len,
        frame_len,
    })
}

/// The read side: a buffer that starts small, and the bytes still to skip of an oversized
/// message.
pub struct Inbox {
    buf: BytesMut,
    skip: usize,
    /// Bytes the packet at the front still needs, as a hint for the next read's size.
    need: usize,
}

impl Inbox {
    pub fn new() -> Inbox {
        Inbox {
            buf: BytesMut::with_capacity(BUF_INITIAL),
            skip: 0,
            need: 0,
        }
    }

    /// The next packet, `None` when more bytes are needed, `Err` when the stream is broken.
    pub fn next(&mut self, max_payload: usize) -> Result<Option<Inbound>, String> {
        if self.skip > 0 {
            let n = self.skip.min(self.buf.len());
            self.buf.advance(n);
            self.skip -= n;
            if self.skip > 0 {
                self.need = self.skip;
                return Ok(None);
            }
        }
        match scan(&self.buf, max_payload) {
            PacketHead::Incomplete(n) => {
                self.need = n;
                Ok(None)
            }
            PacketHead::Malformed(why) => Err(format!("broken stream from the broker: {why}")),
            PacketHead::TooLarge(head) => {
                let topic = String::from_utf8_lossy(&self.buf[head.topic]).into_owned();
                let n = head.frame_len.min(self.buf.len());
                self.buf.advance(n);
                self.skip = head.frame_len - n;
                Ok(Some(Inbound::TooLarge(TooLarge {
                    topic,
                    qos: head.qos,
                    pkid: head.pkid,
                    payload_len: head.payload_len,
                })))
            }
            PacketHead::Ready => match Packet::read(&mut self.buf, usize::MAX) {
                Ok(packet) => {
                    self.need = 0;
                    Ok(Some(Inbound::Packet(packet)))
                }
                Err(rumqttc::Error::InsufficientBytes(n)) => {
                    self.need = n;
                    Ok(None)
                }
                Err(e) => Err(format!("malformed packet from the broker: {e}")),
            },
        }
    }

    /// Reads once into the buffer through `read`, sized by what the front packet still needs.
    /// Cancel-safe: dropped before it finishes, it leaves the buffer as it was.
    pub async fn fill<F>(&mut self, read: F) -> io::Result<usize>
    where
        F: AsyncFnOnce(&mut [u8]) -> io::Result<usize>,
    {
        /// Cuts the buffer back to the bytes actually read, also when the read is dropped.
        struct Keep<'a> {
            buf: &'a mut BytesMut,
            len: usize,
        }
        impl Drop for Keep<'_> {
            fn drop(&mut self) {
                self.buf.truncate(self.len);
            }
        }
        let len = self.buf.len();
        let chunk = self.need.clamp(BUF_INITIAL, READ_CHUNK_MAX);
        self.buf.resize(len + chunk, 0);
        let mut keep = Keep {
            buf: &mut self.buf,
            len,
        };
        let result = read(&mut keep.buf[len..]).await;
        if let Ok(n) = &result {
            keep.len = len + (*n).min(chunk);
        }
        result
    }

    /// Lets the buffer go back to its starting size after a big message (not while one is
    /// still arriving or being skipped).
    pub fn compact(&mut self) {
        if self.buf.capacity() > BUF_KEEP
            && self.buf.len() <= BUF_INITIAL
            && self.need <= BUF_INITIAL
        {
            let mut fresh = BytesMut::with_capacity(BUF_INITIAL);
            fresh.extend_from_slice(&self.buf);
            self.buf = fresh;
        }
    }
}

impl Default for Inbox {
    fn default() -> Inbox {
        Inbox::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::source::mqtt::encode;
    use rumqttc::Publish;

    fn publish_bytes(topic: &str, qos: QoS, pkid: u16, payload: &[u8]) -> BytesMut {
        let mut p = Publish::new(topic, qos, payload.to_vec());
        p.pkid = pkid;
        let mut out = BytesMut::new();
        encode(&Packet::Publish(p), &mut out).unwrap();
        out
    }

    /// Feeds `stream` to an inbox `step` bytes at a time and collects what comes out.
    fn feed(stream: &[u8], step: usize, max: usize) -> Result<Vec<Inbound>, String> {
        let mut inbox = Inbox::new();
        let mut got = Vec::new();
        for chunk in stream.chunks(step) {
            inbox.buf.extend_from_slice(chunk);
            while let Some(inbound) = inbox.next(max)? {
                got.push(inbound);
            }
            inbox.compact();
        }
        if inbox.skip > 0 || !inbox.buf.is_empty() {
            return Err("leftover bytes".into());
        }
        Ok(got)
    }

    #[test]
    fn oversized_publish_is_skipped_exactly() {
        let mut stream = BytesMut::new();
        stream.extend_from_slice(&publish_bytes("a/small", QoS::AtLeastOnce, 1, b"hello"));
        stream.extend_from_slice(&publish_bytes("a/big", QoS::AtLeastOnce, 2, &[7; 70_000]));
        stream.extend_from_slice(&publish_bytes("a/big0", QoS::AtMostOnce, 0, &[8; 5000]));
        stream.extend_from_slice(&[0xd0, 0x00]); // PINGRESP
        stream.extend_from_slice(&publish_bytes("a/edge", QoS::AtMostOnce, 0, &[9; 1000]));
        for step in [1, 3, 100, 4096, 1 << 20] {
            let got = feed(&stream, step, 1000).unwrap();
            assert_eq!(got.len(), 5, "step {step}");
            match &got[0] {
                Inbound::Packet(Packet::Publish(p)) => {
                    assert_eq!(
                        (p.topic.as_str(), &p.payload[..]),
                        ("a/small", &b"hello"[..])
                    );
                }
                other => panic!("{other:?}"),
            }
            match &got[1] {
                Inbound::TooLarge(big) => assert_eq!(
                    big,
                    &TooLarge {
                        topic: "a/big".into(),
                        qos: QoS::AtLeastOnce,
                        pkid: 2,
                        payload_len: 70_000
                    }
                ),
                other => panic!("{other:?}"),
            }
            assert!(
                matches!(&got[2], Inbound::TooLarge(b) if b.payload_len == 5000 && b.pkid == 0)
            );
            assert!(matches!(&got[3], Inbound::Packet(Packet::PingResp)));
            // A payload of exactly the maximum is delivered.
            assert!(
                matches!(&got[4], Inbound::Packet(Packet::Publish(p)) if p.payload.len() == 1000)
            );
        }
    }

    #[test]
    fn garbage_from_the_broker_never_panics() {
        let mut rng = Rng::new(99);
        let mut bytes = Vec::new();
        for round in 0..2000 {
            bytes.clear();
            let len = rng.below(64) as usize;
            for _ in 0..len {
                bytes.push(rng.below(256) as u8);
            }
            if round % 2 == 0 && !bytes.is_empty() {
                bytes[0] = (bytes[0] & 0x0f) | 0x30; // make it look like a PUBLISH
            }
            for max in [0, 8, 1 << 20] {
                let _ = feed(&bytes, 7, max).ok();
            }
        }
        assert!(matches!(
            scan(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], 10),
            PacketHead::Malformed(_)
        ));
        assert!(matches!(
            scan(&[0x36, 0x7f, 0, 0], 1),
            PacketHead::Malformed(_)
        ));
        assert!(matches!(
            scan(&[0x90, 0xff, 0xff, 0x7f], 1),
            PacketHead::Malformed(_)
        ));
        assert_eq!(scan(&[0x30], 1), PacketHead::Incomplete(1));
    }
}
