//! How saved state writes what JSON has no type for: times as nanoseconds since the Unix
//! epoch, and payloads (any bytes) as base64 strings. Used by `state` and `live::saved`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch: how the file writes every time (exactly, until 2554).
pub fn nanos(time: SystemTime) -> u64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

/// The time `nanos` wrote.
pub fn from_nanos(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// Payloads as base64 strings: a payload may be any bytes.
pub mod base64 {
    use std::borrow::Cow;

    use data_encoding::BASE64;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&BASE64.encode(bytes))
    }

    pub fn deserialize<'de, 'a, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Cow<'a, [u8]>, D::Error> {
        let text = Cow::<'de, str>::deserialize(deserializer)?;
        BASE64
            .decode(text.as_bytes())
            .map(Cow::Owned)
            .map_err(serde::de::Error::custom)
    }
}
