//! Logging to stderr, one line per record, in a form journald understands.
//!
//! Under systemd (`JOURNAL_STREAM` set) each line starts with the syslog priority `<N>`, which
//! journald turns into the record's level; on a terminal it starts with the level's name.
//! Secrets never reach these macros: callers log credential names, never secrets.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 3,
    Warn = 4,
    Info = 6,
    Debug = 7,
}

impl Level {
    pub fn parse(text: &str) -> Option<Level> {
        match text {
            "error" => Some(Level::Error),
            "warn" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static JOURNAL: AtomicBool = AtomicBool::new(false);

/// Sets the most verbose level written, and picks the line form for where stderr goes.
pub fn init(max: Level) {
    MAX_LEVEL.store(max as u8, Ordering::Relaxed);
    JOURNAL.store(
        std::env::var_os("JOURNAL_STREAM").is_some(),
        Ordering::Relaxed,
    );
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

#[doc(hidden)]
pub fn write(level: Level, args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = if JOURNAL.load(Ordering::Relaxed) {
        writeln!(err, "<{}>{}", level as u8, args)
    } else {
        writeln!(err, "{:5} {}", level.name(), args)
    };
}

#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {
        if $crate::logging::enabled($level) {
            $crate::logging::write($level, format_args!($($arg)+));
        }
    };
}
#[macro_export]
macro_rules! error { ($($arg:tt)+) => { $crate::log!($crate::logging::Level::Error, $($arg)+) }; }
#[macro_export]
macro_rules! warn { ($($arg:tt)+) => { $crate::log!($crate::logging::Level::Warn, $($arg)+) }; }
#[macro_export]
macro_rules! info { ($($arg:tt)+) => { $crate::log!($crate::logging::Level::Info, $($arg)+) }; }
#[macro_export]
macro_rules! debug { ($($arg:tt)+) => { $crate::log!($crate::logging::Level::Debug, $($arg)+) }; }

/// The note a rate-limited line ends with: how many like it were held back (empty if none).
pub fn held_back(count: u64) -> String {
    match count {
        0 => String::new(),
        n => format!(" ({n} similar lines held back)"),
    }
}

/// Lets a recurring message through at most once per interval, and says how many were held
/// back, so a flood of bad input cannot flood the log.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    last: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl RateLimit {
    pub const fn new(interval: Duration) -> RateLimit {
        RateLimit {
            interval,
            last: Cell::new(None),
            suppressed: Cell::new(0),
        }
    }

    /// Runs `log` if a line may be written now, passing it a note of how many were held back
    /// (empty when none were).
    pub fn report(&self, log: impl FnOnce(&str)) {
        if let Some(held) = self.check() {
            log(&held_back(held));
        }
    }

    /// `Some(held_back)` when a line may be written now, `None` when it is held back.
    pub fn check(&self) -> Option<u64> {
        let now = Instant::now();
        match self.last.get() {
            Some(last) if now.duration_since(last) < self.interval => {
                self.suppressed.set(self.suppressed.get() + 1);
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.suppressed.replace(0))
            }
        }
    }
}
