//! The replicated control state and the commands that change it. Applying a command is a pure
//! function of the state and the command (times come inside commands, from the proposer's
//! clock), so every node that applies the same log holds the same state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// Longest name, key or holder a command may carry.
pub const COMMAND_TEXT_BYTES_MAX: usize = 4096;
/// Largest pipeline spec or job record a command may carry.
pub const COMMAND_DOCUMENT_BYTES_MAX: usize = 1 << 20;
/// Most join tokens kept at once (expired ones are dropped when a new one is issued).
pub const JOIN_TOKENS_MAX: usize = 64;
/// Most names one reservation claims at once.
pub const CLAIMS_MAX: usize = 8;

/// A pipeline as registered: its spec (JSON text, as the node parsed it), version and mount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineEntry {
    pub spec_json: String,
    pub version: u64,
    pub mounted: bool,
    pub registered_ms: u64,
    pub updated_ms: u64,
}

/// A tier as one node declares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierEntry {
    pub name: String,
    pub kind: String,
    pub backend: String,
    pub location: String,
}

/// A job: the node that runs it and its record (JSON text, the node's shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEntry {
    pub node: NodeId,
    pub pipeline: String,
    pub request_id: Option<String>,
    pub record_json: String,
    /// It has ended for good (a job stopped with its node has not: it resumes).
    pub finished: bool,
}

/// A reserved name: who holds it, and what they recorded when they took it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub holder: String,
    pub record: String,
}

/// A name in a reservation space (`letl-request`, `letl-destination`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub space: String,
    pub key: String,
}

impl Claim {
    pub fn new(space: &str, key: impl Into<String>) -> Self {
        Self {
            space: space.to_string(),
            key: key.into(),
        }
    }
}

/// How a save of an ended job's progress is refused (the end of the reason).
pub const JOB_ENDED: &str = "has ended";

/// Everything the control plane replicates (cluster membership itself is raft's own).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlState {
    pub pipelines: BTreeMap<String, PipelineEntry>,
    /// Pipeline jobs by id.
    pub jobs: BTreeMap<String, JobEntry>,
    /// Reserved names by space, each with its holder.
    pub reservations: BTreeMap<String, BTreeMap<String, Held>>,
    /// Tiers by node.
    pub tiers: BTreeMap<NodeId, Vec<TierEntry>>,
    /// Join tokens by the hash of their proof: when each expires, and the key that seals the
    /// CA key for the node that presents it.
    pub join_tokens: BTreeMap<String, JoinTokenEntry>,
    /// The id the next admitted node gets.
    pub next_node_id: NodeId,
    /// The job each request id started (a request id starts one job, for ever).
    pub job_requests: BTreeMap<String, String>,
    /// Nodes emptying themselves to leave: no object is placed on them any more, though they
    /// still serve what they hold.
    pub draining: std::collections::BTreeSet<NodeId>,
}

/// A change to the control state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Registers a pipeline, or makes a new version of it if the spec changed. `mounted`
    /// mounts it (a registration never unmounts).
    RegisterPipeline {
        name: String,
        spec_json: String,
        mounted: bool,
        now_ms: u64,
    },
    SetMounted {
        name: String,
        mounted: bool,
        now_ms: u64,
    },
    /// Replaces a known job's record (its progress, its end).
    PutJob {
        id: String,
        record_json: String,
        finished: bool,
    },
    /// Reserves every claim for `holder`, or none: a claim held by another holder is a
    /// conflict. Claims `holder` already holds stay as they are.
    Reserve {
        claims: Vec<Claim>,
        holder: String,
        record: String,
    },
    /// Releases the claims `holder` holds.
    Release {
        claims: Vec<Claim>,
        holder: String,
    },
    SetTiers {
        node: NodeId,
        tiers: Vec<TierEntry>,
    },
    IssueJoinToken {
        token_hash: String,
        seal_key: String,
        expires_ms: u64,
        now_ms: u64,
    },
    /// Gives a joining node its id if its token is known and unexpired: above every id given
    /// so far and every current member's (`members_max`, as the proposer saw them).
    AdmitNode {
        token_hash: String,
        members_max: NodeId,
        now_ms: u64,
    },
    /// Does nothing: a write that proves the leader can still commit.
    Noop,
    /// Records a new job, unless `request_id` already started one, or the id is known (the
    /// same command applied twice): then the answer is that job, and nothing changes.
    StartJob {
        id: String,
        node: NodeId,
        pipeline: String,
        request_id: Option<String>,
        record_json: String,
    },
    /// Marks a node as emptying itself to leave (or no longer).
    SetDraining {
        node: NodeId,
        draining: bool,
    },
}

/// A join token the cluster issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenEntry {
    pub expires_ms: u64,
    /// Hex; derived from the token's secret, which only the token's holder has besides.
    pub seal_key: String,
}

/// What applying a command gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Done,
    Pipeline(PipelineEntry),
    Reserved,
    /// A claim is held by someone else.
    Conflict {
        claim: Claim,
        held: Held,
    },
    Admitted {
        node_id: NodeId,
        /// The token's sealing key (hex).
        seal_key: String,
    },
    /// The command was refused and changed nothing.
    Refused {
        reason: String,
    },
    /// A job as recorded; `created` is false when it was recorded before (by its request id,
    /// or by its id).
    Job {
        id: String,
        record_json: String,
        created: bool,
    },
}

impl Command {
    /// Checks bounds before a command is proposed, so nothing oversized enters the log.
    pub fn check(&self) -> Result<(), String> {
        let text = |field: &str, value: &str| check_len(field, value, COMMAND_TEXT_BYTES_MAX);
        let document =
            |field: &str, value: &str| check_len(field, value, COMMAND_DOCUMENT_BYTES_MAX);
        match self {
            Self::RegisterPipeline {
                name, spec_json, ..
            } => {
                text("name", name)?;
                document("spec", spec_json)
            }
            Self::SetMounted { name, .. } => text("name", name),
            Self::StartJob {
                id,
                pipeline,
                request_id,
                record_json,
                ..
            } => {
                text("job id", id)?;
                text("pipeline", pipeline)?;
                text("request id", request_id.as_deref().unwrap_or_default())?;
                document("job record", record_json)
            }
            Self::PutJob {
                id, record_json, ..
            } => {
                text("job id", id)?;
                document("job record", record_json)
            }
            Self::Reserve {
                claims,
                holder,
                record,
            } => {
                check_claims(claims)?;
                text("holder", holder)?;
                document("record", record)
            }
            Self::Release { claims, holder } => {
                check_claims(claims)?;
                text("holder", holder)
            }
            Self::SetTiers { tiers, .. } => {
                for tier in tiers {
                    text("tier name", &tier.name)?;
                    text("tier location", &tier.location)?;
                }
                Ok(())
            }
            Self::IssueJoinToken {
                token_hash,
                seal_key,
                ..
            } => text("token", token_hash).and_then(|()| text("seal_key", seal_key)),
            Self::AdmitNode { token_hash, .. } => text("token", token_hash),
            Self::Noop | Self::SetDraining { .. } => Ok(()),
        }
    }
}

/// `value` is at most `max` bytes, or an error naming `field`.
fn check_len(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!("{field}: {} bytes is more than {max}", value.len()));
    }
    Ok(())
}

fn check_claims(claims: &[Claim]) -> Result<(), String> {
    if claims.is_empty() || claims.len() > CLAIMS_MAX {
        return Err(format!(
            "claims: {} claims; a reservation makes 1 to {CLAIMS_MAX}",
            claims.len()
        ));
    }
    for claim in claims {
        check_len("space", &claim.space, COMMAND_TEXT_BYTES_MAX)?;
        check_len("key", &claim.key, COMMAND_TEXT_BYTES_MAX)?;
    }
    Ok(())
}

impl ControlState {
    /// Who holds a claim, if anyone.
    pub fn held(&self, claim: &Claim) -> Option<&Held> {
        self.reservations.get(&claim.space)?.get(&claim.key)
    }

    pub fn apply(&mut self, command: Command) -> Response {
        match command {
            Command::RegisterPipeline {
                name,
                spec_json,
                mounted,
                now_ms,
            } => {
                let entry = match self.pipelines.get(&name) {
                    Some(previous) if previous.spec_json == spec_json => PipelineEntry {
                        mounted: previous.mounted || mounted,
                        ..previous.clone()
                    },
                    Some(previous) => PipelineEntry {
                        spec_json,
                        version: previous.version + 1,
                        mounted: previous.mounted || mounted,
                        registered_ms: previous.registered_ms,
                        updated_ms: now_ms,
                    },
                    None => PipelineEntry {
                        spec_json,
                        version: 1,
                        mounted,
                        registered_ms: now_ms,
                        updated_ms: now_ms,
                    },
                };
                self.pipelines.insert(name, entry.clone());
                Response::Pipeline(entry)
            }
            Command::SetMounted {
                name,
                mounted,
                now_ms,
            } => match self.pipelines.get_mut(&name) {
                Some(entry) => {
                    if entry.mounted != mounted {
                        entry.mounted = mounted;
                        entry.updated_ms = now_ms;
                    }
                    Response::Pipeline(entry.clone())
                }
                None => Response::Refused {
                    reason: format!("no pipeline `{name}`"),
                },
            },
            Command::StartJob {
                id,
                node,
                pipeline,
                request_id,
                record_json,
            } => {
                let earlier = request_id
                    .as_ref()
                    .and_then(|r| self.job_requests.get(r))
                    .or(Some(&id))
                    .and_then(|job| self.jobs.get_key_value(job));
                if let Some((earlier_id, entry)) = earlier {
                    return Response::Job {
                        id: earlier_id.clone(),
                        record_json: entry.record_json.clone(),
                        created: false,
                    };
                }
                if let Some(request) = &request_id {
                    self.job_requests.insert(request.clone(), id.clone());
                }
                self.jobs.insert(
                    id.clone(),
                    JobEntry {
                        node,
                        pipeline,
                        request_id,
                        record_json: record_json.clone(),
                        finished: false,
                    },
                );
                Response::Job {
                    id,
                    record_json,
                    created: true,
                }
            }
            Command::PutJob {
                id,
                record_json,
                finished,
            } => match self.jobs.get_mut(&id) {
                // An ended job stays ended: a late save of its progress does not reopen it.
                Some(entry) if entry.finished && !finished => Response::Refused {
                    reason: format!("job `{id}` {JOB_ENDED}"),
                },
                Some(entry) => {
                    entry.record_json = record_json;
                    entry.finished = finished;
                    Response::Done
                }
                None => Response::Refused {
                    reason: format!("no job `{id}`"),
                },
            },
            Command::Reserve {
                claims,
                holder,
                record,
            } => {
                for claim in &claims {
                    if let Some(held) = self.held(claim)
                        && held.holder != holder
                    {
                        return Response::Conflict {
                            claim: claim.clone(),
                            held: held.clone(),
                        };
                    }
                }
                for claim in claims {
                    self.reservations
                        .entry(claim.space)
                        .or_default()
                        .entry(claim.key)
                        .or_insert_with(|| Held {
                            holder: holder.clone(),
                            record: record.clone(),
                        });
                }
                Response::Reserved
            }
            Command::Release { claims, holder } => {
                for claim in claims {
                    if let Some(space) = self.reservations.get_mut(&claim.space) {
                        if space.get(&claim.key).is_some_and(|h| h.holder == holder) {
                            space.remove(&claim.key);
                        }
                        if space.is_empty() {
                            self.reservations.remove(&claim.space);
                        }
                    }
                }
                Response::Done
            }
            Command::SetTiers { node, tiers } => {
                self.tiers.insert(node, tiers);
                Response::Done
            }
            Command::IssueJoinToken {
                token_hash,
                seal_key,
                expires_ms,
                now_ms,
            } => {
                self.join_tokens
                    .retain(|_, entry| entry.expires_ms > now_ms);
                if self.join_tokens.len() >= JOIN_TOKENS_MAX {
                    return Response::Refused {
                        reason: format!(
                            "{JOIN_TOKENS_MAX} join tokens are still valid; use one of them"
                        ),
                    };
                }
                self.join_tokens.insert(
                    token_hash,
                    JoinTokenEntry {
                        expires_ms,
                        seal_key,
                    },
                );
                Response::Done
            }
            Command::AdmitNode {
                token_hash,
                members_max,
                now_ms,
            } => match self.join_tokens.get(&token_hash) {
                Some(entry) if entry.expires_ms > now_ms => {
                    let seal_key = entry.seal_key.clone();
                    let next = self
                        .next_node_id
                        .max(members_max.saturating_add(1))
                        .checked_add(1);
                    match next {
                        Some(next) => {
                            let node_id = next - 1;
                            self.next_node_id = next;
                            Response::Admitted { node_id, seal_key }
                        }
                        None => Response::Refused {
                            reason: "no node ids are left".to_string(),
                        },
                    }
                }
                Some(_) => Response::Refused {
                    reason: "the join token has expired".to_string(),
                },
                None => Response::Refused {
                    reason: "the join token is not one this cluster issued".to_string(),
                },
            },
            Command::Noop => Response::Done,
            Command::SetDraining { node, draining } => {
                if draining {
                    self.draining.insert(node);
                } else {
                    self.draining.remove(&node);
                }
                Response::Done
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn register(name: &str, spec: &str, mounted: bool, now_ms: u64) -> Command {
        Command::RegisterPipeline {
            name: name.to_string(),
            spec_json: spec.to_string(),
            mounted,
            now_ms,
        }
    }

    #[test]
    fn registrations_version_on_change_and_keep_their_mount() {
        let mut state = ControlState::default();
        let Response::Pipeline(v1) = state.apply(register("p", "{a}", true, 10)) else {
            panic!("not a pipeline");
        };
        assert_eq!((v1.version, v1.mounted, v1.registered_ms), (1, true, 10));
        // The same spec again: the same version.
        let Response::Pipeline(same) = state.apply(register("p", "{a}", false, 20)) else {
            panic!("not a pipeline");
        };
        assert_eq!(same, v1);
        let Response::Pipeline(v2) = state.apply(register("p", "{b}", false, 30)) else {
            panic!("not a pipeline");
        };
        assert_eq!((v2.version, v2.mounted, v2.updated_ms), (2, true, 30));
        let unmount = Command::SetMounted {
            name: "p".to_string(),
            mounted: false,
            now_ms: 40,
        };
        let Response::Pipeline(off) = state.apply(unmount) else {
            panic!("not a pipeline");
        };
        assert!(!off.mounted);
        let missing = Command::SetMounted {
            name: "q".to_string(),
            mounted: true,
            now_ms: 40,
        };
        assert_eq!(
            state.apply(missing),
            Response::Refused {
                reason: "no pipeline `q`".to_string()
            }
        );
    }

    #[test]
    fn a_reservation_has_one_holder_until_it_releases() {
        let mut state = ControlState::default();
        let claims = |keys: &[&str]| -> Vec<Claim> {
            keys.iter()
                .map(|k| {
                    let (space, key) = k.split_once(':').unwrap();
                    Claim::new(space, key)
                })
                .collect()
        };
        let reserve = |keys: &[&str], holder: &str| Command::Reserve {
            claims: claims(keys),
            holder: holder.to_string(),
            record: format!("by {holder}"),
        };
        let release = |keys: &[&str], holder: &str| Command::Release {
            claims: claims(keys),
            holder: holder.to_string(),
        };
        assert_eq!(
            state.apply(reserve(&["request:r1", "dest:d1"], "a")),
            Response::Reserved
        );
        // The holder again: idempotent, and the first record stays.
        assert_eq!(
            state.apply(reserve(&["request:r1"], "a")),
            Response::Reserved
        );
        // Another holder: a conflict naming the claim and its holder, and nothing of the
        // other claims is taken (all or none).
        assert_eq!(
            state.apply(reserve(&["request:r2", "dest:d1"], "b")),
            Response::Conflict {
                claim: Claim::new("dest", "d1"),
                held: Held {
                    holder: "a".to_string(),
                    record: "by a".to_string()
                },
            }
        );
        assert_eq!(state.held(&Claim::new("request", "r2")), None);
        // Someone else's release does nothing.
        state.apply(release(&["request:r1", "dest:d1"], "b"));
        assert!(matches!(
            state.apply(reserve(&["dest:d1"], "b")),
            Response::Conflict { .. }
        ));
        state.apply(release(&["request:r1", "dest:d1"], "a"));
        assert!(state.reservations.is_empty());
        assert_eq!(state.apply(reserve(&["dest:d1"], "b")), Response::Reserved);
        assert!(
            reserve(&[], "c")
                .check()
                .unwrap_err()
                .starts_with("claims:")
        );
    }

    #[test]
    fn a_node_is_marked_draining_and_back() {
        let mut state = ControlState::default();
        let mark = |draining| Command::SetDraining { node: 3, draining };
        assert_eq!(state.apply(mark(true)), Response::Done);
        assert!(state.draining.contains(&3));
        assert_eq!(state.apply(mark(true)), Response::Done);
        assert_eq!(state.apply(mark(false)), Response::Done);
        assert!(state.draining.is_empty());
    }

    #[test]
    fn a_request_id_starts_one_job_for_ever() {
        let mut state = ControlState::default();
        let start = |id: &str, request: Option<&str>| Command::StartJob {
            id: id.to_string(),
            node: 1,
            pipeline: "p".to_string(),
            request_id: request.map(str::to_string),
            record_json: format!("{{\"id\":\"{id}\"}}"),
        };
        let Response::Job { id, created, .. } = state.apply(start("j1", Some("r"))) else {
            panic!("not a job");
        };
        assert_eq!((id.as_str(), created), ("j1", true));
        let put = Command::PutJob {
            id: "j1".to_string(),
            record_json: "{\"id\":\"j1\",\"done\":true}".to_string(),
            finished: true,
        };
        assert_eq!(state.apply(put), Response::Done);
        assert!(state.jobs["j1"].finished);
        // A late save of its progress does not reopen it.
        let late = Command::PutJob {
            id: "j1".to_string(),
            record_json: "{\"id\":\"j1\"}".to_string(),
            finished: false,
        };
        assert!(
            matches!(state.apply(late), Response::Refused { reason } if reason.ends_with(JOB_ENDED))
        );
        assert!(state.jobs["j1"].finished);
        // The same request id again: the first job, with its latest record; no second job.
        assert_eq!(
            state.apply(start("j2", Some("r"))),
            Response::Job {
                id: "j1".to_string(),
                record_json: "{\"id\":\"j1\",\"done\":true}".to_string(),
                created: false,
            }
        );
        assert_eq!(state.jobs.len(), 1);
        // The same start applied twice (a write resent after a lost answer): that job.
        assert!(matches!(
            state.apply(start("j1", None)),
            Response::Job { id, created: false, .. } if id == "j1"
        ));
        assert_eq!(state.jobs.len(), 1);
        let unknown = Command::PutJob {
            id: "j9".to_string(),
            record_json: "{}".to_string(),
            finished: false,
        };
        assert!(matches!(state.apply(unknown), Response::Refused { .. }));
    }

    #[test]
    fn join_tokens_admit_until_they_expire() {
        let mut state = ControlState::default();
        let issue = Command::IssueJoinToken {
            token_hash: "h".to_string(),
            seal_key: "k".to_string(),
            expires_ms: 100,
            now_ms: 0,
        };
        assert_eq!(state.apply(issue), Response::Done);
        let admit = |now_ms| Command::AdmitNode {
            token_hash: "h".to_string(),
            members_max: 1,
            now_ms,
        };
        let admitted = |node_id| Response::Admitted {
            node_id,
            seal_key: "k".to_string(),
        };
        assert_eq!(state.apply(admit(50)), admitted(2));
        assert_eq!(state.apply(admit(60)), admitted(3));
        assert!(
            matches!(state.apply(admit(100)), Response::Refused { reason } if reason.contains("expired"))
        );
        let unknown = Command::AdmitNode {
            token_hash: "x".to_string(),
            members_max: 1,
            now_ms: 0,
        };
        assert!(
            matches!(state.apply(unknown), Response::Refused { reason } if reason.contains("not one this cluster issued"))
        );
    }

    #[test]
    fn oversized_commands_are_refused_before_proposal() {
        let big = register("p", &"x".repeat(COMMAND_DOCUMENT_BYTES_MAX + 1), true, 0);
        assert!(big.check().unwrap_err().starts_with("spec:"));
        assert!(register("p", "{}", true, 0).check().is_ok());
    }
}
