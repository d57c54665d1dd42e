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
