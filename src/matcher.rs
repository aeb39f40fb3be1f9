//! Bindings and the binding matcher: AMQP topic semantics (contract: events.md).
//!
//! A binding and a routing key are split on `.`; `*` matches exactly one segment (an empty
//! one included), `#` matches zero or more segments anywhere and more than once, anything else
//! matches the same segment byte for byte. Bindings live in fixed-capacity storage, and
//! matching allocates nothing.

/// Longest binding accepted, in bytes (AMQP's limit for a routing key).
pub const MAX_BINDING_LEN: usize = 255;
/// Most segments a binding may have.
pub const MAX_BINDING_SEGMENTS: usize = 32;
/// Most segments a routing key may have and still be matched; deeper keys match nothing.
pub const MAX_KEY_SEGMENTS: usize = 127;

/// Why a binding string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingError {
    /// The binding was the empty string.
    Empty,
    /// The binding was longer than `MAX_BINDING_LEN` bytes.
    TooLong,
    /// The binding had more than `MAX_BINDING_SEGMENTS` segments.
    TooManySegments,
}

/// Segments at the start of a binding and a key that get a fingerprint (`Fingerprint`).
const QUICK: usize = 4;

/// A 32-bit hash of one segment, never `WILD` or `ABSENT`. Every event is checked against
/// every binding, and most checks fail on one of the first segments: comparing fingerprints
/// there, computed once per binding and once per event, rejects most bindings from the first
/// cache line of the `Binding`, without reading its text.
type Fingerprint = u32;
/// The fingerprint slot of a binding segment that any key segment passes (`*`, and every
/// position from the first `#` on, where positions stop being fixed).
const WILD: Fingerprint = 0;
/// The fingerprint of a key segment past the key's end: equal to no literal's.
const ABSENT: Fingerprint = u32::MAX;

/// FNV-1a, folded into `1..u32::MAX` so that it is never `WILD` or `ABSENT`.
fn fingerprint(segment: &str) -> Fingerprint {
    let hash = segment.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    hash % (u32::MAX - 1) + 1
}

/// One parsed binding, stored inline (no heap).
///
/// `repr(C)` with the small fields first: a rejection usually reads only the fingerprints and
/// the segment count, and this keeps them in the struct's first cache line.
#[derive(Clone, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Binding {
    /// The first `QUICK` segments' fingerprints, `WILD` where any key segment passes. Before
    /// the first `#`, a binding's segment `i` can only meet key segment `i`.
    quick: [Fingerprint; QUICK],
    /// Whether a segment is `#`. Without one, a binding matches only keys of exactly its
    /// length, segment by segment: most bindings are of that kind, and most keys are then
    /// refused on their length or first segment without the general walk.
    has_hash: bool,
    /// Byte offset where each segment ends. Every event is matched against every binding, so
    /// the split is done once at parse time; offsets fit a `u8` because the text is at most
    /// 255 bytes, which keeps this to 33 bytes.
    ends: heapless::Vec<u8, MAX_BINDING_SEGMENTS>,
    text: heapless::String<MAX_BINDING_LEN>,
}

/// A routing key split into segments once per event, on the stack.
#[derive(Debug)]
pub struct RoutingKey<'a> {
    /// The first `QUICK` segments' fingerprints, `ABSENT` past the key's end.
    quick: [Fingerprint; QUICK],
    segments: heapless::Vec<&'a str, MAX_KEY_SEGMENTS>,
}

impl Binding {
    /// Parses a binding; empty segments (`a..b`) are allowed and match empty key segments.
    pub fn parse(text: &str) -> Result<Binding, BindingError> {
        if text.is_empty() {
            return Err(BindingError::Empty);
        }
        let text = heapless::String::try_from(text).map_err(|_| BindingError::TooLong)?;
        let mut ends = heapless::Vec::new();
        let mut start = 0;
        for segment in text.split('.') {
            start += segment.len();
            // `start` <= MAX_BINDING_LEN = 255, so the cast is lossless.
            ends.push(start as u8)
                .map_err(|_| BindingError::TooManySegments)?;
            start += 1; // the dot
        }
        let has_hash = text.split('.').any(|segment| segment == "#");
        let mut quick = [WILD; QUICK];
        for (slot, segment) in quick.iter_mut().zip(text.split('.')) {
            match segment {
                "#" => break,
                "*" => {}
                literal => *slot = fingerprint(literal),
            }
        }
        Ok(Binding {
            quick,
            has_hash,
            ends,
            text,
        })
    }

    /// The binding as it was written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `key` matches this binding.
    ///
    /// Dynamic programming over the binding's segments: bit `i` of `reach` says the segments
    /// seen so far can consume exactly the first `i` key segments. A key has at most 127
    /// segments, so positions `0..=n` fit a `u128` and nothing is allocated.
    pub fn matches(&self, key: &RoutingKey<'_>) -> bool {
        let passes = |(wanted, got): (&Fingerprint, &Fingerprint)| *wanted == WILD || wanted == got;
        if !self.quick.iter().zip(&key.quick).all(passes) {
            return false;
        }
        let key = &key.segments;
        if !self.has_hash {
            return self.ends.len() == key.len()
                && self
                    .segments()
                    .zip(key.iter())
                    .all(|(segment, part)| segment == "*" || segment == *part);
        }
        let n = key.len();
        // Positions past `n` are meaningless; `n <= 127`, so the shift is in range.
        let valid = u128::MAX >> (127 - n);
        let mut reach: u128 = 1;
        for segment in self.segments() {
            reach = match segment {
                // Any number of segments: every position from the lowest reachable one on.
                "#" => u128::MAX << reach.trailing_zeros(),
                // Exactly one segment, whatever it holds.
                "*" => reach << 1,
                literal => {
                    let mut next = 0;
                    let mut bits = reach;
                    while bits != 0 {
                        let i = bits.trailing_zeros() as usize;
                        bits &= bits - 1;
                        if key.get(i) == Some(&literal) {
                            next |= 2 << i;
                        }
                    }
                    next
                }
            } & valid;
            if reach == 0 {
                return false;
            }
        }
        (reach >> n) & 1 == 1
    }

    /// The binding's segments, from the offsets computed at parse time.
    fn segments(&self) -> impl Iterator<Item = &str> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let segment = &self.text[start..usize::from(end)];
            start = usize::from(end) + 1;
            segment
        })
    }
}

impl<'a> RoutingKey<'a> {
    /// Splits `key` on `.`, keeping empty segments (`""` is one empty segment).
    /// `None` when the key has more than `MAX_KEY_SEGMENTS` segments.
    pub fn split(key: &'a str) -> Option<RoutingKey<'a>> {
        let mut segments = heapless::Vec::new();
        let mut quick = [ABSENT; QUICK];
        for (i, segment) in key.split('.').enumerate() {
            segments.push(segment).ok()?;
            if let Some(slot) = quick.get_mut(i) {
                *slot = fingerprint(segment);
            }
        }
        Some(RoutingKey { quick, segments })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(binding: &str, key: &str) -> bool {
        let binding = Binding::parse(binding).expect("valid binding");
        let key = RoutingKey::split(key).expect("key within depth");
        binding.matches(&key)
    }

    #[test]
    fn contract_examples() {
        assert!(matches("call.*.*", "call.CHANNEL_CREATE.abc"));
        assert!(!matches("call.*.*", "call.CHANNEL_CREATE.abc.x"));
        assert!(!matches("call.*.*", "call.CHANNEL_CREATE"));
        assert!(matches("call.#", "call"));
        assert!(matches("call.#", "call.a.b.c"));
        assert!(!matches("call.#", "calls.a"));
        assert!(matches("a.#.b.#.c", "a.q.b.r.s.c"));
        assert!(matches("a.#.b.#.c", "a.b.c"));
        assert!(!matches("a.#.b.#.c", "a.q.r.s.c"));
        assert!(matches("#", "anything.at.all"));
        assert!(matches("#", ""));
        assert!(matches("*", ""));
    }

    #[test]
    fn no_partial_segment_wildcards() {
        assert!(!matches(
            "FreeSWITCH.*.CHANNEL_*.#",
            "FreeSWITCH.pbx01.CHANNEL_CREATE"
        ));
        assert!(!matches(
            "FreeSWITCH.*.CHANNEL_*.#",
            "FreeSWITCH.pbx01.CHANNEL_CREATE.x.y"
        ));
        // `CHANNEL_*` is a plain literal, so only that exact segment matches it.
        assert!(matches(
            "FreeSWITCH.*.CHANNEL_*.#",
            "FreeSWITCH.pbx01.CHANNEL_*"
        ));
        assert!(!matches("a#", "a.b"));
        assert!(!matches("a*", "ab"));
    }

    #[test]
    fn comparison_is_case_sensitive_and_exact() {
        assert!(!matches("call.#", "CALL.a"));
        assert!(!matches("call", "call "));
        assert!(matches("café.*", "café.x"));
    }

    #[test]
    fn freeswitch_keys_keep_empty_segments() {
        let key = "FreeSWITCH.pbx01.CHANNEL_CREATE..0f6e2b8a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
        assert!(matches("FreeSWITCH.*.CHANNEL_CREATE.#", key));
        assert!(matches("FreeSWITCH.*.CHANNEL_CREATE.*.*", key));
        assert!(matches("FreeSWITCH.*.CHANNEL_CREATE..*", key));
        assert!(!matches("FreeSWITCH.*.CHANNEL_CREATE.*", key));
        assert!(!matches("FreeSWITCH.*.CHANNEL_CREATE.*.*.*", key));
    }

    #[test]
    fn empty_segments_in_bindings_are_literal() {
        assert!(matches("a..b", "a..b"));
        assert!(!matches("a..b", "a.x.b"));
        assert!(!matches("a..b", "a.b"));
        assert!(matches(".", "."));
        assert!(!matches(".", ""));
        assert!(matches("a.", "a."));
        assert!(!matches("a.", "a"));
    }

    #[test]
    fn star_matches_empty_segments() {
        assert!(matches("*.*", "."));
        assert!(matches("a.*.b", "a..b"));
        assert!(matches("*.*.*", "..x"));
        assert!(!matches("*.*", ""));
    }

    #[test]
    fn hash_in_the_middle() {
        assert!(matches("a.#.b", "a.b"));
        assert!(matches("a.#.b", "a.x.b"));
        assert!(matches("a.#.b", "a.x.y.z.b"));
        assert!(matches("a.#.b", "a.b.b"));
        assert!(!matches("a.#.b", "a.b.c"));
        assert!(matches("#.b", "b"));
        assert!(matches("#.b", "a.b.b"));
        assert!(!matches("#.b", "b.a"));
        assert!(matches("#.*", "x"));
        assert!(!matches("a.#.*", "a"));
    }

    #[test]
    fn repeated_hash() {
        assert!(matches("#.#", ""));
        assert!(matches("#.#", "a.b.c"));
        assert!(matches("a.#.#.b", "a.b"));
        assert!(matches("a.#.#.b", "a.x.b"));
        assert!(matches("a.#.#.b", "a.x.y.z.b"));
        assert!(!matches("a.#.#.b", "a.x"));
        assert!(matches("#.a.#.a.#", "a.a"));
        assert!(!matches("#.a.#.a.#", "x.a.y"));
    }

    #[test]
    fn parse_errors() {
        assert_eq!(Binding::parse(""), Err(BindingError::Empty));
        let longest = "a".repeat(MAX_BINDING_LEN);
        assert_eq!(Binding::parse(&longest).unwrap().as_str(), longest);
        let too_long = "a".repeat(MAX_BINDING_LEN + 1);
        assert_eq!(Binding::parse(&too_long), Err(BindingError::TooLong));
        let deepest = vec!["*"; MAX_BINDING_SEGMENTS].join(".");
        assert!(Binding::parse(&deepest).is_ok());
        let too_deep = vec!["*"; MAX_BINDING_SEGMENTS + 1].join(".");
        assert_eq!(
            Binding::parse(&too_deep),
            Err(BindingError::TooManySegments)
        );
        let dots = ".".repeat(MAX_BINDING_SEGMENTS);
        assert_eq!(Binding::parse(&dots), Err(BindingError::TooManySegments));
        assert!(Binding::parse(&dots[1..]).is_ok());
    }

    #[test]
    fn fingerprints_only_reject_and_are_never_the_sentinels() {
        for segment in ["", "*", "#", "call", "CHANNEL_CREATE", "é", "a.b"] {
            let print = fingerprint(segment);
            assert!(print != WILD && print != ABSENT, "{segment:?}");
        }
        // Literals before the first `#` are checked by position, against the key's end too.
        assert!(!matches("a.b.#", "a"));
        assert!(!matches("a.b.c.d.e", "a.b.c.d"));
        assert!(matches("a.*.c.#", "a..c"));
        assert!(!matches("a.*.c.#", "a..x"));
        // Past the first `#`, and past the fingerprinted segments, the text decides.
        assert!(matches("#.a.b.c.d", "x.a.b.c.d"));
        assert!(matches("a.b.c.d.e", "a.b.c.d.e"));
        assert!(!matches("a.b.c.d.e", "a.b.c.d.f"));
    }

    #[test]
    fn as_str_round_trips() {
        assert_eq!(Binding::parse("call.*.#").unwrap().as_str(), "call.*.#");
    }

    #[test]
    fn key_depth_limit() {
        let deepest = vec!["a"; MAX_KEY_SEGMENTS].join(".");
        let too_deep = vec!["a"; MAX_KEY_SEGMENTS + 1].join(".");
        assert!(RoutingKey::split(&too_deep).is_none());
        let key = RoutingKey::split(&deepest).expect("deepest key splits");
        // Position n = 127 is the top bit of the mask; check it is reached and not overrun.
        for (binding, expected) in [
            ("#", true),
            ("a.#", true),
            ("#.a", true),
            ("#.a.#.a.#", true),
            ("*.#", true),
            ("b.#", false),
            ("#.b", false),
        ] {
            let binding = Binding::parse(binding).unwrap();
            assert_eq!(binding.matches(&key), expected, "{}", binding.as_str());
        }
        // Bindings cap at 32 segments, so `*`s alone cannot span the key: lead with 31 of them.
        let stars = Binding::parse(
            &[&["*"; MAX_BINDING_SEGMENTS - 1][..], &["#"]]
                .concat()
                .join("."),
        )
        .unwrap();
        assert!(stars.matches(&key));
        let shallow = vec!["a"; MAX_BINDING_SEGMENTS - 2].join(".");
        assert!(!stars.matches(&RoutingKey::split(&shallow).unwrap()));
    }
}
