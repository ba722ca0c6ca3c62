// Browser half of tests/bench/peer-setup.sh (not part of `npm test`): against a running
// `turnpike serve`, measures in headless Chromium
//   * page ↔ `turnpike peer` set-up, direct and relay-only: the page joins first, the Rust
//     peer joins second and offers; the Rust peer's setup_ms, and the page's equivalent
//     from its event log (from "<peer> joined" to "data channel open", both page-clock
//     times with 1 ms resolution);
//   * page ↔ page relay-only file transfer through the hook's sendFile: a generated file,
//     from sending the header to receiving file-ok (the page's `ms`).
//
// Usage: node peer-bench.mjs --http PORT --out FILE [--runs N] [--file-bytes N]
//                            [--file-runs N] [--peer-timeout SECS]
// Needs TURNPIKE_BIN (the `turnpike` binary for `turnpike peer`) and chromium. Writes one
// JSON object with every sample to FILE and exits 1 if any run failed (failures are recorded,
// not retried).

import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { connectPair, launchBrowser, openDemo, snapshot, startPeer, waitForState } from './harness.mjs';

const { values: opt } = parseArgs({
  options: {
    http: { type: 'string' },
    out: { type: 'string' },
    runs: { type: 'string', default: '10' },
    'file-bytes': { type: 'string', default: String(50 * 1000 * 1000) },
    'file-runs': { type: 'string', default: '3' },
    'peer-timeout': { type: 'string', default: '30' },
  },
});
if (!opt.http || !opt.out) {
  console.error('usage: node peer-bench.mjs --http PORT --out FILE [--runs N] [--file-bytes N] [--file-runs N]');
  process.exit(2);
}
const runs = Number(opt.runs);
const fileBytes = Number(opt['file-bytes']);
const fileRuns = Number(opt['file-runs']);
const peerTimeout = Number(opt['peer-timeout']);
const server = { base: `http://127.0.0.1:${opt.http}`, http: Number(opt.http) };
const say = (s) => process.stderr.write(`[peer-bench] ${s}\n`);
const result = { setup: {}, page_file: null, failures: [] };

/** Page time (ms) of the first event whose text matches `re`. */
const eventMs = (s, re) => {
  const e = s.events.find((x) => re.test(x.text));
  return e ? Math.round(e.t * 1000) : null;
};

async function setupRun(browser, mode, i) {
  const room = `bench-${mode}-${process.pid}-${i}`;
  const query = mode === 'relay' ? `room=${room}&policy=relay&turn=udp` : `room=${room}`;
  const page = await openDemo(browser, server, query);
  let peer = null;
  try {
    await waitForState(page, (s) => !!s.peerId, 'the page to join');
    const args = ['--room', room, '--json', '--timeout', String(peerTimeout), ...(mode === 'relay' ? ['--relay-only'] : [])];
    peer = startPeer(server, args, { limitMs: (peerTimeout + 10) * 1000 });
    const r = await peer.done;
    if (r.code !== 0 || !r.json) throw new Error(`turnpike peer exit ${r.code}: ${r.stderr.split('\n').slice(-3).join(' | ')}`);
    const s = await snapshot(page);
    const joined = eventMs(s, new RegExp(`^${r.json.peer_id} joined$`));
    const open = eventMs(s, /^data channel "turnpike" open$/);
    const pair = `${r.json.local_candidate_type}/${r.json.remote_candidate_type}`;
    return { peer_setup_ms: r.json.setup_ms, page_setup_ms: joined !== null && open !== null ? open - joined : null, peer_pair: pair };
  } finally {
    if (peer) peer.kill();
    await page.context().close().catch(() => {});
  }
}

async function pageFileRun(browser, i) {
  const room = `bench-file-${process.pid}-${i}`;
  const { a, b, sb } = await connectPair(browser, server, `room=${room}&policy=relay&turn=udp`);
  try {
    const pair = `${sb.selectedPair.local.type}/${sb.selectedPair.remote.type}`;
    const entry = await b.evaluate(async (n) => {
      const data = new Uint8Array(n);
      for (let off = 0; off < n; off += 65536) crypto.getRandomValues(data.subarray(off, Math.min(off + 65536, n)));
      return window.turnpikeDemo.sendFile('bench.bin', data);
    }, fileBytes);
    if (entry.result !== 'ok') throw new Error(`file ${JSON.stringify(entry)}`);
    return { ms: entry.ms, mb_per_s: fileBytes / 1e6 / (entry.ms / 1000), pair };
  } finally {
    await a.context().close().catch(() => {});
    await b.context().close().catch(() => {});
  }
}

const browser = await launchBrowser();
try {
  for (const mode of ['host', 'relay']) {
    const samples = [];
    for (let i = 1; i <= runs; i++) {
      try {
        const x = await setupRun(browser, mode, i);
        samples.push(x);
        say(`page↔peer ${mode} run ${i}: peer setup_ms ${x.peer_setup_ms}, page ${x.page_setup_ms} ms, pair ${x.peer_pair}`);
      } catch (e) {
        result.failures.push(`page↔peer ${mode} run ${i}: ${e.message.split('\n')[0]}`);
        say(`page↔peer ${mode} run ${i} FAILED: ${e.message.split('\n')[0]}`);
      }
    }
    result.setup[mode] = samples;
  }
  const files = [];
  for (let i = 1; i <= fileRuns; i++) {
    try {
      const x = await pageFileRun(browser, i);
      files.push(x);
      say(`page↔page relay file run ${i}: ${fileBytes} bytes in ${x.ms} ms = ${x.mb_per_s.toFixed(1)} MB/s (${x.pair})`);
    } catch (e) {
      result.failures.push(`page↔page file run ${i}: ${e.message.split('\n')[0]}`);
      say(`page↔page file run ${i} FAILED: ${e.message.split('\n')[0]}`);
    }
  }
  result.page_file = { bytes: fileBytes, runs: files };
} finally {
  await browser.close();
}
fs.writeFileSync(opt.out, JSON.stringify(result, null, 1));
process.exit(result.failures.length ? 1 : 0);
