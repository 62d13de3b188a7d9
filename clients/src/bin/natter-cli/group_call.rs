//! `natter-cli call --group`: joins a group's call through the SFU, publishes the test
//! audio (and video), and shows once a second who is in the call and what arrives from
//! each of them.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use natter_client::protocol::GroupId;
use natter_client::protocol::room::RoomTrack;
use natter_client::{ActiveRoom, Client};
use serde_json::json;

use crate::{MediaArgs, Out, name_of};

/// One line per received track: what arrived in the last second and what it became.
fn track_line(client: &Client, t: &RoomTrack, s: &natter_client::TrackStats, kbps: f64) -> String {
    let who = format!("{} {}", name_of(client, t.user), t.device);
    match (&s.audio, &s.picture) {
        (Some(a), _) => {
            let spanned = a.frames_received + a.frames_lost;
            let loss = if spanned == 0 {
                0.0
            } else {
                100.0 * a.frames_lost as f64 / spanned as f64
            };
            let decoded = if spanned == 0 {
                0.0
            } else {
                100.0 * (a.frames_decoded + a.frames_concealed).min(spanned) as f64 / spanned as f64
            };
            format!(
                "{who} audio: {kbps:.0} kbit/s · loss {loss:.1}% · decoded {decoded:.1}% · jitter {:.1} ms",
                a.jitter_ms
            )
        }
        (None, Some(v)) => format!(
            "{who} video: {kbps:.0} kbit/s · {}x{} · {:.0} fps · rendered {} · freezes {} · longest gap {} ms",
            v.video_width,
            v.video_height,
            v.video_fps,
            v.video_frames_rendered,
            v.video_freezes,
            v.video_longest_gap_ms
        ),
        _ => format!("{who}: nothing yet"),
    }
}

fn roster_line(client: &Client, room: &ActiveRoom) -> String {
    let v = room.view();
    let people: Vec<String> = v
        .roster
        .iter()
        .map(|e| {
            let mut flags = Vec::new();
            if e.muted {
                flags.push("muted");
            }
            if e.camera {
                flags.push("camera");
            }
            if e.hand {
                flags.push("hand raised");
            }
            let me = if e.device == client.device() {
                " (you)"
            } else {
                ""
            };
            if flags.is_empty() {
                format!("{}{me}", name_of(client, e.user))
            } else {
                format!("{}{me} [{}]", name_of(client, e.user), flags.join(", "))
            }
        })
        .collect();
    format!("in the call: {}", people.join(", "))
}

pub async fn group_call(
    client: &Client,
    out: &Out,
    group: GroupId,
    duration: Duration,
    media: &MediaArgs,
) -> Result<()> {
    let mut opts = media.options(true)?;
    opts.expect_tone = None;
    let room = client.join_room(group, media.call_media(), opts).await?;
    eprintln!("joined the call of {group} ({})", room.call_id);
    room.wait_for(Duration::from_secs(20), |v| {
        v.connected || v.ended.is_some()
    })
    .await?;
    let end = tokio::time::Instant::now() + duration;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last_bytes: HashMap<String, u64> = HashMap::new();
    let mut most = 0;
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        most = most.max(room.view().roster.len());
        if let Some(why) = room.view().ended {
            eprintln!("out of the call: {why}");
            break;
        }
        if out.json {
            continue;
        }
        eprintln!("{}", roster_line(client, &room));
        for (t, s) in room.track_stats() {
            let before = last_bytes.insert(t.mid.clone(), s.bytes).unwrap_or(s.bytes);
            let kbps = (s.bytes.saturating_sub(before) * 8) as f64 / 1000.0;
            eprintln!("  {}", track_line(client, &t, &s, kbps));
        }
    }
    let stats = room.track_stats();
    room.leave().await.ok();
    let (mut spanned, mut decoded) = (0u64, 0u64);
    let (mut fps, mut videos, mut freezes) = (0.0, 0u32, 0u64);
    for (_, s) in &stats {
        if let Some(a) = &s.audio {
            spanned += a.frames_received + a.frames_lost;
            decoded +=
                (a.frames_decoded + a.frames_concealed).min(a.frames_received + a.frames_lost);
        }
        if let Some(v) = &s.picture {
            fps += v.video_fps_avg;
            videos += 1;
            freezes += v.video_freezes;
        }
    }
    let pct = if spanned == 0 {
        0.0
    } else {
        100.0 * decoded as f64 / spanned as f64
    };
    let video = if videos > 0 {
        format!(
            " video_fps={:.1} freezes={freezes}",
            fps / f64::from(videos)
        )
    } else {
        String::new()
    };
    out.line(
        format!(
            "participants={most} tracks={} audio_decoded_pct={pct:.2}{video}",
            stats.len()
        ),
        json!({
            "participants": most,
            "tracks": stats.iter().map(|(t, s)| json!({"track": t, "stats": s})).collect::<Vec<_>>(),
            "audio_decoded_pct": pct,
        }),
    );
    Ok(())
}
