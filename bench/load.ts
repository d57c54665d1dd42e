/**
 * Load generator for a running server: `npx tsx bench/load.ts --help`.
 * Prints a Markdown table and (unless --no-record) appends it to bench/RESULTS.md.
 */
import { APIS, createClient, type ApiKind } from './clients.ts';
import { clientLevels, intFlag, loopbackUrl, numberFlag, parseFlags, readPrompts, runCli, UsageError } from './cli-common.ts';
import { commandLine, publish } from './record.ts';
import { DEFAULT_PROMPTS, ratioTable, resultNotes, resultsTable, runBenchmark, warmUp, type Target } from './run-load.ts';

const MAX_CLIENTS = 256;
const MAX_REQUESTS = 10_000;
const MAX_TOKENS = 4096;
const MAX_REPEATS = 20;
const MAX_TIMEOUT_S = 600;

const HELP = `Usage: npx tsx bench/load.ts --url URL [options]

Sends a closed-loop load of streamed, greedy completions to a server on this machine and reports, per concurrency
level: output tokens/s, time to first token p50/p99, and decode tokens/s per stream (at 1 client: single-stream
decode). Each figure is the median over --repeats runs.

Options:
  --url URL             server to measure (required); loopback only: 127.0.0.0/8, localhost, [::1]
  --api API             its API: tgi (Switchyard's /generate_stream), openai (/v1/completions),
                        llamacpp (llama-server's /completion); default tgi
  --compare URL         a second server (e.g. your own llama-server) that gets the identical load, in the same
                        run, alternating with the first; adds a table of ratios ours/peer (loopback only)
  --compare-api API     API of the --compare server (default llamacpp)
  --clients LIST        concurrency levels, comma-separated (default 1,8,32; each 1..${MAX_CLIENTS})
  --requests N          requests per level and repeat (default max(8, 2 × clients); 1..${MAX_REQUESTS})
  --max-tokens M        tokens to generate per request (default 64; 1..${MAX_TOKENS})
  --prompts FILE        JSON array of prompt strings (default: ${DEFAULT_PROMPTS.length} built-in short English prompts)
  --repeats R           runs per level; the table shows medians (default 3; 1..${MAX_REPEATS})
  --timeout-s S         hard limit per request in seconds (default 60; at most ${MAX_TIMEOUT_S})
  --no-stream           use the non-streaming endpoint (tgi /generate, ...): throughput only, no TTFT or decode rate,
                        tokens from the server's count
  --label TEXT          a note for the RESULTS.md section title
  --no-record           print only; do not append to bench/RESULTS.md
  -h, --help            this text

Exit status: 0 done, 1 the benchmark failed (e.g. warm-up request refused), 2 bad arguments.
`;

function apiFlag(name: string, value: string | undefined, fallback: ApiKind): ApiKind {
  if (value === undefined) return fallback;
  if (!(APIS as readonly string[]).includes(value)) throw new UsageError(`--${name} must be one of ${APIS.join(', ')} (got ${JSON.stringify(value)})`);
  return value as ApiKind;
}

function parse(argv: string[]) {
  const values = parseFlags(argv, {
    url: { type: 'string' },
    api: { type: 'string' },
    compare: { type: 'string' },
    'compare-api': { type: 'string' },
    clients: { type: 'string' },
    requests: { type: 'string' },
    'max-tokens': { type: 'string' },
    prompts: { type: 'string' },
    repeats: { type: 'string' },
    'timeout-s': { type: 'string' },
    'no-stream': { type: 'boolean' },
    label: { type: 'string' },
    'no-record': { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) return null;
  if (values.url === undefined) throw new UsageError('--url is required, e.g. --url http://127.0.0.1:8080');
  if (values['compare-api'] !== undefined && values.compare === undefined) throw new UsageError('--compare-api needs --compare URL');
  const fixedRequests = values.requests === undefined ? undefined : intFlag('requests', values.requests, 0, 1, MAX_REQUESTS);
  return {
    url: loopbackUrl('url', values.url),
    api: apiFlag('api', values.api, 'tgi'),
    compare: values.compare === undefined ? undefined : loopbackUrl('compare', values.compare),
    compareApi: apiFlag('compare-api', values['compare-api'], 'llamacpp'),
    levels: clientLevels(values.clients ?? '1,8,32', MAX_CLIENTS),
    requestsFor: (clients: number) => fixedRequests ?? Math.min(MAX_REQUESTS, Math.max(8, 2 * clients)),
    fixedRequests,
    maxTokens: intFlag('max-tokens', values['max-tokens'], 64, 1, MAX_TOKENS),
    prompts: values.prompts === undefined ? [...DEFAULT_PROMPTS] : readPrompts(values.prompts),
    promptsFrom: values.prompts ?? 'built-in',
    repeats: intFlag('repeats', values.repeats, 3, 1, MAX_REPEATS),
    timeoutMs: numberFlag('timeout-s', values['timeout-s'], 60, MAX_TIMEOUT_S) * 1000,
    stream: !values['no-stream'],
    label: values.label,
    record: !values['no-record'],
  };
}

type Options = NonNullable<ReturnType<typeof parse>>;

async function main(opts: Options): Promise<number> {
  if (opts.fixedRequests !== undefined) {
    const over = opts.levels.filter((c) => c > opts.fixedRequests!);
    if (over.length > 0) process.stderr.write(`note: --requests ${opts.fixedRequests} is below --clients ${over.join(',')}: at most ${opts.fixedRequests} requests run at once there\n`);
  }

  // Ctrl-C: stop sending, cancel what is in flight, and print what was measured so far.
  const controller = new AbortController();
  process.once('SIGINT', () => {
    process.stderr.write('interrupted: cancelling requests\n');
    controller.abort();
  });

  const targets: Target[] = [{ name: 'ours', client: await createClient(opts.api, opts.url, { timeoutMs: opts.timeoutMs }) }];
  if (opts.compare) targets.push({ name: 'peer', client: await createClient(opts.compareApi, opts.compare, { timeoutMs: opts.timeoutMs }) });

  await warmUp(targets, opts.prompts[0], Math.min(opts.maxTokens, 8), opts.stream, controller.signal);
  const results = await runBenchmark({
    targets,
    levels: opts.levels,
    requestsFor: opts.requestsFor,
    repeats: opts.repeats,
    maxTokens: opts.maxTokens,
    prompts: opts.prompts,
    stream: opts.stream,
    signal: controller.signal,
    onProgress: (line) => process.stderr.write(`${line}\n`),
  });

  const body = [resultsTable(results)];
  if (opts.compare) body.push(`Ratios ours/peer from this run (tok/s: higher is better for ours; TTFT: lower is better for ours):\n\n${ratioTable(results, 'ours', 'peer')}`);
  const notes = resultNotes(results);
  if (!opts.stream) notes.push('non-streaming run (--no-stream): no TTFT or decode rate; tokens are the server-reported counts.');
  if (controller.signal.aborted) notes.push('interrupted before the end: incomplete levels are missing or based on fewer repeats.');

  publish(body, notes, opts.record && {
    title: 'load', label: opts.label, command: commandLine('bench/load.ts'),
    facts: [
      ['ours', `${opts.api} at ${opts.url}`],
      ...(opts.compare ? ([['peer', `${opts.compareApi} at ${opts.compare}`]] as Array<[string, string]>) : []),
      ['load', `max ${opts.maxTokens} new tokens, greedy, ${opts.stream ? 'streamed' : 'not streamed'}, prompts: ${opts.promptsFrom} (${opts.prompts.length}), ${opts.repeats} repeats`],
    ],
  });
  return results.some((r) => r.metrics.ok > 0) ? 0 : 1;
}

runCli('bench/load.ts', HELP, parse, main);
