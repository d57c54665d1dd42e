/**
 * The load generator's streaming client (bench/clients.ts) against a plain node:http server that plays a TGI
 * /generate_stream: token events split across writes, the server's own count, non-2xx answers, the deadline and a
 * cancel, and streams in a row.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createClient, HttpStatusError } from '../bench/clients.ts';

const event = (data: unknown) => `data: ${JSON.stringify(data)}\n\n`;
const token = (text: string, last: boolean) => event({
  token: { text }, generated_text: last ? 'done' : null, details: last ? { generated_tokens: 3, finish_reason: 'length' } : null,
});

let server: http.Server;
let base = '';
const sockets = new Set<unknown>();

beforeAll(async () => {
  server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      if (req.url?.startsWith('/busy')) {
        res.writeHead(503, { 'content-type': 'application/json' }).end('{"error":"the server is at capacity"}');
        return;
      }
      if (req.url?.startsWith('/slow')) {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(token('a', false)); // then nothing: the client's deadline ends it
        return;
      }
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      // One event split over two writes, a comment line, then the last event and its blank line in separate writes.
      const first = token('a', false);
      res.write(first.slice(0, 9));
      setTimeout(() => {
        res.write(first.slice(9) + ': keep-alive comment\n' + token('b', false));
        res.write(token('c', true).slice(0, -1));
        setTimeout(() => res.end('\n'), 5);
      }, 5);
    });
  });
  server.on('connection', (socket) => sockets.add(socket));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

async function collect(stream: AsyncIterable<{ text: string; t: number }>): Promise<Array<{ text: string; t: number }>> {
  const out: Array<{ text: string; t: number }> = [];
  for await (const e of stream) out.push(e);
  return out;
}

describe('bench client streams (node:http, SseParser)', () => {
  it('yields each token event once, in order, with arrival times, and the server\'s own count', async () => {
    const client = await createClient('tgi', base);
    const stream = client.stream('hello', 3);
    const events = await collect(stream);
    expect(events.map((e) => e.text)).toEqual(['a', 'b', 'c']);
    expect(events[0].t).toBeLessThanOrEqual(events[1].t);
    expect(stream.summary).toEqual({ reportedTokens: 3, finishReason: 'length' });
  });

  it('runs streams one after another, each on its own connection (none is reused after the server closed it)', async () => {
    const client = await createClient('tgi', base);
    const before = sockets.size;
    for (let i = 0; i < 3; i++) expect((await collect(client.stream('hello', 3))).map((e) => e.text)).toEqual(['a', 'b', 'c']);
    expect(sockets.size - before).toBe(3);
  });

  it('rejects a non-2xx answer with its status and body', async () => {
    const client = await createClient('tgi', `${base}/busy`);
    const error = await collect(client.stream('hello', 3)).then(() => null, (e: unknown) => e);
    expect(error).toBeInstanceOf(HttpStatusError);
    expect((error as HttpStatusError).status).toBe(503);
    expect((error as HttpStatusError).body).toContain('at capacity');
  });

  it('says the request timed out when the deadline passes mid-stream', async () => {
    const client = await createClient('tgi', `${base}/slow`, { timeoutMs: 200 });
    await expect(collect(client.stream('hello', 3))).rejects.toThrow(/timed out after 0.2 s/);
  });

  it('says the request was cancelled when the caller aborts', async () => {
    const client = await createClient('tgi', `${base}/slow`);
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 50);
    await expect(collect(client.stream('hello', 3, controller.signal))).rejects.toThrow(/was cancelled/);
  });
});
