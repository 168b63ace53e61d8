//! A node's place in the control plane, and everything the node does with it: writes (sent to
//! the leader, forwarded when this node is a follower), linearizable reads, join tokens and
//! admissions, membership changes and status. The node crate uses only this module's types.
//!
//! No write is proposed by a leader that has not heard from a majority of voters within
//! [`QUORUM_ACK_STALE`]: it answers "no quorum" at once, so that a refused write cannot be
//! applied later when the others come back. (A majority lost after the check, within one
//! heartbeat, leaves the entry in the leader's log; it is applied if that leader keeps its
//! place, and dropped if another wins.)

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use letl_storage::Clock;

use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::identity::{Identity, IdentityError, JoinGrant, JoinToken, encode_hex};
use crate::network::{Contacts, Network, handle_raft_rpc};
use crate::store::{LogStore, RaftDb, StateMachineStore};
use crate::transport::{Handler, QuicTransport, Refusal, Rpc, RpcReply, Transport, TransportError};
use crate::{Command, ControlState, NodeId, NodeInfo, Raft, Response, SINGLE_NODE_ID};

/// A write not committed within this long fails with "no quorum".
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// A read that cannot confirm the leader within this long fails with "no quorum".
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for a leader to be known (an election takes 0.5 to 1 s).
pub const LEADER_WAIT: Duration = Duration::from_secs(3);
/// A leader that has not heard from a majority for this long refuses writes.
pub const QUORUM_ACK_STALE: Duration = Duration::from_millis(1000);
/// Hops a request follows from "not the leader" answers before giving up.
const FORWARD_HOPS_MAX: usize = 6;
/// How long a new member may take to catch up before it is made a voter.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// A joined node asks to be made a member this many times, once a second.
const JOIN_ATTEMPTS_MAX: usize = 300;
const JOIN_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Longest life of a join token.
pub const TOKEN_TTL_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Clone, Debug, thiserror::Error)]
pub enum ClusterError {
    /// A majority of voters cannot be reached: nothing was applied.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// The request is wrong (bad command, malformed token, not allowed now).
    #[error("{0}")]
    Refused(String),
    /// A join token this cluster did not issue, or that has expired.
    #[error("{0}")]
    Forbidden(String),
    /// The node's own parts failed (files, raft, endpoint).
    #[error("{0}")]
    Failed(String),
    /// Not now: the cluster is busy with a change that must end first; try again.
    #[error("busy: {0}")]
    Busy(String),
}

impl From<IdentityError> for ClusterError {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::Token(_) | IdentityError::Refused(_) => Self::Refused(e.to_string()),
            IdentityError::File { .. } | IdentityError::Tls(_) => Self::Failed(e.to_string()),
        }
    }
}

fn from_refusal(refusal: Refusal) -> ClusterError {
    match refusal {
        Refusal::NoQuorum(reason) => ClusterError::NoQuorum(reason),
        Refusal::Refused(reason) => ClusterError::Refused(reason),
        Refusal::Busy(reason) => ClusterError::Busy(reason),
        Refusal::NotLeader { .. } => ClusterError::NoQuorum("no stable leader".to_string()),
    }
}

/// Where a node keeps its cluster state and how it is reached.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// The cluster directory: identity and raft database.
    pub dir: PathBuf,
    /// The name a founded cluster gets.
    pub name: String,
    /// Where the QUIC endpoint listens.
    pub quic_listen: SocketAddr,
    /// How other nodes reach this one.
    pub advertise: NodeInfo,
    /// Token expiry and admission times come from it.
    pub clock: Arc<dyn Clock>,
}

/// One member as `letl cluster status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub quic: String,
    pub http: String,
    pub voter: bool,
    /// The last log index known replicated to it (on the leader).
    pub matched: Option<u64>,
    /// Milliseconds since this node last heard from it (`None`: never, or itself).
    pub last_contact_ms: Option<u64>,
    /// The names of the tiers it published.
    #[serde(default)]
    pub tiers: Vec<String>,
}

/// The control plane as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub node_id: NodeId,
    /// leader, follower, candidate, learner or shutdown.
    pub role: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log: Option<u64>,
    pub commit: Option<u64>,
    pub applied: Option<u64>,
    /// Admitted but not yet made a member.
    pub joining: bool,
    pub members: Vec<MemberStatus>,
}

/// What [`Cluster::start`] runs on.
#[derive(Debug)]
pub struct ClusterParts {
    /// Where the identity is saved once a join completes, and a leave is marked.
    pub dir: PathBuf,
    pub identity: Identity,
    pub db: RaftDb,
    pub transport: Arc<QuicTransport>,
    /// The addresses this node gives the cluster.
    pub advertise: NodeInfo,
    pub clock: Arc<dyn Clock>,
}

/// This node's handle on the control plane.
#[derive(Clone, Debug)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    dir: PathBuf,
    identity: Mutex<Identity>,
    advertise: NodeInfo,
    raft: Raft,
    log: LogStore,
    machine: StateMachineStore,
    transport: Arc<QuicTransport>,
    contacts: Contacts,
    clock: Arc<dyn Clock>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .field("advertise", &self.advertise)
            .finish_non_exhaustive()
    }
}

fn failed(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Failed(e.to_string())
}

/// Whether `dir` already holds a cluster identity (a founded or joined node).
pub fn identity_in(dir: &std::path::Path) -> Result<Option<Identity>, ClusterError> {
    set_aside_if_left(dir)?;
    Ok(Identity::load(dir)?)
}

/// File a node writes in its cluster dir once it has left the cluster.
const LEFT_MARKER: &str = "left";

/// A cluster dir whose node left its cluster is renamed `<dir>.left-<ms>` (kept, not
/// deleted), so the data dir can found a cluster or join one again.
fn set_aside_if_left(dir: &std::path::Path) -> Result<(), ClusterError> {
    if !dir.join(LEFT_MARKER).exists() {
        return Ok(());
    }
    let mut aside = dir.as_os_str().to_owned();
    aside.push(format!(".left-{}", letl_storage::SystemClock.now_ms()));
    std::fs::rename(dir, &aside).map_err(|e| {
        failed(format!(
            "this node left its cluster; setting {} aside failed: {e}",
            dir.display()
        ))
    })?;
    info!(kept = %std::path::Path::new(&aside).display(), "this node had left its cluster; its cluster state is set aside");
    Ok(())
}

/// A directory that already holds an identity cannot found or join another cluster.
fn refuse_if_taken(dir: &std::path::Path) -> Result<(), ClusterError> {
    set_aside_if_left(dir)?;
    match Identity::load(dir)? {
        Some(identity) => Err(ClusterError::Refused(format!(
            "{} already belongs to cluster `{}` as node {}",
            dir.display(),
            identity.cluster,
            identity.node_id
        ))),
        None => Ok(()),
    }
}

/// Founds a cluster in `dir`: a new CA and node 1's certificate. Refused if `dir` has an
/// identity already.
pub fn found(dir: &std::path::Path, name: &str) -> Result<Identity, ClusterError> {
    refuse_if_taken(dir)?;
    let identity = Identity::found(name, SINGLE_NODE_ID)?;
    identity.save(dir)?;
    info!(cluster = name, dir = %dir.display(), "founded a cluster");
    Ok(identity)
}

/// What a joining node sends for its token: the CA fingerprint and the proof (never the secret).
pub fn join_proof(token: &str) -> Result<(String, String), ClusterError> {
    let token = JoinToken::parse(token)?;
    Ok((token.ca_fingerprint.clone(), token.proof()))
}

/// The first half of joining: a key and a certificate request for the member to sign.
pub fn join_request() -> Result<(String, String), ClusterError> {
    crate::tls::node_key_and_request().map_err(failed)
}

/// The second half: checks the grant against the token and saves the identity in `dir`.
pub fn save_joined(
    dir: &std::path::Path,
    token: &str,
    grant: JoinGrant,
    key_pem: String,
) -> Result<Identity, ClusterError> {
    refuse_if_taken(dir)?;
    let token = JoinToken::parse(token)?;
    let identity = crate::identity::joined_identity(&token, grant, key_pem)?;
    identity.save(dir)?;
    Ok(identity)
}

impl Cluster {
    /// Opens this node's control plane: founds a one-node cluster on a fresh directory,
    /// restarts from the log otherwise, and asks to be made a member after a join.
    pub async fn open(settings: ClusterSettings) -> Result<Self, ClusterError> {
        set_aside_if_left(&settings.dir)?;
        let identity = match Identity::load(&settings.dir)? {
            Some(identity) => identity,
            None => found(&settings.dir, &settings.name)?,
        };
        let raft_dir = settings.dir.join("raft");
        let db = tokio::task::spawn_blocking(move || RaftDb::open(&raft_dir))
            .await
            .map_err(failed)?
            .map_err(|e| failed(format!("opening the raft database: {e}")))?;
        let transport = Arc::new(
            QuicTransport::bind(settings.quic_listen, &identity.tls())
                .map_err(|e| failed(format!("quic on {}: {e}", settings.quic_listen)))?,
        );
        let quic = transport.local_addr().map_err(failed)?;
        let mut advertise = settings.advertise.clone();
        if advertise
            .quic
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.port() == 0)
        {
            advertise.quic = quic.to_string();
        }
        Self::start(ClusterParts {
            dir: settings.dir,
            identity,
            db,
            transport,
            advertise,
            clock: settings.clock,
        })
        .await
    }

    /// Runs this node's control plane on parts the caller built (`open` builds them from a
    /// directory; the simulator from memory and its simulated network).
    pub async fn start(parts: ClusterParts) -> Result<Self, ClusterError> {
        let ClusterParts {
            dir,
            identity,
            db,
            transport,
            advertise,
            clock,
        } = parts;
        let id = identity.node_id;
        let quic = transport.local_addr().map_err(failed)?;
        let fresh = db.is_empty().map_err(failed)?;
        let (log, machine) = db.stores().map_err(failed)?;
        let contacts = Contacts::default();
        let config = crate::raft_config(&identity.cluster).map_err(failed)?;
        let raft = Raft::new(
            id,
            Arc::new(config),
            Network::new(
                Arc::clone(&transport) as Arc<dyn Transport>,
                contacts.clone(),
            ),
            log.clone(),
            machine.clone(),
        )
        .await
        .map_err(failed)?;
        let server = transport.serve(Arc::new(ClusterHandler {
            raft: raft.clone(),
            contacts: contacts.clone(),
        }));
        let joining = !identity.join_via.is_empty();
        let cluster = Self {
            inner: Arc::new(Inner {
                id,
                dir,
                identity: Mutex::new(identity),
                advertise: advertise.clone(),
                raft,
                log,
                machine,
                transport,
                contacts,
                clock,
                tasks: Mutex::new(vec![server]),
            }),
        };
        if fresh && !joining && id != SINGLE_NODE_ID {
            // A joined node that lost its raft database must not found a rival cluster with
            // the shared CA: it waits for the leader to send it the log again.
            warn!(
                node = id,
                "the raft database is empty; waiting for the leader to replicate it"
            );
        } else if fresh && !joining {
            let members = BTreeMap::from([(id, advertise)]);
            cluster
                .inner
                .raft
                .initialize(members)
                .await
                .map_err(|e| failed(format!("founding the cluster: {e}")))?;
            info!(node = id, %quic, "founded a one-node cluster");
        } else if joining {
            let task = tokio::spawn(cluster.clone().become_member());
            cluster.tasks().push(task);
        } else {
            let task = tokio::spawn(cluster.clone().update_addresses());
            cluster.tasks().push(task);
        }
        info!(node = id, %quic, joining, "control plane open");
        Ok(cluster)
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn identity(&self) -> Identity {
        self.inner
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.id
    }

    /// Whether this node is the leader now (work that one node must do, like schedules).
    pub fn is_leader(&self) -> bool {
        let m = self.inner.raft.metrics().borrow().clone();
        m.current_leader == Some(self.inner.id)
    }

    pub fn quic_addr(&self) -> Result<SocketAddr, ClusterError> {
        self.inner.transport.local_addr().map_err(failed)
    }

    /// Applies `command` through the leader; returns what the state machine answered.
    pub async fn write(&self, command: Command) -> Result<Response, ClusterError> {
        command.check().map_err(ClusterError::Refused)?;
        let reply = self.to_leader(Rpc::Write(command)).await?;
        match reply {
            RpcReply::Write(result) => result.map_err(from_refusal),
            other => Err(failed(format!("unexpected reply to a write: {other:?}"))),
        }
    }

    /// Reads the state once it holds every write committed before the call.
    pub async fn read<T>(&self, f: impl FnOnce(&ControlState) -> T) -> Result<T, ClusterError> {
        let index = match self.to_leader(Rpc::ReadIndex).await? {
            RpcReply::ReadIndex(result) => result.map_err(from_refusal)?,
            other => return Err(failed(format!("unexpected reply to a read: {other:?}"))),
        };
        let mut applied = self.inner.machine.applied();
        tokio::time::timeout(READ_TIMEOUT, applied.wait_for(|a| *a >= index))
            .await
            .map_err(|_| {
                ClusterError::NoQuorum(format!(
                    "this node did not catch up to index {index} within {READ_TIMEOUT:?}"
                ))
            })?
            .map_err(failed)?;
        Ok(self.inner.machine.read(f))
    }

    /// Follows the index this node has applied up to: it changes with every applied write.
    pub fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.machine.applied()
    }

    /// Reads this node's state as applied so far (may lag the leader).
    pub fn read_local<T>(&self, f: impl FnOnce(&ControlState) -> T) -> T {
        self.inner.machine.read(f)
    }

    /// Reads this node's applied state with the index it was applied up to (the simulator
    /// compares nodes at equal indexes).
    pub fn read_applied<T>(&self, f: impl FnOnce(&ControlState) -> T) -> (u64, T) {
        self.inner.machine.read_applied(f)
    }

    /// Sends `rpc` to the leader (this node, or over QUIC), following "not the leader" hints.
    async fn to_leader(&self, rpc: Rpc) -> Result<RpcReply, ClusterError> {
        let mut leader = self.wait_for_leader().await?;
        for _ in 0..FORWARD_HOPS_MAX {
            let reply = if leader.0 == self.inner.id {
                serve_locally(&self.inner.raft, rpc_ref(&rpc)).await
            } else {
                match self
                    .inner
                    .transport
                    .call(leader.0, &leader.1.quic, &rpc, WRITE_TIMEOUT + LEADER_WAIT)
                    .await
                {
                    Ok(reply) => reply,
                    // Not sent: the leader is gone; wait for the next one.
                    Err(TransportError::Unreachable { .. }) => {
                        RpcReply::Write(Err(Refusal::NotLeader { leader: None }))
                    }
                    Err(e) => {
                        return Err(ClusterError::NoQuorum(format!(
                            "the leader, node {}, did not answer: {e}",
                            leader.0
                        )));
                    }
                }
            };
            let refusal = match &reply {
                RpcReply::Write(Err(r))
                | RpcReply::ReadIndex(Err(r))
                | RpcReply::Member(Err(r)) => r.clone(),
                _ => return Ok(reply),
            };
            leader = match refusal {
                Refusal::NotLeader { leader: Some(next) } if next.0 != leader.0 => next,
                Refusal::NotLeader { .. } => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    self.wait_for_leader().await?
                }
                _ => return Ok(reply),
            };
        }
        Err(ClusterError::NoQuorum(format!(
            "no stable leader after {FORWARD_HOPS_MAX} tries"
        )))
    }

    /// The leader this node knows of, waiting up to [`LEADER_WAIT`] for one.
    async fn wait_for_leader(&self) -> Result<(NodeId, NodeInfo), ClusterError> {
        let mut metrics = self.inner.raft.metrics();
        // The guard `wait_for` returns is dropped at once: holding it while borrowing the
        // metrics again would deadlock against raft's next update of them.
        let known = tokio::time::timeout(
            LEADER_WAIT,
            metrics.wait_for(|m| {
                m.current_leader
                    .is_some_and(|l| m.membership_config.membership().get_node(&l).is_some())
            }),
        )
        .await
        .is_ok_and(|seen| seen.is_ok());
        let m = self.inner.raft.metrics().borrow().clone();
        let voters = m.membership_config.membership().voter_ids().count();
        if !known || m.current_leader.is_none() {
            return Err(ClusterError::NoQuorum(format!(
                "no leader: fewer than a majority of the {voters} voters can be reached"
            )));
        }
        let leader = m.current_leader.unwrap_or_default();
        let info = m
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()
            .unwrap_or_default();
        Ok((leader, info))
    }

    /// A new join token, valid for `ttl`.
    pub async fn issue_token(&self, ttl: Duration) -> Result<String, ClusterError> {
        if ttl.is_zero() || ttl > TOKEN_TTL_MAX {
            return Err(ClusterError::Refused(format!(
                "a token's lifetime must be between 1 s and {} h",
                TOKEN_TTL_MAX.as_secs() / 3600
            )));
        }
        let token = JoinToken::generate(&self.identity().fingerprint()?)?;
        let now = self.inner.clock.now_ms();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        match self
            .write(Command::IssueJoinToken {
                token_hash: crate::identity::proof_hash(&token.proof())?,
                seal_key: token.seal_key(),
                expires_ms: now.saturating_add(ttl_ms),
                now_ms: now,
            })
            .await?
        {
            Response::Done => Ok(token.to_string()),
            Response::Refused { reason } => Err(ClusterError::Refused(reason)),
            other => Err(failed(format!("unexpected answer: {other:?}"))),
        }
    }

    /// Admits a node that holds a valid token: gives it an id and signs its certificate.
    /// `ca_fingerprint` and `proof` come from the joining node's token ([`join_proof`]).
    pub async fn admit(
        &self,
        ca_fingerprint: &str,
        proof: &str,
        csr_pem: &str,
    ) -> Result<JoinGrant, ClusterError> {
        let identity = self.identity();
        if ca_fingerprint != identity.fingerprint()? {
            return Err(ClusterError::Forbidden(format!(
                "the join token is for another cluster (its CA fingerprint is {ca_fingerprint})"
            )));
        }
        let token_hash = crate::identity::proof_hash(proof)?;
        // Ids of nodes that left are never reused: the allocator stays above every member.
        let members = self.read(|_| ()).await.map(|()| self.members())?;
        let members_max = members.keys().max().copied().unwrap_or(SINGLE_NODE_ID);
        let (node_id, seal_key) = match self
            .write(Command::AdmitNode {
                token_hash,
                members_max,
                now_ms: self.inner.clock.now_ms(),
            })
            .await?
        {
            Response::Admitted { node_id, seal_key } => (node_id, seal_key),
            Response::Refused { reason } => return Err(ClusterError::Forbidden(reason)),
            other => return Err(failed(format!("unexpected answer: {other:?}"))),
        };
        let cert_pem = identity
            .ca()?
            .sign_node(csr_pem, node_id)
            .map_err(|e| ClusterError::Refused(format!("the certificate request: {e}")))?;
        info!(node = node_id, "admitted a node");
        Ok(JoinGrant {
            cluster: identity.cluster.clone(),
            node_id,
            ca_pem: identity.ca_pem.clone(),
            sealed_ca_key: encode_hex(&crate::identity::seal(
                &seal_key,
                identity.ca_key_pem.as_bytes(),
            )?),
            cert_pem,
            members,
        })
    }

    /// The voters (members that hold data and vote), as this node knows them.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        let m = self.inner.raft.metrics().borrow().clone();
        m.membership_config.membership().voter_ids().collect()
    }

    /// Sends a data request to member `to` (see [`crate::data`]).
    pub async fn data_call(
        &self,
        to: NodeId,
        header: &[u8],
        body: Option<letl_storage::ByteStream>,
        answer_timeout: Duration,
    ) -> Result<crate::data::DataReply, TransportError> {
        let Some(info) = self.members().remove(&to) else {
            return Err(TransportError::Unreachable {
                to,
                addr: String::new(),
                reason: "not a member of this cluster".to_string(),
            });
        };
        self.inner
            .transport
            .data_call(to, &info.quic, header, body, answer_timeout)
            .await
    }

    /// Sets what answers other nodes' data requests.
    pub fn serve_data(&self, handler: Arc<dyn crate::data::DataHandler>) {
        self.inner.transport.serve_data(handler);
    }

    /// Object bytes this node has sent to and received from other nodes: (sent, received).
    pub fn data_bytes(&self) -> (u64, u64) {
        self.inner.transport.data_bytes()
    }

    /// The members with their addresses, as this node knows them.
    pub fn members(&self) -> BTreeMap<NodeId, NodeInfo> {
        let m = self.inner.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, info)| (*id, info.clone()))
            .collect()
    }

    /// After a join: asks the members to add this node (a learner that catches up, then a
    /// voter), then forgets where it joined.
    /// If this member's addresses are not the ones the cluster has (it restarted on others),
    /// asks the other members to record them, until the leader does (bounded). It does not
    /// stand for election meanwhile: nobody can answer it at its new addresses yet, and its
    /// higher terms would only unseat the leader. A node missing from its own membership (it
    /// was removed) is told to the log.
    async fn update_addresses(self) {
        let id = self.inner.id;
        let mut metrics = self.inner.raft.metrics();
        // Raft publishes the stored membership once its core has loaded it.
        let loaded = tokio::time::timeout(
            CATCH_UP_TIMEOUT,
            metrics.wait_for(|m| m.membership_config.membership().get_node(&id).is_some()),
        )
        .await
        .is_ok_and(|seen| seen.is_ok());
        if !loaded {
            warn!(
                node = id,
                "this node is not in its cluster's membership (it may have been removed); to join again, `letl cluster join` with a data dir that has no cluster state"
            );
            return;
        }
        let (recorded, peers) = {
            let m = self.inner.raft.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            let peers: Vec<(NodeId, NodeInfo)> = membership
                .nodes()
                .filter(|(peer, _)| **peer != id)
                .map(|(peer, info)| (*peer, info.clone()))
                .collect();
            (membership.get_node(&id).cloned(), peers)
        };
        if recorded.as_ref() == Some(&self.inner.advertise) || peers.is_empty() {
            return;
        }
        info!(node = id, old = ?recorded, new = %self.inner.advertise, "this node's addresses changed; asking the cluster to record them");
        self.inner.raft.runtime_config().elect(false);
        if self.ask_to_be_member(peers).await {
            info!(node = id, "the cluster has this node's new addresses");
        } else {
            warn!(
                attempts = JOIN_ATTEMPTS_MAX,
                "the cluster did not record this node's new addresses; the next start asks again"
            );
        }
        self.inner.raft.runtime_config().elect(true);
    }

    async fn become_member(self) {
        let peers: Vec<(NodeId, NodeInfo)> = self.identity().join_via.into_iter().collect();
        if !self.ask_to_be_member(peers).await {
            warn!(
                attempts = JOIN_ATTEMPTS_MAX,
                "gave up asking to become a member; restart the node to ask again"
            );
            return;
        }
        let saved = {
            let mut identity = self
                .inner
                .identity
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            identity.join_via.clear();
            identity.clone()
        };
        if let Err(e) = saved.save(&self.inner.dir) {
            warn!(error = %e, "could not record membership; the node asks again at its next start");
        }
        info!(node = self.inner.id, "now a voting member");
    }

    /// Asks `peers` (in turn, going straight to a leader one names) to make this node a voter
    /// with its advertised addresses, up to [`JOIN_ATTEMPTS_MAX`] times; true once one did.
    async fn ask_to_be_member(&self, mut peers: Vec<(NodeId, NodeInfo)>) -> bool {
        let me = self.inner.id;
        let mut next = 0;
        for _ in 0..JOIN_ATTEMPTS_MAX {
            if peers.is_empty() {
                return false;
            }
            let (to, info) = peers[next % peers.len()].clone();
            next += 1;
            let request = Rpc::AddMember {
                id: me,
                info: self.inner.advertise.clone(),
            };
            let reply = if to == me {
                // This node is the leader after all: it records its own addresses.
                Ok(serve_locally(&self.inner.raft, rpc_ref(&request)).await)
            } else {
                self.inner
                    .transport
                    .call(to, &info.quic, &request, CATCH_UP_TIMEOUT + WRITE_TIMEOUT)
                    .await
            };
            match reply {
                Ok(RpcReply::Member(Ok(()))) => return true,
                // Straight to the leader it names.
                Ok(RpcReply::Member(Err(Refusal::NotLeader {
                    leader: Some(leader),
                }))) if leader.0 != to => {
                    next = match peers.iter().position(|p| p.0 == leader.0) {
                        Some(at) => at,
                        None => {
                            peers.insert(0, leader);
                            0
                        }
                    };
                    continue;
                }
                // Another membership change in flight, a slow catch-up: both pass.
                Ok(RpcReply::Member(Err(refusal))) => {
                    warn!(
                        peer = to,
                        ?refusal,
                        "not recorded as a member yet; asking again"
                    );
                }
                Ok(other) => warn!(reply = ?other, "asking to be recorded as a member"),
                Err(e) => warn!(peer = to, error = %e, "asking to be recorded as a member"),
            }
            tokio::time::sleep(JOIN_RETRY_INTERVAL).await;
        }
        false
    }

    /// Removes this node from the cluster (it stops being a voter; its objects stay). A marker
    /// written before this returns has its cluster dir set aside (`<dir>.left-<ms>`) when the
    /// data dir is next used, so it can found a cluster again, or join one.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        match self
            .to_leader(Rpc::RemoveMember { id: self.inner.id })
            .await?
        {
            RpcReply::Member(result) => result.map_err(from_refusal)?,
            other => return Err(failed(format!("unexpected reply: {other:?}"))),
        }
        let marker = self.inner.dir.join(LEFT_MARKER);
        std::fs::File::create(&marker)
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::File::open(&self.inner.dir)?.sync_all())
            .map_err(|e| {
                failed(format!(
                    "left the cluster, but could not record it in {}: {e}; remove {} before using this data dir again",
                    marker.display(),
                    self.inner.dir.display()
                ))
            })
    }

    pub fn status(&self) -> ClusterStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let tiers: BTreeMap<NodeId, Vec<String>> = self.read_local(|s| {
            s.tiers
                .iter()
                .map(|(id, tiers)| (*id, tiers.iter().map(|t| t.name.clone()).collect()))
                .collect()
        });
        let members = membership
            .nodes()
            .map(|(id, info)| MemberStatus {
                id: *id,
                quic: info.quic.clone(),
                http: info.http.clone(),
                voter: voters.contains(id),
                matched: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index),
                last_contact_ms: (*id != self.inner.id)
                    .then(|| self.inner.contacts.since(*id))
                    .flatten()
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                tiers: tiers.get(id).cloned().unwrap_or_default(),
            })
            .collect();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let identity = self.identity();
        ClusterStatus {
            cluster: identity.cluster,
            node_id: self.inner.id,
            role: role.to_string(),
            leader: m.current_leader,
            term: m.current_term,
            last_log: m.last_log_index,
            commit: self.inner.log.committed().map(|l| l.index),
            applied: m.last_applied.map(|l| l.index),
            joining: !identity.join_via.is_empty(),
            members,
        }
    }

    /// Stops raft and the QUIC endpoint.
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            warn!(error = %e, "raft did not stop cleanly");
        }
        self.inner.transport.close();
        for task in self.tasks().drain(..) {
            task.abort();
        }
    }
}

/// Requests that only the leader serves, by reference to clone per hop.
fn rpc_ref(rpc: &Rpc) -> LocalRpc {
    match rpc {
        Rpc::Write(command) => LocalRpc::Write(command.clone()),
        Rpc::ReadIndex => LocalRpc::ReadIndex,
        Rpc::AddMember { id, info } => LocalRpc::AddMember(*id, info.clone()),
        Rpc::RemoveMember { id } => LocalRpc::RemoveMember(*id),
        _ => LocalRpc::Other,
    }
}

enum LocalRpc {
    Write(Command),
    ReadIndex,
    AddMember(NodeId, NodeInfo),
    RemoveMember(NodeId),
    Other,
}

/// Serves a leader-only request on this node (refusing it if this node is not the leader).
async fn serve_locally(raft: &Raft, rpc: LocalRpc) -> RpcReply {
    match rpc {
        LocalRpc::Write(command) => RpcReply::Write(leader_write(raft, command).await),
        LocalRpc::ReadIndex => RpcReply::ReadIndex(leader_read_index(raft).await),
        LocalRpc::AddMember(id, info) => RpcReply::Member(leader_add_member(raft, id, info).await),
        LocalRpc::RemoveMember(id) => RpcReply::Member(leader_remove_member(raft, id).await),
        LocalRpc::Other => RpcReply::Failed("not a leader request".to_string()),
    }
}

/// This node is the leader and has heard from a majority lately, or the refusal to give.
fn check_leader(raft: &Raft) -> Result<(), Refusal> {
    let m = raft.metrics().borrow().clone();
    if m.current_leader != Some(m.id) {
        let leader = m.current_leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|info| (l, info.clone()))
        });
        return Err(Refusal::NotLeader { leader });
    }
    let voters = m.membership_config.membership().voter_ids().count();
    let stale = u64::try_from(QUORUM_ACK_STALE.as_millis()).unwrap_or(u64::MAX);
    match m.millis_since_quorum_ack {
        Some(ms) if voters > 1 && ms > stale => Err(Refusal::NoQuorum(format!(
            "the leader (node {}) has not heard from a majority of the {voters} voters for {ms} ms",
            m.id
        ))),
        _ => Ok(()),
    }
}

fn write_refusal<E: std::fmt::Display>(
    e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>,
    what: E,
) -> Refusal {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Refusal::NotLeader {
            leader: f.leader_id.zip(f.leader_node),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            e @ ChangeMembershipError::InProgress(_),
        )) => Refusal::Busy(format!("{what}: {e}")),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Refusal::Refused(format!("{what}: {e}"))
        }
        RaftError::Fatal(e) => Refusal::Refused(format!("{what}: raft stopped: {e}")),
    }
}

async fn leader_write(raft: &Raft, command: Command) -> Result<Response, Refusal> {
    check_leader(raft)?;
    match tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(command)).await {
        Ok(Ok(written)) => Ok(written.data),
        Ok(Err(e)) => Err(write_refusal(e, "write")),
        // Rare: quorum was lost after the check above. The entry stays in this leader's log
        // and is applied only if this leader keeps its place once a majority is back.
        Err(_) => Err(Refusal::NoQuorum(format!(
            "not committed within {WRITE_TIMEOUT:?}: a majority of the voters did not acknowledge it (it takes effect only if they do later)"
        ))),
    }
}

async fn leader_read_index(raft: &Raft) -> Result<u64, Refusal> {
    check_leader(raft)?;
    match tokio::time::timeout(READ_TIMEOUT, raft.ensure_linearizable()).await {
        Ok(Ok(read)) => Ok(read.map_or(0, |l| l.index)),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
            Err(Refusal::NotLeader {
                leader: f.leader_id.zip(f.leader_node),
            })
        }
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
            Err(Refusal::NoQuorum(e.to_string()))
        }
        Ok(Err(RaftError::Fatal(e))) => Err(Refusal::Refused(format!("raft stopped: {e}"))),
        Err(_) => Err(Refusal::NoQuorum(format!(
            "a majority of the voters did not confirm the leader within {READ_TIMEOUT:?}"
        ))),
    }
}

async fn leader_add_member(raft: &Raft, id: NodeId, info: NodeInfo) -> Result<(), Refusal> {
    check_leader(raft)?;
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    if membership.voter_ids().any(|v| v == id) {
        if membership.get_node(&id) == Some(&info) {
            return Ok(());
        }
        // A member that restarted with other addresses: record them.
        let change = ChangeMembers::SetNodes(BTreeMap::from([(id, info.clone())]));
        return match tokio::time::timeout(WRITE_TIMEOUT, raft.change_membership(change, false))
            .await
        {
            Ok(Ok(_)) => {
                info!(node = id, %info, "a member's addresses changed");
                Ok(())
            }
            Ok(Err(e)) => Err(write_refusal(e, "recording new addresses")),
            Err(_) => Err(Refusal::NoQuorum(format!(
                "node {id}'s new addresses were not committed within {WRITE_TIMEOUT:?}"
            ))),
        };
    }
    match tokio::time::timeout(CATCH_UP_TIMEOUT, raft.add_learner(id, info.clone(), true)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(write_refusal(e, "adding a learner")),
        Err(_) => {
            return Err(Refusal::Busy(format!(
                "node {id} did not catch up within {CATCH_UP_TIMEOUT:?}"
            )));
        }
    }
    info!(node = id, %info, "added a learner; making it a voter");
    let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
    match tokio::time::timeout(WRITE_TIMEOUT, raft.change_membership(change, false)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(write_refusal(e, "making a voter")),
        Err(_) => Err(Refusal::NoQuorum(format!(
            "the membership change was not committed within {WRITE_TIMEOUT:?}"
        ))),
    }
}

async fn leader_remove_member(raft: &Raft, id: NodeId) -> Result<(), Refusal> {
    check_leader(raft)?;
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let change = if voters.contains(&id) {
        if voters.len() == 1 {
            return Err(Refusal::Refused(
                "the last voter cannot leave its cluster".to_string(),
            ));
        }
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else if membership.get_node(&id).is_some() {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    } else {
        return Ok(());
    };
    match tokio::time::timeout(WRITE_TIMEOUT, raft.change_membership(change, false)).await {
        Ok(Ok(_)) => {
            info!(node = id, "removed a member");
            Ok(())
        }
        Ok(Err(e)) => Err(write_refusal(e, "removing a member")),
        Err(_) => Err(Refusal::NoQuorum(format!(
            "the membership change was not committed within {WRITE_TIMEOUT:?}"
        ))),
    }
}

/// Serves requests from other nodes: raft's own, and the leader-only ones.
struct ClusterHandler {
    raft: Raft,
    contacts: Contacts,
}

#[async_trait::async_trait]
impl Handler for ClusterHandler {
    async fn handle(&self, rpc: Rpc) -> RpcReply {
        match handle_raft_rpc(&self.raft, &self.contacts, rpc).await {
            Ok(reply) => reply,
            Err(other) => serve_locally(&self.raft, rpc_ref(&other)).await,
        }
    }
}
