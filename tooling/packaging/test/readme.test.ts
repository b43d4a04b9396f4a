import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { configOptions } from '@beetle/core';
import { renderConfigReference } from '../src/config-reference.js';
import { setupCommands } from '../bin/readme-command.mjs';

const read = (path: string): string => readFileSync(fileURLToPath(new URL(path, import.meta.url)), 'utf8');
const readme = read('../../../README.md');

describe('README', () => {
  it('documents every configuration option as the option table defines it (run `pnpm docs:config`)', () => {
    expect(readme).toContain(renderConfigReference());
    for (const option of configOptions) expect(readme).toContain(`\`${option.name}\``);
  });

  it('keeps exactly the two set-up commands: the demo and the tests', () => {
    expect(setupCommands(readme)).toEqual([
      expect.stringMatching(/^npm install -g pnpm@\S+ && pnpm install && pnpm demo$/),
      'pnpm test',
    ]);
  });

  it('installs exactly the pnpm that package.json pins, so pnpm never tries to switch versions', () => {
    const installed = /pnpm@(\S+)/.exec(setupCommands(readme)[0] ?? '')?.[1];
    const pinned = (JSON.parse(read('../../../package.json')) as { packageManager?: string }).packageManager;
    expect(installed, 'the README installs an exact version (x.y.z)').toMatch(/^\d+\.\d+\.\d+$/);
    expect(`pnpm@${installed}`).toBe(pinned);
    // A different pnpm first on the PATH must run as it is, not refuse to switch (see pnpm-workspace.yaml).
    expect(read('../../../pnpm-workspace.yaml')).toMatch(/^managePackageManagerVersions: false$/m);
  });

  it('is what CI runs: .ci/run executes the README commands themselves', () => {
    const ci = read('../../../.ci/run');
    expect(ci).toContain('readme-command.mjs 1');
    expect(ci).toContain('readme-command.mjs 2');
  });
});
