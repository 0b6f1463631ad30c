//! Where things are in the YAML text: the line and column of a config path
//! (`routes[2].match.path_regex`), so semantic errors point into the file as
//! nginx and HAProxy do, and duplicated mapping keys, which serde would
//! otherwise resolve silently by keeping the last one.
//!
//! Both walk the document with serde_yaml's own parser (no second YAML
//! library). serde_yaml attaches the position of the node being read to an
//! error raised while reading it; the locator raises one on purpose when it
//! reaches the node it looks for and reads the position back.

use std::{cell::RefCell, collections::HashSet, fmt};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::ConfigError;

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// The error text the locator raises when it has found its node.
const FOUND: &str = "xgate-yaml-lines-found";

/// Where `path` is in `text`: the key's position for a mapping entry
/// (`upstreams.users`), the value's for a sequence element
/// (`xdp.deny[0]`). `None` when the path is not in the text (a default
/// value) or the text does not parse.
pub fn locate(text: &str, path: &str) -> Option<Position> {
    locate_nth(text, &segments(path)?, 0)
}

/// Errors given a position: each costs a parse of the file, and nobody
/// reads further down a list of thousands.
const MAX_LOCATED: usize = 200;

/// Sets the position of each error whose path is found in `text`.
pub fn add_positions(text: &str, errors: &mut [ConfigError]) {
    for error in errors.iter_mut().take(MAX_LOCATED) {
        if !error.path.is_empty() && error.position.is_none() {
            error.position = locate(text, &error.path);
        }
    }
}

/// Every mapping key that appears twice in its mapping, as an error naming
/// the key and both lines. serde keeps the last value of a key for maps
/// (`upstreams`), so one definition would be dropped without a word.
pub fn duplicate_keys(text: &str) -> Vec<ConfigError> {
    let found = RefCell::new(Vec::new());
    let walk = Walk {
        path: String::new(),
        duplicates: &found,
    };
    if walk
        .deserialize(serde_yaml::Deserializer::from_str(text))
        .is_err()
    {
        // A syntax error: the typed parse reports it with its position.
        return Vec::new();
    }
    found
        .into_inner()
        .into_iter()
        .map(|(path, key, occurrence)| {
            let segs = segments(&path).unwrap_or_default();
            let first = locate_nth(text, &segs, 0);
            let again = locate_nth(text, &segs, occurrence);
            let mut message = format!("duplicate key `{key}`");
            if let Some(again) = again {
                message.push_str(&format!(" at {again}"));
            }
            if let Some(first) = first {
                message.push_str(&format!(
                    "; first defined at {first} (YAML keeps only one of them)"
                ));
            }
            ConfigError::new(path, message)
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// `a.b[2].c` → Key(a), Key(b), Index(2), Key(c).
fn segments(path: &str) -> Option<Vec<Segment>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Segment::Key(key.to_string()));
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let close = stripped.find(']')?;
            out.push(Segment::Index(stripped[..close].parse().ok()?));
            rest = &stripped[close + 1..];
        }
    }
    Some(out)
}

/// The position of `segs`; for a final key, of its `occurrence`-th
/// appearance in its mapping (0: the first).
fn locate_nth(text: &str, segs: &[Segment], occurrence: usize) -> Option<Position> {
    let seed = Locate { segs, occurrence };
    match seed.deserialize(serde_yaml::Deserializer::from_str(text)) {
        // serde_yaml puts its own path in front of the message.
        Err(e) if e.to_string().contains(FOUND) => e.location().map(|l| Position {
            line: l.line(),
            column: l.column(),
        }),
        _ => None,
    }
}

struct Locate<'a> {
    segs: &'a [Segment],
    occurrence: usize,
}

impl<'de> DeserializeSeed<'de> for Locate<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Locate<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (target, rest) = match self.segs.split_first() {
            None => return found(),
            Some((Segment::Key(target), rest)) => (target, rest),
            // The path wants a sequence here: it is not in the text.
            Some((Segment::Index(_), _)) => return Ok(()),
        };
        let mut seen = 0;
        while let Some(key) = map.next_key_seed(KeyProbe {
            target,
            // The final key is reported at the key itself.
            raise: rest.is_empty() && seen == self.occurrence,
        })? {
            if key {
                if !rest.is_empty() {
                    return map.next_value_seed(Locate {
                        segs: rest,
                        occurrence: self.occurrence,
                    });
                }
                seen += 1;
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (target, rest) = match self.segs.split_first() {
            None => return found(),
            Some((Segment::Index(target), rest)) => (target, rest),
            Some((Segment::Key(_), _)) => return Ok(()),
        };
        for _ in 0..*target {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Locate {
            segs: rest,
            occurrence: self.occurrence,
        })?;
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar()
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        // A tagged value (`!tag`): report the node itself.
        found()
    }
}

impl Locate<'_> {
    /// A scalar is where the path ends, or the path goes nowhere.
    fn scalar<E: de::Error>(&self) -> Result<(), E> {
        if self.segs.is_empty() {
            found()
        } else {
            Ok(())
        }
    }
}

fn found<E: de::Error>() -> Result<(), E> {
    Err(E::custom(FOUND))
}

/// Reads one mapping key; true when it is `target`. With `raise`, a match
/// is reported as found, at the key's position.
struct KeyProbe<'a> {
    target: &'a str,
    raise: bool,
}

impl<'de> DeserializeSeed<'de> for KeyProbe<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyProbe<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        self.check(key)
    }
    fn visit_bool<E: de::Error>(self, key: bool) -> Result<bool, E> {
        self.check(&key.to_string())
    }
    fn visit_i64<E: de::Error>(self, key: i64) -> Result<bool, E> {
        self.check(&key.to_string())
    }
    fn visit_u64<E: de::Error>(self, key: u64) -> Result<bool, E> {
        self.check(&key.to_string())
    }
    fn visit_f64<E: de::Error>(self, key: f64) -> Result<bool, E> {
        self.check(&key.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        self.check("null")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

impl KeyProbe<'_> {
    fn check<E: de::Error>(&self, key: &str) -> Result<bool, E> {
        match key == self.target {
            true if self.raise => found().map(|()| true),
            matched => Ok(matched),
        }
    }
}

/// Walks the whole document, recording (path of the key, key, which
/// occurrence) for every key seen before in its mapping.
struct Walk<'a> {
    path: String,
    duplicates: &'a RefCell<Vec<(String, String, usize)>>,
}

impl Walk<'_> {
    fn child(&self, path: String) -> Self {
        Walk {
            path,
            duplicates: self.duplicates,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut counts: std::collections::HashMap<String, usize> = Default::default();
        while let Some(key) = map.next_key::<serde_yaml::Value>()? {
            let key = match key {
                serde_yaml::Value::String(s) => s,
                serde_yaml::Value::Bool(b) => b.to_string(),
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Null => "null".to_string(),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            let count = counts.entry(key.clone()).or_default();
            if !seen.insert(key.clone()) {
                self.duplicates
                    .borrow_mut()
                    .push((path.clone(), key, *count));
            }
            *count += 1;
            map.next_value_seed(self.child(path))?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq
            .next_element_seed(self.child(format!("{}[{i}]", self.path)))?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        let (_, variant) = data.variant::<IgnoredAny>()?;
        de::VariantAccess::newtype_variant_seed(variant, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
listeners:
  - address: 127.0.0.1:8080
upstreams:
  users:
    targets: ['127.0.0.1:9001']
routes:
  - {match: {path_prefix: /a}, upstream: users}
  - match:
      path_regex: '/x('
    upstream: users
xdp: {deny: [10.0.0.0/8, 10.0.0.1/8]}
";

    #[test]
    fn paths_map_to_lines_and_columns() {
        let at = |path| locate(TEXT, path).map(|p| (p.line, p.column));
        assert_eq!(at("listeners"), Some((1, 1)));
        assert_eq!(at("listeners[0].address"), Some((2, 5)));
        assert_eq!(at("upstreams.users"), Some((4, 3)));
        assert_eq!(at("upstreams.users.targets[0]"), Some((5, 15)));
        assert_eq!(at("routes[0].upstream"), Some((7, 32)));
        assert_eq!(at("routes[1].match.path_regex"), Some((9, 7)));
        assert_eq!(at("xdp.deny[1]"), Some((11, 26)));
        assert_eq!(at("routes[5]"), None);
        assert_eq!(at("upstreams[0]"), None, "a mapping is not a sequence");
        assert_eq!(at("listeners.address"), None, "a sequence is not a mapping");
        assert_eq!(at("admin.socket"), None);
    }

    #[test]
    fn duplicate_keys_are_found_with_both_lines() {
        let text = "upstreams:\n  users: {targets: ['127.0.0.1:1']}\n  orders: {targets: ['127.0.0.1:2']}\n  users: {targets: ['127.0.0.1:3']}\n";
        let errors = duplicate_keys(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "upstreams.users");
        assert_eq!(
            errors[0].message,
            "duplicate key `users` at line 4, column 3; first defined at line 2, column 3 \
             (YAML keeps only one of them)"
        );
        let nested = "routes:\n  - match: {path_prefix: /a, path_prefix: /b}\n";
        let errors = duplicate_keys(nested);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "routes[0].match.path_prefix");
        assert!(
            errors[0].message.contains("at line 2, column 30"),
            "{errors:?}"
        );
        assert!(duplicate_keys(TEXT).is_empty());
        assert!(duplicate_keys("a: [").is_empty());
    }
}
