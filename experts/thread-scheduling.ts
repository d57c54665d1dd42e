/**
 * The expert worker threads' Linux scheduling policy (config experts.workerScheduling), set by each worker on its own
 * thread at start: 'batch' (SCHED_BATCH) keeps a woken worker from preempting the main thread on its core, which
 * otherwise stalls inside Atomics.notify in the middle of posting a layer's batches (see native/allocator.cc). Never
 * throws: without the addon or on another OS the thread keeps the default policy and the reason is returned.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

export type WorkerScheduling = 'batch' | 'normal';

interface Addon {
  setThreadScheduling(policy: 'batch' | 'other'): boolean;
}

/** Applies `policy` to the calling thread; `applied` false with the reason when it could not. */
export function applyThreadScheduling(policy: WorkerScheduling): { applied: true } | { applied: false; reason: string } {
  if (process.platform !== 'linux') return { applied: false, reason: `scheduling policies are Linux only (this is ${process.platform})` };
  let addon: Addon;
  try {
    addon = createRequire(import.meta.url)('./kernels/native/build/Release/allocator.node') as Addon;
  } catch (error) {
    return { applied: false, reason: `the native addon is not built (${(error as Error).message.split('\n')[0]}); run \`npm ci\`` };
  }
  return addon.setThreadScheduling(policy === 'batch' ? 'batch' : 'other') ? { applied: true } : { applied: false, reason: 'sched_setscheduler refused' };
}

/** This thread's scheduling policy number from /proc (0 SCHED_OTHER, 3 SCHED_BATCH), or null where unreadable. */
export function threadPolicy(): number | null {
  try {
    // Field 41 of /proc/thread-self/stat; the command name (field 2) is in parentheses and may hold spaces.
    const stat = readFileSync('/proc/thread-self/stat', 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[41 - 3]);
  } catch {
    return null;
  }
}
