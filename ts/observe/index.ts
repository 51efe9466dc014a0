/**
 * ts/observe/: what the running proxy tells the outside world.
 *
 * metrics.ts renders the engine's counters as Prometheus metrics in Linkerd's
 * names (one engine snapshot per scrape); admin-server.ts serves them with
 * /ready, /live, /shutdown, /policy and /connections (docs/observability.md);
 * logger.ts is the structured (pino, JSON lines on stdout) logger.
 *
 * Other folders import from here.
 */
export { Metrics, type SnapshotSource, type MetricsOptions } from './metrics.js';
export { AdminServer, type AdminServerOptions, type NotReadyReason } from './admin-server.js';
export { createLogger, LOG_MESSAGES, type Logger } from './logger.js';
