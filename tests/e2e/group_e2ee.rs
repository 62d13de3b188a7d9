//! Group-call media is end-to-end encrypted (SFrame): the SFU's own record of what it
//! forwards (`--sfu-capture`) holds neither the participants' tones nor their test pattern,
//! while the participants hear and see each other; the same call without SFrame shows both
//! in the capture, so the check can fail. A member removed from the group holds no key that
//! opens what is sent after it left.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use natter_client::audio::AudioSource;
use natter_client::protocol::call::Media;
use natter_client::{ActiveRoom, MediaOptions};
use natter_media::session::FrameCrypto;
use natter_media::session::audio_pipe::AudioDecoder;
use natter_media::video::vp8_rtp::Vp8Header;
use natter_media::video::{Vp8Decoder, read_stamp};
use natter_sfu::capture::{Captured, MediaKind, read_capture};

use crate::common::*;
use crate::group_calls::members;

const WAIT: Duration = Duration::from_secs(20);
const FREQS: [f32; 3] = [440.0, 660.0, 880.0];

fn options(i: usize) -> MediaOptions {
    MediaOptions {
        source: AudioSource::Tone { freq: FREQS[i] },
        udp_bind: vec!["127.0.0.1:0".to_owned()],
        // Plain Opus payloads, so the capture's audio can be decoded as it is.
        red: false,
        video: Some(natter_client::VideoOptions {
            width: 320,
            height: 180,
            fps: 15,
            bitrate_kbps: 250,
        }),
        ..Default::default()
    }
}

/// Waits until `room` has, from each of `n` others, `frames` audio frames with their tone
/// and `frames / 4` video frames rendered.
async fn hears_and_sees(room: &ActiveRoom, n: usize, frames: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stats = room.track_stats();
        let heard = stats
            .iter()
            .filter(|(_, s)| s.audio.as_ref().is_some_and(|a| a.tone_frames >= frames))
            .count();
        let seen = stats
            .iter()
            .filter(|(_, s)| {
                s.picture
                    .as_ref()
                    .is_some_and(|p| p.video_frames_rendered >= frames / 4)
            })
            .count();
        if heard >= n && seen >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "heard {heard}, saw {seen} of {n}: {stats:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What could be recovered from a capture: audio frames in which one of the tones is heard
/// (in runs of 100 ms or more), and video frames that decode to the stamped test pattern.
#[derive(Debug, Default)]
struct Recovered {
    audio_packets: usize,
    video_packets: usize,
    tone_frames: u64,
    pictures: usize,
    stamped: usize,
}

fn recover(captured: &[Captured]) -> Recovered {
    let mut r = Recovered::default();
    let mut streams: BTreeMap<u32, Vec<&Captured>> = BTreeMap::new();
    for c in captured {
        streams.entry(c.ssrc).or_default().push(c);
    }
    for packets in streams.values_mut() {
        packets.sort_by_key(|c| c.seq);
        packets.dedup_by_key(|c| c.seq);
        match packets[0].kind {
            MediaKind::Audio => {
                r.audio_packets += packets.len();
                // The stream is someone's: the best any of the tones does. A tone is heard
                // in runs of at least 5 frames (100 ms): the detector's rare hit on noise is
                // not the tone.
                let best = FREQS
                    .iter()
                    .map(|f| {
                        let t0 = Instant::now();
                        let mut dec = AudioDecoder::new(Some(*f), false, t0).unwrap();
                        let (mut run, mut in_runs) = (0u64, 0u64);
                        for (i, c) in packets.iter().enumerate() {
                            let at = t0 + Duration::from_millis(20 * i as u64);
                            let before = dec.stats.tone_frames;
                            dec.packet(c.seq as u16, c.timestamp, &c.payload, at);
                            if dec.stats.tone_frames > before {
                                run += 1;
                                in_runs += match run {
                                    5 => 5,
                                    r if r > 5 => 1,
                                    _ => 0,
                                };
                            } else {
                                run = 0;
                            }
                        }
                        in_runs
                    })
                    .max()
                    .unwrap_or(0);
                r.tone_frames += best;
            }
            MediaKind::Video => {
                r.video_packets += packets.len();
                let mut dec = Vp8Decoder::new().unwrap();
                let mut frame: Option<Vec<u8>> = None;
                let mut last_seq = None;
                for c in packets.iter() {
                    let Some(h) = Vp8Header::parse(&c.payload) else {
                        frame = None;
                        continue;
                    };
                    // A gap ends the frame being put together.
                    if last_seq.is_some_and(|s| s + 1 != c.seq) {
                        frame = None;
                    }
                    last_seq = Some(c.seq);
                    if h.start {
                        frame = Some(Vec::new());
                    }
                    if let Some(f) = frame.as_mut() {
                        f.extend_from_slice(&c.payload[h.len..]);
                    }
                    if c.marker
                        && let Some(f) = frame.take()
                        && let Ok(Some(p)) = dec.decode(&f)
                    {
                        r.pictures += 1;
                        if read_stamp(&p.luma, p.width, p.height).is_some() {
                            r.stamped += 1;
                        }
                    }
                }
            }
        }
    }
    r
}

/// Three members in a video call for a few seconds, every one hearing and seeing the
/// others; returns what the SFU's capture gives away.
async fn call_and_capture(e2ee: bool) -> Recovered {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("forwarded.cap");
    let server = TestServer::start_with(&["--sfu-capture", capture.to_str().unwrap()]);
    let (ds, group) = members(&server, 3).await;
    let mut rooms = Vec::new();
    for (i, d) in ds.iter().enumerate() {
        rooms.push(
            d.client
                .join_room_with(group, Media::Video, options(i), e2ee)
                .await
                .unwrap(),
        );
    }
    for (i, r) in rooms.iter().enumerate() {
        for (j, d) in ds.iter().enumerate() {
            if i != j {
                r.expect_tone(d.client.device(), FREQS[j]);
            }
        }
    }
    for r in &rooms {
        r.wait_for(WAIT, |v| v.connected && v.roster.len() == 3)
            .await
            .unwrap();
        // Three seconds of each other's audio, and their pictures, through the SFU.
        hears_and_sees(r, 2, 150).await;
    }
    for r in &rooms {
        r.leave().await.unwrap();
    }
    // The SFU writes its capture out four times a second.
    let captured = wait_for_capture(&capture).await;
    let r = recover(&captured);
    println!(
        "e2ee={e2ee}: from {} captured packets: {r:?}",
        captured.len()
    );
    r
}

async fn wait_for_capture(path: &Path) -> Vec<Captured> {
    let mut last = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = read_capture(path).unwrap();
        if !c.is_empty() && c.len() == last {
            return c;
        }
        last = c.len();
    }
    panic!("the capture at {} did not settle", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sfu_forwards_neither_the_tones_nor_the_picture_it_cannot_read() {
    // Without SFrame, the capture gives both away: the check below can fail.
    let plain = call_and_capture(false).await;
    assert!(
        plain.tone_frames >= 300 && plain.stamped >= 30,
        "the unencrypted call's capture should show the tones and the pattern: {plain:?}"
    );
    let sealed = call_and_capture(true).await;
    assert!(
        sealed.audio_packets >= 300 && sealed.video_packets >= 100,
        "{sealed:?}"
    );
    assert_eq!(
        sealed.tone_frames, 0,
        "a tone in the SFU's view: {sealed:?}"
    );
    assert_eq!(
        sealed.stamped, 0,
        "the test pattern in the SFU's view: {sealed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_removed_from_the_group_cannot_open_what_is_sent_after() {
    let server = TestServer::start();
    let (ds, group) = members(&server, 3).await;
    let audio = |i: usize| MediaOptions {
        video: None,
        ..options(i)
    };
    let mut rooms = Vec::new();
    for (i, d) in ds.iter().enumerate() {
        rooms.push(
            d.client
                .join_room(group, Media::Audio, audio(i))
                .await
                .unwrap(),
        );
    }
    for r in &rooms {
        r.wait_for(WAIT, |v| v.connected && v.roster.len() == 3)
            .await
            .unwrap();
    }
    let keys: Vec<_> = rooms.iter().map(|r| r.call_keys().unwrap()).collect();
    // Every key has gone round: each opens what each other seals.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let all = (0..3).all(|i| {
            (0..3)
                .filter(|j| *j != i)
                .all(|j| keys[i].open(&keys[j].seal(b"probe", 0).unwrap(), 0).is_ok())
        });
        if all {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "keys did not go round"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let removed = ds[2].client.user();
    ds[0]
        .client
        .remove_members(group, &[removed])
        .await
        .unwrap();
    rooms[2]
        .wait_for(WAIT, |v| v.ended.is_some())
        .await
        .unwrap();
    for r in &rooms[..2] {
        r.wait_for(WAIT, |v| v.roster.len() == 2).await.unwrap();
    }
    // The two left move to a new epoch; wait until each opens the other's new frames.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut rotated = HashMap::new();
    loop {
        for (i, j) in [(0usize, 1usize), (1, 0)] {
            let frame = keys[i].seal(b"after the removal", 0).unwrap();
            // The frame opens for the other member, and not with the removed one's keys.
            if keys[j].open(&frame, 0).is_ok() && keys[2].open(&frame, 0).is_err() {
                rotated.insert(i, frame);
            }
        }
        if rotated.len() == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rotation that shuts the removed member out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And it stays so: what follows never opens for the removed member.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..2 {
        let frame = keys[i].seal(b"later still", 0).unwrap();
        assert!(keys[2].open(&frame, 0).is_err());
        assert!(keys[1 - i].open(&frame, 0).is_ok());
    }
}
