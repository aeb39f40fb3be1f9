//! The bitmask matcher against a plain recursive reference, over many random bindings and
//! keys drawn from a tiny alphabet so wildcards, empty segments and repeated `#` collide often.

use callwire::matcher::{Binding, BindingError, RoutingKey};
use callwire::rng::Rng;

/// AMQP topic matching written straight from the definition; exponential, but obviously right.
fn reference(binding: &[&str], key: &[&str]) -> bool {
    match binding.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|skip| reference(rest, &key[skip..])),
        Some((&"*", rest)) => !key.is_empty() && reference(rest, &key[1..]),
        Some((literal, rest)) => key.first() == Some(literal) && reference(rest, &key[1..]),
    }
}

/// 0..=8 segments joined with dots; zero segments give "", which is one empty segment.
fn text(rng: &mut Rng, alphabet: &[&str]) -> String {
    let len = rng.below(9);
    (0..len)
        .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(".")
}

#[test]
fn agrees_with_reference_matcher() {
    // Compared pairs; empty bindings are checked as errors and not counted.
    const PAIRS: usize = 200_000;
    let binding_alphabet = ["", "a", "b", "*", "#"];
    // Keys may hold `*` and `#` too: in a key they are plain segments.
    let key_alphabet = ["", "a", "b", "c", "*", "#"];
    // A fixed seed, so a failure reproduces.
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
    let (mut matched, mut unmatched) = (0, 0);
    while matched + unmatched < PAIRS {
        let binding_text = text(&mut rng, &binding_alphabet);
        let key_text = text(&mut rng, &key_alphabet);
        let binding = match Binding::parse(&binding_text) {
            Ok(binding) => binding,
            Err(error) => {
                assert!(binding_text.is_empty(), "{binding_text:?}: {error:?}");
                assert_eq!(error, BindingError::Empty);
                continue;
            }
        };
        let key = RoutingKey::split(&key_text).expect("8 segments is within depth");
        let expected = reference(
            &binding_text.split('.').collect::<Vec<_>>(),
            &key_text.split('.').collect::<Vec<_>>(),
        );
        assert_eq!(
            binding.matches(&key),
            expected,
            "binding {binding_text:?} key {key_text:?}"
        );
        if expected {
            matched += 1;
        } else {
            unmatched += 1;
        }
    }
    println!("{matched} matching and {unmatched} non-matching pairs agree");
    assert!(matched >= 1_000, "only {matched} matching pairs");
    assert!(unmatched >= 1_000, "only {unmatched} non-matching pairs");
}
