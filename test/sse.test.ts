/** The SSE writer (src/server/sse.ts): framing per the spec, the body's end, and the client going away. */
import { Hono } from 'hono';
import { describe, expect, it } from 'vitest';
import { sseResponse, type SseSink } from '../src/server/sse.ts';

describe('sseResponse', () => {
  it('frames each event as data lines and a blank line, keeps headers set before, and ends with the producer', async () => {
    const app = new Hono();
    app.get('/s', (c) => {
      c.header('x-request-id', 'r1');
      return sseResponse(c, async (sink) => {
        sink.send('{"a":1}');
        await new Promise((resolve) => setTimeout(resolve, 5));
        sink.send('two\nlines\r\nand\rthree');
        sink.send('[DONE]');
      });
    });
    const res = await app.request('/s');
    expect(res.headers.get('content-type')).toBe('text/event-stream');
    expect(res.headers.get('cache-control')).toBe('no-cache');
    expect(res.headers.get('x-request-id')).toBe('r1');
    expect(await res.text()).toBe('data: {"a":1}\n\ndata: two\ndata: lines\ndata: and\ndata: three\n\ndata: [DONE]\n\n');
  });

  it('aborts its signal when the body is cancelled, drops later events, and still ends when the producer throws', async () => {
    const app = new Hono();
    let sink: SseSink | undefined;
    let release = () => {};
    app.get('/t', (c) => sseResponse(c, async (s) => {
      s.send('before');
      throw new Error('producer failed');
    }));
    app.get('/s', (c) => sseResponse(c, async (s) => {
      sink = s;
      s.send('first');
      await new Promise<void>((resolve) => (release = resolve));
      s.send('after the client left'); // dropped, no throw
    }));
    const res = await app.request('/s');
    const reader = res.body!.getReader();
    expect(new TextDecoder().decode((await reader.read()).value)).toBe('data: first\n\n');
    await reader.cancel();
    expect(sink!.signal.aborted).toBe(true);
    release();
    await new Promise((resolve) => setTimeout(resolve, 5));
    expect(await (await app.request('/t')).text()).toBe('data: before\n\n');
  });
});
