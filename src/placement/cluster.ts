/**
 * Cluster placement: which hosts serve each (layer, expert) when experts live on other machines (expert hosts over
 * NATS). A host id names an `switchyard expert-host` process, or `gateway` for the gateway's own worker pool;
 * replicas are several hosts. Every expert needs at least one host. Pure data and checks: the gateway publishes it
 * (a JetStream key-value entry), hosts watch it and load what it gives them.
 */
import { z } from 'zod';
import type { ExpertKey } from './placement.ts';

/** The host id of the gateway's own worker pool in a cluster placement. */
export const GATEWAY_HOST = 'gateway';

const hostId = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'a host id is 1-64 letters, digits, _ or -');

export const clusterPlacementSchema = z.object({
  assignments: z.array(z.object({
    layer: z.number().int().nonnegative(),
    expert: z.number().int().nonnegative(),
    hosts: z.array(hostId).min(1).describe(`the hosts that serve this expert ('${GATEWAY_HOST}': the gateway's own workers); replicas allowed`),
  }).strict()),
}).strict();

export type ClusterPlacementFile = z.infer<typeof clusterPlacementSchema>;

export interface ClusterPlacement {
  /** hosts[layer][expert] = the host ids serving it (sorted, non-empty). */
  hosts: string[][][];
}

export class ClusterPlacementError extends Error {
  override readonly name = 'ClusterPlacementError';
}

/** Validates a cluster placement for a model of `layers` × `experts`; throws ClusterPlacementError naming each problem. */
export function parseClusterPlacement(raw: unknown, layers: number, experts: number): ClusterPlacement {
  const parsed = clusterPlacementSchema.safeParse(raw);
  if (!parsed.success) {
    throw new ClusterPlacementError(`cluster placement: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
  }
  const hosts: string[][][] = Array.from({ length: layers }, () => Array.from({ length: experts }, () => []));
  const problems: string[] = [];
  for (const a of parsed.data.assignments) {
    if (a.layer >= layers || a.expert >= experts) {
      problems.push(`layer ${a.layer} expert ${a.expert} is outside the model (layers 0..${layers - 1}, experts 0..${experts - 1})`);
      continue;
    }
    hosts[a.layer][a.expert] = [...new Set([...hosts[a.layer][a.expert], ...a.hosts])].sort();
  }
  const orphans = hosts.flatMap((row, l) => row.flatMap((hs, e) => (hs.length === 0 ? [`${l}.${e}`] : [])));
  if (orphans.length > 0) problems.push(`every expert needs a host; unplaced (layer.expert): ${orphans.join(', ')}`);
  if (problems.length > 0) throw new ClusterPlacementError(`cluster placement: ${problems.join('; ')}`);
  return { hosts };
}

export function clusterPlacementToFile(p: ClusterPlacement): ClusterPlacementFile {
  return { assignments: p.hosts.flatMap((row, layer) => row.map((hosts, expert) => ({ layer, expert, hosts: [...hosts] }))) };
}

/** The experts `host` serves. */
export function expertsOfHost(p: ClusterPlacement, host: string): ExpertKey[] {
  return p.hosts.flatMap((row, layer) => row.flatMap((hs, expert) => (hs.includes(host) ? [{ layer, expert }] : [])));
}

/** Every host the placement names (the gateway included when it serves experts), sorted. */
export function hostsOf(p: ClusterPlacement): string[] {
  return [...new Set(p.hosts.flat(2))].sort();
}

/**
 * The placement without the hosts in `gone` (killed, cut off): each expert keeps its other hosts; one left with none
 * goes to the live host holding the fewest experts (ties: the lower id), or to the gateway when no host is live.
 * Returns null when no expert names a gone host.
 */
export function withoutHosts(p: ClusterPlacement, gone: ReadonlySet<string>, live: readonly string[]): ClusterPlacement | null {
  if (!p.hosts.some((row) => row.some((hs) => hs.some((h) => gone.has(h))))) return null;
  const candidates = live.filter((h) => !gone.has(h) && h !== GATEWAY_HOST).sort();
  const held = new Map(candidates.map((h) => [h, 0]));
  for (const row of p.hosts) for (const hs of row) for (const h of hs) if (held.has(h) && !gone.has(h)) held.set(h, held.get(h)! + 1);
  const hosts = p.hosts.map((row) => row.map((hs) => {
    const kept = hs.filter((h) => !gone.has(h));
    if (kept.length > 0) return kept;
    if (candidates.length === 0) return [GATEWAY_HOST];
    const least = candidates.reduce((a, b) => (held.get(b)! < held.get(a)! ? b : a));
    held.set(least, held.get(least)! + 1);
    return [least];
  }));
  return { hosts };
}

