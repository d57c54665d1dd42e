/** The CLI's own surface: --version, serve --help's route list, progress output. */
import { readFileSync } from 'node:fs';
import type { Hono } from 'hono';
import { describe, expect, it } from 'vitest';
import { main, type CliIo } from '../src/cli.ts';
import { ConfigSchema } from '../src/config.ts';
import { createApp } from '../src/server/app.ts';
import { mountedRoutes, ROUTE_SUMMARIES, routeKeys } from '../src/server/route-list.ts';

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
