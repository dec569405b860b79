//! The HTTP `Range` request header (RFC 9110 §14), resolved against a
//! representation of known length: which bytes a streaming response sends.
//!
//! Sans-IO and total: any bytes in, one [`ByteRange`] out, never a panic,
//! nothing allocated. What each input means, following RFC 9110:
//!
//! - no header, or a range unit other than `bytes` (§14.2: ignored):
//!   the whole representation, `200`;
//! - one range-spec, `first-last`, `first-` or `-suffix`, that overlaps the
//!   representation: those bytes (`last` clipped to the end; a suffix longer
//!   than the representation is all of it), `206`;
//! - several range-specs: served as the whole representation, as §14.2
//!   allows ("a server MAY ignore the Range header"), since a multipart
//!   answer buys a player nothing;
//! - a malformed or reversed spec (`5-2`, `abc`, `-`, `bytes=`), a first
//!   position at or past the end, a zero suffix, any range of an empty
//!   representation: `416` with `Content-Range: bytes */length` (§15.5.17).

/// What to send for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// The whole representation (`200`).
    Whole,
    /// Bytes `start..end` (`206`); `start < end <= length`.
    Partial {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// Nothing can be served (`416`).
    Unsatisfiable,
}

/// Longest header value looked at; a longer one is not a range a player
/// sends and is answered as malformed.
pub const MAX_HEADER_LEN: usize = 1024;

/// Resolves the `Range` header value `header` (if any) against a
/// representation of `length` bytes.
pub fn resolve(header: Option<&[u8]>, length: u64) -> ByteRange {
    let Some(h) = header else {
        return ByteRange::Whole;
    };
    if h.len() > MAX_HEADER_LEN {
        return ByteRange::Unsatisfiable;
    }
    let Some(eq) = h.iter().position(|&b| b == b'=') else {
        // No unit at all: not a range we understand the unit of.
        return if h.iter().all(u8::is_ascii_whitespace) {
            ByteRange::Whole
        } else {
            ByteRange::Unsatisfiable
        };
    };
    let unit = trim(&h[..eq]);
    if !unit.eq_ignore_ascii_case(b"bytes") {
        return ByteRange::Whole;
    }
    let set = &h[eq + 1..];
    // Empty list elements are allowed and ignored (§5.6.1).
    let mut specs = set
        .split(|&b| b == b',')
        .map(trim)
        .filter(|s| !s.is_empty());
    let Some(first) = specs.next() else {
        return ByteRange::Unsatisfiable;
    };
    if specs.next().is_some() {
        return ByteRange::Whole;
    }
    one(first, length)
}

/// One range-spec: `first-last`, `first-` or `-suffix`.
fn one(spec: &[u8], length: u64) -> ByteRange {
    let Some(dash) = spec.iter().position(|&b| b == b'-') else {
        return ByteRange::Unsatisfiable;
    };
    let (a, b) = (&spec[..dash], &spec[dash + 1..]);
    if a.is_empty() {
        // A suffix: the last `n` bytes.
        return match digits(b) {
            Some(Num::Value(0)) | None => ByteRange::Unsatisfiable,
            _ if length == 0 => ByteRange::Unsatisfiable,
            Some(Num::Value(n)) if n < length => ByteRange::Partial {
                start: length - n,
                end: length,
            },
            Some(_) => ByteRange::Partial {
                start: 0,
                end: length,
            },
        };
    }
    let start = match digits(a) {
        Some(Num::Value(v)) => v,
        // Past any length this can serve.
        Some(Num::Overflow) => return ByteRange::Unsatisfiable,
        None => return ByteRange::Unsatisfiable,
    };
    let last = if b.is_empty() {
        None
    } else {
        match digits(b) {
            Some(Num::Value(v)) => Some(v),
            Some(Num::Overflow) => Some(u64::MAX),
            None => return ByteRange::Unsatisfiable,
        }
    };
    if last.is_some_and(|l| l < start) || start >= length {
        return ByteRange::Unsatisfiable;
    }
    let end = last.map_or(length, |l| l.saturating_add(1).min(length));
    ByteRange::Partial { start, end }
}

enum Num {
    Value(u64),
    Overflow,
}

/// A run of ASCII digits (at least one, nothing else).
fn digits(s: &[u8]) -> Option<Num> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: u64 = 0;
    for &d in s {
        match v
            .checked_mul(10)
            .and_then(|x| x.checked_add(u64::from(d - b'0')))
        {
            Some(x) => v = x,
            None => return Some(Num::Overflow),
        }
    }
    Some(Num::Value(v))
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use ByteRange::*;

    fn r(h: &str, len: u64) -> ByteRange {
        resolve(Some(h.as_bytes()), len)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(resolve(None, 10), Whole);
        assert_eq!(r("bytes=0-4", 10), Partial { start: 0, end: 5 });
        assert_eq!(r("bytes=5-", 10), Partial { start: 5, end: 10 });
        assert_eq!(r("bytes=9-9", 10), Partial { start: 9, end: 10 });
        assert_eq!(r("bytes=3-100", 10), Partial { start: 3, end: 10 });
        assert_eq!(r("bytes=-3", 10), Partial { start: 7, end: 10 });
        assert_eq!(r("bytes=-30", 10), Partial { start: 0, end: 10 });
        assert_eq!(r("Bytes = 2-3 ", 10), Partial { start: 2, end: 4 });
        assert_eq!(r("bytes=2-3,", 10), Partial { start: 2, end: 4 });
        assert_eq!(
            r("bytes=1-99999999999999999999999", 10),
            Partial { start: 1, end: 10 }
        );
        assert_eq!(
            r("bytes=-99999999999999999999999", 10),
            Partial { start: 0, end: 10 }
        );
    }

    #[test]
    fn unsatisfiable_and_malformed() {
        for h in [
            "bytes=10-",
            "bytes=10-20",
            "bytes=5-2",
            "bytes=-0",
            "bytes=",
            "bytes=,",
            "bytes=-",
            "bytes=a-b",
            "bytes=1-2-3",
            "bytes=+1-2",
            "bytes= 1 - 2",
            "bytes=99999999999999999999999-",
            "garbage",
        ] {
            assert_eq!(r(h, 10), Unsatisfiable, "{h}");
        }
        assert_eq!(r("bytes=0-", 0), Unsatisfiable);
        assert_eq!(r("bytes=-5", 0), Unsatisfiable);
        let long = format!("bytes={}", "0".repeat(MAX_HEADER_LEN));
        assert_eq!(r(&long, 10), Unsatisfiable);
    }

    #[test]
    fn other_units_and_multiple_ranges_get_the_whole_file() {
        assert_eq!(r("items=0-4", 10), Whole);
        assert_eq!(r("bytes=0-1,4-5", 10), Whole);
        assert_eq!(r("bytes=0-1, 20-30", 10), Whole);
        assert_eq!(r("", 10), Whole);
    }
}
