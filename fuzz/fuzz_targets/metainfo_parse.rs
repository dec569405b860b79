//! Metainfo parsing of arbitrary bytes: never panics, and every accepted
//! torrent is internally consistent.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::metainfo::Metainfo;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Metainfo::from_bytes(data) {
        let info = &m.info;
        assert_eq!(info.pieces.len() as u64, info.total_length.div_ceil(info.piece_length as u64));
        let sum: u64 = info.files.iter().map(|f| f.length).sum();
        assert_eq!(sum, info.total_length);
        for f in &info.files {
            for c in &f.path {
                assert!(!c.is_empty() && c != "." && c != ".." && !c.contains('/') && !c.contains('\\'));
            }
        }
    }
});
