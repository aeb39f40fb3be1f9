//! `topic_to_routing_key` (events.md, MQTT): the input is a topic, or a strip prefix, a
//! newline and a topic. Checks the mapping level by level, and that the key it makes flows
//! through the matcher as the topic's own levels.

#![no_main]

use callwire::event::topic_to_routing_key;
use callwire::matcher::{Binding, RoutingKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (prefix, topic) = match text.split_once('\n') {
        Some((prefix, topic)) => (Some(prefix), topic),
        None => (None, text),
    };
    let key = topic_to_routing_key(topic, prefix);

    // The prefix goes only when the topic starts with it, and then exactly once.
    let unprefixed = prefix.and_then(|p| topic.strip_prefix(p)).unwrap_or(topic);
    assert_eq!(
        key,
        topic_to_routing_key(unprefixed, None),
        "{prefix:?} {topic:?}"
    );

    // No `/` is left; each level is one segment, its dots written `%2E` and nothing else
    // changed, so decoding gives the level back whenever the level had no `%2E` of its own.
    assert!(!key.contains('/'), "{key:?}");
    let levels: Vec<&str> = unprefixed.split('/').collect();
    let segments: Vec<&str> = key.split('.').collect();
    assert_eq!(levels.len(), segments.len(), "{unprefixed:?} -> {key:?}");
    for (level, segment) in levels.iter().zip(&segments) {
        assert_eq!(*segment, level.replace('.', "%2E"), "{level:?}");
        if !level.contains("%2E") {
            assert_eq!(segment.replace("%2E", "."), *level, "{segment:?}");
        }
    }
    assert_eq!(
        key.len(),
        unprefixed.len() + 2 * unprefixed.matches('.').count(),
        "{unprefixed:?}"
    );

    // The key is a routing key the hub can match: as a binding it matches itself.
    if let (Ok(binding), Some(split)) = (Binding::parse(&key), RoutingKey::split(&key)) {
        assert!(binding.matches(&split), "{key:?}");
    }
});
