/**
 * Export failures, said once and then rarely, and never waited on for long. The OpenTelemetry SDK hands a failed
 * export to its global error handler, which logs nothing unless a diag logger is installed, and the OTLP/HTTP
 * exporter retries a refused connection for up to its timeout (10 s by default): a gateway whose collector was
 * down exported nothing, said nothing, and took ~9 s longer to shut down. Here every exporter is wrapped so that:
 *
 * - a failure is reported (TelemetryOptions.onError, which the server logs) the first time, then at most once per
 *   `intervalMs` with the number of failures in between; spans and metrics share one reporter, so a collector that
 *   is down is one line, not one per signal and batch;
 * - an export that has not answered after its timeout counts as failed (its timer does not keep the process alive);
 * - during shutdown, while the last export failed (the collector is down), the final exports are not even tried:
 *   shutdown does not wait out another timeout for a collector known to be down.
 *
 * So shutdown waits at most for the exports in flight and one final attempt, each bounded by the timeout
 * (telemetry.exportTimeoutMs), and usually not at all when the collector was already seen down.
 */
import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import type { InstrumentType, PushMetricExporter, ResourceMetrics } from '@opentelemetry/sdk-metrics';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace-base';

/** How often export errors are reported after the first one. */
export const EXPORT_ERROR_REPORT_INTERVAL_MS = 60_000;
/** Grace past the export timeout before the guard gives up on an exporter itself (its own timeout should come first). */
const GUARD_SLACK_MS = 250;

export interface ExportErrorsOptions {
  /** Where reports go (one Error per report). */
  report: (error: Error) => void;
  /** How to fix a failure, appended to the first report (e.g. which config field names the collector). */
  hint: string;
  intervalMs?: number;
  /** Clock in milliseconds (default Date.now). */
  now?: () => number;
}

/** The failures of one telemetry instance's exports, rate-limited; also knows when shutdown has given up on them. */
export class ExportErrors {
  private lastReportAt: number | null = null;
  private unreported = 0;
  private closing = false;
  /** The most recent export failed (and none succeeded since). */
  private down = false;
  private readonly intervalMs: number;
  private readonly now: () => number;

  constructor(private readonly options: ExportErrorsOptions) {
    this.intervalMs = options.intervalMs ?? EXPORT_ERROR_REPORT_INTERVAL_MS;
    this.now = options.now ?? Date.now;
  }

  /** Counts a failed export of `what` (e.g. "spans to http://…/v1/traces"); reports it unless one was reported lately. */
  failed(what: string, error: Error): void {
    this.down = true;
    const t = this.now();
    if (this.lastReportAt !== null && t - this.lastReportAt < this.intervalMs) {
      this.unreported++;
      return;
    }
    const first = this.lastReportAt === null;
    const since = this.unreported > 0 ? ` (${this.unreported} more export failures since the last report)` : '';
    const tail = first
      ? `. ${this.options.hint} What cannot be sent is dropped; further export failures are reported at most once every ${Math.round(this.intervalMs / 1000)} s.`
      : '';
    this.lastReportAt = t;
    this.unreported = 0;
    this.options.report(new Error(`telemetry export of ${what} failed: ${error.message}${since}${tail}`, { cause: error }));
  }

  /** An export went through: the collector is up. */
  succeeded(): void {
    this.down = false;
  }

  /** Shutdown has begun: from now on, while the last export failed, exports are dropped without being tried. */
  beginShutdown(): void {
    this.closing = true;
  }

  /** True when exports should not even be tried: shutting down, and the last export failed. */
  get givingUp(): boolean {
    return this.closing && this.down;
  }
}

/**
 * Runs one export through `errors`: fails at once while giving up, fails after `timeoutMs` (+ slack) without an
 * answer, and reports every failure. `callback` is called exactly once.
 */
function guardedExport<T>(
  errors: ExportErrors, what: string, timeoutMs: number,
  run: (items: T, done: (result: ExportResult) => void) => void, items: T, callback: (result: ExportResult) => void,
): void {
  if (errors.givingUp) {
    callback({ code: ExportResultCode.FAILED, error: new Error('not sent at shutdown: the last export failed') });
    return;
  }
  let settled = false;
  const finish = (result: ExportResult) => {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    if (result.code === ExportResultCode.SUCCESS) errors.succeeded();
    else errors.failed(what, result.error ?? new Error('the exporter reported a failure'));
    callback(result);
  };
  const timer = setTimeout(() => finish({ code: ExportResultCode.FAILED, error: new Error(`no answer within ${timeoutMs} ms`) }), timeoutMs + GUARD_SLACK_MS);
  timer.unref();
  try {
    run(items, finish);
  } catch (error) {
    finish({ code: ExportResultCode.FAILED, error: error instanceof Error ? error : new Error(String(error)) });
  }
}

/** A SpanExporter whose failures go to `errors` (see the file comment). */
export class GuardedSpanExporter implements SpanExporter {
  constructor(private readonly inner: SpanExporter, private readonly errors: ExportErrors, private readonly what: string, private readonly timeoutMs: number) {}

  export(spans: ReadableSpan[], callback: (result: ExportResult) => void): void {
    guardedExport(this.errors, this.what, this.timeoutMs, (items, done) => this.inner.export(items, done), spans, callback);
  }

  shutdown(): Promise<void> {
    return this.inner.shutdown();
  }

  forceFlush(): Promise<void> {
    return this.inner.forceFlush?.() ?? Promise.resolve();
  }
}

/** A PushMetricExporter whose failures go to `errors`; the inner exporter's aggregation choices are kept. */
export class GuardedMetricExporter implements PushMetricExporter {
  readonly selectAggregationTemporality?: PushMetricExporter['selectAggregationTemporality'];
  readonly selectAggregation?: PushMetricExporter['selectAggregation'];

  constructor(private readonly inner: PushMetricExporter, private readonly errors: ExportErrors, private readonly what: string, private readonly timeoutMs: number) {
    if (inner.selectAggregationTemporality) this.selectAggregationTemporality = (type: InstrumentType) => inner.selectAggregationTemporality!(type);
    if (inner.selectAggregation) this.selectAggregation = (type: InstrumentType) => inner.selectAggregation!(type);
  }

  export(metrics: ResourceMetrics, callback: (result: ExportResult) => void): void {
    guardedExport(this.errors, this.what, this.timeoutMs, (items, done) => this.inner.export(items, done), metrics, callback);
  }

  shutdown(): Promise<void> {
    return this.inner.shutdown();
  }

  forceFlush(): Promise<void> {
    return this.inner.forceFlush();
  }
}
