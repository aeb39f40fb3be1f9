//! Matcher benchmark: the cost of finding every binding that matches one event, over 10,000
//! bindings of the shapes Kazoo and FreeSWITCH clients use.
//!
//! ```sh
//! cargo bench --bench matcher                      # 10,000 bindings
//! cargo bench --bench matcher -- --bindings 1000
//! ```
//!
//! Three contestants, each asked the same question per event (which bindings match this
//! routing key?) and checked to give the same answer:
//!
//! - a naive linear scan written here: both strings split into fresh `Vec`s on every check,
//!   matched recursively;
//! - callwire's linear scan, as the hub does it today: pre-parsed `Binding`s, the key split
//!   once per event with `RoutingKey::split`, `Binding::matches` on each;
//! - the candidate: whatever `type Candidate` below names. It is the linear scan until
//!   callwire has an index. To measure one, implement `Matcher` for it (a few lines, as
//!   `LinearScan` does) and change that one line.
//!
//! It prints ns per event, the allocations per event (a counting global allocator), and the
//! issue's target (candidate ≥ 10× faster than the naive scan at 10,000 bindings) with
//! PASS/MISS. It asserts nothing about time.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use callwire::matcher::{Binding, RoutingKey};
use callwire::rng::Rng;
use counting_alloc::allocations_during;

// The counting global allocator the allocation tests use (the bench runs on one thread).
#[path = "../counting_alloc/mod.rs"]
mod counting_alloc;

/// The matcher measured as "callwire". Swap in an index here.
type Candidate = LinearScan;

/// What the hub needs from a matcher: built once from every binding, then asked, per event,
/// which bindings match.
trait Matcher: Sized {
    const NAME: &'static str;
    fn build(bindings: &[&str]) -> Self;
    /// Calls `hit` with the index (into the slice given to `build`) of every binding that
    /// matches `key`, each once, in any order.
    fn for_each_match(&self, key: &str, hit: impl FnMut(usize));
}

/// callwire today: pre-parsed bindings, one split of the key per event, a check per binding.
struct LinearScan {
    bindings: Vec<Binding>,
}

impl Matcher for LinearScan {
    const NAME: &'static str = "callwire linear scan (Binding::matches)";

    fn build(bindings: &[&str]) -> LinearScan {
        LinearScan {
            bindings: bindings
                .iter()
                .map(|b| Binding::parse(b).expect("a valid binding"))
                .collect(),
        }
    }

    fn for_each_match(&self, key: &str, mut hit: impl FnMut(usize)) {
        let Some(key) = RoutingKey::split(key) else {
            return;
        };
        for (i, binding) in self.bindings.iter().enumerate() {
            if binding.matches(&key) {
                hit(i);
            }
        }
    }
}

/// The baseline: nothing prepared, strings split on every check, matched recursively.
struct NaiveScan {
    bindings: Vec<String>,
}

impl Matcher for NaiveScan {
    const NAME: &'static str = "naive linear scan (split + recursion)";

    fn build(bindings: &[&str]) -> NaiveScan {
        NaiveScan {
            bindings: bindings.iter().map(|b| b.to_string()).collect(),
        }
    }

    fn for_each_match(&self, key: &str, mut hit: impl FnMut(usize)) {
        for (i, binding) in self.bindings.iter().enumerate() {
            if naive_matches(binding, key) {
                hit(i);
            }
        }
    }
}

fn naive_matches(binding: &str, key: &str) -> bool {
    let binding: Vec<&str> = binding.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    naive_rest(&binding, &key)
}

fn naive_rest(binding: &[&str], key: &[&str]) -> bool {
    match binding.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|skip| naive_rest(rest, &key[skip..])),
        Some((&"*", rest)) => !key.is_empty() && naive_rest(rest, &key[1..]),
        Some((literal, rest)) => key.first() == Some(literal) && naive_rest(rest, &key[1..]),
    }
}

// ---------------------------------------------------------------------------------------------
// Realistic bindings and keys

/// Draws from callwire's SplitMix64 with a fixed seed, so every run measures the same
/// bindings; `below` takes the remainder, as when BENCHMARKS.md's figures were measured (the
/// library's `Rng::below` multiplies, and would draw other bindings).
struct Draws(Rng);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn text(&mut self, alphabet: &[u8], len: usize) -> String {
        (0..len)
            .map(|_| char::from(alphabet[self.below(alphabet.len())]))
            .collect()
    }
}

const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";

const CALL_EVENTS: &[&str] = &[
    "CHANNEL_CREATE",
    "CHANNEL_ANSWER",
    "CHANNEL_DESTROY",
    "CHANNEL_BRIDGE",
    "CHANNEL_HOLD",
    "CHANNEL_UNHOLD",
    "CHANNEL_TRANSFEROR",
    "CHANNEL_CONNECTED",
    "DTMF",
    "PARK_PARKED",
];
const FS_EVENTS: &[&str] = &[
    "CHANNEL_CREATE",
    "CHANNEL_ANSWER",
    "CHANNEL_BRIDGE",
    "CHANNEL_HANGUP",
    "CHANNEL_HANGUP_COMPLETE",
    "CHANNEL_PARK",
    "DTMF",
    "HEARTBEAT",
];
const FS_HOSTS: &[&str] = &[
    "pbx01", "pbx02", "pbx03", "pbx04", "pbx05", "pbx06", "pbx07", "pbx08",
];
const DOC_ACTIONS: &[&str] = &["doc_created", "doc_edited", "doc_deleted"];
const DOC_TYPES: &[&str] = &["user", "device", "callflow", "vmbox", "conference"];

struct Workload {
    bindings: Vec<String>,
    keys: Vec<String>,
    /// Bindings of each shape, for the report.
    shapes: Vec<(&'static str, usize)>,
}

fn workload(count: usize, keys: usize) -> Workload {
    let mut rng = Draws(Rng::new(0x0ca1_1d1e));
    // Calls and documents in flight: events are about these; half the per-id bindings name
    // one of them, the other half a call or document that sends nothing now.
    let call_ids: Vec<String> = (0..2000).map(|_| rng.text(ALNUM, 20)).collect();
    let doc_ids: Vec<String> = (0..2000).map(|_| rng.text(HEX, 32)).collect();
    let mut shapes = vec![
        ("call.<EVENT>.*", 0),
        ("call.*.<call-id>", 0),
        ("object.<action>.<type>.<id>", 0),
        ("FreeSWITCH.* literal-key style", 0),
        ("#-suffixed", 0),
        ("# in the middle", 0),
    ];
    let mut bindings = Vec::with_capacity(count);
    for _ in 0..count {
        let roll = rng.below(100);
        let (shape, binding) = match roll {
            0..25 => (0, format!("call.{}.*", rng.pick(CALL_EVENTS))),
            25..50 => {
                let id = if rng.chance(50) {
                    call_ids[rng.below(call_ids.len())].clone()
                } else {
                    rng.text(ALNUM, 20)
                };
                (1, format!("call.*.{id}"))
            }
            50..70 => {
                let (action, kind) = if rng.chance(70) {
                    ("doc_edited", "user")
                } else {
                    (rng.pick(DOC_ACTIONS), rng.pick(DOC_TYPES))
                };
                let id = if rng.chance(50) {
                    doc_ids[rng.below(doc_ids.len())].clone()
                } else {
                    rng.text(HEX, 32)
                };
                (2, format!("object.{action}.{kind}.{id}"))
            }
            70..80 => {
                let binding = match rng.below(3) {
                    // `CHANNEL_*` is a literal segment in AMQP, not a prefix wildcard.
                    0 => "FreeSWITCH.*.CHANNEL_*.#".to_owned(),
                    1 => format!(
                        "FreeSWITCH.{}.{}.#",
                        rng.pick(FS_HOSTS),
                        rng.pick(FS_EVENTS)
                    ),
                    _ => format!("FreeSWITCH.*.{}.*.*", rng.pick(FS_EVENTS)),
                };
                (3, binding)
            }
            80..95 => {
                let binding = match rng.below(10) {
                    0 => "call.#".to_owned(),
                    1 => "object.#".to_owned(),
                    2 | 3 => format!("FreeSWITCH.{}.#", rng.pick(FS_HOSTS)),
                    4 | 5 => format!("object.{}.#", rng.pick(DOC_ACTIONS)),
                    _ => format!("call.{}.#", rng.pick(CALL_EVENTS)),
                };
                (4, binding)
            }
            _ => {
                let binding = match rng.below(3) {
                    0 => format!("call.#.{}", call_ids[rng.below(call_ids.len())]),
                    1 => format!("object.#.user.{}", doc_ids[rng.below(doc_ids.len())]),
                    _ => format!("FreeSWITCH.#.{}.#", rng.pick(FS_EVENTS)),
                };
                (5, binding)
            }
        };
        shapes[shape].1 += 1;
        bindings.push(binding);
    }
    let keys = (0..keys)
        .map(|_| match rng.below(100) {
            0..60 => format!(
                "call.{}.{}",
                rng.pick(CALL_EVENTS),
                call_ids[rng.below(call_ids.len())]
            ),
            60..85 => format!(
                "object.{}.{}.{}",
                rng.pick(DOC_ACTIONS),
                rng.pick(DOC_TYPES),
                doc_ids[rng.below(doc_ids.len())]
            ),
            // FreeSWITCH keys keep an empty segment before the channel UUID.
            _ => format!(
                "FreeSWITCH.{}.{}..{}-{}-{}-{}-{}",
                rng.pick(FS_HOSTS),
                rng.pick(FS_EVENTS),
                rng.text(HEX, 8),
                rng.text(HEX, 4),
                rng.text(HEX, 4),
                rng.text(HEX, 4),
                rng.text(HEX, 12)
            ),
        })
        .collect();
    Workload {
        bindings,
        keys,
        shapes,
    }
}

// ---------------------------------------------------------------------------------------------
// Measuring

struct Measured {
    name: &'static str,
    ns_per_event: f64,
    allocations_per_event: f64,
    matches_per_event: f64,
}

/// Time per event, over whole passes through `keys`, for at least `budget`.
fn measure<M: Matcher>(matcher: &M, keys: &[&str], budget: Duration) -> Measured {
    let run = |keys: &[&str]| {
        let mut matches = 0usize;
        for key in keys {
            matcher.for_each_match(black_box(key), |i| {
                black_box(i);
                matches += 1;
            });
        }
        matches
    };
    // Warm-up, and the allocation count (on a slice, so the naive side stays quick).
    let sample = &keys[..keys.len().min(256)];
    run(sample);
    let allocations = allocations_during(|| {
        black_box(run(sample));
    });
    let start = Instant::now();
    let (mut events, mut matches, mut at) = (0usize, 0usize, 0usize);
    while start.elapsed() < budget {
        // Chunks of 64 keys, cycling through all of them.
        let end = (at + 64).min(keys.len());
        matches += run(&keys[at..end]);
        events += end - at;
        at = if end == keys.len() { 0 } else { end };
    }
    let elapsed = start.elapsed();
    Measured {
        name: M::NAME,
        ns_per_event: elapsed.as_nanos() as f64 / events as f64,
        allocations_per_event: allocations as f64 / sample.len() as f64,
        matches_per_event: matches as f64 / events as f64,
    }
}

/// The indices each matcher finds for a key, sorted: every contestant must agree.
fn answer<M: Matcher>(matcher: &M, key: &str) -> Vec<usize> {
    let mut found = Vec::new();
    matcher.for_each_match(key, |i| found.push(i));
    found.sort_unstable();
    found.dedup();
    found
}

fn main() -> ExitCode {
    let mut count = 10_000;
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        match word.as_str() {
            "--bench" => {}
            "--bindings" => match words.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => count = n,
                _ => {
                    eprintln!("matcher: --bindings needs a positive whole number");
                    return ExitCode::from(2);
                }
            },
            "--help" | "-h" => {
                println!("usage: cargo bench --bench matcher -- [--bindings N]  (default 10000)");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("matcher: unknown argument {other}");
                return ExitCode::from(2);
            }
        }
    }

    let work = workload(count, 4096);
    let bindings: Vec<&str> = work.bindings.iter().map(String::as_str).collect();
    let keys: Vec<&str> = work.keys.iter().map(String::as_str).collect();
    let naive = NaiveScan::build(&bindings);
    let linear = LinearScan::build(&bindings);
    let candidate = Candidate::build(&bindings);

    // Same answers first: a fast wrong matcher is not a result.
    let checked = keys.len().min(512);
    for key in &keys[..checked] {
        let expected = answer(&naive, key);
        for (name, got) in [
            (LinearScan::NAME, answer(&linear, key)),
            (Candidate::NAME, answer(&candidate, key)),
        ] {
            if got != expected {
                eprintln!(
                    "matcher: {name} disagrees with the naive scan on {key}: {} vs {} matches",
                    got.len(),
                    expected.len()
                );
                return ExitCode::FAILURE;
            }
        }
    }

    let budget = Duration::from_millis(1500);
    let mut results = vec![
        measure(&naive, &keys, budget),
        measure(&linear, &keys, budget),
    ];
    let candidate_is_linear = Candidate::NAME == LinearScan::NAME;
    if !candidate_is_linear {
        results.push(measure(&candidate, &keys, budget));
    }

    println!();
    println!(
        "matcher: {count} bindings, {} distinct routing keys, answers checked equal on {checked}",
        keys.len()
    );
    let shapes: Vec<String> = work
        .shapes
        .iter()
        .map(|(shape, n)| format!("{shape} {n}"))
        .collect();
    println!("binding shapes: {}", shapes.join(", "));
    println!(
        "matches per event: {:.1} on average",
        results[0].matches_per_event
    );
    println!();
    println!(
        "{:<42} {:>12} {:>12} {:>14} {:>14}",
        "", "ns/event", "ns/binding", "allocs/event", "allocs/check"
    );
    for r in &results {
        println!(
            "{:<42} {:>12.0} {:>12.2} {:>14.1} {:>14.3}",
            r.name,
            r.ns_per_event,
            r.ns_per_event / count as f64,
            r.allocations_per_event,
            r.allocations_per_event / count as f64
        );
    }
    let naive_ns = results[0].ns_per_event;
    let linear_ns = results[1].ns_per_event;
    let candidate_ns = results.last().map_or(f64::NAN, |r| r.ns_per_event);
    println!();
    println!(
        "candidate = {}{}",
        Candidate::NAME,
        if candidate_is_linear {
            " (no index yet: the row above)"
        } else {
            ""
        }
    );
    println!(
        "speed-up of the candidate: {:.1}× over the naive scan, {:.1}× over callwire's linear scan",
        naive_ns / candidate_ns,
        linear_ns / candidate_ns
    );
    let speedup = naive_ns / candidate_ns;
    println!();
    println!("target (from the issue):");
    println!(
        "  {}  candidate ≥ 10× faster than a naive linear scan at 10,000 bindings: {:.1}×{}",
        if speedup >= 10.0 { "PASS" } else { "MISS" },
        speedup,
        if count == 10_000 {
            String::new()
        } else {
            format!(" (this run: {count} bindings)")
        }
    );
    ExitCode::SUCCESS
}
