/**
 * The whole forward pass of a step in native code (experts/kernels/native/model.cc), started on the compute team
 * while the gateway's thread goes on with its I/O:
 *
 *   begin:  the step's embedded rows, rotary angles and KV caches go to the team's helper 0, which runs every layer
 *           (projections, attention, output, routing, experts, combine) and the LM head;
 *   yield:  meanwhile this thread runs the event loop once: the previous step's tokens are written to their SSE
 *           streams, new requests are parsed and tokenized;
 *   join:   then this thread joins the team until the forward is done (llama.cpp's split between the HTTP thread and
 *           the compute threads, with the HTTP thread computing too once its I/O is served).
 *
 * Why: with the forward driven from JavaScript, this thread ran every stage and the step's I/O took turns with the
 * forward while the other core waited (32 clients on 2 cores: about a fifth of the thread's time was HTTP and
 * streams, bench/RESULTS.md). The numbers are those of the JavaScript-driven path bit for bit: the same native
 * functions in the same order, and routing (router/gate.ts topK, planDispatch without a capacity) replayed value
 * for value (test/fused-forward.test.ts).
 *
 * Used by MoeModel where it applies: experts in-process (their dense kernels), the native trunk and attention, no
 * capacity factor and no per-layer routing hook. One forward at a time per process (the team is process-wide).
 */
import { expertCapacity } from '../../router/index.ts';
import type { FusedExperts } from '../../experts/in-process.ts';
import { loadKernelAddon, type KernelAddon, type NativeStatus } from '../../experts/kernels/native-addon.ts';
import type { KvCache } from './kv-cache.ts';
import type { LayerTrace, Routing } from './moe-layer.ts';

export type { FusedExperts };

interface Addon extends KernelAddon {
  forwardBegin(model: object, step: object): void;
  forwardJoin(): void;
}

/** The model.node addon's forward, once per thread; never throws. */
export function fusedForwardAddon(): NativeStatus<Addon> {
  return loadKernelAddon<Addon>('model.node', 'native model');
}

export interface FusedModel {
  /** The native trunk's layer handles and its head handle (NativeTrunk.handles). */
  layers: object[];
  head: object;
  experts: FusedExperts;
  heads: number;
  kvHeads: number;
  headDim: number;
  /** Attention's softmax scale. */
  scale: number;
  routing: Routing;
  numExperts: number;
  vocab: number;
}

export interface FusedStep {
  caches: KvCache[];
  /** New tokens per sequence. */
  counts: number[];
  /** Embedded rows [T, d], cos/sin [T, head_dim] of the packed tokens. */
  x: Float32Array;
  cos: Float32Array;
  sin: Float32Array;
  /** Rows (of the T packed ones) that need logits, in output order. */
  headRows: Uint32Array;
}

/** Steps of fused models started and not yet finished, in this thread (the one running and those queued behind it). */
let running = 0;
let turn: Promise<unknown> = Promise.resolve();

/**
 * Runs `step` when no other step of a fused model runs in this thread: the compute team and the fused forward's
 * scratch are the process's, and the experts' kernels keep per-expert scratch. Started at once (synchronously) when
 * none runs, so that the team computes before the caller's queued microtasks (the last step's stream writes) run.
 */
export function oneAtATime<T>(step: () => Promise<T>): Promise<T> {
  const run = running > 0 ? turn.then(step) : step();
  running++;
  const done = run.finally(() => running--);
  turn = done.catch(() => undefined);
  return done;
}

export class FusedForward {
  private readonly model: object;

  constructor(private readonly addon: Addon, private readonly spec: FusedModel) {
    this.model = {
      layers: spec.layers, head: spec.head, experts: spec.experts.kernelHandles(), heads: spec.heads, kvHeads: spec.kvHeads,
      headDim: spec.headDim, scale: spec.scale, k: spec.routing.k, renormalize: spec.routing.renormalize, residualScale: spec.routing.residualScale ?? 1,
    };
  }

  /**
   * Runs the step: returns logits [headRows.length, vocab] and each layer's trace. Writes the new K/V rows into the
   * caches (reserving room first) but does not advance their lengths (MoeModel.forward does). Throws a RangeError
   * for inconsistent inputs before anything runs.
   */
  async run(step: FusedStep): Promise<{ logits: Float32Array; layers: LayerTrace[] }> {
    const { spec } = this;
    const L = spec.layers.length;
    const S = step.caches.length;
    const T = step.counts.reduce((n, c) => n + c, 0);
    const k = spec.routing.k;
    const keys: Float32Array[] = new Array(L * S);
    const values: Float32Array[] = new Array(L * S);
    const caps = new Uint32Array(L * S);
    const pasts = new Uint32Array(S);
    const counts = Uint32Array.from(step.counts);
    step.caches.forEach((cache, s) => {
      pasts[s] = cache.length;
      for (let l = 0; l < L; l++) {
        cache.reserve(l, cache.length + counts[s]);
        keys[l * S + s] = cache.keys[l];
        values[l * S + s] = cache.values[l];
        caps[l * S + s] = cache.capacityOf(l);
      }
    });
    const out = {
      x: step.x, cos: step.cos, sin: step.sin, keys, values, caps, pasts, counts, headRows: step.headRows,
      logits: new Float32Array(step.headRows.length * spec.vocab),
      choices: new Int32Array(L * T * k), gates: new Float32Array(L * T * k), moeMs: new Float64Array(L),
    };
    this.addon.forwardBegin(this.model, out);
    // The team computes; this thread serves the event loop once (the last step's stream writes, new requests), then
    // computes too. Every array above stays referenced (`out`) until the join.
    await new Promise<void>((resolve) => setImmediate(resolve));
    this.addon.forwardJoin();
    const layers: LayerTrace[] = [];
    const capacity = expertCapacity(T * k, spec.numExperts, null);
    for (let l = 0; l < L; l++) {
      const expert = out.choices.subarray(l * T * k, (l + 1) * T * k);
      const tokensPerExpert = new Array<number>(spec.numExperts).fill(0);
      for (const e of expert) tokensPerExpert[e]++;
      layers.push({
        layer: l, k, expert, gate: out.gates.subarray(l * T * k, (l + 1) * T * k), tokensPerExpert, overflow: 0, capacity,
        workers: spec.experts.recordLayer(l, tokensPerExpert, out.moeMs[l]), dispatchMs: out.moeMs[l],
      });
    }
    return { logits: out.logits, layers };
  }
}
