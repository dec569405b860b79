//! Placeholder
pub mod budget;
pub mod pipeline;
pub mod rtt;
pub mod picker;
