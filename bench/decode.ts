/**
 * Single-stream decode speed of model packages as served: each package is loaded with experts.kernel 'auto' (the
 * kernel picked per expert at load), and greedy decode tokens/s is measured (prefill excluded), median over
 * repeats. Prints a table of package, kernels chosen and tokens/s; the training results (training/RESULTS.md) use it
 * for the packages the sparsity toolbox writes.
 *
 *   npx tsx bench/decode.ts DIR [DIR ...] [--repeats 3] [--tokens 96] [--workers 2] [--json]
 */
import { parseArgs } from 'node:util';
import { loadConfig } from '../src/config.ts';
import { Engine } from '../src/engine/engine.ts';
import { fmt, markdownTable, median } from './stats.ts';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    repeats: { type: 'string', default: '3' },
    tokens: { type: 'string', default: '96' },
    workers: { type: 'string', default: '2' },
    json: { type: 'boolean', default: false },
  },
});
if (positionals.length === 0) {
  process.stderr.write('usage: npx tsx bench/decode.ts DIR [DIR ...] [--repeats 3] [--tokens 96] [--workers 2] [--json]\n');
  process.exit(2);
}
const repeats = Number(values.repeats);
const decodeTokens = Number(values.tokens);
const greedy = { doSample: false, temperature: 1, topK: null, topP: null, repetitionPenalty: null, seed: null };

const rows: Array<Array<string | number>> = [];
for (const dir of positionals) {
  const engine = await Engine.load(loadConfig({ file: null, env: {}, overrides: { model: dir, workers: Number(values.workers), cache: { prefix: { maxBytes: 0 }, response: { maxEntries: 0 } } } }));
  try {
    const kernels = new Map<string, number>();
    for (const s of await engine.pool.stats()) for (const r of Object.values(s.kernels)) kernels.set(r.kernel, (kernels.get(r.kernel) ?? 0) + 1);
    await engine.generate({ inputs: 'Warm up', maxNewTokens: 8, stop: [], sampling: greedy });
    const prompt = 'Call me Ishmael. Some years ago';
    // Small test packages have short contexts: decode at most what fits after the prompt.
    const tokens = Math.min(decodeTokens, engine.pkg.config.max_position_embeddings - engine.codec.encode(prompt).length);
    const rates: number[] = [];
    for (let r = 0; r < repeats; r++) {
      const times: number[] = [];
      await engine.generate({ inputs: prompt, maxNewTokens: tokens, stop: [], sampling: greedy }, { onToken: () => times.push(performance.now()) });
      rates.push((times.length - 1) / ((times[times.length - 1] - times[0]) / 1000));
    }
    const kernelText = [...kernels].map(([k, n]) => `${k} ×${n}`).join(', ');
    if (values.json) process.stdout.write(JSON.stringify({ model: dir, kernels: Object.fromEntries(kernels), decode_tok_s: median(rates), rates, tokens, repeats }) + '\n');
    rows.push([dir, kernelText, fmt(median(rates), 1)]);
  } finally {
    await engine.close();
  }
}
if (!values.json) process.stdout.write(markdownTable(['package', 'expert kernels (auto)', 'decode tok/s'], rows, ['left', 'left', 'right']) + '\n');
