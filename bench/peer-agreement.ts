/**
 * Numerical agreement with llama.cpp on the same weights: `npx tsx bench/peer-agreement.ts --help`.
 *
 * For tiny random-weight checkpoints (the test fixture's OLMoE layout; top-1, top-2 and top-3 routing, bf16 shards)
 * and the bundled model: converts each with `switchyard convert-gguf`, starts ../shared/peer/llama-server on it with an f32
 * KV cache, and compares, per prompt, the greedy continuation (token ids) and the next-token log-probabilities of
 * llama-server's top candidates at every position of that continuation against the gateway's (in-process Engine,
 * teacher-forced on the same ids). llama-server leaves out the probabilities of a token that ends inside an
 * incomplete UTF-8 sequence (byte vocabularies), so positions are compared where it reports them. Continuations that
 * part at a near-tie (our two candidates within NEAR_TIE in log-prob) are reported apart.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { convertOlmoeToGguf } from '../src/convert/olmoe-to-gguf.ts';
import { Engine } from '../src/engine/engine.ts';
import { logSoftmax } from '../src/engine/sampling.ts';
import type { ModelConfig } from '../src/engine/package.ts';
import { tinyConfig, writeTinyPackage, type TinyPackageOptions } from '../test/fixtures/tiny-package.ts';
import { engineConfig } from '../test/helpers.ts';
import { intFlag, parseFlags, runCli } from './cli-common.ts';
import { DEFAULT_PEER, freePort, peerVersion, startProc, stopProc, waitHealthy } from './procs.ts';
import { commandLine, publish } from './record.ts';
import { fmt, markdownTable } from './stats.ts';

const SCRIPT = 'bench/peer-agreement.ts';
const HELP = `Usage: npx tsx ${SCRIPT} [--tokens N] [--peer PATH] [--label TEXT] [--no-record]

Greedy continuations and next-token log-probabilities of the gateway against llama.cpp's llama-server (from
../shared/peer/, f32 KV cache) on the same weights: tiny random checkpoints with top-1, top-2 and top-3 routing and
bf16 shards, and the bundled model. Without the llama-server binary it says so and exits 0.

  --tokens N     greedy tokens per prompt (default 16; 1..64)
  --peer PATH    llama-server binary (default ../shared/peer/llama-server)
  --label TEXT   a note for the RESULTS.md section title
  --no-record    print only; do not append to bench/RESULTS.md`;

const PROMPTS = ['The whale', 'Call me Ishmael.', 'a', 'naïve café'];
const TOP_N = 5;
/** Log-prob gap under which two candidates count as tied (the agreement seen is ~1e-6). */
const NEAR_TIE = 1e-4;

interface Options {
  tokens: number;
  peer: string;
  label?: string;
  record: boolean;
}

interface Checkpoint {
  name: string;
  /** Package folder; tiny ones are written into the temp folder. */
  dir: string;
}

interface Agreement {
  prompts: number;
  greedyEqual: number;
  /**
   * Continuations that differ where our two candidates' log-probs are within NEAR_TIE of each other (teacher-forced
   * on llama-server's tokens): float rounding picks either; counted apart from real disagreements.
   */
  nearTies: number;
  /** The smallest such margin seen. */
  tieMargin: number;
  positions: number;
  compared: number;
  maxLogprobDiff: number;
}

function parse(argv: string[]): Options | null {
  const v = parseFlags(argv, {
    tokens: { type: 'string' }, peer: { type: 'string' }, label: { type: 'string' }, 'no-record': { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
  });
  if (v.help) return null;
  return { tokens: intFlag('--tokens', v.tokens, 16, 1, 64), peer: v.peer ?? DEFAULT_PEER, label: v.label, record: !v['no-record'] };
}

interface Completion {
  tokens: number[];
  completion_probabilities?: Array<{ id: number; top_logprobs: Array<{ id: number; logprob: number }> }>;
}

async function complete(url: string, prompt: number[], nPredict: number, nProbs: number): Promise<Completion> {
  const res = await fetch(`${url}/completion`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt, n_predict: nPredict, temperature: 0, n_probs: nProbs, ignore_eos: true, cache_prompt: false, return_tokens: true }),
  });
  if (!res.ok) throw new Error(`llama-server /completion: HTTP ${res.status} ${await res.text()}`);
  return (await res.json()) as Completion;
}

async function compareOne(checkpoint: Checkpoint, opts: Options, tmp: string): Promise<Agreement & { k: number; renormalize: boolean }> {
  const gguf = path.join(tmp, `${path.basename(checkpoint.dir)}.gguf`);
  convertOlmoeToGguf({ modelDir: checkpoint.dir, outFile: gguf });
  const engine = await Engine.load(engineConfig(checkpoint.dir, { workers: 1, cache: { prefix: { maxBytes: 0 }, response: { maxEntries: 0 } } }));
  const c: ModelConfig = engine.pkg.config;
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const proc = startProc('llama-server', opts.peer, ['-m', gguf, '--host', '127.0.0.1', '--port', String(port), '-t', '2', '--parallel', '1',
    '-c', String(c.max_position_embeddings), '-ctk', 'f32', '-ctv', 'f32'], path.join(tmp, 'llama-server.log'));
  const result: Agreement = { prompts: 0, greedyEqual: 0, nearTies: 0, tieMargin: Infinity, positions: 0, compared: 0, maxLogprobDiff: 0 };
  try {
    await waitHealthy(proc, url);
    for (const prompt of PROMPTS) {
      const ids = engine.codec.encode(prompt); // with BOS, as llama-server would add it to the string
      const theirs = (await complete(url, ids, opts.tokens, 0)).tokens;
      const ours = await engine.generate({ inputs: prompt, maxNewTokens: opts.tokens, stop: [], ignoreEos: true,
        sampling: { doSample: false, temperature: 1, topK: null, topP: null, repetitionPenalty: null, seed: null } }, { cache: false });
      result.prompts++;
      const mineIds = ours.tokens.map((t) => t.id);
      // Teacher-forced on llama-server's continuation: our log-probs at every position from one forward pass.
      const sequence = [...ids, ...theirs.slice(0, -1)];
      const out = await engine.model.forward([{ cache: engine.model.newCache(), tokens: sequence }], { allPositions: true });
      // With ignore_eos llama.cpp bans the end-of-sequence token while we emit it and go on: compare up to our first one.
      const eos = mineIds.indexOf(c.eos_token_id);
      const split = mineIds.slice(0, eos < 0 ? mineIds.length : eos).findIndex((id, p) => id !== theirs[p]);
      if (split < 0) result.greedyEqual++;
      else {
        // Where they part: how far apart are their token and ours in our own log-probs at that position?
        const at = ids.length - 1 + split;
        const row = logSoftmax(out.logits[0].subarray(at * c.vocab_size, (at + 1) * c.vocab_size));
        const margin = Math.abs(row[mineIds[split]] - row[theirs[split]]);
        if (margin < NEAR_TIE) {
          result.nearTies++;
          result.tieMargin = Math.min(result.tieMargin, margin);
        }
      }
      for (let p = 0; p < theirs.length; p++) {
        result.positions++;
        const at = ids.length - 1 + p;
        const mine = logSoftmax(out.logits[0].subarray(at * c.vocab_size, (at + 1) * c.vocab_size));
        const probs = (await complete(url, [...ids, ...theirs.slice(0, p)], 1, TOP_N)).completion_probabilities;
        if (!probs || probs.length === 0) continue; // an incomplete UTF-8 sequence: llama-server reports nothing
        result.compared++;
        for (const t of probs[0].top_logprobs) result.maxLogprobDiff = Math.max(result.maxLogprobDiff, Math.abs(t.logprob - mine[t.id]));
      }
    }
  } finally {
    await stopProc(proc);
    await engine.close();
  }
  return { ...result, k: c.num_experts_per_tok, renormalize: c.norm_topk_prob };
}

async function run(opts: Options): Promise<number> {
  if (!existsSync(opts.peer)) {
    process.stderr.write(`llama-server not found at ${opts.peer}: nothing to compare against (the repository does not fetch or build llama.cpp).\n`);
    return 0;
  }
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'switchyard-agreement-'));
  try {
    const tiny = (name: string, overrides: Partial<ModelConfig>, seed: number, options: TinyPackageOptions = {}): Checkpoint =>
      ({ name, dir: writeTinyPackage(tinyConfig({ max_position_embeddings: 128, ...overrides }), seed, path.join(tmp, `tiny-${seed}`), options) });
    // Grouped-query attention only in Mixtral's row: llama.cpp's OLMoE graph (b4747) takes k_norm over all heads, so
    // it cannot load an OLMoE checkpoint with fewer key/value heads (convert-gguf refuses one).
    const mixtral = { model_type: 'mixtral', hidden_size: 32, num_attention_heads: 4, num_key_value_heads: 2, num_experts: 4, num_experts_per_tok: 2, norm_topk_prob: true, qk_norm: false, rope_theta: 1e6 } as const;
    const qwen = { model_type: 'qwen2_moe', hidden_size: 32, num_attention_heads: 4, num_key_value_heads: 4, num_experts: 6, num_experts_per_tok: 2, qk_norm: false, attention_bias: true, shared_expert_intermediate_size: 40, shared_expert_gated: true, rope_theta: 1e6 } as const;
    const granite = { model_type: 'granitemoe', hidden_size: 32, num_attention_heads: 4, num_key_value_heads: 2, num_experts: 4, num_experts_per_tok: 2, norm_topk_prob: true, qk_norm: false, tie_word_embeddings: true, embedding_multiplier: 12, attention_multiplier: 0.015625, residual_multiplier: 0.22, logits_scaling: 6 } as const;
    const checkpoints: Checkpoint[] = [
      tiny('tiny-top1', { num_experts: 4, num_experts_per_tok: 1 }, 61),
      tiny('tiny-top2', { num_experts: 6, num_experts_per_tok: 2 }, 62),
      tiny('tiny-top3', { num_experts: 8, num_experts_per_tok: 3 }, 63),
      tiny('tiny-top2, bf16 in 2 shards', { num_experts: 6, num_experts_per_tok: 2 }, 65, { weights: 'bf16', shards: 2 }),
      tiny('tiny Mixtral (GQA 4/2, renormalised top-2)', mixtral, 66, { architecture: 'mixtral' }),
      tiny('tiny Qwen2-MoE (top-2, q/k/v biases, gated shared expert)', qwen, 67, { architecture: 'qwen2_moe' }),
      tiny('tiny Granite-MoE (multipliers, fused experts, tied embeddings, GQA 4/2)', granite, 68, { architecture: 'granitemoe' }),
      { name: 'bundled (switchyard-moe)', dir: path.join(import.meta.dirname, '..', 'models', 'switchyard-moe') },
    ];
    let failures = 0;
    const rows: Array<Array<string | number>> = [];
    for (const checkpoint of checkpoints) {
      process.stderr.write(`${checkpoint.name}…\n`);
      const a = await compareOne(checkpoint, opts, tmp);
      const ties = a.nearTies > 0 ? ` (+${a.nearTies} at a near-tie, margin ${a.tieMargin.toExponential(1)})` : '';
      rows.push([checkpoint.name, a.k, String(a.renormalize), `${a.greedyEqual}/${a.prompts}${ties}`, `${a.compared}/${a.positions}`, fmt(a.maxLogprobDiff * 1e6, 2)]);
      failures += a.prompts - a.greedyEqual - a.nearTies;
    }
    const table = markdownTable(['checkpoint', 'k', 'norm_topk_prob', 'greedy continuations equal', 'positions compared', `max |Δ log-prob| × 1e-6 (top ${TOP_N})`], rows);
    publish([table], [
      `${PROMPTS.length} prompts, ${opts.tokens} greedy tokens each (ignore_eos); log-probs teacher-forced on llama-server's continuation, llama-server's top ${TOP_N} candidates at each position`,
      'llama-server: -t 2 --parallel 1 -ctk f32 -ctv f32, GGUF F32 from switchyard convert-gguf; gateway: in-process Engine, 1 worker, caches off',
      'positions compared: where llama-server reported probabilities (it leaves out tokens that end inside an incomplete UTF-8 sequence)',
      'greedy continuations are compared up to our first end-of-sequence token: with ignore_eos llama-server bans it, the gateway emits it and goes on',
      `a continuation that parts where our log-probs of the two candidates differ by less than ${NEAR_TIE} is counted as a near-tie (either is the greedy choice up to float rounding), not as a disagreement; the exit status is 1 only for real disagreements`,
    ], opts.record ? { title: 'agreement with llama.cpp (top-k routing)', label: opts.label, command: commandLine(SCRIPT), facts: [['peer', peerVersion(opts.peer)]] } : false);
    return failures === 0 ? 0 : 1;
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

runCli(SCRIPT, HELP, parse, run);
