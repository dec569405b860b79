//! BEP 9 `ut_metadata` messages (the payload of a BEP 10 extended message
//! whose id the receiver assigned to `ut_metadata`), and the sans-IO
//! [`Assembler`] that puts a fetched info dictionary together.
//!
//! A message is a bencoded dictionary `{msg_type, piece[, total_size]}`; a
//! `data` message is followed, in the same payload, by the raw bytes of that
//! metadata piece. Everything the remote declares is checked before use:
//!
//! - `total_size` must be in `1..=max_metadata_size` ([`Limits`]) before
//!   anyone allocates a buffer of that size;
//! - a piece index must be below `ceil(total_size / 16 KiB)`;
//! - a data piece must be exactly 16 KiB, or the remainder for the last one.

use bytes::Bytes;
use sha1::{Digest, Sha1};

use crate::bencode::{self, Bencode};
use crate::metainfo::InfoHash;

/// Size of every metadata piece but the last (BEP 9).
pub const PIECE_SIZE: u32 = 16 * 1024;

/// Default [`Limits::max_metadata_size`]: 16 MiB. A torrent with 2^20
/// pieces has 20 MiB of hashes; real info dictionaries are well under a few
/// MiB (libtorrent caps at 4 MiB by default).
pub const DEFAULT_MAX_METADATA_SIZE: u32 = 16 * 1024 * 1024;

/// The extension name peers put in the extended handshake's `m`.
pub const EXTENSION_NAME: &str = "ut_metadata";

/// Decoding bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest `total_size` (and so `metadata_size`) accepted.
    pub max_metadata_size: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_metadata_size: DEFAULT_MAX_METADATA_SIZE,
        }
    }
}

/// One `ut_metadata` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataMsg {
    /// `msg_type` 0: please send piece `piece`.
    Request {
        /// Metadata piece index.
        piece: u32,
    },
    /// `msg_type` 1: piece `piece` of a `total_size`-byte info dictionary.
    Data {
        /// Metadata piece index.
        piece: u32,
        /// Size of the whole info dictionary.
        total_size: u32,
        /// The piece's bytes (a view into the message payload).
        data: Bytes,
    },
    /// `msg_type` 2: the sender will not send piece `piece`.
    Reject {
        /// Metadata piece index.
        piece: u32,
    },
}

/// Why a `ut_metadata` payload is invalid. Each is a protocol error of the
/// sending peer.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum MetadataError {
    /// The header is not valid bencode.
    #[error("ut_metadata: {0}")]
    Bencode(#[from] bencode::DecodeError),
    /// The header is bencode but not a dictionary.
    #[error("ut_metadata message is not a dictionary")]
    NotDict,
    /// `msg_type` or `piece` is missing or not a non-negative integer.
    #[error("ut_metadata message has no valid `{0}`")]
    Missing(&'static str),
    /// `msg_type` is not 0, 1 or 2.
    #[error("ut_metadata msg_type {0} is unknown")]
    UnknownType(i64),
    /// `total_size` is 0, negative or above the limit.
    #[error("ut_metadata total_size {size} not in 1..={max}")]
    BadSize {
        /// Declared size.
        size: i64,
        /// The limit in force.
        max: u32,
    },
    /// `piece` is not below the piece count of the metadata size.
    #[error("ut_metadata piece {piece} out of range ({count} pieces)")]
    PieceOutOfRange {
        /// The index received.
        piece: u32,
        /// Piece count for the size.
        count: u32,
    },
    /// A data piece whose length is not what its index and the size imply.
    #[error("ut_metadata piece {piece} has {len} bytes, expected {expected}")]
    PieceLength {
        /// Piece index.
        piece: u32,
        /// Bytes received.
        len: usize,
        /// Bytes expected.
        expected: u32,
    },
    /// Bytes after the dictionary of a request or reject.
    #[error("ut_metadata {0} has trailing bytes")]
    Trailing(&'static str),
}

/// Number of metadata pieces of an info dictionary of `size` bytes.
pub fn piece_count(size: u32) -> u32 {
    size.div_ceil(PIECE_SIZE)
}

/// Length of metadata piece `piece` (`None` if out of range).
pub fn piece_len(size: u32, piece: u32) -> Option<u32> {
    let start = piece.checked_mul(PIECE_SIZE)?;
    (start < size).then(|| (size - start).min(PIECE_SIZE))
}

/// Checks a `metadata_size` a peer advertised in its extended handshake.
pub fn check_size(size: u64, limits: &Limits) -> Result<u32, MetadataError> {
    u32::try_from(size)
        .ok()
        .filter(|&s| s >= 1 && s <= limits.max_metadata_size)
        .ok_or(MetadataError::BadSize {
            size: i64::try_from(size).unwrap_or(i64::MAX),
            max: limits.max_metadata_size,
        })
}

impl MetadataMsg {
    /// Decodes a payload (without the extended message id byte). A `data`
    /// message's piece is a zero-copy slice of `payload`.
    pub fn decode(payload: &Bytes, limits: &Limits) -> Result<MetadataMsg, MetadataError> {
        // The header is a few dozen bytes; anything long is garbage.
        let header_limits = bencode::Limits {
            max_depth: 4,
            max_input: 1024,
        };
        let (value, end) = bencode::decode_prefix(payload, &header_limits)?;
        let dict = value.as_dict().ok_or(MetadataError::NotDict)?;
        let int = |key: &'static str| {
            dict.get(key.as_bytes())
                .and_then(|v| v.as_int())
                .ok_or(MetadataError::Missing(key))
        };
        let msg_type = int("msg_type")?;
        let piece = u32::try_from(int("piece")?).map_err(|_| MetadataError::Missing("piece"))?;
        match msg_type {
            0 | 2 => {
                if end != payload.len() {
                    return Err(MetadataError::Trailing(if msg_type == 0 {
                        "request"
                    } else {
                        "reject"
                    }));
                }
                Ok(if msg_type == 0 {
                    MetadataMsg::Request { piece }
                } else {
                    MetadataMsg::Reject { piece }
                })
            }
            1 => {
                let size = int("total_size")?;
                let total_size = u32::try_from(size)
                    .ok()
                    .filter(|&s| s >= 1 && s <= limits.max_metadata_size)
                    .ok_or(MetadataError::BadSize {
                        size,
                        max: limits.max_metadata_size,
                    })?;
                let expected =
                    piece_len(total_size, piece).ok_or(MetadataError::PieceOutOfRange {
                        piece,
                        count: piece_count(total_size),
                    })?;
                let data = payload.slice(end..);
                if data.len() != expected as usize {
                    return Err(MetadataError::PieceLength {
                        piece,
                        len: data.len(),
                        expected,
                    });
                }
                Ok(MetadataMsg::Data {
                    piece,
                    total_size,
                    data,
                })
            }
            other => Err(MetadataError::UnknownType(other)),
        }
    }

    /// The payload bytes (header, then the piece for `Data`).
    pub fn encode(&self) -> Vec<u8> {
        let mut dict = std::collections::BTreeMap::new();
        let (t, piece) = match self {
            MetadataMsg::Request { piece } => (0, *piece),
            MetadataMsg::Data { piece, .. } => (1, *piece),
            MetadataMsg::Reject { piece } => (2, *piece),
        };
        dict.insert(b"msg_type".to_vec(), Bencode::Int(t));
        dict.insert(b"piece".to_vec(), Bencode::Int(i64::from(piece)));
        if let MetadataMsg::Data { total_size, .. } = self {
            dict.insert(b"total_size".to_vec(), Bencode::Int(i64::from(*total_size)));
        }
        let mut out = Bencode::Dict(dict).encode();
        if let MetadataMsg::Data { data, .. } = self {
            out.extend_from_slice(data);
        }
        out
    }
}

/// What [`Assembler::received`] made of a piece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Stored; more pieces are missing.
    Stored,
    /// A piece we already had, or one never asked for: ignored.
    Ignored,
    /// Every piece is in and the SHA-1 matches: the info dictionary.
    Complete(Vec<u8>),
    /// Every piece is in but the SHA-1 does not match: the buffer is
    /// cleared and every piece must be fetched again; these are the peers
    /// (tags) that sent pieces of the bad copy.
    HashMismatch(Vec<u64>),
}

/// Puts a `size`-byte info dictionary together from pieces fetched from
/// several peers, each peer named by a caller-chosen `u64` tag. Plain state,
/// no clock: the caller decides timeouts and calls [`Assembler::release`].
#[derive(Debug)]
pub struct Assembler {
    info_hash: InfoHash,
    size: u32,
    buf: Vec<u8>,
    /// Per piece: who sent it (`Some` once stored), who it is asked of.
    from: Vec<Option<u64>>,
    asked: Vec<Option<u64>>,
}

impl Assembler {
    /// An assembler for an info dictionary of `size` bytes (checked with
    /// [`check_size`] first, so the allocation is bounded).
    pub fn new(info_hash: InfoHash, size: u64, limits: &Limits) -> Result<Self, MetadataError> {
        let size = check_size(size, limits)?;
        let n = piece_count(size) as usize;
        Ok(Assembler {
            info_hash,
            size,
            buf: vec![0; size as usize],
            from: vec![None; n],
            asked: vec![None; n],
        })
    }

    /// The metadata size this assembler was made for.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Pieces received so far and in total.
    pub fn progress(&self) -> (u32, u32) {
        let have = self.from.iter().filter(|f| f.is_some()).count() as u32;
        (have, self.from.len() as u32)
    }

    /// The next piece to ask `peer` for: one that is neither received nor
    /// asked of anyone, marked as asked of `peer`.
    pub fn next_request(&mut self, peer: u64) -> Option<u32> {
        let i =
            (0..self.from.len()).find(|&i| self.from[i].is_none() && self.asked[i].is_none())?;
        self.asked[i] = Some(peer);
        Some(i as u32)
    }

    /// Forgets every request made of `peer` (it rejected, timed out or left).
    pub fn release(&mut self, peer: u64) {
        for a in &mut self.asked {
            if *a == Some(peer) {
                *a = None;
            }
        }
    }

    /// Whether a request is outstanding with `peer`.
    pub fn has_request(&self, peer: u64) -> bool {
        self.asked.contains(&Some(peer))
    }

    /// A piece from `peer`. Its length must have been checked by
    /// [`MetadataMsg::decode`] against `total_size`, which the caller
    /// compares with [`Assembler::size`].
    pub fn received(&mut self, peer: u64, piece: u32, data: &[u8]) -> Received {
        let i = piece as usize;
        let Some(expected) = piece_len(self.size, piece) else {
            return Received::Ignored;
        };
        if self.from[i].is_some() || self.asked[i] != Some(peer) || data.len() != expected as usize
        {
            return Received::Ignored;
        }
        let start = i * PIECE_SIZE as usize;
        self.buf[start..start + data.len()].copy_from_slice(data);
        self.from[i] = Some(peer);
        self.asked[i] = None;
        if self.from.iter().any(|f| f.is_none()) {
            return Received::Stored;
        }
        let digest: [u8; 20] = Sha1::digest(&self.buf).into();
        if digest == *self.info_hash.as_bytes() {
            return Received::Complete(std::mem::take(&mut self.buf));
        }
        let mut peers: Vec<u64> = self.from.iter().flatten().copied().collect();
        peers.sort_unstable();
        peers.dedup();
        self.from.iter_mut().for_each(|f| *f = None);
        Received::HashMismatch(peers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(b: &[u8]) -> Result<MetadataMsg, MetadataError> {
        MetadataMsg::decode(&Bytes::copy_from_slice(b), &Limits::default())
    }

    #[test]
    fn round_trips() {
        for msg in [
            MetadataMsg::Request { piece: 3 },
            MetadataMsg::Reject { piece: 0 },
            MetadataMsg::Data {
                piece: 1,
                total_size: 16384 + 10,
                data: Bytes::from_static(b"0123456789"),
            },
        ] {
            assert_eq!(decode(&msg.encode()), Ok(msg));
        }
    }

    #[test]
    fn bep9_examples() {
        assert_eq!(
            decode(b"d8:msg_typei0e5:piecei0ee"),
            Ok(MetadataMsg::Request { piece: 0 })
        );
        assert_eq!(
            decode(b"d8:msg_typei1e5:piecei0e10:total_sizei3eexyz"),
            Ok(MetadataMsg::Data {
                piece: 0,
                total_size: 3,
                data: Bytes::from_static(b"xyz")
            })
        );
        assert_eq!(
            decode(b"d8:msg_typei2e5:piecei0ee"),
            Ok(MetadataMsg::Reject { piece: 0 })
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            decode(b"d8:msg_typei1e5:piecei1e10:total_sizei3eexyz"),
            Err(MetadataError::PieceOutOfRange { piece: 1, count: 1 })
        ));
        assert!(matches!(
            decode(b"d8:msg_typei1e5:piecei0e10:total_sizei3eexy"),
            Err(MetadataError::PieceLength { .. })
        ));
        assert!(matches!(
            decode(b"d8:msg_typei1e5:piecei0e10:total_sizei0ee"),
            Err(MetadataError::BadSize { size: 0, .. })
        ));
        assert!(matches!(
            decode(b"d8:msg_typei1e5:piecei0e10:total_sizei-5ee"),
            Err(MetadataError::BadSize { size: -5, .. })
        ));
        assert!(matches!(
            decode(b"d8:msg_typei1e5:piecei0e10:total_sizei99999999999ee"),
            Err(MetadataError::BadSize { .. })
        ));
        assert!(matches!(
            decode(b"d8:msg_typei7e5:piecei0ee"),
            Err(MetadataError::UnknownType(7))
        ));
        assert!(matches!(
            decode(b"d8:msg_typei0e5:piecei-1ee"),
            Err(MetadataError::Missing("piece"))
        ));
        assert!(matches!(
            decode(b"d8:msg_typei0e5:piecei0eeX"),
            Err(MetadataError::Trailing("request"))
        ));
        assert!(matches!(decode(b"le"), Err(MetadataError::NotDict)));
        assert!(matches!(decode(b""), Err(MetadataError::Bencode(_))));
    }

    #[test]
    fn piece_arithmetic() {
        assert_eq!(piece_count(1), 1);
        assert_eq!(piece_count(16384), 1);
        assert_eq!(piece_count(16385), 2);
        assert_eq!(piece_len(16385, 1), Some(1));
        assert_eq!(piece_len(16385, 2), None);
        assert_eq!(piece_len(16384, u32::MAX), None);
        assert!(check_size(0, &Limits::default()).is_err());
        assert!(check_size(u64::MAX, &Limits::default()).is_err());
        assert_eq!(check_size(5, &Limits::default()), Ok(5));
    }

    #[test]
    fn assembles_from_two_peers_and_checks_the_hash() {
        let info: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let hash = InfoHash::of(&info);
        let mut a = Assembler::new(hash, info.len() as u64, &Limits::default()).unwrap();
        assert_eq!(a.progress(), (0, 3));
        let p0 = a.next_request(1).unwrap();
        let p1 = a.next_request(2).unwrap();
        let p2 = a.next_request(2).unwrap();
        assert_eq!(a.next_request(3), None);
        let chunk =
            |p: u32| &info[(p * PIECE_SIZE) as usize..((p + 1) * PIECE_SIZE).min(40_000) as usize];
        // A piece from someone it was not asked of is ignored.
        assert_eq!(a.received(3, p0, chunk(p0)), Received::Ignored);
        assert_eq!(a.received(1, p0, chunk(p0)), Received::Stored);
        assert_eq!(a.received(2, p1, chunk(p1)), Received::Stored);
        assert_eq!(
            a.received(2, p2, chunk(p2)),
            Received::Complete(info.clone())
        );
    }

    #[test]
    fn mismatch_names_the_senders_and_starts_over() {
        let info = vec![7u8; 20_000];
        let hash = InfoHash::of(&info);
        let mut a = Assembler::new(hash, 20_000, &Limits::default()).unwrap();
        assert_eq!(a.next_request(1), Some(0));
        assert_eq!(a.next_request(2), Some(1));
        assert_eq!(a.received(1, 0, &info[..16384]), Received::Stored);
        let bad = vec![8u8; 20_000 - 16384];
        assert_eq!(a.received(2, 1, &bad), Received::HashMismatch(vec![1, 2]));
        assert_eq!(a.progress(), (0, 2));
        a.release(1);
        a.release(2);
        assert_eq!(a.next_request(3), Some(0));
        assert_eq!(a.next_request(3), Some(1));
        assert_eq!(a.received(3, 0, &info[..16384]), Received::Stored);
        assert_eq!(
            a.received(3, 1, &info[16384..]),
            Received::Complete(info.clone())
        );
    }
}
