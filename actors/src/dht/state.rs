//! The routing table saved across runs: our node id (so the nodes that know
//! us keep knowing us) and the nodes we knew, as a small bencoded file
//!
//! ```text
//! d 2:id 20:<our id> 5:nodes <26 bytes per node: id, IPv4, port> e
//! ```
//!
//! written atomically (temp file, fsync, rename, fsync of the directory) on
//! a clean stop, and read at start. The saved nodes are not trusted: they
//! seed the first lookup, and only those that answer enter the table. A
//! file that does not parse is reported and ignored (the node starts with a
//! fresh id from the bootstrap nodes).

use std::fs::File;
use std::io::Read;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

use protocol::bencode::{self, encode_bytes};
use protocol::krpc::{COMPACT_NODE_LEN, ID_LEN};

use super::id::NodeId;

/// What is saved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedState {
    /// Our node id.
    pub id: NodeId,
    /// Nodes we knew.
    pub nodes: Vec<(NodeId, SocketAddrV4)>,
}

/// Why a state file could not be read or written.
#[derive(thiserror::Error, Debug)]
pub enum StateError {
    /// Reading, writing or renaming failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Larger than the configured limit.
    #[error("{path}: larger than {max} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: usize,
    },
    /// Not the format above.
    #[error("{path}: not a DHT state file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

impl SavedState {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.nodes.len() * COMPACT_NODE_LEN);
        out.push(b'd');
        encode_bytes(&mut out, b"id");
        encode_bytes(&mut out, &self.id.0);
        encode_bytes(&mut out, b"nodes");
        let mut compact = Vec::with_capacity(self.nodes.len() * COMPACT_NODE_LEN);
        for (id, addr) in &self.nodes {
            compact.extend_from_slice(&id.0);
            compact.extend_from_slice(&addr.ip().octets());
            compact.extend_from_slice(&addr.port().to_be_bytes());
        }
        encode_bytes(&mut out, &compact);
        out.push(b'e');
        out
    }

    /// Parses a file's bytes; at most `max_nodes` nodes are kept.
    pub fn decode(bytes: &[u8], max_nodes: usize) -> Result<SavedState, String> {
        let v = bencode::decode_with(
            bytes,
            &bencode::Limits {
                max_depth: 2,
                max_input: bytes.len(),
            },
        )
        .map_err(|e| e.to_string())?;
        let id = v
            .get(b"id")
            .and_then(|i| i.as_bytes())
            .and_then(|b| <[u8; ID_LEN]>::try_from(b).ok())
            .ok_or("no 20-byte `id`")?;
        let nodes = v
            .get(b"nodes")
            .and_then(|n| n.as_bytes())
            .ok_or("no `nodes` string")?;
        if nodes.len() % COMPACT_NODE_LEN != 0 {
            return Err(format!(
                "`nodes` of {} bytes is not a whole number of 26-byte entries",
                nodes.len()
            ));
        }
        // The KRPC compact node layout; chunks_exact guarantees the sizes.
        let nodes = nodes
            .chunks_exact(COMPACT_NODE_LEN)
            .take(max_nodes)
            .map(|c| {
                let mut id = [0; ID_LEN];
                id.copy_from_slice(&c[..ID_LEN]);
                let addr = SocketAddrV4::new(
                    [c[20], c[21], c[22], c[23]].into(),
                    u16::from_be_bytes([c[24], c[25]]),
                );
                (NodeId(id), addr)
            })
            .collect();
        Ok(SavedState {
            id: NodeId(id),
            nodes,
        })
    }
}

/// Reads the state file. `Ok(None)` if there is none.
pub fn load(
    path: &Path,
    max_size: usize,
    max_nodes: usize,
) -> Result<Option<SavedState>, StateError> {
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mut bytes = Vec::new();
    // One byte more than allowed tells "too large" from "exactly the limit".
    f.take(max_size as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() > max_size {
        return Err(StateError::TooLarge {
            path: path.to_path_buf(),
            max: max_size,
        });
    }
    SavedState::decode(&bytes, max_nodes)
        .map(Some)
        .map_err(|reason| StateError::Corrupt {
            path: path.to_path_buf(),
            reason,
        })
}

/// Writes the state file atomically.
pub fn save(path: &Path, state: &SavedState) -> Result<(), StateError> {
    storage::write_atomic(path, &state.encode())
        .map_err(|(p, source)| StateError::Io { path: p, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn state(n: usize) -> SavedState {
        SavedState {
            id: NodeId([7; 20]),
            nodes: (0..n)
                .map(|i| {
                    (
                        NodeId([i as u8; 20]),
                        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 6000 + i as u16),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn round_trips_through_a_file_and_caps_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dht.state");
        assert!(load(&path, 1 << 20, 100).unwrap().is_none());
        save(&path, &state(10)).unwrap();
        assert_eq!(load(&path, 1 << 20, 100).unwrap(), Some(state(10)));
        assert_eq!(load(&path, 1 << 20, 3).unwrap().unwrap().nodes.len(), 3);
        // No temp file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn corrupt_and_oversized_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dht.state");
        for bad in [
            &b"garbage"[..],
            b"d2:id3:abc5:nodes0:e",
            b"d2:id20:aaaaaaaaaaaaaaaaaaaa5:nodes5:abcdee",
            b"d2:id20:aaaaaaaaaaaaaaaaaaaae",
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = load(&path, 1 << 20, 100).unwrap_err();
            assert!(matches!(e, StateError::Corrupt { .. }), "{e}");
        }
        save(&path, &state(100)).unwrap();
        let e = load(&path, 100, 100).unwrap_err();
        assert!(matches!(e, StateError::TooLarge { max: 100, .. }), "{e}");
    }
}
