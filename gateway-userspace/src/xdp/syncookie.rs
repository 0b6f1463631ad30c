//! SYN cookies seen from userspace: the settings map, the protected ports,
//! the kernel's `tcp_syncookies` contract, and auto mode's switch (the SYN
//! rate read once a second, with hysteresis). The packet side is
//! gateway-ebpf/src/syncookie.rs; docs/xdp.md#syn-cookies.

use std::time::{Duration, Instant};

use aya::{
    maps::{Array, MapData, PerCpuArray},
    Ebpf,
};
use gateway_common::{map_names, SynCookieConfig, PORT_WORDS};
use serde::Serialize;

use super::XdpError;
use crate::config::SynCookieMode;

/// The kernel accepts a cookie ACK only with this `net.ipv4.tcp_syncookies`
/// (2: cookies always; its listeners then accept cookies within two minutes
/// of answering a SYN with one, which the program's periodic SYN keeps
/// true). With 1 they would be accepted only after a real SYN queue
/// overflow.
const SYSCTL: &str = "/proc/sys/net/ipv4/tcp_syncookies";
const SYSCTL_VALUE: &str = "2";
/// With `tcp_options`: timestamps without a per-connection random offset
/// (2), so the kernel reads the options back from the echoed cookie
/// timestamp as the program encoded them; with the offset (1) it would
/// subtract a secret the program cannot know.
const TIMESTAMPS: &str = "/proc/sys/net/ipv4/tcp_timestamps";
const TIMESTAMPS_VALUE: &str = "2";
const SACK: &str = "/proc/sys/net/ipv4/tcp_sack";
const WINDOW_SCALING: &str = "/proc/sys/net/ipv4/tcp_window_scaling";
const TCP_RMEM: &str = "/proc/sys/net/ipv4/tcp_rmem";
const RMEM_MAX: &str = "/proc/sys/net/core/rmem_max";
/// MSS advertised when no interface MTU can be read: Ethernet's.
const DEFAULT_MTU: u32 = 1500;

/// What `xdp.syn_cookies` compiles to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynCookiePolicy {
    pub mode: SynCookieMode,
    pub ports: Vec<u16>,
    pub above: u64,
    pub below: u64,
    pub quiet: Duration,
    pub tcp_options: bool,
}

impl Default for SynCookiePolicy {
    fn default() -> Self {
        Self {
            mode: SynCookieMode::Off,
            ports: Vec::new(),
            above: u64::MAX,
            below: 0,
            quiet: Duration::from_secs(10),
            tcp_options: false,
        }
    }
}

impl SynCookiePolicy {
    pub fn from_config(config: &crate::config::Config) -> Self {
        let c = &config.xdp.syn_cookies;
        let mut ports = c
            .ports
            .clone()
            .unwrap_or_else(|| config.listeners.iter().map(|l| l.address.port()).collect());
        ports.sort_unstable();
        ports.dedup();
        Self {
            mode: c.mode,
            ports,
            above: c.auto_above_syn_per_second,
            below: c.auto_below(),
            quiet: Duration::from_secs(c.auto_quiet_seconds),
            tcp_options: c.tcp_options,
        }
    }
}

/// The window scale the kernel picks for a connection made from a cookie
/// on a listener that does not set `SO_RCVBUF` (`tcp_select_initial_window`:
/// the largest receive space, `tcp_rmem`'s maximum or `rmem_max`, capped
/// at what a 14-bit scale can express).
pub fn kernel_wscale(tcp_rmem_max: u64, rmem_max: u64) -> u8 {
    let space = tcp_rmem_max.max(rmem_max).min(u64::from(u16::MAX) << 14);
    (space.max(1).ilog2().saturating_sub(15)).min(14) as u8
}

/// The kernel settings the cookies' TCP options depend on, read in the
/// daemon's network namespace: the option bits of
/// [`SynCookieConfig::flags`], or why they are off.
fn tcp_option_flags() -> Result<u32, String> {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|text| text.trim().to_string())
            .map_err(|e| format!("{path}: {e}"))
    };
    let timestamps = read(TIMESTAMPS)?;
    if timestamps != TIMESTAMPS_VALUE {
        return Err(format!(
            "net.ipv4.tcp_timestamps is {timestamps}, not {TIMESTAMPS_VALUE}"
        ));
    }
    let mut flags = SynCookieConfig::TCP_OPTIONS;
    if read(SACK)? != "0" {
        flags |= SynCookieConfig::SACK;
    }
    if read(WINDOW_SCALING)? != "0" {
        flags |= SynCookieConfig::WINDOW_SCALING;
    }
    let tcp_rmem = read(TCP_RMEM)?;
    let tcp_rmem_max = tcp_rmem
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{TCP_RMEM}: not three numbers: {tcp_rmem}"))?;
    let rmem_max = read(RMEM_MAX)?
        .parse()
        .map_err(|e| format!("{RMEM_MAX}: {e}"))?;
    let wscale = kernel_wscale(tcp_rmem_max, rmem_max);
    Ok(flags | u32::from(wscale) << SynCookieConfig::WSCALE_SHIFT)
}

/// What `xgate status` shows.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SynCookieStatus {
    pub mode: &'static str,
    /// Whether SYNs are answered with cookies now.
    pub active: bool,
    pub ports: Vec<u16>,
    /// SYNs per second to the protected ports over the last second.
    pub syn_per_second: u64,
    /// Whether cookie connections keep window scaling, SACK and
    /// timestamps (`tcp_options` configured and the kernel set for it).
    pub tcp_options: bool,
}

/// Auto mode's decision, kept apart from the maps so it can be tested
/// with a made-up clock.
#[derive(Debug, Clone, Default)]
pub struct AutoSwitch {
    last: Option<(Instant, u64)>,
    calm_since: Option<Instant>,
    rate: u64,
}

impl AutoSwitch {
    /// Takes the SYN counter's total at `now`; returns whether cookies
    /// should be active, given whether they are.
    pub fn observe(
        &mut self,
        policy: &SynCookiePolicy,
        now: Instant,
        total: u64,
        active: bool,
    ) -> bool {
        if let Some((then, before)) = self.last {
            let elapsed = now.saturating_duration_since(then).as_secs_f64();
            if elapsed > 0.0 {
                self.rate = (total.saturating_sub(before) as f64 / elapsed) as u64;
            }
        }
        self.last = Some((now, total));
        match policy.mode {
            SynCookieMode::Off => false,
            SynCookieMode::On => true,
            SynCookieMode::Auto if !active => {
                self.calm_since = None;
                self.rate > policy.above
            }
            SynCookieMode::Auto => {
                if self.rate >= policy.below {
                    self.calm_since = None;
                    return true;
                }
                let since = *self.calm_since.get_or_insert(now);
                now.saturating_duration_since(since) < policy.quiet
            }
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }
}

/// The program's SYN-cookie maps and the state of the switch.
pub(super) struct SynCookies {
    config: Array<MapData, SynCookieConfig>,
    ports: Array<MapData, u64>,
    syns: PerCpuArray<MapData, u64>,
    policy: SynCookiePolicy,
    switch: AutoSwitch,
    /// The last reading of the kernel settings for `tcp_options`.
    options: Option<Result<u32, String>>,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, XdpError> {
    ebpf.take_map(name).ok_or(XdpError::Missing(name))
}

impl SynCookies {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, XdpError> {
        Ok(Self {
            config: Array::try_from(take(ebpf, map_names::SYNCOOKIE)?)?,
            ports: Array::try_from(take(ebpf, map_names::SYNCOOKIE_PORTS)?)?,
            syns: PerCpuArray::try_from(take(ebpf, map_names::SYNCOOKIE_SYNS)?)?,
            policy: SynCookiePolicy::default(),
            switch: AutoSwitch::default(),
            options: None,
        })
    }

    fn active(&self) -> Result<bool, XdpError> {
        Ok(self.config.get(&0, 0)?.flags & SynCookieConfig::ACTIVE != 0)
    }

    /// Applies a (re)loaded policy. Auto mode keeps its current state; the
    /// ports are written before the switch so a port never gets cookies
    /// with the settings of another.
    pub(super) fn apply(
        &mut self,
        policy: &SynCookiePolicy,
        interfaces: &[String],
    ) -> Result<(), XdpError> {
        if policy.mode != SynCookieMode::Off {
            ensure_sysctl(
                SYSCTL,
                SYSCTL_VALUE,
                (
                    "the kernel would refuse the connections XDP's cookies hand it",
                    "the kernel accepts the SYN cookies XDP sends",
                ),
                "set xdp.syn_cookies.mode: off",
            )?;
            if policy.tcp_options {
                ensure_sysctl(
                    TIMESTAMPS,
                    TIMESTAMPS_VALUE,
                    (
                        "the kernel would misread the options a cookie's timestamp carries",
                        "the kernel reads back the TCP options XDP's cookies carry",
                    ),
                    "leave out xdp.syn_cookies.tcp_options",
                )?;
            }
        }
        let mut bitmap = vec![0u64; PORT_WORDS as usize];
        for port in &policy.ports {
            bitmap[usize::from(*port >> 6)] |= 1 << (port & 63);
        }
        for (index, word) in bitmap.iter().enumerate() {
            self.ports.set(index as u32, word, 0)?;
        }
        let active = match policy.mode {
            SynCookieMode::Off => false,
            SynCookieMode::On => true,
            SynCookieMode::Auto => self.active()?,
        };
        self.policy = policy.clone();
        self.write(active, interfaces)
    }

    fn write(&mut self, active: bool, interfaces: &[String]) -> Result<(), XdpError> {
        let mtu = interfaces
            .iter()
            .filter_map(|i| {
                std::fs::read_to_string(format!("/sys/class/net/{i}/mtu"))
                    .ok()?
                    .trim()
                    .parse::<u32>()
                    .ok()
            })
            .min()
            .unwrap_or(DEFAULT_MTU);
        let mut flags = 0;
        if self.policy.mode != SynCookieMode::Off {
            flags |= SynCookieConfig::CONFIGURED;
        }
        if active {
            flags |= SynCookieConfig::ACTIVE;
        }
        flags |= self.option_flags();
        let settings = SynCookieConfig {
            flags,
            mss_v4: mtu.saturating_sub(40).clamp(536, 65_535) as u16,
            mss_v6: mtu.saturating_sub(60).clamp(1220, 65_535) as u16,
        };
        self.config.set(0, settings, 0)?;
        Ok(())
    }

    /// The option bits to write: none unless `tcp_options` is configured
    /// and the kernel is set for it (a change of its sysctls is logged).
    fn option_flags(&mut self) -> u32 {
        if !self.policy.tcp_options || self.policy.mode == SynCookieMode::Off {
            return 0;
        }
        let flags = tcp_option_flags();
        let known = self.options.as_ref().map(|r| r.is_ok());
        match &flags {
            Ok(_) if known != Some(true) => tracing::info!(
                "SYN cookies from XDP keep window scaling, SACK and timestamps (tcp_options)"
            ),
            Err(why) if known != Some(false) => tracing::warn!(
                %why,
                "SYN cookies from XDP without window scaling, SACK or timestamps although \
                 tcp_options is set: set net.ipv4.tcp_timestamps = 2 again"
            ),
            _ => {}
        }
        self.options = Some(flags.clone());
        flags.unwrap_or(0)
    }

    /// Once a second: reads the SYN rate and switches auto mode; follows
    /// the kernel settings the TCP options depend on.
    pub(super) fn tick(&mut self, now: Instant, interfaces: &[String]) -> Result<(), XdpError> {
        let total: u64 = self.syns.get(&0, 0)?.iter().sum();
        let active = self.active()?;
        if self.policy.tcp_options && self.policy.mode != SynCookieMode::Off {
            let current = self.config.get(&0, 0)?.flags
                & !(SynCookieConfig::CONFIGURED | SynCookieConfig::ACTIVE);
            if tcp_option_flags().unwrap_or(0) != current {
                self.write(active, interfaces)?;
            }
        }
        let wanted = self.switch.observe(&self.policy, now, total, active);
        if wanted != active && self.policy.mode == SynCookieMode::Auto {
            self.write(wanted, interfaces)?;
            if wanted {
                tracing::warn!(
                    syn_per_second = self.switch.rate(),
                    threshold = self.policy.above,
                    "SYN flood: answering SYNs to the listener ports with SYN cookies from XDP"
                );
            } else {
                tracing::info!(
                    syn_per_second = self.switch.rate(),
                    "SYN rate back to normal: SYN cookies from XDP off"
                );
            }
        }
        Ok(())
    }

    pub(super) fn status(&self) -> Result<SynCookieStatus, XdpError> {
        Ok(SynCookieStatus {
            mode: self.policy.mode.name(),
            active: self.active()?,
            ports: self.policy.ports.clone(),
            syn_per_second: self.switch.rate(),
            tcp_options: self.config.get(&0, 0)?.flags & SynCookieConfig::TCP_OPTIONS != 0,
        })
    }
}

/// Sets the sysctl at `path` to `value` (in the daemon's network namespace)
/// unless it is already, saying so; fails with what to do when it cannot.
fn ensure_sysctl(
    path: &str,
    value: &str,
    (why, purpose): (&str, &str),
    instead: &str,
) -> Result<(), XdpError> {
    let name = path.trim_start_matches("/proc/sys/").replace('/', ".");
    let current = std::fs::read_to_string(path).map_err(|e| {
        XdpError::Link(format!(
            "xdp.syn_cookies needs {name} = {value}, but {path} cannot be read: {e}"
        ))
    })?;
    let current = current.trim();
    if current == value {
        return Ok(());
    }
    std::fs::write(path, value).map_err(|e| {
        XdpError::Link(format!(
            "xdp.syn_cookies needs {name} = {value} (it is {current}: {why}), and setting it \
             failed: {e}; set it with `sysctl -w {name}={value}` or {instead}"
        ))
    })?;
    tracing::info!(was = current, "set {name} = {value}: {purpose}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto() -> SynCookiePolicy {
        SynCookiePolicy {
            mode: SynCookieMode::Auto,
            ports: vec![443],
            above: 1000,
            below: 500,
            quiet: Duration::from_secs(10),
            tcp_options: false,
        }
    }

    #[test]
    fn the_window_scale_is_the_kernel_s() {
        // Debian's defaults: tcp_rmem max 6 MiB, rmem_max 208 KiB.
        assert_eq!(kernel_wscale(6_291_456, 212_992), 7);
        assert_eq!(kernel_wscale(131_072, 212_992), 2);
        assert_eq!(kernel_wscale(4_096, 4_096), 0);
        assert_eq!(kernel_wscale(1 << 40, 0), 14);
        assert_eq!(kernel_wscale(0, 0), 0);
    }

    #[test]
    fn auto_switches_on_above_and_off_after_a_quiet_period_below() {
        let policy = auto();
        let mut switch = AutoSwitch::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut total = 0;
        let mut active = switch.observe(&policy, at(0), total, false);
        assert!(!active, "no rate yet");
        total += 900;
        active = switch.observe(&policy, at(1), total, active);
        assert!(!active, "900/s is below 1000/s");
        total += 5000;
        active = switch.observe(&policy, at(2), total, active);
        assert!(active, "5000/s switches on");
        assert_eq!(switch.rate(), 5000);
        // Between the thresholds: stays on.
        total += 700;
        active = switch.observe(&policy, at(3), total, active);
        assert!(active);
        // Below the lower one: stays on for the quiet period, then off.
        for s in 4..14 {
            total += 100;
            active = switch.observe(&policy, at(s), total, active);
            assert!(active, "still on at {s} s");
        }
        total += 100;
        active = switch.observe(&policy, at(14), total, active);
        assert!(!active, "off after 10 quiet seconds");
    }

    #[test]
    fn a_burst_during_the_quiet_period_restarts_it() {
        let policy = auto();
        let mut switch = AutoSwitch::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        switch.observe(&policy, at(0), 0, true);
        assert!(switch.observe(&policy, at(5), 100, true));
        assert!(switch.observe(&policy, at(6), 2000, true), "burst");
        assert!(
            switch.observe(&policy, at(15), 2100, true),
            "quiet from 15 s"
        );
        assert!(
            switch.observe(&policy, at(24), 2110, true),
            "9 quiet seconds"
        );
        assert!(
            !switch.observe(&policy, at(25), 2111, true),
            "10 quiet seconds"
        );
    }

    #[test]
    fn on_and_off_ignore_the_rate() {
        let mut switch = AutoSwitch::default();
        let now = Instant::now();
        let on = SynCookiePolicy {
            mode: SynCookieMode::On,
            ..auto()
        };
        assert!(switch.observe(&on, now, 0, false));
        let off = SynCookiePolicy {
            mode: SynCookieMode::Off,
            ..auto()
        };
        assert!(!switch.observe(&off, now + Duration::from_secs(1), 1_000_000, true));
    }

    #[test]
    fn ports_default_to_the_listeners() {
        let config = crate::config::Config::from_yaml(
            "listeners: [{address: '127.0.0.1:8443'}, {address: '[::1]:8443'}, {address: '127.0.0.1:80'}]\n\
             xdp: {syn_cookies: {mode: auto, auto_above_syn_per_second: 300}}\n",
            "t",
        )
        .unwrap();
        let policy = SynCookiePolicy::from_config(&config);
        assert_eq!(policy.ports, vec![80, 8443]);
        assert_eq!((policy.above, policy.below), (300, 150));
        let config = crate::config::Config::from_yaml(
            "listeners: [{address: '0.0.0.0:8443'}]\nxdp: {syn_cookies: {mode: on, ports: [9000]}}\n",
            "t",
        )
        .unwrap();
        assert_eq!(SynCookiePolicy::from_config(&config).ports, vec![9000]);
    }
}
