//! The `Range` header of a stream request: any bytes against any length
//! resolve without a panic, and a partial answer lies inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::http_range::{ByteRange, resolve};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (len, header) = data.split_at(8);
    let length = u64::from_le_bytes(len.try_into().unwrap()) % (1 << 40);
    match resolve(Some(header), length) {
        ByteRange::Partial { start, end } => {
            assert!(start < end && end <= length, "{start}..{end} of {length}")
        }
        ByteRange::Whole | ByteRange::Unsatisfiable => {}
    }
});
