import { describe, expect, it } from 'vitest';
import { tuneAllocator } from '../src/allocator.ts';
import { ConfigSchema } from '../src/config.ts';
import { createLogger } from '../src/log.ts';

function recordingLogger() {
  const lines: string[] = [];
  return { lines, logger: createLogger({ level: 'debug', write: (line) => lines.push(line) }) };
}

// The gateway runs on Debian (glibc), where `npm ci` builds the addon that calls mallopt.
describe.runIf(process.platform === 'linux')('allocator tuning (glibc)', () => {
  it('sets the mmap threshold through the native addon', () => {
    const { lines, logger } = recordingLogger();
    expect(tuneAllocator({ mmapThresholdBytes: 128 * 1024 }, logger)).toEqual({ applied: true, mmapThresholdBytes: 131072 });
    expect(lines).toEqual([]);
  });

  it('leaves malloc alone when the threshold is null', () => {
    const { lines, logger } = recordingLogger();
    expect(tuneAllocator({ mmapThresholdBytes: null }, logger)).toEqual({ applied: false, reason: 'allocator.mmapThresholdBytes is null' });
    expect(lines).toEqual([]);
  });
});

describe('allocator config', () => {
  it('defaults to 128 KiB and refuses thresholds glibc would not take', () => {
    expect(ConfigSchema.parse({}).allocator.mmapThresholdBytes).toBe(131072);
    expect(() => ConfigSchema.parse({ allocator: { mmapThresholdBytes: 64 * 1024 * 1024 } })).toThrow(/allocator/);
    expect(() => ConfigSchema.parse({ allocator: { mmapThresholdBytes: -1 } })).toThrow();
  });
});
