/**
 * Every request frees what it held once it has ended — on every generation route, streamed or not, and however it
 * ends (finish, stop sequence, client gone, timeout, a failing step). Checked without timing: each KV cache the
 * engine creates is tracked with a WeakRef and must be collected by a forced GC after its request; the signal the
 * engine was given must have no listener of the engine's left. (Before the fix, a listener on the HTTP request's
 * signal closed a cycle through undici's request FinalizationRegistry and every streamed request kept its cache.)
 */
import { getEventListeners } from 'node:events';
import v8 from 'node:v8';
import vm from 'node:vm';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import type { GenerationService } from '../src/engine/types.ts';
import { createLogger } from '../src/log.ts';
import { startServer, type RunningServer } from '../src/serve.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig } from './helpers.ts';

// A GC we can call without starting vitest's workers with --expose-gc.
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

const dir = writeTinyPackage(tinyConfig({ max_position_embeddings: 64 }), 9);
const TIMEOUT_MS = 60_000;

/** What the test sees of the engine inside the server. */
const probe = {
  /** The KV caches the engine created and the signals generate() was given: all must be collected after their request. */
  tracked: [] as Array<{ ref: WeakRef<object>; label: string }>,
  label: '',
  /** Set: the next step fails. */
  failStep: false,
  /** Set: every step moves the (fake) clock past limits.requestTimeoutMs. */
  expire: false,
  /**
   * Per generate() call: resolves when it has settled; `error` names what it was rejected with; `leftListeners`
   * counts the listeners it left on its signal.
   */
  calls: [] as Array<{ settled: Promise<void>; error?: string; leftListeners?: number }>,
  entered: null as null | (() => void),
};

let server: RunningServer;
let modelId = '';

async function loadProbedEngine(config: Parameters<typeof Engine.load>[0], observer?: Parameters<typeof Engine.load>[1]): Promise<GenerationService> {
  const engine = await Engine.load(config, [...(observer ? [observer].flat() : []), {
    onStep: () => {
      if (probe.expire) vi.setSystemTime(Date.now() + TIMEOUT_MS + 1);
    },
  }]);
  const model = engine.model;
  const newCache = model.newCache.bind(model);
  model.newCache = () => {
    const cache = newCache();
    probe.tracked.push({ ref: new WeakRef(cache), label: `${probe.label}: KV cache` });
    return cache;
  };
  const forward = model.forward.bind(model);
  model.forward = (...args) => {
    if (!probe.failStep) return forward(...args);
    probe.failStep = false;
    return Promise.reject(new Error('injected step failure'));
  };
  const generate = engine.generate.bind(engine);
  engine.generate = (request, options = {}) => {
    const signal = options.signal;
    const before = signal ? getEventListeners(signal, 'abort').length : 0;
    if (signal) probe.tracked.push({ ref: new WeakRef(signal), label: `${probe.label}: signal` });
    const call: (typeof probe.calls)[number] = { settled: Promise.resolve() };
    const result = generate(request, options);
    call.settled = result.then(() => undefined, (err: Error) => void (call.error = err.name)).then(() => {
      // The engine's own listener must be gone; the caller's (and undici's) may have gone too if the signal aborted.
      if (signal) call.leftListeners = Math.max(0, getEventListeners(signal, 'abort').length - before);
    });
    probe.calls.push(call);
    probe.entered?.();
    return result;
  };
  return engine;
}

beforeAll(async () => {
  server = await startServer(engineConfig(dir, {
    port: 0, limits: { maxNewTokens: 40, requestTimeoutMs: TIMEOUT_MS }, cache: { response: { maxEntries: 0 } },
  }), { logger: createLogger({ level: 'silent' }), closeGraceMs: 200, loadEngine: loadProbedEngine });
  modelId = (await (await fetch(`${server.url}/v1/models`)).json()).data[0].id;
});
afterAll(() => server?.close());

type Route = '/generate' | '/generate_stream' | '/v1/completions' | '/v1/chat/completions';
const ROUTES: Array<{ route: Route; stream: boolean }> = [
  { route: '/generate', stream: false },
  { route: '/generate_stream', stream: true },
  { route: '/v1/completions', stream: false },
  { route: '/v1/completions', stream: true },
  { route: '/v1/chat/completions', stream: false },
  { route: '/v1/chat/completions', stream: true },
];

/** A request body; `long`: generate all `maxTokens` tokens (no stopping at EOS), so that there are several steps. */
function body(route: Route, stream: boolean, maxTokens: number, { stop = [] as string[], long = false } = {}): unknown {
  const prompt = 'Call me Ishmael.';
  if (route === '/generate' || route === '/generate_stream') {
    return { inputs: prompt, parameters: { max_new_tokens: maxTokens, stop, ...(long ? { ignore_eos: true } : {}) } };
  }
  const common = { model: modelId, max_tokens: maxTokens, stream, ...(stop.length > 0 ? { stop } : {}), ...(long ? { ignore_eos: true } : {}) };
  return route === '/v1/completions' ? { ...common, prompt } : { ...common, messages: [{ role: 'user', content: prompt }] };
}

const post = (route: Route, payload: unknown, signal?: AbortSignal) =>
  fetch(server.url + route, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(payload), signal });

/** The generated text of a finished response, whatever the route. */
async function textOf(route: Route, response: Response): Promise<string> {
  const json = await response.json();
  if (route === '/generate') return json.generated_text;
  return route === '/v1/completions' ? json.choices[0].text : json.choices[0].message.content;
}

/**
 * Runs `send` (one request) and waits until the server's generate() calls it made have settled and the scheduler's
 * step in flight is over (a one-token request after it can only finish after that step); then GC, and returns the
 * labels of tracked objects (KV caches, signals) still alive and the listeners left on the engine's signals.
 */
async function scenario(label: string, send: () => Promise<unknown>): Promise<{ alive: string[]; leftListeners: number; errors: string[] }> {
  probe.label = label;
  probe.calls = [];
  await send();
  await Promise.all(probe.calls.map((c) => c.settled));
  const leftListeners = probe.calls.reduce((n, c) => n + (c.leftListeners ?? 0), 0);
  const errors = probe.calls.map((c) => c.error ?? 'none');
  probe.label = `${label} (flush)`;
  await (await post('/generate', { inputs: 'flush', parameters: { max_new_tokens: 1 } })).text();
  // WeakRef targets stay alive until the job that made them ends, and an HTTP request's signal only after undici's
  // FinalizationRegistry callback (a task after a GC) let it go: a few rounds, each yielding to the event loop.
  for (let round = 0; round < 10 && probe.tracked.some((t) => t.ref.deref() !== undefined); round++) {
    await new Promise((resolve) => setImmediate(resolve));
    gc();
  }
  const alive = probe.tracked.filter((t) => t.ref.deref() !== undefined).map((t) => t.label);
  probe.tracked = probe.tracked.filter((t) => t.ref.deref() !== undefined);
  return { alive, leftListeners, errors };
}

describe('every request releases its sequence, KV cache and listeners when it ends', () => {
  for (const { route, stream } of ROUTES) {
    const name = `${route}${stream && !route.endsWith('_stream') ? ' (stream)' : ''}`;

    it(`${name}: finish, stop sequence, client gone, timeout, failing step`, async () => {
      const read = async (r: Response) => {
        await r.text();
        return r;
      };
      const outcomes: Record<string, { alive: string[]; leftListeners: number; errors: string[] }> = {};

      outcomes.finish = await scenario(`${name} finish`, async () => expect((await read(await post(route, body(route, stream, 4)))).status).toBe(200));

      // A stop sequence the greedy answer is known to contain: its first character.
      const plain: Route = route === '/generate_stream' ? '/generate' : route;
      const text = await textOf(plain, await post(plain, body(plain, false, 6)));
      const first = Array.from(text.trim())[0];
      if (first !== undefined) {
        outcomes.stop = await scenario(`${name} stop`, async () => expect((await read(await post(route, body(route, stream, 6, { stop: [first] })))).status).toBe(200));
      }

      outcomes.clientGone = await scenario(`${name} client gone`, async () => {
        const client = new AbortController();
        const entered = new Promise<void>((resolve) => (probe.entered = resolve));
        const response = post(route, body(route, stream, 40, { long: true }), client.signal).then(async (r) => {
          if (stream) await r.body!.getReader().read(); // the stream has begun
          client.abort();
        }, () => undefined);
        await entered;
        probe.entered = null;
        if (!stream) client.abort(); // the server is generating: the connection closes under it
        await response;
      });

      vi.useFakeTimers({ toFake: ['Date'] });
      probe.expire = true;
      try {
        outcomes.timeout = await scenario(`${name} timeout`, async () => read(await post(route, body(route, stream, 20, { long: true }))));
      } finally {
        probe.expire = false;
        vi.useRealTimers();
      }

      probe.failStep = true;
      outcomes.failingStep = await scenario(`${name} failing step`, async () => read(await post(route, body(route, stream, 8))));
      // Each scenario ended the way it meant to (a client that leaves may find its request already finished).
      expect(outcomes.finish.errors).toEqual(['none']);
      expect(outcomes.stop?.errors ?? ['none']).toEqual(['none']);
      expect(outcomes.clientGone.errors[0]).toMatch(/^(CancelledError|none)$/);
      expect(outcomes.timeout.errors).toEqual(['RequestTimeoutError']);
      expect(outcomes.failingStep.errors).toEqual(['Error']);
      for (const [ending, { alive, leftListeners }] of Object.entries(outcomes)) {
        expect({ ending, alive, leftListeners }).toEqual({ ending, alive: [], leftListeners: 0 });
      }
    });
  }
});
