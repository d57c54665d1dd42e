/**
 * Wraps a GenerationService so every request gets its span and GenAI server metrics (time to first token, etc.).
 * The span continues the caller's trace (`options.trace`, from its traceparent header) and carries
 * `gen_ai.response.id` (`label.responseId`; TGI responses have no id, so those get a fresh UUID); the engine then
 * gets the request span's own context as `trace`, so that the steps running the request link to it.
 */
import { randomUUID } from 'node:crypto';
import type { GenerationService } from '../engine/types.ts';
import type { Telemetry } from '../telemetry/index.ts';

export function instrument(service: GenerationService, telemetry: Telemetry, modelId: string): GenerationService {
  return {
    admit: (request) => service.admit(request),
    renderChat: (messages) => service.renderChat(messages),
    ...(service.countPromptTokens ? { countPromptTokens: (request) => service.countPromptTokens!(request) } : {}),
    info: () => service.info(),
    ...(service.health ? { health: () => service.health!() } : {}),
    close: () => service.close(),
    async generate(request, options = {}) {
      const { operation, stream, responseId } = options.label ?? { operation: 'text_completion', stream: false };
      const sampling = request.sampling;
      const span = telemetry.startRequest({
        operation, stream, model: modelId, maxTokens: request.maxNewTokens, responseId: responseId ?? randomUUID(), parent: options.trace,
        ...(sampling.doSample ? { temperature: sampling.temperature, topP: sampling.topP ?? undefined, topK: sampling.topK ?? undefined, seed: sampling.seed } : {}),
      });
      let first = true;
      try {
        const result = await service.generate(request, {
          ...options,
          trace: span.trace ?? options.trace,
          onToken: (token, finished) => {
            if (first) span.firstToken();
            first = false;
            span.outputToken();
            options.onToken?.(token, finished);
          },
        });
        span.end({ inputTokens: result.promptTokens, outputTokens: result.generatedTokens, finishReason: result.finishReason });
        return result;
      } catch (error) {
        span.end({ error: error as Error });
        throw error;
      }
    },
  };
}
