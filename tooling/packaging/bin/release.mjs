#!/usr/bin/env node
// `pnpm release [--dry-run]`: builds, checks the packages as npm will ship them (publint, attw), then
// publishes every @beetle package whose version is not on the registry yet. With --dry-run nothing is
// published or tagged: pnpm packs each package and shows what it would send.
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '../../..');
const dryRun = process.argv.includes('--dry-run');

const run = (command, args) => {
  process.stdout.write(`\n==> ${command} ${args.join(' ')}\n`);
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit' });
  if (result.status !== 0) process.exit(result.status ?? 1);
};

run('pnpm', ['build']);
run('node', ['tooling/packaging/bin/check-packages.mjs']);
if (dryRun) {
  run('pnpm', [
    '--recursive',
    '--filter',
    './packages/*',
    'publish',
    '--dry-run',
    '--no-git-checks',
    '--access',
    'public',
  ]);
} else {
  // changesets publishes what `pnpm version-packages` versioned and tags each release in git.
  run('pnpm', ['exec', 'changeset', 'publish']);
}
