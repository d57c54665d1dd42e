/**
 * What the benchmark CLIs (bench/load.ts, bench/batching.ts, bench/prefix-cache.ts, bench/skewed.ts) share: the
 * command-line entry point (runCli), flag parsing and argument checks.
 */
import { readFileSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import { parseArgs, type ParseArgsConfig } from 'node:util';

/** A bad command line: the CLI prints the message and exits with status 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

type FlagOptions = NonNullable<ParseArgsConfig['options']>;
type StrictConfig<O extends FlagOptions> = { args: string[]; strict: true; allowPositionals: false; options: O };

/** parseArgs, strict and without positionals; its errors (unknown flag, missing value) become UsageErrors. */
export function parseFlags<const O extends FlagOptions>(argv: string[], options: O): ReturnType<typeof parseArgs<StrictConfig<O>>>['values'] {
  try {
    return parseArgs<StrictConfig<O>>({ args: argv, strict: true, allowPositionals: false, options }).values;
  } catch (err) {
    throw new UsageError(`${(err as Error).message}; see --help`);
  }
}

/**
 * Runs a benchmark CLI and exits: `parse` reads process.argv (a UsageError: its message on stderr, status 2; null,
 * i.e. --help: `help` on stdout, status 0), then `run` measures and returns the status. Any other error: its
 * message on stderr, status 1. Messages start with `script`, e.g. "bench/load.ts".
 */
export function runCli<O>(script: string, help: string, parse: (argv: string[]) => O | null, run: (opts: O) => Promise<number>): void {
  const main = async (): Promise<number> => {
    let opts;
    try {
      opts = parse(process.argv.slice(2));
    } catch (err) {
      if (err instanceof UsageError) {
        process.stderr.write(`${script}: ${err.message}\n`);
        return 2;
      }
      throw err;
    }
    if (opts === null) {
      process.stdout.write(help);
      return 0;
    }
    return run(opts);
  };
  main().then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`${script}: ${(err as Error).message ?? String(err)}\n`);
      process.exit(1);
    },
  );
}

/** An integer flag within [min, max]; `undefined` gives the fallback. */
export function intFlag(name: string, value: string | undefined, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${name} must be an integer from ${min} to ${max} (got ${JSON.stringify(value)})`);
  return n;
}

/** A positive number flag within (0, max]. */
export function numberFlag(name: string, value: string | undefined, fallback: number, max: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0 || n > max) throw new UsageError(`--${name} must be a number greater than 0 and at most ${max} (got ${JSON.stringify(value)})`);
  return n;
}

/** "1,8,32" → [1, 8, 32] (each within [1, max], duplicates dropped, order kept). */
export function clientLevels(value: string, max: number): number[] {
  const parts = value.split(',').map((s) => s.trim());
  const levels = parts.map((s) => Number(s));
  if (parts.length === 0 || levels.some((n, i) => parts[i] === '' || !Number.isInteger(n) || n < 1 || n > max)) {
    throw new UsageError(`--clients must be a comma-separated list of integers from 1 to ${max}, e.g. 1,8,32 (got ${JSON.stringify(value)})`);
  }
  return [...new Set(levels)];
}

/**
 * Checks that `value` is an http(s) URL on a loopback address (127.0.0.0/8, localhost, [::1]) and returns it
 * without trailing slash. The benchmark sends many requests; it must never load a machine other than this one.
 */
export function loopbackUrl(flag: string, value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new UsageError(`--${flag} ${JSON.stringify(value)} is not a URL; give one like http://127.0.0.1:8080`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new UsageError(`--${flag} must be an http:// or https:// URL (got ${url.protocol})`);
  }
  // The WHATWG parser has already normalised IPv4 forms (127.1, 0x7f.0.0.1) and lower-cased the host.
  const host = url.hostname;
  const loopback = host === 'localhost' || (isIPv4(host) && host.split('.')[0] === '127') || host === '[::1]';
  if (!loopback) {
    throw new UsageError(
      `--${flag} ${JSON.stringify(value)} is not a loopback address: this load generator only targets servers on this machine ` +
        `(127.0.0.0/8, localhost or [::1]), so that it can never flood someone else's server. Start the server on loopback and pass its URL.`,
    );
  }
  if (url.search || url.hash) throw new UsageError(`--${flag} must be a base URL without query or fragment (got ${JSON.stringify(value)})`);
  return url.href.replace(/\/+$/, '');
}

export const MAX_PROMPTS = 10_000;
export const MAX_PROMPT_CHARS = 100_000;

/** Reads a JSON array of non-empty strings. */
export function readPrompts(file: string): string[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new UsageError(`--prompts ${file}: cannot read it as JSON (${(err as Error).message})`);
  }
  if (!Array.isArray(parsed) || parsed.length === 0 || parsed.length > MAX_PROMPTS) {
    throw new UsageError(`--prompts ${file} must hold a JSON array of 1 to ${MAX_PROMPTS} strings, e.g. ["Once upon a time", "Call me"]`);
  }
  const bad = parsed.findIndex((p) => typeof p !== 'string' || p.length === 0 || p.length > MAX_PROMPT_CHARS);
  if (bad !== -1) throw new UsageError(`--prompts ${file}: entry ${bad} must be a non-empty string of at most ${MAX_PROMPT_CHARS} characters`);
  return parsed as string[];
}
