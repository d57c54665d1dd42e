/**
 * Side by side with llama.cpp on the same weights: `npx tsx bench/peer.ts --help`.
 *
 * Starts llama-server (from ../shared/peer/, never fetched or built here) on a GGUF that our own
 * `switchyard convert-gguf` writes into a temp folder, and the gateway as a child process (caches off), and runs
 * the identical streamed greedy load against both, interleaved run by run. `--profile` instead splits the
 * gateway's step time (in this process) at each batch size. Every child process is killed on exit, Ctrl-C or error.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createClient, type Client } from './clients.ts';
import { runCli } from './cli-common.ts';
import { BASE_PARALLEL, OURS, parsePeerArgs, peerName, profileTable, runOrder, sideBySideTable, tokenCountNotes, MAX_CLIENTS, MAX_TOKENS, type PeerOptions, type ProfileLine } from './peer-lib.ts';
import { DEFAULT_PEER, freePort, peerVersion, startProc, stopProc, waitHealthy, type Proc } from './procs.ts';
import { commandLine, publish } from './record.ts';
import { medianOverRepeats, resultNotes, resultsTable, runLevel, summarize, warmUp, type LevelMetrics, type LevelResult } from './run-load.ts';
import { fmt } from './stats.ts';

const REPO = path.join(import.meta.dirname, '..');
const MODEL_DIR = path.join(REPO, 'models', 'switchyard-moe');
const BENCH_CONFIG = path.join(REPO, 'config', 'bench-no-cache.json');
const SWITCHYARD = path.join(REPO, 'bin', 'switchyard.mjs');
/** The model's context per llama-server slot. */
const CONTEXT = 512;

const HELP = `Usage: npx tsx bench/peer.ts [options]

Side by side with llama.cpp's llama-server on the same weights. Converts models/switchyard-moe to GGUF with
\`switchyard convert-gguf\` (temp folder), starts llama-server from ../shared/peer/llama-server and the gateway
(\`switchyard serve --config config/bench-no-cache.json\`, caches off) as child processes, and sends both the
identical closed-loop load of streamed greedy requests with ignore_eos (equal generated tokens), run by run
interleaved (peer, ours, peer, ...). At levels above ${BASE_PARALLEL} clients llama-server runs twice per repeat, with
--parallel ${BASE_PARALLEL} and --parallel <clients> (restarted between them, -c ${CONTEXT}×parallel); the ratios use the
better one. Reports output tok/s, TTFT p50/p99, decode tok/s per stream (medians over repeats) and ours/peer.
Without the llama-server binary it says so and measures the gateway alone.

Options:
  --clients LIST      concurrency levels (default 1,8,32; each 1..${MAX_CLIENTS})
  --requests N        requests per level and repeat (default max(8, 2 × clients))
  --max-tokens M      new tokens per request (default 64; at most ${MAX_TOKENS})
  --repeats R         interleaved runs per level and server; tables show medians (default 3)
  --prompts FILE      JSON array of prompts (default: the built-in short English prompts)
  --timeout-s S       hard limit per request (default 120)
  --threads T         llama-server -t and the gateway's expert workers (default: this machine's cores; with
                      --execution in-process only the cores: the compute team has a thread per core)
  --execution MODE    where the gateway's experts run: 'in-process' (default; the compute team that also runs
                      the trunk) or 'workers' (the worker pool, --threads workers)
  --peer-threads T    llama-server -t only (default: --threads); on a machine busy with other work, llama.cpp's
                      spinning thread barrier can collapse with -t = cores (say so when you use this)
  --peer PATH         llama-server binary (default ../shared/peer/llama-server)
  --no-peer           the gateway alone
  --profile           instead: where a step's time goes at each level's batch size (gateway in this process)
  --quick             smoke run: clients 1,4, 4 requests, 16 tokens, 1 repeat, not recorded
  --label TEXT        a note for the RESULTS.md section title
  --no-record         print only; do not append to bench/RESULTS.md
  -h, --help          this text
`;

/** The gateway's flags for --threads and --execution. */
function gatewayFlags(opts: PeerOptions): string[] {
  return opts.execution === 'workers' ? ['--workers', String(opts.threads)] : ['--execution', 'in-process'];
}

// ---------------------------------------------------------------------------------------------------------------
/** llama-server, restarted whenever a different --parallel is asked for. */
class Peer {
  private proc: Proc | null = null;
  private parallel = 0;
  client: Client | null = null;

  constructor(
    private readonly binary: string,
    private readonly gguf: string,
    private readonly tmp: string,
    private readonly opts: PeerOptions,
  ) {}

  async ensure(parallel: number, signal: AbortSignal): Promise<Client> {
    if (this.proc && this.client && this.parallel === parallel && this.proc.child.exitCode === null) return this.client;
    await this.stop();
    const port = await freePort();
    const args = ['-m', this.gguf, '--host', '127.0.0.1', '--port', String(port), '-t', String(this.opts.peerThreads),
      '--parallel', String(parallel), '-c', String(CONTEXT * parallel)];
    process.stderr.write(`starting llama-server --parallel ${parallel} -c ${CONTEXT * parallel} -t ${this.opts.peerThreads} on port ${port}\n`);
    this.proc = startProc('llama-server', this.binary, args, path.join(this.tmp, 'llama-server.log'));
    this.parallel = parallel;
    const url = `http://127.0.0.1:${port}`;
    await waitHealthy(this.proc, url);
    this.client = await createClient('llamacpp', url, { timeoutMs: this.opts.timeoutMs, ignoreEos: true });
    await warmUp([{ name: peerName(parallel), client: this.client }], this.opts.prompts[0], 8, true, signal);
    return this.client;
  }

  async stop(): Promise<void> {
    if (this.proc) await stopProc(this.proc);
    this.proc = null;
    this.client = null;
  }
}

// ---------------------------------------------------------------------------------------------------------------

async function sideBySide(opts: PeerOptions, signal: AbortSignal, onCleanup: (f: () => Promise<void>) => void): Promise<number> {
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'switchyard-peer-'));
  onCleanup(async () => rmSync(tmp, { recursive: true, force: true }));

  const binary = opts.noPeer ? undefined : (opts.peer ?? DEFAULT_PEER);
  let peer: Peer | null = null;
  let peerAbout = 'none';
  if (binary !== undefined && !existsSync(binary)) {
    process.stderr.write(`\nNOTE: llama-server not found at ${binary}: measuring the gateway alone (no ratios). ` +
      `The repository does not fetch or build llama.cpp; put a build at ../shared/peer/llama-server or pass --peer PATH.\n\n`);
  } else if (binary !== undefined) {
    const gguf = path.join(tmp, 'm.gguf');
    process.stderr.write(`converting ${path.relative(REPO, MODEL_DIR)} to GGUF (switchyard convert-gguf) in ${tmp}\n`);
    execFileSync(process.execPath, [SWITCHYARD, 'convert-gguf', '--model', MODEL_DIR, '--out', gguf], { cwd: REPO, stdio: ['ignore', 'ignore', 'inherit'], timeout: 300_000 });
    peer = new Peer(binary, gguf, tmp, opts);
    onCleanup(() => peer!.stop());
    peerAbout = `llama-server ${peerVersion(binary)} (${binary}), GGUF F32 from switchyard convert-gguf, -t ${opts.peerThreads}, --parallel per level (see rows), -c ${CONTEXT}×parallel, /completion with ignore_eos, cache_prompt false`;
  }

  const port = await freePort();
  const oursUrl = `http://127.0.0.1:${port}`;
  process.stderr.write(`starting the gateway: switchyard serve --port ${port} --config config/bench-no-cache.json ${gatewayFlags(opts).join(' ')}\n`);
  const gateway = startProc('the gateway', process.execPath,
    [SWITCHYARD, 'serve', '--host', '127.0.0.1', '--port', String(port), '--config', BENCH_CONFIG, ...gatewayFlags(opts)],
    path.join(tmp, 'gateway.log'), { ...process.env, LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn' });
  onCleanup(() => stopProc(gateway));
  await waitHealthy(gateway, oursUrl);
  const ours = await createClient('tgi', oursUrl, { timeoutMs: opts.timeoutMs, ignoreEos: true });
  await warmUp([{ name: OURS, client: ours }], opts.prompts[0], 8, true, signal);

  const loadBefore = os.loadavg();
  const results: LevelResult[] = [];
  for (const clients of opts.levels) {
    const requests = opts.requestsFor(clients);
    const order = peer ? runOrder(clients) : [{ target: OURS }];
    const perTarget = new Map<string, LevelMetrics[]>(order.map((o) => [o.target, []]));
    for (let r = 0; r < opts.repeats && !signal.aborted; r++) {
      for (const step of order) {
        if (signal.aborted) break;
        const client = step.parallel !== undefined ? await peer!.ensure(step.parallel, signal) : ours;
        const run = await runLevel({ client, clients, requests, maxTokens: opts.maxTokens, prompts: opts.prompts, stream: true, signal });
        const m = summarize(run);
        perTarget.get(step.target)!.push(m);
        process.stderr.write(`${step.target}: clients=${clients} repeat ${r + 1}/${opts.repeats}: ${fmt(m.tokensPerS)} tok/s, ` +
          `TTFT p50 ${fmt(m.ttftP50Ms)} ms, ${fmt(m.meanTokens)} tokens/req, ${m.ok} ok, ${m.errors} errors${m.firstError ? ` (${m.firstError})` : ''}\n`);
      }
    }
    for (const [target, runs] of perTarget) {
      if (runs.length > 0) results.push({ target, clients, requests, repeats: runs.length, metrics: medianOverRepeats(runs) });
    }
  }

  const body = [resultsTable(results)];
  if (peer) body.push(`Side by side (peer: the better --parallel at each level; ratios ours/peer from this run — tok/s and decode: above 1 we are faster; TTFT: below 1 we are faster):\n\n${sideBySideTable(results)}`);
  const notes = [...resultNotes(results), ...tokenCountNotes(results, opts.maxTokens)];
  notes.push('Ratios are only computed within this one run: the servers alternate run by run (peer, ours, peer, …) so drift hits both alike. ' +
    `On a small machine (${os.cpus().length} cores) shared with other work the absolute numbers are noisy; compare ratios, not absolute numbers across sections.`);
  if (!peer) notes.push('no llama-server: the gateway alone, no ratios.');
  if (peer && opts.peerThreads !== opts.threads) notes.push(`llama-server ran with -t ${opts.peerThreads}, the gateway with ${opts.threads} ${opts.execution === 'workers' ? 'expert workers' : 'compute team threads'} (not equal threads; --peer-threads).`);
  if (signal.aborted) notes.push('interrupted before the end: incomplete levels are missing or based on fewer repeats.');
  publish(body, notes, opts.record && {
    title: 'side by side with llama.cpp', label: opts.label, command: commandLine('bench/peer.ts'),
    facts: [
      ['ours', `switchyard serve --config config/bench-no-cache.json (caches off) ${gatewayFlags(opts).join(' ')}, /generate_stream with ignore_eos`],
      ['peer', peerAbout],
      ['load', `${opts.maxTokens} new tokens (ignore_eos), greedy, streamed, prompts: ${opts.promptsFrom} (${opts.prompts.length}), ${opts.repeats} repeats interleaved`],
      ['machine load', `load average (1 min) ${loadBefore[0].toFixed(1)} at the start, ${os.loadavg()[0].toFixed(1)} at the end (other work on the machine)`],
    ],
  });
  return results.some((r) => r.metrics.ok > 0) ? 0 : 1;
}

async function profile(opts: PeerOptions, signal: AbortSignal, onCleanup: (f: () => Promise<void>) => void): Promise<number> {
  // Imported here: the side-by-side mode needs none of the engine in this process.
  const { loadConfig } = await import('../src/config.ts');
  const { Engine } = await import('../src/engine/engine.ts');
  const { StepProfiler, summarizeProfile, timeForward } = await import('../src/engine/step-profile.ts');
  const { readTensors } = await import('../src/format/safetensors.ts');
  const { tensorNames } = await import('../src/engine/package.ts');
  const { routerLogits, topK, planDispatch } = await import('../router/index.ts');
  const { loadLimits } = await import('./servers.ts');
  const { percentile } = await import('./stats.ts');

  const maxClients = Math.max(...opts.levels);
  const placing = opts.execution === 'workers' ? { workers: opts.threads } : { experts: { execution: opts.execution } };
  const base = loadConfig({ file: BENCH_CONFIG, overrides: { host: '127.0.0.1', port: 0, ...placing } });
  const config = loadConfig({
    file: BENCH_CONFIG,
    overrides: { host: '127.0.0.1', port: 0, ...placing, limits: loadLimits(base.limits, { maxTokens: opts.maxTokens, clients: maxClients, timeoutMs: opts.timeoutMs }) },
  });
  const profiler = new StepProfiler({ captureRouting: true });
  let engine: Awaited<ReturnType<typeof Engine.load>> | undefined;
  const server = await (async () => {
    const { startServer } = await import('../src/serve.ts');
    const { createLogger } = await import('../src/log.ts');
    return startServer(config, {
      closeGraceMs: 2_000,
      logger: createLogger({ level: process.env.LOG_LEVEL ?? 'warn' }),
      loadEngine: async (cfg, observer) => {
        engine = await Engine.load(cfg, observer ? [observer, profiler] : [profiler]);
        timeForward(engine.model, profiler);
        return engine;
      },
    });
  })();
  onCleanup(async () => void (await server.close()));
  const e = engine!;
  const c = e.pkg.config;
  const routers = readTensors(e.pkg.weightsFile, e.pkg.tensors, Array.from({ length: c.num_hidden_layers }, (_, l) => tensorNames.layer(l).router));
  // The router's logits come out of the attention output graph (counted in trunk): the replay times the JavaScript
  // part, top-k and the dispatch plan, on logits computed once (the replay keeps the fastest of its repeats).
  const logitsOf = new WeakMap<Float32Array, Float32Array>();
  const route = (layer: number, x: Float32Array, tokens: number) => {
    let logits = logitsOf.get(x);
    if (!logits) logitsOf.set(x, (logits = routerLogits(x, routers.get(tensorNames.layer(layer).router)!, tokens, c.hidden_size, c.num_experts)));
    const gating = topK(logits, tokens, c.num_experts, c.num_experts_per_tok, c.norm_topk_prob);
    planDispatch(gating.expert, c.num_experts, config.routing.capacityFactor, gating.k);
  };
  const request = (i: number) => ({
    inputs: opts.prompts[i % opts.prompts.length], maxNewTokens: opts.maxTokens, stop: [], ignoreEos: true,
    sampling: { doSample: false, temperature: 1, topK: null, topP: null, repetitionPenalty: null, seed: null },
  });
  const http = await createClient('tgi', server.url, { timeoutMs: opts.timeoutMs, ignoreEos: true });
  await warmUp([{ name: OURS, client: http }], opts.prompts[0], 8, true, signal);

  const lines: ProfileLine[] = [];
  for (const batch of opts.levels) {
    if (signal.aborted) break;
    // Untimed first: expert kernels are chosen by trial on first use ('auto'), and shapes warm up.
    await Promise.all(Array.from({ length: batch }, (_, i) => e.generate({ ...request(i), maxNewTokens: Math.min(8, opts.maxTokens) }, { cache: false, signal })));
    // Engine pass: `batch` requests submitted at once decode together, one token each per step.
    profiler.reset();
    profiler.captureRouting = true;
    for (let r = 0; r < opts.repeats && !signal.aborted; r++) {
      await Promise.all(Array.from({ length: batch }, (_, i) => e.generate(request(i), { cache: false, signal })));
    }
    profiler.replayRouting(route);
    const engineRow = summarizeProfile(profiler.samples).find((row) => row.batch === batch);

    // HTTP pass: the same batch through /generate_stream; the clients' time per token against the engine's step.
    profiler.reset();
    profiler.captureRouting = false;
    const run = await runLevel({ client: http, clients: batch, requests: batch * opts.repeats, maxTokens: opts.maxTokens, prompts: opts.prompts, stream: true, signal });
    const m = summarize(run);
    const steps = profiler.samples.filter((s) => s.decode && s.batch === batch);
    const stepMs = summarizeProfile(steps)[0]?.stepMs ?? Number.NaN;
    lines.push({ batch, engine: engineRow, http: { stepMs, perTokenMs: 1000 / m.decodeTps, steps: steps.length } });
    process.stderr.write(`profile batch ${batch}: engine step ${fmt(engineRow?.stepMs, 2)} ms (${engineRow?.steps ?? 0} steps), ` +
      `HTTP step ${fmt(stepMs, 2)} ms, per token ${fmt(1000 / m.decodeTps, 2)} ms (p99 TTFT ${fmt(percentile(run.samples.map((s) => s.ttftMs), 99))} ms)\n`);
  }

  const body = [profileTable(lines)];
  const notes = [
    'Medians over pure decode steps at exactly that batch (prefill steps left out). Engine columns: `batch` requests submitted at once to the in-process Engine (no HTTP), ' +
      `${opts.repeats} round(s) of ${opts.maxTokens} tokens. step = the scheduler step (forward + sampling + token hand-off); trunk = forward − dispatch − routing ` +
      '(embedding, attention, LM head; the model reports no finer split); routing = top-k + dispatch plan (the router logits come out of the attention output graph, so trunk holds them), replayed on the captured router inputs after the run; ' +
      'dispatch round trip = Σ over layers of pool.runLayer wall time (combine included); expert compute = Σ over layers of the slowest worker\'s reported computeMs; ' +
      'sampling + hand-off = step − forward.',
    'HTTP columns: the same batch through /generate_stream of an in-process gateway; per-token = 1000 / median decode tok/s per stream seen by the clients; ' +
      'HTTP/SSE overhead = per-token − the median engine step measured in that pass. The load client runs in the same process (its SSE parsing is counted as overhead).',
    `Each component is its own median, so the parts need not add up exactly to the step. Noisy machine (${os.cpus().length} cores, other work running): compare within a section.`,
  ];
  publish(body, notes, opts.record && {
    title: 'step profile', label: opts.label, command: commandLine('bench/peer.ts'),
    facts: [
      ['gateway', `in this process, config/bench-no-cache.json (caches off), ${opts.execution === 'workers' ? `${opts.threads} expert workers, trunk threads ${config.onnx.trunkThreads}` : `experts in-process on a compute team of ${opts.threads} threads`}`],
      ['machine load', `load average (1 min) ${os.loadavg()[0].toFixed(1)} at the end (other work on the machine)`],
    ],
  });
  return 0;
}

async function main(opts: PeerOptions): Promise<number> {
  const controller = new AbortController();
  const cleanups: Array<() => Promise<void>> = [];
  const onSignal = (sig: NodeJS.Signals) => {
    process.stderr.write(`${sig}: cancelling requests and stopping the servers\n`);
    controller.abort();
    // A second signal: no more waiting (the 'exit' handler kills the children).
    process.once(sig, () => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    return await (opts.profile ? profile : sideBySide)(opts, controller.signal, (f) => cleanups.push(f));
  } finally {
    for (const f of cleanups.reverse()) await f().catch((err: unknown) => process.stderr.write(`cleanup: ${(err as Error).message}\n`));
  }
}

runCli('bench/peer.ts', HELP, (argv) => parsePeerArgs(argv, os.cpus().length), main);
