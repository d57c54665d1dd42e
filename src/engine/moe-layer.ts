/**
 * The MoE half of a layer, as one function: route → dispatch plan → run experts → combine.
 *
 *   x = x + moe(x):  logits = moe_input · routerᵀ (dropped experts masked) → top-k (fp32 softmax, gates)
 *                    → plan (token rows per expert, capacity) → runner.runLayer → h += Σ_k gate · expert(x)
 *
 * The experts run behind `ExpertRunner`: the Piscina pool (experts/pool.ts), the in-process experts on the compute
 * team (experts/in-process.ts, which also gather and combine natively: runLayerInto), a remote runner, or the plain
 * TypeScript reference runner of tests (expert-runner.ts).
 */
import { performance } from 'node:perf_hooks';
import { routerLogits, topK, planDispatch, combineInto, type DispatchPlan, type Gating } from '../../router/index.ts';
import type { HostTiming, LayerOutcome, WorkerTiming } from '../../experts/pool.ts';

/** Runs one layer's dispatch plan over x [tokens, d]: each batch's output [rows, d]. ExpertPool implements it. */
export interface ExpertRunner {
  runLayer(layer: number, x: Float32Array, plan: DispatchPlan): Promise<LayerOutcome>;
  /**
   * Optional, for runners that can combine where they compute (the in-process experts): runs the plan and adds each
   * batch's output × its token's gate × `scale` into h itself — bit for bit what moeLayer's combine does with
   * runLayer's outputs — and returns the outcome without outputs.
   */
  runLayerInto?(layer: number, x: Float32Array, plan: DispatchPlan, gating: Gating, h: Float32Array, scale: number): Promise<Omit<LayerOutcome, 'batches'>>;
}

/** What the router and the runner did at one layer in one step: the load telemetry and traces record this. */
export interface LayerTrace {
  layer: number;
  /** Experts chosen per token. */
  k: number;
  /** Chosen experts and their gates [tokens, k], the step's tokens (sequences back to back in input order). */
  expert: Int32Array;
  gate: Float32Array;
  /** Assignments each expert received (a token counts once for each expert it chose), overflowed ones excluded. */
  tokensPerExpert: number[];
  /** Assignments that overflowed their expert's capacity. */
  overflow: number;
  capacity: number;
  workers: WorkerTiming[];
  /** Expert hosts that ran batches of this layer (scale-out over NATS); absent when every expert ran here. */
  hosts?: HostTiming[];
  dispatchMs: number;
}

/** A layer's router: its weights [experts, d] and the experts pruning removed (never chosen). */
export interface RouterWeights {
  weights: Float32Array;
  dropped: readonly number[];
}

/** How a model routes: experts per token and whether the chosen gates are renormalised (config.json). */
export interface Routing {
  /** num_experts_per_tok. */
  k: number;
  /** norm_topk_prob: divide the k chosen probabilities by their sum. */
  renormalize: boolean;
  /** residual_multiplier: the MoE output's scale before the residual add (Granite-MoE); default 1. */
  residualScale?: number;
}

/**
 * Top-k routing of x [tokens, d]. Dropped experts get -inf logits, so the softmax and the choice range over the
 * remaining ones (k must not exceed them). `logits` [tokens, experts]: x · Wᵀ when the caller computed them already
 * (the batched trunk's output graph); overwritten with the mask.
 */
export function route(
  x: Float32Array, router: RouterWeights, tokens: number, d: number, experts: number, routing: Routing = { k: 1, renormalize: false },
  logits: Float32Array = routerLogits(x, router.weights, tokens, d, experts),
): Gating {
  for (const e of router.dropped) for (let t = 0; t < tokens; t++) logits[t * experts + e] = -Infinity;
  return topK(logits, tokens, experts, routing.k, routing.renormalize);
}

export interface MoeLayerArgs {
  layer: number;
  /** The residual stream after attention, [tokens, d]; the MoE output is added into it in place. */
  h: Float32Array;
  /** post_attention_layernorm(h), [tokens, d]: what the router and the experts see. */
  moeInput: Float32Array;
  /** moe_input · routerᵀ [tokens, experts] if the trunk computed them; else route() does. */
  routerLogits?: Float32Array;
  tokens: number;
  d: number;
  experts: number;
  router: RouterWeights;
  routing: Routing;
  capacityFactor: number | null;
  runner: ExpertRunner;
  /** Sees the layer's expert inputs [tokens, d] and the choices [tokens, k]. */
  onRouted?: RoutedHook;
}

/** A hook on each layer's routing: expert inputs [tokens, d], chosen experts [tokens, k]. */
export type RoutedHook = (layer: number, moeInput: Float32Array, expert: Int32Array, k: number) => void;

/** h += moe(moeInput): route, plan, run the experts, combine (Σ over the k choices of gate × output). Returns the layer's trace. */
export async function moeLayer(a: MoeLayerArgs): Promise<LayerTrace> {
  const gating = route(a.moeInput, a.router, a.tokens, a.d, a.experts, a.routing, a.routerLogits);
  a.onRouted?.(a.layer, a.moeInput, gating.expert, gating.k);
  const plan = planDispatch(gating.expert, a.experts, a.capacityFactor, gating.k);
  const started = performance.now();
  const scale = a.routing.residualScale ?? 1;
  let outcome: Omit<LayerOutcome, 'batches'>;
  if (a.runner.runLayerInto) outcome = await a.runner.runLayerInto(a.layer, a.moeInput, plan, gating, a.h, scale); // plan.batches are in expert order
  else {
    const ran = await a.runner.runLayer(a.layer, a.moeInput, plan);
    // In expert order, so that a token's k contributions always add up in the same order (batch invariance).
    const batches = gating.k === 1 ? ran.batches : [...ran.batches].sort((x, y) => x.expert - y.expert);
    for (const batch of batches) combineInto(a.h, batch.output, batch.rows, batch.expert, gating, a.d, scale);
    outcome = ran;
  }
  const tokensPerExpert = new Array<number>(a.experts).fill(0);
  for (const b of plan.batches) tokensPerExpert[b.expert] = b.rows.length;
  return {
    layer: a.layer, k: gating.k, expert: gating.expert, gate: gating.gate, tokensPerExpert,
    overflow: plan.overflow.length, capacity: plan.capacity, workers: outcome.workers,
    ...(outcome.hosts && outcome.hosts.length > 0 ? { hosts: outcome.hosts } : {}),
    dispatchMs: performance.now() - started,
  };
}
