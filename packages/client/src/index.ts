// The client: the whole system composed, and its declarations and tracing.
export { Client, type ClientOptions } from './client.js';
export {
  liveness,
  readiness,
  type ClientHealth,
  type HealthOptions,
  type LivenessOptions,
  type ProbeResult,
  type PublishingHealth,
  type QueueHealth,
  type StoreHealth,
} from './probes.js';
export { applyDeclarations, loadDeclarations, parseDeclarations, type Declarations } from './declarations.js';
export { traceQueueName, type TraceHandle, type Tracer } from './trace.js';

// The parts a user composes with, so `@beetle/client` alone is enough for most services.
export {
  createConfig,
  loadConfigFile,
  configFromEnv,
  MemoryDedupStore,
  Topology,
  Outcome,
  type BeetleConfig,
  type BeetleConfigInput,
  type BeetleMessage,
  type DedupStore,
  type Logger,
} from '@beetle/core';
export { RedisDedupStore } from '@beetle/dedup-redis';
export type { PublishOptions } from '@beetle/publisher';
export type {
  Handler,
  HandlerContext,
  HandlerMessage,
  HandlerObject,
  HandlerOptions,
} from '@beetle/subscriber';
