/** Errors of the remote expert runtime that the server maps to HTTP statuses (kept apart from the NATS client). */

/**
 * No expert host answered for an expert a step needed and nats.localFallback is off: the step fails, and every
 * request in it gets 503 with this message (the others in later steps are unaffected).
 */
export class ExpertUnavailableError extends Error {
  override readonly name = 'ExpertUnavailableError';
}
