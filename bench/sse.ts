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

/** The chunks of a web ReadableStream (fetch's `response.body`); the reader is released if the consumer stops early. */
export async function* readChunks(body: ReadableStream<Uint8Array>): AsyncGenerator<Uint8Array> {
  const reader = body.getReader();
  let done = false;
  try {
    for (;;) {
      const next = await reader.read();
      if (next.done) {
        done = true;
        return;
      }
      yield next.value;
    }
  } finally {
    // Stopped early (break, error, abort): cancel so the connection is not left half-read.
    if (!done) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

/**
 * Parses SSE from byte chunks. Yields one SseEvent per dispatched event (events without any `data:` line are
 * skipped, as the spec says). At the end of the stream a final event that lacks its blank line is still yielded.
 * The loop ends when the chunks end; it holds at most one partial line plus one partial event in memory.
 */
export async function* parseSse(chunks: AsyncIterable<Uint8Array>, options: SseOptions = {}): AsyncGenerator<SseEvent> {
  const maxLine = options.maxLineChars ?? 1 << 20;
  const now = options.now ?? (() => performance.now());
  const decoder = new TextDecoder('utf-8');
  let buffer = '';
  let data: string[] = [];
  let event = '';
  let t = now();

  // Returns the event a line completes, if any.
  const takeLine = (line: string): SseEvent | null => {
    if (line === '') {
      const out = data.length > 0 ? { event, data: data.join('\n'), t } : null;
      data = [];
      event = '';
      return out;
    }
    if (line.startsWith(':')) return null;
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') data.push(value);
    else if (field === 'event') event = value;
    // id:, retry: and unknown fields do not matter here.
    return null;
  };

  for await (const chunk of chunks) {
    t = now();
    buffer += decoder.decode(chunk, { stream: true });
    let start = 0;
    const eol = /\r\n?|\n/g;
    for (let m = eol.exec(buffer); m !== null; m = eol.exec(buffer)) {
      // A "\r" at the very end may be the first half of "\r\n": wait for the next chunk to know.
      if (m[0] === '\r' && m.index === buffer.length - 1) break;
      const out = takeLine(buffer.slice(start, m.index));
      start = m.index + m[0].length;
      if (out) yield out;
    }
    buffer = buffer.slice(start);
    if (buffer.length > maxLine) {
      throw new Error(`server-sent event line longer than ${maxLine} characters: the response is not an event stream`);
    }
  }
  buffer += decoder.decode();
  // End of stream: finish a last line without terminator and a last event without its blank line.
  for (const line of buffer.split(/\r\n|\r|\n/)) {
    const out = takeLine(line);
    if (out) yield out;
  }
  const last = takeLine('');
  if (last) yield last;
}
