//! A Transmission RPC request body: any bytes parse to a request or an
//! error without a panic, and every typed reader of its arguments answers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::trpc::{decode_base64, parse_request};

fuzz_target!(|data: &[u8]| {
    let Ok(r) = parse_request(data) else {
        return;
    };
    let a = &r.arguments;
    let _ = a.ids();
    for key in ["fields", "labels"] {
        let _ = a.strings(key);
    }
    for key in ["files-wanted", "files-unwanted", "priority-high"] {
        if let Ok(Some(v)) = a.file_indices(key, 5) {
            assert!(v.iter().all(|&i| i < 5));
        }
    }
    let _ = a.bool("paused");
    let _ = a.int("uploadLimit");
    let _ = a.float("seedRatioLimit");
    if let Ok(Some(m)) = a.str("metainfo") {
        if let Ok(b) = decode_base64(m, 1 << 16) {
            assert!(b.len() <= 1 << 16);
        }
    }
});
