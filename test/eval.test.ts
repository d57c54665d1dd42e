/** Validation bits per byte and greedy agreement, checked against the plain TS reference model. */
import { describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import { evaluate } from '../src/eval/evaluate.ts';
import { logSoftmax } from '../src/engine/sampling.ts';
import { ReferenceModel } from './reference/reference-model.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig } from './helpers.ts';

const config = tinyConfig();
const dir = writeTinyPackage(config, 11);
const other = writeTinyPackage(config, 12);
const text = (s: string) => [256, ...Buffer.from(s)];
const set = {
  seq_len: 20,
  windows: [
    { source: 'a', tokens: text('Call me Ishmael. Some years ago') },
    { source: 'b', tokens: [...text('The end.'), 257, 256, ...text('Begin')] },
    { source: 'a', tokens: text('whale ship sea') },
  ],
};

describe('eval', () => {
  it('computes bits per byte over byte targets exactly as the reference forward pass does', async () => {
    const engine = await Engine.load(engineConfig(dir));
    try {
      const result = await evaluate(engine.model, set);
      const reference = ReferenceModel.fromPackage(dir, config);
      let nats = 0;
      let bytes = 0;
      for (const w of set.windows) {
        const { logits } = reference.forward(w.tokens.slice(0, -1));
        w.tokens.slice(1).forEach((target, t) => {
          if (target >= 256) return;
          nats -= logSoftmax(Float32Array.from(logits[t]))[target];
          bytes++;
        });
      }
      expect(result.val_bytes).toBe(bytes);
      expect(result.val_bpb).toBeCloseTo(nats / bytes / Math.LN2, 4);
      expect(result.greedy_agreement).toBeNull();
      expect(Object.keys(result.val_bpb_per_source).sort()).toEqual(['a', 'b']);
    } finally {
      await engine.close();
    }
  });

  it('greedy agreement is 1 against itself and lower against a different model', async () => {
    const a = await Engine.load(engineConfig(dir));
    const b = await Engine.load(engineConfig(other));
    try {
      expect((await evaluate(a.model, set, a.model)).greedy_agreement).toBe(1);
      expect((await evaluate(a.model, set, b.model)).greedy_agreement).toBeLessThan(1);
    } finally {
      await a.close();
      await b.close();
    }
  });
});
