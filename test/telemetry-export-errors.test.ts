/**
 * Export failures: reported once, then rate-limited; an exporter that never answers counts as failed; at shutdown a
 * collector already seen down is not waited for; and the real server with an OTLP endpoint that refuses connections
 * logs one line about it and shuts down (close() resolves).
 */
import { createServer } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace-base';
import { createLogger } from '../src/log.ts';
import { startServer, type RunningServer } from '../src/serve.ts';
import { createTelemetry, type Telemetry } from '../src/telemetry/index.ts';
import { ExportErrors, GuardedSpanExporter } from '../src/telemetry/export-errors.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig } from './helpers.ts';

/** A loopback port nothing listens on (bound, then closed), so connections to it are refused. */
async function refusedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

/** A SpanExporter that answers each export as told (or never), and counts the exports it was given. */
class ScriptedExporter implements SpanExporter {
  calls = 0;
  constructor(private readonly answer: () => ExportResult | null) {}
  export(_spans: ReadableSpan[], callback: (result: ExportResult) => void): void {
    this.calls++;
    const result = this.answer();
    if (result) setImmediate(() => callback(result));
  }
  shutdown(): Promise<void> {
    return Promise.resolve();
  }
}

const exportOnce = (exporter: SpanExporter) => new Promise<ExportResult>((resolve) => exporter.export([], resolve));
const refused = (): ExportResult => ({ code: ExportResultCode.FAILED, error: new Error('connect ECONNREFUSED 127.0.0.1:4318') });

describe('export error reports', () => {
  it('reports the first failure with a hint, then at most one report per interval with the count in between', () => {
    const reports: Error[] = [];
    const clock = { t: 0 };
    const errors = new ExportErrors({ report: (e) => reports.push(e), hint: 'Check the collector.', intervalMs: 60_000, now: () => clock.t });
    const boom = new Error('connect ECONNREFUSED 127.0.0.1:4318');
    for (let i = 0; i < 5; i++) {
      errors.failed('spans to http://127.0.0.1:4318/v1/traces', boom);
      clock.t += 10_000;
    }
    expect(reports).toHaveLength(1);
    expect(reports[0].message).toBe('telemetry export of spans to http://127.0.0.1:4318/v1/traces failed: connect ECONNREFUSED 127.0.0.1:4318. '
      + 'Check the collector. What cannot be sent is dropped; further export failures are reported at most once every 60 s.');
    expect(reports[0].cause).toBe(boom);
    clock.t = 60_000; // one interval after the first report
    errors.failed('metrics to http://127.0.0.1:4318/v1/metrics', boom);
    expect(reports).toHaveLength(2);
    expect(reports[1].message).toBe('telemetry export of metrics to http://127.0.0.1:4318/v1/metrics failed: connect ECONNREFUSED 127.0.0.1:4318 '
      + '(4 more export failures since the last report)');
    errors.failed('spans', boom);
    expect(reports).toHaveLength(2);
  });

  it('fails an export its exporter never answers, after the timeout', async () => {
    const reports: Error[] = [];
    const silent = new ScriptedExporter(() => null);
    const guarded = new GuardedSpanExporter(silent, new ExportErrors({ report: (e) => reports.push(e), hint: '' }), 'spans', 10);
    const result = await exportOnce(guarded);
    expect(result.code).toBe(ExportResultCode.FAILED);
    expect(result.error?.message).toBe('no answer within 10 ms');
    expect(reports.map((e) => e.message)).toEqual([expect.stringMatching(/^telemetry export of spans failed: no answer within 10 ms\./)]);
  });

  it('at shutdown, does not try again while the last export failed; tries when it succeeded', async () => {
    const errors = new ExportErrors({ report: () => {}, hint: '' });
    let answer = refused;
    const inner = new ScriptedExporter(() => answer());
    const guarded = new GuardedSpanExporter(inner, errors, 'spans', 1000);
    expect((await exportOnce(guarded)).code).toBe(ExportResultCode.FAILED);
    expect((await exportOnce(guarded)).code).toBe(ExportResultCode.FAILED); // still tried while running
    expect(inner.calls).toBe(2);
    errors.beginShutdown();
    const skipped = await exportOnce(guarded);
    expect(skipped.code).toBe(ExportResultCode.FAILED);
    expect(inner.calls).toBe(2); // not tried

    const up = new ExportErrors({ report: () => {}, hint: '' });
    answer = () => ({ code: ExportResultCode.SUCCESS });
    const other = new ScriptedExporter(() => answer());
    const guardedUp = new GuardedSpanExporter(other, up, 'spans', 1000);
    expect((await exportOnce(guardedUp)).code).toBe(ExportResultCode.SUCCESS);
    up.beginShutdown();
    expect((await exportOnce(guardedUp)).code).toBe(ExportResultCode.SUCCESS);
    expect(other.calls).toBe(2);
  });
});

describe('an OTLP endpoint that refuses connections', () => {
  const open: Array<Telemetry | RunningServer> = [];
  afterEach(async () => {
    for (const x of open.splice(0)) await ('shutdown' in x ? x.shutdown() : x.close()).catch(() => {});
  });

  it('telemetry: one report for the spans and metrics that could not be sent, and shutdown resolves', async () => {
    const port = await refusedPort();
    const errors: Error[] = [];
    const telemetry = createTelemetry({ exporter: 'otlp', otlpEndpoint: `http://127.0.0.1:${port}`, loadTraceFile: null }, {
      modelId: 'm', onError: (e) => errors.push(e),
    });
    open.push(telemetry);
    for (let i = 0; i < 3; i++) {
      telemetry.startRequest({ operation: 'chat', model: 'm', maxTokens: 2, stream: false }).end({ inputTokens: 1, outputTokens: 2, finishReason: 'length' });
    }
    await expect(telemetry.shutdown()).resolves.toBeUndefined();
    expect(errors.map((e) => e.message)).toEqual([
      expect.stringMatching(new RegExp(`^telemetry export of (spans|metrics) to http://127\\.0\\.0\\.1:${port}/v1/(traces|metrics) failed: connect ECONNREFUSED`)),
    ]);
    expect(errors[0].message).toContain(`telemetry.otlpEndpoint (http://127.0.0.1:${port})`);
  });

  it('the gateway logs the export error once and close() resolves', async () => {
    const port = await refusedPort();
    const lines: Array<Record<string, unknown>> = [];
    const dir = writeTinyPackage(tinyConfig(), 2);
    const server = await startServer(engineConfig(dir, {
      port: 0, telemetry: { exporter: 'otlp', otlpEndpoint: `http://127.0.0.1:${port}` }, cache: { response: { maxEntries: 0 } },
    }), { logger: createLogger({ level: 'debug', write: (line) => lines.push(JSON.parse(line) as Record<string, unknown>) }), closeGraceMs: 200 });
    open.push(server);
    for (const inputs of ['Call me Ishmael.', 'The whale', 'Ahab']) {
      const r = await fetch(`${server.url}/generate`, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ inputs, parameters: { max_new_tokens: 3 } }),
      });
      expect(r.status).toBe(200);
    }
    await expect(server.close()).resolves.toEqual({ finished: 0, cut: 0 });
    const telemetryLines = lines.filter((l) => l.msg === 'telemetry error');
    expect(telemetryLines).toHaveLength(1);
    expect((telemetryLines[0].err as { message: string }).message).toMatch(/^telemetry export of (spans|metrics) to .* failed: connect ECONNREFUSED/);
    expect(lines.at(-1)?.msg).toBe('closed');
  });
});
