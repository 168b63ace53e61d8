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

/// Everything the control plane replicates (cluster membership itself is raft's own).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlState {
    pub pipelines: BTreeMap<String, PipelineEntry>,
    /// Job records (JSON text, the node's shape), by job id.
    pub jobs: BTreeMap<String, String>,
    /// Reserved names by space (`request`, `destination`, ...), each with its holder.
    pub reservations: BTreeMap<String, BTreeMap<String, String>>,
    /// Tiers by node.
    pub tiers: BTreeMap<NodeId, Vec<TierEntry>>,
    /// Join tokens by the hash of their proof: when each expires, and the key that seals the
    /// CA key for the node that presents it.
    pub join_tokens: BTreeMap<String, JoinTokenEntry>,
    /// The id the next admitted node gets.
    pub next_node_id: NodeId,
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
    PutJob {
        id: String,
        record_json: String,
    },
    /// Reserves `key` in `space` for `holder`; a key held by another holder is a conflict.
    Reserve {
        space: String,
        key: String,
        holder: String,
    },
    /// Releases `key` if `holder` holds it.
    Release {
        space: String,
        key: String,
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
    /// The key is held by someone else.
    Conflict {
        holder: String,
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
}

impl Command {
    /// Checks bounds before a command is proposed, so nothing oversized enters the log.
    pub fn check(&self) -> Result<(), String> {
        let text = |field: &str, value: &str| {
            if value.len() > COMMAND_TEXT_BYTES_MAX {
                Err(format!(
                    "{field}: {} bytes is more than {COMMAND_TEXT_BYTES_MAX}",
                    value.len()
                ))
            } else {
                Ok(())
            }
        };
        let document = |field: &str, value: &str| {
            if value.len() > COMMAND_DOCUMENT_BYTES_MAX {
                Err(format!(
                    "{field}: {} bytes is more than {COMMAND_DOCUMENT_BYTES_MAX}",
                    value.len()
                ))
            } else {
                Ok(())
            }
        };
        match self {
            Self::RegisterPipeline {
                name, spec_json, ..
            } => {
                text("name", name)?;
                document("spec", spec_json)
            }
            Self::SetMounted { name, .. } => text("name", name),
            Self::PutJob { id, record_json } => {
                text("job id", id)?;
                document("job record", record_json)
            }
            Self::Reserve { space, key, holder } | Self::Release { space, key, holder } => {
                text("space", space)?;
                text("key", key)?;
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
            Self::Noop => Ok(()),
        }
    }
}

impl ControlState {
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
            Command::PutJob { id, record_json } => {
                self.jobs.insert(id, record_json);
                Response::Done
            }
            Command::Reserve { space, key, holder } => {
                let held = self.reservations.entry(space).or_default();
                match held.get(&key) {
                    Some(current) if *current != holder => Response::Conflict {
                        holder: current.clone(),
                    },
                    _ => {
                        held.insert(key, holder);
                        Response::Reserved
                    }
                }
            }
            Command::Release { space, key, holder } => {
                if let Some(held) = self.reservations.get_mut(&space) {
                    if held.get(&key) == Some(&holder) {
                        held.remove(&key);
                    }
                    if held.is_empty() {
                        self.reservations.remove(&space);
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
        let reserve = |holder: &str| Command::Reserve {
            space: "request".to_string(),
            key: "r1".to_string(),
            holder: holder.to_string(),
        };
        let release = |holder: &str| Command::Release {
            space: "request".to_string(),
            key: "r1".to_string(),
            holder: holder.to_string(),
        };
        assert_eq!(state.apply(reserve("a")), Response::Reserved);
        // The holder again: idempotent.
        assert_eq!(state.apply(reserve("a")), Response::Reserved);
        assert_eq!(
            state.apply(reserve("b")),
            Response::Conflict {
                holder: "a".to_string()
            }
        );
        // Someone else's release does nothing.
        state.apply(release("b"));
        assert!(matches!(
            state.apply(reserve("b")),
            Response::Conflict { .. }
        ));
        state.apply(release("a"));
        assert!(state.reservations.is_empty());
        assert_eq!(state.apply(reserve("b")), Response::Reserved);
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
