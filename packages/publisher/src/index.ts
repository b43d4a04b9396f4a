export {
  Publisher,
  QueueSetupError,
  type BrokerSetupReport,
  type PublishOptions,
  type PublisherEvents,
  type PublisherOptions,
} from './publisher.js';
