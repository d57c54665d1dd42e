/**
 * Refuses request bodies in a content coding we do not decode (RFC 9110 §15.5.16): anything but `identity` gets
 * 415 with `Accept-Encoding: identity` (RFC 7694), before the body is read — parsing gzip bytes as JSON would only
 * produce a misleading 422.
 */
import type { MiddlewareHandler } from 'hono';
import { HttpError } from './errors.ts';

/** The codings in a Content-Encoding header that are not `identity` (lower-cased, in order). */
export function unsupportedCodings(header: string | undefined): string[] {
  if (header === undefined) return [];
  return header.split(',').map((c) => c.trim().toLowerCase()).filter((c) => c !== '' && c !== 'identity');
}

export const rejectContentEncoding: MiddlewareHandler = async (c, next) => {
  const codings = unsupportedCodings(c.req.header('content-encoding'));
  if (codings.length > 0) {
    throw new HttpError(415, 'validation',
      `Content-Encoding ${codings.join(', ')} is not supported; send the body uncompressed (identity)`,
      { 'Accept-Encoding': 'identity' });
  }
  await next();
};
