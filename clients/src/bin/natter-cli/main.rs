//! natter-cli: an end-to-end-encrypted natter client for the terminal.
//!
//! Each device lives in a directory (`--home`, default `~/.natter-cli`): its credentials, its
//! sealed crypto state and its message history. Every command connects, takes in whatever
//! arrived while it was away (acknowledging it only once stored), does its work, and exits.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use natter_client::args::parse_duration;

mod call;
use call::{calls_in, calls_out};
mod group_call;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use natter_client::protocol::{Conv, GroupId, UserId};
use natter_client::{Client, ClientEvent, ClientEvents, HistoryItem, ItemKind};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "natter-cli",
    version,
    about = "End-to-end-encrypted natter client for the terminal",
    long_about = "End-to-end-encrypted natter client for the terminal.\n\n\
        Messages are encrypted on this device (Olm for 1:1, Megolm for groups) and the server\n\
        only stores ciphertext. A device's keys and history live in --home.\n\n\
        Start with `natter-cli register --phone +15551230001` against a server in development\n\
        mode (the default of `natter`), then `natter-cli contacts add <phone>` and\n\
        `natter-cli send <phone> hello`. Contacts are named by phone number, by the name given\n\
        to `contacts add`, or as u<ID>; groups by their id (g<ID> or just the number)."
)]
struct Cli {
    /// This device's directory (credentials, keys, history).
    #[arg(long, env = "NATTER_HOME", global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Print machine-readable JSON (one object per line) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Args)]
struct ServerArg {
    /// The server's base URL.
    #[arg(long, env = "NATTER_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register a phone number as this device (a primary device). In development mode the
    /// server returns the code; otherwise it is sent to the phone: run again with --code.
    Register {
        #[arg(long)]
        phone: String,
        /// The verification code sent to the phone.
        #[arg(long)]
        code: Option<String>,
        /// A name for this device.
        #[arg(long, default_value = "natter-cli")]
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Link this (new) device to an account, with a code from the primary (`link-code`).
    Link {
        #[arg(long)]
        code: String,
        #[arg(long, default_value = "natter-cli")]
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Primary device: print a one-time code for linking a new device.
    LinkCode,
    /// Show this device's user and device ids.
    Whoami,
    /// Contacts, found by phone number.
    #[command(subcommand)]
    Contacts(ContactsCmd),
    /// Send a text message to a contact (or with --group, to a group).
    Send {
        /// Contact: phone, contact name, or u<ID>; with --group, the group id.
        to: String,
        /// The text (several words are joined with spaces).
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
        #[arg(long)]
        group: bool,
    },
    /// Chat interactively: type lines to send, see replies as they come. /quit or Ctrl-D ends.
    Chat {
        to: String,
        #[arg(long)]
        group: bool,
    },
    /// Take in what arrived and print it.
    Sync,
    /// Stay connected and print everything that arrives, until Ctrl-C.
    Listen,
    /// Show a conversation's history (from the local store).
    History {
        to: String,
        #[arg(long)]
        group: bool,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Search all local history for a text.
    Search {
        text: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Groups: create, add, remove, leave, list, info.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Encrypt a file, upload it, and send its key to a contact (or --group).
    SendFile {
        to: String,
        path: PathBuf,
        #[arg(long)]
        group: bool,
    },
    /// Download and decrypt the file of a message (its id is in `history`).
    Download {
        message: i64,
        /// Directory or file to write to.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Show the safety number with a contact, to compare out of band.
    SafetyNumber { contact: String },
    /// This account's devices.
    #[command(subcommand)]
    Devices(DevicesCmd),
    /// Call a contact (audio, Opus over WebRTC) and show live call statistics. The audio is a
    /// tone (or a WAV file); the other side's is checked frame by frame. With --group, join
    /// (or start) a group's call through the server's SFU instead: every other member's
    /// devices ring, and what arrives from each participant is shown.
    Call {
        /// The contact to call (not with --group).
        #[arg(required_unless_present = "group")]
        to: Option<String>,
        /// Join this group's call (g<ID> or the number).
        #[arg(long, value_name = "GROUP", conflicts_with_all = ["to", "count"])]
        group: Option<String>,
        /// How long each call lasts once connected.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Calls to place one after the other (a summary line ends the output).
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[command(flatten)]
        media: MediaArgs,
    },
    /// Wait for incoming calls and answer them; each lasts until the caller hangs up.
    Answer {
        /// Calls to answer before exiting.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Give up if no call comes within this long.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        wait: Duration,
        #[command(flatten)]
        media: MediaArgs,
    },
}

#[derive(Debug, Args)]
struct MediaArgs {
    /// Frequency of the tone to send (Hz).
    #[arg(long)]
    tone: Option<f32>,
    /// Frequency of the tone expected from the other side (Hz).
    #[arg(long)]
    expect_tone: Option<f32>,
    /// Send a speech-like signal instead of a steady tone.
    #[arg(long)]
    speech: bool,
    /// Send this WAV file instead of a tone (any rate, converted to 48 kHz mono).
    #[arg(long, value_name = "FILE")]
    wav: Option<PathBuf>,
    /// Write the received audio to this WAV file.
    #[arg(long, value_name = "FILE")]
    wav_out: Option<PathBuf>,
    /// Connect only through TURN relays (ICE policy `relay`).
    #[arg(long)]
    relay: bool,
    /// Connect only through TURN relays reached over TCP (for networks that block UDP).
    #[arg(long)]
    relay_tcp: bool,
    /// Local address for media (default: every non-loopback interface; e.g. 127.0.0.1:0 to
    /// keep a call on this machine's loopback).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:0")]
    media_bind: String,
    /// Send video too: a moving VP8 test pattern stamped with its frame number and capture
    /// time, which the other side reads back to measure frame rate, freezes and delay.
    /// Video the other side sends is received and measured either way.
    #[arg(long)]
    video: bool,
    /// Video picture size, WIDTHxHEIGHT (even, at least 128x80).
    #[arg(long, value_name = "WxH", default_value = "640x360", value_parser = parse_size)]
    video_size: (u32, u32),
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    video_fps: u32,
    /// Video target bitrate, kbit/s.
    #[arg(long, default_value_t = 800)]
    video_kbps: u32,
    /// Keep the encoders' settings fixed instead of adapting them to the link: Opus at
    /// 32 kbit/s in 20 ms packets without FEC, RED or DTX, and video at its configured size
    /// and frame rate (its bitrate still follows the bandwidth estimate). For comparisons;
    /// by default FEC and RED come on with loss, and bitrate, packet time, picture size and
    /// frame rate step down on a thin link.
    #[arg(long)]
    no_adapt: bool,
}

fn parse_size(s: &str) -> std::result::Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("'{s}' is not WIDTHxHEIGHT, e.g. 640x360"))?;
    let num = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| format!("'{s}' is not WIDTHxHEIGHT, e.g. 640x360"))
    };
    Ok((num(w)?, num(h)?))
}

impl MediaArgs {
    /// Caller and callee default to different tones, so each can tell the other's apart.
    fn options(&self, caller: bool) -> Result<natter_client::MediaOptions> {
        use natter_client::audio::AudioSource;
        let (mine, theirs) = if caller {
            (440.0, 660.0)
        } else {
            (660.0, 440.0)
        };
        let freq = self.tone.unwrap_or(mine);
        let source = match (&self.wav, self.speech) {
            (Some(p), _) => AudioSource::wav(p).map_err(|e| anyhow!(e))?,
            (None, true) => AudioSource::Speech { freq },
            (None, false) => AudioSource::Tone { freq },
        };
        Ok(natter_client::MediaOptions {
            source,
            expect_tone: Some(self.expect_tone.unwrap_or(theirs)),
            relay_only: self.relay || self.relay_tcp,
            turn_tcp_only: self.relay_tcp,
            wav_out: self.wav_out.clone(),
            udp_bind: vec![self.media_bind.clone()],
            video: self.video.then_some(natter_client::VideoOptions {
                width: self.video_size.0,
                height: self.video_size.1,
                fps: self.video_fps,
                bitrate_kbps: self.video_kbps,
            }),
            adapt: !self.no_adapt,
            ..Default::default()
        })
    }

    fn call_media(&self) -> natter_client::protocol::call::Media {
        use natter_client::protocol::call::Media;
        if self.video {
            Media::Video
        } else {
            Media::Audio
        }
    }
}

#[derive(Debug, Subcommand)]
enum ContactsCmd {
    /// Find a user by phone number and add them.
    Add {
        phone: String,
        #[arg(long)]
        name: Option<String>,
    },
    List,
}

#[derive(Debug, Subcommand)]
enum GroupCmd {
    /// Create a group with these contacts.
    Create {
        name: String,
        members: Vec<String>,
    },
    /// Add members (admins only).
    Add {
        group: String,
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Remove members (admins only); they cannot read what is sent afterwards.
    Remove {
        group: String,
        #[arg(required = true)]
        members: Vec<String>,
    },
    Leave {
        group: String,
    },
    List,
    Info {
        group: String,
    },
}

#[derive(Debug, Subcommand)]
enum DevicesCmd {
    List,
    /// Revoke a device (the primary may revoke any linked device).
    Revoke {
        device: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

fn home(cli: &Cli) -> Result<PathBuf> {
    if let Some(h) = &cli.home {
        return Ok(h.clone());
    }
    let base = std::env::var_os("HOME").ok_or_else(|| anyhow!("set --home or HOME"))?;
    Ok(Path::new(&base).join(".natter-cli"))
}

struct Out {
    json: bool,
}

impl Out {
    fn line(&self, text: impl AsRef<str>, value: serde_json::Value) {
        if self.json {
            println!("{value}");
        } else {
            println!("{}", text.as_ref());
        }
    }

    fn item(&self, client: &Client, m: &HistoryItem) {
        if self.json {
            println!("{}", serde_json::to_string(m).expect("serializes"));
            return;
        }
        let who = if m.outgoing {
            "me".to_owned()
        } else {
            name_of(client, m.sender)
        };
        let conv = match m.conv {
            Conv::Direct(u) => name_of(client, u),
            Conv::Group(g) => format!("{g}"),
        };
        let ticks = match m.status.as_str() {
            "sent" => " ✓",
            "delivered" => " ✓✓",
            "read" => " ✓✓ (read)",
            "sending" => " …",
            "failed" => " (failed)",
            _ => "",
        };
        let body = match m.kind {
            ItemKind::Text => m.body.clone(),
            ItemKind::File => format!(
                "[file {} ({} bytes) — natter-cli download {}]",
                m.body,
                m.file.as_ref().map(|f| f.size).unwrap_or(0),
                m.id
            ),
            ItemKind::Error => format!("[could not decrypt: {}]", m.body),
        };
        println!("#{} [{conv}] {who}: {body}{ticks}", m.id);
    }
}

fn name_of(client: &Client, user: UserId) -> String {
    match client.contacts() {
        Ok(list) => list
            .into_iter()
            .find(|(u, _, _)| *u == user)
            .map(|(_, phone, name)| name.unwrap_or(phone))
            .unwrap_or_else(|| user.to_string()),
        Err(_) => user.to_string(),
    }
}

/// A contact by phone, contact name or u<ID>; an unknown phone number is looked up.
async fn resolve_user(client: &Client, who: &str) -> Result<UserId> {
    if let Some(id) = who.strip_prefix('u').and_then(|s| s.parse().ok()) {
        return Ok(UserId(id));
    }
    let contacts = client.contacts()?;
    if let Some((u, _, _)) = contacts
        .iter()
        .find(|(_, phone, name)| phone == who || name.as_deref() == Some(who))
    {
        return Ok(*u);
    }
    if who.starts_with('+') || who.chars().all(|c| c.is_ascii_digit()) {
        let found = client.lookup(&[who.to_owned()]).await?;
        if let Some(m) = found.first() {
            return Ok(m.user);
        }
        bail!("no natter user has the number {who}");
    }
    bail!("unknown contact {who:?}: add it with `natter-cli contacts add <phone> --name {who}`")
}

fn parse_group(g: &str) -> Result<GroupId> {
    g.trim_start_matches('g')
        .parse()
        .map(GroupId)
        .map_err(|_| anyhow!("{g:?} is not a group id (like g3 or 3)"))
}

async fn resolve_conv(client: &Client, to: &str, group: bool) -> Result<Conv> {
    Ok(
        if group || (to.starts_with('g') && parse_group(to).is_ok()) {
            Conv::Group(parse_group(to)?)
        } else {
            Conv::Direct(resolve_user(client, to).await?)
        },
    )
}

/// Waits until the backlog is in, printing what arrived when `print`.
async fn catch_up(
    client: &Client,
    events: &mut ClientEvents,
    out: &Out,
    print: bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .map_err(|_| anyhow!("could not reach the server within 30 s"))?
            .ok_or_else(|| anyhow!("the client stopped"))?;
        match ev {
            ClientEvent::BacklogDone => return Ok(()),
            ClientEvent::Revoked { reason } => bail!("this device can no longer sign in: {reason}"),
            ClientEvent::Message(m) if print => out.item(client, &m),
            ClientEvent::IdentityChanged { user, device, .. } => {
                eprintln!(
                    "warning: {} ({device}) has a new identity key; check the safety number",
                    name_of(client, user)
                )
            }
            _ => {}
        }
    }
}

/// A progress bar on stderr when it is a terminal.
fn progress(label: &str) -> impl FnMut(u64, u64) {
    let tty = std::io::stderr().is_terminal();
    let label = label.to_owned();
    move |done, total| {
        if !tty {
            return;
        }
        let frac = if total == 0 {
            1.0
        } else {
            done as f64 / total as f64
        };
        let filled = (frac * 30.0) as usize;
        eprint!(
            "\r{label} [{}{}] {:3.0}% {:.1}/{:.1} MB",
            "#".repeat(filled),
            ".".repeat(30 - filled),
            frac * 100.0,
            done as f64 / 1e6,
            total as f64 / 1e6
        );
        if done >= total {
            eprintln!();
        }
        let _ = std::io::stderr().flush();
    }
}

async fn run(cli: Cli) -> Result<()> {
    let dir = home(&cli)?;
    let out = Out { json: cli.json };
    let (client, mut events) = match &cli.cmd {
        Command::Register {
            phone,
            code,
            name,
            server,
        } => Client::register(&dir, &server.server, phone, code.as_deref(), name)
            .await
            .with_context(|| format!("registering {phone}"))?,
        Command::Link { code, name, server } => Client::link(&dir, &server.server, code, name)
            .await
            .context("linking this device")?,
        _ => Client::open(&dir).await?,
    };
    let print_backlog = matches!(cli.cmd, Command::Sync | Command::Listen);
    let result = async {
        catch_up(&client, &mut events, &out, print_backlog).await?;
        command(&cli.cmd, &client, &mut events, &out).await
    }
    .await;
    client.shutdown();
    // Let the socket close cleanly (the acks queued before it go out first).
    tokio::time::sleep(Duration::from_millis(50)).await;
    result
}

async fn command(
    cmd: &Command,
    client: &Client,
    events: &mut ClientEvents,
    out: &Out,
) -> Result<()> {
    match cmd {
        Command::Register { .. } | Command::Link { .. } => {
            client.publish_keys().await?;
            let c = client.credentials();
            out.line(
                format!(
                    "registered: user {} device {}{}",
                    c.user,
                    c.device,
                    if c.primary { " (primary)" } else { " (linked)" }
                ),
                json!({"user": c.user, "device": c.device, "primary": c.primary}),
            );
        }
        Command::Whoami => {
            let c = client.credentials();
            out.line(
                format!("user {} device {} primary={}", c.user, c.device, c.primary),
                json!({"user": c.user, "device": c.device, "primary": c.primary}),
            );
        }
        Command::LinkCode => {
            let (code, expires_ms) = client.link_code().await?;
            out.line(
                format!("link code: {code}\non the new device: natter-cli --home <dir> link --code {code}"),
                json!({"code": code, "expires_ms": expires_ms}),
            );
        }
        Command::Contacts(ContactsCmd::Add { phone, name }) => {
            let found = client.lookup(std::slice::from_ref(phone)).await?;
            let m = found
                .first()
                .ok_or_else(|| anyhow!("no natter user has the number {phone}"))?;
            client.add_contact(m.user, &m.phone, name.as_deref())?;
            out.line(
                format!("added {} as {}", m.phone, m.user),
                json!({"user": m.user, "phone": m.phone, "name": name}),
            );
        }
        Command::Contacts(ContactsCmd::List) => {
            for (u, phone, name) in client.contacts()? {
                out.line(
                    format!("{u}\t{phone}\t{}", name.clone().unwrap_or_default()),
                    json!({"user": u, "phone": phone, "name": name}),
                );
            }
        }
        Command::Send { to, text, group } => {
            let text = text.join(" ");
            let sent = match resolve_conv(client, to, *group).await? {
                Conv::Direct(u) => client.send_text(u, &text).await?,
                Conv::Group(g) => client.send_group_text(g, &text).await?,
            };
            out.line(
                format!("sent ✓ (message #{}, seq {})", sent.id, sent.seq),
                json!({"id": sent.id, "seq": sent.seq, "ts_ms": sent.ts_ms}),
            );
        }
        Command::Chat { to, group } => chat(client, events, out, to, *group).await?,
        Command::Sync => {}
        Command::Listen => loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(ClientEvent::Message(m)) => out.item(client, &m),
                    Some(ClientEvent::Revoked { reason }) => bail!("revoked: {reason}"),
                    Some(other) if out.json => println!("{}", json!({"event": format!("{other:?}")})),
                    Some(_) => {}
                    None => return Ok(()),
                },
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        },
        Command::History { to, group, limit } => {
            let conv = resolve_conv(client, to, *group).await?;
            for m in client.history(conv, *limit)? {
                out.item(client, &m);
            }
        }
        Command::Search { text, limit } => {
            for m in client.search(text, *limit)? {
                out.item(client, &m);
            }
        }
        Command::Group(g) => group_cmd(client, out, g).await?,
        Command::SendFile { to, path, group } => {
            let bar = progress("upload");
            let sent = match resolve_conv(client, to, *group).await? {
                Conv::Direct(u) => client.send_file(u, path, bar).await?,
                Conv::Group(g) => client.send_group_file(g, path, bar).await?,
            };
            out.line(
                format!("sent file ✓ (message #{}, seq {})", sent.id, sent.seq),
                json!({"id": sent.id, "seq": sent.seq}),
            );
        }
        Command::Download { message, out: dest } => {
            let path = client
                .download(*message, dest, progress("download"))
                .await?;
            out.line(
                format!("saved {} (digest checked)", path.display()),
                json!({"path": path}),
            );
        }
        Command::SafetyNumber { contact } => {
            let u = resolve_user(client, contact).await?;
            let n = client.safety_number(u).await?;
            out.line(
                format!("safety number with {}:\n{n}", name_of(client, u)),
                json!({"user": u, "safety_number": n}),
            );
        }
        Command::Devices(DevicesCmd::List) => {
            for d in client.devices().await? {
                let this = if d.device == client.device() {
                    " (this device)"
                } else {
                    ""
                };
                out.line(
                    format!(
                        "{}\t{}\t{}{this}",
                        d.device,
                        d.name,
                        if d.primary { "primary" } else { "linked" }
                    ),
                    json!({"device": d.device, "name": d.name, "primary": d.primary}),
                );
            }
        }
        Command::Call {
            to,
            group: Some(g),
            duration,
            media,
            ..
        } => {
            debug_assert!(to.is_none());
            group_call::group_call(client, out, parse_group(g)?, *duration, media).await?;
        }
        Command::Call {
            to,
            duration,
            count,
            media,
            ..
        } => {
            let to = to.as_deref().expect("clap requires it without --group");
            let u = resolve_user(client, to).await?;
            calls_out(client, out, u, *duration, *count, media).await?;
        }
        Command::Answer { count, wait, media } => {
            calls_in(client, events, out, *count, *wait, media).await?;
        }
        Command::Devices(DevicesCmd::Revoke { device }) => {
            client
                .revoke_device(natter_client::protocol::DeviceId(*device))
                .await?;
            out.line(format!("revoked d{device}"), json!({"revoked": device}));
        }
    }
    Ok(())
}

async fn group_cmd(client: &Client, out: &Out, cmd: &GroupCmd) -> Result<()> {
    let show = |g: &natter_client::protocol::GroupInfo| {
        let members: Vec<String> = g
            .members
            .iter()
            .map(|m| {
                let n = name_of(client, m.user);
                if m.admin { format!("{n} (admin)") } else { n }
            })
            .collect();
        out.line(
            format!("{} \"{}\": {}", g.group, g.name, members.join(", ")),
            serde_json::to_value(g).expect("serializes"),
        );
    };
    match cmd {
        GroupCmd::Create { name, members } => {
            let mut users = Vec::new();
            for m in members {
                users.push(resolve_user(client, m).await?);
            }
            show(&client.create_group(name, &users).await?);
        }
        GroupCmd::Add { group, members } => {
            let mut users = Vec::new();
            for m in members {
                users.push(resolve_user(client, m).await?);
            }
            show(&client.add_members(parse_group(group)?, &users).await?);
        }
        GroupCmd::Remove { group, members } => {
            let mut users = Vec::new();
            for m in members {
                users.push(resolve_user(client, m).await?);
            }
            show(&client.remove_members(parse_group(group)?, &users).await?);
        }
        GroupCmd::Leave { group } => {
            let g = parse_group(group)?;
            client.leave_group(g).await?;
            out.line(format!("left {g}"), json!({"left": g}));
        }
        GroupCmd::List => {
            for (g, name, members) in client.groups()? {
                out.line(
                    format!("{g} \"{name}\" ({} members)", members.len()),
                    json!({"group": g, "name": name, "members": members}),
                );
            }
        }
        GroupCmd::Info { group } => show(&client.group_info(parse_group(group)?).await?),
    }
    Ok(())
}

async fn chat(
    client: &Client,
    events: &mut ClientEvents,
    out: &Out,
    to: &str,
    group: bool,
) -> Result<()> {
    let conv = resolve_conv(client, to, group).await?;
    for m in client.history(conv, 20)? {
        out.item(client, &m);
    }
    if !out.json {
        eprintln!("chatting with {to}; type a line to send it, /quit to leave");
    }
    let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut buf = String::new();
        while stdin.read_line(&mut buf).map(|n| n > 0).unwrap_or(false) {
            if line_tx.send(buf.trim_end().to_owned()).is_err() {
                break;
            }
            buf.clear();
        }
    });
    loop {
        tokio::select! {
            line = lines.recv() => {
                let Some(line) = line else { return Ok(()) };
                if line == "/quit" {
                    return Ok(());
                }
                if line.is_empty() {
                    continue;
                }
                let sent = match conv {
                    Conv::Direct(u) => client.send_text(u, &line).await,
                    Conv::Group(g) => client.send_group_text(g, &line).await,
                };
                match sent {
                    Ok(s) => if let Some(m) = client.history(conv, 1)?.into_iter().find(|m| m.id == s.id) {
                        out.item(client, &m);
                    },
                    Err(e) => eprintln!("not sent: {e}"),
                }
            }
            ev = events.next() => match ev {
                Some(ClientEvent::Message(m)) if m.conv == conv => {
                    out.item(client, &m);
                    if !m.outgoing && let Some(seq) = m.seq {
                        let _ = client.mark_read(conv, m.sender, &[seq]).await;
                    }
                }
                Some(ClientEvent::Message(m)) => {
                    if !out.json {
                        eprintln!("(new message elsewhere: #{} from {})", m.id, name_of(client, m.sender));
                    }
                }
                Some(ClientEvent::Typing { conv: c, from, active: true }) if c == conv => {
                    if !out.json { eprintln!("({} is typing…)", name_of(client, from)); }
                }
                Some(ClientEvent::Disconnected { reason }) => eprintln!("(disconnected: {reason}; reconnecting)"),
                Some(ClientEvent::Revoked { reason }) => bail!("revoked: {reason}"),
                Some(_) => {}
                None => return Ok(()),
            },
        }
    }
}
