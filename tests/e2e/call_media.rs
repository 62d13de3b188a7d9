//! 1:1 calls end to end: the real server for signaling, two (or three) Rust clients, real
//! WebRTC (str0m, in natter-media) and real Opus audio (and VP8 video) between them on
//! loopback.

use std::time::Duration;

use natter_client::audio::AudioSource;
use natter_client::protocol::IceServer;
use natter_client::protocol::call::{CallEvent, EndReason, Media};
use natter_client::{ActiveCall, CallEnd, CallState, ClientEvent, MediaOptions};

use crate::common::*;
use crate::e2ee::{Device, device, linked};

const WAIT: Duration = Duration::from_secs(20);

fn tone(send: f32, expect: f32) -> MediaOptions {
    MediaOptions {
        source: AudioSource::Tone { freq: send },
        expect_tone: Some(expect),
        // These calls stay on this machine's loopback, whatever interfaces it has.
        udp_bind: vec!["127.0.0.1:0".to_owned()],
        ..Default::default()
    }
}

/// Waits for an incoming call on `d`: (call id, caller, offer, ICE servers).
async fn incoming(
    d: &mut Device,
) -> (
    String,
    natter_client::protocol::UserId,
    String,
    Vec<IceServer>,
) {
    d.wait("an incoming call", |e| match e {
        ClientEvent::Call {
            call_id,
            event: CallEvent::Incoming { from, sdp, .. },
            ice_servers,
        } => Some((call_id.clone(), *from, sdp.clone(), ice_servers.clone())),
        _ => None,
    })
    .await
}

/// Answers the next incoming call on `d`.
async fn answer(d: &mut Device, opts: MediaOptions) -> ActiveCall {
    let (call_id, from, sdp, ice) = incoming(d).await;
    d.client.ringing(&call_id).await.unwrap();
    d.client
        .answer_call(&call_id, from, &sdp, &ice, opts)
        .await
        .unwrap()
}

async fn connected(call: &ActiveCall) {
    call.wait_for(WAIT, |s| s == CallState::Connected)
        .await
        .unwrap_or_else(|e| panic!("not connected: {e}"));
}

async fn no_leaks(d: &Device) {
    for _ in 0..100 {
        if d.client.live_calls() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} call(s) still hold media", d.client.live_calls());
}

/// A call both ways: returns (caller's call, callee's call) once media flows.
async fn call(a: &mut Device, b: &mut Device) -> (ActiveCall, ActiveCall) {
    call_with(a, b, false).await
}

/// The same, optionally with both sides limited to TURN relays.
async fn call_with(a: &mut Device, b: &mut Device, relay_only: bool) -> (ActiveCall, ActiveCall) {
    let opts = |send: f32, expect: f32| MediaOptions {
        relay_only,
        ..tone(send, expect)
    };
    place(a, b, Media::Audio, opts).await
}

/// `a` calls `b` with `media`, each side's options made by `opts(tone sent, tone expected)`;
/// returns (caller's call, callee's call) once both are connected.
async fn place(
    a: &Device,
    b: &mut Device,
    media: Media,
    opts: impl Fn(f32, f32) -> MediaOptions,
) -> (ActiveCall, ActiveCall) {
    let out = a
        .client
        .place_call(b.client.user(), media, opts(440.0, 660.0))
        .await
        .unwrap();
    let inc = answer(b, opts(660.0, 440.0)).await;
    connected(&out).await;
    connected(&inc).await;
    (out, inc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_flows_both_ways_and_hangup_ends_cleanly() {
    let server = TestServer::start();
    let mut a = device(&server).await;
    let mut b = device(&server).await;
    let (out, inc) = call(&mut a, &mut b).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (who, c) in [("caller", &out), ("callee", &inc)] {
        let s = c.stats();
        assert!(s.frames_sent >= 120, "{who} sent {}", s.frames_sent);
        assert!(s.received.frames_decoded >= 100, "{who}: {s:?}");
        assert!(
            s.decoded_pct() >= 95.0,
            "{who} decoded {:.1}%: {s:?}",
            s.decoded_pct()
        );
        assert!(
            s.tone_pct() >= 90.0,
            "{who} heard the tone in {:.1}%: {s:?}",
            s.tone_pct()
        );
    }
    out.hangup().await.unwrap();
    assert_eq!(out.ended(WAIT).await.unwrap(), CallEnd::Local);
    assert_eq!(
        inc.ended(WAIT).await.unwrap(),
        CallEnd::Remote(EndReason::Hangup)
    );
    no_leaks(&a).await;
    no_leaks(&b).await;
}

/// A video call through the real server: each side renders what the other sends (frames
/// read back by their stamps), with no freeze, and audio keeps flowing beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_call_renders_both_ways() {
    let server = TestServer::start();
    let a = device(&server).await;
    let mut b = device(&server).await;
    let video = |send: f32, expect: f32| MediaOptions {
        video: Some(natter_client::VideoOptions {
            width: 320,
            height: 240,
            fps: 30,
            bitrate_kbps: 400,
        }),
        ..tone(send, expect)
    };
    let (out, inc) = place(&a, &mut b, Media::Video, video).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = [&out, &inc].map(|c| c.stats().video.unwrap().video_frames_sent);
    // What was sent by now has had half a second more to arrive when it is counted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, (who, c)) in [("callee", &inc), ("caller", &out)].into_iter().enumerate() {
        let s = c.stats();
        let v = s.video.as_ref().expect("video statistics");
        assert!(sent[i] >= 80, "{who}'s peer sent {} frames", sent[i]);
        assert!(
            v.video_frames_rendered as f64 >= 0.95 * sent[i] as f64,
            "{who} rendered {} of {}: {v:?}",
            v.video_frames_rendered,
            sent[i]
        );
        assert_eq!(v.video_freezes, 0, "{who}: {v:?}");
        assert_eq!((v.video_width, v.video_height), (320, 240), "{who}");
        assert!(s.decoded_pct() >= 95.0, "{who}'s audio: {s:?}");
    }
    out.hangup().await.unwrap();
    assert_eq!(out.ended(WAIT).await.unwrap(), CallEnd::Local);
    no_leaks(&a).await;
    no_leaks(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_device_to_answer_wins() {
    let server = TestServer::start();
    let a = device(&server).await;
    let mut b = device(&server).await;
    let mut b2 = linked(&server, &b).await;
    let out = a
        .client
        .place_call(b.client.user(), Media::Audio, tone(440.0, 660.0))
        .await
        .unwrap();
    let (id2, ..) = incoming(&mut b2).await;
    let inc = answer(&mut b, tone(660.0, 440.0)).await;
    b2.wait("answered elsewhere", |e| match e {
        ClientEvent::Call {
            call_id,
            event: CallEvent::AnsweredElsewhere,
            ..
        } if *call_id == id2 => Some(()),
        _ => None,
    })
    .await;
    connected(&out).await;
    connected(&inc).await;
    inc.hangup().await.unwrap();
    assert_eq!(
        out.ended(WAIT).await.unwrap(),
        CallEnd::Remote(EndReason::Hangup)
    );
    for d in [&a, &b, &b2] {
        no_leaks(d).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decline_busy_cancel_and_timeout_end_calls_without_leaks() {
    let server = TestServer::start_with(&["--ring-timeout-ms", "1500"]);
    let a = device(&server).await;
    let mut b = device(&server).await;
    let mut c = device(&server).await;

    // Decline.
    let out = a
        .client
        .place_call(b.client.user(), Media::Audio, tone(440.0, 660.0))
        .await
        .unwrap();
    let (id, ..) = incoming(&mut b).await;
    b.client.decline_call(&id).await.unwrap();
    assert_eq!(
        out.ended(WAIT).await.unwrap(),
        CallEnd::Remote(EndReason::Declined)
    );

    // Busy: b is in a call with c.
    let (bc_out, bc_in) = call(&mut c, &mut b).await;
    let out = a
        .client
        .place_call(b.client.user(), Media::Audio, tone(440.0, 660.0))
        .await
        .unwrap();
    assert_eq!(
        out.ended(WAIT).await.unwrap(),
        CallEnd::Remote(EndReason::Busy)
    );
    bc_out.hangup().await.unwrap();
    bc_in.ended(WAIT).await.unwrap();

    // Cancel: the callee's ringing stops and a missed call is left.
    let out = a
        .client
        .place_call(b.client.user(), Media::Audio, tone(440.0, 660.0))
        .await
        .unwrap();
    let (id, ..) = incoming(&mut b).await;
    out.hangup().await.unwrap();
    assert_eq!(out.ended(WAIT).await.unwrap(), CallEnd::Local);
    b.wait("cancelled", |e| match e {
        ClientEvent::Call {
            call_id,
            event: CallEvent::Ended {
                reason: EndReason::Cancelled,
            },
            ..
        } if *call_id == id => Some(()),
        _ => None,
    })
    .await;
    b.wait("missed call", |e| {
        matches!(e, ClientEvent::MissedCall { call_id, .. } if *call_id == id).then_some(())
    })
    .await;

    // Ring timeout.
    let out = a
        .client
        .place_call(b.client.user(), Media::Audio, tone(440.0, 660.0))
        .await
        .unwrap();
    assert_eq!(
        out.ended(WAIT).await.unwrap(),
        CallEnd::Remote(EndReason::Timeout)
    );
    b.wait("missed call", |e| {
        matches!(e, ClientEvent::MissedCall { call_id, .. } if *call_id == out.call_id)
            .then_some(())
    })
    .await;
    for d in [&a, &b, &c] {
        no_leaks(d).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glare_ends_the_same_call_on_both_sides() {
    let server = TestServer::start();
    let mut a = device(&server).await;
    let mut b = device(&server).await;
    let ca = a
        .client
        .place_call(b.client.user(), Media::Audio, tone(440.0, 660.0))
        .await
        .unwrap();
    let cb = b
        .client
        .place_call(a.client.user(), Media::Audio, tone(660.0, 440.0))
        .await
        .unwrap();
    // Exactly one of the two calls ends with glare; the other rings its callee.
    let (winner, loser, winner_callee) = if ca.call_id < cb.call_id {
        (&ca, &cb, &mut b)
    } else {
        (&cb, &ca, &mut a)
    };
    assert_eq!(
        loser.ended(WAIT).await.unwrap(),
        CallEnd::Remote(EndReason::Glare)
    );
    let (id, from, sdp, ice) = incoming(winner_callee).await;
    assert_eq!(id, winner.call_id);
    let inc = winner_callee
        .client
        .answer_call(&id, from, &sdp, &ice, MediaOptions::default())
        .await
        .unwrap();
    connected(winner).await;
    connected(&inc).await;
    winner.hangup().await.unwrap();
    inc.ended(WAIT).await.unwrap();
    no_leaks(&a).await;
    no_leaks(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_restart_keeps_audio_flowing() {
    let server = TestServer::start();
    let mut a = device(&server).await;
    let mut b = device(&server).await;
    let (out, inc) = call(&mut a, &mut b).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    out.restart_ice().await.unwrap();
    let before = inc.stats().received.frames_decoded;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = inc.stats().received.frames_decoded;
    assert!(
        after >= before + 80,
        "audio after the restart: {before} -> {after}"
    );
    assert_eq!(out.state(), CallState::Connected);
    out.hangup().await.unwrap();
    inc.ended(WAIT).await.unwrap();
}

/// Both sides decoded ≥ 95 % of ≥ 60 frames and heard the other's tone in ≥ 90 %.
fn assert_audio_heard_both_ways(out: &ActiveCall, inc: &ActiveCall) {
    for c in [out, inc] {
        let s = c.stats();
        assert!(
            s.decoded_pct() >= 95.0 && s.received.frames_decoded >= 60,
            "{s:?}"
        );
        assert!(s.tone_pct() >= 90.0, "{s:?}");
    }
}

/// Until natter's own TURN server lands, the relay is coturn from Debian.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_call_through_coturn() {
    let Some(turn) = Coturn::start() else { return };
    let turn_url = format!("turn:127.0.0.1:{}?transport=udp", turn.port);
    let server =
        TestServer::start_with(&["--turn-urls", &turn_url, "--turn-secret", Coturn::SECRET]);
    let mut a = device(&server).await;
    let mut b = device(&server).await;
    let (out, inc) = call_with(&mut a, &mut b, true).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_audio_heard_both_ways(&out, &inc);
    out.hangup().await.unwrap();
    inc.ended(WAIT).await.unwrap();
    assert!(turn.relayed_something(), "coturn relayed the media");
}

/// Both clients relay-only through natter's own TURN server (the one built into `natter`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_call_through_natter_turn() {
    let server = TestServer::start_with(&[
        "--turn-listen",
        "127.0.0.1:0",
        "--turn-allow-peers",
        "127.0.0.0/8",
    ]);
    let mut a = device(&server).await;
    let mut b = device(&server).await;
    let (out, inc) = call_with(&mut a, &mut b, true).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_audio_heard_both_ways(&out, &inc);
    let relayed = server
        .metric("natter_turn_relayed_packets_to_peers_total")
        .await;
    assert!(relayed >= 100.0, "natter-turn relayed {relayed} packets");
    out.hangup().await.unwrap();
    inc.ended(WAIT).await.unwrap();
}
