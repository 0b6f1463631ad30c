use aws_lc_rs::{
    encoding::AsDer,
    rand::SystemRandom,
    rsa::{KeyPair, KeySize, PublicKey},
    signature::{
        EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING,
        RSA_PKCS1_SHA256, RSA_PSS_SHA256,
    },
};
use jsonwebtoken::jwk::Jwk;

use super::*;

const MESSAGE: &[u8] = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn jwk(value: serde_json::Value) -> Jwk {
    serde_json::from_value(value).unwrap()
}

/// n and e (magnitudes) of a PKCS#1 `RSAPublicKey`, read with the
/// simplest DER reader that does: what aws-lc wrote is well formed.
fn modulus_and_exponent(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    fn element(der: &[u8]) -> (&[u8], &[u8]) {
        let (len, skip) = match der[1] {
            short if short < 0x80 => (short as usize, 2),
            long => {
                let count = (long & 0x7f) as usize;
                let len = der[2..2 + count]
                    .iter()
                    .fold(0usize, |acc, b| acc << 8 | *b as usize);
                (len, 2 + count)
            }
        };
        (&der[skip..skip + len], &der[skip + len..])
    }
    let (sequence, _) = element(der);
    let (n, rest) = element(sequence);
    let (e, _) = element(rest);
    let magnitude = |int: &[u8]| int.strip_prefix(&[0]).unwrap_or(int).to_vec();
    (magnitude(n), magnitude(e))
}

fn pem(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der))
}

#[test]
fn rsa_keys_from_pem_and_jwk_verify_their_signatures_only() {
    let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let rng = SystemRandom::new();
    let mut pkcs1 = vec![0; pair.public_modulus_len()];
    pair.sign(&RSA_PKCS1_SHA256, &rng, MESSAGE, &mut pkcs1)
        .unwrap();
    let mut pss = vec![0; pair.public_modulus_len()];
    pair.sign(&RSA_PSS_SHA256, &rng, MESSAGE, &mut pss).unwrap();

    let spki = pair.public_key().as_der().unwrap();
    let public = PublicKey::from_der(spki.as_ref()).unwrap();
    let (n, e) = modulus_and_exponent(public.as_ref());
    let from_jwk = VerifyingKey::from_jwk(
        &jwk(serde_json::json!({"kty": "RSA", "n": b64(&n), "e": b64(&e)})),
        Algorithm::RS256,
    )
    .unwrap();
    for key in [
        VerifyingKey::from_pem(
            Algorithm::RS256,
            pem("PUBLIC KEY", spki.as_ref()).as_bytes(),
        )
        .unwrap(),
        VerifyingKey::from_pem(
            Algorithm::RS256,
            pem("RSA PUBLIC KEY", public.as_ref()).as_bytes(),
        )
        .unwrap(),
        from_jwk,
    ] {
        assert!(key.verify(MESSAGE, &pkcs1));
        assert!(!key.verify(b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJib2IifQ", &pkcs1));
        assert!(
            !key.verify(MESSAGE, &pss),
            "a PS256 signature is not an RS256 one"
        );
        let mut flipped = pkcs1.clone();
        flipped[10] ^= 1;
        assert!(!key.verify(MESSAGE, &flipped));
    }
    let ps256 = VerifyingKey::from_pem(
        Algorithm::PS256,
        pem("PUBLIC KEY", spki.as_ref()).as_bytes(),
    )
    .unwrap();
    assert!(ps256.verify(MESSAGE, &pss));
    assert!(!ps256.verify(MESSAGE, &pkcs1));
}

#[test]
fn the_pkcs1_encoding_of_jwk_components_is_what_aws_lc_writes() {
    let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let public = PublicKey::from_der(pair.public_key().as_der().unwrap().as_ref()).unwrap();
    let (n, e) = modulus_and_exponent(public.as_ref());
    assert_eq!(n.len(), 256, "the magnitude, without a sign byte");
    assert_eq!(rsa_public_key_der(&n, &e), public.as_ref());
    // Leading zeros go; a leading 1 bit gets a zero byte; short lengths.
    assert_eq!(
        rsa_public_key_der(&[0, 0x80, 1], &[1, 0, 1]),
        [0x30, 0x0a, 0x02, 0x03, 0x00, 0x80, 0x01, 0x02, 0x03, 0x01, 0x00, 0x01]
    );
}

#[test]
fn ecdsa_and_ed25519_keys_from_jwk_and_pem() {
    let rng = SystemRandom::new();
    let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let signature = ec.sign(&rng, MESSAGE).unwrap();
    let point = ec.public_key().as_ref();
    assert_eq!(point.len(), 65);
    let key = VerifyingKey::from_jwk(
        &jwk(serde_json::json!({"kty": "EC", "crv": "P-256",
            "x": b64(&point[1..33]), "y": b64(&point[33..])})),
        Algorithm::ES256,
    )
    .unwrap();
    assert!(key.verify(MESSAGE, signature.as_ref()));
    assert!(!key.verify(b"other", signature.as_ref()));
    let spki = ec.public_key().as_der().unwrap();
    let key = VerifyingKey::from_pem(
        Algorithm::ES256,
        pem("PUBLIC KEY", spki.as_ref()).as_bytes(),
    )
    .unwrap();
    assert!(key.verify(MESSAGE, signature.as_ref()));
    assert!(
        VerifyingKey::from_pem(
            Algorithm::RS256,
            pem("PUBLIC KEY", spki.as_ref()).as_bytes()
        )
        .is_err(),
        "an EC key is never an RSA key"
    );

    let ed = Ed25519KeyPair::generate().unwrap();
    let signature = ed.sign(MESSAGE);
    let key = VerifyingKey::from_jwk(
        &jwk(
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(ed.public_key().as_ref())}),
        ),
        Algorithm::EdDSA,
    )
    .unwrap();
    assert!(key.verify(MESSAGE, signature.as_ref()));
    assert!(!key.verify(b"other", signature.as_ref()));
}

#[test]
fn hmac_keys_verify_in_constant_time_and_only_their_algorithm() {
    let secret = b"a secret of at least thirty-two bytes!!";
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        MESSAGE,
    );
    let key = VerifyingKey::hmac(Algorithm::HS256, secret).unwrap();
    assert!(key.verify(MESSAGE, tag.as_ref()));
    assert!(!key.verify(MESSAGE, &tag.as_ref()[..31]));
    let hs384 = VerifyingKey::hmac(Algorithm::HS384, secret).unwrap();
    assert!(!hs384.verify(MESSAGE, tag.as_ref()));
    assert!(VerifyingKey::hmac(Algorithm::RS256, secret).is_err());
}

#[test]
fn what_is_not_a_public_key_says_so() {
    let error = VerifyingKey::from_pem(Algorithm::RS256, b"hello").unwrap_err();
    assert!(error.contains("not PEM"), "{error}");
    let error = VerifyingKey::from_pem(
        Algorithm::RS256,
        pem("PRIVATE KEY", &[0x30, 0x00]).as_bytes(),
    )
    .unwrap_err();
    assert!(
        error.contains("`PRIVATE KEY` block is not a public key"),
        "{error}"
    );
    let error = VerifyingKey::from_jwk(
        &jwk(serde_json::json!({"kty": "oct", "k": "c2VjcmV0"})),
        Algorithm::HS256,
    )
    .unwrap_err();
    assert!(error.contains("symmetric"), "{error}");
    let error = VerifyingKey::from_jwk(
        &jwk(serde_json::json!({"kty": "EC", "crv": "P-256", "x": "AQ", "y": "AQ"})),
        Algorithm::ES256,
    )
    .unwrap_err();
    assert!(error.contains("wrong length"), "{error}");
}
