//! The key that signs access tokens, and its public half as a JWK set:
//! ES256 (EC P-256) or RS256 (RSA, 2048 bits or more). Tokens are signed
//! with ring directly, so the parsed key is kept; jsonwebtoken's encoder
//! would parse the PEM again for every token (for RSA, a check of the whole
//! key each time).

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use base64::{
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
    Engine,
};
use ring::{
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair},
};
use rustls::pki_types::PrivateKeyDer;
use serde_json::{json, Value};

use crate::policy::consumers::sha256;

/// The key the gateway makes for itself when the config names none, in
/// `state_dir`.
pub const GENERATED_KEY_FILE: &str = "oauth2_signing_key.pem";

pub struct SigningKey {
    key: Key,
    /// RFC 7638 thumbprint of the public key: the same key always has the
    /// same `kid`, across restarts and machines.
    kid: String,
    /// The public JWK, with `kid`, `alg` and `use`.
    jwk: Value,
    rng: SystemRandom,
}

enum Key {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.algorithm())
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// The key in a PEM file (PKCS#8, or PKCS#1 for RSA, or SEC1 for EC).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let pem = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let der = rustls_pemfile::private_key(&mut &pem[..])
            .map_err(|e| format!("not PEM: {e}"))?
            .ok_or("no private key in the PEM text")?;
        let rng = SystemRandom::new();
        let key = match der {
            PrivateKeyDer::Pkcs8(der) => {
                let der = der.secret_pkcs8_der();
                match EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &rng,
                ) {
                    Ok(key) => Key::Es256(key),
                    Err(ec_error) => match RsaKeyPair::from_pkcs8(der) {
                        Ok(key) => Key::Rs256(key),
                        Err(rsa_error) => {
                            return Err(format!(
                                "neither an EC P-256 key ({ec_error}) nor an RSA key of 2048 \
                                 bits or more ({rsa_error})"
                            ))
                        }
                    },
                }
            }
            PrivateKeyDer::Pkcs1(der) => Key::Rs256(
                RsaKeyPair::from_der(der.secret_pkcs1_der())
                    .map_err(|e| format!("RSA key: {e} (2048 bits or more are needed)"))?,
            ),
            PrivateKeyDer::Sec1(der) => Key::Es256(
                EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &sec1_p256_to_pkcs8(der.secret_sec1_der()),
                    &rng,
                )
                .map_err(|e| format!("EC key: {e} (only P-256 is used)"))?,
            ),
            _ => return Err("unsupported private key type".into()),
        };
        Ok(Self::new(key, rng))
    }

    /// The key in `state_dir`, made there (ES256, mode 0600) when there is
    /// none yet: tokens signed before a restart still verify after it.
    pub fn generated(state_dir: &Path) -> Result<Self, String> {
        let path = state_dir.join(GENERATED_KEY_FILE);
        match fs::read(&path) {
            Ok(pem) => return Self::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "cannot generate an EC key".to_string())?;
        write_private(&path, &pem("PRIVATE KEY", pkcs8.as_ref()))?;
        tracing::info!(path = %path.display(), "made the OAuth 2.0 signing key (ES256)");
        Self::from_pem(&fs::read(&path).map_err(|e| e.to_string())?)
    }

    fn new(key: Key, rng: SystemRandom) -> Self {
        // RFC 7638 §3.2: the required members, in lexicographic order, no
        // white space.
        let (thumbprint_input, mut jwk) = match &key {
            Key::Es256(key) => {
                let point = key.public_key().as_ref();
                // Uncompressed point: 0x04, then x and y (32 bytes each).
                let (x, y) = (
                    URL_SAFE_NO_PAD.encode(&point[1..33]),
                    URL_SAFE_NO_PAD.encode(&point[33..65]),
                );
                (
                    format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
                    json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}),
                )
            }
            Key::Rs256(key) => {
                let components = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(key.public());
                let (n, e) = (
                    URL_SAFE_NO_PAD.encode(&components.n),
                    URL_SAFE_NO_PAD.encode(&components.e),
                );
                (
                    format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
                    json!({"kty": "RSA", "n": n, "e": e}),
                )
            }
        };
        let kid = URL_SAFE_NO_PAD.encode(sha256(thumbprint_input.as_bytes()));
        let alg = match key {
            Key::Es256(_) => "ES256",
            Key::Rs256(_) => "RS256",
        };
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!(alg);
        jwk["use"] = json!("sig");
        Self { key, kid, jwk, rng }
    }

    pub fn algorithm(&self) -> &'static str {
        match self.key {
            Key::Es256(_) => "ES256",
            Key::Rs256(_) => "RS256",
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `{"keys": [the public key]}`.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk] })
    }

    /// A JWS compact token of `claims` with `typ` in its header (RFC 9068:
    /// `at+jwt` for access tokens).
    pub fn sign(&self, typ: &str, claims: &Value) -> Result<String, String> {
        let header = json!({"alg": self.algorithm(), "typ": typ, "kid": self.kid});
        let mut token = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = match &self.key {
            Key::Es256(key) => key
                .sign(&self.rng, token.as_bytes())
                .map_err(|_| "ECDSA signing failed")?
                .as_ref()
                .to_vec(),
            Key::Rs256(key) => {
                let mut out = vec![0; key.public().modulus_len()];
                key.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &self.rng,
                    token.as_bytes(),
                    &mut out,
                )
                .map_err(|_| "RSA signing failed")?;
                out
            }
        };
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(token)
    }
}

/// A SEC1 `ECPrivateKey` (what `openssl ecparam -genkey` writes) inside the
/// PKCS#8 structure ring reads: `SEQUENCE { INTEGER 0, SEQUENCE {
/// id-ecPublicKey, prime256v1 }, OCTET STRING { sec1 } }`.
fn sec1_p256_to_pkcs8(sec1: &[u8]) -> Vec<u8> {
    const PREFIX: &[u8] = b"\x02\x01\x00\
        \x30\x13\
        \x06\x07\x2a\x86\x48\xce\x3d\x02\x01\
        \x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07";
    let octets = der(0x04, &[sec1]);
    der(0x30, &[PREFIX, &octets])
}

/// One DER element: tag, length, the parts.
fn der(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes a secret file atomically (temp file, fsync, rename), readable by
/// its owner only.
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp: PathBuf = path.with_extension("pem.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{jwk::Jwk, Algorithm, DecodingKey, Validation};

    use super::*;

    /// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`; a
    /// test key, never used elsewhere.
    const RSA_PKCS8: &str = include_str!("testdata/rsa2048.pem");
    /// `openssl ecparam -name prime256v1 -genkey`: SEC1, with the
    /// parameters block in front.
    const EC_SEC1: &str = include_str!("testdata/p256-sec1.pem");

    /// Verifies with jsonwebtoken, from the published JWK: the signer and
    /// the verifier xgate's jwt policy uses agree.
    fn verify(key: &SigningKey, token: &str, alg: Algorithm) -> Value {
        let jwks = key.jwks();
        let jwk: Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
        let decoding = DecodingKey::from_jwk(&jwk).unwrap();
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims::<&str>(&[]);
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<Value>(token, &decoding, &validation).unwrap();
        assert_eq!(data.header.kid.as_deref(), Some(key.kid()));
        assert_eq!(data.header.typ.as_deref(), Some("at+jwt"));
        data.claims
    }

    #[test]
    fn generated_es256_key_signs_and_is_kept() {
        let dir = std::env::temp_dir().join(format!("xgate-signing-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let key = SigningKey::generated(&dir).unwrap();
        assert_eq!(key.algorithm(), "ES256");
        let token = key.sign("at+jwt", &json!({"sub": "alice"})).unwrap();
        assert_eq!(verify(&key, &token, Algorithm::ES256)["sub"], "alice");
        let mode = fs::metadata(dir.join(GENERATED_KEY_FILE))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        // A second start reads the same key: same kid, and its tokens
        // verify with the first one's JWKS.
        let again = SigningKey::generated(&dir).unwrap();
        assert_eq!(again.kid(), key.kid());
        let token = again.sign("at+jwt", &json!({"sub": "bob"})).unwrap();
        assert_eq!(verify(&key, &token, Algorithm::ES256)["sub"], "bob");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rsa_and_sec1_keys_load() {
        let rsa = SigningKey::from_pem(RSA_PKCS8.as_bytes()).unwrap();
        assert_eq!(rsa.algorithm(), "RS256");
        assert_eq!(rsa.jwks()["keys"][0]["kty"], "RSA");
        let token = rsa.sign("at+jwt", &json!({"n": 1})).unwrap();
        assert_eq!(verify(&rsa, &token, Algorithm::RS256)["n"], 1);

        let ec = SigningKey::from_pem(EC_SEC1.as_bytes()).unwrap();
        assert_eq!(ec.algorithm(), "ES256");
        let token = ec.sign("at+jwt", &json!({"n": 2})).unwrap();
        assert_eq!(verify(&ec, &token, Algorithm::ES256)["n"], 2);
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        // RFC 7638 §3.1's example key and its thumbprint.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let input = format!(r#"{{"e":"AQAB","kty":"RSA","n":"{n}"}}"#);
        assert_eq!(
            URL_SAFE_NO_PAD.encode(sha256(input.as_bytes())),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn unusable_keys_are_refused_with_a_reason() {
        assert!(SigningKey::from_pem(b"nothing").is_err());
        // Ed25519 in PKCS#8: neither P-256 nor RSA.
        let ed = "-----BEGIN PRIVATE KEY-----\n\
                  MC4CAQAwBQYDK2VwBCIEINwb8if5NkgCv2FrGlkrC2nGRVG5GTHSXFCXlA7Gr8PZ\n\
                  -----END PRIVATE KEY-----\n";
        let error = SigningKey::from_pem(ed.as_bytes()).unwrap_err();
        assert!(error.contains("neither an EC P-256 key"), "{error}");
    }
}
