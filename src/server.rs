//! The one listening port: accepts connections, reads each request head, and routes it by path
//! to a websocket dialect or a plain HTTP endpoint (contract: docs/protocols/README.md, "One
//! port").
//!
//! The upgrade is answered here, not by tungstenite, so that every refusal (404, 400, 503) is a
//! proper HTTP answer decided before a client takes a slot.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::Role;
use futures_lite::{AsyncWriteExt, FutureExt};
use futures_rustls::TlsAcceptor;
use smol::{Async, LocalExecutor, Timer};

use crate::app::App;
use crate::auth::{Auth, Credential};
use crate::dialect::Session;
use crate::dialect::blackhole::{BlackholeSession, Subscriptions};
use crate::dialect::cable::{self, CableSession};
use crate::dialect::isymphony::{Filters, ISymphonySession};
use crate::dialect_label::Dialect;
use crate::fds::Spare;
use crate::http::{self, HeadError, Request, Response};
use crate::hub::{Full, Interest};
use crate::limits::MAX_PENDING;
use crate::logging::RateLimit;
use crate::metrics::Limit;
use crate::origins;
use crate::rest::{self, LiveApi};
use crate::seats::NoSeat;
use crate::status;
use crate::tls::{self, ListenerTls, MaybeTls};
use crate::ws::{self, Connection};

/// How long a plain HTTP answer may take to be written: a client that does not read it is
/// dropped then, and its place given back.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a failed `accept` is logged, at most.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

thread_local! {
    /// Failed TLS handshakes (a client that does not trust the certificate, a port scan) are
    /// counted in `/metrics` and logged at most this often.
    static TLS_LOG: RateLimit = const { RateLimit::new(ACCEPT_LOG_EVERY) };
}

/// Connections open now per peer address, for `--max-per-ip`.
#[derive(Default)]
struct PerIp(RefCell<HashMap<IpAddr, usize>>);

/// One connection's place in the per-IP count, given back when the connection ends.
struct IpSlot {
    per_ip: Rc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn enter(self: &Rc<PerIp>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut open = self.0.borrow_mut();
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            per_ip: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.per_ip.0.borrow_mut();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The connections being answered, and the accept loop while it waits for one to be done.
#[derive(Default)]
struct Pending {
    count: Cell<usize>,
    accepting: RefCell<Option<Waker>>,
}

impl Pending {
    /// Waits for a place among the `MAX_PENDING`, and takes it.
    async fn enter(self: &Rc<Pending>) -> PendingSlot {
        poll_fn(|cx| {
            if self.count.get() < MAX_PENDING {
                return Poll::Ready(());
            }
            *self.accepting.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        self.count.set(self.count.get() + 1);
        PendingSlot(self.clone())
    }
}

/// A connection's place among the `MAX_PENDING` being answered, given back when its handler
/// ends.
struct PendingSlot(Rc<Pending>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let pending = &self.0;
        pending.count.set(pending.count.get() - 1);
        if let Some(accepting) = pending.accepting.borrow_mut().take() {
            accepting.wake();
        }
    }
}

/// Accepts connections forever, each handled on its own task; with `tls`, every connection
/// is TLS (a plain one fails its handshake).
pub async fn run(
    listener: Async<TcpListener>,
    app: Rc<App>,
    tls: Option<Rc<ListenerTls>>,
    executor: Rc<LocalExecutor<'static>>,
) {
    let per_ip = Rc::new(PerIp::default());
    let pending = Rc::new(Pending::default());
    let max_per_ip = app.hub.limits().max_per_ip;
    let busy = Response::error(503, "too many connections; try again later").bytes();
    let mut spare = Spare::open();
    let accept_log = RateLimit::new(ACCEPT_LOG_EVERY);
    loop {
        if pending.count.get() >= MAX_PENDING {
            app.metrics.limit_hits(Limit::Connections).inc();
        }
        let answering = pending.enter().await;
        match listener.accept().await {
            Ok((mut stream, peer)) => {
                let _ = stream.get_ref().set_nodelay(true);
                match per_ip.enter(peer.ip(), max_per_ip) {
                    Some(slot) => {
                        let acceptor = tls.as_ref().map(|tls| tls.acceptor());
                        let handshake = handle(
                            stream,
                            acceptor,
                            app.clone(),
                            slot,
                            answering,
                            executor.clone(),
                        );
                        executor.spawn(handshake).detach();
                    }
                    // A TLS client could not read a plain answer: it is only closed.
                    None if tls.is_some() => app.metrics.limit_hits(Limit::PerIp).inc(),
                    None => {
                        app.metrics.limit_hits(Limit::PerIp).inc();
                        let refuse = async move {
                            let too_many =
                                Response::error(429, "too many connections from your address");
                            let _ = too_many.write_to(&mut stream).await;
                            drop(answering);
                        };
                        executor.spawn(refuse).detach();
                    }
                }
            }
            Err(err) => {
                accept_log.report(|held| warn!("accept failed: {err}{held}"));
                let out_of_files = matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                if out_of_files && spare.refuse_one(listener.get_ref(), &busy) {
                    app.metrics.limit_hits(Limit::OpenFiles).inc();
                    continue;
                }
                // Back off instead of spinning on an error that would repeat at once.
                Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request and answers it; an accepted upgrade goes on as a `Connection` task of
/// its own (so the handshake's state is freed), taking `slot` with it. With `tls`, the TLS
/// handshake comes first, within the same `--handshake-timeout` as the request head.
async fn handle(
    stream: Async<TcpStream>,
    tls: Option<TlsAcceptor>,
    app: Rc<App>,
    slot: IpSlot,
    _answering: PendingSlot,
    executor: Rc<LocalExecutor<'static>>,
) {
    let timeout = app.hub.limits().handshake_timeout;
    let deadline = Instant::now() + timeout;
    let tcp = ws::Tcp::new(stream);
    let mut stream = match tls {
        None => MaybeTls::Plain(tcp),
        Some(acceptor) => {
            let bounded = |connection: &mut rustls::ServerConnection| {
                connection.set_buffer_limit(Some(tls::SEND_BUFFER_LIMIT));
            };
            let handshake = async { Some(acceptor.accept_with(tcp, bounded).await) }.or(async {
                Timer::at(deadline).await;
                None
            });
            match handshake.await {
                Some(Ok(tls)) => MaybeTls::Tls(Box::new(tls.into())),
                Some(Err(err)) => {
                    app.metrics.tls_handshake_failures.inc();
                    TLS_LOG
                        .with(|log| log.report(|held| info!("TLS handshake failed: {err}{held}")));
                    return;
                }
                None => {
                    app.metrics.limit_hits(Limit::HandshakeTimeout).inc();
                    return;
                }
            }
        }
    };
    let head = http::read_head(&mut stream)
        .or(async {
            Timer::at(deadline).await;
            Err(HeadError::TimedOut)
        })
        .await;
    let request = match head {
        Ok(request) => request,
        Err(HeadError::Closed) => return,
        Err(HeadError::TimedOut) => {
            app.metrics.limit_hits(Limit::HandshakeTimeout).inc();
            return;
        }
        Err(HeadError::Malformed) => {
            let _ = Response::error(400, "malformed request")
                .write_to(&mut stream)
                .await;
            return;
        }
        Err(HeadError::TooLarge) => {
            let _ = Response::error(431, "request head too large")
                .write_to(&mut stream)
                .await;
            return;
        }
    };
    if let Err(reason) = request.content_length() {
        let _ = Response::error(400, reason).write_to(&mut stream).await;
        return;
    }
    if let Err(reason) = app.origins.check(&request) {
        app.origins.report(reason, &request, &app.metrics);
        let _ = Response::error(403, origins::message(reason))
            .write_to(&mut stream)
            .await;
        return;
    }
    if request.header_has("upgrade", "websocket") {
        upgrade(stream, request, &app, slot, &executor).await;
    } else {
        let response = route_http(&request, &app);
        let _ = response
            .send(&mut stream, &app.live)
            .or(async {
                Timer::after(ANSWER_TIMEOUT).await;
                Ok(())
            })
            .await;
    }
}

/// The answer to a plain HTTP request (not an upgrade): a pure function of the request and the
/// application's state, public so that the fuzz targets (fuzz/) can drive it.
pub fn route_http(request: &Request, app: &App) -> Response {
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/healthz") => status::healthz(app),
        ("GET", "/metrics") => status::metrics(app),
        ("GET", "/" | "/dashboard.js" | "/dashboard.css") => dashboard(&request.path),
        (_, "/healthz" | "/metrics") => Response::method_not_allowed("GET"),
        (_, "/v2/websockets") => rest::websockets(request, &app.catalogue, &app.auth),
        (_, path) if path.starts_with("/rest/live/") => LiveApi {
            auth: &app.auth,
            live: &app.live,
            history: &app.history,
            commands: &app.commands,
        }
        .route(request),
        _ => Response::error(404, &format!("no such path {}", request.path)),
    }
}

/// The built-in dashboard (plain `GET /`; an upgrade on `/` is Blackhole): a page, its script
/// and its style, embedded in the binary. Script and style are files of their own so that the
/// policy can forbid every inline script and style.
fn dashboard(path: &str) -> Response {
    const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
        connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
        frame-ancestors 'none'";
    let (content_type, body) = match path {
        "/dashboard.js" => (
            "text/javascript; charset=utf-8",
            include_str!("dashboard.js"),
        ),
        "/dashboard.css" => ("text/css; charset=utf-8", include_str!("dashboard.css")),
        _ => ("text/html; charset=utf-8", include_str!("dashboard.html")),
    };
    Response {
        status: 200,
        content_type,
        headers: vec![
            ("Content-Security-Policy", POLICY.to_owned()),
            ("Cache-Control", "no-cache".to_owned()),
            ("X-Content-Type-Options", "nosniff".to_owned()),
            ("Referrer-Policy", "no-referrer".to_owned()),
        ],
        body: body.as_bytes().to_vec(),
        pieces: None,
    }
}

async fn upgrade(
    mut stream: ws::Stream,
    request: Request,
    app: &Rc<App>,
    slot: IpSlot,
    executor: &LocalExecutor<'static>,
) {
    let Some(dialect) = Dialect::for_path(&request.path) else {
        let _ = Response::error(404, &format!("no websocket at {}", request.path))
            .write_to(&mut stream)
            .await;
        return;
    };
    let key = match upgrade_key(&request) {
        Ok(key) => key,
        Err(reason) => {
            let _ = Response::error(400, reason).write_to(&mut stream).await;
            return;
        }
    };
    let limits = app.hub.limits();
    // AnyCable's extended protocol when the client offers it (delivery.md), else the plain one.
    let cable_protocol = [cable::SUBPROTOCOL_EXTENDED, cable::SUBPROTOCOL]
        .into_iter()
        .find(|protocol| request.header_has("sec-websocket-protocol", protocol));
    let extended = cable_protocol == Some(cable::SUBPROTOCOL_EXTENDED);
    // The session it asks to restore: AnyCable's client presents its id in the URL; others
    // may in a header.
    let restore = extended
        .then(|| {
            request
                .header("x-anycable-restore-sid")
                .or_else(|| request.query_param("sid"))
        })
        .flatten()
        .map(str::to_owned);
    // iSymphony proves who it is on the upgrade itself; Blackhole later, with a token;
    // ActionCable per subscription, with its key.
    let held = app.interest.share();
    let interest = match dialect {
        Dialect::Blackhole => Fresh::Blackhole(Rc::new(RefCell::new(Subscriptions::new(
            limits.max_bindings,
            held,
        )))),
        Dialect::ISymphony => match upgrade_credential(&request, &app.auth) {
            Ok(credential) => Fresh::ISymphony(Rc::new(RefCell::new(Filters::new(
                credential,
                limits.max_filters,
                held,
            )))),
            Err(refusal) => {
                let _ = refusal.write_to(&mut stream).await;
                return;
            }
        },
        Dialect::Cable => Fresh::Cable(Rc::new(RefCell::new(match extended {
            true => cable::Subscriptions::extended(limits.max_bindings, held),
            false => cable::Subscriptions::new(limits.max_bindings, held),
        }))),
    };
    // With `--auth`, Blackhole and ActionCable sockets prove who they are after the upgrade,
    // and wait for that on seats of their own.
    let seat = match !matches!(interest, Fresh::ISymphony(_)) && app.auth.required() {
        true => app.seats.unauthenticated(),
        false => app.seats.authenticated(),
    };
    let registered = seat.and_then(|seat| {
        let client = app.hub.register(dialect, interest.shared());
        client
            .map(|client| (client, seat))
            .map_err(|Full| NoSeat::Clients)
    });
    let (client, seat) = match registered {
        Ok(registered) => registered,
        Err(no_seat) => {
            let (limit, message) = match no_seat {
                NoSeat::Clients => (Limit::MaxClients, "too many clients"),
                NoSeat::Unauthenticated => (
                    Limit::Unauthenticated,
                    "too many sockets waiting to authenticate",
                ),
            };
            app.metrics.limit_hits(limit).inc();
            let _ = Response::error(503, message).write_to(&mut stream).await;
            return;
        }
    };
    // Blackhole answers without a subprotocol even when one is offered (blackhole.md).
    // ActionCable answers `actioncable-v1-json` when it is offered (the official client needs
    // it), and no subprotocol otherwise, as Rails does (docs/protocols/decisions.md, "ActionCable").
    let protocol = match (dialect, cable_protocol) {
        (Dialect::Cable, Some(protocol)) => format!("Sec-WebSocket-Protocol: {protocol}\r\n"),
        _ => String::new(),
    };
    let accepted = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{protocol}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if stream.write_all(accepted.as_bytes()).await.is_err() {
        app.hub.unregister(&client);
        return;
    }
    let config = ws::config(limits);
    stream.bound_send_buffer();
    let ws = WebSocketStream::from_partially_read(stream, request.rest, Role::Server, Some(config))
        .await;
    let app = app.clone();
    match interest {
        Fresh::Blackhole(subscriptions) => {
            let (auth, history) = (app.auth.clone(), app.history.clone());
            let session = BlackholeSession::new(client.clone(), subscriptions, auth, history);
            spawn_connection(
                executor,
                Connection::new(ws, client, session, app, seat),
                slot,
            );
        }
        Fresh::ISymphony(filters) => {
            let session = ISymphonySession::new(client.clone(), filters);
            spawn_connection(
                executor,
                Connection::new(ws, client, session, app, seat),
                slot,
            );
        }
        Fresh::Cable(subscriptions) => {
            let session = if extended {
                CableSession::extended(
                    client.clone(),
                    subscriptions,
                    app.auth.clone(),
                    app.history.clone(),
                    app.cable_sessions.clone(),
                    restore.as_deref(),
                )
            } else {
                CableSession::new(client.clone(), subscriptions, app.auth.clone())
            };
            spawn_connection(
                executor,
                Connection::new(ws, client, session, app, seat),
                slot,
            );
        }
    }
}

/// A new socket's interest, typed until its session is made: the hub gets it as its
/// `Interest`, the session as its own state.
enum Fresh {
    Blackhole(Rc<RefCell<Subscriptions>>),
    ISymphony(Rc<RefCell<Filters>>),
    Cable(Rc<RefCell<cable::Subscriptions>>),
}

impl Fresh {
    fn shared(&self) -> Rc<dyn Interest> {
        match self {
            Fresh::Blackhole(subscriptions) => subscriptions.clone(),
            Fresh::ISymphony(filters) => filters.clone(),
            Fresh::Cable(subscriptions) => subscriptions.clone(),
        }
    }
}

/// The `Sec-WebSocket-Key` of a valid upgrade request (RFC 6455, 4.2.1), or why it is not one.
fn upgrade_key(request: &Request) -> Result<&str, &'static str> {
    if request.method != "GET" {
        return Err("a websocket upgrade is a GET");
    }
    if request.version != 1 {
        return Err("a websocket upgrade needs HTTP/1.1");
    }
    if request.header("sec-websocket-version") != Some("13")
        || !request.header_has("connection", "upgrade")
    {
        return Err("bad websocket upgrade request");
    }
    let key = request.single_header("sec-websocket-key").ok().flatten();
    let decoded = key.and_then(|key| data_encoding::BASE64.decode(key.trim().as_bytes()).ok());
    match (key, decoded) {
        (Some(key), Some(nonce)) if nonce.len() == 16 => Ok(key),
        _ => Err("Sec-WebSocket-Key must be 16 bytes in base64"),
    }
}

/// Runs an upgraded connection as a task of its own, holding `slot` until it ends.
fn spawn_connection<S: Session + Unpin + 'static>(
    executor: &LocalExecutor<'static>,
    connection: Connection<S>,
    slot: IpSlot,
) {
    let task = Counted {
        connection,
        _slot: slot,
    };
    executor.spawn(task).detach();
}

/// A connection's task, holding its place in the per-IP count until it ends. A plain
/// wrapper rather than an `async` block, which would hold the connection twice.
struct Counted<F> {
    connection: F,
    _slot: IpSlot,
}

impl<F: Future + Unpin> Future for Counted<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        Pin::new(&mut self.connection).poll(cx)
    }
}

/// The credential an iSymphony upgrade carries in its `Authorization` header (HTTP Basic, as
/// The credential an iSymphony upgrade carries in its `Authorization` header (HTTP Basic, as
/// `ws://name:secret@host` URLs send it), or the 401 that refuses it before the upgrade.
/// Without `--auth`, every upgrade is let in.
fn upgrade_credential(request: &Request, auth: &Auth) -> Result<Rc<Credential>, Response> {
    let header = request.header("authorization");
    let found = match auth.by_authorization(header) {
        None if !auth.required() => auth.by_secret(None),
        found => found,
    };
    found.ok_or_else(|| {
        let message = match header {
            None => "authentication required: connect as ws://name:secret@host/... (HTTP Basic)",
            Some(_) => "invalid credentials",
        };
        let mut refusal = Response::error(401, message);
        refusal
            .headers
            .push(("WWW-Authenticate", "Basic realm=\"callwire\"".to_owned()));
        refusal
    })
}
