//! A standalone `natter-sfu` behind the gateway (`natter --sfu-url`): the same group call
//! through the control link, the link's key checked, and what happens when the SFU dies.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use natter_client::audio::AudioSource;
use natter_client::protocol::ErrorCode;
use natter_client::protocol::call::Media;
use natter_client::{ClientError, MediaOptions};

use crate::common::*;
use crate::e2ee::device;
use crate::netem_calls::built_bin;

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "a secret both sides were given";

struct Sfu {
    child: Child,
    control: String,
}

impl Drop for Sfu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_sfu(bin: &Path) -> Sfu {
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0"])
        .args(["--token-secret", SECRET])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("natter-sfu starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let control = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.trim()
                .strip_prefix("control")
                .map(|u| u.trim().to_owned())
        })
        .expect("natter-sfu prints its control URL");
    std::thread::spawn(move || for _ in lines {});
    Sfu { child, control }
}

fn tone(freq: f32) -> MediaOptions {
    MediaOptions {
        source: AudioSource::Tone { freq },
        udp_bind: vec!["127.0.0.1:0".to_owned()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_call_through_a_standalone_sfu_and_the_sfu_dying() {
    let Some(bin) = built_bin("natter-sfu") else {
        assert!(
            !require_all(),
            "natter-sfu is not built next to natter (scripts/test builds it)"
        );
        eprintln!("SKIPPED: natter-sfu is not built next to natter (run scripts/test)");
        return;
    };
    let mut sfu = start_sfu(&bin);
    // Without the key derived from the secret, the control link is refused.
    let http = sfu.control.replacen("ws://", "http://", 1);
    let status = reqwest::Client::new()
        .get(&http)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("authorization", "Bearer guessed")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 401);

    let server = TestServer::start_with(&["--sfu-url", &sfu.control, "--sfu-token-secret", SECRET]);
    let ds = [
        device(&server).await,
        device(&server).await,
        device(&server).await,
    ];
    let others: Vec<_> = ds[1..].iter().map(|d| d.client.user()).collect();
    let group = ds[0]
        .client
        .create_group("call", &others)
        .await
        .unwrap()
        .group;
    let freqs = [440.0, 660.0, 880.0];
    let mut rooms = Vec::new();
    for (d, f) in ds.iter().zip(freqs) {
        rooms.push(
            d.client
                .join_room(group, Media::Audio, tone(f))
                .await
                .unwrap(),
        );
    }
    for (i, r) in rooms.iter().enumerate() {
        for (j, d) in ds.iter().enumerate() {
            if i != j {
                r.expect_tone(d.client.device(), freqs[j]);
            }
        }
    }
    for r in &rooms {
        r.wait_for(WAIT, |v| v.connected && v.tracks.len() == 2)
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    for r in &rooms {
        loop {
            let heard = r
                .track_stats()
                .iter()
                .filter(|(_, s)| s.audio.as_ref().is_some_and(|a| a.tone_frames >= 50))
                .count();
            if heard == 2 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                r.track_stats()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The SFU's own /metrics counts what it forwarded.
    let metrics = reqwest::get(http.replace("/v1/control", "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metric(&metrics, "natter_sfu_forwarded_packets_total") > 0.0);

    // The SFU dies: everyone is out of the call, and new joins are refused until it is back.
    let _ = sfu.child.kill();
    let _ = sfu.child.wait();
    for r in &rooms {
        let v = r.wait_for(WAIT, |v| v.ended.is_some()).await.unwrap();
        assert_eq!(v.ended.as_deref(), Some("the SFU link was lost"));
    }
    match ds[0]
        .client
        .join_room(group, Media::Audio, tone(440.0))
        .await
    {
        Err(ClientError::Server(e)) => assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}"),
        Err(e) => panic!("expected unavailable, got {e}"),
        Ok(_) => panic!("joined with the SFU down"),
    }
    let m = server.metrics().await;
    assert_eq!(metric(&m, "natter_messaging_room_participants"), 0.0);
}
