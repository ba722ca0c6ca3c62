// The web demo in headless Chromium against the real `turnpike serve` on loopback:
// the page and its headers, two pages connecting with chat and a file, and relay-only
// connections through TURN over UDP, TCP and TLS.
//
// Run: cd tests/browser && npm ci && npm test   (needs target/debug/turnpike and chromium)

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import {
  connectPair, launchBrowser, makeCert, openDemo, snapshot, startServer, waitForState,
} from './harness.mjs';

let browser;
let room = 0;
const nextRoom = () => `browser-test-${process.pid}-${++room}`;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
});

/** Runs `body(server)` against a fresh server, always stopping it (and the pages' contexts). */
async function withServer(opts, body) {
  const server = await startServer(opts);
  const contexts = [];
  const track = (page) => { contexts.push(page.context()); return page; };
  try {
    await body(server, track);
  } catch (e) {
    e.message += `\n--- turnpike log ---\n${server.logs()}`;
    throw e;
  } finally {
    for (const c of contexts) await c.close().catch(() => {});
    const exit = await server.stop();
    assert.equal(exit.code, 0, `turnpike exit ${JSON.stringify(exit)}`);
  }
}

describe('web demo', { timeout: 240000 }, () => {
  test('serves the page, script and style with their types, no-cache and a strict CSP', { timeout: 30000 }, async () => {
    await withServer({}, async (server) => {
      for (const [file, type] of [['/', 'text/html'], ['/app.js', 'text/javascript'], ['/style.css', 'text/css']]) {
        const r = await fetch(server.base + file, { signal: AbortSignal.timeout(5000) });
        assert.equal(r.status, 200, file);
        assert.ok(r.headers.get('content-type').startsWith(type), `${file}: ${r.headers.get('content-type')}`);
        assert.equal(r.headers.get('cache-control'), 'no-cache', file);
        const csp = r.headers.get('content-security-policy');
        assert.match(csp, /default-src 'none'/, file);
        assert.match(csp, /script-src 'self'/, file);
        assert.match(csp, /connect-src 'self' ws: wss:/, file);
      }
      // The other endpoints still answer next to the demo.
      assert.equal(await (await fetch(`${server.base}/healthz`)).text(), 'ok\n');
      assert.equal((await fetch(`${server.base}/readyz`)).status, 200);
      const ice = await (await fetch(`${server.base}/v1/ice-servers`)).json();
      assert.ok(ice.iceServers.some((s) => s.urls.some((u) => u.startsWith('turn:'))), JSON.stringify(ice));
    });
  });

  test('two pages in one room see each other, connect, chat and send a 200 KiB file intact', { timeout: 90000 }, async () => {
    await withServer({}, async (server, track) => {
      const name = nextRoom();
      const { a, b, sa, sb } = await connectPair(browser, server, `room=${name}`);
      track(a);
      track(b);
      // Presence: each lists the other; the second joiner made the offer.
      assert.deepEqual(sa.peers, [sb.peerId]);
      assert.deepEqual(sb.peers, [sa.peerId]);
      assert.equal(sb.role, 'offerer');
      assert.equal(sa.role, 'answerer');
      assert.equal(sa.room, name);
      assert.ok(sa.candidates.some((c) => c.side === 'local'), 'local candidates are listed');
      await waitForState(a, (s) => s.dataChannelRtt !== null, 'a data-channel round trip');
      // The DOM shows the room's people and the connection.
      assert.match(await a.locator('#peers').innerText(), new RegExp(sb.peerId));
      assert.equal(await a.locator('#status').getAttribute('data-state'), 'connected');

      // Chat through the form, with the keyboard.
      const text = `hello from A ${Date.now()} ✓`;
      await a.locator('#text').fill(text);
      await a.locator('#text').press('Enter');
      await waitForState(b, (s) => s.messages.some((m) => m.dir === 'in' && m.text === text), 'B to receive the chat');
      await waitForState(a, (s) => s.messages.some((m) => m.dir === 'in' && m.text === `echo: ${text}`), 'A to get the echo');
      assert.ok((await b.locator('#messages').innerText()).includes(text));
      const sb2 = await snapshot(b);
      assert.ok(!sb2.messages.some((m) => m.text === `echo: echo: ${text}`), 'an echo is never echoed');

      // A file through the file input: header, 16 KiB chunks, hash checked by the receiver.
      const data = randomBytes(200 * 1024 + 123);
      const sha = createHash('sha256').update(data).digest('hex');
      await a.locator('#file').setInputFiles({ name: 'blob.bin', mimeType: 'application/octet-stream', buffer: data });
      await a.locator('#send-file').click();
      const fa = await waitForState(a, (s) => s.files.some((f) => f.dir === 'out' && f.result !== 'sending'), 'A to get file-ok', 30000);
      const fb = await waitForState(b, (s) => s.files.some((f) => f.dir === 'in' && f.result !== 'receiving'), 'B to finish the file', 30000);
      const out = fa.files.find((f) => f.dir === 'out');
      const got = fb.files.find((f) => f.dir === 'in');
      assert.equal(out.result, 'ok', JSON.stringify(out));
      assert.equal(out.sha256, sha);
      assert.equal(got.result, 'ok', JSON.stringify(got));
      assert.equal(got.name, 'blob.bin');
      assert.equal(got.size, data.length);
      assert.equal(got.actualSha256, sha);
      assert.match(await b.locator('#messages').innerText(), /SHA-256 matches/);

      // The plain-JavaScript SHA-256 (for insecure contexts) agrees with node's.
      for (const size of [0, 1, 55, 56, 64, 1000, 70000]) {
        const bytes = randomBytes(size);
        const js = await a.evaluate((arr) => window.turnpikeDemo.sha256(new Uint8Array(arr), true), [...bytes]);
        assert.equal(js, createHash('sha256').update(bytes).digest('hex'), `size ${size}`);
      }

      // Offers that cross: the smaller peer_id yields and answers; one connection results.
      await Promise.all([
        a.evaluate((p) => window.turnpikeDemo.call(p), sb.peerId),
        b.evaluate((p) => window.turnpikeDemo.call(p), sa.peerId),
      ]);
      // Whichever offer arrives first, the pages settle on one connection in which the
      // smaller peer_id is the answerer (a page may pass through a short-lived connection on
      // the way when one offer arrives before the other page has started its own).
      const [pSmall, pLarge] = sa.peerId < sb.peerId ? [a, b] : [b, a];
      const deadline = Date.now() + 30000;
      let roles = [];
      for (;;) {
        const [s1, s2] = [await pSmall.evaluate(() => window.turnpikeDemo.snapshot()), await pLarge.evaluate(() => window.turnpikeDemo.snapshot())];
        roles = [s1.connected && s1.role, s2.connected && s2.role];
        if (roles[0] === 'answerer' && roles[1] === 'offerer') break;
        assert.ok(Date.now() < deadline, `roles after crossing offers: ${JSON.stringify(roles)}`);
        await new Promise((r) => setTimeout(r, 100));
      }

      // Leaving: the other side sees peer-left and drops the connection.
      await a.locator('#leave').click();
      await waitForState(b, (s) => s.peers.length === 0 && !s.connected && s.remote === null, 'B to see A leave');
      assert.deepEqual(a.problems, []);
      assert.deepEqual(b.problems, []);
    });
  });

  test('relay only: relay/relay over TURN UDP, then TURN TCP', { timeout: 90000 }, async () => {
    await withServer({}, async (server, track) => {
      for (const transport of ['udp', 'tcp']) {
        const { a, b, sa, sb } = await connectPair(browser, server, `room=${nextRoom()}&policy=relay&turn=${transport}`);
        track(a);
        track(b);
        for (const s of [sa, sb]) {
          const p = s.selectedPair;
          assert.equal(p.local.type, 'relay', JSON.stringify(p));
          assert.equal(p.remote.type, 'relay', JSON.stringify(p));
          assert.equal(p.local.protocol, 'udp', JSON.stringify(p));
          assert.equal(p.local.relayProtocol, transport, JSON.stringify(p));
          assert.ok(s.iceServers.flatMap((x) => x.urls).every((u) => u.startsWith('turn:')), JSON.stringify(s.iceServers));
          const local = s.candidates.filter((c) => c.side === 'local');
          assert.ok(local.length && local.every((c) => c.type === 'relay' && c.relayProtocol === transport), JSON.stringify(local));
        }
        // The diagnostics panel says so too.
        assert.match(await a.locator('#st-pair').innerText(), new RegExp(`relay udp \\(relay over ${transport}\\).*relay udp`));
        assert.match(await a.locator('#candidates').innerText(), /relay/);
        // Data flows over the relay too.
        await b.evaluate(() => window.turnpikeDemo.send('over the relay'));
        await waitForState(b, (s) => s.messages.some((m) => m.text === 'echo: over the relay'), `the echo over TURN/${transport}`);
        await a.context().close();
        await b.context().close();
      }
    });
  });

  test('relay only over TURN TLS (turns:) with a self-signed certificate', { timeout: 90000 }, async () => {
    const cert = makeCert();
    const tlsBrowser = await launchBrowser({
      args: ['--ignore-certificate-errors', `--ignore-certificate-errors-spki-list=${cert.spki}`],
    });
    try {
      await withServer({ tls: cert }, async (server, track) => {
        const query = `room=${nextRoom()}&policy=relay&turn=tls`;
        const { a, b, sa, sb } = await connectPair(tlsBrowser, server, query, { ignoreHTTPSErrors: true });
        track(a);
        track(b);
        for (const s of [sa, sb]) {
          const p = s.selectedPair;
          assert.deepEqual([p.local.type, p.remote.type], ['relay', 'relay'], JSON.stringify(p));
          assert.equal(p.local.relayProtocol, 'tls', JSON.stringify(p));
          assert.ok(s.iceServers.flatMap((x) => x.urls).every((u) => u.startsWith('turns:')), JSON.stringify(s.iceServers));
        }
        await a.evaluate(() => window.turnpikeDemo.send('over TLS'));
        await waitForState(a, (s) => s.messages.some((m) => m.text === 'echo: over TLS'), 'the echo over TURN/TLS');
      });
    } finally {
      await tlsBrowser.close();
      cert.remove();
    }
  });

  test('relay only over a TURN transport the server does not offer passes no ICE server and says so', { timeout: 60000 }, async () => {
    await withServer({}, async (server, track) => {
      // No --cert: the hub offers no turns: URL, so "relay only over TLS" has no server at all.
      const page = track(await openDemo(browser, server, `room=${nextRoom()}&policy=relay&turn=tls`));
      const s = await waitForState(page, (x) => !!x.peerId, 'the page to join');
      assert.deepEqual(s.iceServers, []);
      assert.match(await page.locator('#servers').innerText(), /none/);
    });
  });
});
