/**
 * Trace spans per step: a root `moe.step` span and, under it, one `moe.dispatch` span per layer on the
 * reconstructed timeline (see step-summary.ts). Each worker task of a layer is an event `moe.worker.task` on the
 * dispatch span, timestamped when the worker started it (dispatch start + queue wait, clamped to the span).
 * Events rather than child spans: a step with L layers and W workers costs 1 + L spans, not 1 + L·(1 + W).
 *
 * A step serves many requests and a request spans many steps, so the step span is a root of its own trace with a
 * span link to the request span of every sequence it carried (OpenTelemetry's model for batch processing): a
 * request's trace then leads to the expert dispatches that computed its tokens.
 */
import { ROOT_CONTEXT, SpanKind, trace, type Link, type Tracer, TraceFlags } from '@opentelemetry/api';
import type { Sequence } from '../engine/sequence.ts';
import { MOE, SPAN } from './names.ts';
import type { StepSummary } from './step-summary.ts';
import { spanContextOf } from './trace-context.ts';

/** One link per sequence whose request has a span (`GenerateOptions.trace`); sequences without one are left out. */
export function requestLinks(sequences: readonly Sequence[]): Link[] {
  const links: Link[] = [];
  for (const sequence of sequences) {
    const context = spanContextOf(sequence.options?.trace);
    // A request span the caller's sampling decision left unrecorded (traceparent flags 00) is never exported: no link.
    if (context && (context.traceFlags & TraceFlags.SAMPLED) !== 0) links.push({ context });
  }
  return links;
}

export function recordStepSpans(tracer: Tracer, step: StepSummary, links: Link[] = []): void {
  const stepSpan = tracer.startSpan(SPAN.step, {
    kind: SpanKind.INTERNAL,
    startTime: step.startMs,
    links,
    attributes: {
      [MOE.stepIndex]: step.index,
      [MOE.stepSequences]: step.sequences,
      [MOE.stepTokens]: step.tokens,
    },
  }, ROOT_CONTEXT);
  const parent = trace.setSpan(ROOT_CONTEXT, stepSpan);
  for (const l of step.layers) {
    const span = tracer.startSpan(SPAN.dispatch, {
      kind: SpanKind.INTERNAL,
      startTime: l.startMs,
      attributes: {
        [MOE.layer]: l.layer,
        [MOE.tokens]: l.tokens,
        [MOE.tokensPerExpert]: l.routedPerExpert,
        [MOE.overflowTokens]: l.overflow,
        [MOE.capacity]: l.capacity,
      },
    }, parent);
    for (const w of l.workers) {
      span.addEvent(SPAN.workerTask, {
        [MOE.worker]: w.worker,
        [MOE.workerTokens]: w.tokens,
        [MOE.workerExperts]: w.experts,
        [MOE.workerQueueMs]: w.queueMs,
        [MOE.workerComputeMs]: w.computeMs,
      }, Math.min(l.endMs, l.startMs + Math.max(0, w.queueMs)));
    }
    span.end(l.endMs);
  }
  stepSpan.end(step.endMs);
}
