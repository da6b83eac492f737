// Shared by the browser tests: Debian's Chromium, driven by playwright-core.
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/** Headless Chromium with a fake camera and microphone; playwright gives it a fresh profile. */
export function launchChromium() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--use-fake-device-for-media-stream',
      '--use-fake-ui-for-media-stream',
      '--allow-loopback-in-peer-connection',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-gpu',
      '--disable-quic',
    ],
  });
}

/** Records what a page complains about, for assertions and for failure messages. */
export function watch(page, name) {
  const problems = { pageErrors: [], consoleErrors: [], cspViolations: [], httpErrors: [] };
  page.on('pageerror', (e) => problems.pageErrors.push(`${name}: ${e.message}`));
  page.on('response', (r) => {
    if (r.status() >= 400) problems.httpErrors.push(`${name}: ${r.request().method()} ${new URL(r.url()).pathname} → ${r.status()}`);
  });
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const text = `${name}: ${m.text()}`;
    problems.consoleErrors.push(text);
    if (/Content Security Policy/i.test(text)) problems.cspViolations.push(text);
  });
  return problems;
}

/** Resolves when `fn(arg)` in the page is truthy; fails with `describe()`'s output after `timeout` ms. */
export async function waitFor(page, fn, arg, { timeout, describe }) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 200 });
  } catch (e) {
    throw new Error(`${e.message.split('\n')[0]}\n${await describe()}`);
  }
}
