/**
 * onnxruntime sessions on the configured execution providers, with a CPU fallback: the one place where the trunk
 * (src/engine/model.ts) and the expert kernels (ort-kernels.ts) create sessions.
 *
 * A provider list is tried as given (ORT places each node on the first provider that supports it; the CPU provider
 * is always there for the rest). When ORT cannot start the first provider — no GPU adapter (WebGPU without Vulkan),
 * CUDA or TensorRT libraries not installed (`onnxruntime-node-install=skip` leaves them out) — the rest of the list is
 * tried, and the CPU alone last; each failure is logged once per thread (each expert worker is one) and kind of
 * session, and later sessions skip what failed.
 */
import ort from 'onnxruntime-node';
import { log } from '../../src/log.ts';

/** Provider lists that could not start in this thread, by "what|list", with ORT's reason. */
const unavailable = new Map<string, string>();

export interface SessionOnProviders {
  session: ort.InferenceSession;
  /** The providers the session was created with: the configured list, what was left of it after the first failed, or ['cpu']. */
  providers: string[];
  /** Why the providers before these could not start ("provider: reason; …"; only after a fallback). */
  fallback?: string;
}

/**
 * Creates a session for `graph` (ONNX bytes) with `options` on `providers`; `what` names the sessions in the log
 * line ("trunk", "experts of worker 1"). Throws only when the CPU session itself fails (a broken graph).
 */
export async function createSession(
  graph: Uint8Array, options: Omit<ort.InferenceSession.SessionOptions, 'executionProviders'>, providers: readonly string[], what: string,
): Promise<SessionOnProviders> {
  // In order of preference: the whole list, then without its first provider, and so on; the CPU last.
  const reasons: string[] = [];
  for (let from = 0; from < providers.length; from++) {
    const tried = providers.slice(from);
    if (tried.every((p) => p === 'cpu')) break;
    const key = `${what}|${tried.join(',')}`;
    const known = unavailable.get(key);
    if (known !== undefined) {
      reasons.push(known);
      continue;
    }
    try {
      const session = await ort.InferenceSession.create(graph, { ...options, executionProviders: [...tried] });
      return { session, providers: tried, ...(reasons.length > 0 ? { fallback: reasons.join('; ') } : {}) };
    } catch (error) {
      const reason = `${tried[0]}: ${firstLine(error)}`;
      unavailable.set(key, reason);
      reasons.push(reason);
      log.warn(`execution provider ${tried[0]} unavailable for the ${what}; ${tried.length > 1 ? `trying [${tried.slice(1).join(',')}]` : 'running on the CPU'}`, { reason });
    }
  }
  const session = await ort.InferenceSession.create(graph, { ...options, executionProviders: ['cpu'] });
  return { session, providers: ['cpu'], ...(reasons.length > 0 ? { fallback: reasons.join('; ') } : {}) };
}

function firstLine(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.split('\n')[0].slice(0, 300);
}
