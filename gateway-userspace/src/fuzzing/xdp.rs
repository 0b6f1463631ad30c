//! The XDP program's packet parser (gateway-ebpf/src/parse.rs), the same
//! source compiled for the host and run over the fuzzer's bytes as a
//! frame. Under the fuzzer's address sanitizer a read past the frame's end
//! is a crash, so the bounds checks the verifier relies on are fuzzed too.

#[allow(unsafe_code, dead_code)]
#[path = "../../../gateway-ebpf/src/parse.rs"]
mod parse;

use self::parse::{Frame, Malformed, Packet};

/// A frame in memory, as the kernel hands one to XDP.
struct Bytes<'a>(&'a [u8]);

impl Frame for Bytes<'_> {
    fn data(&self) -> usize {
        self.0.as_ptr() as usize
    }

    fn data_end(&self) -> usize {
        self.0.as_ptr() as usize + self.0.len()
    }
}

/// Parses `data` as an Ethernet frame; what it finds must lie inside it.
pub fn parse(data: &[u8]) {
    match parse::parse(&Bytes(data)) {
        Ok(None) | Err(Malformed) => {}
        Ok(Some(packet @ Packet { src, fragment, .. })) => {
            let least = if src.v6 { 14 + 40 } else { 14 + 20 };
            assert!(data.len() >= least, "an IP packet in {} bytes", data.len());
            if packet.port().is_some() {
                assert!(!fragment, "a port read from a non-first fragment");
                assert!(data.len() >= least + 4);
            }
        }
    }
}
