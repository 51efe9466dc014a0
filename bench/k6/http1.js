// HTTP/1.1 through the meshpipe sidecar: keep-alive GETs and POSTs at a
// constant arrival rate. Thresholds: no failed request; p99 within the
// benchmark's target (lib/config.js).
//
//   k6 run -e TARGET=http://web.shop.svc:8080 bench/k6/http1.js
import http from 'k6/http';
import { check } from 'k6';
import { commonThresholds, p99Limit, scenario, target } from './lib/config.js';

const base = target('http://127.0.0.1:8080');

export const options = {
  scenarios: { http1: scenario('http1') },
  thresholds: {
    ...commonThresholds,
    http_req_failed: ['rate==0'],
    http_req_duration: [`p(99)<${p99Limit()}`],
  },
};

const body = JSON.stringify({ item: 'k6', quantity: 3 });

export function http1() {
  const get = http.get(`${base}/hello?from=k6`, { tags: { name: 'GET /hello' } });
  check(get, {
    'GET status 200': (r) => r.status === 200,
    'GET over HTTP/1.1': (r) => r.proto === 'HTTP/1.1',
  });
  const post = http.post(`${base}/orders`, body, { headers: { 'content-type': 'application/json' }, tags: { name: 'POST /orders' } });
  check(post, {
    'POST status 2xx': (r) => r.status >= 200 && r.status < 300,
    'POST body echoed': (r) => r.body.includes('"quantity":3'),
  });
}

export default http1;
