// The web demo in headless Chromium against `turnpike peer` (the Rust WebRTC peer), both on
// the real `turnpike serve` on loopback: they follow the same interop rules (docs/peer.md),
// so each can be the other's other side. Messages both ways on the direct path, the same
// relay-only on both sides (relay/relay through the server's TURN over UDP), and a file from
// the Rust peer answered `file-ok` by the page.
//
// Run: cd tests/browser && npm ci && npm test   (needs target/debug/turnpike and chromium)

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { launchBrowser, openDemo, snapshot, startPeer, startServer, waitForState } from './harness.mjs';

let browser;
let room = 0;
const nextRoom = () => `peer-interop-${process.pid}-${++room}`;
// The Rust peer's own limit (--timeout) and the test's hard limit on its process.
const PEER_TIMEOUT_S = 30;
const PEER_KILL_MS = (PEER_TIMEOUT_S + 15) * 1000;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
});

/**
 * Runs `body(server, track, peer)` against a fresh server. `peer(args)` starts
 * `turnpike peer` on it; every peer started is killed if still running at the end, and on
 * failure the error carries each peer's command and stderr and the server's log.
 */
async function withServer(body) {
  const server = await startServer();
  const contexts = [];
  const peers = [];
  const track = (page) => { contexts.push(page.context()); return page; };
  const peer = (args) => {
    const p = startPeer(server, ['--timeout', String(PEER_TIMEOUT_S), ...args], { limitMs: PEER_KILL_MS });
    peers.push(p);
    return p;
  };
  try {
    await body(server, track, peer);
  } catch (e) {
    for (const p of peers) {
      e.message += `\n--- ${p.args.slice(1).join(' ')} (stderr) ---\n${p.stderr()}`;
    }
    e.message += `\n--- turnpike serve log ---\n${server.logs()}`;
    throw e;
  } finally {
    for (const p of peers) p.kill();
    for (const c of contexts) await c.close().catch(() => {});
    const exit = await server.stop();
    assert.equal(exit.code, 0, `turnpike exit ${JSON.stringify(exit)}`);
  }
}

/** Asserts that the peer exited 0 with a JSON report saying it connected; returns the report. */
async function peerSucceeded(p) {
  const r = await p.done;
  const why = `turnpike peer exit ${r.code}${r.signal ? ` (signal ${r.signal})` : ''}; stdout: ${r.stdout}\nstderr:\n${r.stderr}`;
  assert.equal(r.code, 0, why);
  assert.ok(r.json, why);
  assert.equal(r.json.connected, true, why);
  assert.equal(r.json.error, null, why);
  return r;
}

/**
 * Starts a script in the page that sends `text` as a chat message the moment the data
 * channel is open and the selected pair is known. The Rust peer finishes (and hangs up) as
 * soon as its message is echoed and it has answered one of ours, so ours must go first,
 * ahead of the page's round-trip probes (200 ms after opening).
 */
function sendOnOpen(page, text, timeoutMs = 40000) {
  return page.evaluate(([t, ms]) => new Promise((resolve, reject) => {
    const deadline = Date.now() + ms;
    const tick = () => {
      const s = window.turnpikeDemo.snapshot();
      if (s.connected && s.selectedPair) {
        window.turnpikeDemo.send(t);
        resolve(s);
      } else if (Date.now() > deadline) {
        reject(new Error(`the page did not connect within ${ms} ms`));
      } else {
        setTimeout(tick, 2);
      }
    };
    tick();
  }), [text, timeoutMs]);
}


const received = (s, text) => s.messages.some((m) => m.dir === 'in' && m.text === text);

describe('web demo ↔ turnpike peer', { timeout: 240000 }, () => {
  test('direct path: the page joins first, the Rust peer offers, messages are echoed both ways', { timeout: 60000 }, async () => {
    await withServer(async (server, track, peer) => {
      const name = nextRoom();
      const page = track(await openDemo(browser, server, `room=${name}`));
      const joined = await waitForState(page, (s) => !!s.peerId, 'the page to join');
      const chat = `hello from chromium ${Date.now()} ✓`;
      const opened = sendOnOpen(page, chat);
      const rust = peer(['--room', name, '--json', '--message', 'hello from rust']);
      const atOpen = await opened;
      const r = await peerSucceeded(rust);

      // The Rust peer joined second, so it made the offer; the page answered.
      assert.match(r.stderr, /peer found: \S+ \(we make the offer\)/);
      assert.equal(atOpen.role, 'answerer');
      assert.equal(atOpen.remote, r.json.peer_id);
      assert.equal(r.json.remote_peer_id, joined.peerId);
      assert.equal(r.json.room, name);
      // A direct path on loopback: host candidates on the Rust side, and the page's address
      // (a host candidate, or peer-reflexive when its checks beat its trickled candidate).
      assert.equal(r.json.local_candidate_type, 'host', r.stdout);
      assert.ok(['host', 'prflx'].includes(r.json.remote_candidate_type), r.stdout);
      assert.equal(r.json.local_protocol, 'udp', r.stdout);
      assert.equal(atOpen.selectedPair.local.type, 'host', JSON.stringify(atOpen.selectedPair));
      assert.ok(['host', 'prflx'].includes(atOpen.selectedPair.remote.type), JSON.stringify(atOpen.selectedPair));
      assert.equal(typeof r.json.setup_ms, 'number');
      assert.equal(typeof r.json.rtt_ms, 'number');
      // The Rust peer's exit status already says its message came back as
      // "echo: hello from rust"; the page saw the message and the echo of its own chat.
      assert.match(r.stderr, /received "hello from chromium \d+ ✓" \(echoed\)/);
      const s = await waitForState(page, (x) => received(x, `echo: ${chat}`), 'the echo of the page\'s chat from the Rust peer', 10000);
      assert.ok(received(s, 'hello from rust'), JSON.stringify(s.messages));
      assert.ok(!received(s, 'echo: echo: hello from rust'), 'an echo is never echoed');
      // The Rust peer said bye: the page drops the connection and stays in the room.
      await waitForState(page, (x) => !x.connected && x.remote === null, 'the page to hang up after the Rust peer\'s bye', 10000);
      assert.deepEqual(page.problems, []);
    });
  });

  test('relay only on both sides: the Rust peer joins first, the page offers, relay/relay through TURN UDP', { timeout: 60000 }, async () => {
    await withServer(async (server, track, peer) => {
      const name = nextRoom();
      const rust = peer(['--room', name, '--json', '--relay-only', '--message', 'hello from rust']);
      await rust.waitForLine(/waiting for the other peer/, 'waiting for the page');
      const page = track(await openDemo(browser, server, `room=${name}&policy=relay&turn=udp`));
      const chat = `over the relay ${Date.now()}`;
      const atOpen = await sendOnOpen(page, chat);
      const r = await peerSucceeded(rust);

      assert.match(r.stderr, /peer found: \S+ \(it makes the offer\)/);
      assert.equal(atOpen.role, 'offerer');
      assert.equal(r.json.remote_peer_id, atOpen.peerId);
      assert.deepEqual([r.json.local_candidate_type, r.json.remote_candidate_type], ['relay', 'relay'], r.stdout);
      assert.equal(r.json.local_protocol, 'udp', r.stdout);
      const p = atOpen.selectedPair;
      assert.deepEqual([p.local.type, p.remote.type], ['relay', 'relay'], JSON.stringify(p));
      assert.equal(p.local.relayProtocol, 'udp', JSON.stringify(p));
      assert.ok(atOpen.iceServers.flatMap((x) => x.urls).every((u) => u.startsWith('turn:')), JSON.stringify(atOpen.iceServers));
      assert.ok(atOpen.candidates.filter((c) => c.side === 'local').every((c) => c.type === 'relay'), JSON.stringify(atOpen.candidates));
      // The Rust side gathered relay candidates only.
      assert.doesNotMatch(r.stderr, /gathered a (host|srflx) candidate/);
      assert.match(r.stderr, /gathered a relay candidate/);

      assert.match(r.stderr, /received "over the relay \d+" \(echoed\)/);
      const s = await waitForState(page, (x) => received(x, `echo: ${chat}`), 'the echo of the page\'s chat over the relay', 10000);
      assert.ok(received(s, 'hello from rust'), JSON.stringify(s.messages));
      assert.deepEqual(page.problems, []);
    });
  });

  test('a 100 KiB file from the Rust peer is checked by the page and answered file-ok', { timeout: 60000 }, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'turnpike-peer-file-'));
    try {
      const data = randomBytes(100 * 1024);
      const sha = createHash('sha256').update(data).digest('hex');
      const file = path.join(dir, 'from:rust.bin');
      fs.writeFileSync(file, data);
      await withServer(async (server, track, peer) => {
        const name = nextRoom();
        const page = track(await openDemo(browser, server, `room=${name}`));
        await waitForState(page, (s) => !!s.peerId, 'the page to join');
        const rust = peer(['--room', name, '--json', '--send-file', file]);
        const r = await peerSucceeded(rust);
        // Exit 0 with a file means a matching file-ok came back.
        assert.equal(typeof r.json.transfer_ms, 'number', r.stdout);
        assert.equal(r.json.rtt_ms, null, r.stdout);
        assert.ok(r.json.bytes_sent >= data.length, r.stdout);
        const s = await waitForState(page, (x) => x.files.some((f) => f.dir === 'in' && f.result !== 'receiving'), 'the page to finish the file', 10000);
        const got = s.files.find((f) => f.dir === 'in');
        assert.equal(got.result, 'ok', JSON.stringify(got));
        // NAME may contain ':'; the page splits SIZE and the hash off the end.
        assert.equal(got.name, 'from:rust.bin');
        assert.equal(got.size, data.length);
        assert.equal(got.sha256, sha);
        assert.equal(got.actualSha256, sha);
        assert.match(await page.locator('#messages').innerText(), /SHA-256 matches/);
        assert.deepEqual(page.problems, []);
      });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
