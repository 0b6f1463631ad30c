//! Key material made at run time in the run's temp dir: the TLS
//! certificate of the HTTP/2 benchmarks (rcgen, through the test support
//! library's CA), and the RS256 key pair, JWKS and signed tokens of the
//! policy benchmarks (the openssl CLI: ring, the crypto backend the
//! workspace builds with, cannot generate RSA keys). Nothing is reused
//! across runs and nothing leaves the temp dir.

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};

use crate::sys::{self, command};

/// A self-signed certificate for `localhost` / 127.0.0.1 and its key.
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
    pub private: PathBuf,
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
    let private = dir.join("jwt-private.pem");
    let public = dir.join("jwt-public.pem");
    sys::run(command(
        "openssl",
        [
            "genpkey".as_ref(),
            "-algorithm".as_ref(),
            "RSA".as_ref(),
            "-pkeyopt".as_ref(),
            "rsa_keygen_bits:2048".as_ref(),
            "-out".as_ref(),
            private.as_os_str(),
        ],
    ))
    .context("generating the RS256 key with openssl")?;
    sys::run(command(
        "openssl",
        [
            "pkey".as_ref(),
            "-in".as_ref(),
            private.as_os_str(),
            "-pubout".as_ref(),
            "-out".as_ref(),
            public.as_os_str(),
        ],
    ))?;
    let text = sys::run(command(
        "openssl",
        [
            "rsa".as_ref(),
            "-in".as_ref(),
            private.as_os_str(),
            "-noout".as_ref(),
            "-text".as_ref(),
        ],
    ))?
    .stdout;
    let (modulus, exponent) = rsa_numbers(&text)?;
    let jwks = format!(
        r#"{{"keys":[{{"kty":"RSA","alg":"RS256","use":"sig","kid":"{KID}","n":"{}","e":"{}"}}]}}"#,
        base64url(&modulus),
        base64url(&exponent)
    );
    Ok(JwtKeys {
        private,
        public,
        jwks,
    })
}

/// Modulus and public exponent (big-endian, no leading zeros) from
/// `openssl rsa -noout -text`.
fn rsa_numbers(text: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut modulus_hex = String::new();
    let mut in_modulus = false;
    let mut exponent: Option<u64> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("modulus:") {
            in_modulus = true;
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("publicExponent:") {
            in_modulus = false;
            exponent = rest.split_whitespace().next().and_then(|v| v.parse().ok());
            continue;
        }
        if in_modulus {
            if trimmed.chars().all(|c| c.is_ascii_hexdigit() || c == ':') && !trimmed.is_empty() {
                modulus_hex.extend(trimmed.chars().filter(char::is_ascii_hexdigit));
            } else {
                in_modulus = false;
            }
        }
    }
    let exponent = exponent.context("no publicExponent in openssl's output")?;
    if modulus_hex.len() < 512 {
        bail!("could not read the RSA modulus from openssl's output");
    }
    let mut modulus: Vec<u8> = modulus_hex
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .filter(|p| p.len() == 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .context("odd number of hex digits in the RSA modulus")
        })
        .collect::<Result<_>>()?;
    while modulus.first() == Some(&0) {
        modulus.remove(0);
    }
    let exponent: Vec<u8> = exponent
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    Ok((modulus, exponent))
}

/// A JWT signed RS256 with `keys.private`: `sub` = `subject`, `iss` =
/// [`ISSUER`], `aud` = [`AUDIENCE`], issued now, expiring in a day.
pub fn rs256_token(keys: &JwtKeys, dir: &Path, subject: &str) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let header = format!(r#"{{"alg":"RS256","typ":"JWT","kid":"{KID}"}}"#);
    let claims = format!(
        r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","sub":"{subject}","iat":{now},"exp":{}}}"#,
        now + 86_400
    );
    let signing_input = format!(
        "{}.{}",
        base64url(header.as_bytes()),
        base64url(claims.as_bytes())
    );
    let input = dir.join(format!("jwt-{subject}.txt"));
    let signature = dir.join(format!("jwt-{subject}.sig"));
    std::fs::write(&input, &signing_input)?;
    sys::run(command(
        "openssl",
        [
            "dgst".as_ref(),
            "-sha256".as_ref(),
            "-sign".as_ref(),
            keys.private.as_os_str(),
            "-out".as_ref(),
            signature.as_os_str(),
            input.as_os_str(),
        ],
    ))
    .context("signing the JWT with openssl")?;
    let signature = std::fs::read(&signature)?;
    if signature.len() != 256 {
        bail!(
            "openssl made a {}-byte RS256 signature, expected 256",
            signature.len()
        );
    }
    Ok(format!("{signing_input}.{}", base64url(&signature)))
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

/// Base64url without padding (RFC 7515 §2).
pub fn base64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc4648_vectors() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64url(&[1, 0, 1]), "AQAB");
    }

    #[test]
    fn rsa_numbers_from_openssl_text() {
        let line = |first: bool| {
            let mut l = String::from("    ");
            if first {
                l.push_str("00:");
            }
            l.push_str(&"ab:".repeat(15));
            l.push_str("ab\n");
            l
        };
        let mut text = String::from("Private-Key: (2048 bit, 2 primes)\nmodulus:\n");
        for i in 0..16 {
            text.push_str(&line(i == 0));
        }
        text.push_str("publicExponent: 65537 (0x10001)\nprivateExponent:\n    01:02\n");
        let (n, e) = rsa_numbers(&text).unwrap();
        assert_eq!(e, vec![1, 0, 1]);
        assert_eq!(n.len(), 256);
        assert!(n.iter().all(|b| *b == 0xab));
    }

    #[test]
    fn tampering_changes_the_signature_only() {
        let token = "aaaa.bbbb.ccccccccccccccccccccc";
        let bad = tampered(token);
        assert_ne!(bad, token);
        assert!(bad.starts_with("aaaa.bbbb."));
    }
}
