//! BEP 15 packet parsing of arbitrary datagrams, both directions: never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::udp_tracker;

fuzz_target!(|data: &[u8]| {
    let _ = udp_tracker::parse_response(data, false);
    let _ = udp_tracker::parse_response(data, true);
    let _ = udp_tracker::parse_request(data);
});
