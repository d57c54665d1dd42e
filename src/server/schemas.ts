/**
 * Request validation for the Text Generation Inference (TGI) shape, and its mapping to the engine's request.
 * Every message says which field is wrong, what is allowed and (where useful) what was sent.
 */
import { z } from 'zod';
import type { Config } from '../config.ts';
import type { GenerateRequest } from '../engine/types.ts';
import { cacheControlOptsOut } from '../engine/response-cache.ts';

export const MAX_SEED = 2 ** 32 - 1;

type Limits = Pick<
  Config['limits'],
  'maxNewTokens' | 'defaultMaxNewTokens' | 'maxStopSequences' | 'maxStopSequenceLength'
>;

/** One message for every way a field can be wrong (type, range), so the client always learns the full rule. */
const msg = (text: string) => ({ error: text });

/** `POST /generate` body schema for the given limits. Optional parameters also accept null (= not set), as TGI does. */
export function createGenerateSchema(limits: Limits) {
  const maxNew = `must be an integer from 1 to ${limits.maxNewTokens} (this server's limit)`;
  const stopItem = `must be a non-empty string of at most ${limits.maxStopSequenceLength} characters`;
  const seed = `must be an integer from 0 to ${MAX_SEED}`;

  const parameters = z.strictObject(
    {
      max_new_tokens: z.int(msg(maxNew)).min(1, msg(maxNew)).max(limits.maxNewTokens, msg(maxNew)).nullish(),
      do_sample: z.boolean(msg('must be true or false')).nullish(),
      temperature: z.number(msg('must be a number greater than 0')).gt(0, msg('must be a number greater than 0')).nullish(),
      top_k: z.int(msg('must be an integer greater than 0')).min(1, msg('must be an integer greater than 0')).nullish(),
      top_p: z
        .number(msg('must be a number greater than 0 and at most 1'))
        .gt(0, msg('must be a number greater than 0 and at most 1'))
        .lte(1, msg('must be a number greater than 0 and at most 1'))
        .nullish(),
      repetition_penalty: z
        .number(msg('must be a number greater than 0 (1 means no penalty)'))
        .gt(0, msg('must be a number greater than 0 (1 means no penalty)'))
        .nullish(),
      seed: z.int(msg(seed)).min(0, msg(seed)).max(MAX_SEED, msg(seed)).nullish(),
      stop: z
        .array(
          z.string(msg(stopItem)).min(1, msg(stopItem)).max(limits.maxStopSequenceLength, msg(stopItem)),
          msg('must be an array of strings'),
        )
        .max(limits.maxStopSequences, msg(`may hold at most ${limits.maxStopSequences} stop sequences`))
        .nullish(),
      details: z.boolean(msg('must be true or false')).nullish(),
    },
    msg('must be an object, e.g. {"max_new_tokens": 20}'),
  );

  return z.strictObject(
    {
      inputs: z
        .string(msg('is required and must be a string (the prompt text)'))
        .min(1, msg('must not be empty; send the prompt text to continue')),
      parameters: parameters.nullish(),
      // As in the Hugging Face Inference API: {"options": {"use_cache": false}} bypasses the response cache.
      options: z
        .strictObject(
          { use_cache: z.boolean(msg('must be true or false (false bypasses the response cache)')).nullish() },
          msg('must be an object, e.g. {"use_cache": false}'),
        )
        .nullish(),
    },
    msg('must be a JSON object like {"inputs": "Once upon a time", "parameters": {"max_new_tokens": 20}}'),
  );
}

export type GenerateSchema = ReturnType<typeof createGenerateSchema>;
export type GenerateBody = z.infer<GenerateSchema>;

const KNOWN_KEYS: Record<string, readonly string[]> = {
  '': ['inputs', 'parameters', 'options'],
  options: ['use_cache'],
  parameters: [
    'max_new_tokens',
    'do_sample',
    'temperature',
    'top_k',
    'top_p',
    'repetition_penalty',
    'seed',
    'stop',
    'details',
  ],
};

function pathString(path: readonly PropertyKey[]): string {
  let out = '';
  for (const key of path) {
    out += typeof key === 'number' ? `[${key}]` : out === '' ? String(key) : `.${String(key)}`;
  }
  return out;
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let cur = input;
  for (const key of path) {
    if (typeof cur !== 'object' || cur === null) return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[key];
  }
  return cur;
}

function describe(value: unknown): string {
  if (Array.isArray(value)) return `an array of ${value.length}`;
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 40 ? `${text.slice(0, 37)}...` : text;
}

/** One readable line per zod issue: `<field path>: <rule> (got <value>)`. */
export function formatIssues(issues: readonly z.core.$ZodIssue[], input: unknown): string {
  const lines = issues.map((issue) => {
    if (issue.code === 'unrecognized_keys') {
      const where = pathString(issue.path);
      const known = KNOWN_KEYS[where] ?? [];
      const names = issue.keys.map((k) => `"${where ? `${where}.` : ''}${k}"`).join(', ');
      return `unknown field${issue.keys.length > 1 ? 's' : ''} ${names}; allowed ${
        where ? `in ${where}` : 'at the top level'
      }: ${known.join(', ')}`;
    }
    const field = pathString(issue.path) || 'request body';
    const value = valueAt(input, issue.path);
    const got = value === undefined ? '' : ` (got ${describe(value)})`;
    return `${field}: ${issue.message}${got}`;
  });
  return lines.join('; ');
}

export type ParseResult = { ok: true; body: GenerateBody } | { ok: false; message: string };

export function parseGenerateBody(schema: GenerateSchema, input: unknown): ParseResult {
  const result = schema.safeParse(input);
  return result.success
    ? { ok: true, body: result.data }
    : { ok: false, message: formatIssues(result.error.issues, input) };
}

/**
 * Whether a request may use the response cache: not when its Cache-Control header says `no-cache` or `no-store`
 * (any endpoint), nor when a TGI body sends `options.use_cache: false`.
 */
export function responseCacheAllowed(cacheControl: string | undefined, body?: GenerateBody): boolean {
  return !cacheControlOptsOut(cacheControl) && body?.options?.use_cache !== false;
}

/** TGI body (snake_case) to the engine request (camelCase), filling in defaults. */
export function toGenerateRequest(body: GenerateBody, limits: Pick<Limits, 'defaultMaxNewTokens'>): GenerateRequest {
  const p = body.parameters ?? {};
  return {
    inputs: body.inputs,
    maxNewTokens: p.max_new_tokens ?? limits.defaultMaxNewTokens,
    sampling: {
      doSample: p.do_sample ?? false,
      temperature: p.temperature ?? 1,
      topK: p.top_k ?? null,
      topP: p.top_p ?? null,
      repetitionPenalty: p.repetition_penalty ?? null,
      seed: p.seed ?? null,
    },
    stop: p.stop ?? [],
  };
}
