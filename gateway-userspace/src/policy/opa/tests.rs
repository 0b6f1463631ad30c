//! Unit tests of the opa policy: result forms, embedded evaluation,
//! compile errors, evaluation cost.

use std::path::PathBuf;

use regorus::Value;
use serde_json::json;

use super::{embedded::Embedded, reads::Reads, Decision};
use crate::config::opa::Opa as OpaConfig;

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xgate-opa-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(files: &[PathBuf], decision: &str) -> OpaConfig {
    serde_yaml::from_str::<OpaConfig>(&format!("decision: {decision}")).map_or_else(
        |e| panic!("{e}"),
        |mut c| {
            c.policy_files = files.to_vec();
            // A debug build on a loaded test machine is slow; no
            // evaluation here is meant to time out.
            c.evaluation_timeout = std::time::Duration::from_secs(30);
            c
        },
    )
}

const POLICY: &str = r#"package xgate.authz

default allow := false

allow if input.request.http.method == "GET"

allow if {
    input.consumer.username == "alice"
    input.request.http.path == "/admin"
}

decision := {"allow": true, "headers": {"x-authz": "ok"}} if allow
decision := {"allow": false, "status": 401, "message": "no"} if not allow
"#;

#[test]
fn result_forms() {
    assert_eq!(
        Decision::from_result(Some(&json!(true))),
        Ok(Decision::Allow(Vec::new()))
    );
    assert_eq!(
        Decision::from_result(Some(&json!(false))),
        Ok(Decision::deny())
    );
    assert_eq!(
        Decision::from_result(None),
        Ok(Decision::deny()),
        "undefined"
    );
    let allow = Decision::from_result(Some(
        &json!({"allow": true, "headers": {"x-a": "1", "x-b": ["2", "3"]}}),
    ))
    .unwrap();
    let Decision::Allow(headers) = allow else {
        panic!("allowed")
    };
    assert_eq!(headers.len(), 3);
    let deny = Decision::from_result(Some(
        &json!({"allow": false, "status": 429, "message": "slow", "headers": {"retry-after": 5}}),
    ))
    .unwrap();
    let Decision::Deny {
        status,
        headers,
        message,
    } = deny
    else {
        panic!("denied")
    };
    assert_eq!((status.as_u16(), message.as_str()), (429, "slow"));
    assert_eq!(headers[0].1, "5");
    for bad in [
        json!("yes"),
        json!(1),
        json!({"status": 403}),
        json!({"allow": "true"}),
        json!({"allow": false, "status": 200}),
        json!({"allow": true, "headers": {"bad header": "x"}}),
        json!({"allow": true, "headers": ["x"]}),
    ] {
        assert!(Decision::from_result(Some(&bad)).is_err(), "{bad}");
    }
}

#[test]
fn embedded_policies_decide_on_the_input() {
    let dir = dir("eval");
    let file = dir.join("authz.rego");
    std::fs::write(&file, POLICY).unwrap();
    let engine = Embedded::new(&config(std::slice::from_ref(&file), "xgate/authz/allow")).unwrap();
    let get = Value::from(json!({"request": {"http": {"method": "GET", "path": "/"}}}));
    let post = Value::from(json!({"request": {"http": {"method": "POST", "path": "/admin"}}}));
    let alice = Value::from(
        json!({"request": {"http": {"method": "POST", "path": "/admin"}}, "consumer": {"username": "alice"}}),
    );
    assert_eq!(engine.evaluate(get.clone()), Ok(Some(json!(true))));
    assert_eq!(engine.evaluate(post.clone()), Ok(Some(json!(false))));
    assert_eq!(engine.evaluate(alice), Ok(Some(json!(true))));
    // The object form.
    let object = Embedded::new(&config(&[file], "xgate/authz/decision")).unwrap();
    let decision = object.evaluate(post).unwrap();
    assert_eq!(decision.as_ref().unwrap()["status"], 401);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compile_errors_name_the_file_and_line() {
    let dir = dir("broken");
    let file = dir.join("broken.rego");
    std::fs::write(&file, "package x\n\nallow if {\n  input.a ==\n}\n").unwrap();
    let error = super::compile_check(&config(std::slice::from_ref(&file), "x/allow")).unwrap_err();
    let at = format!("{}:5:", file.display());
    assert!(error.contains(&at), "{error}");
    // A rule no file declares.
    std::fs::write(&file, "package x\n\nallow := true\n").unwrap();
    let error = super::compile_check(&config(&[file], "x/deny")).unwrap_err();
    assert!(error.contains("data.x.deny"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What docs/policies.md reports: the cost of one evaluation of a small
/// and of a larger policy (printed; run with `--nocapture`). No threshold
/// is asserted (a loaded machine would fail it); the average must exist.
#[test]
fn evaluation_cost() {
    let dir = dir("cost");
    let small = dir.join("small.rego");
    std::fs::write(&small, POLICY).unwrap();
    // 200 rules over paths and groups, plus a data lookup per rule.
    let mut large = String::from("package big\n\ndefault allow := false\n\n");
    for i in 0..200 {
        large.push_str(&format!(
            "allow if {{\n  startswith(input.request.http.path, \"/svc{i}/\")\n  \
             some g in input.consumer.groups\n  g == \"team{i}\"\n  \
             input.request.http.method in {{\"GET\", \"POST\"}}\n}}\n\n"
        ));
    }
    let large_file = dir.join("large.rego");
    std::fs::write(&large_file, large).unwrap();
    // Built once: the evaluation alone is measured (the document's cost is
    // `the_input_document_costs_little`).
    let input = Value::from(json!({
        "request": {"http": {"method": "POST", "path": "/svc199/items", "host": "api.test",
                    "headers": {"accept": "*/*", "user-agent": "t"}, "querystring": {}}},
        "consumer": {"username": "alice", "groups": ["team199", "x"]},
        "client_ip": "192.0.2.1",
    }));
    for (name, file, decision) in [
        ("small", small, "xgate/authz/allow"),
        ("large", large_file, "big/allow"),
    ] {
        let engine = Embedded::new(&config(&[file], decision)).unwrap();
        let n = if cfg!(debug_assertions) { 100 } else { 5000 };
        let started = std::time::Instant::now();
        for _ in 0..n {
            assert!(engine.evaluate(input.clone()).unwrap().is_some());
        }
        let per = started.elapsed() / n;
        println!(
            "{name}: {per:?} per evaluation (moving average {:?})",
            super::embedded::average(&engine)
        );
        assert!(!super::embedded::average(&engine).is_zero());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_input_document_is_shaped_as_kongs() {
    use crate::policy::{Caller, Consumers, Identity};
    let consumers = Consumers::compile(
        &serde_yaml::from_str::<Vec<crate::config::Consumer>>(
            "[{username: alice, custom_id: c-17, groups: [admins, ops]}]",
        )
        .unwrap(),
    )
    .unwrap();
    let identity = Identity::anonymous(consumers.by_username("alice").unwrap().clone());
    let mut parts = http::Request::builder()
        .method("POST")
        .uri("/orders/7?page=2&tag=a&tag=b&flag&q=a%20b")
        .header("host", "api.test:8443")
        .header("accept", "a")
        .header("accept", "b")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    identity.apply(&mut parts.headers);
    let addr: std::net::SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let conn = crate::exchange::ConnInfo::new(addr, addr, "https", None);
    let caller = Caller {
        client_ip: "203.0.113.9".parse().unwrap(),
        identity: Some(&identity),
        route: "orders",
        conn: &conn,
    };
    let body = bytes::Bytes::from_static(br#"{"owner": "alice"}"#);
    let input = serde_json::to_value(super::input::document(
        &parts,
        &caller,
        Some(&body),
        Some(&body),
        &Reads::All,
    ))
    .unwrap();
    let http = &input["request"]["http"];
    assert_eq!(http["host"], "api.test");
    assert_eq!(http["port"], 8443);
    assert_eq!(http["scheme"], "https");
    assert_eq!(http["tls"], json!({"enabled": true}));
    assert_eq!(http["method"], "POST");
    assert_eq!(http["path"], "/orders/7");
    assert_eq!(
        http["querystring"],
        json!({"page": "2", "tag": ["a", "b"], "flag": true, "q": "a b"})
    );
    assert_eq!(http["headers"]["accept"], json!(["a", "b"]));
    assert_eq!(http["headers"]["x-consumer-username"], "alice");
    assert_eq!(http["body"], r#"{"owner": "alice"}"#);
    assert_eq!(http["parsed_body"], json!({"owner": "alice"}));
    assert_eq!(input["client_ip"], "203.0.113.9");
    assert_eq!(input["route"], json!({"name": "orders"}));
    assert_eq!(
        input["consumer"],
        json!({"username": "alice", "id": "alice", "custom_id": "c-17", "groups": ["admins", "ops"]})
    );

    // The cache key: length-prefixed values of the fields named.
    let fields: Vec<String> = ["consumer", "method", "header:accept"]
        .map(String::from)
        .to_vec();
    assert_eq!(
        super::input::cache_key(&fields, &parts, &caller),
        "5:alice4:POST3:a\nb"
    );
    // Not JSON: no parsed_body.
    let text = bytes::Bytes::from_static(b"owner=alice");
    let input = serde_json::to_value(super::input::document(
        &parts,
        &caller,
        None,
        Some(&text),
        &Reads::All,
    ))
    .unwrap();
    assert!(input["request"]["http"].get("parsed_body").is_none());
    assert!(input["request"]["http"].get("body").is_none());
}

/// What docs/policies.md reports as the document's cost: building the input
/// of a request like the bench's (five headers, one a 700-byte bearer
/// token), printed with `--nocapture`; no threshold (a loaded machine would
/// fail it). The document must hold what the request said.
#[test]
fn the_input_document_costs_little() {
    use crate::policy::Caller;
    let token = format!("Bearer {}", "a".repeat(700));
    let parts = http::Request::builder()
        .method("GET")
        .uri("/small")
        .header("host", "127.0.0.1:8080")
        .header("x-api-key", "0123456789abcdef0123456789abcdef")
        .header("authorization", &token)
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Firefox/125.0",
        )
        .header("accept", "*/*")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let addr: std::net::SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let conn = crate::exchange::ConnInfo::new(addr, addr, "http", None);
    let caller = Caller {
        client_ip: addr.ip(),
        identity: None,
        route: "opa_embedded",
        conn: &conn,
    };
    let n = if cfg!(debug_assertions) { 200 } else { 20_000 };
    let started = std::time::Instant::now();
    let mut last = None;
    for _ in 0..n {
        last = Some(super::input::document(
            &parts,
            &caller,
            None,
            None,
            &Reads::All,
        ));
    }
    println!("input document: {:?} per request", started.elapsed() / n);
    let input = serde_json::to_value(last.unwrap()).unwrap();
    assert_eq!(input["request"]["http"]["headers"]["authorization"], token);
    assert_eq!(input["request"]["http"]["port"], 8080);
    assert_eq!(input["request"]["http"]["querystring"], json!({}));
}

/// The bench's policy reads the method and one header: the document an
/// embedded policy gets holds only those, and decides as the whole one.
#[test]
fn the_document_holds_what_the_policy_reads_and_decides_the_same() {
    use crate::policy::Caller;
    let dir = dir("pruned");
    let file = dir.join("bench.rego");
    std::fs::write(
        &file,
        "package bench\n\ndefault allow := false\n\nallow if {\n    \
         input.request.http.method == \"GET\"\n    \
         not input.request.http.headers[\"x-bench-deny\"]\n}\n",
    )
    .unwrap();
    let engine = Embedded::new(&config(std::slice::from_ref(&file), "bench/allow")).unwrap();
    assert!(engine.pure());
    let addr: std::net::SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let conn = crate::exchange::ConnInfo::new(addr, addr, "http", None);
    let caller = Caller {
        client_ip: addr.ip(),
        identity: None,
        route: "r",
        conn: &conn,
    };
    for (method, deny, allowed) in [
        ("GET", None, true),
        ("POST", None, false),
        ("GET", Some("1"), false),
        ("GET", Some("0"), false),
    ] {
        let mut request = http::Request::builder()
            .method(method)
            .uri("/x?a=1")
            .header("host", "h")
            .header("x-other", "o");
        if let Some(deny) = deny {
            request = request.header("x-bench-deny", deny);
        }
        let parts = request.body(()).unwrap().into_parts().0;
        let pruned = super::input::document(&parts, &caller, None, None, engine.reads());
        let whole = super::input::document(&parts, &caller, None, None, &Reads::All);
        let json = serde_json::to_value(&pruned).unwrap();
        let mut expected = json!({"request": {"http": {"method": method, "headers": {}}}});
        if let Some(deny) = deny {
            expected["request"]["http"]["headers"]["x-bench-deny"] = json!(deny);
        }
        assert_eq!(json, expected, "only what the policy reads");
        assert_eq!(
            engine.evaluate(pruned),
            engine.evaluate(whole),
            "{method} {deny:?}"
        );
        assert_eq!(
            engine.evaluate(whole_again(&parts, &caller)),
            Ok(Some(json!(allowed)))
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn whole_again(parts: &http::request::Parts, caller: &crate::policy::Caller<'_>) -> Value {
    super::input::document(parts, caller, None, None, &Reads::All)
}

/// The opa guard of `policy` (a pure one unless it says otherwise).
fn guard(dir: &std::path::Path, policy: &str, memo: Option<usize>) -> super::Opa {
    let file = dir.join("memo.rego");
    std::fs::write(&file, policy).unwrap();
    let mut config = config(&[file], "m/allow");
    config.memo_entries = memo;
    super::Opa::new(&config, &crate::telemetry::Metrics::default()).unwrap()
}

/// Runs `guard` on a request with `method` and `x-tenant: tenant`: allowed?
async fn decide(guard: &super::Opa, method: &str, tenant: &str) -> bool {
    use crate::policy::{Caller, Guard, GuardCheck};
    let mut parts = http::Request::builder()
        .method(method)
        .uri("/")
        .header("x-tenant", tenant)
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let addr: std::net::SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let conn = crate::exchange::ConnInfo::new(addr, addr, "http", None);
    let caller = Caller {
        client_ip: addr.ip(),
        identity: None,
        route: "r",
        conn: &conn,
    };
    let mut response = http::HeaderMap::new();
    let check = guard.check(&mut parts, &caller, &mut response);
    // A debug build on a loaded machine may move even a small policy to
    // the blocking pool.
    let result = match check {
        GuardCheck::Now(result) => result,
        GuardCheck::Later(pending) => pending.await,
    };
    result.is_ok()
}

const MEMO_POLICY: &str = "package m\n\ndefault allow := false\n\n\
    allow if {\n  input.request.http.method == \"GET\"\n  \
    input.request.http.headers[\"x-tenant\"] != \"blocked\"\n}\n";

#[tokio::test]
async fn the_memo_answers_equal_inputs_and_only_those() {
    let dir = dir("memo");
    let guard = guard(&dir, MEMO_POLICY, None);
    let memo = guard
        .memo
        .as_ref()
        .expect("a pure policy has a memo by default");
    let hits = || memo.hits.load(std::sync::atomic::Ordering::Relaxed);
    assert!(decide(&guard, "GET", "a").await);
    assert_eq!((hits(), memo.len()), (0, 1), "a miss, remembered");
    assert!(decide(&guard, "GET", "a").await);
    assert_eq!((hits(), memo.len()), (1, 1), "the same input: a hit");
    assert!(
        !decide(&guard, "GET", "blocked").await,
        "another input is evaluated"
    );
    assert!(!decide(&guard, "POST", "a").await);
    assert_eq!((hits(), memo.len()), (1, 3));
    assert!(
        !decide(&guard, "GET", "blocked").await,
        "a remembered refusal"
    );
    assert_eq!(hits(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn impure_policies_and_memo_entries_0_have_no_memo() {
    let dir = dir("nomemo");
    assert!(guard(&dir, MEMO_POLICY, Some(0)).memo.is_none());
    // (`time.now_ns` is not in this build of regorus; `rand.intn` is.)
    let random = "package m\n\nallow if { rand.intn(\"x\", 10) >= 0 }\n";
    let clocked = guard(&dir, random, None);
    assert!(
        clocked.memo.is_none(),
        "randomness: every request evaluated"
    );
    assert!(decide(&clocked, "GET", "a").await);
    let with = "package m\n\nallow if { f with input as {} }\nf if { true }\n";
    assert!(guard(&dir, with, None).memo.is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reload with the same files keeps the compiled policy (and its memo);
/// a changed data file is a new policy: its decisions, not the memo's.
#[tokio::test]
async fn a_reload_with_changed_data_is_decided_afresh() {
    use crate::{
        config,
        policy::{ChainInput, PolicySet},
        telemetry::Metrics,
    };
    let dir = dir("memo-reload");
    let policy = dir.join("p.rego");
    std::fs::write(
        &policy,
        "package m\n\ndefault allow := false\n\n\
         allow if input.request.http.method == data.m.method\n",
    )
    .unwrap();
    let data = dir.join("d.json");
    let yaml = format!(
        "listeners: [{{address: '127.0.0.1:1'}}]\n\
         upstreams: {{u: {{targets: ['127.0.0.1:2']}}}}\n\
         routes: [{{name: r, match: {{path_prefix: /}}, upstream: u, policies: \
         [{{type: opa, decision: m/allow, policy_files: ['{}'], data_files: ['{}']}}]}}]\n",
        policy.display(),
        data.display()
    );
    let metrics = Metrics::default();
    let allowed = |set: &PolicySet, config: &config::Config| {
        let routes = set.for_route(0, &config.routes[0], "r", &metrics).unwrap();
        async move {
            let mut parts = http::Request::get("/").body(()).unwrap().into_parts().0;
            let conn = crate::exchange::ConnInfo::new(
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
                "http",
                None,
            );
            let mut verdicts = Vec::new();
            let mut response_headers = http::HeaderMap::new();
            let input = ChainInput {
                client_ip: conn.client.ip(),
                conn: &conn,
                verdicts: &mut verdicts,
                response_headers: &mut response_headers,
                signals: None,
            };
            routes.chain("x").run(&mut parts, input).await.is_ok()
        }
    };
    std::fs::write(&data, r#"{"m": {"method": "GET"}}"#).unwrap();
    let config = config::Config::from_yaml(&yaml, "t").unwrap();
    let first = PolicySet::compile(&config, None, &metrics).unwrap();
    assert!(allowed(&first, &config).await);
    assert!(allowed(&first, &config).await, "from the memo");
    let same = PolicySet::compile(&config, Some(&first), &metrics).unwrap();
    assert!(allowed(&same, &config).await);
    std::fs::write(&data, r#"{"m": {"method": "POST"}}"#).unwrap();
    let changed = PolicySet::compile(&config, Some(&same), &metrics).unwrap();
    assert!(
        !allowed(&changed, &config).await,
        "the new data decides, not a remembered decision"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
