// Shared by the browser tests: Debian's Chromium, driven by playwright-core, and an
// onstage server of the test's own with the AWS CLI pointed at it.
import { chromium } from 'playwright-core';
import { spawn, execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import dgram from 'node:dgram';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

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

// --- an onstage server of the test's own, and the AWS CLI against it ----------------------

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const BIN = path.resolve(ROOT, process.env.ONSTAGE_BIN || 'target/debug/onstage');
export const AWS = path.resolve(ROOT, process.env.ONSTAGE_AWS || '.venv/bin/aws');

function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer().once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp4').once('error', reject);
    s.bind(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/**
 * Starts `onstage serve` on free loopback ports with a fresh data directory and waits
 * for /healthz. Returns { base, aws(...args), log(), stop() }: `aws` runs the venv's AWS
 * CLI against it with the development credentials and no user config and returns the
 * parsed JSON output ({} when the command prints nothing); `stop` ends the server and
 * removes the data directory (`dataDir` is the server's own, inside it).
 */
export async function startOnstage({ prefix = 'onstage-browser-' } = {}) {
  if (!existsSync(BIN)) throw new Error(`no onstage binary at ${BIN}: build it (cargo build -p onstage) or set ONSTAGE_BIN`);
  if (!existsSync(AWS)) throw new Error(`no AWS CLI at ${AWS}: create the venv (scripts/test does) or set ONSTAGE_AWS`);
  const dataDir = await mkdtemp(path.join(tmpdir(), prefix));
  const [port, mediaPort] = [await freeTcpPort(), await freeUdpPort()];
  const base = `http://127.0.0.1:${port}`;
  let serverLog = '';
  const server = spawn(BIN, ['serve', '--listen', `127.0.0.1:${port}`, '--media-port', String(mediaPort), '--data-dir', path.join(dataDir, 'data'), '--rtmp-port', '0'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ONSTAGE_LOG: process.env.ONSTAGE_LOG || 'info' },
  });
  const keep = (chunk) => {
    serverLog = (serverLog + chunk).slice(-200_000);
  };
  server.stdout.on('data', keep);
  server.stderr.on('data', keep);

  async function stop() {
    if (server.exitCode === null && server.signalCode === null) {
      const exited = new Promise((r) => server.once('exit', r));
      server.kill('SIGTERM');
      const timer = setTimeout(() => server.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    }
    await rm(dataDir, { recursive: true, force: true });
  }

  async function aws(...args) {
    const env = {
      PATH: process.env.PATH,
      HOME: dataDir,
      AWS_ACCESS_KEY_ID: 'onstage',
      AWS_SECRET_ACCESS_KEY: 'onstage-secret',
      AWS_DEFAULT_REGION: 'us-east-1',
      AWS_CONFIG_FILE: path.join(dataDir, 'no-aws-config'),
      AWS_SHARED_CREDENTIALS_FILE: path.join(dataDir, 'no-aws-credentials'),
      AWS_EC2_METADATA_DISABLED: 'true',
    };
    try {
      const { stdout } = await promisify(execFile)(AWS, [...args, '--endpoint-url', base, '--output', 'json'], { env });
      return stdout.trim() ? JSON.parse(stdout) : {};
    } catch (e) {
      throw new Error(`aws ${args.slice(0, 2).join(' ')} failed: ${e.stderr || e.message}`);
    }
  }

  const url = `${base}/healthz`;
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (server.exitCode !== null) {
      await stop();
      throw new Error(`onstage exited with ${server.exitCode}:\n${serverLog}`);
    }
    try {
      if ((await fetch(url)).ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`onstage did not answer ${url} within 15 s:\n${serverLog}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { base, aws, log: () => serverLog, stop, dataDir: path.join(dataDir, 'data') };
}
