//! The `tidings` binary's building blocks: the server wiring, key management, `emit`, the
//! demo producer and the benchmark. `main.rs` only parses the command line and calls into these.

pub mod audit;
pub mod bench;
pub mod client;
pub mod demo;
pub mod emit;
pub mod keys;
pub mod server;
