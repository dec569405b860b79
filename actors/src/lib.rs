//! The actors of actorrent and the plain state machines beside them.
//!
//! The state machines (buffer budget, piece picker, request pipeline, RTT
//! estimator) take time as a value and do no I/O, so they are tested without
//! a runtime; the actor shells that feed them land with the download path.

pub mod budget;
pub mod picker;
pub mod pipeline;
pub mod rtt;
