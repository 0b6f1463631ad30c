//! xgate's XDP program run in the kernel on crafted frames
//! (BPF_PROG_TEST_RUN): a fresh instance with private maps and the given
//! rules, and one call that runs a frame through it.

use aya::programs::{TestRun, TestRunOptions};
use gateway_common::{Rule, RuleSource, XdpConfig};
use gateway_userspace::xdp::{KernelRules, XdpDataPlane, XDP_OBJECT};

/// A deny entry that never expires, as `xgate blocklist add` makes one.
pub fn permanent() -> Rule {
    Rule {
        expires_at_ns: 0,
        source: RuleSource::Cli as u32,
        _pad: 0,
    }
}

/// A fresh program instance (its own, unpinned maps) with `config` and a
/// permanent deny entry for each of `deny` (CIDRs).
pub fn load(config: XdpConfig, deny: &[&str]) -> XdpDataPlane {
    let mut xdp = XdpDataPlane::load(XDP_OBJECT, None).expect("load XDP program");
    xdp.replace_rules(&KernelRules {
        config,
        deny: deny
            .iter()
            .map(|cidr| {
                let net = cidr
                    .parse()
                    .unwrap_or_else(|e| panic!("deny entry {cidr}: {e}"));
                (net, permanent())
            })
            .collect(),
        ..KernelRules::default()
    })
    .expect("replace the program's rules");
    xdp
}

/// Runs `frame` through the program `repeat` times in one test run (0 and 1
/// both mean once); returns the last verdict.
pub fn run(xdp: &mut XdpDataPlane, frame: &[u8], repeat: u32) -> u32 {
    let opts = TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..TestRunOptions::default()
    };
    xdp.program_mut()
        .expect("the loaded program")
        .test_run(opts)
        .expect("BPF_PROG_TEST_RUN")
        .return_value
}
