/**
 * The operator dashboard end to end in headless Chromium (Debian's `chromium`, driven by playwright-core; installed
 * by test/ensure-deps.sh): an in-process gateway on the bundled model with the admin API on, the page at
 * /dashboard, live data while /generate traffic runs, a rebalance dry run and apply, the placement editor, the
 * capacity planner, and a wrong token. Screenshots go to test-artifacts/dashboard/ (gitignored).
 *
 * Fails (does not skip) when /usr/bin/chromium is missing: `npm test` installs it first.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { createLogger } from '../src/log.ts';
import { startServer, type RunningServer } from '../src/serve.ts';
import { tracePlanner } from '../src/planning/plan-service.ts';
import { engineConfig } from './helpers.ts';
import { syntheticTrace } from './fixtures/load-trace.ts';

const CHROMIUM = '/usr/bin/chromium';
const TOKEN = 'dashboard-test-token';
const MODEL = path.join(import.meta.dirname, '..', 'models', 'switchyard-moe');
const ARTIFACTS = path.join(import.meta.dirname, '..', 'test-artifacts', 'dashboard');

let server: RunningServer;
let browser: BrowserContext;
let userDataDir: string;
let traceDir: string;
// Every log line at debug level (request lines included), to check the token never reaches the logs.
const logLines: string[] = [];
const logger = createLogger({ level: 'debug', write: (line) => logLines.push(line) });

const admin = async (p: string, init: RequestInit = {}) => {
  const r = await fetch(server.url + p, { ...init, headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json', ...(init.headers ?? {}) } });
  expect(r.status, `${init.method ?? 'GET'} ${p}`).toBe(200);
  return r.json();
};

/** Greedy /generate requests, one after another, until `stop()` says so. */
function traffic(stop: () => boolean): Promise<number> {
  const prompts = ['Call me Ishmael.', 'The whale', 'Mr. Speaker, the state of the Union', 'Ahab stood'];
  return (async () => {
    let sent = 0;
    while (!stop()) {
      const r = await fetch(`${server.url}/generate`, {
        method: 'POST', headers: { 'content-type': 'application/json', 'cache-control': 'no-cache' },
        body: JSON.stringify({ inputs: prompts[sent % prompts.length], parameters: { max_new_tokens: 12 } }),
      });
      expect(r.status).toBe(200);
      await r.json();
      sent++;
    }
    return sent;
  })();
}

async function openWithToken(token: string): Promise<Page> {
  const page = await browser.newPage();
  const problems: string[] = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (m) => { if (m.type() === 'error' && !/status of (401|422)\b/.test(m.text())) problems.push(`console: ${m.text()}`); });
  (page as Page & { problems?: string[] }).problems = problems;
  await page.goto(`${server.url}/dashboard`);
  await page.fill('#token', token);
  await page.click('#connect');
  return page;
}

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: the dashboard test drives Debian's chromium; run test/ensure-deps.sh (npm test does) or apt-get install chromium`);
  }
  server = await startServer(engineConfig(MODEL, { port: 0, workers: 2, admin: { token: TOKEN, maxWorkers: 3 } }), {
    logger, closeGraceMs: 500, planner: tracePlanner,
  });
  userDataDir = mkdtempSync(path.join(tmpdir(), 'switchyard-chromium-'));
  traceDir = mkdtempSync(path.join(tmpdir(), 'switchyard-trace-'));
  // A closed network makes a default Chromium hang on its background services: turn them all off.
  // A fresh profile (user-data-dir) per run; each page is its own tab with its own sessionStorage.
  browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 900 },
    timeout: 60_000,
  });
  mkdirSync(ARTIFACTS, { recursive: true });
}, 180_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
  for (const dir of [userDataDir, traceDir]) if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('GET /dashboard', () => {
  it('serves the page, its assets and uPlot with their content types and a strict CSP', async () => {
    const page = await fetch(`${server.url}/dashboard`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(page.headers.get('content-security-policy')).toMatch(/script-src 'self'/);
    expect(await page.text()).toContain('<canvas id="load-history"');
    for (const [p, type] of [
      ['/dashboard/assets/app.js', 'text/javascript; charset=utf-8'], ['/dashboard/assets/style.css', 'text/css; charset=utf-8'],
      ['/dashboard/vendor/uPlot.iife.min.js', 'text/javascript; charset=utf-8'], ['/dashboard/vendor/uPlot.min.css', 'text/css; charset=utf-8'],
    ]) {
      const r = await fetch(server.url + p);
      expect(r.status, p).toBe(200);
      expect(r.headers.get('content-type'), p).toBe(type);
      expect((await r.arrayBuffer()).byteLength, p).toBeGreaterThan(100);
    }
    for (const p of ['/dashboard/assets/index.ts', '/dashboard/assets/..%2F..%2Fpackage.json', '/dashboard/vendor/uPlot.d.ts']) {
      const r = await fetch(server.url + p);
      expect(r.status, p).toBe(404);
      expect((await r.json()).error_type).toBe('not_found');
    }
  });
});

describe('the dashboard in Chromium', () => {
  it('a wrong token shows the gateway\'s error and no data', async () => {
    const page = await openWithToken('not-the-token');
    await page.waitForSelector('#login-error:not([hidden])');
    expect(await page.textContent('#login-error')).toMatch(/refused this token: the bearer token is not the admin token/);
    expect(await page.isHidden('#main')).toBe(true);
    expect(await page.evaluate(() => sessionStorage.getItem('switchyard.adminToken'))).toBeNull();
    await page.screenshot({ path: path.join(ARTIFACTS, 'wrong-token.png') });
    await page.close();
  });

  it('fills the heatmap and charts with live data while traffic runs, then dry-runs and applies a rebalance', async () => {
    const page = await openWithToken(TOKEN);
    await page.waitForSelector('#main:not([hidden])');
    // The token stays in the tab's session storage, never in the URL.
    expect(await page.evaluate(() => sessionStorage.getItem('switchyard.adminToken'))).toBe(TOKEN);
    expect(page.url()).not.toContain(TOKEN);

    let done = false;
    const sending = traffic(() => done);
    try {
      // Cells of the layer × expert grid carry the routed tokens of the last 10 s.
      await page.waitForFunction(() => {
        const cells = [...document.querySelectorAll<HTMLElement>('#load-grid td[data-tokens]')];
        return cells.length > 0 && cells.some((c) => Number(c.dataset.tokens) > 0);
      }, undefined, { timeout: 60_000 });
      // The time heatmap got columns with traffic; the request table has rates and percentiles.
      await page.waitForFunction(() => Number(document.getElementById('load-history')!.dataset.filledColumns) >= 2, undefined, { timeout: 60_000 });
      await page.waitForFunction(() => /\d/.test(document.querySelector('#requests tbody tr:nth-child(4) td:nth-child(2)')?.textContent ?? ''), undefined, { timeout: 60_000 });
    } finally {
      done = true;
    }
    const sent = await sending;
    expect(sent).toBeGreaterThan(0);

    const grid = await page.$$eval('#load-grid td[data-tokens]', (cells) => cells.map((c) => Number((c as HTMLElement).dataset.tokens)));
    const load = await admin('/admin/load');
    expect(grid).toHaveLength(load.layers * load.experts);
    expect(grid.reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
    // Every layer routes every token: the grid's rows have equal sums (one poll's snapshot of the 10 s window).
    const rowSums = Array.from({ length: load.layers }, (_, l) => grid.slice(l * load.experts, (l + 1) * load.experts).reduce((a, b) => a + b, 0));
    expect(new Set(rowSums).size).toBe(1);
    const ttft = await page.textContent('#requests tbody tr:nth-child(4) td:nth-child(2)');
    expect(ttft).toMatch(/^\d+\.\d \/ \d+\.\d \/ \d+\.\d$/);
    expect(await page.$$('#chart-balance .uplot')).toHaveLength(1);
    expect(await page.$$eval('#workers tbody tr', (rows) => rows.length)).toBe(2);
    await page.screenshot({ path: path.join(ARTIFACTS, 'live.png'), fullPage: true });

    // Rebalance onto 3 workers: the dry run shows before/after and the moves and changes nothing.
    const before = await admin('/admin/placement');
    expect(before.workers).toBe(2);
    await page.fill('#rebalance-workers', '3');
    await page.fill('#rebalance-window', '600');
    await page.click('#rebalance-dry-run');
    await page.waitForSelector('#rebalance-result:not([hidden])');
    expect(await page.textContent('#rebalance-summary')).toMatch(/balancedness \d\.\d{3} → \d\.\d{3} on 3 workers/);
    const moves = await page.$$eval('#rebalance-moves li', (items) => items.map((i) => i.textContent));
    expect(moves.length).toBeGreaterThan(0);
    expect(moves[0]).toMatch(/^layer \d+ expert \d+: workers \[[\d, ]+\] → \[[\d, ]+\]$/);
    expect(await admin('/admin/placement')).toEqual(before);
    await page.screenshot({ path: path.join(ARTIFACTS, 'dry-run.png'), fullPage: true });

    await page.click('#rebalance-apply');
    await page.waitForSelector('#apply-result:not([hidden])', { timeout: 60_000 });
    expect(await page.textContent('#apply-result')).toMatch(/^Applied the rebalanced placement/);
    const after = await admin('/admin/placement');
    expect(after.workers).toBe(3);
    expect(after).not.toEqual(before);
    await page.waitForFunction(() => document.getElementById('placement-grid')!.dataset.workers === '3');

    // The editor refuses a placement that leaves an expert unhosted, before sending anything.
    await page.click('#editor-load');
    const edited = { ...after, assignments: after.assignments.slice(1) };
    await page.fill('#placement-editor', JSON.stringify(edited));
    await page.click('#editor-validate');
    expect(await page.textContent('#editor-problems')).toMatch(/every expert must be hosted at least once; not placed \(layer\.expert\): 0\.0/);
    expect(await page.isDisabled('#editor-apply')).toBe(true);
    // Text from the editor (or the server) enters the page as text, never as HTML.
    const hostile = '<img src=x onerror="window.__xss=1">';
    await page.fill('#placement-editor', JSON.stringify({ [hostile]: 1, workers: 2, assignments: after.assignments }));
    await page.click('#editor-validate');
    expect(await page.textContent('#editor-problems')).toContain(`unknown field(s) ${hostile}`);
    expect(await page.$$('#editor-problems img')).toHaveLength(0);
    expect(await page.evaluate(() => (window as { __xss?: number }).__xss)).toBeUndefined();
    // A valid edit (back to 2 workers, round-robin) is applied.
    const roundRobin = { workers: 2, assignments: after.assignments.map((a: { layer: number; expert: number }, g: number) => ({ layer: a.layer, expert: a.expert, workers: [g % 2] })) };
    await page.fill('#placement-editor', JSON.stringify(roundRobin));
    await page.click('#editor-validate');
    expect(await page.isDisabled('#editor-apply')).toBe(false);
    await page.click('#editor-apply');
    await page.waitForFunction(() => /^Applied the edited placement/.test(document.getElementById('apply-result')!.textContent ?? ''), undefined, { timeout: 60_000 });
    expect((await admin('/admin/placement')).workers).toBe(2);

    expect((page as Page & { problems?: string[] }).problems).toEqual([]);
    await page.close();
  });

  it('plans capacity from an uploaded trace: recommendation, table and the planner\'s SVG', async () => {
    const file = path.join(traceDir, 'load.jsonl');
    writeFileSync(file, syntheticTrace(60));
    const page = await openWithToken(TOKEN);
    await page.waitForSelector('#main:not([hidden])');
    await page.setInputFiles('#plan-file', file);
    await page.fill('#plan-workers-max', '4');
    await page.fill('#plan-cores', '4');
    await page.click('#plan-run');
    await page.waitForSelector('#plan-result:not([hidden])', { timeout: 60_000 });
    expect(await page.textContent('#plan-workers')).toMatch(/^\d workers?$/);
    expect(await page.textContent('#plan-recommended')).toMatch(/predicted [\d.]+ output tokens\/s/);
    expect(await page.$$eval('#plan-scenarios tbody tr', (rows) => rows.length)).toBe(4);
    // The SVG loaded as an image (from a blob URL) and has a size.
    await page.waitForFunction(() => (document.getElementById('plan-svg') as HTMLImageElement).naturalWidth > 0);
    expect(await page.getAttribute('#plan-svg', 'src')).toMatch(/^blob:/);
    expect(await page.textContent('#plan-text')).toContain('recommended:');
    await page.screenshot({ path: path.join(ARTIFACTS, 'planner.png'), fullPage: true });

    // A file that is not a trace: the server's 422 message is shown.
    const bad = path.join(traceDir, 'bad.jsonl');
    writeFileSync(bad, 'hello\nworld\n');
    await page.setInputFiles('#plan-file', bad);
    await page.click('#plan-run');
    await page.waitForSelector('#plan-error:not([hidden])');
    expect(await page.textContent('#plan-error')).toMatch(/Planning failed \(422\): the body is not a JSONL load trace/);
    expect((page as Page & { problems?: string[] }).problems).toEqual([]);
    await page.close();
  });

  it('never logs the token (or the wrong one tried)', () => {
    expect(logLines.some((l) => l.includes('"path":"/admin/load"'))).toBe(true);
    expect(logLines.filter((l) => l.includes(TOKEN) || l.includes('not-the-token'))).toEqual([]);
  });
});
