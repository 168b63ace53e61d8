//! The node supervisor: the root actor. It starts one tier actor per tier, restarts a tier actor
//! that fails (within a restart budget), and runs the shutdown protocol: drain every tier's
//! mailbox, let each flush its index, then stop.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use letl_storage::TierName;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::directory::TierDirectory;
use crate::tier::{TierActor, TierArgs, TierSpec};

/// How often a tier may fail before the supervisor leaves it down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    pub restarts_max: usize,
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            restarts_max: 5,
            window: Duration::from_secs(60),
        }
    }
}

/// Longest wait for one tier actor to drain its mailbox at shutdown.
pub const TIER_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct SupervisorArgs {
    pub tiers: Vec<TierSpec>,
    pub directory: TierDirectory,
    pub restart_policy: RestartPolicy,
}

pub enum SupervisorMsg {
    /// Drain and stop every child; answered when they have stopped.
    Shutdown(RpcReplyPort<()>),
}

impl std::fmt::Debug for SupervisorMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Shutdown(_) => f.write_str("Shutdown"),
        }
    }
}

#[derive(Debug, Default)]
pub struct NodeSupervisor;

#[derive(Debug)]
struct TierChild {
    spec: TierSpec,
    /// Times of recent restarts, oldest first, at most `restarts_max`.
    restarts: VecDeque<Instant>,
}

#[derive(Debug)]
pub struct SupervisorState {
    directory: TierDirectory,
    policy: RestartPolicy,
    tiers: BTreeMap<TierName, TierChild>,
    by_actor: BTreeMap<ActorId, TierName>,
    shutting_down: bool,
}

impl Actor for NodeSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            directory: args.directory,
            policy: args.restart_policy,
            tiers: BTreeMap::new(),
            by_actor: BTreeMap::new(),
            shutting_down: false,
        };
        for spec in args.tiers {
            let name = spec.name();
            assert!(
                !state.tiers.contains_key(&name),
                "tier {name} configured twice"
            );
            state.tiers.insert(
                name.clone(),
                TierChild {
                    spec,
                    restarts: VecDeque::new(),
                },
            );
            state.spawn_tier(&myself, &name, true).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Shutdown(reply) => {
                state.shutting_down = true;
                for (name, actor) in state.directory.actors() {
                    if let Err(e) = actor.drain_and_wait(Some(TIER_DRAIN_TIMEOUT)).await {
                        warn!(tier = %name, error = %e, "tier did not drain in time; stopping it");
                        actor.stop(Some("shutdown".to_string()));
                    }
                }
                info!("all tiers stopped");
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            _ => return Ok(()),
        };
        let Some(name) = state.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        if state.shutting_down {
            return Ok(());
        }
        match &failure {
            Some(err) => error!(tier = %name, error = %err, "tier actor failed; restarting it"),
            None => warn!(tier = %name, "tier actor stopped unexpectedly; restarting it"),
        }
        if !state.may_restart(&name) {
            let reason = format!(
                "it failed more than {} times in {:?}; restart the node to retry",
                state.policy.restarts_max, state.policy.window
            );
            error!(tier = %name, "tier actor left down: {reason}");
            state.set_down(name, reason);
            return Ok(());
        }
        if let Err(e) = state.spawn_tier(&myself, &name, false).await {
            error!(tier = %name, error = %e, "restarting the tier actor failed; tier left down");
            state.set_down(name, format!("restart failed: {e}"));
        }
        Ok(())
    }
}

impl SupervisorState {
    async fn spawn_tier(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        name: &TierName,
        reconcile: bool,
    ) -> Result<(), ActorProcessingErr> {
        let child = self
            .tiers
            .get(name)
            .ok_or_else(|| format!("no tier named {name}"))?;
        let args = TierArgs {
            spec: child.spec.clone(),
            reconcile,
        };
        // Unnamed: ractor's name registry is process-global, and a simulation runs many nodes.
        let (actor, _) = Actor::spawn_linked(None, TierActor, args, myself.get_cell())
            .await
            .map_err(|e| format!("starting tier `{name}`: {e}"))?;
        self.by_actor.insert(actor.get_id(), name.clone());
        self.directory.set_up(name.clone(), actor);
        Ok(())
    }

    fn set_down(&self, name: TierName, reason: String) {
        if let Some(child) = self.tiers.get(&name) {
            let description = child.spec.backend.describe();
            self.directory.set_down(name, reason, description);
        }
    }

    /// Records a restart if the budget allows one.
    fn may_restart(&mut self, name: &TierName) -> bool {
        let policy = self.policy;
        let Some(child) = self.tiers.get_mut(name) else {
            return false;
        };
        let now = Instant::now();
        while child
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            child.restarts.pop_front();
        }
        if child.restarts.len() >= policy.restarts_max {
            return false;
        }
        child.restarts.push_back(now);
        true
    }
}

/// A running supervisor, as the node holds it: start it, and later shut it down.
#[derive(Debug)]
pub struct SupervisorHandle {
    actor: ActorRef<SupervisorMsg>,
    done: tokio::task::JoinHandle<()>,
}

impl SupervisorHandle {
    /// Starts the supervisor and, through it, every tier actor (reconciling each tier's index).
    pub async fn start(args: SupervisorArgs) -> Result<Self, String> {
        let (actor, done) = Actor::spawn(None, NodeSupervisor, args)
            .await
            .map_err(|e| format!("starting the node supervisor: {e}"))?;
        Ok(Self { actor, done })
    }

    /// Drains and stops every tier actor, then the supervisor itself.
    pub async fn shutdown(self) -> Result<(), String> {
        self.actor
            .call(SupervisorMsg::Shutdown, None)
            .await
            .map_err(|e| format!("stopping the tiers: {e}"))?;
        self.actor.stop(None);
        self.done.await.map_err(|e| format!("node supervisor: {e}"))
    }
}
