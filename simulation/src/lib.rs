//! Deterministic simulation of a whole letl cluster (to come with the simulation issue).
//!
//! It will run several nodes' real code (supervisor, tier and stage actors, raft, the QUIC
//! transport over a simulated UDP socket) in one thread under turmoil, with in-memory tier
//! backends, index and log stores whose durable state survives a simulated crash; inject
//! network, disk and crash faults; check invariants; and replay any run from its seed.
//!
//! Nothing depends on this crate. It never starts threads, reads the system clock or draws
//! unseeded randomness: that is what makes a seed a complete bug report. Today it holds the
//! seeded backends' first piece: a check that the in-memory backend the simulator will use keeps
//! the same contract as the fs backend (see `letl-storage`'s backend tests).

pub use letl_storage::{MemoryIndex, MemoryTier};
