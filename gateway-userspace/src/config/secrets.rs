//! Secrets kept out of the config file: `${ENV_VAR}` in any string value
//! (`$${` for a literal `${`), and `<key>_file: PATH` beside the secret keys
//! that have no file form in the model. Both are resolved on the YAML tree
//! before the model reads it, so the model never sees them; `redact` hides
//! the secrets again for `xgate config dump`.

use std::path::Path;

use serde_yaml::Value;

use super::ConfigError;

/// Secret keys that also take a `<key>_file` form, by where they are
/// (`*` is any list index). The model's own file forms
/// (`client_secret_file` of oidc, `public_key_file`, TLS keys) stay as they
/// are.
/// The third item names the mapping's type in the JSON Schema.
pub const FILE_FORMS: &[(&str, &str, &str)] = &[
    ("consumers.*.keys.*", "key", "ApiKey"),
    ("consumers.*.jwt.*", "secret", "JwtCredential"),
    (
        "consumers.*.oauth2_clients.*",
        "client_secret",
        "OAuth2Client",
    ),
    ("redis", "url", "Redis"),
    ("cluster", "redis", "Cluster"),
    ("admin", "status_token", "Admin"),
];

/// Keys whose value is a secret wherever they are.
const SECRET_KEYS: &[&str] = &["secret", "client_secret", "status_token"];

/// Shown in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// The config text with every `${VAR}` and `<key>_file` resolved, or `None`
/// when it has neither (then the text is read as it is, and syntax errors
/// are reported by the normal parse). Each failure names its path.
pub fn expand(text: &str) -> Result<Option<String>, Vec<ConfigError>> {
    if !text.contains('$') && !text.contains("_file") {
        return Ok(None);
    }
    let Ok(mut value) = serde_yaml::from_str::<Value>(text) else {
        return Ok(None);
    };
    let mut expander = Expander::default();
    expander.walk(&mut value, &mut Vec::new());
    if !expander.errors.is_empty() {
        return Err(expander.errors);
    }
    if !expander.changed {
        return Ok(None);
    }
    serde_yaml::to_string(&value).map(Some).map_err(|e| {
        vec![ConfigError::new(
            "",
            format!("cannot write the expanded config: {e}"),
        )]
    })
}

/// One step of a path: a mapping key or a list index.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn display(path: &[Step]) -> String {
    let mut text = String::new();
    for step in path {
        match step {
            Step::Key(key) => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            Step::Index(i) => text.push_str(&format!("[{i}]")),
        }
    }
    text
}

/// Whether `path` is the place `pattern` (`consumers.*.keys.*`) names.
fn matches(path: &[Step], pattern: &str) -> bool {
    let parts: Vec<&str> = pattern.split('.').collect();
    parts.len() == path.len()
        && parts.iter().zip(path).all(|(part, step)| match step {
            Step::Key(key) => part == key,
            Step::Index(_) => *part == "*",
        })
}

#[derive(Default)]
struct Expander {
    changed: bool,
    errors: Vec<ConfigError>,
}

impl Expander {
    fn walk(&mut self, value: &mut Value, path: &mut Vec<Step>) {
        match value {
            Value::String(text) => match substitute(text) {
                Ok(Some(new)) => {
                    *text = new;
                    self.changed = true;
                }
                Ok(None) => {}
                Err(message) => self.errors.push(ConfigError::new(display(path), message)),
            },
            Value::Sequence(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    path.push(Step::Index(i));
                    self.walk(item, path);
                    path.pop();
                }
            }
            Value::Mapping(map) => {
                self.read_files(map, path);
                for (key, item) in map.iter_mut() {
                    let key = match key {
                        Value::String(key) => key.clone(),
                        other => serde_yaml::to_string(other)
                            .unwrap_or_default()
                            .trim()
                            .to_string(),
                    };
                    path.push(Step::Key(key));
                    self.walk(item, path);
                    path.pop();
                }
            }
            Value::Tagged(tagged) => self.walk(&mut tagged.value, path),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// Replaces `<key>_file: PATH` by `<key>: <the file's text>` where the
    /// mapping at `path` takes one.
    fn read_files(&mut self, map: &mut serde_yaml::Mapping, path: &[Step]) {
        for (pattern, key, _) in FILE_FORMS {
            if !matches(path, pattern) {
                continue;
            }
            let file_key = format!("{key}_file");
            let Some(file_value) = map.remove(file_key.as_str()) else {
                continue;
            };
            let mut at = path.to_vec();
            at.push(Step::Key(file_key.clone()));
            let where_ = display(&at);
            if map.contains_key(*key) {
                self.errors.push(ConfigError::new(
                    where_,
                    format!("give {key} or {file_key}, not both"),
                ));
                continue;
            }
            let file = match file_value {
                Value::String(file) => match substitute(&file) {
                    Ok(new) => new.unwrap_or(file),
                    Err(message) => {
                        self.errors.push(ConfigError::new(where_, message));
                        continue;
                    }
                },
                _ => {
                    self.errors
                        .push(ConfigError::new(where_, "must be the path of a file"));
                    continue;
                }
            };
            match read_secret(Path::new(&file)) {
                Ok(secret) => {
                    map.insert(Value::String(key.to_string()), Value::String(secret));
                    self.changed = true;
                }
                Err(message) => self.errors.push(ConfigError::new(where_, message)),
            }
        }
    }
}

/// A secret file's text without its final line end (as `echo` and editors
/// leave one).
fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret.to_string())
}

/// `text` with `${NAME}` replaced by the variable's value and `$${` by `${`;
/// `None` when it has neither.
pub(super) fn substitute(text: &str) -> Result<Option<String>, String> {
    if !text.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        if rest[..at].ends_with('$') {
            // `$${`: a literal `${`.
            out.push_str(&rest[..at - 1]);
            out.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!(
                "'${{' without a closing '}}' in '{text}' (write ${{NAME}}, or $${{ for a literal ${{)"
            ));
        };
        let name = &after[..end];
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "'${{{name}}}' is not an environment variable name (letters, digits and _; \
                 write $${{ for a literal ${{)"
            ));
        }
        match std::env::var(name) {
            Ok(value) => out.push_str(&value),
            Err(std::env::VarError::NotPresent) => {
                return Err(format!("environment variable {name} is not set"))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(format!("environment variable {name} is not valid UTF-8"))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Some(out))
}

/// The config as `xgate config dump` shows it: every secret replaced by
/// `<redacted>` (a Redis URL keeps everything but its password).
pub fn redact(value: &mut serde_json::Value) {
    redact_at(value, &mut Vec::new());
}

fn redact_at(value: &mut serde_json::Value, path: &mut Vec<Step>) {
    match value {
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(Step::Index(i));
                redact_at(item, path);
                path.pop();
            }
        }
        serde_json::Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let secret = SECRET_KEYS.contains(&key.as_str())
                    || FILE_FORMS
                        .iter()
                        .any(|(pattern, k, _)| k == key && matches(path, pattern));
                let url = key == "url" || key == "redis";
                match item {
                    serde_json::Value::String(text) if secret => {
                        *text = if url {
                            redact_url_password(text)
                        } else {
                            REDACTED.to_string()
                        };
                    }
                    _ => {
                        path.push(Step::Key(key.clone()));
                        redact_at(item, path);
                        path.pop();
                    }
                }
            }
        }
        _ => {}
    }
}

/// `redis://user:pw@host:6379/0` → `redis://user:<redacted>@host:6379/0`;
/// a URL without a password is not secret.
fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return REDACTED.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    let user = match userinfo.split_once(':') {
        Some((user, _)) => user,
        // `redis://password@host` is also read as a password.
        None if !userinfo.is_empty() => "",
        None => return url.to_string(),
    };
    format!("{scheme}://{user}:{REDACTED}{}", &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_and_its_escape() {
        // PATH: set wherever tests run (setting a variable here would race
        // with the other tests' threads).
        let path = std::env::var("PATH").unwrap();
        assert_eq!(substitute("plain"), Ok(None));
        assert_eq!(
            substitute("x-${PATH}-y").unwrap().unwrap(),
            format!("x-{path}-y")
        );
        assert_eq!(
            substitute("$${HOME} costs $5").unwrap().unwrap(),
            "${HOME} costs $5"
        );
        let e = substitute("${XGATE_SECRETS_TEST_UNSET}").unwrap_err();
        assert_eq!(
            e,
            "environment variable XGATE_SECRETS_TEST_UNSET is not set"
        );
        assert!(substitute("${A B}")
            .unwrap_err()
            .contains("not an environment variable name"));
        assert!(substitute("${OPEN")
            .unwrap_err()
            .contains("without a closing"));
    }

    #[test]
    fn file_forms_only_where_the_model_has_none() {
        let dir = std::env::temp_dir().join(format!("xgate-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "s3cret\n").unwrap();
        let text = format!(
            "consumers:\n- username: a\n  keys:\n  - key_file: {}\nroutes: [{{x_file: y}}]\n",
            file.display()
        );
        let expanded = expand(&text).unwrap().unwrap();
        let value: Value = serde_yaml::from_str(&expanded).unwrap();
        assert_eq!(value["consumers"][0]["keys"][0]["key"], "s3cret");
        assert!(value["consumers"][0]["keys"][0].get("key_file").is_none());
        // Elsewhere an `_file` key is the model's (or unknown, and refused by it).
        assert_eq!(value["routes"][0]["x_file"], "y");
        let both = format!(
            "consumers:\n- username: a\n  keys:\n  - {{key: k, key_file: {}}}\n",
            file.display()
        );
        let errors = expand(&both).unwrap_err();
        assert_eq!(errors[0].path, "consumers[0].keys[0].key_file");
        let missing = "redis: {url_file: /nonexistent/xgate-redis-url}\n";
        let errors = expand(missing).unwrap_err();
        assert_eq!(errors[0].path, "redis.url_file");
        assert!(errors[0]
            .message
            .contains("cannot read /nonexistent/xgate-redis-url"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn redaction_keeps_what_is_not_secret() {
        let mut value = serde_json::json!({
            "consumers": [{"username": "a", "keys": [{"key": "k1", "key_hash": "sha256:ab"}],
                           "jwt": [{"algorithm": "HS256", "secret": "hs"}]}],
            "routes": [{"policies": [{"type": "rate-limit", "key": ["client_ip"]},
                                      {"type": "oidc", "client_secret": "cs"}]}],
            "redis": {"url": "redis://app:pw@10.0.0.1:6379/2"},
            "cluster": {"redis": "redis://10.0.0.1:6379"},
        });
        redact(&mut value);
        assert_eq!(value["consumers"][0]["keys"][0]["key"], REDACTED);
        assert_eq!(value["consumers"][0]["keys"][0]["key_hash"], "sha256:ab");
        assert_eq!(value["consumers"][0]["jwt"][0]["secret"], REDACTED);
        assert_eq!(value["routes"][0]["policies"][0]["key"][0], "client_ip");
        assert_eq!(value["routes"][0]["policies"][1]["client_secret"], REDACTED);
        assert_eq!(
            value["redis"]["url"],
            "redis://app:<redacted>@10.0.0.1:6379/2"
        );
        assert_eq!(value["cluster"]["redis"], "redis://10.0.0.1:6379");
        assert_eq!(
            redact_url_password("redis://pw@h:1"),
            "redis://:<redacted>@h:1"
        );
    }
}
