//! What operators and load balancers hand xgate: the PROXY protocol header
//! in front of a connection, the config file, CIDRs, the command line.

use clap::Parser;

use crate::{
    cli::Cli,
    config::{ipv4_mapped_note, parse_cidr, Config},
    proxy::proxy_protocol::{parse, ProxyHeader},
};

/// A PROXY protocol v1/v2 header read as bytes arrive: every prefix of the
/// input is "need more" or already the answer the whole input gets, so a
/// reader that stops at the first answer sees what one with all the bytes
/// would; a complete header lies within the bytes and reads the same on its
/// own.
pub fn proxy_protocol(data: &[u8]) {
    let whole = parse(data);
    if let Ok(Some(ProxyHeader { len, .. })) = whole {
        assert!(len > 0 && len <= data.len(), "header length {len}");
        assert_eq!(parse(&data[..len]), whole, "the header alone");
    }
    for end in 0..data.len() {
        match parse(&data[..end]) {
            Ok(None) => {}
            early => {
                assert_eq!(early, whole, "the first {end} bytes");
                break;
            }
        }
    }
}

/// The config loader: any text is a config or a list of errors, never a
/// panic; a valid config's warnings are computed too.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_yaml(text, "fuzz.yaml") {
        Ok(config) => {
            let _ = config.warnings();
        }
        Err(errors) => assert!(!errors.errors.is_empty(), "an error without errors"),
    }
}

/// CIDRs as the config, the CLI and the admin API take them: a parsed
/// prefix prints as text that parses to the same prefix, and no
/// IPv4-mapped IPv6 prefix survives (it could never match).
pub fn cidr(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ipv4_mapped_note(text);
    let Ok(net) = parse_cidr(text) else {
        return;
    };
    assert_eq!(parse_cidr(&net.to_string()), Ok(net), "round trip of {net}");
    if let ipnet::IpNet::V6(v6) = net {
        assert!(
            v6.prefix_len() < 96 || v6.addr().to_ipv4_mapped().is_none(),
            "IPv4-mapped {v6} kept as IPv6"
        );
    }
}

/// The command line, arguments separated by NUL bytes: parsed or refused
/// with an error, never a panic.
pub fn cli(data: &[u8]) {
    let args = data
        .split(|&b| b == 0)
        .map(|arg| std::ffi::OsString::from(String::from_utf8_lossy(arg).into_owned()));
    let _ = Cli::try_parse_from(std::iter::once("xgate".into()).chain(args));
}
