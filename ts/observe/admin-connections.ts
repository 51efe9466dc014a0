/**
 * A bound on the admin server's open connections, which evicts idle ones
 * instead of refusing new ones.
 *
 * Injected sidecars serve the admin port on 0.0.0.0 (the kubelet's probes
 * and Prometheus must reach it), so any pod can open connections to it, and
 * node:http keeps a connection that never sends a byte open indefinitely
 * (its header timeout starts with the first byte). Unbounded, such a flood
 * takes descriptors from the reserve the engine leaves free for the admin
 * server and Node.js (`--fd-reserve`, 128 by default) and then from the
 * engine's own budget. Refusing connections past a limit would protect the
 * descriptors but lock the probes out: the kubelet would restart a healthy
 * pod. So at the limit the oldest connection with no request in flight is
 * closed to make room: a flood of idle sockets costs the attacker its own
 * oldest sockets, and a probe that sends its request at once is served.
 * Only when every connection is busy with a request is the newest refused.
 *
 * A request is in flight while its handler works on it, from when its
 * body has all arrived until it has ended its response, not until the peer
 * has read it: a peer that
 * pipelines requests and never reads the answers leaves them unflushed
 * in Node for as long as it likes (no timeout covers writing a response),
 * and 64 such connections counted as busy would refuse every probe.
 */
import type http from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from './logger.js';
import { RateLimited } from './rate-limited.js';

/** Open admin connections at most: well below the default descriptor reserve. */
export const ADMIN_MAX_CONNECTIONS = 64;

/** Tracks the server's sockets in connection order and enforces the bound. */
export class AdminConnections {
  /** Open sockets, oldest first, with the responses of each not yet closed. */
  readonly #open = new Map<Socket, Set<http.ServerResponse>>();
  readonly #max: number;
  readonly #logger: Logger | undefined;
  readonly #warned = new RateLimited();
  #evicted = 0;

  constructor(server: http.Server, logger?: Logger, max = ADMIN_MAX_CONNECTIONS) {
    this.#max = max;
    this.#logger = logger;
    server.on('connection', (socket: Socket) => this.#admit(socket));
    server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
      const responses = this.#open.get(req.socket);
      if (responses === undefined) return;
      responses.add(res);
      res.once('close', () => responses.delete(res));
    });
  }

  /** Connections closed or refused to stay within the bound. */
  get evicted(): number {
    return this.#evicted;
  }

  /** Open connections now. */
  get size(): number {
    return this.#open.size;
  }

  #admit(socket: Socket): void {
    if (this.#open.size >= this.#max) {
      let idle: Socket | undefined;
      for (const [s, responses] of this.#open) {
        if (AdminConnections.#idle(responses)) {
          idle = s;
          break;
        }
      }
      this.#evicted++;
      const n = this.#warned.hit('limit');
      if (n !== undefined) {
        this.#logger?.warn({ limit: this.#max, closed: n, peer: socket.remoteAddress },
          'admin server at its connection limit: closed the oldest idle connection (a client holding many idle connections to the admin port?)');
      }
      if (idle === undefined) {
        // Every connection is serving a request: the newcomer waits for none.
        socket.destroy();
        return;
      }
      this.#open.delete(idle);
      idle.destroy();
    }
    this.#open.set(socket, new Set());
    socket.once('close', () => this.#open.delete(socket));
  }

  /**
   * No handler is working on a whole request of the connection: answers
   * the peer has not read yet do not count, nor a request whose body has
   * not all arrived (a peer that sends `Content-Length: 100` and two bytes
   * would otherwise hold its slot as busy for the 30 s request timeout, and
   * 64 of them would refuse every probe).
   */
  static #idle(responses: ReadonlySet<http.ServerResponse>): boolean {
    for (const res of responses) if (!res.writableEnded && res.req.complete) return false;
    return true;
  }
}
