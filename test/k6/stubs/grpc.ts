/**
 * Stub of `k6/net/grpc`: Client.load reads the script's .proto files
 * (relative to the script, as k6 resolves them), connect/invoke/close make
 * real calls with @grpc/grpc-js (io-worker.ts); invoke returns k6's shape
 * ({ status, message, error }) and records grpc_req_duration.
 */
import { isAbsolute, resolve } from 'node:path';
import { call } from '../bridge.js';
import { record } from '../metrics.js';

declare const __K6_SCRIPT_DIR: string;
let nextId = 1;

export const StatusOK = 0;
export const StatusCanceled = 1;
export const StatusUnknown = 2;
export const StatusInvalidArgument = 3;
export const StatusDeadlineExceeded = 4;
export const StatusNotFound = 5;
export const StatusUnavailable = 14;

export class Client {
  private readonly id = nextId++;

  load(importPaths: string[], ...files: string[]): string[] {
    const dirs = importPaths.map((p) => (isAbsolute(p) ? p : resolve(__K6_SCRIPT_DIR, p)));
    return call<string[]>('grpc.load', { id: this.id, importPaths: dirs, files });
  }

  connect(addr: string, params: { plaintext?: boolean } = {}): boolean {
    return call<boolean>('grpc.connect', { id: this.id, addr, plaintext: params.plaintext === true });
  }

  invoke(method: string, data: object, params: { metadata?: Record<string, string>; tags?: Record<string, string> } = {}): object {
    const r = call<{ status: number; message: unknown; error: string; durationMs: number }>('grpc.invoke', { id: this.id, method, data, metadata: params.metadata ?? {} });
    record('grpc_req_duration', 'trend', r.durationMs, { method, status: String(r.status), ...params.tags });
    return { status: r.status, message: r.message, error: r.error === '' ? null : { message: r.error } };
  }

  close(): void {
    call('grpc.close', { id: this.id });
  }
}

export default { Client, StatusOK, StatusCanceled, StatusUnknown, StatusInvalidArgument, StatusDeadlineExceeded, StatusNotFound, StatusUnavailable };
