//! A real `redis-server` on a loopback port, for the tests of what xgate
//! shares through Redis (rate limits, cluster-wide lists). It can be
//! stopped and started again on the same port, to test what happens while
//! Redis is away.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{ports::free_port, TempDir};

pub struct RedisServer {
    addr: SocketAddr,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` (no persistence) on a free loopback port and
    /// waits until it answers PING.
    pub fn start() -> Self {
        let mut server = Self {
            addr: free_port(),
            dir: TempDir::new("redis"),
            child: None,
        };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Kills the server (SIGKILL: what a crash looks like to clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing is
    /// answered, as with an overloaded or partitioned Redis.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Signals the server (our own child, by its pid).
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the server runs").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}: {status}");
    }

    /// Starts the server again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.stop();
        let log: PathBuf = self.dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.addr.port().to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &self.dir.path().display().to_string(),
                "--logfile",
                &log.display().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: `cargo xtask setup` installs it");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.command(&["PING"]).is_ok_and(|r| r == "+PONG") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on {} did not answer PING within 10 s; its log: {}",
            self.addr,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Sends one command (RESP) and returns the first line of the answer
    /// (`+OK`, `:42`, `$5` ...); for the tests' own checks.
    pub fn command(&self, args: &[&str]) -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes())?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end().to_string();
        // A bulk string: return its value rather than its length.
        if let Some(len) = line.strip_prefix('$') {
            if len == "-1" {
                return Ok(String::new());
            }
            let mut value = String::new();
            reader.read_line(&mut value)?;
            return Ok(value.trim_end().to_string());
        }
        Ok(line)
    }
}

impl RedisServer {
    /// `INFO <section>`, whole (`command` keeps only its first line).
    pub fn info(&self, section: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(
            format!("*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n", section.len()).as_bytes(),
        )?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let len: usize = line
            .trim_end()
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not a bulk string: {line:?}")))?;
        let mut body = vec![0; len];
        std::io::Read::read_exact(&mut reader, &mut body)?;
        String::from_utf8(body).map_err(std::io::Error::other)
    }

    /// A command's `calls` and `failed_calls` from `INFO commandstats`
    /// (zeros when it never ran).
    pub fn command_calls(&self, command: &str) -> (u64, u64) {
        let info = self.info("commandstats").expect("INFO commandstats");
        let prefix = format!("cmdstat_{command}:");
        let Some(line) = info.lines().find(|l| l.starts_with(&prefix)) else {
            return (0, 0);
        };
        let field = |name: &str| {
            line[prefix.len()..]
                .split(',')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("calls"), field("failed_calls"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
