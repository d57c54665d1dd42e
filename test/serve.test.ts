/** startServer over real HTTP on an ephemeral loopback port, with a fake engine (no model needed). */
import { request as httpRequest } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigSchema } from '../src/config.ts';
import type { GenerateOptions, GenerateRequest, GenerateResult, GenerationService, ModelInfo } from '../src/engine/types.ts';
import { createLogger, type LogFields } from '../src/log.ts';
import { startServer, type RunningServer } from '../src/serve.ts';

class FakeService implements GenerationService {
  closed = false;
  /** When set, generate() waits until its signal aborts and reports it through this callback. */
  hang: ((signal: AbortSignal) => void) | null = null;
  called: Promise<void>;
  private markCalled!: () => void;

  constructor() {
    this.called = new Promise((resolve) => (this.markCalled = resolve));
  }

  async generate(request: GenerateRequest, options: GenerateOptions = {}): Promise<GenerateResult> {
    this.markCalled();
    const hang = this.hang;
    if (hang) {
      await new Promise<void>((_, reject) => {
        options.signal?.addEventListener('abort', () => {
          hang(options.signal!);
          reject(new Error('cancelled'));
        });
      });
    }
    return {
      generatedText: request.inputs.toUpperCase(),
      finishReason: 'eos_token',
      generatedTokens: 1,
      promptTokens: 1,
      seed: null,
      tokens: [],
    };
  }

  admit(): void {}

  renderChat(messages: Array<{ role: string; content: string }>): string {
    return messages.map((m) => `${m.role}: ${m.content}\n`).join('') + 'assistant:';
  }

  info(): ModelInfo {
    throw new Error('not used');
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

let server: RunningServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

async function start(service: FakeService) {
  const config = ConfigSchema.parse({ port: 0, limits: { maxBodyBytes: 256 } });
  const logged: LogFields[] = [];
  const logger = createLogger({ level: 'info', write: (line) => logged.push(JSON.parse(line)) });
  server = await startServer(config, { loadEngine: async () => service, logger });
  return { server, logged };
}

describe('startServer', () => {
  it('listens on an ephemeral port, reports it, serves, and closes the engine on close()', async () => {
    const service = new FakeService();
    const { server: s, logged } = await start(service);
    expect(s.port).toBeGreaterThan(0);
    expect(s.url).toBe(`http://127.0.0.1:${s.port}`);
    expect(logged).toContainEqual(expect.objectContaining({ level: 'info', msg: 'listening', port: s.port, url: s.url }));

    expect(await (await fetch(`${s.url}/health`)).json()).toEqual({ status: 'ok' });
    const res = await fetch(`${s.url}/generate`, { method: 'POST', body: JSON.stringify({ inputs: 'hi' }) });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ generated_text: 'HI' });

    await s.close();
    expect(service.closed).toBe(true);
    await expect(fetch(`${s.url}/health`)).rejects.toThrow();
  });

  it('answers 413 for a chunked body over the limit', async () => {
    const { server: s } = await start(new FakeService());
    const status = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = httpRequest(`${s.url}/generate`, { method: 'POST', headers: { 'transfer-encoding': 'chunked' } }, (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      });
      req.on('error', reject);
      req.write(`{"inputs": "${'z'.repeat(200)}`);
      req.end(`${'z'.repeat(200)}"}`);
    });
    expect(status.status).toBe(413);
    expect(JSON.parse(status.body)).toMatchObject({ error_type: 'validation' });
    expect(JSON.parse(status.body).error).toMatch(/larger than 256 bytes/);
  });

  it("aborts the engine's signal when the client disconnects", async () => {
    const service = new FakeService();
    const aborted = new Promise<AbortSignal>((resolve) => (service.hang = resolve));
    const { server: s } = await start(service);
    // node:http rather than fetch: undici opens a spare connection on abort that would hold close() for seconds.
    const req = httpRequest(`${s.url}/generate`, { method: 'POST' });
    req.on('error', () => {});
    req.end(JSON.stringify({ inputs: 'wait' }));
    await service.called;
    req.destroy();
    expect((await aborted).aborted).toBe(true);
  });

  it('fails to start on a port in use and closes the engine it loaded', async () => {
    const { server: first } = await start(new FakeService());
    const second = new FakeService();
    const config = ConfigSchema.parse({ port: first.port });
    const logger = createLogger({ level: 'silent' });
    await expect(startServer(config, { loadEngine: async () => second, logger })).rejects.toThrow(/EADDRINUSE/);
    expect(second.closed).toBe(true);
  });
});
