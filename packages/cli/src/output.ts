import type { LogFn, Logger } from '@beetle/core';

/** Where a command reads and writes; injectable for tests. */
export interface CliIo {
  readonly stdout: { write(chunk: string): unknown };
  readonly stderr: { write(chunk: string): unknown };
  /** Read by `publish` when the body is `-` or missing. */
  readonly stdin: AsyncIterable<Buffer | string>;
  readonly env: NodeJS.ProcessEnv;
  /** Whether stderr is a terminal: progress bars instead of periodic lines. */
  readonly isTTY: boolean;
  /**
   * Aborting it stops long-running commands gracefully (listen, trace, policy-updates). Without it, SIGINT
   * and SIGTERM do (a second signal exits at once).
   */
  readonly signal?: AbortSignal;
}

export const defaultIo = (): CliIo => ({
  stdout: process.stdout,
  stderr: process.stderr,
  stdin: process.stdin,
  env: process.env,
  isTTY: process.stderr.isTTY,
});

/** Plain lines to stdout / stderr. */
export class Printer {
  private full = false;

  constructor(readonly io: CliIo) {}

  out(line = ''): void {
    if (this.io.stdout.write(`${line}\n`) === false) this.full = true;
  }

  /** Waits until stdout has drained if a write reported a full buffer (bounded memory for big dumps). */
  async drain(): Promise<void> {
    if (!this.full) return;
    this.full = false;
    const stream = this.io.stdout as {
      once?: (event: string, listener: () => void) => unknown;
      off?: (event: string, listener: () => void) => unknown;
    };
    const { once, off } = stream;
    if (typeof once !== 'function' || typeof off !== 'function') return;
    await new Promise<void>((resolve) => {
      const events = ['drain', 'close', 'error'];
      const done = (): void => {
        for (const event of events) off.call(stream, event, done);
        resolve();
      };
      for (const event of events) once.call(stream, event, done);
    });
  }

  json(value: unknown): void {
    this.io.stdout.write(`${JSON.stringify(value, jsonReplacer)}\n`);
  }

  err(line: string): void {
    this.io.stderr.write(`${line}\n`);
  }
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** The body as text if it is valid UTF-8, else base64. */
export function bodyText(body: Buffer): { body: string; encoding: 'utf8' | 'base64' } {
  try {
    return { body: strictUtf8.decode(body), encoding: 'utf8' };
  } catch {
    return { body: body.toString('base64'), encoding: 'base64' };
  }
}

/** JSON for AMQP values: buffers as text (or base64), bigints as numbers when safe, dates as ISO strings. */
export function jsonReplacer(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint') {
    return Number.isSafeInteger(Number(value)) ? Number(value) : value.toString();
  }
  if (value !== null && typeof value === 'object' && (value as { type?: unknown }).type === 'Buffer') {
    const data = (value as { data?: unknown }).data;
    if (Array.isArray(data)) return bodyText(Buffer.from(data as number[])).body;
  }
  return value;
}

/** The message of anything thrown (the kit's, under the name the commands import). */
export { errorMessage } from '@beetle/core/kit';

/** One line: newlines of multi-line messages folded. */
export const oneLine = (text: string): string => text.replace(/\s*\n\s*/g, ' ').trim();

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';

/** A logger writing `level: message {context}` lines to stderr at or above `level` (changeable). */
export interface StderrLogger extends Logger {
  level: LogLevel;
}

export function stderrLogger(io: CliIo, level: LogLevel): StderrLogger {
  const order: LogLevel[] = ['debug', 'info', 'warn', 'error', 'silent'];
  const make =
    (name: 'debug' | 'info' | 'warn' | 'error'): LogFn =>
    (first: unknown, ...rest: unknown[]): void => {
      if (order.indexOf(name) < order.indexOf(logger.level)) return;
      let message: string;
      let context: Record<string, unknown> | undefined;
      if (typeof first === 'string') {
        message = first;
      } else {
        context = { ...(first as Record<string, unknown>) };
        message = typeof rest[0] === 'string' ? rest[0] : '';
      }
      let suffix = '';
      if (context !== undefined) {
        const err = context['err'];
        if (err instanceof Error) context['err'] = err.message;
        const text = JSON.stringify(context, jsonReplacer);
        if (text !== '{}') suffix = ` ${text}`;
      }
      io.stderr.write(`${name}: ${oneLine(message)}${suffix}\n`);
    };
  const logger: StderrLogger = {
    level,
    debug: make('debug'),
    info: make('info'),
    warn: make('warn'),
    error: make('error'),
  };
  return logger;
}

/**
 * Progress of a long scan on stderr: a bar redrawn in place on a terminal, otherwise a plain line every
 * `intervalMs` (so logs of cron jobs stay readable).
 */
export class Progress {
  private done = 0;
  private lastDraw = 0;
  private drawn = false;
  private readonly started = Date.now();

  constructor(
    private readonly io: CliIo,
    private readonly label: string,
    private readonly total: number,
    private readonly intervalMs = io.isTTY ? 100 : 10_000,
  ) {}

  /** Adds `n` visited items (capped at the total); `extra` is appended (e.g. "3 expired"). */
  tick(n: number, extra = ''): void {
    this.done = Math.min(this.total, this.done + n);
    const now = Date.now();
    if (now - this.lastDraw < this.intervalMs) return;
    this.lastDraw = now;
    this.draw(extra);
  }

  /** Ends the bar (a terminal gets its final state and a newline). */
  finish(extra = ''): void {
    this.done = this.total;
    if (this.io.isTTY && this.drawn) {
      this.draw(extra);
      this.io.stderr.write('\n');
    }
  }

  private draw(extra: string): void {
    const percent = this.total === 0 ? 100 : Math.min(100, Math.floor((this.done / this.total) * 100));
    const counts = `${this.done}/${this.total}`;
    const tail = extra === '' ? '' : ` ${extra}`;
    if (this.io.isTTY) {
      const width = 30;
      const filled = Math.round((percent / 100) * width);
      const bar = `${'#'.repeat(filled)}${'.'.repeat(width - filled)}`;
      this.io.stderr.write(`\r\x1b[K${this.label} [${bar}] ${percent}% ${counts}${tail}`);
      this.drawn = true;
    } else {
      const seconds = Math.round((Date.now() - this.started) / 1000);
      this.io.stderr.write(`${this.label}: ${counts} keys visited (~${percent}%, ${seconds}s)${tail}\n`);
    }
  }
}
