// wpool dashboard: one module, no dependencies. It reads the JSON API of
// the server that serves it (same origin), polls /v1/stats every 2 s,
// follows /v1/events for live updates, and sends the bearer token the
// user gave (kept in localStorage) with every call.

const POLL_MS = 2000;
const WINDOW_MS = 5 * 60 * 1000;
const PREVIEW_BYTES = 64 * 1024;
const TOKEN_KEY = 'wpool.token';
const STATES = ['queued', 'scheduled', 'running', 'succeeded', 'failed', 'cancelled', 'expired'];
const FINAL = new Set(['succeeded', 'failed', 'cancelled', 'expired']);

const $ = (id) => document.getElementById(id);

/** Builds an element: `h('td', {className: 'num'}, 'text', child)`. */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k in el) el[k] = v;
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

// ---------------------------------------------------------------- formatting

function fmtDuration(us) {
  if (us === undefined || us === null || !Number.isFinite(us)) return '—';
  if (us < 1000) return `${Math.round(us)} µs`;
  const ms = us / 1000;
  if (ms < 10) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${Math.round(s - m * 60)}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}

function fmtAge(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m`;
  const hr = Math.floor(m / 60);
  if (hr < 48) return `${hr}h`;
  return `${Math.floor(hr / 24)}d`;
}

function fmtBytes(n) {
  if (n === undefined || n === null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

function fmtCount(n) {
  if (n === undefined || n === null) return '—';
  const steps = [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']];
  for (const [size, suffix] of steps) {
    if (n >= size) return `${(n / size).toFixed(n / size < 10 ? 1 : 0)}${suffix}`;
  }
  return String(n);
}

function fmtTime(ms) {
  if (!ms) return '—';
  const d = new Date(ms);
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
}

function fmtRate(v) {
  if (!Number.isFinite(v)) return '—';
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

// ---------------------------------------------------------------- the token

let memoryToken = null;
function getToken() {
  try { return localStorage.getItem(TOKEN_KEY) ?? memoryToken; } catch { return memoryToken; }
}
function setToken(token) {
  memoryToken = token;
  try {
    if (token === null) localStorage.removeItem(TOKEN_KEY);
    else localStorage.setItem(TOKEN_KEY, token);
  } catch { /* storage refused (private mode): the token lives in memory */ }
  $('forget-token').hidden = token === null;
}

let tokenWaiter = null;
let tokenGiven = null;

/** Shows the token form once, however many calls were refused; resolves
 *  when the user has given a token. */
function askToken(refused, message) {
  const why = $('token-why');
  if (refused) {
    why.textContent = `The server refused the token (401: ${message}). `
      + 'Enter the token `wpool serve` was started with (--token or WPOOL_TOKEN).';
    why.className = 'refused';
  } else {
    why.textContent = 'This server needs a token: enter the one `wpool serve` was started with '
      + '(--token or WPOOL_TOKEN).';
    why.className = '';
  }
  $('token-panel').hidden = false;
  if (!tokenWaiter) {
    tokenWaiter = new Promise((resolve) => { tokenGiven = resolve; });
    $('token-input').focus();
  }
  return tokenWaiter;
}

$('token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const value = $('token-input').value.trim();
  if (!value) return;
  setToken(value);
  $('token-input').value = '';
  $('token-panel').hidden = true;
  const resolve = tokenGiven;
  tokenWaiter = null;
  tokenGiven = null;
  if (resolve) resolve();
});

$('forget-token').addEventListener('click', () => {
  setToken(null);
  location.reload();
});

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function errorOf(res) {
  const text = await res.text().catch(() => '');
  try {
    const body = JSON.parse(text);
    if (body && body.error) return new ApiError(res.status, body.error.code, body.error.message);
  } catch { /* not JSON: say what came */ }
  return new ApiError(res.status, `http_${res.status}`, text.slice(0, 200) || res.statusText);
}

/** Calls the API; answers the parsed JSON (null for 204), or the Response
 *  itself with `raw`. A 401 asks for the token and tries again. */
async function api(path, { method = 'GET', body, raw = false, signal } = {}) {
  for (;;) {
    const token = getToken();
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(path, {
        method, headers, signal, cache: 'no-store',
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(0, 'unreachable', `the server cannot be reached (${e.message})`);
    }
    if (res.status === 401) {
      const err = await errorOf(res);
      // Another call may have been given a new token meanwhile.
      if (getToken() === token) await askToken(Boolean(token), err.message);
      continue;
    }
    if (!res.ok) throw await errorOf(res);
    if (raw) return res;
    if (res.status === 204) return null;
    return res.json();
  }
}

/** Reads at most `limit` bytes of a response; its whole size from
 *  Content-Length when the server sent one. */
async function readPrefix(res, limit) {
  const declared = Number(res.headers.get('Content-Length'));
  const reader = res.body.getReader();
  const chunks = [];
  let got = 0;
  let more = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    chunks.push(value);
    got += value.length;
    if (got >= limit) { more = true; break; }
  }
  if (more) await reader.cancel().catch(() => {});
  const bytes = new Uint8Array(Math.min(got, limit));
  let at = 0;
  for (const c of chunks) {
    const take = Math.min(c.length, bytes.length - at);
    bytes.set(c.subarray(0, take), at);
    at += take;
  }
  const total = Number.isFinite(declared) && declared > 0 ? declared : got;
  return { bytes, total, truncated: total > bytes.length };
}

// ---------------------------------------------------------------- messages

let bannerSource = null;
function showError(context, err) {
  const code = err && err.code && err.status ? ` [${err.code}, ${err.status}]` : '';
  $('banner-text').textContent = `${context}: ${err && err.message ? err.message : err}${code}`;
  $('banner').hidden = false;
  bannerSource = context;
}
function clearError(context) {
  if (context === undefined || bannerSource === context) {
    $('banner').hidden = true;
    bannerSource = null;
  }
}
$('banner-close').addEventListener('click', () => clearError());

let noticeTimer = null;
function notice(text) {
  const el = $('notice');
  el.textContent = text;
  el.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { el.hidden = true; }, 6000);
}

/** Asks before something that cannot be undone; resolves to true or false. */
function confirmAction(text, yes) {
  const dialog = $('confirm');
  $('confirm-text').textContent = text;
  $('confirm-yes').textContent = yes;
  dialog.returnValue = '';
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'yes'), { once: true });
  });
}

/** Runs an action from a button: disabled meanwhile, errors shown. */
async function act(button, context, fn) {
  button.disabled = true;
  try {
    clearError();
    await fn();
  } catch (e) {
    if (e.name !== 'AbortError') showError(context, e);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- stats and charts

const view = {
  stats: null,
  samples: [],
  tasks: [],
  modules: new Map(),
  filter: { state: '', labels: [] },
  route: { kind: 'overview' },
  task: null,
};

function renderCounts(stats) {
  const box = $('counts');
  box.replaceChildren();
  for (const state of STATES) {
    const n = stats.counts[state] ?? 0;
    const card = h('button', {
      type: 'button',
      className: `count${view.filter.state === state ? ' selected' : ''}`,
      title: `show ${state} tasks`,
      dataset: { state },
    }, h('span', { className: 'n' }, n), h('span', { className: `k state-name ${state}` }, state));
    card.addEventListener('click', () => {
      view.filter.state = view.filter.state === state ? '' : state;
      $('f-state').value = view.filter.state;
      renderCounts(stats);
      loadTasks();
    });
    box.append(card);
  }
}

function renderStats(stats) {
  view.stats = stats;
  $('version').textContent = stats.version ? `v${stats.version}` : '';
  renderCounts(stats);
  $('w-busy').textContent = stats.busy;
  $('w-idle').textContent = stats.idle;
  $('w-total').textContent = stats.workers;
  $('w-meter').max = Math.max(1, stats.workers);
  $('w-meter').value = stats.busy;
  const input = $('workers-input');
  if (document.activeElement !== input && !input.dataset.edited) input.value = stats.workers;
  renderPaused(stats.paused);
  const running = stats.counts.running ?? 0;
  document.title = running ? `wpool · ${running} running` : 'wpool';

  const now = Date.now();
  view.samples.push({ t: now, tp: stats.finished_per_sec ?? 0, qd: stats.counts.queued ?? 0 });
  while (view.samples.length && view.samples[0].t < now - WINDOW_MS) view.samples.shift();
  $('tp-now').textContent = `${fmtRate(stats.finished_per_sec ?? 0)}/s`;
  $('qd-now').textContent = String(stats.counts.queued ?? 0);
  drawCharts();
}

/** The pause button and note; a server without pausing shows neither. */
function renderPaused(paused) {
  $('pause').hidden = typeof paused !== 'boolean';
  $('pause').textContent = paused ? 'Resume queue' : 'Pause queue';
  $('paused-note').hidden = !paused;
}

function drawCharts() {
  const now = Date.now();
  drawChart($('chart-throughput'), view.samples.map((s) => [s.t, s.tp]), '--chart-a', fmtRate, now, false);
  drawChart($('chart-queue'), view.samples.map((s) => [s.t, s.qd]), '--chart-b', fmtCount, now, true);
}

/** A round number at or above `v`, for the top of an axis; even for
 *  counts, so that the middle line is a whole number too. */
function niceMax(v, integer) {
  if (integer) {
    const top = Math.max(2, Math.ceil(v));
    const p = 10 ** Math.floor(Math.log10(top));
    for (const m of [1, 2, 4, 5, 10]) if (m * p >= top && (m * p) % 2 === 0) return m * p;
    return 10 * p;
  }
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function drawChart(canvas, points, colorVar, fmt, now, integer) {
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const css = getComputedStyle(document.documentElement);
  const color = css.getPropertyValue(colorVar).trim() || '#4f46e5';
  const line = css.getPropertyValue('--line').trim() || '#ccc';
  const muted = css.getPropertyValue('--muted').trim() || '#666';
  const pad = { l: 40, r: 8, t: 8, b: 18 };
  const w = width - pad.l - pad.r;
  const hgt = height - pad.t - pad.b;
  const top = niceMax(Math.max(0, ...points.map((p) => p[1])), integer);
  const x = (t) => pad.l + ((t - (now - WINDOW_MS)) / WINDOW_MS) * w;
  const y = (v) => pad.t + hgt - (v / top) * hgt;

  ctx.font = '11px system-ui, sans-serif';
  ctx.lineWidth = 1;
  ctx.strokeStyle = line;
  ctx.fillStyle = muted;
  ctx.textBaseline = 'middle';
  ctx.textAlign = 'right';
  for (const v of [0, top / 2, top]) {
    ctx.beginPath();
    ctx.moveTo(pad.l, Math.round(y(v)) + 0.5);
    ctx.lineTo(pad.l + w, Math.round(y(v)) + 0.5);
    ctx.stroke();
    ctx.fillText(fmt(v), pad.l - 4, y(v));
  }
  ctx.textBaseline = 'alphabetic';
  ctx.textAlign = 'left';
  ctx.fillText('−5 min', pad.l, height - 4);
  ctx.textAlign = 'right';
  ctx.fillText('now', pad.l + w, height - 4);

  if (!points.length) return;
  ctx.beginPath();
  points.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  ctx.lineJoin = 'round';
  ctx.stroke();
  ctx.lineTo(x(points[points.length - 1][0]), y(0));
  ctx.lineTo(x(points[0][0]), y(0));
  ctx.closePath();
  ctx.globalAlpha = 0.15;
  ctx.fillStyle = color;
  ctx.fill();
  ctx.globalAlpha = 1;
}

new ResizeObserver(() => drawCharts()).observe($('chart-throughput'));
window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => drawCharts());

let polls = 0;
async function pollStats() {
  try {
    renderStats(await api('/v1/stats'));
    clearError('Statistics');
    if (polls % 10 === 0) loadModules();
    if (!streamLive && view.route.kind === 'overview') scheduleTasks();
    polls++;
  } catch (e) {
    showError('Statistics', e);
  } finally {
    if (view.route.kind === 'overview') updateAges();
    setTimeout(pollStats, POLL_MS);
  }
}

// ---------------------------------------------------------------- queue controls

$('pause').addEventListener('click', () => act($('pause'), 'Pause/resume', async () => {
  const pausing = !(view.stats && view.stats.paused);
  const answer = await api(pausing ? '/v1/queue/pause' : '/v1/queue/resume', { method: 'POST' });
  if (view.stats) view.stats.paused = answer.paused;
  renderPaused(answer.paused);
  notice(answer.paused ? 'Queue paused: no task starts until it is resumed.' : 'Queue resumed.');
}));

$('workers-input').addEventListener('input', (e) => { e.target.dataset.edited = '1'; });
// Escape gives the field back to the live count.
$('workers-input').addEventListener('keydown', (e) => {
  if (e.key !== 'Escape') return;
  delete e.target.dataset.edited;
  if (view.stats) e.target.value = view.stats.workers;
});
$('workers-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const input = $('workers-input');
  const workers = Number(input.value);
  const button = e.target.querySelector('button');
  act(button, 'Set workers', async () => {
    if (!Number.isInteger(workers) || workers < 1) {
      throw new ApiError(0, 'invalid', 'the worker count must be a whole number of 1 or more');
    }
    const answer = await api('/v1/workers', { method: 'PUT', body: { workers } });
    delete input.dataset.edited;
    input.value = answer.workers;
    notice(`Workers set to ${answer.workers}.`);
  });
});

// ---------------------------------------------------------------- tasks list

function taskDuration(task) {
  const history = task.history;
  if (Array.isArray(history) && history.length) {
    let us = 0;
    for (const a of history) us += a.duration_us ?? 0;
    const last = history[history.length - 1];
    if (task.state === 'running' && !last.outcome && last.started_at) {
      return { text: `${fmtDuration((Date.now() - last.started_at) * 1000 + us)}…`, title: 'running' };
    }
    return { text: fmtDuration(us), title: 'run time of every attempt' };
  }
  if (task.finished_at) {
    return {
      text: fmtDuration((task.finished_at - task.submitted_at) * 1000),
      title: 'from submission to finish',
    };
  }
  return { text: '—', title: '' };
}

function taskFuel(task) {
  if (!Array.isArray(task.history)) return null;
  let fuel = null;
  for (const a of task.history) if (a.fuel_consumed !== undefined && a.fuel_consumed !== null) fuel = (fuel ?? 0) + a.fuel_consumed;
  return fuel;
}

function moduleName(hash) {
  const m = view.modules.get(hash);
  return (m && m.settings && m.settings.name) || hash.slice(0, 12);
}

function stateBadge(state) {
  return h('span', { className: `state ${state}` }, state);
}

function labelChips(labels) {
  return Object.entries(labels || {}).map(([k, v]) => h('span', { className: 'label' }, `${k}=${v}`));
}

function renderTasks() {
  const body = $('tasks').tBodies[0];
  const rows = view.tasks.map((task) => {
    const duration = taskDuration(task);
    const fuel = taskFuel(task);
    const outcome = task.outcome ? task.outcome.kind : task.progress && !FINAL.has(task.state)
      ? `${task.progress[0]}${task.progress[1] ? `/${task.progress[1]}` : ''}` : '';
    const tr = h('tr', { tabIndex: 0, dataset: { id: task.id, state: task.state } },
      h('td', {}, h('code', {}, task.id)),
      h('td', {}, stateBadge(task.state)),
      h('td', { title: task.outcome ? task.outcome.message : '' }, outcome),
      h('td', { title: task.module }, moduleName(task.module)),
      h('td', { className: 'num' }, `${task.attempts}/${task.max_attempts}`),
      h('td', { className: 'num', title: duration.title }, duration.text),
      h('td', { className: 'num', title: fuel === null ? '' : String(fuel) }, fmtCount(fuel)),
      h('td', {}, labelChips(task.labels)),
      h('td', { className: 'num age', title: fmtTime(task.submitted_at), dataset: { at: task.submitted_at } },
        fmtAge(Date.now() - task.submitted_at)));
    const open = () => { location.hash = `#/tasks/${task.id}`; };
    tr.addEventListener('click', open);
    tr.addEventListener('keydown', (e) => { if (e.key === 'Enter') open(); });
    return tr;
  });
  body.replaceChildren(...rows);
  $('tasks-empty').hidden = rows.length > 0;
  if (view.tasks.some((t) => !view.modules.has(t.module))) loadModules();
}

function updateAges() {
  const now = Date.now();
  for (const td of $('tasks').querySelectorAll('td.age')) {
    td.textContent = fmtAge(now - Number(td.dataset.at));
  }
}

let tasksTimer = null;
let tasksLoading = false;
let tasksAgain = false;

/** Reloads the list soon, once for a burst of events. */
function scheduleTasks() {
  if (tasksTimer) return;
  tasksTimer = setTimeout(() => { tasksTimer = null; loadTasks(); }, 250);
}

async function loadTasks() {
  if (tasksLoading) { tasksAgain = true; return; }
  tasksLoading = true;
  try {
    const q = new URLSearchParams({ limit: '50' });
    if (view.filter.state) q.append('state', view.filter.state);
    for (const label of view.filter.labels) q.append('label', label);
    const list = await api(`/v1/tasks?${q}`);
    view.tasks = list.tasks;
    renderTasks();
    clearError('Tasks');
  } catch (e) {
    showError('Tasks', e);
  } finally {
    tasksLoading = false;
    if (tasksAgain) { tasksAgain = false; scheduleTasks(); }
  }
}

$('filters').addEventListener('submit', (e) => {
  e.preventDefault();
  view.filter.state = $('f-state').value;
  view.filter.labels = $('f-label').value.split(',').map((s) => s.trim()).filter(Boolean);
  const bad = view.filter.labels.find((l) => !l.includes('='));
  if (bad) {
    showError('Filter', new Error(`label \`${bad}\` must be written key=value`));
    return;
  }
  if (view.stats) renderCounts(view.stats);
  loadTasks();
});
$('f-clear').addEventListener('click', () => {
  $('f-state').value = '';
  $('f-label').value = '';
  view.filter = { state: '', labels: [] };
  if (view.stats) renderCounts(view.stats);
  loadTasks();
});

// ---------------------------------------------------------------- modules

let modulesLoading = false;
async function loadModules() {
  if (modulesLoading) return;
  modulesLoading = true;
  try {
    const list = await api('/v1/modules');
    const had = view.modules.size;
    view.modules = new Map(list.modules.map((m) => [m.hash, m]));
    const rows = list.modules.map((m) => h('tr', { dataset: { hash: m.hash } },
      h('td', {}, (m.settings && m.settings.name) || h('span', { className: 'muted' }, 'unnamed')),
      h('td', { title: m.hash }, h('code', {}, m.hash)),
      h('td', { className: 'num', title: `${m.size} bytes` }, fmtBytes(m.size))));
    $('modules').tBodies[0].replaceChildren(...rows);
    $('modules-empty').hidden = rows.length > 0;
    if (had !== view.modules.size && view.tasks.length) renderTasks();
    clearError('Modules');
  } catch (e) {
    showError('Modules', e);
  } finally {
    modulesLoading = false;
  }
}

// ---------------------------------------------------------------- the event stream

let streamLive = false;

function setLive(state, text) {
  const pill = $('live');
  pill.dataset.state = state;
  pill.textContent = text;
  streamLive = state === 'live';
}

/** Parses server-sent events from a byte stream: `event:` and `data:`
 *  lines, a blank line ends an event, `:` lines are comments. */
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let name = '';
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    for (;;) {
      const end = buffer.search(/\r\n|\r|\n/);
      if (end < 0) break;
      // A CR at the end of a chunk may be the first half of a CRLF.
      if (buffer[end] === '\r' && end === buffer.length - 1) break;
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + (buffer.startsWith('\r\n', end) ? 2 : 1));
      if (line === '') {
        if (data.length) onEvent(name || 'message', data.join('\n'));
        name = '';
        data = [];
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let v = colon < 0 ? '' : line.slice(colon + 1);
      if (v.startsWith(' ')) v = v.slice(1);
      if (field === 'event') name = v;
      else if (field === 'data') data.push(v);
    }
  }
}

const AFTER_EVENT = {
  started: 'running',
  retrying: 'scheduled',
  succeeded: 'succeeded',
  failed: 'failed',
  cancelled: 'cancelled',
  expired: 'expired',
  requeued: 'queued',
  interrupted: 'queued',
};

function onEvent(name, data) {
  if (name === 'lagged') {
    scheduleTasks();
    if (view.route.kind === 'task') scheduleTaskReload();
    return;
  }
  let event;
  try { event = JSON.parse(data); } catch { return; }
  const row = view.tasks.find((t) => t.id === event.id);
  if (name === 'progress') {
    if (row) row.progress = [event.done, event.total];
    if (view.route.kind === 'task' && view.route.id === event.id) renderProgress([event.done, event.total], 'running');
    return;
  }
  if (row && AFTER_EVENT[name]) {
    row.state = AFTER_EVENT[name];
    const tr = $('tasks').querySelector(`tr[data-id="${CSS.escape(event.id)}"]`);
    if (tr) {
      tr.dataset.state = row.state;
      tr.cells[1].replaceChildren(stateBadge(row.state));
    }
  }
  if (view.route.kind === 'overview') scheduleTasks();
  if (view.route.kind === 'task' && view.route.id === event.id) scheduleTaskReload();
}

async function followEvents() {
  let delay = 1000;
  for (;;) {
    setLive('connecting', 'connecting…');
    try {
      const res = await api('/v1/events', { raw: true });
      setLive('live', 'live');
      delay = 1000;
      // Whatever happened while we were away.
      if (view.route.kind === 'overview') scheduleTasks();
      else scheduleTaskReload();
      await readEvents(res.body, onEvent);
    } catch (e) {
      if (e.name === 'AbortError') return;
    }
    const seconds = Math.round(delay / 1000);
    setLive('retry', `reconnecting in ${seconds}s`);
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 30000);
  }
}

// ---------------------------------------------------------------- a task's page

let taskTimer = null;
function scheduleTaskReload() {
  if (taskTimer || view.route.kind !== 'task') return;
  taskTimer = setTimeout(() => { taskTimer = null; loadTask(view.route.id); }, 150);
}

function renderProgress(progress, state) {
  const row = $('t-progress-row');
  if (!progress || FINAL.has(state)) { row.hidden = true; return; }
  const [done, total] = progress;
  const bar = $('t-progress');
  if (total > 0) {
    bar.max = total;
    bar.value = Math.min(done, total);
    $('t-progress-text').textContent = `${done} / ${total} (${Math.round((100 * done) / total)}%)`;
  } else {
    bar.removeAttribute('value');
    $('t-progress-text').textContent = `${done} done`;
  }
  row.hidden = false;
}

function fact(dl, name, ...value) {
  dl.append(h('dt', {}, name), h('dd', {}, ...value));
}

/** Shows bytes as text when they are text, else a hex dump of the first. */
function showBytes(pre, note, { bytes, total, truncated }) {
  if (total === 0) {
    pre.textContent = '';
    note.textContent = '(empty)';
    return;
  }
  let text = null;
  try {
    // A prefix may end inside a character: `stream` holds those bytes back.
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes, { stream: truncated });
  } catch { /* not UTF-8: shown in hex */ }
  if (text !== null && !/[\u0000-\u0008\u000e-\u001f\u007f]/.test(text)) {
    if (!truncated) {
      try { text = JSON.stringify(JSON.parse(text), null, 2); } catch { /* not JSON: as it is */ }
    }
    pre.textContent = text;
    note.textContent = truncated
      ? `(text, ${fmtBytes(total)}; the first ${fmtBytes(bytes.length)})`
      : `(text, ${fmtBytes(total)})`;
    return;
  }
  const shown = bytes.subarray(0, 512);
  const lines = [];
  for (let i = 0; i < shown.length; i += 16) {
    const row = shown.subarray(i, i + 16);
    const hex = Array.from(row, (b) => b.toString(16).padStart(2, '0')).join(' ');
    const ascii = Array.from(row, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${i.toString(16).padStart(6, '0')}  ${hex.padEnd(47)}  ${ascii}`);
  }
  pre.textContent = lines.join('\n');
  note.textContent = `(binary, ${fmtBytes(total)}${total > shown.length ? `; the first ${shown.length} bytes in hex` : ''})`;
}

function base64Bytes(text) {
  const bin = atob(text);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}

const previews = { input: null, output: null };

async function loadInput(id) {
  const pre = $('t-input');
  const note = $('t-input-note');
  try {
    const res = await api(`/v1/tasks/${id}/input`, { raw: true });
    const prefix = await readPrefix(res, PREVIEW_BYTES);
    if (view.route.id === id) showBytes(pre, note, prefix);
  } catch (e) {
    if (view.route.id !== id) return;
    pre.textContent = '';
    note.textContent = `(not available: ${e.message})`;
  }
}

async function loadOutput(id, result) {
  const pre = $('t-output');
  const note = $('t-output-note');
  if (typeof result.output === 'string') {
    showBytes(pre, note, { bytes: new TextEncoder().encode(result.output), total: result.output_size ?? result.output.length, truncated: false });
    return;
  }
  if (typeof result.output_base64 === 'string') {
    const bytes = base64Bytes(result.output_base64);
    showBytes(pre, note, { bytes, total: bytes.length, truncated: false });
    return;
  }
  try {
    const res = await api(`/v1/tasks/${id}/output`, { raw: true });
    const prefix = await readPrefix(res, PREVIEW_BYTES);
    if (view.route.id === id) showBytes(pre, note, prefix);
  } catch (e) {
    if (view.route.id !== id) return;
    pre.textContent = '';
    note.textContent = `(not available: ${e.message})`;
  }
}

function renderHistory(history) {
  const body = $('t-history').tBodies[0];
  const list = Array.isArray(history) ? history : [];
  body.replaceChildren(...list.map((a) => h('tr', { dataset: { attempt: a.number } },
    h('td', { className: 'num' }, a.number),
    h('td', {}, a.outcome ? h('span', { className: `state ${a.outcome.kind === 'success' ? 'succeeded' : 'failed'}` }, a.outcome.kind) : h('span', { className: 'state running' }, 'running')),
    h('td', { className: 'msg' }, a.outcome ? a.outcome.message : ''),
    h('td', {}, fmtTime(a.started_at)),
    h('td', { className: 'num' }, a.outcome ? fmtDuration(a.duration_us) : '…'),
    h('td', { className: 'num', title: a.fuel_consumed ?? '' }, fmtCount(a.fuel_consumed)))));
  $('t-history-empty').hidden = list.length > 0;
  $('t-history-empty').textContent = Array.isArray(history) ? 'No attempt yet.' : 'This server does not report attempts.';
}

async function loadTask(id) {
  let answer;
  try {
    answer = await api(`/v1/tasks/${id}`);
  } catch (e) {
    if (view.route.id === id) showError(`Task ${id}`, e);
    return;
  }
  if (view.route.kind !== 'task' || view.route.id !== id) return;
  clearError(`Task ${id}`);
  const { task, result } = answer;
  view.task = answer;
  const final = FINAL.has(task.state);
  const badge = $('t-state');
  badge.className = `state ${task.state}`;
  badge.textContent = task.state;
  badge.dataset.state = task.state;
  $('t-cancel').hidden = final;
  $('t-retry').hidden = !final;
  $('t-delete').hidden = !final;
  renderProgress(task.progress, task.state);
  showRetryOf((task.labels && task.labels.retry_of) || retriedFrom.get(id));

  const dl = $('t-facts');
  dl.replaceChildren();
  const mod = view.modules.get(task.module);
  fact(dl, 'Module', mod && mod.settings && mod.settings.name ? `${mod.settings.name} ` : '', h('code', {}, task.module));
  if (task.outcome) fact(dl, 'Outcome', h('b', {}, task.outcome.kind), ` — ${task.outcome.message}`);
  fact(dl, 'Attempts', `${task.attempts} of at most ${task.max_attempts}`,
    task.interruptions ? ` (${task.interruptions} interrupted, at most ${task.max_interruptions})` : '');
  fact(dl, 'Priority', task.priority);
  if (Object.keys(task.labels || {}).length) fact(dl, 'Labels', labelChips(task.labels));
  if (task.idempotency_key) fact(dl, 'Idempotency key', h('code', {}, task.idempotency_key));
  fact(dl, 'Submitted', `${fmtTime(task.submitted_at)} (${fmtAge(Date.now() - task.submitted_at)} ago)`);
  if (task.run_at > task.submitted_at + 1000 && !final) fact(dl, 'Not before', fmtTime(task.run_at));
  if (task.expires_at && !final) fact(dl, 'Expires', fmtTime(task.expires_at));
  if (task.finished_at) fact(dl, 'Finished', fmtTime(task.finished_at));
  if (result) {
    fact(dl, 'Run time', fmtDuration(result.duration_us));
    if (result.fuel_consumed !== undefined) fact(dl, 'Fuel consumed', `${fmtCount(result.fuel_consumed)} (${result.fuel_consumed})`);
  }
  fact(dl, 'Limits', `timeout ${fmtDuration(task.timeout_ms * 1000)}, memory ${fmtBytes(task.memory)}`,
    task.fuel ? `, fuel ${fmtCount(task.fuel)}` : '');

  renderHistory(task.history ?? (result && result.history));
  $('t-log').textContent = result ? (result.log || '(empty)') : 'The log is shown once the task is final.';

  if (previews.input !== id) {
    previews.input = id;
    loadInput(id);
  }
  if (result && previews.output !== id) {
    previews.output = id;
    loadOutput(id, result);
  } else if (!result) {
    previews.output = null;
    $('t-output').textContent = '';
    $('t-output-note').textContent = '(once the task is final)';
  }
}

/** Names the task this one is a retry of (the server labels a retry
 *  `retry_of`; a retry made here is known before its first load). */
function showRetryOf(from) {
  $('t-retried').hidden = !from;
  if (from) {
    $('t-retried').replaceChildren('A retry of task ', h('a', { href: `#/tasks/${from}` }, h('code', {}, from)), '.');
  }
}

function showTask(id) {
  view.route = { kind: 'task', id };
  view.task = null;
  previews.input = null;
  previews.output = null;
  $('overview').hidden = true;
  $('task-view').hidden = false;
  $('t-id').textContent = id;
  const badge = $('t-state');
  badge.className = 'state';
  badge.textContent = '';
  delete badge.dataset.state;
  for (const el of ['t-cancel', 't-retry', 't-delete']) $(el).hidden = true;
  for (const el of ['t-input', 't-output', 't-log', 't-input-note', 't-output-note']) $(el).textContent = '';
  $('t-facts').replaceChildren();
  $('t-history').tBodies[0].replaceChildren();
  $('t-progress-row').hidden = true;
  showRetryOf(retriedFrom.get(id));
  window.scrollTo(0, 0);
  loadTask(id);
}

const retriedFrom = new Map();

$('t-cancel').addEventListener('click', async () => {
  const id = view.route.id;
  const running = view.task && view.task.task.state === 'running';
  const ok = await confirmAction(
    `Cancel task ${id}? ${running ? 'It is running and will be killed.' : 'It will never run.'}`,
    'Cancel task',
  );
  if (!ok) return;
  await act($('t-cancel'), 'Cancel', async () => {
    const answer = await api(`/v1/tasks/${id}`, { method: 'DELETE' });
    notice(`Task ${id}: ${answer.cancel}.`);
    await loadTask(id);
  });
});

$('t-retry').addEventListener('click', () => act($('t-retry'), 'Retry', async () => {
  const id = view.route.id;
  const answer = await api(`/v1/tasks/${id}/retry`, { method: 'POST' });
  retriedFrom.set(answer.task.id, id);
  notice(`Task ${id} submitted again as ${answer.task.id}.`);
  location.hash = `#/tasks/${answer.task.id}`;
}));

$('t-delete').addEventListener('click', async () => {
  const id = view.route.id;
  const ok = await confirmAction(
    `Delete task ${id}, its result, output and log? This cannot be undone.`,
    'Delete task',
  );
  if (!ok) return;
  await act($('t-delete'), 'Delete', async () => {
    await api(`/v1/tasks/${id}/delete`, { method: 'POST' });
    notice(`Task ${id} deleted.`);
    location.hash = '#/';
  });
});

// ---------------------------------------------------------------- routing

function route() {
  const match = /^#\/tasks\/([0-9A-Za-z]+)$/.exec(location.hash);
  if (match) {
    showTask(match[1]);
    return;
  }
  view.route = { kind: 'overview' };
  $('task-view').hidden = true;
  $('overview').hidden = false;
  drawCharts();
  loadTasks();
}

window.addEventListener('hashchange', route);
setToken(getToken());
route();
pollStats();
loadModules();
followEvents();
