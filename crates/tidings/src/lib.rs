//! The `tidings` binary's building blocks: the server wiring, key management, `emit` and the
//! demo producer. `main.rs` only parses the command line and calls into these.

pub mod audit;
pub mod client;
pub mod demo;
pub mod emit;
pub mod keys;
pub mod server;
