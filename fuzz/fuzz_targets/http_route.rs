//! HTTP on the shared port: `http::read_head` over an in-memory stream that hands out the
//! bytes in chunks (the input's first byte sets the chunk size, the rest is the stream), then
//! `server::route_http` on an `App` that serves credentials and holds live calls of every
//! shape. The status is checked against a router written from live-api.md and README's path
//! table, and the response against HTTP and the contract's error form.

#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use callwire::app::App;
use callwire::http::{HeadError, MAX_HEAD, Request, read_head};
use callwire::live::LiveState;
use callwire::server::route_http;
use callwire::sim::{Profile, Simulator};
use callwire_fuzz::{CREDENTIALS, app, auth};
use futures_lite::future::block_on;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// A stream that yields `data` at most `chunk` bytes per read, then end of file.
struct Chunks<'a> {
    data: &'a [u8],
    chunk: usize,
    pos: usize,
}

impl futures_lite::AsyncRead for Chunks<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = self.chunk.min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Poll::Ready(Ok(n))
    }
}

/// The application every input is routed on: credentials, and the first messages of each
/// simulated PBX, so calls and extensions of every shape are live.
fn the_app() -> &'static App {
    thread_local! {
        static APP: &'static App = {
            let app = Box::leak(Box::new(app(auth(true))));
            app.source.set_connected(true);
            // Room for every call below; a fixed start, so the seeds can name the calls.
            *app.live.borrow_mut() = LiveState::new(64, 4, app.metrics.clone());
            let start = UNIX_EPOCH + Duration::from_millis(1_795_428_930_123);
            for profile in [Profile::Kazoo, Profile::FreeSwitch, Profile::AsteriskAri, Profile::AsteriskMqtt] {
                let mut sim = Simulator::new(profile, 7, 5.0, start);
                sim.set_account("acc1");
                for (_, msg) in sim.take(8) {
                    app.ingest(callwire::event::Event::new(msg.routing_key, msg.payload));
                }
            }
            app
        };
    }
    APP.with(|app| *app)
}

/// The account of the credential an `Authorization` header carries (Basic or Bearer).
fn account_of(header: Option<&str>) -> Option<&'static str> {
    let (scheme, value) = header?.trim().split_once(' ')?;
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return CREDENTIALS
            .iter()
            .find(|(_, secret, _)| *secret == value)
            .map(|(_, _, account)| *account);
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = data_encoding::BASE64.decode(value.as_bytes()).ok()?;
    let pair = String::from_utf8(decoded).ok()?;
    let (name, secret) = pair.split_once(':')?;
    CREDENTIALS
        .iter()
        .find(|(n, s, _)| *n == name && *s == secret)
        .map(|(_, _, account)| *account)
}

/// A path segment percent-decoded: `%` and exactly two hex digits, the result UTF-8.
fn decode(segment: &str) -> Option<String> {
    let b = segment.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |j: usize| b.get(j).copied().filter(u8::is_ascii_hexdigit);
            let (hi, lo) = (hex(i + 1)?, hex(i + 2)?);
            let digit = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            out.push(digit(hi) * 16 + digit(lo));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The status live-api.md and README's path table give for a request.
fn expected_status(request: &Request, app: &App) -> u16 {
    let (method, path) = (request.method.as_str(), request.path.as_str());
    let get = |found: bool| match (method, found) {
        ("GET", true) => 200,
        ("GET", false) => 404,
        _ => 405,
    };
    let authorization = request.header("authorization");
    match path {
        // A catalogue request with a credential that is wrong is refused, as the live API's.
        "/v2/websockets" if method == "GET" && authorization.is_some() => {
            return if account_of(authorization).is_some() {
                200
            } else {
                401
            };
        }
        "/healthz" | "/metrics" | "/v2/websockets" => return get(true),
        "/" | "/dashboard.js" | "/dashboard.css" if method == "GET" => return 200,
        _ if !path.starts_with("/rest/live/") => return 404,
        _ => {}
    }
    let Some(scope) = account_of(request.header("authorization")) else {
        return 401;
    };
    let rest = &path["/rest/live/".len()..];
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let Some(segments) = rest
        .split('/')
        .map(|s| (!s.is_empty()).then(|| decode(s)).flatten())
        .collect::<Option<Vec<String>>>()
    else {
        return 400;
    };
    let live = app.live.borrow();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["calls"] | ["extensions"] => get(true),
        ["calls", id] | ["calls", id, "events"] => get(live.call(scope, id).is_some()),
        ["calls", id, "hangup"] => {
            // The server answers 400 before routing to a length that is not one number.
            let too_large = matches!(request.content_length(), Ok(Some(length)) if length > 4096);
            match (method, too_large, live.call(scope, id).is_some()) {
                ("POST", true, _) => 413,
                // The App's source is the demo PBX, which takes no commands.
                ("POST", false, true) => 501,
                ("POST", false, false) => 404,
                _ => 405,
            }
        }
        ["extensions", number] | ["extensions", number, "calls"] => {
            get(live.calls(scope).any(|call| call.has_number(number)))
        }
        _ => 404,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let mut reader = Chunks {
        data: stream,
        chunk: 1 + usize::from(first % 128) * 8,
        pos: 0,
    };
    let request = match block_on(read_head(&mut reader)) {
        Ok(request) => request,
        Err(HeadError::Closed) => return assert_eq!(reader.pos, stream.len()),
        Err(HeadError::TooLarge) => return assert!(reader.pos >= MAX_HEAD),
        Err(HeadError::Malformed) => return,
        Err(HeadError::TimedOut) => panic!("nothing times out in memory"),
    };
    assert!(!request.path.contains('?'), "{:?}", request.path);
    assert!(
        stream[..reader.pos].ends_with(&request.rest),
        "rest is what followed the head"
    );

    let app = the_app();
    let mut response = route_http(&request, app);
    response.collect(&app.live.borrow());
    assert_eq!(
        response.status,
        expected_status(&request, app),
        "{} {} {:?}",
        request.method,
        request.path,
        request.header("authorization")
    );
    assert_ne!(callwire::http::reason(response.status), "Unknown");
    let header = |name: &str| response.headers.iter().any(|(n, _)| *n == name);
    match response.status {
        401 => assert!(header("WWW-Authenticate")),
        405 => assert!(header("Allow")),
        _ => {}
    }
    if response.content_type == "application/json" {
        let body: Value = serde_json::from_slice(&response.body).expect("JSON body");
        if response.status >= 400 {
            assert!(body["error"].is_string(), "{body}");
        }
    }

    // What goes on the wire is one well-formed response whose length is its body's.
    let mut wire = Vec::new();
    block_on(response.write_to(&mut wire)).expect("writing to memory");
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = parsed.parse(&wire) else {
        panic!("not an HTTP response: {:?}", String::from_utf8_lossy(&wire));
    };
    assert_eq!(parsed.code, Some(response.status));
    let length = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok());
    assert_eq!(length, Some(wire.len() - head));
});
