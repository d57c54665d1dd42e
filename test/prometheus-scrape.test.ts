/**
 * GET /metrics as Prometheus sees it: Debian's `promtool check metrics` lints the gateway's text (test/ensure-deps.sh
 * installs the `prometheus` package), the naming rules promtool does not check are checked here (durations in
 * `_seconds`, counters in `_total`, labels bounded by layer × expert), and a real Prometheus server scrapes the
 * gateway and answers a query with the value the gateway reported.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../src/log.ts';
import { startServer, type RunningServer } from '../src/serve.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig } from './helpers.ts';
import { freePort } from './nats-helpers.ts';

const LAYERS = 2;
const EXPERTS = 4;
const dir = writeTinyPackage(tinyConfig({ num_hidden_layers: LAYERS, num_experts: EXPERTS }), 5);
let server: RunningServer;
let text: string;

/** A binary of Debian's prometheus package, from PATH or /usr/bin. */
function binary(name: 'promtool' | 'prometheus'): string {
  for (const candidate of [name, `/usr/bin/${name}`]) {
    if (spawnSync(candidate, ['--version']).status === 0) return candidate;
  }
  throw new Error(`${name} is not installed: run \`bash test/ensure-deps.sh\` (it installs Debian's prometheus package)`);
}

/** `promtool check metrics` on `input`: its exit status and what it printed (lint problems, parse errors). */
function promtoolCheck(input: string): { status: number | null; output: string } {
  const r = spawnSync(binary('promtool'), ['check', 'metrics'], { input, encoding: 'utf8' });
  return { status: r.status, output: `${r.stdout}${r.stderr}`.trim() };
}

/** Each sample line's metric name and label set (histogram _bucket/_sum/_count lines under their family). */
function samples(exposition: string): Array<{ family: string; labels: Record<string, string>; value: number }> {
  const families = new Map([...exposition.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1], m[2]]));
  return exposition.split('\n').filter((l) => l !== '' && !l.startsWith('#')).map((line) => {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    const labels = Object.fromEntries([...(m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1], l[2]]));
    const family = families.has(m[1]) ? m[1] : m[1].replace(/_(bucket|sum|count)$/, '');
    return { family, labels, value: Number(m[3]) };
  });
}

beforeAll(async () => {
  server = await startServer(engineConfig(dir, { port: 0, cache: { response: { maxEntries: 0 } } }), {
    logger: createLogger({ level: 'silent' }), closeGraceMs: 200,
  });
  for (const inputs of ['Call me Ishmael.', 'The whale']) {
    const r = await fetch(`${server.url}/generate`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ inputs, parameters: { max_new_tokens: 4 } }),
    });
    expect(r.status).toBe(200);
  }
  const r = await fetch(`${server.url}/metrics`);
  expect(r.status).toBe(200);
  text = await r.text();
});
afterAll(() => server?.close());

describe('GET /metrics and Prometheus', () => {
  it('passes promtool check metrics (which does flag a badly named sample)', () => {
    expect(promtoolCheck(text)).toEqual({ status: 0, output: '' });
    // The linter is really running: a counter without _total and a duration in milliseconds are reported.
    const bad = promtoolCheck('# HELP x_seconds a\n# TYPE x_seconds counter\nx_seconds 1\n# HELP y_milliseconds b\n# TYPE y_milliseconds gauge\ny_milliseconds 2\n');
    expect(bad.status).not.toBe(0);
    expect(bad.output).toMatch(/x_seconds counter metrics should have "_total" suffix/);
    expect(bad.output).toMatch(/y_milliseconds use base unit "seconds"/);
  });

  it('names durations in _seconds and counters in _total, and keeps label sets bounded by layer × expert', () => {
    const types = new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1], m[2]]));
    const units = new Map([...text.matchAll(/^# UNIT (\S+) (\S+)$/gm)].map((m) => [m[1], m[2]]));
    expect(types.size).toBeGreaterThan(10);
    for (const [name, type] of types) {
      if (type === 'counter') expect(name).toMatch(/_total$/);
      if (units.get(name) === 'seconds') expect(name).toMatch(/_seconds(_total)?$/);
      // anything that measures time says so in its name (no bare *_duration, *_time)
      if (/duration|_time(_|$)|latency/.test(name)) expect(units.get(name), name).toBe('seconds');
    }
    for (const name of ['gen_ai_server_request_duration_seconds', 'gen_ai_server_time_to_first_token_seconds', 'moe_step_duration_seconds',
      'moe_dispatch_duration_seconds', 'moe_worker_queue_duration_seconds', 'moe_worker_busy_time_seconds_total', 'moe_expert_tokens_total']) {
      expect(types.has(name), `${name} in\n${[...types.keys()].join('\n')}`).toBe(true);
    }

    const all = samples(text);
    const allowed = new Set(['otel_scope_name', 'otel_scope_version', 'service_name', 'switchyard_model_id', 'le', 'moe_layer', 'moe_expert',
      'moe_worker', 'moe_failover_action', 'switchyard_cache', 'gen_ai_operation_name', 'gen_ai_provider_name', 'gen_ai_request_model',
      'gen_ai_response_model', 'error_type']);
    const labelNames = new Set(all.flatMap((s) => Object.keys(s.labels)));
    expect([...labelNames].filter((l) => !allowed.has(l))).toEqual([]);
    // no family has more label sets (le aside) than there are (layer, expert) pairs
    const series = new Map<string, Set<string>>();
    for (const s of all) {
      const { le: _le, ...rest } = s.labels;
      const key = JSON.stringify(Object.entries(rest).sort());
      series.set(s.family, (series.get(s.family) ?? new Set()).add(key));
    }
    for (const [family, sets] of series) expect(sets.size, family).toBeLessThanOrEqual(LAYERS * EXPERTS);
    expect(series.get('moe_expert_tokens_total')!.size).toBeGreaterThan(1);
  });

  it('is scraped by a real Prometheus server, which answers a query with the gateway\'s value', async () => {
    const work = mkdtempSync(join(tmpdir(), 'switchyard-prometheus-'));
    const port = await freePort();
    const target = new URL(server.url).host;
    writeFileSync(join(work, 'prometheus.yml'), [
      'global:', '  scrape_interval: 1s', '  scrape_timeout: 1s',
      'scrape_configs:', '  - job_name: switchyard', '    static_configs:', `      - targets: ['${target}']`, '',
    ].join('\n'));
    let log = '';
    const prometheus: ChildProcess = spawn(binary('prometheus'), [
      `--config.file=${join(work, 'prometheus.yml')}`, `--storage.tsdb.path=${join(work, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn',
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    prometheus.stderr!.on('data', (d) => (log += d));
    try {
      const api = `http://127.0.0.1:${port}/api/v1`;
      const query = async (q: string) => {
        const r = await fetch(`${api}/query?query=${encodeURIComponent(q)}`);
        const body = await r.json() as { status: string; data: { result: Array<{ metric: Record<string, string>; value: [number, string] }> } };
        expect(body.status).toBe('success');
        return body.data.result;
      };
      // Waits for the first scrape (Prometheus starts, then scrapes once a second); gives up after a minute.
      const deadline = Date.now() + 60_000;
      let result: Awaited<ReturnType<typeof query>> = [];
      for (;;) {
        if (prometheus.exitCode !== null) throw new Error(`prometheus exited (${prometheus.exitCode}): ${log}`);
        result = await query('sum(moe_expert_tokens_total{job="switchyard"})').catch(() => []);
        if (result.length > 0 || Date.now() > deadline) break;
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
      expect(result, `no sample scraped; prometheus log:\n${log}`).toHaveLength(1);
      // No requests ran since `text` was read, so the scraped total is the one the gateway reported.
      const reported = samples(text).filter((s) => s.family === 'moe_expert_tokens_total').reduce((sum, s) => sum + s.value, 0);
      expect(reported).toBeGreaterThan(0);
      expect(Number(result[0].value[1])).toBe(reported);

      const durations = await query('gen_ai_server_request_duration_seconds_count{job="switchyard"}');
      expect(durations.map((d) => Number(d.value[1]))).toEqual([2]);
    } finally {
      prometheus.kill('SIGTERM');
      if (prometheus.exitCode === null) await new Promise((resolve) => prometheus.once('exit', resolve));
      rmSync(work, { recursive: true, force: true });
    }
  });
});
