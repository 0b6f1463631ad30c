use super::*;

fn router(routes: &str) -> Router {
    let config = Config::from_yaml(
        &format!(
            "listeners: [{{address: '127.0.0.1:1'}}]\n\
             upstreams: {{a: {{targets: ['127.0.0.1:2']}}, b: {{targets: ['127.0.0.1:3']}}}}\n\
             routes:\n{routes}"
        ),
        "t",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let resolution = crate::proxy::Resolution::new(&config, None);
    let upstreams =
        crate::proxy::compile_upstreams(&config, &Default::default(), None, &resolution).unwrap();
    let policies = crate::policy::PolicySet::compile(&config, None, &Default::default()).unwrap();
    Router::new(&config, &upstreams, &policies, &Default::default()).unwrap()
}

fn request(method: &str, uri: &str, host: Option<&str>, headers: &[(&str, &str)]) -> Parts {
    let mut builder = http::Request::builder().method(method).uri(uri);
    if let Some(host) = host {
        builder = builder.header("host", host);
    }
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(()).unwrap().into_parts().0
}

fn pick(
    r: &Router,
    method: &str,
    uri: &str,
    host: Option<&str>,
    headers: &[(&str, &str)],
) -> Option<(String, String)> {
    let request = request(method, uri, host, headers);
    r.route(&request).map(|m| {
        (
            m.route.metrics.name().to_string(),
            m.route
                .upstream_path(request.uri.path_and_query())
                .as_str()
                .to_string(),
        )
    })
}

fn name(r: &Router, uri: &str) -> Option<String> {
    pick(r, "GET", uri, Some("example.com"), &[]).map(|(n, _)| n)
}

#[tokio::test]
async fn longest_prefix_wins_and_prefixes_are_plain_strings() {
    let r = router(
        "  - {name: root, match: {path_prefix: /}, upstream: a}\n\
         \x20 - {name: api, match: {path_prefix: /api}, upstream: b, strip_prefix: true}\n\
         \x20 - {name: api-v2, match: {path_prefix: /api/v2/}, upstream: a}\n",
    );
    assert_eq!(name(&r, "/api/v2/x").as_deref(), Some("api-v2"));
    assert_eq!(name(&r, "/api/v1").as_deref(), Some("api"));
    assert_eq!(name(&r, "/apis").as_deref(), Some("api"));
    assert_eq!(name(&r, "/other").as_deref(), Some("root"));
}

#[tokio::test]
async fn exact_beats_regex_beats_prefix() {
    let r = router(
        "  - {name: prefix, match: {path_prefix: /users}, upstream: a}\n\
         \x20 - {name: regex, match: {path_regex: '/users/[0-9]+'}, upstream: a}\n\
         \x20 - {name: exact, match: {path: /users/42}, upstream: a}\n",
    );
    assert_eq!(name(&r, "/users/42").as_deref(), Some("exact"));
    assert_eq!(name(&r, "/users/7").as_deref(), Some("regex"));
    assert_eq!(
        name(&r, "/users/7/x").as_deref(),
        Some("prefix"),
        "regexes are anchored"
    );
    assert_eq!(name(&r, "/nothing"), None);
}

#[tokio::test]
async fn hosts_exact_beats_wildcard_beats_none() {
    let r = router(
        "  - {name: any, match: {path_prefix: /}, upstream: a}\n\
         \x20 - {name: wild, match: {hosts: ['*.example.com'], path_prefix: /}, upstream: a}\n\
         \x20 - {name: deeper, match: {hosts: ['*.eu.example.com'], path_prefix: /}, upstream: a}\n\
         \x20 - {name: api, match: {hosts: [API.example.com], path_prefix: /}, upstream: a}\n",
    );
    let host = |h: &str| pick(&r, "GET", "/", Some(h), &[]).map(|(n, _)| n);
    assert_eq!(
        host("api.example.com:8443").as_deref(),
        Some("api"),
        "port ignored, case-insensitive"
    );
    assert_eq!(host("www.example.com").as_deref(), Some("wild"));
    assert_eq!(host("fr.eu.example.com").as_deref(), Some("deeper"));
    assert_eq!(
        host("example.com").as_deref(),
        Some("any"),
        "a wildcard needs a subdomain"
    );
    assert_eq!(host("other.test").as_deref(), Some("any"));
    // Host is the one authority the router reads: normalizing puts an
    // absolute-form target's or HTTP/2's authority there first.
    let absolute = r
        .route(&request(
            "GET",
            "https://other.test/x",
            Some("api.example.com"),
            &[],
        ))
        .unwrap();
    assert_eq!(absolute.route.metrics.name(), "api");
}

#[tokio::test]
async fn connect_matches_only_routes_that_name_it() {
    let r = router("  - {name: any, match: {path_prefix: /}, upstream: a}\n");
    assert!(!r.allows_connect());
    assert!(pick(&r, "CONNECT", "/x", Some("a"), &[]).is_none());
    assert!(pick(&r, "GET", "/x", Some("a"), &[]).is_some());
    let r = router(
        "  - {name: any, match: {path_prefix: /}, upstream: a}\n\
         \x20 - {name: tunnel, match: {path_prefix: /t, methods: [CONNECT]}, upstream: b}\n",
    );
    assert!(r.allows_connect());
    assert_eq!(
        pick(&r, "CONNECT", "/t", Some("a"), &[]).unwrap().0,
        "tunnel"
    );
    assert!(pick(&r, "CONNECT", "/x", Some("a"), &[]).is_none());
}

#[tokio::test]
async fn host_specificity_ranks_before_path_specificity() {
    let r = router(
        "  - {name: exact-path, match: {path: /login}, upstream: a}\n\
         \x20 - {name: host, match: {hosts: [admin.example.com], path_prefix: /}, upstream: a}\n",
    );
    assert_eq!(
        pick(&r, "GET", "/login", Some("admin.example.com"), &[])
            .unwrap()
            .0,
        "host"
    );
    assert_eq!(
        pick(&r, "GET", "/login", Some("www.example.com"), &[])
            .unwrap()
            .0,
        "exact-path"
    );
}

#[tokio::test]
async fn methods_and_headers_narrow_and_rank() {
    let r = router(
        "  - {name: all, match: {path_prefix: /}, upstream: a}\n\
         \x20 - {name: writes, match: {path_prefix: /, methods: [POST, PUT]}, upstream: a}\n\
         \x20 - {name: canary, match: {path_prefix: /, headers: [{name: x-env, value: canary}]}, upstream: b}\n\
         \x20 - {name: debug, match: {path_prefix: /, methods: [GET], headers: [{name: x-debug, present: true}, {name: x-user, regex: 'admin-[0-9]+'}]}, upstream: b}\n",
    );
    let p = |method: &str, headers: &[(&str, &str)]| {
        pick(&r, method, "/x", Some("h"), headers).unwrap().0
    };
    assert_eq!(p("GET", &[]), "all");
    assert_eq!(p("POST", &[]), "writes");
    assert_eq!(p("GET", &[("x-env", "canary")]), "canary");
    assert_eq!(
        p("GET", &[("x-env", "Canary")]),
        "all",
        "header values are case-sensitive"
    );
    assert_eq!(
        p("GET", &[("x-debug", "1"), ("x-user", "admin-7")]),
        "debug"
    );
    assert_eq!(
        p("GET", &[("x-debug", "1"), ("x-user", "admin-7x")]),
        "all",
        "header regexes are anchored"
    );
}

#[tokio::test]
async fn equal_specificity_goes_to_the_first_in_the_file() {
    let r = router(
        "  - {name: first, match: {path_prefix: /a, methods: [GET]}, upstream: a}\n\
         \x20 - {name: second, match: {path_prefix: /a, headers: [{name: x, present: false}]}, upstream: a}\n",
    );
    assert_eq!(name(&r, "/a").as_deref(), Some("first"));
}

#[tokio::test]
async fn strip_prefix_and_rewrite_templates_keep_the_query() {
    let r = router(
        "  - {name: api, match: {path_prefix: /api}, upstream: a, strip_prefix: true}\n\
         \x20 - {name: user, match: {path_regex: '/u/(?P<id>[0-9]+)/(.*)'}, upstream: a, rewrite: '/v2/users/{id}/{2}'}\n\
         \x20 - {name: plain, match: {path: /p}, upstream: a}\n",
    );
    let path = |uri: &str| pick(&r, "GET", uri, Some("h"), &[]).unwrap().1;
    assert_eq!(path("/api/users?id=1"), "/users?id=1");
    assert_eq!(path("/api"), "/");
    assert_eq!(path("/api?x=1"), "/?x=1");
    assert_eq!(path("/apis"), "/s");
    assert_eq!(path("/u/42/profile?full=1"), "/v2/users/42/profile?full=1");
    assert_eq!(path("/p?q"), "/p?q");
}

#[tokio::test]
async fn ten_thousand_routes_are_indexed() {
    let mut routes = String::new();
    for i in 0..10_000 {
        routes.push_str(&format!(
            "  - {{name: r{i}, match: {{path_prefix: /svc{i}/}}, upstream: a}}\n"
        ));
    }
    routes.push_str("  - {name: exact, match: {path: /svc5/health}, upstream: a}\n");
    let r = router(&routes);
    assert_eq!(r.len(), 10_001);
    assert_eq!(name(&r, "/svc9999/x").as_deref(), Some("r9999"));
    assert_eq!(name(&r, "/svc5/health").as_deref(), Some("exact"));
    assert_eq!(name(&r, "/svc10000/x"), None);
}
