//! Where access log lines go: standard output or a file, through a buffer
//! that a thread of its own writes out. Workers only append to memory; the
//! writes (and a slow disk) are the writer thread's. No line is lost: the
//! buffer is written when it fills, every `flush_interval`, on `flush`
//! (shutdown) and when the logger is dropped (a replaced config's).

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::PathBuf,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

/// Where the lines go.
enum Target {
    Stdout,
    File { path: PathBuf, file: File },
}

impl Target {
    fn open(path: Option<&PathBuf>) -> Result<Self, String> {
        Ok(match path {
            None => Self::Stdout,
            Some(path) => Self::File {
                file: open_append(path)?,
                path: path.clone(),
            },
        })
    }

    fn write(&mut self, bytes: &[u8]) {
        // A chunk that cannot be written is dropped: the requests it
        // describes have been served, and the log must not stop the proxy.
        let result = match self {
            Self::File { file, .. } => file.write_all(bytes),
            Self::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes).and_then(|()| out.flush())
            }
        };
        if let Err(error) = result {
            tracing::error!(%error, bytes = bytes.len(), "cannot write access log lines");
        }
    }

    /// Opens the file again by its path: after log rotation moved it away,
    /// new lines go to a new file of that name.
    fn reopen(&mut self) {
        if let Self::File { path, file } = self {
            match open_append(path) {
                Ok(reopened) => *file = reopened,
                Err(error) => {
                    tracing::error!(%error, "access log not reopened; writing on to the old file")
                }
            }
        }
    }
}

fn open_append(path: &PathBuf) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("access_log.path: cannot open {}: {e}", path.display()))
}

/// Lines appended and not yet taken by a write.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    reopen: bool,
    closed: bool,
}

struct Shared {
    /// Locked before `pending` by whoever writes, so chunks go out in
    /// the order they were appended.
    target: Mutex<Target>,
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Bytes held before the writer thread is woken; 0: each line is
    /// written by the worker that made it.
    buffer: usize,
}

/// With this many buffers' worth pending (the writer thread is stuck on a
/// slow disk), a worker writes them itself: memory stays bounded and no
/// line is dropped.
const BACKLOG_BUFFERS: usize = 8;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Writes what is pending, in order, then reopens when asked.
    fn write_pending(&self, spare: &mut Vec<u8>) -> bool {
        let mut target = lock(&self.target);
        let (reopen, closed) = {
            let mut pending = lock(&self.pending);
            std::mem::swap(&mut pending.bytes, spare);
            (std::mem::take(&mut pending.reopen), pending.closed)
        };
        // Lines made before the reopen was asked for belong to the old
        // file (the one being rotated away), as with nginx.
        if !spare.is_empty() {
            target.write(spare);
            spare.clear();
        }
        if reopen {
            target.reopen();
        }
        closed
    }
}

/// The handle the logger holds; dropping it writes what is left and ends
/// the writer thread.
pub struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    /// Opens the target and, with a buffer, starts its writer thread.
    pub fn open(
        path: Option<&PathBuf>,
        buffer: usize,
        flush_interval: Duration,
    ) -> Result<Self, String> {
        let shared = Arc::new(Shared {
            target: Mutex::new(Target::open(path)?),
            pending: Mutex::new(Pending {
                bytes: Vec::with_capacity(buffer),
                ..Pending::default()
            }),
            wake: Condvar::new(),
            buffer,
        });
        if buffer > 0 {
            let thread_shared = shared.clone();
            std::thread::Builder::new()
                .name("xgate-access-log".into())
                .spawn(move || write_loop(&thread_shared, flush_interval))
                .map_err(|e| format!("access_log: cannot start the writer thread: {e}"))?;
        }
        Ok(Self { shared })
    }

    /// Appends one or more whole lines.
    pub fn append(&self, lines: &[u8]) {
        let shared = &*self.shared;
        if shared.buffer == 0 {
            lock(&shared.target).write(lines);
            return;
        }
        let held = {
            let mut pending = lock(&shared.pending);
            pending.bytes.extend_from_slice(lines);
            pending.bytes.len()
        };
        if held >= shared.buffer * BACKLOG_BUFFERS {
            self.flush();
        } else if held >= shared.buffer {
            shared.wake.notify_one();
        }
    }

    /// Writes every line appended so far, now, on the calling thread.
    pub fn flush(&self) {
        self.shared.write_pending(&mut Vec::new());
    }

    /// Has the file opened again by its path before the next write (log
    /// rotation: SIGUSR1, as nginx's USR1).
    pub fn reopen(&self) {
        lock(&self.shared.pending).reopen = true;
        self.shared.wake.notify_one();
        if self.shared.buffer == 0 {
            self.flush();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        lock(&self.shared.pending).closed = true;
        self.flush();
        self.shared.wake.notify_one();
    }
}

/// The writer thread: waits for a full buffer, the flush interval or the
/// end, and writes what is pending.
fn write_loop(shared: &Shared, interval: Duration) {
    let mut spare = Vec::with_capacity(shared.buffer);
    loop {
        {
            let pending = lock(&shared.pending);
            let _ = shared
                .wake
                .wait_timeout_while(pending, interval, |p| {
                    p.bytes.len() < shared.buffer && !p.reopen && !p.closed
                })
                .unwrap_or_else(PoisonError::into_inner);
        }
        if shared.write_pending(&mut spare) {
            return;
        }
        // A burst does not keep its buffer.
        if spare.capacity() > shared.buffer * 2 {
            spare = Vec::with_capacity(shared.buffer);
        }
    }
}
