//! letl's control plane: the openraft 0.9 type config, the control-plane command enum and its
//! state machine (members, tiers, pipeline registrations and versions, mount state, jobs,
//! reserved request ids and destination URIs), the sled log store, and the node-to-node
//! transport with its QUIC implementation (quinn, mutual TLS under a cluster CA).
//!
//! The only crate that names openraft or quinn. It never holds object bytes or per-object
//! metadata: those stay with the tier that stores them.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub mod state;
pub mod store;

pub use state::{Command, ControlState, PipelineEntry, Response, TierEntry};

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
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type RaftStorageError = openraft::StorageError<NodeId>;
