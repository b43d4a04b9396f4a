import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const src = (path: string): string => fileURLToPath(new URL(path, import.meta.url));

// Tests run against the sources of every package (no build needed), like tRPC's setup.
export default defineConfig({
  resolve: {
    alias: [
      { find: '@beetle/core/testing', replacement: src('./packages/core/src/testing/index.ts') },
      { find: '@beetle/core/kit', replacement: src('./packages/core/src/kit/index.ts') },
      {
        find: /^@beetle\/telemetry\/(otel|prometheus)$/,
        replacement: src('./packages/telemetry/src/$1/index.ts'),
      },
      { find: '@beetle/test-services', replacement: src('./tooling/test-services/src/index.ts') },
      { find: /^@beetle\/([a-z-]+)$/, replacement: src('./packages/$1/src/index.ts') },
    ],
  },
  test: {
    include: [
      'packages/*/test/**/*.test.ts',
      'tooling/*/test/**/*.test.ts',
      'examples/test/**/*.test.ts',
      'chaos/test/**/*.test.ts',
    ],
    globalSetup: ['./tooling/test-services/src/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
  },
});
