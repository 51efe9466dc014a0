// WebSockets through the meshpipe sidecar: each iteration opens a
// connection (the upgrade is detected as HTTP/1.1, then the stream is
// forwarded as TCP), exchanges MESSAGES messages with an echo endpoint and
// closes. Thresholds: every upgrade succeeds and every message comes back
// intact; p99 of the echo round trip and of the connect within the
// benchmark's target.
//
//   k6 run -e TARGET=ws://chat.shop.svc:8081/echo -e RATE=500 bench/k6/websocket.js
import ws from 'k6/ws';
import { check } from 'k6';
import { Trend } from 'k6/metrics';
import { commonThresholds, env, p99Limit, scenario, target } from './lib/config.js';

const url = target('ws://127.0.0.1:8081/echo');
const messages = Number(env('MESSAGES', '10'));
const echoRtt = new Trend('ws_echo_rtt', true);

export const options = {
  scenarios: { websocket: scenario('websocket') },
  thresholds: {
    ...commonThresholds,
    ws_connecting: [`p(99)<${p99Limit()}`],
    ws_echo_rtt: [`p(99)<${p99Limit()}`],
  },
};

export function websocket() {
  let received = 0;
  let sentAt = 0;
  const res = ws.connect(url, { tags: { name: 'echo' } }, (socket) => {
    const sendNext = () => {
      sentAt = Date.now();
      socket.send(`message ${received}`);
    };
    socket.on('open', sendNext);
    socket.on('message', (data) => {
      echoRtt.add(Date.now() - sentAt);
      check(data, { 'echo intact': (d) => d === `message ${received}` });
      received += 1;
      if (received < messages) sendNext();
      else socket.close();
    });
    // A stalled exchange fails the iteration instead of hanging it.
    socket.setTimeout(() => socket.close(), 10000);
  });
  check(res, { 'upgraded (101)': (r) => r && r.status === 101 });
  check(received, { 'all messages echoed': (n) => n === messages });
}

export default websocket;
