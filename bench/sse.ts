/**
 * A small server-sent-events parser over a byte stream (the `text/event-stream` format): `data:` lines are joined
 * with "\n", `event:` sets the type, lines starting with ":" are comments, and a blank line ends an event. Lines may
 * end with "\n", "\r\n" or "\r", and an event (or a line, or a UTF-8 character) may be split across chunks.
 * Each event carries the time its last byte arrived, so callers can time token events.
 */

export interface SseEvent {
  /** The `event:` field, '' when absent. */
  event: string;
  /** The `data:` lines joined with "\n". */
  data: string;
  /** performance.now() (ms) when the chunk that completed this event arrived. */
  t: number;
}

export interface SseOptions {
  /** A single line longer than this many characters is an error (default 1 MiB): the stream is not SSE. */
  maxLineChars?: number;
  /** Clock for the event times (default performance.now). */
  now?: () => number;
}

/**
 * The SSE parser as a synchronous state machine: `push` takes the next chunk (bytes, or text already decoded) with
 * its arrival time and returns the events it completed; `end` finishes a last line without terminator and a last
 * event without its blank line. Events without any `data:` line are skipped, as the spec says. It holds at most one
 * partial line plus one partial event.
 */
export class SseParser {
  private readonly maxLine: number;
  private readonly decoder = new TextDecoder('utf-8');
  private buffer = '';
  private data: string[] = [];
  private event = '';
  private t = 0;

  constructor(options: Pick<SseOptions, 'maxLineChars'> = {}) {
    this.maxLine = options.maxLineChars ?? 1 << 20;
  }

  /** The events `chunk` completes; `t` is its arrival time. Throws on a line longer than maxLineChars. */
  push(chunk: Uint8Array | string, t: number): SseEvent[] {
    this.t = t;
    this.buffer += typeof chunk === 'string' ? chunk : this.decoder.decode(chunk, { stream: true });
    const out: SseEvent[] = [];
    let start = 0;
    const eol = /\r\n?|\n/g;
    for (let m = eol.exec(this.buffer); m !== null; m = eol.exec(this.buffer)) {
      // A "\r" at the very end may be the first half of "\r\n": wait for the next chunk to know.
      if (m[0] === '\r' && m.index === this.buffer.length - 1) break;
      const event = this.takeLine(this.buffer.slice(start, m.index));
      start = m.index + m[0].length;
      if (event) out.push(event);
    }
    this.buffer = this.buffer.slice(start);
    if (this.buffer.length > this.maxLine) {
      throw new Error(`server-sent event line longer than ${this.maxLine} characters: the response is not an event stream`);
    }
    return out;
  }

  /** The end of the stream: what a last unterminated line and event complete. */
  end(): SseEvent[] {
    this.buffer += this.decoder.decode();
    const out: SseEvent[] = [];
    for (const line of this.buffer.split(/\r\n|\r|\n/)) {
      const event = this.takeLine(line);
      if (event) out.push(event);
    }
    this.buffer = '';
    const last = this.takeLine('');
    if (last) out.push(last);
    return out;
  }

  // Returns the event a line completes, if any.
  private takeLine(line: string): SseEvent | null {
    if (line === '') {
      const out = this.data.length > 0 ? { event: this.event, data: this.data.join('\n'), t: this.t } : null;
      this.data = [];
      this.event = '';
      return out;
    }
    if (line.startsWith(':')) return null;
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') this.data.push(value);
    else if (field === 'event') this.event = value;
    // id:, retry: and unknown fields do not matter here.
    return null;
  }
}

/** Parses SSE from byte chunks (SseParser over an async iterable), yielding each event as its chunk arrives. */
export async function* parseSse(chunks: AsyncIterable<Uint8Array>, options: SseOptions = {}): AsyncGenerator<SseEvent> {
  const now = options.now ?? (() => performance.now());
  const parser = new SseParser(options);
  for await (const chunk of chunks) yield* parser.push(chunk, now());
  yield* parser.end();
}
