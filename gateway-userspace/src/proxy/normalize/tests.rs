use super::*;

fn rules() -> Normalization {
    Normalization::default()
}

fn normal(raw: &str) -> Result<String, &'static str> {
    path(raw, &rules()).map(Cow::into_owned)
}

#[test]
fn equivalent_spellings_have_one_normal_form() {
    for spelling in [
        "/admin/users",
        "/public/../admin/users",
        "/public/%2e%2e/admin/users",
        "/public/%2E%2E/admin/users",
        "/public/.%2e/admin/users",
        "//admin/users",
        "/admin//users",
        "///admin///users",
        "/%61dmin/users",
        "/%61%64%6D%69%6E/%75sers",
        "/./admin/./users",
        "/admin/x/../users",
        "/a/b/../../admin/users",
    ] {
        assert_eq!(
            normal(spelling).as_deref(),
            Ok("/admin/users"),
            "{spelling}"
        );
    }
}

#[test]
fn normal_paths_are_borrowed_not_copied() {
    for already in ["/", "/api/v1/users", "/a-b_c~d/e.json", "/x/", "/a.b/c"] {
        assert!(
            matches!(path(already, &rules()), Ok(Cow::Borrowed(p)) if p == already),
            "{already}"
        );
    }
    // The slow path may be taken, but what comes out is the input.
    assert!(matches!(
        path("/.well-known/x", &rules()),
        Ok(Cow::Borrowed(_))
    ));
    assert!(matches!(path("/a%2Fb", &rules()), Ok(Cow::Borrowed(_))));
}

#[test]
fn trailing_slashes_and_dot_segments_at_the_end() {
    for (raw, want) in [
        ("/a/b/", "/a/b/"),
        ("/a/b/.", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/a/..", "/"),
        ("/.", "/"),
        ("/a//", "/a/"),
        ("/a/b//", "/a/b/"),
    ] {
        assert_eq!(normal(raw).as_deref(), Ok(want), "{raw}");
    }
}

#[test]
fn escapes_other_than_unreserved_stay_escaped_in_upper_case() {
    assert_eq!(normal("/a%3ab%20c").as_deref(), Ok("/a%3Ab%20c"));
    assert_eq!(normal("/q%3f").as_deref(), Ok("/q%3F"));
    assert_eq!(normal("/%7e%2d%5f").as_deref(), Ok("/~-_"));
    assert_eq!(normal("/caf%C3%A9").as_deref(), Ok("/caf%C3%A9"));
}

#[test]
fn invalid_paths_are_refused() {
    for bad in [
        "/..",
        "/../admin",
        "/a/../../admin",
        "/%2e%2e/admin",
        "/a/%00/b",
        "/a%0",
        "/a%zz",
        "/a%",
        "/a%g1",
        "admin",
        "",
    ] {
        assert!(normal(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn escaped_slashes_follow_their_rule() {
    let with = |escaped_slashes| Normalization {
        escaped_slashes,
        ..Normalization::default()
    };
    let keep = with(EscapedSlashes::Keep);
    assert_eq!(path("/a%2fb", &keep).unwrap(), "/a%2Fb");
    assert_eq!(path("/a%5cb", &keep).unwrap(), "/a%5Cb");
    assert_eq!(path("/a\\b", &keep).unwrap(), "/a%5Cb");
    // Kept, `..%2F` is one segment's name, not a climb.
    assert_eq!(path("/p/..%2Fadmin", &keep).unwrap(), "/p/..%2Fadmin");

    let decode = with(EscapedSlashes::Decode);
    assert_eq!(path("/a%2Fb", &decode).unwrap(), "/a/b");
    assert_eq!(path("/a%5Cb", &decode).unwrap(), "/a/b");
    assert_eq!(path("/a\\b", &decode).unwrap(), "/a/b");
    assert_eq!(path("/p/..%2Fadmin", &decode).unwrap(), "/admin");
    assert_eq!(
        path("/p%2F..%2F..%2Fadmin", &decode),
        Err("path climbs above the root")
    );

    let reject = with(EscapedSlashes::Reject);
    for bad in ["/a%2Fb", "/a%2fb", "/a%5Cb", "/a\\b"] {
        assert!(path(bad, &reject).is_err(), "{bad}");
    }
    assert_eq!(path("/a/b", &reject).unwrap(), "/a/b");
}

#[test]
fn merging_slashes_can_be_turned_off() {
    let keep_slashes = Normalization {
        merge_slashes: false,
        ..Normalization::default()
    };
    assert!(matches!(
        path("//a//b", &keep_slashes),
        Ok(Cow::Borrowed("//a//b"))
    ));
    assert_eq!(path("/a//../b", &keep_slashes).unwrap(), "/a/b");
    assert_eq!(path("/a/./b", &keep_slashes).unwrap(), "/a/b");
}

fn parts(version: Version, target: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = http::Request::builder().version(version).uri(target);
    for (name, value) in headers {
        b = b.header(*name, *value);
    }
    b.body(()).unwrap().into_parts().0
}

#[test]
fn the_request_target_becomes_origin_form_with_its_authority_in_host() {
    let mut p = parts(
        Version::HTTP_11,
        "http://public.example/x/../y?q=1",
        &[("host", "internal.example")],
    );
    assert_eq!(request(&mut p, &rules()).unwrap().as_deref(), Some("/y"));
    assert_eq!(p.headers[HOST], "public.example");
    assert_eq!(p.uri, "/y?q=1");
    assert!(p.uri.authority().is_none());

    let mut p = parts(
        Version::HTTP_11,
        "http://public.example:8080/a",
        &[("host", "x")],
    );
    assert_eq!(request(&mut p, &rules()).unwrap(), None);
    assert_eq!(
        (
            p.headers[HOST].to_str().unwrap(),
            p.uri.to_string().as_str()
        ),
        ("public.example:8080", "/a")
    );

    for bad in ["ftp://public.example/a", "http://user@public.example/a"] {
        let mut p = parts(Version::HTTP_11, bad, &[("host", "public.example")]);
        assert!(request(&mut p, &rules()).is_err(), "{bad}");
    }
}

#[test]
fn http2_host_must_agree_with_the_authority() {
    let mut p = parts(
        Version::HTTP_2,
        "https://a.example/x",
        &[("host", "A.example")],
    );
    assert!(request(&mut p, &rules()).is_ok());
    let mut p = parts(
        Version::HTTP_2,
        "https://a.example/x",
        &[("host", "b.example")],
    );
    assert!(matches!(
        request(&mut p, &rules()),
        Err(Rejection::BadRequest(_))
    ));
}

#[test]
fn host_must_be_a_host_and_port() {
    for good in [
        "a.example",
        "a.example:8080",
        "A-1.example.",
        "10.0.0.1:80",
        "[::1]",
        "[2001:db8::1]:443",
        "svc_internal",
        "a:",
    ] {
        let mut p = parts(Version::HTTP_11, "/", &[("host", good)]);
        assert!(request(&mut p, &rules()).is_ok(), "{good}");
    }
    for bad in [
        "",
        "a b",
        "a.example:99999",
        "a.example:8o",
        "user@a.example",
        "[::1",
        "[zz]",
        "[::1]x",
        "a/b",
        "a.example:80:80",
        ":80",
    ] {
        let mut p = parts(Version::HTTP_11, "/", &[("host", bad)]);
        assert!(request(&mut p, &rules()).is_err(), "{bad:?}");
    }
    let mut two = parts(Version::HTTP_2, "/", &[("host", "a"), ("host", "a")]);
    assert!(request(&mut two, &rules()).is_err());
}

#[test]
fn asterisk_form_is_only_for_options() {
    let mut p = parts(Version::HTTP_11, "*", &[("host", "a")]);
    p.method = Method::OPTIONS;
    assert_eq!(request(&mut p, &rules()).unwrap(), None);
    p.method = Method::GET;
    assert!(request(&mut p, &rules()).is_err());
}

#[test]
fn forwarding_the_original_refuses_paths_not_in_normal_form() {
    let original = Normalization {
        forward: ForwardPath::Original,
        ..Normalization::default()
    };
    let mut p = parts(Version::HTTP_11, "/a/../b", &[("host", "a")]);
    assert!(request(&mut p, &original).is_err());
    let mut p = parts(Version::HTTP_11, "/b?x=..", &[("host", "a")]);
    assert_eq!(request(&mut p, &original).unwrap(), None);
    assert_eq!(p.uri, "/b?x=..");
}

#[test]
fn the_query_is_kept_as_sent() {
    let mut p = parts(Version::HTTP_11, "//a/%62?x=%2e%2e/&y=//", &[("host", "a")]);
    assert_eq!(request(&mut p, &rules()).unwrap().as_deref(), Some("/a/b"));
    assert_eq!(p.uri, "/a/b?x=%2e%2e/&y=//");
}

#[test]
fn underscore_headers_follow_their_rule() {
    let headers = || {
        let mut h = HeaderMap::new();
        h.insert("transfer_encoding", "chunked".parse().unwrap());
        h.insert("content_length", "5".parse().unwrap());
        h.insert("x-ok", "1".parse().unwrap());
        h
    };
    let mut h = headers();
    underscore_headers(&mut h, UnderscoreHeaders::Drop).unwrap();
    assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-ok"]);
    let mut h = headers();
    assert!(underscore_headers(&mut h, UnderscoreHeaders::Reject).is_err());
    let mut h = headers();
    underscore_headers(&mut h, UnderscoreHeaders::Allow).unwrap();
    assert_eq!(h.len(), 3);
}
