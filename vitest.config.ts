import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Suites start worker pools and servers: run files one after another on this 2-core machine.
    fileParallelism: false,
  },
});
