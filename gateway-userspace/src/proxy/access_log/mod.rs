//! The access log: one line per request, written in a step that always runs
//! (also for rejected requests), plus lines for request heads the HTTP/1.1
//! server refused and for connections the lists refused at accept.
//!
//! It is not the daemon's log: lines go through a [`Writer`] of their own
//! (standard output or a file), whatever `RUST_LOG` says.
//!
//! - `entry`: the fields and the two formats (logfmt text, JSON lines)
//! - `writer`: the buffer, its writer thread, reopening for log rotation
//! - `body`: the response body wrapper that counts bytes and writes the
//!   line when the response is done

mod body;
mod entry;
mod writer;

use std::{
    cell::RefCell,
    net::IpAddr,
    sync::{Mutex, PoisonError},
    time::{Instant, SystemTime},
};

use ipnet::IpNet;

pub use self::body::{CountedBody, Finish, LoggedBody};
pub use self::entry::Entry;
use self::writer::Writer;
use crate::config::{AccessLog, AccessLogFormat};

/// At most this many lines a second for connections refused at accept:
/// a flood from blocked sources must not fill the disk. The others are
/// counted (`xgate_l7_denied_connections_total`), and the next line
/// written says how many were left out.
pub const REFUSED_CONNECTION_LINES_PER_SECOND: u32 = 10;

pub struct AccessLogger {
    /// None: `format: off`.
    out: Option<(Format, Writer)>,
    refused: Mutex<RefusedWindow>,
}

#[derive(Clone, Copy)]
enum Format {
    Text,
    Json,
}

/// Lines for refused connections in the current second.
struct RefusedWindow {
    started: Instant,
    written: u32,
    skipped: u64,
}

impl AccessLogger {
    pub fn open(config: &AccessLog) -> Result<Self, String> {
        let format = match config.format {
            AccessLogFormat::Off => None,
            AccessLogFormat::Text => Some(Format::Text),
            AccessLogFormat::Json => Some(Format::Json),
        };
        let out = match format {
            None => None,
            Some(format) => Some((
                format,
                Writer::open(
                    config.path.as_ref(),
                    config.buffer_bytes(),
                    config.flush_interval(),
                )?,
            )),
        };
        Ok(Self {
            out,
            refused: Mutex::new(RefusedWindow {
                started: Instant::now(),
                written: 0,
                skipped: 0,
            }),
        })
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.out.is_some()
    }

    /// A request head the HTTP/1.1 server refused itself (400, 431, 408).
    /// It never became a request: there is no method, path, route or
    /// request id to log, but the client, the listener, the status and why
    /// (`rejection`, and the parser's `detail`) are.
    pub fn write_refused_head(
        &self,
        client_ip: IpAddr,
        listener: &str,
        status: u16,
        rejection: &str,
        detail: &str,
    ) {
        self.write(&Entry {
            ts: Some(SystemTime::now()),
            client_ip: Some(client_ip),
            listener: Some(listener),
            status,
            rejection: Some(rejection),
            detail: Some(detail),
            ..Entry::default()
        });
    }

    /// A connection closed at accept because `rule` of the blocklist holds
    /// its source (status 0: no HTTP was spoken). Sampled, see
    /// [`REFUSED_CONNECTION_LINES_PER_SECOND`].
    pub fn write_refused_connection(&self, client_ip: IpAddr, listener: &str, rule: IpNet) {
        if self.out.is_none() {
            return;
        }
        let skipped = {
            let mut window = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if now.duration_since(window.started).as_secs() >= 1 {
                window.started = now;
                window.written = 0;
            }
            if window.written >= REFUSED_CONNECTION_LINES_PER_SECOND {
                window.skipped += 1;
                return;
            }
            window.written += 1;
            std::mem::take(&mut window.skipped)
        };
        let detail = if skipped == 0 {
            format!("blocklist rule {rule}")
        } else {
            format!(
                "blocklist rule {rule}; {skipped} refused connections before this one not logged"
            )
        };
        self.write(&Entry {
            ts: Some(SystemTime::now()),
            client_ip: Some(client_ip),
            listener: Some(listener),
            status: 0,
            rejection: Some("blocked_at_accept"),
            detail: Some(&detail),
            ..Entry::default()
        });
    }

    /// One line, formatted into this thread's buffer first and appended
    /// whole, so lines from several workers never interleave.
    pub fn write(&self, entry: &Entry<'_>) {
        let Some((format, writer)) = &self.out else {
            return;
        };
        thread_local! {
            static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        BUF.with_borrow_mut(|buf| {
            buf.clear();
            match format {
                Format::Text => entry.write_text(buf),
                Format::Json => entry.write_json(buf),
            }
            writer.append(buf);
            // A rare huge line does not keep its buffer.
            if buf.capacity() > 64 * 1024 {
                *buf = Vec::new();
            }
        });
    }

    /// Writes the lines held in the buffer now; the daemon calls it when
    /// it shuts down.
    pub fn flush(&self) {
        if let Some((_, writer)) = &self.out {
            writer.flush();
        }
    }

    /// Opens the file again by its path (after log rotation moved it).
    pub fn reopen(&self) {
        if let Some((_, writer)) = &self.out {
            writer.reopen();
        }
    }
}

#[cfg(test)]
mod tests;
