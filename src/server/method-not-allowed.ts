/**
 * 405 Method Not Allowed with an `Allow` header (RFC 9110 §15.5.6) for a path that has routes, just not for the
 * request's method — worked out from the app's registered routes (Hono's `app.routes`), so it never goes stale.
 */
import type { Context, Hono, NotFoundHandler } from 'hono';
import { METHOD_NAME_ALL } from 'hono/router';
import { TrieRouter } from 'hono/router/trie-router';
import { HttpError } from './errors.ts';

/**
 * The methods that have a route for `path` in `app`, sorted; GET brings HEAD (Hono answers HEAD with the GET
 * route). Middleware (registered for every method) does not count.
 */
export function allowedMethods(app: Hono, path: string): string[] {
  const router = new TrieRouter<true>();
  const methods = new Set<string>();
  for (const route of app.routes) {
    if (route.method === METHOD_NAME_ALL) continue;
    router.add(route.method, route.path, true);
    methods.add(route.method);
  }
  const allowed = [...methods].filter((m) => router.match(m, path)[0].length > 0);
  if (allowed.includes('GET') && !allowed.includes('HEAD')) allowed.push('HEAD');
  return allowed.sort();
}

/**
 * A not-found handler that answers 405 (JSON error shape, `Allow` header) when the path is known under other
 * methods, and defers to `notFound` otherwise. Thrown, so the app's error handler gives it the route's error shape.
 */
export function methodNotAllowedOr(app: Hono, notFound: NotFoundHandler): NotFoundHandler {
  return (c: Context) => {
    const allowed = allowedMethods(app, c.req.path);
    if (allowed.length === 0) return notFound(c);
    throw new HttpError(405, 'not_found',
      `${c.req.method} is not allowed on ${c.req.path}; use ${allowed.join(' or ')}`, { Allow: allowed.join(', ') });
  };
}
