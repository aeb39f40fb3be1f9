//! Matching allocates nothing: a counting global allocator watches 10,000 `matches` calls.

mod counting_alloc;

use std::hint::black_box;

use callwire::matcher::{Binding, RoutingKey};
use counting_alloc::allocations_during;

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
