//! letl's actors (ractor on tokio): the node supervisor and one tier actor per tier, and the
//! transforms pipelines run (the in-process ones; see [`transform`]).
//!
//! The supervisor is the root of a node: it starts the tier actors, restarts one that fails, and
//! drains them all at shutdown. A tier actor owns its tier's backend and is the only writer of
//! that tier's index. Stage and cache actors for pipelines join them with the pipeline work.
//! Every actor has one closed message enum. This crate never speaks HTTP, parses config or reads
//! the process environment; it never names sled or a file path: storage hands it backends and
//! indexes as trait objects, so the simulator can hand it in-memory ones.

pub mod cache;
mod directory;
pub mod pipeline;
mod supervisor;
mod tier;
pub mod transform;

pub use directory::{TierDirectory, TierHandle, TierStatus};
pub use supervisor::{
    NodeSupervisor, RestartPolicy, SupervisorArgs, SupervisorHandle, SupervisorMsg,
    TIER_DRAIN_TIMEOUT,
};
pub use tier::{
    DeleteMode, PutCondition, PutRequest, TIER_PUTS_IN_FLIGHT_MAX, TOMBSTONE_KEEP, TierActor,
    TierArgs, TierMsg, TierSpec, TierStats,
};
