//! What the fuzz targets share: the application built as `main` builds it (small limits), the
//! credentials, the input format of the session targets, and the plain references the targets
//! check callwire against.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Once;
use std::time::Duration;

use bytes::Bytes;
use callwire::app::App;
use callwire::auth::Auth;
use callwire::dialect::cable::SavedSessions;
use callwire::event::Event;
use callwire::frame::Frame;
use callwire::history::History;
use callwire::hub::{Client, Hub};
use callwire::limits::{BytePool, Limits};
use callwire::live::LiveState;
use callwire::metrics::Metrics;
use callwire::origins::Origins;
use callwire::rest::Catalogue;
use callwire::seats::Seats;
use callwire::source::{Commands, SourceKind, SourceStatus};
use serde_json::Value;

// The contract's oracle for Blackhole event data, the same file the integration tests use.
#[path = "../../tests/common/kazoo_reference.rs"]
mod kazoo_reference;
pub use kazoo_reference::blackhole_data;

/// Small limits, so that the fuzzer reaches every bound quickly.
pub const LIMITS: Limits = Limits {
    tls: false,
    max_clients: 4,
    max_bindings: 4,
    max_filters: 4,
    queue_depth: 64,
    queue_bytes: 1024 * 1024,
    queue_bytes_total: 16 * 1024 * 1024,
    stall_timeout: Duration::from_secs(5),
    max_calls: 3,
    events_per_call: 2,
    max_message_size: 64 * 1024,
    max_request_size: 64 * 1024,
    ping_interval: Duration::from_secs(30),
    max_per_ip: 4,
    handshake_timeout: Duration::from_secs(5),
    request_rate: 1000.0,
    request_burst: 1000,
    auth_timeout: Duration::from_secs(10),
    max_unauthenticated: 4,
    // Larger than any input's events can fill, so the model may assume nothing is dropped.
    history_bytes: 16 * 1024 * 1024,
    history_ttl: Duration::from_secs(300),
};

/// The credentials of the `@auth` inputs: (name, secret, account).
pub const CREDENTIALS: [(&str, &str, &str); 3] = [
    ("manager", "manag3rpa55word", "*"),
    ("desk", "d35k", "acc1"),
    ("other", "0th3r", "acc2"),
];

/// Quiets the log: the hub warns about full queues, and stderr is slow.
pub fn quiet() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| callwire::logging::init(callwire::logging::Level::Error));
}

/// `Auth::open()`, or the credentials file of `CREDENTIALS` (written once per process).
pub fn auth(required: bool) -> Rc<Auth> {
    thread_local! {
        static LOADED: Rc<Auth> = {
            let entries: Vec<Value> = CREDENTIALS
                .iter()
                .map(|(name, secret, account)| {
                    serde_json::json!({"name": name, "secret": secret, "account": account})
                })
                .collect();
            let text = serde_json::json!({ "credentials": entries }).to_string();
            let path = std::env::temp_dir()
                .join(format!("callwire-fuzz-credentials-{}.json", std::process::id()));
            std::fs::write(&path, text).expect("write the credentials file");
            let auth = Auth::load(path.to_str().expect("UTF-8 temp path")).expect("load credentials");
            let _ = std::fs::remove_file(&path);
            Rc::new(auth)
        };
    }
    if required {
        LOADED.with(Rc::clone)
    } else {
        Rc::new(Auth::open())
    }
}

/// A fresh application, as `main` builds it, with `LIMITS` and no broker.
pub fn app(auth: Rc<Auth>) -> App {
    quiet();
    let metrics = Rc::new(Metrics::default());
    let auth_required = auth.required();
    App {
        hub: Hub::new(LIMITS, metrics.clone()),
        auth,
        source: Rc::new(SourceStatus::new(SourceKind::Demo)),
        live: RefCell::new(LiveState::new(
            LIMITS.max_calls,
            LIMITS.events_per_call,
            metrics.clone(),
        )),
        metrics,
        // A known epoch, so that an input can resume from a position in it.
        history: Rc::new(RefCell::new(History::with_epoch("fuzz".into(), &LIMITS))),
        cable_sessions: Rc::new(SavedSessions::new(LIMITS.max_clients, LIMITS.history_ttl)),
        catalogue: Catalogue::default(),
        commands: Commands::None,
        origins: Origins::new(
            "127.0.0.1:58080".parse().expect("an address"),
            auth_required,
            Vec::new(),
            Vec::new(),
        ),
        seats: Seats::new(&LIMITS),
        interest: BytePool::for_interest(&LIMITS),
        stopping: std::cell::Cell::new(false),
    }
}

/// Every frame queued for a client.
pub fn drain(client: &Client) -> Vec<Frame> {
    std::iter::from_fn(|| client.pop()).collect()
}

/// One step of a session target's input.
pub enum Step<'a> {
    /// A text message from the client.
    Text(&'a str),
    /// A binary message from the client (`B ` and the bytes).
    Binary(&'a [u8]),
    /// An event from the broker (`E <routing key> <payload>`).
    Event { key: &'a str, payload: &'a [u8] },
}

/// A session target's input: lines, the first of which may be `@auth` (serve with the
/// credentials file instead of without authentication). A line that is not UTF-8 is a binary
/// message.
pub struct Script<'a> {
    pub auth: bool,
    pub steps: Vec<Step<'a>>,
}

impl<'a> Script<'a> {
    pub fn parse(data: &'a [u8]) -> Script<'a> {
        let mut lines = data.split(|&b| b == b'\n').peekable();
        let auth = lines.next_if(|line| *line == b"@auth").is_some();
        let steps = lines
            .map(|line| {
                if let Some(rest) = line.strip_prefix(b"E ") {
                    let split = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
                    let key = std::str::from_utf8(&rest[..split]).unwrap_or("");
                    let payload = rest.get(split + 1..).unwrap_or_default();
                    Step::Event { key, payload }
                } else if let Some(rest) = line.strip_prefix(b"B ") {
                    Step::Binary(rest)
                } else {
                    match std::str::from_utf8(line) {
                        Ok(text) => Step::Text(text),
                        Err(_) => Step::Binary(line),
                    }
                }
            })
            .collect();
        Script { auth, steps }
    }
}

/// An event as a source makes it.
pub fn event(key: &str, payload: &[u8]) -> Event {
    Event::new(key.to_owned(), Bytes::copy_from_slice(payload))
}

/// AMQP topic matching written straight from the definition (events.md), memoised so that
/// bindings full of `#` stay polynomial: `memo[i][j]` is whether `binding[i..]` matches
/// `key[j..]`.
pub fn reference_matches(binding: &str, key: &str) -> bool {
    let binding: Vec<&str> = binding.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    let mut memo = vec![vec![None; key.len() + 1]; binding.len() + 1];
    fn go(b: &[&str], k: &[&str], i: usize, j: usize, memo: &mut [Vec<Option<bool>>]) -> bool {
        if let Some(known) = memo[i][j] {
            return known;
        }
        let result = match b.get(i) {
            None => j == k.len(),
            Some(&"#") => (j..=k.len()).any(|skip| go(b, k, i + 1, skip, memo)),
            Some(&"*") => j < k.len() && go(b, k, i + 1, j + 1, memo),
            Some(literal) => k.get(j) == Some(literal) && go(b, k, i + 1, j + 1, memo),
        };
        memo[i][j] = Some(result);
        result
    }
    go(&binding, &key, 0, 0, &mut memo)
}

/// An event's account by events.md: the first non-empty string at `Account-ID`, `account_id`,
/// `Custom-Channel-Vars.Account-ID`, `custom_channel_vars.account_id`.
pub fn reference_account(json: Option<&Value>) -> Option<String> {
    let json = json?;
    [
        json.get("Account-ID"),
        json.get("account_id"),
        json.get("Custom-Channel-Vars")
            .and_then(|v| v.get("Account-ID")),
        json.get("custom_channel_vars")
            .and_then(|v| v.get("account_id")),
        json.get("variable_ecallmgr_Account-ID"),
    ]
    .into_iter()
    .flatten()
    .filter_map(Value::as_str)
    .find(|account| !account.is_empty())
    .map(str::to_owned)
}

/// Whether a subscriber scoped to `scope` may see something of `account` (events.md).
pub fn visible(account: Option<&str>, scope: &str) -> bool {
    scope == "*" || account == Some(scope)
}

/// Parses a frame as JSON; every frame callwire sends must be JSON. Without serde_json's depth
/// limit: a frame nests the payload one level deeper than the payload itself, and a client's
/// parser (a browser's `JSON.parse`) has no such limit.
pub fn json(frame: &str) -> Value {
    use serde::Deserialize;
    let mut parser = serde_json::Deserializer::from_str(frame);
    parser.disable_recursion_limit();
    Value::deserialize(&mut parser)
        .and_then(|value| parser.end().map(|()| value))
        .unwrap_or_else(|err| panic!("frame is not JSON ({err}): {frame}"))
}

/// Whether `text` is `YYYY-MM-DDTHH:MM:SSZ`, as the live API writes every time.
pub fn is_rfc3339_seconds(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// An ActionCable `events` selector by metasmoke's rules (actioncable.md, and `Selector::parse`'s
/// documentation), written with Ruby's `String#split` as Ruby defines it.
#[derive(Debug, PartialEq, Eq)]
pub enum ReferenceSelector {
    /// No `events`, or a blank one: every model, create and update.
    Every,
    /// Each model named, with the types it gets (create, update, destroy).
    Models(Vec<(String, [bool; 3])>),
    /// A part `model#` with no types: the subscription is rejected.
    Malformed,
    /// More than `MAX_MODELS` distinct models: rejected.
    TooManyModels,
}

/// Ruby's `str.split(sep)` for a one-character separator: every field, then trailing empty
/// fields removed (so `""` has none).
pub fn ruby_split(text: &str, separator: char) -> Vec<&str> {
    let mut fields: Vec<&str> = text.split(separator).collect();
    while fields.last() == Some(&"") {
        fields.pop();
    }
    fields
}

impl ReferenceSelector {
    pub fn parse(events: &str) -> ReferenceSelector {
        // Rails' `present?`: blank is whitespace only.
        if events.chars().all(char::is_whitespace) {
            return ReferenceSelector::Every;
        }
        let mut models: Vec<(String, [bool; 3])> = Vec::new();
        for part in ruby_split(events, ';') {
            let (model, types) = if part.contains('#') {
                // `model, types = part.split('#')`; `types.split(',')` raises on nil.
                let fields = ruby_split(part, '#');
                let Some(names) = fields.get(1) else {
                    return ReferenceSelector::Malformed;
                };
                let mut types = [false; 3];
                for name in ruby_split(names, ',') {
                    match name {
                        "create" => types[0] = true,
                        "update" => types[1] = true,
                        "destroy" => types[2] = true,
                        _ => {}
                    }
                }
                (fields.first().copied().unwrap_or(""), types)
            } else {
                (part, [true, true, false])
            };
            let count = models.len();
            match models.iter_mut().find(|(name, _)| name == model) {
                Some((_, known)) => {
                    for (k, t) in known.iter_mut().zip(types) {
                        *k |= t;
                    }
                }
                None if count == callwire::dialect::cable::MAX_MODELS => {
                    return ReferenceSelector::TooManyModels;
                }
                None => models.push((model.to_owned(), types)),
            }
        }
        ReferenceSelector::Models(models)
    }

    /// Whether the selector wants events of `kind` (0 create, 1 update, 2 destroy) of `model`.
    pub fn wants(&self, model: &str, kind: usize) -> bool {
        match self {
            ReferenceSelector::Every => kind != 2,
            ReferenceSelector::Models(models) => models
                .iter()
                .any(|(name, types)| name == model && types[kind]),
            ReferenceSelector::Malformed | ReferenceSelector::TooManyModels => false,
        }
    }
}
