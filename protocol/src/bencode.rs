//! Bencode (BEP 3): a strict, zero-copy decoder and an encoder.
//!
//! Everything a peer or tracker sends us that is bencoded (torrent files,
//! tracker responses, extension handshakes, BEP 9 metadata messages) passes
//! through [`decode`], so this module is the first line of defence against
//! hostile input:
//!
//! - **Zero-copy.** A decoded [`Value`] borrows the input: byte strings are
//!   slices of it and nothing is allocated for them, so a declared length is
//!   checked against the remaining input and never used to size a buffer.
//!   Every value also remembers its exact original byte span ([`Value::raw`]),
//!   which is what the info-hash is computed over.
//! - **No recursion.** The decoder keeps its open lists and dictionaries on an
//!   explicit heap stack bounded by [`Limits::max_depth`], so no input (not
//!   even 100 000 nested `l`s) can overflow the thread's stack while
//!   decoding. The decoded tree is still dropped, cloned and compared
//!   recursively, so `max_depth` also bounds those walks: keep it modest
//!   (the default 64 is).
//! - **Strict.** Integers and string lengths with leading zeros, `-0`, `ie`,
//!   integers outside `i64`, non-string dictionary keys, duplicate keys and
//!   trailing bytes are all errors, each reported with the byte offset where
//!   it was found ([`DecodeError`]).
//! - **One deliberate leniency: unsorted dictionary keys are accepted.** BEP 3
//!   requires sorted keys, but torrents made by old or buggy tools have them
//!   unsorted and every major client accepts them. Rejecting them would buy
//!   nothing: the info-hash is taken over the raw bytes, not a re-encoding, so
//!   accepting them cannot change which torrent a hash names. Duplicate keys
//!   are still rejected, sorted or not, because two readers could disagree on
//!   which one counts.
//!
//! Memory: a decoded value costs a few dozen bytes per element on top of the
//! input, so the caller bounds the input with [`Limits::max_input`] (and
//! should pick a limit far below the 64 MiB default for messages from peers).
//!
//! Encoding goes through the owned [`Bencode`] tree, whose dictionaries are
//! `BTreeMap`s and therefore always encode with sorted keys, plus the small
//! [`encode_int`] / [`encode_bytes`] helpers for hand-rolled writers.

use std::collections::BTreeMap;

/// Bounds applied while decoding untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting of lists and dictionaries accepted. A top-level list
    /// is depth 1; integers and strings add no depth.
    pub max_depth: usize,
    /// Largest input accepted, in bytes. [`decode_with`] rejects a longer
    /// input outright; [`decode_prefix`] rejects a value longer than this.
    pub max_input: usize,
}

impl Default for Limits {
    /// Depth 64 and 64 MiB: roomy for any real torrent file (100 000 pieces
    /// is 2 MB of hashes) yet bounded.
    fn default() -> Self {
        Limits {
            max_depth: 64,
            max_input: 64 * 1024 * 1024,
        }
    }
}

/// Why an input is not valid bencode. Every variant carries `offset`, the
/// zero-based byte position in the input where the problem was found.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ended in the middle of a value (or was empty).
    #[error("unexpected end of input at byte {offset}")]
    UnexpectedEnd {
        /// Position just past the last byte of input.
        offset: usize,
    },
    /// A byte that cannot start a value here: not `i`, `l`, `d`, a digit, or
    /// (inside a list or dictionary) `e`.
    #[error("unexpected byte 0x{byte:02x} at byte {offset}, expected {expected}")]
    UnexpectedByte {
        /// Position of the byte.
        offset: usize,
        /// The byte found.
        byte: u8,
        /// What would have been valid there.
        expected: &'static str,
    },
    /// `ie`: an integer with no digits.
    #[error("empty integer at byte {offset}")]
    EmptyInteger {
        /// Position of the `i`.
        offset: usize,
    },
    /// An integer with a leading zero, such as `i03e` or `i-03e`.
    #[error("leading zero in integer at byte {offset}")]
    IntegerLeadingZero {
        /// Position of the `i`.
        offset: usize,
    },
    /// `i-0e`: negative zero, which has no canonical form.
    #[error("negative zero integer at byte {offset}")]
    NegativeZero {
        /// Position of the `i`.
        offset: usize,
    },
    /// A byte other than a digit (or `e` after at least one digit) inside an
    /// integer, such as `i1.5e` or `i-e`.
    #[error("invalid byte 0x{byte:02x} in integer at byte {offset}")]
    InvalidInteger {
        /// Position of the offending byte.
        offset: usize,
        /// The byte found.
        byte: u8,
    },
    /// An integer that does not fit in an `i64`.
    #[error("integer out of range at byte {offset}")]
    IntegerOverflow {
        /// Position of the `i`.
        offset: usize,
    },
    /// A string length with a leading zero, such as `03:abc`.
    #[error("leading zero in string length at byte {offset}")]
    LengthLeadingZero {
        /// Position of the first digit of the length.
        offset: usize,
    },
    /// A byte other than a digit or `:` in a string length, such as `3x`.
    #[error("invalid byte 0x{byte:02x} in string length at byte {offset}")]
    InvalidLength {
        /// Position of the offending byte.
        offset: usize,
        /// The byte found.
        byte: u8,
    },
    /// A string whose declared length runs past the end of the input
    /// (including lengths too large to represent at all). Detected before
    /// anything is read or allocated.
    #[error("string at byte {offset} declares {declared} bytes but only {remaining} remain")]
    LengthExceedsInput {
        /// Position of the first digit of the length.
        offset: usize,
        /// The declared length (saturated at `u64::MAX`).
        declared: u64,
        /// Bytes left in the input after the `:`.
        remaining: usize,
    },
    /// A dictionary key that is an integer, list or dictionary.
    #[error("dictionary key at byte {offset} is not a byte string")]
    NonStringKey {
        /// Position of the key.
        offset: usize,
    },
    /// A dictionary key that appears twice in the same dictionary.
    #[error("duplicate dictionary key at byte {offset}")]
    DuplicateKey {
        /// Position of the second occurrence of the key.
        offset: usize,
    },
    /// A dictionary that ends (`e`) right after a key, with no value.
    #[error("dictionary key without a value: dictionary ends at byte {offset}")]
    MissingValue {
        /// Position of the closing `e`.
        offset: usize,
    },
    /// Lists and dictionaries nested deeper than [`Limits::max_depth`].
    #[error("nesting deeper than {max} at byte {offset}")]
    TooDeep {
        /// Position of the `l` or `d` that went one level too deep.
        offset: usize,
        /// The configured limit.
        max: usize,
    },
    /// The input (or, for [`decode_prefix`], the value) is longer than
    /// [`Limits::max_input`].
    #[error("input longer than the {max}-byte limit at byte {offset}")]
    TooLarge {
        /// The first byte past the limit.
        offset: usize,
        /// The configured limit.
        max: usize,
    },
    /// Bytes after a complete value, in [`decode`] / [`decode_with`].
    #[error("trailing data after the value at byte {offset}")]
    TrailingData {
        /// Position of the first byte after the value.
        offset: usize,
    },
}

/// A decoded bencode value borrowing the input it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value<'a> {
    kind: Kind<'a>,
    raw: &'a [u8],
    offset: usize,
}

/// The four kinds of bencode value, for exhaustive matching
/// ([`Value::kind`]). The `as_*` accessors on [`Value`] are usually handier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<'a> {
    /// `i42e`.
    Int(i64),
    /// `4:spam`: the bytes between the `:` and the end, borrowed.
    Bytes(&'a [u8]),
    /// `l...e`.
    List(Vec<Value<'a>>),
    /// `d...e`.
    Dict(Dict<'a>),
}

impl<'a> Value<'a> {
    /// Which kind of value this is, with its contents.
    pub fn kind(&self) -> &Kind<'a> {
        &self.kind
    }

    /// The exact bytes this value was decoded from, prefix and terminator
    /// included. The info-hash is the SHA-1 of the info dictionary's `raw()`.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Byte offset of this value's first byte in the decoded input.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self.kind {
            Kind::Int(i) => Some(i),
            _ => None,
        }
    }

    /// The byte string, if this is one.
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self.kind {
            Kind::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The byte string as text, if this is a byte string holding valid UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The elements, if this is a list.
    pub fn as_list(&self) -> Option<&[Value<'a>]> {
        match &self.kind {
            Kind::List(items) => Some(items),
            _ => None,
        }
    }

    /// The dictionary, if this is one.
    pub fn as_dict(&self) -> Option<&Dict<'a>> {
        match &self.kind {
            Kind::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// The value under `key`; `None` if this is not a dictionary or the key is
    /// absent.
    pub fn get(&self, key: &[u8]) -> Option<&Value<'a>> {
        self.as_dict().and_then(|d| d.get(key))
    }

    /// An owned copy, for re-encoding or keeping past the input's lifetime.
    pub fn to_owned_value(&self) -> Bencode {
        match &self.kind {
            Kind::Int(i) => Bencode::Int(*i),
            Kind::Bytes(b) => Bencode::Bytes(b.to_vec()),
            Kind::List(items) => Bencode::List(items.iter().map(Value::to_owned_value).collect()),
            Kind::Dict(d) => Bencode::Dict(
                d.iter()
                    .map(|(k, v)| (k.to_vec(), v.to_owned_value()))
                    .collect(),
            ),
        }
    }
}

/// A decoded dictionary: its entries in input order, keys unique.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dict<'a> {
    entries: Vec<(&'a [u8], Value<'a>)>,
    /// Keys were strictly ascending in the input (the normal case), so
    /// lookups can binary-search; otherwise they scan.
    sorted: bool,
}

impl<'a> Dict<'a> {
    /// The value under `key`, if present.
    pub fn get(&self, key: &[u8]) -> Option<&Value<'a>> {
        if self.sorted {
            self.entries
                .binary_search_by(|(k, _)| (*k).cmp(key))
                .ok()
                .map(|i| &self.entries[i].1)
        } else {
            self.entries.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
        }
    }

    /// Entries in the order they appeared in the input.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &Value<'a>)> {
        self.entries.iter().map(|(k, v)| (*k, v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the dictionary has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the keys appeared in strictly ascending order, as BEP 3
    /// requires (unsorted keys are accepted; see the module docs).
    pub fn is_sorted(&self) -> bool {
        self.sorted
    }
}

/// Decodes one value that must span the whole input, with [`Limits::default`].
pub fn decode(input: &[u8]) -> Result<Value<'_>, DecodeError> {
    decode_with(input, &Limits::default())
}

/// Decodes one value that must span the whole input.
pub fn decode_with<'a>(input: &'a [u8], limits: &Limits) -> Result<Value<'a>, DecodeError> {
    if input.len() > limits.max_input {
        return Err(DecodeError::TooLarge {
            offset: limits.max_input,
            max: limits.max_input,
        });
    }
    let (value, end) = parse(input, limits.max_depth)?;
    if end != input.len() {
        return Err(DecodeError::TrailingData { offset: end });
    }
    Ok(value)
}

/// Decodes one value at the start of `input` and returns it with the number
/// of bytes it spans; whatever follows is left alone. BEP 9 metadata messages
/// need this: a bencoded header followed by raw piece data.
///
/// [`Limits::max_input`] bounds the value, not the input: a value running
/// past that many bytes is [`DecodeError::TooLarge`].
pub fn decode_prefix<'a>(
    input: &'a [u8],
    limits: &Limits,
) -> Result<(Value<'a>, usize), DecodeError> {
    if input.len() <= limits.max_input {
        return parse(input, limits.max_depth);
    }
    // Parse inside a window of `max_input` bytes; running off the end of the
    // window means the value is too long, not that the input is truncated.
    match parse(&input[..limits.max_input], limits.max_depth) {
        Err(DecodeError::UnexpectedEnd { .. } | DecodeError::LengthExceedsInput { .. }) => {
            Err(DecodeError::TooLarge {
                offset: limits.max_input,
                max: limits.max_input,
            })
        }
        other => other,
    }
}

/// A list or dictionary that has been opened and not yet closed.
enum Frame<'a> {
    List {
        start: usize,
        items: Vec<Value<'a>>,
    },
    Dict {
        start: usize,
        entries: Vec<(&'a [u8], Value<'a>)>,
        /// A key read whose value has not been read yet, with the key's
        /// offset (for duplicate reporting).
        pending_key: Option<(&'a [u8], usize)>,
        sorted: bool,
    },
}

/// Parses one value at the start of `input`; returns it and its end offset.
///
/// Iterative: open containers live on `stack`, which is bounded by
/// `max_depth` (and by the input, since each level costs a byte). A finished
/// value is handed to the innermost open container; inside a dictionary,
/// values alternate between key (must be a byte string) and value.
fn parse(input: &[u8], max_depth: usize) -> Result<(Value<'_>, usize), DecodeError> {
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut pos = 0;
    loop {
        let Some(&byte) = input.get(pos) else {
            return Err(DecodeError::UnexpectedEnd { offset: pos });
        };
        let awaiting_key = matches!(
            stack.last(),
            Some(Frame::Dict {
                pending_key: None,
                ..
            })
        );
        let value = match byte {
            b'e' if !stack.is_empty() => {
                pos += 1;
                match stack.pop() {
                    Some(Frame::List { start, items }) => Value {
                        kind: Kind::List(items),
                        raw: &input[start..pos],
                        offset: start,
                    },
                    Some(Frame::Dict {
                        start,
                        mut entries,
                        pending_key,
                        sorted,
                    }) => {
                        if pending_key.is_some() {
                            return Err(DecodeError::MissingValue { offset: pos - 1 });
                        }
                        if !sorted {
                            check_unsorted_duplicates(input, &mut entries)?;
                        }
                        Value {
                            kind: Kind::Dict(Dict { entries, sorted }),
                            raw: &input[start..pos],
                            offset: start,
                        }
                    }
                    // `stack` was checked to be non-empty above.
                    None => return Err(DecodeError::UnexpectedEnd { offset: pos }),
                }
            }
            b'i' | b'l' | b'd' if awaiting_key => {
                return Err(DecodeError::NonStringKey { offset: pos });
            }
            b'l' | b'd' => {
                if stack.len() >= max_depth {
                    return Err(DecodeError::TooDeep {
                        offset: pos,
                        max: max_depth,
                    });
                }
                // No capacity is reserved: bencode declares no element
                // counts, and growth is paid for by input bytes actually read.
                stack.push(if byte == b'l' {
                    Frame::List {
                        start: pos,
                        items: Vec::new(),
                    }
                } else {
                    Frame::Dict {
                        start: pos,
                        entries: Vec::new(),
                        pending_key: None,
                        sorted: true,
                    }
                });
                pos += 1;
                continue;
            }
            b'i' => {
                let (i, end) = parse_int(input, pos)?;
                let v = Value {
                    kind: Kind::Int(i),
                    raw: &input[pos..end],
                    offset: pos,
                };
                pos = end;
                v
            }
            b'0'..=b'9' => {
                let (bytes, end) = parse_bytes(input, pos)?;
                let v = Value {
                    kind: Kind::Bytes(bytes),
                    raw: &input[pos..end],
                    offset: pos,
                };
                pos = end;
                v
            }
            _ => {
                return Err(DecodeError::UnexpectedByte {
                    offset: pos,
                    byte,
                    expected: match stack.last() {
                        None => "a value ('i', 'l', 'd' or a digit)",
                        Some(Frame::List { .. }) => "a value or 'e'",
                        Some(Frame::Dict {
                            pending_key: None, ..
                        }) => "a dictionary key (a digit) or 'e'",
                        Some(Frame::Dict { .. }) => "a value ('i', 'l', 'd' or a digit)",
                    },
                });
            }
        };
        // Hand the finished value to the innermost open container.
        match stack.last_mut() {
            None => return Ok((value, pos)),
            Some(Frame::List { items, .. }) => items.push(value),
            Some(Frame::Dict {
                entries,
                pending_key,
                sorted,
                ..
            }) => match pending_key.take() {
                Some((key, _)) => entries.push((key, value)),
                None => {
                    let Kind::Bytes(key) = value.kind else {
                        // Containers and integers were refused as keys above.
                        return Err(DecodeError::NonStringKey {
                            offset: value.offset,
                        });
                    };
                    if let Some((prev, _)) = entries.last() {
                        if key == *prev {
                            return Err(DecodeError::DuplicateKey {
                                offset: value.offset,
                            });
                        }
                        if key < *prev {
                            *sorted = false;
                        }
                    }
                    *pending_key = Some((key, value.offset));
                }
            },
        }
    }
}

/// Rejects duplicate keys in a dictionary whose keys were not in ascending
/// order (sorted dictionaries are checked incrementally). O(n log n).
fn check_unsorted_duplicates(
    input: &[u8],
    entries: &mut [(&[u8], Value<'_>)],
) -> Result<(), DecodeError> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    // Stable sort: among equal keys, the later one in the input comes second.
    order.sort_by(|&a, &b| entries[a].0.cmp(entries[b].0));
    for pair in order.windows(2) {
        if entries[pair[0]].0 == entries[pair[1]].0 {
            let key = entries[pair[1]].0;
            return Err(DecodeError::DuplicateKey {
                offset: key_offset(input, key),
            });
        }
    }
    Ok(())
}

/// Offset of the length prefix of a key that is a sub-slice of `input`.
fn key_offset(input: &[u8], key: &[u8]) -> usize {
    let content = (key.as_ptr() as usize).saturating_sub(input.as_ptr() as usize);
    let digits = key.len().checked_ilog10().map_or(1, |d| d as usize + 1);
    content.saturating_sub(digits + 1)
}

/// Parses `i<digits>e` starting at `start` (which holds `i`); returns the
/// integer and the offset just past the `e`.
fn parse_int(input: &[u8], start: usize) -> Result<(i64, usize), DecodeError> {
    let mut pos = start + 1;
    let negative = input.get(pos) == Some(&b'-');
    if negative {
        pos += 1;
    }
    let first_digit = pos;
    // Accumulate towards the sign so that i64::MIN is representable.
    let mut acc: i64 = 0;
    loop {
        let Some(&b) = input.get(pos) else {
            return Err(DecodeError::UnexpectedEnd { offset: pos });
        };
        match b {
            b'0'..=b'9' => {
                if pos > first_digit && input[first_digit] == b'0' {
                    return Err(DecodeError::IntegerLeadingZero { offset: start });
                }
                let d = i64::from(b - b'0');
                acc = acc
                    .checked_mul(10)
                    .and_then(|a| {
                        if negative {
                            a.checked_sub(d)
                        } else {
                            a.checked_add(d)
                        }
                    })
                    .ok_or(DecodeError::IntegerOverflow { offset: start })?;
            }
            b'e' if pos > first_digit => {
                if negative && acc == 0 {
                    return Err(DecodeError::NegativeZero { offset: start });
                }
                return Ok((acc, pos + 1));
            }
            b'e' if !negative => return Err(DecodeError::EmptyInteger { offset: start }),
            _ => {
                return Err(DecodeError::InvalidInteger {
                    offset: pos,
                    byte: b,
                });
            }
        }
        pos += 1;
    }
}

/// Parses `<length>:<bytes>` starting at `start` (which holds a digit);
/// returns the borrowed bytes and the offset just past them.
fn parse_bytes(input: &[u8], start: usize) -> Result<(&[u8], usize), DecodeError> {
    let mut pos = start;
    // Saturating: any length beyond the input is rejected below anyway.
    let mut declared: u64 = 0;
    loop {
        let Some(&b) = input.get(pos) else {
            return Err(DecodeError::UnexpectedEnd { offset: pos });
        };
        match b {
            b'0'..=b'9' => {
                if pos > start && input[start] == b'0' {
                    return Err(DecodeError::LengthLeadingZero { offset: start });
                }
                declared = declared
                    .saturating_mul(10)
                    .saturating_add(u64::from(b - b'0'));
            }
            b':' if pos > start => break,
            _ => {
                return Err(DecodeError::InvalidLength {
                    offset: pos,
                    byte: b,
                });
            }
        }
        pos += 1;
    }
    let body = pos + 1;
    let remaining = input.len() - body;
    match usize::try_from(declared) {
        Ok(len) if len <= remaining => Ok((&input[body..body + len], body + len)),
        _ => Err(DecodeError::LengthExceedsInput {
            offset: start,
            declared,
            remaining,
        }),
    }
}

/// An owned bencode value, for building messages to encode. Dictionary keys
/// are kept in a `BTreeMap`, so they always encode sorted as BEP 3 requires.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bencode {
    /// An integer.
    Int(i64),
    /// A byte string.
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<Bencode>),
    /// A dictionary with byte-string keys.
    Dict(BTreeMap<Vec<u8>, Bencode>),
}

impl Bencode {
    /// The encoded bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Bencode::Int(i) => encode_int(out, *i),
            Bencode::Bytes(b) => encode_bytes(out, b),
            Bencode::List(items) => {
                out.push(b'l');
                for item in items {
                    item.encode_into(out);
                }
                out.push(b'e');
            }
            Bencode::Dict(map) => {
                out.push(b'd');
                for (k, v) in map {
                    encode_bytes(out, k);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }
}

impl From<i64> for Bencode {
    fn from(i: i64) -> Self {
        Bencode::Int(i)
    }
}

impl From<&[u8]> for Bencode {
    fn from(b: &[u8]) -> Self {
        Bencode::Bytes(b.to_vec())
    }
}

impl From<Vec<u8>> for Bencode {
    fn from(b: Vec<u8>) -> Self {
        Bencode::Bytes(b)
    }
}

impl From<&str> for Bencode {
    fn from(s: &str) -> Self {
        Bencode::Bytes(s.as_bytes().to_vec())
    }
}

impl From<String> for Bencode {
    fn from(s: String) -> Self {
        Bencode::Bytes(s.into_bytes())
    }
}

/// Appends `i<n>e`.
pub fn encode_int(out: &mut Vec<u8>, n: i64) {
    out.push(b'i');
    if n < 0 {
        out.push(b'-');
    }
    push_decimal(out, n.unsigned_abs());
    out.push(b'e');
}

/// Appends `<len>:<bytes>`.
pub fn encode_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    push_decimal(out, bytes.len() as u64);
    out.push(b':');
    out.extend_from_slice(bytes);
}

/// Appends `n` in decimal without going through `fmt` (which would need an
/// `io::Write` and a `Result` that can never fail).
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20]; // u64::MAX has 20 digits
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_offset_points_at_length_prefix() {
        let input = b"d10:0123456789i1ee";
        let v = decode(input).unwrap();
        let (k, _) = v.as_dict().unwrap().iter().next().unwrap();
        assert_eq!(key_offset(input, k), 1);
    }

    #[test]
    fn push_decimal_extremes() {
        let mut out = Vec::new();
        encode_int(&mut out, i64::MIN);
        encode_int(&mut out, 0);
        encode_int(&mut out, i64::MAX);
        assert_eq!(
            out,
            b"i-9223372036854775808ei0ei9223372036854775807e".to_vec()
        );
    }
}
