//! Unit tests of the opa policy: result forms, embedded evaluation,
//! compile errors, evaluation cost.

use std::path::PathBuf;

use regorus::Value;
use serde_json::json;

use super::{embedded::Embedded, Decision};
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
    let input =
        serde_json::to_value(super::input::document(&parts, &caller, None, Some(&text))).unwrap();
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
        last = Some(super::input::document(&parts, &caller, None, None));
    }
    println!("input document: {:?} per request", started.elapsed() / n);
    let input = serde_json::to_value(last.unwrap()).unwrap();
    assert_eq!(input["request"]["http"]["headers"]["authorization"], token);
    assert_eq!(input["request"]["http"]["port"], 8080);
    assert_eq!(input["request"]["http"]["querystring"], json!({}));
}
