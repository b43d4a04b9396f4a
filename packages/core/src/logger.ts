/**
 * The logger Beetle writes to: a subset of pino's interface (`pino()` and `console` both fit), silent by
 * default. Structured context goes first, as in pino: `logger.warn({ server }, 'broker dead')`.
 */
export interface LogFn {
  (message: string, ...args: unknown[]): void;
  (context: object, message?: string, ...args: unknown[]): void;
}

export interface Logger {
  debug: LogFn;
  info: LogFn;
  warn: LogFn;
  error: LogFn;
}

const noop: LogFn = () => undefined;

export const silentLogger: Logger = { debug: noop, info: noop, warn: noop, error: noop };
