//! Fanning an event out allocates nothing per client: the hub's `publish`, and each client
//! writing its frames to its socket as a connection does (`text_frames`, then taking them off
//! its queue), cost the same allocations for 400 clients as for 4 (the event's frame, rendered
//! once and shared), watched by a counting global allocator.

mod counting_alloc;

use std::cell::RefCell;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use callwire::auth::Auth;
use callwire::cli;
use callwire::dialect::Session;
use callwire::dialect::blackhole::{BlackholeSession, Subscriptions};
use callwire::dialect_label::Dialect;
use callwire::event::Event;
use callwire::history::History;
use callwire::hub::{Client, Hub};
use callwire::limits::BytePool;
use callwire::metrics::Metrics;
use callwire::text_frames::TextWriter;
use counting_alloc::allocations_during;

/// A hub with `count` Blackhole clients subscribed to `call.#`.
fn subscribed(count: usize) -> (Hub, Vec<Rc<Client>>) {
    let Ok(cli::Run::Serve(config)) = cli::parse(&["callwire".to_owned()]) else {
        panic!("the defaults parse");
    };
    let hub = Hub::new(config.limits, Rc::new(Metrics::default()));
    let auth = Rc::new(Auth::open());
    let history = Rc::new(RefCell::new(History::new(&config.limits)));
    let pool = BytePool::for_interest(&config.limits);
    let clients = (0..count)
        .map(|_| {
            let subscriptions = Rc::new(RefCell::new(Subscriptions::new(1, pool.share())));
            let client = hub
                .register(Dialect::Blackhole, subscriptions.clone())
                .unwrap();
            let mut session =
                BlackholeSession::new(client.clone(), subscriptions, auth.clone(), history.clone());
            let mut replies = Vec::new();
            session.on_text(
                r#"{"action":"subscribe","data":{"binding":"call.#"}}"#,
                &mut replies,
            );
            assert!(replies[0].contains("success"), "{:?}", replies[0]);
            client
        })
        .collect();
    (hub, clients)
}

fn event(n: usize) -> Event {
    let payload = format!(r#"{{"Event-Name":"CHANNEL_CREATE","Call-ID":"c{n}"}}"#);
    Event::new(format!("call.CHANNEL_CREATE.c{n}"), Bytes::from(payload))
}

/// Allocations to publish `events` and have every client take its frames, once the hub and
/// the clients' queues are warm.
fn allocations_per_round(clients: usize, events: &[Event]) -> usize {
    let (hub, clients) = subscribed(clients);
    let round = || {
        for event in events {
            hub.publish(event);
        }
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for client in &clients {
            let (mut writer, mut socket) = (TextWriter::default(), futures_lite::io::sink());
            let mut taken = 0;
            loop {
                let written = client.with_queued(|frames| {
                    let mut bytes = frames.map(|frame| frame.as_bytes());
                    writer.poll_write(&mut socket, &mut cx, &mut bytes)
                });
                let Poll::Ready(Ok(written)) = written else {
                    panic!("a sink takes everything: {written:?}");
                };
                if written == 0 {
                    break;
                }
                for _ in 0..written {
                    client.pop().unwrap();
                }
                taken += written;
            }
            assert_eq!(taken, events.len(), "every client got every event");
        }
    };
    // Warm: the queues, the routed list and the renders keep their storage.
    round();
    allocations_during(round)
}

#[test]
fn fan_out_allocates_nothing_per_client() {
    let events: Vec<Event> = (0..8).map(event).collect();
    let few = allocations_per_round(4, &events);
    let many = allocations_per_round(400, &events);
    eprintln!("allocations for 8 events: {few} with 4 clients, {many} with 400");
    // Each event's frame is rendered once: a few allocations per event, none per client.
    assert!(few > 0, "the counter saw the frames being rendered");
    assert_eq!(
        many, few,
        "4 clients cost {few} allocations, 400 cost {many}"
    );
}
