//! The admin commands: each asks the running daemon over its admin socket and prints the
//! answer as a table or, with `--json`, as JSON.

pub mod volume;
