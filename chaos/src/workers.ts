/** Worker processes (`tsx` children with an IPC channel) and the tailing of their record files. */
import { fork, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readSync, fstatSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WORKER_ENV, type FromWorker, type ToWorker, type WorkerSettings } from './protocol.js';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const SRC_DIR = fileURLToPath(new URL('.', import.meta.url));

export interface WorkerExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/** One worker process. */
export class Worker {
  readonly pid: number;
  readonly exited: Promise<WorkerExit>;
  private exitInfo: WorkerExit | undefined;
  private readonly listeners = new Set<(message: FromWorker) => void>();
  private readonly child: ChildProcess;
  /** Set when the harness kills or stops it on purpose. */
  expectedExit = false;

  constructor(
    readonly settings: WorkerSettings,
    readonly logFile: string,
  ) {
    const script = join(SRC_DIR, `worker-${settings.role}.ts`);
    const log = openSync(logFile, 'a');
    let child: ChildProcess;
    try {
      child = fork(script, [], {
        cwd: REPO_ROOT,
        execArgv: ['--import', 'tsx'],
        env: {
          ...process.env,
          [WORKER_ENV]: JSON.stringify(settings),
          TSX_TSCONFIG_PATH: join(REPO_ROOT, 'tsconfig.json'),
        },
        stdio: ['ignore', log, log, 'ipc'],
      });
    } finally {
      closeSync(log);
    }
    if (child.pid === undefined) throw new Error(`could not start ${settings.role} #${settings.index}`);
    this.pid = child.pid;
    this.child = child;
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        resolve(this.exitInfo);
      });
    });
    child.on('message', (message: FromWorker) => {
      for (const listener of [...this.listeners]) listener(message);
    });
    // A failed IPC send (child gone) must not crash the harness.
    child.on('error', () => undefined);
  }

  get name(): string {
    return `${this.settings.role}#${this.settings.index}[${this.pid}]`;
  }

  get alive(): boolean {
    return this.exitInfo === undefined;
  }

  get exit(): WorkerExit | undefined {
    return this.exitInfo;
  }

  onMessage(listener: (message: FromWorker) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  send(message: ToWorker): void {
    if (this.alive && this.child.connected) this.child.send(message, () => undefined);
  }

  /** Resolves with the first message matching `predicate`; rejects on exit or timeout. */
  waitFor<T extends FromWorker>(
    predicate: (m: FromWorker) => m is T,
    timeoutMs: number,
    what: string,
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new Error(`${this.name}: no ${what} within ${timeoutMs / 1000} s (see ${this.logFile})`));
      }, timeoutMs);
      const off = this.onMessage((message) => {
        if (message.type === 'fatal') {
          clearTimeout(timer);
          off();
          reject(new Error(`${this.name} failed: ${message.error} (see ${this.logFile})`));
        } else if (predicate(message)) {
          clearTimeout(timer);
          off();
          resolve(message);
        }
      });
      void this.exited.then((exit) => {
        clearTimeout(timer);
        off();
        reject(
          new Error(`${this.name} exited (${exit.code ?? exit.signal}) before ${what} (see ${this.logFile})`),
        );
      });
    });
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.expectedExit = true;
    if (this.alive) this.child.kill(signal);
  }

  /** Asks for a graceful stop; SIGKILL after `timeoutMs`. */
  async stop(timeoutMs: number): Promise<WorkerExit> {
    this.expectedExit = true;
    if (!this.alive) return this.exitInfo as WorkerExit;
    this.send({ type: 'stop' });
    const timer = setTimeout(() => this.kill('SIGKILL'), timeoutMs);
    const exit = await this.exited;
    clearTimeout(timer);
    return exit;
  }
}

/** Follows an append-only record file: returns the complete lines added since the last call. */
export class RecordTail {
  private offset = 0;
  private rest = '';

  constructor(readonly path: string) {}

  read(): string[] {
    if (!existsSync(this.path)) return [];
    const fd = openSync(this.path, 'r');
    try {
      const size = fstatSync(fd).size;
      if (size <= this.offset) return [];
      const buffer = Buffer.alloc(size - this.offset);
      const n = readSync(fd, buffer, 0, buffer.length, this.offset);
      this.offset += n;
      const text = this.rest + buffer.subarray(0, n).toString('utf8');
      const lines = text.split('\n');
      this.rest = lines.pop() ?? '';
      return lines;
    } finally {
      closeSync(fd);
    }
  }
}
