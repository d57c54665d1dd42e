/**
 * The binary messages of remote expert batches (gateway ↔ expert host over NATS request/reply): a small header and
 * float32 rows, never JSON of floats. Little-endian, as every x86-64 and arm64 host is.
 *
 *   request  [magic u32, version u32, layer u32, expert u32, tokens u32, hidden u32] + rows f32 [tokens, hidden]
 *   reply    [magic u32, version u32, status u32 (0 ok, 1 error), tokens u32, hidden u32, hostBytes u32, computeMs f64]
 *            + (ok) the answering host's id (UTF-8, zero-padded to a multiple of 4 bytes) + output f32 [tokens, hidden]
 *            | (error) UTF-8 message
 *
 * Pure: encoding and decoding only, with clear errors for malformed messages.
 */
const MAGIC = 0x53595842; // "SYXB"
const VERSION = 1;
const REQUEST_HEADER = 24;
const REPLY_HEADER = 32;

export interface ExpertBatchRequest {
  layer: number;
  expert: number;
  tokens: number;
  hidden: number;
  /** [tokens, hidden] */
  rows: Float32Array;
}

export type ExpertBatchReply =
  | { ok: true; host: string; tokens: number; hidden: number; computeMs: number; output: Float32Array }
  | { ok: false; error: string };

export class WireError extends Error {
  override readonly name = 'WireError';
}

export function encodeRequest(r: ExpertBatchRequest): Uint8Array {
  if (r.rows.length !== r.tokens * r.hidden) throw new WireError(`request rows hold ${r.rows.length} floats, expected ${r.tokens} × ${r.hidden}`);
  const bytes = new Uint8Array(REQUEST_HEADER + r.rows.byteLength);
  const view = new DataView(bytes.buffer);
  [MAGIC, VERSION, r.layer, r.expert, r.tokens, r.hidden].forEach((v, i) => view.setUint32(i * 4, v, true));
  bytes.set(new Uint8Array(r.rows.buffer, r.rows.byteOffset, r.rows.byteLength), REQUEST_HEADER);
  return bytes;
}

export function decodeRequest(bytes: Uint8Array): ExpertBatchRequest {
  const view = header(bytes, REQUEST_HEADER, 'request');
  const [layer, expert, tokens, hidden] = [8, 12, 16, 20].map((at) => view.getUint32(at, true));
  return { layer, expert, tokens, hidden, rows: floats(bytes, REQUEST_HEADER, tokens * hidden, 'request') };
}

export function encodeReply(reply: ExpertBatchReply): Uint8Array {
  if (reply.ok && reply.output.length !== reply.tokens * reply.hidden) {
    throw new WireError(`reply output holds ${reply.output.length} floats, expected ${reply.tokens} × ${reply.hidden}`);
  }
  const text = new TextEncoder().encode(reply.ok ? reply.host : reply.error);
  const padded = reply.ok ? (text.byteLength + 3) & ~3 : text.byteLength;
  const floats = reply.ok ? reply.output.byteLength : 0;
  const bytes = new Uint8Array(REPLY_HEADER + padded + floats);
  const view = new DataView(bytes.buffer);
  const fields = reply.ok ? [MAGIC, VERSION, 0, reply.tokens, reply.hidden, text.byteLength] : [MAGIC, VERSION, 1, 0, 0, 0];
  fields.forEach((v, i) => view.setUint32(i * 4, v, true));
  view.setFloat64(24, reply.ok ? reply.computeMs : 0, true);
  bytes.set(text, REPLY_HEADER);
  if (reply.ok) bytes.set(new Uint8Array(reply.output.buffer, reply.output.byteOffset, reply.output.byteLength), REPLY_HEADER + padded);
  return bytes;
}

export function decodeReply(bytes: Uint8Array): ExpertBatchReply {
  const view = header(bytes, REPLY_HEADER, 'reply');
  const status = view.getUint32(8, true);
  if (status === 1) return { ok: false, error: new TextDecoder().decode(bytes.subarray(REPLY_HEADER)) };
  if (status !== 0) throw new WireError(`reply status ${status} is neither 0 (ok) nor 1 (error)`);
  const tokens = view.getUint32(12, true);
  const hidden = view.getUint32(16, true);
  const hostBytes = view.getUint32(20, true);
  const at = REPLY_HEADER + ((hostBytes + 3) & ~3);
  if (at > bytes.byteLength) throw new WireError(`reply names a host of ${hostBytes} bytes but is only ${bytes.byteLength} bytes long`);
  const host = new TextDecoder().decode(bytes.subarray(REPLY_HEADER, REPLY_HEADER + hostBytes));
  return { ok: true, host, tokens, hidden, computeMs: view.getFloat64(24, true), output: floats(bytes, at, tokens * hidden, 'reply') };
}

function header(bytes: Uint8Array, size: number, what: string): DataView {
  if (bytes.byteLength < size) throw new WireError(`${what} of ${bytes.byteLength} bytes is shorter than its ${size}-byte header`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (view.getUint32(0, true) !== MAGIC) throw new WireError(`${what} is not a Switchyard expert batch (bad magic)`);
  const version = view.getUint32(4, true);
  if (version !== VERSION) throw new WireError(`${what} has wire version ${version}; this build speaks ${VERSION} (run the same release on gateway and hosts)`);
  return view;
}

/** count floats after `offset`, copied into an aligned array (a message's bytes may start anywhere). */
function floats(bytes: Uint8Array, offset: number, count: number, what: string): Float32Array {
  if (bytes.byteLength !== offset + count * 4) throw new WireError(`${what} carries ${bytes.byteLength - offset} bytes of floats, expected ${count * 4}`);
  const out = new Float32Array(count);
  new Uint8Array(out.buffer).set(bytes.subarray(offset));
  return out;
}
