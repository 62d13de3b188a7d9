//! Two media sessions in one process, signaling handed over directly: Opus audio flows both
//! ways over str0m, directly on loopback and relay-only through natter-turn.

use std::sync::Arc;
use std::time::Duration;

use natter_media::audio::AudioSource;
use natter_media::{MediaOptions, MediaSession};
use natter_signaling::IceServer;
use natter_turn::server::Config;
use natter_turn::{Listeners, Turn};

fn opts(mine: f32, theirs: f32, relay_only: bool) -> MediaOptions {
    MediaOptions {
        source: AudioSource::Tone { freq: mine },
        expect_tone: Some(theirs),
        relay_only,
        udp_bind: vec!["127.0.0.1:0".to_owned()],
        ..Default::default()
    }
}

/// Offer/answer and trickle between `a` and `b` until both are connected and sending;
/// returns them with the tasks that pump candidates.
async fn connect(
    a: MediaSession,
    b: MediaSession,
) -> (
    Arc<MediaSession>,
    Arc<MediaSession>,
    [tokio::task::JoinHandle<()>; 2],
) {
    let offer = a.create_offer().await.unwrap();
    let answer = b.accept_offer(&offer).await.unwrap();
    a.set_answer(&answer).await.unwrap();
    let (mut ca, mut cb) = (a.take_candidates().unwrap(), b.take_candidates().unwrap());
    let (a, b) = (Arc::new(a), Arc::new(b));
    let (ta, tb) = (a.clone(), b.clone());
    let pumps = [
        tokio::spawn(async move {
            while let Some(c) = ca.recv().await {
                tb.add_candidate(c).await.unwrap();
            }
        }),
        tokio::spawn(async move {
            while let Some(c) = cb.recv().await {
                ta.add_candidate(c).await.unwrap();
            }
        }),
    ];
    a.wait_connected(Duration::from_secs(10)).await.unwrap();
    b.wait_connected(Duration::from_secs(10)).await.unwrap();
    a.start_sending().await.unwrap();
    b.start_sending().await.unwrap();
    (a, b, pumps)
}

/// A call between `a` and `b` with 2 s of audio; checks both ends.
async fn call(
    a: MediaSession,
    b: MediaSession,
) -> (natter_media::CallStats, natter_media::CallStats) {
    let (a, b, pumps) = connect(a, b).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sa, sb) = (a.stats(), b.stats());
    eprintln!("a: {sa:?}\nb: {sb:?}");
    for (name, s) in [("a", &sa), ("b", &sb)] {
        assert!(s.frames_sent >= 80, "{name} sent {}", s.frames_sent);
        assert!(s.received.frames_decoded >= 70, "{name}: {s:?}");
        assert!(s.decoded_pct() >= 95.0, "{name}: {s:?}");
        assert!(s.tone_pct() >= 90.0, "{name} hears the other's tone: {s:?}");
    }
    a.close().await;
    b.close().await;
    for p in pumps {
        p.abort();
    }
    (sa, sb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_audio_flows_both_ways_on_loopback() {
    let a = MediaSession::new(&[], opts(440.0, 660.0, false))
        .await
        .unwrap();
    let b = MediaSession::new(&[], opts(660.0, 440.0, false))
        .await
        .unwrap();
    call(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_audio_flows_through_natter_turn_over_udp_and_tcp() {
    let mut cfg = Config {
        realm: "natter.test".into(),
        relay_ports: (55000, 55999),
        allowed_peers: vec!["127.0.0.0/8".parse().unwrap()],
        ..Config::default()
    };
    cfg.users.insert("alice".into(), "wonderland".into());
    let listeners = Listeners {
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        tcp: vec!["127.0.0.1:0".parse().unwrap()],
        tls: Vec::new(),
    };
    let (turn, bound) = Turn::start_on_own_thread(cfg, listeners).unwrap();
    let server = |url: String| IceServer {
        urls: vec![url],
        username: Some("alice".into()),
        credential: Some("wonderland".into()),
    };
    let udp = server(format!("turn:{}?transport=udp", bound.udp[0]));
    let tcp = server(format!("turn:{}?transport=tcp", bound.tcp[0]));
    let a = MediaSession::new(&[udp], opts(440.0, 660.0, true))
        .await
        .unwrap();
    let b = MediaSession::new(&[tcp], opts(660.0, 440.0, true))
        .await
        .unwrap();
    call(a, b).await;
    let (stats, _) = turn.stats();
    assert!(
        stats.packets_to_peers > 150,
        "media went through the relay: {stats:?}"
    );
    turn.shutdown();
}

/// 1:1 video on loopback: VP8 both ways beside the audio; each side renders what the other
/// sent, with no freeze.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp8_video_flows_both_ways_on_loopback() {
    let video = natter_media::VideoOptions {
        width: 320,
        height: 240,
        fps: 30,
        bitrate_kbps: 400,
    };
    let with_video = |mine, theirs| MediaOptions {
        video: Some(video),
        ..opts(mine, theirs, false)
    };
    let a = MediaSession::new(&[], with_video(440.0, 660.0))
        .await
        .unwrap();
    let b = MediaSession::new(&[], with_video(660.0, 440.0))
        .await
        .unwrap();
    let (a, b, pumps) = connect(a, b).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Frames sent by now have had half a second more to arrive when the receiver is read.
    let sent = [a.stats(), b.stats()].map(|s| s.video.unwrap().video_frames_sent);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = [b.stats(), a.stats()];
    for (i, s) in got.iter().enumerate() {
        eprintln!("receiver {i}: {s:?}");
        let v = s.video.as_ref().expect("video stats");
        assert!(sent[i] >= 80, "sender {i} sent {} frames", sent[i]);
        assert!(
            v.video_frames_rendered as f64 >= 0.95 * sent[i] as f64,
            "receiver {i} rendered {} of {} frames: {v:?}",
            v.video_frames_rendered,
            sent[i]
        );
        assert_eq!(v.video_freezes, 0, "{v:?}");
        assert_eq!((v.video_width, v.video_height), (320, 240));
        // Capture to screen. Quiet, this is a few milliseconds (p95 ~70 ms: the first
        // keyframe drains through str0m's pacer at 1.1x the 300 kbit/s starting estimate).
        // On a loaded machine a frame late from the CPU makes the receiver hold frames a
        // repair round (as it must on a real network; CI saw p50 65, p95 175 beside the
        // netem tests), so the bound checked is the receiver's own: it never holds a frame
        // past its maximum playout delay, and half of them arrive well inside 100 ms.
        let max_ms = natter_media::video::playout::MAX_TARGET.as_millis() as u32;
        assert!(v.video_delay_ms_p50.is_some_and(|d| d < 100), "{v:?}");
        assert!(v.video_delay_ms_p95.is_some_and(|d| d <= max_ms), "{v:?}");
        assert!(s.decoded_pct() >= 95.0, "audio still flows: {s:?}");
    }
    a.close().await;
    b.close().await;
    for p in pumps {
        p.abort();
    }
}
