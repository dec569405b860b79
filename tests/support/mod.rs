//! Shared support for the whole-client tests: test torrents with seeded
//! payloads, scripted peers that speak the wire protocol on loopback, and a
//! guard that runs the real `actorrent` binary with a wall-clock timeout.
//!
//! Each test crate that says `mod support;` compiles its own copy and uses
//! only part of it, so unused items are expected here.
#![allow(dead_code)]

pub mod client;
pub mod dht;
pub mod leecher;
pub mod lt;
pub mod netns;
pub mod payload;
pub mod process;
pub mod scripted;
pub mod torrent;
pub mod tracker;

use std::time::{Duration, Instant};

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns
/// whether it held. Tests use it to wait for a scripted peer to reach a
/// state, never to measure time.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
