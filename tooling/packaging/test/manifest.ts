import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

/**
 * The package.json of `name` as Node finds it from `fromDir`. Not `require.resolve('<name>/package.json')`:
 * packages with an exports map (amqplib 2) need not export their manifest. Resolves the entry point and walks
 * up to the nearest package.json with that name (workspace packages resolve to their real directories).
 */
export function manifestPath(name: string, fromDir: string): string {
  const entry = createRequire(join(fromDir, 'noop.js')).resolve(name);
  for (let dir = dirname(entry); dir !== dirname(dir); dir = dirname(dir)) {
    const path = join(dir, 'package.json');
    if (existsSync(path) && (JSON.parse(readFileSync(path, 'utf8')) as { name?: string }).name === name) {
      return path;
    }
  }
  throw new Error(`no package.json of ${name} above ${entry}`);
}
