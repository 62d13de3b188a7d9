//! Scenario files: a named pair of impairments (forward and backward) and, for link mode,
//! the hosts and how they reach the emulator. See `netem/scenarios/` and its README.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{Direction, Impairment};

/// How a host reaches the emulator in link mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Nat {
    /// Its own address, routable from every other host.
    #[default]
    None,
    /// Behind a NAT that gives every destination its own mapping (nftables masquerade with
    /// random ports): only a relay (TURN) gets two such hosts talking.
    Symmetric,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    pub name: String,
    #[serde(default)]
    pub nat: Nat,
    /// This host's link toward the router (default: the scenario's `forward` for the first
    /// host, untouched for the others).
    pub uplink: Option<Impairment>,
    /// The router's link toward this host (default: `backward` for the first host).
    pub downlink: Option<Impairment>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Where the figures come from (e.g. "RFC 8867 §5.1").
    #[serde(default)]
    pub source: String,
    /// How long a run lasts when the harness is not told otherwise, seconds.
    pub duration_s: Option<f64>,
    /// Seed of every random choice (loss, jitter, reordering).
    #[serde(default = "one")]
    pub seed: u64,
    /// First host → second host (proxy mode: client → upstream).
    #[serde(default)]
    pub forward: Impairment,
    /// Second host → first host (proxy mode: upstream → client).
    #[serde(default)]
    pub backward: Impairment,
    /// Link mode hosts (default: "a" and "b", no NAT).
    #[serde(default)]
    pub hosts: Vec<HostSpec>,
    /// Directory trace paths are relative to.
    #[serde(skip)]
    pub base: PathBuf,
}

fn one() -> u64 {
    1
}

/// Scenarios shipped in `netem/scenarios/`, embedded so the binary finds them anywhere.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("rfc8867-5.1", include_str!("../scenarios/rfc8867-5.1.toml")),
    (
        "rfc8867-5.1-100ms",
        include_str!("../scenarios/rfc8867-5.1-100ms.toml"),
    ),
    ("rfc8867-5.2", include_str!("../scenarios/rfc8867-5.2.toml")),
    ("rfc8867-5.3", include_str!("../scenarios/rfc8867-5.3.toml")),
    ("rfc8867-5.6", include_str!("../scenarios/rfc8867-5.6.toml")),
    (
        "rfc8867-5.6-1000ms",
        include_str!("../scenarios/rfc8867-5.6-1000ms.toml"),
    ),
    ("cellular", include_str!("../scenarios/cellular.toml")),
    ("train", include_str!("../scenarios/train.toml")),
    ("wifi-bursty", include_str!("../scenarios/wifi-bursty.toml")),
    ("loss-10", include_str!("../scenarios/loss-10.toml")),
    (
        "loss-10-50ms",
        include_str!("../scenarios/loss-10-50ms.toml"),
    ),
    (
        "burst-loss-50ms",
        include_str!("../scenarios/burst-loss-50ms.toml"),
    ),
    (
        "symmetric-nat",
        include_str!("../scenarios/symmetric-nat.toml"),
    ),
    (
        "sfu-downlink-300k",
        include_str!("../scenarios/sfu-downlink-300k.toml"),
    ),
];

/// Traces the built-in scenarios refer to, by file name.
pub const BUILT_IN_TRACES: &[(&str, &str)] = &[(
    "traces/cellular-lte-drive.mahi",
    include_str!("../scenarios/traces/cellular-lte-drive.mahi"),
)];

impl Scenario {
    /// Parses and checks a scenario; trace paths resolve against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Scenario, String> {
        let mut s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        s.base = base.to_path_buf();
        s.forward.validate().map_err(|e| format!("[forward] {e}"))?;
        s.backward
            .validate()
            .map_err(|e| format!("[backward] {e}"))?;
        if s.hosts.is_empty() {
            s.hosts = vec![
                HostSpec {
                    name: "a".into(),
                    nat: Nat::None,
                    uplink: None,
                    downlink: None,
                },
                HostSpec {
                    name: "b".into(),
                    nat: Nat::None,
                    uplink: None,
                    downlink: None,
                },
            ];
        }
        let mut names = std::collections::HashSet::new();
        for h in &s.hosts {
            let ok = !h.name.is_empty()
                && h.name.len() <= 8
                && h.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
            if !ok {
                return Err(format!(
                    "host name {:?}: use 1-8 lowercase letters or digits",
                    h.name
                ));
            }
            if !names.insert(h.name.clone()) {
                return Err(format!("host {:?} is listed twice", h.name));
            }
        }
        if s.hosts.len() > 16 {
            return Err("at most 16 hosts".into());
        }
        if let Some(d) = s.duration_s
            && (d <= 0.0 || !d.is_finite())
        {
            return Err(format!("duration_s must be > 0, got {d}"));
        }
        // Checks every host's own links and loads traces now, so a bad one is reported
        // before anything runs.
        s.access_links()?;
        Ok(s)
    }

    /// A scenario by built-in name or by file path.
    pub fn load(name_or_path: &str) -> Result<Scenario, String> {
        let p = Path::new(name_or_path);
        if p.exists() {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            let base = p.parent().unwrap_or(Path::new("."));
            return Scenario::parse(&text, base).map_err(|e| format!("{}: {e}", p.display()));
        }
        let Some((_, text)) = BUILT_IN.iter().find(|(n, _)| *n == name_or_path) else {
            let names: Vec<_> = BUILT_IN.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "no scenario file {name_or_path:?} and no built-in scenario of that name (built in: {})",
                names.join(", ")
            ));
        };
        // Built-in traces live next to the crate; fall back to a temporary copy when the
        // binary runs elsewhere.
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let base = if here.exists() {
            here
        } else {
            let dir = std::env::temp_dir().join("natter-netem-scenarios");
            for (name, body) in BUILT_IN_TRACES {
                let f = dir.join(name);
                if let Some(parent) = f.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                }
                std::fs::write(&f, body).map_err(|e| e.to_string())?;
            }
            dir
        };
        Scenario::parse(text, &base).map_err(|e| format!("built-in {name_or_path}: {e}"))
    }

    /// Every host's (uplink, downlink), in host order, with their bottlenecks loaded.
    pub fn access_links(&self) -> Result<Vec<(Direction, Direction)>, String> {
        let load = |imp: &Impairment, what: &str| {
            Direction::load(imp.clone(), &self.base).map_err(|e| format!("{what} {e}"))
        };
        let clean = Impairment::default();
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let (up_default, down_default) = if i == 0 {
                    (&self.forward, &self.backward)
                } else {
                    (&clean, &clean)
                };
                // Errors name the table the impairment came from.
                let (up, up_name) = match &h.uplink {
                    Some(u) => (u, format!("host {} uplink:", h.name)),
                    None => (up_default, "[forward]".to_owned()),
                };
                let (down, down_name) = match &h.downlink {
                    Some(d) => (d, format!("host {} downlink:", h.name)),
                    None => (down_default, "[backward]".to_owned()),
                };
                Ok((load(up, &up_name)?, load(down, &down_name)?))
            })
            .collect()
    }
}
