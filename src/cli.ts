/**
 * The `switchyard` command line. Each subcommand is one entry in COMMANDS: its flags (node:util parseArgs
 * options), usage text and a run function that returns the exit code.
 * Exit codes: 0 ok, 1 failure (bad configuration, startup error; `serve`: requests cut at shutdown, or a second
 * signal), 2 usage error (unknown command or flag).
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ConfigError, loadConfig, type ConfigInput } from './config.ts';
import { PackageError } from './format/safetensors.ts';
import { log } from './log.ts';
import { lineProgress, progressOn, silentProgress, type Progress, type ProgressLabel } from './progress.ts';

type Options = NonNullable<ParseArgsConfig['options']>;
type Values = Record<string, string | boolean | undefined>;

export interface CliIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  /** Progress display for a long job (default: a line per tenth of the work through `stderr`). */
  progress?: (what: ProgressLabel) => Progress;
}

export interface Command {
  summary: string;
  /** Usage text shown by `switchyard <name> --help` (list -h, --help too: every command accepts it). */
  usage: string;
  /** More help, worked out when asked for (`--help`, `help <name>`), e.g. from the code it describes. */
  moreHelp?: () => Promise<string>;
  options: Options;
  run(values: Values, io: CliIo): Promise<number>;
}

/** Thrown for a bad flag value; reported with the command's usage, exit code 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

function intFlag(values: Values, name: string, min: number): number | undefined {
  const raw = values[name];
  if (raw === undefined) return undefined;
  if (typeof raw !== 'string' || !/^\d+$/.test(raw.trim()) || Number(raw) < min) {
    throw new UsageError(`--${name} must be an integer >= ${min} (got ${JSON.stringify(raw)})`);
  }
  return Number(raw);
}

function dropFraction(raw: string | undefined): number | undefined {
  if (raw === undefined) return undefined;
  const f = Number(raw);
  if (!(f >= 0 && f < 1)) throw new UsageError(`--drop-experts must be a fraction with 0 <= F < 1 (got ${JSON.stringify(raw)})`);
  return f;
}

const strFlag = (values: Values, name: string): string | undefined =>
  typeof values[name] === 'string' ? (values[name] as string) : undefined;

/** Progress of a long job on stderr; none with --quiet. */
function progressFor(io: CliIo, values: Values, what: ProgressLabel): Progress {
  if (values.quiet) return silentProgress;
  return io.progress ? io.progress(what) : lineProgress(io.stderr, what);
}

const QUIET_FLAG = { quiet: { type: 'boolean', short: 'q' } } as const;

/**
 * One repeat of the first signal within this many ms is the same request delivered twice, not a second one: Ctrl-C
 * under `npm start` reaches the server from the terminal and again from npm, which forwards SIGINT and SIGTERM. On a
 * loaded machine npm's copy can come well over half a second later (a 500 ms window failed in CI), so the window is
 * wide and the repeat is said in the log; any further signal, or a different one, exits at once.
 */
const DUPLICATE_SIGNAL_MS = 3000;

/** Resolves once SIGINT or SIGTERM arrives; a second signal exits at once (code 1). */
function shutdownSignal(): Promise<string> {
  return new Promise((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      const first = performance.now();
      let repeated = false;
      const force = (again: NodeJS.Signals) => {
        if (again === signal && !repeated && performance.now() - first < DUPLICATE_SIGNAL_MS) {
          repeated = true;
          log.info('signal repeated: taken as the same request (npm forwards it); send it again to exit at once', { signal });
          return;
        }
        log.warn('second signal, exiting without waiting', { signal: again });
        process.exit(1);
      };
      // Add the new listeners before removing the old: with no listener left, Node restores the default action for
      // a moment, and npm's forwarded copy of Ctrl-C arriving right then killed the server without a word.
      process.on('SIGINT', force);
      process.on('SIGTERM', force);
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      resolve(signal);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}

export const COMMANDS: Record<string, Command> = {
  serve: {
    summary: 'Start the HTTP gateway',
    usage: `Usage: switchyard serve [options]

Load the model package and serve the HTTP API (every route is listed below). With an admin token
(SWITCHYARD_ADMIN_TOKEN or admin.token), the admin API and the operator dashboard at /dashboard are on.

SIGTERM or SIGINT shuts down gracefully: the listener closes, requests in flight get up to shutdown.graceMs to
finish, then what is left ends with an error (streams: a terminal error event). Exit code 0 when every request
finished, 1 when some were cut; a second signal exits at once with 1 (one repeat of the same signal within 3 s
counts as the first: npm forwards Ctrl-C to the server, which also gets it from the terminal).

Options:
  --config FILE   JSON configuration file (default: $SWITCHYARD_CONFIG, else config/default.json if present)
  --model DIR     model package folder (env SWITCHYARD_MODEL; default models/switchyard-moe)
  --host H        interface to listen on (env HOST; default 127.0.0.1)
  --port N        TCP port, 0 for a free one (env PORT; default 8080)
  --workers K     expert worker threads (env SWITCHYARD_WORKERS; default: one per CPU core)
  --execution M   where the experts run (experts.execution): 'workers' (the worker pool: placement, rebalancing,
                  scale-out) or 'in-process' (a compute team of one thread per core in this process that also runs
                  the trunk: fastest on one machine; one fixed placement)
  --nats URL      join the expert cluster on this NATS server (nats.url): experts run on expert hosts as the
                  cluster placement says (nats.placementFile); see docs/scale-out.md
  -h, --help      show this help

Precedence: defaults < config file < environment < flags. LOG_LEVEL=debug|info|warn|error|silent sets logging.`,
    // From the app's own route table, so the list is always what the server mounts.
    async moreHelp() {
      const { formatRoutes } = await import('./server/route-list.ts');
      return `${formatRoutes()}\n\nThe admin routes take Authorization: Bearer <admin.token>; nats.url is set by --nats.`;
    },
    options: {
      config: { type: 'string' },
      model: { type: 'string' },
      host: { type: 'string' },
      port: { type: 'string' },
      workers: { type: 'string' },
      execution: { type: 'string' },
      nats: { type: 'string' },
    },
    async run(values) {
      const nats = strFlag(values, 'nats');
      const execution = strFlag(values, 'execution');
      if (execution !== undefined && execution !== 'workers' && execution !== 'in-process') {
        throw new UsageError(`--execution must be 'workers' or 'in-process'; got ${JSON.stringify(execution)}`);
      }
      const overrides: ConfigInput = {
        model: strFlag(values, 'model'),
        host: strFlag(values, 'host'),
        port: intFlag(values, 'port', 0),
        workers: intFlag(values, 'workers', 1),
        ...(execution ? { experts: { execution } } : {}),
        ...(nats ? { nats: { url: nats } } : {}),
      };
      const config = loadConfig({ file: strFlag(values, 'config'), overrides });
      // Listening for signals first: one that arrives while the model loads (or just after 'listening' is logged)
      // then shuts the server down once it is up, instead of killing the process by the default action.
      const signalled = shutdownSignal();
      const { startServer } = await import('./serve.ts');
      // The dashboard's capacity planner (POST /admin/plan) is `plan`'s code: handed in, since the server may not
      // import offline tools.
      const { tracePlanner } = await import('./planning/plan-service.ts');
      const server = await startServer(config, { planner: tracePlanner });
      const signal = await signalled;
      log.info('signal received', { signal });
      const report = await server.close();
      return report.cut > 0 ? 1 : 0;
    },
  },
  'expert-host': {
    summary: 'Serve experts to gateways on other machines, over NATS',
    usage: `Usage: switchyard expert-host --nats URL [options]

Joins the expert cluster on NATS, announces itself, and serves the experts the cluster placement gives this host
(the placement lives in the cluster's JetStream key-value bucket; a gateway started with nats.placementFile
publishes it, and hosts follow every change: load, subscribe, drain, unload). Runs no HTTP server.
SIGTERM or SIGINT leaves the cluster: batches already received are answered, then the workers stop.

Options:
  --nats URL      NATS server(s) with JetStream, e.g. nats://10.0.0.5:4222 (nats.url)
  --host-id ID    this host's id in the cluster placement (default: the machine's name)
  --workers K     expert worker threads (env SWITCHYARD_WORKERS; default: one per CPU core)
  --model DIR     model package folder, the gateway's (env SWITCHYARD_MODEL; default models/switchyard-moe)
  --config FILE   JSON configuration file: nats.cluster, nats.token, nats.credentialsFile, experts.*, onnx.*
  -h, --help      show this help`,
    options: {
      nats: { type: 'string' },
      'host-id': { type: 'string' },
      workers: { type: 'string' },
      model: { type: 'string' },
      config: { type: 'string' },
    },
    async run(values) {
      const nats = strFlag(values, 'nats');
      const config = loadConfig({
        file: strFlag(values, 'config'),
        overrides: { model: strFlag(values, 'model'), workers: intFlag(values, 'workers', 1), ...(nats ? { nats: { url: nats } } : {}) },
      });
      if (!config.nats.url) throw new UsageError('--nats URL is required (or nats.url in the configuration)');
      const hostId = strFlag(values, 'host-id');
      if (hostId !== undefined && !/^[A-Za-z0-9_-]{1,64}$/.test(hostId)) throw new UsageError('--host-id: 1-64 letters, digits, _ or -');
      const signalled = shutdownSignal();
      const { startExpertHost } = await import('./expert-host.ts');
      const running = await startExpertHost(config, hostId);
      const signal = await signalled;
      log.info('signal received', { signal });
      await running.close();
      return 0;
    },
  },
  prune: {
    summary: 'One-shot pruning of the experts: magnitude, Wanda, SparseGPT, 2:4, structured',
    usage: `Usage: switchyard prune --model DIR --out DIR --method M --sparsity S [options]

Prunes the experts of a model package and writes a new package in the same format, which 'switchyard serve
--model DIR' serves unchanged. Calibration text runs through the gateway's own forward pass; each expert is
calibrated on exactly the tokens the router sends it. Unstructured and N:M sparsity is stored as
compressed-tensors sparse-bitmask tensors; structured pruning stores smaller dense matrices.

Methods:
  magnitude          smallest |w| per matrix
  magnitude-global   smallest |w| over all selected expert matrices at once
  wanda              smallest |w|·‖x‖ per output row (calibrated)
  sparsegpt          one-shot OBS reconstruction with the calibration Hessian
  2:4                magnitude, keeping 2 of every 4 weights per row
  structured         whole FFN neurons by calibrated importance (smaller dense experts)

Options:
  --model DIR            dense model package (required)
  --out DIR              where to write the pruned package (required)
  --method M             one of the methods above (required)
  --sparsity S           fraction of expert weights (or neurons) to remove, 0 <= S < 1 (required except 2:4)
  --pattern N:M          semi-structured pattern for wanda or sparsegpt (e.g. 2:4)
  --calibration FILE     calibration text (default: the package's calibration.txt)
  --calibration-tokens N most calibration tokens (default 8192)
  --experts L.E,...      only these experts (default: all)
  --drop-experts F       also remove, per layer, this fraction of the experts the router chose least often on the
                         calibration text (no weights kept; the router masks them)
  -q, --quiet            no progress on stderr
  -h, --help             show this help

Progress (calibration tokens, then experts) goes to stderr: a bar on a terminal, else a line per tenth of the work.`,
    options: {
      model: { type: 'string' },
      out: { type: 'string' },
      method: { type: 'string' },
      sparsity: { type: 'string' },
      pattern: { type: 'string' },
      calibration: { type: 'string' },
      'calibration-tokens': { type: 'string' },
      experts: { type: 'string' },
      'drop-experts': { type: 'string' },
      ...QUIET_FLAG,
    },
    async run(values, io) {
      const { METHODS, prunePackage } = await import('./pruning/prune-package.ts');
      const model = strFlag(values, 'model');
      const out = strFlag(values, 'out');
      const method = strFlag(values, 'method');
      if (!model || !out) throw new UsageError('--model DIR and --out DIR are required');
      if (!method || !(METHODS as readonly string[]).includes(method)) throw new UsageError(`--method must be one of ${METHODS.join(', ')}`);
      const sparsity = Number(strFlag(values, 'sparsity') ?? (method === '2:4' ? '0.5' : NaN));
      if (!(sparsity >= 0 && sparsity < 1)) throw new UsageError('--sparsity must be a number with 0 <= S < 1');
      const pattern = strFlag(values, 'pattern');
      const nm = pattern ? /^(\d+):(\d+)$/.exec(pattern) : null;
      if (pattern && (!nm || Number(nm[1]) >= Number(nm[2]))) throw new UsageError('--pattern must look like 2:4 (keep N of every M, N < M)');
      const experts = strFlag(values, 'experts')?.split(',').map((e) => {
        const m = /^(\d+)\.(\d+)$/.exec(e.trim());
        if (!m) throw new UsageError(`--experts takes layer.expert pairs like 0.3,1.7 (got ${JSON.stringify(e)})`);
        return { layer: Number(m[1]), expert: Number(m[2]) };
      });
      const options = {
        modelDir: model, outDir: out, method: method as (typeof METHODS)[number], sparsity,
        nm: nm ? { n: Number(nm[1]), m: Number(nm[2]) } : undefined,
        calibration: strFlag(values, 'calibration'), calibrationTokens: intFlag(values, 'calibration-tokens', 1), experts,
        dropExperts: dropFraction(strFlag(values, 'drop-experts')),
      };
      if (!values.quiet) io.stderr(`prune: loading ${model}`);
      const calibrating = progressFor(io, values, { label: 'calibrating', unit: 'tokens' });
      const pruning = progressFor(io, values, { label: 'pruning', unit: 'experts' });
      let result: Awaited<ReturnType<typeof prunePackage>>;
      try {
        result = await prunePackage({
          ...options,
          onCalibrationProgress: (done, total) => calibrating.update(done, total),
          onProgress: (done, total, what) => {
            calibrating.stop();
            pruning.update(done, total, what);
          },
        });
      } finally {
        calibrating.stop();
        pruning.stop();
      }
      if (result.dropped.length > 0) io.stdout(`dropped ${result.dropped.length} experts: ${result.dropped.map((e) => `${e.layer}.${e.expert} (${(100 * e.share).toFixed(1)}%)`).join(', ')}`);
      io.stdout(`wrote ${result.outDir}: ${result.experts.length} experts pruned, expert sparsity ${(100 * result.expertSparsity).toFixed(2)}%, weights ${result.bytes.before} -> ${result.bytes.after} bytes`);
      return 0;
    },
  },
  eval: {
    summary: 'Validation bits per byte and greedy agreement with a reference model',
    usage: `Usage: switchyard eval --model DIR [--reference DIR] [--workers K] [--json] [-q]

Scores a model package on the bundled corpus' held-out windows (validation.json, written by the trainer) through
the gateway's own forward pass: validation bits per byte (targets that are bytes), per source, and — with
--reference (e.g. the dense model a pruned package came from) — the fraction of positions where both models make
the same greedy next-token choice.

Options:
  --model DIR       model package to score (required)
  --reference DIR   model to compare greedy choices with (default: models/switchyard-moe unless that is --model)
  --workers K       expert worker threads (default: one per CPU core)
  --json            print one JSON line {"val_bpb": …, "greedy_agreement": …, …}
  -q, --quiet       no progress on stderr
  -h, --help        show this help

Progress (windows scored) goes to stderr: a bar on a terminal, else a line per tenth of the windows.`,
    options: {
      model: { type: 'string' },
      reference: { type: 'string' },
      workers: { type: 'string' },
      json: { type: 'boolean' },
      ...QUIET_FLAG,
    },
    async run(values, io) {
      const model = strFlag(values, 'model');
      if (!model) throw new UsageError('--model DIR is required');
      const { runEval } = await import('./eval/run-eval.ts');
      const reference = strFlag(values, 'reference') ?? 'models/switchyard-moe';
      const workers = intFlag(values, 'workers', 1);
      if (!values.quiet) io.stderr(`eval: loading ${model}${resolve(reference) !== resolve(model) ? ` and the reference ${reference}` : ''}`);
      const progress = progressFor(io, values, { label: 'eval', unit: 'windows' });
      let result: Awaited<ReturnType<typeof runEval>>;
      try {
        result = await runEval({ model, reference, workers, onProgress: (done, total) => progress.update(done, total) });
      } finally {
        progress.stop();
      }
      if (values.json) io.stdout(JSON.stringify(result));
      else {
        io.stdout(`validation bits per byte: ${result.val_bpb.toFixed(4)} over ${result.val_bytes} bytes (${result.windows} windows)`);
        for (const [source, bpb] of Object.entries(result.val_bpb_per_source)) io.stdout(`  ${source}: ${bpb.toFixed(4)}`);
        if (result.greedy_agreement !== null) io.stdout(`greedy agreement with ${reference}: ${(100 * result.greedy_agreement).toFixed(2)}%`);
      }
      return 0;
    },
  },
  'convert-gguf': {
    summary: 'Write the model package as a GGUF file for llama.cpp',
    usage: `Usage: switchyard convert-gguf --model DIR --out FILE.gguf

Convert a model package (config.json, weights, tokenizer.json) into a GGUF v3 file that llama.cpp loads (all
tensors F32, same weights): OLMoE as architecture 'olmoe', Mixtral as 'llama' (with experts), Qwen2-MoE as
'qwen2moe', Granite-MoE as 'granitemoe', e.g. to run llama-server on it for a comparison. Pruned packages:
sparse-bitmask experts are written dense, narrower experts padded with zero neurons to the widest; packages with
experts removed by --drop-experts are refused (llama.cpp cannot mask an expert).

Options:
  --model DIR     model package folder (required)
  --out FILE      GGUF file to write; replaced if it exists (required)
  -h, --help      show this help

Inspect the result with: npx tsx src/convert/gguf-reader.ts FILE.gguf [--tensors]`,
    options: {
      model: { type: 'string' },
      out: { type: 'string' },
    },
    async run(values, io) {
      const modelDir = strFlag(values, 'model');
      const outFile = strFlag(values, 'out');
      if (!modelDir) throw new UsageError('--model DIR is required');
      if (!outFile) throw new UsageError('--out FILE is required');
      const { convertOlmoeToGguf } = await import('./convert/olmoe-to-gguf.ts');
      const { PackageError } = await import('./engine/package.ts');
      const { GgufError } = await import('./convert/gguf-writer.ts');
      try {
        const result = convertOlmoeToGguf({ modelDir, outFile });
        for (const note of result.notes) io.stderr(`note: ${note}`);
        io.stdout(`wrote ${result.outFile}: ${result.tensors} tensors, ${result.metadataKeys} metadata keys, ${result.bytes} bytes`);
        return 0;
      } catch (err) {
        // a bad package, an unencodable value, or the output path (missing folder, no permission)
        if (err instanceof PackageError || err instanceof GgufError || typeof (err as NodeJS.ErrnoException).code === 'string') {
          io.stderr(`switchyard convert-gguf: ${(err as Error).message}`);
          return 1;
        }
        throw err;
      }
    },
  },
  inspect: {
    summary: 'What a checkpoint is and whether it fits this machine, from its config.json',
    usage: `Usage: switchyard inspect --model DIR | --config FILE [--memory-gib G]

Reads a checkpoint's config.json (nothing else: run it before downloading or loading gigabytes of weights) and
prints its architecture, parameters in total and active per token, the KV cache per token and at the full context,
and the memory the gateway needs with each expert kernel (experts.kernel: dense float32, int8, int4; the trunk is
held in float32 whatever the checkpoint's dtype), with a verdict for this machine. Exit status 1 for a model_type the
gateway does not serve.

Options:
  --model DIR      model package folder (reads DIR/config.json)
  --config FILE    a config.json by itself
  --memory-gib G   memory to judge against instead of this machine's
  -h, --help       show this help`,
    options: {
      model: { type: 'string' },
      config: { type: 'string' },
      'memory-gib': { type: 'string' },
    },
    async run(values, io) {
      const modelDir = strFlag(values, 'model');
      const configFile = strFlag(values, 'config');
      if ((modelDir === undefined) === (configFile === undefined)) throw new UsageError('give either --model DIR or --config FILE');
      const memoryGib = strFlag(values, 'memory-gib');
      if (memoryGib !== undefined && !(/^\d+(\.\d+)?$/.test(memoryGib) && Number(memoryGib) > 0 && Number.isFinite(Number(memoryGib)))) {
        throw new UsageError(`--memory-gib must be a positive decimal number of GiB (got ${JSON.stringify(memoryGib)})`);
      }
      const { readFileSync } = await import('node:fs');
      const { totalmem } = await import('node:os');
      const { join } = await import('node:path');
      const { formatInspect, inspectConfig, InspectError } = await import('./planning/inspect.ts');
      const file = configFile ?? join(modelDir!, 'config.json');
      let raw: unknown;
      try {
        raw = JSON.parse(readFileSync(file, 'utf8'));
      } catch (err) {
        io.stderr(`switchyard inspect: cannot read ${file} as JSON (${(err as Error).message})`);
        return 1;
      }
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
        io.stderr(`switchyard inspect: ${file} is not a JSON object`);
        return 1;
      }
      try {
        io.stdout(formatInspect(inspectConfig(raw as Record<string, unknown>, memoryGib !== undefined ? Number(memoryGib) * 2 ** 30 : totalmem())));
        return 0;
      } catch (err) {
        if (err instanceof InspectError) {
          io.stderr(`switchyard inspect: ${file}: ${err.message}`);
          return 1;
        }
        throw err;
      }
    },
  },
  plan: {
    summary: 'Capacity planning: worker count and placement from a load trace',
    usage: `Usage: switchyard plan --trace FILE [options]

Read a JSON-lines load trace (telemetry.loadTraceFile; docs/load-trace.md), fit a cost model to its worker
timings (compute ms per token row and per expert batch, dispatch overheads, trunk time per step), then for 1..K
workers plan a placement with the gateway's rebalancer (replicate hot experts, pack to even the load) and replay
every step of the trace on it. Prints balancedness and predicted throughput per worker count, the recommended
count and its placement (ready for PUT /admin/placement or placementFile).

Options:
  --trace FILE                 load trace to read (required)
  --target-tokens-per-s N      wanted output tokens/s at the trace's concurrency: recommend the fewest workers reaching it
  --p99-ms M                   wanted p99 step time in ms (≈ time between a stream's tokens)
  --workers-max K              largest worker count to simulate (default 8, at most 256)
  --cores C                    CPU cores the workers share in the simulation (default: this machine's)
  --max-experts-per-worker S   memory budget per worker, all layers (default: no limit)
  --min-split-rows R           the gateway's placement.minSplitRows (default 32)
  --svg FILE                   also draw expert load over time (seconds axis; idle stretches, missing steps and
                               gateway restarts marked) and per-worker load before/after on a % scale (SVG)
  --out FILE                   write the recommended placement to FILE instead of printing it
  --hosts-max H                plan expert hosts (scale-out over NATS) instead: simulate 1..H hosts, print a cluster
                               placement (the SVG is for workers only)
  --workers-per-host K         with --hosts-max: expert workers per host (default 2)
  --cores-per-host C           with --hosts-max: cores per host (default 2)
  --host-rtt-ms R              with --hosts-max: network cost per layer, ms (default 1; bench/scale-out.ts measures it)
  -h, --help                   show this help

Throughput is predicted at the trace's batch sizes: more workers shorten steps, they do not add clients.`,
    options: {
      trace: { type: 'string' },
      'target-tokens-per-s': { type: 'string' },
      'p99-ms': { type: 'string' },
      'workers-max': { type: 'string' },
      cores: { type: 'string' },
      'max-experts-per-worker': { type: 'string' },
      'min-split-rows': { type: 'string' },
      svg: { type: 'string' },
      out: { type: 'string' },
      'hosts-max': { type: 'string' },
      'workers-per-host': { type: 'string' },
      'cores-per-host': { type: 'string' },
      'host-rtt-ms': { type: 'string' },
    },
    async run(values, io) {
      const trace = strFlag(values, 'trace');
      if (!trace) throw new UsageError('--trace FILE is required');
      const positive = (name: string): number | undefined => {
        const raw = strFlag(values, name);
        if (raw === undefined) return undefined;
        const x = Number(raw);
        if (raw.trim() === '' || !Number.isFinite(x) || x <= 0) throw new UsageError(`--${name} must be a number > 0 (got ${JSON.stringify(raw)})`);
        return x;
      };
      const { runPlan } = await import('./planning/plan-command.ts');
      const { availableParallelism } = await import('node:os');
      return runPlan({
        trace,
        targetTokensPerS: positive('target-tokens-per-s'),
        p99Ms: positive('p99-ms'),
        workersMax: Math.min(intFlag(values, 'workers-max', 1) ?? 8, 256),
        cores: intFlag(values, 'cores', 1) ?? availableParallelism(),
        maxExpertsPerWorker: intFlag(values, 'max-experts-per-worker', 1) ?? null,
        minSplitRows: intFlag(values, 'min-split-rows', 1) ?? 32,
        svg: strFlag(values, 'svg'),
        out: strFlag(values, 'out'),
        ...(strFlag(values, 'hosts-max') !== undefined ? {
          hosts: {
            hostsMax: Math.min(intFlag(values, 'hosts-max', 1) ?? 4, 256),
            workersPerHost: intFlag(values, 'workers-per-host', 1) ?? 2,
            coresPerHost: intFlag(values, 'cores-per-host', 1) ?? 2,
            rttMs: positive('host-rtt-ms') ?? 1,
          },
        } : {}),
      }, io);
    },
  },
};

export function mainUsage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((n) => n.length));
  const list = Object.entries(COMMANDS)
    .map(([name, cmd]) => `  ${name.padEnd(width)}  ${cmd.summary}`)
    .join('\n');
  return `Usage: switchyard <command> [options]

Switchyard: a Mixture-of-Experts serving gateway.

Commands:
${list}

Run 'switchyard <command> --help' for a command's options; 'switchyard --version' (-v) prints the version.`;
}

/** The package's version, read from package.json (the one npm publishes), so it cannot disagree with it. */
export function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version?: unknown };
  if (typeof pkg.version !== 'string') throw new Error('package.json has no "version" string');
  return pkg.version;
}

const commandUsage = (cmd: Command) => cmd.usage;

/** What `--help` prints: the usage, and the help worked out on demand. */
const commandHelp = async (cmd: Command) => (cmd.moreHelp ? `${cmd.usage}\n\n${await cmd.moreHelp()}` : cmd.usage);

const defaultIo: CliIo = {
  stdout: (text) => void process.stdout.write(`${text}\n`),
  stderr: (text) => void process.stderr.write(`${text}\n`),
  progress: (what) => progressOn(process.stderr, defaultIo.stderr, what),
};

/** Runs the CLI on `argv` (without node and script) and returns the exit code. */
export async function main(argv: readonly string[], io: CliIo = defaultIo): Promise<number> {
  const [name, ...rest] = argv;
  if (name === '--version' || name === '-v') {
    io.stdout(packageVersion());
    return 0;
  }
  if (name === '--help' || name === '-h' || name === 'help') {
    const topic = name === 'help' ? rest[0] : undefined;
    if (topic !== undefined && Object.hasOwn(COMMANDS, topic)) io.stdout(await commandHelp(COMMANDS[topic]));
    else if (topic !== undefined) {
      io.stderr(`switchyard: unknown command '${topic}'\n\n${mainUsage()}`);
      return 2;
    } else io.stdout(mainUsage());
    return 0;
  }
  if (name === undefined || !Object.hasOwn(COMMANDS, name)) {
    io.stderr(`${name === undefined ? 'switchyard: missing command' : `switchyard: unknown command '${name}'`}\n\n${mainUsage()}`);
    return 2;
  }

  const cmd = COMMANDS[name];
  let values: Values;
  try {
    ({ values } = parseArgs({
      args: [...rest],
      options: { ...cmd.options, help: { type: 'boolean', short: 'h' } },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    io.stderr(`switchyard ${name}: ${(err as Error).message}\n\n${commandUsage(cmd)}`);
    return 2;
  }
  if (values.help) {
    io.stdout(await commandHelp(cmd));
    return 0;
  }

  try {
    return await cmd.run(values, io);
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr(`switchyard ${name}: ${err.message}\n\n${commandUsage(cmd)}`);
      return 2;
    }
    // A bad configuration or model package: the message says what is wrong and how to fix it; a stack would not help.
    if (err instanceof ConfigError || err instanceof PackageError) {
      io.stderr(`switchyard ${name}: ${err.message}`);
      return 1;
    }
    log.error(`${name} failed`, { err });
    return 1;
  }
}
