//! The proxy's worker threads: one single-threaded tokio runtime each (by
//! default one per core). Listeners accept on the control runtime and hand
//! every connection to the next worker in turn; from then on the connection,
//! its requests and the upstream connections they use (each upstream keeps a
//! pool per worker) live on that one thread. Waking a task never crosses
//! threads: under a work-stealing runtime each request hopped between the
//! server connection task and the pooled client connection task, often on
//! different threads, and about a quarter of the proxy's CPU went to the
//! kernel's wake-up and context-switch paths.

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

/// Work for a worker: runs inside its runtime (so it may `tokio::spawn`).
type Job = Box<dyn FnOnce() + Send>;

/// The running workers; [`Workers::shutdown`] ends them.
pub struct Workers {
    senders: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` worker threads (at least one).
    pub fn start(n: usize) -> io::Result<Self> {
        let n = n.max(1);
        COUNT.store(n, Ordering::Relaxed);
        let mut senders = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for index in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let thread = std::thread::Builder::new()
                .name(format!("xgate-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(index));
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
