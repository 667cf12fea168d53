//! placeholder

pub mod sim;
