//! `callwire simulate`: publishes the simulator's call lifecycles (`sim`) to a broker at a
//! steady rate, for demos and load.
//!
//! Calls start for the run's duration; the calls still running then finish, so every call that
//! starts also ends. The run succeeds only when the broker has taken every message. That is
//! seen by subscribing to our own topics (MQTT) or exchange (AMQP) and waiting for each message
//! to come back: the sources' publishers say when a message is queued, not when the broker has
//! it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use smol::{LocalExecutor, Timer};

use crate::cli::{SimulateConfig, SimulateTarget};
use crate::event::Event;
use crate::metrics::Metrics;
use crate::rng::Rng;
use crate::sim::{MQTT_PREFIX, Profile, SimMessage, Simulator};
use crate::source::amqp::{self, AmqpPublisher};
use crate::source::mqtt::{self, MqttPublisher};
use crate::source::{EventSink, SourceKind, SourceStatus};

/// How long the broker has to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one message may wait for room in the publish queue, or for a lost connection to
/// come back, before the run gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the broker has, after the last message, to take every message still on its way.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Sources report their state in flags, not by waking anyone: they are polled this often.
const POLL: Duration = Duration::from_millis(10);

/// Runs the simulation to its end: connects, publishes every message in time, waits until the
/// broker has them all, and logs a summary. Exit code 0 when every message reached the broker,
/// 1 with a one-line reason otherwise.
// Never inlined: in `main` its executor and futures would take stack that the server, which
// runs under `main`, keeps resident (see cli::parse).
#[inline(never)]
pub fn run(config: SimulateConfig) -> ExitCode {
    let seed = config.seed.unwrap_or_else(|| Rng::from_clock().next_u64());
    let profile = config.profile.as_str();
    // Logged before anything can fail, so that any run can be repeated with `--seed`.
    info!(
        "simulate: profile {profile}, {} calls/s for {} s, seed {seed}",
        config.calls_per_sec,
        config.duration.as_secs_f64()
    );
    let executor = LocalExecutor::new();
    match smol::block_on(executor.run(simulate(&executor, config, seed))) {
        Ok(done) => {
            info!(
                "simulate: {} calls started, {} messages published (seed {seed}, profile {profile})",
                done.calls, done.messages
            );
            ExitCode::SUCCESS
        }
        Err(reason) => {
            error!("simulate: {reason} (seed {seed}, profile {profile})");
            ExitCode::FAILURE
        }
    }
}

/// What a successful run did.
#[derive(Default)]
struct Done {
    calls: u64,
    messages: u64,
}

/// Connects, publishes the whole run in time, and waits until the broker has every message.
async fn simulate(
    executor: &LocalExecutor<'_>,
    config: SimulateConfig,
    seed: u64,
) -> Result<Done, String> {
    let unconfirmed = Unconfirmed::default();
    let metrics = Rc::new(Metrics::default());
    let (publisher, status) = match config.target {
        SimulateTarget::Mqtt(mut options) => {
            options.topics = vec![own_topics(config.profile)];
            let status = Rc::new(SourceStatus::new(SourceKind::Mqtt));
            let echoes = unconfirmed.confirm_echoes();
            let (publisher, driver) = mqtt::start(options, status.clone(), metrics, echoes);
            executor.spawn(driver).detach();
            (Publisher::Mqtt(publisher), status)
        }
        SimulateTarget::Amqp(mut options) => {
            // Every key on the exchange: ours are told from others' traffic by payload.
            options.bindings = vec!["#".to_owned()];
            let status = Rc::new(SourceStatus::new(SourceKind::Amqp));
            let echoes = unconfirmed.confirm_echoes();
            let (publisher, _, driver) = amqp::start(options, status.clone(), metrics, echoes);
            executor.spawn(driver).detach();
            (Publisher::Amqp(publisher), status)
        }
    };
    // Both sources subscribe before they report connected, so no echo can be missed.
    if !wait_until(CONNECT_TIMEOUT, || status.connected()).await {
        return Err(format!(
            "no connection to the {} broker within {} s",
            status.kind.as_str(),
            CONNECT_TIMEOUT.as_secs()
        ));
    }

    let started = Instant::now();
    let mut sim = Simulator::new(
        config.profile,
        seed,
        config.calls_per_sec,
        SystemTime::now(),
    );
    sim.stop_starting_at(config.duration);
    let mut done = Done::default();
    for (offset, msg) in sim {
        // Sleeping until an absolute instant keeps the rate steady whatever publishing costs;
        // an offset past what the clock can hold is never due.
        started
            .checked_add(offset)
            .map_or_else(Timer::never, Timer::at)
            .await;
        unconfirmed.expect(&msg.payload);
        publisher.publish(&msg).await?;
        done.messages += 1;
        if starts_call(&msg) {
            done.calls += 1;
        }
    }

    if !wait_until(DRAIN_TIMEOUT, || unconfirmed.is_empty()).await {
        return Err(format!(
            "{} of {} messages not seen back from the broker within {} s",
            unconfirmed.count(),
            done.messages,
            DRAIN_TIMEOUT.as_secs()
        ));
    }
    Ok(done)
}

/// The connection the messages go out on.
enum Publisher {
    Mqtt(MqttPublisher),
    Amqp(AmqpPublisher),
}

impl Publisher {
    /// Queues one message, waiting while the queue is full or the connection is being
    /// restored.
    async fn publish(&self, msg: &SimMessage) -> Result<(), String> {
        let give_up = Instant::now() + STALL_TIMEOUT;
        loop {
            let refused = match self {
                Publisher::Mqtt(mqtt) => match mqtt.publish(&msg.mqtt_topic, msg.payload.clone()) {
                    Ok(()) => return Ok(()),
                    Err(err @ (mqtt::PublishError::Full | mqtt::PublishError::Disconnected)) => {
                        err.to_string()
                    }
                    Err(err) => return Err(format!("'{}': {err}", msg.mqtt_topic)),
                },
                Publisher::Amqp(amqp) => {
                    match amqp.publish(&msg.routing_key, msg.payload.clone()) {
                        Ok(()) => return Ok(()),
                        Err(
                            err @ (amqp::PublishError::Full | amqp::PublishError::Disconnected),
                        ) => err.to_string(),
                        Err(err) => return Err(format!("'{}': {err}", msg.routing_key)),
                    }
                }
            };
            if Instant::now() >= give_up {
                return Err(format!(
                    "gave up after {} s: {refused}",
                    STALL_TIMEOUT.as_secs()
                ));
            }
            // The queue empties as the connection sends; give it that time.
            Timer::after(POLL).await;
        }
    }
}

/// The MQTT filter covering every topic `profile` publishes to: the simulator's prefix, or the
/// AMI bridge's own `asterisk/call/`.
fn own_topics(profile: Profile) -> String {
    match profile {
        Profile::AsteriskMqtt => "asterisk/call/#".to_owned(),
        _ => format!("{MQTT_PREFIX}#"),
    }
}

/// Whether the message starts a call. Every profile's routing key carries the event name as a
/// segment, and CHANNEL_CREATE, StasisStart and ringing are the starts (events.md).
fn starts_call(msg: &SimMessage) -> bool {
    msg.routing_key
        .split('.')
        .any(|segment| matches!(segment, "CHANNEL_CREATE" | "StasisStart" | "ringing"))
}

/// Messages published but not yet seen at the broker, counted by payload: each payload holds a
/// call id and a time, so the broker's other traffic does not match ours.
#[derive(Clone, Default)]
struct Unconfirmed(Rc<RefCell<HashMap<Bytes, u32>>>);

impl Unconfirmed {
    fn expect(&self, payload: &Bytes) {
        *self.0.borrow_mut().entry(payload.clone()).or_default() += 1;
    }

    /// A sink for the source that counts each of our messages coming back as taken. A copy
    /// the broker sends twice (QoS 1 is at least once) finds nothing left to confirm.
    fn confirm_echoes(&self) -> EventSink {
        let unconfirmed = self.clone();
        Rc::new(move |event: Event| {
            let mut waiting = unconfirmed.0.borrow_mut();
            if let Some(count) = waiting.get_mut(&event.payload) {
                *count -= 1;
                if *count == 0 {
                    waiting.remove(&event.payload);
                }
            }
        })
    }

    fn count(&self) -> u32 {
        self.0.borrow().values().sum()
    }

    fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }
}

/// Polls `done` until it holds; `false` if `timeout` passes first.
async fn wait_until(timeout: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        Timer::after(POLL).await;
    }
    true
}
