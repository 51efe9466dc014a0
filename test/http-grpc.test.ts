/**
 * gRPC through the HTTP proxy with @grpc/grpc-js on both ends: unary, server
 * streaming, bidirectional streaming, and non-zero statuses, with
 * `response_total{grpc_status}` and its classification checked against the
 * calls made (read from trailers, and from trailers-only responses).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as loader from '@grpc/proto-loader';
import { HOST, ROOT, startProxy, waitFor } from './helpers.js';
import { adminAddress, scrape } from './admin-client.js';
import { total } from './prom-parse.js';

interface Msg { text: string; n: number }
type EchoClient = grpc.Client & {
  say(m: Msg, cb: (err: grpc.ServiceError | null, r?: Msg) => void): void;
  count(m: Msg): grpc.ClientReadableStream<Msg>;
  chat(): grpc.ClientDuplexStream<Msg, Msg>;
};

const definition = loader.loadSync(join(ROOT, 'test/fixtures/grpc/echo.proto'), { keepCase: true, defaults: true });
const proto = grpc.loadPackageDefinition(definition) as unknown as { meshpipe: { test: { Echo: grpc.ServiceClientConstructor } } };
const Echo = proto.meshpipe.test.Echo;

test('unary, server streaming, bidi and non-zero statuses through meshpipe', async (t) => {
  const server = new grpc.Server();
  server.addService(Echo.service, {
    say: (call: grpc.ServerUnaryCall<Msg, Msg>, cb: grpc.sendUnaryData<Msg>) => {
      if (call.request.n !== 0) cb({ code: call.request.n, details: `asked for ${call.request.n}` });
      else cb(null, { text: `hi ${call.request.text}`, n: 0 });
    },
    count: (call: grpc.ServerWritableStream<Msg, Msg>) => {
      for (let i = 0; i < call.request.n; i++) call.write({ text: `${call.request.text} ${i}`, n: i });
      call.end();
    },
    chat: (call: grpc.ServerDuplexStream<Msg, Msg>) => {
      call.on('data', (m: Msg) => call.write({ text: m.text.toUpperCase(), n: m.n }));
      call.on('end', () => call.end());
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${HOST}:0`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
  t.after(() => server.forceShutdown());
  const { proc, ports } = await startProxy(['--forward', `127.0.0.1:0=127.0.0.1:${port},mode=grpc`, '--admin', '127.0.0.1:0'], { t });
  const admin = await adminAddress(proc);
  const client = new Echo(`127.0.0.1:${ports[0]}`, grpc.credentials.createInsecure()) as unknown as EchoClient;
  t.after(() => client.close());

  const say = (m: Msg) => new Promise<{ err: grpc.ServiceError | null; r: Msg | undefined }>((resolve) => client.say(m, (err, r) => resolve({ err, r })));
  assert.equal((await say({ text: 'a', n: 0 })).r?.text, 'hi a');
  assert.equal((await say({ text: 'b', n: 0 })).r?.text, 'hi b');
  const notFound = await say({ text: 'c', n: grpc.status.NOT_FOUND });
  assert.equal(notFound.err?.code, grpc.status.NOT_FOUND);
  assert.equal(notFound.err?.details, 'asked for 5');
  const internal = await say({ text: 'd', n: grpc.status.INTERNAL });
  assert.equal(internal.err?.code, grpc.status.INTERNAL);

  const streamed: Msg[] = [];
  const stream = client.count({ text: 'n', n: 50 });
  stream.on('data', (m: Msg) => streamed.push(m));
  await new Promise((resolve, reject) => { stream.on('end', resolve); stream.on('error', reject); });
  assert.deepEqual(streamed.map((m) => m.n), Array.from({ length: 50 }, (_, i) => i));

  const chat = client.chat();
  const replies: string[] = [];
  chat.on('data', (m: Msg) => replies.push(m.text));
  const ended = new Promise((resolve, reject) => { chat.on('end', resolve); chat.on('error', reject); });
  for (const w of ['one', 'two', 'three']) chat.write({ text: w, n: 0 });
  chat.end();
  await ended;
  assert.deepEqual(replies, ['ONE', 'TWO', 'THREE']);

  const series = { direction: 'outbound', target_addr: `127.0.0.1:${port}` };
  let f = await scrape(admin);
  await waitFor(async () => total((f = await scrape(admin)), 'response_total', series) === 6, 'six gRPC responses', 10_000, 50);
  assert.equal(total(f, 'request_total', series), 6);
  assert.equal(total(f, 'response_total', { ...series, grpc_status: '0', classification: 'success' }), 4, 'two unary, one stream, one bidi');
  assert.equal(total(f, 'response_total', { ...series, grpc_status: '5', classification: 'success' }), 1, 'NOT_FOUND is not a failure');
  assert.equal(total(f, 'response_total', { ...series, grpc_status: '13', classification: 'failure' }), 1, 'INTERNAL is');
});

test('an unreachable gRPC upstream gets UNAVAILABLE in a trailers-only response', async (t) => {
  const { ports } = await startProxy(['--forward', '127.0.0.1:0=127.0.0.1:1,mode=grpc', '--admin', '127.0.0.1:0'], { t });
  const client = new Echo(`127.0.0.1:${ports[0]}`, grpc.credentials.createInsecure()) as unknown as EchoClient;
  t.after(() => client.close());
  const err = await new Promise<grpc.ServiceError | null>((resolve) => client.say({ text: 'x', n: 0 }, (e) => resolve(e)));
  assert.equal(err?.code, grpc.status.UNAVAILABLE);
  assert.match(err?.details ?? '', /connection to 127\.0\.0\.1:1 failed/);
});
