/**
 * Expert placement: which workers host each (layer, expert). Replicas are allowed; every expert must be hosted
 * at least once. Pure data and checks; the pool applies a placement.
 */
import { z } from 'zod';

export interface ExpertKey {
  layer: number;
  expert: number;
}

export interface Placement {
  workers: number;
  /** hosts[layer][expert] = worker ids hosting it (sorted, non-empty). */
  hosts: number[][][];
}

export const placementFileSchema = z.object({
  workers: z.number().int().positive().describe('number of expert workers'),
  assignments: z
    .array(z.object({ layer: z.number().int().nonnegative(), expert: z.number().int().nonnegative(), workers: z.array(z.number().int().nonnegative()).min(1) }).strict())
    .describe('the workers that host each expert; replicas allowed'),
}).strict();

export type PlacementFile = z.infer<typeof placementFileSchema>;

/** Expert g = layer·experts + expert goes to worker g mod workers: every worker gets a near-equal share. */
export function roundRobinPlacement(layers: number, experts: number, workers: number): Placement {
  const hosts = Array.from({ length: layers }, (_, l) => Array.from({ length: experts }, (_, e) => [(l * experts + e) % workers]));
  return { workers, hosts };
}

export class PlacementError extends Error {
  override readonly name = 'PlacementError';
}

export function placementFromFile(file: PlacementFile, layers: number, experts: number): Placement {
  const hosts: number[][][] = Array.from({ length: layers }, () => Array.from({ length: experts }, () => []));
  for (const a of file.assignments) {
    if (a.layer >= layers) throw new PlacementError(`assignment names layer ${a.layer}, but the model has layers 0..${layers - 1}`);
    if (a.expert >= experts) throw new PlacementError(`assignment names expert ${a.expert}, but the model has experts 0..${experts - 1}`);
    for (const w of a.workers) {
      if (w >= file.workers) throw new PlacementError(`layer ${a.layer} expert ${a.expert} is placed on worker ${w}, but there are workers 0..${file.workers - 1}`);
    }
    hosts[a.layer][a.expert] = [...new Set([...hosts[a.layer][a.expert], ...a.workers])].sort((x, y) => x - y);
  }
  const orphans = hosts.flatMap((row, l) => row.flatMap((ws, e) => (ws.length === 0 ? [`${l}.${e}`] : [])));
  if (orphans.length > 0) throw new PlacementError(`every expert must be hosted at least once; unplaced (layer.expert): ${orphans.join(', ')}`);
  return { workers: file.workers, hosts };
}

export function placementToFile(p: Placement): PlacementFile {
  return {
    workers: p.workers,
    assignments: p.hosts.flatMap((row, layer) => row.map((workers, expert) => ({ layer, expert, workers: [...workers] }))),
  };
}

/**
 * A placement over `current`'s workers holding exactly the experts `wanted` names: an expert keeps the workers it
 * has in `current`, a new one goes to the worker holding the fewest experts (the lowest id on ties, so an empty
 * `current` fills round-robin). Expert hosts and the gateway's own workers in a cluster follow placement changes
 * with it.
 */
export function placeOnWorkers(current: Placement, wanted: (layer: number, expert: number) => boolean): Placement {
  const count = new Array<number>(current.workers).fill(0);
  for (const row of current.hosts) for (const ws of row) for (const w of ws) count[w]++;
  const hosts = current.hosts.map((row, layer) => row.map((held, expert) => {
    if (!wanted(layer, expert)) return [];
    if (held.length > 0) return [...held];
    const w = count.indexOf(Math.min(...count));
    count[w]++;
    return [w];
  }));
  return { workers: current.workers, hosts };
}

/** The experts a worker must hold. */
export function expertsOfWorker(p: Placement, worker: number): ExpertKey[] {
  return p.hosts.flatMap((row, layer) => row.flatMap((ws, expert) => (ws.includes(worker) ? [{ layer, expert }] : [])));
}

/**
 * Picks a host for each expert batch of one layer: among an expert's replicas, the worker with the fewest
 * tokens assigned so far in this step (ties to the lowest id), largest batches first.
 */
export function chooseReplicas(p: Placement, layer: number, batches: Array<{ expert: number; rows: number[] }>): number[] {
  const load = new Array<number>(p.workers).fill(0);
  const choice = new Array<number>(batches.length);
  const order = batches.map((_, i) => i).sort((a, b) => batches[b].rows.length - batches[a].rows.length || a - b);
  for (const i of order) {
    const hosts = p.hosts[layer][batches[i].expert];
    let best = hosts[0];
    for (const w of hosts) if (load[w] < load[best]) best = w;
    choice[i] = best;
    load[best] += batches[i].rows.length;
  }
  return choice;
}

/**
 * Water-filling: pours `amount` onto bins that already hold `levels`, always into the lowest ones, so that the
 * bins that receive anything end level. Returns each bin's share (real numbers summing to `amount`).
 */
export function waterFill(levels: readonly number[], amount: number): number[] {
  const order = levels.map((_, i) => i).sort((a, b) => levels[a] - levels[b] || a - b);
  let level = 0;
  let used = 0;
  // Raise the water over the k lowest bins until it reaches the next bin's level or the amount runs out.
  for (let k = 1; k <= order.length; k++) {
    const sum = order.slice(0, k).reduce((n, i) => n + levels[i], 0);
    level = (amount + sum) / k;
    used = k;
    if (k === order.length || level <= levels[order[k]]) break;
  }
  const shares = new Array<number>(levels.length).fill(0);
  for (const i of order.slice(0, used)) shares[i] = Math.max(0, level - levels[i]);
  return shares;
}

/** Whole-number water-filling: floors the shares and gives the leftover units to the largest fractions. */
export function waterFillIntegers(levels: readonly number[], amount: number): number[] {
  const shares = waterFill(levels, amount);
  const whole = shares.map(Math.floor);
  let left = amount - whole.reduce((a, b) => a + b, 0);
  const byFraction = shares.map((s, i) => i).sort((a, b) => (shares[b] - whole[b]) - (shares[a] - whole[a]) || levels[a] - levels[b] || a - b);
  for (let j = 0; left > 0; j = (j + 1) % byFraction.length, left--) whole[byFraction[j]]++;
  return whole;
}

/** Default for `minSplitRows`: a smaller batch costs less to run whole than to split (one more session.run). */
export const MIN_SPLIT_ROWS = 32;

/** One worker's share of one expert batch: a contiguous slice of the batch's rows. */
export interface BatchPart {
  /** Index into the layer's batches. */
  batch: number;
  worker: number;
  rows: number[];
}

/** `splitCounts`' answer: `rows` rows of batch `batch`, starting at row `offset` of that batch, go to `worker`. */
export interface CountPart {
  batch: number;
  worker: number;
  offset: number;
  rows: number;
}

/**
 * Assigns each expert batch of one layer (given by its row count) to workers. Experts with one host go there;
 * replicated experts, largest batches first, are water-filled over their least-loaded hosts: a batch of n rows
 * is split over at most floor(n / minSplitRows) hosts (so small batches stay whole), evening out the rows each
 * worker runs this step. The pool dispatches with this; the capacity planner simulates with it.
 */
export function splitCounts(
  p: Placement, layer: number, batches: ReadonlyArray<{ expert: number; rows: number }>, minSplitRows = MIN_SPLIT_ROWS,
): CountPart[] {
  const load = new Array<number>(p.workers).fill(0);
  const parts: CountPart[] = [];
  const replicated: number[] = [];
  batches.forEach((b, i) => {
    const hosts = p.hosts[layer][b.expert];
    if (hosts.length === 1) {
      parts.push({ batch: i, worker: hosts[0], offset: 0, rows: b.rows });
      load[hosts[0]] += b.rows;
    } else replicated.push(i);
  });
  replicated.sort((a, b) => batches[b].rows - batches[a].rows || a - b);
  for (const i of replicated) {
    const n = batches[i].rows;
    const hosts = [...p.hosts[layer][batches[i].expert]].sort((a, b) => load[a] - load[b] || a - b);
    const k = Math.max(1, Math.min(hosts.length, Math.floor(n / Math.max(1, minSplitRows))));
    const chosen = hosts.slice(0, k).sort((a, b) => a - b);
    const shares = waterFillIntegers(chosen.map((w) => load[w]), n);
    let offset = 0;
    chosen.forEach((w, j) => {
      if (shares[j] === 0) return;
      parts.push({ batch: i, worker: w, offset, rows: shares[j] });
      load[w] += shares[j];
      offset += shares[j];
    });
  }
  return parts;
}

/**
 * splitCounts over real batches: each part carries its slice of the batch's row indices. Every row of every batch
 * lands in exactly one part; splitting does not change results (an expert FFN computes each row independently).
 */
export function assignBatches(
  p: Placement, layer: number, batches: ReadonlyArray<{ expert: number; rows: number[] }>, minSplitRows = MIN_SPLIT_ROWS,
): BatchPart[] {
  const parts = splitCounts(p, layer, batches.map((b) => ({ expert: b.expert, rows: b.rows.length })), minSplitRows);
  return parts.map((x) => ({ batch: x.batch, worker: x.worker, rows: batches[x.batch].rows.slice(x.offset, x.offset + x.rows) }));
}

/** Limits a placement must respect besides the model's shape. */
export interface PlacementLimits {
  layers: number;
  experts: number;
  /** Most workers a placement may use (new ones are started on demand). */
  maxWorkers: number;
  /** Most experts (all layers together) one worker may hold; null: no limit. */
  maxExpertsPerWorker: number | null;
}

/**
 * Checks a placement file against the model and the limits, collecting every problem (not just the first) as a
 * sentence that says how to fix it. Returns the placement, or the problems.
 */
export function validatePlacement(raw: unknown, limits: PlacementLimits): { placement: Placement; errors: [] } | { placement: null; errors: string[] } {
  const parsed = placementFileSchema.safeParse(raw);
  if (!parsed.success) {
    const errors = parsed.error.issues.map((i) => `${i.path.length > 0 ? i.path.join('.') : '(body)'}: ${i.message}`);
    errors.push('expected {"workers": N, "assignments": [{"layer": L, "expert": E, "workers": [w, ...]}, ...]}');
    return { placement: null, errors };
  }
  const file = parsed.data;
  const { layers, experts } = limits;
  const errors: string[] = [];
  if (file.workers > limits.maxWorkers) {
    errors.push(`workers is ${file.workers}, but at most ${limits.maxWorkers} are allowed (admin.maxWorkers)`);
  }
  const hosts: number[][][] = Array.from({ length: layers }, () => Array.from({ length: experts }, () => []));
  for (const [i, a] of file.assignments.entries()) {
    if (a.layer >= layers) errors.push(`assignments.${i}: layer ${a.layer} does not exist; the model has layers 0..${layers - 1}`);
    if (a.expert >= experts) errors.push(`assignments.${i}: expert ${a.expert} does not exist; the model has experts 0..${experts - 1}`);
    const bad = a.workers.filter((w) => w >= file.workers);
    if (bad.length > 0) {
      errors.push(`assignments.${i}: layer ${a.layer} expert ${a.expert} is placed on worker ${bad.join(', ')}, but workers are 0..${file.workers - 1}; raise "workers" or use an existing worker`);
    }
    if (a.layer < layers && a.expert < experts) {
      const row = hosts[a.layer][a.expert];
      for (const w of a.workers) if (w < file.workers && !row.includes(w)) row.push(w);
    }
  }
  const orphans = hosts.flatMap((row, l) => row.flatMap((ws, e) => (ws.length === 0 ? [`${l}.${e}`] : [])));
  if (orphans.length > 0) {
    errors.push(`every expert must be hosted at least once; not placed on any worker (layer.expert): ${orphans.join(', ')}`);
  }
  if (limits.maxExpertsPerWorker !== null) {
    for (let w = 0; w < file.workers; w++) {
      const held = hosts.reduce((n, row) => n + row.filter((ws) => ws.includes(w)).length, 0);
      if (held > limits.maxExpertsPerWorker) {
        errors.push(`worker ${w} would hold ${held} experts, over the memory budget of ${limits.maxExpertsPerWorker} per worker (placement.maxExpertsPerWorker); move some to other workers or drop replicas`);
      }
    }
  }
  if (errors.length > 0) return { placement: null, errors };
  for (const row of hosts) for (const ws of row) ws.sort((a, b) => a - b);
  return { placement: { workers: file.workers, hosts }, errors: [] };
}

export function samePlacement(a: Placement, b: Placement): boolean {
  return a.workers === b.workers && JSON.stringify(a.hosts) === JSON.stringify(b.hosts);
}
