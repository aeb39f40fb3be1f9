//! The saved state (delivery.md, "Restarts"): what `--state-dir` keeps across a restart, and
//! the rules by which a start takes it back.
//!
//! One file, `<dir>/state.json`, always written whole: to `state.json.tmp`, fsynced, renamed
//! over the old one, and the directory fsynced, so a crash at any moment leaves the old file or
//! the new one, never a part. Two kinds:
//!
//! - `shutdown`, written by SIGTERM after the source has stopped taking events and the clients
//!   have gone: the epoch, the next offset, the history and the live calls. A start that finds
//!   one saved within `--history-ttl` goes on with the same epoch and offsets, so clients
//!   resume (`recovered: true`, `confirm_history`).
//! - `timed`, written every `--state-interval` when the live calls changed, and once at
//!   start-up: the live calls only. A start that finds one (callwire crashed, or was killed)
//!   restores the calls under a new epoch, so every client is told to resync.
//!
//! The start-up write is what makes a `shutdown` file good for one start only: a crash after
//! it must not reuse an epoch whose later events were never saved.
//!
//! Bounds: the file holds at most the history and the live calls, which the budget counts
//! (`budget::Part::History`, `Part::LiveCalls`); encoded, at most `max_file_bytes`. A larger
//! file, or one that does not parse or describes impossible offsets, is refused with one log
//! line, kept aside as `state.json.refused`, and the start goes on empty. Saving streams
//! through a buffer of `WRITE_BUFFER` bytes (`Part::State`); nothing is copied whole.

use std::borrow::Cow;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::encoding::{base64, from_nanos, nanos};
use crate::history::{self, History, SavedEntry};
use crate::limits::Limits;
use crate::live::LiveState;
use crate::live::saved::SavedCall;
use crate::metrics::Metrics;

/// `--state-dir` and `--state-interval`.
#[derive(Clone, Debug)]
pub struct StateConfig {
    pub dir: PathBuf,
    /// How often the live calls are saved when they changed.
    pub interval: Duration,
}

/// The file's name in `--state-dir`.
pub const FILE_NAME: &str = "state.json";
/// The version of the file's layout; another is refused.
const FORMAT: u32 = 1;
/// The buffer a save streams through.
pub const WRITE_BUFFER: usize = 64 * 1024;

/// What a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    /// Positions, history and calls, at a graceful stop.
    Shutdown,
    /// The live calls only.
    Timed,
}

/// The most bytes a state file saved under `limits` may take: its history and live calls, each
/// encoded (payloads in base64, a third more; names and numbers around each) in at most twice
/// what it holds in memory. A larger file was not saved under these limits: it is refused.
pub fn max_file_bytes(limits: &Limits) -> usize {
    let held = history::worst_case_bytes(limits)
        + LiveState::bound(limits.max_calls, limits.events_per_call);
    2 * held + WRITE_BUFFER
}

/// The history and the live calls to start with: restored from `--state-dir` as its file
/// allows, else empty under a new epoch. Writes the `timed` file that ends a `shutdown` one's
/// use. Errs only when the directory cannot be made or written (a start-up error).
pub fn start(
    config: Option<&StateConfig>,
    limits: &Limits,
    metrics: &Rc<Metrics>,
) -> Result<(History, LiveState), String> {
    let fresh_live = || LiveState::new(limits.max_calls, limits.events_per_call, metrics.clone());
    let Some(config) = config else {
        return Ok((History::new(limits), fresh_live()));
    };
    let dir = &config.dir;
    // Events hold phone numbers and names: the directory and the file are the owner's alone.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("--state-dir {}: {e}", dir.display()))?;
    let path = dir.join(FILE_NAME);
    let (history, live) = match read(&path, limits) {
        Ok(None) => {
            let history = History::new(limits);
            info!(
                "state: nothing saved in {}: epoch {}",
                dir.display(),
                history.epoch()
            );
            (history, fresh_live())
        }
        Ok(Some(saved)) => restore(saved, limits, fresh_live()).unwrap_or_else(|reason| {
            refuse(&path, &reason);
            (History::new(limits), fresh_live())
        }),
        Err(reason) => {
            refuse(&path, &reason);
            (History::new(limits), fresh_live())
        }
    };
    save(dir, None, &live)
        .map_err(|e| format!("--state-dir {}: cannot write: {e}", dir.display()))?;
    Ok((history, live))
}

/// Logs why the file was refused and keeps it aside for a look.
fn refuse(path: &Path, reason: &str) {
    let aside = path.with_extension("json.refused");
    let kept = match fs::rename(path, &aside) {
        Ok(()) => format!("kept as {}", aside.display()),
        Err(e) => format!("could not be kept aside: {e}"),
    };
    warn!(
        "state: {} refused ({reason}); starting with no history and no live calls ({kept})",
        path.display()
    );
}

/// The file, parsed; `None` when there is none. Refused when larger than these limits can
/// have saved, unreadable, or not a callwire state file of this format.
fn read(path: &Path, limits: &Limits) -> Result<Option<StateIn>, String> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let most = max_file_bytes(limits);
    if size > most as u64 {
        return Err(format!(
            "{size} bytes, more than the {most} that these limits can have saved"
        ));
    }
    let saved: StateIn = serde_json::from_reader(BufReader::with_capacity(WRITE_BUFFER, file))
        .map_err(|e| format!("not a callwire state file: {e}"))?;
    if saved.format != FORMAT {
        return Err(format!(
            "format {}, this callwire reads {FORMAT}",
            saved.format
        ));
    }
    Ok(Some(saved))
}

/// Takes a parsed file back by delivery.md's rules; errs, with the reason, on what no save
/// writes (impossible offsets, unknown call states, a call twice).
fn restore(
    saved: StateIn,
    limits: &Limits,
    mut live: LiveState,
) -> Result<(History, LiveState), String> {
    let saved_at = from_nanos(saved.saved_at);
    let age = SystemTime::now()
        .duration_since(saved_at)
        .map_err(|_| "saved in the future: the clock went back".to_owned())?;
    if age > limits.history_ttl {
        let history = History::new(limits);
        warn!(
            "state: the state saved {} s ago is older than --history-ttl ({} s): no live calls \
             restored, new epoch {}",
            age.as_secs(),
            limits.history_ttl.as_secs(),
            history.epoch()
        );
        return Ok((history, live));
    }
    let calls = saved.calls.len();
    for call in saved.calls {
        live.restore(call)?;
    }
    let history = match (saved.kind, saved.positions) {
        (Kind::Shutdown, Some(positions)) => {
            let entries = positions.events.into_iter().map(|event| SavedEntry {
                offset: event.offset,
                routing_key: event.routing_key.into(),
                account: event.account.map(Into::into),
                payload: event.payload.into_owned().into(),
                received_at: from_nanos(event.received_at),
            });
            let history = History::restored(
                limits,
                positions.epoch.into(),
                positions.next_offset,
                from_nanos(positions.started_at),
                positions.dropped_through.map(from_nanos),
                entries,
            )?;
            info!(
                "state: resumed epoch {} at offset {} with {} event(s) in the history and {} \
                 live call(s), saved at SIGTERM {} ms before",
                history.epoch(),
                history.last_offset(),
                history.len(),
                live.len(),
                age.as_millis()
            );
            history
        }
        (Kind::Shutdown, None) => return Err("a shutdown state without positions".into()),
        (Kind::Timed, _) => {
            let history = History::new(limits);
            warn!(
                "state: {calls} live call(s) restored from the timed save of {} ms before; no \
                 positions were saved (callwire did not stop cleanly): new epoch {}, clients \
                 resync",
                age.as_millis(),
                history.epoch()
            );
            history
        }
    };
    Ok((history, live))
}

/// Saves the live calls every `--state-interval` when they changed. Never finishes.
pub async fn save_on_interval(app: Rc<App>, config: StateConfig) {
    let mut saved = app.live.borrow().generation();
    loop {
        smol::Timer::after(config.interval).await;
        let live = app.live.borrow();
        if live.generation() == saved {
            continue;
        }
        match save(&config.dir, None, &live) {
            Ok(bytes) => {
                saved = live.generation();
                debug!("state: saved {} live call(s), {bytes} bytes", live.len());
            }
            Err(e) => warn!(
                "state: could not save the live calls in {}: {e}",
                config.dir.display()
            ),
        }
    }
}

/// The SIGTERM save: positions, history and live calls. Call it once the source takes no more
/// events, as the last thing before exiting.
pub fn save_at_shutdown(app: &App, config: &StateConfig) {
    let history = app.history.borrow();
    let live = app.live.borrow();
    match save(&config.dir, Some(&history), &live) {
        Ok(bytes) => info!(
            "state: saved epoch {} up to offset {}, {} event(s) and {} live call(s) in {} \
             ({bytes} bytes)",
            history.epoch(),
            history.last_offset(),
            history.len(),
            live.len(),
            config.dir.join(FILE_NAME).display()
        ),
        Err(e) => error!(
            "state: could not save in {}: {e}; the next start begins a new epoch",
            config.dir.display()
        ),
    }
}

/// Writes the file whole: to a temporary file, fsynced, renamed over the old one, the
/// directory fsynced. With `history`, a `shutdown` file; without, a `timed` one. Returns the
/// bytes written.
fn save(dir: &Path, history: Option<&History>, live: &LiveState) -> io::Result<u64> {
    let temp = dir.join(format!("{FILE_NAME}.tmp"));
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
    write(&mut out, history, live).map_err(io::Error::other)?;
    out.flush()?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let bytes = file.metadata()?.len();
    drop(file);
    fs::rename(&temp, dir.join(FILE_NAME))?;
    File::open(dir)?.sync_all()?;
    Ok(bytes)
}

/// The file's JSON, streamed: the history's events and the calls are serialised one by one
/// from where they live.
fn write(
    out: &mut impl Write,
    history: Option<&History>,
    live: &LiveState,
) -> serde_json::Result<()> {
    let mut serializer = serde_json::Serializer::new(out);
    let mut state = serializer.serialize_struct("State", 5)?;
    state.serialize_field("format", &FORMAT)?;
    let kind = match history {
        Some(_) => Kind::Shutdown,
        None => Kind::Timed,
    };
    state.serialize_field("kind", &kind)?;
    state.serialize_field("saved_at", &nanos(SystemTime::now()))?;
    state.serialize_field("positions", &history.map(PositionsOut))?;
    state.serialize_field("calls", &CallsOut(live))?;
    state.end()
}

/// The history as the file keeps it.
struct PositionsOut<'a>(&'a History);

impl Serialize for PositionsOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let history = self.0;
        let mut positions = serializer.serialize_struct("Positions", 5)?;
        positions.serialize_field("epoch", &**history.epoch())?;
        positions.serialize_field("next_offset", &history.next_offset())?;
        positions.serialize_field("started_at", &nanos(history.started_at()))?;
        positions.serialize_field("dropped_through", &history.dropped_through().map(nanos))?;
        positions.serialize_field("events", &EventsOut(history))?;
        positions.end()
    }
}

struct EventsOut<'a>(&'a History);

impl Serialize for EventsOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.entries_from(0).map(|entry| EventOut {
            offset: entry.offset,
            routing_key: &entry.routing_key,
            account: entry.account.as_deref(),
            received_at: nanos(entry.received_at()),
            payload: &entry.payload,
        }))
    }
}

#[derive(Serialize)]
struct EventOut<'a> {
    offset: u64,
    routing_key: &'a str,
    account: Option<&'a str>,
    received_at: u64,
    #[serde(serialize_with = "base64::serialize")]
    payload: &'a [u8],
}

struct CallsOut<'a>(&'a LiveState);

impl Serialize for CallsOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.saved())
    }
}

/// The file as read back.
#[derive(Deserialize)]
struct StateIn {
    format: u32,
    kind: Kind,
    saved_at: u64,
    positions: Option<PositionsIn>,
    calls: Vec<SavedCall<'static>>,
}

#[derive(Deserialize)]
struct PositionsIn {
    epoch: String,
    next_offset: u64,
    started_at: u64,
    dropped_through: Option<u64>,
    events: Vec<EventIn>,
}

#[derive(Deserialize)]
struct EventIn {
    offset: u64,
    routing_key: String,
    account: Option<String>,
    received_at: u64,
    #[serde(with = "base64")]
    payload: Cow<'static, [u8]>,
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::cli::limits_from;
    use crate::event::Event;

    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Dir {
            let path = std::env::temp_dir().join(format!(
                "callwire-state-test-{}-{}",
                std::process::id(),
                crate::rng::Rng::from_clock().next_u64()
            ));
            Dir(path)
        }

        fn config(&self) -> StateConfig {
            StateConfig {
                dir: self.0.clone(),
                interval: Duration::from_secs(10),
            }
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn kazoo(name: &str, id: &str) -> Event {
        let payload = json!({"Event-Name": name, "Call-ID": id, "Account-ID": "acc",
            "Caller-ID-Number": "201", "Callee-ID-Number": "\"202\"\u{1}"});
        let mut event = Event::new(
            format!("call.{name}.{id}"),
            Bytes::from(payload.to_string()),
        );
        event.account = Some("acc".into());
        event
    }

    /// A history and a table that saw `events`.
    fn fed(limits: &Limits, events: Vec<Event>) -> (History, LiveState) {
        let mut history = History::new(limits);
        let mut live = LiveState::new(limits.max_calls, limits.events_per_call, Rc::default());
        for mut event in events {
            history.record(&mut event);
            live.apply(&event);
        }
        (history, live)
    }

    fn listing(live: &LiveState) -> Vec<serde_json::Value> {
        live.calls("*").map(|call| call.to_json()).collect()
    }

    #[test]
    fn a_shutdown_save_resumes_its_epoch_once_and_a_timed_save_restores_calls_only() {
        let dir = Dir::new();
        let limits = limits_from(&[]);
        let events = vec![
            kazoo("CHANNEL_CREATE", "a"),
            kazoo("CHANNEL_CREATE", "b"),
            kazoo("CHANNEL_ANSWER", "a"),
            kazoo("CHANNEL_DESTROY", "b"),
        ];
        let (history, live) = fed(&limits, events);
        fs::create_dir_all(&dir.0).unwrap();
        save(&dir.0, Some(&history), &live).unwrap();
        assert!(!dir.0.join("state.json.tmp").exists());

        let (resumed, restored) = start(Some(&dir.config()), &limits, &Rc::default()).unwrap();
        assert_eq!(resumed.epoch(), history.epoch());
        assert_eq!(resumed.last_offset(), 4);
        let replay = |h: &History| -> Vec<(u64, Box<[u8]>)> {
            h.entries_from(0)
                .map(|e| (e.offset, e.payload.clone()))
                .collect()
        };
        assert_eq!(replay(&resumed), replay(&history));
        assert_eq!(
            resumed.resume(history.epoch(), 2),
            history.resume(history.epoch(), 2)
        );
        assert_eq!(listing(&restored), listing(&live));
        assert_eq!(restored.len(), 1);
        let before = live.calls("*").next().unwrap();
        let after = restored.calls("*").next().unwrap();
        let recent = |c: &crate::live::Call| -> Vec<(Box<str>, Bytes, SystemTime)> {
            c.recent_events()
                .map(|r| (r.routing_key.clone(), r.payload.clone(), r.received_at))
                .collect()
        };
        assert_eq!(recent(after), recent(before));

        // The start consumed the shutdown save: a crash now gives a new epoch, the calls kept.
        let (crashed, calls) = start(Some(&dir.config()), &limits, &Rc::default()).unwrap();
        assert_ne!(crashed.epoch(), history.epoch());
        assert_eq!(crashed.last_offset(), 0);
        assert_eq!(listing(&calls), listing(&live));
    }

    #[test]
    fn a_corrupt_or_oversized_file_is_refused_and_kept_aside() {
        let dir = Dir::new();
        let limits = limits_from(&["--max-calls", "1", "--history-bytes", "1000"]);
        fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join(FILE_NAME);
        for text in [
            "{\"format\": 1, \"kind\": \"shutdown\"".to_owned(),
            json!({"format": 2, "kind": "timed", "saved_at": nanos(SystemTime::now()),
                "positions": null, "calls": []})
            .to_string(),
            " ".repeat(max_file_bytes(&limits) + 1),
        ] {
            fs::write(&path, &text).unwrap();
            let (history, live) = start(Some(&dir.config()), &limits, &Rc::default()).unwrap();
            assert_eq!((history.last_offset(), live.len()), (0, 0));
            assert_eq!(
                fs::read_to_string(dir.0.join("state.json.refused")).unwrap(),
                text
            );
        }
    }

    #[test]
    fn offsets_out_of_order_refuse_the_file() {
        let dir = Dir::new();
        let limits = limits_from(&[]);
        let (history, live) = fed(&limits, vec![kazoo("CHANNEL_CREATE", "a")]);
        fs::create_dir_all(&dir.0).unwrap();
        save(&dir.0, Some(&history), &live).unwrap();
        let path = dir.0.join(FILE_NAME);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(
            &path,
            text.replace("\"next_offset\":2", "\"next_offset\":1"),
        )
        .unwrap();
        let (resumed, live) = start(Some(&dir.config()), &limits, &Rc::default()).unwrap();
        assert_ne!(resumed.epoch(), history.epoch());
        assert_eq!(live.len(), 0, "nothing taken from a refused file");
    }

    #[test]
    fn a_state_older_than_the_history_ttl_starts_a_new_epoch_without_calls() {
        let dir = Dir::new();
        let limits = limits_from(&["--history-ttl", "60"]);
        let (history, live) = fed(&limits, vec![kazoo("CHANNEL_CREATE", "a")]);
        fs::create_dir_all(&dir.0).unwrap();
        save(&dir.0, Some(&history), &live).unwrap();
        let path = dir.0.join(FILE_NAME);
        let mut saved: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        saved["saved_at"] = json!(nanos(SystemTime::now() - Duration::from_secs(61)));
        fs::write(&path, saved.to_string()).unwrap();
        let (resumed, live) = start(Some(&dir.config()), &limits, &Rc::default()).unwrap();
        assert_ne!(resumed.epoch(), history.epoch());
        assert_eq!(live.len(), 0);
    }

    #[test]
    fn a_full_history_saves_within_the_file_bound() {
        let dir = Dir::new();
        let limits = limits_from(&["--history-bytes", "20000", "--max-calls", "4"]);
        let events: Vec<Event> = (0..200)
            .map(|n| kazoo("CHANNEL_CREATE", &format!("call-{n}")))
            .collect();
        let (history, live) = fed(&limits, events);
        fs::create_dir_all(&dir.0).unwrap();
        let bytes = save(&dir.0, Some(&history), &live).unwrap();
        assert!(bytes as usize <= max_file_bytes(&limits), "{bytes}");
        let (resumed, _) = start(Some(&dir.config()), &limits, &Rc::default()).unwrap();
        assert_eq!(resumed.len(), history.len());
    }
}
