/** The caller's W3C Trace Context headers (https://www.w3.org/TR/trace-context/), for the request span's parent. */
import type { Context } from 'hono';
import type { TraceCarrier } from '../engine/types.ts';

/** `traceparent` and `tracestate` as sent; undefined without a traceparent (an invalid one is ignored later). */
export function traceHeaders(c: Context): TraceCarrier | undefined {
  const traceparent = c.req.header('traceparent');
  if (traceparent === undefined) return undefined;
  const tracestate = c.req.header('tracestate');
  return tracestate === undefined ? { traceparent } : { traceparent, tracestate };
}
