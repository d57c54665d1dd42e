/** The CLI's own surface: --version, serve --help's route list, progress output. */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import type { Hono } from 'hono';
import { describe, expect, it } from 'vitest';
import { main, type CliIo } from '../src/cli.ts';
import { ConfigSchema } from '../src/config.ts';
import { lineProgress, progressOn } from '../src/progress.ts';
import { createApp } from '../src/server/app.ts';
import { mountedRoutes, ROUTE_SUMMARIES, routeKeys } from '../src/server/route-list.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';

function captureIo(): CliIo & { out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  return { out, err, stdout: (t) => void out.push(t), stderr: (t) => void err.push(t) };
}

describe('switchyard --version', () => {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };

  it('prints the version in package.json, with --version and -v', async () => {
    for (const flag of ['--version', '-v']) {
      const io = captureIo();
      expect(await main([flag], io)).toBe(0);
      expect(io.out).toEqual([pkg.version]);
      expect(io.err).toEqual([]);
    }
  });

  it('is mentioned in the top-level help', async () => {
    const io = captureIo();
    expect(await main(['--help'], io)).toBe(0);
    expect(io.out.join('\n')).toMatch(/switchyard --version/);
  });
});

describe('switchyard serve --help', () => {
  // Stand-ins: route registration stores handlers and never calls them.
  const stub = {} as never;
  /** The app with every optional part on, built here the way serve builds it (src/serve.ts). */
  const full: Hono = createApp(stub, ConfigSchema.parse({ admin: { token: 't' } }), { telemetry: stub, admin: stub, cluster: stub });

  async function help(args: string[]): Promise<string> {
    const io = captureIo();
    expect(await main(args, io)).toBe(0);
    return io.out.join('\n');
  }

  it('lists every route the app mounts, with its method', async () => {
    const keys = routeKeys(full);
    // The admin and cluster routes are there: the full app was really built.
    expect(keys).toEqual(expect.arrayContaining(['POST /generate', 'GET /metrics', 'PUT /admin/placement', 'POST /admin/cluster/rebalance']));
    for (const text of [await help(['serve', '--help']), await help(['help', 'serve'])]) {
      const lines = text.split('\n');
      for (const key of keys) {
        const [method, path] = key.split(' ');
        const line = lines.find((l) => l.trim().split(/\s+/).slice(0, 2).join(' ') === `${method} ${path}`);
        expect(line, `${key} is missing from serve --help`).toBeDefined();
      }
    }
  });

  it('describes every mounted route and nothing that is not mounted', () => {
    const routes = mountedRoutes();
    expect(routes.filter((r) => r.summary === undefined).map((r) => `${r.method} ${r.path}`)).toEqual([]);
    expect(Object.keys(ROUTE_SUMMARIES).sort()).toEqual(routes.map((r) => `${r.method} ${r.path}`).sort());
    expect(routes.map((r) => `${r.method} ${r.path}`).sort()).toEqual(routeKeys(full).sort());
  });

  it('says which routes need the admin token or an expert cluster', async () => {
    const routes = mountedRoutes();
    const needs = (key: string) => routes.find((r) => `${r.method} ${r.path}` === key)?.needs;
    expect(needs('POST /generate')).toBeNull();
    expect(needs('GET /admin/load')).toBe('admin.token');
    expect(needs('GET /admin/cluster')).toBe('admin.token and nats.url');
    const text = await help(['serve', '--help']);
    expect(text.indexOf('Routes with admin.token set:')).toBeLessThan(text.indexOf('/admin/load'));
    expect(text.indexOf('/admin/load')).toBeLessThan(text.indexOf('Routes with admin.token and nats.url set:'));
  });

  it('keeps a usage error short: the static usage only', async () => {
    const io = captureIo();
    expect(await main(['serve', '--bogus'], io)).toBe(2);
    expect(io.err.join('\n')).toMatch(/Usage: switchyard serve/);
    expect(io.err.join('\n')).not.toMatch(/\/admin\/load/);
  });
});

/** Parses progress lines `label: done/total unit (p%)` of one label into [done, total] pairs. */
function counts(lines: string[], label: string): Array<[number, number]> {
  return lines.flatMap((l) => {
    const m = new RegExp(`^${label}: (\\d+)/(\\d+) `).exec(l);
    return m ? [[Number(m[1]), Number(m[2])] as [number, number]] : [];
  });
}

describe('progress', () => {
  it('prints a line at the first update, at each tenth of the work and at the end', () => {
    const lines: string[] = [];
    const p = lineProgress((l) => lines.push(l), { label: 'eval', unit: 'windows' });
    for (let done = 1; done <= 40; done++) p.update(done, 40);
    p.stop();
    // 1/40 (0 %), then 4/40, 8/40, … 40/40: one line per tenth, no repeats.
    expect(counts(lines, 'eval')).toEqual([[1, 40], ...Array.from({ length: 10 }, (_, i) => [4 * (i + 1), 40])]);
    expect(lines.at(-1)).toBe('eval: 40/40 windows (100%)');
  });

  it('starts over for a new total, and keeps the detail', () => {
    const lines: string[] = [];
    const p = lineProgress((l) => lines.push(l), { label: 'pruning', unit: 'experts' }, 2);
    p.update(1, 2, 'layer 0 expert 0');
    p.update(2, 2, 'layer 0 expert 1');
    p.update(1, 3, 'again');
    expect(lines).toEqual(['pruning: 1/2 experts (50%) layer 0 expert 0', 'pruning: 2/2 experts (100%) layer 0 expert 1', 'pruning: 1/3 experts (33%) again']);
  });

  it('draws a bar on a terminal and plain lines elsewhere', () => {
    const lines: string[] = [];
    const pipe = Object.assign(new PassThrough(), { isTTY: false }) as unknown as NodeJS.WriteStream;
    const plain = progressOn(pipe, (l) => lines.push(l), { label: 'eval', unit: 'windows' });
    plain.update(3, 3);
    expect(lines).toEqual(['eval: 3/3 windows (100%)']);
    expect((pipe as unknown as PassThrough).read()).toBeNull();

    const chunks: string[] = [];
    const tty = Object.assign(new PassThrough(), { isTTY: true, columns: 100 }) as unknown as NodeJS.WriteStream;
    (tty as unknown as PassThrough).on('data', (c: Buffer) => chunks.push(c.toString()));
    const bar = progressOn(tty, (l) => lines.push(l), { label: 'calibrating', unit: 'tokens' });
    bar.update(5, 10);
    bar.update(10, 10);
    bar.stop();
    expect(lines).toHaveLength(1); // nothing more as lines
    expect(chunks.join('')).toMatch(/calibrating \[.*\] 100% \| 10\/10 tokens/);
  });
});

describe('progress of eval and prune (CLI)', () => {
  const config = tinyConfig({ intermediate_size: 32 });
  const dir = writeTinyPackage(config, 31);
  const text = (s: string) => [256, ...Buffer.from(s)];
  const windows = Array.from({ length: 20 }, (_, i) => ({ source: i % 2 ? 'a' : 'b', tokens: text(`window ${i}: call me Ishmael`) }));
  writeFileSync(join(dir, 'validation.json'), JSON.stringify({ seq_len: 32, windows }));
  writeFileSync(join(dir, 'calibration.txt'), 'Call me Ishmael. Some years ago, never mind how long precisely, having little money. '.repeat(8));

  it('eval reports the windows scored, in increasing counts up to all of them; --quiet silences it', async () => {
    const io = captureIo();
    expect(await main(['eval', '--model', dir, '--reference', dir, '--workers', '1'], io)).toBe(0);
    expect(io.err[0]).toMatch(/^eval: loading /);
    const seen = counts(io.err, 'eval');
    expect(seen.length).toBeGreaterThan(1);
    expect(seen.every(([, total]) => total === windows.length)).toBe(true);
    expect(seen.every(([done], i) => i === 0 || done > seen[i - 1][0])).toBe(true);
    expect(seen.at(-1)![0]).toBe(windows.length);
    expect(io.out.join('\n')).toMatch(/validation bits per byte: \d/);

    const quiet = captureIo();
    expect(await main(['eval', '--model', dir, '--reference', dir, '--workers', '1', '--quiet', '--json'], quiet)).toBe(0);
    expect(quiet.err).toEqual([]);
    expect(JSON.parse(quiet.out.join(''))).toMatchObject({ windows: windows.length });
  });

  it('prune reports calibration tokens, then experts pruned', async () => {
    const io = captureIo();
    const out = mkdtempSync(join(tmpdir(), 'switchyard-cli-prune-'));
    expect(await main(['prune', '--model', dir, '--out', out, '--method', 'wanda', '--sparsity', '0.5', '--calibration-tokens', '600'], io)).toBe(0);
    expect(io.err[0]).toMatch(/^prune: loading /);
    const calibrating = counts(io.err, 'calibrating');
    const pruning = counts(io.err, 'pruning');
    expect(calibrating.length).toBeGreaterThan(1);
    expect(calibrating.at(-1)).toEqual([600, 600]);
    expect(calibrating.every(([done], i) => i === 0 || done > calibrating[i - 1][0])).toBe(true);
    expect(pruning.at(-1)).toEqual([config.num_hidden_layers * config.num_experts, config.num_hidden_layers * config.num_experts]);
    // Calibration ends before pruning starts.
    const lastCalibrating = io.err.map((l) => l.startsWith('calibrating:')).lastIndexOf(true);
    expect(lastCalibrating).toBeLessThan(io.err.findIndex((l) => l.startsWith('pruning:')));
    expect(io.out.join('\n')).toMatch(/wrote .*: \d+ experts pruned/);
  });
});
