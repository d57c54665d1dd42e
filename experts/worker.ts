/**
 * An expert worker: loads only the experts its placement gives it (reading just their bytes from the package)
 * and runs expert FFN batches. One instance per worker thread. Each expert gets a kernel when it loads
 * (kernels/select.ts: dense/structured onnxruntime, our native sparse kernel, or int8/int4 when configured), checked
 * against the reference FFN; `stats` reports every resident expert's kernel. `load` and `unload` tasks change the
 * resident set while serving (live placement changes); the pool sends them only when it is safe.
 */
import { threadId, workerData } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { Piscina } from 'piscina';
import { log } from '../src/log.ts';
import { readSafetensorsHeader } from '../src/engine/safetensors.ts';
import { readExpertWeights } from './expert-weights.ts';
import { selectKernel } from './kernels/select.ts';
import { DEFAULT_KERNEL_SETTINGS, type ExpertKernel, type KernelReport } from './kernels/types.ts';
import { expertKey, type ResidencyResult, type RunResult, type WorkerSetup, type WorkerStats, type WorkerTask } from './protocol.ts';

type ExpertRef = WorkerSetup['experts'][number];
interface Resident {
  kernel: ExpertKernel;
  report: KernelReport;
}

/** Builds each expert's kernel, reading just those experts' bytes from the package. */
async function loadExperts(setup: WorkerSetup, experts: ExpertRef[], residents: Map<string, Resident>): Promise<void> {
  const missing = experts.filter(({ layer, expert }) => !residents.has(expertKey(layer, expert)));
  if (missing.length === 0) return;
  const header = readSafetensorsHeader(setup.weightsFile);
  const settings = setup.kernel ?? DEFAULT_KERNEL_SETTINGS;
  for (const { layer, expert } of missing) {
    // Dense, structurally pruned (fewer neurons) or sparse-bitmask storage: all become dense weights here.
    const weights = readExpertWeights(setup.weightsFile, header, layer, expert, setup.hidden);
    const { kernel, report } = await selectKernel(weights, setup.hidden, {
      ...settings, threads: setup.threads, executionProviders: setup.executionProviders, modelFfn: setup.ffn,
      name: `expert_${layer}_${expert}`,
    });
    if (report.fallback) log.warn('expert kernel fallback', { worker: setup.workerId, layer, expert, reason: report.fallback });
    residents.set(expertKey(layer, expert), { kernel, report });
  }
}

export async function initialize() {
  const setup = workerData as WorkerSetup;
  const residents = new Map<string, Resident>();
  await loadExperts(setup, setup.experts, residents);
  // Tasks run one at a time on this thread (one task per worker), so a load or unload never overlaps a run.
  const resident = () => [...residents.keys()].map((key) => {
    const [layer, expert] = key.split('.').map(Number);
    return { layer, expert };
  }).sort((a, b) => a.layer - b.layer || a.expert - b.expert);
  const ran: WorkerStats['ran'] = {};
  let busyMs = 0;

  async function run(task: Extract<WorkerTask, { kind: 'run' }>) {
    const started = performance.now();
    const output = new Float32Array(task.input.length);
    let offset = 0;
    for (const item of task.items) {
      const key = expertKey(item.layer, item.expert);
      const held = residents.get(key);
      if (!held) throw new Error(`worker ${setup.workerId} does not host expert ${key}`);
      const size = item.tokens * setup.hidden;
      await held.kernel.run(task.input.subarray(offset, offset + size), item.tokens, output.subarray(offset, offset + size));
      offset += size;
      const counter = (ran[key] ??= { tasks: 0, tokens: 0 });
      counter.tasks++;
      counter.tokens += item.tokens;
    }
    const computeMs = performance.now() - started;
    busyMs += computeMs;
    const result: RunResult = { workerId: setup.workerId, output, computeMs };
    return Piscina.move(transferable(result) as never);
  }

  async function residency(task: Extract<WorkerTask, { kind: 'load' | 'unload' }>): Promise<ResidencyResult> {
    const started = performance.now();
    if (task.kind === 'load') await loadExperts(setup, task.experts, residents);
    else {
      for (const { layer, expert } of task.experts) {
        const key = expertKey(layer, expert);
        const held = residents.get(key);
        if (!held) continue;
        residents.delete(key);
        await held.kernel.release();
      }
    }
    return { workerId: setup.workerId, resident: resident(), ms: performance.now() - started };
  }

  return async (task: WorkerTask) => {
    if (task.kind === 'run') return run(task);
    if (task.kind === 'load' || task.kind === 'unload') return residency(task);
    const stats: WorkerStats = {
      workerId: setup.workerId, threadId, busyMs,
      resident: resident(), ran: structuredClone(ran),
      kernels: Object.fromEntries([...residents].map(([key, r]) => [key, structuredClone(r.report)])),
    };
    return stats;
  };
}

/** Wraps a result so that its output buffer is transferred, not copied, back to the gateway. */
function transferable(result: RunResult) {
  return {
    get [Piscina.transferableSymbol]() {
      return [result.output.buffer];
    },
    get [Piscina.valueSymbol]() {
      return result;
    },
  };
}
