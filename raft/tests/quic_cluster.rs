//! Three raft nodes in one process, talking over real QUIC with mutual TLS on loopback: a
//! command committed through the leader reaches every state machine; a node whose certificate
//! comes from another CA cannot talk to them.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use letl_raft::network::{Contacts, Network, handle_raft_rpc};
use letl_raft::store::{RaftDb, StateMachineStore};
use letl_raft::tls::{ClusterCa, NodeTls};
use letl_raft::transport::{Handler, QuicTransport, Rpc, RpcReply, Transport, TransportError};
use letl_raft::{Command, NodeId, NodeInfo, Raft, Response};

struct RaftHandler(Raft, Contacts);

#[async_trait::async_trait]
impl Handler for RaftHandler {
    async fn handle(&self, rpc: Rpc) -> RpcReply {
        match handle_raft_rpc(&self.0, &self.1, rpc).await {
            Ok(reply) => reply,
            Err(other) => RpcReply::Failed(format!("not served here: {other:?}")),
        }
    }
}

struct TestNode {
    raft: Raft,
    machine: StateMachineStore,
    transport: Arc<QuicTransport>,
}

async fn start(id: NodeId, tls: &NodeTls) -> TestNode {
    let transport = Arc::new(QuicTransport::bind("127.0.0.1:0".parse().unwrap(), tls).unwrap());
    let (log, machine) = RaftDb::temporary().unwrap().stores().unwrap();
    let raft = Raft::new(
        id,
        Arc::new(letl_raft::raft_config("test").unwrap()),
        Network::new(
            Arc::clone(&transport) as Arc<dyn Transport>,
            Contacts::default(),
        ),
        log,
        machine.clone(),
    )
    .await
    .unwrap();
    transport.serve(Arc::new(RaftHandler(raft.clone(), Contacts::default())));
    TestNode {
        raft,
        machine,
        transport,
    }
}

/// The error a call from `from` to node `to` at `addr` ends with (it must fail).
async fn refused_by(from: &QuicTransport, to: NodeId, addr: &str) -> TransportError {
    from.call(to, addr, &Rpc::ReadIndex, Duration::from_secs(5))
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_replicate_over_quic_and_another_ca_is_refused() {
    let ca = ClusterCa::generate("test").unwrap();
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(id, &ca.issue_node(id).unwrap()).await);
    }
    let members: BTreeMap<NodeId, NodeInfo> = nodes
        .iter()
        .map(|(id, node)| {
            let info = NodeInfo {
                quic: node.transport.local_addr().unwrap().to_string(),
                http: String::new(),
            };
            (*id, info)
        })
        .collect();
    nodes[&1].raft.initialize(members.clone()).await.unwrap();
    let leader = nodes[&1]
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .unwrap()
        .current_leader
        .unwrap();

    let written = nodes[&leader]
        .raft
        .client_write(Command::RegisterPipeline {
            name: "covid-md5".to_string(),
            spec_json: "{}".to_string(),
            mounted: true,
            now_ms: 1,
        })
        .await
        .unwrap();
    let Response::Pipeline(entry) = written.data else {
        panic!("not a pipeline: {:?}", written.data);
    };
    assert_eq!(entry.version, 1);
    for (id, node) in &nodes {
        node.raft
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(written.log_id.index), "the write")
            .await
            .unwrap();
        let mounted = node.machine.read(|s| s.pipelines["covid-md5"].mounted);
        assert!(mounted, "node {id}");
    }

    // A node with a certificate from another CA: the handshake fails, nothing is served.
    let other = ClusterCa::generate("other").unwrap();
    let stranger = QuicTransport::bind(
        "127.0.0.1:0".parse().unwrap(),
        &other.issue_node(9).unwrap(),
    )
    .unwrap();
    let refused = refused_by(&stranger, leader, &members[&leader].quic).await;
    assert!(
        matches!(refused, TransportError::Unreachable { .. }),
        "{refused}"
    );
    // One that trusts the cluster CA but presents another CA's certificate: the cluster's
    // node refuses it.
    let mut forged = other.issue_node(leader).unwrap();
    forged.ca_pem = ca.cert_pem().to_string();
    let impostor = QuicTransport::bind("127.0.0.1:0".parse().unwrap(), &forged).unwrap();
    let refused = refused_by(&impostor, leader, &members[&leader].quic).await;
    assert!(
        matches!(
            refused,
            TransportError::Unreachable { .. } | TransportError::Exchange { .. }
        ),
        "{refused}"
    );

    stranger.close();
    impostor.close();
    for node in nodes.values() {
        node.raft.shutdown().await.unwrap();
        node.transport.close();
    }
}
