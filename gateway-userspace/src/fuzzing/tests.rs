//! Every fuzz target over its seeds (fuzz/seeds/TARGET/), on stable: the
//! targets compile, run, and hold on the inputs they start from. Inputs
//! that once crashed a target are seeds too, and have their own tests
//! beside the code they broke.

use std::{fs, path::PathBuf};

use super::TARGETS;

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut seeds: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("seed entry").path();
            let bytes = fs::read(&path).expect("seed");
            (path, bytes)
        })
        .collect();
    seeds.sort();
    seeds
}

#[test]
fn every_target_holds_on_its_seeds() {
    for (name, target) in TARGETS {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "{name} has no seeds");
        for (path, bytes) in seeds {
            let outcome = std::panic::catch_unwind(|| target(&bytes));
            assert!(outcome.is_ok(), "{name} failed on {}", path.display());
        }
    }
}

#[test]
fn every_target_has_a_fuzz_target() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
    for (name, _) in TARGETS {
        let source = fs::read_to_string(dir.join(format!("{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz/fuzz_targets/{name}.rs: {e}"));
        assert!(
            source.contains("gateway_userspace::fuzzing::"),
            "{name}.rs calls its body in gateway_userspace::fuzzing"
        );
    }
}

/// The jwt target's oracle is reached: a seed token is accepted by the
/// policy it fuzzes (so the target gets past the signature and the claims).
#[test]
fn the_jwt_target_accepts_its_valid_seed() {
    use http::{header::AUTHORIZATION, HeaderValue, Request};

    use crate::policy::{Authenticator, Check};

    let (_, seed) = seeds("jwt")
        .into_iter()
        .find(|(path, _)| path.ends_with("token_valid"))
        .expect("the token_valid seed");
    let token = std::str::from_utf8(&seed[1..]).unwrap();
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.headers.insert(
        AUTHORIZATION,
        HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    let accepted = match super::tokens::policy().check(&mut parts) {
        Check::Now(result) => result.map(drop).map_err(|e| e.description),
        Check::Later(_) => Err("no JWKS is configured: nothing to wait for"),
    };
    assert_eq!(accepted, Ok(()));
}
