//! The Linux capabilities the daemon needs, and a one-line answer when one
//! is missing. Found by trying (docs/operations.md, "Least privilege"):
//! loading the XDP program takes CAP_BPF and CAP_PERFMON (the verifier
//! refuses its packet pointer arithmetic without CAP_PERFMON), attaching it
//! CAP_NET_ADMIN; listening below port 1024 takes CAP_NET_BIND_SERVICE.

/// A capability by number (linux/capability.h) and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    pub bit: u32,
    pub name: &'static str,
    /// What xgate does with it.
    pub used_for: &'static str,
}

pub const CAP_NET_BIND_SERVICE: Capability = Capability {
    bit: 10,
    name: "CAP_NET_BIND_SERVICE",
    used_for: "listening on ports below 1024",
};
pub const CAP_NET_ADMIN: Capability = Capability {
    bit: 12,
    name: "CAP_NET_ADMIN",
    used_for: "attaching the XDP program to an interface",
};
pub const CAP_PERFMON: Capability = Capability {
    bit: 38,
    name: "CAP_PERFMON",
    used_for: "the verifier to accept the XDP program's packet pointer arithmetic",
};
pub const CAP_BPF: Capability = Capability {
    bit: 39,
    name: "CAP_BPF",
    used_for: "loading the XDP program and creating its maps",
};

/// What attaching XDP takes.
pub const XDP: [Capability; 3] = [CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN];

/// The process's effective capabilities (`CapEff` of /proc/self/status).
pub fn effective() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    parse_effective(&status)
        .ok_or_else(|| std::io::Error::other("no CapEff line in /proc/self/status"))
}

fn parse_effective(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// The first of `needed` the process does not have.
pub fn first_missing(needed: &[Capability]) -> Option<Capability> {
    // Unreadable /proc: assume present and let the system calls answer.
    let effective = effective().unwrap_or(u64::MAX);
    missing_from(effective, needed)
}

fn missing_from(effective: u64, needed: &[Capability]) -> Option<Capability> {
    needed
        .iter()
        .copied()
        .find(|cap| effective & (1u64 << cap.bit) == 0)
}

/// The one line that says what is missing, for `needed_for` (e.g.
/// "XDP cannot be attached").
pub fn explain(missing: Capability, needed_for: &str) -> String {
    format!(
        "{needed_for}: missing capability {} (needed for {}); run as root or grant it \
         (systemd: AmbientCapabilities=, see docs/operations.md)",
        missing.name, missing.used_for
    )
}

/// Why listening on `address` failed: names CAP_NET_BIND_SERVICE when a
/// port below 1024 was refused for the lack of it.
pub fn listen_error(address: std::net::SocketAddr, error: &std::io::Error) -> String {
    let context = format!("cannot listen on {address}");
    if error.kind() == std::io::ErrorKind::PermissionDenied && address.port() < 1024 {
        if let Some(missing) = first_missing(&[CAP_NET_BIND_SERVICE]) {
            return explain(missing, &context);
        }
    }
    format!("{context}: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\txgate\nCapInh:\t0000000000000000\nCapEff:\t000000c000001000\n";
        let effective = parse_effective(status).unwrap();
        assert_eq!(missing_from(effective, &XDP), None);
        assert_eq!(
            missing_from(effective & !(1 << CAP_PERFMON.bit), &XDP),
            Some(CAP_PERFMON)
        );
        assert_eq!(missing_from(0, &XDP), Some(CAP_BPF));
        assert_eq!(
            missing_from(effective, &[CAP_NET_BIND_SERVICE]),
            Some(CAP_NET_BIND_SERVICE)
        );
    }
}
