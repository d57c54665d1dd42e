/**
 * The dashboard's data routes (src/server/routes/admin-insights.ts) and page routes, through the app: GET
 * /admin/requests from the telemetry's request window; POST /admin/plan with the real planner (on its worker thread)
 * and its errors (size, format, options, concurrency); the page only while the admin routes are on.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigSchema, type ConfigInput } from '../src/config.ts';
import { createLogger } from '../src/log.ts';
import { createApp } from '../src/server/app.ts';
import { PlacementController } from '../src/engine/placement-controller.ts';
import { roundRobinPlacement } from '../src/placement/placement.ts';
import type { GenerationService } from '../src/engine/types.ts';
import { createTelemetry } from '../src/telemetry/index.ts';
import { planInWorker, planTraceText, TracePlanError, tracePlanner } from '../src/planning/plan-service.ts';
import type { TracePlanner } from '../src/server/routes/admin-insights.ts';
import { syntheticTrace } from './fixtures/load-trace.ts';

const TOKEN = 'insights-token';
const auth = { authorization: `Bearer ${TOKEN}` };
let clock = 1_700_000_000_000;
const telemetry = createTelemetry({ exporter: 'none', otlpEndpoint: null, loadTraceFile: null }, { modelId: 'm', now: () => clock });
afterAll(() => telemetry.shutdown());

function app(config: ConfigInput = {}, planner: TracePlanner | null = tracePlanner) {
  const controller = new PlacementController({ placement: roundRobinPlacement(2, 4, 2), applyPlacement: async () => { throw new Error('unused'); } },
    { layers: 2, experts: 4, maxWorkers: 4, maxExpertsPerWorker: null, rebalanceWindowSeconds: 60, auto: null });
  return createApp({} as GenerationService, ConfigSchema.parse({ admin: { token: TOKEN }, ...config }),
    { admin: controller, telemetry, planner, logger: createLogger({ level: 'silent' }) });
}

/** The planner's test trace, steps of 2–2.2 ms. */
const trace = (steps: number) => syntheticTrace(steps, (step) => 2 + (step % 3) * 0.1);

const post = (a: ReturnType<typeof app>, body: string, query = '', headers: Record<string, string> = {}) =>
  a.request(`/admin/plan${query}`, { method: 'POST', body, headers: { ...auth, 'content-type': 'application/x-ndjson', ...headers } });

describe('POST /admin/plan', () => {
  it('plans on a worker thread exactly as in process, for a trace larger than limits.maxBodyBytes', async () => {
    const text = trace(200);
    expect(text.length).toBeGreaterThan(ConfigSchema.parse({}).limits.maxBodyBytes);
    const r = await post(app(), text, '?workers_max=3&cores=4');
    expect(r.status).toBe(200);
    const report = await r.json();
    expect(report).toEqual(planTraceText(text, { workersMax: 3, cores: 4, maxExpertsPerWorker: null, minSplitRows: 32 }));
    expect(report.trace).toMatchObject({ steps: 200, layers: 2, experts: 4, skipped: 0 });
    expect(report.scenarios.map((s: { workers: number }) => s.workers)).toEqual([1, 2, 3]);
    // The hot expert gets replicas at 2 workers, and balancedness improves on round-robin.
    const two = report.scenarios[1];
    expect(two.replicas).toBeGreaterThan(0);
    expect(two.balancedness.planned).toBeGreaterThan(two.balancedness.round_robin);
    expect(report.recommended.placement.assignments).toHaveLength(8);
    expect(report.svg).toMatch(/^<\?xml[\s\S]*<svg[\s\S]*<\/svg>\n$/);
    expect(report.text).toMatch(/recommended: \d workers?/);
  });

  it('passes the targets and the memory budget to the planner', async () => {
    const r = await post(app(), trace(20), '?workers_max=4&cores=4&max_experts_per_worker=4&target_tokens_per_s=1');
    expect(r.status).toBe(200);
    const report = await r.json();
    // 8 experts at 4 per worker: 1 worker cannot hold them.
    expect(report.scenarios[0].workers).toBe(2);
    expect(report.recommended.reason).toBe('the fewest workers that meet the targets');
  });

  const cases: Array<[string, string, string, Record<string, string>, number, RegExp]> = [
    ['an empty body', '', '', {}, 422, /the trace is empty/],
    ['a body that is not JSON lines', 'ts,step,layer\n1,2,3\n', '', {}, 422, /not a JSONL load trace/],
    ['JSON lines that are not trace records', '{"a": 1}\n{"b": 2}\n', '', {}, 422, /no usable line in the trace \(2 skipped; first problems: line 1: step, layer and tokens must be numbers/],
    ['a form upload', trace(2), '', { 'content-type': 'multipart/form-data; boundary=x' }, 415, /raw request body/],
    ['an unknown option', trace(2), '?workers=3', {}, 422, /Unrecognized key: "workers"; query parameters are workers_max, cores/],
    ['an option out of range', trace(2), '?workers_max=0', {}, 422, /workers_max: /],
    ['options no worker count meets', trace(2), '?workers_max=1&max_experts_per_worker=1', {}, 422, /no worker count up to 1 fits 8 experts at 1 per worker; raise workers_max or max_experts_per_worker/],
  ];
  for (const [name, body, query, headers, status, pattern] of cases) {
    it(`${status} for ${name}, in the error shape`, async () => {
      const r = await post(app(), body, query, headers);
      expect(r.status).toBe(status);
      const err = await r.json();
      expect(err.error_type).toBe('validation');
      expect(err.error).toMatch(pattern);
    });
  }

  it('413 over admin.maxTraceBytes, naming the setting', async () => {
    const r = await post(app({ admin: { token: TOKEN, maxTraceBytes: 5000 } }), trace(20));
    expect(r.status).toBe(413);
    expect(await r.json()).toEqual({
      error: 'the trace is larger than 5000 bytes (admin.maxTraceBytes); send a shorter trace (its last steps) or raise the limit', error_type: 'validation',
    });
  });

  it('401 without the token; other admin bodies keep limits.maxBodyBytes', async () => {
    const a = app();
    const r = await a.request('/admin/plan', { method: 'POST', body: trace(2) });
    expect(r.status).toBe(401);
    const big = JSON.stringify({ dry_run: true, pad: 'x'.repeat(70_000) });
    const rebalance = await a.request('/admin/rebalance', { method: 'POST', body: big, headers: auth });
    expect(rebalance.status).toBe(413);
    expect((await rebalance.json()).error).toMatch(/limits\.maxBodyBytes/);
  });

  it('skips lines whose indices would size the planner\'s tables (worker 1e9 aborted the process), and says so', async () => {
    const lines = trace(20).trim().split('\n');
    const hostile = JSON.parse(lines[3]);
    hostile.workers[0].worker = 1e9;
    const fractional = { ...JSON.parse(lines[5]), layer: 0.5 };
    const text = [...lines.slice(0, 3), JSON.stringify(hostile), lines[4], JSON.stringify(fractional), ...lines.slice(6)].join('\n');
    const r = await post(app(), text, '?workers_max=2&cores=2');
    expect(r.status).toBe(200);
    const report = await r.json() as { trace: { skipped: number; problems: string[]; workers_seen: number } };
    expect(report.trace.skipped).toBe(2);
    expect(report.trace.problems.join(' ')).toMatch(/worker must be an integer in 0\.\.4095.*layer must be an integer/);
    expect(report.trace.workers_seen).toBe(2);
  });

  it('ends a plan that runs past its time limit (422 for the trace), or whose caller went away', async () => {
    const options = { workersMax: 2, cores: 2, maxExpertsPerWorker: null, minSplitRows: 32 };
    await expect(planInWorker(trace(200), options, undefined, { heapMb: 512, timeoutMs: 1 })).rejects.toThrow(TracePlanError);
    await expect(planInWorker(trace(200), options, undefined, { heapMb: 512, timeoutMs: 1 })).rejects.toThrow(/longer than 0\.001 s; send a shorter trace/);
    const gone = new AbortController();
    gone.abort();
    await expect(planInWorker(trace(20), options, gone.signal)).rejects.toThrow(/caller went away/);
  });

  it('one plan at a time (429 with Retry-After), 501 without a planner', async () => {
    let release!: () => void;
    let entered!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const planning = new Promise<void>((resolve) => (entered = resolve));
    const slow: TracePlanner = { plan: async () => { entered(); await gate; return { ok: true }; }, isClientError: () => false };
    const a = app({}, slow);
    const first = post(a, trace(2));
    await planning;
    const second = await post(a, trace(2));
    expect(second.status).toBe(429);
    expect(second.headers.get('retry-after')).toBe('2');
    expect((await second.json()).error_type).toBe('overloaded');
    release();
    expect((await first).status).toBe(200);
    expect((await post(a, trace(2))).status).toBe(200);

    const none = await post(app({}, null), trace(2));
    expect(none.status).toBe(501);
    expect((await none.json()).error).toMatch(/without the capacity planner/);
  });
});

describe('GET /admin/requests', () => {
  it('reports the telemetry window: rates and TTFT / TPOT percentiles, for 10 s and 60 s or ?window=', async () => {
    const req = telemetry.startRequest({ operation: 'chat', model: 'm', maxTokens: 3, stream: true });
    clock += 40;
    req.firstToken();
    req.outputToken();
    clock += 20;
    req.outputToken();
    clock += 20;
    req.outputToken();
    req.end({ inputTokens: 2, outputTokens: 3, finishReason: 'length' });
    clock += 1000;
    const r = await app().request('/admin/requests', { headers: auth });
    expect(r.status).toBe(200);
    const body = await r.json();
    expect(Object.keys(body.windows)).toEqual(['10s', '60s']);
    expect(body.windows['10s']).toMatchObject({ started: 1, finished: 1, errors: 0, output_tokens: 3 });
    expect(body.windows['10s'].ttft_ms.p50).toBe(40);
    expect(body.windows['10s'].tpot_ms.p50).toBe(20);
    const one = await (await app().request('/admin/requests?window=5', { headers: auth })).json();
    expect(Object.keys(one.windows)).toEqual(['5s']);
    const bad = await app().request('/admin/requests?window=0', { headers: auth });
    expect(bad.status).toBe(422);
    expect((await bad.json()).error).toMatch(/\?window=SECONDS \(1\.\.600\)/);
    for (const odd of ['', '0x10', '1e2', '5.5']) {
      const r = await app().request(`/admin/requests?window=${odd}`, { headers: auth });
      expect(r.status, `?window=${odd}`).toBe(422);
      expect((await r.json()).error).toMatch(/window: .*; use \?window=SECONDS/);
    }
    expect((await app().request('/admin/requests')).status).toBe(401);
  });
});

describe('the dashboard routes', () => {
  it('exist only while the admin routes are on', async () => {
    expect((await app().request('/dashboard')).status).toBe(200);
    const controller = new PlacementController({ placement: roundRobinPlacement(2, 4, 2), applyPlacement: async () => { throw new Error('unused'); } },
      { layers: 2, experts: 4, maxWorkers: 4, maxExpertsPerWorker: null, rebalanceWindowSeconds: 60, auto: null });
    const off = createApp({} as GenerationService, ConfigSchema.parse({}), { admin: controller, telemetry, logger: createLogger({ level: 'silent' }) });
    for (const p of ['/dashboard', '/dashboard/assets/app.js', '/admin/requests']) expect((await off.request(p)).status, p).toBe(404);
  });
});
