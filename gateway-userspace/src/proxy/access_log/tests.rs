use std::{
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    thread,
    time::{Duration, Instant, SystemTime},
};

use super::*;

/// A directory of its own under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "xgate-access-log-{name}-{}-{:?}",
            std::process::id(),
            SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn log(&self) -> PathBuf {
        self.0.join("access.log")
    }

    fn config(&self, format: AccessLogFormat, buffer: usize, flush: Duration) -> AccessLog {
        AccessLog {
            format,
            path: Some(self.log()),
            buffer_bytes: Some(buffer),
            flush_interval: Some(flush),
        }
    }
}

/// The whole lines of `path`, each parsed as JSON.
fn json_lines(path: &PathBuf) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(text.is_empty() || text.ends_with('\n'), "a line cut short");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a whole JSON line"))
        .collect()
}

fn refused(logger: &AccessLogger, detail: &str) {
    logger.write_refused_head(
        IpAddr::from([192, 0, 2, 1]),
        "public",
        400,
        "malformed_head",
        detail,
    );
}

/// A flush interval far beyond any test: only size, flush and drop write.
const NEVER: Duration = Duration::from_secs(60);

#[test]
fn lines_from_several_workers_stay_whole_buffered_or_not() {
    for buffer in [0, 4096] {
        let dir = TempDir::new("workers");
        let logger = Arc::new(
            AccessLogger::open(&dir.config(AccessLogFormat::Json, buffer, NEVER)).unwrap(),
        );
        // Long details make lines of several KiB, written while other
        // threads write theirs.
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let logger = logger.clone();
                thread::spawn(move || {
                    for i in 0..250 {
                        let detail = format!("{t}-{i}-{}", "x".repeat(i * 20));
                        logger.write_refused_head(
                            IpAddr::from([192, 0, 2, t]),
                            "public",
                            400,
                            "malformed_head",
                            &detail,
                        );
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(logger);
        let mut seen = std::collections::HashSet::new();
        for line in json_lines(&dir.log()) {
            assert_eq!(line["status"], 400);
            assert_eq!(line["listener"], "public");
            assert_eq!(line["rejection"], "malformed_head");
            assert!(line["request_id"].is_null() && line["route"].is_null());
            let detail = line["detail"].as_str().unwrap();
            let ip = line["client_ip"].as_str().unwrap();
            let t = detail.split('-').next().unwrap();
            assert_eq!(ip, format!("192.0.2.{t}"), "{detail:.20}");
            seen.insert(detail.to_string());
        }
        assert_eq!(seen.len(), 1000, "every line once (buffer {buffer})");
    }
}

#[test]
fn unbuffered_lines_are_written_at_once() {
    let dir = TempDir::new("unbuffered");
    let logger = AccessLogger::open(&dir.config(AccessLogFormat::Json, 0, NEVER)).unwrap();
    refused(&logger, "first");
    assert_eq!(json_lines(&dir.log()).len(), 1);
}

/// Buffered lines wait for the writer thread (a full buffer wakes it), an
/// explicit flush (shutdown) or the logger's drop (a replaced config's).
#[test]
fn buffered_lines_wait_for_a_flush_a_full_buffer_or_the_end() {
    let dir = TempDir::new("buffered");
    let logger = AccessLogger::open(&dir.config(AccessLogFormat::Json, 4096, NEVER)).unwrap();
    refused(&logger, "one");
    refused(&logger, "two");
    assert!(json_lines(&dir.log()).is_empty(), "held in the buffer");
    logger.flush();
    assert_eq!(json_lines(&dir.log()).len(), 2);

    // Five lines of about 1 KiB overfill the 4 KiB buffer: the writer
    // thread is woken and writes the full buffer (at least the three lines
    // that filled it; the lines after them too if it runs late), with no
    // flush asked for.
    for i in 0..5 {
        refused(&logger, &format!("{i}-{}", "x".repeat(1000)));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while json_lines(&dir.log()).len() < 5 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    let written = json_lines(&dir.log()).len();
    assert!(
        (5..=7).contains(&written),
        "a full buffer is written: {written} lines"
    );

    refused(&logger, "last");
    drop(logger);
    let written = json_lines(&dir.log());
    assert_eq!(written.len(), 8, "dropping the logger wrote the rest");
    assert_eq!(written[7]["detail"], "last");
}

#[test]
fn buffered_lines_are_written_within_the_flush_interval() {
    let dir = TempDir::new("interval");
    let logger =
        AccessLogger::open(&dir.config(AccessLogFormat::Json, 1 << 20, Duration::from_millis(10)))
            .unwrap();
    refused(&logger, "waits for the writer thread");
    // No size or drop will write it: only the writer thread can. It runs
    // every 10 ms; give it up to 10 s on a busy machine.
    let deadline = Instant::now() + Duration::from_secs(10);
    while json_lines(&dir.log()).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    let written = json_lines(&dir.log());
    assert_eq!(written.len(), 1, "the writer thread wrote the line");
    assert_eq!(written[0]["detail"], "waits for the writer thread");
}

/// Log rotation: the file is moved away, the logger reopens its path, and
/// later lines go to a new file there; none is lost.
#[test]
fn reopen_starts_a_new_file_at_the_path() {
    for buffer in [0, 4096] {
        let dir = TempDir::new("reopen");
        let logger = AccessLogger::open(&dir.config(AccessLogFormat::Json, buffer, NEVER)).unwrap();
        refused(&logger, "before");
        let rotated = dir.0.join("access.log.1");
        std::fs::rename(dir.log(), &rotated).unwrap();
        refused(&logger, "still the old file");
        logger.reopen();
        // The writer thread reopens when woken; a flush writes in order.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dir.log().exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        refused(&logger, "after");
        drop(logger);
        let old: Vec<_> = json_lines(&rotated)
            .iter()
            .map(|l| l["detail"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(old, ["before", "still the old file"], "buffer {buffer}");
        let new = json_lines(&dir.log());
        assert_eq!(new.len(), 1, "buffer {buffer}");
        assert_eq!(new[0]["detail"], "after");
    }
}

#[test]
fn text_to_a_file_is_logfmt() {
    let dir = TempDir::new("text");
    let logger = AccessLogger::open(&dir.config(AccessLogFormat::Text, 0, NEVER)).unwrap();
    refused(&logger, "bad header line");
    let text = std::fs::read_to_string(dir.log()).unwrap();
    assert!(text.starts_with("ts=20"), "{text}");
    assert!(
        text.contains(
            " client_ip=192.0.2.1 listener=public protocol=- tls=- method=- host=- path=- \
             query=- status=400 "
        ),
        "{text}"
    );
    assert!(
        text.ends_with(" rejection=malformed_head detail=\"bad header line\"\n"),
        "{text}"
    );
}

/// A flood of refused connections writes a bounded number of lines; the
/// next line after a full second says how many were left out.
#[test]
fn refused_connections_are_capped_per_second() {
    let dir = TempDir::new("refused");
    let logger = AccessLogger::open(&dir.config(AccessLogFormat::Json, 0, NEVER)).unwrap();
    let rule: IpNet = "203.0.113.0/24".parse().unwrap();
    let client = IpAddr::from([203, 0, 113, 9]);
    let started = Instant::now();
    for _ in 0..1000 {
        logger.write_refused_connection(client, "public", rule);
    }
    let written = json_lines(&dir.log());
    // The loop may straddle a second on a slow machine: two windows at most.
    let windows = if started.elapsed() < Duration::from_secs(1) {
        1
    } else {
        2
    };
    assert!(
        written.len() <= REFUSED_CONNECTION_LINES_PER_SECOND as usize * windows,
        "{}",
        written.len()
    );
    assert_eq!(written[0]["rejection"], "blocked_at_accept");
    assert_eq!(written[0]["status"], 0);
    assert_eq!(written[0]["detail"], "blocklist rule 203.0.113.0/24");
    thread::sleep(Duration::from_millis(1100));
    logger.write_refused_connection(client, "public", rule);
    let written = json_lines(&dir.log());
    let last = written.last().unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    let total_before = 1000 - (written.len() - 1);
    assert_eq!(
        last,
        format!(
            "blocklist rule 203.0.113.0/24; {total_before} refused connections before this one not logged"
        )
    );
}
