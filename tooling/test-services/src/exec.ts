import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** Repository root, located from this file (tooling/test-services/src/). */
export const repoRoot = fileURLToPath(new URL('../../../', import.meta.url));
export const servicesScript = fileURLToPath(new URL('../../../scripts/services.sh', import.meta.url));

export interface RunResult {
  stdout: string;
  stderr: string;
}

interface ExecError extends Error {
  stdout?: string;
  stderr?: string;
  killed?: boolean;
  code?: number | string | null;
}

const tail = (text: string | undefined, lines: number): string =>
  (text ?? '').trimEnd().split('\n').slice(-lines).join('\n');

/** Runs `bash scripts/services.sh <args>`; rejects with its exit status and stderr tail. */
export async function runServicesScript(args: readonly string[], timeoutMs: number): Promise<RunResult> {
  try {
    const { stdout, stderr } = await execFileAsync('bash', [servicesScript, ...args], {
      cwd: repoRoot,
      timeout: timeoutMs,
      maxBuffer: 16 * 1024 * 1024,
      encoding: 'utf8',
    });
    return { stdout, stderr };
  } catch (error) {
    const e = error as ExecError;
    const why = e.killed ? `timed out after ${timeoutMs} ms` : `exit code ${String(e.code ?? 'unknown')}`;
    throw new Error(`scripts/services.sh ${args.join(' ')} failed (${why}):\n${tail(e.stderr, 30)}`, {
      cause: error,
    });
  }
}
