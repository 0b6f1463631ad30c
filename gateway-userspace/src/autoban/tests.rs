use super::*;

fn state(yaml: &str) -> State {
    let config = Config::from_yaml(
        &format!(
            "listeners: [{{address: '127.0.0.1:8080'}}]\ntrusted_proxies: [10.0.0.0/8]\n{yaml}"
        ),
        "t",
    )
    .unwrap();
    let a = config.auto_ban.clone().unwrap();
    State {
        rules: a.rules,
        trusted_proxies: config.trusted_proxies.clone(),
        max_per_minute: a.max_bans_per_minute,
        counters: Counters::new(a.max_tracked_sources),
        cap_start: None,
        made_in_window: 0,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const AUTH: Signal = Signal::AuthFailure { policy: "key-auth" };

fn bans(verdicts: &[Verdict]) -> Vec<(String, IpNet)> {
    verdicts
        .iter()
        .filter_map(|v| match v {
            Verdict::Ban { rule, source, .. } => Some((rule.clone(), *source)),
            _ => None,
        })
        .collect()
}

#[test]
fn bans_on_the_count_within_the_window() {
    let mut s = state(
        "auto_ban: {rules: [{name: brute, signal: auth_failure, count: 3, within: 60s, ban: 10m, reason: too many}]}",
    );
    let t0 = Instant::now();
    let client = ip("192.0.2.7");
    assert_eq!(s.count(client, AUTH, t0, || false), vec![Verdict::Counted]);
    assert_eq!(s.count(client, AUTH, t0, || false), vec![Verdict::Counted]);
    let third = s.count(client, AUTH, t0, || false);
    assert_eq!(
        third,
        vec![Verdict::Ban {
            rule: "brute".into(),
            source: "192.0.2.7/32".parse().unwrap(),
            ttl: Duration::from_secs(600),
            reason: "too many".into(),
        }]
    );
    // The count starts again after a ban.
    assert_eq!(s.count(client, AUTH, t0, || false), vec![Verdict::Counted]);
}

#[test]
fn spread_out_signals_do_not_ban() {
    let mut s =
        state("auto_ban: {rules: [{signal: auth_failure, count: 3, within: 10s, ban: 1m}]}");
    let t0 = Instant::now();
    for i in 0..10 {
        let v = s.count(
            ip("192.0.2.7"),
            AUTH,
            t0 + Duration::from_secs(15 * i),
            || false,
        );
        assert_eq!(v, vec![Verdict::Counted]);
    }
}

#[test]
fn signal_and_policy_filters() {
    let mut s = state(
        "auto_ban: {rules: [\
         {name: bots, signal: bot_denied, count: 1, within: 1s, ban: 1h},\
         {name: jwt, signal: auth_failure, policy: jwt, count: 1, within: 1s, ban: 1h}]}",
    );
    let t0 = Instant::now();
    let c = ip("198.51.100.1");
    // key-auth failures and other refusals match neither rule.
    assert!(s.count(c, AUTH, t0, || false).is_empty());
    let limited = Signal::Denied {
        policy: "rate-limiting",
        reason: "rate_limited",
    };
    assert!(s.count(c, limited, t0, || false).is_empty());
    let bot = Signal::Denied {
        policy: "bot-detection",
        reason: "bot_denied",
    };
    assert_eq!(bans(&s.count(c, bot, t0, || false))[0].0, "bots");
    let jwt = Signal::AuthFailure { policy: "jwt" };
    assert_eq!(bans(&s.count(c, jwt, t0, || false))[0].0, "jwt");
}

#[test]
fn network_scope_counts_and_bans_the_network() {
    let mut s = state(
        "auto_ban: {rules: [{signal: auth_failure, count: 2, within: 60s, ban: 1m, scope: network}]}",
    );
    let t0 = Instant::now();
    assert_eq!(
        s.count(ip("203.0.113.1"), AUTH, t0, || false),
        vec![Verdict::Counted]
    );
    // Another address of the same /24 completes the count.
    let v = s.count(ip("203.0.113.99"), AUTH, t0, || false);
    assert_eq!(
        bans(&v),
        vec![("auth_failure".into(), "203.0.113.0/24".parse().unwrap())]
    );
    s.count(ip("2001:db8:1:2::1"), AUTH, t0, || false);
    let v = s.count(ip("2001:db8:1:2:ffff::5"), AUTH, t0, || false);
    assert_eq!(bans(&v)[0].1, "2001:db8:1:2::/64".parse::<IpNet>().unwrap());
    // An IPv4-mapped peer is banned as its IPv4 network.
    assert_eq!(
        scope(canonical(ip("::ffff:192.0.2.9")), (24, 64)),
        "192.0.2.0/24".parse::<IpNet>().unwrap()
    );
}

#[test]
fn trusted_proxies_and_allow_listed_sources_are_exempt() {
    let mut s = state("auto_ban: {rules: [{signal: auth_failure, count: 1, within: 1s, ban: 1m}]}");
    let t0 = Instant::now();
    assert_eq!(
        s.count(ip("10.1.2.3"), AUTH, t0, || false),
        vec![Verdict::Exempt {
            rule: "auth_failure".into()
        }]
    );
    assert_eq!(
        s.count(ip("192.0.2.1"), AUTH, t0, || true),
        vec![Verdict::Exempt {
            rule: "auth_failure".into()
        }]
    );
    assert_eq!(bans(&s.count(ip("192.0.2.1"), AUTH, t0, || false)).len(), 1);
}

#[test]
fn the_cap_limits_bans_per_minute() {
    let mut s = state(
        "auto_ban: {max_bans_per_minute: 3, rules: [{signal: auth_failure, count: 1, within: 1s, ban: 1m}]}",
    );
    let t0 = Instant::now();
    let mut banned = 0;
    let mut capped = 0;
    for i in 0..10u8 {
        match &s.count(IpAddr::from([192, 0, 2, i]), AUTH, t0, || false)[0] {
            Verdict::Ban { .. } => banned += 1,
            Verdict::Capped { .. } => capped += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((banned, capped), (3, 7));
    // A minute later the allowance is back.
    let later = t0 + Duration::from_secs(61);
    assert_eq!(
        bans(&s.count(ip("192.0.2.200"), AUTH, later, || false)).len(),
        1
    );
}

#[test]
fn config_errors_are_clear() {
    let err = Config::from_yaml(
        "listeners: [{address: '127.0.0.1:8080'}]\n\
         auto_ban: {max_bans_per_minute: 0, rules: [\
         {signal: auth_fail, count: 0, within: 0s, ban: 1m, network_v4: 4},\
         {signal: bot_denied, count: 1, within: 1s, ban: 1m},\
         {signal: bot_denied, count: 2, within: 1s, ban: 1m}]}\n",
        "t",
    )
    .unwrap_err()
    .to_string();
    for expected in [
        "auto_ban.max_bans_per_minute: must be at least 1",
        "auto_ban.rules[0].signal: unknown signal 'auth_fail' (one of: auth_failure, rate_limited",
        "auto_ban.rules[0].count: must be at least 1",
        "auto_ban.rules[0].within: must be greater than zero",
        "auto_ban.rules[0].network_v4: must be 8 to 32",
        "auto_ban.rules[2].name: 'bot_denied' names another rule too",
    ] {
        assert!(err.contains(expected), "{expected} not in {err}");
    }
}

struct Lab {
    dir: std::path::PathBuf,
}

impl Lab {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xgate-autoban-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self { dir }
    }

    fn config(&self, rules: &str) -> Config {
        Config::from_yaml(
            &format!(
                "listeners: [{{address: '127.0.0.1:1'}}]\nstate_dir: {}\n{rules}",
                self.dir.display()
            ),
            "t",
        )
        .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn bans_go_to_the_deny_list_and_reloads_keep_unchanged_counts() {
    let lab = Lab::new("reload");
    let rules = "auto_ban: {rules: [\
                 {name: a, signal: auth_failure, count: 3, within: 60s, ban: 10m},\
                 {name: b, signal: bot_denied, count: 2, within: 60s, ban: 10m}]}\n";
    let config = lab.config(rules);
    let lists = Arc::new(SourceLists::open(&config, None).unwrap());
    let auto_ban = AutoBan::new(&config, lists.clone(), Arc::new(Metrics::default()));
    let client = ip("192.0.2.7");
    let bot = Signal::Denied {
        policy: "bot-detection",
        reason: "bot_denied",
    };
    auto_ban.record(client, AUTH);
    auto_ban.record(client, AUTH);
    auto_ban.record(client, bot);
    // Rule b changes, rule a does not: a's two signals are kept, b's gone.
    auto_ban.reconfigure(&lab.config(
        "auto_ban: {rules: [\
         {name: a, signal: auth_failure, count: 3, within: 60s, ban: 10m},\
         {name: b, signal: bot_denied, count: 2, within: 60s, ban: 1h}]}\n",
    ));
    auto_ban.record(client, bot);
    assert!(lists.bans().is_empty());
    auto_ban.record(client, AUTH);
    let bans = lists.bans();
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].cidr, "192.0.2.7/32".parse::<IpNet>().unwrap());
    assert_eq!(bans[0].rule.as_deref(), Some("a"));
    assert_eq!(lists.denies(client), Some(bans[0].cidr));
    // Rule b reaching its count for a source already banned: no error, no
    // second entry.
    auto_ban.record(client, bot);
    assert_eq!(lists.bans().len(), 1);
    // An allow-listed source is never banned.
    let friend = ip("198.51.100.1");
    lists
        .add(
            crate::xdp::ListKind::Allow,
            "198.51.100.0/24".parse().unwrap(),
            None,
            None,
        )
        .unwrap();
    for _ in 0..5 {
        auto_ban.record(friend, AUTH);
    }
    assert_eq!(lists.bans().len(), 1);
    // No rules after a reload: nothing is counted.
    auto_ban.reconfigure(&lab.config(""));
    assert!(!auto_ban.is_active());
    for _ in 0..5 {
        auto_ban.record(ip("203.0.113.1"), AUTH);
    }
    assert_eq!(lists.bans().len(), 1);
}
