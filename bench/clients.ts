/**
 * One small HTTP client per serving API, all with the same shape, so the load runner can drive any of them:
 *
 * - `tgi` (Switchyard, Text Generation Inference): POST /generate_stream (SSE), POST /generate.
 * - `openai`: POST /v1/completions (SSE chunks, then `data: [DONE]`); the model id comes from GET /v1/models.
 * - `llamacpp`: llama.cpp's llama-server native POST /completion (SSE `{"content","stop"}` events).
 *
 * Every request has a hard timeout (the whole response, body included) and refuses redirects, so a request to a
 * loopback URL cannot be sent on elsewhere. Streams go over node:http with a synchronous SSE parser:
 * the load generator shares the machine with the server it measures, and fetch's web streams with nested async
 * generators took about three times the CPU per token event (~0.3 of a core at 1100 tokens/s on 2 cores). Requests
 * are greedy (no sampling) so both sides of a comparison do the same work.
 *
 * Token counting: `stream()` yields one TokenEvent per *token event* of the server. For tgi one event is one token
 * (TGI semantics, special tokens included). For openai and llamacpp we assume one chunk per token, which is what
 * llama-server and vLLM send; a server that merges tokens into one chunk (llama.cpp holds back incomplete UTF-8)
 * makes the count low. The server's own count, where it sends one, is kept in `summary.reportedTokens` so the
 * runner can flag a mismatch.
 */
import http from 'node:http';
import { SseParser, type SseEvent } from './sse.ts';

export const APIS = ['tgi', 'openai', 'llamacpp'] as const;
export type ApiKind = (typeof APIS)[number];

/** One token event: its text and when it arrived (performance.now(), ms). */
export interface TokenEvent {
  text: string;
  t: number;
}

/** What the server said at the end of a stream (filled in once the stream has ended). */
export interface StreamSummary {
  /** The server's own count of generated tokens, if it sent one. */
  reportedTokens: number | null;
  finishReason: string | null;
}

/** The token events of one streamed request; `summary` is set once iteration has reached the end of the stream. */
export interface TokenStream extends AsyncIterable<TokenEvent> {
  readonly summary: StreamSummary | undefined;
}

export interface Completion {
  text: string;
  /** The server's count of generated tokens; null if it sent none. */
  tokens: number | null;
  finishReason: string | null;
}

export interface Client {
  readonly api: ApiKind;
  /** Base URL without trailing slash. */
  readonly url: string;
  stream(prompt: string, maxTokens: number, signal?: AbortSignal): TokenStream;
  complete(prompt: string, maxTokens: number, signal?: AbortSignal): Promise<Completion>;
}

export interface ClientOptions {
  /** Hard limit for one request, response body included (default 60 s). */
  timeoutMs?: number;
  /** openai only: the model id to send; default: the first one GET /v1/models lists. */
  model?: string;
  /**
   * Send `ignore_eos: true` (all three APIs accept it), so every request generates exactly its max tokens and two
   * servers do equal work whatever their EOS behaviour.
   */
  ignoreEos?: boolean;
}

/** A non-2xx response. */
export class HttpStatusError extends Error {
  override readonly name = 'HttpStatusError';
  constructor(
    readonly status: number,
    readonly url: string,
    readonly body: string,
  ) {
    super(`HTTP ${status} from ${url}${body ? `: ${body}` : ''}`);
  }
}

const MAX_ERROR_BODY = 500;

/** A signal that aborts with the caller's signal or after `timeoutMs`, whichever comes first. */
function deadline(timeoutMs: number, signal?: AbortSignal): AbortSignal {
  const timeout = AbortSignal.timeout(timeoutMs);
  return signal ? AbortSignal.any([signal, timeout]) : timeout;
}

/**
 * Turns a failed request's error into a message that says what happened: timed out or cancelled (from `signal`'s
 * reason when it aborted: node:http reports an abort mid-response only as "aborted"), else the error itself.
 */
function explain(err: unknown, url: string, timeoutMs: number, signal?: AbortSignal): Error {
  const name = signal?.aborted ? (signal.reason as { name?: string } | undefined)?.name ?? 'AbortError' : (err as { name?: string } | null)?.name;
  if (name === 'TimeoutError') return new Error(`request to ${url} timed out after ${timeoutMs / 1000} s`, { cause: err });
  if (name === 'AbortError') return new Error(`request to ${url} was cancelled`, { cause: err });
  if (err instanceof Error) {
    // undici reports connection failures as "fetch failed" with the reason (ECONNREFUSED, ...) in `cause`.
    const cause = (err as { cause?: { message?: string; code?: string } }).cause;
    if (err.message === 'fetch failed' && cause) return new Error(`request to ${url} failed: ${cause.message ?? cause.code}`, { cause: err });
    return err;
  }
  return new Error(String(err));
}

async function post(url: string, body: unknown, signal: AbortSignal, accept: string): Promise<Response> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept },
    body: JSON.stringify(body),
    signal,
    redirect: 'error',
  });
  if (!res.ok) {
    const text = (await res.text().catch(() => '')).slice(0, MAX_ERROR_BODY).trim();
    throw new HttpStatusError(res.status, url, text);
  }
  return res;
}

// A new connection per stream: a kept-alive one can be closed by the server as the next request goes out (llama-server's
// HTTP library closes a connection after a few requests), which fails that request with "socket hang up"; a loopback
// connect costs far less than one token.
const streamAgent = new http.Agent({ keepAlive: false, maxSockets: 1024 });

/** POSTs JSON; resolves with the response once its headers arrived (2xx), else rejects with HttpStatusError. */
function postStream(url: string, body: unknown, signal: AbortSignal, accept: string): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    const payload = JSON.stringify(body);
    const req = http.request(url, {
      method: 'POST', agent: streamAgent, signal,
      headers: { 'content-type': 'application/json', accept, 'content-length': Buffer.byteLength(payload) },
    }, (res) => {
      const status = res.statusCode ?? 0;
      if (status >= 200 && status < 300) return resolve(res);
      // Not followed: a redirect is an error like any other non-2xx answer.
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        if (text.length < MAX_ERROR_BODY) text += chunk;
      });
      res.on('end', () => reject(new HttpStatusError(status, url, text.slice(0, MAX_ERROR_BODY).trim())));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(payload);
  });
}

/**
 * The SSE events of a streamed response, parsed as its chunks arrive ('data' events, no async iterator per chunk):
 * `next()` resolves with the next event, or null at the end of the body. The response keeps flowing when nobody
 * asks, so a body read to the end leaves its keep-alive connection free.
 */
class EventQueue {
  private readonly parser = new SseParser();
  private readonly queue: SseEvent[] = [];
  private at = 0;
  private ended = false;
  private failure: Error | null = null;
  private wake: (() => void) | null = null;

  constructor(res: http.IncomingMessage) {
    const settle = () => {
      const wake = this.wake;
      this.wake = null;
      wake?.();
    };
    res.on('data', (chunk: Buffer) => {
      try {
        this.queue.push(...this.parser.push(chunk, performance.now()));
      } catch (error) {
        this.failure = error as Error;
        res.destroy();
      }
      settle();
    });
    res.on('end', () => {
      this.queue.push(...this.parser.end());
      this.ended = true;
      settle();
    });
    // Also a reset connection or an abort mid-body ("aborted").
    res.on('error', (error) => {
      this.failure ??= error;
      settle();
    });
  }

  async next(): Promise<SseEvent | null> {
    for (;;) {
      if (this.at < this.queue.length) {
        const event = this.queue[this.at++];
        if (this.at === this.queue.length) {
          this.queue.length = 0;
          this.at = 0;
        }
        return event;
      }
      if (this.failure) throw this.failure;
      if (this.ended) return null;
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }
}

function parseJson(text: string, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error(`${what} is not JSON: ${text.slice(0, 200)}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error(`${what} is not a JSON object: ${text.slice(0, 200)}`);
  return value as Record<string, unknown>;
}

const obj = (v: unknown): Record<string, unknown> | null =>
  typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);

/** What one SSE data payload means for a given API. */
interface Decoded {
  /** The token text, when this event is a token. */
  token?: string;
  /** This event ends the stream. */
  done?: boolean;
  reportedTokens?: number | null;
  finishReason?: string | null;
}

interface ApiSpec {
  streamPath: string;
  completePath: string;
  body(prompt: string, maxTokens: number, stream: boolean, model: string | undefined, ignoreEos: boolean): unknown;
  decode(data: string): Decoded;
  completion(json: Record<string, unknown>): Completion;
}

const SPECS: Record<ApiKind, ApiSpec> = {
  tgi: {
    streamPath: '/generate_stream',
    completePath: '/generate',
    body: (prompt, maxTokens, stream, _model, ignoreEos) => ({
      inputs: prompt,
      parameters: { max_new_tokens: maxTokens, do_sample: false, ...(stream ? {} : { details: true }), ...(ignoreEos ? { ignore_eos: true } : {}) },
    }),
    decode(data) {
      const json = parseJson(data, 'a /generate_stream event');
      if (typeof json.error === 'string') throw new Error(`server error in stream: ${json.error}`);
      const token = obj(json.token);
      const details = obj(json.details);
      const final = json.generated_text !== null && json.generated_text !== undefined;
      return {
        token: token ? (str(token.text) ?? '') : undefined,
        done: final,
        reportedTokens: details ? num(details.generated_tokens) : null,
        finishReason: details ? str(details.finish_reason) : null,
      };
    },
    completion(json) {
      const details = obj(json.details);
      return {
        text: str(json.generated_text) ?? '',
        tokens: details ? num(details.generated_tokens) : null,
        finishReason: details ? str(details.finish_reason) : null,
      };
    },
  },
  openai: {
    streamPath: '/v1/completions',
    completePath: '/v1/completions',
    // include_usage: a last chunk with usage (and no choices), so the token-event count can be checked.
    body: (prompt, maxTokens, stream, model, ignoreEos) => ({
      model,
      prompt,
      max_tokens: maxTokens,
      temperature: 0,
      stream,
      ...(stream ? { stream_options: { include_usage: true } } : {}),
      ...(ignoreEos ? { ignore_eos: true } : {}),
    }),
    decode(data) {
      if (data.trim() === '[DONE]') return { done: true };
      const json = parseJson(data, 'a /v1/completions chunk');
      if (json.error !== undefined && json.error !== null) {
        const message = str(json.error) ?? str(obj(json.error)?.message) ?? JSON.stringify(json.error);
        throw new Error(`server error in stream: ${message}`);
      }
      const choice = obj(Array.isArray(json.choices) ? json.choices[0] : null);
      const usage = obj(json.usage);
      const text = choice ? (str(choice.text) ?? '') : '';
      const finishReason = choice ? str(choice.finish_reason) : null;
      // A chunk still generating is a token even if its text is empty; the finishing chunk only if it has text.
      const isToken = choice !== null && (finishReason === null || text !== '');
      return { token: isToken ? text : undefined, finishReason, reportedTokens: usage ? num(usage.completion_tokens) : null };
    },
    completion(json) {
      const choice = obj(Array.isArray(json.choices) ? json.choices[0] : null);
      const usage = obj(json.usage);
      return {
        text: choice ? (str(choice.text) ?? '') : '',
        tokens: usage ? num(usage.completion_tokens) : null,
        finishReason: choice ? str(choice.finish_reason) : null,
      };
    },
  },
  llamacpp: {
    streamPath: '/completion',
    completePath: '/completion',
    body: (prompt, maxTokens, stream, _model, ignoreEos) => ({
      prompt, n_predict: maxTokens, temperature: 0, stream, cache_prompt: false, ...(ignoreEos ? { ignore_eos: true } : {}),
    }),
    decode(data) {
      const json = parseJson(data, 'a /completion event');
      if (json.error !== undefined && json.error !== null) {
        const message = str(json.error) ?? str(obj(json.error)?.message) ?? JSON.stringify(json.error);
        throw new Error(`server error in stream: ${message}`);
      }
      const content = str(json.content) ?? '';
      const stop = json.stop === true;
      // Events before the last are tokens; the last (stop: true) usually has empty content and carries the totals.
      const isToken = !stop || content !== '';
      return {
        token: isToken ? content : undefined,
        done: stop,
        reportedTokens: stop ? num(json.tokens_predicted) : null,
        finishReason: stop ? (str(json.stop_type) ?? (json.stopped_eos === true ? 'eos' : json.stopped_limit === true ? 'limit' : null)) : null,
      };
    },
    completion(json) {
      return { text: str(json.content) ?? '', tokens: num(json.tokens_predicted), finishReason: str(json.stop_type) };
    },
  },
};

/** Fetches the first model id of an OpenAI-compatible server. */
export async function firstModelId(url: string, timeoutMs: number, signal?: AbortSignal): Promise<string> {
  const endpoint = `${url}/v1/models`;
  try {
    const res = await fetch(endpoint, { signal: deadline(timeoutMs, signal), redirect: 'error' });
    const text = await res.text();
    if (!res.ok) throw new HttpStatusError(res.status, endpoint, text.slice(0, MAX_ERROR_BODY).trim());
    const json = parseJson(text, `GET ${endpoint}`);
    const first = obj(Array.isArray(json.data) ? json.data[0] : null);
    const id = first ? str(first.id) : null;
    if (!id) throw new Error(`GET ${endpoint} lists no model (expected {"data": [{"id": ...}]})`);
    return id;
  } catch (err) {
    throw explain(err, endpoint, timeoutMs);
  }
}

/**
 * A client for `api` at base `url` (loopback checks are the caller's job). For openai the model id is fetched
 * once, here, unless `options.model` is given.
 */
export async function createClient(api: ApiKind, url: string, options: ClientOptions = {}): Promise<Client> {
  const base = url.replace(/\/+$/, '');
  const timeoutMs = options.timeoutMs ?? 60_000;
  const ignoreEos = options.ignoreEos ?? false;
  const spec = SPECS[api];
  const model = api === 'openai' ? (options.model ?? (await firstModelId(base, timeoutMs))) : undefined;

  const stream = (prompt: string, maxTokens: number, signal?: AbortSignal): TokenStream => {
    let summary: StreamSummary | undefined;
    const endpoint = base + spec.streamPath;
    // A server sending far more events than tokens asked for is broken; stop rather than read forever.
    const maxEvents = maxTokens * 4 + 64;
    async function* events(): AsyncGenerator<TokenEvent> {
      const sig = deadline(timeoutMs, signal);
      const result: StreamSummary = { reportedTokens: null, finishReason: null };
      try {
        const res = await postStream(endpoint, spec.body(prompt, maxTokens, true, model, ignoreEos), sig, 'text/event-stream');
        const events = new EventQueue(res);
        let count = 0;
        let done = false;
        try {
          while (!done) {
            const ev = await events.next();
            if (ev === null) break;
            if (++count > maxEvents) throw new Error(`${endpoint} sent more than ${maxEvents} events for ${maxTokens} tokens`);
            if (ev.event === 'error') throw new Error(`server error in stream: ${ev.data.slice(0, MAX_ERROR_BODY)}`);
            const d = spec.decode(ev.data);
            if (d.reportedTokens != null) result.reportedTokens = d.reportedTokens;
            if (d.finishReason != null) result.finishReason = d.finishReason;
            if (d.token !== undefined) yield { text: d.token, t: ev.t };
            done = d.done === true;
          }
          done = true;
        } finally {
          // Finished: the rest of the body (its end) drains by itself. Stopped early (the consumer broke off, an error):
          // drop the connection rather than leave it half-read.
          if (!done) res.destroy();
        }
        summary = result;
      } catch (err) {
        throw explain(err, endpoint, timeoutMs, sig);
      }
    }
    const iterable = events();
    return {
      [Symbol.asyncIterator]: () => iterable,
      get summary() {
        return summary;
      },
    };
  };

  const complete = async (prompt: string, maxTokens: number, signal?: AbortSignal): Promise<Completion> => {
    const endpoint = base + spec.completePath;
    try {
      const res = await post(endpoint, spec.body(prompt, maxTokens, false, model, ignoreEos), deadline(timeoutMs, signal), 'application/json');
      return spec.completion(parseJson(await res.text(), `the response of ${endpoint}`));
    } catch (err) {
      throw explain(err, endpoint, timeoutMs);
    }
  };

  return { api, url: base, stream, complete };
}
