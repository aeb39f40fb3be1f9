//! The `callwire` binary: reads the command line, then runs the bridge on one thread.

use std::cell::{Cell, RefCell};
use std::process::ExitCode;
use std::rc::{Rc, Weak};
use std::time::Duration;

use async_signal::{Signal, Signals};
use callwire::app::{App, ToApp};
use callwire::auth::Auth;
use callwire::budget::Budget;
use callwire::cli::{self, Config, Run, SourceConfig};
use callwire::dialect::cable;
use callwire::history::History;
use callwire::hub::Hub;
use callwire::limits::BytePool;
use callwire::limits::Limits;
use callwire::live::LiveState;
use callwire::metrics::Metrics;
use callwire::notify::{self, Notifier};
use callwire::origins::Origins;
use callwire::rest::Catalogue;
use callwire::seats::Seats;
use callwire::server;
use callwire::simulate;
use callwire::source::{Commands, EventSink, SourceKind, SourceStatus, amqp, demo, mqtt};
use callwire::state;
use callwire::tls::ListenerTls;
use callwire::{fds, trim};
use callwire::{info, logging, warn};
use futures_lite::{FutureExt, StreamExt};
use smol::{Async, LocalExecutor, Timer};

/// How long shutdown waits for clients to take their goodbye.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(4);
/// How long the source has, once stopped, to send the acknowledgements of what it handed on.
const SOURCE_SETTLE: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match cli::parse(&args) {
        Ok(Run::Serve(config)) => serve(*config),
        Ok(Run::Simulate(config)) => {
            logging::init(logging::Level::Info);
            simulate::run(*config)
        }
        Err((help, 0)) => {
            print!("{help}");
            ExitCode::SUCCESS
        }
        Err((message, code)) => fail(&message, code),
    }
}

/// Serves websockets and HTTP until the process is stopped.
fn serve(mut config: Config) -> ExitCode {
    trim::init();
    logging::init(config.log_level);
    let open_files = match fds::raise_limit(fds::needed(&config.limits), config.limits.max_clients)
    {
        Ok(open_files) => open_files,
        Err(message) => return fail(&message, 2),
    };
    let auth = match &config.auth_file {
        Some(path) => match Auth::load(path) {
            Ok(auth) => {
                warn_if_no_credentials(auth.count(), path);
                auth
            }
            Err(message) => return fail(&message, 2),
        },
        None => Auth::open(),
    };
    let tls = match &config.tls {
        Some(files) => match ListenerTls::load(&files.cert, &files.key) {
            Ok(tls) => Some(Rc::new(tls)),
            Err(message) => return fail(&message, 2),
        },
        None => None,
    };
    let listener = match std::net::TcpListener::bind(config.listen)
        .and_then(Async::<std::net::TcpListener>::try_from)
    {
        Ok(listener) => listener,
        Err(err) => return fail(&format!("--listen {}: {err}", config.listen), 2),
    };
    if config.insecure_no_auth && !auth.required() && !config.listen.ip().is_loopback() {
        warn!(
            "serving {} WITHOUT authentication (--insecure-no-auth)",
            config.listen
        );
    }
    let executor = Rc::new(LocalExecutor::new());
    info!("{}", Budget::new(&config.limits).line());
    info!(
        "open files: {} needed, limit {open_files}",
        fds::needed(&config.limits)
    );
    let metrics = Rc::new(Metrics::default());
    // Before the source connects: a persistent session hands over at once what it kept.
    let mut saved = match state::start(config.state.as_ref(), &config.limits, &metrics) {
        Ok(saved) => saved,
        Err(message) => return fail(&message, 2),
    };
    if let SourceConfig::Amqp(options) = &mut config.source {
        if let Some(stream) = &mut options.stream {
            stream_positions(stream, &mut saved.0, &config.limits);
        }
    }
    // Boxed behind `dyn`, so block_on cannot inline the bridge's poll into this frame: rustc
    // probes every page of a large frame on entry, and those pages would stay resident.
    let bridge = run(
        config,
        auth,
        tls,
        listener,
        executor.clone(),
        metrics,
        saved,
    )
    .boxed_local();
    smol::block_on(executor.run(bridge));
    ExitCode::SUCCESS
}

/// With `--amqp-stream`, positions are the stream's: a history saved under the stream's epoch
/// goes on, and the stream is read on after its last event; any other history gives way to an
/// empty one under the stream's epoch, and the stream is read from its next message.
fn stream_positions(stream: &mut amqp::StreamOptions, history: &mut History, limits: &Limits) {
    let epoch = stream.epoch();
    if **history.epoch() == *epoch {
        stream.after = Some(history.last_offset()).filter(|&last| last > 0);
        return;
    }
    *history = History::with_epoch(epoch.into(), limits);
    info!("positions: the stream's, epoch {}", history.epoch());
}

fn fail(message: &str, code: i32) -> ExitCode {
    eprintln!("callwire: {message}");
    ExitCode::from(code as u8)
}

/// Wires source, hub and server together and serves until the process is stopped.
async fn run(
    config: Config,
    auth: Auth,
    tls: Option<Rc<ListenerTls>>,
    listener: Async<std::net::TcpListener>,
    executor: Rc<LocalExecutor<'static>>,
    metrics: Rc<Metrics>,
    (mut history, live): (History, LiveState),
) {
    let limits = config.limits;
    let origins = Origins::new(
        config.listen,
        auth.required(),
        config.allowed_hosts,
        config.allowed_origins,
    );
    if origins.allows_any_origin() {
        warn!("--allowed-origin '*': pages from ANY web site may open websockets and send hangups");
    }
    let status = Rc::new(SourceStatus::new(match config.source {
        SourceConfig::Mqtt(_) => SourceKind::Mqtt,
        SourceConfig::Amqp(_) => SourceKind::Amqp,
        SourceConfig::Demo { .. } => SourceKind::Demo,
    }));
    // The source needs somewhere to send events before the app exists, and the app needs the
    // source's command publisher: the source holds the app weakly (`ToApp`). The source's
    // task cannot run before this function returns, so no event finds it missing.
    let app = Rc::new_cyclic(|app: &Weak<App>| {
        let sink: EventSink = Rc::new(ToApp(app.clone()));
        let commands = start_source(
            config.source,
            &config.command_topic,
            &status,
            &metrics,
            &mut history,
            sink,
            &executor,
        );
        App {
            hub: Hub::new(limits, metrics.clone()),
            auth: Rc::new(auth),
            source: status,
            metrics: metrics.clone(),
            live: RefCell::new(live),
            history: Rc::new(RefCell::new(history)),
            cable_sessions: Rc::new(cable::SavedSessions::new(
                limits.max_clients,
                limits.history_ttl,
            )),
            catalogue: Catalogue::default(),
            commands,
            origins,
            seats: Seats::new(&limits),
            interest: BytePool::for_interest(&limits),
            stopping: Cell::new(false),
        }
    });
    // The bound address, not the flag: with port 0 this says which port the system chose.
    let address = listener.get_ref().local_addr().unwrap_or(config.listen);
    if let Some(tls) = &tls {
        info!(
            "TLS: every connection is https:// or wss://, certificate {}",
            tls.cert_path()
        );
    }
    info!("listening on {address}");
    // One timer pings every ActionCable socket.
    let pinging = app.clone();
    executor
        .spawn(async move { cable::send_pings(&pinging.hub).await })
        .detach();
    executor
        .spawn(reload_on_hangup(app.clone(), tls.clone()))
        .detach();
    if trim::NEEDED {
        executor.spawn(trim::run()).detach();
    }
    if let Some(state) = &config.state {
        executor
            .spawn(state::save_on_interval(app.clone(), state.clone()))
            .detach();
    }
    // One task closes the clients too slow to take what is queued for them (hub.rs).
    let watching = app.clone();
    executor
        .spawn(async move { watching.hub.watch_stalls().await })
        .detach();
    let notifier = Notifier::from_env();
    let ready = notify_ready(notifier.clone(), address, app.clone(), executor.clone());
    let serving = async {
        server::run(listener, app.clone(), tls, executor).await;
        Ok(())
    };
    // `or` polls its left side first: the accept loop and the signal watch are in place
    // before `ready` tells systemd so.
    if let Err(signal) = serving.or(shutdown_signal()).or(ready).await {
        // What the broker sends from now on stays there (a persistent session, a durable
        // queue) for the next start.
        app.stopping.set(true);
        info!("{signal}: closing {} client(s)", app.hub.len());
        if let Some(notifier) = &notifier {
            notifier.send(&format!("STOPPING=1\nSTATUS={signal}: shutting down"));
        }
        shut_down(&app.hub).await;
        if let Some(state) = &config.state {
            // The source acknowledges what it handed on as soon as it runs again; give it
            // that turn before the save, so nothing saved comes back from the broker.
            Timer::after(SOURCE_SETTLE).await;
            state::save_at_shutdown(&app, state);
        }
    }
}

/// Tells systemd (`$NOTIFY_SOCKET`) that callwire serves, then pings its watchdog from a task
/// on the main executor, so a stalled event loop stops the pings. Never finishes.
async fn notify_ready(
    notifier: Option<Rc<Notifier>>,
    address: std::net::SocketAddr,
    app: Rc<App>,
    executor: Rc<LocalExecutor<'static>>,
) -> Result<(), &'static str> {
    if let Some(notifier) = notifier {
        notifier.send(&format!("READY=1\nSTATUS=serving on {address}"));
        if let Some(every) = notify::watchdog_interval() {
            let status = move || {
                let source = &app.source;
                format!(
                    "serving on {address}: {} client(s), source {} {}, {} live call(s)",
                    app.hub.len(),
                    source.kind.as_str(),
                    if source.connected() { "up" } else { "down" },
                    app.live.borrow().len()
                )
            };
            executor
                .spawn(notify::watchdog(notifier, every, status))
                .detach();
        }
    }
    std::future::pending().await
}

/// On SIGHUP, reads the credentials file again and closes the sockets whose credential is
/// gone; and reads the TLS certificate and key again for new connections (open ones keep
/// theirs). A broken file keeps what is in force and says why.
async fn reload_on_hangup(app: Rc<App>, tls: Option<Rc<ListenerTls>>) {
    let Ok(mut hangups) = Signals::new([Signal::Hup]) else {
        warn!("cannot watch for SIGHUP; credentials and certificates are read only at start-up");
        return;
    };
    while hangups.next().await.is_some() {
        if let Some(tls) = &tls {
            match tls.reload() {
                Ok(()) => info!(
                    "SIGHUP: new connections get the certificate now in {}",
                    tls.cert_path()
                ),
                Err(reason) => warn!("SIGHUP: kept the TLS certificate in force: {reason}"),
            }
        }
        if app.auth.path().is_none() {
            continue;
        }
        match app.auth.reload() {
            Ok(count) => {
                warn_if_no_credentials(count, app.auth.path().unwrap_or_default());
                let closed = app.hub.close_revoked(&app.auth);
                info!(
                    "SIGHUP: {count} credential(s) in force; closed {closed} socket(s) whose credential was removed"
                );
            }
            Err(reason) => warn!("SIGHUP: kept the credentials in force: {reason}"),
        }
    }
}

/// An empty credentials file is valid (every login refused until it is filled in), but
/// worth a warning.
fn warn_if_no_credentials(count: usize, path: &str) {
    if count == 0 {
        warn!("--auth: {path} holds no credentials: nobody can log in");
    }
}

/// Waits for SIGTERM or SIGINT; the error names it (an error, so it wins the race).
async fn shutdown_signal() -> Result<(), &'static str> {
    let Ok(mut signals) = Signals::new([Signal::Term, Signal::Int]) else {
        warn!("cannot watch for SIGTERM and SIGINT; stop callwire with SIGKILL");
        return std::future::pending().await;
    };
    match signals.next().await {
        Some(Ok(Signal::Int)) => Err("SIGINT"),
        _ => Err("SIGTERM"),
    }
}

/// Stops accepting (the listener is gone by now), asks every client to close with its
/// dialect's goodbye, and waits for them, at most `SHUTDOWN_TIMEOUT`.
async fn shut_down(hub: &Hub) {
    hub.close_all();
    let drained = async {
        while !hub.is_empty() {
            Timer::after(Duration::from_millis(20)).await;
        }
    };
    drained
        .or(async {
            Timer::after(SHUTDOWN_TIMEOUT).await;
        })
        .await;
    if !hub.is_empty() {
        warn!("{} client(s) did not close in time", hub.len());
    }
}

/// Starts the configured source on the executor; returns where commands to the PBX go. A
/// stream source becomes the history's archive, for resumes older than the history.
fn start_source(
    source: SourceConfig,
    command_topic: &str,
    status: &Rc<SourceStatus>,
    metrics: &Rc<Metrics>,
    history: &mut History,
    sink: EventSink,
    executor: &LocalExecutor<'static>,
) -> Commands {
    match source {
        SourceConfig::Mqtt(options) => {
            info!(
                "source: mqtt {}:{} topics {:?}",
                options.host, options.port, options.topics
            );
            let (publisher, driver) = mqtt::start(options, status.clone(), metrics.clone(), sink);
            executor.spawn(driver).detach();
            Commands::Mqtt {
                publisher,
                topic: command_topic.to_owned(),
            }
        }
        SourceConfig::Amqp(options) => {
            info!(
                "source: amqp {} exchange {} bindings {:?}",
                options.address(),
                options.exchange,
                options.bindings
            );
            let (publisher, archive, driver) =
                amqp::start(options, status.clone(), metrics.clone(), sink);
            if let Some(archive) = archive {
                history.set_archive(archive);
            }
            executor.spawn(driver).detach();
            Commands::Amqp(publisher)
        }
        SourceConfig::Demo { calls_per_sec } => {
            info!("source: demo PBX, {calls_per_sec} calls/s");
            executor
                .spawn(demo::run(status.clone(), sink, calls_per_sec))
                .detach();
            Commands::None
        }
    }
}
