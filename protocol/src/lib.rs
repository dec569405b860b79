//! Sans-IO BitTorrent protocol: bytes in, typed values out; typed values in,
//! bytes out.
//!
//! Nothing here opens a socket, reads a clock or spawns a task. The client's
//! actors own all I/O and feed this crate the bytes they read; that keeps every
//! parser of untrusted input testable and fuzzable in isolation.

pub mod bencode;
pub mod http_range;
pub mod krpc;
pub mod magnet;
pub mod metainfo;
pub mod mse;
pub mod tracker;
pub mod trpc;
pub mod udp_tracker;
pub mod ut_metadata;
pub mod ut_pex;
pub mod wire;
