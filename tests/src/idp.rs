//! Third-party identity providers on loopback, for the oidc policy tests:
//! the npm packages `oauth2-mock-server` and `oidc-provider`, installed in
//! `tests/idp` by `cargo xtask setup` and started here with the launch
//! scripts kept beside them. Each runs on a free port of 127.0.0.1 and is
//! stopped by its PID when dropped (also when a test fails).

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    http::{send, RawResponse},
    ports::free_port,
};

/// `tests/idp`: the launch scripts and their `node_modules`.
pub fn idp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("idp")
}

/// A provider process.
pub struct Idp {
    child: Child,
    pub addr: SocketAddr,
}

impl Idp {
    /// `oauth2-mock-server`: discovery, a JWKS with one RS256 key, and
    /// client_credentials tokens whose `sub` is the client id.
    pub async fn oauth2_mock_server() -> Self {
        Self::start("oauth2-mock-server.mjs", None).await
    }

    /// `oauth2-mock-server` whose tokens name `issuer` (a discovery
    /// document elsewhere points at its keys).
    pub async fn oauth2_mock_server_for(issuer: &str) -> Self {
        Self::start("oauth2-mock-server.mjs", Some(issuer)).await
    }

    /// `oidc-provider`: opaque client_credentials tokens for the client
    /// `billing`, introspection for the client `xgate`, revocation.
    pub async fn oidc_provider() -> Self {
        Self::start("oidc-provider.mjs", None).await
    }

    /// `oidc-provider` naming `issuer` (a discovery document elsewhere
    /// points at its endpoints).
    pub async fn oidc_provider_for(issuer: &str) -> Self {
        Self::start("oidc-provider.mjs", Some(issuer)).await
    }

    async fn start(script: &str, issuer: Option<&str>) -> Self {
        let dir = idp_dir();
        assert!(
            dir.join("node_modules").is_dir(),
            "{} has no node_modules: run `cargo xtask setup` (it installs the npm test \
             dependencies)",
            dir.display()
        );
        let addr = free_port();
        let mut child = Command::new("node")
            .arg(dir.join(script))
            .arg(addr.port().to_string())
            .args(issuer)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run node (installed by `cargo xtask setup`)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if line.trim() == "ready" {
                    let _ = ready_tx.send(());
                }
            }
        });
        let mut idp = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while ready_rx.try_recv().is_err() {
            if let Ok(Some(status)) = idp.child.try_wait() {
                panic!("{script} exited during start-up ({status}); its errors are above");
            }
            assert!(Instant::now() < deadline, "{script} not ready after 30s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Ready means listening; discovery answering is what xgate needs.
        let discovery = idp.get("/.well-known/openid-configuration").await;
        assert_eq!(discovery.status, 200, "{script}: no discovery document");
        if issuer.is_none() {
            assert_eq!(discovery.json()["issuer"], idp.issuer());
        }
        idp
    }

    /// The issuer URL, as the provider names itself by default.
    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn get(&self, path: &str) -> RawResponse {
        send(
            self.addr,
            None,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.addr
            ),
        )
        .await
        .expect("an answer from the provider")
    }

    /// POST of a form to `path`, with `basic` (`user:password`) credentials.
    pub async fn post_form(&self, path: &str, basic: Option<&str>, form: &str) -> RawResponse {
        use base64::{engine::general_purpose::STANDARD, Engine};
        let auth = basic
            .map(|b| format!("Authorization: Basic {}\r\n", STANDARD.encode(b)))
            .unwrap_or_default();
        send(
            self.addr,
            None,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{auth}\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
                self.addr,
                form.len()
            ),
        )
        .await
        .expect("an answer from the provider")
    }

    /// A client_credentials access token from the token endpoint.
    pub async fn client_credentials(&self, basic: Option<&str>, form: &str) -> String {
        let r = self
            .post_form(
                "/token",
                basic,
                &format!("grant_type=client_credentials&{form}"),
            )
            .await;
        assert_eq!(
            r.status,
            200,
            "token endpoint: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()["access_token"]
            .as_str()
            .expect("an access_token")
            .to_string()
    }

    /// Stops the provider now (SIGKILL: a crash, not a goodbye).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.kill();
    }
}
