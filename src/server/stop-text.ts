/**
 * OpenAI-style stop handling on streamed text: the stop sequence itself is not returned, so text that might be
 * the start of a stop sequence is held back until the next token settles it.
 */
export class StopTextFilter {
  private buffer = '';
  stopped = false;

  constructor(private readonly stops: string[]) {}

  /** Feeds a text increment; returns what can safely be emitted now. */
  push(delta: string): string {
    if (this.stopped) return '';
    this.buffer += delta;
    const hits = this.stops.map((s) => this.buffer.indexOf(s)).filter((i) => i >= 0);
    if (hits.length > 0) {
      this.stopped = true;
      const out = this.buffer.slice(0, Math.min(...hits));
      this.buffer = '';
      return out;
    }
    const hold = Math.max(0, ...this.stops.map((s) => longestSuffixPrefix(this.buffer, s)));
    const out = this.buffer.slice(0, this.buffer.length - hold);
    this.buffer = this.buffer.slice(this.buffer.length - hold);
    return out;
  }

  /** At the end: whatever was held back and turned out not to be a stop sequence. */
  flush(): string {
    const out = this.stopped ? '' : this.buffer;
    this.buffer = '';
    return out;
  }
}

/** The whole text with everything from the first stop sequence on removed. */
export function cutAtStop(text: string, stops: string[]): string {
  const hits = stops.map((s) => text.indexOf(s)).filter((i) => i >= 0);
  return hits.length > 0 ? text.slice(0, Math.min(...hits)) : text;
}

/** Length of the longest suffix of `text` that is a proper prefix of `stop`. */
function longestSuffixPrefix(text: string, stop: string): number {
  for (let n = Math.min(text.length, stop.length - 1); n > 0; n--) {
    if (text.endsWith(stop.slice(0, n))) return n;
  }
  return 0;
}
