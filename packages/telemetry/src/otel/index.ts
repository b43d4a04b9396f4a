export { TRACER_NAME, otelTelemetry, type OtelTelemetryOptions } from './tracing.js';
