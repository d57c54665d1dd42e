/**
 * W3C Trace Context in and out (https://www.w3.org/TR/trace-context/), with OpenTelemetry's own propagator used
 * directly (nothing is registered globally): the caller's `traceparent`/`tracestate` become a request span's
 * parent, and a request span's context travels with its sequence through the engine as the same two headers, so
 * that each step span can link to the requests it carried.
 */
import { defaultTextMapGetter, defaultTextMapSetter, ROOT_CONTEXT, trace, type Context, type Span, type SpanContext } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import type { TraceCarrier } from '../engine/types.ts';

const propagator = new W3CTraceContextPropagator();

/** The context whose span is the remote parent `carrier` names; ROOT_CONTEXT without one or when it is invalid. */
export function contextFrom(carrier: TraceCarrier | undefined): Context {
  if (!carrier?.traceparent) return ROOT_CONTEXT;
  return propagator.extract(ROOT_CONTEXT, carrier, defaultTextMapGetter);
}

/** `span`'s context as traceparent (and tracestate, when it has one). */
export function carrierOf(span: Span): TraceCarrier {
  const carrier: TraceCarrier = {};
  propagator.inject(trace.setSpan(ROOT_CONTEXT, span), carrier, defaultTextMapSetter);
  return carrier;
}

// Parsed once per request, not once per step: a sequence keeps the same carrier object for its whole life.
const parsed = new WeakMap<TraceCarrier, SpanContext | null>();

/** The span context `carrier` names, or null when it names none (absent or invalid). */
export function spanContextOf(carrier: TraceCarrier | undefined): SpanContext | null {
  if (!carrier) return null;
  let context = parsed.get(carrier);
  if (context === undefined) {
    context = trace.getSpanContext(contextFrom(carrier)) ?? null;
    parsed.set(carrier, context);
  }
  return context;
}
