import { readFileSync } from 'node:fs';
import { ConfigSchema, type Config, type ConfigInput } from '../src/config.ts';
import type { GenerateRequest, GenerationService, SamplingParams } from '../src/engine/types.ts';

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

/**
 * The CPU the tests run on, for suite names and failure messages: model name and the x86 SIMD flags that change
 * quantized kernels' arithmetic (e.g. "AMD EPYC [avx2]" or "Intel Xeon [avx2 avx512f avx512bw avx512_vnni]").
 */
export function cpuDescription(): string {
  let info = '';
  try {
    info = readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return `${process.arch} (no /proc/cpuinfo)`;
  }
  const model = /^model name\s*:\s*(.+)$/m.exec(info)?.[1].trim() ?? process.arch;
  const flags = new Set((/^flags\s*:\s*(.+)$/m.exec(info)?.[1] ?? '').split(/\s+/));
  const simd = ['avx2', 'avx512f', 'avx512bw', 'avx512_vnni', 'avx_vnni', 'amx_int8'].filter((f) => flags.has(f));
  return `${model} [${simd.join(' ') || 'no avx2'}]`;
}

/**
 * Starts a greedy generation of `maxNewTokens` (ignore_eos) and queues an immediate with it: returns how many tokens
 * the immediate saw (a scheduler that lets the event loop in at every step: 0 or 1), after checking the generation
 * finished whole.
 */
export async function tokensBeforeAnImmediate(engine: { generate: GenerationService['generate'] }, maxNewTokens: number): Promise<number> {
  let tokens = 0;
  let seen = -1;
  const done = engine.generate({ ...request('The whale', maxNewTokens), ignoreEos: true }, { onToken: () => void tokens++ });
  setImmediate(() => (seen = tokens));
  const result = await done;
  if (result.tokens.length !== maxNewTokens) throw new Error(`generated ${result.tokens.length} tokens, not ${maxNewTokens}`);
  return seen;
}
