/**
 * Keep-alive fuzz: one client holding one connection at a time (undici Agent, connections: 1) sends thousands of
 * seeded malformed requests to every route of the real server on the bundled model: bad JSON, wrong types, huge and
 * tiny numbers, lone surrogates and invalid UTF-8, oversize bodies (with and without Content-Length), wrong methods
 * and content types, unknown routes, admin routes with bad tokens, oversize headers. Every answer must come back on
 * a healthy connection (no socket error: a server that closes a kept-alive connection without saying
 * `Connection: close` shows up here), below 500, and every error must be the JSON error shape. Then a valid request
 * must still be served. Generation is cheap: at most 4 new tokens per request (limits.maxNewTokens).
 */
import { connect } from 'node:net';
import { Agent, fetch, type Response } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigSchema } from '../src/config.ts';
import { createLogger, type LogFields } from '../src/log.ts';
import { startServer, type RunningServer } from '../src/serve.ts';
import { BUNDLED_MODEL } from './fixtures/tiny-package.ts';

const SEED = 0x5eed_2026;
const REQUESTS = 2400;
const MAX_BODY = 16_384;
const ADMIN_TOKEN = 'fuzz-admin-token';
const MODEL = 'switchyard-moe';
const ERROR_TYPES = ['validation', 'overloaded', 'generation', 'not_found', 'unauthorized', 'internal'];

/** mulberry32: a small seeded generator, so a failure names a request that can be replayed. */
class Rng {
  constructor(private state: number) {}
  next(): number {
    this.state = (this.state + 0x6d2b79f5) | 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
}

/** A JSON fragment written as is into a body (so it can be 1e400, a lone surrogate escape, or not JSON at all). */
class Raw {
  constructor(readonly text: string) {}
}

const WEIRD_NUMBERS = [
  '0', '-0', '1', '-1', '0.5', '2', '3', '4', '5', '20', '255', '256', '257', '511', '512', '513', '1e308', '-1e308',
  '5e-324', '1e-320', '1e-7', '1e400', '-1e400', '1e-400', '9007199254740993', '18446744073709551616',
  '-9223372036854775808', '4294967295', '4294967296', '123456789012345678901234567890', '0.9999999999999999',
  '1.0000000000000002', '2.5', '1E2', '-2147483649',
];
const WEIRD_STRINGS = [
  '""', '" "', '"\\ud800"', '"\\udfff"', '"a\\ud800b"', '"\\udc00\\ud800"', '"\\u0000"', '"a\\u0000b"', '"\\uffff"',
  '"\\ufeff"', '"💥"', '"\\u202e"', '"<script>"', '"%s%n"', '"null"', '"1"', '"true"', `"${'x'.repeat(2000)}"`,
  '"\\n\\nQ:"', '"Q: hi\\nA:"', '"\\\\"', '"\\"\\""', '"é"', '"e\\u0301"', `"${'🐋'.repeat(300)}"`,
];
const WEIRD_OTHER = ['null', 'true', 'false', '[]', '{}', '[null]', '[1,2]', '[""]', '["a","b","c","d","e","f"]', '{"a":1}', '[[[]]]'];
const NOT_JSON = ['NaN', 'Infinity', '-Infinity', 'undefined', '0x10', '01', '1.', '.5', '+1', '-', "'single'", 'tru', 'nul'];

function weird(rng: Rng): Raw {
  const r = rng.next();
  if (r < 0.4) return new Raw(rng.pick(WEIRD_NUMBERS));
  if (r < 0.75) return new Raw(rng.pick(WEIRD_STRINGS));
  if (r < 0.95) return new Raw(rng.pick(WEIRD_OTHER));
  return new Raw(rng.pick(NOT_JSON));
}

/** JSON text of `value`, with Raw fragments written verbatim. */
function toJson(value: unknown): string {
  if (value instanceof Raw) return value.text;
  if (Array.isArray(value)) return `[${value.map(toJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    return `{${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}:${toJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

type Json = Record<string, unknown>;

/** Valid bodies per route (a single new token), which the fuzzer then breaks. */
const VALID: Record<string, () => Json> = {
  '/generate': () => ({ inputs: 'Call me Ishmael.', parameters: { max_new_tokens: 1, details: true } }),
  '/generate_stream': () => ({ inputs: 'The whale', parameters: { max_new_tokens: 1 } }),
  '/v1/completions': () => ({ model: MODEL, prompt: 'It was', max_tokens: 1 }),
  '/v1/chat/completions': () => ({ model: MODEL, messages: [{ role: 'user', content: 'Who is Ahab?' }], max_tokens: 1 }),
  // Never valid as a whole: the experts are not all hosted, so a mutation cannot make it apply a placement.
  '/admin/placement': () => ({ workers: 2, assignments: [{ layer: 0, expert: 0, workers: [0] }] }),
  // dry_run stays true (it is never mutated): a fuzzed body must not rebalance for real.
  '/admin/rebalance': () => ({ dry_run: true, workers: 2, window_s: 10 }),
};

const FIELDS: Record<string, string[][]> = {
  '/generate': [
    ['inputs'], ['parameters'], ['options'], ['options', 'use_cache'], ...[
      'max_new_tokens', 'do_sample', 'temperature', 'top_k', 'top_p', 'typical_p', 'repetition_penalty', 'frequency_penalty',
      'seed', 'stop', 'details', 'decoder_input_details', 'top_n_tokens', 'truncate', 'return_full_text', 'ignore_eos',
      'best_of', 'watermark', 'adapter_id', 'grammar', 'not_a_parameter',
    ].map((p) => ['parameters', p]),
  ],
  '/v1/completions': [
    'model', 'prompt', 'max_tokens', 'temperature', 'top_p', 'n', 'stream', 'stream_options', 'stop', 'seed',
    'frequency_penalty', 'presence_penalty', 'user', 'logprobs', 'echo',
  ].map((f) => [f]),
  '/v1/chat/completions': [
    ['model'], ['messages'], ['messages', '0'], ['messages', '0', 'role'], ['messages', '0', 'content'], ['messages', '1'],
    ['max_tokens'], ['temperature'], ['top_p'], ['stream'], ['stream_options'], ['stream_options', 'include_usage'], ['stop'],
    ['seed'], ['n'], ['tools'],
  ],
  '/admin/placement': [['workers'], ['assignments'], ['assignments', '0'], ['assignments', '0', 'layer'], ['assignments', '0', 'workers'], ['extra']],
  '/admin/rebalance': [['workers'], ['window_s'], ['extra']],
};
FIELDS['/generate_stream'] = FIELDS['/generate'];
// POST / is TGI's compat_generate: the /generate body (plus stream).
VALID['/'] = VALID['/generate'];
FIELDS['/'] = [...FIELDS['/generate'], ['stream']];

/** Sets (or, with undefined, deletes) the value at `path`, creating objects on the way. */
function setPath(body: Json, path: string[], value: unknown): void {
  let cur: Record<string, unknown> = body;
  for (const key of path.slice(0, -1)) {
    if (typeof cur[key] !== 'object' || cur[key] === null || cur[key] instanceof Raw) cur[key] = {};
    cur = cur[key] as Record<string, unknown>;
  }
  const last = path[path.length - 1];
  if (value === undefined) delete cur[last];
  else cur[last] = value;
}

type Body = string | Uint8Array | (() => ReadableStream<Uint8Array>);

interface FuzzRequest {
  label: string;
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: Body;
}

const chunked = (bytes: number, piece = 4096) => () =>
  new ReadableStream<Uint8Array>({
    start(controller) {
      for (let sent = 0; sent < bytes; sent += piece) controller.enqueue(new TextEncoder().encode('a'.repeat(Math.min(piece, bytes - sent))));
      controller.close();
    },
  });

/** A body for `route`: usually a broken version of its valid body, sometimes not JSON at all or far too large. */
function fuzzBody(rng: Rng, route: string): { body: Body; what: string } {
  const valid = VALID[route] ?? VALID[rng.pick(Object.keys(VALID))];
  const r = rng.next();
  if (r < 0.5) {
    const body = valid();
    const fields = FIELDS[route] ?? [['inputs']];
    const mutations = 1 + rng.int(3);
    const what: string[] = [];
    for (let i = 0; i < mutations; i++) {
      const path = rng.pick(fields);
      const value = rng.chance(0.1) ? undefined : weird(rng);
      setPath(body, path, value);
      what.push(`${path.join('.')}=${value === undefined ? '(deleted)' : value.text.slice(0, 40)}`);
    }
    return { body: toJson(body), what: what.join(' ') };
  }
  if (r < 0.62) {
    const text = toJson(valid());
    const cut = rng.int(text.length);
    const junk = rng.pick(['', '}', ',', '"', '\\', '\u0000', ']]', 'x', '{"', ' ,}']);
    return { body: text.slice(0, cut) + junk, what: `broken JSON at ${cut}` };
  }
  if (r < 0.72) {
    const whole = rng.pick([
      '', ' ', '\n', 'null', '[]', '"text"', '123', 'true', '[{}]', '{"inputs": "a", "inputs": 5}', '\ufeff{"inputs": "bom"}',
      '{"__proto__": {"inputs": "x"}}', '{"constructor": {"prototype": {}}}', '{"inputs": "a"} trailing', '{"inputs": "a",}',
      '{"inputs": "a" /* comment */}', '{inputs: "a"}', "{'inputs': 'a'}", rng.pick(NOT_JSON),
    ]);
    return { body: whole, what: `body ${JSON.stringify(whole).slice(0, 40)}` };
  }
  if (r < 0.78) {
    // Invalid UTF-8 inside a string: a lone surrogate encoded as CESU-8, a stray continuation byte, a truncated sequence.
    const bad = rng.pick([[0xed, 0xa0, 0x80], [0x80], [0xc3], [0xff, 0xfe], [0xf4, 0x90, 0x80, 0x80], [0xc0, 0xaf]]);
    const text = toJson(valid());
    const at = text.indexOf('"', text.indexOf(':') + 1) + 1 || 1;
    const enc = new TextEncoder();
    return { body: new Uint8Array([...enc.encode(text.slice(0, at)), ...bad, ...enc.encode(text.slice(at))]), what: `invalid UTF-8 ${bad}` };
  }
  if (r < 0.83) {
    const depth = rng.pick([100, 1000, 5000]);
    return { body: '['.repeat(depth) + ']'.repeat(depth), what: `nested ${depth}` };
  }
  if (r < 0.88) return { body: ' '.repeat(MAX_BODY - 2) + '{}', what: 'exactly the limit' };
  if (r < 0.93) {
    const bytes = rng.pick([MAX_BODY + 1, 4 * MAX_BODY, 2_000_000]);
    return { body: `{"inputs": "${'z'.repeat(bytes)}"}`, what: `oversize ${bytes} B` };
  }
  const bytes = rng.pick([MAX_BODY + 1, 300_000, 2_000_000]);
  return { body: chunked(bytes), what: `oversize chunked ${bytes} B` };
}

const ROUTES: Array<{ path: string; method: string }> = [
  { path: '/', method: 'POST' }, { path: '/generate', method: 'POST' }, { path: '/generate_stream', method: 'POST' },
  { path: '/v1/completions', method: 'POST' }, { path: '/v1/chat/completions', method: 'POST' },
  { path: '/v1/models', method: 'GET' }, { path: '/health', method: 'GET' }, { path: '/info', method: 'GET' },
  { path: '/metrics', method: 'GET' }, { path: '/admin/load', method: 'GET' }, { path: '/admin/placement', method: 'GET' },
  { path: '/admin/placement', method: 'PUT' }, { path: '/admin/rebalance', method: 'POST' },
];
const UNKNOWN_PATHS = [
  '/nope', '/generate/', '/generate/extra', '/GENERATE', '/v1', '/v1/chat', '/v1/models/switchyard-moe', '/admin',
  '/admin/', '/admin/nope', '/%', '/%E0%A4%A', '/%00', '/..%2f..%2fetc/passwd', '/generate%20', '//generate', '/info?x=%ZZ',
  '/health?' + 'q='.repeat(50), '/metrics/x', '/v1/completions;x', '/😀',
];
const METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD', 'PROPFIND'];
const CONTENT_TYPES = [
  'application/json', 'application/json; charset=utf-8', 'text/plain', 'application/x-www-form-urlencoded',
  'multipart/form-data; boundary=x', 'application/json; charset=utf-16', 'application/octet-stream', '*/*', '',
];
const AUTH = [
  undefined, '', 'Bearer', 'Bearer ', `Bearer ${ADMIN_TOKEN}x`, `bearer ${ADMIN_TOKEN.toUpperCase()}`, `Basic ${ADMIN_TOKEN}`,
  `Bearer ${'t'.repeat(4000)}`, 'Bearer \u00e9\u00ff', `Token ${ADMIN_TOKEN}`, `Bearer  ${ADMIN_TOKEN} extra`,
];

function fuzzRequest(rng: Rng, n: number): FuzzRequest {
  const headers: Record<string, string> = {};
  const route = rng.pick(ROUTES);
  let path = route.path;
  let method = route.method;
  const r = rng.next();
  if (r < 0.12) path = rng.pick(UNKNOWN_PATHS);
  else if (r < 0.24) method = rng.pick(METHODS);
  if (path.startsWith('/admin')) {
    const auth = rng.chance(0.3) ? `Bearer ${ADMIN_TOKEN}` : rng.pick(AUTH);
    if (auth !== undefined) headers.authorization = auth;
  }
  const type = rng.chance(0.7) ? 'application/json' : rng.pick(CONTENT_TYPES);
  if (type) headers['content-type'] = type;
  if (rng.chance(0.1)) headers['cache-control'] = rng.pick(['no-cache', 'no-store', 'max-age=0', 'nonsense', '']);
  if (rng.chance(0.05)) headers['content-encoding'] = rng.pick(['gzip', 'br', 'identity', 'x-nonsense', 'deflate, gzip']);
  if (rng.chance(0.02)) headers['x-padding'] = 'p'.repeat(rng.pick([1000, 20_000])); // 20 kB: over node's header limit
  if (rng.chance(0.02)) path += `?${'q'.repeat(rng.pick([100, 20_000]))}`;

  let body: Body | undefined;
  let what = '';
  const bodyless = method === 'GET' || method === 'HEAD';
  if (!bodyless) {
    if (rng.chance(0.12)) {
      body = toJson(VALID[route.path]?.() ?? {}); // well formed: most of these generate (one token)
      what = 'valid body';
    } else ({ body, what } = fuzzBody(rng, route.path));
  }
  return { label: `#${n} ${method} ${path.slice(0, 60)} ${what}`, method, path, headers, body };
}

interface Outcome {
  status: number;
  contentType: string;
  connection: string | null;
  text: string;
}

async function send(base: string, agent: Agent, req: FuzzRequest): Promise<Outcome> {
  const body = typeof req.body === 'function' ? req.body() : req.body;
  const res: Response = await fetch(base + req.path, {
    method: req.method, headers: req.headers, body, dispatcher: agent,
    ...(typeof req.body === 'function' ? { duplex: 'half' as const } : {}),
    // Only to name a hung request in the failure report instead of timing the whole test out.
    signal: AbortSignal.timeout(120_000),
  });
  return { status: res.status, contentType: res.headers.get('content-type') ?? '', connection: res.headers.get('connection'), text: await res.text() };
}

/**
 * The error shape: `{"error": "...", "error_type": "..."}`; on the OpenAI routes (/v1/*) also OpenAI's
 * `{"error": {"message", "type", "param", "code"}}`, which OpenAI clients parse (and which answers from below
 * routing, e.g. node's 431, cannot use: they know no path).
 */
function isErrorShape(path: string, body: unknown): boolean {
  const b = body as { error?: unknown; error_type?: unknown } | null;
  if (typeof b?.error === 'string' && ERROR_TYPES.includes(b.error_type as string)) return true;
  const e = b?.error as { message?: unknown; type?: unknown } | undefined;
  return /^\/v1(\/|\?|$)/.test(path) && typeof e?.message === 'string' && typeof e.type === 'string';
}

/** Problems with one answer: a 5xx, an error that is not the JSON error shape, an internal error inside a stream. */
function problems(req: FuzzRequest, out: Outcome): string[] {
  const found: string[] = [];
  if (out.status >= 500) found.push(`status ${out.status}: ${out.text.slice(0, 200)}`);
  if (out.status >= 400 && req.method !== 'HEAD') {
    let body: unknown;
    try {
      body = JSON.parse(out.text);
    } catch {
      found.push(`error body is not JSON (status ${out.status}, content-type ${out.contentType}): ${JSON.stringify(out.text.slice(0, 100))}`);
    }
    if (!out.contentType.startsWith('application/json')) found.push(`error content-type ${JSON.stringify(out.contentType)} (status ${out.status})`);
    if (body !== undefined && !isErrorShape(req.path, body)) found.push(`not the error shape: ${out.text.slice(0, 200)}`);
  }
  if (out.contentType.startsWith('text/event-stream') && /"(error_type|code)":"internal"/.test(out.text)) {
    found.push(`internal error event in a stream: ${out.text.slice(-200)}`);
  }
  return found;
}

/** The payload of a chunked HTTP/1.1 body. */
function dechunk(text: string): string {
  let out = '';
  for (let at = 0; ;) {
    const eol = text.indexOf('\r\n', at);
    const size = parseInt(text.slice(at, eol), 16);
    if (!(size > 0)) return out;
    out += text.slice(eol + 2, eol + 2 + size);
    at = eol + 2 + size + 2;
  }
}

let server: RunningServer;
const logged: LogFields[] = [];

beforeAll(async () => {
  const config = ConfigSchema.parse({
    model: BUNDLED_MODEL, port: 0, workers: 1,
    limits: { maxBodyBytes: MAX_BODY, maxNewTokens: 4, defaultMaxNewTokens: 1 },
    admin: { token: ADMIN_TOKEN },
    experts: { kernel: 'dense' },
  });
  const logger = createLogger({ level: 'warn', write: (line) => logged.push(JSON.parse(line)) });
  server = await startServer(config, { logger, closeGraceMs: 1000 });
});
afterAll(() => server?.close());

describe('keep-alive fuzz', () => {
  it(`${REQUESTS} seeded malformed requests on one keep-alive client: no socket error, no 5xx, JSON errors only`, async () => {
    const agent = new Agent({ connections: 1, pipelining: 1 });
    const rng = new Rng(SEED);
    const failures: string[] = [];
    const statuses = new Map<number, number>();
    let reused = 0;
    let previousClose = true;
    for (let n = 0; n < REQUESTS; n++) {
      const req = fuzzRequest(rng, n);
      try {
        const out = await send(server.url, agent, req);
        statuses.set(out.status, (statuses.get(out.status) ?? 0) + 1);
        for (const p of problems(req, out)) failures.push(`${req.label}: ${p}`);
        if (!previousClose) reused++;
        previousClose = out.connection?.toLowerCase() === 'close';
      } catch (err) {
        const e = err as Error & { cause?: { code?: string; message?: string } };
        failures.push(`${req.label}: socket error ${e.cause?.code ?? ''} ${e.cause?.message ?? e.message}`);
        previousClose = true;
      }
    }
    const after = await send(server.url, agent, {
      label: 'valid', method: 'POST', path: '/generate', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ inputs: 'Call me Ishmael.', parameters: { max_new_tokens: 3 } }),
    });
    await agent.close();

    const unhandled = logged.filter((l) => l.level === 'error').map((l) => JSON.stringify(l).slice(0, 400));
    expect(failures, `${failures.length} failures, e.g.\n${failures.slice(0, 30).join('\n')}`).toEqual([]);
    expect(unhandled).toEqual([]);
    expect(after.status).toBe(200);
    expect(JSON.parse(after.text)).toEqual({ generated_text: expect.any(String) });
    // The fuzz reached past validation (generated), refused in every way, and mostly kept its connection.
    expect([...statuses.keys()]).toEqual(expect.arrayContaining([200, 401, 404, 405, 413, 415, 422, 431]));
    expect(reused).toBeGreaterThan(REQUESTS / 2);
  });

  it('answers what node cannot parse as HTTP, or @hono/node-server cannot make a Request of, with the JSON error shape', async () => {
    const cases = [
      'GET /health HTTP/1.1\r\n\r\n', // no Host header
      'GET /he\\alth HTTP/1.1\r\nHost: x\r\n\r\n', // backslash in the path
      'GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n',
      'BREW /health HTTP/1.1\r\nHost: x\r\n\r\n',
      'POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
      `GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: ${'p'.repeat(20_000)}\r\n\r\n`,
    ];
    for (const text of cases) {
      const answer = await new Promise<string>((resolve, reject) => {
        const socket = connect(server.port, '127.0.0.1');
        let raw = '';
        socket.setEncoding('latin1');
        socket.on('data', (chunk: string) => (raw += chunk));
        socket.on('close', () => resolve(raw));
        socket.on('error', reject);
        socket.write(text); // not end(): node drops requests whose connection is half-closed before it answers
      });
      const at = answer.indexOf('\r\n\r\n');
      const head = answer.slice(0, at);
      let body = answer.slice(at + 4);
      if (/^transfer-encoding: chunked/im.test(head)) body = dechunk(body);
      expect(head, text.slice(0, 40)).toMatch(/^HTTP\/1\.1 4\d\d /);
      expect(head).toMatch(/^content-type: application\/json/im);
      expect(head).toMatch(/^connection: close/im);
      expect(JSON.parse(body)).toEqual({ error: expect.any(String), error_type: 'validation' });
    }
  });
});
