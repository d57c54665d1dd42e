/** `switchyard eval`: loads the model (and optionally a reference) through the real engine and scores it. */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { loadConfig } from '../config.ts';
import { Engine } from '../engine/engine.ts';
import { evaluate, readValidationSet, type EvalResult } from './evaluate.ts';

export interface RunEvalOptions {
  model: string;
  /** A model to compare greedy choices with (skipped when it is `model` itself). */
  reference?: string;
  workers?: number;
  /** Windows scored so far and in all, after each batch (evaluate's onProgress). */
  onProgress?: (done: number, total: number) => void;
}

export async function runEval(options: RunEvalOptions): Promise<EvalResult> {
  const load = (model: string) => Engine.load(loadConfig({ file: null, env: {}, overrides: { model, workers: options.workers } }));
  const engine = await load(options.model);
  const reference = options.reference && resolve(options.reference) !== resolve(options.model) ? await load(options.reference) : null;
  try {
    // The windows come from the evaluated package, or from the reference (a pruned package may not carry them).
    const set = readValidationSet(reference && !existsSync(join(options.model, 'validation.json')) ? options.reference! : options.model);
    return await evaluate(engine.model, set, reference?.model, { onProgress: options.onProgress });
  } finally {
    await engine.close();
    await reference?.close();
  }
}
