/**
 * Loading the native kernels (experts/kernels/native, built by `npm ci`): once per thread, never throwing. Without
 * the addon (no compiler at install, or SWITCHYARD_NATIVE=off) the caller gets the reason and uses its fallback.
 */
import { createRequire } from 'node:module';

/** What every kernel addon answers: which SIMD path it runs on this CPU. */
export interface KernelAddon {
  info(): { simd: string };
}

/** An expert FFN addon (sparse_ffn, dense_ffn): an opaque handle per expert, run on the calling thread. */
export interface FfnAddon extends KernelAddon {
  run(handle: object, x: Float32Array, tokens: number, out: Float32Array): void;
  release(handle: object): void;
  /** For tests and benchmarks (process-wide): use the AVX2 path when the CPU has it (true) or the portable one. */
  setSimd(enabled: boolean): { simd: string };
}

/** An expert kernel over a native FFN addon's handle: synchronous runs, weights freed on release. */
export abstract class NativeFfnKernel<A extends FfnAddon> {
  protected constructor(protected readonly addon: A, private native: object | null) {}

  /** The addon's handle (for calls that take several experts at once); throws after release. */
  get handle(): object {
    if (!this.native) throw new Error('native expert kernel used after release');
    return this.native;
  }

  /** y [tokens, hidden] for x [tokens, hidden], computed now on this thread. Throws after release. */
  runSync(x: Float32Array, tokens: number, out: Float32Array): void {
    this.addon.run(this.handle, x, tokens, out);
  }

  async run(x: Float32Array, tokens: number, out: Float32Array): Promise<void> {
    this.runSync(x, tokens, out);
  }

  async release(): Promise<void> {
    if (this.native) this.addon.release(this.native);
    this.native = null;
  }
}

export type NativeStatus<A extends KernelAddon> = { available: true; simd: string; addon: A } | { available: false; reason: string };

const loaded = new Map<string, NativeStatus<KernelAddon>>();

/**
 * The addon `native/build/Release/<file>`, or its export `part` (model.node holds the trunk, attention and dense
 * expert kernels as exports.trunk, .attention, .dense); `what` names it in the reason it is unavailable.
 */
export function loadKernelAddon<A extends KernelAddon>(file: string, what: string, part?: string): NativeStatus<A> {
  const key = part ? `${file}#${part}` : file;
  const seen = loaded.get(key);
  if (seen) return seen as NativeStatus<A>;
  let status: NativeStatus<A>;
  if ((process.env.SWITCHYARD_NATIVE ?? '').toLowerCase() === 'off') status = { available: false, reason: 'disabled by SWITCHYARD_NATIVE=off' };
  else {
    try {
      const module = createRequire(import.meta.url)(`./native/build/Release/${file}`) as Record<string, unknown>;
      const addon = (part ? module[part] : module) as A;
      status = { available: true, simd: addon.info().simd, addon };
    } catch (error) {
      status = {
        available: false,
        reason: `${what} not built (${(error as Error).message.split('\n')[0]}); run \`npm ci\` or \`node experts/kernels/native/build.mjs\` and see experts/kernels/native/build.log`,
      };
    }
  }
  loaded.set(key, status as NativeStatus<KernelAddon>);
  return status;
}
