export { BeetleMetrics, beetleMetrics, type BeetleMetricsOptions, type WatchTargets } from './metrics.js';
