//! The ActionCable `events` selector (`Selector::parse`, `Selector::wants`) against metasmoke's
//! rules written with Ruby's `String#split` (`ReferenceSelector`): the input is the selector.

#![no_main]

use callwire::dialect::cable::{Refusal, Selector};
use callwire::live::ChangeKind;
use callwire_fuzz::{ReferenceSelector, ruby_split};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const KINDS: [ChangeKind; 3] = [ChangeKind::Create, ChangeKind::Update, ChangeKind::Destroy];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = Selector::parse(Some(&Value::String(text.to_owned())));
    let reference = ReferenceSelector::parse(text);
    let selector = match (&reference, parsed) {
        (ReferenceSelector::Malformed, Err(Refusal::MalformedPart))
        | (ReferenceSelector::TooManyModels, Err(Refusal::TooManyModels)) => return,
        (ReferenceSelector::Every | ReferenceSelector::Models(_), Ok(selector)) => selector,
        (reference, parsed) => panic!("{text:?}: {parsed:?}, expected {reference:?}"),
    };
    // Every model the reference knows, every field the text could be split into, and the
    // models callwire itself publishes.
    let mut models: Vec<&str> = vec!["calls", "events", "", " events", "conferences"];
    if let ReferenceSelector::Models(known) = &reference {
        models.extend(known.iter().map(|(name, _)| name.as_str()));
    }
    for part in ruby_split(text, ';') {
        models.push(part);
        models.extend(part.split('#'));
    }
    for model in models {
        for (i, kind) in KINDS.into_iter().enumerate() {
            assert_eq!(
                selector.wants(model, kind),
                reference.wants(model, i),
                "{text:?}: {model:?} {kind:?}"
            );
        }
    }
});
