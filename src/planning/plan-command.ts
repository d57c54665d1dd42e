/** `switchyard plan`: read a load trace, simulate 1..K workers, print a recommendation (and optionally an SVG). */
import { writeFileSync } from 'node:fs';
import { placementToFile } from '../placement/placement.ts';
import { planCapacity, planHostCapacity, type CapacityPlan, type HostShape } from './capacity.ts';
import { clusterPlacementToFile } from '../placement/cluster.ts';
import { planSvg } from './svg.ts';
import { readLoadTrace, traceGaps, TraceError, type LoadTrace } from './trace.ts';

export interface PlanCommandOptions {
  trace: string;
  targetTokensPerS?: number;
  p99Ms?: number;
  workersMax: number;
  cores: number;
  maxExpertsPerWorker: number | null;
  minSplitRows: number;
  svg?: string;
  out?: string;
  /** Plan expert hosts (scale-out over NATS) of this shape instead of one machine's workers. */
  hosts?: HostShape;
}

export interface PlanIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

const n = (x: number, digits = 1) => x.toFixed(digits);

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`;
  return [line(header), `|${widths.map((w, i) => (i === 0 ? ':' : '-') + '-'.repeat(w) + (i === 0 ? '-' : ':')).join('|')}|`, ...rows.map(line)].join('\n');
}

export function formatPlan(trace: LoadTrace, plan: CapacityPlan, options: PlanCommandOptions): string {
  const c = plan.cost;
  const out: string[] = [];
  const tokens = trace.steps.reduce((s, x) => s + x.tokens, 0);
  out.push(`trace: ${trace.steps.length} steps (${trace.lines} lines${trace.skipped ? `, ${trace.skipped} skipped` : ''}), ${trace.layers} layers × ${trace.experts} experts, ${tokens} tokens, ${trace.workers} workers seen`);
  const gaps = traceGaps(trace);
  if (gaps.length > 0) {
    const count = (kind: string) => gaps.filter((g) => g.kind === kind).length;
    const missing = gaps.reduce((sum, g) => sum + g.missingSteps, 0);
    out.push(`gaps: ${[
      count('idle') ? `${count('idle')} idle stretch${count('idle') === 1 ? '' : 'es'} (no steps for ≥ 1 s)` : null,
      missing ? `${missing} step${missing === 1 ? '' : 's'} missing from the trace` : null,
      count('restart') ? `${count('restart')} gateway restart${count('restart') === 1 ? '' : 's'}` : null,
    ].filter((x) => x !== null).join(', ')}${options.svg ? ' (marked in the SVG)' : ''}`);
  }
  out.push(`cost model: ${n(c.perTokenMs * 1000, 2)} µs per token row + ${n(c.perExpertMs * 1000, 1)} µs per expert batch on a worker; ` +
    `${n(c.taskOverheadMs, 3)} ms per task round trip + ${n(c.dispatchOverheadMs, 3)} ms per layer dispatch; ` +
    `trunk ${n(c.trunkFixedMs, 3)} ms + ${n(c.trunkPerTokenMs * 1000, 1)} µs per token per step (fitted on ${c.tasks} tasks, ${c.steps} steps)`);
  const cal = plan.calibration;
  const err = cal.measuredStepMs > 0 ? ((cal.predictedStepMs - cal.measuredStepMs) / cal.measuredStepMs) * 100 : 0;
  out.push(`calibration: on the trace's own dispatches (${cal.workers} workers, measured balancedness ${n(cal.balance.overall, 3)}) the model predicts ` +
    `${n(cal.predictedStepMs, 3)} ms per step vs ${n(cal.measuredStepMs, 3)} ms measured (${err >= 0 ? '+' : ''}${n(err)} %)`);
  out.push(`simulated on ${options.cores} cores, at the trace's batch sizes (more workers shorten steps; they do not add clients)`);
  out.push('');
  out.push(table(
    ['workers', 'replicas', 'balancedness rr → planned', 'output tok/s rr → planned', 'tokens/s planned', 'step p50 / p99 ms'],
    plan.scenarios.map((s) => [
      String(s.workers) + (s === plan.recommended ? ' *' : ''), String(s.replicas),
      `${n(s.before.balance.overall, 3)} → ${n(s.after.balance.overall, 3)}`,
      `${n(s.before.replay.outputTokensPerS)} → ${n(s.after.replay.outputTokensPerS)}`,
      n(s.after.replay.tokensPerS), `${n(s.after.replay.stepMsP50, 3)} / ${n(s.after.replay.stepMsP99, 3)}`,
    ]),
  ));
  const r = plan.recommended;
  const targets = [
    options.targetTokensPerS !== undefined ? `≥ ${options.targetTokensPerS} output tok/s` : null,
    options.p99Ms !== undefined ? `p99 step ≤ ${options.p99Ms} ms` : null,
  ].filter((x) => x !== null);
  out.push('');
  out.push(`recommended: ${r.workers} worker${r.workers === 1 ? '' : 's'} (${plan.reason}${targets.length ? `; targets: ${targets.join(', ')}` : ''})`);
  out.push(`  predicted balancedness ${n(r.after.balance.overall, 3)} (per layer ${r.after.balance.perLayer.map((b) => n(b, 3)).join(', ')}), ` +
    `${n(r.after.replay.outputTokensPerS)} output tok/s, ${n(r.after.replay.tokensPerS)} tokens/s, p99 step ${n(r.after.replay.stepMsP99, 3)} ms`);
  const hot = r.placement.hosts.flatMap((row, l) => row.flatMap((ws, e) => (ws.length > 1 ? [`${l}.${e}×${ws.length}`] : [])));
  out.push(`  replicated experts (layer.expert×copies): ${hot.length ? hot.join(', ') : 'none'}`);
  out.push('');
  out.push(options.out ? `placement written to ${options.out}` : 'placement (PUT /admin/placement, or placementFile):');
  if (!options.out) out.push(JSON.stringify(placementToFile(r.placement)));
  if (options.svg) out.push(`SVG written to ${options.svg}`);
  return out.join('\n');
}

/** Returns the exit code: 0 done, 1 the trace cannot be used. */
export async function runPlan(options: PlanCommandOptions, io: PlanIo): Promise<number> {
  let trace: LoadTrace;
  try {
    trace = await readLoadTrace(options.trace);
  } catch (error) {
    if (error instanceof TraceError || typeof (error as NodeJS.ErrnoException).code === 'string') {
      io.stderr(`switchyard plan: ${(error as Error).message}`);
      return 1;
    }
    throw error;
  }
  if (trace.skipped > 0) io.stderr(`switchyard plan: skipped ${trace.skipped} malformed lines (${trace.problems.join('; ')})`);
  if (options.hosts) return runHostPlan(trace, options, options.hosts, io);
  let plan: CapacityPlan;
  try {
    plan = planCapacity(trace, options);
  } catch (error) {
    io.stderr(`switchyard plan: ${(error as Error).message}`);
    return 1;
  }
  try {
    if (options.out) writeFileSync(options.out, JSON.stringify(placementToFile(plan.recommended.placement), null, 2) + '\n');
    if (options.svg) writeFileSync(options.svg, planSvg(trace, plan));
  } catch (error) {
    io.stderr(`switchyard plan: cannot write output: ${(error as Error).message}`);
    return 1;
  }
  io.stdout(formatPlan(trace, plan, options));
  return 0;
}

/** `switchyard plan --hosts-max H`: expert hosts of one shape; the recommended placement is a cluster placement. */
function runHostPlan(trace: LoadTrace, options: PlanCommandOptions, shape: HostShape, io: PlanIo): number {
  let plan: ReturnType<typeof planHostCapacity>;
  try {
    plan = planHostCapacity(trace, shape, options);
  } catch (error) {
    io.stderr(`switchyard plan: ${(error as Error).message}`);
    return 1;
  }
  const r = plan.recommended;
  const names = (p: typeof r.placement) => ({ hosts: p.hosts.map((row) => row.map((ws) => ws.map((w) => `host-${w}`))) });
  const file = clusterPlacementToFile(names(r.placement));
  try {
    if (options.out) writeFileSync(options.out, JSON.stringify(file, null, 2) + '\n');
  } catch (error) {
    io.stderr(`switchyard plan: cannot write output: ${(error as Error).message}`);
    return 1;
  }
  const out: string[] = [];
  out.push(`trace: ${trace.steps.length} steps, ${trace.layers} layers × ${trace.experts} experts; hosts of ${shape.workersPerHost} workers on ${shape.coresPerHost} cores, ${n(shape.rttMs, 2)} ms network round trip per layer`);
  out.push('');
  out.push(table(['hosts', 'balancedness', 'output tok/s', 'tokens/s', 'step p50 / p99 ms'], plan.scenarios.map((s) => [
    String(s.hosts) + (s === r ? ' *' : ''), n(s.balance.overall, 3), n(s.replay.outputTokensPerS), n(s.replay.tokensPerS),
    `${n(s.replay.stepMsP50, 3)} / ${n(s.replay.stepMsP99, 3)}`,
  ])));
  out.push('');
  out.push(`recommended: ${r.hosts} host${r.hosts === 1 ? '' : 's'} (${plan.reason})`);
  out.push(options.out ? `cluster placement written to ${options.out} (hosts named host-0, host-1, ...)` : 'cluster placement (nats.placementFile or PUT /admin/cluster/placement; rename host-N to your host ids):');
  if (!options.out) out.push(JSON.stringify(file));
  io.stdout(out.join('\n'));
  return 0;
}

