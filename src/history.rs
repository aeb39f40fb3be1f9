//! Positions and the history of recent events (contract: delivery.md, "Positions").
//!
//! Every event that enters the bridge gets a position here: the epoch (a short string naming
//! this unbroken history) and an offset, one more than the previous event's; or, from a source
//! that numbers its events itself (a RabbitMQ stream, `--amqp-stream`), that source's offset,
//! under an epoch naming the stream, so every bridge on the stream gives the same positions
//! (delivery.md, "Streams"). The most recent
//! events are kept, bounded in bytes (`--history-bytes`) and in age (`--history-ttl`), so that
//! a client that drops off for a moment can be given exactly what it missed (Blackhole's
//! `since`, `GET /rest/live/events`), or be told plainly that it cannot.
//!
//! An entry owns copies of its payload, routing key and account, each allocated to its exact
//! length: it never pins the larger buffer a source read the payload into. What an entry costs
//! is counted in bytes (`Entry::cost`), and the deque's own slots are counted beside it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::event::{self, Event, Position};
use crate::limits::{BytePool, Held, Limits};
use crate::rng::Rng;

/// One event as the history keeps it.
#[derive(Debug)]
pub struct Entry {
    pub offset: u64,
    pub routing_key: Box<str>,
    pub account: Option<Box<str>>,
    pub payload: Box<[u8]>,
    /// When it entered the history, for `--history-ttl`.
    at: Instant,
    /// The same on the wall clock, for a resume from a time (AnyCable's `since`).
    received_at: SystemTime,
}

impl Entry {
    /// The bytes this entry holds on the heap: its copies of the payload, key and account.
    fn heap_bytes(&self) -> usize {
        self.payload.len() + self.routing_key.len() + self.account.as_deref().map_or(0, str::len)
    }

    /// What the entry costs the history's byte bound (or a replay's room while it waits to
    /// be rendered): its heap bytes and its slot.
    pub fn cost(&self) -> usize {
        self.heap_bytes() + ENTRY_SLOT
    }

    /// The entry as an event again, with its position: replays go through the same matching,
    /// account rules and rendering as live events.
    pub fn to_event(&self, epoch: &Rc<str>) -> Event {
        let mut event = Event::new(
            self.routing_key.to_string(),
            Bytes::copy_from_slice(&self.payload),
        );
        event.position = Some(Position {
            epoch: epoch.clone(),
            offset: self.offset,
        });
        event
    }

    /// When the event entered the bridge (wall clock).
    pub fn received_at(&self) -> SystemTime {
        self.received_at
    }

    /// Whether a subscriber scoped to `scope` may see this entry (the rule of
    /// `Event::visible_to`, on the account the history kept).
    pub fn visible_to(&self, scope: &str) -> bool {
        event::visible(self.account.as_deref(), scope)
    }
}

impl Entry {
    /// An event's entry at `offset`, kept from `at`: recorded, or read back from the archive
    /// (`Archive`) at its offset there. Exact copies of its parts, never the larger buffers
    /// they were read into.
    pub fn new(offset: u64, event: &Event, at: Instant) -> Entry {
        Entry {
            offset,
            routing_key: event.routing_key.as_str().into(),
            account: event.account.as_deref().map(Box::from),
            payload: Box::from(&event.payload[..]),
            at,
            received_at: event.received_at,
        }
    }
}

/// Where the events older than the history can still be read: the source that numbered them
/// (a RabbitMQ stream, `--amqp-stream`). Set by `main` when the positions are the source's.
pub trait Archive {
    /// Reads the events at offsets `from` up to, not including, `until`, oldest first, and
    /// stops (as `ArchiveError::TooLarge`) once they cost more than `max_bytes`
    /// (`Entry::cost`). The read gives up on its own after [`ARCHIVE_TIMEOUT`].
    fn read(&self, from: u64, until: u64, max_bytes: usize) -> ArchiveRead;
}

/// An archive read under way.
pub type ArchiveRead = Pin<Box<dyn Future<Output = Result<Vec<Entry>, ArchiveError>>>>;

/// An archive read a socket waits for, with the replay room held for it meanwhile.
pub struct PendingRead {
    /// The offset the read stops before: the first the history held.
    pub until: u64,
    /// The replay room held for what the read returns (the read stops past it).
    reserved: usize,
    read: ArchiveRead,
}

impl PendingRead {
    /// Holds `reserved` more of `replaying` for what `read` returns.
    pub fn new(read: ArchiveRead, until: u64, reserved: usize, replaying: &mut Held) -> Self {
        replaying.resize(replaying.bytes() + reserved);
        PendingRead {
            until,
            reserved,
            read,
        }
    }

    /// Once the read is done: what it returned, and what its entries cost, which now hold the
    /// place of the room reserved for them (they are no larger) until the caller renders them
    /// and gives that back.
    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
        replaying: &mut Held,
    ) -> Poll<(Result<Vec<Entry>, ArchiveError>, usize)> {
        let read = ready!(self.read.as_mut().poll(cx));
        let held = replaying
            .bytes()
            .saturating_sub(std::mem::take(&mut self.reserved));
        let charged: usize = read
            .as_ref()
            .map_or(0, |entries| entries.iter().map(Entry::cost).sum());
        replaying.resize(held + charged);
        Poll::Ready((read, charged))
    }
}

/// How long an archive read may take before the resume is answered as not recovered.
pub const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an archive read gave nothing to replay.
#[derive(Debug, PartialEq, Eq)]
pub enum ArchiveError {
    /// The entries would take more than the room given.
    TooLarge,
    /// The archive no longer holds the first offset asked for.
    Gone,
    /// The source could not read it (not connected, timed out, refused): the reason.
    Failed(String),
}

/// An event as a saved state gives it back (`History::restored`).
#[derive(Debug)]
pub struct SavedEntry {
    pub offset: u64,
    pub routing_key: Box<str>,
    pub account: Option<Box<str>>,
    pub payload: Box<[u8]>,
    pub received_at: SystemTime,
}

/// The bytes one entry's slot in the deque takes.
const ENTRY_SLOT: usize = std::mem::size_of::<Entry>();

/// The worst case, in bytes, that a history under `limits` can hold: every entry's cost up
/// to `--history-bytes`, plus the deque's slots when the bound is filled with the smallest
/// entries (an entry costs at least its slot, and a deque grows its capacity to a power of
/// two). For the memory budget.
pub fn worst_case_bytes(limits: &Limits) -> usize {
    let most_entries = limits.history_bytes / ENTRY_SLOT;
    limits.history_bytes + most_entries.next_power_of_two() * ENTRY_SLOT
}

/// The most bytes of replayed frames waiting to be written, every socket's together: room for
/// the whole history rendered twice over, so that resumes after an outage that dropped every
/// client are answered in turn while the sockets take them.
pub fn replay_bytes(limits: &Limits) -> usize {
    2 * limits.history_bytes
}

/// What a client asked to resume from, judged against the history.
#[derive(Debug, PartialEq, Eq)]
pub enum Resume {
    /// The history holds every event after the offset: these are the entries to replay from
    /// (an index into `History::entries`; `len` when there is nothing to replay).
    Recovered { from: usize },
    /// The history no longer holds every event after the offset, but its archive does: the
    /// events from the offset after the client's up to `until` (the first the history holds,
    /// or the next to come) are to be read from it (`History::archive`).
    Archived { until: u64 },
    /// Another epoch, an offset past the last event, or events after it that the history no
    /// longer holds: nothing can be replayed.
    Lost,
}

/// The epoch, the next offset, and the recent events.
#[derive(Debug)]
pub struct History {
    epoch: Rc<str>,
    next_offset: u64,
    entries: VecDeque<Entry>,
    /// The sum of the entries' costs.
    bytes: usize,
    max_bytes: usize,
    ttl: Duration,
    /// When this history began, and when the newest entry it dropped had entered: a resume
    /// from a time before either cannot be whole.
    started_at: SystemTime,
    dropped_through: Option<SystemTime>,
    /// The frames rendered for resumes and not yet written, every socket's together.
    replays: Rc<BytePool>,
    /// Where the events older than the history can be read, when the source keeps them.
    archive: Option<Rc<dyn Archive>>,
}

impl std::fmt::Debug for dyn Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Archive")
    }
}

impl History {
    /// A new history under a new epoch (a start with no saved positions: `state`).
    pub fn new(limits: &Limits) -> History {
        History::with_epoch(new_epoch(), limits)
    }

    /// A new, empty history under a known epoch (the fuzz targets give one a script can name).
    pub fn with_epoch(epoch: Rc<str>, limits: &Limits) -> History {
        History {
            epoch,
            next_offset: 1,
            entries: VecDeque::new(),
            bytes: 0,
            max_bytes: limits.history_bytes,
            ttl: limits.history_ttl,
            started_at: SystemTime::now(),
            dropped_through: None,
            replays: BytePool::new(replay_bytes(limits)),
            archive: None,
        }
    }

    /// Lets resumes older than the history read the events they miss from `archive`.
    pub fn set_archive(&mut self, archive: Rc<dyn Archive>) {
        self.archive = Some(archive);
    }

    /// Starts reading the events at offsets `from` up to `until` from the archive (as
    /// `Resume::Archived` asks), at most `max_bytes` of them.
    pub fn archive(&self, from: u64, until: u64, max_bytes: usize) -> Option<ArchiveRead> {
        let archive = self.archive.as_ref()?;
        Some(archive.read(from, until, max_bytes))
    }

    /// A socket's share of the room for replayed frames: a resume whose frames do not fit
    /// beside the others waiting to be written is answered as not recovered.
    pub fn replay_share(&self) -> Held {
        self.replays.share()
    }

    /// A history saved at a graceful stop (`state`), going on with its epoch and offsets. The
    /// saved events are taken back through the same bounds as live ones (bytes, age), so a
    /// state saved under larger limits yields what these keep. Refused, with the reason, when
    /// the offsets are not consecutive or not before `next_offset`.
    pub fn restored(
        limits: &Limits,
        epoch: Rc<str>,
        next_offset: u64,
        started_at: SystemTime,
        dropped_through: Option<SystemTime>,
        entries: impl IntoIterator<Item = SavedEntry>,
    ) -> Result<History, String> {
        if next_offset == 0 {
            return Err("the next offset is 0".to_owned());
        }
        let mut history = History::with_epoch(epoch, limits);
        history.next_offset = next_offset;
        history.started_at = started_at;
        history.dropped_through = dropped_through;
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut previous = None;
        for saved in entries {
            // Increasing, not always consecutive: a stream's offsets skip what was not kept.
            if previous.is_some_and(|p| saved.offset <= p) || saved.offset >= next_offset {
                return Err(format!("event offset {} out of order", saved.offset));
            }
            previous = Some(saved.offset);
            // Its age on the wall clock, carried over to this process's monotonic clock.
            let age = wall.duration_since(saved.received_at).unwrap_or_default();
            let entry = Entry {
                offset: saved.offset,
                routing_key: saved.routing_key,
                account: saved.account,
                payload: saved.payload,
                at: now.checked_sub(age).unwrap_or(now),
                received_at: saved.received_at,
            };
            let cost = entry.cost();
            if cost > history.max_bytes {
                history.entries.clear();
                history.bytes = 0;
                history.dropped_through = Some(saved.received_at);
                continue;
            }
            while history.bytes + cost > history.max_bytes {
                history.pop_oldest();
            }
            history.bytes += cost;
            history.entries.push_back(entry);
        }
        history.expire(now);
        Ok(history)
    }

    pub fn epoch(&self) -> &Rc<str> {
        &self.epoch
    }

    /// The offset the next event will get.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// When this history began (a resume from an earlier time cannot be whole).
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// When the newest event the history dropped had entered.
    pub fn dropped_through(&self) -> Option<SystemTime> {
        self.dropped_through
    }

    /// The offset of the last event that entered (0 before the first).
    pub fn last_offset(&self) -> u64 {
        self.next_offset - 1
    }

    /// Events held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bytes the history holds now: its entries' copies and the deque's slots (the
    /// figure `/metrics` reports).
    pub fn bytes(&self) -> usize {
        self.bytes - self.entries.len() * ENTRY_SLOT + self.entries.capacity() * ENTRY_SLOT
    }

    /// Gives the event its position and keeps a copy of it, dropping the oldest entries that
    /// no longer fit in `--history-bytes` or are older than `--history-ttl`. An event larger
    /// than the whole bound gets its position but is not kept (a later resume across it is
    /// refused, as for any event the history lost).
    ///
    /// An event that comes with a position (a stream's offset, under this history's epoch)
    /// keeps its offset; one at or before the last recorded was recorded already (a stream
    /// read again from an earlier offset after a reconnect) and is refused: `false`, nothing
    /// changed, and the caller hands it to no one.
    pub fn record(&mut self, event: &mut Event) -> bool {
        let now = Instant::now();
        let offset = match &event.position {
            Some(given) => {
                debug_assert_eq!(given.epoch, self.epoch, "a stream's epoch is the history's");
                if given.offset <= self.last_offset() {
                    return false;
                }
                given.offset
            }
            None => self.next_offset,
        };
        self.next_offset = offset + 1;
        event.position = Some(Position {
            epoch: self.epoch.clone(),
            offset,
        });
        let entry = Entry::new(offset, event, now);
        let cost = entry.cost();
        self.expire(now);
        if cost > self.max_bytes {
            // Everything before it is now older than an event the history lost.
            self.entries.clear();
            self.bytes = 0;
            self.dropped_through = Some(event.received_at);
            return true;
        }
        while self.bytes + cost > self.max_bytes {
            self.pop_oldest();
        }
        self.bytes += cost;
        self.entries.push_back(entry);
        true
    }

    /// Drops the entries older than `--history-ttl`.
    pub fn expire(&mut self, now: Instant) {
        while self
            .entries
            .front()
            .is_some_and(|entry| now.duration_since(entry.at) > self.ttl)
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.bytes -= entry.cost();
            self.dropped_through = Some(entry.received_at);
        }
    }

    /// Whether every event that entered at or after `since` is still held, and where they
    /// start: lost when this history began in a second before `since`'s (clients give whole
    /// seconds), or dropped an event from then on.
    pub fn resume_from_time(&self, since: SystemTime) -> Resume {
        let began = self
            .started_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let began_second = UNIX_EPOCH + Duration::from_secs(began.as_secs());
        let lost = since < began_second || self.dropped_through.is_some_and(|t| t >= since);
        if lost {
            return Resume::Lost;
        }
        Resume::Recovered {
            from: self
                .entries
                .partition_point(|entry| entry.received_at < since),
        }
    }

    /// Whether every event after `offset` in `epoch` is still held, and where they start.
    pub fn resume(&self, epoch: &str, offset: u64) -> Resume {
        if epoch != &*self.epoch || offset > self.last_offset() {
            return Resume::Lost;
        }
        // The first offset held; with nothing held, the next one to come.
        let first = self.entries.front().map_or(self.next_offset, |e| e.offset);
        if offset + 1 < first {
            if self.archive.is_some() {
                return Resume::Archived { until: first };
            }
            return Resume::Lost;
        }
        // Offsets in the deque increase (a stream's may skip one that was not kept).
        Resume::Recovered {
            from: self.entries.partition_point(|entry| entry.offset <= offset),
        }
    }

    /// The entries from index `from` (as `Resume::Recovered` gives it), oldest first.
    pub fn entries_from(&self, from: usize) -> impl Iterator<Item = &Entry> {
        self.entries.range(from.min(self.entries.len())..)
    }
}

/// A short epoch that differs from one start to the next: 8 hex digits of the clock-seeded
/// generator.
fn new_epoch() -> Rc<str> {
    let mut rng = Rng::from_clock();
    format!("{:08x}", rng.next_u64() as u32).into()
}

/// An archive holding every event recorded, read at once (the dialects' tests).
#[cfg(test)]
pub(crate) struct Recorded(pub Vec<(u64, Event)>);

#[cfg(test)]
impl Archive for Recorded {
    fn read(&self, from: u64, until: u64, max_bytes: usize) -> ArchiveRead {
        let entries: Vec<Entry> = (self.0.iter())
            .filter(|(offset, _)| (from..until).contains(offset))
            .map(|(offset, event)| Entry::new(*offset, event, Instant::now()))
            .collect();
        let bytes: usize = entries.iter().map(Entry::cost).sum();
        let read = if bytes > max_bytes {
            Err(ArchiveError::TooLarge)
        } else {
            Ok(entries)
        };
        Box::pin(std::future::ready(read))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli;

    fn history(flags: &[&str]) -> History {
        History::with_epoch("e1".into(), &cli::limits_from(flags))
    }

    fn record(history: &mut History, key: &str, payload: &str) -> Event {
        let mut event = Event::new(key.to_owned(), Bytes::copy_from_slice(payload.as_bytes()));
        history.record(&mut event);
        event
    }

    #[test]
    fn offsets_count_up_from_one_under_one_epoch() {
        let mut history = history(&[]);
        assert_eq!(history.last_offset(), 0);
        let first = record(&mut history, "a.b", "{}");
        let second = record(&mut history, "a.c", "{}");
        assert_eq!(
            first.position,
            Some(Position {
                epoch: "e1".into(),
                offset: 1
            })
        );
        assert_eq!(second.position.unwrap().offset, 2);
        assert_eq!(history.last_offset(), 2);
    }

    fn record_at(history: &mut History, offset: u64) -> bool {
        let mut event = Event::new("k.k".to_owned(), Bytes::from_static(b"{}"));
        event.position = Some(Position {
            epoch: history.epoch().clone(),
            offset,
        });
        history.record(&mut event)
    }

    #[test]
    fn a_stream_gives_the_offsets_and_what_was_recorded_is_refused_again() {
        let mut history = history(&[]);
        assert!(record_at(&mut history, 5001));
        assert!(record_at(&mut history, 5002));
        assert!(
            !record_at(&mut history, 5002),
            "read again after a reconnect"
        );
        assert!(!record_at(&mut history, 4000), "older");
        assert!(record_at(&mut history, 5004), "5003 was not kept");
        let held: Vec<u64> = history.entries_from(0).map(|e| e.offset).collect();
        assert_eq!(held, [5001, 5002, 5004]);
        assert_eq!(history.last_offset(), 5004);
        assert_eq!(history.resume("e1", 5000), Resume::Recovered { from: 0 });
        assert_eq!(
            history.resume("e1", 4999),
            Resume::Lost,
            "before the first held"
        );
        assert_eq!(history.resume("e1", 5002), Resume::Recovered { from: 2 });
        assert_eq!(history.resume("e1", 5003), Resume::Recovered { from: 2 });
        assert_eq!(history.resume("e1", 5004), Resume::Recovered { from: 3 });
        assert_eq!(history.resume("e1", 5005), Resume::Lost, "not yet received");
        let own = record(&mut history, "k.k", "{}");
        assert_eq!(
            own.position.unwrap().offset,
            5005,
            "numbered on from the last"
        );
    }

    #[test]
    fn entries_own_exact_copies_and_are_counted_in_bytes() {
        let mut history = history(&[]);
        // A payload that is a slice of a larger buffer, as a source may hand one over.
        let buffer = Bytes::from(vec![b'x'; 4096]);
        let mut event = Event::new("k.k".to_owned(), buffer.slice(0..10));
        history.record(&mut event);
        let entry = history.entries_from(0).next().unwrap();
        assert_eq!(entry.payload.len(), 10);
        assert_eq!(entry.cost(), 10 + 3 + ENTRY_SLOT);
        assert_eq!(
            history.bytes(),
            10 + 3 + history.entries.capacity() * ENTRY_SLOT
        );
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_and_resume_says_what_is_lost() {
        let payload = "p".repeat(100);
        let cost = 100 + 3 + ENTRY_SLOT;
        let bound = (3 * cost).to_string();
        let mut history = history(&["--history-bytes", &bound]);
        for _ in 0..5 {
            record(&mut history, "k.k", &payload);
        }
        let held: Vec<u64> = history.entries_from(0).map(|e| e.offset).collect();
        assert_eq!(held, [3, 4, 5]);
        assert_eq!(history.bytes, 3 * cost);
        assert_eq!(history.resume("e1", 1), Resume::Lost, "offset 2 is gone");
        assert_eq!(history.resume("e1", 2), Resume::Recovered { from: 0 });
        assert_eq!(history.resume("e1", 4), Resume::Recovered { from: 2 });
        assert_eq!(history.resume("e1", 5), Resume::Recovered { from: 3 });
        assert_eq!(history.resume("e1", 6), Resume::Lost, "not yet given");
        assert_eq!(history.resume("e0", 4), Resume::Lost, "another epoch");
    }

    /// An archive that is never read.
    struct Unread;

    impl Archive for Unread {
        fn read(&self, _from: u64, _until: u64, _max_bytes: usize) -> ArchiveRead {
            Box::pin(std::future::pending())
        }
    }

    #[test]
    fn with_an_archive_a_resume_older_than_the_history_reads_up_to_its_first_offset() {
        let payload = "p".repeat(100);
        let bound = (3 * (100 + 3 + ENTRY_SLOT)).to_string();
        let mut history = history(&["--history-bytes", &bound]);
        history.set_archive(Rc::new(Unread));
        for _ in 0..5 {
            record(&mut history, "k.k", &payload);
        }
        assert_eq!(history.resume("e1", 0), Resume::Archived { until: 3 });
        assert_eq!(history.resume("e1", 1), Resume::Archived { until: 3 });
        assert_eq!(history.resume("e1", 2), Resume::Recovered { from: 0 });
        assert_eq!(history.resume("e1", 6), Resume::Lost, "not yet given");
        assert_eq!(history.resume("e0", 1), Resume::Lost, "another epoch");
        assert!(history.archive(1, 3, 1000).is_some());
    }

    #[test]
    fn an_event_larger_than_the_bound_breaks_the_history() {
        let mut history = history(&["--history-bytes", "400"]);
        record(&mut history, "k.k", "small");
        record(&mut history, "k.k", &"p".repeat(500));
        assert!(history.is_empty());
        assert_eq!(history.resume("e1", 1), Resume::Lost);
        assert_eq!(history.resume("e1", 2), Resume::Recovered { from: 0 });
    }

    #[test]
    fn entries_older_than_the_ttl_expire() {
        let mut history = history(&["--history-ttl", "1"]);
        record(&mut history, "k.k", "{}");
        history.expire(Instant::now() + Duration::from_secs(2));
        assert!(history.is_empty());
        assert_eq!(history.resume("e1", 0), Resume::Lost);
        assert_eq!(history.resume("e1", 1), Resume::Recovered { from: 0 });
    }

    #[test]
    fn a_resume_from_a_time_is_whole_only_when_nothing_since_was_dropped() {
        let payload = "p".repeat(100);
        let bound = (2 * (100 + 3 + ENTRY_SLOT)).to_string();
        let mut history = history(&["--history-bytes", &bound]);
        let before = history.started_at - Duration::from_secs(1);
        let same_second = UNIX_EPOCH
            + Duration::from_secs(
                history
                    .started_at
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
            );
        assert_eq!(
            history.resume_from_time(same_second),
            Resume::Recovered { from: 0 }
        );
        assert_eq!(
            history.resume_from_time(before),
            Resume::Lost,
            "before it began"
        );
        let begun = SystemTime::now();
        record(&mut history, "k.k", &payload);
        record(&mut history, "k.k", &payload);
        assert_eq!(
            history.resume_from_time(begun),
            Resume::Recovered { from: 0 }
        );
        let later = SystemTime::now() + Duration::from_secs(5);
        assert_eq!(
            history.resume_from_time(later),
            Resume::Recovered { from: 2 }
        );
        record(&mut history, "k.k", &payload);
        assert_eq!(
            history.resume_from_time(begun),
            Resume::Lost,
            "offset 1 was dropped"
        );
        assert_eq!(
            history.resume_from_time(later),
            Resume::Recovered { from: 2 }
        );
    }

    #[test]
    fn the_worst_case_covers_a_full_history_of_the_smallest_entries() {
        let limits = cli::limits_from(&["--history-bytes", "10000"]);
        let mut history = History::with_epoch("e".into(), &limits);
        for _ in 0..1000 {
            record(&mut history, "", "");
        }
        assert!(history.bytes() <= worst_case_bytes(&limits));
    }

    #[test]
    fn replayed_entries_are_the_events_they_were() {
        let mut history = history(&[]);
        let live = record(&mut history, "call.X.y", r#"{"Account-ID":"a","n":1}"#);
        let entry = history.entries_from(0).next().unwrap();
        assert!(entry.visible_to("a") && entry.visible_to("*") && !entry.visible_to("b"));
        let replayed = entry.to_event(history.epoch());
        assert_eq!(
            (
                &replayed.routing_key,
                &replayed.payload,
                &replayed.account,
                &replayed.json,
                &replayed.position
            ),
            (
                &live.routing_key,
                &live.payload,
                &live.account,
                &live.json,
                &live.position
            )
        );
    }
}
