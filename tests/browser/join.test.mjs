// Headless Chromium pages join one stage through onstage's join page: alice and
// bob each publish the fake camera over WHIP, learn of the other from the events
// socket, subscribe and decode the other's video and audio; a viewer whose token
// only allows subscribing (no camera) sees both.
//
// Run from anywhere: `node --test tests/browser/` (after `npm ci` in tests/browser).
// Needs: the onstage binary (ONSTAGE_BIN, default target/debug/onstage), the AWS
// CLI of the repository's venv (ONSTAGE_AWS, default .venv/bin/aws) and Chromium
// (CHROMIUM, default /usr/bin/chromium). Builds nothing; starts and stops its own server.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';

import { launchChromium, watch, waitFor, startOnstage, ROOT } from './chromium.mjs';

const SCREENSHOT = path.join(ROOT, 'target', 'join-screenshot.png');

let onstage;
let browser;
let pagesOpenedAt;
const pages = {}; // userId -> { page, problems, participantId }

/** What a page shows, for failure messages. */
async function describe() {
  const out = [];
  for (const [name, { page, problems }] of Object.entries(pages)) {
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

before(async () => {
  onstage = await startOnstage();
  const { base, aws } = onstage;

  const { participantTokens } = await aws(
    'ivs-realtime', 'create-stage', '--name', 'browser-test',
    '--participant-token-configurations', 'userId=alice', 'userId=bob', 'userId=viewer,capabilities=SUBSCRIBE',
  );
  assert.equal(participantTokens.length, 3);

  browser = await launchChromium();
  // Both pages share one browser context: one camera, one process, less CPU.
  const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  pagesOpenedAt = Date.now();
  for (const t of participantTokens) {
    const page = await context.newPage();
    pages[t.userId] = { page, problems: watch(page, t.userId), participantId: t.participantId };
    const response = await page.goto(`${base}/join?token=${encodeURIComponent(t.token)}`);
    assert.equal(response.status(), 200, `GET /join answered ${response.status()}: ${await response.text()}`);
  }
});

after(async () => {
  await browser?.close().catch(() => {});
  await onstage?.stop();
});

test('each page publishes, sees the other live and lists every participant', { timeout: 45_000 }, async (t) => {
  const { alice, bob } = pages;
  const decoding = (me, other) =>
    waitFor(me.page, (id) => (window.onstage?.remotes[id]?.framesDecoded ?? 0) > 0, other.participantId, { timeout: 25_000, describe });
  for (const [me, other] of [[alice, bob], [bob, alice]]) await decoding(me, other);
  t.diagnostic(`alice and bob decoding each other ${Date.now() - pagesOpenedAt} ms after the first page opened`);

  // Still decoding a moment later: frames keep arriving, and so does audio.
  const remote = (me, other) => me.page.evaluate((id) => window.onstage.remotes[id], other.participantId);
  const first = [await remote(alice, bob), await remote(bob, alice)];
  await new Promise((r) => setTimeout(r, 1_500));
  const second = [await remote(alice, bob), await remote(bob, alice)];
  for (const i of [0, 1]) {
    assert.ok(second[i].framesDecoded > first[i].framesDecoded, `framesDecoded not rising: ${JSON.stringify([first, second])}\n${await describe()}`);
    assert.ok(second[i].audioPacketsReceived > first[i].audioPacketsReceived, `no audio: ${JSON.stringify([first, second])}`);
  }

  for (const [name, me, other] of [['alice', alice, bob], ['bob', bob, alice]]) {
    const state = await me.page.evaluate(() => window.onstage);
    assert.equal(state.published, true, `${name} is not publishing`);
    assert.equal(state.participantId, me.participantId);
    assert.deepEqual(Object.keys(state.remotes), [other.participantId], `${name} subscribes to exactly the other publisher`);
    const label = me.page.locator(`.tile.remote[data-participant-id="${other.participantId}"] .user-id`);
    assert.equal(await label.textContent(), other === alice ? 'alice' : 'bob');
  }
  for (const [name, me] of Object.entries(pages)) {
    await waitFor(me.page, () => document.querySelectorAll('#participants li').length === 3, null, { timeout: 10_000, describe });
    const listed = await me.page.locator('#participants li .user-id').allTextContents();
    assert.deepEqual(listed.sort(), ['alice', 'bob', 'viewer'], `${name}'s participant list`);
  }

  await mkdir(path.dirname(SCREENSHOT), { recursive: true });
  await alice.page.screenshot({ path: SCREENSHOT });
});

test('a viewer with a subscribe-only token and no camera sees both publishers', { timeout: 20_000 }, async () => {
  const { alice, bob, viewer } = pages;
  for (const p of [alice, bob]) {
    await waitFor(viewer.page, (id) => (window.onstage?.remotes[id]?.framesDecoded ?? 0) > 0, p.participantId, { timeout: 15_000, describe });
  }
  const state = await viewer.page.evaluate(() => window.onstage);
  assert.equal(state.canPublish, false);
  assert.equal(state.published, false);
  assert.equal(await viewer.page.isVisible('#local'), false, 'no local preview without a camera');
});

test('a participant who leaves disappears from the other pages', { timeout: 15_000 }, async () => {
  const { alice, bob, viewer } = pages;
  await bob.page.click('#leave');
  for (const me of [alice, viewer]) {
    await waitFor(me.page, (id) => !window.onstage.remotes[id] && !document.querySelector(`.tile.remote[data-participant-id="${id}"]`) && !document.querySelector(`#participants li[data-participant-id="${id}"]`), bob.participantId, {
      timeout: 10_000,
      describe,
    });
    assert.deepEqual((await me.page.locator('#participants li .user-id').allTextContents()).sort(), ['alice', 'viewer']);
  }
});

test('no page had uncaught errors or blocked connections', (t) => {
  for (const [name, { problems }] of Object.entries(pages)) {
    assert.deepEqual(problems.pageErrors, [], `${name}: uncaught errors`);
    assert.deepEqual(problems.cspViolations, [], `${name}: Content-Security-Policy violations`);
    for (const line of [...problems.consoleErrors, ...problems.httpErrors]) t.diagnostic(line);
  }
});
