//! `natter-cli call <contact>` and `natter-cli answer`: 1:1 calls, with live statistics
//! once a second and a summary line at the end.

use super::*;

fn stats_line(s: &natter_client::CallStats) -> String {
    let t = &s.transport;
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    format!(
        "sent {} · received {} · lost {} · concealed {} · decoded {:.1}% · tone {:.1}% · jitter {:.1} ms \
         · loss {:.1}% before repair, {:.2}% after · rtt {} ms · estimate {} kbit/s \
         · queue {} ms · video pushback {:.0}% · opus {:.1} kbit/s {} ms{}{}{} (peer loses {:.1}%)",
        s.frames_sent,
        s.received.frames_received,
        s.received.frames_lost,
        s.received.frames_concealed,
        s.decoded_pct(),
        s.tone_pct(),
        s.received.jitter_ms,
        t.loss_before_repair_pct,
        s.loss_after_repair_pct(),
        opt(t.rtt_ms.map(|r| format!("{r:.0}"))),
        opt(t.send_estimate_kbps.map(|k| k.to_string())),
        opt(t.queue_ms.map(|q| format!("{q:.0}"))),
        t.video_pushback_pct,
        s.audio_send.opus_kbps,
        s.audio_send.audio_ptime_ms,
        if s.audio_send.opus_fec {
            format!(" FEC {}%", s.audio_send.opus_expected_loss_pct)
        } else {
            String::new()
        },
        if s.audio_send.audio_red { " RED" } else { "" },
        if s.audio_send.opus_dtx { " DTX" } else { "" },
        s.audio_send.audio_remote_loss_pct,
    ) + &s.video.as_ref().map(video_part).unwrap_or_default()
}

fn video_part(v: &natter_client::VideoStats) -> String {
    let opt = |v: Option<u32>| v.map_or_else(|| "-".into(), |d| d.to_string());
    format!(
        " · video sent {} at {} kbit/s as {}x{} at {} fps ({} keyframes, {} NACKs in, {} steps) \
         · rendered {} ({}x{}) · {:.0} fps \
         · freezes {} · delay {} ms p50, {} p95 · nacks {} · keyframe requests {}",
        v.video_frames_sent,
        v.video_target_kbps,
        v.video_send_width,
        v.video_send_height,
        v.video_send_fps,
        v.video_keyframes_sent,
        v.video_nacks_received,
        v.video_step_changes,
        v.video_frames_rendered,
        v.video_width,
        v.video_height,
        v.video_fps,
        v.video_freezes,
        opt(v.video_delay_ms_p50),
        opt(v.video_delay_ms_p95),
        v.video_nacks_sent,
        v.video_keyframe_requests_sent,
    )
}

/// Shows live statistics once a second until `duration` passes or the call ends.
async fn live(call: &natter_client::ActiveCall, out: &Out, duration: Duration) -> Result<()> {
    use natter_client::CallState;
    let end = tokio::time::Instant::now() + duration;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while tokio::time::Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => {
                if !out.json {
                    eprintln!("  {}", stats_line(&call.stats()));
                }
            }
            s = call.wait_for(duration, |s| matches!(s, CallState::Ended(_))) => {
                if let Ok(CallState::Ended(e)) = s {
                    eprintln!("call ended: {e:?}");
                }
                return Ok(());
            }
        }
    }
    Ok(())
}

pub(crate) async fn calls_out(
    client: &Client,
    out: &Out,
    to: UserId,
    duration: Duration,
    count: u32,
    media: &MediaArgs,
) -> Result<()> {
    use natter_client::{CallEnd, CallState};
    let mut setups_ms = Vec::new();
    let (mut decoded, mut expected, mut lost) = (0u64, 0u64, 0u64);
    // Video received: rendered frames per second (averaged over calls), freezes in all.
    let (mut fps_sum, mut freezes, mut video_calls) = (0.0, 0u64, 0u32);
    let (mut rendered, mut missed) = (0u64, 0u64);
    for i in 0..count {
        let call = client
            .place_call(to, media.call_media(), media.options(true)?)
            .await?;
        if !out.json {
            eprintln!("calling {} (call {})…", name_of(client, to), call.call_id);
        }
        let state = call
            .wait_for(Duration::from_secs(60), |s| {
                matches!(s, CallState::Connected | CallState::Ended(_))
            })
            .await?;
        if let CallState::Ended(e) = state {
            let why = match e {
                CallEnd::Remote(r) => format!("{r:?}").to_lowercase(),
                other => format!("{other:?}"),
            };
            bail!("the call ended before it connected: {why}");
        }
        if !out.json {
            eprintln!("connected");
        }
        live(&call, out, duration).await?;
        call.hangup().await?;
        let s = call.stats();
        let setup = call
            .first_audio()
            .map(|t| t.duration_since(call.started).as_secs_f64() * 1000.0);
        if let Some(ms) = setup {
            setups_ms.push(ms);
        }
        decoded += s.received.frames_decoded;
        lost += s.received.frames_lost;
        expected += s.received.frames_received + s.received.frames_lost;
        if let Some(v) = &s.video {
            fps_sum += v.video_fps_avg;
            freezes += v.video_freezes;
            video_calls += 1;
            rendered += v.video_frames_rendered;
            missed += v.video_frames_missed;
        }
        out.line(
            format!(
                "call {}: setup {} ms · {}",
                i + 1,
                setup
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or_else(|| "-".into()),
                stats_line(&s)
            ),
            json!({"call": i + 1, "setup_ms": setup, "stats": s}),
        );
        // Let the other side see the end before the next call.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    setups_ms.sort_by(|a, b| a.total_cmp(b));
    let p95 = setups_ms
        .get(((setups_ms.len() as f64 * 0.95).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0.0);
    let pct = if expected == 0 {
        0.0
    } else {
        100.0 * decoded as f64 / expected as f64
    };
    let video = if video_calls > 0 {
        let fps = fps_sum / f64::from(video_calls);
        let shown = 100.0 * rendered as f64 / (rendered + missed).max(1) as f64;
        format!(" video_fps={fps:.1} freezes={freezes} video_rendered_pct={shown:.2}")
    } else {
        String::new()
    };
    // Frames still missing after RED and FEC: what the decoder had to conceal.
    let concealed = 100.0 * lost as f64 / expected.max(1) as f64;
    println!(
        "calls={count} setup_ms_p95={p95:.0} decoded_pct={pct:.2} concealed_pct={concealed:.2}{video}"
    );
    Ok(())
}

pub(crate) async fn calls_in(
    client: &Client,
    events: &mut ClientEvents,
    out: &Out,
    count: u32,
    wait: Duration,
    media: &MediaArgs,
) -> Result<()> {
    use natter_client::protocol::call::CallEvent;
    for i in 0..count {
        if !out.json {
            eprintln!("waiting for a call…");
        }
        let deadline = tokio::time::Instant::now() + wait;
        let (call_id, from, sdp, ice) = loop {
            let ev = tokio::time::timeout_at(deadline, events.next())
                .await
                .map_err(|_| anyhow!("no call came within {wait:?}"))?
                .ok_or_else(|| anyhow!("the client stopped"))?;
            if let ClientEvent::Call {
                call_id,
                event: CallEvent::Incoming { from, sdp, .. },
                ice_servers,
            } = ev
            {
                break (call_id, from, sdp, ice_servers);
            }
        };
        client.ringing(&call_id).await?;
        if !out.json {
            eprintln!("answering {} (call {call_id})", name_of(client, from));
        }
        let call = client
            .answer_call(&call_id, from, &sdp, &ice, media.options(false)?)
            .await?;
        live(&call, out, Duration::from_secs(24 * 3600)).await?;
        let s = call.stats();
        out.line(
            format!(
                "call {} from {}: {}",
                i + 1,
                name_of(client, from),
                stats_line(&s)
            ),
            json!({"call": i + 1, "from": from, "stats": s}),
        );
    }
    Ok(())
}
