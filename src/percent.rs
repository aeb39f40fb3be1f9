//! Percent-decoding (RFC 3986), one copy for every place that reads it: the REST paths and
//! query, and the user and password in a broker URL.

use std::fmt;

/// Why a text could not be percent-decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A `%` not followed by two hex digits (`%+1` included: a sign is not a digit).
    BadEscape,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecodeError::BadEscape => {
                "bad percent-encoding ('%' must be followed by two hex digits)"
            }
            DecodeError::NotUtf8 => "not UTF-8 after percent-decoding",
        })
    }
}

/// `text` with every `%XX` replaced by the byte it stands for.
pub fn decode(text: &str) -> Result<String, DecodeError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let digits = bytes.get(i + 1..i + 3).ok_or(DecodeError::BadEscape)?;
            let value = |digit: u8| (digit as char).to_digit(16).ok_or(DecodeError::BadEscape);
            out.push((value(digits[0])? * 16 + value(digits[1])?) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| DecodeError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_hex_digits_exactly() {
        assert_eq!(decode("a%2Bb%2fc").as_deref(), Ok("a+b/c"));
        assert_eq!(decode("caf%C3%A9").as_deref(), Ok("café"));
        assert_eq!(decode("").as_deref(), Ok(""));
        // `u8::from_str_radix("+1", 16)` is Ok(1): a sign must not pass for a digit.
        for bad in ["%+1", "%-1", "%1", "%", "%zz", "%1g", "a%"] {
            assert_eq!(decode(bad), Err(DecodeError::BadEscape), "{bad}");
        }
        assert_eq!(decode("%e9"), Err(DecodeError::NotUtf8));
    }
}
