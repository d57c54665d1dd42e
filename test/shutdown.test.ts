/**
 * Graceful shutdown: in process with a fake engine (every step driven by the test), the engine's typed shutdown
 * errors, and the real CLI as a child process on the bundled model, stopped with SIGTERM (also through `npm start`).
 * Ordering comes from events (a stream's first token, the server's log lines), never from sleeping.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { Agent, request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigSchema } from '../src/config.ts';
import { Engine } from '../src/engine/engine.ts';
import {
  ShuttingDownError, type GenerateOptions, type GenerateRequest, type GenerateResult, type GenerationService, type ModelInfo,
} from '../src/engine/types.ts';
import { createLogger, type LogFields } from '../src/log.ts';
import { startServer, type RunningServer } from '../src/serve.ts';
import { classifyError } from '../src/server/errors.ts';
import { writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig, request } from './helpers.ts';

const ROOT = path.resolve(import.meta.dirname, '..');

function deferred<T = void>() {
  let resolve!: (value: T) => void;
  let reject!: (error: Error) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** One HTTP exchange read to its end: whether the body arrived in full, and its SSE events when it is a stream. */
interface Exchange {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
  /** The response ended properly (its whole body arrived), as opposed to its connection being cut. */
  complete: boolean;
  events: unknown[];
}

interface OpenRequest {
  /** Resolves with the first SSE event (streams only). */
  firstEvent: Promise<unknown>;
  done: Promise<Exchange>;
}

function parseEvents(body: string): unknown[] {
  return body.split('\n\n').flatMap((block) => {
    const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
    if (data === '') return [];
    return [data === '[DONE]' ? data : JSON.parse(data)];
  });
}

/** POST with node:http over `agent` (keep-alive), reading the response incrementally. */
function post(url: string, route: string, body: unknown, agent: Agent): OpenRequest {
  const first = deferred<unknown>();
  const done = new Promise<Exchange>((resolve, reject) => {
    const req = httpRequest(`${url}${route}`, { method: 'POST', agent, headers: { 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        text += chunk;
        const events = parseEvents(text.slice(0, text.lastIndexOf('\n\n') + 2));
        if (events.length > 0) first.resolve(events[0]);
      });
      res.on('close', () => {
        const events = (res.headers['content-type'] ?? '').startsWith('text/event-stream') ? parseEvents(text) : [];
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text, complete: res.complete, events });
      });
    });
    req.on('error', (err) => {
      first.reject(err);
      reject(err);
    });
    req.end(JSON.stringify(body));
  });
  done.then(() => first.reject(new Error('the response ended without an event')), () => {});
  first.promise.catch(() => {});
  return { firstEvent: first.promise, done };
}

/**
 * The error type of a terminal error event: `{"error": "...", "error_type"}`, or on the OpenAI routes possibly
 * OpenAI's `{"error": {"message", "type", "code"}}` with our type as its code; undefined for any other event.
 */
function errorTypeOf(event: unknown): unknown {
  const e = event as { error?: unknown; error_type?: unknown } | undefined;
  if (typeof e?.error === 'string') return e.error_type;
  const inner = e?.error as { message?: unknown; code?: unknown } | undefined;
  return typeof inner?.message === 'string' ? inner.code : undefined;
}

/** Resolves with the error code of a TCP connection attempt (e.g. ECONNREFUSED), or 'connected'. */
function tryConnect(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

/**
 * A fake engine whose requests each emit one token, then wait: for release() (they finish normally) or close()
 * (they reject with ShuttingDownError, as the real engine's scheduler does).
 */
class HeldService implements GenerationService {
  /** Resolves with the number of generate() calls so far, each time one starts. */
  private started: Array<{ n: number; resolve: () => void }> = [];
  private calls = 0;
  private readonly released = deferred();
  private readonly closed = deferred();

  constructor() {
    this.closed.promise.catch(() => {});
  }

  /** Resolves once `n` generate() calls have begun (and sent their first token). */
  untilStarted(n: number): Promise<void> {
    if (this.calls >= n) return Promise.resolve();
    return new Promise((resolve) => this.started.push({ n, resolve }));
  }

  release(): void {
    this.released.resolve();
  }

  async generate(req: GenerateRequest, options: GenerateOptions = {}): Promise<GenerateResult> {
    options.onToken?.({ id: 104, text: 'h', logprob: -0.5, special: false }, null);
    this.calls++;
    for (const s of this.started.filter((s) => s.n <= this.calls)) s.resolve();
    await Promise.race([this.released.promise, this.closed.promise]);
    const result: GenerateResult = {
      generatedText: 'hi', finishReason: 'length', generatedTokens: 2, promptTokens: 1, seed: null,
      tokens: [{ id: 104, text: 'h', logprob: -0.5, special: false }, { id: 105, text: 'i', logprob: -0.5, special: false }],
    };
    options.onToken?.(result.tokens[1], result);
    return result;
  }

  admit(): void {}

  renderChat(): string {
    return 'Q: hi\nA:';
  }

  info(): ModelInfo {
    return { modelId: 'held' } as ModelInfo;
  }

  async close(): Promise<void> {
    this.closed.reject(new ShuttingDownError('the engine shut down while generating this request'));
  }
}

describe('graceful shutdown (in process, fake engine)', () => {
  let server: RunningServer | undefined;
  let service: HeldService;
  const agent = new Agent({ keepAlive: true });
  afterEach(async () => {
    service.release(); // a failed test must not hold close() for its grace period
    await server?.close();
    server = undefined;
    agent.destroy();
  });

  let onLog: ((line: LogFields) => void) | null = null;
  const start = async (held: HeldService, graceMs: number) => {
    service = held;
    const config = ConfigSchema.parse({ port: 0, shutdown: { graceMs } });
    const logger = createLogger({ level: 'debug', write: (text) => onLog?.(JSON.parse(text)) });
    server = await startServer(config, { loadEngine: async () => held, logger });
    return server;
  };
  /** Resolves with the next log line that matches. */
  const nextLog = (match: (line: LogFields) => boolean) =>
    new Promise<LogFields>((resolve) => (onLog = (line) => match(line) && resolve(line)));

  it('lets requests in flight finish within the grace period, refusing new connections meanwhile', async () => {
    const service = new HeldService();
    const s = await start(service, 600_000);
    const stream = post(s.url, '/generate_stream', { inputs: 'a' }, agent);
    const plain = post(s.url, '/generate', { inputs: 'b' }, agent);
    await stream.firstEvent;
    await service.untilStarted(2);

    const closed = s.close();
    expect(await tryConnect(s.port)).toBe('ECONNREFUSED');
    service.release();

    const streamed = await stream.done;
    expect(streamed.complete).toBe(true);
    expect(streamed.events.at(-1)).toMatchObject({ generated_text: 'hi', details: { finish_reason: 'length' } });
    const answered = await plain.done;
    expect(answered.status).toBe(200);
    expect(answered.headers.connection).toBe('close');
    expect(JSON.parse(answered.body)).toEqual({ generated_text: 'hi' });
    expect(await closed).toEqual({ finished: 2, cut: 0 });
  });

  it('after the grace period ends streams with a terminal error event and other requests with 503 overloaded', async () => {
    const service = new HeldService();
    const s = await start(service, 0);
    const stream = post(s.url, '/generate_stream', { inputs: 'a' }, agent);
    const chat = post(s.url, '/v1/chat/completions', { model: 'held', messages: [{ role: 'user', content: 'hi' }], stream: true }, agent);
    const plain = post(s.url, '/generate', { inputs: 'b' }, agent);
    await Promise.all([stream.firstEvent, chat.firstEvent, service.untilStarted(3)]);

    expect(await s.close()).toEqual({ finished: 0, cut: 3 });

    for (const cut of [await stream.done, await chat.done]) {
      expect(cut.status).toBe(200);
      expect(cut.complete).toBe(true); // ended by the server with an event, not a cut connection
      expect(errorTypeOf(cut.events.at(-1))).toBe('overloaded');
    }
    const refused = await plain.done;
    expect(refused.status).toBe(503);
    expect(refused.headers['retry-after']).toMatch(/^\d+$/);
    expect(refused.headers.connection).toBe('close');
    expect(JSON.parse(refused.body)).toEqual({ error: expect.stringMatching(/shut down/), error_type: 'overloaded' });
  });

  it('answers a request that arrives on an open connection during the shutdown with 503 overloaded and Connection: close', async () => {
    const service = new HeldService();
    const s = await start(service, 600_000);
    const socket = connect(s.port, '127.0.0.1');
    let raw = '';
    socket.setEncoding('utf8');
    const firstChunk = deferred();
    socket.on('data', (chunk: string) => {
      raw += chunk;
      if (raw.includes('data:')) firstChunk.resolve();
    });
    const ended = new Promise<void>((resolve) => socket.on('close', () => resolve()));
    const body = JSON.stringify({ inputs: 'a' });
    const requestText = (route: string) =>
      `POST ${route} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
    socket.write(requestText('/generate_stream'));
    await firstChunk.promise;

    const closed = s.close();
    const refused = nextLog((l) => l.msg === 'request' && l.path === '/generate');
    socket.write(requestText('/generate')); // pipelined behind the stream, which is still running
    expect(await refused).toMatchObject({ status: 503 }); // answered; the answer waits for the stream to end
    service.release();
    await ended; // the server closes the connection after its 503

    const second = raw.indexOf('HTTP/1.1 503');
    expect(second).toBeGreaterThan(0);
    expect(raw.slice(0, second)).toMatch(/"finish_reason":"length"/); // the stream in flight finished first
    const [head, payload] = raw.slice(second).split('\r\n\r\n');
    expect(head).toMatch(/^connection: close$/im);
    expect(head).toMatch(/^retry-after: \d+$/im);
    expect(head).toMatch(/^content-type: application\/json/im);
    expect(JSON.parse(payload)).toMatchObject({ error_type: 'overloaded' });
    expect(await closed).toEqual({ finished: 1, cut: 0 });
  });
});

describe('engine shutdown errors', () => {
  it('close() rejects running requests with ShuttingDownError, and later ones are refused with it', async () => {
    const engine = await Engine.load(engineConfig(writeTinyPackage()));
    let closing: Promise<void> | undefined;
    const running = engine.generate(request('shut me down', 30), { onToken: () => (closing ??= engine.close()) });
    await expect(running).rejects.toBeInstanceOf(ShuttingDownError);
    await closing;
    expect(() => engine.admit(request('too late', 3))).toThrow(ShuttingDownError);
    await expect(engine.generate(request('too late', 3))).rejects.toBeInstanceOf(ShuttingDownError);
  });

  it('maps ShuttingDownError to 503 overloaded with Retry-After and Connection: close', () => {
    const known = classifyError(new ShuttingDownError('the engine is shutting down', 5));
    expect(known).toMatchObject({ status: 503, errorType: 'overloaded', headers: { 'Retry-After': '5', Connection: 'close' } });
  });
});

/** The CLI (or `npm start`) as a child process; its JSON log lines come on stderr. */
interface Cli {
  child: ChildProcess;
  url: string;
  port: number;
  /** Resolves with the first log line with this msg (already seen or still to come). */
  log(msg: string): Promise<Record<string, unknown>>;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const children: ChildProcess[] = [];
afterEach(() => {
  // A failed test must not leave a server running.
  for (const child of children.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
});

/** @param detached start it as the leader of a new process group (as a shell does with a foreground job). */
async function startCli(command: string, args: string[], config: object, env: Record<string, string> = {}, detached = false): Promise<Cli> {
  const file = path.join(mkdtempSync(path.join(tmpdir(), 'switchyard-shutdown-')), 'config.json');
  writeFileSync(file, JSON.stringify(config));
  const child = spawn(command, args, {
    cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'], detached,
    env: { ...process.env, LOG_LEVEL: 'info', SWITCHYARD_CONFIG: file, PORT: '0', SWITCHYARD_WORKERS: '1', ...env },
  });
  children.push(child);
  // 'close', not 'exit': its output has been read by then (log lines may still be in the pipe at 'exit').
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('close', (code, signal) => resolve({ code, signal })));
  const lines: Array<Record<string, unknown>> = [];
  const waiting: Array<{ msg: string; resolve: (line: Record<string, unknown>) => void }> = [];
  createInterface({ input: child.stderr! }).on('line', (text) => {
    let line: Record<string, unknown>;
    try {
      line = JSON.parse(text);
    } catch {
      lines.push({ msg: '(not a log line)', text }); // a crash's stack trace, npm's own output: kept for the failure message
      return;
    }
    lines.push(line);
    for (const w of waiting.filter((w) => w.msg === line.msg)) w.resolve(line);
  });
  const log = (msg: string) => {
    const seen = lines.find((l) => l.msg === msg);
    if (seen) return Promise.resolve(seen);
    return new Promise<Record<string, unknown>>((resolve, reject) => {
      waiting.push({ msg, resolve });
      void exit.then(({ code, signal }) => reject(new Error(
        `the server exited (code ${code}, signal ${signal}) before logging '${msg}'; it logged:\n${lines.map((l) => JSON.stringify(l)).join('\n')}`)));
    });
  };
  const listening = await log('listening');
  return { child, url: listening.url as string, port: listening.port as number, log, exit };
}

// Greedy continuations of these prompts run to max_new_tokens on the bundled model (no end-of-sequence token):
// the long-grace test checks it, which makes the short-grace test's "still running at SIGTERM" deterministic.
const PROMPTS = ['Mr. Speaker,', 'It was'];
const LONG = { limits: { maxNewTokens: 480 }, cache: { response: { maxEntries: 0 } } };

describe('switchyard serve under SIGTERM (real CLI, bundled model)', () => {
  const cli = (config: object) => startCli(process.execPath, ['bin/switchyard.mjs', 'serve'], config);
  const agent = new Agent({ keepAlive: true });
  afterEach(() => agent.destroy());

  it('lets every stream in flight finish within a long grace period and exits 0', async () => {
    const server = await cli({ ...LONG, shutdown: { graceMs: 600_000 } });
    const streams = PROMPTS.map((inputs) => post(server.url, '/generate_stream', { inputs, parameters: { max_new_tokens: 480 } }, agent));
    await Promise.all(streams.map((s) => s.firstEvent));

    server.child.kill('SIGTERM');
    expect(await server.log('shutting down')).toMatchObject({ in_flight: 2 });
    expect(await tryConnect(server.port)).toBe('ECONNREFUSED'); // the listener closed before that line

    for (const s of streams) {
      const done = await s.done;
      expect(done.complete).toBe(true);
      expect(done.events).toHaveLength(480);
      expect(done.events.at(-1)).toMatchObject({ details: { finish_reason: 'length', generated_tokens: 480 } });
    }
    expect(await server.log('closed')).toMatchObject({ finished: 2, cut: 0 });
    expect(await server.exit).toEqual({ code: 0, signal: null });
  });

  it('ends the streams left after a tiny grace period with a terminal error event and exits non-zero', async () => {
    const server = await cli({ ...LONG, shutdown: { graceMs: 0 } });
    const streams = [
      ...PROMPTS.map((inputs) => post(server.url, '/generate_stream', { inputs, parameters: { max_new_tokens: 480 } }, agent)),
      post(server.url, '/v1/completions', { model: 'switchyard-moe', prompt: PROMPTS[0], max_tokens: 480, temperature: 0, stream: true }, agent),
    ];
    await Promise.all(streams.map((s) => s.firstEvent));

    server.child.kill('SIGTERM');
    for (const s of streams) {
      const done = await s.done;
      expect(done.status).toBe(200);
      expect(done.complete).toBe(true); // the server ended it with an event; the connection was not cut
      expect(done.events.length).toBeLessThan(480);
      expect(errorTypeOf(done.events.at(-1))).toBe('overloaded');
    }
    expect(await server.log('closed')).toMatchObject({ finished: 0, cut: 3 });
    expect(await server.exit).toEqual({ code: 1, signal: null });
  });

  it('a repeat of the signal is taken as the same request (npm forwards it); a third one exits at once', async () => {
    const server = await cli({ ...LONG, shutdown: { graceMs: 600_000 } });
    const stream = post(server.url, '/generate_stream', { inputs: PROMPTS[0], parameters: { max_new_tokens: 480 } }, agent);
    await stream.firstEvent;
    server.child.kill('SIGTERM');
    await server.log('shutting down');
    server.child.kill('SIGTERM');
    expect(await server.log('signal repeated: taken as the same request (npm forwards it); send it again to exit at once')).toMatchObject({ signal: 'SIGTERM' });
    server.child.kill('SIGTERM');
    expect(await server.log('second signal, exiting without waiting')).toMatchObject({ signal: 'SIGTERM' });
    expect(await server.exit).toEqual({ code: 1, signal: null });
    // Cut: the process exited without waiting for it (a reset, or a response that ends incomplete).
    expect((await stream.done.catch(() => null))?.complete ?? false).toBe(false);
  });

  it('npm start hands SIGTERM to the server, which shuts down and exits', async () => {
    const npm = await startCli('npm', ['start', '--silent'], {});
    npm.child.kill('SIGTERM'); // to npm, not to the server
    expect(await npm.log('closed')).toMatchObject({ cut: 0 });
    await npm.exit;
    const pid = (await npm.log('listening')).pid as number;
    expect(pid).not.toBe(npm.child.pid);
    expect(() => process.kill(pid, 0)).toThrow(/ESRCH/); // the server's process is gone, not orphaned
  });

  it('Ctrl-C under npm start (SIGINT to the whole process group, which npm forwards again) is one graceful shutdown', async () => {
    const npm = await startCli('npm', ['start', '--silent'], {}, {}, true);
    process.kill(-npm.child.pid!, 'SIGINT'); // what a terminal does: npm and the server both get it
    expect(await npm.log('closed')).toMatchObject({ cut: 0 });
    await npm.exit;
    await expect(npm.log('second signal, exiting without waiting')).rejects.toThrow(/exited/);
  });
});
