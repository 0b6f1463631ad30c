//! Key material made at run time in the run's temp dir: the TLS
//! certificate of the HTTP/2 benchmarks (rcgen, through the test support
//! library's CA), and the RS256 key pair, JWKS and signed tokens of the
//! policy benchmarks (the openssl CLI: ring, the crypto backend the
//! workspace builds with, cannot generate RSA keys). Nothing is reused
//! across runs and nothing leaves the temp dir.

use std::path::{Path, PathBuf};

use anyhow::Result;
use xgate_tests::jwt::SigningKey;

/// A certificate for `localhost` / 127.0.0.1 and its key.
pub struct TlsFiles {
    pub cert: PathBuf,
    /// PKCS#8 PEM.
    pub key: PathBuf,
    /// Certificate then key in one file (HAProxy's `crt`).
    pub bundle: PathBuf,
    pub description: String,
}

/// An ECDSA P-256 certificate for `localhost` and 127.0.0.1, issued (with
/// rcgen, as the integration tests' certificates are) by a CA made for this
/// run only and thrown away. Clients of the benchmarks do not verify it.
pub fn tls_certificate(dir: &Path) -> Result<TlsFiles> {
    let leaf = xgate_tests::tls::TestCa::named("xgate-bench run CA").leaf(
        &["localhost", "127.0.0.1"],
        dir,
        "tls",
    );
    let bundle = dir.join("tls-bundle.pem");
    let mut pem = std::fs::read(&leaf.cert)?;
    pem.extend(leaf.key_pem.as_bytes());
    std::fs::write(&bundle, pem)?;
    Ok(TlsFiles {
        cert: leaf.cert,
        key: leaf.key,
        bundle,
        description: "ECDSA P-256 certificate for localhost and 127.0.0.1, made with rcgen \
                      at run time (issued by a CA of the run's own)"
            .into(),
    })
}

/// The RS256 signing key, its public half, and the JWKS that holds it.
pub struct JwtKeys {
    key: SigningKey,
    /// SubjectPublicKeyInfo PEM (HAProxy's `jwt_verify`).
    pub public: PathBuf,
    /// `{"keys":[{...}]}` on one line (Envoy's `local_jwks`).
    pub jwks: String,
}

/// Key id of the bench's signing key.
pub const KID: &str = "xgate-bench";
/// `iss` of every token, checked by every peer.
pub const ISSUER: &str = "https://issuer.xgate-bench.test";
/// `aud` of every token, checked by every peer.
pub const AUDIENCE: &str = "xgate-bench-api";

/// A fresh 2048-bit RSA key pair and its JWKS.
pub fn jwt_keys(dir: &Path) -> Result<JwtKeys> {
    let key = SigningKey::rsa(dir, KID);
    let public = dir.join("jwt-public.pem");
    std::fs::write(&public, &key.public_pem)?;
    let jwks = xgate_tests::jwt::jwks(&[&key]);
    Ok(JwtKeys { key, public, jwks })
}

/// A JWT signed RS256 with the bench's key: `sub` = `subject`, `iss` =
/// [`ISSUER`], `aud` = [`AUDIENCE`], issued now, expiring in a day.
pub fn rs256_token(keys: &JwtKeys, subject: &str) -> String {
    let now = xgate_tests::jwt::now();
    keys.key.sign(&serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + 86_400,
    }))
}

/// The same token with one character of its signature changed (must be
/// refused by every peer).
pub fn tampered(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    // Somewhere inside the signature, not in its last character (whose low
    // bits may be padding).
    let i = bytes.len() - 10;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("base64url is ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tampering_changes_the_signature_only() {
        let token = "aaaa.bbbb.ccccccccccccccccccccc";
        let bad = tampered(token);
        assert_ne!(bad, token);
        assert!(bad.starts_with("aaaa.bbbb."));
    }
}
