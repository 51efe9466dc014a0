/**
 * Stub of `k6/ws`: connect() opens a real WebSocket (io-worker.ts), runs the
 * script's callback to register handlers, fires `open`, then loops on the
 * connection's events (message, close, error) and the socket's timers, as
 * k6's per-connection event loop does, until the connection closes. It
 * returns k6's response (status 101 on an upgrade) and records ws_connecting,
 * ws_sessions, ws_msgs_sent, ws_msgs_received and ws_session_duration.
 */
import { performance } from 'node:perf_hooks';
import { call } from '../bridge.js';
import { record } from '../metrics.js';

type Handler = (...args: unknown[]) => void;

interface Timer {
  at: number;
  fn: () => void;
  every: number;
}

export function connect(url: string, params: { headers?: Record<string, string>; tags?: Record<string, string> } | ((s: unknown) => void), callback?: (s: unknown) => void): object {
  const cb = typeof params === 'function' ? params : callback;
  const p = typeof params === 'function' ? {} : params;
  if (cb === undefined) throw new Error('ws.connect needs a callback');
  const started = performance.now();
  const opened = call<{ id: number; status: number; connectingMs: number }>('ws.open', { url, headers: p.headers ?? {} });
  const tags = { url, ...p.tags };
  record('ws_connecting', 'trend', opened.connectingMs, tags);
  if (opened.status !== 101) return { status: opened.status, url, error: 'upgrade failed' };
  record('ws_sessions', 'counter', 1, tags);

  const handlers = new Map<string, Handler[]>();
  const timers: Timer[] = [];
  let closed = false;
  const emit = (event: string, ...args: unknown[]): void => {
    for (const h of handlers.get(event) ?? []) h(...args);
  };
  const socket = {
    on(event: string, handler: Handler) {
      handlers.set(event, [...(handlers.get(event) ?? []), handler]);
    },
    send(data: string) {
      call('ws.send', { id: opened.id, data });
      record('ws_msgs_sent', 'counter', 1, tags);
    },
    close() {
      if (!closed) call('ws.close', { id: opened.id });
    },
    setTimeout(fn: () => void, ms: number) {
      timers.push({ at: performance.now() + ms, fn, every: 0 });
    },
    setInterval(fn: () => void, ms: number) {
      timers.push({ at: performance.now() + ms, fn, every: ms });
    },
    ping() {},
  };
  cb(socket);
  emit('open');
  while (!closed) {
    timers.sort((a, b) => a.at - b.at);
    const next = timers[0];
    const wait = next === undefined ? 30_000 : Math.max(0, next.at - performance.now());
    const event = call<{ type: string; data?: string; code?: number }>('ws.next', { id: opened.id, timeoutMs: wait }, wait + 30_000);
    switch (event.type) {
      case 'message':
        record('ws_msgs_received', 'counter', 1, tags);
        emit('message', event.data);
        break;
      case 'close':
        closed = true;
        emit('close', event.code);
        break;
      case 'error':
        emit('error', { error: () => event.data });
        break;
      default: {
        // A timer is due.
        const due = timers.shift();
        if (due === undefined) throw new Error('ws stub: no event for 30 s and no timer set');
        if (due.every > 0) timers.push({ ...due, at: due.at + due.every });
        due.fn();
      }
    }
  }
  record('ws_session_duration', 'trend', performance.now() - started, tags);
  return { status: opened.status, url, error: '' };
}

export default { connect };
