/**
 * Memory under a long load: `npx tsx bench/soak.ts --help`.
 *
 * Starts the gateway in a child process (`node --expose-gc`, see bench/soak-gateway.ts) so that its memory is the
 * gateway's alone, sends it a long closed-loop load of greedy requests — streamed and non-streamed, TGI and OpenAI
 * routes, varied seeded prompts, caches as configured — and after every --sample-every requests lets the load drain,
 * forces full GCs in the gateway and records its resident set, V8 heap and external memory. Passes when the
 * resident set after GC at the end is within --tolerance-mb of where it was after the first --sample-every requests.
 */
import { fork, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { describeExecution, loadConfig, type Config } from '../src/config.ts';
import { seededRandom } from '../src/engine/sampling.ts';
import { createClient, type ApiKind, type Client } from './clients.ts';
import { intFlag, numberFlag, parseFlags, runCli, UsageError } from './cli-common.ts';
import { commandLine, gitCommit, publish } from './record.ts';
import { DEFAULT_PROMPTS } from './run-load.ts';
import type { FromGateway, ToGateway } from './soak-gateway.ts';
import { loadLimits, loopbackOverrides } from './servers.ts';
import { fmt, markdownTable } from './stats.ts';

const MAX_REQUESTS = 100_000;
const MAX_CLIENTS = 64;
const MB = 1e6;
const MIXES = ['alternate', 'stream', 'plain'] as const;
type Mix = (typeof MIXES)[number];

const HELP = `Usage: npx tsx bench/soak.ts [options]

Starts the gateway in a child process with --expose-gc (the configuration \`switchyard serve\` reads, caches
included, plus --model/--workers; on an ephemeral loopback port) and sends it --requests greedy requests from
--clients closed-loop clients: varied prompts from a seeded generator (about 1 in 10 repeats an earlier one, so the
response cache answers some), streamed and non-streamed by --mix, alternating between the TGI routes
(/generate_stream, /generate) and the OpenAI one (/v1/completions). After every --sample-every requests the load
drains, the gateway runs full GCs and reports process.memoryUsage(); the table shows each sample. It passes when
the resident set at the end is within --tolerance-mb of the sample after the first --sample-every requests.

Options:
  --requests N          requests in all (default 4000; 1..${MAX_REQUESTS})
  --mix MIX             alternate (streamed, then not; default), stream (all streamed) or plain (none streamed)
  --clients N           concurrent clients (default 8; 1..${MAX_CLIENTS})
  --sample-every K      requests between memory samples (default 100; 1..N)
  --max-tokens M        tokens to generate per request (default 16; 1..256)
  --seed S              prompt generator seed (default 1)
  --tolerance-mb T      allowed growth of the resident set, first sample to last, in MB of 10^6 bytes (default 50)
  --model DIR           model package (default: the configured model)
  --workers N           expert worker threads (default: the configured value)
  --execution MODE      experts.execution: workers or in-process (default: the configured value)
  --timeout-s S         hard limit per request in seconds (default 120; at most 600)
  --label TEXT          a note for the RESULTS.md section title
  --no-record           print only; do not append to bench/RESULTS.md
  -h, --help            this text

Exit status: 0 done and within the tolerance, 1 the benchmark failed or memory grew past it, 2 bad arguments.
`;

function parse(argv: string[]) {
  const values = parseFlags(argv, {
    requests: { type: 'string' }, mix: { type: 'string' }, clients: { type: 'string' }, 'sample-every': { type: 'string' },
    'max-tokens': { type: 'string' }, seed: { type: 'string' }, 'tolerance-mb': { type: 'string' },
    model: { type: 'string' }, workers: { type: 'string' }, execution: { type: 'string' }, 'timeout-s': { type: 'string' },
    label: { type: 'string' }, 'no-record': { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
  });
  if (values.help) return null;
  const mix = (values.mix ?? 'alternate') as Mix;
  if (!MIXES.includes(mix)) throw new UsageError(`--mix must be one of ${MIXES.join(', ')} (got ${JSON.stringify(values.mix)})`);
  const requests = intFlag('requests', values.requests, 4000, 1, MAX_REQUESTS);
  const execution = values.execution as 'workers' | 'in-process' | undefined;
  if (execution !== undefined && execution !== 'workers' && execution !== 'in-process') throw new UsageError(`--execution must be workers or in-process (got ${JSON.stringify(execution)})`);
  return {
    execution,
    requests,
    mix,
    clients: intFlag('clients', values.clients, 8, 1, MAX_CLIENTS),
    sampleEvery: intFlag('sample-every', values['sample-every'], Math.min(100, requests), 1, requests),
    maxTokens: intFlag('max-tokens', values['max-tokens'], 16, 1, 256),
    seed: intFlag('seed', values.seed, 1, 0, 2 ** 32 - 1),
    toleranceMb: numberFlag('tolerance-mb', values['tolerance-mb'], 50, 100_000),
    model: values.model,
    workers: values.workers === undefined ? undefined : intFlag('workers', values.workers, 1, 1, 256),
    timeoutMs: numberFlag('timeout-s', values['timeout-s'], 120, 600) * 1000,
    label: values.label,
    record: !values['no-record'],
  };
}

type Options = NonNullable<ReturnType<typeof parse>>;

/**
 * `count` prompts of 3 to 60 words (roughly 15 to 350 characters) drawn from the built-in prompts' words, each
 * with a number so that most differ; about 1 in 10 repeats an earlier prompt exactly.
 */
function soakPrompts(count: number, seed: number): string[] {
  const random = seededRandom(seed);
  const words = DEFAULT_PROMPTS.join(' ').split(/\s+/).filter((w) => w !== '');
  const prompts: string[] = [];
  for (let i = 0; i < count; i++) {
    if (i > 0 && random() < 0.1) {
      prompts.push(prompts[Math.floor(random() * i)]);
      continue;
    }
    const n = 3 + Math.floor(random() * 58);
    const picked = Array.from({ length: n }, () => words[Math.floor(random() * words.length)]);
    prompts.push(`${i}. ${picked.join(' ')}`);
  }
  return prompts;
}

/** Request i: whether it is streamed, and which API it uses (TGI for pairs 0-1 of every 4, OpenAI for 2-3). */
function requestKind(i: number, mix: Mix): { stream: boolean; api: ApiKind } {
  const stream = mix === 'stream' || (mix === 'alternate' && i % 2 === 0);
  return { stream, api: i % 4 < 2 ? 'tgi' : 'openai' };
}

/** The gateway child: start it with a config, ask it for memory samples, close it. */
class GatewayProcess {
  private waiting: Array<{ type: FromGateway['type']; resolve: (m: FromGateway) => void; reject: (e: Error) => void }> = [];
  private exited: Promise<number | null>;

  private constructor(private readonly child: ChildProcess) {
    child.on('message', (message: FromGateway) => {
      if (message.type === 'error') {
        for (const w of this.waiting.splice(0)) w.reject(new Error(`gateway: ${message.message}`));
        return;
      }
      const at = this.waiting.findIndex((w) => w.type === message.type);
      if (at >= 0) this.waiting.splice(at, 1)[0].resolve(message);
    });
    this.exited = new Promise((resolve) => child.once('exit', (code) => {
      for (const w of this.waiting.splice(0)) w.reject(new Error(`the gateway process exited (status ${code})`));
      resolve(code);
    }));
  }

  static async start(config: Config): Promise<{ gateway: GatewayProcess; url: string }> {
    const root = path.join(import.meta.dirname, '..');
    const child = fork(path.join(import.meta.dirname, 'soak-gateway.ts'), [], {
      cwd: root, execArgv: ['--expose-gc', '--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const gateway = new GatewayProcess(child);
    const ready = await gateway.request({ type: 'start', config }, 'ready');
    return { gateway, url: (ready as Extract<FromGateway, { type: 'ready' }>).url };
  }

  private request(message: ToGateway, answer: FromGateway['type']): Promise<FromGateway> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ type: answer, resolve, reject });
      this.child.send(message);
    });
  }

  /** The gateway's process.memoryUsage() after forced full GCs. */
  async memory(): Promise<NodeJS.MemoryUsage> {
    return ((await this.request({ type: 'sample' }, 'sample')) as Extract<FromGateway, { type: 'sample' }>).memory;
  }

  /** Closes the server and waits for the process to end (killed after 30 s). */
  async close(): Promise<void> {
    if (this.child.exitCode !== null) return;
    if (this.child.connected) this.child.send({ type: 'close' } satisfies ToGateway);
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 30_000);
    await this.exited;
    clearTimeout(timer);
  }
}

interface Sample {
  requests: number;
  streamed: number;
  errors: number;
  memory: NodeJS.MemoryUsage;
  prefixBytes: number | null;
  responseEntries: number | null;
  /** Requests per second over the round before this sample. */
  rate: number;
}

async function cacheStats(url: string): Promise<{ prefixBytes: number | null; responseEntries: number | null }> {
  const info = await (await fetch(`${url}/info`)).json() as { caches?: { prefix: { bytes: number }; response: { entries: number } } };
  return { prefixBytes: info.caches?.prefix.bytes ?? null, responseEntries: info.caches?.response.entries ?? null };
}

/** Least-squares slope of y over x. */
function slope(xs: readonly number[], ys: readonly number[]): number {
  const n = xs.length;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += (xs[i] - mx) * (ys[i] - my);
    den += (xs[i] - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

async function main(opts: Options): Promise<number> {
  const common = { ...loopbackOverrides(opts.model, opts.workers), ...(opts.execution ? { experts: { execution: opts.execution } } : {}) };
  const base = loadConfig({ overrides: common });
  const config = loadConfig({ overrides: { ...common, limits: loadLimits(base.limits, opts) } });
  const controller = new AbortController();
  process.once('SIGINT', () => {
    process.stderr.write('interrupted: draining, then the last sample\n');
    controller.abort();
  });

  // The run is long and the checkout may move meanwhile: record the code the gateway started from.
  const startCommit = gitCommit();
  process.stderr.write(`starting the gateway process (model ${config.model}, ${describeExecution(config)})\n`);
  const { gateway, url } = await GatewayProcess.start(config);
  try {
    const clients: Record<'tgi' | 'openai', Client> = {
      tgi: await createClient('tgi', url, { timeoutMs: opts.timeoutMs }),
      openai: await createClient('openai', url, { timeoutMs: opts.timeoutMs }),
    };
    const prompts = soakPrompts(opts.requests, opts.seed);
    let streamed = 0;
    let errors = 0;
    let firstError: string | undefined;

    const one = async (i: number) => {
      const { stream, api } = requestKind(i, opts.mix);
      const client = clients[api as 'tgi' | 'openai'];
      try {
        if (stream) {
          let events = 0;
          for await (const _ of client.stream(prompts[i], opts.maxTokens, controller.signal)) events++;
          if (events === 0) throw new Error('a stream ended without a token event');
          streamed++;
        } else {
          await client.complete(prompts[i], opts.maxTokens, controller.signal);
        }
      } catch (err) {
        errors++;
        firstError ??= (err as Error).message;
      }
    };

    const samples: Sample[] = [];
    const sample = async (requests: number, rate: number) => {
      const memory = await gateway.memory();
      samples.push({ requests, streamed, errors, memory, rate, ...(await cacheStats(url)) });
      const s = samples[samples.length - 1];
      process.stderr.write(`${requests} requests (${streamed} streamed, ${errors} errors): RSS ${fmt(memory.rss / MB)} MB, heap ${fmt(memory.heapUsed / MB)} MB\n`);
      return s;
    };

    // One warm-up request of each kind (not counted) so that the first sample is not the start-up.
    for (let k = 0; k < 4; k++) {
      const { stream, api } = requestKind(k, 'alternate');
      const client = clients[api as 'tgi' | 'openai'];
      if (stream) for await (const _ of client.stream(DEFAULT_PROMPTS[k], opts.maxTokens, controller.signal)) { /* drain */ }
      else await client.complete(DEFAULT_PROMPTS[k], opts.maxTokens, controller.signal);
    }
    await sample(0, Number.NaN);

    const started = performance.now();
    let sent = 0;
    while (sent < opts.requests && !controller.signal.aborted) {
      const end = Math.min(opts.requests, sent + opts.sampleEvery);
      const roundStart = performance.now();
      let next = sent;
      // Closed loop within the round; the round drains before its sample, so samples see no request in flight.
      const loop = async () => {
        while (next < end && !controller.signal.aborted) await one(next++);
      };
      await Promise.all(Array.from({ length: Math.min(opts.clients, end - sent) }, loop));
      const done = next;
      const rate = ((done - sent) * 1000) / (performance.now() - roundStart);
      sent = done;
      await sample(sent, rate);
    }
    const wallS = (performance.now() - started) / 1000;

    const rows = samples.map((s) => [
      s.requests, s.streamed, s.errors, fmt(s.memory.rss / MB), fmt(s.memory.heapUsed / MB), fmt(s.memory.external / MB),
      fmt(s.memory.arrayBuffers / MB), s.prefixBytes === null ? '–' : fmt(s.prefixBytes / MB), s.responseEntries ?? '–',
      Number.isNaN(s.rate) ? '–' : fmt(s.rate),
    ]);
    const table = markdownTable(
      ['requests', 'streamed', 'errors', 'RSS MB', 'heap used MB', 'external MB', 'array buffers MB', 'prefix cache MB', 'response cache entries', 'req/s'],
      rows,
    );

    // Baseline: the sample after the first round (start-up, caches filling and allocator growth are over by then).
    const first = samples.length > 1 ? samples[1] : samples[0];
    const last = samples[samples.length - 1];
    const growthMb = (last.memory.rss - first.memory.rss) / MB;
    const pass = Math.abs(growthMb) <= opts.toleranceMb && errors === 0 && !controller.signal.aborted;
    const later = samples.slice(1);
    const half = later.slice(Math.floor(later.length / 2));
    const trend = half.length >= 2 ? slope(half.map((s) => s.requests), half.map((s) => s.memory.rss / MB)) * 1000 : Number.NaN;
    const verdict = [
      `| | requests | streamed | RSS MB | heap used MB |`,
      `|---|---:|---:|---:|---:|`,
      `| first sample | ${first.requests} | ${first.streamed} | ${fmt(first.memory.rss / MB)} | ${fmt(first.memory.heapUsed / MB)} |`,
      `| last sample | ${last.requests} | ${last.streamed} | ${fmt(last.memory.rss / MB)} | ${fmt(last.memory.heapUsed / MB)} |`,
      `| growth | | | ${fmt(growthMb)} | ${fmt((last.memory.heapUsed - first.memory.heapUsed) / MB)} |`,
    ].join('\n');
    const notes = [
      `${pass ? 'PASS' : 'FAIL'}: the resident set after GC grew ${fmt(growthMb)} MB from the sample after ${first.requests} requests to the one after ${last.requests} `
        + `(${last.streamed} streamed); the tolerance is ±${opts.toleranceMb} MB.`,
      `RSS trend over the second half of the run: ${fmt(trend, 2)} MB per 1000 requests (least squares).`,
      `${last.requests} requests in ${fmt(wallS, 0)} s (${fmt(last.requests / wallS)} req/s); memory in MB of 10^6 bytes, sampled after each round drained and 3 forced full GCs in the gateway.`,
    ];
    if (errors > 0) notes.push(`${errors} requests failed; the first: ${firstError}`);
    if (controller.signal.aborted) notes.push('interrupted before the end.');

    publish([table, verdict], notes, opts.record && {
      title: 'soak', label: opts.label, command: commandLine('bench/soak.ts'),
      facts: [
        ['gateway code', `commit ${startCommit} when the run started`],
        ['server', `child process (node --expose-gc), ${describeExecution(config)}, maxBatchSequences ${config.limits.maxBatchSequences}, `
          + `prefix cache ${fmt(config.cache.prefix.maxBytes / 2 ** 20, 0)} MiB, response cache ${config.cache.response.maxEntries} entries / ${fmt(config.cache.response.maxBytes / 2 ** 20, 0)} MiB`],
        ['load', `${opts.requests} greedy requests, ${opts.clients} clients, max ${opts.maxTokens} new tokens, mix ${opts.mix} (TGI and OpenAI routes), `
          + `seeded prompts (seed ${opts.seed}), a sample every ${opts.sampleEvery} requests`],
      ],
    });
    return pass ? 0 : 1;
  } finally {
    await gateway.close();
  }
}

runCli('bench/soak.ts', HELP, parse, main);
