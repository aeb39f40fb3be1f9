//! `Binding::parse`, `RoutingKey::split` and `Binding::matches` against the definition: the
//! input is a binding, a newline, and a routing key (no newline: the input is both).

#![no_main]

use callwire::matcher::{
    Binding, BindingError, MAX_BINDING_LEN, MAX_BINDING_SEGMENTS, MAX_KEY_SEGMENTS, RoutingKey,
};
use callwire_fuzz::reference_matches;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (binding_text, key_text) = text.split_once('\n').unwrap_or((text, text));

    let parsed = Binding::parse(binding_text);
    let segments = binding_text.split('.').count();
    let expected = if binding_text.is_empty() {
        Err(BindingError::Empty)
    } else if binding_text.len() > MAX_BINDING_LEN {
        Err(BindingError::TooLong)
    } else if segments > MAX_BINDING_SEGMENTS {
        Err(BindingError::TooManySegments)
    } else {
        Ok(())
    };
    assert_eq!(
        parsed.as_ref().map(|_| ()).map_err(|e| *e),
        expected,
        "{binding_text:?}"
    );

    let key = RoutingKey::split(key_text);
    assert_eq!(
        key.is_some(),
        key_text.split('.').count() <= MAX_KEY_SEGMENTS,
        "{key_text:?}"
    );

    let (Ok(binding), Some(key)) = (parsed, key) else {
        return;
    };
    assert_eq!(binding.as_str(), binding_text);
    assert_eq!(
        binding.matches(&key),
        reference_matches(binding_text, key_text),
        "binding {binding_text:?} key {key_text:?}"
    );
    // A binding always matches the key written the same way: literals match themselves, `*`
    // one segment, `#` any run.
    if let Some(same) = RoutingKey::split(binding_text) {
        assert!(binding.matches(&same), "{binding_text:?} against itself");
    }
});
