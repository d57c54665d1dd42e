/**
 * An expert worker: loads only the experts its placement gives it (reading just their bytes from the package)
 * and runs expert FFN batches with onnxruntime. One instance per worker thread. `load` and `unload` tasks change
 * the resident set while serving (live placement changes); the pool sends them only when it is safe.
 */
import { threadId, workerData } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import ort from 'onnxruntime-node';
import { Piscina } from 'piscina';
import { readSafetensorsHeader } from '../src/engine/safetensors.ts';
import { expertGraph } from './expert-graph.ts';
import { readExpertWeights } from './expert-weights.ts';
import { expertKey, type ResidencyResult, type RunResult, type WorkerSetup, type WorkerStats, type WorkerTask } from './protocol.ts';

type ExpertRef = WorkerSetup['experts'][number];

/** Builds one ONNX Runtime session per expert, reading just those experts' bytes from the package. */
async function loadExperts(setup: WorkerSetup, experts: ExpertRef[], sessions: Map<string, ort.InferenceSession>): Promise<void> {
  const missing = experts.filter(({ layer, expert }) => !sessions.has(expertKey(layer, expert)));
  if (missing.length === 0) return;
  const header = readSafetensorsHeader(setup.weightsFile);
  for (const { layer, expert } of missing) {
    // Dense, structurally pruned (fewer neurons) or sparse-bitmask storage: all become dense weights here.
    const weights = readExpertWeights(setup.weightsFile, header, layer, expert, setup.hidden);
    const graph = expertGraph(`expert_${layer}_${expert}`, setup.hidden, weights.ffn, weights);
    sessions.set(expertKey(layer, expert), await ort.InferenceSession.create(graph, {
      intraOpNumThreads: setup.threads, interOpNumThreads: 1, executionProviders: setup.executionProviders,
      graphOptimizationLevel: 'all',
    }));
  }
}

export async function initialize() {
  const setup = workerData as WorkerSetup;
  const sessions = new Map<string, ort.InferenceSession>();
  await loadExperts(setup, setup.experts, sessions);
  // Tasks run one at a time on this thread (one task per worker), so a load or unload never overlaps a run.
  const resident = () => [...sessions.keys()].map((key) => {
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
      const session = sessions.get(key);
      if (!session) throw new Error(`worker ${setup.workerId} does not host expert ${key}`);
      const size = item.tokens * setup.hidden;
      const x = new ort.Tensor('float32', task.input.subarray(offset, offset + size), [item.tokens, setup.hidden]);
      const { y } = await session.run({ x });
      output.set(y.data as Float32Array, offset);
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
    if (task.kind === 'load') await loadExperts(setup, task.experts, sessions);
    else {
      for (const { layer, expert } of task.experts) {
        const key = expertKey(layer, expert);
        const session = sessions.get(key);
        if (!session) continue;
        sessions.delete(key);
        await session.release();
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
