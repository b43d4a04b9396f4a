#!/usr/bin/env node
// Prints the README's set-up command number N (1: install and demo, 2: the test suite), so that CI runs the
// very text a newcomer types. Plain JavaScript: it runs before anything is installed.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The shell commands of the README's "Set up" section, in order. */
export function setupCommands(readme) {
  const section = /^## Set up\n([\s\S]*?)\n## /m.exec(readme)?.[1] ?? '';
  return [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((match) => match[1].trim());
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const n = Number(process.argv[2]);
  const readme = readFileSync(new URL('../../../README.md', import.meta.url), 'utf8');
  const command = setupCommands(readme)[n - 1];
  if (command === undefined) {
    process.stderr.write(`README.md has no set-up command number ${process.argv[2]}\n`);
    process.exit(2);
  }
  process.stdout.write(`${command}\n`);
}
