/**
 * Dispatch and combine. Tokens are grouped by their chosen expert; with a capacity factor, an expert takes at
 * most ceil(factor · tokens / experts) of them in token order and the rest overflow: their MoE output is zero,
 * so they pass through on the residual alone (Switch Transformer). A null factor drops nothing.
 */

export interface ExpertBatch {
  expert: number;
  /** Token indices (rows of the step's activations) this expert processes, in token order. */
  rows: number[];
}

export interface DispatchPlan {
  batches: ExpertBatch[];
  /** Token indices that overflowed their expert's capacity. */
  overflow: number[];
  capacity: number;
}

export function expertCapacity(tokens: number, experts: number, capacityFactor: number | null): number {
  if (capacityFactor === null) return tokens;
  return Math.max(1, Math.ceil((capacityFactor * tokens) / experts));
}

export function planDispatch(choice: Int32Array, experts: number, capacityFactor: number | null): DispatchPlan {
  const capacity = expertCapacity(choice.length, experts, capacityFactor);
  const rowsByExpert: number[][] = Array.from({ length: experts }, () => []);
  const overflow: number[] = [];
  choice.forEach((e, token) => {
    const rows = rowsByExpert[e];
    if (rows.length < capacity) rows.push(token);
    else overflow.push(token);
  });
  const batches = rowsByExpert.flatMap((rows, expert) => (rows.length > 0 ? [{ expert, rows }] : []));
  return { batches, overflow, capacity };
}

/** Copies the rows of x [tokens, hidden] that a batch needs into one contiguous block. */
export function gatherRows(x: Float32Array, rows: number[], hidden: number): Float32Array {
  const out = new Float32Array(rows.length * hidden);
  rows.forEach((row, i) => out.set(x.subarray(row * hidden, (row + 1) * hidden), i * hidden));
  return out;
}

/** residual[row] += gate[row] · expertOut[i] for each of the batch's rows (in place). */
export function combineInto(residual: Float32Array, expertOut: Float32Array, rows: number[], gate: Float32Array, hidden: number): void {
  rows.forEach((row, i) => {
    const g = gate[row];
    const dst = row * hidden;
    const src = i * hidden;
    for (let j = 0; j < hidden; j++) residual[dst + j] += Math.fround(g * expertOut[src + j]);
  });
}
