/** Telemetry on the real engine: the per-expert token metrics equal the router's choices for a known prompt. */
import { describe, expect, it } from 'vitest';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import { Engine } from '../src/engine/engine.ts';
import { createTelemetry } from '../src/telemetry/index.ts';
import { instrument } from '../src/server/instrumented-service.ts';
import { writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig, request } from './helpers.ts';

const dir = writeTinyPackage();

/** Reads `moe_expert_tokens_total{moe_layer="L",moe_expert="E",...} N` lines into a map "L.E" → N. */
function expertTokens(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of text.matchAll(/^moe_expert_tokens_total\{([^}]*)\} (\d+)/gm)) {
    const layer = /moe_layer="(\d+)"/.exec(m[1])![1];
    const expert = /moe_expert="(\d+)"/.exec(m[1])![1];
    out.set(`${layer}.${expert}`, Number(m[2]));
  }
  return out;
}

describe('telemetry on the engine', () => {
  it('counts exactly the router choices of a known prompt, and records the request span', async () => {
    const spans = new InMemorySpanExporter();
    const telemetry = createTelemetry({ exporter: 'none', otlpEndpoint: null, loadTraceFile: null }, { modelId: 'tiny', spanExporter: spans });
    const engine = await Engine.load(engineConfig(dir), telemetry.observer);
    try {
      const prompt = 'Call me Ishmael.';
      const ids = engine.codec.encode(prompt);
      // The expected routing: a one-token generation is exactly one prefill step over the prompt.
      const reference = await engine.model.forward([{ cache: engine.model.newCache(), tokens: ids }]);
      const result = await instrument(engine, telemetry, 'tiny').generate(request(prompt, 1));
      expect(result.generatedTokens).toBe(1);

      const counted = expertTokens(await telemetry.metricsText());
      for (const layer of reference.layers) {
        for (let e = 0; e < engine.pkg.config.num_experts; e++) {
          const routed = Array.from(layer.expert).filter((x) => x === e).length;
          expect(counted.get(`${layer.layer}.${e}`) ?? 0).toBe(routed);
        }
      }
      const names = spans.getFinishedSpans().map((s) => s.name);
      expect(names).toContain('text_completion tiny');
      expect(names.filter((n) => n === 'moe.dispatch')).toHaveLength(engine.pkg.config.num_hidden_layers);
      const requestSpan = spans.getFinishedSpans().find((s) => s.name === 'text_completion tiny')!;
      expect(requestSpan.attributes['gen_ai.usage.input_tokens']).toBe(ids.length);
      expect(requestSpan.attributes['gen_ai.usage.output_tokens']).toBe(1);
    } finally {
      await engine.close();
      await telemetry.shutdown();
    }
  });
});
