//! Websocket protocol abuse, with raw sockets (the Autobahn suite needs Python 2, which these
//! machines lack): each client upgrades by hand, then breaks RFC 6455 one way or another, and
//! must get the RFC's answer, a close frame with the right code and then the connection
//! dropped, in every dialect. A well-behaved witness on the same server keeps getting its
//! events and its replies throughout.
//!
//! Who answers what: tungstenite (0.30) finds the violation and returns an error, and callwire
//! (`ws::serve`, `close_code`) answers it with a close frame with an empty reason: 1002 for a
//! protocol error, 1007 for invalid UTF-8 (in a text message or a close reason), 1009 for a
//! frame or message over `--max-message-size`, then drops the connection. A close frame whose
//! code the RFC forbids on the wire is answered by tungstenite itself, with 1002 "Protocol
//! violation"; a valid one is echoed, code and reason.
//!
//! What tungstenite does not see at once: it rejects a reserved opcode, and a length over the
//! limit, from the frame header, but looks at the RSV bits and the mask only once the whole
//! payload announced has arrived. A half-sent frame, or garbage that parses as a header
//! announcing more bytes than follow, waits like any slow frame, until the idle ping closes it
//! (1001 "ping timeout"). A client that ends its side of the TCP connection with no close
//! frame is dropped without one.
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};
use tungstenite::Message;

use common::{Callwire, DIALECTS, Dialect, Socket, recv, wait_for};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// The accept value RFC 6455 gives for `KEY` (section 1.3).
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

const RSV1: u8 = 0b100;
const RSV2: u8 = 0b010;
const RSV3: u8 = 0b001;

// ---------------------------------------------------------------------------------------------
// Frames on the wire

/// One frame as bytes: FIN, the three RSV bits, the opcode, the length in its shortest form,
/// and the payload, masked with `MASK` when `masked`.
fn frame(fin: bool, rsv: u8, opcode: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => bytes.push(mask_bit | len as u8),
        len @ 126..=0xffff => {
            bytes.push(mask_bit | 126);
            bytes.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            bytes.push(mask_bit | 127);
            bytes.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if masked {
        bytes.extend_from_slice(&MASK);
        bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        bytes.extend_from_slice(payload);
    }
    bytes
}

/// A well-formed client frame: final, no RSV bits, masked.
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, 0, opcode, true, payload)
}

/// A masked close frame's payload: the code, then the reason.
fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// A masked frame header that announces `len` payload bytes, and no payload.
fn header_only(opcode: u8, len: u64) -> Vec<u8> {
    let mut bytes = vec![0x80 | opcode, 0x80 | 127];
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(&MASK);
    bytes
}

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// A frame from the server, as read off the wire.
#[derive(Debug)]
enum ServerFrame {
    Text(String),
    Binary,
    Ping,
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

/// How a raw connection ended.
#[derive(Debug, PartialEq)]
enum End {
    /// End of stream: the server closed its side.
    Eof,
    /// The server closed with input still unread, which TCP turns into a reset.
    Reset,
}

// ---------------------------------------------------------------------------------------------
// A raw client

impl Dialect {
    /// A request the dialect answers, carrying `tag` (and a character of three UTF-8 bytes),
    /// and a string only its reply holds.
    fn probe(self, tag: &str) -> (String, String) {
        match self {
            Dialect::Blackhole => (
                json!({"action": "ping", "request_id": tag, "note": "€"}).to_string(),
                format!(r#""request_id":"{tag}""#),
            ),
            Dialect::ISymphony => (
                json!({"type": "filter", "filters": [{"property": "tag", "value": tag}],
                       "note": "€"})
                .to_string(),
                format!(r#""value":"{tag}""#),
            ),
            Dialect::Cable => {
                let identifier = json!({"channel": "ApiChannel", "tag": tag}).to_string();
                (
                    json!({"command": "subscribe", "identifier": identifier, "note": "€"})
                        .to_string(),
                    "confirm_subscription".to_owned(),
                )
            }
        }
    }
}

/// A client that upgraded by hand and now speaks frames byte by byte.
struct Raw {
    stream: TcpStream,
    /// Bytes read past what has been parsed.
    buf: Vec<u8>,
}

impl Raw {
    /// Connects, writes the upgrade request followed by `after` in the same write, and reads
    /// the 101.
    fn upgrade(callwire: &Callwire, dialect: Dialect, after: &[u8]) -> Raw {
        let mut stream = TcpStream::connect(("127.0.0.1", callwire.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut request = format!(
            "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            dialect.path(),
            callwire.port
        )
        .into_bytes();
        request.extend_from_slice(after);
        stream.write_all(&request).unwrap();
        let mut raw = Raw {
            stream,
            buf: Vec::new(),
        };
        let head = loop {
            if let Some(end) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = raw.buf.drain(..end + 4).collect();
                break String::from_utf8(head).unwrap();
            }
            assert!(raw.fill().is_ok(), "no upgrade response");
        };
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(
            head.lines()
                .any(|line| line.eq_ignore_ascii_case(&format!("Sec-WebSocket-Accept: {ACCEPT}"))),
            "{head}"
        );
        raw
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads more bytes into the buffer; `Err` when the server has dropped the connection.
    /// Panics when nothing comes within the read timeout.
    fn fill(&mut self) -> Result<(), End> {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(End::Eof),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(err) if err.kind() == ErrorKind::ConnectionReset => Err(End::Reset),
            Err(err) => panic!("the server neither answered nor hung up: {err}"),
        }
    }

    fn need(&mut self, n: usize) -> Result<(), End> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(())
    }

    /// The next frame from the server; `Err` when the connection ended first.
    fn frame(&mut self) -> Result<ServerFrame, End> {
        self.need(2)?;
        let (b0, b1) = (self.buf[0], self.buf[1]);
        assert_eq!(b0 & 0x70, 0, "the server set RSV bits");
        assert_eq!(b1 & 0x80, 0, "the server masked a frame");
        let (len, header) = match b1 & 0x7f {
            126 => {
                self.need(4)?;
                (
                    usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                    4,
                )
            }
            127 => {
                self.need(10)?;
                let len = u64::from_be_bytes(self.buf[2..10].try_into().unwrap());
                (usize::try_from(len).unwrap(), 10)
            }
            len => (usize::from(len), 2),
        };
        self.need(header + len)?;
        let payload: Vec<u8> = self.buf.drain(..header + len).skip(header).collect();
        let opcode = b0 & 0x0f;
        if opcode >= 0x8 {
            assert!(b0 & 0x80 != 0, "the server fragmented a control frame");
        }
        Ok(match opcode {
            TEXT => ServerFrame::Text(String::from_utf8(payload).expect("UTF-8 from the server")),
            BINARY => ServerFrame::Binary,
            PING => ServerFrame::Ping,
            PONG => ServerFrame::Pong(payload),
            CLOSE => match payload.len() {
                0 => ServerFrame::Close(None, String::new()),
                1 => panic!("the server sent a one-byte close payload"),
                _ => ServerFrame::Close(
                    Some(u16::from_be_bytes([payload[0], payload[1]])),
                    String::from_utf8(payload[2..].to_vec()).expect("a UTF-8 close reason"),
                ),
            },
            other => panic!("the server sent opcode {other:#x}"),
        })
    }

    /// Reads until the server's close frame and the end of the connection after it.
    fn outcome(mut self) -> Outcome {
        let mut outcome = Outcome::default();
        loop {
            match self.frame() {
                Ok(ServerFrame::Close(code, reason)) => {
                    outcome.close = Some((code, reason));
                    break;
                }
                Ok(ServerFrame::Text(text)) => outcome.texts.push(text),
                Ok(ServerFrame::Pong(payload)) => outcome.pongs.push(payload),
                Ok(ServerFrame::Ping) => outcome.pings += 1,
                Ok(ServerFrame::Binary) => panic!("the server sent a binary frame"),
                Err(end) => {
                    outcome.end = Some(end);
                    return outcome;
                }
            }
        }
        // After its close frame the server sends nothing more, and hangs up.
        match self.frame() {
            Err(end) => outcome.end = Some(end),
            Ok(frame) => panic!("a frame after the close frame: {frame:?}"),
        }
        outcome
    }

    /// Reads frames until a text frame holds `needle`; panics if the connection ends first.
    fn expect_text(&mut self, needle: &str) -> Vec<ServerFrame> {
        let mut seen = Vec::new();
        loop {
            match self.frame() {
                Ok(ServerFrame::Text(text)) if text.contains(needle) => return seen,
                Ok(frame) => seen.push(frame),
                Err(end) => panic!("connection ended ({end:?}) before {needle:?}; saw {seen:?}"),
            }
        }
    }
}

/// Everything a raw client saw until the connection ended.
#[derive(Debug, Default)]
struct Outcome {
    texts: Vec<String>,
    pongs: Vec<Vec<u8>>,
    pings: usize,
    /// The server's close frame: its code, if any, and reason.
    close: Option<(Option<u16>, String)>,
    end: Option<End>,
}

// ---------------------------------------------------------------------------------------------
// The witness

/// A well-behaved Blackhole client subscribed to every demo call event.
struct Witness {
    socket: Socket,
    events: usize,
    requests: usize,
}

impl Witness {
    fn new(callwire: &Callwire) -> Witness {
        let mut socket = callwire.ws("/");
        socket
            .send(Message::text(
                json!({"action": "subscribe", "request_id": "w",
                       "data": {"binding": "call.#"}})
                .to_string(),
            ))
            .unwrap();
        let mut witness = Witness {
            socket,
            events: 0,
            requests: 0,
        };
        witness.until_reply("w");
        witness.await_event();
        witness
    }

    fn until_reply(&mut self, request_id: &str) -> Value {
        loop {
            let frame = recv(&mut self.socket);
            match frame["action"].as_str() {
                Some("event") => self.events += 1,
                Some("reply") if frame["request_id"] == request_id => return frame,
                _ => panic!("the witness got {frame}"),
            }
        }
    }

    /// Asks for a pong and gets it (events that come first are counted).
    fn check(&mut self) {
        self.requests += 1;
        let id = format!("witness-{}", self.requests);
        self.socket
            .send(Message::text(
                json!({"action": "ping", "request_id": id}).to_string(),
            ))
            .unwrap();
        let reply = self.until_reply(&id);
        assert_eq!(reply["data"]["response"], "pong", "{reply}");
    }

    /// Waits for one more event.
    fn await_event(&mut self) {
        let before = self.events;
        while self.events == before {
            let frame = recv(&mut self.socket);
            assert_eq!(frame["action"], "event", "{frame}");
            self.events += 1;
        }
    }

    /// Runs `abuse` on another thread, checking the witness over and over until it is done,
    /// then once more.
    fn throughout<T: Send>(&mut self, abuse: impl FnOnce() -> T + Send) -> T {
        let result = std::thread::scope(|scope| {
            let abuse = scope.spawn(abuse);
            while !abuse.is_finished() {
                self.check();
                std::thread::sleep(Duration::from_millis(20));
            }
            abuse.join().unwrap()
        });
        self.check();
        result
    }
}

/// A demo server (events flowing) with a witness on it.
fn server(extra: &[&str]) -> (Callwire, Witness) {
    // The witness checks in a tight loop: a request rate it never reaches.
    let mut args = vec![
        "--demo",
        "--demo-rate",
        "5",
        "--request-rate",
        "10000",
        "--request-burst",
        "10000",
    ];
    args.extend_from_slice(extra);
    let callwire = Callwire::start(&args);
    let witness = Witness::new(&callwire);
    (callwire, witness)
}

/// After the abuse: the witness still gets events, and every abuser has left.
fn finish(callwire: &Callwire, mut witness: Witness) {
    witness.await_event();
    witness.check();
    wait_for("the abusers to leave", Duration::from_secs(5), || {
        callwire.healthz().1["clients"] == json!(1)
    });
}

// ---------------------------------------------------------------------------------------------
// The table

#[derive(Clone, Debug, PartialEq)]
enum Expect {
    /// A close frame with this code (none: an empty close frame), then the connection dropped;
    /// the probe is not answered.
    Close(Option<u16>),
    /// The probe is answered first, then the close frame with this code.
    AnsweredThenClose(u16),
    /// Served: the probe is answered and the socket stays open (it is closed with 1000).
    Served,
    /// Served, and a pong with this payload came before the probe's answer.
    ServedWithPong(Vec<u8>),
}

use Expect::{AnsweredThenClose, Close, Served, ServedWithPong};

struct Case {
    name: String,
    /// What the client sends.
    bytes: Vec<u8>,
    /// Sent in the same write as the upgrade request, not after the 101.
    with_upgrade: bool,
    expect: Expect,
}

fn case(name: impl Into<String>, bytes: Vec<u8>, expect: Expect) -> Case {
    Case {
        name: name.into(),
        bytes,
        with_upgrade: false,
        expect,
    }
}

impl Case {
    fn with_upgrade(mut self) -> Case {
        self.with_upgrade = true;
        self
    }
}

/// Runs every case against every dialect, each on a fresh connection, with the witness
/// checked throughout. `cases` builds the bytes around the dialect's probe request.
fn run_table(callwire: &Callwire, witness: &mut Witness, cases: impl Fn(&str) -> Vec<Case>) {
    for dialect in DIALECTS {
        // Every case runs on a fresh connection, so the same probe serves them all.
        let (probe, answer) = dialect.probe("probe");
        for case in cases(&probe) {
            let what = format!("{dialect:?}, {}", case.name);
            let (seen, outcome) = witness.throughout(|| {
                let mut raw = if case.with_upgrade {
                    Raw::upgrade(callwire, dialect, &case.bytes)
                } else {
                    let mut raw = Raw::upgrade(callwire, dialect, &[]);
                    raw.send(&case.bytes);
                    raw
                };
                let seen = match case.expect {
                    Close(_) => Vec::new(),
                    AnsweredThenClose(_) => raw.expect_text(&answer),
                    Served | ServedWithPong(_) => {
                        let seen = raw.expect_text(&answer);
                        raw.send(&masked(CLOSE, &close_payload(1000, b"")));
                        seen
                    }
                };
                (seen, raw.outcome())
            });
            let code = outcome.close.as_ref().map(|(code, _)| *code);
            match &case.expect {
                Close(expected) => {
                    assert_eq!(code, Some(*expected), "{what}: {outcome:?}");
                    assert!(
                        !outcome.texts.iter().any(|t| t.contains(&answer)),
                        "{what}: the broken request was answered: {outcome:?}"
                    );
                }
                AnsweredThenClose(expected) => {
                    assert_eq!(code, Some(Some(*expected)), "{what}: {outcome:?}")
                }
                Served => assert_eq!(code, Some(Some(1000)), "{what}: {outcome:?}"),
                ServedWithPong(payload) => {
                    assert!(
                        seen.iter()
                            .any(|f| matches!(f, ServerFrame::Pong(p) if p == payload)),
                        "{what}: no pong before the answer: {seen:?}"
                    );
                    assert_eq!(code, Some(Some(1000)), "{what}: {outcome:?}");
                }
            }
            // And then the server hung up.
            assert!(outcome.end.is_some(), "{what}: {outcome:?}");
            println!(
                "{what}: close {:?}, then {:?}",
                outcome.close,
                outcome.end.unwrap()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The abuses

const PROTOCOL_ERROR: Expect = Close(Some(1002));
const INVALID_UTF8: Expect = Close(Some(1007));

#[test]
fn unmasked_client_frames_are_closed_with_1002() {
    let (callwire, mut witness) = server(&[]);
    run_table(&callwire, &mut witness, |probe| {
        let probe = probe.as_bytes();
        vec![
            case(
                "unmasked text",
                frame(true, 0, TEXT, false, probe),
                PROTOCOL_ERROR,
            ),
            case(
                "unmasked binary",
                frame(true, 0, BINARY, false, b"\x01"),
                PROTOCOL_ERROR,
            ),
            case(
                "unmasked ping",
                frame(true, 0, PING, false, b"hi"),
                PROTOCOL_ERROR,
            ),
            case(
                "unmasked close",
                frame(true, 0, CLOSE, false, &close_payload(1000, b"")),
                PROTOCOL_ERROR,
            ),
            case(
                "masked first fragment, unmasked continuation",
                concat(&[
                    frame(false, 0, TEXT, true, &probe[..4]),
                    frame(true, 0, CONTINUATION, false, &probe[4..]),
                ]),
                PROTOCOL_ERROR,
            ),
            case("the same request, masked", masked(TEXT, probe), Served),
        ]
    });
    finish(&callwire, witness);
}

#[test]
fn reserved_opcodes_are_closed_with_1002() {
    let (callwire, mut witness) = server(&[]);
    run_table(&callwire, &mut witness, |probe| {
        let probe = probe.as_bytes();
        let mut cases: Vec<Case> = (0x3..=0x7)
            .chain(0xB..=0xF)
            .map(|opcode| {
                case(
                    format!("reserved opcode {opcode:#x}"),
                    masked(opcode, b"x"),
                    PROTOCOL_ERROR,
                )
            })
            .collect();
        cases.push(case(
            "reserved data opcode inside a fragmented message",
            concat(&[
                frame(false, 0, TEXT, true, &probe[..4]),
                masked(0x3, b"x"),
                frame(true, 0, CONTINUATION, true, &probe[4..]),
            ]),
            PROTOCOL_ERROR,
        ));
        cases
    });
    finish(&callwire, witness);
}

#[test]
fn reserved_bits_are_closed_with_1002() {
    let (callwire, mut witness) = server(&[]);
    run_table(&callwire, &mut witness, |probe| {
        let probe = probe.as_bytes();
        let mut cases: Vec<Case> = [
            ("RSV1 (permessage-deflate, never negotiated)", RSV1),
            ("RSV2", RSV2),
            ("RSV3", RSV3),
            ("all three", RSV1 | RSV2 | RSV3),
        ]
        .into_iter()
        .map(|(name, rsv)| {
            case(
                format!("text with {name}"),
                frame(true, rsv, TEXT, true, probe),
                PROTOCOL_ERROR,
            )
        })
        .collect();
        cases.extend([
            case(
                "ping with RSV1",
                frame(true, RSV1, PING, true, b"hi"),
                PROTOCOL_ERROR,
            ),
            case(
                "close with RSV2",
                frame(true, RSV2, CLOSE, true, &close_payload(1000, b"")),
                PROTOCOL_ERROR,
            ),
            case(
                "continuation with RSV3",
                concat(&[
                    frame(false, 0, TEXT, true, &probe[..4]),
                    frame(true, RSV3, CONTINUATION, true, &probe[4..]),
                ]),
                PROTOCOL_ERROR,
            ),
        ]);
        cases
    });
    finish(&callwire, witness);
}

#[test]
fn fragmented_or_oversized_control_frames_are_closed_with_1002() {
    let (callwire, mut witness) = server(&[]);
    run_table(&callwire, &mut witness, |probe| {
        let probe = probe.as_bytes();
        let long = [b'p'; 126];
        vec![
            case(
                "fragmented ping",
                frame(false, 0, PING, true, b"hi"),
                PROTOCOL_ERROR,
            ),
            case(
                "fragmented pong",
                frame(false, 0, PONG, true, b"hi"),
                PROTOCOL_ERROR,
            ),
            case(
                "fragmented close",
                frame(false, 0, CLOSE, true, &close_payload(1000, b"")),
                PROTOCOL_ERROR,
            ),
            case("ping of 126 bytes", masked(PING, &long), PROTOCOL_ERROR),
            case("pong of 126 bytes", masked(PONG, &long), PROTOCOL_ERROR),
            case(
                "close of 126 bytes",
                masked(CLOSE, &close_payload(1000, &long[..124])),
                PROTOCOL_ERROR,
            ),
            // What the RFC allows is served.
            case(
                "ping of 125 bytes",
                concat(&[masked(PING, &long[..125]), masked(TEXT, probe)]),
                ServedWithPong(long[..125].to_vec()),
            ),
            case(
                "ping between the fragments of a message",
                concat(&[
                    frame(false, 0, TEXT, true, &probe[..4]),
                    masked(PING, b"mid"),
                    frame(true, 0, CONTINUATION, true, &probe[4..]),
                ]),
                ServedWithPong(b"mid".to_vec()),
            ),
        ]
    });
    finish(&callwire, witness);
}

#[test]
fn broken_fragmentation_is_closed_with_1002() {
    let (callwire, mut witness) = server(&[]);
    run_table(&callwire, &mut witness, |probe| {
        let probe = probe.as_bytes();
        vec![
            case(
                "continuation with no message started",
                masked(CONTINUATION, probe),
                PROTOCOL_ERROR,
            ),
            case(
                "a new text message inside a fragmented one",
                concat(&[
                    frame(false, 0, TEXT, true, &probe[..4]),
                    masked(TEXT, probe),
                ]),
                PROTOCOL_ERROR,
            ),
            case(
                "a binary message inside a fragmented text one",
                concat(&[
                    frame(false, 0, TEXT, true, &probe[..4]),
                    masked(BINARY, b"\x01"),
                ]),
                PROTOCOL_ERROR,
            ),
            case(
                "fragments, one byte each",
                concat(
                    &probe
                        .iter()
                        .enumerate()
                        .map(|(i, b)| {
                            let opcode = if i == 0 { TEXT } else { CONTINUATION };
                            frame(i + 1 == probe.len(), 0, opcode, true, &[*b])
                        })
                        .collect::<Vec<_>>(),
                ),
                Served,
            ),
        ]
    });
    finish(&callwire, witness);
}

#[test]
fn invalid_utf8_in_text_is_closed_with_1007() {
    let (callwire, mut witness) = server(&[]);
    run_table(&callwire, &mut witness, |probe| {
        let probe = probe.as_bytes();
        let euro = probe.windows(3).position(|w| w == "€".as_bytes()).unwrap();
        let mut cases: Vec<Case> = [
            ("a byte that is never UTF-8", &b"{\"a\":\"\xff\"}"[..]),
            ("an overlong encoding", b"{\"a\":\"\xc0\xaf\"}"),
            ("a surrogate", b"{\"a\":\"\xed\xa0\x80\"}"),
            (
                "a code point above U+10FFFF",
                b"{\"a\":\"\xf4\x90\x80\x80\"}",
            ),
            ("a sequence cut short at the end", b"{\"a\":\"\xe2\x82"),
        ]
        .into_iter()
        .map(|(name, payload)| {
            case(
                format!("text with {name}"),
                masked(TEXT, payload),
                INVALID_UTF8,
            )
        })
        .collect();
        cases.extend([
            case(
                "invalid UTF-8 in a continuation frame",
                concat(&[
                    frame(false, 0, TEXT, true, b"{\"a\":\""),
                    frame(true, 0, CONTINUATION, true, b"\xff\"}"),
                ]),
                INVALID_UTF8,
            ),
            case(
                "invalid UTF-8 in the first fragment, the rest never sent",
                frame(false, 0, TEXT, true, b"\xff"),
                INVALID_UTF8,
            ),
            case(
                "a close reason that is not UTF-8",
                masked(CLOSE, &close_payload(1000, b"bye \xff")),
                INVALID_UTF8,
            ),
            // A character split across fragments is fine, and binary is not text.
            case(
                "a character split across fragments",
                concat(&[
                    frame(false, 0, TEXT, true, &probe[..euro + 1]),
                    frame(false, 0, CONTINUATION, true, &probe[euro + 1..euro + 2]),
                    frame(true, 0, CONTINUATION, true, &probe[euro + 2..]),
                ]),
                Served,
            ),
            case(
                "a binary frame that is not UTF-8",
                concat(&[masked(BINARY, b"\xff\xfe"), masked(TEXT, probe)]),
                Served,
            ),
        ]);
        cases
    });
    finish(&callwire, witness);
}

#[test]
fn close_frames_with_a_bad_code_are_closed_with_1002() {
    let (callwire, mut witness) = server(&[]);
    run_table(&callwire, &mut witness, |_| {
        // The codes Autobahn's section 7 uses.
        let bad = [
            0u16, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999, 5000, 65535,
        ];
        let good = [
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ];
        let mut cases: Vec<Case> = bad
            .into_iter()
            .map(|code| {
                case(
                    format!("close code {code}"),
                    masked(CLOSE, &close_payload(code, b"")),
                    PROTOCOL_ERROR,
                )
            })
            .collect();
        cases.push(case(
            "a close payload of one byte",
            masked(CLOSE, b"\x03"),
            PROTOCOL_ERROR,
        ));
        // A valid code is echoed, and an empty close frame answered with an empty one.
        cases.extend(good.into_iter().map(|code| {
            case(
                format!("valid close code {code}"),
                masked(CLOSE, &close_payload(code, b"ok")),
                Close(Some(code)),
            )
        }));
        cases.push(case(
            "an empty close frame",
            masked(CLOSE, b""),
            Close(None),
        ));
        cases
    });
    finish(&callwire, witness);
}

#[test]
fn pipelined_garbage_after_the_upgrade_is_closed() {
    let (callwire, mut witness) = server(&[]);
    run_table(&callwire, &mut witness, |probe| {
        let probe = probe.as_bytes();
        vec![
            // ASCII text always has RSV1 set when read as a frame header.
            case(
                "text garbage in the upgrade's own write",
                b"GARBAGE\r\n\r\n".to_vec(),
                PROTOCOL_ERROR,
            )
            .with_upgrade(),
            case(
                "a second HTTP request pipelined behind the upgrade",
                b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
                PROTOCOL_ERROR,
            )
            .with_upgrade(),
            // (Read as a frame header, "ga" is reserved opcode 0x7. Garbage whose header
            // parses, announcing more bytes than follow, waits for them: see the half-open test.)
            case(
                "garbage after the 101",
                b"garbage\r\n".to_vec(),
                PROTOCOL_ERROR,
            ),
            case("zero bytes after the 101", vec![0u8; 16], PROTOCOL_ERROR),
            case(
                "a request, then garbage, in the upgrade's own write",
                concat(&[masked(TEXT, probe), b"garbage".to_vec()]),
                AnsweredThenClose(1002),
            )
            .with_upgrade(),
            case(
                "a frame header announcing 2^62 bytes",
                header_only(BINARY, 1 << 62),
                Close(Some(1009)),
            ),
            case(
                "a frame header whose length has its top bit set",
                header_only(TEXT, 1 << 63),
                Close(Some(1009)),
            ),
            // A request in the upgrade's own write is no abuse: served.
            case(
                "a request in the upgrade's own write",
                masked(TEXT, probe),
                Served,
            )
            .with_upgrade(),
        ]
    });
    finish(&callwire, witness);
}

#[test]
fn a_clients_close_is_answered_even_with_events_queued_for_it() {
    // Many events: an iSymphony socket without filters gets them all, so there is nearly
    // always one queued when the client's close arrives. (callwire used to write it, which
    // tungstenite refuses after a close, and dropped the connection without the close reply.)
    let callwire = Callwire::start(&["--demo", "--demo-rate", "200"]);
    for code in [1000u16, 1001, 3999, 4000] {
        for _ in 0..25 {
            let mut raw = Raw::upgrade(&callwire, Dialect::ISymphony, &[]);
            std::thread::sleep(Duration::from_millis(5));
            raw.send(&masked(CLOSE, &close_payload(code, b"bye")));
            let outcome = raw.outcome();
            assert_eq!(
                outcome.close,
                Some((Some(code), "bye".to_owned())),
                "{outcome:?}"
            );
            assert_eq!(outcome.end, Some(End::Eof), "{outcome:?}");
        }
    }
}

/// A raw TCP connection that sends `bytes` and stops: what it gets until the server hangs up.
fn send_and_stop(callwire: &Callwire, bytes: &[u8]) -> (Vec<u8>, End) {
    let mut stream = TcpStream::connect(("127.0.0.1", callwire.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (received, End::Eof),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == ErrorKind::ConnectionReset => {
                return (received, End::Reset);
            }
            Err(err) => panic!("never dropped: {err}"),
        }
    }
}

#[test]
fn half_open_connections_are_dropped_while_everyone_else_is_served() {
    let (callwire, mut witness) = server(&["--handshake-timeout", "1", "--ping-interval", "1"]);
    let callwire = &callwire;
    let partial_frames: [(&str, Vec<u8>); 5] = [
        ("half a frame", masked(TEXT, &[b'x'; 100])[..20].to_vec()),
        ("one byte of a frame header", vec![0x81]),
        ("a 64-bit length cut short", vec![0x81, 0xff, 0, 0]),
        (
            "an unmasked frame, half sent",
            frame(true, 0, TEXT, false, &[b'x'; 100])[..20].to_vec(),
        ),
        // RSV bits and an unmasked header, but tungstenite reads the announced 101 bytes before
        // it looks at either: this garbage waits like any half-sent frame.
        (
            "garbage that parses as a header announcing 101 bytes",
            b"hello?\r\n".to_vec(),
        ),
    ];
    witness.throughout(|| {
        std::thread::scope(|scope| {
            let mut heads = Vec::new();
            let mut frames = Vec::new();
            for dialect in DIALECTS {
                // Half an upgrade request: dropped at the handshake timeout, unanswered.
                heads.push(scope.spawn(move || {
                    let request = format!(
                        "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upg",
                        dialect.path()
                    );
                    (dialect, send_and_stop(callwire, request.as_bytes()))
                }));
                // A frame begun and never finished: pinged, then closed 1001 as gone.
                for (name, bytes) in &partial_frames {
                    frames.push(scope.spawn(move || {
                        let mut raw = Raw::upgrade(callwire, dialect, &[]);
                        raw.send(bytes);
                        (format!("{dialect:?}, {name}"), raw.outcome())
                    }));
                }
            }
            for head in heads {
                let (dialect, (received, end)) = head.join().unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&received),
                    "",
                    "{dialect:?}: a half request is not answered"
                );
                assert_eq!(end, End::Eof, "{dialect:?}");
            }
            for frame in frames {
                let (what, outcome) = frame.join().unwrap();
                assert!(outcome.pings >= 1, "{what}: closed unpinged: {outcome:?}");
                assert_eq!(
                    outcome.close,
                    Some((Some(1001), "ping timeout".to_owned())),
                    "{what}: {outcome:?}"
                );
                assert!(outcome.end.is_some(), "{what}: {outcome:?}");
                println!("{what}: {} ping(s), close {:?}, then {:?}", outcome.pings, outcome.close, outcome.end.unwrap());
            }
        });
    });
    // Half-closed: the client shuts its sending side right after the upgrade. tungstenite reads
    // the end of the stream with no close frame before it as a dead connection (its state is
    // terminated, ResetWithoutClosingHandshake): no close frame can be written, and callwire
    // hangs up at once. The RFC allows that: the peer's TCP close was the abnormal closure.
    for dialect in DIALECTS {
        let outcome = witness.throughout(|| {
            let raw = Raw::upgrade(callwire, dialect, &[]);
            raw.stream.shutdown(Shutdown::Write).unwrap();
            raw.outcome()
        });
        println!(
            "{dialect:?}, half-closed: close {:?}, then {:?}",
            outcome.close, outcome.end
        );
        assert_eq!(outcome.close, None, "{dialect:?}: {outcome:?}");
        assert_eq!(outcome.end, Some(End::Eof), "{dialect:?}: {outcome:?}");
    }
    finish(callwire, witness);
}
