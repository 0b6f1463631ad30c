//! The proxy's worker threads: one single-threaded tokio runtime each (by
//! default one per core). Listeners accept on the control runtime and hand
//! every connection to the next worker in turn; from then on the connection,
//! its requests and the upstream connections they use (each upstream keeps a
//! pool per worker) live on that one thread. Waking a task never crosses
//! threads: under a work-stealing runtime each request hopped between the
//! server connection task and the pooled client connection task, often on
//! different threads, and about a quarter of the proxy's CPU went to the
//! kernel's wake-up and context-switch paths.
//!
//! With one worker per CPU the process may run on (the default), each
//! worker is bound to its own CPU ([`CpuAffinity::Auto`]): left to the
//! scheduler, a worker that sleeps and wakes thousands of times a second
//! is often woken onto the CPU its peer, the load generator or the
//! upstream is running on, and waits there while the other CPU has room
//! (docs/proxy.md#workers-bound-to-cpus measures what that cost).

use std::{
    cell::Cell,
    future::Future,
    io,
    sync::atomic::{AtomicUsize, Ordering},
    thread::JoinHandle,
};

use tokio::sync::mpsc;

thread_local! {
    /// The index of the worker this thread is; 0 on any other thread.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// How many workers the daemon runs (1 until it starts them): the number
/// of per-worker pools an upstream keeps.
static COUNT: AtomicUsize = AtomicUsize::new(1);

/// The worker running the calling code (0 outside the workers).
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// How many workers there are.
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// Where the workers run (`xgate run --cpu-affinity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CpuAffinity {
    /// With one worker per CPU the process may run on (the default count),
    /// bind each worker to its own CPU; with more or fewer workers, leave
    /// them to the kernel.
    #[default]
    Auto,
    /// Leave every worker to the kernel's scheduler.
    Off,
}

/// The CPU each of `workers` workers is bound to, given the CPUs the
/// process may run on; `Err` says why they are not bound.
fn placement(
    workers: usize,
    affinity: CpuAffinity,
    allowed: &[usize],
) -> Result<Vec<usize>, String> {
    match affinity {
        CpuAffinity::Off => Err("--cpu-affinity off".into()),
        CpuAffinity::Auto if workers == allowed.len() => Ok(allowed.to_vec()),
        CpuAffinity::Auto => Err(format!(
            "{workers} worker{} for {} CPU{} (bound only with one worker per CPU)",
            if workers == 1 { "" } else { "s" },
            allowed.len(),
            if allowed.len() == 1 { "" } else { "s" },
        )),
    }
}

/// Work for a worker: runs inside its runtime (so it may `tokio::spawn`).
type Job = Box<dyn FnOnce() + Send>;

/// The running workers; [`Workers::shutdown`] ends them.
pub struct Workers {
    senders: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` worker threads (at least one), placed as `affinity`
    /// says.
    pub fn start(n: usize, affinity: CpuAffinity) -> io::Result<Self> {
        let n = n.max(1);
        COUNT.store(n, Ordering::Relaxed);
        let cpus = match crate::sys::allowed_cpus() {
            Ok(allowed) => placement(n, affinity, &allowed),
            Err(error) => Err(format!("cannot read the process's CPU affinity: {error}")),
        };
        match &cpus {
            Ok(cpus) => tracing::info!(?cpus, "proxy workers bound one per CPU"),
            Err(why) => tracing::info!("proxy workers not bound to CPUs: {why}"),
        }
        let cpus = cpus.ok();
        let mut senders = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for index in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let cpu = cpus.as_ref().map(|cpus| cpus[index]);
            let thread = std::thread::Builder::new()
                .name(format!("xgate-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(index));
                    if let Some(cpu) = cpu {
                        // The CPU was in the process's mask a moment ago; a
                        // cpuset changed since leaves this worker unbound.
                        if let Err(error) = crate::sys::bind_thread_to(cpu) {
                            tracing::warn!(
                                worker = index,
                                cpu,
                                "proxy worker not bound to its CPU: {error}"
                            );
                        }
                    }
                    runtime.block_on(async move {
                        while let Some(job) = rx.recv().await {
                            job();
                        }
                    });
                })?;
            senders.push(tx);
            threads.push(thread);
        }
        Ok(Self {
            senders,
            next: AtomicUsize::new(0),
            threads,
        })
    }

    /// Runs the future `make` returns as a task on the next worker (round
    /// robin). `make` runs on that worker, so it can register I/O there.
    pub fn spawn<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        let job: Job = Box::new(move || {
            tokio::spawn(make());
        });
        // A send fails only after shutdown, when no listener accepts.
        let _ = self.senders[index].send(job);
    }

    /// Stops the workers: each finishes the job it is running, then its
    /// runtime and every task left on it (drained by then) are dropped.
    pub async fn shutdown(self) {
        let Self {
            senders, threads, ..
        } = self;
        drop(senders);
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_per_allowed_cpu_is_bound_in_order() {
        assert_eq!(placement(2, CpuAffinity::Auto, &[0, 1]), Ok(vec![0, 1]));
        // The process's mask, not the machine: systemd's CPUAffinity=2,5.
        assert_eq!(placement(2, CpuAffinity::Auto, &[2, 5]), Ok(vec![2, 5]));
        assert_eq!(placement(1, CpuAffinity::Auto, &[3]), Ok(vec![3]));
    }

    #[test]
    fn other_counts_and_off_leave_the_workers_to_the_kernel() {
        let more = placement(3, CpuAffinity::Auto, &[0, 1]).unwrap_err();
        assert!(more.contains("3 workers for 2 CPUs"), "{more}");
        let fewer = placement(1, CpuAffinity::Auto, &[0, 1]).unwrap_err();
        assert!(fewer.contains("1 worker for 2 CPUs"), "{fewer}");
        assert!(placement(2, CpuAffinity::Off, &[0, 1]).is_err());
    }
}
