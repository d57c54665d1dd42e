/**
 * Recording benchmark results: machine facts, git commit, the command line, and appending a dated section to
 * bench/RESULTS.md (created with a header that explains the columns when it does not exist).
 */
import { execFileSync } from 'node:child_process';
import { appendFileSync, existsSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const RESULTS_FILE = path.join(import.meta.dirname, 'RESULTS.md');

const HEADER = `# Benchmark results

Appended by \`bench/load.ts\` and \`bench/batching.ts\` (see bench/README.md); newest at the bottom. Each section
records the date, git commit, machine and exact command. Compare numbers only within one section: ratios
(ours/peer, batched/unbatched) are computed from the same run, and every figure is the median over the repeats.

Columns:
- **server** — which server the row measures (\`ours\`, \`peer\`, \`unbatched\`, \`batched\`).
- **clients** — concurrent clients, each sending its next request as soon as the previous one ends (closed loop).
- **requests** — requests per repeat × repeats.
- **ok / errors** — successful and failed requests over all repeats (rates count successful requests only).
- **output tok/s** — all generated tokens / wall time of the level (first send to last response).
- **TTFT p50 / p99 ms** — time to first token over requests, nearest-rank percentiles (with few requests p99 is
  the slowest one); streaming only.
- **decode tok/s/stream** — per request (tokens − 1) / (time of last token − time of first token), median over
  requests; at 1 client this is the single-stream decode rate.
- **tokens/req** — mean generated tokens per successful request (tokens are counted from the server's token
  events; see bench/README.md for the one-event-per-token assumption).
`;

export interface MachineFacts {
  cpu: string;
  cores: number;
  memoryGiB: number;
  node: string;
  platform: string;
}

export function machineFacts(): MachineFacts {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model.trim() || 'unknown CPU',
    cores: cpus.length,
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
  };
}

/** `git rev-parse --short HEAD`, plus a note when the working tree has uncommitted changes; 'unknown' without git. */
export function gitCommit(cwd = path.join(import.meta.dirname, '..')): string {
  const git = (args: string[]) => execFileSync('git', args, { cwd, encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  let commit: string;
  try {
    commit = git(['rev-parse', '--short', 'HEAD']);
  } catch {
    return 'unknown (not a git checkout?)';
  }
  try {
    const dirty = git(['status', '--porcelain', '--untracked-files=no']) !== '';
    return dirty ? `${commit} (with uncommitted changes)` : commit;
  } catch {
    return commit;
  }
}

const shellQuote = (arg: string) => (/^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`);

/** The command as one could type it again, e.g. `npx tsx bench/load.ts --url http://127.0.0.1:8080`. */
export function commandLine(script: string, args: readonly string[] = process.argv.slice(2)): string {
  return ['npx', 'tsx', script, ...args].map(shellQuote).join(' ');
}

export interface ResultSection {
  title: string;
  label?: string;
  command: string;
  /** Extra `- key: value` facts (settings, server info). */
  facts?: Array<[string, string]>;
  /** Markdown blocks (tables, notes), in order. */
  body: string[];
}

export function formatSection(section: ResultSection, date = new Date(), machine = machineFacts(), commit = gitCommit()): string {
  const facts: Array<[string, string]> = [
    ['date', date.toISOString()],
    ['commit', commit],
    ['machine', `${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB, Node ${machine.node}, ${machine.platform}`],
    ['command', `\`${section.command}\``],
    ...(section.facts ?? []),
  ];
  const title = `## ${date.toISOString().slice(0, 10)} — ${section.title}${section.label ? ` — ${section.label}` : ''}`;
  return [title, '', ...facts.map(([k, v]) => `- ${k}: ${v}`), '', ...section.body.flatMap((b) => [b, ''])].join('\n');
}

/** Appends the section to RESULTS.md (creating the file with its header first); returns the file path. */
export function appendResults(section: string, file = RESULTS_FILE): string {
  if (!existsSync(file)) writeFileSync(file, HEADER);
  appendFileSync(file, `\n${section.trimEnd()}\n`);
  return file;
}

/**
 * Prints a benchmark's result on stdout: the body's blocks, then the notes (when there are any) as a list. Given a
 * section (`record`, without its body), also appends the result to RESULTS.md and says so on stderr.
 */
export function publish(body: readonly string[], notes: readonly string[], record: false | Omit<ResultSection, 'body'>): void {
  const blocks = notes.length > 0 ? [...body, notes.map((n) => `- ${n}`).join('\n')] : [...body];
  process.stdout.write(`\n${blocks.join('\n\n')}\n`);
  if (record) process.stderr.write(`appended to ${appendResults(formatSection({ ...record, body: blocks }))}\n`);
}
