// Participant replication seen from a browser: alice publishes the fake camera from
// the join page in stage A; StartParticipantReplication (AWS CLI) makes her a publisher
// of stage B; bob, on the join page of stage B with a subscribe-only token, sees a
// tile for her — same participantId, userId "alice" — decoding her video and audio.
// StopParticipantReplication takes the tile away while alice keeps publishing in A.
//
// Run from anywhere: `node --test tests/browser/` (after `npm ci` in tests/browser).
// Needs what join.test.mjs needs: the onstage binary (ONSTAGE_BIN), the venv's AWS CLI
// (ONSTAGE_AWS) and Chromium (CHROMIUM). Starts and stops its own server.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';

import { launchChromium, watch, waitFor, startOnstage, ROOT } from './chromium.mjs';

const SCREENSHOT = path.join(ROOT, 'target', 'replication-screenshot.png');

let onstage;
let browser;
let context;
const stages = {}; // 'A' | 'B' -> stage ARN
const pages = {}; // 'alice' | 'bob' -> { page, problems, participantId, token }

// Start/StopParticipantReplication answer `{}` with seven headers that the service
// model declares as output members, so the AWS CLI prints exactly these.
const REPLICATION_OUTPUT = [
  'accessControlAllowOrigin', 'accessControlExposeHeaders', 'cacheControl', 'contentSecurityPolicy',
  'strictTransportSecurity', 'xContentTypeOptions', 'xFrameOptions',
];

/** What the pages show and what the server logged, for failure messages. */
async function describe() {
  const out = [];
  for (const [name, { page, problems }] of Object.entries(pages)) {
    if (!page) continue;
    const state = await page.evaluate(() => window.onstage).catch((e) => `unreadable: ${e.message}`);
    const [status, error] = await page
      .evaluate(() => ['status', 'error'].map((id) => document.getElementById(id)?.textContent))
      .catch(() => ['?', '?']);
    out.push(`${name}: status=${JSON.stringify(status)} error=${JSON.stringify(error)}`);
    out.push(`${name}: window.onstage=${JSON.stringify(state)}`);
    out.push(...problems.pageErrors, ...problems.consoleErrors, ...problems.httpErrors);
  }
  out.push(`--- server log (tail) ---\n${onstage.log().split('\n').slice(-40).join('\n')}`);
  return out.join('\n');
}

async function open(name) {
  const me = pages[name];
  me.page = await context.newPage();
  me.problems = watch(me.page, name);
  const response = await me.page.goto(`${onstage.base}/join?token=${encodeURIComponent(me.token)}`);
  assert.equal(response.status(), 200, `GET /join answered ${response.status()}: ${await response.text()}`);
}

before(async () => {
  onstage = await startOnstage({ prefix: 'onstage-replication-' });
  const { aws } = onstage;
  const a = await aws('ivs-realtime', 'create-stage', '--name', 'replication-a', '--participant-token-configurations', 'userId=alice');
  const b = await aws('ivs-realtime', 'create-stage', '--name', 'replication-b', '--participant-token-configurations', 'userId=bob,capabilities=SUBSCRIBE');
  stages.A = a.stage.arn;
  stages.B = b.stage.arn;
  for (const t of [...a.participantTokens, ...b.participantTokens]) {
    pages[t.userId] = { participantId: t.participantId, token: t.token };
  }
  browser = await launchChromium();
  // One context for both pages: one fake camera, one browser process.
  context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
});

after(async () => {
  await browser?.close().catch(() => {});
  await onstage?.stop();
});

test('alice publishes in stage A from the join page', { timeout: 20_000 }, async () => {
  await open('alice');
  const { page, participantId } = pages.alice;
  // Published as far as the page knows (WHIP connection up) and as far as the server
  // says (her own entry in stage A's STAGE_STATE): replication needs the latter.
  await waitFor(
    page,
    (id) => window.onstage?.published && window.onstage.participants.some((p) => p.id === id && p.isPublishing),
    participantId,
    { timeout: 15_000, describe },
  );
});

test("the join page in stage B shows alice's replica live", { timeout: 30_000 }, async (t) => {
  const { aws } = onstage;
  const alice = pages.alice;
  const started = Date.now();
  const response = await aws(
    'ivs-realtime', 'start-participant-replication',
    '--source-stage-arn', stages.A, '--destination-stage-arn', stages.B, '--participant-id', alice.participantId,
  );
  assert.deepEqual(Object.keys(response).sort(), REPLICATION_OUTPUT, JSON.stringify(response));
  t.diagnostic(`start-participant-replication (AWS CLI) took ${Date.now() - started} ms`);

  const opened = Date.now();
  await open('bob');
  const bob = pages.bob;
  await waitFor(bob.page, (id) => (window.onstage?.remotes[id]?.framesDecoded ?? 0) > 0, alice.participantId, { timeout: 20_000, describe });
  t.diagnostic(`bob decoding alice's replica ${Date.now() - opened} ms after his page opened`);

  // Frames and audio keep arriving.
  const remote = () => bob.page.evaluate((id) => window.onstage.remotes[id], alice.participantId);
  const first = await remote();
  await new Promise((r) => setTimeout(r, 1_500));
  const second = await remote();
  assert.ok(second.framesDecoded > first.framesDecoded, `framesDecoded not rising: ${JSON.stringify([first, second])}\n${await describe()}`);
  assert.ok(second.audioPacketsReceived > first.audioPacketsReceived, `no audio: ${JSON.stringify([first, second])}\n${await describe()}`);
  assert.equal(second.userId, 'alice');

  // Bob's page: exactly one remote, alice's participantId, labelled with her userId,
  // and the participant list of stage B holds bob and the replica.
  const state = await bob.page.evaluate(() => window.onstage);
  assert.equal(state.canPublish, false);
  assert.equal(state.published, false);
  assert.deepEqual(Object.keys(state.remotes), [alice.participantId], 'bob subscribes to exactly the replica');
  const replica = state.participants.find((p) => p.id === alice.participantId);
  assert.ok(replica?.isPublishing, `the replica is publishing in stage B's STAGE_STATE: ${JSON.stringify(state.participants)}`);
  assert.equal(replica.userId, 'alice');
  const label = bob.page.locator(`.tile.remote[data-participant-id="${alice.participantId}"] .user-id`);
  assert.equal(await label.textContent(), 'alice');
  await waitFor(bob.page, () => document.querySelectorAll('#participants li').length === 2, null, { timeout: 5_000, describe });
  assert.deepEqual((await bob.page.locator('#participants li .user-id').allTextContents()).sort(), ['alice', 'bob']);

  await mkdir(path.dirname(SCREENSHOT), { recursive: true });
  await bob.page.screenshot({ path: SCREENSHOT });
});

test("stopping the replication takes alice's tile off bob's page; she keeps publishing in A", { timeout: 20_000 }, async (t) => {
  const { aws } = onstage;
  const { alice, bob } = pages;
  const response = await aws(
    'ivs-realtime', 'stop-participant-replication',
    '--source-stage-arn', stages.A, '--destination-stage-arn', stages.B, '--participant-id', alice.participantId,
  );
  assert.deepEqual(Object.keys(response).sort(), REPLICATION_OUTPUT, JSON.stringify(response));
  const stopped = Date.now();
  await waitFor(
    bob.page,
    (id) => !window.onstage.remotes[id] && !document.querySelector(`.tile.remote[data-participant-id="${id}"]`) && !document.querySelector(`#participants li[data-participant-id="${id}"]`),
    alice.participantId,
    { timeout: 5_000, describe },
  );
  t.diagnostic(`alice's tile left bob's page ${Date.now() - stopped} ms after stop-participant-replication answered`);
  assert.deepEqual(await bob.page.locator('#participants li .user-id').allTextContents(), ['bob']);

  const { replicas } = await aws('ivs-realtime', 'list-participant-replicas', '--source-stage-arn', stages.A, '--participant-id', alice.participantId);
  assert.equal(replicas.length, 1, JSON.stringify(replicas));
  assert.equal(replicas[0].destinationStageArn, stages.B);
  assert.equal(replicas[0].replicationState, 'STOPPED');

  const state = await alice.page.evaluate(() => window.onstage);
  assert.equal(state.published, true, 'alice still publishes in stage A');
  assert.ok(state.participants.some((p) => p.id === alice.participantId && p.isPublishing), JSON.stringify(state.participants));
});

test('no page had uncaught errors or blocked connections', (t) => {
  for (const [name, { problems }] of Object.entries(pages)) {
    if (!problems) continue;
    assert.deepEqual(problems.pageErrors, [], `${name}: uncaught errors`);
    assert.deepEqual(problems.cspViolations, [], `${name}: Content-Security-Policy violations`);
    for (const line of [...problems.consoleErrors, ...problems.httpErrors]) t.diagnostic(line);
  }
});
