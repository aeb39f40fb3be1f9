//! The bridge's own endpoints: `/healthz` (the source's health) and `/metrics` (the counters,
//! gauges and memory budget in Prometheus text format). They read the whole application's
//! state, so they are answered here, beside the router, and `http` stays transport only.

use serde_json::json;

use crate::app::App;
use crate::budget::Budget;
use crate::clock;
use crate::dialect_label::Dialect;
use crate::http::Response;
use crate::metrics::{DropReason, Forbidden, Limit};

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
    family(
        "callwire_tls_handshake_failures_total",
        "counter",
        "TLS handshakes on the listener that failed (--tls-cert).",
        &[(String::new(), metrics.tls_handshake_failures.get())],
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
    let parts: Vec<(String, u64)> = budget
        .parts()
        .map(|part| {
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
