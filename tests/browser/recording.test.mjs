// A participant's recording plays in headless Chromium through hls.js (BEHAVIOUR §9).
//
// Chromium publishes its fake camera (the moving test pattern) as H.264 over WHIP to
// a stage with automatic participant recording on the default storage (a directory
// under the data dir); once the participant shows recordingState STOPPED, the
// recording is served over HTTP and played by hls.js in a <video>. The test waits for
// playback to pass a few seconds, checks that the frame shows a picture (not one
// flat colour) and saves a screenshot beside the build (target/recording-playback.png).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFile, mkdir } from 'node:fs/promises';
import path from 'node:path';

import { launchChromium, watch, waitFor, startOnstage, ROOT } from './chromium.mjs';

const HLS_JS = path.join(ROOT, 'tests/browser/node_modules/hls.js/dist/hls.min.js');
const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
});

/** Serves files under `root` (and hls.js at /hls.js) on a free loopback port. */
function serveFiles(root) {
  const types = { '.m3u8': 'application/vnd.apple.mpegurl', '.m4s': 'video/iso.segment', '.mp4': 'video/mp4', '.js': 'text/javascript', '.html': 'text/html' };
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    try {
      let file;
      if (url.pathname === '/hls.js') file = HLS_JS;
      else {
        file = path.join(root, decodeURIComponent(url.pathname));
        if (!file.startsWith(root + path.sep)) throw new Error('outside');
      }
      const body = url.pathname === '/' ? PLAYER : await readFile(file);
      res.writeHead(200, { 'content-type': url.pathname === '/' ? 'text/html' : types[path.extname(file)] || 'application/octet-stream' });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

const PLAYER = `<!doctype html><html><body style="margin:0;background:#000">
<video id="v" muted playsinline style="width:640px;height:480px"></video>
<script src="/hls.js"></script>
<script>
  window.state = { errors: [], ended: false };
  const v = document.getElementById('v');
  v.addEventListener('ended', () => { window.state.ended = true; });
  window.play = (src) => {
    const hls = new Hls();
    hls.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) window.state.errors.push(d.type + ': ' + d.details); });
    hls.loadSource(src);
    hls.attachMedia(v);
    hls.on(Hls.Events.MANIFEST_PARSED, () => v.play());
  };
  /** How varied the current frame is: the standard deviation of its luma. */
  window.frameSpread = () => {
    const c = document.createElement('canvas');
    c.width = 160; c.height = 120;
    const g = c.getContext('2d');
    g.drawImage(v, 0, 0, 160, 120);
    const d = g.getImageData(0, 0, 160, 120).data;
    let n = 0, s = 0, s2 = 0;
    for (let i = 0; i < d.length; i += 4) {
      const y = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
      n++; s += y; s2 += y * y;
    }
    return Math.sqrt(s2 / n - (s / n) ** 2);
  };
</script></body></html>`;

test('a recording of a Chromium H.264 publisher plays in Chromium through hls.js', { timeout: 150_000 }, async () => {
  const onstage = await startOnstage({ prefix: 'onstage-recording-' });
  cleanup.push(() => onstage.stop());
  const bucket = 'browser-recordings';
  const { storageConfiguration } = await onstage.aws('ivs-realtime', 'create-storage-configuration', '--s3', `bucketName=${bucket}`);
  const { stage } = await onstage.aws('ivs-realtime', 'create-stage', '--name', 'recorded',
    '--auto-participant-recording-configuration',
    JSON.stringify({ storageConfigurationArn: storageConfiguration.arn, hlsConfiguration: { targetSegmentDurationSeconds: 2 } }));
  const { participantToken } = await onstage.aws('ivs-realtime', 'create-participant-token', '--stage-arn', stage.arn,
    '--capabilities', 'PUBLISH', 'SUBSCRIBE');

  const browser = await launchChromium();
  cleanup.push(() => browser.close());
  const publisher = await browser.newPage();
  const problems = watch(publisher, 'publisher');
  await publisher.goto(`${onstage.base}/healthz`);
  const published = await publisher.evaluate(async ({ whip, token }) => {
    const media = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true });
    const pc = new RTCPeerConnection();
    window.pc = pc;
    for (const track of media.getTracks()) {
      const t = pc.addTransceiver(track, { direction: 'sendonly' });
      if (track.kind === 'video') {
        const h264 = RTCRtpSender.getCapabilities('video').codecs.filter((c) => /h264/i.test(c.mimeType) && /packetization-mode=1/.test(c.sdpFmtpLine || '') && /42e01f|42001f/.test(c.sdpFmtpLine || ''));
        if (!h264.length) return { error: 'no H.264 in this Chromium' };
        t.setCodecPreferences(h264);
      }
    }
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((r) => (pc.iceGatheringState === 'complete' ? r() : pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && r())));
    const resp = await fetch(whip, { method: 'POST', headers: { 'content-type': 'application/sdp', authorization: `Bearer ${token}` }, body: pc.localDescription.sdp });
    if (resp.status !== 201) return { error: `WHIP ${resp.status}: ${await resp.text()}` };
    await pc.setRemoteDescription({ type: 'answer', sdp: await resp.text() });
    return { location: resp.headers.get('location') };
  }, { whip: stage.endpoints.whip, token: participantToken.token });
  assert.equal(published.error, undefined, published.error);
  await waitFor(publisher, () => window.pc.connectionState === 'connected', null, { timeout: 15_000, describe: async () => onstage.log().slice(-3000) });
  // The recording's length: eight seconds of the moving pattern.
  await publisher.waitForTimeout(8_000);
  await publisher.evaluate(async (loc) => { await fetch(loc, { method: 'DELETE' }); window.pc.close(); }, published.location);
  assert.deepEqual(problems.pageErrors, []);

  // The participant's recording ends (no reconnect window) and says where it is.
  let participant;
  const deadline = Date.now() + 30_000;
  for (;;) {
    const { stageSessions } = await onstage.aws('ivs-realtime', 'list-stage-sessions', '--stage-arn', stage.arn);
    ({ participant } = await onstage.aws('ivs-realtime', 'get-participant', '--stage-arn', stage.arn,
      '--session-id', stageSessions[0].sessionId, '--participant-id', participantToken.participantId));
    if (participant.recordingState === 'STOPPED') break;
    assert.ok(Date.now() < deadline, `recordingState stayed ${participant.recordingState}`);
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.equal(participant.recordingS3BucketName, bucket);

  const files = await serveFiles(path.join(onstage.dataDir, 'buckets', bucket));
  cleanup.push(() => new Promise((r) => files.close(r)));
  const player = await browser.newPage();
  const playerProblems = watch(player, 'player');
  await player.setViewportSize({ width: 640, height: 480 });
  await player.goto(`http://127.0.0.1:${files.address().port}/`);
  await player.evaluate((src) => window.play(src), `/${participant.recordingS3Prefix}/media/hls/multivariant.m3u8`);
  await waitFor(player, () => document.getElementById('v').currentTime > 4 || window.state.errors.length > 0, null, {
    timeout: 30_000,
    describe: async () => JSON.stringify(await player.evaluate(() => ({ t: document.getElementById('v').currentTime, s: window.state }))),
  });
  const state = await player.evaluate(() => window.state);
  assert.deepEqual(state.errors, []);
  const spread = await player.evaluate(() => window.frameSpread());
  await mkdir(path.join(ROOT, 'target'), { recursive: true });
  await player.screenshot({ path: path.join(ROOT, 'target/recording-playback.png') });
  // Chromium's fake camera draws a pattern with moving shapes and text: far from flat.
  assert.ok(spread > 10, `the frame is nearly flat (luma spread ${spread.toFixed(1)})`);
  await waitFor(player, () => window.state.ended, null, { timeout: 20_000, describe: async () => 'the recording never ended (no ENDLIST?)' });
  assert.deepEqual(playerProblems.pageErrors, []);
});
