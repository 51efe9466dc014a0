/**
 * Unit tests of the config model (ts/config/config.ts, ts/config/forward.ts), the
 * flag parser (ts/cli/args.ts) and the engine config builder
 * (ts/engine/build-config.ts): defaults, merging and precedence of file < env <
 * flags, and every error path, whose messages must name the key, the bad
 * value, what is expected and where the value came from.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CONFIG_KEYS, envLayer, envVarName, loadConfig, resolveConfig, type RawLayer } from '../ts/config/config.js';
import { parseProxyArgv, proxyHelp, PROXY_OPTIONS } from '../ts/cli/args.js';
import { buildEngineConfig } from '../ts/engine/build-config.js';
import { flagsPolicy } from '../ts/policy/flags.js';
import { lookupPolicy } from '../ts/policy/lookup.js';
import { MeshpipeError } from '../ts/errors.js';

const dir = mkdtempSync(join(tmpdir(), 'meshpipe-config-'));
let fileCount = 0;
function writeConfig(text: string, ext = 'yaml'): string {
  const path = join(dir, `c${++fileCount}.${ext}`);
  writeFileSync(path, text);
  return path;
}

/** Parses flags as `meshpipe proxy` would, with a controlled environment. */
function fromArgs(argv: string[], env: NodeJS.ProcessEnv = {}) {
  return parseProxyArgv(argv, { env }).config;
}

/** Asserts that `fn` throws a MeshpipeError with `code` whose message contains every fragment. */
function assertConfigError(fn: () => unknown, fragments: string[], key?: string, code = 'ERR_INVALID_CONFIG'): MeshpipeError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof MeshpipeError, `expected a MeshpipeError, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  for (const f of fragments) assert.ok(caught.message.includes(f), `message ${JSON.stringify(caught.message)} lacks ${JSON.stringify(f)}`);
  if (key !== undefined) assert.equal(caught.key, key);
  return caught;
}

test('defaults match the documented values and the result is deeply frozen', () => {
  const c = resolveConfig([]);
  assert.equal(c.drainTimeoutMs, 30_000);
  assert.equal(c.maxConnections, 0);
  assert.equal(c.workers, 0);
  assert.equal(c.logLevel, 'info');
  assert.equal(c.connectTimeoutMs, 10_000);
  assert.equal(c.inboundDetectTimeoutMs, 10_000);
  assert.equal(c.outboundDetectTimeoutMs, 10_000);
  assert.equal(c.serverFirstGraceMs, 100);
  assert.deepEqual(c.opaquePorts, []);
  assert.deepEqual(
    c.defaultOpaquePorts.map((r) => r.from),
    [25, 587, 3306, 4444, 5432, 6379, 9300, 11211],
  );
  assert.equal(c.serverFirstCacheSize, 4096);
  assert.equal(c.serverFirstTtlMs, 3_600_000);
  assert.deepEqual(c.admin, { host: '127.0.0.1', port: 4191, addr: '127.0.0.1:4191' });
  assert.equal(c.maxMetricTargets, 1000);
  assert.deepEqual(c.forward, []);
  assert.equal(c.sources.drainTimeout, 'default');
  assert.ok(Object.isFrozen(c) && Object.isFrozen(c.defaultOpaquePorts) && Object.isFrozen(c.defaultOpaquePorts[0]));
  assert.throws(() => {
    (c as { drainTimeoutMs: number }).drainTimeoutMs = 1;
  }, TypeError);
});

test('forward specs: modes, directions, IPv6, localhost and listener names', () => {
  const c = fromArgs([
    '--forward', '127.0.0.1:0=127.0.0.1:5432',
    '--forward', 'localhost:0=localhost:80,mode=HTTP/1',
    '--forward', '[::1]:15000=[::1]:6000,mode=gRPC,direction=inbound',
    '--forward', '0.0.0.0:16000=10.0.0.1:443,direction=OUTBOUND,mode=TLS',
    '--forward', '127.0.0.1:17000=127.0.0.1:1,mode=unknown',
    '--forward', '127.0.0.1:17001=127.0.0.1:1,mode=http2',
  ]);
  assert.equal(c.forward.length, 6);
  const [a, b, v6, tls, unknown, h2] = c.forward;
  assert.deepEqual(a, {
    name: 'forward:127.0.0.1:0', bind: { host: '127.0.0.1', port: 0, addr: '127.0.0.1:0' },
    target: { host: '127.0.0.1', port: 5432, addr: '127.0.0.1:5432', kind: 'ip' }, mode: null, direction: 'outbound',
  });
  assert.equal(b?.name, 'forward:127.0.0.1:0#2', 'a second port-0 bind on the same host gets a unique name (localhost:0 binds 127.0.0.1 only)');
  assert.deepEqual(b?.target, { host: 'localhost', port: 80, addr: 'localhost:80', kind: 'name' }, 'a localhost target is a name: 127.0.0.1 and ::1');
  assert.equal(b?.mode, 'http1');
  assert.equal(v6?.bind.addr, '[::1]:15000');
  assert.equal(v6?.target.host, '::1');
  assert.equal(v6?.mode, 'grpc');
  assert.equal(v6?.direction, 'inbound');
  assert.equal(tls?.mode, 'tls');
  assert.equal(tls?.direction, 'outbound');
  assert.equal(unknown?.mode, 'detect');
  assert.equal(h2?.mode, 'http2');
});

test('bad durations name the key, the value, the expectation and the flag', () => {
  assertConfigError(
    () => fromArgs(['--drain-timeout', 'abc']),
    ['invalid drainTimeout "abc" (from --drain-timeout): expected a duration like 30s, 500ms or 5m'],
    'drainTimeout',
  );
  assertConfigError(() => fromArgs(['--detect-timeout', '10x']), ['detectTimeout', '"10x"', '--detect-timeout'], 'detectTimeout');
  assertConfigError(() => fromArgs(['--detect-timeout', '0']), ['detectTimeout', 'at least 1ms'], 'detectTimeout');
  assertConfigError(() => fromArgs(['--server-first-grace', '-5ms']), ['serverFirstGrace', '"-5ms"'], 'serverFirstGrace');
  assertConfigError(() => fromArgs(['--connect-timeout', '400d']), ['connectTimeout', '365d'], 'connectTimeout');
  // 0 is valid where documented: the server-first race off, an immediate drain.
  const c = fromArgs(['--server-first-grace', '0', '--drain-timeout', '0', '--detect-timeout', '1.5s']);
  assert.equal(c.serverFirstGraceMs, 0);
  assert.equal(c.drainTimeoutMs, 0);
  assert.equal(c.outboundDetectTimeoutMs, 1500);
});

test('bad port lists name the exact token', () => {
  const cases: Array<[string, string[]]> = [
    ['7000-6000', ['"7000-6000"', '6000 is lower than 7000']],
    ['0', ['"0"', 'out of range']],
    ['70000', ['"70000"', 'out of range']],
    ['80,,x', ['"80,,x"', 'empty entry', '"x"']],
  ];
  for (const [value, fragments] of cases) {
    assertConfigError(() => fromArgs(['--opaque-ports', value]), ['invalid opaquePorts', '(from --opaque-ports)', ...fragments], 'opaquePorts');
    assertConfigError(
      () => fromArgs([], { MESHPIPE_DEFAULT_OPAQUE_PORTS: value }),
      ['invalid defaultOpaquePorts', '(from MESHPIPE_DEFAULT_OPAQUE_PORTS)', ...fragments],
      'defaultOpaquePorts',
    );
  }
  const ok = fromArgs(['--opaque-ports', '8000-8100, 7000,7001', '--default-opaque-ports', '']);
  assert.deepEqual(ok.opaquePorts, [{ from: 7000, to: 7001 }, { from: 8000, to: 8100 }]);
  assert.deepEqual(ok.defaultOpaquePorts, [], 'an empty list replaces the defaults as a whole');
});

test('bad modes, directions, options and addresses in --forward', () => {
  const bad: Array<[string, string[]]> = [
    ['127.0.0.1:0=127.0.0.1:80,mode=http3', ['mode "http3": expected one of detect']],
    ['127.0.0.1:0=127.0.0.1:80,mode=opaq', ['mode "opaq" (did you mean opaque?): expected one of detect']],
    ['127.0.0.1:0=127.0.0.1:80,mode=grcp', ['mode "grcp" (did you mean grpc?)']],
    // What a port carries under HTTPS is TLS: not a typo of http1.
    ['127.0.0.1:0=127.0.0.1:443,mode=https', ['mode "https" (did you mean tls?)']],
    ['127.0.0.1:0=127.0.0.1:443,mode=SSL', ['mode "SSL" (did you mean tls?)']],
    ['127.0.0.1:0=127.0.0.1:80,direction=sideways', ['direction "sideways"', 'inbound or outbound']],
    ['127.0.0.1:0=127.0.0.1:80,speed=fast', ['unknown option "speed"']],
    ['127.0.0.1:0=127.0.0.1:80,mode=opaque,mode=tls', ['given twice']],
    ['127.0.0.1:0', ['no "="']],
    ['127.0.0.1:0=exa_mple.com:80', ['target address "exa_mple.com:80"', 'neither an IPv4 address nor a host name']],
    ['127.0.0.1:0=-db.internal:80', ['neither an IPv4 address nor a host name']],
    ['db.internal:80=127.0.0.1:80', ['bind address "db.internal:80"', 'of host names only localhost is accepted']],
    ['127.0.0.1:0=127.0.0.1:0', ['target address "127.0.0.1:0"', 'expected 1-65535']],
    ['127.0.0.1:70000=127.0.0.1:80', ['bind address "127.0.0.1:70000"', 'out of range']],
    ['::1:80=127.0.0.1:80', ['needs brackets']],
    ['[fe80::zz]:80=127.0.0.1:80', ['not an IPv6 address']],
    ['300.1.1.1:80=127.0.0.1:80', ['"300.1.1.1" is not an IPv4 address']],
  ];
  for (const [spec, fragments] of bad) {
    assertConfigError(() => fromArgs(['--forward', spec]), ['invalid forward', '(from --forward)', ...fragments], 'forward');
  }
  assertConfigError(
    () => fromArgs(['--forward', '127.0.0.1:9000=127.0.0.1:1', '--forward', '127.0.0.1:9000=127.0.0.1:2']),
    ['invalid forward "127.0.0.1:9000=127.0.0.1:2" (from --forward): bind address 127.0.0.1:9000 is already the bind of forward "127.0.0.1:9000=127.0.0.1:1"'],
    'forward',
  );
  assertConfigError(() => fromArgs(['--admin', 'nowhere']), ['invalid admin "nowhere" (from --admin)'], 'admin');
  assertConfigError(() => fromArgs(['--log-level', 'loud']), ['invalid logLevel "loud"', 'one of fatal, error'], 'logLevel');
  assertConfigError(() => fromArgs(['--workers', 'four']), ['invalid workers "four" (from --workers): expected a whole number of threads'], 'workers');
  assertConfigError(() => fromArgs(['--max-connections', '-1']), ['invalid maxConnections "-1"'], 'maxConnections');
  assert.equal(fromArgs(['--admin', 'off']).admin, null);
  assert.equal(fromArgs(['--admin', '[::1]:0']).admin?.addr, '[::1]:0');
});

test('config files: YAML and JSON, object-form forwards, lists; unknown keys are errors', () => {
  const yaml = writeConfig(
    [
      'forward:',
      '  - 127.0.0.1:0=127.0.0.1:5432,mode=opaque',
      '  - { bind: "[::1]:0", target: "127.0.0.1:80", mode: HTTP/2, direction: inbound }',
      'drainTimeout: 5s',
      'maxConnections: 100',
      'opaquePorts: [7000, "8000-8100"]',
      'admin: off',
      'logLevel: debug',
    ].join('\n'),
  );
  const c = loadConfig({ configFile: yaml, env: {} });
  assert.equal(c.forward.length, 2);
  assert.equal(c.forward[0]?.mode, 'opaque');
  assert.equal(c.forward[1]?.bind.addr, '[::1]:0');
  assert.equal(c.forward[1]?.mode, 'http2');
  assert.equal(c.forward[1]?.direction, 'inbound');
  assert.equal(c.drainTimeoutMs, 5000);
  assert.equal(c.maxConnections, 100);
  assert.deepEqual(c.opaquePorts, [{ from: 7000, to: 7000 }, { from: 8000, to: 8100 }]);
  assert.equal(c.admin, null);
  assert.equal(c.logLevel, 'debug');
  assert.ok(c.sources.drainTimeout.includes(yaml));

  const json = writeConfig(JSON.stringify({ workers: 2, serverFirstGrace: 0, forward: ['127.0.0.1:0=127.0.0.1:1'] }), 'json');
  const j = loadConfig({ configFile: json, env: {} });
  assert.equal(j.workers, 2);
  assert.equal(j.serverFirstGraceMs, 0);

  const typo = writeConfig('drainTimout: 5s\n');
  assertConfigError(() => loadConfig({ configFile: typo, env: {} }), ['unknown key "drainTimout"', typo, 'did you mean "drainTimeout"'], 'drainTimout');
  const badValue = writeConfig('maxConnections: lots\n');
  assertConfigError(() => loadConfig({ configFile: badValue, env: {} }), ['invalid maxConnections "lots"', `config file ${badValue}`], 'maxConnections');
  const badType = writeConfig('workers: [1, 2]\n');
  assertConfigError(() => loadConfig({ configFile: badType, env: {} }), ['invalid workers [1,2]', 'expected a whole number'], 'workers');
  const extraField = writeConfig('forward:\n  - { bind: "127.0.0.1:0", target: "127.0.0.1:1", port: 3 }\n');
  assertConfigError(() => loadConfig({ configFile: extraField, env: {} }), ['invalid forward'], 'forward');
  const notYaml = writeConfig('forward: [unclosed\n');
  assertConfigError(() => loadConfig({ configFile: notYaml, env: {} }), ['does not parse as YAML or JSON', notYaml], 'config');
  const list = writeConfig('- a\n- b\n');
  assertConfigError(() => loadConfig({ configFile: list, env: {} }), ['expected a mapping'], 'config');
  assertConfigError(() => loadConfig({ configFile: join(dir, 'missing.yaml'), env: {} }), ['cannot read config file', 'no such file'], 'config');
});

test('precedence: defaults < file < env < flags, per key, with sources recorded', () => {
  const file = writeConfig('drainTimeout: 5s\nworkers: 3\nlogLevel: warn\nmaxConnections: 7\n');
  const env = { MESHPIPE_DRAIN_TIMEOUT: '7s', MESHPIPE_WORKERS: '4', MESHPIPE_UNRELATED: 'x' };
  const c = fromArgs(['--config', file, '--drain-timeout', '9s'], env);
  assert.equal(c.drainTimeoutMs, 9000, 'flag beats env and file');
  assert.equal(c.workers, 4, 'env beats file');
  assert.equal(c.logLevel, 'warn', 'file beats default');
  assert.equal(c.maxConnections, 7);
  assert.equal(c.connectTimeoutMs, 10_000, 'default when no source sets it');
  assert.equal(c.sources.drainTimeout, '--drain-timeout');
  assert.equal(c.sources.workers, 'MESHPIPE_WORKERS');
  assert.match(c.sources.logLevel, /config file .*key logLevel/);
  assert.equal(c.sources.connectTimeout, 'default');
  assert.equal(fromArgs(['--config', file], env).drainTimeoutMs, 7000);
  assert.equal(fromArgs(['--config', file], {}).drainTimeoutMs, 5000);
  assert.equal(fromArgs([], { MESHPIPE_CONFIG: file }).workers, 3, 'MESHPIPE_CONFIG names the file');
  // The error names the env var the bad value came from, even when a file also sets the key.
  assertConfigError(() => fromArgs(['--config', file], { MESHPIPE_WORKERS: 'many' }), ['invalid workers "many" (from MESHPIPE_WORKERS)'], 'workers');
});

test('environment variables: names, forwards separated by ; or newlines, empty values ignored', () => {
  assert.equal(envVarName('drainTimeout'), 'MESHPIPE_DRAIN_TIMEOUT');
  assert.equal(envVarName('serverFirstGrace'), 'MESHPIPE_SERVER_FIRST_GRACE');
  assert.equal(envVarName('defaultOpaquePorts'), 'MESHPIPE_DEFAULT_OPAQUE_PORTS');
  const c = fromArgs([], {
    MESHPIPE_FORWARD: '127.0.0.1:0=127.0.0.1:1,mode=opaque;127.0.0.1:0=127.0.0.1:2\n[::1]:0=[::1]:3',
    MESHPIPE_MAX_CONNECTIONS: '50',
    MESHPIPE_LOG_LEVEL: 'ERROR',
    MESHPIPE_DETECT_TIMEOUT: '2s',
    MESHPIPE_SERVER_FIRST_GRACE: '50ms',
    MESHPIPE_OPAQUE_PORTS: '9000',
    MESHPIPE_WORKERS: '',
  });
  assert.deepEqual(c.forward.map((f) => f.target.port), [1, 2, 3]);
  assert.equal(c.forward[0]?.mode, 'opaque');
  assert.equal(c.maxConnections, 50);
  assert.equal(c.logLevel, 'error');
  assert.equal(c.inboundDetectTimeoutMs, 2000);
  assert.equal(c.serverFirstGraceMs, 50);
  assert.deepEqual(c.opaquePorts, [{ from: 9000, to: 9000 }]);
  assert.equal(c.workers, 0, 'an empty variable is ignored');
  const flagsWin = fromArgs(['--forward', '127.0.0.1:0=127.0.0.1:9'], { MESHPIPE_FORWARD: '127.0.0.1:0=127.0.0.1:1' });
  assert.deepEqual(flagsWin.forward.map((f) => f.target.port), [9], '--forward replaces the env list');
  assert.deepEqual(Object.keys(envLayer({ MESHPIPE_NOT_A_KEY: '1' })), []);
});

test('per-direction detect timeouts override detectTimeout from an equal or stronger source', () => {
  const file = writeConfig('inboundDetectTimeout: 3s\n');
  const a = fromArgs(['--config', file]);
  assert.equal(a.inboundDetectTimeoutMs, 3000);
  assert.equal(a.outboundDetectTimeoutMs, 10_000);
  const b = fromArgs(['--config', file, '--detect-timeout', '20s']);
  assert.equal(b.inboundDetectTimeoutMs, 20_000, 'a flag beats a file, even a more specific key');
  assert.equal(b.outboundDetectTimeoutMs, 20_000);
  const c = fromArgs(['--detect-timeout', '20s', '--outbound-detect-timeout', '1s']);
  assert.equal(c.inboundDetectTimeoutMs, 20_000);
  assert.equal(c.outboundDetectTimeoutMs, 1000);
});

test('flag parsing errors name the token', () => {
  assertConfigError(() => fromArgs(['--drain-timout', '5s']), ['unknown option --drain-timout', 'meshpipe proxy --help'], undefined, 'ERR_INVALID_ARGUMENT');
  assertConfigError(() => fromArgs(['--drain-timeout']), ['--drain-timeout needs a value'], undefined, 'ERR_INVALID_ARGUMENT');
  assertConfigError(() => fromArgs(['--workers', '1', '--workers', '2']), ['--workers is given more than once'], undefined, 'ERR_INVALID_ARGUMENT');
  assertConfigError(() => fromArgs(['stray']), ['unexpected argument "stray"'], undefined, 'ERR_INVALID_ARGUMENT');
  assertConfigError(() => fromArgs(['--help=yes']), ['--help takes no value'], undefined, 'ERR_INVALID_ARGUMENT');
  const parsed = parseProxyArgv(['--forward=127.0.0.1:0=127.0.0.1:1', '--', 'app', '--flag'], { env: {} });
  assert.deepEqual(parsed.rest, ['app', '--flag']);
  assert.equal(parsed.config.forward[0]?.target.port, 1);
  const extra = parseProxyArgv(['--ready-timeout', '5s', '--', 'x'], {
    env: {},
    extraOptions: [{ flag: 'ready-timeout', type: 'string', help: 'test' }],
    command: 'meshpipe run',
  });
  assert.equal(extra.extra['ready-timeout'], '5s');
});

test('help lists every option with its default', () => {
  const help = proxyHelp();
  for (const o of PROXY_OPTIONS) assert.ok(help.includes(`--${o.flag}`), `help lacks --${o.flag}`);
  for (const key of CONFIG_KEYS) assert.ok(help.includes(envVarName(key)), `help lacks the variable of ${key}`);
  for (const fragment of ['serverFirstCacheSize', 'default: 4096', 'serverFirstTtl', 'default: 1h', 'maxMetricTargets', 'default: 1000']) {
    assert.ok(help.includes(fragment), `help lacks ${fragment}`);
  }
  for (const fragment of ['default: 30s', 'default: 10s', 'default: 100ms', 'default: info', 'default: 127.0.0.1:4191', 'default: 25,587,3306,4444,5432,6379,9300,11211', 'MESHPIPE_DRAIN_TIMEOUT']) {
    assert.ok(help.includes(fragment), `help lacks ${fragment}`);
  }
});

test('--port-detect-timeout: entries, directions, and errors naming the entry', () => {
  const c = parseProxyArgv(['--forward', '127.0.0.1:0=127.0.0.1:1', '--port-detect-timeout', '8080=2s', '--port-detect-timeout', 'inbound:9000-9001,9005=500ms'], { env: {} }).config;
  assert.deepEqual(c.portDetectTimeouts, [
    { direction: null, from: 8080, to: 8080, timeoutMs: 2000 },
    { direction: 'inbound', from: 9000, to: 9001, timeoutMs: 500 },
    { direction: 'inbound', from: 9005, to: 9005, timeoutMs: 500 },
  ]);
  for (const [bad, pattern] of [['8080', /expected PORTS=DURATION/], ['7000-6000=1s', /7000-6000/], ['80=soon', /invalid duration "soon"/], ['80=0', /at least 1ms/]] as const) {
    assert.throws(() => parseProxyArgv(['--forward', '127.0.0.1:0=127.0.0.1:1', '--port-detect-timeout', bad], { env: {} }), (err: Error) => {
      assert.match(err.message, /invalid portDetectTimeouts/);
      assert.match(err.message, pattern);
      assert.match(err.message, /--port-detect-timeout/);
      return true;
    });
  }
});

test('engine config: listeners, detect settings and the flag policy order', () => {
  const c = fromArgs([
    '--forward', '127.0.0.1:0=127.0.0.1:5432,mode=opaque,direction=inbound',
    '--forward', '[::1]:0=[::1]:80',
    '--opaque-ports', '7000-7010',
    '--default-opaque-ports', '25,3306',
    '--inbound-detect-timeout', '2s',
    '--server-first-grace', '0',
    '--workers', '2',
  ]);
  const e = buildEngineConfig(c);
  assert.equal(e.workers, 2);
  assert.deepEqual(e.listeners[0], {
    name: 'forward:127.0.0.1:0', bind: '127.0.0.1:0', target: { kind: 'fixed', addr: '127.0.0.1:5432' }, mode: 'opaque', direction: 'inbound',
  });
  assert.equal(e.listeners[1]?.mode, null);
  assert.equal(e.listeners[1]?.bind, '[::1]:0');
  assert.deepEqual(e.detect, { inboundTimeoutMs: 2000, outboundTimeoutMs: 10_000, serverFirstGraceMs: 0, serverFirstCapacity: 4096, serverFirstTtlMs: 3_600_000, portTimeouts: [] });
  assert.deepEqual(e.metrics, { maxTargets: 1000, retainIdleMs: 600_000 });
  // The flags-only policy is the one compiler with empty inputs, checked with the engine's own lookup.
  const table = flagsPolicy(c).table;
  assert.deepEqual(
    table.rules.map((r) => `${r.direction} ${r.ports[0]}-${r.ports[1]} ${r.mode} ${r.source}`),
    [
      'inbound 7000-7010 opaque opaque: --opaque-ports flag',
      'inbound 25-25 opaque opaque: default opaque ports (25,3306; container ports unknown, not filtered)',
      'inbound 3306-3306 opaque opaque: default opaque ports (25,3306; container ports unknown, not filtered)',
      'outbound 7000-7010 opaque opaque: --opaque-ports flag',
    ],
  );
  const out = (address: string, port: number): string => lookupPolicy(table, 'outbound', address, port).mode;
  assert.equal(out('10.1.2.3', 3306), 'opaque', 'default opaque ports inside clusterNetworks');
  assert.equal(out('127.0.0.1', 25), 'opaque', 'and for loopback (local --forward targets)');
  assert.equal(out('203.0.113.9', 3306), 'detect', 'not outside clusterNetworks');
  assert.equal(out('203.0.113.9', 7005), 'opaque', '--opaque-ports applies to any address');
  assert.equal(lookupPolicy(table, 'inbound', '203.0.113.9', 3306).mode, 'opaque');
  assert.equal(table.addresses.length, 0);
  assert.deepEqual(e.policy, flagsPolicy(c).table, 'pure: same input, same output');
  const fromEnv = fromArgs([], { MESHPIPE_OPAQUE_PORTS: '9000' });
  assert.equal(flagsPolicy(fromEnv).table.rules[0]?.source, 'opaque: MESHPIPE_OPAQUE_PORTS');
});

// Silence "unused" in strict builds if RawLayer is only a type here.
export type _Layer = RawLayer;

test('connection limits: --max-connections sets each direction, per-direction keys override it from an equal or stronger source', () => {
  const d = resolveConfig([]);
  assert.deepEqual([d.maxInboundConnections, d.maxOutboundConnections, d.maxDetectingConnections, d.fdReserve], [0, 0, 1024, 128]);
  assert.deepEqual([d.idleTimeoutMs, d.metricsRetainIdleMs], [3_600_000, 600_000]);
  const both = fromArgs(['--max-connections', '150']);
  assert.deepEqual([both.maxInboundConnections, both.maxOutboundConnections], [150, 150], 'each direction gets its own 150');
  const inbound = fromArgs(['--max-connections', '150', '--max-inbound-connections', '20']);
  assert.deepEqual([inbound.maxInboundConnections, inbound.maxOutboundConnections], [20, 150]);
  const file = writeConfig('maxOutboundConnections: 7\n');
  const flagWins = fromArgs(['--config', file, '--max-connections', '30']);
  assert.equal(flagWins.maxOutboundConnections, 30, 'a flag beats a weaker per-direction value');
  assert.equal(fromArgs(['--config', file]).maxOutboundConnections, 7);
  const off = fromArgs(['--idle-timeout', '0', '--fd-reserve', '0', '--max-detecting-connections', '0'], { MESHPIPE_METRICS_RETAIN_IDLE: '0' });
  assert.deepEqual([off.idleTimeoutMs, off.fdReserve, off.maxDetectingConnections, off.metricsRetainIdleMs], [0, 0, 0, 0]);
  const engine = buildEngineConfig(fromArgs(['--forward', '127.0.0.1:0=127.0.0.1:9', '--max-inbound-connections', '5', '--idle-timeout', '90s']));
  assert.deepEqual(engine.limits, { inboundConnections: 5, outboundConnections: 0, detectingConnections: 1024, fdReserve: 128, bulkBuffers: 4 });
  assert.equal(buildEngineConfig(fromArgs(['--forward', '127.0.0.1:0=127.0.0.1:9'], { MESHPIPE_BULK_BUFFERS: '0' })).limits.bulkBuffers, 0, 'the env var reaches the engine');
  assertConfigError(() => fromArgs(['--bulk-buffers', '2000']), ['invalid bulkBuffers "2000" (from --bulk-buffers)', 'a whole number of 4 MiB buffers 0-1024'], 'bulkBuffers');
  assert.equal(engine.idleTimeoutMs, 90_000);
  assert.equal(engine.metrics.retainIdleMs, 600_000);
  assertConfigError(() => fromArgs(['--idle-timeout', 'soon']), ['invalid idleTimeout "soon" (from --idle-timeout)', 'a duration like 1h or 30m (0 = never)'], 'idleTimeout');
  assertConfigError(() => fromArgs(['--fd-reserve', '-1']), ['invalid fdReserve "-1"', '0 = no descriptor budget'], 'fdReserve');
  assertConfigError(() => fromArgs(['--max-outbound-connections', 'x']), ['invalid maxOutboundConnections "x" (from --max-outbound-connections)'], 'maxOutboundConnections');
});
