//! Signing keys for JWT tests and the policy benchmarks, made at run time
//! with the openssl CLI (as an identity provider's would be: ring, the
//! workspace's crypto backend, cannot generate RSA keys), and tokens signed
//! with them.

use std::{path::Path, process::Command};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

pub struct SigningKey {
    pub algorithm: Algorithm,
    pub kid: String,
    encoding: EncodingKey,
    /// The public half, PEM.
    pub public_pem: String,
    /// The public half as a JWK.
    pub jwk: Option<serde_json::Value>,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (the openssl CLI is part of the test setup)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl SigningKey {
    /// A 2048-bit RSA key for RS256, with its JWK.
    pub fn rsa(dir: &Path, kid: &str) -> Self {
        let private = dir.join(format!("{kid}.key"));
        let private = private.to_str().unwrap();
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            private,
        ]);
        let public = openssl(&["pkey", "-in", private, "-pubout"]);
        // OpenSSL 3 writes an RSA key as PKCS#1 here; others as PKCS#8.
        let der = openssl(&["pkey", "-in", private, "-outform", "DER"]);
        let pair = ring::signature::RsaKeyPair::from_der(&der)
            .or_else(|_| ring::signature::RsaKeyPair::from_pkcs8(&der))
            .expect("an RSA key pair");
        let numbers = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
        let pem = std::fs::read(private).unwrap();
        Self {
            algorithm: Algorithm::RS256,
            kid: kid.to_string(),
            encoding: EncodingKey::from_rsa_pem(&pem).unwrap(),
            public_pem: String::from_utf8(public).unwrap(),
            jwk: Some(serde_json::json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(&numbers.n), "e": URL_SAFE_NO_PAD.encode(&numbers.e),
            })),
        }
    }

    /// A P-256 key for ES256, with its JWK.
    pub fn ec(dir: &Path, kid: &str) -> Self {
        let private = dir.join(format!("{kid}.key"));
        let private = private.to_str().unwrap();
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            private,
        ]);
        let public = openssl(&["pkey", "-in", private, "-pubout"]);
        let der = openssl(&["pkey", "-in", private, "-pubout", "-outform", "DER"]);
        // SubjectPublicKeyInfo ends with the uncompressed point 04 || x || y.
        let (x, y) = der[der.len() - 64..].split_at(32);
        let pem = std::fs::read(private).unwrap();
        Self {
            algorithm: Algorithm::ES256,
            kid: kid.to_string(),
            encoding: EncodingKey::from_ec_pem(&pem).unwrap(),
            public_pem: String::from_utf8(public).unwrap(),
            jwk: Some(serde_json::json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
            })),
        }
    }

    /// A token with `claims`, signed with this key, `kid` in its header.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// A JWKS document of the keys' public halves.
pub fn jwks(keys: &[&SigningKey]) -> String {
    serde_json::json!({ "keys": keys.iter().filter_map(|k| k.jwk.clone()).collect::<Vec<_>>() })
        .to_string()
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_rsa_keys_jwk_verifies_its_tokens() {
        let dir = crate::TempDir::new("jwt-rsa");
        let key = SigningKey::rsa(dir.path(), "k1");
        let other = SigningKey::rsa(dir.path(), "k2");
        let token = key.sign(&serde_json::json!({"sub": "alice", "exp": now() + 60}));
        let verify = |signer: &SigningKey| {
            let jwk = signer.jwk.as_ref().expect("an RSA JWK");
            assert_eq!(
                (jwk["kty"].as_str(), jwk["e"].as_str()),
                (Some("RSA"), Some("AQAB"))
            );
            let decoding = jsonwebtoken::DecodingKey::from_rsa_components(
                jwk["n"].as_str().unwrap(),
                jwk["e"].as_str().unwrap(),
            )
            .unwrap();
            jsonwebtoken::decode::<serde_json::Value>(
                &token,
                &decoding,
                &jsonwebtoken::Validation::new(Algorithm::RS256),
            )
        };
        assert_eq!(verify(&key).unwrap().claims["sub"], "alice");
        assert!(verify(&other).is_err());
    }
}
