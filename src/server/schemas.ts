/**
 * Request validation for the Text Generation Inference (TGI) shape, and its mapping to the engine's request.
 * Every message says which field is wrong, what is allowed and (where useful) what was sent.
 *
 * Parameter rules follow TGI's router (router/src/validation.rs): temperature > 0, top_p and typical_p in (0, 1),
 * top_k > 0, repetition_penalty > 0, top_n_tokens ≤ the server's limit, truncate ≥ 1; numbers must be finite (a
 * JSON 1e999 parses as Infinity). Features this server does not have (best_of > 1, watermark, LoRA adapters,
 * grammars, frequency_penalty ≠ 0) are accepted only at their neutral value and refused by name otherwise.
 */
import { z } from 'zod';
import type { Config } from '../config.ts';
import type { GenerateRequest } from '../engine/types.ts';
import { cacheControlOptsOut } from '../engine/response-cache.ts';

export const MAX_SEED = 2 ** 32 - 1;

type Limits = Pick<
  Config['limits'],
  'maxNewTokens' | 'defaultMaxNewTokens' | 'maxStopSequences' | 'maxStopSequenceLength' | 'maxTopNTokens' | 'maxPromptTokens'
>;

/** One message for every way a field can be wrong (type, range), so the client always learns the full rule. */
const msg = (text: string) => ({ error: text });

/** A finite number strictly between `min` and `max` (either bound may be left open with null). */
function numberIn(rule: string, gt: number | null, lt: number | null) {
  let schema = z.number(msg(rule));
  if (gt !== null) schema = schema.gt(gt, msg(rule));
  if (lt !== null) schema = schema.lt(lt, msg(rule));
  return schema;
}

/** A field accepted only at its neutral value: anything else is refused as not supported, with `why`. */
const onlyNull = (why: string) => z.null(msg(why)).optional();

/** `POST /generate` and `POST /generate_stream` body schema for the given limits. Optional parameters also accept null (= not set), as TGI does. */
export function createGenerateSchema(limits: Limits) {
  const maxNew = `must be an integer from 1 to ${limits.maxNewTokens} (this server's limit)`;
  const stopItem = `must be a non-empty string of at most ${limits.maxStopSequenceLength} characters`;
  const seed = `must be an integer from 0 to ${MAX_SEED}`;
  const topN = `must be an integer from 0 to ${limits.maxTopNTokens} (this server's limit)`;
  const maxTruncate = limits.maxPromptTokens ?? Number.MAX_SAFE_INTEGER;
  const truncate = limits.maxPromptTokens === null
    ? 'must be an integer greater than 0 (the number of prompt tokens to keep, from the end)'
    : `must be an integer from 1 to ${limits.maxPromptTokens} (the number of prompt tokens to keep, from the end)`;
  const bestOf = 'must be 1: best_of > 1 is not supported by this server (it generates one sequence per request)';

  const parameters = z.strictObject(
    {
      max_new_tokens: z.int(msg(maxNew)).min(1, msg(maxNew)).max(limits.maxNewTokens, msg(maxNew)).nullish(),
      do_sample: z.boolean(msg('must be true or false')).nullish(),
      temperature: numberIn('must be a finite number greater than 0', 0, null).nullish(),
      top_k: z.int(msg('must be an integer greater than 0')).min(1, msg('must be an integer greater than 0')).nullish(),
      top_p: numberIn('must be a number greater than 0 and less than 1', 0, 1).nullish(),
      typical_p: numberIn('must be a number greater than 0 and less than 1', 0, 1).nullish(),
      repetition_penalty: numberIn('must be a finite number greater than 0 (1 means no penalty)', 0, null).nullish(),
      frequency_penalty: z
        .number(msg('must be 0: frequency_penalty is not supported (use repetition_penalty)'))
        .refine((v) => v === 0, msg('must be 0: frequency_penalty is not supported (use repetition_penalty)'))
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
      decoder_input_details: z.boolean(msg('must be true or false (true reports the prompt tokens\' log probabilities)')).nullish(),
      top_n_tokens: z.int(msg(topN)).min(0, msg(topN)).max(limits.maxTopNTokens, msg(topN)).nullish(),
      truncate: z.int(msg(truncate)).min(1, msg(truncate)).max(maxTruncate, msg(truncate)).nullish(),
      return_full_text: z.boolean(msg('must be true or false (true puts the prompt before the generated text)')).nullish(),
      // vLLM's name; benchmarks use it to get equal token counts.
      ignore_eos: z.boolean(msg('must be true or false (true keeps generating after EOS)')).nullish(),
      best_of: z.int(msg(bestOf)).refine((v) => v === 1, msg(bestOf)).nullish(),
      watermark: z
        .boolean(msg('must be true or false'))
        .refine((v) => !v, msg('must be false: watermarking is not supported by this server'))
        .nullish(),
      adapter_id: onlyNull('must be null: LoRA adapters are not supported by this server'),
      grammar: onlyNull('must be null: guided generation (grammar) is not supported by this server'),
    },
    msg('must be an object, e.g. {"max_new_tokens": 20}'),
  );

  return z.strictObject(
    {
      inputs: z
        .string(msg('is required and must be a string (the prompt text)'))
        .min(1, msg('must not be empty; send the prompt text to continue')),
      parameters: parameters.nullish(),
      // TGI's compat route (POST /) chooses with it; the other routes accept the value that matches them.
      stream: z.boolean(msg('must be true or false (true streams server-sent events)')).nullish(),
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
export type GenerateParameters = NonNullable<GenerateBody['parameters']>;

/** The TGI schema's field names (they do not depend on the limits). */
const TGI_SCHEMA = createGenerateSchema({
  maxNewTokens: 1, defaultMaxNewTokens: 1, maxStopSequences: 0, maxStopSequenceLength: 1, maxTopNTokens: 0, maxPromptTokens: null,
});

/** The field names an object schema allows at `path` (optional, nullable, default and array wrappers are looked through). */
function allowedKeys(schema: z.ZodType, path: readonly PropertyKey[]): string[] {
  let cur: unknown = schema;
  for (let i = 0; ; i++) {
    while (cur instanceof z.ZodOptional || cur instanceof z.ZodNullable || cur instanceof z.ZodDefault) cur = cur.unwrap();
    if (i === path.length) break;
    if (cur instanceof z.ZodObject) cur = (cur.shape as Record<PropertyKey, unknown>)[path[i]];
    else if (cur instanceof z.ZodArray) cur = cur.element;
    else return [];
  }
  return cur instanceof z.ZodObject ? Object.keys(cur.shape) : [];
}

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
  // JSON has no Infinity, but 1e999 parses to it; JSON.stringify would show it as null.
  if (typeof value === 'number' && !Number.isFinite(value)) return String(value);
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 40 ? `${text.slice(0, 37)}...` : text;
}

/**
 * One readable line per zod issue: `<field path>: <rule> (got <value>)`. Unknown fields are listed with the fields
 * `schema` allows at that place (default: the TGI request schema).
 */
export function formatIssues(issues: readonly z.core.$ZodIssue[], input: unknown, schema: z.ZodType = TGI_SCHEMA): string {
  const lines = issues.map((issue) => {
    if (issue.code === 'unrecognized_keys') {
      const where = pathString(issue.path);
      const known = allowedKeys(schema, issue.path);
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
    : { ok: false, message: formatIssues(result.error.issues, input, schema) };
}

/**
 * Whether a request may use the response cache: not when its Cache-Control header says `no-cache` or `no-store`
 * (any endpoint), nor when a TGI body sends `options.use_cache: false`.
 */
export function responseCacheAllowed(cacheControl: string | undefined, body?: GenerateBody): boolean {
  return !cacheControlOptsOut(cacheControl) && body?.options?.use_cache !== false;
}

/**
 * TGI's sampling decision (server/text_generation_server/utils/tokens.py, NextTokenChooser): a request samples
 * when `do_sample` is true or any logits warper is set — temperature ≠ 1, top_k > 0, top_p < 1 or typical_p < 1.
 * (Validation already keeps top_k ≥ 1 and top_p, typical_p < 1.)
 */
export function tgiSamples(p: Pick<GenerateParameters, 'do_sample' | 'temperature' | 'top_k' | 'top_p' | 'typical_p'>): boolean {
  return p.do_sample === true || (p.temperature != null && p.temperature !== 1) || p.top_k != null || p.top_p != null || p.typical_p != null;
}

/** TGI body (snake_case) to the engine request (camelCase), filling in defaults. */
export function toGenerateRequest(body: GenerateBody, limits: Pick<Limits, 'defaultMaxNewTokens'>): GenerateRequest {
  const p = body.parameters ?? {};
  const request: GenerateRequest = {
    inputs: body.inputs,
    maxNewTokens: p.max_new_tokens ?? limits.defaultMaxNewTokens,
    sampling: {
      doSample: tgiSamples(p),
      temperature: p.temperature ?? 1,
      topK: p.top_k ?? null,
      topP: p.top_p ?? null,
      typicalP: p.typical_p ?? null,
      repetitionPenalty: p.repetition_penalty ?? null,
      seed: p.seed ?? null,
    },
    stop: p.stop ?? [],
  };
  // Only what is asked for, so that plain requests stay plain (and share response-cache entries).
  if (p.top_n_tokens) request.topTokens = p.top_n_tokens;
  if (p.decoder_input_details) request.promptLogprobs = true;
  if (p.truncate != null) request.truncate = p.truncate;
  if (p.ignore_eos) request.ignoreEos = true;
  return request;
}
