//! Magnet URI parsing of arbitrary text: never panics, and what parses
//! survives a round trip through `to_uri`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::magnet::Magnet;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(m) = Magnet::parse(s) {
            let again = Magnet::parse(&m.to_uri()).expect("to_uri output parses");
            assert_eq!(again.info_hash, m.info_hash);
            assert_eq!(again.trackers, m.trackers);
        }
    }
});
