//! HTTP on the shared port: reading a request head (httparse), writing a response, and the
//! plain HTTP endpoints (`/healthz`, `/metrics`). Websocket upgrades are routed in `server`.

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use serde_json::json;

use crate::app::App;
use crate::budget::{Budget, Part};
use crate::clock;
use crate::dialect::Dialect;
use crate::metrics::{DropReason, Forbidden, Limit};

/// Largest request head accepted; a longer one is answered 431.
pub const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;

/// A parsed request head, plus any bytes that arrived after it.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    /// What followed the path's `?`, if anything.
    pub query: Option<String>,
    /// The minor HTTP version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
    headers: Vec<(String, String)>,
    /// Bytes read past the head: a pipelined body, or websocket frames after an upgrade.
    pub rest: Vec<u8>,
}

impl Request {
    /// The first header of that name (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of a query parameter, as sent (still percent-encoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            pair.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
        })
    }

    /// Every line of a header (case-insensitive name), in the order sent.
    fn header_lines<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The header's value when it was sent at most once; `Err` when it came on several lines.
    pub fn single_header(&self, name: &str) -> Result<Option<&str>, Repeated> {
        let mut lines = self.header_lines(name);
        match (lines.next(), lines.next()) {
            (first, None) => Ok(first),
            (Some(_), Some(_)) => Err(Repeated),
            (None, Some(_)) => unreachable!("a second line without a first"),
        }
    }

    /// Whether a comma-separated header holds a token (case-insensitive), on any of its lines:
    /// a list may be split over several lines (RFC 9110, 5.3).
    pub fn header_has(&self, name: &str, token: &str) -> bool {
        self.header_lines(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The declared body length: `Ok(None)` without one; `Err` with the reason when the
    /// values differ, or one is not a number that fits (RFC 9112, 6.3: such a request cannot
    /// be framed, and a proxy in front might frame it differently).
    pub fn content_length(&self) -> Result<Option<u64>, &'static str> {
        let mut length = None;
        for value in self
            .header_lines("content-length")
            .flat_map(|v| v.split(','))
        {
            let value = value.trim();
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err("Content-Length is not a number");
            }
            let parsed: u64 = value.parse().map_err(|_| "Content-Length overflows")?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err("conflicting Content-Length values");
            }
            length = Some(parsed);
        }
        Ok(length)
    }
}

/// A header that may be sent once came on several lines.
#[derive(Debug, PartialEq, Eq)]
pub struct Repeated;

/// Why no request could be read.
#[derive(Debug)]
pub enum HeadError {
    /// The peer closed or the socket failed before a whole head arrived.
    Closed,
    /// The head did not arrive within `--handshake-timeout`.
    TimedOut,
    /// Not HTTP.
    Malformed,
    /// Longer than `MAX_HEAD`.
    TooLarge,
}

/// Reads one request head.
pub async fn read_head<S: futures_lite::AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Request, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let target = parsed.path.unwrap_or("/");
                let (path, query) = match target.split_once('?') {
                    Some((path, query)) => (path, Some(query.to_owned())),
                    None => (target, None),
                };
                let request = Request {
                    method: parsed.method.unwrap_or("").to_owned(),
                    path: path.to_owned(),
                    query,
                    version: parsed.version.unwrap_or(0),
                    headers: parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                    rest: buf[len..].to_vec(),
                };
                return Ok(request);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Malformed),
        }
    }
}

/// A response; the connection closes after it. Its body is `body`, followed by `pieces` when
/// it is a listing written in bounded pieces (then its length is told by the close).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub pieces: Option<Pieces>,
}

/// A body made piece by piece from the application's state as the socket takes it, so that
/// a response holds one piece at a time however long it is, and a client that does not read
/// holds no more than that and its socket's buffer. Each call appends the next piece to the
/// buffer and returns whether it was the last.
pub struct Pieces(pub Box<NextPiece>);

/// Appends the next piece to the buffer; whether it was the last.
pub type NextPiece = dyn FnMut(&App, &mut Vec<u8>) -> bool;

impl std::fmt::Debug for Pieces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pieces")
    }
}

impl Response {
    /// A JSON body, fields in the order the value serialises them.
    pub fn json(status: u16, body: &impl serde::Serialize) -> Response {
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            // Serialising plain data into memory cannot fail.
            body: serde_json::to_vec(body).unwrap_or_default(),
            pieces: None,
        }
    }

    /// A 200 whose body is written in pieces.
    pub fn pieces(content_type: &'static str, pieces: Pieces) -> Response {
        Response {
            status: 200,
            content_type,
            headers: Vec::new(),
            body: Vec::new(),
            pieces: Some(pieces),
        }
    }

    /// Makes every piece now and appends it to `body` (for tests and the fuzz targets, which
    /// look at a whole body).
    pub fn collect(&mut self, app: &App) {
        if let Some(Pieces(mut next)) = self.pieces.take() {
            while !next(app, &mut self.body) {}
        }
    }

    /// Writes the response, its pieces made one at a time as the socket takes them: the state
    /// is borrowed while a piece is made, never across a write.
    pub async fn send<S: futures_lite::AsyncWrite + Unpin>(
        mut self,
        stream: &mut S,
        app: &App,
    ) -> std::io::Result<()> {
        let Some(Pieces(mut next)) = self.pieces.take() else {
            return self.write_to(stream).await;
        };
        stream.write_all(self.head(None).as_bytes()).await?;
        let mut piece = Vec::with_capacity(crate::listing::PIECE_CAPACITY);
        loop {
            piece.clear();
            let last = next(app, &mut piece);
            stream.write_all(&piece).await?;
            if last {
                return stream.flush().await;
            }
        }
    }

    /// `{"error": message}` with that status.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &json!({ "error": message }))
    }

    /// 405, with the `Allow` header HTTP requires.
    pub fn method_not_allowed(allowed: &str) -> Response {
        let mut response = Response::error(405, &format!("method not allowed; use {allowed}"));
        response.headers.push(("Allow", allowed.to_owned()));
        response
    }

    pub async fn write_to<S: futures_lite::AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
    ) -> std::io::Result<()> {
        stream.write_all(&self.bytes()).await?;
        stream.flush().await
    }

    /// The whole response, head and body, as it goes on the wire.
    pub fn bytes(&self) -> Vec<u8> {
        let mut bytes = self.head(Some(self.body.len())).into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    /// The status line and headers; without a length, the close ends the body.
    fn head(&self, length: Option<usize>) -> String {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
        );
        if let Some(length) = length {
            head.push_str(&format!("Content-Length: {length}\r\n"));
        }
        head.push_str("Connection: close\r\n");
        for (name, value) in &self.headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        head
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// `GET /healthz`: 200 while the source is connected, 503 (`degraded`) while it is not.
pub fn healthz(app: &App) -> Response {
    let status = &app.source;
    let connected = status.connected();
    let body = json!({
        "status": if connected { "ok" } else { "degraded" },
        "source": {
            "kind": status.kind.as_str(),
            "connected": connected,
            "since": clock::rfc3339(status.since()),
        },
        "clients": app.hub.len(),
        "live_calls": app.live.borrow().len(),
    });
    Response::json(if connected { 200 } else { 503 }, &body)
}

/// `GET /metrics`: the counters in Prometheus text format.
pub fn metrics(app: &App) -> Response {
    let (metrics, status, hub) = (&app.metrics, &app.source, &app.hub);
    use std::fmt::Write;
    let mut out = String::with_capacity(2048);
    let source = status.kind.as_str();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let source_label = format!("{{source=\"{source}\"}}");
    family(
        "callwire_events_in_total",
        "counter",
        "Events taken from the source.",
        &[(source_label.clone(), metrics.events_in.get())],
    );
    family(
        "callwire_events_not_json_total",
        "counter",
        "Events whose payload was not JSON (delivered as a JSON string).",
        &[(String::new(), metrics.events_not_json.get())],
    );
    let by_dialect =
        |value: &dyn Fn(Dialect) -> u64| labelled("dialect", &Dialect::ALL, &|d| d.as_str(), value);
    family(
        "callwire_deliveries_total",
        "counter",
        "Frames queued to clients, one per client per event.",
        &by_dialect(&|d| metrics.deliveries(d).get()),
    );
    family(
        "callwire_events_dropped_total",
        "counter",
        "Frames or events dropped instead of delivered, by reason.",
        &labelled("reason", &DropReason::ALL, &|r| r.as_str(), &|r| {
            metrics.dropped(r).get()
        }),
    );
    family(
        "callwire_limit_hits_total",
        "counter",
        "Times a limit bit: a refused upgrade or request, or a closed socket.",
        &labelled("limit", &Limit::ALL, &|l| l.as_str(), &|l| {
            metrics.limit_hits(l).get()
        }),
    );
    family(
        "callwire_forbidden_total",
        "counter",
        "Requests and upgrades refused with 403: a foreign Host or Origin, or a CORS simple request.",
        &labelled("reason", &Forbidden::ALL, &|f| f.as_str(), &|f| {
            metrics.forbidden(f).get()
        }),
    );
    family(
        "callwire_clients",
        "gauge",
        "Websocket clients connected now.",
        &by_dialect(&|d| hub.count(d) as u64),
    );
    family(
        "callwire_source_connected",
        "gauge",
        "Whether the source is connected (1) or not (0).",
        &[(source_label.clone(), u64::from(status.connected()))],
    );
    family(
        "callwire_source_reconnects_total",
        "counter",
        "Source connections after the first.",
        &[(source_label, status.reconnects())],
    );
    family(
        "callwire_live_calls",
        "gauge",
        "Calls live now.",
        &[(String::new(), app.live.borrow().len() as u64)],
    );
    family(
        "callwire_live_calls_evicted_total",
        "counter",
        "Live calls dropped to stay within --max-calls.",
        &[(String::new(), metrics.live_calls_evicted.get())],
    );
    let history = app.history.borrow();
    family(
        "callwire_history_bytes",
        "gauge",
        "Bytes the history of recent events holds: its entries (at most --history-bytes) and their slots.",
        &[(String::new(), history.bytes() as u64)],
    );
    family(
        "callwire_history_events",
        "gauge",
        "Events the history holds for clients that resume.",
        &[(String::new(), history.len() as u64)],
    );
    let budget = Budget::new(hub.limits());
    let parts: Vec<(String, u64)> = Part::ALL
        .iter()
        .map(|&part| {
            let labels = format!("{{part=\"{}\"}}", part.as_str());
            (labels, budget.part(part) as u64)
        })
        .chain([("{part=\"total\"}".to_owned(), budget.total() as u64)])
        .collect();
    family(
        "callwire_memory_budget_bytes",
        "gauge",
        "The most memory each store may hold with the limits in force, and their total.",
        &parts,
    );
    family(
        "callwire_process_resident_memory_bytes",
        "gauge",
        "Resident memory of the process.",
        &[(String::new(), resident_bytes())],
    );
    Response {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        headers: Vec::new(),
        body: out.into_bytes(),
        pieces: None,
    }
}

/// One sample per value of a label: `({label="name"}, value)`.
fn labelled<T: Copy>(
    label: &str,
    all: &[T],
    name: &dyn Fn(T) -> &'static str,
    value: &dyn Fn(T) -> u64,
) -> Vec<(String, u64)> {
    all.iter()
        .map(|&item| (format!("{{{label}=\"{}\"}}", name(item)), value(item)))
        .collect()
}

/// Resident set size from /proc (0 where there is none). `VmRSS` is in kB whatever the page
/// size: ARM kernels often use 16 or 64 KiB pages, so `statm`'s page count times 4096 is wrong.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .unwrap_or(0);
    kb * 1024
}

/// A request parsed from its request line (`GET / HTTP/1.1`) and header lines (for tests).
#[cfg(test)]
pub fn test_request(request_line: &str, lines: &[(&str, &str)]) -> Request {
    let mut text = format!("{request_line}\r\n");
    for (name, value) in lines {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    let mut bytes = text.as_bytes();
    smol::block_on(read_head(&mut bytes)).expect("a whole head")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(lines: &[(&str, &str)]) -> Request {
        test_request("POST /x HTTP/1.1", lines)
    }

    #[test]
    fn one_content_length_however_it_is_sent() {
        assert_eq!(head(&[]).content_length(), Ok(None));
        let same = head(&[("Content-Length", "7"), ("content-length", "7, 7")]);
        assert_eq!(same.content_length(), Ok(Some(7)));
        for lengths in [
            &[("Content-Length", "0"), ("Content-Length", "5")][..],
            &[("Content-Length", "0, 5")],
            &[("Content-Length", "18446744073709551616")],
            &[("Content-Length", "+5")],
            &[("Content-Length", "")],
            &[("Content-Length", "5,")],
        ] {
            assert!(head(lengths).content_length().is_err(), "{lengths:?}");
        }
    }

    #[test]
    fn header_lists_span_lines_and_single_headers_do_not() {
        let request = head(&[
            ("Sec-WebSocket-Protocol", "a, b"),
            ("sec-websocket-protocol", "actioncable-v1-json"),
            ("Host", "one"),
            ("Host", "two"),
        ]);
        assert!(request.header_has("sec-websocket-protocol", "actioncable-v1-json"));
        assert!(request.header_has("Sec-WebSocket-Protocol", "b"));
        assert!(!request.header_has("sec-websocket-protocol", "c"));
        assert_eq!(request.single_header("host"), Err(Repeated));
        assert_eq!(request.single_header("origin"), Ok(None));
        assert_eq!(request.version, 1);
    }
}
