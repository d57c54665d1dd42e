/** Wraps a GenerationService so every request gets its span and GenAI server metrics (time to first token, etc.). */
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
      const { operation, stream } = options.label ?? { operation: 'text_completion', stream: false };
      const sampling = request.sampling;
      const span = telemetry.startRequest({
        operation, stream, model: modelId, maxTokens: request.maxNewTokens,
        ...(sampling.doSample ? { temperature: sampling.temperature, topP: sampling.topP ?? undefined, topK: sampling.topK ?? undefined, seed: sampling.seed } : {}),
      });
      let first = true;
      try {
        const result = await service.generate(request, {
          ...options,
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
