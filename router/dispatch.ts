/**
 * Dispatch and combine. Each of a token's k assignments goes to its expert's batch; with a capacity factor, an
 * expert takes at most ceil(factor · k · tokens / experts) assignments in token order and the rest overflow: an
 * overflowed assignment contributes nothing, so a token whose assignments all overflow passes through on the
 * residual alone (Switch Transformer). A null factor drops nothing.
 */
import type { Gating } from './gate.ts';

export interface ExpertBatch {
  expert: number;
  /** Token indices (rows of the step's activations) this expert processes, in token order. */
  rows: number[];
}

export interface DispatchPlan {
  batches: ExpertBatch[];
  /** The token index of each assignment that overflowed its expert's capacity (a token appears once per dropped assignment). */
  overflow: number[];
  capacity: number;
}

/** Assignments one expert takes in a step of `assignments` (tokens × k); null factor: all of them. */
export function expertCapacity(assignments: number, experts: number, capacityFactor: number | null): number {
  if (capacityFactor === null) return assignments;
  return Math.max(1, Math.ceil((capacityFactor * assignments) / experts));
}

/**
 * Groups the assignments `choice` [tokens, k] (experts chosen per token) by expert. Batches come in expert order;
 * a token's rows are in token order within each batch.
 */
export function planDispatch(choice: Int32Array, experts: number, capacityFactor: number | null, k = 1): DispatchPlan {
  const capacity = expertCapacity(choice.length, experts, capacityFactor);
  // Plain loops: this runs once per layer and step on the thread that also runs the model.
  const rowsByExpert: number[][] = new Array(experts);
  for (let e = 0; e < experts; e++) rowsByExpert[e] = [];
  const overflow: number[] = [];
  for (let slot = 0; slot < choice.length; slot++) {
    const token = k === 1 ? slot : Math.floor(slot / k);
    const rows = rowsByExpert[choice[slot]];
    if (rows.length < capacity) rows.push(token);
    else overflow.push(token);
  }
  const batches: Array<{ expert: number; rows: number[] }> = [];
  for (let expert = 0; expert < experts; expert++) if (rowsByExpert[expert].length > 0) batches.push({ expert, rows: rowsByExpert[expert] });
  return { batches, overflow, capacity };
}

/**
 * Copies the rows of x [tokens, hidden] that a batch needs into one contiguous block: a new one, or `out` from row
 * `at` on (several batches packed back to back).
 */
export function gatherRows(x: Float32Array, rows: number[], hidden: number, out = new Float32Array(rows.length * hidden), at = 0): Float32Array {
  for (let i = 0; i < rows.length; i++) out.set(x.subarray(rows[i] * hidden, (rows[i] + 1) * hidden), (at + i) * hidden);
  return out;
}

/**
 * residual[row] += gate(row, expert) · scale · expertOut[i] for each of the batch's rows (in place), where
 * gate(row, expert) is the gate of the token's choice of `expert` in `gating` and `scale` the model's residual
 * multiplier (Granite-MoE; 1 elsewhere). Batches are combined in the order given, so a token's k contributions add
 * up in expert order.
 */
export function combineInto(
  residual: Float32Array, expertOut: Float32Array, rows: number[], expert: number, gating: Pick<Gating, 'k' | 'expert' | 'gate'>, hidden: number,
  scale = 1,
): void {
  const { k } = gating;
  rows.forEach((row, i) => {
    let slot = row * k;
    while (gating.expert[slot] !== expert) slot++; // the token chose `expert` (it is in its batch)
    const g = scale === 1 ? gating.gate[slot] : Math.fround(gating.gate[slot] * scale);
    const dst = row * hidden;
    const src = i * hidden;
    for (let j = 0; j < hidden; j++) residual[dst + j] += Math.fround(g * expertOut[src + j]);
  });
}
