/**
 * The batching gain: `npx tsx bench/batching.ts --help`.
 *
 * Starts the gateway twice in this process on ephemeral loopback ports — unbatched (limits.maxBatchSequences = 1)
 * and batched (the configured default) — runs the identical load against both, alternating between them within
 * each repeat, and reports output tokens/s for both and the ratio batched/unbatched from the same run.
 */
import { loadConfig, resolveWorkers, type Config } from '../src/config.ts';
import { intFlag, numberFlag, parseFlags, readPrompts, runCli } from './cli-common.ts';
import { commandLine, publish } from './record.ts';
import { DEFAULT_PROMPTS, ratioTable, resultNotes, resultsTable, runBenchmark, warmUp } from './run-load.ts';
import { loadLimits, loopbackOverrides, withGateways } from './servers.ts';

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
  const values = parseFlags(argv, {
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
  });
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
  // Caches off: repeated prompts must be computed, not answered from the response or prefix cache.
  const common = { ...loopbackOverrides(opts.model, opts.workers), cache: { prefix: { maxBytes: 0 }, response: { maxEntries: 0 } } };
  const limits = loadLimits(loadConfig({ overrides: common }).limits, opts);
  return {
    unbatched: loadConfig({ overrides: { ...common, limits: { ...limits, maxBatchSequences: 1 } } }),
    batched: loadConfig({ overrides: { ...common, limits } }),
  };
}

async function main(opts: Options): Promise<number> {
  const { unbatched, batched } = configs(opts);
  if (batched.limits.maxBatchSequences === 1) process.stderr.write('note: the configured limits.maxBatchSequences is 1, so both servers are unbatched\n');

  const controller = new AbortController();
  process.once('SIGINT', () => {
    process.stderr.write('interrupted: cancelling requests\n');
    controller.abort();
  });

  const about = (config: Config) => `maxBatchSequences ${config.limits.maxBatchSequences}`;
  return withGateways({ unbatched, batched }, { about, timeoutMs: opts.timeoutMs }, async (targets) => {
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

    publish(body, notes, opts.record && {
      title: 'batching', label: opts.label, command: commandLine('bench/batching.ts'),
      facts: [
        ['model', batched.model],
        ['servers', `in-process, workers ${resolveWorkers(batched)}, limits.maxBatchSequences 1 (unbatched) vs ${batched.limits.maxBatchSequences} (batched), maxBatchTokens ${batched.limits.maxBatchTokens}`],
        ['load', `${opts.clients} clients, max ${opts.maxTokens} new tokens, greedy, ${opts.stream ? 'streamed' : 'not streamed'}, prompts: ${opts.promptsFrom} (${opts.prompts.length}), ${opts.repeats} repeats`],
      ],
    });
    return results.some((r) => r.metrics.ok > 0) ? 0 : 1;
  });
}

runCli('bench/batching.ts', HELP, parse, main);
