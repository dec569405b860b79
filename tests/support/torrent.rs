//! Test torrents: payload files filled from a seeded RNG, written into a
//! temporary directory, and the matching `.torrent` built with the protocol
//! crate's bencode encoder. The test keeps the payload in memory, so scripted
//! seeds can serve it and the download can be compared byte for byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use protocol::bencode::Bencode;
use protocol::wire::{BLOCK_SIZE, BlockRef};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use sha1::{Digest, Sha1};

/// A torrent built for one test.
#[derive(Debug, Clone)]
pub struct TestTorrent {
    /// The `name` key: the root directory (multi-file) or the file name.
    pub name: String,
    /// Bytes per piece.
    pub piece_length: u32,
    /// Each file's path components under the root and its contents.
    pub files: Vec<(Vec<String>, Bytes)>,
    /// All files concatenated: what the pieces are cut from.
    pub payload: Bytes,
    /// SHA-1 of the bencoded info dictionary.
    pub info_hash: [u8; 20],
    /// Where the `.torrent` file was written.
    pub path: PathBuf,
    /// Whether the torrent uses the `files` list.
    pub multi_file: bool,
}

fn random_bytes(len: usize, rng: &mut SmallRng) -> Bytes {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    Bytes::from(v)
}

impl TestTorrent {
    /// A multi-file torrent named `name` with the given `(path, length)`
    /// files (paths use `/`), written to `dir/<name>.torrent`.
    pub fn multi(
        dir: &Path,
        name: &str,
        piece_length: u32,
        files: &[(&str, usize)],
        seed: u64,
    ) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let files: Vec<(Vec<String>, Bytes)> = files
            .iter()
            .map(|&(p, len)| {
                let path = p.split('/').map(str::to_owned).collect();
                (path, random_bytes(len, &mut rng))
            })
            .collect();
        Self::build(dir, name, piece_length, files, true)
    }

    /// A single-file torrent of `len` bytes.
    pub fn single(dir: &Path, name: &str, piece_length: u32, len: usize, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let files = vec![(vec![name.to_owned()], random_bytes(len, &mut rng))];
        Self::build(dir, name, piece_length, files, false)
    }

    fn build(
        dir: &Path,
        name: &str,
        piece_length: u32,
        files: Vec<(Vec<String>, Bytes)>,
        multi_file: bool,
    ) -> Self {
        let payload: Vec<u8> = files.iter().flat_map(|(_, d)| d.iter().copied()).collect();
        assert!(!payload.is_empty(), "a torrent needs at least one byte");
        let pieces: Vec<u8> = payload
            .chunks(piece_length as usize)
            .flat_map(|c| Sha1::digest(c).to_vec())
            .collect();
        let key = |k: &str| k.as_bytes().to_vec();
        let mut info = BTreeMap::new();
        info.insert(key("name"), Bencode::from(name));
        info.insert(key("piece length"), Bencode::Int(i64::from(piece_length)));
        info.insert(key("pieces"), Bencode::Bytes(pieces));
        if multi_file {
            let list = files
                .iter()
                .map(|(path, data)| {
                    let mut f = BTreeMap::new();
                    f.insert(key("length"), Bencode::Int(data.len() as i64));
                    let comps = path.iter().map(|c| Bencode::from(c.as_str())).collect();
                    f.insert(key("path"), Bencode::List(comps));
                    Bencode::Dict(f)
                })
                .collect();
            info.insert(key("files"), Bencode::List(list));
        } else {
            info.insert(key("length"), Bencode::Int(payload.len() as i64));
        }
        let info = Bencode::Dict(info);
        let info_hash: [u8; 20] = Sha1::digest(info.encode()).into();
        let mut root = BTreeMap::new();
        root.insert(key("info"), info);
        root.insert(key("created by"), Bencode::from("actorrent tests"));
        let path = dir.join(format!("{name}.torrent"));
        std::fs::write(&path, Bencode::Dict(root).encode()).expect("write .torrent");
        TestTorrent {
            name: name.to_owned(),
            piece_length,
            files,
            payload: Bytes::from(payload),
            info_hash,
            path,
            multi_file,
        }
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> u32 {
        self.payload.len().div_ceil(self.piece_length as usize) as u32
    }

    /// Length of piece `index` (the last one may be short).
    pub fn piece_len(&self, index: u32) -> u32 {
        let start = index as usize * self.piece_length as usize;
        (self.payload.len() - start).min(self.piece_length as usize) as u32
    }

    /// The bytes of `block`, or `None` if it is not inside its piece.
    pub fn block(&self, b: &BlockRef) -> Option<Bytes> {
        if b.index >= self.piece_count() || b.length == 0 {
            return None;
        }
        let end = u64::from(b.begin) + u64::from(b.length);
        if end > u64::from(self.piece_len(b.index)) {
            return None;
        }
        let start = b.index as usize * self.piece_length as usize + b.begin as usize;
        Some(self.payload.slice(start..start + b.length as usize))
    }

    /// Every 16 KiB block of the torrent, in order (the last block of the
    /// last piece may be shorter): what a conforming client requests.
    pub fn blocks(&self) -> Vec<BlockRef> {
        let mut out = Vec::new();
        for index in 0..self.piece_count() {
            let len = self.piece_len(index);
            let mut begin = 0;
            while begin < len {
                let length = BLOCK_SIZE.min(len - begin);
                out.push(BlockRef {
                    index,
                    begin,
                    length,
                });
                begin += length;
            }
        }
        out
    }

    /// Where the client puts the payload under `--output out`.
    pub fn output_root(&self, out: &Path) -> PathBuf {
        out.join(&self.name)
    }

    /// Asserts the download under `--output out` is byte-identical.
    pub fn assert_downloaded(&self, out: &Path) {
        let root = self.output_root(out);
        for (path, want) in &self.files {
            let file = if self.multi_file {
                path.iter().fold(root.clone(), |p, c| p.join(c))
            } else {
                root.clone()
            };
            let got = std::fs::read(&file)
                .unwrap_or_else(|e| panic!("read downloaded {}: {e}", file.display()));
            assert_eq!(
                got.len(),
                want.len(),
                "{} has the wrong length",
                file.display()
            );
            if let Some(at) = got.iter().zip(want.iter()).position(|(a, b)| a != b) {
                panic!("{} differs from the payload at byte {at}", file.display());
            }
        }
    }
}

impl TestTorrent {
    /// Writes the payload as a client would have downloaded it into `dir`
    /// (`dir/<name>/...` for multi-file), so a seed can serve it.
    pub fn write_payload(&self, dir: &Path) {
        let root = self.output_root(dir);
        for (path, data) in &self.files {
            let file = if self.multi_file {
                path.iter().fold(root.clone(), |p, c| p.join(c))
            } else {
                root.clone()
            };
            std::fs::create_dir_all(file.parent().unwrap()).expect("create payload dir");
            std::fs::write(&file, data).expect("write payload file");
        }
    }
}

impl TestTorrent {
    /// Rewrites the `.torrent` with `url` as its only tracker (`announce`).
    /// The info dictionary, and so the info-hash, is unchanged.
    pub fn set_announce(&self, url: &str) {
        let bytes = std::fs::read(&self.path).expect("read .torrent");
        let root = protocol::bencode::decode(&bytes).expect("our .torrent decodes");
        let Bencode::Dict(mut root) = root.to_owned_value() else {
            panic!("the .torrent is not a dictionary");
        };
        root.insert(b"announce".to_vec(), Bencode::from(url));
        std::fs::write(&self.path, Bencode::Dict(root).encode()).expect("write .torrent");
    }

    /// Rewrites the `.torrent` with `tiers` as its `announce-list` (and the
    /// first URL as `announce`).
    pub fn set_announce_list(&self, tiers: &[&[&str]]) {
        self.set_announce(tiers[0][0]);
        let bytes = std::fs::read(&self.path).expect("read .torrent");
        let root = protocol::bencode::decode(&bytes).expect("our .torrent decodes");
        let Bencode::Dict(mut root) = root.to_owned_value() else {
            panic!("the .torrent is not a dictionary");
        };
        let list = tiers
            .iter()
            .map(|t| Bencode::List(t.iter().map(|u| Bencode::from(*u)).collect()))
            .collect();
        root.insert(b"announce-list".to_vec(), Bencode::List(list));
        std::fs::write(&self.path, Bencode::Dict(root).encode()).expect("write .torrent");
    }
}
