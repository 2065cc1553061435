//! The edges: each module turns one piece of the outside world into core
//! types and back. Nothing here decides anything.

pub mod admin;
pub mod mqtt;
pub mod sources;
pub mod wsbridge;
