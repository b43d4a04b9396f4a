export { Publisher, QueueSetupError, type BrokerSetupReport, type PublisherOptions } from './publisher.js';
export type { PublisherEvents, PublishOptions } from './types.js';
