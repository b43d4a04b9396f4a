import type { BeetleConfig, Logger } from '@beetle/core';
import type { FlagSpecs, FlagValues } from './options.js';
import type { CliIo, Printer } from './output.js';

export interface CommandContext {
  readonly io: CliIo;
  readonly print: Printer;
  readonly flags: FlagValues;
  readonly positionals: readonly string[];
  readonly config: BeetleConfig;
  /** Library logger: stderr with `--verbose`, silent otherwise. */
  readonly logger: Logger;
  readonly verbose: boolean;
  /** Turns on the command's `logLevel` (no-op with --verbose, which logs everything from the start). */
  startLogging(): void;
  /** Aborted on SIGINT/SIGTERM (or by the embedding caller): stop gracefully. */
  readonly signal: AbortSignal;
}

export interface CommandSpec {
  readonly name: string;
  /** Other names, e.g. the Go command's (`garbage_collect_deduplication_store`). */
  readonly aliases?: readonly string[];
  readonly summary: string;
  /** Arguments after the command name, e.g. `<message> [body|-]`. */
  readonly args: string;
  readonly positionals: { readonly min: number; readonly max: number };
  /** Paragraphs after the usage line. */
  readonly description: string;
  readonly flags: FlagSpecs;
  readonly examples: readonly string[];
  /**
   * Library log level without --verbose once the command calls `ctx.startLogging()` (long-running commands,
   * after they started: failures to start stay one line). Silent otherwise.
   */
  readonly logLevel?: 'warn' | 'error';
  /** Returns the exit status. */
  run(ctx: CommandContext): Promise<number>;
}
