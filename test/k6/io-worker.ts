/**
 * The I/O half of the k6 stubs, on its own thread (bridge.ts blocks the
 * script's thread while this one works): real requests with real clients.
 * HTTP/1.1 with Node's http client and a keep-alive agent (one connection
 * reused, as a k6 VU does); https with Node's http2 client (ALPN h2, as k6
 * negotiates it); gRPC with @grpc/grpc-js and the script's .proto files via
 * @grpc/proto-loader; WebSockets with the `ws` client. Results are plain,
 * k6-shaped values.
 */
import { Agent, request as httpRequest } from 'node:http';
import { connect as h2connect, type ClientHttp2Session } from 'node:http2';
import { performance } from 'node:perf_hooks';
import { workerData, type MessagePort } from 'node:worker_threads';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import WebSocket from 'ws';

const { port, shared } = workerData as { port: MessagePort; shared: Int32Array };

export interface HttpArgs {
  readonly method: string;
  readonly url: string;
  readonly body?: string;
  readonly headers: Record<string, string>;
  readonly insecure: boolean;
}

export interface HttpResult {
  readonly status: number;
  readonly proto: string;
  readonly body: string;
  readonly headers: Record<string, string>;
  readonly durationMs: number;
  readonly error: string;
}

const agent = new Agent({ keepAlive: true, maxSockets: 1 });
const h2sessions = new Map<string, ClientHttp2Session>();

function http1(a: HttpArgs): Promise<HttpResult> {
  return new Promise((resolve) => {
    const started = performance.now();
    const req = httpRequest(a.url, { method: a.method, headers: a.headers, agent }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => {
        const headers = Object.fromEntries(Object.entries(res.headers).map(([k, v]) => [k, String(v)]));
        resolve({ status: res.statusCode ?? 0, proto: `HTTP/${res.httpVersion}`, body, headers, durationMs: performance.now() - started, error: '' });
      });
    });
    req.on('error', (e) => resolve({ status: 0, proto: '', body: '', headers: {}, durationMs: performance.now() - started, error: e.message }));
    req.end(a.body);
  });
}

function http2(a: HttpArgs): Promise<HttpResult> {
  const url = new URL(a.url);
  let session = h2sessions.get(url.origin);
  if (session === undefined || session.destroyed) {
    session = h2connect(url.origin, { rejectUnauthorized: !a.insecure, ALPNProtocols: ['h2'] });
    session.on('error', () => undefined);
    h2sessions.set(url.origin, session);
  }
  const s = session;
  return new Promise((resolve) => {
    const started = performance.now();
    const req = s.request({ ':method': a.method, ':path': `${url.pathname}${url.search}`, ...a.headers });
    let status = 0;
    let headers: Record<string, string> = {};
    let body = '';
    req.on('response', (h) => {
      status = Number(h[':status']);
      headers = Object.fromEntries(Object.entries(h).filter(([k]) => !k.startsWith(':')).map(([k, v]) => [k, String(v)]));
    });
    req.setEncoding('utf8').on('data', (d: string) => (body += d));
    req.on('end', () => resolve({ status, proto: s.alpnProtocol === 'h2' ? 'HTTP/2.0' : `unexpected ALPN ${String(s.alpnProtocol)}`, body, headers, durationMs: performance.now() - started, error: '' }));
    req.on('error', (e: Error) => resolve({ status: 0, proto: '', body: '', headers: {}, durationMs: performance.now() - started, error: e.message }));
    req.end(a.body);
  });
}

// gRPC: one loaded package definition per client, one channel per connect.
const grpcClients = new Map<number, { def?: grpc.GrpcObject; client?: grpc.Client; services?: Map<string, grpc.ServiceClientConstructor> }>();

function serviceConstructors(obj: grpc.GrpcObject, prefix: string, out: Map<string, grpc.ServiceClientConstructor>): void {
  for (const [name, value] of Object.entries(obj)) {
    const full = prefix === '' ? name : `${prefix}.${name}`;
    if (typeof value === 'function' && 'service' in value) out.set(full, value);
    else if (typeof value === 'object' && value !== null && !('format' in value)) serviceConstructors(value, full, out);
  }
}

async function grpcOp(op: string, a: Record<string, unknown>): Promise<unknown> {
  const id = a['id'] as number;
  const state = grpcClients.get(id) ?? {};
  grpcClients.set(id, state);
  switch (op) {
    case 'grpc.load': {
      const def = protoLoader.loadSync(a['files'] as string[], { includeDirs: a['importPaths'] as string[], longs: String, enums: String, defaults: true, oneofs: true });
      state.def = grpc.loadPackageDefinition(def);
      state.services = new Map();
      serviceConstructors(state.def, '', state.services);
      return [...state.services.keys()];
    }
    case 'grpc.connect': {
      if (!a['plaintext']) throw new Error('the stub connects with plaintext: true only');
      const first = [...(state.services?.values() ?? [])][0];
      if (first === undefined) throw new Error('connect before load: no service known');
      state.client = new first(a['addr'] as string, grpc.credentials.createInsecure());
      await new Promise<void>((resolve, reject) => state.client?.waitForReady(Date.now() + 5000, (e) => (e ? reject(e) : resolve())));
      return true;
    }
    case 'grpc.invoke': {
      const [service, method] = (a['method'] as string).replace(/^\//, '').split('/') as [string, string];
      const ctor = state.services?.get(service);
      if (ctor === undefined || state.client === undefined) throw new Error(`unknown service ${service} or not connected`);
      const def = ctor.service[method];
      if (def === undefined) throw new Error(`service ${service} has no method ${method}`);
      const metadata = new grpc.Metadata();
      for (const [k, v] of Object.entries((a['metadata'] as Record<string, string> | undefined) ?? {})) metadata.set(k, v);
      const started = performance.now();
      return await new Promise((resolve) => {
        state.client?.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize, a['data'], metadata, {}, (err, value: unknown) => {
          resolve({ status: err ? (err.code ?? 2) : 0, message: err ? null : value, error: err ? err.message : '', durationMs: performance.now() - started });
        });
      });
    }
    case 'grpc.close':
      state.client?.close();
      return true;
    default:
      throw new Error(`unknown op ${op}`);
  }
}

// WebSockets: events are queued until the script's loop asks for the next one.
interface WsState {
  readonly socket: WebSocket;
  readonly events: { type: string; data?: string; code?: number }[];
  wake?: (() => void) | undefined;
}
const sockets = new Map<number, WsState>();
let nextWs = 1;

async function wsOp(op: string, a: Record<string, unknown>): Promise<unknown> {
  if (op === 'ws.open') {
    const started = performance.now();
    const socket = new WebSocket(a['url'] as string, { headers: (a['headers'] as Record<string, string> | undefined) ?? {} });
    const id = nextWs++;
    const state: WsState = { socket, events: [] };
    const push = (e: { type: string; data?: string; code?: number }): void => {
      state.events.push(e);
      state.wake?.();
    };
    socket.on('message', (d: Buffer) => push({ type: 'message', data: d.toString('utf8') }));
    socket.on('close', (code) => push({ type: 'close', code }));
    socket.on('error', (e) => push({ type: 'error', data: e.message }));
    const status = await new Promise<number>((resolve) => {
      socket.once('upgrade', (res) => resolve(res.statusCode ?? 0));
      socket.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      socket.once('error', () => resolve(0));
    });
    if (status === 101) await new Promise<void>((resolve) => (socket.readyState === WebSocket.OPEN ? resolve() : socket.once('open', () => resolve())));
    sockets.set(id, state);
    return { id, status, connectingMs: performance.now() - started };
  }
  const state = sockets.get(a['id'] as number);
  if (state === undefined) throw new Error(`no websocket ${String(a['id'])}`);
  switch (op) {
    case 'ws.send':
      await new Promise<void>((resolve, reject) => state.socket.send(a['data'] as string, (e) => (e ? reject(e) : resolve())));
      return true;
    case 'ws.close':
      state.socket.close(1000);
      return true;
    case 'ws.next': {
      if (state.events.length === 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, a['timeoutMs'] as number);
          state.wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        state.wake = undefined;
      }
      return state.events.shift() ?? { type: 'timeout' };
    }
    default:
      throw new Error(`unknown op ${op}`);
  }
}

async function handle(op: string, args: unknown): Promise<unknown> {
  if (op === 'http') {
    const a = args as HttpArgs;
    return a.url.startsWith('https:') ? http2(a) : http1(a);
  }
  if (op.startsWith('grpc.')) return grpcOp(op, args as Record<string, unknown>);
  if (op.startsWith('ws.')) return wsOp(op, args as Record<string, unknown>);
  throw new Error(`unknown op ${op}`);
}

port.on('message', (msg: { op: string; args: unknown }) => {
  void handle(msg.op, msg.args).then(
    (value) => port.postMessage({ ok: true, value }),
    (err: unknown) => port.postMessage({ ok: false, error: err instanceof Error ? err.message : String(err) }),
  ).finally(() => {
    Atomics.store(shared, 0, 1);
    Atomics.notify(shared, 0);
  });
});
