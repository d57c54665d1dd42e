/**
 * Cross-cutting HTTP points over a fake engine: unsupported Content-Encoding → 415 on every route, a known path
 * with the wrong method → 405 with Allow (worked out from the registered routes), and CORS for configured origins
 * only (Hono's cors middleware; off by default).
 */
import { describe, expect, it } from 'vitest';
import { ConfigSchema, type ConfigInput } from '../src/config.ts';
import type { GenerateResult, GenerationService, ModelInfo } from '../src/engine/types.ts';
import { createLogger } from '../src/log.ts';
import { createApp } from '../src/server/app.ts';
import { unsupportedCodings } from '../src/server/content-encoding.ts';
import { allowedMethods } from '../src/server/method-not-allowed.ts';

const service: GenerationService = {
  async generate(request) {
    const result: GenerateResult = { generatedText: 'ok', finishReason: 'length', generatedTokens: 1, promptTokens: 1, seed: null,
      tokens: [{ id: 1, text: 'ok', logprob: -1, special: false }] };
    return request.inputs === 'boom' ? Promise.reject(new Error('x')) : result;
  },
  admit() {},
  renderChat: () => 'chat',
  info: () => ({ modelId: 'm', limits: { maxPromptTokens: 10, maxNewTokens: 10, maxTotalTokens: 20 } }) as ModelInfo,
  async close() {},
};

function appWith(config: ConfigInput = {}) {
  return createApp(service, ConfigSchema.parse(config), { logger: createLogger({ level: 'silent' }) });
}

async function expectError(res: Response, status: number, errorType: string, message: RegExp) {
  expect(res.status).toBe(status);
  expect(res.headers.get('content-type')).toMatch(/application\/json/);
  const body = await res.json();
  expect(body.error_type).toBe(errorType);
  expect(body.error).toMatch(message);
}

describe('Content-Encoding', () => {
  it('parses the header into the codings that are not identity', () => {
    expect(unsupportedCodings(undefined)).toEqual([]);
    expect(unsupportedCodings('identity')).toEqual([]);
    expect(unsupportedCodings('GZIP')).toEqual(['gzip']);
    expect(unsupportedCodings('identity, br')).toEqual(['br']);
  });

  it.each([
    ['POST', '/generate'],
    ['POST', '/generate_stream'],
    ['POST', '/v1/completions'],
    ['POST', '/v1/chat/completions'],
    ['GET', '/health'],
    ['GET', '/info'],
  ])('answers 415 with Accept-Encoding: identity on %s %s', async (method, path) => {
    const app = appWith();
    const res = await app.request(path, {
      method, headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' },
      ...(method === 'POST' ? { body: '\x1f\x8b not really gzip' } : {}),
    });
    expect(res.status).toBe(415);
    expect(res.headers.get('accept-encoding')).toBe('identity');
    const body = await res.json();
    expect(JSON.stringify(body)).toMatch(/Content-Encoding gzip is not supported; send the body uncompressed/);
  });

  it('keeps the TGI error shape on TGI routes', async () => {
    const res = await appWith().request('/generate', { method: 'POST', headers: { 'content-encoding': 'br' }, body: 'x' });
    await expectError(res, 415, 'validation', /Content-Encoding br is not supported/);
  });

  it('accepts identity (and no header)', async () => {
    const app = appWith();
    for (const headers of [{ 'content-encoding': 'identity' }, {}] as Array<Record<string, string>>) {
      const res = await app.request('/generate', { method: 'POST', headers, body: JSON.stringify({ inputs: 'x' }) });
      expect(res.status).toBe(200);
    }
  });
});

describe('405 Method Not Allowed', () => {
  it('lists the methods registered for a path (GET brings HEAD; middleware does not count)', () => {
    const app = appWith();
    expect(allowedMethods(app, '/generate')).toEqual(['POST']);
    expect(allowedMethods(app, '/')).toEqual(['POST']);
    expect(allowedMethods(app, '/health')).toEqual(['GET', 'HEAD']);
    expect(allowedMethods(app, '/v1/models')).toEqual(['GET', 'HEAD']);
    expect(allowedMethods(app, '/nowhere')).toEqual([]);
  });

  it.each([
    ['GET', '/generate', 'POST'],
    ['PUT', '/generate_stream', 'POST'],
    ['GET', '/v1/chat/completions', 'POST'],
    ['POST', '/health', 'GET, HEAD'],
    ['DELETE', '/info', 'GET, HEAD'],
  ])('%s %s → 405 with Allow: %s and a JSON body', async (method, path, allow) => {
    const res = await appWith().request(path, { method });
    expect(res.status).toBe(405);
    expect(res.headers.get('allow')).toBe(allow);
    const body = await res.json();
    expect(JSON.stringify(body)).toContain(`${method} is not allowed on ${path}`);
  });

  it('keeps the TGI error shape on TGI routes', async () => {
    await expectError(await appWith().request('/generate'), 405, 'not_found', /GET is not allowed on \/generate; use POST/);
  });

  it('still answers 404 for paths no method serves, and HEAD on a GET route works', async () => {
    const app = appWith();
    await expectError(await app.request('/v2/nothing'), 404, 'not_found', /no route for GET \/v2\/nothing/);
    expect((await app.request('/health', { method: 'HEAD' })).status).toBe(200);
  });
});

describe('CORS', () => {
  const origin = 'https://chat.example.com';
  const preflight = (app: ReturnType<typeof appWith>, from: string) => app.request('/generate', {
    method: 'OPTIONS', headers: { origin: from, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type, authorization' },
  });
  const post = (app: ReturnType<typeof appWith>, from: string, inputs = 'x') =>
    app.request('/generate', { method: 'POST', headers: { origin: from, 'content-type': 'application/json' }, body: JSON.stringify({ inputs }) });
  const corsHeaders = (res: Response) => [...res.headers.keys()].filter((k) => k.startsWith('access-control-'));

  it('is off by default: no CORS headers, not even for a preflight', async () => {
    const app = appWith();
    expect(ConfigSchema.parse({}).cors.origins).toEqual([]);
    expect(corsHeaders(await preflight(app, origin))).toEqual([]);
    expect(corsHeaders(await post(app, origin))).toEqual([]);
  });

  it('answers a preflight from an allowed origin', async () => {
    const res = await preflight(appWith({ cors: { origins: [origin] } }), origin);
    expect(res.status).toBe(204);
    expect(res.headers.get('access-control-allow-origin')).toBe(origin);
    expect(res.headers.get('access-control-allow-methods')).toContain('POST');
    expect(res.headers.get('access-control-allow-headers')).toBe('content-type,authorization');
  });

  it('adds Access-Control-Allow-Origin to answers for an allowed origin, errors included', async () => {
    const app = appWith({ cors: { origins: ['https://other.example', origin] } });
    const ok = await post(app, origin);
    expect(ok.status).toBe(200);
    expect(ok.headers.get('access-control-allow-origin')).toBe(origin);
    expect(ok.headers.get('access-control-expose-headers')).toBe('Retry-After');
    const bad = await app.request('/generate', { method: 'POST', headers: { origin }, body: '{"inputs": 1}' });
    expect(bad.status).toBe(422);
    expect(bad.headers.get('access-control-allow-origin')).toBe(origin);
    const failed = await post(app, origin, 'boom');
    expect(failed.status).toBe(500);
    expect(failed.headers.get('access-control-allow-origin')).toBe(origin);
  });

  it('gives other origins no CORS headers (the browser then blocks them), preflight or not', async () => {
    const app = appWith({ cors: { origins: [origin] } });
    const pre = await preflight(app, 'https://evil.example');
    expect(corsHeaders(pre)).toEqual([]);
    expect(pre.status).toBe(405);
    const res = await post(app, 'https://evil.example');
    expect(res.status).toBe(200);
    expect(corsHeaders(res)).toEqual([]);
    expect(res.headers.get('vary')).toMatch(/Origin/);
    expect(corsHeaders(await app.request('/health'))).toEqual([]);
  });
});
