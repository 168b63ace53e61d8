//! letl's control plane (to come with the raft issue): the openraft 0.9 type config, the
//! control-plane command enum and its state machine (members, tiers, pipeline registrations and
//! versions, mount state, jobs, reserved request ids and destination URIs), the sled log store,
//! and the node-to-node transport trait with its QUIC implementation (quinn, mutual TLS under a
//! cluster CA).
//!
//! It will be the only crate that names openraft or quinn. It never holds object bytes or
//! per-object metadata: those stay with the tier that stores them. Until the raft issue lands,
//! a node's control state is local to it and this crate only fixes the vocabulary below.

/// A node's numeric id in the cluster. The single-node default is node 1.
pub type NodeId = u64;

/// The id a node takes when no cluster has been formed.
pub const SINGLE_NODE_ID: NodeId = 1;
