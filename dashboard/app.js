// Switchyard operator dashboard: polls the admin API (bearer token from sessionStorage) and draws expert load,
// workers, request latencies and the placement; dry-runs and applies rebalancing; edits placements; runs the
// capacity planner on an uploaded load trace. Plain browser JavaScript, no build step; charts by uPlot (global).
// Everything the server sends is put into the page as text (textContent, attributes), never parsed as HTML.

const TOKEN_KEY = 'switchyard.adminToken';
const POLL_MS = 1500;
const HISTORY_MS = 5 * 60 * 1000;
const MAX_COLUMNS = Math.ceil(HISTORY_MS / POLL_MS);
const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];

const $ = (id) => document.getElementById(id);

/** A DOM element; children are Nodes or text (strings become text nodes, never HTML). */
function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k === 'style') Object.assign(e.style, v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

const fmt = (x, digits = 1) => (x === null || x === undefined || !Number.isFinite(x) ? '–' : x.toFixed(digits));
const pct = (x) => (x === null || x === undefined ? '–' : `${(x * 100).toFixed(1)} %`);

/** White → dark blue for t in [0, 1] (the planner's SVG uses the same ramp). */
function shade(t) {
  const u = Math.max(0, Math.min(1, t));
  const mix = (a, b) => Math.round(a + (b - a) * u);
  return `rgb(${mix(255, 8)},${mix(255, 48)},${mix(255, 107)})`;
}

function show(node, visible) { node.hidden = !visible; }

function showError(node, message) {
  node.textContent = message;
  show(node, Boolean(message));
}

// ---------------------------------------------------------------------------------------------------------------
// The admin API

class ApiError extends Error {
  constructor(status, message, type) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

let token = null;

/** Calls the admin API with the bearer token; resolves to the JSON body, rejects with ApiError. */
async function api(path, { method = 'GET', body, contentType = 'application/json' } = {}) {
  if (!token) throw new ApiError(401, 'not connected', 'unauthorized');
  let res;
  try {
    res = await fetch(path, {
      method, body, cache: 'no-store',
      headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': contentType } : {}) },
    });
  } catch (error) {
    throw new ApiError(0, `the gateway cannot be reached (${error.message})`, 'network');
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) throw new ApiError(res.status, (data && typeof data.error === 'string') ? data.error : `HTTP ${res.status}`, data && data.error_type);
  return data;
}

// ---------------------------------------------------------------------------------------------------------------
// State

const state = {
  meta: null,          // {layers, experts, workers, max_workers, max_experts_per_worker}
  placement: null,     // placement file
  lastLoad: null,
  prevCumulative: null,
  heat: [],            // [{t, counts: number[] (layer·experts + expert)}]
  series: { t: [], balance: [], perLayer: [], busy: [], reqRate: [], tokRate: [], ttft50: [], ttft99: [], tpot50: [], tpot99: [] },
  charts: {},
  dryRun: null,
  editorChecked: null,
  timer: null,
  generation: 0,
};

function setStatus(kind, text) {
  const s = $('status');
  s.className = `status ${kind}`;
  s.textContent = text;
}

// ---------------------------------------------------------------------------------------------------------------
// Connecting

const metaOf = (load) => ({
  layers: load.layers, experts: load.experts, workers: load.workers, max_workers: load.max_workers, max_experts_per_worker: load.max_experts_per_worker,
});

async function connect(candidate) {
  state.generation++;
  token = candidate;
  showError($('login-error'), '');
  setStatus('', 'connecting…');
  try {
    state.meta = metaOf(await api('/admin/load'));
  } catch (error) {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    setStatus('stale', 'not connected');
    showError($('login-error'), error.status === 401
      ? `The gateway refused this token: ${error.message}`
      : `Cannot read the admin API: ${error.message}`);
    show($('login'), true);
    show($('main'), false);
    return false;
  }
  sessionStorage.setItem(TOKEN_KEY, candidate);
  show($('login'), false);
  show($('main'), true);
  show($('logout'), true);
  $('token').value = '';
  await refreshPlacement();
  await poll();
  return true;
}

function disconnect(message) {
  state.generation++;
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(state.timer);
  show($('main'), false);
  show($('logout'), false);
  show($('login'), true);
  setStatus('stale', 'not connected');
  showError($('login-error'), message || '');
}

// ---------------------------------------------------------------------------------------------------------------
// Polling

async function poll(generation = state.generation) {
  clearTimeout(state.timer);
  // One polling loop per connection: a loop from an earlier connect (or a second click) stops here.
  if (!token || generation !== state.generation) return;
  try {
    const [load, requests] = await Promise.all([api('/admin/load'), api('/admin/requests').catch((e) => (e.status === 404 ? null : Promise.reject(e)))]);
    const now = Date.now();
    state.meta = metaOf(load);
    await refreshPlacement(); // another operator (or autoRebalance) may have changed it
    state.lastLoad = load;
    recordHistory(now, load, requests);
    drawLoadGrid();
    drawHeatHistory();
    drawWorkers(load);
    drawRequests(requests);
    drawCharts();
    showError($('error'), '');
    setStatus('live', `live · updated ${new Date(now).toLocaleTimeString()}`);
  } catch (error) {
    if (error.status === 401) {
      disconnect(`The gateway no longer accepts the token: ${error.message}`);
      return;
    }
    setStatus('stale', 'stale');
    showError($('error'), `Update failed: ${error.message}`);
  }
  if (token && generation === state.generation) state.timer = setTimeout(() => poll(generation), POLL_MS);
}

function recordHistory(now, load, requests) {
  const { layers, experts } = load;
  // Per-poll routed tokens: the difference of the cumulative (since start) counts between two polls.
  const cumulative = load.windows.since_start.tokens_per_expert.flat();
  const prev = state.prevCumulative;
  if (prev && prev.length === cumulative.length) {
    const delta = cumulative.map((x, i) => Math.max(0, x - prev[i]));
    state.heat.push({ t: now, layers, experts, counts: delta });
  }
  state.prevCumulative = cumulative;
  while (state.heat.length > MAX_COLUMNS || (state.heat.length && state.heat[0].t < now - HISTORY_MS)) state.heat.shift();

  const s = state.series;
  const w10 = load.windows['10s'];
  s.t.push(now / 1000);
  s.balance.push(w10.tokens > 0 ? w10.balancedness.overall : null);
  for (let l = 0; l < layers; l++) (s.perLayer[l] ??= new Array(s.t.length - 1).fill(null)).push(w10.tokens > 0 ? w10.balancedness.per_layer[l] : null);
  const workers = w10.workers.length;
  for (let w = 0; w < Math.max(workers, s.busy.length); w++) {
    s.busy[w] ??= new Array(s.t.length - 1).fill(null);
    s.busy[w].push(w < workers ? w10.workers[w].busy_fraction : null);
  }
  const r10 = requests ? requests.windows['10s'] : null;
  s.reqRate.push(r10 ? r10.requests_per_s : null);
  s.tokRate.push(r10 ? r10.output_tokens_per_s : null);
  s.ttft50.push(r10 ? r10.ttft_ms.p50 : null);
  s.ttft99.push(r10 ? r10.ttft_ms.p99 : null);
  s.tpot50.push(r10 ? r10.tpot_ms.p50 : null);
  s.tpot99.push(r10 ? r10.tpot_ms.p99 : null);
  const cut = s.t.findIndex((t) => t >= (now - HISTORY_MS) / 1000);
  if (cut > 0) {
    for (const key of Object.keys(s)) {
      if (key === 'perLayer' || key === 'busy') s[key].forEach((xs) => xs.splice(0, cut));
      else s[key].splice(0, cut);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Expert load

function drawLoadGrid() {
  const load = state.lastLoad;
  const windowName = $('load-window').value;
  const w = load.windows[windowName];
  const table = $('load-grid');
  const head = el('tr', {}, el('th', {}, 'layer'), ...Array.from({ length: load.experts }, (_, e) => el('th', {}, `e${e}`)), el('th', {}, 'balanced'));
  const rows = w.tokens_per_expert.map((row, l) => {
    const total = row.reduce((a, b) => a + b, 0);
    return el('tr', {},
      el('th', {}, `L${l}`),
      ...row.map((n, e) => {
        const share = total > 0 ? n / total : 0;
        const t = share * load.experts / 2;
        return el('td', {
          class: t > 0.55 ? 'dark' : '',
          dataset: { layer: l, expert: e, tokens: n },
          title: `layer ${l} expert ${e}: ${n} tokens (${(share * 100).toFixed(1)} % of the layer)`,
          style: { background: shade(t) },
        }, String(n));
      }),
      el('td', {}, fmt(w.balancedness.per_layer[l], 3)));
  });
  table.replaceChildren(el('thead', {}, head), el('tbody', {}, rows));
}

function drawHeatHistory() {
  const canvas = $('load-history');
  const ctx = canvas.getContext('2d');
  const { layers, experts } = state.meta;
  const rows = layers * experts;
  const gap = 4;
  const left = 34;
  const rowH = Math.max(2, Math.floor((canvas.height - gap * (layers - 1)) / rows));
  const colW = (canvas.width - left) / MAX_COLUMNS;
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = '#6b7280';
  ctx.font = '10px sans-serif';
  for (let l = 0; l < layers; l++) ctx.fillText(`L${l}`, 4, l * (experts * rowH + gap) + 10);
  const columns = state.heat.filter((c) => c.layers === layers && c.experts === experts);
  let filled = 0;
  columns.forEach((col, i) => {
    const x = left + (MAX_COLUMNS - columns.length + i) * colW;
    let any = false;
    for (let l = 0; l < layers; l++) {
      const slice = col.counts.slice(l * experts, (l + 1) * experts);
      const total = slice.reduce((a, b) => a + b, 0);
      if (total > 0) any = true;
      for (let e = 0; e < experts; e++) {
        ctx.fillStyle = total > 0 ? shade((slice[e] / total) * experts / 2) : '#f1f2f4';
        ctx.fillRect(x, l * (experts * rowH + gap) + e * rowH, Math.ceil(colW), rowH);
      }
    }
    if (any) filled++;
  });
  canvas.dataset.columns = String(columns.length);
  canvas.dataset.filledColumns = String(filled);
}

// ---------------------------------------------------------------------------------------------------------------
// Workers and hosts

function drawWorkers(load) {
  const w10 = load.windows['10s'];
  const all = load.windows.since_start;
  const hosted = expertsPerWorker();
  $('workers').replaceChildren(
    el('thead', {}, el('tr', {}, ...['worker', 'tokens', 'busy', 'compute ms', 'experts hosted', 'tokens since start'].map((h) => el('th', {}, h)))),
    el('tbody', {}, w10.workers.map((w) => el('tr', { dataset: { worker: w.worker } },
      el('td', {}, `worker ${w.worker}`),
      el('td', {}, String(w.tokens)),
      el('td', {}, el('span', { class: 'bar', style: { width: `${Math.round(w.busy_fraction * 80)}px` } }), pct(w.busy_fraction)),
      el('td', {}, fmt(w.compute_ms, 1)),
      el('td', {}, hosted ? String(hosted[w.worker] ?? 0) : '–'),
      el('td', {}, String(all.workers[w.worker] ? all.workers[w.worker].tokens : 0)),
    ))));
  const hosts = w10.hosts || [];
  show($('hosts-block'), hosts.length > 0);
  if (hosts.length > 0) {
    $('hosts').replaceChildren(
      el('thead', {}, el('tr', {}, ...['host', 'tokens', 'busy', 'compute ms'].map((h) => el('th', {}, h)))),
      el('tbody', {}, hosts.map((h) => el('tr', {}, el('td', {}, h.host), el('td', {}, String(h.tokens)),
        el('td', {}, pct(h.busy_fraction)), el('td', {}, fmt(h.compute_ms, 1))))));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Requests

function drawRequests(requests) {
  const table = $('requests');
  if (!requests) {
    table.replaceChildren(el('tbody', {}, el('tr', {}, el('td', {}, 'request statistics are not available on this server'))));
    return;
  }
  const names = Object.keys(requests.windows);
  const row = (label, f) => el('tr', {}, el('td', {}, label), ...names.map((n) => el('td', {}, f(requests.windows[n]))));
  const p = (x) => `${fmt(x.p50, 1)} / ${fmt(x.p90, 1)} / ${fmt(x.p99, 1)}`;
  table.replaceChildren(
    el('thead', {}, el('tr', {}, el('th', {}, ''), ...names.map((n) => el('th', {}, `last ${n}`)))),
    el('tbody', {},
      row('requests / s', (w) => fmt(w.requests_per_s, 2)),
      row('output tokens / s', (w) => fmt(w.output_tokens_per_s, 1)),
      row('requests finished (errors)', (w) => `${w.finished} (${w.errors})`),
      row('TTFT ms p50 / p90 / p99', (w) => p(w.ttft_ms)),
      row('time per output token ms p50 / p90 / p99', (w) => p(w.tpot_ms)),
      row('duration ms p50 / p99', (w) => `${fmt(w.duration_ms.p50, 0)} / ${fmt(w.duration_ms.p99, 0)}`)));
}

// ---------------------------------------------------------------------------------------------------------------
// Charts (uPlot)

/** Creates or updates a uPlot chart; recreated when its series change (e.g. the worker count). */
function chart(key, target, labels, data, axes = {}) {
  if (typeof uPlot === 'undefined') return;
  const signature = labels.join('|');
  let c = state.charts[key];
  if (c && c.signature !== signature) {
    c.plot.destroy();
    c = null;
  }
  if (!c) {
    const width = Math.max(300, target.clientWidth || 600);
    const opts = {
      width, height: 200,
      scales: { x: { time: true }, ...(axes.scales || {}) },
      axes: [{}, { label: axes.y || '' }, ...(axes.extra || [])],
      series: [{}, ...labels.map((label, i) => ({ label, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: false, ...(axes.series?.[i] || {}) }))],
    };
    c = { signature, target, plot: new uPlot(opts, data, target) };
    state.charts[key] = c;
  } else {
    c.plot.setData(data);
  }
}

function drawCharts() {
  const s = state.series;
  if (s.t.length === 0) return;
  chart('balance', $('chart-balance'), ['overall', ...s.perLayer.map((_, l) => `layer ${l}`)], [s.t, s.balance, ...s.perLayer],
    { y: 'balancedness', scales: { y: { range: [0, 1] } } });
  chart('busy', $('chart-busy'), s.busy.map((_, w) => `worker ${w}`), [s.t, ...s.busy], { y: 'busy fraction', scales: { y: { range: [0, 1] } } });
  chart('rate', $('chart-rate'), ['output tokens/s', 'requests/s'], [s.t, s.tokRate, s.reqRate], {
    y: 'tokens/s', scales: { rps: {} }, series: [{}, { scale: 'rps' }], extra: [{ scale: 'rps', side: 1, label: 'requests/s', grid: { show: false } }],
  });
  chart('latency', $('chart-latency'), ['TTFT p50', 'TTFT p99', 'TPOT p50', 'TPOT p99'], [s.t, s.ttft50, s.ttft99, s.tpot50, s.tpot99], { y: 'ms' });
}

// ---------------------------------------------------------------------------------------------------------------
// Placement

function expertsPerWorker(file = state.placement) {
  if (!file) return null;
  const n = new Array(file.workers).fill(0);
  for (const a of file.assignments) for (const w of a.workers) if (w < n.length) n[w]++;
  return n;
}

/** hosts[layer][expert] = sorted workers, from a placement file. */
function hostsOf(file, layers, experts) {
  const hosts = Array.from({ length: layers }, () => Array.from({ length: experts }, () => []));
  for (const a of file.assignments) {
    if (a.layer < layers && a.expert < experts) hosts[a.layer][a.expert] = [...new Set([...hosts[a.layer][a.expert], ...a.workers])].sort((x, y) => x - y);
  }
  return hosts;
}

async function refreshPlacement() {
  const file = await api('/admin/placement');
  if (JSON.stringify(file) === JSON.stringify(state.placement)) return;
  state.placement = file;
  drawPlacement();
}

function drawPlacement() {
  const file = state.placement;
  const meta = state.meta;
  if (!file || !meta) return;
  const hosts = hostsOf(file, meta.layers, meta.experts);
  const replicas = hosts.flat().reduce((n, ws) => n + ws.length - 1, 0);
  const perWorker = expertsPerWorker(file);
  $('placement-summary').textContent = `${file.workers} workers; experts per worker ${perWorker.join(', ')}; ${replicas} extra replicas` +
    (meta.max_experts_per_worker ? `; budget ${meta.max_experts_per_worker} per worker` : '') + `; at most ${meta.max_workers} workers`;
  const table = $('placement-grid');
  table.dataset.workers = String(file.workers);
  table.replaceChildren(
    el('thead', {}, el('tr', {}, el('th', {}, 'layer'), ...Array.from({ length: meta.experts }, (_, e) => el('th', {}, `e${e}`)))),
    el('tbody', {}, hosts.map((row, l) => el('tr', {}, el('th', {}, `L${l}`), ...row.map((ws, e) => el('td', {
      class: ws.length > 1 ? 'replicated' : '',
      dataset: { layer: l, expert: e, workers: ws.join(',') },
      title: `layer ${l} expert ${e} on worker${ws.length > 1 ? 's' : ''} ${ws.join(', ')}`,
      style: { background: `${PALETTE[ws[0] % PALETTE.length]}33` },
    }, ws.join(',')))))));
}

function movesBetween(before, after, layers, experts) {
  const a = hostsOf(before, layers, experts);
  const b = hostsOf(after, layers, experts);
  const moves = [];
  for (let l = 0; l < layers; l++) {
    for (let e = 0; e < experts; e++) {
      if (a[l][e].join(',') !== b[l][e].join(',')) moves.push({ layer: l, expert: e, from: a[l][e], to: b[l][e] });
    }
  }
  return moves;
}

async function dryRun(event) {
  event.preventDefault();
  const body = { dry_run: true };
  const workers = $('rebalance-workers').value.trim();
  const windowS = $('rebalance-window').value.trim();
  if (workers) body.workers = Number(workers);
  if (windowS) body.window_s = Number(windowS);
  show($('apply-result'), false);
  try {
    const plan = await api('/admin/rebalance', { method: 'POST', body: JSON.stringify(body) });
    await refreshPlacement();
    state.dryRun = plan;
    const { layers, experts } = state.meta;
    const moves = movesBetween(state.placement, plan.placement, layers, experts);
    $('rebalance-summary').textContent = `Planned from ${plan.tokens} tokens over the last ${fmt(plan.window_s, 0)} s: ` +
      `balancedness ${fmt(plan.predicted.before.overall, 3)} → ${fmt(plan.predicted.after.overall, 3)} on ${plan.placement.workers} workers, ` +
      `${plan.replicas.flat().reduce((n, r) => n + r - 1, 0)} extra replicas, ${moves.length} experts change hosts.` + (plan.reason ? ` (${plan.reason})` : '');
    $('rebalance-balance').replaceChildren(
      el('thead', {}, el('tr', {}, el('th', {}, ''), el('th', {}, 'overall'), ...plan.predicted.before.per_layer.map((_, l) => el('th', {}, `L${l}`)))),
      el('tbody', {},
        el('tr', {}, el('td', {}, 'before'), el('td', {}, fmt(plan.predicted.before.overall, 3)), ...plan.predicted.before.per_layer.map((x) => el('td', {}, fmt(x, 3)))),
        el('tr', {}, el('td', {}, 'after'), el('td', {}, fmt(plan.predicted.after.overall, 3)), ...plan.predicted.after.per_layer.map((x) => el('td', {}, fmt(x, 3))))));
    $('rebalance-moves').replaceChildren(...(moves.length ? moves.map((m) => el('li', {}, `layer ${m.layer} expert ${m.expert}: workers [${m.from.join(', ')}] → [${m.to.join(', ')}]`))
      : [el('li', {}, 'no expert changes hosts')]));
    $('rebalance-apply').disabled = moves.length === 0 && plan.placement.workers === state.placement.workers;
    show($('rebalance-result'), true);
    showError($('error'), '');
  } catch (error) {
    if (error.status === 401) return disconnect(`The gateway refused the token: ${error.message}`);
    showError($('error'), `Dry run failed: ${error.message}`);
  }
}

async function applyPlacement(file, source) {
  show($('apply-result'), false);
  try {
    const result = await api('/admin/placement', { method: 'PUT', body: JSON.stringify(file) });
    state.placement = result.placement;
    drawPlacement();
    const c = result.change;
    $('apply-result').textContent = `Applied ${source}: ${c.loaded.length} expert copies loaded, ${c.unloaded.length} unloaded, ` +
      `${c.workers_added} workers added, ${c.workers_retired} retired, in ${fmt(c.ms, 0)} ms.`;
    show($('apply-result'), true);
    showError($('error'), '');
    return true;
  } catch (error) {
    if (error.status === 401) { disconnect(`The gateway refused the token: ${error.message}`); return false; }
    showError($('error'), `Applying ${source} failed: ${error.message}`);
    return false;
  }
}

/** The server's checks (src/placement/placement.ts validatePlacement), in the browser; returns problems. */
function validatePlacementText(text) {
  const meta = state.meta;
  let file;
  try { file = JSON.parse(text); } catch (error) { return [`not valid JSON: ${error.message}`]; }
  const problems = [];
  const isInt = (x) => Number.isInteger(x) && x >= 0;
  if (typeof file !== 'object' || file === null || Array.isArray(file)) return ['expected an object {"workers": N, "assignments": [...]}'];
  const extra = Object.keys(file).filter((k) => k !== 'workers' && k !== 'assignments');
  if (extra.length) problems.push(`unknown field(s) ${extra.join(', ')}; only "workers" and "assignments"`);
  if (!Number.isInteger(file.workers) || file.workers < 1) return [...problems, '"workers" must be an integer ≥ 1'];
  if (file.workers > meta.max_workers) problems.push(`workers is ${file.workers}, but at most ${meta.max_workers} are allowed (admin.maxWorkers)`);
  if (!Array.isArray(file.assignments)) return [...problems, '"assignments" must be a list of {"layer", "expert", "workers"}'];
  const hosts = Array.from({ length: meta.layers }, () => Array.from({ length: meta.experts }, () => new Set()));
  file.assignments.forEach((a, i) => {
    if (typeof a !== 'object' || a === null || !isInt(a.layer) || !isInt(a.expert) || !Array.isArray(a.workers) || a.workers.length === 0 || !a.workers.every(isInt)) {
      problems.push(`assignments.${i}: needs integer "layer" and "expert" and a non-empty list of worker ids`);
      return;
    }
    const keys = Object.keys(a).filter((k) => !['layer', 'expert', 'workers'].includes(k));
    if (keys.length) problems.push(`assignments.${i}: unknown field(s) ${keys.join(', ')}`);
    if (a.layer >= meta.layers) problems.push(`assignments.${i}: layer ${a.layer} does not exist; the model has layers 0..${meta.layers - 1}`);
    if (a.expert >= meta.experts) problems.push(`assignments.${i}: expert ${a.expert} does not exist; the model has experts 0..${meta.experts - 1}`);
    const bad = a.workers.filter((w) => w >= file.workers);
    if (bad.length) problems.push(`assignments.${i}: layer ${a.layer} expert ${a.expert} is placed on worker ${bad.join(', ')}, but workers are 0..${file.workers - 1}`);
    if (a.layer < meta.layers && a.expert < meta.experts) for (const w of a.workers) if (w < file.workers) hosts[a.layer][a.expert].add(w);
  });
  const orphans = hosts.flatMap((row, l) => row.flatMap((ws, e) => (ws.size === 0 ? [`${l}.${e}`] : [])));
  if (orphans.length) problems.push(`every expert must be hosted at least once; not placed (layer.expert): ${orphans.join(', ')}`);
  if (meta.max_experts_per_worker !== null) {
    for (let w = 0; w < file.workers; w++) {
      const held = hosts.reduce((n, row) => n + row.filter((ws) => ws.has(w)).length, 0);
      if (held > meta.max_experts_per_worker) problems.push(`worker ${w} would hold ${held} experts, over the budget of ${meta.max_experts_per_worker} (placement.maxExpertsPerWorker)`);
    }
  }
  return problems;
}

function validateEditor() {
  const text = $('placement-editor').value;
  const problems = validatePlacementText(text);
  $('editor-problems').replaceChildren(...(problems.length ? problems.map((p) => el('li', {}, p)) : [el('li', { class: 'ok-item' }, 'valid: ready to apply')]));
  $('editor-problems').className = problems.length ? 'error-list' : 'ok-list';
  state.editorChecked = problems.length ? null : text;
  $('editor-apply').disabled = problems.length > 0;
  return problems.length === 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Capacity planner

let planSvgUrl = null;

async function runPlan(event) {
  event.preventDefault();
  showError($('plan-error'), '');
  const file = $('plan-file').files[0];
  if (!file) return showError($('plan-error'), 'Choose a load trace file (JSON lines, telemetry.loadTraceFile) first.');
  const query = new URLSearchParams();
  for (const [id, name] of [['plan-workers-max', 'workers_max'], ['plan-cores', 'cores'], ['plan-target', 'target_tokens_per_s'], ['plan-p99', 'p99_ms'], ['plan-max-experts', 'max_experts_per_worker']]) {
    const v = $(id).value.trim();
    if (v) query.set(name, v);
  }
  $('plan-run').disabled = true;
  $('plan-run').textContent = 'Planning…';
  try {
    const plan = await api(`/admin/plan?${query}`, { method: 'POST', body: file, contentType: 'application/x-ndjson' });
    const r = plan.recommended;
    $('plan-recommended').replaceChildren(
      el('strong', { id: 'plan-workers' }, `${r.workers} worker${r.workers === 1 ? '' : 's'}`),
      ` recommended (${r.reason}): predicted ${fmt(r.output_tokens_per_s, 1)} output tokens/s, ${fmt(r.tokens_per_s, 1)} tokens/s, ` +
      `balancedness ${fmt(r.balancedness, 3)}, p99 step ${fmt(r.step_ms_p99, 2)} ms. Trace: ${plan.trace.steps} steps, ${plan.trace.layers} layers × ${plan.trace.experts} experts` +
      (plan.trace.skipped ? `, ${plan.trace.skipped} malformed lines skipped` : '') + '.');
    $('plan-scenarios').replaceChildren(
      el('thead', {}, el('tr', {}, ...['workers', 'replicas', 'balancedness rr → planned', 'output tok/s rr → planned', 'tokens/s', 'step p50 / p99 ms'].map((h) => el('th', {}, h)))),
      el('tbody', {}, plan.scenarios.map((s) => el('tr', { class: s.workers === r.workers ? 'recommended' : '' },
        el('td', {}, `${s.workers}${s.workers === r.workers ? ' *' : ''}`), el('td', {}, String(s.replicas)),
        el('td', {}, `${fmt(s.balancedness.round_robin, 3)} → ${fmt(s.balancedness.planned, 3)}`),
        el('td', {}, `${fmt(s.output_tokens_per_s.round_robin, 1)} → ${fmt(s.output_tokens_per_s.planned, 1)}`),
        el('td', {}, fmt(s.tokens_per_s, 1)), el('td', {}, `${fmt(s.step_ms_p50, 3)} / ${fmt(s.step_ms_p99, 3)}`)))));
    // The SVG goes in an <img> from a blob: drawn as an image, nothing in it can run or reach the page.
    if (planSvgUrl) URL.revokeObjectURL(planSvgUrl);
    planSvgUrl = URL.createObjectURL(new Blob([plan.svg], { type: 'image/svg+xml' }));
    $('plan-svg').src = planSvgUrl;
    $('plan-text').textContent = plan.text;
    state.planPlacement = r.placement;
    show($('plan-result'), true);
  } catch (error) {
    if (error.status === 401) return disconnect(`The gateway refused the token: ${error.message}`);
    showError($('plan-error'), `Planning failed (${error.status || 'network'}): ${error.message}`);
  } finally {
    $('plan-run').disabled = false;
    $('plan-run').textContent = 'Plan';
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Wiring

function start() {
  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const candidate = $('token').value.trim();
    if (candidate) connect(candidate);
  });
  $('logout').addEventListener('click', () => disconnect(''));
  $('load-window').addEventListener('change', () => state.lastLoad && drawLoadGrid());
  $('rebalance-form').addEventListener('submit', dryRun);
  $('rebalance-apply').addEventListener('click', async () => {
    if (!state.dryRun) return;
    if (await applyPlacement(state.dryRun.placement, 'the rebalanced placement')) {
      show($('rebalance-result'), false);
      state.dryRun = null;
    }
  });
  $('editor-load').addEventListener('click', async () => {
    try { await refreshPlacement(); } catch (error) { return showError($('error'), error.message); }
    $('placement-editor').value = JSON.stringify(state.placement, null, 1);
    validateEditor();
  });
  $('placement-editor').addEventListener('input', () => {
    $('editor-apply').disabled = true;
    state.editorChecked = null;
  });
  $('editor-validate').addEventListener('click', validateEditor);
  $('editor-apply').addEventListener('click', async () => {
    const text = $('placement-editor').value;
    if (state.editorChecked !== text && !validateEditor()) return;
    await applyPlacement(JSON.parse(text), 'the edited placement');
  });
  $('plan-form').addEventListener('submit', runPlan);
  window.addEventListener('resize', () => {
    for (const c of Object.values(state.charts)) c.plot.setSize({ width: Math.max(300, c.target.clientWidth || 600), height: 200 });
  });
  $('plan-to-editor').addEventListener('click', () => {
    if (!state.planPlacement) return;
    $('placement-editor').value = JSON.stringify(state.planPlacement, null, 1);
    validateEditor();
    $('placement-editor').scrollIntoView({ behavior: 'smooth' });
  });

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) connect(saved);
}

start();
