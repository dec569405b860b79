//! BEP 9 `ut_metadata` decoding of arbitrary payloads: never panics, a data
//! piece always has the length its index and size imply, and whatever
//! decodes encodes again to the same message.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use protocol::ut_metadata::{Limits, MetadataMsg, piece_len};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(msg) = MetadataMsg::decode(&Bytes::copy_from_slice(data), &limits) {
        if let MetadataMsg::Data { piece, total_size, data } = &msg {
            assert_eq!(piece_len(*total_size, *piece), Some(data.len() as u32));
        }
        let again = MetadataMsg::decode(&Bytes::from(msg.encode()), &limits);
        assert_eq!(again.as_ref(), Ok(&msg));
    }
});
