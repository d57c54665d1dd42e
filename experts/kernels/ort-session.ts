/**
 * onnxruntime sessions on the configured execution providers, with a CPU fallback: the one place where the trunk
 * (src/engine/model.ts) and the expert kernels (ort-kernels.ts) create sessions.
 *
 * A provider list is tried as given (ORT places each node on the first provider that supports it; the CPU provider
 * is always there for the rest). When ORT cannot start a provider — no GPU adapter (WebGPU without Vulkan), CUDA or
 * TensorRT libraries not installed (`onnxruntime-node-install=skip` leaves them out) — the session is created on
 * the CPU alone and the fallback is logged once per thread, kind of session and provider list; later sessions go to the CPU at once.
 */
import ort from 'onnxruntime-node';
import { log } from '../../src/log.ts';

/** Provider lists that could not start in this thread, by "what|list", with ORT's reason. */
const unavailable = new Map<string, string>();

export interface SessionOnProviders {
  session: ort.InferenceSession;
  /** The providers the session was created with: the configured ones, or ['cpu'] after a fallback. */
  providers: string[];
  /** Why the configured providers could not start (only after a fallback). */
  fallback?: string;
}

/**
 * Creates a session for `graph` (ONNX bytes) with `options` on `providers`; `what` names the sessions in the log
 * line ("trunk", "experts of worker 1"). Throws only when the CPU session itself fails (a broken graph).
 */
export async function createSession(
  graph: Uint8Array, options: Omit<ort.InferenceSession.SessionOptions, 'executionProviders'>, providers: readonly string[], what: string,
): Promise<SessionOnProviders> {
  const list = providers.join(',');
  const key = `${what}|${list}`;
  const cpuOnly = providers.every((p) => p === 'cpu');
  const known = unavailable.get(key);
  if (!cpuOnly && known === undefined) {
    try {
      return { session: await ort.InferenceSession.create(graph, { ...options, executionProviders: [...providers] }), providers: [...providers] };
    } catch (error) {
      const reason = firstLine(error);
      unavailable.set(key, reason);
      log.warn(`execution providers [${list}] unavailable for the ${what}; running them on the CPU`, { reason });
      return { session: await ort.InferenceSession.create(graph, { ...options, executionProviders: ['cpu'] }), providers: ['cpu'], fallback: reason };
    }
  }
  const session = await ort.InferenceSession.create(graph, { ...options, executionProviders: ['cpu'] });
  return { session, providers: ['cpu'], ...(known !== undefined ? { fallback: known } : {}) };
}

function firstLine(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.split('\n')[0].slice(0, 300);
}
