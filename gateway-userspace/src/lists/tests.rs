use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

struct Fixture {
    dir: std::path::PathBuf,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xgate-lists-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self { dir }
    }

    fn config(&self, xdp: &str) -> Config {
        Config::from_yaml(
            &format!(
                "listeners: [{{address: '127.0.0.1:1'}}]\nstate_dir: {}\nxdp: {xdp}\n",
                self.dir.display()
            ),
            "t",
        )
        .unwrap()
    }

    fn open(&self, xdp: &str) -> SourceLists {
        SourceLists::open(&self.config(xdp), None).unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn parse_cidr_explains_what_is_wrong() {
    assert_eq!(parse_cidr("203.0.113.0/24"), Ok(net("203.0.113.0/24")));
    assert_eq!(parse_cidr("198.51.100.7"), Ok(net("198.51.100.7/32")));
    assert_eq!(parse_cidr("2001:db8::/32"), Ok(net("2001:db8::/32")));
    let e = parse_cidr("300.1.2.3/33").unwrap_err();
    assert!(
        e.contains("'300.1.2.3' is not an IPv4 or IPv6 address"),
        "{e}"
    );
    let e = parse_cidr("10.0.0.0/33").unwrap_err();
    assert!(
        e.contains("prefix length 33 is more than 32 for IPv4"),
        "{e}"
    );
    let e = parse_cidr("2001:db8::/129").unwrap_err();
    assert!(
        e.contains("prefix length 129 is more than 128 for IPv6"),
        "{e}"
    );
}

#[test]
fn add_remove_persist_and_reload() {
    let f = Fixture::new("persist");
    let lists = f.open("{deny: [192.0.2.0/24]}");
    lists
        .add(
            ListKind::Deny,
            net("203.0.113.0/24"),
            Some("abuse".into()),
            None,
        )
        .unwrap();
    lists
        .add(
            ListKind::Deny,
            net("2001:db8::/48"),
            None,
            Some(Duration::from_secs(3600)),
        )
        .unwrap();
    lists
        .add(ListKind::Allow, net("203.0.113.7/32"), None, None)
        .unwrap();
    assert_eq!(
        lists.denies("203.0.113.9".parse().unwrap()),
        Some(net("203.0.113.0/24"))
    );
    assert_eq!(
        lists.denies("203.0.113.7".parse().unwrap()),
        None,
        "allow wins over deny"
    );
    assert_eq!(
        lists.denies("192.0.2.1".parse().unwrap()),
        Some(net("192.0.2.0/24"))
    );

    let reopened = f.open("{}");
    let cidrs: Vec<IpNet> = reopened
        .list(ListKind::Deny)
        .iter()
        .map(|l| l.cidr)
        .collect();
    assert_eq!(cidrs, vec![net("203.0.113.0/24"), net("2001:db8::/48")]);
    assert_eq!(
        reopened.list(ListKind::Deny)[0].reason.as_deref(),
        Some("abuse")
    );
    assert_eq!(reopened.list(ListKind::Allow).len(), 1);

    reopened
        .remove(ListKind::Deny, net("203.0.113.0/24"))
        .unwrap();
    assert_eq!(reopened.denies("203.0.113.9".parse().unwrap()), None);
    assert_eq!(f.open("{}").list(ListKind::Deny).len(), 1);
}

#[test]
fn legacy_state_file_is_carried_over() {
    let f = Fixture::new("legacy");
    std::fs::create_dir_all(&f.dir).unwrap();
    std::fs::write(
        f.dir.join("blocklist.json"),
        r#"{"version":1,"entries":[{"cidr":"203.0.113.0/24","added_at":1}]}"#,
    )
    .unwrap();
    let lists = f.open("{}");
    assert_eq!(lists.list(ListKind::Deny)[0].cidr, net("203.0.113.0/24"));
    lists
        .add(ListKind::Allow, net("198.51.100.1/32"), None, None)
        .unwrap();
    assert!(
        !f.dir.join("blocklist.json").exists(),
        "legacy file replaced"
    );
    assert_eq!(f.open("{}").list(ListKind::Deny).len(), 1);
}

#[test]
fn bad_changes_are_refused_and_change_nothing() {
    let f = Fixture::new("refuse");
    let lists = f.open("{deny: [192.0.2.0/24]}");
    lists
        .add(ListKind::Deny, net("203.0.113.0/24"), None, None)
        .unwrap();
    let before = std::fs::read_to_string(f.dir.join("lists.json")).unwrap();

    assert!(matches!(
        lists.add(ListKind::Deny, net("10.0.0.1/8"), None, None),
        Err(ListError::Invalid(_))
    ));
    assert!(matches!(
        lists.add(ListKind::Deny, net("203.0.113.0/24"), None, None),
        Err(ListError::Duplicate { .. })
    ));
    assert!(matches!(
        lists.add(ListKind::Deny, net("192.0.2.0/24"), None, None),
        Err(ListError::Duplicate { .. })
    ));
    assert_eq!(
        lists.remove(ListKind::Deny, net("192.0.2.0/24")),
        Err(ListError::FromConfig {
            cidr: net("192.0.2.0/24"),
            key: "deny"
        })
    );
    assert_eq!(
        lists.remove(ListKind::Allow, net("203.0.113.0/24")),
        Err(ListError::NotFound {
            cidr: net("203.0.113.0/24"),
            list: "allowlist"
        })
    );

    assert_eq!(
        std::fs::read_to_string(f.dir.join("lists.json")).unwrap(),
        before
    );
    assert_eq!(lists.list(ListKind::Deny).len(), 2);
}

#[test]
fn persist_failure_rolls_back() {
    let f = Fixture::new("rollback");
    let lists = f.open("{}");
    // A directory where the state file should be makes the rename fail.
    std::fs::create_dir_all(f.dir.join("lists.json").join("x")).unwrap();
    let err = lists
        .add(ListKind::Deny, net("203.0.113.0/24"), None, None)
        .unwrap_err();
    assert!(matches!(err, ListError::Persist(_)), "{err:?}");
    assert!(lists.list(ListKind::Deny).is_empty());
    assert_eq!(lists.denies("203.0.113.1".parse().unwrap()), None);
}

#[test]
fn corrupt_state_file_is_an_error_not_an_empty_list() {
    let f = Fixture::new("corrupt");
    std::fs::create_dir_all(&f.dir).unwrap();
    std::fs::write(f.dir.join("lists.json"), "{not json").unwrap();
    let err = SourceLists::open(&f.config("{}"), None).err().unwrap();
    assert!(err.contains("is not a valid state file"), "{err}");
}

#[test]
fn an_unreadable_state_file_is_an_error_not_an_empty_list() {
    // Only a missing file means "no lists yet": one that is there but
    // cannot be read (here a directory in its place) must stop the start,
    // or the gateway would come up without its blocklist.
    for name in ["lists.json", "blocklist.json"] {
        let f = Fixture::new(&format!("unreadable-{name}"));
        std::fs::create_dir_all(f.dir.join(name)).unwrap();
        let err = SourceLists::open(&f.config("{}"), None).err().unwrap();
        assert!(err.contains("cannot read") && err.contains(name), "{err}");
    }
}

#[test]
fn expired_entries_are_reaped() {
    let f = Fixture::new("reap");
    let lists = f.open("{}");
    lists
        .add(
            ListKind::Deny,
            net("203.0.113.0/24"),
            None,
            Some(Duration::from_secs(1)),
        )
        .unwrap();
    // Rewind the stored expiry instead of sleeping.
    lists
        .inner
        .lock()
        .unwrap()
        .runtime
        .get_mut(&ListKind::Deny)
        .unwrap()
        .get_mut(&net("203.0.113.0/24"))
        .unwrap()
        .expires_at = Some(1);
    assert_eq!(lists.reap_expired(), 1);
    assert!(lists.list(ListKind::Deny).is_empty());
    assert!(f.open("{}").list(ListKind::Deny).is_empty());
}

#[test]
fn reload_replaces_config_entries_and_keeps_runtime_ones() {
    let f = Fixture::new("reload");
    let lists = f.open("{deny: [192.0.2.0/24]}");
    lists
        .add(ListKind::Deny, net("203.0.113.0/24"), None, None)
        .unwrap();
    lists
        .reload(&f.config("{deny: [198.51.100.0/24], allow: [198.51.100.9/32]}"))
        .unwrap();
    let deny: Vec<IpNet> = lists.list(ListKind::Deny).iter().map(|l| l.cidr).collect();
    assert_eq!(deny, vec![net("198.51.100.0/24"), net("203.0.113.0/24")]);
    assert_eq!(lists.denies("192.0.2.1".parse().unwrap()), None);
    assert_eq!(
        lists.denies("198.51.100.1".parse().unwrap()),
        Some(net("198.51.100.0/24"))
    );
    assert_eq!(lists.denies("198.51.100.9".parse().unwrap()), None);
}

#[test]
fn overruled_changes_are_made_and_reported() {
    let f = Fixture::new("overruled");
    let lists = f.open("{allow: [192.0.2.0/24]}");
    let added = lists
        .add_reporting(ListKind::Deny, net("192.0.2.9/32"), None, None, false)
        .unwrap();
    assert_eq!(added.entry.cidr, net("192.0.2.9/32"));
    assert_eq!(
        added.warnings,
        ["192.0.2.9/32 is inside allowlist entry 192.0.2.0/24 (from the config file, xdp.allow); \
          allow wins, so these sources are NOT blocked until that entry is removed"]
    );
    // Made all the same: listed, and still not denied (allow wins).
    assert_eq!(lists.list(ListKind::Deny).len(), 1);
    assert_eq!(lists.denies("192.0.2.9".parse().unwrap()), None);

    let added = lists
        .add_reporting(ListKind::Allow, net("198.51.100.0/24"), None, None, false)
        .unwrap();
    assert!(added.warnings.is_empty(), "{:?}", added.warnings);
    // A deny entry around an allow entry: the allowed sources stay allowed.
    let added = lists
        .add_reporting(ListKind::Deny, net("198.51.0.0/16"), None, None, false)
        .unwrap();
    assert_eq!(
        added.warnings,
        [
            "allowlist entry 198.51.100.0/24 (added at runtime) lies inside 198.51.0.0/16; \
          allow wins, so those sources stay allowed"
        ]
    );
    let added = lists
        .add_reporting(ListKind::Allow, net("198.51.7.0/24"), None, None, false)
        .unwrap();
    assert_eq!(
        added.warnings,
        [
            "this un-blocks 198.51.7.0/24 of blocklist entry 198.51.0.0/16 (added at runtime); \
          allow wins over deny"
        ]
    );
}

#[test]
fn ipv4_mapped_entries_are_stored_as_ipv4_and_a_whole_family_needs_force() {
    let f = Fixture::new("mapped");
    let lists = f.open("{}");
    let entry = lists
        .add(ListKind::Deny, net("::ffff:127.0.0.5/128"), None, None)
        .unwrap();
    assert_eq!(entry.cidr, net("127.0.0.5/32"));
    assert_eq!(
        lists.denies("127.0.0.5".parse().unwrap()),
        Some(net("127.0.0.5/32"))
    );
    assert_eq!(
        lists.denies("::ffff:127.0.0.5".parse().unwrap()),
        Some(net("127.0.0.5/32")),
        "a dual-stack peer"
    );

    for (kind, cidr) in [(ListKind::Deny, "0.0.0.0/0"), (ListKind::Allow, "::/0")] {
        match lists.add(kind, net(cidr), None, None) {
            Err(ListError::Invalid(message)) => {
                assert!(message.contains("--force"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
    lists
        .add_reporting(ListKind::Deny, net("::/0"), None, None, true)
        .unwrap();
    assert!(lists.denies("2001:db8::1".parse().unwrap()).is_some());
}

#[test]
fn bans_are_deny_entries_with_a_rule_lifted_by_address() {
    let f = Fixture::new("bans");
    let lists = f.open("{deny: [192.0.2.0/24]}");
    assert!(!lists.has_runtime_denies());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    lists.announce_to(tx);
    lists
        .add_ban(
            net("203.0.113.0/24"),
            "brute force".into(),
            Duration::from_secs(60),
            "brute-force",
        )
        .unwrap();
    assert!(lists.has_runtime_denies());
    assert_eq!(
        lists.denies("203.0.113.9".parse().unwrap()),
        Some(net("203.0.113.0/24"))
    );
    let ban = &lists.bans()[0];
    assert_eq!(ban.rule.as_deref(), Some("brute-force"));
    assert!(
        matches!(rx.try_recv(), Ok(Change::Put(ListKind::Deny, e)) if e.cidr == net("203.0.113.0/24"))
    );
    let listed = lists.list(ListKind::Deny);
    assert_eq!(listed[1].source, "ban");
    // Persisted with its rule.
    drop(lists);
    let lists = f.open("{deny: [192.0.2.0/24]}");
    assert_eq!(lists.bans()[0].rule.as_deref(), Some("brute-force"));
    // A CLI entry is not a ban; an address lifts the ban covering it.
    lists
        .add(ListKind::Deny, net("198.51.100.1/32"), None, None)
        .unwrap();
    assert_eq!(lists.bans().len(), 1);
    assert_eq!(
        lists.lift_ban(net("198.51.100.1/32")),
        Err(ListError::NoBan(net("198.51.100.1/32")))
    );
    assert_eq!(
        lists.lift_ban(net("203.0.113.77/32")).unwrap().cidr,
        net("203.0.113.0/24")
    );
    assert!(lists.bans().is_empty());
    assert_eq!(lists.denies("203.0.113.9".parse().unwrap()), None);
}

#[test]
fn remote_changes_apply_without_being_announced_again() {
    let f = Fixture::new("remote");
    let lists = f.open("{deny: [192.0.2.0/24]}");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    lists.announce_to(tx);
    let entry = Entry {
        cidr: net("203.0.113.5/32"),
        reason: Some("from b".into()),
        added_at: 1,
        expires_at: None,
        rule: None,
    };
    assert_eq!(
        lists.apply_remote(&Change::Put(ListKind::Deny, entry.clone())),
        Ok(true)
    );
    // The same again is a no-op; a config entry is left to the config.
    assert_eq!(
        lists.apply_remote(&Change::Put(ListKind::Deny, entry.clone())),
        Ok(false)
    );
    let config_entry = Entry {
        cidr: net("192.0.2.0/24"),
        ..entry.clone()
    };
    assert_eq!(
        lists.apply_remote(&Change::Put(ListKind::Deny, config_entry)),
        Ok(false)
    );
    assert_eq!(lists.runtime_entries(ListKind::Deny), vec![entry.clone()]);
    // Enforced at L7 at once, and persisted like a local change.
    let source = "203.0.113.5".parse().unwrap();
    assert_eq!(lists.denies(source), Some(net("203.0.113.5/32")));
    assert_eq!(
        f.open("{deny: [192.0.2.0/24]}")
            .runtime_entries(ListKind::Deny),
        vec![entry]
    );
    assert_eq!(
        lists.apply_remote(&Change::Remove(ListKind::Deny, net("203.0.113.5/32"))),
        Ok(true)
    );
    assert!(lists.runtime_entries(ListKind::Deny).is_empty());
    assert_eq!(lists.denies(source), None);
    assert!(f
        .open("{deny: [192.0.2.0/24]}")
        .runtime_entries(ListKind::Deny)
        .is_empty());
    assert!(rx.try_recv().is_err(), "nothing announced");
}

#[test]
fn an_expiring_entry_expires_in_the_kernel_after_the_same_time_as_on_the_wall_clock() {
    let now = SystemTime::now();
    let unix_now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let entry = Entry {
        cidr: net("192.0.2.0/24"),
        reason: None,
        added_at: unix_now,
        expires_at: Some(unix_now + 3600),
        rule: None,
    };
    let before = crate::sys::monotonic_now();
    let rule = rule_for(&entry, now);
    let after = crate::sys::monotonic_now();
    // `now` has a fraction of a second that the whole seconds of
    // `expires_at` drop: up to a second less than an hour remains.
    let lowest = (before + Duration::from_secs(3599)).as_nanos() as u64;
    let highest = (after + Duration::from_secs(3600)).as_nanos() as u64;
    assert!(
        (lowest..=highest).contains(&rule.expires_at_ns),
        "{} not within [{lowest}, {highest}]",
        rule.expires_at_ns
    );
    let permanent = Entry {
        expires_at: None,
        ..entry
    };
    assert_eq!(rule_for(&permanent, now).expires_at_ns, 0);
}
