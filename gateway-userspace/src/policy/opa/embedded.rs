//! Rego evaluated in process by regorus.
//!
//! A regorus `Engine` is `Send` but not `Sync` (evaluation mutates it), so
//! each policy keeps one compiled, prepared prototype and a small pool of
//! clones: an evaluation takes an engine from the pool (or clones the
//! prototype when every one is busy) and gives it back after. Parsing and
//! rule preparation happen once per declaration, not per request or per
//! reload of an unchanged policy.
//!
//! Where it runs: a small policy evaluates in a few microseconds (see
//! docs/policies.md for what was measured), far less than a worker spends
//! on the request itself, so it runs inline on the worker. The CPU time of
//! one evaluation in [`SAMPLE_EVERY`] (per thread) feeds a moving average;
//! a policy whose average passes [`INLINE_BUDGET`] is evaluated on tokio's
//! blocking pool instead, so a heavy policy does not hold up the other
//! connections of the worker. CPU time, not wall time: on a busy machine a
//! worker preempted in the middle of a 5 µs evaluation measured
//! milliseconds, and a cheap policy went back and forth to the blocking
//! pool (each trip a thread hand-off that cost more than the evaluation).
//! `evaluation_timeout` stops a runaway evaluation either way.

use std::{
    cell::Cell,
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Duration,
};

use regorus::{utils::limits::ExecutionTimerConfig, Engine, Value};

use super::reads::{self, Analysis, Reads};
use crate::{config::opa::Opa as OpaConfig, sys::thread_cpu_time};

/// Above this average evaluation time a policy moves off the worker: a
/// worker serves many connections, and 200 µs is about what the proxy
/// spends on a whole small request.
const INLINE_BUDGET: Duration = Duration::from_micros(200);

/// One inline evaluation in this many is timed (two clock_gettime calls,
/// a few hundred nanoseconds, on every request would cost a tenth of what
/// a small policy costs).
const SAMPLE_EVERY: u32 = 16;

thread_local! {
    /// Inline evaluations on this thread since the last one timed.
    static UNTIMED: Cell<u32> = const { Cell::new(0) };
}

/// Engines kept for reuse: as many as evaluations run at once (one per
/// worker inline; more on the blocking pool).
const MAX_IDLE: usize = 64;

pub struct Embedded {
    prototype: Engine,
    /// What the policy reads of the input, and whether it is pure.
    analysis: Analysis,
    idle: Mutex<Vec<Engine>>,
    /// `data.a.b.c`.
    rule: String,
    /// Moving average of evaluation time, in nanoseconds.
    average_ns: AtomicU64,
}

/// The rule a decision path names: `a/b/c` → `data.a.b.c`.
fn rule(decision: &str) -> String {
    format!("data.{}", decision.replace('/', "."))
}

/// Parses every Rego file and data document of `config` and prepares the
/// decision's rule: errors name the file and line. With the engine, what
/// the files read of the input (analysed from the same text the engine
/// compiled).
fn compile(config: &OpaConfig) -> Result<(Engine, Analysis), String> {
    let mut engine = Engine::new();
    // (file, its package: `data.a.b`)
    let mut packages = Vec::new();
    let mut texts = Vec::new();
    for path in &config.policy_files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let package = engine
            .add_policy(path.display().to_string(), text.clone())
            .map_err(rego_error)?;
        packages.push((path.display().to_string(), package));
        texts.push((path.display().to_string(), text));
    }
    let analysis = reads::analyze(texts.iter().map(|(f, t)| (f.as_str(), t.as_str())))?;
    for path in &config.data_files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let data = Value::from_json_str(&text)
            .map_err(|e| format!("{}: not a JSON document: {e}", path.display()))?;
        if !matches!(data, Value::Object(_)) {
            return Err(format!("{}: not a JSON object", path.display()));
        }
        engine
            .add_data(data)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let rule = rule(&config.decision);
    let declared = packages.iter().any(|(file, package)| {
        rule.strip_prefix(package.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|name| {
                engine
                    .has_declared_rule_rooted_at(file, name)
                    .unwrap_or(false)
            })
    });
    if !declared {
        return Err(format!(
            "no policy file declares the rule {rule} (decision '{}')",
            config.decision
        ));
    }
    engine.set_execution_timer_config(ExecutionTimerConfig {
        limit: config.evaluation_timeout,
        check_interval: NonZeroU32::new(64).expect("not zero"),
    });
    // The first evaluation prepares the rules (semantic checks included);
    // every clone of this engine starts prepared. With no input, rules on
    // the input are undefined, not errors.
    engine.eval_rule(rule).map_err(rego_error)?;
    Ok((engine, analysis))
}

/// regorus's error (`\n--> file:5:1\n  |\n5 | }\n  | ^\nerror: what`) as
/// one line: `file:5:1: what`.
fn rego_error(error: anyhow::Error) -> String {
    let text = error.to_string();
    let location = text
        .lines()
        .find_map(|line| line.trim_start().strip_prefix("--> "));
    let message = text
        .lines()
        .find_map(|line| line.trim_start().strip_prefix("error: "));
    match (location, message) {
        (Some(location), Some(message)) => format!("{}: {}", location.trim(), message.trim()),
        _ => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// What `xgate validate` runs: the policy compiles.
pub fn compile_check(config: &OpaConfig) -> Result<(), String> {
    compile(config).map(drop)
}

impl Embedded {
    pub fn new(config: &OpaConfig) -> Result<Self, String> {
        let (prototype, analysis) = compile(config)?;
        Ok(Self {
            prototype,
            analysis,
            idle: Mutex::new(Vec::new()),
            rule: rule(&config.decision),
            average_ns: AtomicU64::new(0),
        })
    }

    /// The part of the input document the policy can read.
    pub fn reads(&self) -> &Reads {
        &self.analysis.reads
    }

    /// Whether decisions depend on the input and `data` only (see `memo`).
    pub fn pure(&self) -> bool {
        self.analysis.pure
    }

    /// Whether evaluations are cheap enough to run on the worker.
    pub fn runs_inline(&self) -> bool {
        self.average_ns.load(Ordering::Relaxed) <= INLINE_BUDGET.as_nanos() as u64
    }

    /// An engine of the pool, or a new clone of the prototype.
    fn take(&self) -> Engine {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_else(|| self.prototype.clone())
    }

    fn give_back(&self, engine: Engine, cpu: Option<Duration>) {
        if let Some(cpu) = cpu {
            self.note(cpu);
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(engine);
        }
    }

    /// The decision's value for `input` (`None`: undefined), evaluated
    /// here.
    pub fn evaluate(&self, input: Value) -> Result<Option<serde_json::Value>, String> {
        let mut engine = self.take();
        let timed = UNTIMED.with(|untimed| {
            let n = untimed.get();
            untimed.set(if n + 1 >= SAMPLE_EVERY { 0 } else { n + 1 });
            n == 0
        });
        let started = timed.then(thread_cpu_time);
        let result = run(&mut engine, &self.rule, input);
        self.give_back(engine, started.map(|s| thread_cpu_time().saturating_sub(s)));
        result
    }

    /// [`Embedded::evaluate`] on tokio's blocking pool.
    pub async fn evaluate_blocking(
        &self,
        input: Value,
    ) -> Result<Option<serde_json::Value>, String> {
        let mut engine = self.take();
        let rule = self.rule.clone();
        let (engine, result, cpu) = tokio::task::spawn_blocking(move || {
            let started = thread_cpu_time();
            let result = run(&mut engine, &rule, input);
            (engine, result, thread_cpu_time().saturating_sub(started))
        })
        .await
        .map_err(|e| format!("evaluation task: {e}"))?;
        self.give_back(engine, Some(cpu));
        result
    }

    /// Folds one evaluation's CPU time into the average (weight 1/8: a few
    /// slow evaluations move a policy off the worker, one does not).
    fn note(&self, elapsed: Duration) {
        let sample = elapsed.as_nanos().min(u64::MAX as u128) as u64;
        let _ = self
            .average_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |average| {
                Some(if average == 0 {
                    sample
                } else {
                    average - average / 8 + sample / 8
                })
            });
    }
}

fn run(engine: &mut Engine, rule: &str, input: Value) -> Result<Option<serde_json::Value>, String> {
    engine.set_input(input);
    match engine.eval_rule(rule.to_string()) {
        Ok(Value::Undefined) => Ok(None),
        // The usual result, without a trip through serde.
        Ok(Value::Bool(allow)) => Ok(Some(serde_json::Value::Bool(allow))),
        Ok(value) => serde_json::to_value(&value)
            .map(Some)
            .map_err(|e| format!("result: {e}")),
        Err(e) => Err(format!("evaluation: {e}")),
    }
}

/// The average evaluation time so far (tests and measurements).
#[cfg(test)]
pub fn average(engine: &Embedded) -> Duration {
    Duration::from_nanos(engine.average_ns.load(Ordering::Relaxed))
}
