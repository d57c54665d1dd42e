/**
 * The batching gain: `npx tsx bench/batching.ts --help`.
 *
 * Starts the gateway twice in this process on ephemeral loopback ports — unbatched (limits.maxBatchSequences = 1)
 * and batched (the configured default) — runs the identical load against both, alternating between them within
 * each repeat, and reports output tokens/s for both and the ratio batched/unbatched from the same run.
 */
import { parseArgs } from 'node:util';
import { loadConfig, resolveWorkers, type Config, type ConfigInput } from '../src/config.ts';
import { createLogger } from '../src/log.ts';
import { startServer, type RunningServer } from '../src/serve.ts';
import { createClient } from './clients.ts';
import { intFlag, numberFlag, readPrompts, UsageError } from './cli-common.ts';
import { appendResults, commandLine, formatSection } from './record.ts';
import { DEFAULT_PROMPTS, ratioTable, resultNotes, resultsTable, runBenchmark, warmUp, type Target } from './run-load.ts';

const MAX_CLIENTS = 256;
const MAX_REQUESTS = 10_000;
const MAX_TOKENS = 4096;
const MAX_REPEATS = 20;
const MAX_TIMEOUT_S = 600;

const HELP = `Usage: npx tsx bench/batching.ts [options]

Starts the gateway twice in this process on ephemeral loopback ports — unbatched (limits.maxBatchSequences = 1)
and batched (the configured value, 16 by default) — sends both the same closed-loop load of streamed greedy
completions, alternating between them, and reports output tokens/s for each and the ratio batched/unbatched.
The configuration is read as \`switchyard serve\` reads it (config/default.json, SWITCHYARD_CONFIG, environment).

Options:
  --clients N           concurrent clients (default 32; 1..${MAX_CLIENTS})
  --requests N          requests per repeat (default 2 × clients; 1..${MAX_REQUESTS})
  --max-tokens M        tokens to generate per request (default 64; 1..${MAX_TOKENS})
  --repeats R           runs per server; the table shows medians (default 3; 1..${MAX_REPEATS})
  --model DIR           model package (default: the configured model)
  --workers N           expert worker threads (default: the configured value)
  --prompts FILE        JSON array of prompt strings (default: ${DEFAULT_PROMPTS.length} built-in short English prompts)
  --timeout-s S         hard limit per request in seconds, queueing included (default 300; at most ${MAX_TIMEOUT_S})
  --no-stream           use POST /generate instead of /generate_stream (throughput only)
  --label TEXT          a note for the RESULTS.md section title
  --no-record           print only; do not append to bench/RESULTS.md
  -h, --help            this text

Exit status: 0 done, 1 the benchmark failed (e.g. the model does not load), 2 bad arguments.
`;

function parse(argv: string[]) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        clients: { type: 'string' },
        requests: { type: 'string' },
        'max-tokens': { type: 'string' },
        repeats: { type: 'string' },
        model: { type: 'string' },
        workers: { type: 'string' },
        prompts: { type: 'string' },
        'timeout-s': { type: 'string' },
        'no-stream': { type: 'boolean' },
        label: { type: 'string' },
        'no-record': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    throw new UsageError(`${(err as Error).message}; see --help`);
  }
  if (values.help) return null;
  const clients = intFlag('clients', values.clients, 32, 1, MAX_CLIENTS);
  return {
    clients,
    requests: intFlag('requests', values.requests, Math.min(MAX_REQUESTS, 2 * clients), 1, MAX_REQUESTS),
    maxTokens: intFlag('max-tokens', values['max-tokens'], 64, 1, MAX_TOKENS),
    repeats: intFlag('repeats', values.repeats, 3, 1, MAX_REPEATS),
    model: values.model,
    workers: values.workers === undefined ? undefined : intFlag('workers', values.workers, 1, 1, 256),
    prompts: values.prompts === undefined ? [...DEFAULT_PROMPTS] : readPrompts(values.prompts),
    promptsFrom: values.prompts ?? 'built-in',
    timeoutMs: numberFlag('timeout-s', values['timeout-s'], 300, MAX_TIMEOUT_S) * 1000,
    stream: !values['no-stream'],
    label: values.label,
    record: !values['no-record'],
  };
}

type Options = NonNullable<ReturnType<typeof parse>>;

/** The two configurations: identical except limits.maxBatchSequences. */
function configs(opts: Options): { unbatched: Config; batched: Config } {
  const common: ConfigInput = { host: '127.0.0.1', port: 0, model: opts.model, workers: opts.workers };
  const base = loadConfig({ overrides: common });
  // Room for the whole load: every client may wait in the queue, may ask for --max-tokens, and the server must not
  // time a request out before the client does (the server's deadline counts queueing too).
  const limits = {
    maxNewTokens: Math.max(base.limits.maxNewTokens, opts.maxTokens),
    queueDepth: Math.max(base.limits.queueDepth, opts.clients),
    requestTimeoutMs: Math.max(base.limits.requestTimeoutMs, opts.timeoutMs),
  };
  return {
    unbatched: loadConfig({ overrides: { ...common, limits: { ...limits, maxBatchSequences: 1 } } }),
    batched: loadConfig({ overrides: { ...common, limits } }),
  };
}

async function main(): Promise<number> {
  let opts;
  try {
    opts = parse(process.argv.slice(2));
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`bench/batching.ts: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  if (opts === null) {
    process.stdout.write(HELP);
    return 0;
  }
  const { unbatched, batched } = configs(opts);
  if (batched.limits.maxBatchSequences === 1) process.stderr.write('note: the configured limits.maxBatchSequences is 1, so both servers are unbatched\n');

  const controller = new AbortController();
  process.once('SIGINT', () => {
    process.stderr.write('interrupted: cancelling requests\n');
    controller.abort();
  });

  const logger = createLogger({ level: process.env.LOG_LEVEL ?? 'warn' });
  const servers: RunningServer[] = [];
  try {
    const targets: Target[] = [];
    for (const [name, config] of [['unbatched', unbatched], ['batched', batched]] as const) {
      process.stderr.write(`starting the ${name} gateway (maxBatchSequences ${config.limits.maxBatchSequences}, model ${config.model})\n`);
      const server = await startServer(config, { logger, closeGraceMs: 2_000 });
      servers.push(server);
      targets.push({ name, client: await createClient('tgi', server.url, { timeoutMs: opts.timeoutMs }) });
    }
    await warmUp(targets, opts.prompts[0], Math.min(opts.maxTokens, 8), opts.stream, controller.signal);
    const results = await runBenchmark({
      targets,
      levels: [opts.clients],
      requestsFor: () => opts.requests,
      repeats: opts.repeats,
      maxTokens: opts.maxTokens,
      prompts: opts.prompts,
      stream: opts.stream,
      signal: controller.signal,
      onProgress: (line) => process.stderr.write(`${line}\n`),
    });

    const body = [
      resultsTable(results),
      `Ratios batched/unbatched from this run (output tok/s: the batching gain):\n\n${ratioTable(results, 'batched', 'unbatched')}`,
    ];
    const notes = resultNotes(results);
    if (!opts.stream) notes.push('non-streaming run (--no-stream): no TTFT or decode rate; tokens are the server-reported counts.');
    if (controller.signal.aborted) notes.push('interrupted before the end: figures rest on fewer repeats.');
    if (notes.length > 0) body.push(notes.map((n) => `- ${n}`).join('\n'));
    process.stdout.write(`\n${body.join('\n\n')}\n`);

    if (opts.record) {
      const facts: Array<[string, string]> = [
        ['model', batched.model],
        ['servers', `in-process, workers ${resolveWorkers(batched)}, limits.maxBatchSequences 1 (unbatched) vs ${batched.limits.maxBatchSequences} (batched), maxBatchTokens ${batched.limits.maxBatchTokens}`],
        ['load', `${opts.clients} clients, max ${opts.maxTokens} new tokens, greedy, ${opts.stream ? 'streamed' : 'not streamed'}, prompts: ${opts.promptsFrom} (${opts.prompts.length}), ${opts.repeats} repeats`],
      ];
      const section = formatSection({ title: 'batching', label: opts.label, command: commandLine('bench/batching.ts'), facts, body });
      process.stderr.write(`appended to ${appendResults(section)}\n`);
    }
    return results.some((r) => r.metrics.ok > 0) ? 0 : 1;
  } finally {
    for (const server of servers) await server.close();
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench/batching.ts: ${(err as Error).message ?? String(err)}\n`);
    process.exit(1);
  },
);
