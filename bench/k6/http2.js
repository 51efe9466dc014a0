// HTTP/2 through the meshpipe sidecar. k6 speaks HTTP/2 over TLS (ALPN h2),
// so the app serves TLS and the sidecar carries it as TLS it detects and
// forwards (the connection's bytes are the app's own). Thresholds: no failed
// request, every response over HTTP/2, p99 within the benchmark's target.
//
//   k6 run -e TARGET=https://web.shop.svc:8443 bench/k6/http2.js
import http from 'k6/http';
import { check } from 'k6';
import { commonThresholds, p99Limit, scenario, target } from './lib/config.js';

const base = target('https://127.0.0.1:8443');

export const options = {
  // The app's certificate is usually not issued for the name k6 dials.
  insecureSkipTLSVerify: true,
  scenarios: { http2: scenario('http2') },
  thresholds: {
    ...commonThresholds,
    http_req_failed: ['rate==0'],
    http_req_duration: [`p(99)<${p99Limit()}`],
  },
};

export function http2() {
  const res = http.get(`${base}/hello?from=k6-h2`, { tags: { name: 'GET /hello (h2)' } });
  check(res, {
    'status 200': (r) => r.status === 200,
    'over HTTP/2': (r) => r.proto === 'HTTP/2.0',
  });
}

export default http2;
