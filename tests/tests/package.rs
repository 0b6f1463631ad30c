//! `cargo xtask deb`: the package is built (from the debug binary, to stay
//! fast), inspected with dpkg-deb (and lintian when installed), unpacked
//! into a scratch root, and the binary from there serves a request with the
//! packaged default config.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use xgate_tests::{
    http,
    ports::free_port,
    process::{stderr, stdout, xgate_bin, Daemon},
    upstream::EchoUpstream,
    TempDir,
};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

/// Builds the package from the binary the tests run; returns the .deb.
fn build_package(out_dir: &Path) -> PathBuf {
    // target/<profile>/xgate → target: xtask packages <target>/debug/xgate.
    let target = xgate_bin()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    run(Command::new(env!("CARGO"))
        .args(["xtask", "deb", "--binary", "debug", "--out-dir"])
        .arg(out_dir)
        .current_dir(repo_root())
        .env("CARGO_TARGET_DIR", &target));
    let debs: Vec<PathBuf> = std::fs::read_dir(out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    debs[0].clone()
}

#[tokio::test]
async fn the_debian_package_installs_a_working_gateway() {
    let dir = TempDir::new("package");
    let deb = build_package(dir.path());
    let name = deb.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with(&format!("xgate_{}_", env!("CARGO_PKG_VERSION"))),
        "{name}"
    );

    let info = stdout(&run(Command::new("dpkg-deb").arg("--info").arg(&deb)));
    for expected in [
        "Package: xgate",
        "Depends: libc6, adduser",
        "conffiles",
        "postinst",
        "postrm",
    ] {
        assert!(info.contains(expected), "no {expected} in:\n{info}");
    }
    let control = dir.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    assert_eq!(
        std::fs::read_to_string(control.join("conffiles")).unwrap(),
        "/etc/xgate/xgate.yaml\n"
    );
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(control.join(script)));
    }
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(
        postinst.contains("getent passwd xgate") && postinst.contains("adduser --system"),
        "postinst makes the xgate user only when missing:\n{postinst}"
    );
    let postrm = std::fs::read_to_string(control.join("postrm")).unwrap();
    assert!(postrm.contains("purge") && postrm.contains("deluser --system"));

    let contents = stdout(&run(Command::new("dpkg-deb").arg("--contents").arg(&deb)));
    let mut expected = vec![
        "./usr/bin/xgate",
        "./etc/xgate/xgate.yaml",
        "./var/lib/xgate/",
        "./usr/share/man/man1/xgate.1.gz",
        "./usr/share/man/man1/xgate-run.1.gz",
        "./usr/share/bash-completion/completions/xgate",
        "./usr/share/zsh/vendor-completions/_xgate",
        "./usr/share/fish/vendor_completions.d/xgate.fish",
        "./usr/share/xgate/xgate.schema.json",
        "./usr/share/doc/xgate/copyright",
    ];
    // The unit comes with the systemd work (packaging/xgate.service); once
    // it is in the tree, the package must carry it.
    if repo_root().join("packaging/xgate.service").exists() {
        expected.push("./usr/lib/systemd/system/xgate.service");
    }
    for path in expected {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "{path} is not in the package:\n{contents}"
        );
    }
    assert!(
        contents
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x root/root") && l.ends_with("./usr/bin/xgate")),
        "{contents}"
    );

    if Command::new("lintian").arg("--version").output().is_ok() {
        // Informational tags aside, errors fail.
        let out = Command::new("lintian")
            .args(["--fail-on", "error", "--suppress-tags"])
            .arg("unstripped-binary-or-object,no-changelog,statically-linked-binary")
            .arg(&deb)
            .output()
            .unwrap();
        assert!(out.status.success(), "lintian:\n{}", stdout(&out));
    }

    // Unpacked into a scratch root, the packaged binary checks the packaged
    // config and serves a request with it.
    let root = dir.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let packaged = root.join("usr/bin/xgate");
    let default_config = root.join("etc/xgate/xgate.yaml");
    let out = run(Command::new(&packaged)
        .args(["validate", "-c"])
        .arg(&default_config));
    assert!(
        stdout(&out).contains("ok (1 listener(s)"),
        "{}",
        stdout(&out)
    );
    let version = stdout(&run(Command::new(&packaged).arg("--version")));
    assert_eq!(
        version.trim(),
        format!("xgate {}", env!("CARGO_PKG_VERSION"))
    );

    let upstream = EchoUpstream::start("127.0.0.1:0".parse().unwrap(), "app")
        .await
        .unwrap();
    let listen = free_port();
    let text = std::fs::read_to_string(&default_config).unwrap();
    assert!(text.contains("127.0.0.1:8080") && text.contains("127.0.0.1:9000"));
    let yaml = text
        .replace("127.0.0.1:8080", &listen.to_string())
        .replace("127.0.0.1:9000", &upstream.addr.to_string());
    // The daemon helper runs $XGATE_BIN: this file has one test, so no
    // other test sees it.
    std::env::set_var("XGATE_BIN", &packaged);
    let daemon = Daemon::start(&yaml, None);
    let response = http::get(listen, "/hello", &[]).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["upstream"], "app");
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/exe", daemon.pid())).unwrap(),
        packaged.canonicalize().unwrap()
    );
    drop(daemon);
    upstream.stop().await;
}
