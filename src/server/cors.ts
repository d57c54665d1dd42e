/**
 * CORS for browser front ends (Hono's `cors` middleware), for the origins in `cors.origins` only: requests from
 * other origins (and requests without an Origin) pass through untouched — no CORS headers at all, preflights
 * included — so the browser blocks them. Off when the list is empty.
 */
import type { MiddlewareHandler } from 'hono';
import { cors } from 'hono/cors';

export function corsFor(origins: readonly string[]): MiddlewareHandler {
  const allowed = new Set(origins);
  const handler = cors({
    origin: [...allowed],
    allowMethods: ['GET', 'HEAD', 'POST', 'PUT', 'OPTIONS'],
    // Retry-After tells a browser client when to come back after 429/503.
    exposeHeaders: ['Retry-After'],
    maxAge: 600,
  });
  return async (c, next) => {
    const origin = c.req.header('origin');
    if (origin !== undefined && allowed.has(origin)) return handler(c, next);
    await next();
    // The answer depends on Origin (another origin would get CORS headers), so shared caches must key on it.
    c.header('Vary', 'Origin', { append: true });
  };
}
