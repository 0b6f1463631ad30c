//! JWS signatures (RFC 7515) checked with keys parsed once: a key from the
//! config (PEM, HMAC secret) or a JWKS document is turned into its
//! verifier when it is loaded, not on every token. Every key is pinned to
//! one algorithm.
//!
//! HMAC runs on ring; public keys on aws-lc, whose parsed keys keep their
//! precomputed Montgomery form (ring rebuilds it on each verification,
//! which costs about a quarter of an RS256 check).

use aws_lc_rs::signature::{self, ParsedPublicKey, VerificationAlgorithm};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, OctetKeyPairType},
    Algorithm,
};

/// A key that verifies signatures of one algorithm.
pub struct VerifyingKey {
    algorithm: Algorithm,
    inner: Inner,
}

enum Inner {
    Hmac(ring::hmac::Key),
    Public(ParsedPublicKey),
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The public-key verifier of `algorithm` (`None`: HMAC).
fn public_algorithm(algorithm: Algorithm) -> Option<&'static dyn VerificationAlgorithm> {
    use Algorithm::*;
    Some(match algorithm {
        HS256 | HS384 | HS512 => return None,
        RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        // JWS carries ECDSA signatures as fixed-width r || s (RFC 7518 §3.4).
        ES256 => &signature::ECDSA_P256_SHA256_FIXED,
        ES384 => &signature::ECDSA_P384_SHA384_FIXED,
        EdDSA => &signature::ED25519,
    })
}

impl VerifyingKey {
    /// An HMAC key (`HS256`, `HS384`, `HS512`).
    pub fn hmac(algorithm: Algorithm, secret: &[u8]) -> Result<Self, String> {
        let hmac = match algorithm {
            Algorithm::HS256 => ring::hmac::HMAC_SHA256,
            Algorithm::HS384 => ring::hmac::HMAC_SHA384,
            Algorithm::HS512 => ring::hmac::HMAC_SHA512,
            other => return Err(format!("{other:?} is not an HMAC algorithm")),
        };
        Ok(Self {
            algorithm,
            inner: Inner::Hmac(ring::hmac::Key::new(hmac, secret)),
        })
    }

    /// A public key in DER: SubjectPublicKeyInfo for every type, PKCS#1
    /// `RSAPublicKey` for RSA, an uncompressed point for ECDSA, the raw 32
    /// bytes for Ed25519.
    pub fn public_der(algorithm: Algorithm, der: &[u8]) -> Result<Self, String> {
        let verifier = public_algorithm(algorithm)
            .ok_or_else(|| format!("{algorithm:?} needs a secret, not a public key"))?;
        let key = ParsedPublicKey::new(verifier, der).map_err(|e| {
            format!("not a public key for {algorithm:?} ({e}): wrong key type or size?")
        })?;
        Ok(Self {
            algorithm,
            inner: Inner::Public(key),
        })
    }

    /// A public key in PEM: `PUBLIC KEY` (SubjectPublicKeyInfo), `RSA
    /// PUBLIC KEY` (PKCS#1) or a `CERTIFICATE` (its key).
    pub fn from_pem(algorithm: Algorithm, pem: &[u8]) -> Result<Self, String> {
        let block = pem::parse(pem).map_err(|e| format!("not PEM: {e}"))?;
        match block.tag() {
            "PUBLIC KEY" | "RSA PUBLIC KEY" => Self::public_der(algorithm, block.contents()),
            "CERTIFICATE" => {
                let der = rustls::pki_types::CertificateDer::from(block.contents());
                let cert = webpki::EndEntityCert::try_from(&der)
                    .map_err(|e| format!("not an X.509 certificate: {e}"))?;
                Self::public_der(algorithm, &cert.subject_public_key_info())
            }
            other => Err(format!(
                "a PEM `{other}` block is not a public key (PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE)"
            )),
        }
    }

    /// The key of a JWKS entry, for one algorithm its type allows.
    pub fn from_jwk(jwk: &Jwk, algorithm: Algorithm) -> Result<Self, String> {
        let b64 = |field: &str, value: &str| {
            URL_SAFE_NO_PAD
                .decode(value.trim_end_matches('='))
                .map_err(|_| format!("`{field}` is not base64url"))
        };
        match &jwk.algorithm {
            AlgorithmParameters::RSA(rsa) => {
                let der = rsa_public_key_der(&b64("n", &rsa.n)?, &b64("e", &rsa.e)?);
                Self::public_der(algorithm, &der)
            }
            AlgorithmParameters::EllipticCurve(ec) => {
                let width = match ec.curve {
                    EllipticCurve::P256 => 32,
                    EllipticCurve::P384 => 48,
                    _ => return Err("unsupported curve".into()),
                };
                let (x, y) = (b64("x", &ec.x)?, b64("y", &ec.y)?);
                if x.len() != width || y.len() != width {
                    return Err("`x` or `y` has the wrong length for its curve".into());
                }
                let point: Vec<u8> = [&[0x04][..], &x, &y].concat();
                Self::public_der(algorithm, &point)
            }
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                if okp.key_type != OctetKeyPairType::OctetKeyPair {
                    return Err("not an OKP key".into());
                }
                Self::public_der(algorithm, &b64("x", &okp.x)?)
            }
            AlgorithmParameters::OctetKeyPair(_) => Err("unsupported curve".into()),
            // A public document holds no secret.
            AlgorithmParameters::OctetKey(_) => {
                Err("symmetric keys are not taken from a JWKS".into())
            }
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether `signature` signs `message` (the token's `header.payload`
    /// text) with this key. HMAC is compared in constant time.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.inner {
            Inner::Hmac(key) => ring::hmac::verify(key, message, signature).is_ok(),
            Inner::Public(key) => key.verify_sig(message, signature).is_ok(),
        }
    }
}

/// PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent
/// INTEGER }` in DER, from the big-endian magnitudes.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn integer(out: &mut Vec<u8>, magnitude: &[u8]) {
        let start = magnitude
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(magnitude.len());
        let magnitude = &magnitude[start..];
        // A leading 1 bit would make the INTEGER negative.
        let pad = magnitude.first().is_none_or(|b| b & 0x80 != 0);
        out.push(0x02);
        length(out, magnitude.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(magnitude);
    }
    fn length(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes
                .iter()
                .position(|b| *b != 0)
                .unwrap_or(bytes.len() - 1);
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    integer(&mut body, n);
    integer(&mut body, e);
    let mut der = Vec::with_capacity(body.len() + 8);
    der.push(0x30);
    length(&mut der, body.len());
    der.extend_from_slice(&body);
    der
}

#[cfg(test)]
mod tests;
