/**
 * An expert worker: loads only the experts its placement gives it (reading just their bytes from the package)
 * and runs expert FFN batches with onnxruntime. One instance per worker thread.
 */
import { threadId, workerData } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import ort from 'onnxruntime-node';
import { Piscina } from 'piscina';
import { readSafetensorsHeader, readTensors } from '../src/engine/safetensors.ts';
import { tensorNames } from '../src/engine/package.ts';
import { expertGraph } from './expert-graph.ts';
import { expertKey, type RunResult, type WorkerSetup, type WorkerStats, type WorkerTask } from './protocol.ts';

async function loadExperts(setup: WorkerSetup): Promise<Map<string, ort.InferenceSession>> {
  const header = readSafetensorsHeader(setup.weightsFile);
  const sessions = new Map<string, ort.InferenceSession>();
  for (const { layer, expert } of setup.experts) {
    const names = tensorNames.expert(layer, expert);
    const t = readTensors(setup.weightsFile, header, [names.gate, names.up, names.down]);
    const graph = expertGraph(`expert_${layer}_${expert}`, setup.hidden, setup.ffn, {
      gate: t.get(names.gate)!, up: t.get(names.up)!, down: t.get(names.down)!,
    });
    sessions.set(expertKey(layer, expert), await ort.InferenceSession.create(graph, {
      intraOpNumThreads: setup.threads, interOpNumThreads: 1, executionProviders: setup.executionProviders,
      graphOptimizationLevel: 'all',
    }));
  }
  return sessions;
}

export async function initialize() {
  const setup = workerData as WorkerSetup;
  const sessions = await loadExperts(setup);
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

  return async (task: WorkerTask) => {
    if (task.kind === 'run') return run(task);
    const stats: WorkerStats = {
      workerId: setup.workerId, threadId, busyMs,
      resident: setup.experts, ran: structuredClone(ran),
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
