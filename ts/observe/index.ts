/**
 * ts/observe/: what the running proxy tells the outside world.
 *
 * metrics.ts renders the engine's counters as Prometheus metrics in Linkerd's
 * names (one engine snapshot per scrape); admin-server.ts serves them with
 * /ready, /live, /shutdown, /policy and /connections (docs/observability.md);
 * logger.ts is the structured logger (pino on stderr: JSON lines, or text for
 * a terminal, log-format.ts).
 *
 * Other folders import from here.
 */
export { Metrics, type SnapshotSource, type MetricsOptions } from './metrics.js';
export { AdminServer, type AdminServerOptions, type NotReadyReason } from './admin-server.js';
export { createLogger, LOG_MESSAGES, type Logger } from './logger.js';
export { effectiveLogFormat, renderTextLine, LOG_FORMATS, type LogFormat } from './log-format.js';
