//! openraft's network over a [`Transport`]: each raft RPC is one request and one reply, bounded
//! by the deadline openraft gives it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use openraft::AnyError;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::transport::{Rpc, RpcReply, Transport, TransportError};
use crate::{NodeId, NodeInfo, TypeConfig};

/// When this node last heard from each peer (an answer to its request, or a request from the
/// leader): the last contact `letl cluster status` shows.
#[derive(Clone, Debug, Default)]
pub struct Contacts(Arc<Mutex<BTreeMap<NodeId, Instant>>>);

impl Contacts {
    pub fn record(&self, peer: NodeId) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, Instant::now());
    }

    /// How long ago this node last heard from `peer`.
    pub fn since(&self, peer: NodeId) -> Option<Duration> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .map(Instant::elapsed)
    }
}

/// Makes a [`PeerClient`] per peer.
#[derive(Clone, Debug)]
pub struct Network {
    transport: Arc<dyn Transport>,
    contacts: Contacts,
}

impl Network {
    pub fn new(transport: Arc<dyn Transport>, contacts: Contacts) -> Self {
        Self {
            transport,
            contacts,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        PeerClient {
            transport: Arc::clone(&self.transport),
            contacts: self.contacts.clone(),
            target,
            addr: node.quic.clone(),
        }
    }
}

/// Raft RPCs to one peer.
#[derive(Debug)]
pub struct PeerClient {
    transport: Arc<dyn Transport>,
    contacts: Contacts,
    target: NodeId,
    addr: String,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn call(
        &self,
        rpc: Rpc,
        option: &RPCOption,
    ) -> Result<RpcReply, RPCError<NodeId, NodeInfo, openraft::error::Infallible>> {
        let reply = self
            .transport
            .call(self.target, &self.addr, &rpc, option.soft_ttl())
            .await;
        if reply.is_ok() {
            self.contacts.record(self.target);
        }
        reply.map_err(|e| match e {
            // A peer that cannot be reached: openraft backs off before the next try. A
            // slow answer is a network error, retried at once (a back-off would stop
            // heartbeats long enough to start an election).
            TransportError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
            e => RPCError::Network(NetworkError::new(&e)),
        })
    }

    fn remote<E: std::error::Error>(
        &self,
        e: RaftError<NodeId, E>,
    ) -> RPCError<NodeId, NodeInfo, RaftError<NodeId, E>> {
        RPCError::RemoteError(RemoteError::new(self.target, e))
    }
}

fn widen<E: std::error::Error>(
    e: RPCError<NodeId, NodeInfo, openraft::error::Infallible>,
) -> RPCError<NodeId, NodeInfo, RaftError<NodeId, E>> {
    match e {
        RPCError::Unreachable(e) => RPCError::Unreachable(e),
        RPCError::Timeout(e) => RPCError::Timeout(e),
        RPCError::PayloadTooLarge(e) => RPCError::PayloadTooLarge(e),
        RPCError::Network(e) => RPCError::Network(e),
        RPCError::RemoteError(e) => match e.source {},
    }
}

fn unexpected<E: std::error::Error>(
    reply: &RpcReply,
) -> RPCError<NodeId, NodeInfo, RaftError<NodeId, E>> {
    let reason = match reply {
        RpcReply::Failed(reason) => reason.clone(),
        other => format!("an unexpected reply: {other:?}"),
    };
    RPCError::Network(NetworkError::new(&AnyError::error(reason)))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        match self
            .call(Rpc::AppendEntries(rpc), &option)
            .await
            .map_err(widen)?
        {
            RpcReply::AppendEntries(reply) => reply.map_err(|e| self.remote(e)),
            other => Err(unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self
            .call(Rpc::InstallSnapshot(rpc), &option)
            .await
            .map_err(widen)?
        {
            RpcReply::InstallSnapshot(reply) => reply.map_err(|e| self.remote(e)),
            other => Err(unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self.call(Rpc::Vote(rpc), &option).await.map_err(widen)? {
            RpcReply::Vote(reply) => reply.map_err(|e| self.remote(e)),
            other => Err(unexpected(&other)),
        }
    }
}

/// Answers a raft RPC; any other request is given back.
pub async fn handle_raft_rpc(
    raft: &crate::Raft,
    contacts: &Contacts,
    rpc: Rpc,
) -> Result<RpcReply, Rpc> {
    Ok(match rpc {
        Rpc::AppendEntries(request) => {
            contacts.record(request.vote.leader_id().voted_for().unwrap_or_default());
            RpcReply::AppendEntries(raft.append_entries(request).await)
        }
        Rpc::Vote(request) => RpcReply::Vote(raft.vote(request).await),
        Rpc::InstallSnapshot(request) => {
            RpcReply::InstallSnapshot(raft.install_snapshot(request).await)
        }
        other => return Err(other),
    })
}
