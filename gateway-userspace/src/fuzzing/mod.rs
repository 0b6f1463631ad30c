//! The bodies of the fuzz targets in `fuzz/` (cargo-fuzz, nightly): each is
//! a plain function of the input bytes that panics when a parser breaks one
//! of its promises. Built with the `fuzzing` feature for the fuzzer, and by
//! the unit tests, which run every target over its seeds in `fuzz/seeds/`
//! on stable so that the targets keep compiling and keep meaning something.
//!
//! - `http1`: the server's request heads and chunked bodies, the upstream
//!   client's response heads
//! - `differential`: what the server accepts means the same request to an
//!   independent parser, before and after xgate re-serializes it
//! - `inputs`: PROXY protocol, the config file, CIDRs, the command line
//! - `tokens`: JWTs, JWKS documents, the token endpoint's form
//! - `xdp`: the XDP program's packet parser, compiled for the host

pub mod differential;
pub mod http1;
pub mod inputs;
mod reference;
pub mod tokens;
pub mod xdp;

/// A target's body: panics when a parser breaks a promise.
pub type Target = fn(&[u8]);

/// Every target by its name in `fuzz/fuzz_targets/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("http1_request", http1::request),
    ("http1_chunked", http1::chunked),
    ("http1_response", http1::response),
    ("http1_differential", differential::request),
    ("proxy_protocol", inputs::proxy_protocol),
    ("config", inputs::config),
    ("cidr", inputs::cidr),
    ("cli", inputs::cli),
    ("jwt", tokens::jwt),
    ("jwks", tokens::jwks),
    ("token_form", tokens::token_form),
    ("xdp_parse", xdp::parse),
];

/// Input bytes taken from the front for the harness's own choices (a split
/// point, a method), the rest left as the data under test.
pub(crate) struct Choices<'a>(&'a [u8]);

impl<'a> Choices<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }

    /// One byte, 0 when there is none left.
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    pub fn rest(self) -> &'a [u8] {
        self.0
    }
}

#[cfg(test)]
mod tests;
