//! `xgate validate` as an nginx or HAProxy user expects it: every error
//! points at its line and column; nothing a YAML parser would silently drop
//! or the kernel would refuse at bind time gets through; a bad regex is
//! shown as it was written.

use xgate_tests::{
    process::{stderr, stdout, xgate},
    TempDir,
};

/// `xgate validate` on `yaml`: (exit code, stderr).
fn validate(yaml: &str) -> (i32, String) {
    let dir = TempDir::new("lines");
    let path = dir.path().join("x.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = xgate(&["validate", "-c", path.to_str().unwrap()]);
    (out.status.code().unwrap(), stderr(&out) + &stdout(&out))
}

fn refused(yaml: &str) -> String {
    let (code, output) = validate(yaml);
    assert_eq!(code, 1, "{output}");
    output
}

#[test]
fn a_duplicated_key_is_refused_with_both_lines() {
    let e = refused(
        "listeners: [{address: '127.0.0.1:18400'}]\n\
         upstreams:\n  \
           users: {targets: ['127.0.0.1:18401']}\n  \
           orders: {targets: ['127.0.0.1:18402']}\n  \
           users: {targets: ['127.0.0.1:18403']}\n\
         routes: [{match: {path_prefix: /}, upstream: users}]\n",
    );
    assert!(
        e.contains("upstreams.users: duplicate key `users` at line 5, column 3; first defined at line 3, column 3"),
        "{e}"
    );
}

#[test]
fn listeners_that_cannot_all_be_bound_are_refused() {
    let e = refused(
        "listeners:\n\
         \x20 - {name: public, address: '0.0.0.0:28080'}\n\
         \x20 - {name: public, address: '127.0.0.1:28080'}\n\
         \x20 - {address: '[::]:28081'}\n\
         \x20 - {address: '127.0.0.1:28081'}\n\
         \x20 - {address: '127.0.0.1:28082'}\n\
         \x20 - {address: '127.0.0.2:28082'}\n",
    );
    assert!(e.contains("3 errors"), "{e}");
    assert!(
        e.contains("listeners[1].address: 127.0.0.1:28080 overlaps listeners[0] (0.0.0.0:28080): a wildcard address takes its port on every address of its family"),
        "{e}"
    );
    assert!(
        e.contains(
            "listeners[1].name: 'public' is already the name of listeners[0] (line 3, column 6)"
        ),
        "{e}"
    );
    assert!(
        e.contains("listeners[3].address: 127.0.0.1:28081 overlaps listeners[2] ([::]:28081)"),
        "{e}"
    );
}

#[test]
fn semantic_errors_carry_line_and_column() {
    let e = refused(
        "listeners: [{address: '127.0.0.1:18410'}]\n\
         upstreams: {u: {targets: ['127.0.0.1:18411']}}\n\
         routes:\n\
         \x20 - {match: {path_prefix: /a}, upstream: u}\n\
         \x20 - match:\n\
         \x20     path_prefix: /b\n\
         \x20   upstream: nope\n\
         xdp:\n\
         \x20 deny: [10.0.0.0/8, 10.0.0.1/8]\n",
    );
    assert!(
        e.contains("routes[1].upstream: unknown upstream 'nope' (defined: u) (line 7, column 5)"),
        "{e}"
    );
    assert!(
        e.contains("xdp.deny[1]: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8 or 10.0.0.1/32? (line 9, column 22)"),
        "{e}"
    );
}

#[test]
fn cidr_errors_name_the_value_and_the_rule() {
    let base = "listeners: [{address: '127.0.0.1:18420'}]\n";
    let e = refused(&format!("{base}xdp: {{deny: ['10.0.0.0/33']}}\n"));
    assert!(
        e.contains("xdp.deny[0]: invalid CIDR '10.0.0.0/33': prefix length 33 is more than 32 for IPv4 (line 2, column"),
        "{e}"
    );
    let e = refused(&format!("{base}trusted_proxies: ['2001:db8::/129']\n"));
    assert!(
        e.contains("trusted_proxies[0]: invalid CIDR '2001:db8::/129': prefix length 129 is more than 128 for IPv6"),
        "{e}"
    );
    // IPv4-mapped entries in the file mean their IPv4 prefix.
    let (code, out) = validate(&format!(
        "{base}xdp: {{deny: ['::ffff:10.0.0.0/104', '10.0.0.0/8']}}\n"
    ));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("xdp.deny[1]: 10.0.0.0/8 is already listed at xdp.deny[0]"),
        "{out}"
    );
    let (code, out) = validate(&format!("{base}xdp: {{deny: ['::ffff:10.0.0.0/104']}}\n"));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("note: xdp.deny[0]: ::ffff:10.0.0.0/104 is an IPv4-mapped IPv6 address; IPv4 clients are matched as IPv4, so it is stored as 10.0.0.0/8 (line 2, column 14)"),
        "{out}"
    );
}

#[test]
fn a_bad_regex_is_shown_as_written_with_the_caret_in_place() {
    let e = refused(
        "listeners: [{address: '127.0.0.1:18430'}]\n\
         upstreams: {u: {targets: ['127.0.0.1:18431']}}\n\
         routes:\n\
         \x20 - match: {path_regex: '/users/(?P<id>[0-9+'}\n\
         \x20   upstream: u\n\
         \x20   rewrite: /u/{id}\n",
    );
    assert!(e.contains("1 error"), "no follow-on error: {e}");
    assert!(!e.contains("^(?:"), "xgate's anchors shown: {e}");
    let lines: Vec<&str> = e.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("routes[0].match.path_regex: invalid regular expression: unclosed character class (line 4, column 13)"))
        .unwrap_or_else(|| panic!("{e}"));
    let pattern = lines[at + 1];
    let caret = lines[at + 2];
    assert_eq!(pattern.trim(), "/users/(?P<id>[0-9+", "{e}");
    // The caret sits under the unclosed '['.
    assert_eq!(caret.find('^'), pattern.find('['), "{e}");
}
