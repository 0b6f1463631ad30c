//! The health of an upstream's targets, kept by address so that a target
//! that stays when the set changes keeps its state: what passive outlier
//! detection (`passive`) and active checks (`active`) found, and what an
//! operator forced. The balancers only see which targets may take the next
//! attempt (`Health::choose`). See docs/upstreams.md.
//!
//! - `passive`: failures on real traffic eject a target (Envoy's outlier
//!   detection)
//! - `active`: background probes and their thresholds
//! - `report`: the state as the admin API, the CLI and /metrics show it

pub mod active;
mod passive;
mod report;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, PoisonError, RwLock,
    },
};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use self::{
    active::Active,
    passive::{Change, Passive},
};
pub use self::{
    passive::Failure,
    report::{render, LimitStatus, TargetStatus, UpstreamStatus},
};
use super::balancer::Eligible;
use crate::config::{ActiveCheck, HealthChecks, PassiveHealth};

/// An operator's override, set with `xgate upstreams set-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forced {
    /// Takes traffic whatever the checks say.
    Up,
    /// Takes no traffic, not even when every other target is down.
    Down,
}

/// Whether a target may take the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Up,
    /// Ejected or failing its checks: used only when no target is up.
    Down,
    /// Forced down: never used.
    ForcedDown,
}

/// Which targets the balancer may pick from (see [`Health::choose`]).
#[derive(Debug)]
pub enum Choice {
    /// All that the retry rules allow: every target is up.
    Any,
    /// Only these (by index).
    Only(Vec<bool>),
    /// Every target is forced down.
    Nothing,
}

/// The health of one upstream's targets.
pub struct Health {
    pub upstream: String,
    /// `None` when passive health is off.
    passive: Option<PassiveHealth>,
    active: Option<ActiveCheck>,
    /// The current targets, in the order of the upstream's target set.
    targets: RwLock<Vec<Arc<TargetHealth>>>,
    /// Targets ejected now, for `max_ejection_percent`.
    ejected: Arc<AtomicUsize>,
}

/// One target's health.
pub struct TargetHealth {
    pub addr: SocketAddr,
    /// False while nothing holds the target back (the request path then
    /// takes no lock).
    impaired: AtomicBool,
    /// Passive failures counted in a row: a success has a count to reset.
    failing: AtomicBool,
    state: Mutex<State>,
    ejections: AtomicU64,
    checks_failed: AtomicU64,
    /// The upstream's count of ejected targets, which this one is in while
    /// `State::counted` is set.
    ejected: Arc<AtomicUsize>,
}

#[derive(Default)]
struct State {
    passive: Passive,
    active: Active,
    forced: Option<Forced>,
    /// In the upstream's count of ejected targets.
    counted: bool,
}

impl Health {
    pub fn new(upstream: &str, config: &HealthChecks) -> Self {
        Self {
            upstream: upstream.to_string(),
            passive: config.passive.enabled.then(|| config.passive.clone()),
            active: config.active.clone(),
            targets: RwLock::default(),
            ejected: Arc::default(),
        }
    }

    /// Makes `addrs` the targets, in that order: a target that was there
    /// keeps its state, a new one starts healthy, the others are dropped.
    /// Returns their handles, index for index.
    pub fn sync(&self, addrs: &[SocketAddr]) -> Vec<Arc<TargetHealth>> {
        let mut targets = self.targets.write().unwrap_or_else(PoisonError::into_inner);
        let next: Vec<Arc<TargetHealth>> = addrs
            .iter()
            .map(|&addr| match targets.iter().find(|t| t.addr == addr) {
                Some(kept) => kept.clone(),
                None => Arc::new(TargetHealth {
                    addr,
                    impaired: AtomicBool::new(false),
                    failing: AtomicBool::new(false),
                    state: Mutex::default(),
                    ejections: AtomicU64::new(0),
                    checks_failed: AtomicU64::new(0),
                    ejected: self.ejected.clone(),
                }),
            })
            .collect();
        *targets = next.clone();
        next
    }

    /// The current targets.
    pub fn targets(&self) -> Vec<Arc<TargetHealth>> {
        self.targets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Which of `targets` (the set a request uses, index for index) the
    /// next attempt may go to, given what the retry rules allow
    /// (`eligible`): the eligible targets that are up; else any target
    /// that is up (a retry goes back to a healthy target before an ejected
    /// one); else, when none is up, every target not forced down (Envoy's
    /// panic mode: a guess beats a certain 503).
    pub fn choose(
        &self,
        targets: &[Arc<TargetHealth>],
        eligible: &Eligible,
        now: Instant,
    ) -> Choice {
        if !targets.iter().any(|t| t.impaired.load(Ordering::Relaxed)) {
            return Choice::Any;
        }
        let states: Vec<Availability> = targets
            .iter()
            .map(|t| t.availability(now, self.passive.as_ref()))
            .collect();
        let up = |i: usize| states[i] == Availability::Up;
        let mask: Vec<bool> = (0..targets.len())
            .map(|i| up(i) && eligible.allows(i))
            .collect();
        if mask.contains(&true) {
            return Choice::Only(mask);
        }
        let mask: Vec<bool> = (0..targets.len()).map(up).collect();
        if mask.contains(&true) {
            return Choice::Only(mask);
        }
        let mask: Vec<bool> = states
            .iter()
            .enumerate()
            .map(|(i, s)| *s == Availability::Down && eligible.allows(i))
            .collect();
        if mask.contains(&true) {
            return Choice::Only(mask);
        }
        let mask: Vec<bool> = states.iter().map(|s| *s == Availability::Down).collect();
        if mask.contains(&true) {
            Choice::Only(mask)
        } else {
            Choice::Nothing
        }
    }

    /// An attempt was sent to `target`: while it is probing, this is the
    /// trial.
    pub fn sent(&self, target: &TargetHealth, now: Instant) {
        if self.passive.is_some() && target.impaired.load(Ordering::Relaxed) {
            target.lock().passive.sent(now);
        }
    }

    /// The outcome of an attempt at `target`.
    pub fn report(&self, target: &TargetHealth, outcome: Result<(), Failure>, now: Instant) {
        let Some(config) = &self.passive else {
            return;
        };
        if outcome.is_ok()
            && !target.failing.load(Ordering::Relaxed)
            && !target.impaired.load(Ordering::Relaxed)
        {
            return;
        }
        let allowed = passive::max_ejected(self.target_count(), config);
        let mut guard = target.lock();
        let state = &mut *guard;
        let change = match outcome {
            Ok(()) => state.passive.succeeded(now),
            Err(failure) => state.passive.failed(failure, now, config, || {
                reserve(&self.ejected, allowed, &mut state.counted)
            }),
        };
        self.apply(target, state, change, now);
    }

    /// The result of an active check of `target`.
    pub fn check_result(
        &self,
        target: &TargetHealth,
        result: Result<(), String>,
        config: &ActiveCheck,
    ) {
        let now = Instant::now();
        let passed = result.is_ok();
        if !passed {
            target.checks_failed.fetch_add(1, Ordering::Relaxed);
        }
        let mut state = target.lock();
        match state.active.record(result, config) {
            Some(true) => tracing::info!(
                upstream = %self.upstream,
                upstream.target = %target.addr,
                "target passes its health checks again; back in service"
            ),
            Some(false) => tracing::warn!(
                upstream = %self.upstream,
                upstream.target = %target.addr,
                failures = state.active.failures(),
                error = state.active.last_error.as_deref().unwrap_or(""),
                "target fails its health checks; out of service"
            ),
            None => {}
        }
        let change = if passed && self.passive.is_some() {
            state.passive.check_passed(now)
        } else {
            None
        };
        self.apply(target, &mut state, change, now);
    }

    /// Sets or clears (`None`) an operator's override of `addr`.
    pub fn force(&self, addr: SocketAddr, forced: Option<Forced>) -> Result<(), String> {
        let targets = self.targets();
        let Some(target) = targets.iter().find(|t| t.addr == addr) else {
            return Err(format!(
                "upstream {} has no target {addr} (its targets: {})",
                self.upstream,
                targets
                    .iter()
                    .map(|t| t.addr.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let mut state = target.lock();
        state.forced = forced;
        tracing::warn!(
            upstream = %self.upstream,
            upstream.target = %addr,
            forced = ?forced,
            "target state set by the operator"
        );
        self.apply(target, &mut state, None, Instant::now());
        Ok(())
    }

    /// Logs and counts `change`, and updates the flags the request path
    /// reads.
    fn apply(
        &self,
        target: &TargetHealth,
        state: &mut State,
        change: Option<Change>,
        now: Instant,
    ) {
        match change {
            Some(Change::Ejected { until, after, last }) => {
                target.ejections.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    upstream = %self.upstream,
                    upstream.target = %target.addr,
                    ejected_for_ms = (until - now).as_millis() as u64,
                    "target ejected after {after} consecutive {}",
                    last.describe()
                );
            }
            Some(Change::Returned) => tracing::info!(
                upstream = %self.upstream,
                upstream.target = %target.addr,
                "ejected target back in service"
            ),
            None => {}
        }
        target.settle(state);
    }

    fn target_count(&self) -> usize {
        self.targets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Takes one of `allowed` ejection slots unless the target holds one
/// already (a failed trial) or none is left.
fn reserve(ejected: &AtomicUsize, allowed: usize, counted: &mut bool) -> bool {
    if *counted {
        return true;
    }
    let taken = ejected
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < allowed).then_some(n + 1)
        })
        .is_ok();
    *counted = taken;
    taken
}

impl TargetHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn availability(&self, now: Instant, passive: Option<&PassiveHealth>) -> Availability {
        if !self.impaired.load(Ordering::Relaxed) {
            return Availability::Up;
        }
        let mut state = self.lock();
        let available = match state.forced {
            Some(Forced::Up) => return Availability::Up,
            Some(Forced::Down) => return Availability::ForcedDown,
            None => {
                state.active.healthy
                    && passive.is_none_or(|config| state.passive.admits(now, config))
            }
        };
        self.settle(&mut state);
        if available {
            Availability::Up
        } else {
            Availability::Down
        }
    }

    /// Brings the flags in line with `state`: the ejection count slot is
    /// given back once the target is no longer ejected.
    fn settle(&self, state: &mut State) {
        let ejected = matches!(state.passive.state(), passive::State::Ejected { .. });
        if state.counted && !ejected {
            state.counted = false;
            self.ejected.fetch_sub(1, Ordering::AcqRel);
        }
        let impaired = state.forced.is_some()
            || !state.active.healthy
            || !matches!(state.passive.state(), passive::State::Serving);
        self.impaired.store(impaired, Ordering::Relaxed);
        self.failing
            .store(state.passive.consecutive() > 0, Ordering::Relaxed);
    }
}

impl Drop for TargetHealth {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if state.counted {
            self.ejected.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Aborts an upstream's active checks when the upstream is dropped (removed
/// or replaced by a reload).
pub struct Checker(tokio::task::AbortHandle);

impl Checker {
    /// Starts the checks of `health`'s targets when there is a check to run
    /// and a runtime to run it on (`xgate validate` has none).
    pub fn start(health: &Arc<Health>, prober: Option<active::Prober>) -> Option<Self> {
        let prober = prober?;
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let task = runtime.spawn(active::run(health.clone(), prober));
        Some(Self(task.abort_handle()))
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests;
