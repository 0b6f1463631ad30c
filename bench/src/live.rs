//! A live-frames flood ([`xgate_bench::livegen`]) running in the
//! background for the `flood` scenario: a thread that enters the attacker's
//! namespace, pins itself to one CPU at a lower priority, loads one program
//! per flow and sends until its count, its time limit, or [`LiveFlood::end`].
//! The counterpart of [`crate::lab::Flood`] (trafgen); dropping it stops
//! and joins the thread, also on error or panic.
#![allow(unsafe_code)]

use std::{
    fs::File,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use xgate_bench::livegen::{self, Flow, Generator, Plan, Sent};

use crate::{
    lab::FloodDone,
    sys::{self, NetNs},
};

/// A live-frames flood in progress.
pub struct LiveFlood {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Sent>>>,
}

impl LiveFlood {
    /// Starts sending `count` frames of `flows` (in turns) out of `iface` in
    /// `ns`, at `rate_pps` or full speed, on `cpu` at niceness `nice`, for
    /// at most `max_time`. Fails if the programs do not load.
    pub fn start(
        ns: &NetNs,
        iface: &str,
        flows: Vec<Flow>,
        plan: Plan,
        cpu: usize,
        nice: i32,
    ) -> Result<Self> {
        sys::check_interrupted()?;
        let file =
            File::open(ns.path()).with_context(|| format!("open {}", ns.path().display()))?;
        let iface = iface.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || -> Result<Sent> {
            let setup = (|| -> Result<Vec<Generator>> {
                // SAFETY: setns on a valid namespace fd changes only this
                // thread; setpriority with the thread's own id.
                unsafe {
                    if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        bail!("setns: {}", std::io::Error::last_os_error());
                    }
                    libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice);
                }
                crate::lab::pin_thread(cpu);
                let index = livegen::ifindex(&iface)?;
                flows
                    .into_iter()
                    .map(|f| Generator::load(f, index))
                    .collect()
            })();
            let generators = match setup {
                Ok(g) => {
                    let _ = ready_tx.send(Ok(()));
                    g
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            livegen::send(&generators, plan, || {
                flag.load(Ordering::Relaxed) || sys::check_interrupted().is_err()
            })
        });
        let mut flood = Self {
            stop,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(flood),
            Ok(Err(e)) => Err(e.context("starting the live-frames flood")),
            Err(_) => {
                let _ = flood.end();
                bail!("the live-frames flood did not start within 10 s")
            }
        }
    }

    /// Waits for the flood to send its count (or reach its time limit).
    pub fn wait(&mut self) -> Result<FloodDone> {
        self.join()
    }

    /// Ends the flood now if it still runs.
    pub fn end(&mut self) -> Result<FloodDone> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    fn join(&mut self) -> Result<FloodDone> {
        let thread = self
            .thread
            .take()
            .context("the live-frames flood was already joined")?;
        let sent = thread
            .join()
            .map_err(|_| anyhow::anyhow!("the live-frames flood's thread panicked"))??;
        Ok(FloodDone {
            sent: sent.frames,
            seconds: sent.seconds,
            ended: sent.cut_short,
        })
    }
}

impl Drop for LiveFlood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
