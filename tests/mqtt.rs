//! The MQTT source through its public API (`source::mqtt::start`): against a scripted broker
//! (refusal, an oversized message, a dead link), against the shared Mosquitto (delivery,
//! binary payloads, keep-alive, held back by the hub) and against a private one that restarts.

mod common;

use std::cell::{Cell, RefCell};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use callwire::event::Event;
use callwire::metrics::{DropReason, Metrics};
use callwire::source::mqtt::{MqttOptions, PublishError, start};
use callwire::source::{EventSink, Sink, SourceKind, SourceStatus};
use futures_lite::{AsyncReadExt, AsyncWriteExt, future};
use rumqttc::{ConnectReturnCode, Packet, Publish, QoS, SubscribeReasonCode};
use smol::Timer;
use smol::net::TcpStream;

use common::{PrivateMosquitto, unique};

fn parse(url: &str) -> MqttOptions {
    MqttOptions::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"))
}

async fn read_packet(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Packet> {
    loop {
        match Packet::read(buf, usize::MAX) {
            Ok(packet) => return Some(packet),
            Err(rumqttc::Error::InsufficientBytes(_)) => {}
            Err(e) => panic!("client sent garbage: {e}"),
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn send(stream: &mut TcpStream, packet: Packet) {
    stream.write_all(&encode(&packet)).await.unwrap();
}

fn encode(packet: &Packet) -> BytesMut {
    let mut out = BytesMut::new();
    packet.write(&mut out, usize::MAX).unwrap();
    out
}

async fn accept_connect(listener: &smol::net::TcpListener) -> (TcpStream, rumqttc::Connect) {
    let (mut stream, _) = listener.accept().await.unwrap();
    match read_packet(&mut stream, &mut BytesMut::new()).await {
        Some(Packet::Connect(connect)) => (stream, connect),
        other => panic!("expected CONNECT, got {other:?}"),
    }
}

fn connack(code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(rumqttc::ConnAck::new(code, false))
}

/// Refused credentials, an oversized QoS 1 message (acked, skipped), a normal one, then a
/// broker that stops answering pings: the driver must notice and reconnect.
#[test]
fn mqtt_scripted_broker_refusal_oversize_and_dead_link() {
    let listener = smol::block_on(smol::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut opts = parse(&format!("mqtt://us%65r:p%40ss@127.0.0.1:{port}"));
    opts.topics = vec!["f/#".into()];
    opts.keep_alive = Duration::from_millis(500);
    opts.max_message_size = 100;
    let status = Rc::new(SourceStatus::new(SourceKind::Mqtt));
    let metrics = Rc::new(Metrics::default());
    let (seen, sink) = recorder();
    let (_publisher, driver) = start(opts, status.clone(), metrics.clone(), sink);
    let ex = smol::LocalExecutor::new();
    ex.spawn(driver).detach();
    let script = async {
        let (mut s, connect) = accept_connect(&listener).await;
        let login = connect.login.expect("login");
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("user", "p@ss")
        );
        assert!(connect.clean_session);
        assert_eq!(connect.keep_alive, 1);
        send(&mut s, connack(ConnectReturnCode::BadUserNamePassword)).await;
        drop(s);
        assert!(!status.connected());

        let (mut s, _) = accept_connect(&listener).await;
        send(&mut s, connack(ConnectReturnCode::Success)).await;
        let mut buf = BytesMut::new();
        let subscribe = match read_packet(&mut s, &mut buf).await {
            Some(Packet::Subscribe(subscribe)) => subscribe,
            other => panic!("expected SUBSCRIBE, got {other:?}"),
        };
        assert_eq!(subscribe.filters[0].path, "f/#");
        assert_eq!(subscribe.filters[0].qos, QoS::AtLeastOnce);
        let codes = vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)];
        send(
            &mut s,
            Packet::SubAck(rumqttc::SubAck::new(subscribe.pkid, codes)),
        )
        .await;
        assert!(status.connected());
        assert_eq!(status.reconnects(), 0);

        // An oversized QoS 1 message, written in pieces, then a normal one.
        let mut big = Publish::new("f/big", QoS::AtLeastOnce, vec![b'x'; 500]);
        big.pkid = 7;
        for piece in encode(&Packet::Publish(big)).chunks(64) {
            s.write_all(piece).await.unwrap();
            Timer::after(Duration::from_millis(5)).await;
        }
        let mut small = Publish::new("f/ok", QoS::AtLeastOnce, b"ok".to_vec());
        small.pkid = 8;
        send(&mut s, Packet::Publish(small)).await;
        let mut acked = Vec::new();
        let mut pings = 0;
        // Never answer a ping: the driver must give up on this link and close it.
        while let Some(packet) = read_packet(&mut s, &mut buf).await {
            match packet {
                Packet::PubAck(ack) => acked.push(ack.pkid),
                Packet::PingReq => pings += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(acked, [7, 8]);
        assert_eq!(pings, 1);
        assert!(has(&seen, "f.ok", b"ok"));
        assert_eq!(seen.borrow().len(), 1);
        assert_eq!(metrics.dropped(DropReason::TooLarge).get(), 1);
        settle("the loss", || !status.connected()).await;

        let (mut s, _) = accept_connect(&listener).await;
        send(&mut s, connack(ConnectReturnCode::Success)).await;
        assert!(matches!(
            read_packet(&mut s, &mut BytesMut::new()).await,
            Some(Packet::Subscribe(_))
        ));
        assert!(status.connected());
        assert_eq!(status.reconnects(), 1);
    };
    let give_up = async {
        Timer::after(Duration::from_secs(15)).await;
        panic!("the scripted broker test took too long");
    };
    smol::block_on(ex.run(future::or(script, give_up)));
}

async fn settle(what: &str, mut done: impl FnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(12);
    while !done() {
        assert!(Instant::now() < give_up, "gave up waiting for {what}");
        Timer::after(Duration::from_millis(20)).await;
    }
}

type Seen = Rc<RefCell<Vec<Event>>>;

fn recorder() -> (Seen, EventSink) {
    let seen: Seen = Rc::default();
    let sink = seen.clone();
    (seen, Rc::new(move |event| sink.borrow_mut().push(event)))
}

fn has(seen: &Seen, key: &str, payload: &[u8]) -> bool {
    seen.borrow()
        .iter()
        .any(|e| e.routing_key == key && &e.payload[..] == payload)
}

/// Publishes the file's bytes with the real `mosquitto_pub` client (QoS 1).
fn publish_file(port: u16, topic: &str, file: &std::path::Path) {
    let port = port.to_string();
    let mut client = Command::new("mosquitto_pub");
    client.args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-t", topic, "-f"]);
    assert!(client.arg(file).status().expect("mosquitto_pub").success());
}

fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|name| name.trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn mqtt_delivers_from_the_shared_broker() {
    let root = unique("callwire-test/");
    let mut opts = parse("mqtt://127.0.0.1:1883");
    opts.topics = vec![format!("{root}/#")];
    opts.strip_prefix = Some(format!("{root}/"));
    opts.keep_alive = Duration::from_secs(2);
    opts.max_message_size = 1024;
    let status = Rc::new(SourceStatus::new(SourceKind::Mqtt));
    let metrics = Rc::new(Metrics::default());
    let (seen, sink) = recorder();
    let (publisher, driver) = start(opts, status.clone(), metrics.clone(), sink);
    assert_eq!(
        publisher.publish("x", Bytes::new()),
        Err(PublishError::Disconnected)
    );
    assert_eq!(
        publisher.publish("a/+", Bytes::new()),
        Err(PublishError::InvalidTopic)
    );

    let ex = smol::LocalExecutor::new();
    ex.spawn(driver).detach();
    let dir = std::env::temp_dir();
    let big_file = dir.join(unique("callwire-mqtt-big-"));
    let bin_file = dir.join(unique("callwire-mqtt-bin-"));
    smol::block_on(ex.run(async {
        settle("connected", || status.connected()).await;
        // Our own publish comes back after our SUBSCRIBE: the subscription is in place.
        let probe = format!("{root}/probe");
        publisher
            .publish(&probe, Bytes::from_static(b"probe"))
            .unwrap();
        settle("probe", || has(&seen, "probe", b"probe")).await;

        let binary: Vec<u8> = (0..=255u8).chain([0, b'\n', 0xff]).collect();
        std::fs::write(&bin_file, &binary).unwrap();
        publish_file(1883, &format!("{root}/call/a.b"), &bin_file);
        settle("binary event", || has(&seen, "call.a%2Eb", &binary)).await;

        // Too large: skipped and counted, the connection stays, the next one arrives.
        std::fs::write(&big_file, vec![b'x'; 5000]).unwrap();
        publish_file(1883, &format!("{root}/big"), &big_file);
        std::fs::write(&bin_file, br#"{"Account-ID":"acc"}"#).unwrap();
        publish_file(1883, &format!("{root}/after"), &bin_file);
        settle("event after the big one", || {
            has(&seen, "after", br#"{"Account-ID":"acc"}"#)
        })
        .await;
        assert_eq!(metrics.dropped(DropReason::TooLarge).get(), 1);
        assert!(!seen.borrow().iter().any(|e| e.routing_key == "big"));
        let account = seen.borrow().last().and_then(|e| e.account.clone());
        assert_eq!(account.as_deref(), Some("acc"));

        // Several keep-alive periods: pings are answered, the link stays up.
        Timer::after(Duration::from_millis(4500)).await;
        assert!(status.connected());
        assert_eq!(status.reconnects(), 0);
        publisher
            .publish(&probe, Bytes::from_static(b"again"))
            .unwrap();
        settle("probe after idling", || has(&seen, "probe", b"again")).await;
    }));
    let _ = std::fs::remove_file(&big_file);
    let _ = std::fs::remove_file(&bin_file);
    let threads = thread_names();
    assert!(
        !threads.iter().any(|t| t.starts_with("tokio")),
        "{threads:?}"
    );
}

/// A sink whose room the test opens and closes.
#[derive(Default)]
struct Gate {
    closed: Cell<bool>,
    source: RefCell<Option<std::task::Waker>>,
    seen: RefCell<Vec<Event>>,
}

impl Gate {
    fn set_closed(&self, closed: bool) {
        self.closed.set(closed);
        if let Some(source) = self.source.take() {
            source.wake();
        }
    }
}

impl Sink for Gate {
    fn take(&self, event: Event) {
        assert!(!self.closed.get(), "an event was handed on without room");
        self.seen.borrow_mut().push(event);
    }

    fn has_room(&self) -> bool {
        !self.closed.get()
    }

    fn poll_room(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.has_room() {
            return std::task::Poll::Ready(());
        }
        *self.source.borrow_mut() = Some(cx.waker().clone());
        std::task::Poll::Pending
    }
}

#[test]
fn mqtt_held_back_past_several_keep_alives_keeps_its_link_and_takes_what_waited() {
    let root = unique("callwire-test/");
    let mut opts = parse("mqtt://127.0.0.1:1883");
    opts.topics = vec![format!("{root}/#")];
    opts.strip_prefix = Some(format!("{root}/"));
    opts.keep_alive = Duration::from_secs(1);
    let status = Rc::new(SourceStatus::new(SourceKind::Mqtt));
    let gate = Rc::new(Gate::default());
    let (publisher, driver) = start(
        opts,
        status.clone(),
        Rc::new(Metrics::default()),
        gate.clone(),
    );
    let ex = smol::LocalExecutor::new();
    ex.spawn(driver).detach();
    let got = |payload: &[u8]| gate.seen.borrow().iter().any(|e| &e.payload[..] == payload);
    smol::block_on(ex.run(async {
        settle("connected", || status.connected()).await;
        let topic = format!("{root}/held");
        publisher
            .publish(&topic, Bytes::from_static(b"probe"))
            .unwrap();
        settle("probe", || got(b"probe")).await;
        gate.set_closed(true);
        for payload in [&b"one"[..], b"two", b"three"] {
            publisher
                .publish(&topic, Bytes::from_static(payload))
                .unwrap();
        }
        // Three keep-alive periods with the answers to our pings behind unread publishes.
        Timer::after(Duration::from_millis(3500)).await;
        assert!(
            status.connected() && status.reconnects() == 0,
            "the link was dropped"
        );
        assert!(!got(b"one"), "taken while held");
        gate.set_closed(false);
        settle("what waited", || {
            got(b"one") && got(b"two") && got(b"three")
        })
        .await;
        assert_eq!(status.reconnects(), 0);
    }));
}

#[test]
fn mqtt_reconnects_after_a_broker_restart() {
    let mut broker = PrivateMosquitto::start();
    let mut opts = parse(&format!("mqtt://127.0.0.1:{}", broker.port));
    opts.topics = vec!["t/#".into()];
    opts.keep_alive = Duration::from_secs(2);
    let status = Rc::new(SourceStatus::new(SourceKind::Mqtt));
    let metrics = Rc::new(Metrics::default());
    let (seen, sink) = recorder();
    let (publisher, driver) = start(opts, status.clone(), metrics, sink);
    let ex = smol::LocalExecutor::new();
    ex.spawn(driver).detach();
    let file = std::env::temp_dir().join(unique("callwire-mqtt-re-"));
    smol::block_on(ex.run(async {
        settle("first connect", || status.connected()).await;
        publisher
            .publish("t/one", Bytes::from_static(b"1"))
            .unwrap();
        settle("first event", || has(&seen, "t.one", b"1")).await;

        broker.kill();
        settle("the loss", || !status.connected()).await;
        assert_eq!(
            publisher.publish("t/x", Bytes::new()),
            Err(PublishError::Disconnected)
        );
        broker.restart();
        settle("reconnect", || status.connected()).await;
        assert_eq!(status.reconnects(), 1);

        publisher
            .publish("t/two", Bytes::from_static(b"2"))
            .unwrap();
        settle("event after reconnect", || has(&seen, "t.two", b"2")).await;
        std::fs::write(&file, b"three").unwrap();
        publish_file(broker.port, "t/three", &file);
        settle("external event after reconnect", || {
            has(&seen, "t.three", b"three")
        })
        .await;
        assert_eq!(status.reconnects(), 1);
    }));
    let _ = std::fs::remove_file(&file);
    drop(broker);
}
