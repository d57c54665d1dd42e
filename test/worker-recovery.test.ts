/**
 * Expert worker recovery. A worker thread that dies inside a layer task (injected `process.exit()`, the only way a
 * test can kill one without risking the process: terminating a thread inside onnxruntime aborts it) is replaced by
 * a thread that loads the worker's *current* experts, the task runs again, and no request fails; a task that throws
 * runs once more. Faults are triggered by counting run tasks, never by time.
 */
import { truncateSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import type { StepObserver } from '../src/engine/scheduler.ts';
import { createLogger } from '../src/log.ts';
import { expertsOfWorker, placementFromFile, type Placement } from '../src/placement/placement.ts';
import { startServer, type RunningServer } from '../src/serve.ts';
import { createApp } from '../src/server/app.ts';
import type { WorkerRestart } from '../experts/pool.ts';
import type { StepOutput } from '../src/engine/model.ts';
import type { Sequence } from '../src/engine/sequence.ts';
import { createTelemetry } from '../src/telemetry/index.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig } from './helpers.ts';

const config = tinyConfig({ max_position_embeddings: 128 }); // 2 layers × 4 experts
const dir = writeTinyPackage(config, 33);
const PROMPTS = ['Sperm whales dive deep.', 'Hello, world', 'Ahab', 'Call me Ishmael.'];
const keysOf = (experts: Array<{ layer: number; expert: number }>) => experts.map((k) => `${k.layer}.${k.expert}`).sort();

/** Every expert of the tiny model on the worker that did not host it at start-up (round robin over 2). */
const swapped = (): Placement => placementFromFile({
  workers: 2,
  assignments: Array.from({ length: 8 }, (_, g) => ({ layer: Math.floor(g / 4), expert: g % 4, workers: [(g + 1) % 2] })),
}, config.num_hidden_layers, config.num_experts);

/**
 * The JSON log lines written to stderr while watching (the pool logs through the process-wide logger), and a way to
 * wait for one: a deterministic trigger, not a timer.
 */
class LogWatch {
  readonly lines: Array<Record<string, unknown>> = [];
  private waiters: Array<{ match: (line: Record<string, unknown>) => boolean; wake: () => void }> = [];
  private readonly spy;

  constructor() {
    const write = process.stderr.write.bind(process.stderr) as (chunk: string | Uint8Array, ...rest: unknown[]) => boolean;
    this.spy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array, ...rest: unknown[]) => {
      const text = typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString();
      for (const line of text.split('\n')) {
        let record: Record<string, unknown>;
        try {
          record = JSON.parse(line);
        } catch {
          continue; // not a log line
        }
        this.lines.push(record);
        this.waiters = this.waiters.filter((w) => !(w.match(record) && (w.wake(), true)));
      }
      return write(chunk, ...rest);
    });
  }

  /** Resolves at the first line (already written or to come) that matches. */
  waitFor(match: (line: Record<string, unknown>) => boolean): Promise<void> {
    if (this.lines.some(match)) return Promise.resolve();
    return new Promise((wake) => this.waiters.push({ match, wake }));
  }

  stop(): void {
    this.spy.mockRestore();
  }
}

const retried = (worker: number, reason: string) => (line: Record<string, unknown>) =>
  /running it again/.test(String(line.msg)) && line.worker === worker && line.reason === reason;

describe('expert worker recovery (engine)', () => {
  let engine: Engine;
  const restarts: WorkerRestart[] = [];
  let reference: Float32Array[];

  const forward = async () => {
    const inputs = PROMPTS.map((p) => ({ cache: engine.model.newCache(), tokens: engine.codec.encode(p) }));
    return (await engine.model.forward(inputs)).logits;
  };

  beforeAll(async () => {
    engine = await Engine.load(engineConfig(dir, { workers: 2 }));
    engine.pool.onWorkerRestart((event) => restarts.push(event));
    reference = await forward();
  });
  afterAll(() => engine?.close());
  afterEach(() => engine.workerPool.injectFault(1, null));

  it('replaces a thread that exits inside a layer task, runs the task again, and the process survives', async () => {
    const before = await engine.pool.stats();
    await engine.workerPool.injectFault(1, { kind: 'exit' });
    const watch = new LogWatch();
    const logits = await forward().finally(() => watch.stop());

    expect(logits).toEqual(reference); // the retried batch gives the same rows, bit for bit
    expect(restarts.map((r) => ({ ...r, experts: keysOf(r.experts) }))).toEqual([
      { worker: 1, restarts: 1, experts: keysOf(expertsOfWorker(engine.pool.placement, 1)) },
    ]);
    expect(watch.lines).toContainEqual(expect.objectContaining({ level: 'warn', msg: expect.stringMatching(/thread died/), worker: 1, restarts: 1 }));
    expect(watch.lines.some(retried(1, 'thread died'))).toBe(true);

    const after = await engine.pool.stats();
    expect(after[1].threadId).not.toBe(before[1].threadId); // a new thread…
    expect(after[1].resident).toEqual(before[1].resident); // …with the same experts
    expect(after[0].threadId).toBe(before[0].threadId); // the other worker was not touched
  });

  it('loads the worker\'s current experts in the replacement after a live placement change', async () => {
    const change = await engine.pool.applyPlacement(swapped());
    expect(change.unloaded.length).toBeGreaterThan(0);
    const placed = keysOf(expertsOfWorker(engine.pool.placement, 1));
    expect(keysOf((await engine.pool.stats())[1].resident)).toEqual(placed);

    await engine.workerPool.injectFault(1, { kind: 'exit', afterRuns: 1 });
    expect(await forward()).toEqual(reference);
    expect(restarts.map((r) => r.worker)).toEqual([1, 1]);
    expect(keysOf(restarts[1].experts)).toEqual(placed);
    // Without the shared hosting map the new thread would hold its start-up experts and every task would fail.
    const stats = await engine.pool.stats();
    expect(keysOf(stats[1].resident)).toEqual(placed);
    expect(stats[1].loaded).toEqual(placed);
  });

  it('runs a task that throws once more; if it throws again the step fails with a clear error', async () => {
    await engine.workerPool.injectFault(0, { kind: 'throw' });
    const watch = new LogWatch();
    const logits = await forward().finally(() => watch.stop());
    expect(logits).toEqual(reference);
    expect(watch.lines.some(retried(0, 'task threw'))).toBe(true);

    await engine.workerPool.injectFault(0, { kind: 'throw', times: 2 });
    await expect(forward()).rejects.toThrow(/expert worker 0: run task failed 2 times \(thread died 0, task threw 2\); last: .*injected fault/);
    expect(await forward()).toEqual(reference); // the fault is spent; the pool serves on
    expect(restarts).toHaveLength(2); // throwing is not dying
  });
});

describe('expert worker recovery: a replacement that cannot start', () => {
  it('fails the step with a clear error instead of waiting forever, and GET /health says 503 degraded', async () => {
    const broken = writeTinyPackage(config, 34);
    const settings = engineConfig(broken, { workers: 2 });
    const engine = await Engine.load(settings);
    const app = createApp(engine, settings);
    try {
      const inputs = () => PROMPTS.map((p) => ({ cache: engine.model.newCache(), tokens: engine.codec.encode(p) }));
      await engine.model.forward(inputs());
      const healthy = await app.request('/health');
      expect(healthy.status).toBe(200);
      expect(await healthy.json()).toEqual({
        status: 'ok',
        workers: [{ worker: 0, state: 'ready', restarts: 0 }, { worker: 1, state: 'ready', restarts: 0 }],
      });

      truncateSync(join(broken, 'model.safetensors'), 0); // a new thread cannot read its experts any more
      await engine.workerPool.injectFault(1, { kind: 'exit' });
      await expect(engine.model.forward(inputs())).rejects.toThrow(/expert worker 1: run task failed 3 times .*failed to start/);

      const degraded = await app.request('/health');
      expect(degraded.status).toBe(503);
      const body = await degraded.json() as { status: string; error: string; error_type: string; workers: Array<{ worker: number; state: string; restarts: number }> };
      expect(body).toMatchObject({ status: 'degraded', error_type: 'internal' });
      expect(body.error).toMatch(/expert worker 1 \(.+\) cannot start/);
      expect(body.workers.map((w) => [w.worker, w.state, w.restarts])).toEqual([[0, 'ready', 0], [1, 'failed', 1]]);
    } finally {
      await engine.close();
    }
  });
});

describe('expert worker recovery under load (HTTP)', () => {
  const CLIENTS = 8;
  const MAX_NEW_TOKENS = 24;
  const TOKEN = 'recovery-token';
  const HTTP_PROMPTS = Array.from({ length: CLIENTS }, (_, i) => `${['Call me Ishmael', 'The whale', 'Ahab said', 'Queequeg'][i % 4]} ${i}`);
  let server: RunningServer;
  let engine: Engine;
  const restarts: WorkerRestart[] = [];
  const stepWaiters: Array<{ test: (sequences: number) => boolean; wake: () => void }> = [];
  const probe: StepObserver = {
    onStep({ sequences }) {
      for (const w of stepWaiters.splice(0)) {
        if (w.test(sequences.length)) w.wake();
        else stepWaiters.push(w);
      }
    },
  };
  const nextStep = (test: (sequences: number) => boolean) => new Promise<void>((wake) => stepWaiters.push({ test, wake }));
  let restarted: () => void = () => undefined;

  beforeAll(async () => {
    server = await startServer(engineConfig(dir, {
      port: 0, workers: 2, admin: { token: TOKEN },
      limits: { maxNewTokens: MAX_NEW_TOKENS, maxBatchSequences: CLIENTS },
    }), {
      logger: createLogger({ level: 'silent' }), closeGraceMs: 200,
      loadEngine: async (c, observer) => {
        engine = await Engine.load(c, [observer ?? {}, probe]);
        engine.pool.onWorkerRestart((event) => {
          restarts.push(event);
          restarted();
        });
        return engine;
      },
    });
  });
  afterAll(() => server?.close());

  /** A greedy completion; a unique never-matching stop string keeps the response cache out of the comparison. */
  async function generate(prompt: string, tag: string): Promise<{ status: number; ids: number[]; error?: string }> {
    const r = await fetch(`${server.url}/generate`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ inputs: prompt, parameters: { max_new_tokens: MAX_NEW_TOKENS, details: true, stop: [`~~never ${tag}~~`] } }),
    });
    const body = await r.json();
    return r.status === 200 ? { status: 200, ids: body.details.tokens.map((t: { id: number }) => t.id) } : { status: r.status, ids: [], error: body.error };
  }

  /**
   * CLIENTS closed-loop clients keep generating; once at least half are in one step, `fault` is injected, and the
   * clients stop after `until` (the restart or retry it causes) and one more request. Returns every request's result.
   */
  async function roundWithFault(tag: string, fault: () => Promise<void>, until: Promise<void>) {
    let done = false;
    const results: Array<{ prompt: number; status: number; ids: number[]; error?: string }> = [];
    const clients = Array.from({ length: CLIENTS }, async (_, c) => {
      for (let k = 0; !done; k++) {
        const prompt = (c + k) % CLIENTS;
        results.push({ prompt, ...(await generate(HTTP_PROMPTS[prompt], `${tag} ${c} ${k}`)) });
      }
    });
    await nextStep((sequences) => sequences >= CLIENTS / 2);
    await fault();
    await until;
    // One more request from start to end after the recovery (it fails fast, not hangs, if recovery broke).
    results.push({ prompt: 0, ...(await generate(HTTP_PROMPTS[0], `${tag} after`)) });
    done = true;
    await Promise.all(clients);
    return results;
  }

  const restartCount = () => new Promise<void>((resolve) => (restarted = resolve));

  it('loses no request when a worker dies mid-step, before and after a live placement change', async () => {
    const baseline = await Promise.all(HTTP_PROMPTS.map((p, i) => generate(p, `base ${i}`)));
    expect(baseline.map((b) => b.status)).toEqual(HTTP_PROMPTS.map(() => 200));

    // 1. Start-up placement: worker 1 exits inside its next layer task.
    const first = await roundWithFault('a', () => engine.workerPool.injectFault(1, { kind: 'exit' }), restartCount());
    expect(first.filter((r) => r.status !== 200)).toEqual([]);
    for (const r of first) expect(r.ids, HTTP_PROMPTS[r.prompt]).toEqual(baseline[r.prompt].ids);
    expect(restarts.map((r) => r.worker)).toEqual([1]);

    // 2. Every expert moves to the other worker, live; then worker 1 exits again.
    const put = await fetch(`${server.url}/admin/placement`, {
      method: 'PUT', headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` },
      body: JSON.stringify({ workers: 2, assignments: Array.from({ length: 8 }, (_, g) => ({ layer: Math.floor(g / 4), expert: g % 4, workers: [(g + 1) % 2] })) }),
    });
    expect(put.status).toBe(200);
    const second = await roundWithFault('b', () => engine.workerPool.injectFault(1, { kind: 'exit', afterRuns: 2 }), restartCount());
    expect(second.filter((r) => r.status !== 200)).toEqual([]);
    for (const r of second) expect(r.ids, HTTP_PROMPTS[r.prompt]).toEqual(baseline[r.prompt].ids);
    expect(restarts.map((r) => r.worker)).toEqual([1, 1]);
    expect(keysOf((await engine.pool.stats())[1].resident)).toEqual(keysOf(expertsOfWorker(swapped(), 1)));

    // The counter, and the gateway still serves.
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(/^moe_worker_restarts(_total)?\{[^}]*moe_worker="1"[^}]*\} 2$/m);
    const health = await fetch(`${server.url}/health`);
    expect(health.status).toBe(200);
    const again = await generate(HTTP_PROMPTS[0], 'after');
    expect(again).toEqual(baseline[0]);
  });

  it('loses no request when a worker\'s task throws', async () => {
    const baseline = await Promise.all(HTTP_PROMPTS.map((p, i) => generate(p, `base2 ${i}`)));
    const watch = new LogWatch();
    try {
      const results = await roundWithFault('c', () => engine.workerPool.injectFault(0, { kind: 'throw' }), watch.waitFor(retried(0, 'task threw')));
      expect(results.filter((r) => r.status !== 200)).toEqual([]);
      for (const r of results) expect(r.ids, HTTP_PROMPTS[r.prompt]).toEqual(baseline[r.prompt].ids);
    } finally {
      watch.stop();
    }
    expect(restarts).toHaveLength(2); // throwing is not dying
  });
});

describe('worker restart telemetry', () => {
  it('counts restarts per worker, and a new thread\'s residency counters (from 0 again) still add up', async () => {
    const telemetry = createTelemetry({ exporter: 'none', otlpEndpoint: null, loadTraceFile: null }, { modelId: 'm' });
    const step = (loads: number, thread: number): { sequences: Sequence[]; output: StepOutput; ms: number } => ({
      sequences: [], ms: 1,
      output: {
        logits: [],
        layers: [{
          layer: 0, k: 1, expert: Int32Array.from([0]), gate: Float32Array.from([1]), tokensPerExpert: [1], overflow: 0, capacity: 1, dispatchMs: 0.5,
          workers: [{ worker: 1, tokens: 1, experts: [0], queueMs: 0, computeMs: 0.1, residency: { loads, evictions: 0, thread } }],
        }],
      },
    });
    try {
      telemetry.observer.onStep?.(step(3, 7));
      telemetry.observer.onWorkerRestart?.({ worker: 1, restarts: 1, experts: [] });
      telemetry.observer.onStep?.(step(5, 8)); // the new thread (8) has loaded 5 experts on demand so far
      const text = await telemetry.metricsText();
      expect(text).toMatch(/^moe_worker_restarts(_total)?\{[^}]*moe_worker="1"[^}]*\} 1$/m);
      expect(text).toMatch(/^moe_worker_expert_loads(_total)?\{[^}]*moe_worker="1"[^}]*\} 8$/m);
    } finally {
      await telemetry.shutdown();
    }
  });
});
