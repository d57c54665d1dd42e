/**
 * Runs a plan's choices on the engine, all at once (they batch), either to completion or as one server-sent-event
 * stream whose chunks of different choices interleave as their tokens arrive (OpenAI's `n` > 1 streaming). Both
 * build each choice's text with ChoiceText, so a streamed answer and a non-streamed one are the same text.
 */
import type { Context } from 'hono';
import { sseResponse } from '../sse.ts';
import type { GenerateResult, GenerationService } from '../../engine/types.ts';
import { forwardAbort } from '../token-stream.ts';
import { traceHeaders } from '../trace-headers.ts';
import { choiceOf, ChoiceText, type ChoiceDelta } from './choice-text.ts';
import { openAiStreamError } from './errors.ts';
import type { ChoicePlan, Plan } from './request.ts';

export interface RunOptions {
  operation: 'text_completion' | 'chat';
  /** false: bypass the response cache (Cache-Control: no-cache), so that the model really runs. */
  cache: boolean;
  /** The response's `id` (`cmpl-…`, `chatcmpl-…`), for telemetry's gen_ai.response.id. */
  responseId: string;
}

export interface FinishedChoice {
  plan: ChoicePlan;
  result: GenerateResult;
  /** The output text (cut at stop sequences) and the tokens it is made of. */
  output: ChoiceDelta;
}

/** OpenAI's finish_reason: "length", or "stop" for EOS and stop sequences alike. */
export const finishReasonOf = (result: GenerateResult): 'stop' | 'length' => (result.finishReason === 'length' ? 'length' : 'stop');

/** Runs every choice to completion; the first failure cancels the others and is thrown. */
export async function runChoices(c: Context, service: GenerationService, plan: Plan, options: RunOptions): Promise<FinishedChoice[]> {
  const cancel = new AbortController();
  const unlink = forwardAbort(c.req.raw.signal, cancel);
  try {
    return await Promise.all(plan.choices.map(async (choice) => {
      try {
        const result = await service.generate(choice.request, {
          signal: cancel.signal, label: { operation: options.operation, stream: false, responseId: options.responseId }, cache: options.cache,
          trace: traceHeaders(c),
        });
        return { plan: choice, result, output: choiceOf(result.tokens, plan.stops) };
      } catch (err) {
        cancel.abort();
        throw err;
      }
    }));
  } finally {
    unlink();
  }
}

export interface StreamEvents {
  /** Before any token, per choice (chat's role chunk, an echoed prompt). */
  start(choice: ChoicePlan): unknown[];
  /** Text (and the tokens it completed) of one choice. */
  delta(choice: ChoicePlan, delta: ChoiceDelta): unknown[];
  /** The choice's last chunk, with its finish_reason. */
  finish(choice: ChoicePlan, result: GenerateResult): unknown[];
  /** After every choice finished (usage), before [DONE]. */
  end(results: FinishedChoice[]): unknown[];
}

/**
 * Streams every choice. Refusals (validation, a full queue) come before the stream begins, with their status code;
 * a failure after that is sent as an OpenAI error event (`{"error": {...}}`, which the openai SDK throws as an
 * APIError) and ends the stream without [DONE]. The client going away cancels every choice.
 */
export function streamChoices(c: Context, service: GenerationService, plan: Plan, options: RunOptions, events: StreamEvents): Response {
  for (const choice of plan.choices) service.admit(choice.request);
  const clientSignal = c.req.raw.signal;
  return sseResponse(c, async (stream) => {
    const clientGone = new AbortController();
    const unlinkStream = forwardAbort(stream.signal, clientGone);
    const unlinkClient = forwardAbort(clientSignal, clientGone);
    // Stops every choice: the client went away, or one choice failed.
    const cancel = new AbortController();
    const unlinkCancel = forwardAbort(clientGone.signal, cancel);
    const send = (items: unknown[]) => {
      for (const e of items) stream.send(typeof e === 'string' ? e : JSON.stringify(e));
    };
    for (const choice of plan.choices) send(events.start(choice));
    try {
      const finished = await Promise.all(plan.choices.map(async (choice) => {
        const text = new ChoiceText(plan.stops);
        const output: ChoiceDelta = { text: '', tokens: [] };
        const emit = (delta: ChoiceDelta) => {
          output.text += delta.text;
          output.tokens.push(...delta.tokens);
          if (delta.text !== '' || (plan.logprobs !== null && delta.tokens.length > 0)) send(events.delta(choice, delta));
        };
        try {
          const result = await service.generate(choice.request, {
            signal: cancel.signal, label: { operation: options.operation, stream: true, responseId: options.responseId }, cache: options.cache,
            trace: traceHeaders(c),
            onToken: (token, done) => {
              emit(text.push(token));
              if (done) emit(text.finish());
            },
          });
          send(events.finish(choice, result));
          return { plan: choice, result, output };
        } catch (err) {
          cancel.abort();
          throw err;
        }
      }));
      send([...events.end(finished), '[DONE]']);
    } catch (err) {
      if (!clientGone.signal.aborted) send([openAiStreamError(err)]); // else nobody reads it
    } finally {
      unlinkCancel();
      unlinkClient();
      unlinkStream();
    }
  });
}
