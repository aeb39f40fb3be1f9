//! The queue a broker source's publishes wait in until its driver sends them: bounded, and
//! closed to new ones while the source is not connected (live-api.md: a hangup that cannot go
//! now is refused at once, not held). The MQTT and AMQP publishers each wrap one.

use std::fmt;
use std::rc::Rc;

use smol::channel::{Sender, TrySendError};

use crate::source::SourceStatus;

/// Why the queue took no publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// It holds as many publishes as it was made for.
    Full,
    /// The source is not connected to its broker (or its driver no longer runs).
    Disconnected,
}

/// The sending end of a source's publish queue, checked against the source's status.
pub(crate) struct PublishQueue<T> {
    queue: Sender<T>,
    status: Rc<SourceStatus>,
}

impl<T> PublishQueue<T> {
    pub(crate) fn new(queue: Sender<T>, status: Rc<SourceStatus>) -> PublishQueue<T> {
        PublishQueue { queue, status }
    }

    /// Whether the source is connected (publishes are taken).
    pub(crate) fn connected(&self) -> bool {
        self.status.connected()
    }

    /// Queues `publish` if the source is connected and the queue has room.
    pub(crate) fn push(&self, publish: T) -> Result<(), Refused> {
        if !self.connected() {
            return Err(Refused::Disconnected);
        }
        self.queue.try_send(publish).map_err(|err| match err {
            TrySendError::Full(_) => Refused::Full,
            TrySendError::Closed(_) => Refused::Disconnected,
        })
    }

    /// Like [`push`](Self::push), but waits for room instead of refusing a full queue.
    pub(crate) async fn push_waiting(&self, publish: T) -> Result<(), Refused> {
        if !self.connected() {
            return Err(Refused::Disconnected);
        }
        (self.queue.send(publish).await).map_err(|_| Refused::Disconnected)
    }
}

impl<T> Clone for PublishQueue<T> {
    fn clone(&self) -> Self {
        PublishQueue::new(self.queue.clone(), self.status.clone())
    }
}

impl<T> fmt::Debug for PublishQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishQueue")
            .field("queued", &self.queue.len())
            .finish()
    }
}
