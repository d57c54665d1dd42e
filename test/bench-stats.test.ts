/** Unit tests for the benchmark helpers: statistics, Markdown tables, SSE parsing, loopback checks. */
import { describe, expect, it } from 'vitest';
import { clientLevels, loopbackUrl, UsageError } from '../bench/cli-common.ts';
import { medianOverRepeats, summarize, type LevelMetrics } from '../bench/run-load.ts';
import { parseSse, type SseEvent } from '../bench/sse.ts';
import { fmt, markdownTable, median, percentile, ratio } from '../bench/stats.ts';

describe('percentile (nearest rank)', () => {
  const values = [15, 20, 35, 40, 50];

  it('returns the value at rank ceil(p/100 * n)', () => {
    expect(percentile(values, 5)).toBe(15);
    expect(percentile(values, 30)).toBe(20);
    expect(percentile(values, 40)).toBe(20);
    expect(percentile(values, 50)).toBe(35);
    expect(percentile(values, 100)).toBe(50);
  });

  it('treats p = 0 as the minimum and high p with few samples as the maximum', () => {
    expect(percentile(values, 0)).toBe(15);
    expect(percentile(values, 99)).toBe(50);
  });

  it('does not depend on input order and does not modify the input', () => {
    const shuffled = [40, 15, 50, 35, 20];
    expect(percentile(shuffled, 50)).toBe(35);
    expect(shuffled).toEqual([40, 15, 50, 35, 20]);
  });

  it('ignores non-finite values and gives NaN without any', () => {
    expect(percentile([Number.NaN, 3, Infinity, 1, 2], 50)).toBe(2);
    expect(percentile([], 50)).toBeNaN();
    expect(percentile([Number.NaN], 50)).toBeNaN();
  });

  it('rejects p outside 0..100', () => {
    expect(() => percentile(values, -1)).toThrow(RangeError);
    expect(() => percentile(values, 101)).toThrow(RangeError);
    expect(() => percentile(values, Number.NaN)).toThrow(RangeError);
  });
});

describe('median', () => {
  it('takes the middle value of an odd count', () => {
    expect(median([3, 1, 2])).toBe(2);
  });

  it('averages the two middle values of an even count', () => {
    expect(median([4, 1, 3, 2])).toBe(2.5);
  });

  it('ignores non-finite values and gives NaN without any', () => {
    expect(median([Number.NaN, 5])).toBe(5);
    expect(median([])).toBeNaN();
  });
});

describe('ratio and fmt', () => {
  it('divides, or gives NaN for missing or zero denominators', () => {
    expect(ratio(3, 2)).toBe(1.5);
    expect(ratio(3, 0)).toBeNaN();
    expect(ratio(Number.NaN, 2)).toBeNaN();
  });

  it('formats numbers with fixed decimals and missing values as a dash', () => {
    expect(fmt(1234.567)).toBe('1234.6');
    expect(fmt(2, 2)).toBe('2.00');
    expect(fmt(Number.NaN)).toBe('—');
    expect(fmt(undefined)).toBe('—');
  });
});

describe('markdownTable', () => {
  it('pads columns, right-aligns all but the first by default, and formats numbers', () => {
    const table = markdownTable(['server', 'tok/s'], [['ours', 1234.5], ['peer', 7]]);
    expect(table.split('\n')).toEqual([
      '| server |   tok/s |',
      '| ------ | ------: |',
      '| ours   | 1234.50 |',
      '| peer   |       7 |',
    ]);
  });

  it('escapes pipes, flattens newlines and fills short rows', () => {
    const table = markdownTable(['a', 'b', 'c'], [['x|y', 'two\nlines']], ['left', 'left', 'left']);
    const lines = table.split('\n');
    expect(lines[2]).toBe('| x\\|y | two lines |     |');
    expect(lines[1]).toBe('| ---- | --------- | --- |');
  });

  it('rejects rows longer than the header', () => {
    expect(() => markdownTable(['a'], [['1', '2']])).toThrow(/2 cells/);
  });
});

async function* chunks(...parts: Array<string | Uint8Array>): AsyncGenerator<Uint8Array> {
  const enc = new TextEncoder();
  for (const p of parts) yield typeof p === 'string' ? enc.encode(p) : p;
}

async function collect(source: AsyncIterable<Uint8Array>): Promise<SseEvent[]> {
  let tick = 0;
  const out: SseEvent[] = [];
  for await (const ev of parseSse(source, { now: () => ++tick })) out.push(ev);
  return out;
}

describe('parseSse', () => {
  it('parses events split across chunks at any point', async () => {
    const text = 'data: {"token":{"text":"a"}}\n\ndata: {"token":{"text":"b"}}\n\n';
    for (let cut = 0; cut <= text.length; cut++) {
      const events = await collect(chunks(text.slice(0, cut), text.slice(cut)));
      expect(events.map((e) => e.data)).toEqual(['{"token":{"text":"a"}}', '{"token":{"text":"b"}}']);
    }
  });

  it('stamps each event with the arrival time of the chunk that completed it', async () => {
    const events = await collect(chunks('data: 1\n\nda', 'ta: 2\n', '\ndata: 3\n\n'));
    // Clock: 1, 2, 3 for the three chunks.
    expect(events.map((e) => [e.data, e.t])).toEqual([
      ['1', 1],
      ['2', 3],
      ['3', 3],
    ]);
  });

  it('handles CRLF and CR line ends, including a CRLF split between chunks', async () => {
    const events = await collect(chunks('data: a\r', '\n\r\ndata: b\r\rdata: c\n\n'));
    expect(events.map((e) => e.data)).toEqual(['a', 'b', 'c']);
  });

  it('joins multi-line data, reads event names, skips comments and events without data', async () => {
    const events = await collect(chunks(': keep-alive\n\nevent: error\ndata: x\ndata: y\n\nid: 3\n\ndata:z\n\n'));
    expect(events.map((e) => [e.event, e.data])).toEqual([
      ['error', 'x\ny'],
      ['', 'z'],
    ]);
  });

  it('keeps a UTF-8 character split across chunks intact', async () => {
    const bytes = new TextEncoder().encode('data: é\n\n');
    const events = await collect(chunks(bytes.slice(0, 7), bytes.slice(7)));
    expect(events.map((e) => e.data)).toEqual(['é']);
  });

  it('yields a final event whose blank line never came', async () => {
    const events = await collect(chunks('data: [DONE]'));
    expect(events.map((e) => e.data)).toEqual(['[DONE]']);
  });

  it('refuses a line longer than the limit', async () => {
    const run = async () => {
      for await (const _ of parseSse(chunks('x'.repeat(100)), { maxLineChars: 10 })) void _;
    };
    await expect(run()).rejects.toThrow(/longer than 10/);
  });
});

describe('loopbackUrl', () => {
  it('accepts 127.0.0.0/8, localhost and [::1], without trailing slash', () => {
    expect(loopbackUrl('url', 'http://127.0.0.1:8080/')).toBe('http://127.0.0.1:8080');
    expect(loopbackUrl('url', 'http://127.4.5.6:1')).toBe('http://127.4.5.6:1');
    expect(loopbackUrl('url', 'http://localhost:8080')).toBe('http://localhost:8080');
    expect(loopbackUrl('url', 'http://[::1]:8080')).toBe('http://[::1]:8080');
  });

  it('refuses other hosts with a reason', () => {
    for (const url of ['http://10.0.0.1:8080', 'http://example.com', 'http://128.0.0.1', 'http://[::2]:80', 'http://0.0.0.0:8080', 'http://localhost.example.com']) {
      expect(() => loopbackUrl('url', url)).toThrow(/not a loopback address/);
    }
    expect(() => loopbackUrl('url', 'ftp://127.0.0.1')).toThrow(UsageError);
    expect(() => loopbackUrl('url', 'not a url')).toThrow(UsageError);
  });
});

describe('clientLevels', () => {
  it('parses a comma-separated list and drops duplicates', () => {
    expect(clientLevels('1, 8,32,8', 256)).toEqual([1, 8, 32]);
  });

  it('refuses bad entries', () => {
    for (const bad of ['', '0', '1,,2', '1.5', '300', 'a']) expect(() => clientLevels(bad, 256)).toThrow(UsageError);
  });
});

describe('summarize and medianOverRepeats', () => {
  const sample = (tokens: number, ttftMs: number, decodeTps: number, ok = true) => ({
    ok,
    tokens: ok ? tokens : 0,
    reportedTokens: ok ? tokens : null,
    ttftMs,
    decodeTps,
    latencyMs: 100,
    ...(ok ? {} : { error: 'boom' }),
  });

  it('computes aggregate tokens/s over wall time from successful requests only', () => {
    const m = summarize({ clients: 2, requests: 3, wallMs: 2000, samples: [sample(10, 5, 100), sample(30, 15, 200), sample(0, Number.NaN, Number.NaN, false)] });
    expect(m.ok).toBe(2);
    expect(m.errors).toBe(1);
    expect(m.tokensPerS).toBe(20);
    expect(m.ttftP50Ms).toBe(5);
    expect(m.ttftP99Ms).toBe(15);
    expect(m.decodeTps).toBe(150);
    expect(m.meanTokens).toBe(20);
    expect(m.firstError).toBe('boom');
  });

  it('takes medians of rates and sums of counts over repeats', () => {
    const m = (tokensPerS: number): LevelMetrics => ({
      ok: 1, errors: 0, tokens: 10, tokensPerS, ttftP50Ms: tokensPerS, ttftP99Ms: 1, decodeTps: 1, meanTokens: 10, countMismatches: 1,
    });
    const out = medianOverRepeats([m(3), m(1), m(2)]);
    expect(out.tokensPerS).toBe(2);
    expect(out.ok).toBe(3);
    expect(out.countMismatches).toBe(3);
  });
});
