/**
 * Expert residency: decode tokens/s and on-demand expert loads for K = all, half and 2 experts resident per
 * worker, in one run (medians over repeats), appended to bench/RESULTS.md.
 *
 *   npx tsx bench/residency.ts [--model models/switchyard-moe] [--workers 2] [--repeats 3] [--no-record]
 */
import { parseArgs } from 'node:util';
import { loadConfig } from '../src/config.ts';
import { Engine } from '../src/engine/engine.ts';
import type { SamplingParams } from '../src/engine/types.ts';
import { appendResults, commandLine, formatSection } from './record.ts';
import { fmt, markdownTable, median } from './stats.ts';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'models/switchyard-moe' },
    workers: { type: 'string', default: '2' },
    repeats: { type: 'string', default: '3' },
    'no-record': { type: 'boolean', default: false },
  },
});
const workers = Number(values.workers);
const repeats = Number(values.repeats);
const greedy: SamplingParams = { doSample: false, temperature: 1, topK: null, topP: null, repetitionPenalty: null, seed: null };
const prompts = ['Call me Ishmael.', 'Mr. Speaker, the state of our Union', 'A fortune cookie says:', 'The whale', 'Q: Who is Ahab?\nA:', 'It was a dark night', 'Fellow citizens', 'Knock knock'];


const hosted = Math.ceil((8 * 4) / workers); // experts per worker under round-robin placement of the bundled model
const rows: Array<Array<string | number>> = [];
for (const [label, k] of [['all', null], ['half', Math.ceil(hosted / 2)], ['2', 2]] as const) {
  const engine = await Engine.load(loadConfig({ file: null, env: {}, overrides: {
    model: values.model, workers, experts: { maxResidentPerWorker: k }, cache: { prefix: { maxBytes: 0 }, response: { maxEntries: 0 } },
  } }));
  try {
    await engine.generate({ inputs: 'warm up', maxNewTokens: 4, stop: [], sampling: greedy });
    const single: number[] = [];
    const batched: number[] = [];
    for (let r = 0; r < repeats; r++) {
      const times: number[] = [];
      await engine.generate({ inputs: prompts[r % prompts.length], maxNewTokens: 64, stop: [], sampling: greedy }, { onToken: () => times.push(performance.now()) });
      single.push((times.length - 1) / ((times[times.length - 1] - times[0]) / 1000));
      const started = performance.now();
      const results = await Promise.all(prompts.map((p) => engine.generate({ inputs: p, maxNewTokens: 64, stop: [], sampling: greedy })));
      batched.push(results.reduce((n, x) => n + x.generatedTokens, 0) / ((performance.now() - started) / 1000));
    }
    const stats = await engine.pool.stats();
    const loads = stats.reduce((n, s) => n + s.residency.loads, 0);
    const evictions = stats.reduce((n, s) => n + s.residency.evictions, 0);
    rows.push([label, k ?? hosted, fmt(median(single), 1), fmt(median(batched), 1), loads, evictions]);
    process.stderr.write(`K=${label}: single ${median(single).toFixed(1)} tok/s, 8 clients ${median(batched).toFixed(1)} tok/s, loads ${loads}, evictions ${evictions}\n`);
  } finally {
    await engine.close();
  }
}

const table = markdownTable(['K (per worker)', 'resident experts', 'decode tok/s, 1 stream', 'tok/s, 8 concurrent', 'on-demand loads', 'evictions'], rows,
  ['left', 'right', 'right', 'right', 'right', 'right']);
process.stdout.write(`${table}\n`);
if (!values['no-record']) {
  appendResults(formatSection({
    title: 'expert residency (experts.maxResidentPerWorker)',
    command: commandLine('bench/residency.ts'),
    facts: [['model', String(values.model)], ['workers', `${workers} (${hosted} experts hosted each)`], ['load', `64 greedy tokens; medians of ${repeats}`]],
    body: [table, 'Loads and evictions are totals over all workers for the whole run (warm-up included). A load reads the expert\'s bytes from the package and builds its kernel.'],
  }));
}
