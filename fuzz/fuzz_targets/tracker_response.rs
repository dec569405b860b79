//! HTTP tracker response parsing of arbitrary bodies: never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::tracker;

fuzz_target!(|data: &[u8]| {
    let _ = tracker::parse_announce_response(data);
    let _ = tracker::parse_scrape_response(data);
});
