/** The admin API over real HTTP on the tiny random package: auth, load, placement validation, rebalancing. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigSchema } from '../src/config.ts';
import { createLogger } from '../src/log.ts';
import { startServer, type RunningServer } from '../src/serve.ts';
import { createApp } from '../src/server/app.ts';
import { PlacementController } from '../src/engine/placement-controller.ts';
import { roundRobinPlacement } from '../src/placement/placement.ts';
import type { GenerationService } from '../src/engine/types.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig } from './helpers.ts';

const TOKEN = 'test-admin-token';
const dir = writeTinyPackage(tinyConfig(), 11); // 2 layers × 4 experts
let server: RunningServer;

const admin = (path: string, init: RequestInit = {}, token: string | null = TOKEN) =>
  fetch(server.url + path, {
    ...init,
    headers: { 'content-type': 'application/json', ...(token === null ? {} : { authorization: `Bearer ${token}` }), ...(init.headers ?? {}) },
  });
const put = (body: unknown) => admin('/admin/placement', { method: 'PUT', body: typeof body === 'string' ? body : JSON.stringify(body) });
const rebalance = (body: unknown) => admin('/admin/rebalance', { method: 'POST', body: JSON.stringify(body) });

beforeAll(async () => {
  server = await startServer(engineConfig(dir, {
    port: 0, workers: 2, admin: { token: TOKEN, maxWorkers: 3 }, placement: { maxExpertsPerWorker: 6 },
  }), { logger: createLogger({ level: 'silent' }), closeGraceMs: 200 });
  for (const inputs of ['Call me Ishmael.', 'The whale surfaced', 'Ahab']) {
    const r = await fetch(`${server.url}/generate`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ inputs, parameters: { max_new_tokens: 8 } }),
    });
    expect(r.status).toBe(200);
  }
});
afterAll(() => server.close());

describe('admin auth', () => {
  it('401 without a token, with a wrong one, or with another scheme, in the error shape', async () => {
    for (const [headers, pattern] of [
      [{}, /needs a bearer token/],
      [{ authorization: 'Bearer nope' }, /not the admin token/],
      [{ authorization: `Basic ${TOKEN}` }, /needs a bearer token/],
    ] as const) {
      for (const [method, path] of [['GET', '/admin/load'], ['GET', '/admin/placement'], ['PUT', '/admin/placement'], ['POST', '/admin/rebalance']]) {
        const r = await fetch(server.url + path, { method, headers, body: method === 'GET' ? undefined : '{}' });
        expect(r.status, `${method} ${path}`).toBe(401);
        expect(r.headers.get('www-authenticate')).toMatch(/^Bearer/);
        const body = await r.json();
        expect(body.error_type).toBe('unauthorized');
        expect(body.error).toMatch(pattern);
      }
    }
  });

  it('the admin routes are off (404) without a configured token', async () => {
    const placement = roundRobinPlacement(1, 2, 1);
    const controller = new PlacementController({ placement, applyPlacement: async () => { throw new Error('unused'); } },
      { layers: 1, experts: 2, maxWorkers: 1, maxExpertsPerWorker: null, rebalanceWindowSeconds: 60, auto: null });
    const service = {} as GenerationService;
    const off = createApp(service, ConfigSchema.parse({}), { admin: controller, logger: createLogger({ level: 'silent' }) });
    const r = await off.request('/admin/placement', { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(r.status).toBe(404);
    expect((await r.json()).error_type).toBe('not_found');
    const on = createApp(service, ConfigSchema.parse({ admin: { token: TOKEN } }), { admin: controller, logger: createLogger({ level: 'silent' }) });
    expect((await on.request('/admin/placement', { headers: { authorization: `Bearer ${TOKEN}` } })).status).toBe(200);
  });
});

describe('GET /admin/load and /admin/placement', () => {
  it('reports tokens per expert and layer, worker busy fraction and balancedness per window', async () => {
    const r = await admin('/admin/load');
    expect(r.status).toBe(200);
    const load = await r.json();
    expect(load).toMatchObject({ layers: 2, experts: 4, workers: 2, max_workers: 3, max_experts_per_worker: 6 });
    expect(Object.keys(load.windows)).toEqual(['10s', '60s', 'since_start']);
    const all = load.windows.since_start;
    expect(all.tokens).toBeGreaterThan(0);
    expect(all.steps).toBeGreaterThan(0);
    for (const row of all.tokens_per_expert) expect(row.reduce((a: number, b: number) => a + b, 0)).toBe(all.tokens);
    expect(all.workers).toHaveLength(2);
    for (const w of all.workers) {
      expect(w.busy_fraction).toBeGreaterThanOrEqual(0);
      expect(w.busy_fraction).toBeLessThanOrEqual(1);
    }
    // Workers ran exactly the routed tokens (no capacity limit).
    expect(all.workers.reduce((n: number, w: { tokens: number }) => n + w.tokens, 0)).toBe(all.tokens * 2);
    expect(all.balancedness.per_layer).toHaveLength(2);
    expect(all.balancedness.overall).toBeGreaterThan(0);
    expect(all.balancedness.overall).toBeLessThanOrEqual(1);
  });

  it('GET /admin/placement is the placement file format (round-robin at start)', async () => {
    const p = await (await admin('/admin/placement')).json();
    expect(p.workers).toBe(2);
    expect(p.assignments).toHaveLength(8);
    expect(p.assignments[5]).toEqual({ layer: 1, expert: 1, workers: [1] });
  });
});

describe('PUT /admin/placement validation', () => {
  const all = (workers: (g: number) => number[]) =>
    Array.from({ length: 8 }, (_, g) => ({ layer: Math.floor(g / 4), expert: g % 4, workers: workers(g) }));

  const cases: Array<[string, unknown, RegExp[]]> = [
    ['unplaced experts', { workers: 2, assignments: all((g) => [g % 2]).slice(0, 6) }, [/every expert must be hosted at least once; not placed on any worker \(layer\.expert\): 1\.2, 1\.3/]],
    ['more workers than admin.maxWorkers', { workers: 4, assignments: all((g) => [g % 4]) }, [/workers is 4, but at most 3 are allowed \(admin\.maxWorkers\)/]],
    ['a worker that does not exist', { workers: 2, assignments: all((g) => (g === 3 ? [2] : [g % 2])) }, [/assignments\.3: layer 0 expert 3 is placed on worker 2, but workers are 0\.\.1/, /0\.3/]],
    ['over the memory budget', { workers: 2, assignments: all((g) => (g < 7 ? [0] : [1])) }, [/worker 0 would hold 7 experts, over the memory budget of 6 per worker \(placement\.maxExpertsPerWorker\)/]],
    ['an expert the model lacks', { workers: 2, assignments: [...all((g) => [g % 2]), { layer: 0, expert: 4, workers: [0] }] }, [/expert 4 does not exist; the model has experts 0\.\.3/]],
    ['the wrong shape', { workers: 2, placement: [] }, [/assignments: /, /expected \{"workers": N, "assignments"/]],
    ['invalid JSON', '{"workers": 2,', [/not valid JSON/]],
  ];
  for (const [name, body, patterns] of cases) {
    it(`422 for ${name}, placement unchanged`, async () => {
      const r = await put(body);
      expect(r.status).toBe(422);
      const err = await r.json();
      expect(err.error_type).toBe('validation');
      for (const p of patterns) expect(err.error).toMatch(p);
      expect((await (await admin('/admin/placement')).json()).workers).toBe(2);
    });
  }
});

describe('POST /admin/rebalance', () => {
  it('a dry run plans from recent load, predicts balancedness before and after, and changes nothing', async () => {
    const before = await (await admin('/admin/placement')).json();
    const r = await rebalance({ dry_run: true });
    expect(r.status).toBe(200);
    const plan = await r.json();
    expect(plan).toMatchObject({ dry_run: true, applied: false, change: null });
    expect(plan.tokens).toBeGreaterThan(0);
    expect(plan.predicted.before.per_layer).toHaveLength(2);
    expect(plan.predicted.after.overall).toBeGreaterThanOrEqual(plan.predicted.before.overall - 1e-9);
    expect(plan.placement.assignments).toHaveLength(8);
    expect(Math.max(...plan.experts_per_worker)).toBeLessThanOrEqual(6);
    expect(await (await admin('/admin/placement')).json()).toEqual(before);
  });

  it('applies its plan, which then is the placement in use', async () => {
    // Start from a lopsided placement: worker 0 hosts 6 experts, worker 1 two.
    const lopsided = { workers: 2, assignments: Array.from({ length: 8 }, (_, g) => ({ layer: Math.floor(g / 4), expert: g % 4, workers: [g % 4 === 3 ? 1 : 0] })) };
    const changed = await put(lopsided);
    expect(changed.status).toBe(200);
    const change = (await changed.json()).change;
    expect(change.workers_added).toEqual([]);
    expect(change.loaded.length + change.unloaded.length).toBeGreaterThan(0);

    const r = await rebalance({});
    expect(r.status).toBe(200);
    const plan = await r.json();
    expect(plan.predicted.after.overall).toBeGreaterThan(plan.predicted.before.overall);
    expect(plan.applied).toBe(true);
    expect(plan.change.loaded.length).toBeGreaterThan(0);
    expect(await (await admin('/admin/placement')).json()).toEqual(plan.placement);
    const stats = await (await fetch(`${server.url}/info`)).json();
    expect(stats.placement.experts).toEqual(plan.placement.assignments);
  });

  it('422 for a bad body or more workers than allowed', async () => {
    const bad = await rebalance({ dry_run: 'yes' });
    expect(bad.status).toBe(422);
    expect((await bad.json()).error).toMatch(/dry_run: .*boolean/);
    const many = await rebalance({ workers: 9, dry_run: true });
    expect(many.status).toBe(422);
    expect((await many.json()).error).toMatch(/workers must be an integer from 1 to 3 \(admin\.maxWorkers\)/);
  });
});
