//! Reading a RabbitMQ stream back from an offset (`--amqp-stream`): the `history::Archive` a
//! resume older than the in-memory history is served from (delivery.md, "Streams").
//!
//! Each read is a second, short-lived consumer on the source's connection: its own channel,
//! consuming the stream from the offset asked for, one message in flight, until the offset
//! the history begins at, then closed. The read runs on the driver's executor (lapin's side);
//! the resume waits for its entries, or gives up after `history::ARCHIVE_TIMEOUT`.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_lite::{StreamExt, future};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection};
use smol::Timer;
use smol::lock::Semaphore;

use super::kit::Kit;
use super::oversize::Skipped;
use super::{CLOSE_TIMEOUT, describe};
use crate::event::Event;
use crate::history::{ARCHIVE_TIMEOUT, Archive, ArchiveError, ArchiveRead, Entry};
use crate::source::supervisor::{TimedOut, within};

/// One message read back: its position (the stream's offset + 1), key and body.
type Read = (u64, ShortString, Vec<u8>);

/// The stream's archive: reads go through the source's connection while it has one.
pub struct StreamArchive {
    stream: ShortString,
    /// The source's connection, while connected (set and cleared by the driver).
    connection: Rc<RefCell<Option<Arc<Connection>>>>,
    kit: Kit,
    skipped: Skipped,
    max_message_size: usize,
    /// The one read under way: the others wait for it.
    reads: Arc<Semaphore>,
}

/// Messages a read's consumer may have in flight: one (`budget` counts it beside the source's
/// own prefetch window). A read is short: at most the replay room's worth of events.
pub const ARCHIVE_PREFETCH: u16 = 1;

impl StreamArchive {
    pub(super) fn new(
        stream: ShortString,
        connection: Rc<RefCell<Option<Arc<Connection>>>>,
        kit: Kit,
        skipped: Skipped,
        max_message_size: usize,
    ) -> StreamArchive {
        StreamArchive {
            stream,
            connection,
            kit,
            skipped,
            max_message_size,
            reads: Arc::new(Semaphore::new(1)),
        }
    }
}

impl Archive for StreamArchive {
    fn read(&self, from: u64, until: u64, max_bytes: usize) -> ArchiveRead {
        let Some(connection) = self.connection.borrow().clone() else {
            return Box::pin(future::ready(Err(ArchiveError::Failed(
                "the source is not connected".to_owned(),
            ))));
        };
        let deadline = Instant::now() + ARCHIVE_TIMEOUT;
        let read = StreamRead {
            stream: self.stream.clone(),
            skipped: self.skipped.clone(),
            max_message_size: self.max_message_size,
            from,
            until,
            max_bytes,
        };
        let (reads, kit) = (self.reads.clone(), self.kit.clone());
        Box::pin(async move {
            let read = future::or(
                async {
                    // One read at a time (the budget counts one more message in flight); the
                    // others wait their turn within their deadline.
                    let turn = reads.acquire_arc().await;
                    let (sender, receiver) = smol::channel::bounded(1);
                    kit.detach(async move {
                        let _ = sender.send(read.run(connection, deadline).await).await;
                        drop(turn);
                    });
                    receiver.recv().await.unwrap_or_else(|_| {
                        Err(ArchiveError::Failed("the read was dropped".to_owned()))
                    })
                },
                async {
                    Timer::at(deadline).await;
                    Err(ArchiveError::Failed("timed out".to_owned()))
                },
            )
            .await?;
            let mut entries = Vec::with_capacity(read.len());
            let mut bytes = 0;
            for (offset, routing_key, payload) in read {
                let event = Event::new(routing_key.to_string(), Bytes::from(payload));
                let entry = Entry::new(offset, &event, Instant::now());
                bytes += entry.cost();
                if bytes > max_bytes {
                    return Err(ArchiveError::TooLarge);
                }
                entries.push(entry);
            }
            Ok(entries)
        })
    }
}

impl From<TimedOut> for ArchiveError {
    fn from(timed_out: TimedOut) -> ArchiveError {
        ArchiveError::Failed(timed_out.to_string())
    }
}

/// One read of the stream, as the driver's executor runs it.
struct StreamRead {
    stream: ShortString,
    skipped: Skipped,
    max_message_size: usize,
    from: u64,
    until: u64,
    max_bytes: usize,
}

impl StreamRead {
    /// Opens a channel, reads, and closes the channel however the read ended.
    async fn run(
        self,
        connection: Arc<Connection>,
        deadline: Instant,
    ) -> Result<Vec<Read>, ArchiveError> {
        let failed = |e: lapin::Error| ArchiveError::Failed(describe(&e));
        let channel = within(deadline, "opening a channel", async {
            connection.create_channel().await.map_err(failed)
        })
        .await?;
        let read = within(deadline, "reading the stream", self.consume(&channel)).await;
        let _ = within(Instant::now() + CLOSE_TIMEOUT, "closing", async {
            channel
                .close(200, ShortString::from("archive read"))
                .await
                .map_err(|e| describe(&e))
        })
        .await;
        read
    }

    /// Consumes the stream from `from` until the message before `until`, within `max_bytes`.
    async fn consume(&self, channel: &Channel) -> Result<Vec<Read>, ArchiveError> {
        let failed = |e: lapin::Error| ArchiveError::Failed(describe(&e));
        channel
            .basic_qos(ARCHIVE_PREFETCH, BasicQosOptions::default())
            .await
            .map_err(failed)?;
        let mut arguments = FieldTable::default();
        // Positions are the stream's offsets + 1.
        let offset = i64::try_from(self.from.saturating_sub(1)).unwrap_or(i64::MAX);
        arguments.insert("x-stream-offset".into(), AMQPValue::LongLongInt(offset));
        let mut consumer = channel
            .basic_consume(
                self.stream.clone(),
                ShortString::default(),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await
            .map_err(failed)?;
        let mut read = Vec::new();
        let mut bytes = 0;
        let mut first = true;
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery.map_err(failed)?;
            let Some(position) = position(&delivery) else {
                continue;
            };
            let (tag, acker) = (delivery.delivery_tag, delivery.acker.clone());
            acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(failed)?;
            if position < self.from {
                // A stream may start a consumer at the beginning of the chunk holding it.
                continue;
            }
            if first && position > self.from {
                return Err(ArchiveError::Gone);
            }
            first = false;
            if position >= self.until {
                break;
            }
            // What the source skips as too large, the history never held either.
            let skipped = self.skipped.take(channel.id(), tag).is_some();
            if !skipped && delivery.data.len() <= self.max_message_size {
                bytes += delivery.data.len() + delivery.routing_key.as_str().len();
                if bytes > self.max_bytes {
                    return Err(ArchiveError::TooLarge);
                }
                read.push((position, delivery.routing_key, delivery.data));
            }
            if position + 1 >= self.until {
                break;
            }
        }
        Ok(read)
    }
}

/// A stream delivery's position: its `x-stream-offset` header, + 1 (positions start at 1,
/// delivery.md).
pub(super) fn position(delivery: &Delivery) -> Option<u64> {
    let header = delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get("x-stream-offset")?;
    let offset = match header {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok()?,
        AMQPValue::LongInt(n) => u64::try_from(*n).ok()?,
        AMQPValue::LongUInt(n) => u64::from(*n),
        _ => return None,
    };
    Some(offset + 1)
}
