/**
 * The pure parts of bench/peer.ts (no processes, no I/O beyond reading a prompts file): its flags, which
 * llama-server configurations each level runs, the run order, the side-by-side table with ratios against the
 * better peer configuration, the token-count checks, and the profile table.
 */
import { clientLevels, intFlag, numberFlag, parseFlags, readPrompts, UsageError } from './cli-common.ts';
import { DEFAULT_PROMPTS, type LevelResult } from './run-load.ts';
import { fmt, markdownTable, ratio } from './stats.ts';
import type { ProfileRow } from '../src/engine/step-profile.ts';

// The gateway's default limits (32 batch slots + 64 queued; max_new_tokens 256) must take the whole load.
export const MAX_CLIENTS = 96;
export const MAX_REQUESTS = 10_000;
export const MAX_TOKENS = 256;
export const MAX_REPEATS = 20;
export const MAX_TIMEOUT_S = 600;
/** llama-server's slots for levels up to this many clients; above it, both this and one slot per client run. */
export const BASE_PARALLEL = 8;

export interface PeerOptions {
  levels: number[];
  requestsFor: (clients: number) => number;
  fixedRequests: number | undefined;
  maxTokens: number;
  repeats: number;
  prompts: string[];
  promptsFrom: string;
  timeoutMs: number;
  /** Threads on both sides: llama-server -t, the gateway's expert workers (or its compute team: the machine's cores). */
  threads: number;
  /** Where the gateway's experts run (experts.execution): its worker pool, or the in-process compute team. */
  execution: 'workers' | 'in-process';
  /**
   * llama-server -t when it must differ from `threads`: its threads meet at a spinning barrier per op, which
   * collapses when other processes compete for the cores (seen: 1.7 tok/s with -t 2 against 107 with -t 1).
   */
  peerThreads: number;
  /** llama-server binary; undefined: the default location (../shared/peer/llama-server). */
  peer: string | undefined;
  noPeer: boolean;
  profile: boolean;
  quick: boolean;
  label: string | undefined;
  record: boolean;
}

/** Parses bench/peer.ts's flags; null for --help. `cores` is the machine's (the default thread count). */
export function parsePeerArgs(argv: string[], cores: number): PeerOptions | null {
  const values = parseFlags(argv, {
    clients: { type: 'string' },
    requests: { type: 'string' },
    'max-tokens': { type: 'string' },
    repeats: { type: 'string' },
    prompts: { type: 'string' },
    'timeout-s': { type: 'string' },
    threads: { type: 'string' },
    'peer-threads': { type: 'string' },
    execution: { type: 'string' },
    peer: { type: 'string' },
    'no-peer': { type: 'boolean' },
    profile: { type: 'boolean' },
    quick: { type: 'boolean' },
    label: { type: 'string' },
    'no-record': { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) return null;
  if (values.peer !== undefined && values['no-peer']) throw new UsageError('--peer and --no-peer contradict each other');
  const quick = values.quick === true;
  const threads = intFlag('threads', values.threads, cores, 1, 256);
  const execution = values.execution ?? 'in-process';
  if (execution !== 'workers' && execution !== 'in-process') throw new UsageError(`--execution must be 'workers' or 'in-process'; got ${JSON.stringify(execution)}`);
  // The compute team is sized by experts.teamThreads, whose default is the machine's cores.
  if (execution === 'in-process' && threads !== cores) throw new UsageError(`--threads ${threads} needs --execution workers: the in-process compute team has one thread per core (${cores})`);
  // --quick: a smoke run, small everywhere unless a flag says otherwise; never recorded.
  const fixedRequests = values.requests === undefined ? (quick ? 4 : undefined) : intFlag('requests', values.requests, 0, 1, MAX_REQUESTS);
  return {
    levels: clientLevels(values.clients ?? (quick ? '1,4' : '1,8,32'), MAX_CLIENTS),
    requestsFor: (clients: number) => fixedRequests ?? Math.min(MAX_REQUESTS, Math.max(8, 2 * clients)),
    fixedRequests,
    maxTokens: intFlag('max-tokens', values['max-tokens'], quick ? 16 : 64, 1, MAX_TOKENS),
    repeats: intFlag('repeats', values.repeats, quick ? 1 : 3, 1, MAX_REPEATS),
    prompts: values.prompts === undefined ? [...DEFAULT_PROMPTS] : readPrompts(values.prompts),
    promptsFrom: values.prompts ?? 'built-in',
    timeoutMs: numberFlag('timeout-s', values['timeout-s'], 120, MAX_TIMEOUT_S) * 1000,
    threads,
    execution,
    peerThreads: intFlag('peer-threads', values['peer-threads'], threads, 1, 256),
    peer: values.peer,
    noPeer: values['no-peer'] === true,
    profile: values.profile === true,
    quick,
    label: values.label,
    record: !values['no-record'] && !quick,
  };
}

/**
 * llama-server `--parallel` values to measure at `clients`: BASE_PARALLEL up to that many clients (enough slots,
 * and no restart between those levels); above it both BASE_PARALLEL and one slot per client, since more slots
 * is not always faster there (the ratio then uses the better one).
 */
export function peerParallels(clients: number): number[] {
  return clients <= BASE_PARALLEL ? [BASE_PARALLEL] : [BASE_PARALLEL, clients];
}

export const peerName = (parallel: number) => `peer -np ${parallel}`;
export const OURS = 'ours';

/** One repeat's run order at a level: peer, ours, peer, … (each peer configuration once), alternating. */
export function runOrder(clients: number): Array<{ target: string; parallel?: number }> {
  const order: Array<{ target: string; parallel?: number }> = [];
  peerParallels(clients).forEach((parallel, i) => {
    order.push({ target: peerName(parallel), parallel });
    if (i === 0) order.push({ target: OURS });
  });
  return order;
}

/** The peer configuration with the higher tokens/s at `clients` (the one the ratios use); undefined if none ran. */
export function bestPeer(results: readonly LevelResult[], clients: number): LevelResult | undefined {
  let best: LevelResult | undefined;
  for (const r of results) {
    if (r.clients !== clients || !r.target.startsWith('peer')) continue;
    if (!best || !(best.metrics.tokensPerS >= r.metrics.tokensPerS)) best = r;
  }
  return best;
}

/** The side-by-side table: per level the better peer configuration, ours, and ours/peer. */
export function sideBySideTable(results: readonly LevelResult[]): string {
  const levels = [...new Set(results.map((r) => r.clients))];
  const rows = levels.flatMap((clients) => {
    const ours = results.find((r) => r.target === OURS && r.clients === clients)?.metrics;
    const peer = bestPeer(results, clients);
    if (!ours) return [];
    const p = peer?.metrics;
    return [[
      clients,
      peer ? peer.target.replace('peer ', '') : '—',
      fmt(p?.tokensPerS), fmt(ours.tokensPerS), fmt(ratio(ours.tokensPerS, p?.tokensPerS ?? Number.NaN), 2),
      `${fmt(p?.ttftP50Ms)} / ${fmt(ours.ttftP50Ms)}`, fmt(ratio(ours.ttftP50Ms, p?.ttftP50Ms ?? Number.NaN), 2),
      `${fmt(p?.ttftP99Ms)} / ${fmt(ours.ttftP99Ms)}`,
      `${fmt(p?.decodeTps)} / ${fmt(ours.decodeTps)}`, fmt(ratio(ours.decodeTps, p?.decodeTps ?? Number.NaN), 2),
      `${fmt(p?.meanTokens)} / ${fmt(ours.meanTokens)}`,
    ]];
  });
  return markdownTable(
    ['clients', 'peer config', 'peer tok/s', 'ours tok/s', 'tok/s ours/peer', 'TTFT p50 ms peer / ours', 'TTFT p50 ours/peer',
      'TTFT p99 ms peer / ours', 'decode tok/s/stream peer / ours', 'decode ours/peer', 'tokens/req peer / ours'],
    rows,
  );
}

/**
 * Notes on generated-token counts: both sides were asked for exactly `maxTokens` with ignore_eos, so every
 * request's counted tokens should equal it, and the server's own count should agree.
 */
export function tokenCountNotes(results: readonly LevelResult[], maxTokens: number): string[] {
  const notes: string[] = [];
  for (const r of results) {
    if (r.metrics.ok > 0 && r.metrics.meanTokens !== maxTokens) {
      notes.push(`token counts differ: ${r.target} at ${r.clients} clients generated ${fmt(r.metrics.meanTokens, 2)} tokens/request on average, not the ${maxTokens} asked for (ignore_eos); its rates are not for equal work.`);
    }
  }
  return notes;
}

/** One row of the profile table: the engine's step split, and the HTTP pass's per-token time at that batch. */
export interface ProfileLine {
  batch: number;
  engine: ProfileRow | undefined;
  /** Through the gateway: median engine step at this batch, and the clients' median time per token. */
  http: { stepMs: number; perTokenMs: number; steps: number } | undefined;
}

export function profileTable(lines: readonly ProfileLine[]): string {
  return markdownTable(
    ['batch', 'steps', 'step ms', 'trunk ms', 'routing ms', 'dispatch round trip ms', 'expert compute ms', 'dispatch − compute ms',
      'sampling + hand-off ms', 'HTTP: step ms', 'HTTP: per-token ms', 'HTTP/SSE overhead ms'],
    lines.map(({ batch, engine: e, http: h }) => [
      batch, e?.steps ?? 0, fmt(e?.stepMs, 2), fmt(e?.trunkMs, 2), fmt(e?.routingMs, 3), fmt(e?.dispatchMs, 2), fmt(e?.computeMs, 2),
      fmt(e?.dispatchOverheadMs, 2), fmt(e?.samplingMs, 3),
      fmt(h?.stepMs, 2), fmt(h?.perTokenMs, 2), fmt(h ? h.perTokenMs - h.stepMs : Number.NaN, 2),
    ]),
  );
}
