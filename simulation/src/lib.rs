//! Deterministic simulation of a whole letl cluster under faults (turmoil): the real node
//! parts run on simulated hosts, network and disks, a seeded workload and fault schedule
//! drive them, invariants are checked, and a run replays exactly from its seed.

// Without tokio's seeded randomness a seed does not replay: refuse to build rather than
// sweep seeds that mean nothing. `.cargo/config.toml` sets the flag; a RUSTFLAGS variable in
// the environment replaces that setting and must carry it.
#[cfg(not(tokio_unstable))]
compile_error!("letl-simulation needs `--cfg tokio_unstable` (see .cargo/config.toml)");

pub mod disk;
pub mod host;
pub mod http;
pub mod quic;
pub mod run;
pub mod udp;

pub use disk::Plant;
pub use run::{Options, Outcome, run};
