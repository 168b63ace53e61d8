//! letl's control plane: the openraft 0.9 type config, the control-plane command enum and its
//! state machine (members, tiers, pipeline registrations and versions, mount state, jobs,
//! reserved request ids and destination URIs), the sled log store, and the node-to-node
//! transport with its QUIC implementation (quinn, mutual TLS under a cluster CA).
//!
//! The only crate that names openraft or quinn. It never holds object bytes or per-object
//! metadata: those stay with the tier that stores them.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub mod cluster;
pub mod data;
pub mod identity;
pub mod network;
pub mod runtime;
pub mod state;
pub mod store;
pub mod tls;
pub mod transport;

pub use state::{Claim, Command, ControlState, Held, JobEntry, PipelineEntry, Response, TierEntry};

/// A node's numeric id in the cluster. The single-node default is node 1.
pub type NodeId = u64;

/// The id a node takes when it founds a cluster.
pub const SINGLE_NODE_ID: NodeId = 1;

/// How a member is reached: its QUIC address (raft and data) and its HTTP address (admin API).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub quic: String,
    pub http: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "quic {} http {}", self.quic, self.http)
    }
}

openraft::declare_raft_types!(
    /// letl's raft types: control commands in, responses out, nodes with their addresses.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = NodeInfo,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = runtime::LetlRuntime,
);

/// Most entries in one append: each command is at most about 1 MiB
/// ([`state::COMMAND_DOCUMENT_BYTES_MAX`]), so a full batch fits in one transport frame.
pub const APPEND_ENTRIES_MAX: u64 = 32;
const _: () = assert!(
    (APPEND_ENTRIES_MAX
        * ((state::COMMAND_DOCUMENT_BYTES_MAX + 4 * state::COMMAND_TEXT_BYTES_MAX) as u64))
        < (transport::FRAME_BYTES_MAX as u64)
);

/// letl's raft timing: heartbeats every 100 ms, elections after 0.5 to 1 s of silence, a
/// snapshot every 5,000 entries.
pub fn raft_config(cluster_name: &str) -> Result<openraft::Config, String> {
    openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        max_payload_entries: APPEND_ENTRIES_MAX,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5000),
        ..Default::default()
    }
    .validate()
    .map_err(|e| e.to_string())
}

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type RaftStorageError = openraft::StorageError<NodeId>;
