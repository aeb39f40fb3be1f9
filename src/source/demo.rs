//! The demo source: the simulated PBX (`sim`) feeding the bridge with no broker, so a newcomer
//! sees live calls at once (`--demo`). It speaks the Kazoo profile, the shape every dialect and
//! the live state understand, and paces the simulator's messages in real time.

use std::rc::Rc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use smol::Timer;

use crate::event::Event;
use crate::sim::{Profile, Simulator};
use crate::source::{EventSink, SourceStatus, room};

/// The Kazoo `Account-ID` of every demo call. A credential scoped to this account sees the
/// demo's calls; a `*` credential sees them too.
pub const DEMO_ACCOUNT: &str = "de0de0de0de0de0de0de0de0de0de0de";

/// A rate at which a dashboard shows a handful of live calls at once (about seven on average:
/// calls last from under a second to about 25 seconds).
pub const DEFAULT_CALLS_PER_SEC: f64 = 0.5;

/// Feeds simulated Kazoo call events to `sink`, starting `calls_per_sec` calls per second on
/// average, forever. The demo has no broker to lose, so it reports itself connected at once.
/// With a rate that is not positive no call ever starts, and the future stays pending.
pub async fn run(status: Rc<SourceStatus>, sink: EventSink, calls_per_sec: f64) {
    status.set_connected(true);
    let started = Instant::now();
    let wall = SystemTime::now();
    // A different run each start: the clock's nanoseconds are seed enough for a demo.
    let seed = wall
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    let mut sim = Simulator::new(Profile::Kazoo, seed, calls_per_sec, wall);
    sim.set_account(DEMO_ACCOUNT);
    info!("demo source: simulated Kazoo PBX, {calls_per_sec} calls/s, account {DEMO_ACCOUNT}");
    for (offset, msg) in sim {
        // Sleeping until an absolute instant keeps the pace from drifting with delivery time.
        let Some(due) = started.checked_add(offset) else {
            break;
        };
        Timer::at(due).await;
        room(&*sink).await;
        sink.take(Event::new(msg.routing_key, msg.payload));
    }
    futures_lite::future::pending::<()>().await;
}
