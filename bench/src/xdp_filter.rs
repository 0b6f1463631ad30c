//! The peer: `xdp-filter` from xdp-tools, loaded the way its users load it
//! (`xdp-filter load IFACE`), on a veth pair inside a network namespace the
//! harness creates, with its pinned maps in a private bpffs (see
//! [`PrivateBpffs`]) so nothing touches the host's /sys/fs/bpf or another
//! xdp-filter instance. Its deny lists are filled to 10,000 entries (the
//! maps' capacity), the first with `xdp-filter ip ADDR --mode src`, the rest
//! written into the same map with one `bpftool batch` using the value
//! xdp-filter itself wrote. See `bench/peers/xdp-filter.md`.

use std::{borrow::Cow, fmt::Write as _, net::IpAddr, process::Command};

use anyhow::{bail, ensure, Context, Result};
use aya::programs::{loaded_programs, Xdp};
use aya_obj::programs::XdpAttachType;
use serde_json::Value;

use crate::sys::{self, NetNs, PrivateBpffs, TempDir};

/// Where xdp-filter pins its maps (fixed in xdp-filter; inside the private bpffs).
const PIN_DIR: &str = "/sys/fs/bpf/xdp-filter";

/// One xdp-filter program attached to one interface.
pub struct Loaded {
    pub iface: &'static str,
    pub features: &'static str,
    pub mode: String,
    pub id: u32,
    pub name: String,
    /// A handle on the loaded program for BPF_PROG_TEST_RUN.
    pub xdp: Xdp,
}

pub struct XdpFilter {
    pub loaded: Vec<Loaded>,
    pub version: String,
    /// Entries in its IPv4 and IPv6 source lists.
    pub entries_v4: usize,
    pub entries_v6: usize,
    /// Interfaces to `xdp-filter unload` on drop (also those whose id was
    /// never read).
    attached: Vec<&'static str>,
    // Dropped in this order after `Drop::drop`: the namespace (detaching any
    // program), then the mount namespace (releasing every pin).
    netns: NetNs,
    bpffs: PrivateBpffs,
}

impl XdpFilter {
    /// Sets up the namespaces and nothing else.
    pub fn new() -> Result<Self> {
        let bpffs = PrivateBpffs::create("bpffs")?;
        let netns = sys::netns("xdp")?;
        sys::veth_pair(&netns, "xgb0", "xgb1")?;
        let version = sys::run_unchecked(Command::new("xdp-filter").args(["load", "--version"]))
            .map(|o| o.stdout.lines().next().unwrap_or("").trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Ok(Self {
            loaded: Vec::new(),
            version,
            entries_v4: 0,
            entries_v6: 0,
            attached: Vec::new(),
            netns,
            bpffs,
        })
    }

    /// `xdp-filter ARGS` inside both namespaces. libxdp's multi-program
    /// dispatcher is skipped, so the attached program is xdp-filter's own
    /// (what libxdp also falls back to when the dispatcher is unavailable)
    /// and a test run measures it alone.
    fn xdp_filter(&self, args: &[&str]) -> Result<sys::Output> {
        sys::run(self.xdp_filter_command(args))
    }

    fn xdp_filter_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.bpffs.nsenter(Some(&self.netns), "xdp-filter");
        cmd.args(args).env("LIBXDP_SKIP_DISPATCHER", "1");
        cmd
    }

    /// `bpftool -j ARGS` inside the private bpffs (for pinned maps).
    fn bpftool_json(&self, args: &[&str]) -> Result<Value> {
        let mut cmd = self.bpffs.nsenter(None, "bpftool");
        cmd.arg("-j").args(args);
        let out = sys::run(&mut cmd)?;
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("bpftool {}: not JSON: {}", args.join(" "), out.stdout))
    }

    /// Loads xdp-filter in native mode on `iface` with `features` ("all" is
    /// what `xdp-filter load IFACE` loads) and opens its program.
    pub fn load(&mut self, iface: &'static str, features: &'static str) -> Result<()> {
        self.attached.push(iface);
        self.xdp_filter(&["load", "--mode", "native", "--features", features, iface])?;
        let net = sys::run(
            Command::new("nsenter")
                .arg(format!("--net={}", self.netns.path().display()))
                .args(["bpftool", "-j", "net", "show", "dev", iface]),
        )?;
        let net: Value = serde_json::from_str(&net.stdout).context("bpftool net: not JSON")?;
        let entry = net
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.get("xdp").and_then(Value::as_array))
            .flatten()
            .find(|x| x.get("devname").and_then(Value::as_str) == Some(iface))
            .with_context(|| format!("no XDP program on {iface} after xdp-filter load: {net}"))?;
        let id = entry
            .get("id")
            .and_then(Value::as_u64)
            .context("bpftool net: no program id")? as u32;
        let mode = entry
            .get("mode")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let info = loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == id)
            .with_context(|| format!("program id {id} is not loaded"))?;
        let name = info.name_as_str().unwrap_or("?").to_string();
        ensure!(
            name.starts_with("xdpfilt"),
            "the program on {iface} is {name} (id {id}), not xdp-filter's: \
             did libxdp attach its dispatcher?"
        );
        let xdp = Xdp::from_program_info(info, Cow::Owned(name.clone()), XdpAttachType::Interface)
            .context("opening xdp-filter's program")?;
        self.loaded.push(Loaded {
            iface,
            features,
            mode,
            id,
            name,
            xdp,
        });
        Ok(())
    }

    /// Denies `target` as a source with `xdp-filter ip`, then adds `others`
    /// (up to the map's capacity) with the same map value. Returns the number
    /// of entries in the map.
    pub fn deny_sources(
        &mut self,
        target: IpAddr,
        others: &[IpAddr],
        tmp: &TempDir,
    ) -> Result<usize> {
        let (map, key_of): (&str, fn(&IpAddr) -> Vec<u8>) = match target {
            IpAddr::V4(_) => ("filter_ipv4", |a| match a {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(_) => Vec::new(),
            }),
            IpAddr::V6(_) => ("filter_ipv6", |a| match a {
                IpAddr::V6(a) => a.octets().to_vec(),
                IpAddr::V4(_) => Vec::new(),
            }),
        };
        let path = format!("{PIN_DIR}/{map}");
        self.xdp_filter(&["ip", &target.to_string(), "--mode", "src"])?;
        let bytes = |b: &[u8]| b.iter().map(u8::to_string).collect::<Vec<_>>();
        let mut lookup = vec!["map", "lookup", "pinned", &path, "key"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        lookup.extend(bytes(&key_of(&target)));
        let lookup: Vec<&str> = lookup.iter().map(String::as_str).collect();
        let entry = self.bpftool_json(&lookup)?;
        // Per-CPU map: every CPU holds the same flags; take CPU 0's bytes.
        let value: Vec<u8> = entry
            .pointer("/values/0/value")
            .or_else(|| entry.get("value"))
            .and_then(Value::as_array)
            .context("xdp-filter's entry has no value")?
            .iter()
            .map(|b| {
                let s = b.as_str().unwrap_or("");
                u8::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or(0)
            })
            .collect();
        ensure!(
            !value.is_empty(),
            "xdp-filter's entry has an empty value: {entry}"
        );
        let show = self.bpftool_json(&["map", "show", "pinned", &path])?;
        let capacity = show
            .get("max_entries")
            .and_then(Value::as_u64)
            .context("bpftool map show: no max_entries")? as usize;
        let value_text = bytes(&value).join(" ");
        let mut batch = String::new();
        for addr in others
            .iter()
            .filter(|a| **a != target && a.is_ipv4() == target.is_ipv4())
            .take(capacity.saturating_sub(1))
        {
            writeln!(
                batch,
                "map update pinned {path} key {} value {value_text}",
                bytes(&key_of(addr)).join(" ")
            )?;
        }
        let file = tmp.path().join(format!("{map}.batch"));
        std::fs::write(&file, batch)?;
        let mut cmd = self.bpffs.nsenter(None, "bpftool");
        cmd.arg("batch").arg("file").arg(&file);
        sys::run(&mut cmd).context("filling xdp-filter's deny list")?;
        let dump = self.bpftool_json(&["map", "dump", "pinned", &path])?;
        let entries = dump.as_array().map(Vec::len).unwrap_or(0);
        match target {
            IpAddr::V4(_) => self.entries_v4 = entries,
            IpAddr::V6(_) => self.entries_v6 = entries,
        }
        Ok(entries)
    }

    pub fn program(&mut self, iface: &str) -> Result<&mut Xdp> {
        match self.loaded.iter_mut().find(|l| l.iface == iface) {
            Some(l) => Ok(&mut l.xdp),
            None => bail!("xdp-filter is not loaded on {iface}"),
        }
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        // Close our handles first, then detach. Deleting the namespace and
        // the private bpffs (the fields, next) would remove everything even
        // if this failed.
        self.loaded.clear();
        for iface in std::mem::take(&mut self.attached) {
            sys::run_cleanup(self.xdp_filter_command(&["unload", iface]));
        }
    }
}
