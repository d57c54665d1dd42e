/**
 * A plain TypeScript OLMoE forward pass with Switch top-1 routing: no ONNX, no cache, no workers, float64
 * arithmetic. Tests compare the gateway against it.
 */
import { readSafetensorsHeader, readTensors } from '../../src/format/safetensors.ts';
import { expectedTensors, tensorNames, type ModelConfig } from '../../src/engine/package.ts';

type Matrix = Float32Array; // row-major [out, in], as torch stores Linear weights

function linear(x: number[], w: Matrix, out: number): number[] {
  const n = x.length;
  return Array.from({ length: out }, (_, o) => x.reduce((s, v, i) => s + v * w[o * n + i], 0));
}

function rmsNorm(x: number[], w: Float32Array, eps: number): number[] {
  const rms = Math.sqrt(x.reduce((s, v) => s + v * v, 0) / x.length + eps);
  return x.map((v, i) => (v / rms) * w[i]);
}

const silu = (v: number) => v / (1 + Math.exp(-v));

/** A token's routing at one layer: its most probable expert and gate, and all k choices. */
export interface RouterChoice {
  expert: number;
  gate: number;
  choices: Array<{ expert: number; gate: number }>;
}

export interface ReferenceOutput {
  logits: number[][];
  /** router[layer][position]: the first (most probable) choice, and all k choices. */
  router: RouterChoice[][];
}

export class ReferenceModel {
  constructor(readonly config: ModelConfig, readonly w: (name: string) => Float32Array) {}

  /**
   * From a package's single model.safetensors (float32); `stored` maps a canonical (OLMoE) tensor name to the name
   * in the file (Mixtral's, for one).
   */
  static fromPackage(dir: string, config: ModelConfig, stored: (name: string) => string = (name) => name): ReferenceModel {
    const file = `${dir}/model.safetensors`;
    const names = [...expectedTensors(config).keys()];
    const tensors = readTensors(file, readSafetensorsHeader(file), names.map(stored));
    return new ReferenceModel(config, (name) => tensors.get(stored(name))!);
  }

  /** Greedy continuation of `ids` by full recompute (no cache): up to `steps` tokens, stopping after eos_token_id. */
  greedy(ids: number[], steps: number): number[] {
    const seq = [...ids];
    const out: number[] = [];
    for (let i = 0; i < steps; i++) {
      const logits = this.forward(seq).logits[seq.length - 1];
      const next = logits.indexOf(Math.max(...logits));
      out.push(next);
      if (next === this.config.eos_token_id) break;
      seq.push(next);
    }
    return out;
  }

  forward(ids: number[]): ReferenceOutput {
    const c = this.config;
    const d = c.hidden_size;
    const heads = c.num_attention_heads;
    const hd = d / heads;
    const embed = this.w(tensorNames.embed);
    // Granite-MoE's multipliers (1, or 1/√head_dim for the scores, in the other families).
    const rm = c.residual_multiplier;
    let x = ids.map((id) => Array.from(embed.subarray(id * d, (id + 1) * d), (v) => v * c.embedding_multiplier));
    const router: ReferenceOutput['router'] = [];
    for (let l = 0; l < c.num_hidden_layers; l++) {
      const t = tensorNames.layer(l);
      const xn = x.map((row) => rmsNorm(row, this.w(t.inputNorm), c.rms_norm_eps));
      const rope = (v: number[], pos: number) => {
        const out = [...v];
        for (let h = 0; h < v.length / hd; h++) {
          for (let i = 0; i < hd / 2; i++) {
            const angle = pos / c.rope_theta ** ((2 * i) / hd);
            const a = v[h * hd + i];
            const b = v[h * hd + hd / 2 + i];
            out[h * hd + i] = a * Math.cos(angle) - b * Math.sin(angle);
            out[h * hd + hd / 2 + i] = b * Math.cos(angle) + a * Math.sin(angle);
          }
        }
        return out;
      };
      // OLMoE RMS-norms q and k (qk_norm); Mixtral does not.
      const qkNorm = (v: number[], weight: string) => (c.qk_norm ? rmsNorm(v, this.w(weight), c.rms_norm_eps) : v);
      // Qwen2-MoE's projections have biases (attention_bias).
      const b = tensorNames.bias(l);
      const biased = (y: number[], bias: string) => (c.attention_bias ? y.map((v, i) => v + this.w(bias)[i]) : y);
      const q = xn.map((row, p) => rope(qkNorm(biased(linear(row, this.w(t.q), d), b.q), t.qNorm), p));
      // Grouped-query attention: query head h reads key/value head ⌊h / group⌋ (Hugging Face's repeat_kv).
      const kvDim = c.num_key_value_heads * hd;
      const group = heads / c.num_key_value_heads;
      const k = xn.map((row, p) => rope(qkNorm(biased(linear(row, this.w(t.k), kvDim), b.k), t.kNorm), p));
      const v = xn.map((row) => biased(linear(row, this.w(t.v), kvDim), b.v));
      const attended = q.map((qi, i) => {
        const out = new Array<number>(d).fill(0);
        for (let h = 0; h < heads; h++) {
          const kv = Math.floor(h / group);
          const scores = k.slice(0, i + 1).map((kj) => {
            let s = 0;
            for (let j = 0; j < hd; j++) s += qi[h * hd + j] * kj[kv * hd + j];
            return c.attention_multiplier === null ? s / Math.sqrt(hd) : s * c.attention_multiplier;
          });
          const max = Math.max(...scores);
          const e = scores.map((s) => Math.exp(s - max));
          const z = e.reduce((a, b) => a + b, 0);
          e.forEach((p, j) => {
            for (let m = 0; m < hd; m++) out[h * hd + m] += (p / z) * v[j][kv * hd + m];
          });
        }
        return out;
      });
      const h = x.map((row, i) => {
        const o = linear(attended[i], this.w(t.o), d);
        return row.map((val, j) => val + o[j] * rm);
      });
      const layerRouting: RouterChoice[] = [];
      x = h.map((row) => {
        const m = rmsNorm(row, this.w(t.postNorm), c.rms_norm_eps);
        const logits = linear(m, this.w(t.router), c.num_experts);
        const max = Math.max(...logits);
        const z = logits.reduce((s, g) => s + Math.exp(g - max), 0);
        const probs = logits.map((g) => Math.exp(g - max) / z);
        // Top-k: the k most probable experts (ties to the lower index), gated by their probabilities, renormalised
        // over the k when norm_topk_prob; their outputs summed.
        const chosen = probs.map((p, e) => ({ p, e })).sort((a, b) => b.p - a.p || a.e - b.e).slice(0, c.num_experts_per_tok);
        const sum = chosen.reduce((n, ch) => n + ch.p, 0);
        const gates = chosen.map((ch) => (c.norm_topk_prob ? ch.p / sum : ch.p));
        layerRouting.push({ expert: chosen[0].e, gate: gates[0], choices: chosen.map((ch, j) => ({ expert: ch.e, gate: gates[j] })) });
        const ffn = (names: { gate: string; up: string; down: string }, width: number) => {
          const gate = linear(m, this.w(names.gate), width);
          const up = linear(m, this.w(names.up), width);
          return linear(gate.map((g, i) => silu(g) * up[i]), this.w(names.down), d);
        };
        const moe = new Array<number>(d).fill(0);
        chosen.forEach((ch, j) => {
          const y = ffn(tensorNames.expert(l, ch.e), c.intermediate_size);
          for (let i = 0; i < d; i++) moe[i] += gates[j] * y[i];
        });
        // Qwen2-MoE's shared expert: every token, scaled by sigmoid(m · shared_expert_gate).
        if (c.shared_expert_intermediate_size > 0) {
          const s = tensorNames.sharedExpert(l);
          const y = ffn(s, c.shared_expert_intermediate_size);
          const scale = c.shared_expert_gated ? 1 / (1 + Math.exp(-linear(m, this.w(s.scale), 1)[0])) : 1;
          for (let i = 0; i < d; i++) moe[i] += scale * y[i];
        }
        return row.map((v, i) => v + moe[i] * rm);
      });
      router.push(layerRouting);
    }
    const head = this.w(c.tie_word_embeddings ? tensorNames.embed : tensorNames.lmHead);
    const logits = x.map((row) => linear(rmsNorm(row, this.w(tensorNames.finalNorm), c.rms_norm_eps), head, c.vocab_size).map((v) => v / c.logits_scaling));
    return { logits, router };
  }
}
