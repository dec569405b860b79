//! A fixed-length set of piece indices with the wire encoding of BEP 3.
//!
//! Piece 0 is the most significant bit of the first byte. The byte length of
//! a wire bitfield must be exactly `ceil(len / 8)` and its spare bits (past
//! the last piece) must be zero: BEP 3 tells clients to drop peers that break
//! either rule, so [`Bitfield::from_bytes`] rejects them.
//!
//! Bits are kept in `u64` words, most significant bit first, so that the wire
//! bytes are the words' big-endian bytes and whole-word operations (count,
//! "does the peer have anything we lack") run 64 pieces at a time.

/// Why wire bytes are not a valid bitfield for a torrent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BitfieldError {
    /// The byte length is not `ceil(pieces / 8)`.
    #[error("bitfield of {got} bytes for {pieces} pieces (expected {expected})")]
    Length {
        /// Bytes received.
        got: usize,
        /// Bytes a bitfield of `pieces` pieces has.
        expected: usize,
        /// Pieces in the torrent.
        pieces: u32,
    },
    /// A bit past the last piece is set.
    #[error("bitfield has spare bits set past piece {pieces}")]
    SpareBits {
        /// Pieces in the torrent.
        pieces: u32,
    },
}

/// A set of piece indices `0..len`.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Bitfield {
    words: Vec<u64>,
    len: u32,
    ones: u32,
}

impl std::fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitfield({}/{}: ", self.ones, self.len)?;
        if self.len <= 64 {
            for i in 0..self.len {
                f.write_str(if self.get(i) { "1" } else { "0" })?;
            }
        } else {
            f.write_str("..")?;
        }
        f.write_str(")")
    }
}

fn words_for(len: u32) -> usize {
    (len as usize).div_ceil(64)
}

fn bit(index: u32) -> (usize, u64) {
    ((index / 64) as usize, 1u64 << (63 - index % 64))
}

impl Bitfield {
    /// `len` pieces, none set.
    pub fn new(len: u32) -> Self {
        Self {
            words: vec![0; words_for(len)],
            len,
            ones: 0,
        }
    }

    /// `len` pieces, all set.
    pub fn full(len: u32) -> Self {
        let mut words = vec![u64::MAX; words_for(len)];
        if let Some(last) = words.last_mut() {
            let used = len % 64;
            if used != 0 {
                *last = u64::MAX << (64 - used);
            }
        }
        Self {
            words,
            len,
            ones: len,
        }
    }

    /// Parses a wire bitfield for a torrent of `len` pieces, checking the
    /// byte length and the spare bits.
    pub fn from_bytes(bytes: &[u8], len: u32) -> Result<Self, BitfieldError> {
        let expected = (len as usize).div_ceil(8);
        if bytes.len() != expected {
            return Err(BitfieldError::Length {
                got: bytes.len(),
                expected,
                pieces: len,
            });
        }
        if len % 8 != 0 {
            if let Some(last) = bytes.last() {
                let spare_mask = 0xffu8 >> (len % 8);
                if last & spare_mask != 0 {
                    return Err(BitfieldError::SpareBits { pieces: len });
                }
            }
        }
        let words: Vec<u64> = bytes
            .chunks(8)
            .map(|chunk| {
                let mut buf = [0u8; 8];
                buf[..chunk.len()].copy_from_slice(chunk);
                u64::from_be_bytes(buf)
            })
            .collect();
        let ones = words.iter().map(|w| w.count_ones()).sum();
        Ok(Self { words, len, ones })
    }

    /// The wire encoding: `ceil(len / 8)` bytes, spare bits zero.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.words.iter().flat_map(|w| w.to_be_bytes()).collect();
        out.truncate((self.len as usize).div_ceil(8));
        out
    }

    /// Number of pieces (bits), set or not.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the bitfield has zero pieces.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of set bits.
    pub fn count(&self) -> u32 {
        self.ones
    }

    /// Whether every piece is set (true for zero pieces).
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// Whether no piece is set.
    pub fn none(&self) -> bool {
        self.ones == 0
    }

    /// Whether `index` is set; `false` past the end.
    pub fn get(&self, index: u32) -> bool {
        if index >= self.len {
            return false;
        }
        let (w, m) = bit(index);
        self.words[w] & m != 0
    }

    /// Sets or clears `index`; returns the previous value.
    ///
    /// # Panics
    ///
    /// If `index >= len()`. Indices from the wire are checked first.
    pub fn set(&mut self, index: u32, value: bool) -> bool {
        assert!(
            index < self.len,
            "bit {index} out of range {len}",
            len = self.len
        );
        let (w, m) = bit(index);
        let was = self.words[w] & m != 0;
        if value && !was {
            self.words[w] |= m;
            self.ones += 1;
        } else if !value && was {
            self.words[w] &= !m;
            self.ones -= 1;
        }
        was
    }

    /// The set indices, in increasing order.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &word)| {
            let base = wi as u32 * 64;
            let mut w = word;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let lead = w.leading_zeros();
                w &= !(1u64 << (63 - lead));
                Some(base + lead)
            })
        })
    }

    /// Whether some index is set here and clear in `other` (of the same
    /// length): "the peer has a piece we lack".
    pub fn has_any_not_in(&self, other: &Bitfield) -> bool {
        self.words
            .iter()
            .zip(other.words.iter().chain(std::iter::repeat(&0)))
            .any(|(a, b)| a & !b != 0)
    }

    /// Number of indices set here and clear in `other` (of the same length).
    pub fn count_not_in(&self, other: &Bitfield) -> u32 {
        self.words
            .iter()
            .zip(other.words.iter().chain(std::iter::repeat(&0)))
            .map(|(a, b)| (a & !b).count_ones())
            .sum()
    }

    /// Number of indices set both here and in `other`.
    pub fn count_and(&self, other: &Bitfield) -> u32 {
        self.words
            .iter()
            .zip(other.words.iter())
            .map(|(a, b)| (a & b).count_ones())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip_msb_first() {
        let b = Bitfield::from_bytes(&[0b1000_0001, 0b0100_0000], 10).unwrap();
        assert_eq!(b.len(), 10);
        assert_eq!(b.count(), 3);
        assert!(b.get(0) && b.get(7) && b.get(9));
        assert!(!b.get(1) && !b.get(8));
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![0, 7, 9]);
        assert_eq!(b.to_bytes(), vec![0b1000_0001, 0b0100_0000]);
    }

    #[test]
    fn long_round_trip_across_words() {
        let mut b = Bitfield::new(200);
        for i in [0, 63, 64, 65, 127, 128, 199] {
            assert!(!b.set(i, true));
        }
        assert_eq!(b.count(), 7);
        let bytes = b.to_bytes();
        assert_eq!(bytes.len(), 25);
        let c = Bitfield::from_bytes(&bytes, 200).unwrap();
        assert_eq!(b, c);
        assert_eq!(
            c.iter_ones().collect::<Vec<_>>(),
            vec![0, 63, 64, 65, 127, 128, 199]
        );
    }

    #[test]
    fn wrong_length_rejected() {
        assert_eq!(
            Bitfield::from_bytes(&[0, 0], 17),
            Err(BitfieldError::Length {
                got: 2,
                expected: 3,
                pieces: 17
            })
        );
        assert!(Bitfield::from_bytes(&[0, 0, 0, 0], 17).is_err());
        assert!(Bitfield::from_bytes(&[], 0).is_ok());
        assert!(Bitfield::from_bytes(&[0], 0).is_err());
    }

    #[test]
    fn spare_bits_rejected() {
        assert_eq!(
            Bitfield::from_bytes(&[0xff, 0b1100_0000], 10),
            Ok(Bitfield::full(10))
        );
        assert_eq!(
            Bitfield::from_bytes(&[0xff, 0b1110_0000], 10),
            Err(BitfieldError::SpareBits { pieces: 10 })
        );
        assert!(Bitfield::from_bytes(&[0x01], 7).is_err());
        assert!(Bitfield::from_bytes(&[0xff], 8).is_ok());
    }

    #[test]
    fn full_and_new() {
        for len in [0, 1, 7, 8, 63, 64, 65, 1000] {
            let f = Bitfield::full(len);
            assert_eq!(f.count(), len);
            assert!(f.is_full());
            assert_eq!(f.iter_ones().count(), len as usize);
            assert_eq!(Bitfield::from_bytes(&f.to_bytes(), len), Ok(f.clone()));
            let n = Bitfield::new(len);
            assert!(n.none());
            assert_eq!(n.is_full(), len == 0);
            assert_eq!(f.count_not_in(&n), len);
            assert_eq!(f.has_any_not_in(&n), len > 0);
            assert!(!n.has_any_not_in(&f));
        }
    }

    #[test]
    fn set_clear_counts() {
        let mut b = Bitfield::new(9);
        assert!(!b.set(8, true));
        assert!(b.set(8, true));
        assert_eq!(b.count(), 1);
        assert!(b.set(8, false));
        assert!(!b.set(8, false));
        assert_eq!(b.count(), 0);
        assert!(!b.get(9));
        assert!(!b.get(u32::MAX));
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn set_out_of_range_panics() {
        Bitfield::new(3).set(3, true);
    }

    #[test]
    fn difference() {
        let mut a = Bitfield::new(130);
        let mut b = Bitfield::new(130);
        a.set(5, true);
        a.set(129, true);
        b.set(5, true);
        assert_eq!(a.count_not_in(&b), 1);
        assert!(a.has_any_not_in(&b));
        b.set(129, true);
        assert!(!a.has_any_not_in(&b));
    }
}
