//! The metrics listener's status page through the real binary: its JSON
//! (listeners, routes, a healthy and a down target, refusals by source, a
//! ban, a runtime deny entry), the token rule for clients that are not on
//! loopback (from a network namespace), the default address (127.0.0.1:9464,
//! a warning when taken) against a configured one (an error when taken), and
//! the page itself in headless Chromium: the DOM after its scripts ran and a
//! screenshot with the health colours, with XDP verdicts when run as root.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use xgate_tests::{
    browser::{chromium, Browser},
    http::{send, RawResponse},
    netns::{udp_delivery, veth, NetNs, PinDir},
    ports::{any_port, free_port},
    process::{stderr, stdout, xgate_bin, Daemon},
    require_root,
    upstream::EchoUpstream,
    TempDir,
};

const KEY: &str = "alice-key-0123456789";
const TOKEN: &str = "status-token-0123456789";

/// A gateway with one healthy and one dead target (actively checked every
/// second), key-auth, and an auto-ban after three failed keys.
fn config(listen: SocketAddr, ok: SocketAddr, dead: SocketAddr, admin: &str, xdp: &str) -> String {
    format!(
        "listeners: [{{name: public, address: '{listen}'}}]\n\
         consumers: [{{username: alice, keys: [{{key: {KEY}}}]}}]\n\
         upstreams:\n\
         \x20 shop:\n\
         \x20   targets: ['{ok}', '{dead}']\n\
         \x20   health_checks: {{active: {{interval: 1s, timeout: 500ms, unhealthy_threshold: 1, healthy_threshold: 1}}}}\n\
         routes: [{{name: api, match: {{path_prefix: /}}, upstream: shop, policies: [{{type: key-auth}}]}}]\n\
         auto_ban:\n\
         \x20 rules:\n\
         \x20   - {{name: brute-force, signal: auth_failure, count: 3, within: 60s, ban: 1h, reason: too many bad keys}}\n\
         {xdp}\
         admin:\n  socket: '{{dir}}/admin.sock'\n{admin}"
    )
}

fn request(key: &str) -> String {
    format!("GET /x HTTP/1.1\r\nHost: api.test\r\napikey: {key}\r\nConnection: close\r\n\r\n")
}

/// `f` on a thread inside `ns` (or here), with its own runtime.
fn within<T: Send + 'static>(
    ns: Option<&NetNs>,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let run = move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    };
    match ns {
        Some(ns) => ns.run(run),
        None => std::thread::spawn(run).join().unwrap(),
    }
}

fn get_from(
    ns: Option<&NetNs>,
    addr: SocketAddr,
    source: Option<SocketAddr>,
    path: &str,
    extra: &[&str],
) -> RawResponse {
    let mut text = format!("GET {path} HTTP/1.1\r\nHost: status.test\r\nConnection: close\r\n");
    for line in extra {
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    within(ns, async move {
        send(addr, source, &text).await.expect("an answer")
    })
}

/// An echo upstream on `addr` (inside `ns` when given), on a thread and
/// runtime of its own that serve it until the test process ends.
fn serve_upstream(ns: Option<&NetNs>, addr: SocketAddr) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    let serve = move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let upstream = EchoUpstream::start(addr, "ok").await.unwrap();
                tx.send(upstream.addr).unwrap();
                std::future::pending::<()>().await;
            })
    };
    match ns {
        Some(ns) => drop(ns.spawn(serve)),
        None => drop(std::thread::spawn(serve)),
    }
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the upstream started")
}

/// The traffic every scenario makes: three bad keys from `attacker` (banned
/// after the third; its next connection refused at L7 or dropped in XDP),
/// one bad key from `other`, good requests from `good`.
fn make_traffic(ns: Option<&NetNs>, listen: SocketAddr, attacker: &str, other: &str, good: &str) {
    let (attacker, other, good): (SocketAddr, SocketAddr, SocketAddr) = (
        attacker.parse().unwrap(),
        other.parse().unwrap(),
        good.parse().unwrap(),
    );
    within(ns, async move {
        for _ in 0..3 {
            let r = send(listen, Some(attacker), &request("wrong"))
                .await
                .unwrap();
            assert_eq!(r.status, 401);
        }
        let r = send(listen, Some(other), &request("wrong")).await.unwrap();
        assert_eq!(r.status, 401);
        for _ in 0..5 {
            let r = send(listen, Some(good), &request(KEY)).await.unwrap();
            assert!(r.status == 200 || r.status == 502, "{}", r.status);
        }
    });
}

/// Polls `/status.json` until `ready` holds (the dead target is found by
/// the active checks within a second or two).
fn json_when(ns: Option<&NetNs>, metrics: SocketAddr, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = get_from(ns, metrics, None, "/status.json", &[]);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let json = r.json();
        if ready(&json) {
            return json;
        }
        assert!(Instant::now() < deadline, "never as expected: {json:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn target_state(json: &Value, target: SocketAddr) -> String {
    json["upstreams"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == target.to_string())
        .map(|t| t["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

#[test]
fn the_json_shows_listeners_routes_health_refusals_and_bans() {
    let upstream = serve_upstream(None, any_port());
    let dead = free_port();
    let (listen, metrics) = (free_port(), free_port());
    let daemon = Daemon::start(
        &config(
            listen,
            upstream,
            dead,
            &format!("  metrics_address: '{metrics}'\n"),
            "",
        ),
        None,
    );
    make_traffic(None, listen, "127.0.0.2:0", "127.0.0.3:0", "127.0.0.1:0");
    // Banned: its next connection is refused before any request.
    let refused = within(None, async move {
        send(listen, Some("127.0.0.2:0".parse().unwrap()), &request(KEY)).await
    });
    assert!(
        refused.is_err(),
        "a banned source was answered: {refused:?}"
    );
    let out = daemon.cli(&[
        "blocklist",
        "add",
        "203.0.113.7",
        "--ttl",
        "10m",
        "--reason",
        "ticket 42",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let json = json_when(None, metrics, |j| target_state(j, dead) == "unhealthy");
    assert_eq!(json["listeners"][0]["name"], "public", "{json:#}");
    assert_eq!(json["listeners"][0]["address"], listen.to_string());
    assert_eq!(json["routes"][0]["name"], "api");
    assert_eq!(json["routes"][0]["matches"], "path_prefix /");
    assert_eq!(json["routes"][0]["to"], "shop");
    assert_eq!(target_state(&json, upstream), "healthy", "{json:#}");
    // Refused at L7: 3 bad keys and 1 connection from .2, 1 bad key from .3
    // (no XDP here: every drop is an L7 refusal).
    let top = &json["top_dropped_sources"];
    assert_eq!(top[0]["source"], "127.0.0.2", "{json:#}");
    assert_eq!(
        (&top[0]["dropped"], &top[0]["l7"], &top[0]["xdp"]),
        (&Value::from(4), &Value::from(4), &Value::from(0))
    );
    assert_eq!(top[0]["last_layer"], "l7");
    assert_eq!(
        top[0]["reasons"],
        serde_json::json!([
            {"layer": "l7", "reason": "unauthenticated", "count": 3},
            {"layer": "l7", "reason": "deny_list", "count": 1},
        ])
    );
    let seen = top[0]["last_seen_unix_ms"].as_u64().unwrap() / 1000;
    let now = json["now_unix"].as_u64().unwrap();
    assert!(
        seen <= now && seen + 60 >= now,
        "last seen {seen}, now {now}"
    );
    assert_eq!(top[1]["source"], "127.0.0.3");
    assert_eq!(
        (
            top[1]["dropped"].as_u64(),
            top[1]["reasons"][0]["reason"].as_str()
        ),
        (Some(1), Some("unauthenticated"))
    );
    assert_eq!(json["xdp_drop_sample"], Value::Null);
    assert_eq!(json["bans"][0]["cidr"], "127.0.0.2/32");
    assert_eq!(json["bans"][0]["rule"], "brute-force");
    let now = json["now_unix"].as_u64().unwrap();
    assert!(json["bans"][0]["expires_at"].as_u64().unwrap() > now + 3500);
    assert_eq!(json["runtime_denies"][0]["cidr"], "203.0.113.7/32");
    assert_eq!(json["runtime_denies"][0]["reason"], "ticket 42");
    // 3 + 1 bad keys and 5 good requests were answered.
    assert_eq!(json["live"]["requests"], 9, "{json:#}");
    let buckets: u64 = json["live"]["latency_buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .sum();
    assert_eq!(buckets, 9);
    assert_eq!(json["xdp"], Value::Null);
    // The charts' samples: the request totals at the moment of each.
    let history = json["history"].as_array().unwrap();
    assert!(!history.is_empty(), "{json:#}");
    let last = &history[history.len() - 1];
    assert!(last["live"]["requests"].as_u64().unwrap() <= 9);
    assert_eq!(last["xdp_passed"], Value::Null);
    let dropped = json["xdp_dropped_reasons"].as_array().unwrap();
    assert!(dropped.contains(&"denied_v4".into()) && dropped.contains(&"rate_limited".into()));
    assert!(!dropped.contains(&"passed".into()) && !dropped.contains(&"allow_listed".into()));

    let page = get_from(None, metrics, None, "/status", &[]);
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(String::from_utf8_lossy(&page.body).contains("<title>xgate status</title>"));
    let post = within(None, async move {
        send(metrics, None, "POST /status.json HTTP/1.1\r\nHost: s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await
            .unwrap()
    });
    assert_eq!(post.status, 405);
    let status = stdout(&daemon.cli(&["status"]));
    assert!(
        status.contains(&format!(
            "metrics:   {metrics} (/metrics, /livez, /readyz, /status)"
        )),
        "{status}"
    );
    // The same top dropped sources in `xgate status` (the admin API's
    // /status).
    let line = status
        .lines()
        .find(|l| l.contains("127.0.0.2"))
        .unwrap_or_else(|| panic!("no dropped source in:\n{status}"));
    assert!(
        status.contains("dropped:   the sources dropped most"),
        "{status}"
    );
    assert!(
        line.contains(" 4  L7 unauthenticated 3, L7 deny_list 1"),
        "{status}"
    );
}

/// The gateway namespace `gw` (`198.18.44.1` on its veth) and a client
/// namespace `cl` (`198.18.44.2`, `.3`, `.4`).
fn namespaces(tag: &str, ifname: &str) -> (NetNs, NetNs) {
    let gw = NetNs::create(&format!("{tag}g"));
    let cl = NetNs::create(&format!("{tag}c"));
    veth(
        &gw,
        &format!("{ifname}0"),
        &["198.18.44.1/24"],
        &cl,
        &format!("{ifname}1"),
        &["198.18.44.2/24", "198.18.44.3/24", "198.18.44.4/24"],
    );
    (gw, cl)
}

#[test]
fn a_client_not_on_loopback_needs_the_token() {
    if !require_root("a_client_not_on_loopback_needs_the_token") {
        return;
    }
    let (gw, cl) = namespaces("stok", "xst");
    let dir = TempDir::new("status-token");
    let token_file = dir.path().join("status.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let yaml = format!(
        "listeners: [{{address: '198.18.44.1:8080'}}]\n\
         upstreams: {{u: {{targets: ['127.0.0.1:9']}}}}\n\
         routes: [{{match: {{path_prefix: /}}, upstream: u}}]\n\
         admin:\n  socket: '{{dir}}/admin.sock'\n  metrics_address: '0.0.0.0:9464'\n  status_token_file: {}\n",
        token_file.display()
    );
    let _with_token = Daemon::start_in_dir(dir, &yaml, Some(&gw));
    let outside: SocketAddr = "198.18.44.1:9464".parse().unwrap();
    let from = Some("198.18.44.2:0".parse().unwrap());

    // Loopback inside the gateway's namespace: no token needed.
    let local = get_from(
        Some(&gw),
        "127.0.0.1:9464".parse().unwrap(),
        None,
        "/status.json",
        &[],
    );
    assert_eq!(local.status, 200);
    // From the other namespace: the token or nothing.
    for extra in [
        vec![],
        vec!["Authorization: Bearer wrong-token"],
        vec!["Cookie: xgate_status=wrong"],
    ] {
        let r = get_from(Some(&cl), outside, from, "/status.json", &extra);
        assert_eq!(r.status, 401, "{extra:?}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"xgate status\"")
        );
        assert!(String::from_utf8_lossy(&r.body).contains("Authorization: Bearer TOKEN"));
    }
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let r = get_from(Some(&cl), outside, from, "/status.json", &[&bearer]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["listeners"][0]["address"], "198.18.44.1:8080");
    // A browser: the token once in the address, traded for a cookie.
    let r = get_from(
        Some(&cl),
        outside,
        from,
        &format!("/status?token={TOKEN}"),
        &[],
    );
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/status"));
    let cookie = r.header("set-cookie").unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let r = get_from(
        Some(&cl),
        outside,
        from,
        "/status",
        &[&format!("Cookie: {pair}")],
    );
    assert_eq!(r.status, 200);
    let r = get_from(Some(&cl), outside, from, "/status?token=nope", &[]);
    assert_eq!(r.status, 401);
    // /metrics and the probes stay open, as before.
    assert_eq!(
        get_from(Some(&cl), outside, from, "/metrics", &[]).status,
        200
    );

    // Without a token configured, such clients are refused outright.
    let yaml = "listeners: [{address: '198.18.44.1:8081'}]\n\
         upstreams: {u: {targets: ['127.0.0.1:9']}}\n\
         routes: [{match: {path_prefix: /}, upstream: u}]\n\
         admin:\n  socket: '{dir}/admin.sock'\n  metrics_address: '0.0.0.0:9465'\n";
    let _without = Daemon::start(yaml, Some(&gw));
    let r = get_from(
        Some(&cl),
        "198.18.44.1:9465".parse().unwrap(),
        from,
        "/status.json",
        &[&bearer],
    );
    assert_eq!(r.status, 403);
    assert!(String::from_utf8_lossy(&r.body).contains("set admin.status_token"));
}

/// `xgate run` that is expected to fail at start: its exit and output.
fn failed_start(ns: &NetNs, config: &Path) -> String {
    let mut child = ns
        .command(xgate_bin())
        .args(["run", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("xgate started on a taken metrics_address");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    stderr(&out)
}

#[test]
fn the_default_address_taken_is_a_warning_a_configured_one_an_error() {
    if !require_root("the_default_address_taken_is_a_warning_a_configured_one_an_error") {
        return;
    }
    // A namespace of its own: 127.0.0.1:9464 there is this test's alone.
    let ns = NetNs::create("sdef");
    let base = "listeners: [{address: '127.0.0.1:8080'}]\n\
         upstreams: {u: {targets: ['127.0.0.1:9']}}\n\
         routes: [{match: {path_prefix: /}, upstream: u}]\n\
         admin:\n  socket: '{dir}/admin.sock'\n";
    {
        let daemon = Daemon::start(base, Some(&ns));
        let live = get_from(
            Some(&ns),
            "127.0.0.1:9464".parse().unwrap(),
            None,
            "/livez",
            &[],
        );
        assert_eq!(live.status, 200, "the default listener is on");
        assert!(stdout(&daemon.cli(&["status"])).contains("metrics:   127.0.0.1:9464 "));
    }
    let holder = ns.run(|| std::net::TcpListener::bind("127.0.0.1:9464").unwrap());
    let daemon = Daemon::start(base, Some(&ns));
    let status = stdout(&daemon.cli(&["status"]));
    assert!(
        status.contains("metrics:   NOT listening: the default 127.0.0.1:9464 cannot be bound"),
        "{status}"
    );
    let log = daemon.log();
    assert!(
        log.contains("set admin.metrics_address to a free address, or to off"),
        "{log}"
    );
    drop(daemon);

    let dir = TempDir::new("status-taken");
    let config = dir.path().join("xgate.yaml");
    let yaml = base.replace("{dir}", &dir.path().display().to_string());
    std::fs::write(
        &config,
        format!("{yaml}  metrics_address: 127.0.0.1:9464\n"),
    )
    .unwrap();
    let error = failed_start(&ns, &config);
    assert!(
        error.contains("cannot listen on admin.metrics_address 127.0.0.1:9464"),
        "{error}"
    );
    drop(holder);
}

/// Pixels of `rgb` (within a small tolerance, for antialiasing) in the PNG.
fn count_colour(pixels: &[[u8; 3]], rgb: [u8; 3]) -> usize {
    pixels
        .iter()
        .filter(|p| p.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= 3))
        .count()
}

fn decode(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buffer).unwrap();
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    let pixels = buffer[..info.buffer_size()]
        .chunks(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    (info.width, info.height, pixels)
}

#[test]
fn chromium_renders_the_live_page() {
    if chromium().is_none() {
        panic!(
            "chromium is not installed: run `cargo xtask setup` (it installs the Debian package)"
        );
    }
    let root = gateway_userspace::sys::is_root();
    if !root {
        eprintln!(
            "\n*** chromium_renders_the_live_page: NOT root, so no network namespace and no XDP: \
             the page is checked without XDP verdicts. Run as root for the full check. ***\n"
        );
    }
    let listen_port = free_port().port();
    let _pin;
    let (namespaces, ip, attacker, other) = if root {
        (
            Some(namespaces("sbrw", "xsp")),
            "198.18.44.1",
            "198.18.44.2:0",
            "198.18.44.3:0",
        )
    } else {
        (None, "127.0.0.1", "127.0.0.2:0", "127.0.0.3:0")
    };
    let gw = namespaces.as_ref().map(|(g, _)| g);
    let cl = namespaces.as_ref().map(|(_, c)| c);
    let xdp = if root {
        _pin = Some(PinDir::new("status-page"));
        format!(
            "xdp:\n  interfaces: [xsp0]\n  pin_path: {}\n",
            _pin.as_ref().unwrap().0.display()
        )
    } else {
        _pin = None;
        String::new()
    };
    let upstream_addr = free_port();
    let upstream = serve_upstream(gw, upstream_addr);
    let listen: SocketAddr = format!("{ip}:{listen_port}").parse().unwrap();
    let dead: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let metrics: SocketAddr = "127.0.0.1:9464".parse().unwrap();
    let metrics = if root { metrics } else { free_port() };
    let daemon = Daemon::start(
        &config(
            listen,
            upstream,
            dead,
            &format!("  metrics_address: '{metrics}'\n"),
            &xdp,
        ),
        gw,
    );
    let good = if root { "198.18.44.4:0" } else { "127.0.0.1:0" };
    make_traffic(cl, listen, attacker, other, good);
    if let (Some(gw), Some(cl)) = (gw, cl) {
        // Passed in XDP, then denied in XDP by a deny-list entry.
        let to: SocketAddr = "198.18.44.1:7000".parse().unwrap();
        let from: SocketAddr = "198.18.44.4:7001".parse().unwrap();
        assert!(udp_delivery(cl, from, gw, to, 200, 5) > 0);
        let out = daemon.cli(&["blocklist", "add", "198.18.44.4", "--reason", "scanner"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(udp_delivery(cl, from, gw, to, 200, 0), 0);
        // A flooding denied source: dropped in XDP, counted per source
        // (sampled: the count is an estimate, far above what L7 saw).
        assert_eq!(udp_delivery(cl, from, gw, to, 3_000, 0), 0);
        let json = json_when(Some(gw), metrics, |j| {
            j["top_dropped_sources"][0]["source"] == "198.18.44.4"
                && j["top_dropped_sources"][0]["xdp"].as_u64() >= Some(1_500)
        });
        let top = &json["top_dropped_sources"][0];
        assert_eq!(
            (&top["reasons"][0]["layer"], &top["reasons"][0]["reason"]),
            (&Value::from("xdp"), &Value::from("deny_list")),
            "{json:#}"
        );
        assert_eq!(top["last_layer"], "xdp");
        assert!(top["xdp"].as_u64().unwrap() <= 3_200 + 2 * 127, "{json:#}");
        assert_eq!(json["xdp_drop_sample"], 64);
    }
    // Enough samples (every 2 s) for the charts to have lines.
    json_when(gw, metrics, |j| {
        target_state(j, dead) == "unhealthy" && j["history"].as_array().unwrap().len() >= 3
    });

    let browser = Browser::new();
    let url = format!("http://{metrics}/status");
    let dom = browser.dump_dom(gw, &url, 7_000);
    for expected in [
        "class=\"badge bad\">1 of 2 targets down<",
        &format!("<td>{upstream}</td><td><span class=\"badge ok\">healthy</span>"),
        "<td>127.0.0.1:9</td><td><span class=\"badge bad\">DOWN</span>",
        &format!("<td>public</td><td>{listen}</td><td>HTTP + h2</td>"),
        "<td>api</td><td>path_prefix /</td><td>shop</td>",
        &format!(
            "<td>{}</td><td class=\"num\">",
            attacker.trim_end_matches(":0")
        ),
        &format!(
            "<td>{}/32</td><td><span class=\"badge bad\">ban</span></td><td>brute-force</td>",
            attacker.trim_end_matches(":0")
        ),
        "<polyline",
    ] {
        assert!(dom.contains(expected), "no {expected:?} in the DOM:\n{dom}");
    }
    if root {
        for expected in [
            "<td>xsp0</td><td>passed</td><td><span class=\"badge ok\">pass</span>",
            "<td>xsp0</td><td>denied_v4</td><td><span class=\"badge bad\">drop</span>",
            "<td>198.18.44.4/32</td><td><span class=\"badge warn\">deny list</span></td><td>scanner</td>",
            // The flooder tops the dropped sources, with the layer and reason.
            "<tbody><tr><td>198.18.44.4</td><td class=\"num\">",
            "XDP deny_list ≈ ",
        ] {
            assert!(dom.contains(expected), "no {expected:?} in the DOM:\n{dom}");
        }
    } else {
        assert!(
            dom.contains("XDP is off: no xdp.interfaces configured"),
            "{dom}"
        );
    }

    let shots = TempDir::new("status-shot");
    let shot = shots.path().join("status.png");
    browser.screenshot(gw, &url, 7_000, (1280, 1100), &shot);
    let (width, height, pixels) = decode(&shot);
    assert_eq!((width, height), (1280, 1100));
    // The health badges: green on light green, red on light red.
    let (ok, bad) = (
        count_colour(&pixels, [0xda, 0xfb, 0xe1]),
        count_colour(&pixels, [0xfe, 0xe4, 0xe2]),
    );
    assert!(ok > 200, "no green health badges ({ok} pixels)");
    assert!(bad > 200, "no red health badges ({bad} pixels)");
    // Not blank: the header bar, the cards and text.
    assert!(
        count_colour(&pixels, [0x24, 0x29, 0x2f]) > 10_000,
        "no header bar"
    );
    let distinct: std::collections::HashSet<[u8; 3]> = pixels.iter().copied().collect();
    assert!(
        distinct.len() > 50,
        "only {} colours: blank?",
        distinct.len()
    );
    // The picture in docs/, refreshed by a root run (the full page).
    if root {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/status-page.png");
        std::fs::copy(&shot, docs).unwrap();
    }
}
