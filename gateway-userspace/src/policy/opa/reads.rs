//! What of the input document a set of Rego files can read, found from
//! their tokens (regorus's own lexer, so strings and comments are what the
//! engine says they are), and whether their decision depends on anything
//! but the input and `data`.
//!
//! Every reference to the root `input` is followed as far as it is a
//! constant path (`input.request.http.method`,
//! `input.request.http.headers["x-tenant"]`); where it stops being one
//! (`headers[name]`, `f(input)`, `import input.request as r`) the whole
//! subtree from there on counts as read. So the paths found cover every
//! read: a document holding only them evaluates to the same decision as
//! the whole one. `with` (which rewrites the input, `data` or builtins
//! inside a rule) makes the analysis give up: everything is read, and the
//! policy is not pure.
//!
//! Pure: no builtin whose answer changes between two evaluations of the
//! same input and data (the clock, randomness, the network, the runtime)
//! and none with a side effect (`print`, `trace`). Then a decision is a
//! function of the input paths read (and of `data`, fixed for a compiled
//! policy), which is what lets `memo` keep it.

use std::collections::BTreeMap;

use regorus::unstable::{Lexer, Source, TokenKind};

/// The parts of the input read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reads {
    /// This whole subtree (or anything in it).
    All,
    /// Only these fields of an object, each with what of it is read.
    Fields(BTreeMap<String, Reads>),
}

impl Reads {
    /// Nothing read.
    pub fn none() -> Self {
        Reads::Fields(BTreeMap::new())
    }

    /// What of field `name` is read, if anything.
    pub fn field(&self, name: &str) -> Option<&Reads> {
        match self {
            Reads::All => Some(&Reads::All),
            Reads::Fields(fields) => fields.get(name),
        }
    }

    /// Notes that `path` (and everything under it) is read.
    fn add(&mut self, path: &[String]) {
        let Reads::Fields(fields) = self else {
            return;
        };
        let Some((first, rest)) = path.split_first() else {
            *self = Reads::All;
            return;
        };
        fields
            .entry(first.clone())
            .or_insert_with(Reads::none)
            .add(rest);
    }
}

/// Builtins whose answer is not a function of their arguments (clock,
/// randomness, network, runtime) or that have an effect (output). A name
/// counts when a qualified call starts with one of these.
const IMPURE: &[&str] = &[
    "time.now_ns",
    "rand.",
    "uuid.rfc4122",
    "http.send",
    "net.lookup_ip_addr",
    "opa.runtime",
    // Checks `exp`/`nbf` against the clock when no time is given.
    "io.jwt.decode_verify",
    // Certificates checked against the clock.
    "crypto.x509.parse_and_verify_certificates",
    "crypto.x509.parse_and_verify_certificates_with_options",
    "print",
    "trace",
];

/// What a policy's Rego files read and whether they are pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub reads: Reads,
    pub pure: bool,
}

/// A token reduced to what the analysis looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// A string literal's value; `None` when it has escapes (not followed).
    Str(Option<String>),
    Symbol(String),
    Other,
}

fn tokens(file: &str, text: &str) -> Result<Vec<Tok>, String> {
    let source = Source::from_contents(file.to_string(), text.to_string())
        .map_err(|e| format!("{file}: {e}"))?;
    let mut lexer = Lexer::new(&source);
    let mut out = Vec::new();
    loop {
        let token = lexer.next_token().map_err(|e| format!("{file}: {e}"))?;
        let text = token.1.text();
        out.push(match token.0 {
            TokenKind::Eof => return Ok(out),
            TokenKind::Ident => Tok::Ident(text.to_string()),
            TokenKind::Symbol => Tok::Symbol(text.to_string()),
            TokenKind::String => {
                let inner = text
                    .strip_prefix('"')
                    .unwrap_or(text)
                    .strip_suffix('"')
                    .unwrap_or(text.strip_prefix('"').unwrap_or(text));
                Tok::Str((!inner.contains('\\')).then(|| inner.to_string()))
            }
            TokenKind::RawString => Tok::Str(Some(text.trim_matches('`').to_string())),
            _ => Tok::Other,
        });
    }
}

fn is_symbol(token: Option<&Tok>, symbol: &str) -> bool {
    matches!(token, Some(Tok::Symbol(s)) if s == symbol)
}

/// The constant path after the `input` at `at`.
fn path_after(tokens: &[Tok], at: usize) -> Vec<String> {
    let mut path = Vec::new();
    let mut i = at + 1;
    loop {
        match (tokens.get(i), tokens.get(i + 1), tokens.get(i + 2)) {
            (Some(Tok::Symbol(dot)), Some(Tok::Ident(name)), _) if dot == "." => {
                path.push(name.clone());
                i += 2;
            }
            (Some(Tok::Symbol(open)), Some(Tok::Str(Some(name))), close)
                if open == "[" && is_symbol(close, "]") =>
            {
                path.push(name.clone());
                i += 3;
            }
            _ => return path,
        }
    }
}

/// The dotted name starting at `at` (`time.now_ns`).
fn dotted(tokens: &[Tok], at: usize) -> String {
    let mut name = String::new();
    let mut i = at;
    while let Some(Tok::Ident(part)) = tokens.get(i) {
        name.push_str(part);
        if !is_symbol(tokens.get(i + 1), ".") {
            break;
        }
        name.push('.');
        i += 2;
    }
    name
}

/// Analyses the policy's Rego files (`(file name, text)`). An error is a
/// file the lexer refuses (the engine refuses it too).
pub fn analyze<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Analysis, String> {
    let mut reads = Reads::none();
    let mut pure = true;
    for (file, text) in files {
        let tokens = tokens(file, text)?;
        for (i, token) in tokens.iter().enumerate() {
            let Tok::Ident(name) = token else {
                continue;
            };
            let qualified = i > 0 && is_symbol(tokens.get(i - 1), ".");
            if qualified {
                continue;
            }
            match name.as_str() {
                "with" => {
                    return Ok(Analysis {
                        reads: Reads::All,
                        pure: false,
                    })
                }
                "input" => reads.add(&path_after(&tokens, i)),
                _ => {
                    let called = dotted(&tokens, i);
                    if IMPURE.iter().any(|impure| {
                        called == *impure
                            || (impure.ends_with('.') && called.starts_with(impure))
                            || called
                                .strip_prefix(impure)
                                .is_some_and(|rest| rest.starts_with('.'))
                    }) {
                        pure = false;
                    }
                }
            }
        }
    }
    Ok(Analysis { reads, pure })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis(text: &str) -> Analysis {
        analyze([("p.rego", text)]).unwrap()
    }

    fn fields(pairs: &[(&str, Reads)]) -> Reads {
        Reads::Fields(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn constant_paths_are_what_is_read() {
        let a = analysis(
            r#"package bench
# input.client_ip in a comment is not read
default allow := false
allow if {
    input.request.http.method == "GET"
    not input.request.http.headers["x-bench-deny"]
    msg := "input.route is text"
}"#,
        );
        assert!(a.pure);
        assert_eq!(
            a.reads,
            fields(&[(
                "request",
                fields(&[(
                    "http",
                    fields(&[
                        ("method", Reads::All),
                        ("headers", fields(&[("x-bench-deny", Reads::All)])),
                    ])
                )])
            )])
        );
    }

    #[test]
    fn a_reference_that_stops_being_constant_reads_the_subtree() {
        let a = analysis(
            r#"package p
allow if {
    some name
    input.request.http.headers[name] == "x"
    input.request.http.method == "GET"
}
deny if { count(input.route) > 0 }"#,
        );
        assert_eq!(
            a.reads,
            fields(&[
                (
                    "request",
                    fields(&[(
                        "http",
                        fields(&[("headers", Reads::All), ("method", Reads::All)])
                    )])
                ),
                ("route", Reads::All),
            ])
        );
        // The whole input, given to a function.
        assert_eq!(
            analysis("package p\nallow if { f(input) }\nf(x) if { x.a }").reads,
            Reads::All
        );
        // An import: everything under it.
        assert_eq!(
            analysis("package p\nimport input.request.http as h\nallow if { h.method == \"GET\" }")
                .reads,
            fields(&[("request", fields(&[("http", Reads::All)]))])
        );
        // A field named `input` of something else is not the input.
        assert_eq!(
            analysis("package p\nallow if { data.x.input.y }").reads,
            Reads::none()
        );
    }

    #[test]
    fn impure_builtins_and_with_are_found() {
        assert!(!analysis("package p\nallow if { time.now_ns() > 0 }").pure);
        assert!(!analysis("package p\nallow if { rand.intn(\"a\", 10) > 0 }").pure);
        assert!(!analysis("package p\nallow if { print(input.x) }").pure);
        assert!(!analysis("package p\nallow if { x := http.send({}) }").pure);
        assert!(
            !analysis(
                "package p\nallow if { crypto.x509.parse_and_verify_certificates_with_options(input.c, {}) }"
            )
            .pure
        );
        // Deterministic time functions are pure.
        assert!(analysis("package p\nallow if { time.parse_rfc3339_ns(input.t) > 0 }").pure);
        let with = analysis("package p\nallow if { f with input as {} }\nf if { input.a }");
        assert_eq!((with.reads, with.pure), (Reads::All, false));
    }

    #[test]
    fn strings_with_escapes_are_not_followed() {
        assert_eq!(
            analysis("package p\nallow if { input.h[\"a\\u0062\"] }").reads,
            fields(&[("h", Reads::All)])
        );
        assert_eq!(
            analysis("package p\nallow if { input.h[`raw`] }").reads,
            fields(&[("h", fields(&[("raw", Reads::All)]))])
        );
    }
}
