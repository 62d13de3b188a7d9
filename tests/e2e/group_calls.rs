//! Group calls end to end: the real server with its in-process SFU, Rust clients joining a
//! group's call over the chat socket, real WebRTC (str0m) and real Opus between them on
//! loopback, every participant hearing every other through the SFU.

use std::time::Duration;

use natter_client::audio::AudioSource;
use natter_client::protocol::call::Media;
use natter_client::protocol::room::RoomEvent;
use natter_client::protocol::{ClientFrame, ErrorCode, GroupId};
use natter_client::{ActiveRoom, ClientError, ClientEvent, MediaOptions};

use crate::common::*;
use crate::e2ee::{Device, device};

const WAIT: Duration = Duration::from_secs(20);

fn tone(freq: f32) -> MediaOptions {
    MediaOptions {
        source: AudioSource::Tone { freq },
        udp_bind: vec!["127.0.0.1:0".to_owned()],
        ..Default::default()
    }
}

/// The tone each test participant sends.
fn freq(i: usize) -> f32 {
    [440.0, 660.0, 880.0, 550.0][i]
}

pub(crate) async fn group_of(devices: &[&Device]) -> GroupId {
    let others: Vec<_> = devices[1..].iter().map(|d| d.client.user()).collect();
    devices[0]
        .client
        .create_group("call", &others)
        .await
        .unwrap()
        .group
}

/// `n` new users with a device each, in one new group.
pub(crate) async fn members(server: &TestServer, n: usize) -> (Vec<Device>, GroupId) {
    let mut ds = Vec::new();
    for _ in 0..n {
        ds.push(device(server).await);
    }
    let group = group_of(&ds.iter().collect::<Vec<_>>()).await;
    (ds, group)
}

/// Waits until `room` hears `n` other participants' tones, each in at least `frames`
/// decoded frames.
async fn hears(room: &ActiveRoom, n: usize, frames: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let heard = room
            .track_stats()
            .iter()
            .filter(|(_, s)| s.audio.as_ref().is_some_and(|a| a.tone_frames >= frames))
            .count();
        if heard >= n {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "heard {heard} of {n} tracks: {:#?}",
                room.track_stats()
                    .iter()
                    .map(|(t, s)| (t.device, s.audio.clone()))
                    .collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn expect_code(r: Result<ActiveRoom, ClientError>, code: ErrorCode) {
    match r {
        Err(ClientError::Server(e)) => assert_eq!(e.code, code, "{e:?}"),
        Err(e) => panic!("expected {code}, got {e}"),
        Ok(_) => panic!("expected {code}, the join succeeded"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_hear_each_other_through_the_sfu_and_a_fourth_misses_the_call() {
    let server = TestServer::start();
    let mut ds = Vec::new();
    for _ in 0..4 {
        ds.push(device(&server).await);
    }
    let refs: Vec<&Device> = ds.iter().collect();
    let group = group_of(&refs).await;

    let a = ds[0]
        .client
        .join_room(group, Media::Audio, tone(freq(0)))
        .await
        .unwrap();
    // The call rings every other member's device.
    for d in ds[1..].iter_mut() {
        d.wait("the group call ringing", |e| match e {
            ClientEvent::Room {
                group: g,
                event: RoomEvent::Ringing { from, .. },
            } if *g == group => Some(*from),
            _ => None,
        })
        .await;
    }
    let b = ds[1]
        .client
        .join_room(group, Media::Audio, tone(freq(1)))
        .await
        .unwrap();
    let c = ds[2]
        .client
        .join_room(group, Media::Audio, tone(freq(2)))
        .await
        .unwrap();
    let rooms = [&a, &b, &c];
    for (i, r) in rooms.iter().enumerate() {
        for (j, d) in ds[..3].iter().enumerate() {
            if i != j {
                r.expect_tone(d.client.device(), freq(j));
            }
        }
    }
    for r in rooms {
        r.wait_for(WAIT, |v| v.connected && v.roster.len() == 3)
            .await
            .unwrap();
        // 2 s of each other's tone, decoded.
        hears(r, 2, 100).await;
        assert_eq!(r.view().tracks.len(), 2, "one track per other participant");
    }

    let m = server.metrics().await;
    assert_eq!(metric(&m, "natter_messaging_rooms"), 1.0);
    assert_eq!(metric(&m, "natter_messaging_room_participants"), 3.0);
    assert_eq!(
        server
            .wait_metric("natter_sfu_participants", 3.0, WAIT)
            .await,
        3.0
    );
    assert!(metric(&m, "natter_sfu_forwarded_packets_total") > 0.0);

    // Mute and raise a hand: everyone's roster says so.
    c.set_state(Some(true), None, Some(true)).await.unwrap();
    let c_dev = ds[2].client.device();
    a.wait_for(WAIT, |v| {
        v.roster
            .iter()
            .any(|e| e.device == c_dev && e.muted && e.hand)
    })
    .await
    .unwrap();

    // One leaves: the others' rosters shrink, its media is released.
    c.leave().await.unwrap();
    for r in [&a, &b] {
        r.wait_for(WAIT, |v| v.roster.len() == 2).await.unwrap();
    }
    wait_no_media(&ds[2]).await;
    // The other two still hear each other.
    let before: u64 = tone_frames(&a, ds[1].client.device());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(tone_frames(&a, ds[1].client.device()) >= before + 40);

    b.leave().await.unwrap();
    a.leave().await.unwrap();
    // The call is over: the member who never joined is told, and has a missed call.
    let d = &mut ds[3];
    d.wait("the call's end", |e| {
        matches!(
            e,
            ClientEvent::Room {
                event: RoomEvent::Ended { .. },
                ..
            }
        )
        .then_some(())
    })
    .await;
    let from = d
        .wait("a missed group call", |e| match e {
            ClientEvent::MissedCall { from, call_id, .. } if call_id.starts_with("room-") => {
                Some(*from)
            }
            _ => None,
        })
        .await;
    assert_eq!(from, ds[0].client.user());
    assert_eq!(
        server
            .wait_metric_at_most("natter_sfu_participants", 0.0, WAIT)
            .await,
        0.0
    );
    let m = server.metrics().await;
    assert_eq!(metric(&m, "natter_messaging_rooms"), 0.0);
}

fn tone_frames(room: &ActiveRoom, from: natter_client::protocol::DeviceId) -> u64 {
    room.track_stats()
        .iter()
        .filter(|(t, _)| t.device == from)
        .filter_map(|(_, s)| s.audio.as_ref().map(|a| a.tone_frames))
        .sum()
}

async fn wait_no_media(d: &Device) {
    for _ in 0..100 {
        if d.client.live_calls() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} call(s) still hold media", d.client.live_calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removal_from_the_group_and_a_dropped_socket_take_a_participant_out() {
    let server = TestServer::start();
    let ds = [
        device(&server).await,
        device(&server).await,
        device(&server).await,
    ];
    let group = group_of(&ds.iter().collect::<Vec<_>>()).await;
    let rooms = [
        ds[0]
            .client
            .join_room(group, Media::Audio, tone(freq(0)))
            .await
            .unwrap(),
        ds[1]
            .client
            .join_room(group, Media::Audio, tone(freq(1)))
            .await
            .unwrap(),
        ds[2]
            .client
            .join_room(group, Media::Audio, tone(freq(2)))
            .await
            .unwrap(),
    ];
    for r in &rooms {
        r.wait_for(WAIT, |v| v.connected && v.roster.len() == 3)
            .await
            .unwrap();
    }
    // The SFU's gauges are copied out four times a second: see all three first.
    assert_eq!(
        server
            .wait_metric("natter_sfu_participants", 3.0, WAIT)
            .await,
        3.0
    );
    // The admin removes member 2 from the group: it is out of the call.
    ds[0]
        .client
        .remove_members(group, &[ds[2].client.user()])
        .await
        .unwrap();
    let v = rooms[2]
        .wait_for(WAIT, |v| v.ended.is_some())
        .await
        .unwrap();
    assert_eq!(v.ended.as_deref(), Some("removed from the group"));
    wait_no_media(&ds[2]).await;
    rooms[0]
        .wait_for(WAIT, |v| v.roster.len() == 2)
        .await
        .unwrap();
    // Nor can it come back.
    expect_code(
        ds[2]
            .client
            .join_room(group, Media::Audio, tone(freq(2)))
            .await,
        ErrorCode::Forbidden,
    )
    .await;
    // Member 1's chat socket goes away: it leaves the call.
    ds[1].client.shutdown();
    rooms[0]
        .wait_for(WAIT, |v| v.roster.len() == 1)
        .await
        .unwrap();
    assert_eq!(
        server
            .wait_metric_at_most("natter_sfu_participants", 1.0, WAIT)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_room_requests_are_refused_and_change_nothing() {
    let server = TestServer::start();
    let (a, b, outsider) = (
        device(&server).await,
        device(&server).await,
        device(&server).await,
    );
    let group = group_of(&[&a, &b]).await;
    let room = a
        .client
        .join_room(group, Media::Audio, tone(freq(0)))
        .await
        .unwrap();
    // Not a member; a group that does not exist.
    expect_code(
        outsider
            .client
            .join_room(group, Media::Audio, tone(freq(1)))
            .await,
        ErrorCode::Forbidden,
    )
    .await;
    expect_code(
        outsider
            .client
            .join_room(GroupId(987_654), Media::Audio, tone(freq(1)))
            .await,
        ErrorCode::NotFound,
    )
    .await;
    // Raw frames: a second join of the same device, a garbage offer, and signals for a
    // call the device is not in.
    let conn = a.client.connection(WAIT).await.unwrap();
    let refused = |f: ClientFrame| {
        let conn = conn.clone();
        async move {
            match conn.request(f).await {
                Err(ClientError::Server(e)) => e.code,
                other => panic!("expected an error, got {other:?}"),
            }
        }
    };
    let join = |sdp: &str| ClientFrame::RoomJoin {
        id: 0,
        group,
        media: Media::Audio,
        sdp: sdp.into(),
    };
    assert_eq!(refused(join("v=0\r\n")).await, ErrorCode::Conflict);
    let b_conn = b.client.connection(WAIT).await.unwrap();
    match b_conn.request(join("not an sdp")).await {
        Err(ClientError::Server(e)) => assert_eq!(e.code, ErrorCode::Invalid, "{e:?}"),
        other => panic!("expected an error, got {other:?}"),
    }
    for f in [
        ClientFrame::RoomAnswer {
            id: 0,
            group: GroupId(987_654),
            sdp: "v=0\r\n".into(),
        },
        ClientFrame::RoomLeave {
            id: 0,
            group: GroupId(987_654),
        },
        ClientFrame::RoomState {
            id: 0,
            group: GroupId(987_654),
            muted: Some(true),
            camera: None,
            hand: None,
        },
    ] {
        assert_eq!(refused(f).await, ErrorCode::NotFound);
    }
    // The call is as it was.
    let v = room.view();
    assert_eq!(v.roster.len(), 1);
    assert!(v.ended.is_none());
    let m = server.metrics().await;
    assert_eq!(metric(&m, "natter_messaging_room_participants"), 1.0);

    // A server without an SFU says so.
    let plain = TestServer::start_with(&["--sfu-enabled", "false"]);
    let (c, d) = (device(&plain).await, device(&plain).await);
    let g = group_of(&[&c, &d]).await;
    expect_code(
        c.client.join_room(g, Media::Audio, tone(freq(0))).await,
        ErrorCode::Unavailable,
    )
    .await;
}

fn video(i: usize) -> MediaOptions {
    MediaOptions {
        video: Some(natter_client::VideoOptions {
            width: 320,
            height: 180,
            fps: 15,
            bitrate_kbps: 250,
        }),
        ..tone(freq(i))
    }
}

/// Video frames rendered from each other participant, as `room` counts them.
fn rendered(room: &ActiveRoom) -> Vec<(natter_client::protocol::DeviceId, u64)> {
    room.track_stats()
        .iter()
        .filter_map(|(t, s)| Some((t.device, s.picture.as_ref()?.video_frames_rendered)))
        .collect()
}

async fn sees(room: &ActiveRoom, n: usize, frames: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = rendered(room);
        if r.iter().filter(|(_, f)| *f >= frames).count() >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rendered from {n} participants? {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn video_reaches_every_participant_and_a_late_joiner_sees_everyone_at_once() {
    let server = TestServer::start();
    let mut ds = Vec::new();
    for _ in 0..4 {
        ds.push(device(&server).await);
    }
    let group = group_of(&ds.iter().collect::<Vec<_>>()).await;
    let mut rooms = Vec::new();
    for (i, d) in ds[..3].iter().enumerate() {
        rooms.push(
            d.client
                .join_room(group, Media::Video, video(i))
                .await
                .unwrap(),
        );
    }
    for r in &rooms {
        r.wait_for(WAIT, |v| v.connected && v.tracks.len() == 4)
            .await
            .unwrap();
        // Two seconds of 15 fps from each of the two others.
        sees(r, 2, 30).await;
    }
    let joined = std::time::Instant::now();
    let late = ds[3]
        .client
        .join_room(group, Media::Video, video(3))
        .await
        .unwrap();
    late.wait_for(WAIT, |v| v.connected && v.tracks.len() == 6)
        .await
        .unwrap();
    let connected = joined.elapsed();
    sees(&late, 3, 1).await;
    let first_picture = joined.elapsed();
    println!(
        "late joiner: connected after {} ms, a picture from all 3 after {} ms",
        connected.as_millis(),
        first_picture.as_millis()
    );
    // The bar: a late joiner renders within a second (of its media connecting).
    assert!(
        first_picture - connected < Duration::from_secs(1),
        "{first_picture:?} after the join"
    );
    // And the others see it.
    for r in &rooms {
        sees(r, 3, 15).await;
    }
    // Loopback has room: every track reaches its top simulcast layer (the full picture).
    for r in rooms.iter().chain([&late]) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let sizes: Vec<(u32, u32)> = r
                .track_stats()
                .iter()
                .filter_map(|(_, s)| s.picture.as_ref().map(|v| (v.video_width, v.video_height)))
                .collect();
            if sizes.len() == 3 && sizes.iter().all(|s| *s == (320, 180)) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "sizes {sizes:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let m = server.metrics().await;
    assert!(metric(&m, "natter_sfu_keyframe_requests_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_active_speaker_follows_who_talks() {
    let server = TestServer::start();
    let ds = [
        device(&server).await,
        device(&server).await,
        device(&server).await,
    ];
    let group = group_of(&ds.iter().collect::<Vec<_>>()).await;
    let mut rooms = Vec::new();
    for (i, d) in ds.iter().enumerate() {
        let r = d
            .client
            .join_room(group, Media::Audio, tone(freq(i)))
            .await
            .unwrap();
        // Only the first talks; the others send silence.
        if i > 0 {
            r.set_state(Some(true), None, None).await.unwrap();
        }
        rooms.push(r);
    }
    let (a, b) = (ds[0].client.device(), ds[1].client.device());
    for r in &rooms {
        r.wait_for(WAIT, |v| v.speaker == Some(a)).await.unwrap();
    }
    // The first stops, the second starts: everyone sees the change within a second or so.
    rooms[0].set_state(Some(true), None, None).await.unwrap();
    rooms[1].set_state(Some(false), None, None).await.unwrap();
    let switched = std::time::Instant::now();
    for r in &rooms {
        r.wait_for(WAIT, |v| v.speaker == Some(b)).await.unwrap();
    }
    println!(
        "speaker switched after {} ms",
        switched.elapsed().as_millis()
    );
    // A late joiner is told who speaks.
    let d = device(&server).await;
    ds[0]
        .client
        .add_members(group, &[d.client.user()])
        .await
        .unwrap();
    let late = d
        .client
        .join_room(group, Media::Audio, tone(freq(3)))
        .await
        .unwrap();
    late.wait_for(WAIT, |v| v.speaker == Some(b)).await.unwrap();
}

/// A participant that may only use relayed candidates, through TURN over TCP, reaches the
/// SFU through natter's own TURN server (as one behind a firewall that blocks UDP would),
/// and hears and is heard by the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_participant_reaches_the_sfu_through_natter_turn() {
    let server = TestServer::start_with(&[
        "--turn-listen",
        "127.0.0.1:0",
        "--turn-allow-peers",
        "127.0.0.0/8",
    ]);
    let (ds, group) = members(&server, 3).await;
    let mut rooms = Vec::new();
    for (i, d) in ds.iter().enumerate() {
        let opts = MediaOptions {
            relay_only: i == 2,
            turn_tcp_only: i == 2,
            ..tone(freq(i))
        };
        rooms.push(d.client.join_room(group, Media::Audio, opts).await.unwrap());
    }
    for (i, r) in rooms.iter().enumerate() {
        for (j, d) in ds.iter().enumerate() {
            if i != j {
                r.expect_tone(d.client.device(), freq(j));
            }
        }
    }
    for r in &rooms {
        r.wait_for(WAIT, |v| v.connected && v.roster.len() == 3)
            .await
            .unwrap();
        hears(r, 2, 50).await;
    }
    let relayed = server
        .metric("natter_turn_relayed_packets_to_peers_total")
        .await;
    // A second of the relayed participant's audio, and the checks, went through the relay.
    assert!(relayed >= 50.0, "natter-turn relayed {relayed} packets");
    for r in &rooms {
        r.leave().await.unwrap();
    }
}
