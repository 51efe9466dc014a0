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
 */
import type http from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from './logger.js';
import { RateLimited } from './rate-limited.js';

/** Open admin connections at most: well below the default descriptor reserve. */
export const ADMIN_MAX_CONNECTIONS = 64;

/** Tracks the server's sockets in connection order and enforces the bound. */
export class AdminConnections {
  /** Open sockets, oldest first, with how many requests each has in flight. */
  readonly #open = new Map<Socket, number>();
  readonly #max: number;
  readonly #logger: Logger | undefined;
  readonly #warned = new RateLimited();
  #evicted = 0;

  constructor(server: http.Server, logger?: Logger, max = ADMIN_MAX_CONNECTIONS) {
    this.#max = max;
    this.#logger = logger;
    server.on('connection', (socket: Socket) => this.#admit(socket));
    server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
      const socket = req.socket;
      const inFlight = this.#open.get(socket);
      if (inFlight === undefined) return;
      this.#open.set(socket, inFlight + 1);
      res.once('close', () => {
        const n = this.#open.get(socket);
        if (n !== undefined) this.#open.set(socket, Math.max(0, n - 1));
      });
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
      for (const [s, inFlight] of this.#open) {
        if (inFlight === 0) {
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
    this.#open.set(socket, 0);
    socket.once('close', () => this.#open.delete(socket));
  }
}
