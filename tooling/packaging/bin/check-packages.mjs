#!/usr/bin/env node
// Lints every publishable package as npm would ship it (run after `pnpm build`): publint (package.json,
// exports and files against the packed tarball) and attw (types resolve for node10, node16 from CJS and
// ESM, and bundlers, and match the JavaScript they describe). Any finding fails.
import { spawn } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '../../..');
const bin = (name) => join(root, 'node_modules', '.bin', name);

/**
 * Entry points that are ESM only on purpose, so attw's CommonJS checks do not apply: `@beetle/core/testing`
 * is the contract suite for vitest, and vitest itself cannot be required.
 */
const esmOnly = { '@beetle/core': ['./testing'] };

const checks = [];
for (const dir of readdirSync(join(root, 'packages')).sort()) {
  const path = join(root, 'packages', dir);
  const { name } = JSON.parse(readFileSync(join(path, 'package.json'), 'utf8'));
  const exclude = esmOnly[name] ? ['--exclude-entrypoints', ...esmOnly[name]] : [];
  checks.push({ tool: 'publint', name, args: [path, '--strict', '--level', 'suggestion'] });
  checks.push({ tool: 'attw', name, args: ['--pack', path, '--format', 'ascii', ...exclude] });
}

const run = ({ tool, args }) =>
  new Promise((resolve) => {
    const child = spawn(bin(tool), args, { cwd: root });
    let output = '';
    child.stdout.on('data', (chunk) => (output += chunk));
    child.stderr.on('data', (chunk) => (output += chunk));
    child.on('close', (status) => resolve({ status, output }));
  });

let failed = 0;
let next = 0;
const worker = async () => {
  while (next < checks.length) {
    const check = checks[next++];
    const { status, output } = await run(check);
    if (status === 0) {
      process.stdout.write(`✓ ${check.tool} ${check.name}\n`);
    } else {
      failed++;
      process.stdout.write(`✗ ${check.tool} ${check.name}\n${output}\n`);
    }
  }
};
await Promise.all(Array.from({ length: Math.min(4, availableParallelism()) }, worker));
if (failed > 0) {
  process.stdout.write(`${failed} package check(s) failed\n`);
  process.exit(1);
}
