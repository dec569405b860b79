//! Bencode decoding of arbitrary bytes: never panics, and whatever decodes
//! re-encodes to a document that decodes to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::bencode;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = bencode::decode(data) {
        let owned = v.to_owned_value();
        let again = owned.encode();
        let back = bencode::decode(&again).expect("re-encoded value decodes");
        assert!(back.to_owned_value() == owned);
    }
});
