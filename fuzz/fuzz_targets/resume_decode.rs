//! Resume files and write journals are read back from disk and are
//! untrusted there: decoding arbitrary bytes never panics, what decodes
//! encodes back to the same bytes, and a journal parses to in-range pieces.
#![no_main]
use libfuzzer_sys::fuzz_target;
use storage::resume::{ResumeData, parse_journal};

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = ResumeData::decode(data) {
        // Version 2 round-trips byte for byte; version 1 loads as its
        // version-2 equivalent, which must decode to the same data.
        let again = ResumeData::decode(&d.encode()).expect("encoded resume data decodes");
        assert_eq!(again, d);
    }
    if data.len() >= 24 {
        let mut hash = [0u8; 20];
        hash.copy_from_slice(&data[..20]);
        let pieces = u32::from_le_bytes([data[20], data[21], data[22], data[23]]) % 4096;
        if let Some(list) = parse_journal(&data[24..], &hash, pieces) {
            assert!(list.iter().all(|&p| p < pieces));
        }
        let mut framed = hash.to_vec();
        framed.extend_from_slice(&data[24..]);
        if let Some(list) = parse_journal(&framed, &hash, pieces) {
            assert!(list.iter().all(|&p| p < pieces));
            assert_eq!(list.len(), (framed.len() - 20) / 4);
        }
    }
});
