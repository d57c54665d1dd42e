import { ConfigSchema, type Config, type ConfigInput } from '../src/config.ts';
import type { GenerateRequest, SamplingParams } from '../src/engine/types.ts';

export function engineConfig(model: string, overrides: ConfigInput = {}): Config {
  return ConfigSchema.parse({ model, workers: 2, ...overrides });
}

export const GREEDY: SamplingParams = { doSample: false, temperature: 1, topK: null, topP: null, repetitionPenalty: null, seed: null };

export function request(inputs: string, maxNewTokens = 8, sampling: Partial<SamplingParams> = {}, stop: string[] = []): GenerateRequest {
  return { inputs, maxNewTokens, sampling: { ...GREEDY, ...sampling }, stop };
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
