//! opentracker on 127.0.0.1 for the seeding, swarm and tracker-download
//! tests: the same guard the actors tracker tests use, and what its scrape
//! says of a torrent.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[path = "../../actors/tests/tracker_support/opentracker.rs"]
mod opentracker;

// Each test crate compiles this module; those without a tracker test do not
// use it.
#[allow(unused_imports)]
pub use opentracker::OpenTracker as Tracker;

/// Seeds opentracker counts for `info_hash` (`complete` in its HTTP
/// scrape); 0 while it does not answer or does not list the torrent. A
/// test waits for 1 before a client announces, or that announce may come
/// first and find nobody.
pub fn seeds_known(tracker: &Tracker, info_hash: &[u8; 20]) -> u64 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", tracker.port)) else {
        return 0;
    };
    let ih: String = info_hash.iter().map(|b| format!("%{b:02X}")).collect();
    let req = format!("GET /scrape?info_hash={ih} HTTP/1.0\r\n\r\n");
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let Some(start) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
        return 0;
    };
    protocol::tracker::parse_scrape_response(&resp[start + 4..])
        .ok()
        .and_then(|r| r.files.into_iter().find(|(h, _)| h == info_hash))
        .map_or(0, |(_, f)| u64::from(f.complete))
}
