//! The source supervisor: keeps one broker connection going, for MQTT and AMQP alike. It runs
//! a connection from connect to loss, marks the source disconnected, classifies how the
//! connection ended, backs off (capped, jittered, reset after a connection that lasted) and
//! logs the failure rate-limited. It also owns the deadlines of a connection's steps and the
//! rate-limited lines every broker source writes (connected, an oversized message dropped, a
//! stale publish dropped).

use std::fmt;
use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

use futures_lite::future;
use smol::Timer;

use crate::logging::{RateLimit, held_back};
use crate::metrics::{DropReason, Metrics};
use crate::rng::Rng;
use crate::source::SourceStatus;

/// The first delay of a [`Backoff`].
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// The longest delay of a [`Backoff`].
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A connection that lasted this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// A queued publish not sent within this long (the broker was away) is dropped, not sent late.
const PUBLISH_TTL: Duration = Duration::from_secs(30);

/// How one connection ended.
pub(crate) enum Failure {
    /// No connection was established.
    Connect(String),
    /// The broker refused us; the text follows "refused " (whom, and why).
    Refused(String),
    /// Connected, but what the source needs could not be set up as configured.
    Setup(String),
    /// An established connection was lost.
    Lost(String),
}

/// A broker the supervisor keeps a connection to.
pub(crate) trait Broker {
    /// One connection, from connect to loss. It marks the source connected once it is up;
    /// the supervisor marks it disconnected when this returns.
    async fn connection(&mut self) -> Failure;

    /// Called after each loss, before the backoff (to take back what the connection left
    /// unacknowledged, for example).
    fn after_loss(&mut self) {}

    /// The source's rate-limited lines.
    fn logs(&mut self) -> &mut Logs;
}

/// Runs `broker`'s connections one after another, forever. `address` names the broker in
/// the log (never with a password).
pub(crate) async fn supervise(broker: &mut impl Broker, status: &SourceStatus, address: &str) {
    let mut backoff = Backoff::new(Rng::from_clock());
    loop {
        let began = Instant::now();
        let failure = broker.connection().await;
        let was_connected = status.connected();
        status.set_connected(false);
        broker.after_loss();
        if was_connected && began.elapsed() >= STABLE_AFTER {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        broker.logs().failure(address, failure, delay);
        Timer::after(delay).await;
    }
}

/// Capped exponential backoff with ±25 % jitter, for the brokers' reconnects: 250 ms doubling
/// to 10 s.
pub(crate) struct Backoff {
    next: Duration,
    rng: Rng,
}

impl Backoff {
    pub(crate) fn new(rng: Rng) -> Backoff {
        Backoff {
            next: BACKOFF_MIN,
            rng,
        }
    }

    /// Back to the shortest delay (after a connection that lasted).
    pub(crate) fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    /// The delay before the next attempt; each call doubles the base, up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(BACKOFF_MAX);
        base.mul_f64(0.75 + 0.5 * self.rng.unit())
    }
}

/// Rate limits for the lines a broker source can repeat, each line starting with the source's
/// name (`mqtt: `, `amqp: `).
pub(crate) struct Logs {
    source: &'static str,
    failed: RateLimit,
    lost: RateLimit,
    connected: RateLimit,
    too_large: RateLimit,
    expired: RateLimit,
}

impl Logs {
    pub(crate) fn new(source: &'static str) -> Logs {
        Logs {
            source,
            // A broker that refuses us refuses every attempt: once a minute is enough.
            failed: RateLimit::new(Duration::from_secs(60)),
            lost: RateLimit::new(Duration::from_secs(10)),
            connected: RateLimit::new(Duration::from_secs(10)),
            too_large: RateLimit::new(Duration::from_secs(10)),
            expired: RateLimit::new(Duration::from_secs(10)),
        }
    }

    /// How a connection ended, and when the next attempt is.
    fn failure(&mut self, address: &str, failure: Failure, delay: Duration) {
        let source = self.source;
        let ms = delay.as_millis();
        match failure {
            Failure::Lost(reason) => {
                if let Some(held) = self.lost.check() {
                    warn!(
                        "{source}: connection to {address} lost: {reason}; reconnecting in {ms} ms{}",
                        held_back(held)
                    );
                }
            }
            Failure::Connect(reason) => {
                if let Some(held) = self.failed.check() {
                    warn!(
                        "{source}: cannot connect to {address}: {reason}; retrying in {ms} ms{}",
                        held_back(held)
                    );
                }
            }
            Failure::Refused(what) => {
                if let Some(held) = self.failed.check() {
                    error!(
                        "{source}: broker {address} refused {what}; retrying in {ms} ms{}",
                        held_back(held)
                    );
                }
            }
            Failure::Setup(reason) => {
                if let Some(held) = self.failed.check() {
                    error!(
                        "{source}: {address}: {reason}; retrying in {ms} ms{}",
                        held_back(held)
                    );
                }
            }
        }
    }

    /// The connection is up: `what` says to where and how.
    pub(crate) fn connected(&mut self, what: fmt::Arguments<'_>) {
        if let Some(held) = self.connected.check() {
            info!("{}: connected to {what}{}", self.source, held_back(held));
        }
    }

    /// Counts and logs a message of `size` bytes on `key` dropped for being over `max`.
    pub(crate) fn too_large(
        &mut self,
        metrics: &Metrics,
        size: impl fmt::Display,
        key: &str,
        max: usize,
    ) {
        metrics.dropped(DropReason::TooLarge).inc();
        if let Some(held) = self.too_large.check() {
            warn!(
                "{}: dropped a {size} byte message on '{key}' (larger than the maximum {max} bytes){}",
                self.source,
                held_back(held)
            );
        }
    }

    /// Whether a publish to `to`, queued at `queued`, waited too long (the broker was away) to
    /// be sent now; if so it is logged as dropped.
    pub(crate) fn stale(&mut self, queued: Instant, to: &str) -> bool {
        if queued.elapsed() <= PUBLISH_TTL {
            return false;
        }
        if let Some(held) = self.expired.check() {
            warn!(
                "{}: dropped a publish to '{to}' queued while the broker was away{}",
                self.source,
                held_back(held)
            );
        }
        true
    }
}

/// The error of a step that did not finish by its deadline: "`what` timed out".
#[derive(Debug)]
pub(crate) struct TimedOut(&'static str);

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} timed out", self.0)
    }
}

impl From<TimedOut> for io::Error {
    fn from(timed_out: TimedOut) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, timed_out.to_string())
    }
}

impl From<TimedOut> for String {
    fn from(timed_out: TimedOut) -> String {
        timed_out.to_string()
    }
}

/// `work`, or an error naming `what` once `deadline` has passed.
pub(crate) async fn within<T, E: From<TimedOut>>(
    deadline: Instant,
    what: &'static str,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    future::or(work, async {
        Timer::at(deadline).await;
        Err(TimedOut(what).into())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_cap_with_jitter() {
        let mut b = Backoff::new(Rng::new(12345));
        let mut bases = Vec::new();
        for _ in 0..10 {
            let base = b.next;
            let d = b.next_delay();
            assert!(
                d >= base.mul_f64(0.75) && d <= base.mul_f64(1.25),
                "{d:?} vs {base:?}"
            );
            bases.push(base);
        }
        assert_eq!(bases[0], BACKOFF_MIN);
        assert_eq!(bases[1], BACKOFF_MIN * 2);
        assert_eq!(*bases.last().unwrap(), BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next, BACKOFF_MIN);
    }

    #[test]
    fn within_names_the_step_that_timed_out() {
        let late = Instant::now();
        let io: io::Result<()> = smol::block_on(within(late, "connecting", future::pending()));
        let io = io.unwrap_err();
        assert_eq!(io.kind(), io::ErrorKind::TimedOut);
        assert_eq!(io.to_string(), "connecting timed out");
        let text: Result<(), String> = smol::block_on(within(late, "acking", future::pending()));
        assert_eq!(text.unwrap_err(), "acking timed out");
        let soon = Instant::now() + Duration::from_secs(5);
        let done: Result<u8, String> = smol::block_on(within(soon, "x", async { Ok(7) }));
        assert_eq!(done, Ok(7));
    }
}
