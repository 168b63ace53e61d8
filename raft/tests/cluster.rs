//! Three `Cluster`s in one process over real QUIC: node 1 founds, two nodes join with a token,
//! writes through a follower are forwarded, reads through a follower see them, a wrong token
//! is refused, and with two of three stopped the survivor answers "no quorum".

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use letl_raft::cluster::{self, Cluster, ClusterError, ClusterSettings};
use letl_raft::{Command, NodeInfo, Response};

fn settings(dir: &std::path::Path) -> ClusterSettings {
    let quic = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    ClusterSettings {
        dir: dir.to_path_buf(),
        name: "test".to_string(),
        quic_listen: quic,
        advertise: NodeInfo {
            quic: quic.to_string(),
            http: String::new(),
        },
        clock: std::sync::Arc::new(letl_storage::SystemClock),
    }
}

async fn join(member: &Cluster, dir: &std::path::Path, token: &str) -> Cluster {
    let (key, csr) = cluster::join_request().unwrap();
    let (fingerprint, proof) = cluster::join_proof(token).unwrap();
    let grant = member.admit(&fingerprint, &proof, &csr).await.unwrap();
    cluster::save_joined(dir, token, grant, key).unwrap();
    Cluster::open(settings(dir)).await.unwrap()
}

fn register(name: &str) -> Command {
    Command::RegisterPipeline {
        name: name.to_string(),
        spec_json: "{}".to_string(),
        mounted: true,
        now_ms: 1,
    }
}

async fn wait_voters(node: &Cluster, voters: usize) {
    for _ in 0..200 {
        let status = node.status();
        if status.members.iter().filter(|m| m.voter).count() == voters {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never {voters} voters: {:?}", node.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_forward_writes_read_linearizably_and_refuse_without_quorum() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let one = Cluster::open(settings(dirs[0].path())).await.unwrap();
    assert!(matches!(
        one.write(register("first")).await.unwrap(),
        Response::Pipeline(_)
    ));
    assert_eq!(one.status().role, "leader");

    let token = one.issue_token(Duration::from_secs(600)).await.unwrap();
    // A token with a wrong secret, or for another cluster, is refused.
    let (_, csr) = cluster::join_request().unwrap();
    let mut wrong = token.clone();
    wrong.replace_range(wrong.len() - 4.., "0000");
    let (fingerprint, proof) = cluster::join_proof(&wrong).unwrap();
    let refused = one.admit(&fingerprint, &proof, &csr).await.unwrap_err();
    assert!(
        refused.to_string().contains("not one this cluster issued"),
        "{refused}"
    );
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = Cluster::open(settings(stranger_dir.path())).await.unwrap();
    let foreign = stranger.issue_token(Duration::from_secs(60)).await.unwrap();
    let (fingerprint, proof) = cluster::join_proof(&foreign).unwrap();
    let refused = one.admit(&fingerprint, &proof, &csr).await.unwrap_err();
    assert!(refused.to_string().contains("another cluster"), "{refused}");
    stranger.shutdown().await;

    let two = join(&one, dirs[1].path(), &token).await;
    wait_voters(&one, 2).await;
    let three = join(&two, dirs[2].path(), &token).await;
    wait_voters(&one, 3).await;
    assert_eq!(two.node_id(), 2);
    assert_eq!(three.node_id(), 3);

    // A write through a follower reaches the leader; a read through another sees it.
    three.write(register("second")).await.unwrap();
    let seen = two
        .read(|s| s.pipelines.contains_key("second"))
        .await
        .unwrap();
    assert!(seen);
    let status = one.status();
    assert_eq!(status.leader, Some(1));
    assert!(status.commit >= status.applied.map(|a| a.saturating_sub(1)));

    // Two of three stopped: the survivor refuses, and nothing is applied.
    two.shutdown().await;
    three.shutdown().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = one.read_local(|s| s.pipelines.len());
    let err = one.write(register("third")).await.unwrap_err();
    assert!(matches!(err, ClusterError::NoQuorum(_)), "{err}");
    assert!(err.to_string().contains("no quorum"), "{err}");
    assert_eq!(one.read_local(|s| s.pipelines.len()), before);
    one.shutdown().await;
}
