/**
 * Model quality on the bundled corpus' held-out split (the package's validation.json, written by the trainer):
 * validation bits per byte, and how often the model's greedy next-token choice agrees with a reference model's
 * (e.g. the dense model a pruned package came from), position by position over the same windows.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import type { MoeModel } from '../engine/model.ts';
import { PackageError } from '../engine/package.ts';
import { argmax, logSoftmax } from '../engine/sampling.ts';

const validationSchema = z.object({
  seq_len: z.number().int().positive(),
  windows: z.array(z.object({ source: z.string(), tokens: z.array(z.number().int().nonnegative()).min(2) })).min(1),
});

export type ValidationSet = z.infer<typeof validationSchema>;

export function readValidationSet(modelDir: string): ValidationSet {
  const file = join(modelDir, 'validation.json');
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (error) {
    throw new PackageError(`${file}: cannot read the validation windows (${(error as Error).message}); re-export the package with training.export`);
  }
  const parsed = validationSchema.safeParse(raw);
  if (!parsed.success) throw new PackageError(`${file}: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return parsed.data;
}

export interface EvalResult {
  val_bpb: number;
  val_bpb_per_source: Record<string, number>;
  val_bytes: number;
  /** Fraction of positions where the argmax prediction equals the reference model's; null without a reference. */
  greedy_agreement: number | null;
  windows: number;
}

export interface EvaluateOptions {
  /** Windows per forward pass (default 8). */
  batch?: number;
  /** Called after each batch with the windows scored so far and the total (counts go up, the last call has done = total). */
  onProgress?: (done: number, total: number) => void;
}

/** Scores the windows in batches (each window a fresh sequence); only targets that are bytes count. */
export async function evaluate(model: MoeModel, set: ValidationSet, reference?: MoeModel, options: EvaluateOptions = {}): Promise<EvalResult> {
  const batch = options.batch ?? 8;
  const v = model.config.vocab_size;
  let nats = 0;
  let bytes = 0;
  let agree = 0;
  let positions = 0;
  const perSource = new Map<string, { nats: number; bytes: number }>();
  for (let i = 0; i < set.windows.length; i += batch) {
    const chunk = set.windows.slice(i, i + batch);
    const inputs = () => chunk.map((w) => ({ cache: model.newCache(), tokens: w.tokens.slice(0, -1) }));
    const out = await model.forward(inputs(), { allPositions: true });
    const ref = reference ? await reference.forward(chunk.map((w) => ({ cache: reference.newCache(), tokens: w.tokens.slice(0, -1) })), { allPositions: true }) : null;
    chunk.forEach((w, k) => {
      const acc = perSource.get(w.source) ?? { nats: 0, bytes: 0 };
      perSource.set(w.source, acc);
      for (let t = 0; t + 1 < w.tokens.length; t++) {
        const logits = out.logits[k].subarray(t * v, (t + 1) * v);
        const target = w.tokens[t + 1];
        if (target < 256) {
          const loss = -logSoftmax(logits)[target];
          nats += loss;
          bytes++;
          acc.nats += loss;
          acc.bytes++;
        }
        if (ref) {
          agree += argmax(logits) === argmax(ref.logits[k].subarray(t * v, (t + 1) * v)) ? 1 : 0;
          positions++;
        }
      }
    });
    options.onProgress?.(i + chunk.length, set.windows.length);
  }
  const bpb = (n: number, b: number) => n / b / Math.LN2;
  return {
    val_bpb: bpb(nats, bytes),
    val_bpb_per_source: Object.fromEntries([...perSource].map(([s, a]) => [s, bpb(a.nats, a.bytes)])),
    val_bytes: bytes,
    greedy_agreement: reference ? agree / positions : null,
    windows: set.windows.length,
  };
}
