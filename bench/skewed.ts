/**
 * Rebalancing under a skewed workload: `npx tsx bench/skewed.ts --help`.
 *
 * Starts the gateway in this process (admin API on, load trace on, response and prefix caches off so every request
 * really runs), finds prompts that concentrate routing on a few experts, and measures balancedness and output
 * tokens/s with the starting (round-robin) placement and with the placement POST /admin/rebalance computes —
 * alternating the two placements within each repeat — and compares with what the capacity planner
 * (src/planning) predicted from the trace of the calibration run alone.
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig, type Config } from '../src/config.ts';
import type { RunningServer } from '../src/serve.ts';
import { balanceOf, predictBalance } from '../src/placement/rebalance.ts';
import { placementFromFile } from '../src/placement/placement.ts';
import { fitCost, replay } from '../src/planning/capacity.ts';
import { readLoadTrace, totalLoad, type LoadTrace } from '../src/planning/trace.ts';
import { createClient } from './clients.ts';
import { intFlag, parseFlags, runCli } from './cli-common.ts';
import { commandLine, publish } from './record.ts';
import { DEFAULT_PROMPTS, runLevel, summarize, type LevelMetrics } from './run-load.ts';
import { loadLimits, loopbackOverrides, startGateway } from './servers.ts';
import { fmt, markdownTable, median } from './stats.ts';

const HELP = `Usage: npx tsx bench/skewed.ts [options]

Starts the gateway in this process with the admin API and a load trace, picks prompts whose routing hits the
hottest experts (each candidate prompt is routed through the engine and its per-expert token counts are read
from GET /admin/load), runs a calibration load on the starting placement, asks POST /admin/rebalance for a plan,
then alternates the starting and the rebalanced placement (PUT /admin/placement) for --repeats runs each, and
reports balancedness (mean/max of the tokens each worker ran, Σ over layers) and output tokens/s for both, next
to the capacity planner's prediction from the calibration run's trace.

Options:
  --clients N                 concurrent clients (default 16; 1..256)
  --requests N                requests per run (default 2 × clients; 1..10000)
  --max-tokens M              tokens per request (default 32; 1..1024)
  --repeats R                 runs per placement, alternating; medians are reported (default 3; 1..20)
  --model DIR                 model package (default: the configured model)
  --workers N                 expert workers (default 2; 1..64)
  --max-experts-per-worker S  memory budget per worker for the rebalancer (default: none)
  --candidates N              candidate prompts to route (default 48; 4..1000)
  --prompts N                 skewed prompts to keep (default 8; 1..candidates)
  --tiny                      use a tiny random model package (smoke test; no trained model needed)
  --label TEXT                a note for the RESULTS.md section title
  --no-record                 print only; do not append to bench/RESULTS.md
  -h, --help                  this text

Exit status: 0 done, 1 the benchmark failed, 2 bad arguments.
`;

function parse(argv: string[]) {
  const values = parseFlags(argv, {
    clients: { type: 'string' }, requests: { type: 'string' }, 'max-tokens': { type: 'string' }, repeats: { type: 'string' },
    model: { type: 'string' }, workers: { type: 'string' }, 'max-experts-per-worker': { type: 'string' },
    candidates: { type: 'string' }, prompts: { type: 'string' }, tiny: { type: 'boolean' },
    label: { type: 'string' }, 'no-record': { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
  });
  if (values.help) return null;
  const clients = intFlag('clients', values.clients, 16, 1, 256);
  const candidates = intFlag('candidates', values.candidates, 48, 4, 1000);
  return {
    clients,
    requests: intFlag('requests', values.requests, 2 * clients, 1, 10_000),
    maxTokens: intFlag('max-tokens', values['max-tokens'], 32, 1, 1024),
    repeats: intFlag('repeats', values.repeats, 3, 1, 20),
    model: values.model,
    workers: intFlag('workers', values.workers, 2, 1, 64),
    maxExpertsPerWorker: values['max-experts-per-worker'] === undefined ? null : intFlag('max-experts-per-worker', values['max-experts-per-worker'], 1, 1, 1_000_000),
    candidates,
    keep: intFlag('prompts', values.prompts, 8, 1, candidates),
    tiny: values.tiny === true,
    label: values.label,
    record: !values['no-record'],
  };
}

/** Candidate prompts: the built-in English ones, corpus-like lines, and repetitive strings that tend to skew routing. */
export function candidatePrompts(count: number): string[] {
  const runs = ['a', 'e', ' ', '.', '!', '?', '0', '1', '9', 'Z', 'x', '-', '=', '*', '\n', 'th', 'he', 'ing ', 'the ', 'AND ', '1234567890', 'abc'];
  const shapes = [
    (s: string) => s.repeat(24),
    (s: string) => `${s.repeat(8)} ${s.toUpperCase().repeat(8)}`,
    (s: string) => `The ${s.repeat(12)}`,
  ];
  const out = [...DEFAULT_PROMPTS];
  for (const shape of shapes) for (const r of runs) out.push(shape(r));
  return [...new Set(out)].slice(0, count);
}

type Options = NonNullable<ReturnType<typeof parse>>;

interface LoadSnapshot {
  steps: number;
  tokensPerExpert: number[][];
  workerTokensPerLayer: number[][];
}

async function main(opts: Options): Promise<number> {
  let model = opts.model;
  if (opts.tiny) {
    const { tinyConfig, writeTinyPackage } = await import('../test/fixtures/tiny-package.ts');
    model = writeTinyPackage(tinyConfig({ max_position_embeddings: 256, num_experts: 8 }), 3);
  }
  const token = randomUUID();
  const traceFile = join(mkdtempSync(join(tmpdir(), 'switchyard-skewed-')), 'load.jsonl');
  const common = loopbackOverrides(model, opts.workers);
  const base = loadConfig({ overrides: common });
  const config: Config = loadConfig({
    overrides: {
      ...common,
      admin: { token, maxWorkers: opts.workers },
      placement: { maxExpertsPerWorker: opts.maxExpertsPerWorker },
      telemetry: { loadTraceFile: traceFile },
      cache: { prefix: { maxBytes: 0 }, response: { maxEntries: 0 } },
      // Room for the load and a batch slot per client; the server keeps its configured request timeout.
      limits: { ...loadLimits(base.limits, opts), maxBatchSequences: Math.max(base.limits.maxBatchSequences, opts.clients) },
    },
  });

  process.stderr.write(`starting the gateway (model ${config.model}, ${opts.workers} workers, load trace ${traceFile})\n`);
  let server: RunningServer | null = await startGateway(config);
  try {
    const url = server.url;
    const admin = async (path: string, init: RequestInit = {}) => {
      const r = await fetch(url + path, { ...init, headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` } });
      const body = await r.json();
      if (!r.ok) throw new Error(`${init.method ?? 'GET'} ${path}: ${r.status} ${body.error ?? ''}`);
      return body;
    };
    const snapshot = async (): Promise<LoadSnapshot> => {
      const all = (await admin('/admin/load')).windows.since_start;
      return {
        steps: all.steps, tokensPerExpert: all.tokens_per_expert,
        workerTokensPerLayer: all.tokens_per_expert.map((_: unknown, l: number) => all.workers.map((w: { tokens_per_layer: number[] }) => w.tokens_per_layer[l])),
      };
    };
    const minus = (a: number[][], b: number[][]) => a.map((row, i) => row.map((x, j) => x - (b[i]?.[j] ?? 0)));

    // 1. Route candidates one at a time and see which experts each one hits.
    const candidates = candidatePrompts(opts.candidates);
    process.stderr.write(`routing ${candidates.length} candidate prompts\n`);
    const client = await createClient('tgi', url, { timeoutMs: 300_000 });
    const hits: number[][][] = [];
    let before = await snapshot();
    for (const prompt of candidates) {
      await client.complete(prompt, opts.maxTokens);
      const after = await snapshot();
      hits.push(minus(after.tokensPerExpert, before.tokensPerExpert));
      before = after;
    }
    const layers = hits[0].length;
    const experts = hits[0][0].length;
    const hotPerLayer = Math.max(1, Math.floor(experts / 4));
    const totals = Array.from({ length: layers }, (_, l) => Array.from({ length: experts }, (_, e) => hits.reduce((n, h) => n + h[l][e], 0)));
    const hot = totals.map((row) => row.map((x, e) => [x, e]).sort((a, b) => b[0] - a[0]).slice(0, hotPerLayer).map(([, e]) => e));
    const score = (h: number[][]) => {
      const all = h.flat().reduce((a, b) => a + b, 0);
      return all === 0 ? 0 : h.reduce((n, row, l) => n + hot[l].reduce((m, e) => m + row[e], 0), 0) / all;
    };
    const ranked = candidates.map((prompt, i) => ({ prompt, score: score(hits[i]) })).sort((a, b) => b.score - a.score);
    const chosen = ranked.slice(0, opts.keep);
    const baselineShare = hotPerLayer / experts;
    process.stderr.write(`kept ${chosen.length} prompts; share of tokens on the ${hotPerLayer} hottest experts per layer: ` +
      `${chosen.map((c) => fmt(c.score * 100, 0)).join(', ')} % (even routing: ${fmt(baselineShare * 100, 0)} %)\n`);
    const prompts = chosen.map((c) => c.prompt);

    // 2. Runs; each measured by its /admin/load delta (balancedness) and its trace steps.
    interface Run { placement: 'start' | 'rebalanced'; metrics: LevelMetrics; wallMs: number; balance: number; steps: [number, number] }
    const runs: Run[] = [];
    const runOnce = async (placement: Run['placement']) => {
      const s0 = await snapshot();
      const level = await runLevel({ client, clients: opts.clients, requests: opts.requests, maxTokens: opts.maxTokens, prompts, stream: false });
      const s1 = await snapshot();
      const run: Run = {
        placement, metrics: summarize(level), wallMs: level.wallMs, steps: [s0.steps, s1.steps],
        balance: balanceOf(minus(s1.workerTokensPerLayer, s0.workerTokensPerLayer)).overall,
      };
      runs.push(run);
      process.stderr.write(`${placement}: ${fmt(run.metrics.tokensPerS)} tok/s, balancedness ${fmt(run.balance, 3)}, ${run.metrics.ok} ok, ${run.metrics.errors} errors\n`);
      return run;
    };

    const startPlacement = await admin('/admin/placement');
    const calibration = await runOnce('start');
    // The rebalancer's window: the calibration run's whole seconds (the candidate routing before it stays out).
    const windowS = Math.max(1, Math.min(3600, Math.floor(calibration.wallMs / 1000)));
    const plan = await admin('/admin/rebalance', { method: 'POST', body: JSON.stringify({ dry_run: true, window_s: windowS }) });
    const planned = plan.placement;
    process.stderr.write(`rebalance plan: predicted balancedness ${fmt(plan.predicted.before.overall, 3)} → ${fmt(plan.predicted.after.overall, 3)} (${plan.reason})\n`);
    for (let r = 0; r < opts.repeats; r++) {
      await admin('/admin/placement', { method: 'PUT', body: JSON.stringify(startPlacement) });
      await runOnce('start');
      await admin('/admin/placement', { method: 'PUT', body: JSON.stringify(planned) });
      await runOnce('rebalanced');
    }

    await server.close(); // flushes the load trace
    server = null;

    // 3. The planner's view from the calibration run's trace alone.
    const trace = await readLoadTrace(traceFile);
    const slice: LoadTrace = { ...trace, steps: trace.steps.slice(calibration.steps[0], calibration.steps[1]) };
    const cost = fitCost(slice);
    const cores = availableParallelism();
    const startP = placementFromFile(startPlacement, layers, experts);
    const plannedP = placementFromFile(planned, layers, experts);
    const load = totalLoad(slice);
    const predicted = {
      start: { tps: replay(slice, startP, cost, { cores, minSplitRows: config.placement.minSplitRows }).outputTokensPerS, balance: predictBalance(startP, load).overall },
      rebalanced: { tps: replay(slice, plannedP, cost, { cores, minSplitRows: config.placement.minSplitRows }).outputTokensPerS, balance: predictBalance(plannedP, load).overall },
    };

    // Engine-side rate of a run: sequences advanced per second of step time, from its own trace steps.
    const engineTps = (r: Run) => {
      const steps = trace.steps.slice(r.steps[0], r.steps[1]);
      const ms = steps.reduce((n, x) => n + x.stepMs, 0);
      return ms > 0 ? (steps.reduce((n, x) => n + x.sequences, 0) / ms) * 1000 : Number.NaN;
    };
    const measured = (p: Run['placement']) => {
      const rs = runs.filter((r) => r.placement === p && r !== calibration);
      return {
        tps: median(rs.map((r) => r.metrics.tokensPerS)), engine: median(rs.map(engineTps)), balance: median(rs.map((r) => r.balance)),
        ok: rs.reduce((n, r) => n + r.metrics.ok, 0), errors: rs.reduce((n, r) => n + r.metrics.errors, 0),
      };
    };
    const m = { start: measured('start'), rebalanced: measured('rebalanced') };
    const table = markdownTable(
      ['placement', 'balancedness measured', 'balancedness predicted', 'output tok/s measured', 'engine tok/s (trace)', 'output tok/s predicted', 'ok / errors'],
      (['start', 'rebalanced'] as const).map((p) => [
        p === 'start' ? 'start (round-robin)' : 'rebalanced', fmt(m[p].balance, 3), fmt(predicted[p].balance, 3),
        fmt(m[p].tps), fmt(m[p].engine), fmt(predicted[p].tps), `${m[p].ok} / ${m[p].errors}`,
      ]),
      ['left', 'right', 'right', 'right', 'right', 'right', 'right'],
    );
    const ratios = markdownTable(
      ['rebalanced / start', 'measured', 'engine (trace)', 'predicted'],
      [['output tok/s', fmt(m.rebalanced.tps / m.start.tps, 3), fmt(m.rebalanced.engine / m.start.engine, 3), fmt(predicted.rebalanced.tps / predicted.start.tps, 3)],
        ['balancedness', fmt(m.rebalanced.balance / m.start.balance, 3), '', fmt(predicted.rebalanced.balance / predicted.start.balance, 3)]],
      ['left', 'right', 'right', 'right'],
    );
    const notes = [
      `prompts: the ${chosen.length} of ${candidates.length} candidates with the largest share of tokens on the ${hotPerLayer} hottest experts per layer (${chosen.map((c) => fmt(c.score * 100, 0)).join(', ')} %; even routing would give ${fmt(baselineShare * 100, 0)} %)`,
      `measured balancedness: mean/max of the tokens each worker ran, Σ mean / Σ max over layers, from GET /admin/load deltas per run`,
      `predicted: the capacity planner's cost model fitted on the calibration run's trace (${cost.steps} steps), replayed on each placement on ${cores} cores; the rebalanced placement came from POST /admin/rebalance (${plan.replicas.flat().reduce((a: number, b: number) => a + b, 0) - layers * experts} replicas)`,
      `engine tok/s (trace): sequences advanced per second of scheduler step time in each run's own trace steps — what the planner models; the client-side rate also pays HTTP and the gaps between steps`,
      `calibration run (not in the medians): ${fmt(calibration.metrics.tokensPerS)} tok/s, balancedness ${fmt(calibration.balance, 3)}`,
    ];
    const body = [table, ratios];

    publish(body, notes, opts.record && {
      title: 'skewed routing: rebalancing', label: opts.label, command: commandLine('bench/skewed.ts'),
      facts: [
        ['model', config.model + (opts.tiny ? ' (tiny random package, smoke run)' : '')],
        ['server', `in-process, ${opts.workers} workers, maxBatchSequences ${config.limits.maxBatchSequences}, response and prefix caches off, load trace on, placement.maxExpertsPerWorker ${opts.maxExpertsPerWorker ?? 'none'}`],
        ['load', `${opts.clients} clients, ${opts.requests} requests per run, max ${opts.maxTokens} new tokens, greedy, not streamed, ${opts.repeats} repeats per placement (alternating)`],
      ],
    });
    return m.start.errors + m.rebalanced.errors === 0 ? 0 : 1;
  } finally {
    await server?.close();
  }
}

runCli('bench/skewed.ts', HELP, parse, main);
