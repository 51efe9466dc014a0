/**
 * The two ends of the idle-connection memory test, run as separate processes
 * (so their own sockets and heap never count against the proxy being measured):
 *
 *   node dist/bench/idle-peer.js sink PORT
 *     listens on 127.0.0.1:PORT, never writes, and reports how many of its
 *     connections are open and have delivered at least one byte, i.e. are
 *     established end to end through the proxy.
 *   node dist/bench/idle-peer.js client PORT COUNT
 *     opens COUNT connections to 127.0.0.1:PORT (at most 256 connects in
 *     flight so the proxy's accept backlog never overflows), writes one short
 *     line on each, then holds them all open and silent.
 *
 * Both print one JSON object per line on stdout (`{"event":...}`) and run until
 * SIGTERM. The line written (`meshpipe-idle-probe\n`) is not an HTTP request
 * line, so a detect-mode listener decides `not_http` at once.
 */
import { connect, createServer, type Socket } from 'node:net';

export const PROBE = Buffer.from('meshpipe-idle-probe\n');
const MAX_PENDING_CONNECTS = 256;

function emit(event: string, fields: Record<string, number | string> = {}): void {
  process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);
}

/** Reports `count` whenever it changed, at most every 200 ms. */
function reporter(event: string, read: () => Record<string, number>): void {
  let last = '';
  setInterval(() => {
    const fields = read();
    const text = JSON.stringify(fields);
    if (text !== last) {
      last = text;
      emit(event, fields);
    }
  }, 200);
}

function sink(port: number): void {
  let delivered = 0;
  let open = 0;
  const server = createServer({ pauseOnConnect: false }, (socket: Socket) => {
    open++;
    let counted = false;
    socket.on('data', () => {
      if (!counted) {
        counted = true;
        delivered++;
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      open--;
      if (counted) delivered--;
    });
  });
  server.maxConnections = 1 << 20;
  server.on('error', (err) => {
    emit('error', { message: err.message });
    process.exit(1);
  });
  server.listen({ host: '127.0.0.1', port, backlog: 4096 }, () => emit('listening', { port }));
  reporter('sink', () => ({ open, delivered }));
}

function client(port: number, count: number): void {
  let started = 0;
  let pending = 0;
  let open = 0;
  let failed = 0;
  let closed = 0;
  let firstError = '';
  const sockets: Socket[] = [];

  const openOne = (): void => {
    started++;
    pending++;
    const socket = connect({ host: '127.0.0.1', port });
    let settled = false;
    let connected = false;
    const settle = (ok: boolean): void => {
      if (settled) return;
      settled = true;
      connected = ok;
      pending--;
      if (ok) open++;
      else failed++;
      pump();
    };
    socket.once('connect', () => {
      socket.write(PROBE);
      settle(true);
    });
    socket.on('error', (err) => {
      if (firstError === '') firstError = err.message;
      settle(false);
    });
    // A connection the proxy (or sink) drops while we hold it shows up here.
    socket.on('close', () => {
      if (connected) {
        open--;
        closed++;
      }
    });
    // Nothing is expected back; reading keeps a proxy's RST or EOF visible as 'close'.
    socket.on('data', () => undefined);
    sockets.push(socket);
  };

  const pump = (): void => {
    while (pending < MAX_PENDING_CONNECTS && started < count) openOne();
    if (started === count && pending === 0) emit('ready', { open, failed, error: firstError });
  };

  reporter('client', () => ({ started, open, failed, closed }));
  pump();
}

function main(): void {
  const [mode, portText, countText] = process.argv.slice(2);
  const port = Number(portText);
  if (!Number.isInteger(port) || port <= 0 || port > 65535) {
    console.error(`idle-peer: bad PORT "${portText}": expected 1-65535\nusage: idle-peer.js sink PORT | client PORT COUNT`);
    process.exit(2);
  }
  process.on('SIGTERM', () => process.exit(0));
  if (mode === 'sink') sink(port);
  else if (mode === 'client') {
    const count = Number(countText);
    if (!Number.isInteger(count) || count <= 0) {
      console.error(`idle-peer: bad COUNT "${countText}": expected a positive integer`);
      process.exit(2);
    }
    client(port, count);
  } else {
    console.error(`idle-peer: bad mode "${mode}": expected sink or client\nusage: idle-peer.js sink PORT | client PORT COUNT`);
    process.exit(2);
  }
}

main();
