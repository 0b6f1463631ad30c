//! What a token or revocation request carries: its form parameters
//! (`application/x-www-form-urlencoded`) and the client's credentials
//! (HTTP Basic or the form, RFC 6749 §2.3.1).

use base64::{engine::general_purpose::STANDARD, Engine};
use http::{header, HeaderMap};

use super::OAuthError;
use crate::policy::percent_decode;

/// The parameters of a request body, each at most once.
#[derive(Debug, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    /// RFC 6749 §3.2: parameters sent more than once are an error;
    /// parameters without a value are as if omitted (§3.1).
    pub fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        let text = std::str::from_utf8(body)
            .map_err(|_| OAuthError::InvalidRequest("the body is not UTF-8"))?;
        let mut out: Vec<(String, String)> = Vec::new();
        for pair in text.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_decode(s)
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or(OAuthError::InvalidRequest("malformed form encoding"))
            };
            let (name, value) = (decode(name)?, decode(value)?);
            if out.iter().any(|(n, _)| *n == name) {
                return Err(OAuthError::InvalidRequest(
                    "a parameter is sent more than once",
                ));
            }
            out.push((name, value));
        }
        out.retain(|(_, value)| !value.is_empty());
        Ok(Self(out))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The credentials a client presented.
#[derive(Debug, PartialEq, Eq)]
pub struct Credentials {
    pub client_id: String,
    /// The secret as RFC 6749 §2.3.1 has it (form-decoded in HTTP Basic),
    /// and, when Basic's raw text differs, that too: many clients send it
    /// unencoded, and a secret with `+` or `%` in it would then never
    /// match.
    pub secrets: Vec<Vec<u8>>,
}

/// The one client authentication of the request: HTTP Basic
/// (client_secret_basic) or `client_id` + `client_secret` in the form
/// (client_secret_post); both at once is an error (RFC 6749 §2.3).
pub fn credentials(headers: &HeaderMap, form: &Form) -> Result<Credentials, OAuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let authorization = values.next();
    if values.next().is_some() {
        return Err(OAuthError::InvalidRequest(
            "more than one Authorization header",
        ));
    }
    let basic = authorization.map(basic).transpose()?;
    match (basic, form.get("client_secret")) {
        (Some(_), Some(_)) => Err(OAuthError::InvalidRequest(
            "more than one client authentication method",
        )),
        (Some(basic), None) => match form.get("client_id") {
            Some(id) if id != basic.client_id => Err(OAuthError::InvalidRequest(
                "client_id differs from the authenticated client",
            )),
            _ => Ok(basic),
        },
        (None, Some(secret)) => Ok(Credentials {
            client_id: form
                .get("client_id")
                .ok_or(OAuthError::InvalidClient("client_secret without client_id"))?
                .to_string(),
            secrets: vec![secret.as_bytes().to_vec()],
        }),
        (None, None) => Err(OAuthError::InvalidClient(
            "client authentication is required",
        )),
    }
}

fn basic(value: &http::HeaderValue) -> Result<Credentials, OAuthError> {
    let bad = || OAuthError::InvalidClient("malformed HTTP Basic credentials");
    let text = value.to_str().map_err(|_| bad())?;
    let (scheme, encoded) = text.trim().split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::InvalidClient(
            "only HTTP Basic client authentication is accepted here",
        ));
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
    let colon = decoded.iter().position(|b| *b == b':').ok_or_else(bad)?;
    let (id, secret) = (&decoded[..colon], &decoded[colon + 1..]);
    let id = std::str::from_utf8(id).map_err(|_| bad())?;
    let client_id = percent_decode(id)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let mut secrets = Vec::with_capacity(2);
    if let Some(form_decoded) = std::str::from_utf8(secret).ok().and_then(percent_decode) {
        secrets.push(form_decoded);
    }
    if secrets.first().is_none_or(|s| s != secret) {
        secrets.push(secret.to_vec());
    }
    Ok(Credentials { client_id, secrets })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn form(text: &str) -> Form {
        Form::parse(text.as_bytes()).unwrap()
    }

    fn basic_header(user_pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(user_pass))).unwrap(),
        );
        h
    }

    #[test]
    fn forms_decode_and_refuse_repeats() {
        let f = form("grant_type=client_credentials&scope=read+write%3Aall&empty=");
        assert_eq!(f.get("grant_type"), Some("client_credentials"));
        assert_eq!(f.get("scope"), Some("read write:all"));
        assert_eq!(f.get("empty"), None, "a parameter without value is omitted");
        assert!(Form::parse(b"scope=a&scope=b").is_err());
        assert!(Form::parse(b"scope=%zz").is_err());
        assert!(Form::parse(b"\xff=1").is_err());
    }

    #[test]
    fn basic_or_post_but_not_both() {
        let c = credentials(&basic_header("svc:s3cr%2Bt"), &form("")).unwrap();
        assert_eq!(c.client_id, "svc");
        // Form-decoded first, then the raw text.
        assert_eq!(c.secrets, [b"s3cr+t".to_vec(), b"s3cr%2Bt".to_vec()]);
        let c = credentials(&basic_header("svc:plain"), &form("client_id=svc")).unwrap();
        assert_eq!(c.secrets, [b"plain".to_vec()]);

        let post = credentials(&HeaderMap::new(), &form("client_id=svc&client_secret=x")).unwrap();
        assert_eq!(post.client_id, "svc");

        let both = credentials(&basic_header("svc:x"), &form("client_secret=x"));
        assert!(matches!(both, Err(OAuthError::InvalidRequest(_))));
        let mismatch = credentials(&basic_header("svc:x"), &form("client_id=other"));
        assert!(matches!(mismatch, Err(OAuthError::InvalidRequest(_))));
        let none = credentials(&HeaderMap::new(), &form("grant_type=x"));
        assert!(matches!(none, Err(OAuthError::InvalidClient(_))));
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert!(matches!(
            credentials(&bearer, &form("")),
            Err(OAuthError::InvalidClient(_))
        ));
        assert!(matches!(
            credentials(&basic_header("no-colon"), &form("")),
            Err(OAuthError::InvalidClient(_))
        ));
    }
}
