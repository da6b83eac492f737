// A web app on its own origin joins an onstage stage in the forms IVS's client
// libraries use (BEHAVIOUR §4.11): a page served by a small static server of this
// test (another port, so another origin than onstage) reads everything from the
// token, publishes at `{whip_url}/publish/{jti}` with `X-Stages-*` headers (a CORS
// preflight), opens the events socket at `{events_url}?error_over_ws=1&topic=…`,
// keeps only STAGE_STATEs whose sequence number rises, sends SET_STATE, subscribes at
// `{whip_url}/subscribe/{id}`, decodes the other page's video and leaves with
// `DELETE {Location}`.
//
// Needs what join.test.mjs needs; starts and stops its own servers.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';

import { launchChromium, watch, waitFor, startOnstage } from './chromium.mjs';

// The app: plain browser JavaScript, as a customer's page would be (no onstage code).
const APP = `<!doctype html><meta charset="utf-8"><title>an app on another origin</title>
<video id="remote" autoplay muted playsinline></video>
<script>
'use strict';
const app = window.app = { states: [], sequences: [], errors: [], published: false, location: null, remote: null, framesDecoded: 0, deleted: null, preflightOk: null };
const token = new URLSearchParams(location.search).get('token');
const claims = JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
const headers = {
  Authorization: 'Bearer ' + token, 'Content-Type': 'application/sdp',
  'X-Stages-Platform': 'web', 'X-Stages-SDK': 'an-app/1.0', 'X-Stages-Request-ID': crypto.randomUUID(),
  'X-Stages-Session-ID': crypto.randomUUID(), 'X-Stages-Trace-ID': crypto.randomUUID(),
  'X-Stages-WHIP-Version': '1', 'X-Stages-Options': '{}',
};
async function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return;
  await new Promise((r) => { pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && r()); setTimeout(r, 3000); });
}
async function post(pc, url, extra = {}) {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const r = await fetch(url, { method: 'POST', headers: { ...headers, ...extra }, body: pc.localDescription.sdp });
  if (r.status !== 201) throw new Error(url + ' -> ' + r.status + ' ' + await r.text());
  await pc.setRemoteDescription({ type: 'answer', sdp: await r.text() });
  return r.headers.get('Location');
}
let subscribed = null;
async function subscribe(id) {
  subscribed = id;
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.ontrack = (e) => { if (e.track.kind === 'video') document.getElementById('remote').srcObject = new MediaStream([e.track]); };
  await post(pc, claims.whip_url + '/subscribe/' + encodeURIComponent(id), { 'X-Stages-Initial-Layer-Pref': 'highest' });
  app.remote = id;
  setInterval(async () => {
    for (const s of (await pc.getStats()).values()) if (s.type === 'inbound-rtp' && s.kind === 'video') app.framesDecoded = s.framesDecoded || 0;
  }, 300);
}
let last = 0;
const ws = new WebSocket(claims.events_url + '?error_over_ws=1&topic=' + encodeURIComponent(claims.topic) + '/publishers&traceid=' + crypto.randomUUID(), token);
app.ws = () => ws.readyState;
ws.onmessage = (e) => {
  const m = JSON.parse(e.data);
  if (m.type !== 'STAGE_STATE') { app.errors.push(m); return; }
  app.sequences.push(m.payload.sequenceNumber);
  if (!(m.payload.sequenceNumber > last)) return;
  last = m.payload.sequenceNumber;
  app.states.push(m.payload);
  const other = m.payload.participants.find((p) => p.id !== claims.jti && p.isPublishing);
  if (other && !subscribed) subscribe(other.id).catch((e) => app.errors.push(String(e)));
};
ws.onopen = () => setInterval(() => ws.send(JSON.stringify({ type: 'PING' })), 15000);
app.setState = (audioMuted, videoStopped) => ws.send(JSON.stringify({ type: 'SET_STATE', audioMuted, videoStopped, version: '0' }));
app.leave = async () => { const r = await fetch(app.location, { method: 'DELETE' }); app.deleted = r.status; };
(async () => {
  const media = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  const pc = new RTCPeerConnection();
  for (const t of media.getTracks()) pc.addTransceiver(t, { direction: 'sendrecv' });
  app.location = await post(pc, claims.whip_url + '/publish/' + encodeURIComponent(claims.jti));
  app.published = true;
})().catch((e) => app.errors.push(String(e)));
</script>`;

let onstage;
let appServer;
let appOrigin;
let browser;
const pages = {};

async function describe() {
  const out = [];
  for (const [name, { page, problems }] of Object.entries(pages)) {
    const state = await page.evaluate(() => JSON.stringify({ ...window.app, states: window.app?.states?.slice(-2) })).catch((e) => e.message);
    out.push(`${name}: ${state}`, ...problems.pageErrors, ...problems.consoleErrors, ...problems.httpErrors);
  }
  out.push(`--- server log (tail) ---\n${onstage.log().split('\n').slice(-30).join('\n')}`);
  return out.join('\n');
}

before(async () => {
  onstage = await startOnstage({ prefix: 'onstage-ivs-forms-' });
  appServer = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(APP);
  });
  await new Promise((r) => appServer.listen(0, '127.0.0.1', r));
  appOrigin = `http://127.0.0.1:${appServer.address().port}`;
  assert.notEqual(appOrigin, onstage.base);

  const { participantTokens } = await onstage.aws(
    'ivs-realtime', 'create-stage', '--name', 'ivs-forms',
    '--participant-token-configurations', 'userId=anna', 'userId=ben',
  );
  browser = await launchChromium();
  const context = await browser.newContext();
  for (const t of participantTokens) {
    const page = await context.newPage();
    pages[t.userId] = { page, problems: watch(page, t.userId), participantId: t.participantId };
    await page.goto(`${appOrigin}/app?token=${encodeURIComponent(t.token)}`);
  }
});

after(async () => {
  await browser?.close().catch(() => {});
  await new Promise((r) => (appServer ? appServer.close(r) : r()));
  await onstage?.stop();
});

test('an app on another origin publishes, subscribes and follows the stage in the client libraries\' forms', { timeout: 60_000 }, async () => {
  const { anna, ben } = pages;
  for (const [me, other] of [[anna, ben], [ben, anna]]) {
    await waitFor(me.page, (id) => window.app.remote === id && window.app.framesDecoded > 0, other.participantId, { timeout: 30_000, describe });
  }
  for (const { page } of [anna, ben]) {
    const app = await page.evaluate(() => window.app);
    assert.ok(app.published && app.location?.startsWith(onstage.base + '/whip/'), JSON.stringify(app));
    assert.equal(app.sequences[0], 1, JSON.stringify(app.sequences));
    for (let i = 1; i < app.sequences.length; i++) assert.ok(app.sequences[i] > app.sequences[i - 1], JSON.stringify(app.sequences));
    assert.deepEqual(app.errors, []);
  }

  // SET_STATE from anna reaches ben's STAGE_STATE.
  await anna.page.evaluate(() => window.app.setState(true, false));
  await waitFor(ben.page, (id) => window.app.states.at(-1)?.participants.some((p) => p.id === id && p.audioMuted && !p.videoStopped),
    anna.participantId, { timeout: 5_000, describe });

  // DELETE {Location} from the other origin: ben stops publishing, anna sees it.
  await ben.page.evaluate(() => window.app.leave());
  assert.equal(await ben.page.evaluate(() => window.app.deleted), 200);
  await waitFor(anna.page, (id) => window.app.states.at(-1)?.participants.some((p) => p.id === id && !p.isPublishing),
    ben.participantId, { timeout: 5_000, describe });
  for (const { problems } of [anna, ben]) {
    assert.deepEqual(problems.pageErrors, []);
    assert.deepEqual(problems.consoleErrors.filter((e) => /CORS|Access-Control/i.test(e)), []);
  }
});
