/**
 * The operator dashboard (served only while the admin routes are on):
 *
 *   GET /dashboard                   the page (dashboard/index.html)
 *   GET /dashboard/assets/NAME       its script and style sheet (dashboard/app.js, dashboard/style.css)
 *   GET /dashboard/vendor/NAME       uPlot's browser build and CSS, from node_modules/uplot/dist
 *
 * Static files from the repository, read from disk per request (no build step, no CDN). The page itself is not
 * secret: it asks for the admin token, keeps it in sessionStorage and sends it as a bearer token to the /admin data
 * routes, which check it. A strict Content-Security-Policy allows only this origin's scripts, styles and fetches.
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import type { Context, Hono } from 'hono';
import { errorResponse } from '../errors.ts';

const DASHBOARD_DIR = path.join(import.meta.dirname, '..', '..', '..', 'dashboard');
const resolve = createRequire(import.meta.url).resolve;

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
};

/** Every file the routes may send, by URL name: nothing else on disk is reachable. */
const ASSETS: Record<string, string> = {
  'app.js': path.join(DASHBOARD_DIR, 'app.js'),
  'style.css': path.join(DASHBOARD_DIR, 'style.css'),
};
const VENDOR: Record<string, () => string> = {
  'uPlot.iife.min.js': () => resolve('uplot/dist/uPlot.iife.min.js'),
  'uPlot.min.css': () => resolve('uplot/dist/uPlot.min.css'),
};

const SECURITY_HEADERS: Record<string, string> = {
  // uPlot sets element.style from script, which CSP allows; no inline <script> or <style> anywhere.
  'Content-Security-Policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'Cache-Control': 'no-cache',
};

async function sendFile(c: Context, file: string): Promise<Response> {
  let body: Buffer;
  try {
    body = await readFile(file);
  } catch (error) {
    return errorResponse(c, 500, 'internal', `dashboard file ${path.basename(file)} cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'}); reinstall (npm ci) or restore the dashboard/ folder`);
  }
  const type = TYPES[path.extname(file)] ?? 'application/octet-stream';
  return c.body(new Uint8Array(body), 200, { 'Content-Type': type, ...SECURITY_HEADERS });
}

export function registerDashboardRoutes(app: Hono): void {
  const page = (c: Context) => sendFile(c, path.join(DASHBOARD_DIR, 'index.html'));
  app.get('/dashboard', page);
  app.get('/dashboard/', page);
  app.get('/dashboard/assets/:name', (c) => {
    const file = Object.hasOwn(ASSETS, c.req.param('name')) ? ASSETS[c.req.param('name')] : null;
    return file ? sendFile(c, file) : errorResponse(c, 404, 'not_found', `no dashboard asset ${JSON.stringify(c.req.param('name'))}; the page loads ${Object.keys(ASSETS).join(', ')}`);
  });
  app.get('/dashboard/vendor/:name', (c) => {
    let file: string | null = null;
    try {
      file = Object.hasOwn(VENDOR, c.req.param('name')) ? VENDOR[c.req.param('name')]() : null;
    } catch {
      return errorResponse(c, 500, 'internal', 'the uplot package is missing from node_modules; run npm ci');
    }
    return file ? sendFile(c, file) : errorResponse(c, 404, 'not_found', `no vendored file ${JSON.stringify(c.req.param('name'))}; the page loads ${Object.keys(VENDOR).join(', ')}`);
  });
}
