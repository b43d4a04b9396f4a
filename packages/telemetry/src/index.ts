/**
 * `@beetle/telemetry`: observing Beetle. Tracing is in `@beetle/telemetry/otel` (needs `@opentelemetry/api`),
 * metrics in `@beetle/telemetry/prometheus` (needs `prom-client`); import only what you use.
 */
export { combineTelemetry } from './combine.js';
export type {
  CopyObservation,
  DeliveryInfo,
  DeliveryObservation,
  DeliveryResult,
  PublishInfo,
  PublishObservation,
  PublishResult,
  Telemetry,
} from '@beetle/core';
