//! `xgate config schema|dump`, secrets from the environment and from files,
//! shell completions and manual pages, through the real binary.

use std::{path::Path, process::Command};

use xgate_tests::{
    http,
    ports::free_port,
    process::{stderr, stdout, xgate, Daemon},
    upstream::EchoUpstream,
    TempDir,
};

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn any_port() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[test]
fn the_schema_in_the_repository_is_the_models() {
    let out = xgate(&["config", "schema"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let generated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let path = repo_root().join("docs/xgate.schema.json");
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        generated == kept,
        "docs/xgate.schema.json is not the schema of the config model; refresh it with:\n  \
         cargo build -p gateway-userspace --bins && target/debug/xgate config schema > docs/xgate.schema.json"
    );
    // The secret file forms are in it, and the model's own names too.
    let defs = &generated["$defs"];
    assert!(defs["ApiKey"]["properties"]["key_file"].is_object());
    assert!(defs["ApiKey"]["properties"]["key_hash"].is_object());
    assert_eq!(
        defs["Redis"]["oneOf"],
        serde_json::json!([{"required": ["url"]}, {"required": ["url_file"]}])
    );
    assert!(
        defs["Policy"].is_object(),
        "{}",
        defs.as_object().unwrap().len()
    );
}

/// Validates each YAML file against the schema with the Python `jsonschema`
/// package (Debian's python3-jsonschema, installed by `cargo xtask setup`).
fn schema_errors(schema: &Path, configs: &[&Path]) -> String {
    let script = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)
for path in sys.argv[2:]:
    for error in validator.iter_errors(json.load(open(path))):
        print(f"{list(error.absolute_path)}: {error.message}")
"#;
    // YAML → JSON here, so that Python needs jsonschema alone.
    let dir = TempDir::new("schema-json");
    let json_files: Vec<_> = configs
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let value: serde_json::Value =
                serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            let file = dir.path().join(format!("{i}.json"));
            std::fs::write(&file, value.to_string()).unwrap();
            file
        })
        .collect();
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(schema)
        .args(&json_files)
        .output()
        .expect("/usr/bin/python3 (cargo xtask setup installs python3-jsonschema)");
    assert!(
        out.status.success(),
        "the schema check could not run (cargo xtask setup installs python3-jsonschema): {}",
        stderr(&out)
    );
    stdout(&out)
}

#[test]
fn the_example_configs_validate_against_the_schema_and_mistakes_do_not() {
    let root = repo_root();
    let schema = root.join("docs/xgate.schema.json");
    let examples = [
        root.join("examples/quickstart.yaml"),
        root.join("examples/opa/xgate.yaml"),
        root.join("packaging/xgate.yaml"),
    ];
    for example in &examples {
        // Relative paths in them are from the repository root.
        let out = Command::new(xgate_tests::process::xgate_bin())
            .args(["validate", "-c"])
            .arg(example)
            .current_dir(root)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let refs: Vec<&Path> = examples.iter().map(|p| p.as_path()).collect();
    assert_eq!(schema_errors(&schema, &refs), "");

    // What serde refuses, the schema refuses; the long and short forms it
    // accepts, the schema accepts.
    let dir = TempDir::new("schema");
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "listeners: [{address: '127.0.0.1:8080', tls: null}]\n\
         upstreams:\n  u: {targets: ['127.0.0.1:9000', {address: 'app.internal:9000', weight: 3}],\n      \
         connect_timeout: 2s}\n\
         routes: [{match: {path_prefix: /}, upstream: u}]\n\
         consumers: [{username: a, keys: [{key_file: /run/secrets/a}], jwt: [{algorithm: HS256, secret: '${JWT}'}]}]\n\
         redis: {url_file: /run/secrets/redis}\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "listeners: [{address: '127.0.0.1:8080', colour: blue}]\n\
         upstreams:\n  u: {targets: ['127.0.0.1:9000'], connect_timeout: 2 seconds}\n\
         routes: [{match: {path_prefix: /}, upstream: u}]\n\
         consumers: [{username: a, keys: [{key: k, key_file: /run/secrets/a}]}]\n\
         redis: {timeout: 1s}\n",
    )
    .unwrap();
    assert_eq!(schema_errors(&schema, &[&good]), "");
    let errors = schema_errors(&schema, &[&bad]);
    for expected in [
        "['listeners', 0]: Additional properties are not allowed ('colour'",
        "['upstreams', 'u', 'connect_timeout']: '2 seconds' does not match",
        "['consumers', 0, 'keys', 0]:",
        "['redis']:",
    ] {
        assert!(errors.contains(expected), "no `{expected}` in:\n{errors}");
    }
}

#[tokio::test]
async fn secrets_come_from_the_environment_and_from_files_and_dump_hides_them() {
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let dir = TempDir::new("secrets");
    let key_file = dir.path().join("bob.key");
    std::fs::write(&key_file, "bob-key-from-a-file-0123\n").unwrap();
    let yaml = format!(
        "listeners: [{{address: '{listen}'}}]\n\
         consumers:\n\
         \x20 - {{username: alice, keys: [{{key: '${{XGATE_TEST_ALICE_KEY}}'}}]}}\n\
         \x20 - {{username: bob, keys: [{{key_file: '{}'}}]}}\n\
         \x20 - {{username: '$${{literal}}', jwt: [{{issuer: i, algorithm: HS256, secret: '${{XGATE_TEST_HMAC}}'}}]}}\n\
         upstreams: {{u: {{targets: ['{}']}}}}\n\
         routes: [{{match: {{path_prefix: /}}, upstream: u, policies: [{{type: key-auth}}]}}]\n",
        key_file.display(),
        upstream.addr
    );

    // Unset: refused, naming the path and the variable.
    let config = dir.path().join("xgate.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let out = Command::new(xgate_tests::process::xgate_bin())
        .args(["validate", "-c", config.to_str().unwrap()])
        .env_remove("XGATE_TEST_ALICE_KEY")
        .env("XGATE_TEST_HMAC", "h")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(
            "consumers[0].keys[0].key: environment variable XGATE_TEST_ALICE_KEY is not set (line 3"
        ),
        "{err}"
    );

    // Set: the daemon authenticates with the values.
    let env = [
        ("XGATE_TEST_ALICE_KEY", "alice-key-from-env-0123"),
        ("XGATE_TEST_HMAC", "hmac-secret-from-env-0123456789abcdef"),
    ];
    let daemon = Daemon::start_with_env(TempDir::new("secrets-daemon"), &yaml, None, &env);
    let alice = http::get(listen, "/x", &["apikey: alice-key-from-env-0123"]).await;
    assert_eq!(alice.status, 200);
    let bob = http::get(listen, "/x", &["apikey: bob-key-from-a-file-0123"]).await;
    assert_eq!(bob.status, 200);
    let literal = http::get(listen, "/x", &["apikey: ${XGATE_TEST_ALICE_KEY}"]).await;
    assert_eq!(literal.status, 401);

    // dump: defaults filled in, secrets redacted, the escape resolved.
    let out = Command::new(xgate_tests::process::xgate_bin())
        .args(["config", "dump", "--json", "-c"])
        .arg(&daemon.config)
        .envs(env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for (_, secret) in env {
        assert!(!text.contains(secret), "a secret in the dump:\n{text}");
    }
    assert!(!text.contains("bob-key-from-a-file"), "{text}");
    let dump: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dump["consumers"][0]["keys"][0]["key"], "<redacted>");
    assert_eq!(dump["consumers"][1]["keys"][0]["key"], "<redacted>");
    assert_eq!(dump["consumers"][2]["jwt"][0]["secret"], "<redacted>");
    assert_eq!(dump["consumers"][2]["username"], "${literal}");
    // A default the file does not give (docs/upstreams.md: 2s).
    assert_eq!(dump["upstreams"]["u"]["connect_timeout"], "2s");
    assert!(dump["admin"]["socket"].is_string());
    let yaml_dump = Command::new(xgate_tests::process::xgate_bin())
        .args(["config", "dump", "-c"])
        .arg(&daemon.config)
        .envs(env)
        .output()
        .unwrap();
    assert!(stdout(&yaml_dump).contains("key: <redacted>"));
    drop(daemon);
    upstream.stop().await;
}

#[test]
fn a_secret_file_that_cannot_be_read_is_named() {
    let dir = TempDir::new("secret-file");
    let config = dir.path().join("x.yaml");
    std::fs::write(
        &config,
        "listeners: [{address: '127.0.0.1:18290'}]\n\
         upstreams: {u: {targets: ['127.0.0.1:18291']}}\n\
         routes: [{match: {path_prefix: /}, upstream: u}]\n\
         redis:\n  url_file: /nonexistent/xgate-redis-url\n",
    )
    .unwrap();
    let out = xgate(&["config", "dump", "-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("redis.url_file: cannot read /nonexistent/xgate-redis-url")
            && err.contains("(line 5, column 3)"),
        "{err}"
    );
}

#[test]
fn completions_parse_and_the_man_pages_cover_every_command() {
    let dir = TempDir::new("completions");
    let bash = xgate(&["completions", "bash"]);
    assert!(bash.status.success());
    let script = dir.path().join("xgate.bash");
    std::fs::write(&script, &bash.stdout).unwrap();
    let check = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(check.status.success(), "bash -n: {}", stderr(&check));
    let text = stdout(&bash);
    assert!(
        text.contains("complete -F") && text.contains("blocklist"),
        "{text}"
    );
    for (shell, checker) in [("zsh", "zsh"), ("fish", "fish")] {
        let out = xgate(&["completions", shell]);
        assert!(out.status.success() && !out.stdout.is_empty());
        let installed = Command::new(checker).arg("--version").output().is_ok();
        if installed {
            let file = dir.path().join(format!("xgate.{shell}"));
            std::fs::write(&file, &out.stdout).unwrap();
            let check = Command::new(checker).arg("-n").arg(&file).output().unwrap();
            assert!(check.status.success(), "{shell} -n: {}", stderr(&check));
        }
    }
    assert!(!xgate(&["completions", "tcsh"]).status.success());

    let man = dir.path().join("man");
    let out = xgate(&["man", "--out-dir", man.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page = std::fs::read_to_string(man.join("xgate.1")).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH xgate 1"),
        "{page}"
    );
    for command in [
        "run",
        "validate",
        "status",
        "reload",
        "blocklist",
        "allowlist",
        "bans",
        "xdp",
        "hash-key",
        "oauth2",
        "upstreams",
        "config",
        "completions",
    ] {
        assert!(
            page.contains(&format!("xgate\\-{}(1)", command.replace('-', "\\-"))),
            "xgate.1 does not list {command}"
        );
        assert!(
            man.join(format!("xgate-{command}.1")).exists(),
            "no page for {command}"
        );
    }
    let dump = std::fs::read_to_string(man.join("xgate-config-dump.1")).unwrap();
    assert!(dump.contains("redacted"), "{dump}");
}
