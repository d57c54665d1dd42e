/**
 * The MoE half of a layer, as one function: route → dispatch plan → run experts → combine.
 *
 *   x = x + moe(x):  logits = moe_input · routerᵀ (dropped experts masked) → top-1 (fp32 softmax, gate)
 *                    → plan (token rows per expert, capacity) → runner.runLayer → h += gate · expert(x)
 *
 * The experts run behind `ExpertRunner`: the Piscina pool (experts/pool.ts), a remote runner, or an in-process
 * runner in tests (expert-runner.ts).
 */
import { performance } from 'node:perf_hooks';
import { routerLogits, top1, planDispatch, combineInto, type DispatchPlan, type Gating } from '../../router/index.ts';
import type { LayerOutcome, WorkerTiming } from '../../experts/pool.ts';

/** Runs one layer's dispatch plan over x [tokens, d]: each batch's output [rows, d]. ExpertPool implements it. */
export interface ExpertRunner {
  runLayer(layer: number, x: Float32Array, plan: DispatchPlan): Promise<LayerOutcome>;
}

/** What the router and the runner did at one layer in one step: the load telemetry and traces record this. */
export interface LayerTrace {
  layer: number;
  /** Chosen expert and gate per token of the step, sequences back to back in input order. */
  expert: Int32Array;
  gate: Float32Array;
  tokensPerExpert: number[];
  overflow: number;
  capacity: number;
  workers: WorkerTiming[];
  dispatchMs: number;
}

/** A layer's router: its weights [experts, d] and the experts pruning removed (never chosen). */
export interface RouterWeights {
  weights: Float32Array;
  dropped: readonly number[];
}

/**
 * Top-1 routing of x [tokens, d]. Dropped experts get -inf logits, so the softmax and the choice range over the
 * remaining ones.
 */
export function route(x: Float32Array, router: RouterWeights, tokens: number, d: number, experts: number): Gating {
  const logits = routerLogits(x, router.weights, tokens, d, experts);
  for (const e of router.dropped) for (let t = 0; t < tokens; t++) logits[t * experts + e] = -Infinity;
  return top1(logits, tokens, experts);
}

export interface MoeLayerArgs {
  layer: number;
  /** The residual stream after attention, [tokens, d]; the MoE output is added into it in place. */
  h: Float32Array;
  /** post_attention_layernorm(h), [tokens, d]: what the router and the experts see. */
  moeInput: Float32Array;
  tokens: number;
  d: number;
  experts: number;
  router: RouterWeights;
  capacityFactor: number | null;
  runner: ExpertRunner;
  onRouted?: (layer: number, moeInput: Float32Array, expert: Int32Array) => void;
}

/** h += moe(moeInput): route, plan, run the experts, combine (× gate). Returns the layer's trace. */
export async function moeLayer(a: MoeLayerArgs): Promise<LayerTrace> {
  const gating = route(a.moeInput, a.router, a.tokens, a.d, a.experts);
  a.onRouted?.(a.layer, a.moeInput, gating.expert);
  const plan = planDispatch(gating.expert, a.experts, a.capacityFactor);
  const started = performance.now();
  const outcome = await a.runner.runLayer(a.layer, a.moeInput, plan);
  for (const batch of outcome.batches) combineInto(a.h, batch.output, batch.rows, gating.gate, a.d);
  const tokensPerExpert = new Array<number>(a.experts).fill(0);
  for (const b of plan.batches) tokensPerExpert[b.expert] = b.rows.length;
  return {
    layer: a.layer, expert: gating.expert, gate: gating.gate, tokensPerExpert,
    overflow: plan.overflow.length, capacity: plan.capacity, workers: outcome.workers,
    dispatchMs: performance.now() - started,
  };
}
