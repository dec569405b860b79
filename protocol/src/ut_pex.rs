//! BEP 11 `ut_pex` messages: the peers a neighbour connected to (`added`,
//! `added6`, with one flags byte each in `added.f` / `added6.f`) and
//! disconnected from (`dropped`, `dropped6`) since its last message.
//!
//! Decoding is bounded and lenient the way the other clients are: a compact
//! list whose length is not a whole number of entries is an error (the
//! message is dropped), a list longer than [`Limits::max_peers`] is cut to
//! that many (the rest counted in [`Pex::truncated`]), a missing or short
//! flags string means "no flags known" for the peers it does not cover, and
//! port-0 entries are skipped.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::bencode::{self, Bencode};
use crate::tracker::{decode_compact_peers, encode_compact_peer};

/// The extension name peers put in the extended handshake's `m`.
pub const EXTENSION_NAME: &str = "ut_pex";

/// Most `added` peers one message should carry (BEP 11: 50).
pub const MAX_ADDED_PER_MESSAGE: usize = 50;

/// Flag bits of `added.f` (BEP 11).
#[allow(missing_docs)] // the names are the BEP's
pub mod flags {
    pub const ENCRYPTION: u8 = 0x01;
    pub const SEED: u8 = 0x02;
    pub const UTP: u8 = 0x04;
    pub const HOLEPUNCH: u8 = 0x08;
    pub const REACHABLE: u8 = 0x10;
}

/// Decoding bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most entries kept per list (`added`, `added6`, `dropped`,
    /// `dropped6`). Default 200, libtorrent's own cap on what it reads.
    pub max_peers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_peers: 200 }
    }
}

/// One `ut_pex` message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pex {
    /// Connected peers with their flags (IPv4 and IPv6 together).
    pub added: Vec<(SocketAddr, u8)>,
    /// Disconnected peers.
    pub dropped: Vec<SocketAddr>,
    /// Entries beyond [`Limits::max_peers`] that were not kept.
    pub truncated: usize,
}

/// Why a `ut_pex` payload is invalid.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PexError {
    /// Not valid bencode.
    #[error("ut_pex: {0}")]
    Bencode(#[from] bencode::DecodeError),
    /// Bencode but not a dictionary.
    #[error("ut_pex message is not a dictionary")]
    NotDict,
    /// A list that is not a byte string or not a whole number of entries.
    #[error("ut_pex `{key}` of {len} bytes is not a list of compact peers")]
    BadCompact {
        /// The key.
        key: &'static str,
        /// Its length.
        len: usize,
    },
}

impl Pex {
    /// Decodes a payload (without the extended message id byte).
    pub fn decode(payload: &[u8], limits: &Limits) -> Result<Pex, PexError> {
        let value = bencode::decode_with(
            payload,
            &bencode::Limits {
                max_depth: 4,
                ..bencode::Limits::default()
            },
        )?;
        let dict = value.as_dict().ok_or(PexError::NotDict)?;
        let mut pex = Pex::default();
        let mut list = |key: &'static str, ipv6: bool| -> Result<Vec<SocketAddr>, PexError> {
            let Some(v) = dict.get(key.as_bytes()) else {
                return Ok(Vec::new());
            };
            let bytes = v.as_bytes().ok_or(PexError::BadCompact {
                key,
                len: v.raw().len(),
            })?;
            let mut peers = decode_compact_peers(bytes, ipv6).ok_or(PexError::BadCompact {
                key,
                len: bytes.len(),
            })?;
            if peers.len() > limits.max_peers {
                pex.truncated += peers.len() - limits.max_peers;
                peers.truncate(limits.max_peers);
            }
            Ok(peers)
        };
        let added4 = list("added", false)?;
        let added6 = list("added6", true)?;
        let mut dropped = list("dropped", false)?;
        dropped.extend(list("dropped6", true)?);
        // Flags are positional; port-0 entries were skipped by the compact
        // decoder, so a flag may be misattributed after one (harmless: flags
        // are hints).
        let flags = |key: &[u8]| dict.get(key).and_then(|v| v.as_bytes()).unwrap_or(&[]);
        let (f4, f6) = (flags(b"added.f"), flags(b"added6.f"));
        pex.added = added4
            .into_iter()
            .enumerate()
            .map(|(i, a)| (a, f4.get(i).copied().unwrap_or(0)))
            .chain(
                added6
                    .into_iter()
                    .enumerate()
                    .map(|(i, a)| (a, f6.get(i).copied().unwrap_or(0))),
            )
            .collect();
        pex.dropped = dropped;
        Ok(pex)
    }

    /// The payload bytes. Keys with no entries are left out, except
    /// `added`/`dropped`, which libtorrent expects to be present.
    pub fn encode(&self) -> Vec<u8> {
        let (mut a4, mut f4, mut a6, mut f6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (addr, f) in &self.added {
            if addr.is_ipv4() {
                encode_compact_peer(addr, &mut a4);
                f4.push(*f);
            } else {
                encode_compact_peer(addr, &mut a6);
                f6.push(*f);
            }
        }
        let (mut d4, mut d6) = (Vec::new(), Vec::new());
        for addr in &self.dropped {
            encode_compact_peer(addr, if addr.is_ipv4() { &mut d4 } else { &mut d6 });
        }
        let mut dict = BTreeMap::new();
        dict.insert(b"added".to_vec(), Bencode::Bytes(a4));
        dict.insert(b"added.f".to_vec(), Bencode::Bytes(f4));
        dict.insert(b"dropped".to_vec(), Bencode::Bytes(d4));
        if !a6.is_empty() {
            dict.insert(b"added6".to_vec(), Bencode::Bytes(a6));
            dict.insert(b"added6.f".to_vec(), Bencode::Bytes(f6));
        }
        if !d6.is_empty() {
            dict.insert(b"dropped6".to_vec(), Bencode::Bytes(d6));
        }
        Bencode::Dict(dict).encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn round_trips_v4_and_v6_with_flags() {
        let pex = Pex {
            added: vec![
                (addr("1.2.3.4:5"), flags::SEED | flags::REACHABLE),
                (addr("[2001:db8::1]:6881"), flags::ENCRYPTION),
            ],
            dropped: vec![addr("9.9.9.9:99"), addr("[::2]:7")],
            truncated: 0,
        };
        assert_eq!(Pex::decode(&pex.encode(), &Limits::default()), Ok(pex));
    }

    #[test]
    fn caps_long_lists_and_tolerates_short_flags() {
        let mut compact = Vec::new();
        for i in 0..300u16 {
            encode_compact_peer(&SocketAddr::from(([10, 0, 0, 1], i + 1)), &mut compact);
        }
        let mut dict = BTreeMap::new();
        dict.insert(b"added".to_vec(), Bencode::Bytes(compact));
        dict.insert(b"added.f".to_vec(), Bencode::Bytes(vec![2]));
        let pex = Pex::decode(&Bencode::Dict(dict).encode(), &Limits::default()).unwrap();
        assert_eq!(pex.added.len(), 200);
        assert_eq!(pex.truncated, 100);
        assert_eq!(pex.added[0].1, flags::SEED);
        assert_eq!(pex.added[1].1, 0);
    }

    #[test]
    fn rejects_bad_compact_lengths() {
        assert_eq!(
            Pex::decode(b"d5:added5:12345e", &Limits::default()),
            Err(PexError::BadCompact {
                key: "added",
                len: 5
            })
        );
        assert_eq!(
            Pex::decode(b"d7:droppedi3ee", &Limits::default()),
            Err(PexError::BadCompact {
                key: "dropped",
                len: 3
            })
        );
        assert_eq!(
            Pex::decode(b"li1ee", &Limits::default()),
            Err(PexError::NotDict)
        );
        assert!(Pex::decode(b"d5:added", &Limits::default()).is_err());
        assert_eq!(Pex::decode(b"de", &Limits::default()), Ok(Pex::default()));
    }
}
