// gRPC (HTTP/2 cleartext) through the meshpipe sidecar: unary calls to the
// Echo service (echo.proto) at a constant arrival rate. The connection is
// opened once per virtual user and reused, as gRPC clients do. Thresholds:
// every call OK, p99 within the benchmark's target.
//
//   k6 run -e TARGET=echo.shop.svc:9000 bench/k6/grpc.js
import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { commonThresholds, p99Limit, scenario, target } from './lib/config.js';

const addr = target('127.0.0.1:9000');
const client = new grpc.Client();
client.load(['.'], 'echo.proto');

export const options = {
  scenarios: { grpc: scenario('grpcEcho') },
  thresholds: {
    ...commonThresholds,
    grpc_req_duration: [`p(99)<${p99Limit()}`],
  },
};

let connected = false;
const payload = 'meshpipe'.repeat(128);

export function grpcEcho() {
  if (!connected) {
    client.connect(addr, { plaintext: true, timeout: '5s' });
    connected = true;
  }
  const res = client.invoke('meshpipe.bench.Echo/Say', { message: 'hello from k6', payload: payload }, { metadata: { 'x-scenario': 'grpc' } });
  check(res, {
    'status OK': (r) => r && r.status === grpc.StatusOK,
    'message echoed': (r) => r && r.message && r.message.message === 'hello from k6',
    // proto3 int64 arrives as a string in k6's JSON mapping.
    'payload size': (r) => r && r.message && String(r.message.payloadSize) === String(payload.length),
  });
}

export default grpcEcho;
