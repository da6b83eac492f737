// The join page's own behaviour, without onstage: the page's files are served from
// crates/onstage-api/assets with the API's headers (its Content-Security-Policy
// included), and the media plane is scripted here — WHIP and subscribe are
// answered by RTCPeerConnections in a third Chromium page that forwards what
// publishers send, the events socket is played by the test. This pins down what
// the page does (subscribing, tiles, leaving, showing refusals) whatever state the
// server is in; join.test.mjs runs the same page against the real server.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { launchChromium, watch, waitFor } from './chromium.mjs';

const ASSETS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../crates/onstage-api/assets');
const ORIGIN = 'http://127.0.0.1:7799'; // nothing listens there: every request is answered by routes
const STAGE = 'STAGE1234567';
const HEADERS = {
  'access-control-allow-origin': '*',
  'cache-control': 'no-store, no-cache',
  'content-security-policy': "default-src 'self'; upgrade-insecure-requests;",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
};
const FILES = {
  '/join': ['join.html', 'text/html; charset=utf-8'],
  '/join/join.js': ['join.js', 'text/javascript; charset=utf-8'],
  '/join/join.css': ['join.css', 'text/css; charset=utf-8'],
  '/join/icon.svg': ['icon.svg', 'image/svg+xml'],
};

const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
function tokenFor(jti, userId, capabilities = { allow_publish: true, allow_subscribe: true }) {
  const claims = {
    jti, topic: STAGE, user_id: userId, capabilities, version: '0.0',
    whip_url: `${ORIGIN}/whip`, events_url: 'ws://127.0.0.1:7799/events',
    iat: Math.floor(Date.now() / 1000), exp: Math.floor(Date.now() / 1000) + 600,
  };
  return [b64({ alg: 'ES384', typ: 'JWT' }), b64(claims), 'signature-not-checked-here'].join('.');
}
const jtiOf = (authorization = '') => JSON.parse(Buffer.from(authorization.split('.')[1] || 'e30', 'base64url')).jti;

let browser;
let context;
let sfu;
const participants = new Map(); // id -> { id, userId, attributes, isPublishing, source }
const sockets = new Map(); // socket -> the last sequence number it was sent
const sessions = new Map(); // session key -> { publishes: bool, participantId }
let refusePublish = null; // when set, POST /whip/publish/{id} answers this { status, body }
let nextKey = 0;

function broadcast() {
  const list = [...participants.values()].map(({ id, userId, attributes, isPublishing }) => ({ id, userId, attributes, isPublishing }));
  for (const [ws, sequence] of sockets) {
    sockets.set(ws, sequence + 1);
    ws.send(JSON.stringify({ type: 'STAGE_STATE', payload: { sequenceNumber: sequence + 1, stageId: STAGE, participants: list } }));
  }
}

/** The scripted media plane: a page whose peer connections answer offers and forward tracks. */
async function startSfu() {
  sfu = await context.newPage();
  await sfu.route('http://127.0.0.1:7798/', (r) => r.fulfill({ contentType: 'text/html', body: '<title>scripted SFU</title>' }));
  await sfu.goto('http://127.0.0.1:7798/');
  await sfu.evaluate(async () => {
    // Granting the camera once makes Chromium offer real host candidates, not mDNS names.
    (await navigator.mediaDevices.getUserMedia({ audio: true })).getTracks().forEach((t) => t.stop());
    const sources = {};
    const pcs = {};
    const gathered = (pc) => new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') return resolve();
      pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
      setTimeout(resolve, 3000);
    });
    window.answer = async (key, sdp, sourceKey) => {
      const pc = new RTCPeerConnection();
      const tracks = {};
      pc.ontrack = (e) => { tracks[e.track.kind] = e.track; };
      await pc.setRemoteDescription({ type: 'offer', sdp });
      if (sourceKey) {
        for (const t of pc.getTransceivers()) {
          const track = sources[sourceKey][t.receiver.track.kind];
          if (track) { await t.sender.replaceTrack(track); t.direction = 'sendonly'; }
        }
      } else {
        sources[key] = tracks;
      }
      await pc.setLocalDescription(await pc.createAnswer());
      await gathered(pc);
      pcs[key] = pc;
      return pc.localDescription.sdp;
    };
    window.hangUp = (key) => { pcs[key]?.close(); delete pcs[key]; };
  });
}

async function answerHttp(route) {
  const request = route.request();
  const url = new URL(request.url());
  const reply = (status, body = '', headers = {}) => route.fulfill({ status, headers: { ...HEADERS, ...headers }, body });
  const file = FILES[url.pathname];
  if (file && request.method() === 'GET') {
    return reply(200, readFileSync(path.join(ASSETS, file[0])), { 'content-type': file[1] });
  }
  const participantId = jtiOf(request.headers().authorization);
  if (request.method() === 'POST' && url.pathname === `/whip/publish/${participantId}`) {
    if (refusePublish) return reply(refusePublish.status, refusePublish.body, { 'content-type': 'text/plain; charset=utf-8' });
    const key = `session${++nextKey}`;
    const answer = await sfu.evaluate(([k, sdp]) => window.answer(k, sdp), [key, request.postData()]);
    sessions.set(key, { publishes: true, participantId });
    Object.assign(participants.get(participantId), { isPublishing: true, source: key });
    broadcast();
    return reply(201, answer, { 'content-type': 'application/sdp', location: `/whip/session/${key}` });
  }
  const subscribe = url.pathname.match(/^\/whip\/subscribe\/(.+)$/);
  if (request.method() === 'POST' && subscribe) {
    const publisher = participants.get(decodeURIComponent(subscribe[1]));
    if (!publisher?.isPublishing) return reply(404, 'PUBLISHER_NOT_FOUND: that participant is not publishing\n');
    const key = `session${++nextKey}`;
    const answer = await sfu.evaluate(([k, sdp, source]) => window.answer(k, sdp, source), [key, request.postData(), publisher.source]);
    sessions.set(key, { publishes: false, participantId });
    return reply(201, answer, { 'content-type': 'application/sdp', location: `/whip/session/${key}` });
  }
  const session = url.pathname.match(/^\/whip\/session\/(.+)$/);
  if (request.method() === 'DELETE' && session && sessions.has(session[1])) {
    const { publishes, participantId: owner } = sessions.get(session[1]);
    sessions.delete(session[1]);
    await sfu.evaluate((k) => window.hangUp(k), session[1]);
    if (publishes && participants.has(owner)) {
      participants.get(owner).isPublishing = false;
      broadcast();
    }
    return reply(200);
  }
  return reply(404, 'not found\n');
}

/** A page joining with a token; the events socket is played by this test. */
async function join(participantId, userId, capabilities) {
  const page = await context.newPage();
  const problems = watch(page, userId);
  const joined = { page, problems, socket: null };
  await page.route(`${ORIGIN}/**`, answerHttp);
  await page.routeWebSocket(new RegExp(`^ws://127\\.0\\.0\\.1:7799/events\\?.*topic=${STAGE}(/|%2F)publishers`), (ws) => {
    joined.socket = ws;
    sockets.set(ws, 0);
    participants.set(participantId, { id: participantId, userId, attributes: {}, isPublishing: false });
    broadcast();
    ws.onMessage((m) => JSON.parse(m).type === 'PING' && ws.send('{"type":"PONG"}'));
    ws.onClose(() => {
      sockets.delete(ws);
      participants.delete(participantId);
      broadcast();
    });
  });
  await page.goto(`${ORIGIN}/join?token=${tokenFor(participantId, userId, capabilities)}`);
  return joined;
}

const describePage = (page) => async () => JSON.stringify(await page.evaluate(() => window.onstage));

before(async () => {
  browser = await launchChromium();
  context = await browser.newContext();
  await startSfu();
});

after(async () => {
  await browser?.close();
});

test('without a token the page asks for one; a malformed one is explained', async () => {
  const page = await context.newPage();
  const problems = watch(page, 'form');
  await page.route(`${ORIGIN}/**`, answerHttp);
  await page.goto(`${ORIGIN}/join`);
  assert.ok(await page.isVisible('#token-form'));
  await page.fill('#token-input', 'not-a-token');
  await Promise.all([page.waitForURL(/token=not-a-token/), page.click('#token-form button[type=submit]')]);
  assert.match(await page.textContent('#error'), /not a participant token/);
  assert.equal(await page.evaluate(() => window.onstage.status), 'error');
  assert.deepEqual(problems.pageErrors, []);
  assert.deepEqual(problems.consoleErrors, []);
  await page.close();
});

test('two pages publish, subscribe to each other, and a leaver disappears', { timeout: 30_000 }, async () => {
  const alice = await join('AAAAAAAAAAAA', 'alice');
  const bob = await join('BBBBBBBBBBBB', 'bob');
  await waitFor(alice.page, () => (window.onstage.remotes.BBBBBBBBBBBB?.framesDecoded ?? 0) > 5, null, { timeout: 15_000, describe: describePage(alice.page) });
  await waitFor(bob.page, () => (window.onstage.remotes.AAAAAAAAAAAA?.framesDecoded ?? 0) > 5, null, { timeout: 15_000, describe: describePage(bob.page) });
  assert.equal(await alice.page.textContent('.tile.remote[data-participant-id="BBBBBBBBBBBB"] .user-id'), 'bob');
  assert.deepEqual(await alice.page.locator('#participants li .user-id').allTextContents(), ['alice', 'bob']);
  assert.equal(await alice.page.evaluate(() => window.onstage.published), true);
  assert.equal(await alice.page.isVisible('#local-video'), true);

  await bob.page.click('#leave');
  await waitFor(alice.page, () => !document.querySelector('.tile.remote') && window.onstage.participants.length === 1, null, { timeout: 5_000, describe: describePage(alice.page) });
  assert.deepEqual(await alice.page.locator('#participants li .user-id').allTextContents(), ['alice']);
  for (const { problems } of [alice, bob]) {
    assert.deepEqual(problems.pageErrors, []);
    assert.deepEqual(problems.consoleErrors, []);
  }
  await alice.page.close();
  await bob.page.close();
});

test("a refused publish shows the server's reason", async () => {
  refusePublish = { status: 403, body: 'the token does not allow publishing\n' };
  try {
    const carol = await join('CCCCCCCCCCCC', 'carol');
    await waitFor(carol.page, () => window.onstage.errors.length > 0, null, { timeout: 10_000, describe: describePage(carol.page) });
    assert.equal(await carol.page.textContent('#error'), 'Could not publish: 403: the token does not allow publishing');
    assert.equal(await carol.page.isVisible('#error'), true);
    assert.equal(await carol.page.evaluate(() => window.onstage.published), false);
    assert.deepEqual(carol.problems.pageErrors, []);
    await carol.page.close();
  } finally {
    refusePublish = null;
  }
});

test('a participant removed by the server is told why and stops', async () => {
  const dave = await join('DDDDDDDDDDDD', 'dave', { allow_subscribe: true });
  await waitFor(dave.page, () => window.onstage.eventsConnected, null, { timeout: 5_000, describe: describePage(dave.page) });
  await dave.socket.close({ code: 4003, reason: 'removed by the host' });
  await waitFor(dave.page, () => window.onstage.status === 'left', null, { timeout: 5_000, describe: describePage(dave.page) });
  assert.equal(await dave.page.textContent('#error'), 'You were removed from the stage: removed by the host');
  assert.equal(await dave.page.isVisible('#leave'), false);
  assert.deepEqual(dave.problems.pageErrors, []);
  await dave.page.close();
});
