//! Matching allocates nothing: a counting global allocator watches 10,000 `matches` calls.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use callwire::matcher::{Binding, RoutingKey};

/// Counts allocations made by threads that opted in, so the test harness's own threads
/// (output capture, bookkeeping) cannot disturb the count.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note_allocation() {
    // `try_with` because the allocator may run while thread-locals are being torn down.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`; counting does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller upholds `alloc`'s contract, which we pass on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: `ptr` came from this allocator, that is from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread while `f` runs.
fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.set(true);
    f();
    COUNTING.set(false);
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

#[test]
fn matcher_allocates_nothing() {
    // The counter must demonstrably see a heap allocation, or a zero below proves nothing.
    let sanity = allocations_during(|| {
        black_box(Vec::<u8>::with_capacity(1));
    });
    assert!(sanity >= 1, "counting allocator missed a Vec allocation");

    let bindings: Vec<Binding> = [
        "#",
        "*",
        "call.*.*",
        "call.#",
        "a.#.b.#.c",
        "#.#",
        "a..b",
        "FreeSWITCH.*.CHANNEL_CREATE.#",
        "FreeSWITCH.*.CHANNEL_CREATE.*.*",
        "FreeSWITCH.*.CHANNEL_*.#",
    ]
    .into_iter()
    .map(|text| Binding::parse(text).unwrap())
    .collect();
    let deep = vec!["a"; 127].join(".");
    let key_texts = [
        "",
        "call",
        "call.CHANNEL_CREATE.abc",
        "a.q.b.r.s.c",
        "a..b",
        "FreeSWITCH.pbx01.CHANNEL_CREATE..0f6e2b8a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
        deep.as_str(),
    ];
    let keys: Vec<RoutingKey<'_>> = key_texts
        .iter()
        .map(|text| RoutingKey::split(text).unwrap())
        .collect();

    let mut matched = 0usize;
    let allocations = allocations_during(|| {
        for i in 0..10_000 {
            let binding = &bindings[i % bindings.len()];
            let key = &keys[i / bindings.len() % keys.len()];
            matched += usize::from(black_box(binding).matches(black_box(key)));
        }
    });
    assert_eq!(allocations, 0, "matching allocated");
    // Both outcomes were exercised, so neither path escaped the count.
    assert!(
        matched > 0 && matched < 10_000,
        "{matched} of 10000 matched"
    );
}
