//! The `callwire` binary: reads the command line, then runs the bridge on one thread.

use std::process::ExitCode;
use std::rc::Rc;

use callwire::auth::Auth;
use callwire::cli::{self, Config, SourceConfig};
use callwire::event::Event;
use callwire::hub::Hub;
use callwire::metrics::Metrics;
use callwire::server::{self, App};
use callwire::source::{Deliver, SourceKind, SourceStatus, demo, mqtt};
use callwire::{info, logging, warn};
use smol::LocalExecutor;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let config = match cli::parse(&args) {
        Ok(config) => config,
        Err((help, 0)) => {
            print!("{help}");
            return ExitCode::SUCCESS;
        }
        Err((message, code)) => return fail(&message, code),
    };
    logging::init(config.log_level);
    let auth = match &config.auth_file {
        Some(path) => match Auth::load(path) {
            Ok(auth) => auth,
            Err(message) => return fail(&message, 2),
        },
        None => Auth::open(),
    };
    let listener = match std::net::TcpListener::bind(config.listen)
        .and_then(smol::net::TcpListener::try_from)
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
    smol::block_on(executor.run(run(config, auth, listener, executor.clone())));
    ExitCode::SUCCESS
}

fn fail(message: &str, code: i32) -> ExitCode {
    eprintln!("callwire: {message}");
    ExitCode::from(code as u8)
}

/// Wires source, hub and server together and serves until the process is stopped.
async fn run(
    config: Config,
    auth: Auth,
    listener: smol::net::TcpListener,
    executor: Rc<LocalExecutor<'static>>,
) {
    let metrics = Rc::new(Metrics::default());
    let kind = match config.source {
        SourceConfig::Mqtt(_) => SourceKind::Mqtt,
        SourceConfig::Demo { .. } => SourceKind::Demo,
    };
    let app = Rc::new(App {
        hub: Hub::new(config.limits, metrics.clone()),
        auth: Rc::new(auth),
        source: Rc::new(SourceStatus::new(kind)),
        metrics: metrics.clone(),
    });
    let deliver: Deliver = {
        let app = app.clone();
        let metrics = metrics.clone();
        Rc::new(move |event: Event| {
            metrics.events_in.inc();
            if event.json.is_none() {
                metrics.events_not_json.inc();
            }
            app.hub.publish(&event);
        })
    };
    match config.source {
        SourceConfig::Mqtt(options) => {
            info!(
                "source: mqtt {}:{} topics {:?}",
                options.host, options.port, options.topics
            );
            let (_publisher, driver) =
                mqtt::start(options, app.source.clone(), metrics.clone(), deliver);
            executor.spawn(driver).detach();
        }
        SourceConfig::Demo { calls_per_sec } => {
            info!("source: demo PBX, {calls_per_sec} calls/s");
            executor
                .spawn(demo::run(app.source.clone(), deliver, calls_per_sec))
                .detach();
        }
    }
    info!("listening on {}", config.listen);
    server::run(listener, app, executor).await;
}
