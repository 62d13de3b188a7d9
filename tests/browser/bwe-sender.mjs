// Chromium's own sender for scripts/bwe-eval: Debian's chromium, driven by playwright-core,
// sends its fake camera and microphone to a natter-webrtc-sink over whatever network it
// sits on (bwe-eval starts it inside a natter-netem host), with Chromium's own GCC.
//
// Signalling is on stdin/stdout, as natter-webrtc-sink's: the offer goes out as SDP lines
// ended by an empty line, the answer comes back the same way. Each second a line on
// stderr: what Chromium's stats say it sends.
//
// usage: node bwe-sender.mjs SECONDS (from start-up to hang-up) [WIDTHxHEIGHT] [MAX_KBPS]
// With Y4M=FILE in the environment the fake camera plays that file (natter-pattern-y4m
// writes natter's own test pattern), else Chromium's own fake picture.
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';

const seconds = Number(process.argv[2] || 100);
// SECONDS count from here, so the call ends when whoever started this expects.
const end = Date.now() + seconds * 1000;
const [width, height] = (process.argv[3] || '640x360').split('x').map(Number);
const maxKbps = Number(process.argv[4] || 4000);
if (!(seconds > 0) || !(width > 0) || !(height > 0) || !(maxKbps > 0)) {
  console.error('usage: node bwe-sender.mjs SECONDS [WIDTHxHEIGHT] [MAX_KBPS]');
  process.exit(2);
}

const lines = createInterface({ input: process.stdin });
const readSdp = () =>
  new Promise((resolve) => {
    const got = [];
    const onLine = (l) => {
      l = l.replace(/\r$/, '');
      if (l === '') {
        lines.off('line', onLine);
        resolve(got.join('\r\n') + '\r\n');
      } else got.push(l);
    };
    lines.on('line', onLine);
  });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
    ...(process.env.Y4M ? [`--use-file-for-fake-video-capture=${process.env.Y4M}`] : []),
    // Host candidates as addresses, not mDNS names nobody here can resolve.
    '--disable-features=WebRtcHideLocalIpsWithMdns',
  ],
});
try {
  const page = await browser.newPage();
  // A secure context for getUserMedia without a server: localhost, answered here.
  await page.route('http://localhost/**', (r) =>
    r.fulfill({ contentType: 'text/html', body: '<!doctype html><title>bwe</title>' }),
  );
  await page.goto('http://localhost/');
  const offer = await page.evaluate(
    async ({ width, height, maxKbps }) => {
      const pc = new RTCPeerConnection();
      window.pc = pc;
      const media = await navigator.mediaDevices.getUserMedia({
        audio: true,
        video: { width, height, frameRate: 30 },
      });
      for (const t of media.getTracks()) pc.addTrack(t, media);
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      await new Promise((ok) => {
        if (pc.iceGatheringState === 'complete') ok();
        pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && ok();
        setTimeout(ok, 3000);
      });
      // As natter's sender is asked for: more than any case's capacity.
      window.maxKbps = maxKbps;
      return pc.localDescription.sdp;
    },
    { width, height, maxKbps },
  );
  process.stdout.write(offer.replace(/\r\n$/, '') + '\r\n\n');
  const answer = await readSdp();
  await page.evaluate(async (sdp) => {
    await window.pc.setRemoteDescription({ type: 'answer', sdp });
    for (const s of window.pc.getSenders()) {
      if (s.track?.kind !== 'video') continue;
      const p = s.getParameters();
      for (const e of p.encodings) e.maxBitrate = window.maxKbps * 1000;
      await s.setParameters(p);
    }
  }, answer);

  let last = null;
  while (Date.now() < end) {
    await new Promise((ok) => setTimeout(ok, 1000));
    const s = await page.evaluate(async () => {
      const out = { state: window.pc.connectionState };
      for (const r of (await window.pc.getStats()).values()) {
        if (r.type === 'outbound-rtp' && r.kind === 'video') {
          out.videoBytes = r.bytesSent;
          out.rtxBytes = r.retransmittedBytesSent || 0;
          out.target = r.targetBitrate;
          out.size = `${r.frameWidth || 0}x${r.frameHeight || 0}`;
          out.fps = r.framesPerSecond || 0;
          out.keyframes = r.keyFramesEncoded || 0;
          out.nacks = r.nackCount || 0;
          out.limit = r.qualityLimitationReason;
        }
        if (r.type === 'outbound-rtp' && r.kind === 'audio') out.audioBytes = r.bytesSent;
        if (r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded') {
          out.estimate = r.availableOutgoingBitrate;
          out.rtt = r.currentRoundTripTime;
        }
      }
      return out;
    });
    const kbps = (now, before) => Math.round(((now || 0) - (before || 0)) * 8 / 1000);
    console.error(
      `state=${s.state} estimate_kbps=${Math.round((s.estimate || 0) / 1000)} ` +
        `target_kbps=${Math.round((s.target || 0) / 1000)} ` +
        `video_kbps=${kbps(s.videoBytes, last?.videoBytes)} rtx_kbps=${kbps(s.rtxBytes, last?.rtxBytes)} ` +
        `audio_kbps=${kbps(s.audioBytes, last?.audioBytes)} size=${s.size} fps=${s.fps} ` +
        `keyframes=${s.keyframes} nacks_in=${s.nacks} limit=${s.limit} ` +
        `rtt_ms=${s.rtt === undefined ? 'none' : Math.round(s.rtt * 1000)}`,
    );
    last = s;
    if (s.state === 'failed' || s.state === 'closed') throw new Error(`the call ${s.state}`);
  }
} finally {
  await browser.close();
  lines.close();
}
