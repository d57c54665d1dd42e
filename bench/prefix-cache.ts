/**
 * The prefix cache's effect on time to first token: `npx tsx bench/prefix-cache.ts --help`.
 *
 * Starts the gateway twice in this process on ephemeral loopback ports — prefix cache off (cache.prefix.maxBytes 0)
 * and on (the configured cache, 64 MiB by default) — both with the response cache off, and sends both the same
 * streamed greedy requests: a shared system prompt of about 1 KB followed by a question unique to each request.
 * Reports TTFT p50 / p90 for each and the ratio uncached/cached from the same run (medians over repeats).
 */
import { performance } from 'node:perf_hooks';
import { loadConfig, resolveWorkers, type Config } from '../src/config.ts';
import type { Client } from './clients.ts';
import { intFlag, numberFlag, parseFlags, runCli } from './cli-common.ts';
import { commandLine, publish } from './record.ts';
import { loadLimits, loopbackOverrides, withGateways } from './servers.ts';
import { fmt, markdownTable, median, percentile, ratio } from './stats.ts';

const MAX_REQUESTS = 10_000;
const MAX_CLIENTS = 64;

const HELP = `Usage: npx tsx bench/prefix-cache.ts [options]

Starts the gateway twice in this process on ephemeral loopback ports, prefix cache off and on (response cache off
in both), and sends both the same streamed greedy requests: one shared system prompt (about --system-bytes bytes)
plus a question unique to each request. Reports time to first token (p50, p90) for each and the ratio
uncached/cached (the speed-up), medians over repeats; the servers alternate within each repeat. One warm-up
request per server (not counted) puts the system prompt in the cache, as a long-running server would have it.
The configuration is read as \`switchyard serve\` reads it (config/default.json, SWITCHYARD_CONFIG, environment).

Options:
  --requests N          requests per server and repeat (default 64; 1..${MAX_REQUESTS})
  --clients N           concurrent clients per server (default 1: TTFT without queueing; 1..${MAX_CLIENTS})
  --repeats R           runs per server; the table shows medians (default 3; 1..20)
  --max-tokens M        tokens to generate per request (default 4; 1..256)
  --system-bytes B      length of the shared system prompt in bytes (default 1024; shortened to fit the context)
  --block-tokens T      cache.prefix.blockTokens of the cached server (default: the configured value)
  --model DIR           model package (default: the configured model)
  --workers N           expert worker threads (default: the configured value)
  --timeout-s S         hard limit per request in seconds (default 120; at most 600)
  --label TEXT          a note for the RESULTS.md section title
  --no-record           print only; do not append to bench/RESULTS.md
  -h, --help            this text

Exit status: 0 done, 1 the benchmark failed, 2 bad arguments.
`;

/** Plain English prose, repeated and cut to length for the system prompt. */
const SYSTEM_TEXT = 'You are the ship\'s clerk aboard the Pequod, a whaler out of Nantucket. Answer the crew\'s questions '
  + 'plainly and briefly, in the manner of a sailor who has read a great deal: name the men, the boats, the stores and '
  + 'the weather as they are, keep the log honest, and never speak for the captain. When a question concerns the '
  + 'whale, say what is known and what is only told in the forecastle. ';

const QUESTIONS = [
  'Who is the captain?', 'Where are we bound?', 'How many boats do we carry?', 'What is in the hold?',
  'Who keeps the first watch?', 'What did the lookout see?', 'How much oil have we taken?', 'Who is Queequeg?',
];

function parse(argv: string[]) {
  const values = parseFlags(argv, {
    requests: { type: 'string' }, clients: { type: 'string' }, repeats: { type: 'string' },
    'max-tokens': { type: 'string' }, 'system-bytes': { type: 'string' }, 'block-tokens': { type: 'string' },
    model: { type: 'string' }, workers: { type: 'string' }, 'timeout-s': { type: 'string' },
    label: { type: 'string' }, 'no-record': { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
  });
  if (values.help) return null;
  return {
    requests: intFlag('requests', values.requests, 64, 1, MAX_REQUESTS),
    clients: intFlag('clients', values.clients, 1, 1, MAX_CLIENTS),
    repeats: intFlag('repeats', values.repeats, 3, 1, 20),
    maxTokens: intFlag('max-tokens', values['max-tokens'], 4, 1, 256),
    systemBytes: intFlag('system-bytes', values['system-bytes'], 1024, 1, 100_000),
    blockTokens: values['block-tokens'] === undefined ? undefined : intFlag('block-tokens', values['block-tokens'], 16, 1, 4096),
    model: values.model,
    workers: values.workers === undefined ? undefined : intFlag('workers', values.workers, 1, 1, 256),
    timeoutMs: numberFlag('timeout-s', values['timeout-s'], 120, 600) * 1000,
    label: values.label,
    record: !values['no-record'],
  };
}

type Options = NonNullable<ReturnType<typeof parse>>;

function configs(opts: Options): { uncached: Config; cached: Config } {
  const common = loopbackOverrides(opts.model, opts.workers);
  const base = loadConfig({ overrides: common });
  const limits = {
    ...loadLimits(base.limits, opts),
    maxBodyBytes: Math.max(base.limits.maxBodyBytes, 4 * opts.systemBytes + 4096),
  };
  const response = { maxEntries: 0 };
  const prefix = { ...base.cache.prefix, ...(opts.blockTokens ? { blockTokens: opts.blockTokens } : {}) };
  if (prefix.maxBytes === 0) prefix.maxBytes = 64 * 2 ** 20; // the cached server always has a cache
  return {
    uncached: loadConfig({ overrides: { ...common, limits, cache: { prefix: { maxBytes: 0 }, response } } }),
    cached: loadConfig({ overrides: { ...common, limits, cache: { prefix, response } } }),
  };
}

/** Time to first token (ms) of each request; requests are shared by `clients` closed-loop clients. */
async function run(client: Client, prompts: string[], maxTokens: number, clients: number, signal: AbortSignal): Promise<number[]> {
  const ttft: number[] = [];
  let next = 0;
  const loop = async () => {
    while (next < prompts.length && !signal.aborted) {
      const prompt = prompts[next++];
      const started = performance.now();
      let first: number | null = null;
      for await (const event of client.stream(prompt, maxTokens, signal)) first ??= event.t;
      if (first === null) throw new Error('a stream ended without a token event');
      ttft.push(first - started);
    }
  };
  await Promise.all(Array.from({ length: clients }, loop));
  return ttft;
}

async function prefixStats(url: string) {
  const info = await (await fetch(`${url}/info`)).json() as {
    context_length: number; limits: { max_prompt_tokens: number };
    caches?: { prefix: { hits: number; misses: number; tokens_reused?: number; bytes: number; evictions: number } };
  };
  return info;
}

async function main(opts: Options): Promise<number> {
  const { uncached, cached } = configs(opts);
  const controller = new AbortController();
  process.once('SIGINT', () => controller.abort());
  const about = (config: Config) => `prefix cache ${config.cache.prefix.maxBytes} bytes`;
  return withGateways({ uncached, cached }, { about, timeoutMs: opts.timeoutMs }, async (targets) => {
    // The byte-level tokenizer makes one token per byte (plus BOS): fit the system prompt into the context.
    const info = await prefixStats(targets[0].url);
    const room = Math.min(info.limits.max_prompt_tokens, info.context_length - opts.maxTokens) - 64;
    const systemBytes = Math.max(1, Math.min(opts.systemBytes, room));
    let system = SYSTEM_TEXT.repeat(Math.ceil(systemBytes / SYSTEM_TEXT.length)).slice(0, systemBytes);
    system = `${system}\n`;
    const notes: string[] = [];
    if (systemBytes < opts.systemBytes) notes.push(`system prompt shortened to ${systemBytes} bytes to fit the model's context (${info.context_length} tokens).`);
    const promptsFor = (repeat: number) =>
      Array.from({ length: opts.requests }, (_, i) => `${system}Q (${repeat}.${i}): ${QUESTIONS[i % QUESTIONS.length]}\nA:`);

    for (const t of targets) await run(t.client, [`${system}Q: Are you there?\nA:`], opts.maxTokens, 1, controller.signal);

    const samples: Record<string, Array<{ p50: number; p90: number; mean: number }>> = { uncached: [], cached: [] };
    for (let r = 0; r < opts.repeats && !controller.signal.aborted; r++) {
      const order = r % 2 === 0 ? targets : [...targets].reverse();
      const prompts = promptsFor(r);
      for (const t of order) {
        const ttft = await run(t.client, prompts, opts.maxTokens, opts.clients, controller.signal);
        const s = { p50: percentile(ttft, 50), p90: percentile(ttft, 90), mean: ttft.reduce((a, b) => a + b, 0) / ttft.length };
        samples[t.name].push(s);
        process.stderr.write(`repeat ${r + 1}/${opts.repeats} ${t.name}: TTFT p50 ${fmt(s.p50)} ms, p90 ${fmt(s.p90)} ms (${ttft.length} requests)\n`);
      }
    }

    const row = (name: string) => {
      const s = samples[name];
      return [name, `${opts.requests} × ${s.length}`, fmt(median(s.map((x) => x.p50))), fmt(median(s.map((x) => x.p90))), fmt(median(s.map((x) => x.mean)))];
    };
    const stats = (await prefixStats(targets[1].url)).caches?.prefix;
    const p50 = (name: string) => median(samples[name].map((x) => x.p50));
    const body = [
      markdownTable(['server', 'requests', 'TTFT p50 ms', 'TTFT p90 ms', 'TTFT mean ms'], [row('uncached'), row('cached')], ['left', 'right', 'right', 'right', 'right']),
      `TTFT p50 uncached/cached (speed-up) from this run: **${fmt(ratio(p50('uncached'), p50('cached')), 2)}×**`,
    ];
    if (stats) {
      notes.push(`cached server's prefix cache at the end: ${stats.hits} hits, ${stats.misses} misses, ${stats.tokens_reused ?? 0} prompt tokens reused, `
        + `${stats.evictions} evictions, ${(stats.bytes / 2 ** 20).toFixed(1)} MiB held.`);
    }
    if (controller.signal.aborted) notes.push('interrupted before the end: figures rest on fewer repeats.');

    publish(body, notes, opts.record && {
      title: 'prefix cache TTFT', label: opts.label, command: commandLine('bench/prefix-cache.ts'),
      facts: [
        ['model', cached.model],
        ['servers', `in-process, workers ${resolveWorkers(cached)}, response cache off; prefix cache off vs ${cached.cache.prefix.maxBytes} bytes in blocks of ${cached.cache.prefix.blockTokens} tokens`],
        ['load', `${opts.clients} client(s), ${opts.requests} requests per repeat, ${opts.repeats} repeats, shared system prompt ${systemBytes + 1} bytes + a unique question, max ${opts.maxTokens} new tokens, greedy, streamed (TGI)`],
      ],
    });
    return samples.cached.length > 0 ? 0 : 1;
  });
}

runCli('bench/prefix-cache.ts', HELP, parse, main);
