//! opentracker on 127.0.0.1 for the seeding, swarm and tracker-download
//! tests: the same guard the actors tracker tests use.

#[path = "../../actors/tests/tracker_support/opentracker.rs"]
mod opentracker;

// Each test crate compiles this module; those without a tracker test do not
// use it.
#[allow(unused_imports)]
pub use opentracker::OpenTracker as Tracker;
