export { checkPostgres, closePostgres, ensureSchema, getPool, transaction } from './database';
export { HttpError, Router, readJson, sendJson } from './middleware/http';
export type { Handler, RequestContext } from './middleware/http';
export { runBasicService } from './middleware/basic';
export { DEPENDENCIES, runService } from './middleware/service';
export type { RunningService, ServiceOptions } from './middleware/service';
export { BrokerUnavailable, EVENTS_EXCHANGE, broker, checkRabbitMQ, closeRabbitMQ } from './rabbitmq';
export type { EventHandler } from './rabbitmq';
export { checkRedis, closeRedis, getRedis } from './redis';
export {
  DEFAULT_APP_ROOT, EnvFileError, appRoot, envFilePath, intSetting, loadEnvFile, parseEnvFile,
} from './utils/env';
export { probe } from './utils/health';
export type { DependencyStatus } from './utils/health';
export { errorText, log } from './utils/log';
export { releaseVersion } from './utils/release';
export { TimeoutError, sleep, withTimeout } from './utils/time';
