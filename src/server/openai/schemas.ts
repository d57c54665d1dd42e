/**
 * Request validation for POST /v1/completions and POST /v1/chat/completions, following OpenAI's API reference
 * (the fields of openai-node's CompletionCreateParams and ChatCompletionCreateParams), plus vLLM's `ignore_eos`
 * and the TGI parameters that `@huggingface/inference` sends at the top level of /v1/completions.
 *
 * Every field those clients send is known. Fields of features this server does not have (penalties, logit bias,
 * tools, JSON mode, …) are accepted with their neutral values (0, {}, [], "none", {"type": "text"}) and refused
 * otherwise with a 422 that names the field and says it is not supported (code `unsupported_value`). Any other
 * problem is a 422 naming the field (OpenAI's `param`); an unknown field's message lists the endpoint's fields.
 */
import { z } from 'zod';
import type { Config } from '../../config.ts';
import { MAX_SEED } from '../schemas.ts';
import { OpenAiRequestError, type RequestErrorCode } from './errors.ts';

type Limits = Config['limits'];

/** OpenAI's limits: `logprobs` on completions is 0–5, `top_logprobs` on chat 0–20. */
export const MAX_COMPLETION_LOGPROBS = 5;
export const MAX_TOP_LOGPROBS = 20;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A feature this server does not have: the values that mean "not used", which are accepted and ignored. */
interface Unsupported {
  neutral: (value: unknown) => boolean;
  /** The accepted values, for the message. */
  accepts: string;
}

const nullOnly: Unsupported = { neutral: (v) => v == null, accepts: 'null' };
const zero: Unsupported = { neutral: (v) => v == null || v === 0, accepts: '0' };
const emptyObject: Unsupported = { neutral: (v) => v == null || (isObject(v) && Object.keys(v).length === 0), accepts: '{}' };
const emptyArray: Unsupported = { neutral: (v) => v == null || (Array.isArray(v) && v.length === 0), accepts: '[]' };
const isFalse: Unsupported = { neutral: (v) => v == null || v === false, accepts: 'false' };
// With no tools there is nothing to call: "auto" then means what "none" means.
const noToolChoice: Unsupported = { neutral: (v) => v == null || v === 'none' || v === 'auto', accepts: '"none" or "auto" (there are no tools)' };

const UNSUPPORTED_COMMON: Record<string, Unsupported> = {
  frequency_penalty: zero,
  presence_penalty: zero,
  logit_bias: emptyObject,
};

const UNSUPPORTED_CHAT: Record<string, Unsupported> = {
  ...UNSUPPORTED_COMMON,
  response_format: {
    neutral: (v) => v == null || (isObject(v) && v.type === 'text' && Object.keys(v).length === 1),
    accepts: '{"type": "text"}',
  },
  tools: emptyArray,
  functions: emptyArray,
  tool_choice: noToolChoice,
  function_call: noToolChoice,
  store: isFalse,
  audio: nullOnly,
  modalities: { neutral: (v) => v == null || (Array.isArray(v) && v.length === 1 && v[0] === 'text'), accepts: '["text"]' },
  reasoning_effort: { neutral: (v) => v == null || v === 'none', accepts: 'null or "none"' },
  verbosity: nullOnly,
  web_search_options: nullOnly,
};

const UNSUPPORTED_COMPLETION: Record<string, Unsupported> = {
  ...UNSUPPORTED_COMMON,
  suffix: { neutral: (v) => v == null || v === '', accepts: 'null or ""' },
  // TGI parameters (from @huggingface/inference) with no OpenAI-shaped answer here.
  watermark: isFalse,
  decoder_input_details: isFalse,
  adapter_id: nullOnly,
  grammar: nullOnly,
};

const UNSUPPORTED_MESSAGE: Record<string, Unsupported> = {
  tool_calls: emptyArray,
  function_call: nullOnly,
  audio: nullOnly,
  refusal: nullOnly,
};

const unsupported = () => z.unknown().optional(); // checked by checkUnsupported, before the schema

function common(limits: Limits, maxN: number) {
  const maxTokens = `must be an integer from 1 to ${limits.maxNewTokens} (this server's limit)`;
  const stopItem = `must be a non-empty string of at most ${limits.maxStopSequenceLength} characters`;
  const stop = z.string({ error: stopItem }).min(1, { error: stopItem }).max(limits.maxStopSequenceLength, { error: stopItem });
  const seed = `must be an integer from 0 to ${MAX_SEED}`;
  const nMessage = `must be an integer from 1 to ${maxN} (limits.maxBatchSequences)`;
  return {
    // Any value is served by the loaded model unless openai.strictModel is set (checked by the routes).
    model: z.string({ error: 'must be a string: the model id from GET /v1/models' }).nullish(),
    max_tokens: z.int({ error: maxTokens }).min(1, { error: maxTokens }).max(limits.maxNewTokens, { error: maxTokens }).nullish(),
    temperature: z.number({ error: 'must be a number of at least 0 (0 is greedy)' }).min(0, { error: 'must be a number of at least 0 (0 is greedy)' }).nullish(),
    top_p: z.number({ error: 'must be a number from 0 to 1' }).min(0, { error: 'must be a number from 0 to 1' }).max(1, { error: 'must be a number from 0 to 1' }).nullish(),
    n: z.int({ error: nMessage }).min(1, { error: nMessage }).max(maxN, { error: nMessage }).nullish(),
    stream: z.boolean({ error: 'must be true or false' }).nullish(),
    stream_options: z.strictObject({
      include_usage: z.boolean({ error: 'must be true or false' }).nullish(),
      include_obfuscation: z.boolean({ error: 'must be true or false' }).nullish(), // nothing to obfuscate on loopback
    }, { error: 'must be an object like {"include_usage": true}' }).nullish(),
    stop: z.union([stop, z.array(stop).max(limits.maxStopSequences)], {
      error: `must be a string or an array of at most ${limits.maxStopSequences} non-empty strings of at most ${limits.maxStopSequenceLength} characters`,
    }).nullish(),
    seed: z.int({ error: seed }).min(0, { error: seed }).max(MAX_SEED, { error: seed }).nullish(),
    user: z.string({ error: 'must be a string' }).nullish(),
    // vLLM: generate max_tokens tokens whatever the model says (benchmarks need equal token counts).
    ignore_eos: z.boolean({ error: 'must be true or false' }).nullish(),
    // TGI and vLLM sampling extras.
    top_k: z.int({ error: 'must be an integer of at least 1' }).min(1, { error: 'must be an integer of at least 1' }).nullish(),
    repetition_penalty: z.number({ error: 'must be a number greater than 0 (1 means no penalty)' }).gt(0, { error: 'must be a number greater than 0 (1 means no penalty)' }).nullish(),
    ...Object.fromEntries(Object.keys(UNSUPPORTED_COMMON).map((k) => [k, unsupported()])),
  };
}

const textPart = z.strictObject({ type: z.literal('text'), text: z.string({ error: 'must be a string' }) });

const message = z.strictObject({
  // Roles and content parts are checked by messageIssues (for messages that say what is not supported).
  role: z.string({ error: 'is required: "system", "developer", "user" or "assistant"' }),
  content: z.union([z.string(), z.array(z.unknown())], { error: 'must be a string or an array of {"type": "text", "text": ...} parts' }).nullish(),
  name: z.string({ error: 'must be a string' }).nullish(),
  tool_call_id: z.string({ error: 'must be a string' }).nullish(), // of "tool" messages, which messageIssues refuses
  ...Object.fromEntries(Object.keys(UNSUPPORTED_MESSAGE).map((k) => [k, unsupported()])),
}, { error: 'must be an object like {"role": "user", "content": "Hello"}' });

export function chatSchema(limits: Limits, maxN: number) {
  const maxTokens = `must be an integer from 1 to ${limits.maxNewTokens} (this server's limit)`;
  return z.strictObject({
    ...common(limits, maxN),
    messages: z.array(message, { error: 'must be an array of {role, content} messages' }).min(1, { error: 'must hold at least one message' }),
    max_completion_tokens: z.int({ error: maxTokens }).min(1, { error: maxTokens }).max(limits.maxNewTokens, { error: maxTokens }).nullish(),
    logprobs: z.boolean({ error: 'must be true or false' }).nullish(),
    top_logprobs: z.int({ error: `must be an integer from 0 to ${MAX_TOP_LOGPROBS}` }).min(0, { error: `must be an integer from 0 to ${MAX_TOP_LOGPROBS}` })
      .max(MAX_TOP_LOGPROBS, { error: `must be an integer from 0 to ${MAX_TOP_LOGPROBS}` }).nullish(),
    // Accepted and ignored: they change billing, storage or latency at OpenAI, never the output.
    metadata: z.record(z.string(), z.string(), { error: 'must be an object of string values' }).nullish(),
    service_tier: z.string({ error: 'must be a string' }).nullish(),
    parallel_tool_calls: z.boolean({ error: 'must be true or false' }).nullish(),
    prompt_cache_key: z.string({ error: 'must be a string' }).nullish(),
    prompt_cache_retention: z.string({ error: 'must be a string' }).nullish(),
    safety_identifier: z.string({ error: 'must be a string' }).nullish(),
    prediction: z.unknown().optional(), // a latency hint at OpenAI: the output is the same without it
    tool_prompt: z.string({ error: 'must be a string' }).nullish(), // TGI: the prompt for tools, of which there are none
    ...Object.fromEntries(Object.keys(UNSUPPORTED_CHAT).map((k) => [k, unsupported()])),
  }, { error: 'must be a JSON object like {"model": "...", "messages": [{"role": "user", "content": "Hello"}]}' });
}

export function completionSchema(limits: Limits, maxN: number) {
  const logprobs = `must be an integer from 0 to ${MAX_COMPLETION_LOGPROBS}`;
  return z.strictObject({
    ...common(limits, maxN),
    // Token-id prompts (arrays of integers) are refused by promptIssues with a clearer message.
    prompt: z.union([z.string(), z.array(z.unknown()).min(1)], { error: 'must be a string or a non-empty array of strings' }).nullish(),
    logprobs: z.int({ error: logprobs }).min(0, { error: logprobs }).max(MAX_COMPLETION_LOGPROBS, { error: logprobs }).nullish(),
    echo: z.boolean({ error: 'must be true or false' }).nullish(),
    best_of: z.int({ error: 'must be an integer equal to n (or 1)' }).nullish(),
    // TGI parameters @huggingface/inference sends here (its textGeneration flattens `parameters` into the body).
    do_sample: z.boolean({ error: 'must be true or false' }).nullish(),
    typical_p: z.number({ error: 'must be a number greater than 0 and at most 1' }).gt(0, { error: 'must be a number greater than 0 and at most 1' })
      .max(1, { error: 'must be a number greater than 0 and at most 1' }).nullish(),
    truncate: z.int({ error: 'must be an integer of at least 1' }).min(1, { error: 'must be an integer of at least 1' }).nullish(),
    return_full_text: z.boolean({ error: 'must be true or false' }).nullish(),
    details: z.boolean({ error: 'must be true or false' }).nullish(),
    top_n_tokens: z.int({ error: logprobs }).min(0, { error: logprobs }).max(MAX_COMPLETION_LOGPROBS, { error: logprobs }).nullish(),
    ...Object.fromEntries(Object.keys(UNSUPPORTED_COMPLETION).map((k) => [k, unsupported()])),
  }, { error: 'must be a JSON object like {"model": "...", "prompt": "Once upon a time"}' });
}

export type ChatBody = z.infer<ReturnType<typeof chatSchema>>;
export type CompletionBody = z.infer<ReturnType<typeof completionSchema>>;

/** A chat message as the chat template gets it. */
export interface TemplateMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

interface Issue {
  path: ReadonlyArray<PropertyKey>;
  message: string;
  code: RequestErrorCode;
}

/** `messages[0].content[1]`: the path as OpenAI's `param` names it. */
export function paramOf(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const key of path) out += typeof key === 'number' ? `[${key}]` : out === '' ? String(key) : `.${String(key)}`;
  return out;
}

function describe(value: unknown): string {
  if (Array.isArray(value)) return `an array of ${value.length}`;
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 40 ? `${text.slice(0, 37)}...` : text;
}

function valueAt(input: unknown, path: ReadonlyArray<PropertyKey>): unknown {
  let cur = input;
  for (const key of path) {
    if (typeof cur !== 'object' || cur === null) return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[key];
  }
  return cur;
}

function checkUnsupported(body: Record<string, unknown>, table: Record<string, Unsupported>, at: PropertyKey[] = []): Issue[] {
  return Object.entries(table)
    .filter(([field, u]) => field in body && !u.neutral(body[field]))
    .map(([field, u]) => ({
      path: [...at, field],
      message: `is not supported by this server (only ${u.accepts} is accepted)`,
      code: 'unsupported_value' as const,
    }));
}

const ROLES = ['system', 'developer', 'user', 'assistant'];

/**
 * Roles and content: text parts only; `developer` (OpenAI's newer name for system instructions) is a system message
 * for the template; assistant messages may have no content (null).
 */
function messageIssues(messages: unknown[]): Issue[] {
  const issues: Issue[] = [];
  messages.forEach((m, i) => {
    if (!isObject(m)) return;
    issues.push(...checkUnsupported(m, UNSUPPORTED_MESSAGE, ['messages', i]));
    if (m.role === 'tool' || m.role === 'function') {
      issues.push({ path: ['messages', i, 'role'], message: `"${m.role}" messages are not supported (this server has no tool calling)`, code: 'unsupported_value' });
    } else if (typeof m.role === 'string' && !ROLES.includes(m.role)) {
      issues.push({ path: ['messages', i, 'role'], message: `must be "system", "developer", "user" or "assistant" (got ${describe(m.role)})`, code: 'invalid_value' });
    }
    if (m.content == null && m.role !== 'assistant' && typeof m.role === 'string') {
      issues.push({ path: ['messages', i, 'content'], message: 'is required: a string or an array of {"type": "text", "text": ...} parts', code: 'invalid_value' });
    }
    if (!Array.isArray(m.content)) return;
    m.content.forEach((part, j) => {
      const path = ['messages', i, 'content', j];
      if (isObject(part) && typeof part.type === 'string' && part.type !== 'text') {
        issues.push({ path, message: `"${part.type}" content parts are not supported; send text only, as {"type": "text", "text": ...} parts`, code: 'unsupported_value' });
      } else if (!textPart.safeParse(part).success) {
        issues.push({ path, message: `must be a text part like {"type": "text", "text": "Hello"} (got ${describe(part)})`, code: 'invalid_value' });
      }
    });
  });
  return issues;
}

/** Prompts are text: a string or an array of strings (one choice set per prompt, as OpenAI's batch prompts). */
function promptIssues(prompt: unknown): Issue[] {
  if (!Array.isArray(prompt)) return [];
  if (prompt.every((p) => typeof p === 'number' || Array.isArray(p))) {
    return [{ path: ['prompt'], message: 'token-id prompts are not supported; send the prompt as text', code: 'unsupported_value' }];
  }
  return prompt.flatMap((p, i) => (typeof p === 'string' ? [] : [{ path: ['prompt', i], message: `must be a string (got ${describe(p)})`, code: 'invalid_value' as const }]));
}

function zodIssues(issues: readonly z.core.$ZodIssue[], input: unknown, knownKeys: (path: ReadonlyArray<PropertyKey>) => string[], endpoint: string): Issue[] {
  return issues.flatMap((issue): Issue[] => {
    if (issue.code === 'unrecognized_keys') {
      const where = paramOf(issue.path);
      const fields = knownKeys(issue.path).join(', ');
      return issue.keys.map((key) => ({
        path: [...issue.path, key],
        message: `unknown field; ${where ? `${where} accepts` : `${endpoint} accepts`}: ${fields}`,
        code: 'unknown_parameter' as const,
      }));
    }
    const value = valueAt(input, issue.path);
    return [{ path: issue.path, message: `${issue.message}${value === undefined ? '' : ` (got ${describe(value)})`}`, code: 'invalid_value' }];
  });
}

function fail(issues: Issue[]): never {
  const lines = issues.map((i) => `${paramOf(i.path) || 'request body'}: ${i.message}`);
  throw new OpenAiRequestError(lines.join('; '), paramOf(issues[0].path) || null, issues[0].code);
}

function requireObject(input: unknown, example: string): Record<string, unknown> {
  if (!isObject(input)) throw new OpenAiRequestError(`request body must be a JSON object like ${example}`, null, 'invalid_value');
  return input;
}

const keysOf = (schema: { shape: object }) => Object.keys(schema.shape);

/**
 * Validates a chat completions body.
 * @param maxN the largest `n` (limits.maxBatchSequences: the n generations run as one batch).
 * @throws OpenAiRequestError (422) naming the first field at fault, with every problem in the message.
 */
export function parseChatBody(input: unknown, limits: Limits, maxN: number): ChatBody {
  const body = requireObject(input, '{"model": "...", "messages": [{"role": "user", "content": "Hello"}]}');
  const schema = chatSchema(limits, maxN);
  const issues = checkUnsupported(body, UNSUPPORTED_CHAT);
  if (Array.isArray(body.messages)) issues.push(...messageIssues(body.messages));
  const result = schema.safeParse(body);
  const known = (path: ReadonlyArray<PropertyKey>) =>
    path.length === 0 ? keysOf(schema) : path[0] === 'stream_options' ? ['include_usage', 'include_obfuscation'] : keysOf(message);
  if (!result.success) issues.push(...zodIssues(result.error.issues, body, known, 'POST /v1/chat/completions'));
  if (result.success) {
    const b = result.data;
    if (b.max_tokens != null && b.max_completion_tokens != null && b.max_tokens !== b.max_completion_tokens) {
      issues.push({
        path: ['max_completion_tokens'],
        message: `${b.max_completion_tokens} differs from max_tokens ${b.max_tokens}; send one of them (max_tokens is the older name)`,
        code: 'invalid_value',
      });
    }
    if (b.top_logprobs != null && b.top_logprobs > 0 && b.logprobs !== true) {
      issues.push({ path: ['top_logprobs'], message: 'needs "logprobs": true', code: 'invalid_value' });
    }
  }
  if (issues.length > 0) fail(issues);
  return result.data!;
}

/** Validates a completions body; see parseChatBody. */
export function parseCompletionBody(input: unknown, limits: Limits, maxN: number): CompletionBody {
  const body = requireObject(input, '{"model": "...", "prompt": "Once upon a time"}');
  const schema = completionSchema(limits, maxN);
  const issues = checkUnsupported(body, UNSUPPORTED_COMPLETION);
  const result = schema.safeParse(body);
  const known = (path: ReadonlyArray<PropertyKey>) => (path.length === 0 ? keysOf(schema) : ['include_usage', 'include_obfuscation']);
  if (!result.success) issues.push(...zodIssues(result.error.issues, body, known, 'POST /v1/completions'));
  issues.push(...promptIssues(body.prompt));
  if (result.success) {
    const b = result.data;
    if (b.best_of != null && b.best_of !== 1 && b.best_of !== (b.n ?? 1)) {
      issues.push({ path: ['best_of'], message: 'is not supported by this server (only 1 or the value of n is accepted)', code: 'unsupported_value' });
    }
    if ((b.echo || b.return_full_text) && (b.logprobs != null || b.top_n_tokens != null)) {
      issues.push({ path: [b.echo ? 'echo' : 'return_full_text'], message: 'together with logprobs is not supported by this server', code: 'unsupported_value' });
    }
  }
  if (issues.length > 0) fail(issues);
  return result.data!;
}

/** OpenAI's `stop`: a string or a list. */
export function stopList(stop: string | string[] | null | undefined): string[] {
  return stop == null ? [] : typeof stop === 'string' ? [stop] : stop;
}

/** Messages for the chat template: text parts joined as they are, `developer` as `system`; names are not rendered. */
export function templateMessages(messages: ChatBody['messages']): TemplateMessage[] {
  return messages.map((m) => ({
    role: m.role === 'developer' ? 'system' : (m.role as TemplateMessage['role']),
    content: typeof m.content === 'string' ? m.content : (m.content ?? []).map((p) => (p as { text: string }).text).join(''),
  }));
}
