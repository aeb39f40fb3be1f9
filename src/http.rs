//! HTTP on the shared port: reading a request head (httparse) and writing a response. What a
//! request is answered with is decided elsewhere (`server` routes; `status`, `rest`).

use std::cell::RefCell;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use serde_json::json;

use crate::live::LiveState;

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
pub struct Pieces {
    pub next: Box<NextPiece>,
    /// The most one piece takes: its buffer is allocated once at that size.
    pub capacity: usize,
}

/// Appends the next piece to the buffer; whether it was the last.
pub type NextPiece = dyn FnMut(&LiveState, &mut Vec<u8>) -> bool;

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
    pub fn collect(&mut self, live: &LiveState) {
        if let Some(Pieces { mut next, .. }) = self.pieces.take() {
            while !next(live, &mut self.body) {}
        }
    }

    /// Writes the response, its pieces made one at a time as the socket takes them: the state
    /// is borrowed while a piece is made, never across a write.
    pub async fn send<S: futures_lite::AsyncWrite + Unpin>(
        mut self,
        stream: &mut S,
        live: &RefCell<LiveState>,
    ) -> std::io::Result<()> {
        let Some(Pieces { mut next, capacity }) = self.pieces.take() else {
            return self.write_to(stream).await;
        };
        stream.write_all(self.head(None).as_bytes()).await?;
        let mut piece = Vec::with_capacity(capacity);
        loop {
            piece.clear();
            let last = next(&live.borrow(), &mut piece);
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
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
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
