// Helpers for browser tests of the Turnpike web demo: start the real `turnpike serve` on free
// loopback ports, make a throwaway TLS certificate, launch Debian's Chromium headless through
// playwright-core, open demo pages and wait on their test hook (window.turnpikeDemo).
//
// Everything has a deadline; servers and browsers are stopped by the tests that start them.

import { spawn, execFileSync } from 'node:child_process';
import { createHash, createPublicKey } from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '..', '..');

/** The turnpike binary: $TURNPIKE_BIN, else target/debug/turnpike of $CARGO_TARGET_DIR or the repo. */
export function turnpikeBin() {
  if (process.env.TURNPIKE_BIN) return process.env.TURNPIKE_BIN;
  const target = path.resolve(REPO, process.env.CARGO_TARGET_DIR || 'target');
  return path.join(target, 'debug', 'turnpike');
}

/** The Chromium executable: $CHROMIUM, else Debian's /usr/bin/chromium. */
export function chromiumPath() {
  return process.env.CHROMIUM || '/usr/bin/chromium';
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function tcpFree(host, port) {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen({ host, port, exclusive: true }, () => s.close(() => resolve(true)));
  });
}

async function udpFree(host, port) {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    s.once('error', () => resolve(false));
    s.bind({ address: host, port, exclusive: true }, () => s.close(() => resolve(true)));
  });
}

/** A port free for both TCP and UDP on `host`, from below the usual ephemeral range. */
export async function freePort(host = '127.0.0.1') {
  for (let i = 0; i < 200; i++) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    if ((await tcpFree(host, port)) && (await udpFree(host, port))) return port;
  }
  throw new Error(`no free port on ${host}`);
}

/** A self-signed certificate for 127.0.0.1 and localhost, and its SPKI SHA-256 (base64). */
export function makeCert() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'turnpike-cert-'));
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
    '-keyout', key, '-out', cert,
  ], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 20000 });
  const spki = createPublicKey(fs.readFileSync(cert)).export({ type: 'spki', format: 'der' });
  return {
    dir,
    cert,
    key,
    spki: createHash('sha256').update(spki).digest('base64'),
    remove: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

/**
 * Starts `turnpike serve --listen 127.0.0.1:P --http 127.0.0.1:H --metrics off` (plus TLS on
 * 127.0.0.1:T with `tls: {cert, key}`, plus `args`) and waits until /readyz answers 200.
 */
export async function startServer({ tls, args = [] } = {}) {
  const bin = turnpikeBin();
  if (!fs.existsSync(bin)) throw new Error(`${bin} not found: build it first (cargo build -p turnpike)`);
  const listen = await freePort();
  const http = await freePort();
  const all = ['serve', '--listen', `127.0.0.1:${listen}`, '--http', `127.0.0.1:${http}`,
    '--metrics', 'off', '--udp-workers', '1'];
  let tlsPort = null;
  if (tls) {
    tlsPort = await freePort();
    all.push('--cert', tls.cert, '--key', tls.key, '--tls-listen', `127.0.0.1:${tlsPort}`);
  }
  all.push(...args);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TURNPIKE_')));
  env.RUST_LOG = env.RUST_LOG || 'warn';
  const child = spawn(bin, all, { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr = (stderr + d).slice(-20000); });
  let exited = null;
  child.on('exit', (code, signal) => { exited = { code, signal }; });
  const base = `http://127.0.0.1:${http}`;
  const deadline = Date.now() + 15000;
  for (;;) {
    if (exited) throw new Error(`turnpike exited during start-up (${JSON.stringify(exited)}):\n${stderr}`);
    try {
      const r = await fetch(`${base}/readyz`, { signal: AbortSignal.timeout(1000) });
      if (r.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`turnpike did not become ready:\n${stderr}`);
    }
    await sleep(50);
  }
  return {
    base,
    listen,
    http,
    tlsPort,
    logs: () => stderr,
    async stop() {
      if (exited) return exited;
      const done = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
      child.kill('SIGTERM');
      const result = await Promise.race([done, sleep(10000).then(() => null)]);
      if (!result) {
        child.kill('SIGKILL');
        throw new Error('turnpike did not stop within 10 s of SIGTERM');
      }
      return result;
    },
  };
}

/** Launches headless Chromium with WebRTC allowed without prompts, on loopback too. */
export async function launchBrowser({ args = [] } = {}) {
  const exe = chromiumPath();
  if (!fs.existsSync(exe)) throw new Error(`${exe} not found: install Debian's chromium package`);
  const flags = [
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--disable-dev-shm-usage',
    // WebRTC with no permission prompts, raw host addresses instead of mDNS names, and
    // candidates on the loopback interface (the whole test runs on 127.0.0.1).
    '--use-fake-ui-for-media-stream',
    '--use-fake-device-for-media-stream',
    '--allow-loopback-in-peer-connection',
    '--disable-features=WebRtcHideLocalIpsWithMdns',
    ...args,
  ];
  if (process.getuid && process.getuid() === 0) flags.push('--no-sandbox');
  return chromium.launch({ executablePath: exe, headless: true, args: flags, timeout: 30000 });
}

/**
 * Opens the demo at `server.base + '/?' + query` in a fresh browser context. Page errors and
 * console errors are collected in `page.problems`. `initScript` (a function, or
 * `[function, argument]`) runs in the page before its own scripts.
 */
export async function openDemo(browser, server, query, { ignoreHTTPSErrors = false, initScript } = {}) {
  const context = await browser.newContext({ ignoreHTTPSErrors });
  if (initScript) {
    const [fn, arg] = Array.isArray(initScript) ? initScript : [initScript];
    await context.addInitScript(fn, arg);
  }
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  page.problems = [];
  page.on('pageerror', (e) => page.problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') page.problems.push(`console: ${m.text()}`); });
  await page.goto(`${server.base}/?${query}`, { waitUntil: 'load' });
  await page.waitForFunction(() => typeof window.turnpikeDemo === 'object');
  return page;
}

/** The page's state (turnpikeDemo.snapshot()). */
export function snapshot(page) {
  return page.evaluate(() => window.turnpikeDemo.snapshot());
}

/**
 * Waits until `predicate(snapshot)` is true (checked in node every 100 ms) and returns that
 * snapshot; on timeout fails with `what` and the last snapshot's key fields.
 */
export async function waitForState(page, predicate, what, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  let last = null;
  for (;;) {
    last = await snapshot(page);
    if (predicate(last)) return last;
    if (Date.now() > deadline) {
      const brief = {
        ws: last.ws, peerId: last.peerId, peers: last.peers, remote: last.remote,
        connected: last.connected, iceConnectionState: last.iceConnectionState,
        connectionState: last.connectionState, selectedPair: last.selectedPair,
        candidates: last.candidates, candidateErrors: last.candidateErrors,
        events: last.events.slice(-15), problems: page.problems,
      };
      throw new Error(`timed out waiting for ${what}: ${JSON.stringify(brief, null, 1)}`);
    }
    await sleep(100);
  }
}

/** Opens two demo pages in one room (the second joins after the first) and waits until both connect. */
export async function connectPair(browser, server, query, opts) {
  const a = await openDemo(browser, server, query, opts);
  await waitForState(a, (s) => !!s.peerId, 'the first page to join');
  const b = await openDemo(browser, server, query, opts);
  const sa = await waitForState(a, (s) => s.connected && s.selectedPair, 'the first page to connect', 30000);
  const sb = await waitForState(b, (s) => s.connected && s.selectedPair, 'the second page to connect', 30000);
  return { a, b, sa, sb };
}

/**
 * Runs `turnpike peer --signal ws://127.0.0.1:H/v1/ws ARGS…` against `server` as a child
 * process (stdout and stderr collected). It is killed with SIGKILL after `limitMs`.
 * Returns `{ args, stderr(), waitForLine(re, what, ms), done, kill() }`, where `done`
 * resolves to `{ code, signal, stdout, stderr, json }` (`json`: stdout parsed, or null).
 */
export function startPeer(server, args, { limitMs = 60000 } = {}) {
  const bin = turnpikeBin();
  if (!fs.existsSync(bin)) throw new Error(`${bin} not found: build it first (cargo build -p turnpike)`);
  const all = ['peer', '--signal', `ws://127.0.0.1:${server.http}/v1/ws`, ...args];
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TURNPIKE_')));
  const child = spawn(bin, all, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const waiters = new Set();
  let exited = false;
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-200000);
    for (const w of waiters) w();
  });
  const killer = setTimeout(() => child.kill('SIGKILL'), limitMs);
  const done = new Promise((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(killer);
      exited = true;
      for (const w of waiters) w();
      let json = null;
      try {
        json = JSON.parse(stdout);
      } catch {
        // not JSON (no --json, or the run was killed)
      }
      resolve({ code, signal, stdout, stderr, json });
    });
  });
  return {
    args: all,
    stderr: () => stderr,
    done,
    /** Waits until a stderr line matches `re`; fails on exit or after `ms`. */
    waitForLine(re, what, ms = 20000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => { waiters.delete(check); reject(new Error(`timed out waiting for turnpike peer to report ${what}:\n${stderr}`)); }, ms);
        function check() {
          const m = stderr.split('\n').find((l) => re.test(l));
          if (m !== undefined || exited) {
            clearTimeout(timer);
            waiters.delete(check);
            if (m !== undefined) resolve(m);
            else reject(new Error(`turnpike peer exited before reporting ${what}:\n${stderr}`));
          }
        }
        waiters.add(check);
        check();
      });
    },
    kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}
