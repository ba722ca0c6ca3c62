// Turnpike web demo: join a room on the signaling hub (/v1/ws), connect to another peer over
// WebRTC, chat and send files over a data channel, and watch how ICE found its path.
//
// Interop rules (the Rust `turnpike peer` follows the same ones):
// - the peer that joins second makes the offer; if offers cross, the smaller peer_id yields;
// - the offerer creates one ordered data channel labelled "turnpike";
// - a text T is answered with "echo: T"; texts starting with "echo: " are never echoed;
// - a file is the text header "file:NAME:SIZE:SHA256-HEX", then binary chunks of at most
//   16 KiB, answered with "file-ok:SHA256-HEX" or "file-bad:REASON" (file headers and
//   results are protocol messages, not chat, and are not echoed either);
// - trickle ICE: each candidate as {"type":"candidate","to":P,"candidate":{candidate,sdpMid,
//   sdpMLineIndex,usernameFragment}}, then "candidate": null at the end of gathering.
//
// Automation reads window.turnpikeDemo (documented in docs/web-demo.md).
'use strict';

(() => {
  const CHANNEL_LABEL = 'turnpike';
  const CHUNK = 16 * 1024;
  const HIGH_WATER = 1024 * 1024;
  const FILE_TIMEOUT_MS = 120000;
  const PING_MS = 20000;
  const MAX_LIST = 500;
  const t0 = performance.now();

  const $ = (id) => document.getElementById(id);
  const el = (tag, props, ...kids) => {
    const e = document.createElement(tag);
    Object.assign(e, props || {});
    for (const k of kids) e.append(k);
    return e;
  };
  const since = () => ((performance.now() - t0) / 1000).toFixed(3);

  // ---- state (what the automation hook reports) --------------------------------------
  const state = {
    ws: 'closed',
    room: null,
    peerId: null,
    peers: [],
    remote: null,
    role: null,
    connected: false,
    signalingState: null,
    iceGatheringState: null,
    iceConnectionState: null,
    connectionState: null,
    dtlsState: null,
    channelState: null,
    selectedPair: null,
    dataChannelRtt: null,
    options: { policy: 'all', turn: ['udp', 'tcp', 'tls'] },
    iceServers: [],
    candidates: [],
    candidateErrors: [],
    messages: [],
    files: [],
    events: [],
  };

  let ws = null;
  let session = null;
  let lastSeq = 0;
  let hubIceServers = [];
  let wantRoom = null;
  let reconnectTimer = null;
  let reconnectDelay = 500;
  let pingTimer = null;
  let pc = null;
  let dc = null;
  let pendingCandidates = [];
  let signalChain = Promise.resolve();
  let statsTimer = null;
  let incoming = null;
  const pendingEchoes = new Map();
  const outgoingFiles = [];
  let probeCounter = 0;

  // ---- small helpers ----------------------------------------------------------------
  function push(list, item) {
    list.push(item);
    if (list.length > MAX_LIST) list.shift();
  }

  function log(text, level) {
    push(state.events, { t: Number(since()), level: level || 'info', text });
    const li = el('li', { className: level || '', textContent: `${since()}s  ${text}` });
    const box = $('log');
    box.append(li);
    while (box.children.length > MAX_LIST) box.firstChild.remove();
    box.scrollTop = box.scrollHeight;
  }

  function setDd(id, text, good) {
    const d = $(id);
    d.textContent = text == null ? '–' : String(text);
    if (good === undefined) delete d.dataset.good;
    else d.dataset.good = good ? 'yes' : 'no';
  }

  function setStatus(kind, text) {
    const s = $('status');
    s.dataset.state = kind;
    s.textContent = text;
  }

  function hex(buf) {
    return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // SHA-256 in plain JavaScript, for pages served over plain HTTP on a LAN address, where
  // browsers hide crypto.subtle (it needs a secure context; localhost and HTTPS are).
  function sha256Fallback(bytes) {
    const primes = [];
    for (let n = 2; primes.length < 64; n++) {
      if (primes.every((p) => n % p !== 0)) primes.push(n);
    }
    const frac = (x) => ((x - Math.floor(x)) * 0x100000000) >>> 0;
    const K = primes.map((p) => frac(Math.cbrt(p)));
    const H = primes.slice(0, 8).map((p) => frac(Math.sqrt(p)));
    const len = bytes.length;
    const padded = (((len + 9 + 63) / 64) | 0) * 64;
    const buf = new Uint8Array(padded);
    buf.set(bytes);
    buf[len] = 0x80;
    const dv = new DataView(buf.buffer);
    dv.setUint32(padded - 8, Math.floor(len / 0x20000000));
    dv.setUint32(padded - 4, (len * 8) >>> 0);
    const W = new Uint32Array(64);
    const ror = (x, n) => (x >>> n) | (x << (32 - n));
    for (let off = 0; off < padded; off += 64) {
      for (let i = 0; i < 16; i++) W[i] = dv.getUint32(off + 4 * i);
      for (let i = 16; i < 64; i++) {
        const a = W[i - 15];
        const b = W[i - 2];
        const s0 = ror(a, 7) ^ ror(a, 18) ^ (a >>> 3);
        const s1 = ror(b, 17) ^ ror(b, 19) ^ (b >>> 10);
        W[i] = (W[i - 16] + s0 + W[i - 7] + s1) | 0;
      }
      let [a, b, c, d, e, f, g, h] = H;
      for (let i = 0; i < 64; i++) {
        const t1 = (h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + W[i]) | 0;
        const t2 = ((ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
        h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
      }
      [a, b, c, d, e, f, g, h].forEach((v, i) => { H[i] = (H[i] + v) >>> 0; });
    }
    return H.map((v) => v.toString(16).padStart(8, '0')).join('');
  }

  async function sha256Hex(data, forceFallback) {
    const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
    if (!forceFallback && globalThis.crypto && crypto.subtle) {
      return hex(await crypto.subtle.digest('SHA-256', bytes));
    }
    return sha256Fallback(bytes);
  }

  // ---- options: which ICE servers and policy the next RTCPeerConnection gets ----------
  function urlKind(url) {
    if (/^stuns?:/i.test(url)) return 'stun';
    if (/^turns:/i.test(url)) return 'tls';
    if (/[?&]transport=tcp/i.test(url)) return 'tcp';
    return 'udp';
  }

  function readOptions() {
    const policy = document.querySelector('input[name="policy"]:checked').value;
    const turn = Array.from(document.querySelectorAll('input[name="turn"]:checked'), (i) => i.value);
    state.options = { policy, turn };
    document.querySelectorAll('input[name="turn"]').forEach((i) => { i.disabled = policy === 'stun'; });
    showServers();
    return state.options;
  }

  function applyOptions(opts) {
    if (opts.policy) {
      const r = document.querySelector(`input[name="policy"][value="${CSS.escape(opts.policy)}"]`);
      if (r) r.checked = true;
    }
    if (opts.turn) {
      document.querySelectorAll('input[name="turn"]').forEach((i) => { i.checked = opts.turn.includes(i.value); });
    }
    return readOptions();
  }

  function filteredServers() {
    const { policy, turn } = state.options;
    const keep = (url) => {
      const kind = urlKind(url);
      if (kind === 'stun') return policy !== 'relay';
      return policy !== 'stun' && turn.includes(kind);
    };
    const out = [];
    for (const s of hubIceServers) {
      const urls = (Array.isArray(s.urls) ? s.urls : [s.urls]).filter(keep);
      if (urls.length) out.push({ ...s, urls });
    }
    return out;
  }

  function showServers() {
    const servers = filteredServers();
    state.iceServers = servers.map((s) => ({ urls: s.urls.slice() }));
    const offered = new Set(hubIceServers.flatMap((s) => (Array.isArray(s.urls) ? s.urls : [s.urls])).map(urlKind));
    document.querySelectorAll('input[name="turn"]').forEach((i) => {
      i.parentElement.title = offered.has(i.value) || !hubIceServers.length ? '' : 'this server offers no such URL';
    });
    const urls = servers.flatMap((s) => s.urls);
    $('servers').textContent = hubIceServers.length
      ? `ICE servers for the next connection: ${urls.length ? urls.join('  ') : 'none (host candidates only)'}`
      : 'ICE servers arrive when you join a room.';
  }

  // ---- signaling hub ------------------------------------------------------------------
  function hubSend(msg) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(msg));
      return true;
    }
    log(`hub not connected; dropped ${msg.type}`, 'warn');
    return false;
  }

  function openHub() {
    clearTimeout(reconnectTimer);
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const sock = new WebSocket(`${scheme}//${location.host}/v1/ws`);
    ws = sock;
    state.ws = 'connecting';
    setDd('st-ws', 'connecting');
    sock.onopen = () => {
      state.ws = 'open';
      setDd('st-ws', 'open', true);
      if (session) {
        hubSend({ type: 'resume', session, last_seq: lastSeq });
      } else {
        hubSend({ type: 'join', room: wantRoom });
      }
      clearInterval(pingTimer);
      pingTimer = setInterval(() => hubSend({ type: 'ping' }), PING_MS);
    };
    sock.onmessage = (e) => {
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch {
        log('hub sent something that is not JSON', 'error');
        return;
      }
      onHub(msg);
    };
    sock.onclose = (e) => {
      if (ws !== sock) return;
      clearInterval(pingTimer);
      state.ws = 'closed';
      setDd('st-ws', `closed (${e.code})`, false);
      if (wantRoom) {
        log(`hub connection closed (${e.code}${e.reason ? `: ${e.reason}` : ''}); reconnecting in ${reconnectDelay} ms`, 'warn');
        reconnectTimer = setTimeout(openHub, reconnectDelay);
        reconnectDelay = Math.min(reconnectDelay * 2, 8000);
      }
    };
  }

  function join(room) {
    room = String(room || '').trim();
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(room)) {
      log('room names are 1–64 letters, digits, "-", "_" or "."', 'error');
      return false;
    }
    if (wantRoom) leave();
    wantRoom = room;
    session = null;
    lastSeq = 0;
    $('room').value = room;
    const u = new URL(location.href);
    u.searchParams.set('room', room);
    history.replaceState(null, '', u);
    $('share').href = u.href;
    $('share').textContent = u.href;
    setStatus('connecting', `Joining ${room}…`);
    openHub();
    updateControls();
    return true;
  }

  function leave() {
    hangUp('left the room', true);
    wantRoom = null;
    session = null;
    if (ws) {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'leave' }));
      const sock = ws;
      ws = null;
      sock.close(1000, 'left');
    }
    clearInterval(pingTimer);
    clearTimeout(reconnectTimer);
    state.ws = 'closed';
    state.room = null;
    state.peerId = null;
    state.peers = [];
    setDd('st-ws', 'closed');
    setStatus('idle', 'Not in a room');
    renderPeers();
    updateControls();
  }

  function onHub(msg) {
    if (typeof msg.seq === 'number' && msg.type !== 'welcome' && msg.type !== 'resumed') {
      lastSeq = Math.max(lastSeq, msg.seq);
    }
    switch (msg.type) {
      case 'welcome':
      case 'resumed': {
        reconnectDelay = 500;
        session = msg.session;
        state.room = msg.room;
        state.peerId = msg.peer_id;
        state.peers = (msg.peers || []).slice();
        hubIceServers = msg.ice_servers || [];
        showServers();
        renderPeers();
        log(`${msg.type === 'welcome' ? 'joined' : 'resumed'} room ${msg.room} as ${msg.peer_id}; ${state.peers.length} other peer(s)`);
        if (msg.type === 'resumed' && msg.replay_complete === false) log('some hub messages were lost while disconnected', 'warn');
        if (state.remote && !state.peers.includes(state.remote)) hangUp('the other peer is gone', false);
        if (!pc) setStatus('joined', `In room ${msg.room}: waiting for someone`);
        // The peer that joins second makes the offer.
        if (msg.type === 'welcome' && state.peers.length && !pc) {
          call(state.peers[0]).catch((e) => log(`call failed: ${e}`, 'error'));
        }
        break;
      }
      case 'peer-joined':
        if (!state.peers.includes(msg.peer_id)) state.peers.push(msg.peer_id);
        state.peers.sort();
        log(`${msg.peer_id} joined`);
        renderPeers();
        break;
      case 'peer-left':
        state.peers = state.peers.filter((p) => p !== msg.peer_id);
        log(`${msg.peer_id} left`);
        if (state.remote === msg.peer_id) hangUp('the other peer left', false);
        renderPeers();
        break;
      case 'offer':
      case 'answer':
      case 'candidate':
        signalChain = signalChain.then(() => onSignal(msg)).catch((e) => log(`${msg.type} from ${msg.from}: ${e}`, 'error'));
        break;
      case 'bye':
        if (state.remote === msg.from) {
          // The other side may send its last data-channel message (an echo) just before
          // `bye`, and the hub can deliver `bye` first: let the channel drain (it closes when
          // the other side closes it) for up to a second before hanging up.
          const conn = pc;
          const channel = dc;
          const done = () => { if (pc === conn && state.remote === msg.from) hangUp(`${msg.from} hung up`, false); };
          if (channel && channel.readyState === 'open') {
            const timer = setTimeout(done, 1000);
            channel.addEventListener('close', () => { clearTimeout(timer); done(); }, { once: true });
          } else {
            done();
          }
        }
        break;
      case 'error':
        log(`hub error ${msg.code}: ${msg.message}`, 'error');
        if (msg.code === 'session-not-found' && wantRoom) {
          session = null;
          hubSend({ type: 'join', room: wantRoom });
        } else if (!state.peerId) {
          setStatus('failed', `Could not join: ${msg.code}`);
        }
        break;
      case 'pong':
        break;
      default:
        log(`hub message of unknown type ${msg.type}`, 'warn');
    }
  }

  // ---- WebRTC -------------------------------------------------------------------------
  function candidateInfo(c, side, url) {
    // RTCIceCandidate fields where the browser has them, else parsed from the SDP line.
    const parts = (c.candidate || '').split(/\s+/);
    const typIdx = parts.indexOf('typ');
    const field = (name) => {
      const i = parts.indexOf(name);
      return i > 0 ? parts[i + 1] : null;
    };
    const type = c.type || (typIdx > 0 ? parts[typIdx + 1] : null);
    const server = c.url || url || null;
    return {
      t: Number(since()),
      side,
      type,
      protocol: c.protocol || (parts[2] ? parts[2].toLowerCase() : null),
      address: unbracket(c.address || parts[4] || null),
      port: c.port || (parts[5] ? Number(parts[5]) : null),
      // Browsers without RTCIceCandidate.relayProtocol: the TURN URL that made it tells.
      relayProtocol: c.relayProtocol || (type === 'relay' && server ? urlKind(server) : null),
      relatedAddress: unbracket(c.relatedAddress || field('raddr')),
      url: server,
    };
  }

  function unbracket(a) {
    return typeof a === 'string' ? a.replace(/^\[(.*)\]$/, '$1') : a;
  }

  function recordCandidate(info) {
    push(state.candidates, info);
    const tr = el('tr', { className: `${info.type === 'relay' ? 'relay ' : ''}${info.side}` });
    for (const v of [info.t.toFixed(3), info.side, info.type, info.protocol, info.address, info.port, info.relayProtocol, info.url]) {
      tr.append(el('td', { textContent: v == null ? '' : String(v) }));
    }
    $('candidates').tBodies[0].append(tr);
  }

  const ERROR_HINTS = {
    300: 'the server redirected the client to another server (Try Alternate)',
    400: 'the server did not understand the request (Bad Request)',
    401: 'credentials: the TURN username or password is wrong or expired; rejoin the room for fresh ones',
    403: 'forbidden: the server refused the request (its peer policy or address family)',
    420: 'the server does not know an attribute the browser sent',
    437: 'allocation mismatch: an old allocation from this address is still there',
    438: 'stale nonce: usually retried at once by the browser',
    440: 'the relay does not support this address family (IPv4/IPv6)',
    441: 'wrong credentials for an existing allocation',
    442: 'the relay does not support this transport',
    486: 'allocation quota reached for this user or address',
    500: 'server error',
    508: 'insufficient capacity: the relay has no free relay port',
    701: 'server unreachable: no answer on this address and transport (wrong host or port, a firewall, the server is down, or TCP/TLS is blocked)',
  };

  function recordError(e) {
    const code = e.errorCode;
    const hint = ERROR_HINTS[code] || (code >= 300 && code < 700 ? 'a STUN/TURN error response from the server' : 'a network error');
    const item = {
      t: Number(since()),
      code,
      text: e.errorText || '',
      url: e.url || '',
      address: e.address || null,
      port: e.port || null,
      hint,
    };
    push(state.candidateErrors, item);
    const list = $('errors');
    if (list.firstElementChild && list.firstElementChild.classList.contains('muted')) list.firstElementChild.remove();
    list.append(el('li', {},
      el('strong', { textContent: `${code}` }),
      ` ${item.text} — ${item.url}${item.address ? ` (from ${item.address}:${item.port})` : ''}`,
      el('span', { className: 'hint', textContent: hint })));
    log(`candidate error ${code} ${item.text} at ${item.url}`, 'warn');
  }

  function resetDiagnostics() {
    state.selectedPair = null;
    state.dataChannelRtt = null;
    for (const id of ['st-gathering', 'st-ice', 'st-dtls', 'st-pc']) setDd(id, 'new');
    for (const id of ['st-pair', 'st-rtt', 'st-dcrtt']) setDd(id, null);
    setDd('st-dc', 'none');
  }

  // A closed RTCPeerConnection never settles its pending promises: every await on one is
  // raced against its closing, so a hang-up never blocks the signaling queue.
  const closers = new WeakMap();
  function guard(conn, promise) {
    return Promise.race([promise, closers.get(conn).promise]);
  }

  function makePeerConnection(remote, role) {
    readOptions();
    const config = {
      iceServers: filteredServers(),
      iceTransportPolicy: state.options.policy === 'relay' ? 'relay' : 'all',
      bundlePolicy: 'max-bundle',
    };
    if (config.iceTransportPolicy === 'relay' && !config.iceServers.length) {
      log('relay only, but no TURN URL is selected: nothing can connect', 'error');
    }
    const conn = new RTCPeerConnection(config);
    let closed;
    closers.set(conn, { promise: new Promise((resolve) => { closed = resolve; }), resolve: () => closed() });
    pc = conn;
    pendingCandidates = [];
    state.remote = remote;
    state.role = role;
    state.connected = false;
    resetDiagnostics();
    const mine = () => pc === conn;
    conn.onicecandidate = (e) => {
      if (!mine()) return;
      if (e.candidate && e.candidate.candidate) {
        recordCandidate(candidateInfo(e.candidate, 'local', e.url));
      }
      const c = e.candidate;
      hubSend({
        type: 'candidate',
        to: remote,
        candidate: c ? { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex, usernameFragment: c.usernameFragment } : null,
      });
    };
    conn.onicecandidateerror = (e) => { if (mine()) recordError(e); };
    const track = (name, id, get, good) => () => {
      if (!mine()) return;
      const v = get();
      state[name] = v;
      setDd(id, v, good(v));
      log(`${id.slice(3)} → ${v}`);
    };
    conn.onicegatheringstatechange = track('iceGatheringState', 'st-gathering', () => conn.iceGatheringState, (v) => (v === 'complete' ? true : undefined));
    conn.oniceconnectionstatechange = track('iceConnectionState', 'st-ice', () => conn.iceConnectionState, goodState);
    conn.onconnectionstatechange = () => {
      track('connectionState', 'st-pc', () => conn.connectionState, goodState)();
      if (!mine()) return;
      if (conn.connectionState === 'failed') {
        setStatus('failed', `Connection to ${remote} failed`);
        log('ICE failed: no candidate pair worked; see the candidate errors and try another path option', 'error');
      }
      updateStatus();
    };
    conn.onsignalingstatechange = () => { if (mine()) state.signalingState = conn.signalingState; };
    conn.ondatachannel = (e) => {
      if (!mine()) return;
      if (e.channel.label !== CHANNEL_LABEL) {
        log(`ignoring a data channel labelled ${e.channel.label}`, 'warn');
        return;
      }
      setupChannel(e.channel);
    };
    clearInterval(statsTimer);
    statsTimer = setInterval(() => { if (mine()) pollStats(conn).catch(() => {}); }, 1000);
    setStatus('connecting', `Connecting to ${remote}…`);
    renderPeers();
    updateControls();
    return conn;
  }

  function goodState(v) {
    if (v === 'connected' || v === 'completed') return true;
    if (v === 'failed' || v === 'disconnected') return false;
    return undefined;
  }

  function watchDtls(conn) {
    const t = conn.sctp && conn.sctp.transport;
    if (!t || t.onstatechange) return;
    const show = () => {
      if (pc !== conn) return;
      state.dtlsState = t.state;
      setDd('st-dtls', t.state, t.state === 'connected' ? true : t.state === 'failed' ? false : undefined);
    };
    t.onstatechange = () => { show(); log(`dtls → ${t.state}`); };
    show();
  }

  // True while call() creates and sets its offer (offer collisions, see onSignal).
  let makingOffer = false;

  async function call(remote) {
    if (pc) hangUp('starting a new connection', state.remote !== remote);
    const conn = makePeerConnection(remote, 'offerer');
    log(`calling ${remote}`);
    setupChannel(conn.createDataChannel(CHANNEL_LABEL, { ordered: true }));
    // While the offer is being made, an offer from the same peer is a collision too (the
    // signaling state is still "stable" until setLocalDescription completes).
    makingOffer = true;
    try {
      const offer = await guard(conn, conn.createOffer());
      if (pc !== conn) return;
      await guard(conn, conn.setLocalDescription(offer));
      if (pc !== conn) return;
    } finally {
      makingOffer = false;
    }
    watchDtls(conn);
    hubSend({ type: 'offer', to: remote, sdp: conn.localDescription.sdp });
  }

  async function onSignal(msg) {
    const from = msg.from;
    if (msg.type === 'offer') {
      if (pc && state.remote === from && (makingOffer || pc.signalingState === 'have-local-offer')) {
        // Offers crossed: the smaller peer_id yields.
        if (state.peerId < from) {
          log(`offers crossed with ${from}; yielding (my id is smaller)`);
        } else {
          log(`offers crossed with ${from}; keeping mine (my id is larger)`);
          return;
        }
      } else if (pc && state.remote && state.remote !== from) {
        log(`${from} called while connected to ${state.remote}; declined`, 'warn');
        hubSend({ type: 'bye', to: from });
        return;
      }
      if (pc) hangUp(`new offer from ${from}`, false);
      const conn = makePeerConnection(from, 'answerer');
      log(`offer from ${from}`);
      await guard(conn, conn.setRemoteDescription({ type: 'offer', sdp: msg.sdp }));
      if (pc !== conn) return;
      await flushCandidates(conn);
      const answer = await guard(conn, conn.createAnswer());
      if (pc !== conn) return;
      await guard(conn, conn.setLocalDescription(answer));
      if (pc !== conn) return;
      watchDtls(conn);
      hubSend({ type: 'answer', to: from, sdp: conn.localDescription.sdp });
    } else if (msg.type === 'answer') {
      if (!pc || state.remote !== from || pc.signalingState !== 'have-local-offer') {
        log(`unexpected answer from ${from}; ignored`, 'warn');
        return;
      }
      log(`answer from ${from}`);
      const conn = pc;
      await guard(conn, conn.setRemoteDescription({ type: 'answer', sdp: msg.sdp }));
      if (pc !== conn) return;
      watchDtls(conn);
      await flushCandidates(conn);
    } else if (msg.type === 'candidate') {
      if (state.remote && state.remote !== from) return;
      if (msg.candidate && msg.candidate.candidate) {
        recordCandidate(candidateInfo(msg.candidate, 'remote'));
      }
      if (!pc || !pc.remoteDescription) {
        pendingCandidates.push({ from, candidate: msg.candidate });
        return;
      }
      await addCandidate(pc, msg.candidate);
    }
  }

  async function addCandidate(conn, c) {
    try {
      await guard(conn, conn.addIceCandidate(c || null));
    } catch (e) {
      log(`could not add a remote candidate: ${e.message}`, 'warn');
    }
  }

  async function flushCandidates(conn) {
    const queued = pendingCandidates.filter((q) => q.from === state.remote);
    pendingCandidates = [];
    for (const q of queued) await addCandidate(conn, q.candidate);
  }

  function hangUp(reason, notify) {
    if (!pc && !state.remote) return;
    if (notify && state.remote) hubSend({ type: 'bye', to: state.remote });
    log(`connection closed: ${reason}`);
    clearInterval(statsTimer);
    const conn = pc;
    pc = null;
    if (dc) dc.close();
    dc = null;
    if (conn) {
      closers.get(conn).resolve();
      conn.close();
    }
    state.remote = null;
    state.role = null;
    state.connected = false;
    state.channelState = 'closed';
    incoming = null;
    setDd('st-dc', 'closed');
    for (const f of outgoingFiles.splice(0)) f.fail('connection closed');
    addMessage('sys', `Disconnected (${reason}).`);
    updateStatus();
    renderPeers();
    updateControls();
  }

  function updateStatus() {
    if (state.connected) {
      const p = state.selectedPair;
      setStatus('connected', `Connected to ${state.remote}${p ? ` via ${p.local.type}/${p.remote.type} ${p.local.protocol}` : ''}`);
    } else if (pc && pc.connectionState === 'failed') {
      setStatus('failed', `Connection to ${state.remote} failed`);
    } else if (pc) {
      setStatus('connecting', `Connecting to ${state.remote}…`);
    } else if (state.room) {
      setStatus('joined', `In room ${state.room}`);
    } else {
      setStatus('idle', 'Not in a room');
    }
  }

  async function pollStats(conn) {
    const stats = await conn.getStats();
    let pair = null;
    stats.forEach((r) => {
      if (r.type === 'transport') {
        if (r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId) || pair;
        if (r.dtlsState && !(conn.sctp && conn.sctp.transport)) {
          state.dtlsState = r.dtlsState;
          setDd('st-dtls', r.dtlsState, r.dtlsState === 'connected' ? true : undefined);
        }
      }
    });
    if (!pair) {
      stats.forEach((r) => {
        if (!pair && r.type === 'candidate-pair' && (r.selected || (r.nominated && r.state === 'succeeded'))) pair = r;
      });
    }
    if (pc !== conn) return;
    if (!pair) {
      state.selectedPair = null;
      setDd('st-pair', 'none yet');
      return;
    }
    const side = (id) => {
      const c = stats.get(id) || {};
      return {
        type: c.candidateType || null,
        protocol: c.protocol || null,
        address: unbracket(c.address || c.ip || null),
        port: c.port || null,
        relayProtocol: c.relayProtocol || null,
        url: c.url || null,
      };
    };
    const before = JSON.stringify(state.selectedPair && [state.selectedPair.local, state.selectedPair.remote]);
    const p = {
      local: side(pair.localCandidateId),
      remote: side(pair.remoteCandidateId),
      rtt: typeof pair.currentRoundTripTime === 'number' ? pair.currentRoundTripTime : null,
      bytesSent: pair.bytesSent || 0,
      bytesReceived: pair.bytesReceived || 0,
    };
    state.selectedPair = p;
    const fmt = (c) => `${c.type} ${c.protocol}${c.relayProtocol ? ` (relay over ${c.relayProtocol})` : ''} ${c.address || '(address hidden)'}:${c.port}`;
    setDd('st-pair', `${fmt(p.local)} ⇄ ${fmt(p.remote)}`, true);
    setDd('st-rtt', p.rtt == null ? null : `${(p.rtt * 1000).toFixed(1)} ms`);
    if (before !== JSON.stringify([p.local, p.remote])) {
      log(`selected pair: local ${fmt(p.local)}, remote ${fmt(p.remote)}`);
      updateStatus();
    }
  }

  // ---- data channel: chat, echo, files ------------------------------------------------
  function setupChannel(ch) {
    dc = ch;
    ch.binaryType = 'arraybuffer';
    ch.bufferedAmountLowThreshold = HIGH_WATER / 4;
    state.channelState = ch.readyState;
    setDd('st-dc', ch.readyState);
    ch.onopen = () => {
      if (dc !== ch) return;
      state.channelState = 'open';
      state.connected = true;
      setDd('st-dc', 'open', true);
      log(`data channel "${ch.label}" open`);
      addMessage('sys', `Connected to ${state.remote}.`);
      updateStatus();
      updateControls();
      if (pc) pollStats(pc).catch(() => {});
      for (let i = 0; i < 3; i++) setTimeout(() => sendProbe(ch), 200 + i * 300);
    };
    ch.onclose = () => {
      if (dc !== ch) return;
      state.channelState = 'closed';
      state.connected = false;
      setDd('st-dc', 'closed', false);
      log('data channel closed');
      updateStatus();
      updateControls();
    };
    ch.onerror = (e) => log(`data channel error: ${e.error ? e.error.message : 'unknown'}`, 'warn');
    ch.onmessage = (e) => {
      if (dc !== ch) return;
      if (typeof e.data === 'string') onText(e.data);
      else onBinary(e.data);
    };
  }

  function sendProbe(ch) {
    if (ch.readyState !== 'open') return;
    const text = `rtt-probe ${++probeCounter}`;
    pendingEchoes.set(text, performance.now());
    ch.send(text);
  }

  function addMessage(dir, text, kind) {
    push(state.messages, { t: Number(since()), dir, text, kind: kind || 'chat' });
    const who = dir === 'in' ? state.remote || 'them' : dir === 'out' ? 'you' : '';
    const li = el('li', { className: dir });
    if (who) li.append(el('span', { className: 'who', textContent: who }));
    li.append(text);
    const box = $('messages');
    box.append(li);
    while (box.children.length > MAX_LIST) box.firstChild.remove();
    box.scrollTop = box.scrollHeight;
    return li;
  }

  function parseFileHeader(text) {
    const m = /^file:(.*):(\d{1,15}):([0-9a-f]{64})$/s.exec(text);
    return m ? { name: m[1], size: Number(m[2]), sha256: m[3] } : null;
  }

  function onText(text) {
    if (text.startsWith('echo: ')) {
      const orig = text.slice(6);
      const sent = pendingEchoes.get(orig);
      if (sent !== undefined) {
        pendingEchoes.delete(orig);
        state.dataChannelRtt = (performance.now() - sent) / 1000;
        setDd('st-dcrtt', `${(state.dataChannelRtt * 1000).toFixed(1)} ms`);
      }
      if (orig.startsWith('rtt-probe ')) {
        push(state.messages, { t: Number(since()), dir: 'in', text, kind: 'echo' });
      } else {
        addMessage('in', text, 'echo');
      }
      return;
    }
    if (text.startsWith('file-ok:') || text.startsWith('file-bad:')) {
      onFileResult(text);
      return;
    }
    const header = parseFileHeader(text);
    if (header) {
      startIncoming(header);
      return;
    }
    if (text.startsWith('rtt-probe ')) {
      // The other side measuring the round trip: answered, kept out of the chat.
      push(state.messages, { t: Number(since()), dir: 'in', text, kind: 'probe' });
    } else {
      addMessage('in', text, 'chat');
    }
    dc.send(`echo: ${text}`);
  }

  function sendText(text) {
    if (!dc || dc.readyState !== 'open') throw new Error('not connected');
    pendingEchoes.set(text, performance.now());
    if (pendingEchoes.size > 100) pendingEchoes.delete(pendingEchoes.keys().next().value);
    dc.send(text);
    addMessage('out', text);
  }

  function fileEntry(entry) {
    push(state.files, entry);
    const li = addMessage(entry.dir === 'in' ? 'in' : 'out', '', 'file');
    const status = el('span', { textContent: '' });
    li.append(el('strong', { textContent: entry.name }), ` (${entry.size} bytes) `, status);
    return (text, cls, link) => {
      status.textContent = text;
      status.className = cls || '';
      if (link) li.append(' ', link);
    };
  }

  function startIncoming(h) {
    if (incoming) finishIncoming('interrupted by another file');
    const entry = { dir: 'in', name: h.name, size: h.size, sha256: h.sha256, received: 0, result: 'receiving', t: Number(since()) };
    incoming = { ...h, chunks: [], received: 0, entry, show: fileEntry(entry) };
    incoming.show('receiving…');
    log(`receiving file ${h.name} (${h.size} bytes)`);
    showProgress(0, h.size);
    if (h.size === 0) finishIncoming();
  }

  function onBinary(data) {
    if (!incoming) {
      log(`ignored ${data.byteLength} binary bytes outside a file`, 'warn');
      return;
    }
    incoming.chunks.push(new Uint8Array(data));
    incoming.received += data.byteLength;
    incoming.entry.received = incoming.received;
    showProgress(incoming.received, incoming.size);
    if (incoming.received >= incoming.size) finishIncoming();
  }

  async function finishIncoming(interrupted) {
    const f = incoming;
    incoming = null;
    showProgress(null);
    const reply = (text) => { if (dc && dc.readyState === 'open') dc.send(text); };
    if (interrupted || f.received !== f.size) {
      const reason = interrupted ? 'interrupted' : `size ${f.received} != ${f.size}`;
      f.entry.result = 'bad';
      f.entry.error = reason;
      f.show(`failed: ${reason}`, 'bad');
      reply(`file-bad:${interrupted ? 'interrupted' : 'size'}`);
      return;
    }
    const all = new Uint8Array(f.size);
    let off = 0;
    for (const c of f.chunks) { all.set(c, off); off += c.length; }
    const got = await sha256Hex(all);
    f.entry.actualSha256 = got;
    if (got === f.sha256) {
      f.entry.result = 'ok';
      const url = URL.createObjectURL(new Blob([all]));
      const a = el('a', { href: url, download: f.name.replace(/[\\/]/g, '_') || 'file', textContent: 'Save' });
      f.show('received, SHA-256 matches ✓', 'ok', a);
      reply(`file-ok:${got}`);
      log(`file ${f.name} received intact`);
    } else {
      f.entry.result = 'bad';
      f.entry.error = 'hash mismatch';
      f.show(`SHA-256 mismatch (got ${got.slice(0, 12)}…)`, 'bad');
      reply(`file-bad:${got}`);
      log(`file ${f.name} arrived damaged`, 'error');
    }
  }

  function onFileResult(text) {
    const ok = text.startsWith('file-ok:');
    const value = text.slice(ok ? 8 : 9);
    const i = ok ? outgoingFiles.findIndex((f) => f.entry.sha256 === value) : 0;
    const f = i >= 0 ? outgoingFiles.splice(i, 1)[0] : undefined;
    if (!f) {
      log(`unexpected ${text}`, 'warn');
      return;
    }
    if (ok) f.done();
    else f.fail(`the other side says: ${value || 'bad'}`);
  }

  function showProgress(done, total) {
    const p = $('file-progress');
    if (done == null) { p.hidden = true; return; }
    p.hidden = false;
    p.max = total || 1;
    p.value = total ? done : 1;
  }

  async function sendFile(name, data) {
    const ch = dc;
    if (!ch || ch.readyState !== 'open') throw new Error('not connected');
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data instanceof Uint8Array ? data : new Uint8Array(data);
    const clean = String(name).replace(/[\r\n]/g, ' ') || 'file';
    const sha = await sha256Hex(bytes);
    const entry = { dir: 'out', name: clean, size: bytes.length, sha256: sha, result: 'sending', t: Number(since()) };
    const show = fileEntry(entry);
    show('sending…');
    const result = new Promise((resolve) => {
      const timer = setTimeout(() => {
        const i = outgoingFiles.indexOf(rec);
        if (i >= 0) outgoingFiles.splice(i, 1);
        rec.fail('no answer in time');
      }, FILE_TIMEOUT_MS);
      const rec = {
        entry,
        done() {
          clearTimeout(timer);
          entry.result = 'ok';
          entry.ms = Math.round(performance.now() - started);
          show(`delivered, SHA-256 confirmed ✓ (${entry.ms} ms)`, 'ok');
          log(`file ${clean} confirmed by the other side`);
          resolve({ ...entry });
        },
        fail(reason) {
          clearTimeout(timer);
          entry.result = 'bad';
          entry.error = reason;
          show(`failed: ${reason}`, 'bad');
          log(`file ${clean} failed: ${reason}`, 'error');
          resolve({ ...entry });
        },
      };
      outgoingFiles.push(rec);
    });
    const started = performance.now();
    ch.send(`file:${clean}:${bytes.length}:${sha}`);
    for (let off = 0; off < bytes.length; off += CHUNK) {
      if (ch.bufferedAmount > HIGH_WATER) {
        await new Promise((resolve) => {
          ch.addEventListener('bufferedamountlow', resolve, { once: true });
          ch.addEventListener('close', resolve, { once: true });
        });
      }
      if (ch.readyState !== 'open') break;
      ch.send(bytes.subarray(off, Math.min(off + CHUNK, bytes.length)));
      showProgress(off + CHUNK, bytes.length);
    }
    showProgress(null);
    return result;
  }

  // ---- page -----------------------------------------------------------------------------
  function renderPeers() {
    const ul = $('peers');
    ul.replaceChildren();
    if (!state.peerId) {
      ul.append(el('li', { className: 'muted', textContent: 'Join a room to see who is here.' }));
      return;
    }
    ul.append(el('li', { className: 'me', textContent: `${state.peerId} (you)` }));
    if (!state.peers.length) ul.append(el('li', { className: 'muted', textContent: 'Nobody else yet: share the link.' }));
    for (const p of state.peers) {
      const li = el('li', { className: p === state.remote ? 'remote' : '' }, p);
      if (p === state.remote) {
        li.append(state.connected ? ' · connected' : ' · connecting');
      } else if (!pc) {
        const b = el('button', { type: 'button', textContent: 'Connect' });
        b.setAttribute('aria-label', `Connect to ${p}`);
        b.addEventListener('click', () => call(p).catch((e) => log(`call failed: ${e}`, 'error')));
        li.append(' ', b);
      }
      ul.append(li);
    }
  }

  function updateControls() {
    const open = !!(dc && dc.readyState === 'open');
    $('join').disabled = !!wantRoom;
    $('leave').disabled = !wantRoom;
    $('text').disabled = !open;
    $('send').disabled = !open;
    $('file').disabled = !open;
    $('send-file').disabled = !open;
    $('hangup').disabled = !pc;
    $('restart').disabled = !state.remote;
    renderPeers();
  }

  function init() {
    const params = new URLSearchParams(location.search);
    const opts = {};
    if (['all', 'relay', 'stun'].includes(params.get('policy'))) opts.policy = params.get('policy');
    if (params.has('turn')) opts.turn = params.get('turn').split(',').map((s) => s.trim().toLowerCase());
    applyOptions(opts);
    document.querySelectorAll('#options input').forEach((i) => i.addEventListener('change', readOptions));
    $('join-form').addEventListener('submit', (e) => { e.preventDefault(); join($('room').value); });
    $('leave').addEventListener('click', leave);
    $('hangup').addEventListener('click', () => hangUp('you hung up', true));
    $('restart').addEventListener('click', () => {
      const r = state.remote;
      if (r) call(r).catch((e) => log(`call failed: ${e}`, 'error'));
    });
    $('chat-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const t = $('text').value;
      if (!t) return;
      try {
        sendText(t);
        $('text').value = '';
      } catch (err) {
        log(err.message, 'error');
      }
    });
    $('file-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const f = $('file').files[0];
      if (!f) return;
      $('send-file').disabled = true;
      try {
        await sendFile(f.name, new Uint8Array(await f.arrayBuffer()));
      } catch (err) {
        log(`file: ${err.message}`, 'error');
      }
      $('file').value = '';
      updateControls();
    });
    const room = params.get('room');
    const share = new URL(location.href);
    $('share').href = share.href;
    $('share').textContent = share.href;
    if (room) {
      join(room);
    } else {
      $('room').value = `room-${Math.random().toString(36).slice(2, 8)}`;
      renderPeers();
    }
    updateControls();
    addMessage('sys', 'Messages you send are echoed back by the other side.');
  }

  // ---- automation hook ----------------------------------------------------------------
  window.turnpikeDemo = Object.freeze({
    version: 1,
    /** A JSON-safe copy of everything the page knows (see docs/web-demo.md). */
    snapshot: () => JSON.parse(JSON.stringify(state)),
    join,
    leave,
    // Returns at once: a crossing offer may replace this connection, whose pending
    // promises then never settle.
    call: (peer) => { call(String(peer)).catch((e) => log(`call failed: ${e}`, 'error')); },
    hangUp: () => hangUp('hung up by script', true),
    setOptions: (opts) => applyOptions(opts || {}),
    send: (text) => sendText(String(text)),
    sendFile: (name, data) => sendFile(name, data),
    sha256: (data, forceFallback) => sha256Hex(data, !!forceFallback),
  });

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
