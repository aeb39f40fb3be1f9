// callwire's built-in dashboard: /healthz for the source, the REST live API for calls and
// extensions, a Blackhole websocket on the same origin for the event feed. Everything shown is
// set with textContent; the credential lives in sessionStorage only and never in a URL.
'use strict';
(() => {
  const FEED_MAX = 200;
  const KEY = 'callwire.credential';
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = String(text);
    return e;
  };

  let cred = loadCred();
  let signingIn = false;
  let calls = [];
  let extensions = [];
  const seen = new Map(); // extension number -> {name, last}: idle ones stay listed, greyed

  // ---- credential ----
  function loadCred() {
    try {
      const c = JSON.parse(sessionStorage.getItem(KEY));
      return c && typeof c.name === 'string' && typeof c.secret === 'string' ? c : null;
    } catch (_) { return null; }
  }
  function b64(text) {
    let bin = '';
    for (const b of new TextEncoder().encode(text)) bin += String.fromCharCode(b);
    return btoa(bin);
  }
  function authHeaders() {
    return cred ? { Authorization: 'Basic ' + b64(cred.name + ':' + cred.secret) } : {};
  }
  function showWho() {
    $('who').hidden = !cred;
    $('who-name').textContent = cred ? 'Signed in as ' + cred.name : '';
  }
  function askSignIn(message) {
    if (signingIn) return;
    signingIn = true;
    closeSocket();
    setPill('ws-state', 'signed out', 'off');
    $('signin-msg').textContent = message;
    $('signin').hidden = false;
    $('si-name').value = cred ? cred.name : '';
    $('si-secret').value = '';
    $((cred ? 'si-secret' : 'si-name')).focus();
  }
  $('signin').addEventListener('submit', (ev) => {
    ev.preventDefault();
    cred = { name: $('si-name').value, secret: $('si-secret').value };
    $('si-secret').value = '';
    try { sessionStorage.setItem(KEY, JSON.stringify(cred)); } catch (_) { /* this tab only, then */ }
    signingIn = false;
    $('signin').hidden = true;
    showWho();
    refresh();
    connect();
  });
  $('signout').addEventListener('click', () => {
    try { sessionStorage.removeItem(KEY); } catch (_) { /* nothing kept */ }
    cred = null;
    showWho();
    calls = []; extensions = []; seen.clear();
    renderCalls(); renderExts();
    askSignIn('Signed out.');
  });

  // ---- helpers ----
  const pad = (n) => String(n).padStart(2, '0');
  function clock(d) { return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()); }
  function span(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60;
    return (h ? h + ':' + pad(m) : String(m)) + ':' + pad(s % 60);
  }
  function setPill(id, text, tone) {
    const p = $(id);
    p.textContent = text;
    p.className = 'pill ' + (tone || '');
  }
  async function getJSON(path, anyStatus) {
    const r = await fetch(path, { headers: authHeaders(), cache: 'no-store', credentials: 'omit' });
    if (r.status === 401) throw Object.assign(new Error('unauthorized'), { auth: true });
    if (!r.ok && !anyStatus) throw new Error(path + ': HTTP ' + r.status);
    return r.json();
  }

  // ---- source status ----
  async function health() {
    try {
      const h = await getJSON('/healthz', true);
      const src = h.source || {};
      $('src-kind').textContent = src.kind || '?';
      setPill('src-state', src.connected ? 'connected' : 'down', src.connected ? 'ok' : 'bad');
      const since = Date.parse(src.since);
      $('src-since').textContent = isNaN(since) ? '–' : clock(new Date(since)) + ' (' + span(Date.now() - since) + ')';
      $('src-clients').textContent = h.clients;
      $('src-calls').textContent = h.live_calls;
    } catch (_) {
      setPill('src-state', 'unreachable', 'bad');
    }
  }

  // ---- calls and extensions ----
  let busy = false, again = false, debounce = 0;
  async function refresh() {
    if (signingIn) return;
    if (busy) { again = true; return; }
    busy = true;
    try {
      const [c, e] = await Promise.all([getJSON('/rest/live/calls'), getJSON('/rest/live/extensions')]);
      calls = Array.isArray(c) ? c : [];
      extensions = Array.isArray(e) ? e : [];
      $('calls-note').hidden = true;
      renderCalls();
      renderExts();
    } catch (err) {
      if (err.auth) askSignIn(cred ? 'That name and secret were not accepted.' : 'This callwire asks for a credential.');
      else { $('calls-note').textContent = 'Live API unavailable: ' + err.message; $('calls-note').hidden = false; }
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  }
  function soon() {
    clearTimeout(debounce);
    debounce = setTimeout(refresh, 300);
  }

  function party(p) {
    const td = el('td', 'party');
    td.append(el('b', null, (p && p.number) || 'unknown'));
    if (p && p.name) td.append(el('small', null, p.name));
    return td;
  }
  let shown = new Set();
  function renderCalls() {
    const body = $('calls').tBodies[0];
    const rows = [];
    const next = new Set();
    for (const call of calls) {
      const tr = el('tr');
      tr.dataset.id = call.id;
      if (!shown.has(call.id)) tr.className = 'new';
      next.add(call.id);
      tr.append(party(call.from), party(call.to));
      const st = el('td', 'state');
      if (call.direction) st.append(el('small', 'dir', call.direction));
      st.append(el('span', 'st st-' + call.state, call.state));
      const dur = el('span', 'dur');
      dur.dataset.start = Date.parse(call.started_at);
      if (call.answered_at) dur.dataset.answered = Date.parse(call.answered_at);
      st.append(dur);
      tr.append(st);
      rows.push(tr);
    }
    shown = next;
    body.replaceChildren(...rows);
    $('calls-count').textContent = calls.length;
    $('calls-empty').hidden = calls.length > 0;
    tick();
  }
  function tick() {
    const now = Date.now();
    for (const d of $('calls').querySelectorAll('.dur')) {
      d.textContent = span(now - Number(d.dataset.start));
      if (d.dataset.answered) d.append(el('small', null, ' · talk ' + span(now - Number(d.dataset.answered))));
    }
  }

  const RANK = { ringing: 4, answered: 3, bridged: 3, held: 2 };
  const LABEL = { ringing: 'ringing', answered: 'talking', bridged: 'talking', held: 'on hold' };
  const isInternal = (n) => !n.startsWith('+') && n.length <= 6;
  function renderExts() {
    const state = new Map(calls.map((c) => [c.id, c.state]));
    const now = Date.now();
    const active = new Map();
    let external = 0;
    for (const x of extensions) {
      if (!isInternal(String(x.number))) { external += 1; continue; }
      let best = '';
      for (const id of x.calls || []) {
        const s = state.get(id) || 'answered';
        if ((RANK[s] || 0) > (RANK[best] || 0)) best = s;
      }
      active.set(x.number, { calls: (x.calls || []).length, state: best });
      seen.set(x.number, { name: x.name, last: now });
    }
    // Keep at most 60 extensions: the ones idle longest go first.
    const byAge = [...seen].filter(([n]) => !active.has(n)).sort((a, b) => a[1].last - b[1].last);
    while (seen.size > 60 && byAge.length) seen.delete(byAge.shift()[0]);
    const chips = [];
    const numbers = [...seen.keys()].sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
    for (const n of numbers) {
      const info = seen.get(n), on = active.get(n);
      const li = el('li', 'chip ' + (on ? 'c-' + on.state : 'idle'));
      li.dataset.number = n;
      li.append(el('b', null, n));
      if (info.name) li.append(el('span', 'nm', info.name));
      li.append(el('span', 'badge', on ? (on.calls === 1 ? LABEL[on.state] || on.state : on.calls + ' calls') : 'idle ' + span(now - info.last)));
      chips.push(li);
    }
    if (external) chips.push(el('li', 'chip ext', '+' + external + ' external number' + (external === 1 ? '' : 's')));
    $('exts').replaceChildren(...chips);
    $('exts-empty').hidden = chips.length > 0;
  }

  // ---- event feed ----
  let total = 0, paused = false, missed = 0;
  function addEvent(f) {
    total += 1;
    $('feed-total').textContent = total;
    $('feed').dataset.total = total;
    if (paused) { missed += 1; $('pause').textContent = 'Resume (' + missed + ' new)'; return; }
    const li = el('li');
    const rk = String(f.routing_key || '');
    const name = String(f.name || rk.split('.')[1] || 'event');
    li.append(el('time', null, clock(new Date())), el('span', 'ev ev-' + name.split('_').pop().toLowerCase(), name));
    const d = f.data;
    if (d && typeof d === 'object') {
      // Blackhole sends Kazoo's normalised names, whatever the PBX.
      const from = d.caller_id_number, to = d.callee_id_number;
      if (from || to) li.append(el('span', 'who', (from || '?') + ' → ' + (to || '?')));
    }
    li.append(el('code', null, rk));
    const feed = $('feed');
    feed.prepend(li);
    while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
    $('feed-empty').hidden = true;
  }
  $('pause').addEventListener('click', () => {
    paused = !paused;
    missed = 0;
    $('pause').setAttribute('aria-pressed', String(paused));
    $('pause').textContent = paused ? 'Resume' : 'Pause';
    $('feed').setAttribute('aria-live', paused ? 'off' : 'polite');
  });

  // ---- Blackhole websocket ----
  let ws = null, tries = 0, retry = 0;
  function closeSocket() {
    clearTimeout(retry);
    if (ws) { const s = ws; ws = null; s.close(); }
  }
  function connect() {
    closeSocket();
    if (signingIn) return;
    setPill('ws-state', tries ? 'reconnecting' : 'connecting', 'wait');
    const sock = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/');
    ws = sock;
    sock.onopen = () => {
      const req = { action: 'subscribe', request_id: 'dashboard', name: 'callwire dashboard', data: { binding: '#' } };
      if (cred) req.auth_token = cred.secret;
      sock.send(JSON.stringify(req));
    };
    sock.onmessage = (m) => {
      if (sock !== ws) return;
      let f;
      try { f = JSON.parse(m.data); } catch (_) { return; }
      if (f.action === 'event') {
        addEvent(f);
        if (String(f.routing_key).startsWith('call.')) soon();
      } else if (f.action === 'reply' && f.request_id === 'dashboard') {
        if (f.status === 'success') { tries = 0; setPill('ws-state', 'live', 'ok'); refresh(); return; }
        const why = ((f.data && f.data.errors) || []).join('; ');
        if (/token/.test(why)) askSignIn(cred ? 'That secret was not accepted.' : 'This callwire asks for a credential.');
        else setPill('ws-state', 'refused: ' + why, 'bad');
      }
    };
    sock.onclose = () => {
      if (sock !== ws) return;
      ws = null;
      const wait = Math.min(30000, 500 * 2 ** tries) * (0.75 + Math.random() / 2);
      tries += 1;
      setPill('ws-state', 'retry in ' + Math.ceil(wait / 1000) + ' s', 'bad');
      retry = setTimeout(connect, wait);
    };
  }

  // ---- start ----
  showWho();
  health();
  refresh();
  connect();
  setInterval(health, 2000);
  setInterval(tick, 1000);
  let slow = 0;
  setInterval(() => {
    // The fallback poll: every 3 s while the socket is down, every 15 s while it is live.
    slow += 1;
    if (!ws || ws.readyState !== 1 || slow % 5 === 0) refresh();
  }, 3000);
  setInterval(() => { if (!signingIn) renderExts(); }, 5000);
})();
