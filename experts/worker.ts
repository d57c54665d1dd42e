/**
 * An expert worker: loads only the experts its placement gives it (reading just their bytes from the package)
 * and runs expert FFN batches. One instance per worker thread. Each expert gets a kernel when it loads
 * (kernels/select.ts: dense/structured onnxruntime, our native sparse kernel, or int8/int4 when configured), checked
 * against the reference FFN; `stats` reports every resident expert's kernel. `load` and `unload` tasks change the
 * resident set while serving (live placement changes); the pool sends them only when it is safe. A thread that
 * Piscina starts to replace one that died reads the worker's current experts from `setup.hosting` (shared memory
 * the pool keeps up to date), so it hosts what the placement says now. `fault` tasks (tests only) make a later run
 * task throw or end the thread. A `channel` task hands the thread a shared-memory channel (channel.ts): from then
 * on it also serves layer batches posted there, on its own event loop, between Piscina tasks.
 */
import { threadId, workerData } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { Piscina } from 'piscina';
import { LRUCache } from 'lru-cache';
import { log } from '../src/log.ts';
import { readSafetensorsHeader } from '../src/format/safetensors.ts';
import { architectureOf, canonicalEntries } from '../src/format/architectures.ts';
import { readExpertWeights } from './expert-weights.ts';
import { selectKernel } from './kernels/select.ts';
import { DEFAULT_KERNEL_SETTINGS, type ExpertKernel, type KernelReport } from './kernels/types.ts';
import { ChannelView } from './channel.ts';
import { applyThreadScheduling, threadPolicy } from './thread-scheduling.ts';
import { expertKey, readHosting, type ResidencyResult, type RunResult, type ExpertItem, type WorkerFault, type WorkerSetup, type WorkerStats, type WorkerTask } from './protocol.ts';

type ExpertRef = WorkerSetup['experts'][number];
interface Resident {
  kernel: ExpertKernel;
  report: KernelReport;
}

/** Builds one expert's kernel, reading just its bytes from the package. */
async function loadExpert(setup: WorkerSetup, header: ReturnType<typeof readSafetensorsHeader>, { layer, expert }: ExpertRef): Promise<Resident> {
  // Dense, structurally pruned (fewer neurons) or sparse-bitmask storage: all become dense weights here.
  const weights = readExpertWeights(setup.weightsFile, header, layer, expert, setup.hidden);
  const { kernel, report } = await selectKernel(weights, setup.hidden, {
    ...(setup.kernel ?? DEFAULT_KERNEL_SETTINGS), threads: setup.threads, executionProviders: setup.executionProviders,
    modelFfn: setup.ffn, name: `expert_${layer}_${expert}`,
  });
  if (report.fallback) log.warn('expert kernel fallback', { worker: setup.workerId, layer, expert, reason: report.fallback });
  return { kernel, report };
}

export async function initialize() {
  const setup = workerData as WorkerSetup;
  const scheduled = setup.scheduling ? applyThreadScheduling(setup.scheduling) : null;
  if (scheduled && !scheduled.applied) log.warn('expert worker keeps the default scheduling policy', { worker: setup.workerId, wanted: setup.scheduling, reason: scheduled.reason });
  const arch = architectureOf(setup.modelType ?? 'olmoe');
  if (!arch) throw new Error(`worker ${setup.workerId}: unknown model_type ${JSON.stringify(setup.modelType)}`);
  const header = canonicalEntries(arch, readSafetensorsHeader(setup.weightsFile));
  // The experts this worker hosts (its placement), and those of them loaded now: at most maxResident, least
  // recently used released first. Tasks run one at a time on this thread, so the expert released to make room is
  // never one that is running (and a load or unload never overlaps a run).
  const hosted = new Set<string>();
  const residency = { loads: 0, evictions: 0 };
  const residents = new LRUCache<string, Resident>({
    max: setup.maxResident ?? 1_000_000,
    dispose: (held, _key, reason) => {
      if (reason === 'evict') residency.evictions++;
      void held.kernel.release();
    },
  });
  async function ensureLoaded(ref: ExpertRef, onDemand: boolean): Promise<Resident> {
    const key = expertKey(ref.layer, ref.expert);
    const held = residents.get(key);
    if (held) return held;
    const loaded = await loadExpert(setup, header, ref);
    if (onDemand) residency.loads++;
    residents.set(key, loaded);
    return loaded;
  }
  const dropped = new Set(setup.dropped ?? []);
  async function host(experts: ExpertRef[]): Promise<void> {
    const live = experts.filter((ref) => !dropped.has(expertKey(ref.layer, ref.expert))); // no weights to load
    for (const ref of live) hosted.add(expertKey(ref.layer, ref.expert));
    // Preload up to the residency limit; the rest load when first routed here.
    for (const ref of live.slice(0, setup.maxResident ?? live.length)) await ensureLoaded(ref, false);
  }
  // A replacement thread loads what the worker hosts now (the pool keeps setup.hosting current).
  await host(setup.hosting ? readHosting(setup.hosting) : setup.experts);
  const resident = () => [...hosted].map((key) => {
    const [layer, expert] = key.split('.').map(Number);
    return { layer, expert };
  }).sort((a, b) => a.layer - b.layer || a.expert - b.expert);
  const ran: WorkerStats['ran'] = {};
  let busyMs = 0;
  // Test-only (FaultTask): run tasks still to pass before the fault, and how many fail.
  let fault: { kind: WorkerFault['kind']; skip: number; left: number } | null = null;

  /** Fails this run task if a fault is due: throws, or ends the thread between two kernel runs. */
  function maybeFail(): void {
    if (!fault) return;
    if (fault.skip > 0) {
      fault.skip--;
      return;
    }
    const { kind } = fault;
    if (--fault.left <= 0) fault = null;
    if (kind === 'exit') {
      // Inside a worker thread process.exit() ends only this thread; no onnxruntime call is running here.
      process.exit(1);
    }
    throw new Error(`worker ${setup.workerId}: injected fault`);
  }

  /** Runs the items' batches from `input` into `output` (rows back to back, item order); returns compute ms. */
  async function compute(items: ExpertItem[], input: Float32Array, output: Float32Array): Promise<number> {
    const started = performance.now();
    let offset = 0;
    for (const [i, item] of items.entries()) {
      const key = expertKey(item.layer, item.expert);
      if (!hosted.has(key)) throw new Error(`worker ${setup.workerId} does not host expert ${key}`);
      const held = await ensureLoaded(item, true);
      const size = item.tokens * setup.hidden;
      await held.kernel.run(input.subarray(offset, offset + size), item.tokens, output.subarray(offset, offset + size));
      if (i === 0) maybeFail(); // after the first batch: the task fails part-way through
      offset += size;
      const counter = (ran[key] ??= { tasks: 0, tokens: 0 });
      counter.tasks++;
      counter.tokens += item.tokens;
    }
    const computeMs = performance.now() - started;
    busyMs += computeMs;
    return computeMs;
  }

  async function run(task: Extract<WorkerTask, { kind: 'run' }>) {
    const output = new Float32Array(task.input.length);
    const computeMs = await compute(task.items, task.input, output);
    const result: RunResult = { workerId: setup.workerId, output, computeMs, residency: { ...residency, thread: threadId } };
    return Piscina.move(transferable(result) as never);
  }

  // The shared-memory channel (channel.ts) this thread serves now, if any. Kernels get thread-local copies of the
  // rows (scratch), not views of the shared buffer: native code is not promised to accept SharedArrayBuffer memory.
  let channel: ChannelView | null = null;
  let scratchIn = new Float32Array(0);
  let scratchOut = new Float32Array(0);
  function attach(task: Extract<WorkerTask, { kind: 'channel' }>): { workerId: number } {
    const view = new ChannelView(task.channel);
    channel = view;
    void view.serve((items, input, output) => exclusive(async () => {
      const floats = items.reduce((n, item) => n + item.tokens, 0) * setup.hidden;
      if (scratchIn.length < floats) {
        scratchIn = new Float32Array(floats);
        scratchOut = new Float32Array(floats);
      }
      scratchIn.set(input.subarray(0, floats));
      const computeMs = await compute(items, scratchIn.subarray(0, floats), scratchOut.subarray(0, floats));
      output.set(scratchOut.subarray(0, floats));
      return { computeMs, loads: residency.loads, evictions: residency.evictions, thread: threadId };
    }), () => channel === view);
    return { workerId: setup.workerId };
  }

  async function changeHosted(task: Extract<WorkerTask, { kind: 'load' | 'unload' }>): Promise<ResidencyResult> {
    const started = performance.now();
    if (task.kind === 'load') await host(task.experts);
    else {
      for (const { layer, expert } of task.experts) {
        const key = expertKey(layer, expert);
        hosted.delete(key);
        residents.delete(key); // dispose releases its kernel
      }
    }
    return { workerId: setup.workerId, resident: resident(), ms: performance.now() - started };
  }

  // Piscina tasks and channel batches share this thread's event loop: one at a time, so a load or an eviction never
  // releases a kernel that a batch is running.
  let tail: Promise<unknown> = Promise.resolve();
  function exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const next = tail.then(fn);
    tail = next.catch(() => undefined);
    return next;
  }

  return (task: WorkerTask) => exclusive(() => handle(task));

  async function handle(task: WorkerTask) {
    if (task.kind === 'run') return run(task);
    if (task.kind === 'channel') return attach(task);
    if (task.kind === 'load' || task.kind === 'unload') return changeHosted(task);
    if (task.kind === 'fault') {
      fault = task.fault && { kind: task.fault.kind, skip: task.fault.afterRuns ?? 0, left: task.fault.times ?? 1 };
      return { workerId: setup.workerId };
    }
    const stats: WorkerStats = {
      workerId: setup.workerId, threadId, busyMs,
      resident: resident(), ran: structuredClone(ran),
      kernels: Object.fromEntries([...residents.entries()].map(([key, r]) => [key, structuredClone(r.report)])),
      loaded: [...residents.keys()].sort(), residency: { ...residency, max: setup.maxResident ?? null },
      scheduling: { wanted: setup.scheduling ?? null, policy: threadPolicy(), ...(scheduled && !scheduled.applied ? { reason: scheduled.reason } : {}) },
    };
    return stats;
  }
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
