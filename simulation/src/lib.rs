//! Deterministic simulation of a whole letl cluster under faults (turmoil): the real node
//! parts run on simulated hosts, network and disks, a seeded workload and fault schedule
//! drive them, invariants are checked, and a run replays exactly from its seed.

pub mod disk;
pub mod host;
pub mod http;
pub mod run;
pub mod udp;

pub use disk::Plant;
pub use run::{Options, Outcome, run};
