//! Node-to-node messages and how they travel: one QUIC connection per pair of nodes, one
//! bidirectional stream per request, each way one length-prefixed frame encoded by the codec.
//! The [`Transport`] trait is the seam: the simulator gives the same quinn stack a simulated
//! socket, unit tests may route calls in process.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use letl_storage::codec::{decode_wire, encode_wire};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::data::{DataCounters, DataHandler, serve_data_connection};
use crate::tls::{DATA_ALPN, NodeTls, TlsError, server_name};
use crate::{Command, NodeId, NodeInfo, Response, TypeConfig};

/// Largest frame either way (raft batches and snapshot chunks are far smaller).
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Frames are read in pieces of at most this much.
const FRAME_READ_CHUNK: usize = 1 << 20;
/// Connecting to a peer that does not answer fails after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A request from one node to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A control write a follower forwards to the leader.
    Write(Command),
    /// Asks the leader for a log index that reads must reach to be current.
    ReadIndex,
    /// A joined node asks to become a member: a learner, then a voter.
    AddMember {
        id: NodeId,
        info: NodeInfo,
    },
    /// A member asks to be removed.
    RemoveMember {
        id: NodeId,
    },
}

/// Why a forwarded request failed on the node that got it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// That node is not the leader; here is the one it knows of.
    NotLeader { leader: Option<(NodeId, NodeInfo)> },
    /// The leader cannot reach a majority.
    NoQuorum(String),
    /// Refused for a reason a user should read.
    Refused(String),
    /// Not now (a membership change in progress, a node still catching up): try again.
    Busy(String),
}

/// The answer to an [`Rpc`], variant for variant.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcReply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Write(Result<Response, Refusal>),
    ReadIndex(Result<u64, Refusal>),
    Member(Result<(), Refusal>),
    /// The request could not be handled at all (it did not decode, say).
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("node {to} at {addr} is unreachable: {reason}")]
    Unreachable {
        to: NodeId,
        addr: String,
        reason: String,
    },
    #[error("node {to} did not answer within {timeout:?}")]
    Timeout { to: NodeId, timeout: Duration },
    #[error("exchange with node {to} failed: {reason}")]
    Exchange { to: NodeId, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("quic endpoint: {0}")]
    Endpoint(String),
}

/// Sends requests to other nodes.
#[async_trait::async_trait]
pub trait Transport: Send + Sync + Debug + 'static {
    /// Sends `rpc` to node `to` at `addr` and waits at most `timeout` for its reply.
    async fn call(
        &self,
        to: NodeId,
        addr: &str,
        rpc: &Rpc,
        timeout: Duration,
    ) -> Result<RpcReply, TransportError>;
}

/// Answers requests from other nodes.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, rpc: Rpc) -> RpcReply;
}

/// Largest body a frame copies to send with its length in one write.
const FRAME_JOINED_BYTES_MAX: usize = 64 * 1024;

pub(crate) async fn write_frame(stream: &mut quinn::SendStream, body: &[u8]) -> Result<(), String> {
    let len = u32::try_from(body.len()).map_err(|_| "frame too large".to_string())?;
    if body.len() > FRAME_BYTES_MAX {
        return Err(format!(
            "a {} byte frame is more than {FRAME_BYTES_MAX}",
            body.len()
        ));
    }
    if body.len() <= FRAME_JOINED_BYTES_MAX {
        // One write: the length and a small body leave in one packet, not two (a lone
        // 4-byte packet and a second wake-up of the receiver per frame).
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(body);
        return stream.write_all(&frame).await.map_err(|e| e.to_string());
    }
    // A large body is not copied to join it.
    stream
        .write_all(&len.to_be_bytes())
        .await
        .map_err(|e| e.to_string())?;
    stream.write_all(body).await.map_err(|e| e.to_string())
}

pub(crate) async fn read_frame(stream: &mut quinn::RecvStream) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|e| e.to_string())?;
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if len > FRAME_BYTES_MAX {
        return Err(format!("a {len} byte frame is more than {FRAME_BYTES_MAX}"));
    }
    // Grows as bytes arrive: a peer's declared length alone allocates nothing.
    let mut body = Vec::with_capacity(len.min(FRAME_READ_CHUNK));
    while body.len() < len {
        let want = (len - body.len()).min(FRAME_READ_CHUNK);
        let start = body.len();
        body.resize(start + want, 0);
        stream
            .read_exact(&mut body[start..])
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(body)
}

/// Which of a peer's two connections: control (raft) or data (object bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Channel {
    Control,
    Data,
}

/// The QUIC transport: one endpoint per node, serving and calling.
pub struct QuicTransport {
    endpoint: quinn::Endpoint,
    /// The client configuration of data connections (the endpoint's default is control's).
    data_client: quinn::ClientConfig,
    /// One connection per peer and channel, made on first use and replaced when it closes.
    connections: Mutex<BTreeMap<(NodeId, Channel), quinn::Connection>>,
    /// Answers data requests once the node has set it (see [`QuicTransport::serve_data`]).
    data_handler: Arc<OnceLock<Arc<dyn DataHandler>>>,
    pub(crate) counters: Arc<DataCounters>,
}

impl Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("endpoint", &self.endpoint)
            .field("serving_data", &self.data_handler.get().is_some())
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// Binds a UDP socket at `addr` with this node's certificates.
    pub fn bind(addr: SocketAddr, tls: &NodeTls) -> Result<Self, TransportError> {
        let mut endpoint = quinn::Endpoint::server(tls.server_config()?, addr)
            .map_err(|e| TransportError::Endpoint(format!("bind {addr}: {e}")))?;
        endpoint.set_default_client_config(tls.client_config()?);
        Ok(Self::from_endpoint(endpoint, tls.data_client_config()?))
    }

    /// Uses an endpoint made elsewhere (the simulator's, over its own socket), which must
    /// carry this node's server and control client configurations; `data_client` is the
    /// client configuration of data connections.
    pub fn from_endpoint(endpoint: quinn::Endpoint, data_client: quinn::ClientConfig) -> Self {
        Self {
            endpoint,
            data_client,
            connections: Mutex::new(BTreeMap::new()),
            data_handler: Arc::new(OnceLock::new()),
            counters: Arc::new(DataCounters::default()),
        }
    }

    /// Sets what answers data requests (the first call wins). Until then they are refused.
    pub fn serve_data(&self, handler: Arc<dyn DataHandler>) {
        let _ = self.data_handler.set(handler);
    }

    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.endpoint
            .local_addr()
            .map_err(|e| TransportError::Endpoint(e.to_string()))
    }

    /// Answers incoming requests with `handler` until the endpoint closes.
    pub fn serve(&self, handler: Arc<dyn Handler>) -> JoinHandle<()> {
        let endpoint = self.endpoint.clone();
        let data_handler = Arc::clone(&self.data_handler);
        let counters = Arc::clone(&self.counters);
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let handler = Arc::clone(&handler);
                let data_handler = Arc::clone(&data_handler);
                let counters = Arc::clone(&counters);
                tokio::spawn(async move {
                    let remote = incoming.remote_address();
                    let connection = match incoming.await {
                        Ok(connection) => connection,
                        Err(e) => {
                            warn!(peer = %remote, error = %e, "refused a node connection");
                            return;
                        }
                    };
                    if alpn_of(&connection).as_deref() == Some(DATA_ALPN) {
                        serve_data_connection(connection, data_handler, counters).await;
                    } else {
                        serve_connection(connection, handler).await;
                    }
                });
            }
        })
    }

    /// Closes the endpoint: calls fail, serving stops.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"node stopping");
    }

    /// Drops the cached connection to `to`: the next call connects again.
    pub(crate) fn forget(&self, to: NodeId, channel: Channel) {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(to, channel));
    }

    pub(crate) async fn connection(
        &self,
        to: NodeId,
        addr: &str,
        channel: Channel,
    ) -> Result<quinn::Connection, TransportError> {
        let unreachable = |reason: String| TransportError::Unreachable {
            to,
            addr: addr.to_string(),
            reason,
        };
        let socket: SocketAddr = addr
            .parse()
            .map_err(|e| unreachable(format!("not an address: {e}")))?;
        if let Some(connection) = self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(to, channel))
            && connection.close_reason().is_none()
            && connection.remote_address() == socket
        {
            return Ok(connection.clone());
        }
        let connecting = match channel {
            Channel::Control => self.endpoint.connect(socket, &server_name(to)),
            Channel::Data => {
                self.endpoint
                    .connect_with(self.data_client.clone(), socket, &server_name(to))
            }
        }
        .map_err(|e| unreachable(e.to_string()))?;
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        debug!(peer = to, addr, ?channel, "connected to node");
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((to, channel), connection.clone());
        Ok(connection)
    }

    async fn exchange(
        &self,
        connection: &quinn::Connection,
        to: NodeId,
        addr: &str,
        request: &[u8],
    ) -> Result<Vec<u8>, TransportError> {
        let failed = |reason: String| TransportError::Exchange { to, reason };
        let (mut send, mut recv) = match connection.open_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                return Err(TransportError::Unreachable {
                    to,
                    addr: addr.to_string(),
                    reason: e.to_string(),
                });
            }
        };
        write_frame(&mut send, request).await.map_err(failed)?;
        send.finish().map_err(|e| failed(e.to_string()))?;
        read_frame(&mut recv).await.map_err(failed)
    }
}

/// The application protocol a connection agreed on.
fn alpn_of(connection: &quinn::Connection) -> Option<Vec<u8>> {
    connection
        .handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

async fn serve_connection(connection: quinn::Connection, handler: Arc<dyn Handler>) {
    loop {
        let (mut send, mut recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(_) => return,
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let reply = match read_frame(&mut recv).await {
                Ok(body) => match decode_wire::<Rpc>(&body) {
                    Ok(rpc) => handler.handle(rpc).await,
                    Err(e) => RpcReply::Failed(format!("undecodable request: {e}")),
                },
                Err(e) => RpcReply::Failed(format!("unreadable request: {e}")),
            };
            let sent = match encode_wire(&reply) {
                Ok(body) => write_frame(&mut send, &body).await,
                Err(e) => Err(e.to_string()),
            };
            match sent {
                Ok(()) => {
                    let _ = send.finish();
                }
                Err(e) => debug!(error = %e, "a reply could not be sent"),
            }
        });
    }
}

#[async_trait::async_trait]
impl Transport for QuicTransport {
    async fn call(
        &self,
        to: NodeId,
        addr: &str,
        rpc: &Rpc,
        timeout: Duration,
    ) -> Result<RpcReply, TransportError> {
        let request = encode_wire(rpc).map_err(|e| TransportError::Exchange {
            to,
            reason: e.to_string(),
        })?;
        // Connecting is bounded by CONNECT_TIMEOUT, not by this call's deadline: a heartbeat's
        // short deadline must not cut every new handshake short.
        let connection = self.connection(to, addr, Channel::Control).await?;
        let reply =
            match tokio::time::timeout(timeout, self.exchange(&connection, to, addr, &request))
                .await
            {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => {
                    self.forget(to, Channel::Control);
                    return Err(e);
                }
                Err(_) => {
                    // The peer may have restarted behind a connection that still looks open.
                    self.forget(to, Channel::Control);
                    return Err(TransportError::Timeout { to, timeout });
                }
            };
        decode_wire(&reply).map_err(|e| TransportError::Exchange {
            to,
            reason: format!("undecodable reply: {e}"),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};

    use super::*;
    use crate::Entry;

    #[test]
    fn raft_and_control_messages_round_trip_through_the_codec() {
        let command = Command::Reserve {
            claims: vec![crate::state::Claim::new("request", "r1")],
            holder: "job-1".to_string(),
            record: "{}".to_string(),
        };
        let append = Rpc::AppendEntries(AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 41)),
            entries: vec![Entry {
                log_id: LogId::new(CommittedLeaderId::new(3, 1), 42),
                payload: EntryPayload::Normal(command.clone()),
            }],
            leader_commit: Some(LogId::new(CommittedLeaderId::new(3, 1), 41)),
        });
        let back: Rpc = decode_wire(&encode_wire(&append).unwrap()).unwrap();
        let Rpc::AppendEntries(request) = back else {
            panic!("not an append: {back:?}");
        };
        assert_eq!(request.entries.len(), 1);
        assert_eq!(request.entries[0].log_id.index, 42);
        assert!(matches!(&request.entries[0].payload, EntryPayload::Normal(c) if *c == command));

        let refused = RpcReply::Write(Err(Refusal::NotLeader {
            leader: Some((
                2,
                NodeInfo {
                    quic: "127.0.0.1:7071".to_string(),
                    http: "127.0.0.1:7070".to_string(),
                },
            )),
        }));
        let back: RpcReply = decode_wire(&encode_wire(&refused).unwrap()).unwrap();
        assert!(matches!(
            back,
            RpcReply::Write(Err(Refusal::NotLeader {
                leader: Some((2, _))
            }))
        ));
    }
}
