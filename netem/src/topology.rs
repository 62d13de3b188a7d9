//! Link mode (root only): every host of a scenario in its own network and PID namespaces,
//! joined to the emulator's star router through a TUN device whose descriptor the emulator
//! holds. Hosts behind a NAT sit one namespace further back, behind a NAT namespace that
//! masquerades with nftables.
//!
//! Nothing outlives the harness, even under SIGKILL: namespaces are anonymous (held only by
//! their processes, never bind-mounted), each host's holder is `unshare --fork --kill-child`
//! with the parent-death signal set, so its PID 1 dies with the harness and takes every
//! process in that PID namespace with it; the TUN devices disappear with their descriptors.

use std::io;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::router::{Router, RouterCounters};
use crate::scenario::{Nat, Scenario};
use crate::stats::{Interval, Summary};
use crate::tun::{MAX_PACKET, Tun};

/// The public side: host i is 10.77.0.(i+1)/24.
fn public_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, i as u8 + 1)
}

/// Why link mode cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("link mode needs root (network namespaces and TUN devices)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    for tool in ["ip", "unshare", "nsenter"] {
        if which(tool).is_none() {
            return Some(format!("`{tool}` is not installed (iproute2 / util-linux)"));
        }
    }
    None
}

/// Why NAT hosts cannot be built here, if they cannot.
pub fn nat_unavailable() -> Option<String> {
    unavailable().or_else(|| {
        which("nft")
            .is_none()
            .then(|| "`nft` is not installed (Debian: nftables)".into())
    })
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

/// Sets the parent-death signal in the child: if the harness thread dies, so does it.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A pair of namespaces (network + PID) held by `unshare ... sleep infinity`.
struct Namespace {
    holder: Child,
    /// PID 1 of the new PID namespace, as seen from outside.
    init: u32,
}

impl Namespace {
    fn new() -> io::Result<Namespace> {
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--net",
            "--pid",
            "--fork",
            "--kill-child",
            "sleep",
            "infinity",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let holder = die_with_parent(&mut cmd).spawn()?;
        let pid = holder.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        let ours = std::fs::read_link("/proc/self/ns/net")?;
        loop {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            if let (Some(t), Some(init)) = (theirs, children.split_whitespace().next())
                && t != ours
                && let Ok(init) = init.parse()
            {
                return Ok(Namespace { holder, init });
            }
            if Instant::now() > deadline {
                let mut ns = Namespace { holder, init: 0 };
                ns.kill();
                return Err(io::Error::other("namespace holder did not start"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs a command inside the network namespace and waits for it.
    fn exec(&self, args: &[&str]) -> io::Result<()> {
        self.exec_stdin(args, "")
    }

    /// The same, with `input` on its standard input.
    fn exec_stdin(&self, args: &[&str], input: &str) -> io::Result<()> {
        use std::io::Write;
        let mut child = Command::new("nsenter")
            .args(["-t", &self.init.to_string(), "--net", "--"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut i) = child.stdin.take() {
            i.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "`{}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    fn kill(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// One host of a running topology.
pub struct Host {
    pub name: String,
    /// The address other hosts reach it at (its NAT's public address when behind one).
    pub addr: Ipv4Addr,
    /// Its own address (the private one when behind a NAT).
    pub local_addr: Ipv4Addr,
    ns: Namespace,
    nat: Option<Namespace>,
}

/// One direction of one host's access link.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AccessReport {
    pub host: String,
    /// "up" (host → router) or "down" (router → host).
    pub direction: &'static str,
    pub summary: Summary,
    /// Per-interval figures, in the JSON too.
    pub intervals: Vec<Interval>,
    #[serde(skip)]
    pub csv: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkReport {
    /// Access links that carried traffic.
    pub links: Vec<AccessReport>,
    pub router: RouterCounters,
    #[serde(serialize_with = "seconds")]
    pub interval: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

struct Emulator {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Router>,
}

/// A built topology. Dropping it tears everything down.
pub struct Topology {
    pub hosts: Vec<Host>,
    emulator: Option<Emulator>,
    procs: Vec<Child>,
}

static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Topology {
    /// Builds the scenario's hosts and starts the emulator. Needs root (see
    /// [`unavailable`]). Call from a thread that outlives the topology: children are tied
    /// to the creating thread's life.
    pub fn build(s: &Scenario) -> Result<Topology, String> {
        if let Some(why) = unavailable() {
            return Err(why);
        }
        if s.hosts.iter().any(|h| h.nat != Nat::None)
            && let Some(why) = nat_unavailable()
        {
            return Err(why);
        }
        let run = RUN.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{:04x}{:x}", std::process::id() & 0xffff, run & 0xf);
        let mut topo = Topology {
            hosts: Vec::new(),
            emulator: None,
            procs: Vec::new(),
        };
        let mut tuns = Vec::new();
        for (i, spec) in s.hosts.iter().enumerate() {
            let (host, tun) = build_host(&tag, i, &spec.name, spec.nat)
                .map_err(|e| format!("host {}: {e}", spec.name))?;
            topo.hosts.push(host);
            tuns.push(tun);
        }
        let addrs = topo.hosts.iter().map(|h| h.addr).collect();
        let router = Router::new(addrs, s.access_links()?, s.seed);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("netem-router".into())
                .spawn(move || route(router, tuns, stop))
                .map_err(|e| e.to_string())?
        };
        topo.emulator = Some(Emulator { stop, thread });
        Ok(topo)
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// A command that runs `program` inside `host`'s namespaces, dying with the harness.
    /// Environment: NETEM_HOST, and NETEM_ADDR_<NAME> for every host.
    pub fn command(&self, host: &str, program: &str) -> Option<Command> {
        let h = self.host(host)?;
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &h.ns.init.to_string(), "--net", "--pid", "--"])
            .arg(program)
            .env("NETEM_HOST", &h.name);
        for o in &self.hosts {
            cmd.env(
                format!("NETEM_ADDR_{}", o.name.to_uppercase()),
                o.addr.to_string(),
            );
        }
        die_with_parent(&mut cmd);
        Some(cmd)
    }

    /// Starts `sh -c script` on `host`; the topology keeps the child and stops it last.
    pub fn spawn_sh(&mut self, host: &str, script: &str) -> io::Result<&mut Child> {
        let mut cmd = self
            .command(host, "sh")
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no host {host}")))?;
        cmd.arg("-c").arg(script);
        let child = cmd.spawn()?;
        self.procs.push(child);
        Ok(self.procs.last_mut().expect("just pushed"))
    }

    /// Whether the `i`-th command started with [`Topology::spawn_sh`] has exited.
    pub fn try_wait(&mut self, i: usize) -> io::Result<Option<std::process::ExitStatus>> {
        match self.procs.get_mut(i) {
            Some(c) => c.try_wait(),
            None => Ok(None),
        }
    }

    /// Stops the emulator and returns what every access link carried; the hosts stay up
    /// until the topology is dropped.
    pub fn stop_emulator(&mut self) -> Option<LinkReport> {
        let emu = self.emulator.take()?;
        emu.stop.store(true, Ordering::Relaxed);
        let router = emu.thread.join().ok()?;
        let name = |i: usize| {
            self.hosts
                .get(i)
                .map(|h| h.name.clone())
                .unwrap_or_default()
        };
        let mut interval = crate::stats::INTERVAL;
        let links = router
            .links()
            .filter(|(_, _, rec)| rec.summary().offered_pkts > 0)
            .map(|(h, up, rec)| {
                interval = rec.interval_len();
                let direction = if up { "up" } else { "down" };
                AccessReport {
                    host: name(h),
                    direction,
                    summary: rec.summary(),
                    intervals: rec.intervals(),
                    csv: rec.csv(&format!("{}-{direction}", name(h))),
                }
            })
            .collect();
        Some(LinkReport {
            links,
            router: router.counters.clone(),
            interval,
        })
    }

    /// Kills every process, removes every namespace and device.
    pub fn teardown(&mut self) {
        for h in &mut self.hosts {
            h.ns.kill();
            if let Some(n) = &mut h.nat {
                n.kill();
            }
        }
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = self.stop_emulator();
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn build_host(tag: &str, i: usize, name: &str, nat: Nat) -> io::Result<(Host, Tun)> {
    let public = public_addr(i);
    let tun_name = format!("nt{tag}{i:x}");
    let tun = Tun::create(&tun_name)?;
    let ns = Namespace::new()?;
    // The namespace that owns the TUN device: the host itself, or its NAT.
    let (edge, nat_ns, local) = match nat {
        Nat::None => (None, None, public),
        Nat::Symmetric => {
            let n = Namespace::new()?;
            (Some(()), Some(n), Ipv4Addr::new(192, 168, i as u8 + 1, 2))
        }
    };
    let owner = nat_ns.as_ref().unwrap_or(&ns);
    let status = Command::new("ip")
        .args([
            "link",
            "set",
            "dev",
            &tun_name,
            "netns",
            &owner.init.to_string(),
        ])
        .status()?;
    if !status.success() {
        return Err(io::Error::other(
            "cannot move the TUN device into its namespace",
        ));
    }
    let cidr = format!("{public}/24");
    owner.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
    owner.exec(&["ip", "addr", "add", &cidr, "dev", &tun_name])?;
    owner.exec(&["ip", "link", "set", "dev", &tun_name, "up", "mtu", "1500"])?;
    owner.exec(&["ip", "link", "set", "dev", "lo", "up"])?;
    owner.exec(&["ip", "route", "replace", "default", "dev", &tun_name])?;
    if edge.is_some() {
        let nat_ns = nat_ns.as_ref().expect("nat namespace");
        // veth: host side in the host namespace, NAT side in the NAT namespace.
        let (vh, vn) = (format!("vh{tag}{i:x}"), format!("vn{tag}{i:x}"));
        nat_ns.exec(&[
            "ip", "link", "add", &vn, "type", "veth", "peer", "name", &vh,
        ])?;
        nat_ns.exec(&[
            "ip",
            "link",
            "set",
            "dev",
            &vh,
            "netns",
            &ns.init.to_string(),
        ])?;
        let gw = Ipv4Addr::new(192, 168, i as u8 + 1, 1);
        nat_ns.exec(&["ip", "addr", "add", &format!("{gw}/24"), "dev", &vn])?;
        nat_ns.exec(&["ip", "link", "set", "dev", &vn, "up"])?;
        nat_ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        // Symmetric NAT: every new flow gets a random source port, so the mapping depends on
        // the destination and a hole punched toward one peer is useless for another.
        let rules = format!(
            "table ip natter {{\n chain post {{\n  type nat hook postrouting priority 100;\n  oifname \"{tun_name}\" masquerade random,fully-random\n }}\n chain forwarding {{\n  type filter hook forward priority 0; policy drop;\n  iifname \"{vn}\" accept\n  ct state established,related accept\n }}\n}}\n"
        );
        nat_ns.exec_stdin(&["nft", "-f", "-"], &rules)?;
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        ns.exec(&["ip", "addr", "add", &format!("{local}/24"), "dev", &vh])?;
        ns.exec(&["ip", "link", "set", "dev", &vh, "up"])?;
        ns.exec(&["ip", "link", "set", "dev", "lo", "up"])?;
        ns.exec(&["ip", "route", "replace", "default", "via", &gw.to_string()])?;
    }
    Ok((
        Host {
            name: name.to_owned(),
            addr: public,
            local_addr: local,
            ns,
            nat: nat_ns,
        },
        tun,
    ))
}

/// The emulator loop: wait for packets or the next release, move packets, until told to
/// stop. Runs on a thread of its own with `ppoll` (nanosecond timeouts).
fn route(mut router: Router, tuns: Vec<Tun>, stop: Arc<AtomicBool>) -> Router {
    let start = Instant::now();
    let mut fds: Vec<libc::pollfd> = tuns
        .iter()
        .map(|t| libc::pollfd {
            fd: t.fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut buf = vec![0u8; MAX_PACKET];
    while !stop.load(Ordering::Relaxed) {
        let now = start.elapsed();
        // Wake for the next release, and at least every 50 ms to notice `stop`.
        let wait = router
            .poll_timeout()
            .map(|t| t.saturating_sub(now))
            .unwrap_or(Duration::from_millis(50))
            .min(Duration::from_millis(50));
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: fds points at fds.len() initialised pollfd structs.
        let n = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if n > 0 {
            for (i, pfd) in fds.iter().enumerate() {
                if pfd.revents & libc::POLLIN == 0 {
                    continue;
                }
                // Bounded per wake-up so one busy host cannot starve the releases.
                for _ in 0..256 {
                    match tuns[i].recv(&mut buf) {
                        Ok(len) => {
                            let _ = router.ingress(start.elapsed(), i, buf[..len].to_vec());
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        let now = start.elapsed();
        while let Some((to, p)) = router.poll_egress(now) {
            let _ = tuns[to].send(&p);
        }
    }
    router
}
