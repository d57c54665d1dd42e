/**
 * Process-wide malloc tuning, applied once when the server starts (config `allocator`). Why: see
 * experts/kernels/native/allocator.cc — onnxruntime's step-sized buffers fragment glibc's per-thread arenas, and a
 * fixed mmap threshold returns them to the system instead (bench/RESULTS.md, soak).
 */
import { createRequire } from 'node:module';
import type { Config } from './config.ts';
import type { Logger } from './log.ts';

interface AllocatorAddon {
  /** mallopt(M_MMAP_THRESHOLD, bytes); false where the C library is not glibc. */
  setMmapThreshold(bytes: number): boolean;
}

/** What tuneAllocator did, for the log and for tests. */
export type AllocatorTuning =
  | { applied: true; mmapThresholdBytes: number }
  | { applied: false; reason: string };

/**
 * Sets glibc's mmap threshold to `config.mmapThresholdBytes` (bytes; null: leave glibc's default). Never throws: an
 * unbuilt addon or a C library other than glibc is logged as a warning (memory is then not tuned, nothing else
 * changes). Affects every thread of the process, expert workers included.
 */
export function tuneAllocator(config: Config['allocator'], logger: Logger): AllocatorTuning {
  const bytes = config.mmapThresholdBytes;
  if (bytes === null) return { applied: false, reason: 'allocator.mmapThresholdBytes is null' };
  let addon: AllocatorAddon;
  try {
    addon = createRequire(import.meta.url)('../experts/kernels/native/build/Release/allocator.node') as AllocatorAddon;
  } catch (error) {
    const reason = `the native addon is not built (${(error as Error).message.split('\n')[0]}); run \`npm ci\` or \`node experts/kernels/native/build.mjs\``;
    logger.warn('malloc not tuned: resident memory may creep under load', { reason });
    return { applied: false, reason };
  }
  if (!addon.setMmapThreshold(bytes)) {
    const reason = 'the C library is not glibc (or refused the value)';
    logger.warn('malloc not tuned', { reason, mmapThresholdBytes: bytes });
    return { applied: false, reason };
  }
  return { applied: true, mmapThresholdBytes: bytes };
}
