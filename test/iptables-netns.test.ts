/**
 * `meshpipe init` for real, inside fresh network namespaces (root; CI runs
 * them): installing, idempotence (a second run leaves rules and their packet
 * counters untouched), rebuilding on changed options, --dry-run changing
 * nothing, --uninstall removing only meshpipe's chains (a foreign chain and
 * its jump survive), the legacy backend, and actual redirection: outbound TCP
 * from the app lands on the outbound listener while skip ports and the
 * proxy's uid reach the real peer; inbound TCP lands on the inbound listener
 * while skip-inbound and admin ports reach the app directly; both families.
 */
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createPod, createPodPair, requireNetns, startResponder, tcpRequest, type Pod } from './netns.js';

const CLI_INIT = fileURLToPath(new URL('../ts/cli/init.js', import.meta.url));
const RUN_INIT = `import { main } from ${JSON.stringify(CLI_INIT)}; process.exitCode = await main(process.argv.slice(1));`;
const APP_UID = 1000;
const tempDirs: string[] = [];
after(() => tempDirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'meshpipe-ipt-'));
  tempDirs.push(d);
  return d;
}
const PROXY_UID = 2102;

/** Runs `meshpipe init ARGS` inside `pod`. */
function init(pod: Pod, args: string[]) {
  return pod.exec(process.execPath, ['--input-type=module', '-e', RUN_INIT, '--', ...args]);
}

async function initOk(pod: Pod, args: string[]): Promise<string> {
  const r = await init(pod, args);
  assert.equal(r.code, 0, `meshpipe init ${args.join(' ')} failed:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

async function natRules(pod: Pod, cmd = 'iptables'): Promise<string> {
  const r = await pod.exec(cmd, ['-t', 'nat', '-S']);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

/** Packet counters of a chain's rules, keyed by their meshpipe comment. */
async function counters(pod: Pod, chain: string, cmd = 'iptables'): Promise<Map<string, number>> {
  const r = await pod.exec(cmd, ['-t', 'nat', '-L', chain, '-v', '-x', '-n']);
  assert.equal(r.code, 0, r.stderr);
  const out = new Map<string, number>();
  for (const line of r.stdout.split('\n')) {
    const m = /^\s*(\d+)\s+\d+\s.*\/\* (meshpipe\/[a-z0-9-]+) \*\//.exec(line);
    if (m) out.set(m[2] as string, (out.get(m[2] as string) ?? 0) + Number(m[1]));
  }
  return out;
}

/** The jump counters of the built-in chains (a rebuild would reset them to 0). */
async function allCounters(pod: Pod, cmd = 'iptables'): Promise<string> {
  const r = await pod.exec(cmd, ['-t', 'nat', '-L', '-v', '-x', '-n']);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

describe('meshpipe init in a network namespace', () => {
  test('installs both families, a second run changes nothing, other options rebuild', async (t) => {
    if (!(await requireNetns(t))) return;
    const pod = await createPod('init');
    t.after(() => pod.cleanup());
    const args = ['--skip-inbound-ports', '22,4567-4568', '--skip-subnets', '10.96.0.0/12,fd00:10::/64', '--proxy-gid', '2102'];
    const first = await initOk(pod, args);
    assert.match(first, /ipv4: installed \(MESHPIPE_INBOUND: 4 rules, MESHPIPE_OUTPUT: 5 rules\)/);
    assert.match(first, /ipv6: installed/);
    const v4 = await natRules(pod);
    for (const line of [
      '-N MESHPIPE_INBOUND',
      '-N MESHPIPE_OUTPUT',
      '-A PREROUTING -m comment --comment "meshpipe/prerouting" -j MESHPIPE_INBOUND',
      '-A OUTPUT -m comment --comment "meshpipe/output" -j MESHPIPE_OUTPUT',
      '-A MESHPIPE_INBOUND -p tcp -m multiport --dports 22,4567:4568 -m comment --comment "meshpipe/skip-inbound-ports" -j RETURN',
      '-A MESHPIPE_INBOUND -s 10.96.0.0/12 -m comment --comment "meshpipe/skip-subnet" -j RETURN',
      '-A MESHPIPE_OUTPUT -m owner --gid-owner 2102 -m comment --comment "meshpipe/ignore-proxy-gid" -j RETURN',
      '-A MESHPIPE_OUTPUT -p tcp -m comment --comment "meshpipe/redirect-outbound" -j REDIRECT --to-ports 4140',
    ]) {
      assert.ok(v4.split('\n').includes(line), `missing: ${line}\n${v4}`);
    }
    const v6 = await natRules(pod, 'ip6tables');
    assert.ok(v6.includes('-A MESHPIPE_OUTPUT -d fd00:10::/64 -m comment --comment "meshpipe/skip-subnet" -j RETURN'), v6);
    assert.ok(!v6.includes('10.96.0.0'), 'IPv4 subnets stay out of ip6tables');

    // Traffic over loopback passes the OUTPUT jump, so counters become non-zero.
    const l = await startResponder(pod, '127.0.0.1', 7000, 'local');
    assert.match(await tcpRequest(pod, '127.0.0.1', 7000, { uid: APP_UID }), /^local /);
    await l.stop();
    const before = await allCounters(pod);
    assert.ok((await counters(pod, 'MESHPIPE_OUTPUT')).get('meshpipe/ignore-loopback')! > 0, before);

    const second = await initOk(pod, args);
    assert.match(second, /ipv4: rules already installed as planned; nothing changed/);
    assert.match(second, /ipv6: rules already installed as planned; nothing changed/);
    assert.equal(await natRules(pod), v4);
    assert.equal(await natRules(pod, 'ip6tables'), v6);
    assert.equal(await allCounters(pod), before, 'a no-op run must not reset counters');

    const third = await initOk(pod, ['--skip-inbound-ports', '23', '--proxy-gid', '2102']);
    assert.match(third, /ipv4: rebuilt .* because chain MESHPIPE_INBOUND has 4 rule\(s\) that differ/);
    const rebuilt = await natRules(pod);
    assert.match(rebuilt, /--dports 23 -m comment/);
    assert.ok(!rebuilt.includes('4567'), rebuilt);
    assert.equal(rebuilt.split('\n').filter((x) => x.includes('-j MESHPIPE_OUTPUT')).length, 1, 'exactly one jump after a rebuild');
  });

  test('--dry-run prints the restore input and changes nothing', async (t) => {
    if (!(await requireNetns(t))) return;
    const pod = await createPod('dry');
    t.after(() => pod.cleanup());
    const empty = await natRules(pod);
    const dry = await init(pod, ['--dry-run', '--skip-outbound-ports', '3306']);
    assert.equal(dry.code, 0, dry.stderr);
    assert.match(dry.stdout, /^# ipv4\niptables-restore --noflush -w 5 <<'EOF'\n\*nat\n:MESHPIPE_INBOUND - \[0:0\]/);
    assert.match(dry.stdout, /-A MESHPIPE_OUTPUT -p tcp -m multiport --dports 3306 .*-j RETURN\n/);
    assert.match(dry.stdout, /COMMIT\nEOF\n/);
    assert.match(dry.stderr, /ipv4: would be installed/);
    assert.equal(await natRules(pod), empty);
    assert.equal(await natRules(pod, 'ip6tables'), await natRules(pod, 'ip6tables'));

    await initOk(pod, ['--skip-outbound-ports', '3306']);
    const installed = await natRules(pod);
    const dry2 = await init(pod, ['--dry-run', '--skip-outbound-ports', '5432']);
    assert.equal(dry2.code, 0, dry2.stderr);
    assert.match(dry2.stderr, /would be rebuilt/);
    assert.match(dry2.stdout, /-D PREROUTING -m comment --comment "meshpipe\/prerouting" -j MESHPIPE_INBOUND/);
    assert.equal(await natRules(pod), installed);
    const dry3 = await init(pod, ['--dry-run', '--uninstall']);
    assert.match(dry3.stdout, /-X MESHPIPE_OUTPUT/);
    assert.equal(await natRules(pod), installed);
  });

  test('--uninstall removes only meshpipe chains and jumps; a foreign chain survives', async (t) => {
    if (!(await requireNetns(t))) return;
    const pod = await createPod('unin');
    t.after(() => pod.cleanup());
    for (const cmd of ['iptables', 'ip6tables']) {
      for (const a of [['-N', 'FOREIGN'], ['-A', 'FOREIGN', '-p', 'tcp', '--dport', '9', '-j', 'RETURN'], ['-A', 'OUTPUT', '-j', 'FOREIGN'], ['-A', 'PREROUTING', '-p', 'udp', '-j', 'RETURN']]) {
        const r = await pod.exec(cmd, ['-t', 'nat', ...a]);
        assert.equal(r.code, 0, r.stderr);
      }
    }
    const foreign4 = await natRules(pod);
    const foreign6 = await natRules(pod, 'ip6tables');
    await initOk(pod, []);
    assert.notEqual(await natRules(pod), foreign4);
    const out = await initOk(pod, ['--uninstall']);
    assert.match(out, /ipv4: meshpipe's chains and jumps removed/);
    assert.equal(await natRules(pod), foreign4);
    assert.equal(await natRules(pod, 'ip6tables'), foreign6);
    assert.match(await initOk(pod, ['--uninstall']), /ipv4: no meshpipe rules installed; nothing to remove/);
  });

  test('the legacy backend (--iptables-cmd iptables-legacy): install, no-op rerun, uninstall', async (t) => {
    if (!(await requireNetns(t))) return;
    if (!existsSync('/usr/sbin/iptables-legacy') && !existsSync('/sbin/iptables-legacy')) {
      const why = 'iptables-legacy is not installed on this machine (Debian package iptables provides it)';
      process.stderr.write(`\n*** SKIP legacy backend: ${why} ***\n\n`);
      t.skip(why);
      return;
    }
    const pod = await createPod('legacy');
    t.after(() => pod.cleanup());
    const probe = await pod.exec('iptables-legacy', ['-t', 'nat', '-S']);
    if (probe.code !== 0) {
      // Only a kernel without ip_tables/iptable_nat may skip this, and it says so.
      const why = `iptables-legacy cannot use the nat table (kernel module ip_tables/iptable_nat not loadable?): ${probe.stderr.trim()}`;
      assert.match(probe.stderr, /can't initialize|Table does not exist|Module .* not found|Protocol not supported/i, why);
      process.stderr.write(`\n*** SKIP legacy backend: ${why} ***\n\n`);
      t.skip(why);
      return;
    }
    const out = await initOk(pod, ['--iptables-cmd', 'iptables-legacy', '--skip-outbound-ports', '25,587']);
    assert.match(out, /ipv4: installed .* with iptables-legacy-restore \[iptables v[\d.]+ \(legacy\)\]/);
    const rules = await natRules(pod, 'iptables-legacy');
    assert.match(rules, /-A MESHPIPE_OUTPUT -p tcp -m multiport --dports 25,587 -m comment --comment "meshpipe\/skip-outbound-ports" -j RETURN/);
    assert.match(await initOk(pod, ['--iptables-cmd', 'iptables-legacy', '--skip-outbound-ports', '25,587']), /ipv4: rules already installed as planned/);
    assert.equal(await natRules(pod, 'iptables-legacy'), rules);
    await initOk(pod, ['--iptables-cmd', 'iptables-legacy', '--uninstall']);
    assert.doesNotMatch(await natRules(pod, 'iptables-legacy'), /MESHPIPE/);
    assert.doesNotMatch(await natRules(pod, 'ip6tables-legacy'), /MESHPIPE/);
  });
});

describe('meshpipe init failures leave nothing half-installed', () => {
  /**
   * A directory with an `iptables-mp` that runs the real iptables and an
   * `iptables-mp-restore` that appends a rule iptables rejects, so the restore
   * fails after valid lines; there is deliberately no `ip6tables-mp`.
   */
  function brokenTools(): string {
    const dir = tempDir();
    const real = existsSync('/usr/sbin/iptables') ? '/usr/sbin' : '/sbin';
    writeFileSync(join(dir, 'iptables-mp'), `#!/bin/sh\nexec ${real}/iptables "$@"\n`, { mode: 0o755 });
    writeFileSync(
      join(dir, 'iptables-mp-restore'),
      `#!/bin/sh\nsed 's/^COMMIT$/-A MESHPIPE_OUTPUT -j NO_SUCH_CHAIN\\nCOMMIT/' | exec ${real}/iptables-restore "$@"\n`,
      { mode: 0o755 },
    );
    return join(dir, 'iptables-mp');
  }

  test('a failing iptables-restore commits nothing, on a fresh install and on a rebuild', async (t) => {
    if (!(await requireNetns(t))) return;
    const pod = await createPod('fail');
    t.after(() => pod.cleanup());
    const cmd = brokenTools();
    const empty = await natRules(pod);
    const r = await init(pod, ['--iptables-cmd', cmd, '--no-ipv6']);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /iptables-mp-restore --noflush failed .*NO_SUCH_CHAIN.*nothing was changed \(iptables-restore commits all or nothing\)/s);
    assert.equal(await natRules(pod), empty);

    await initOk(pod, ['--skip-inbound-ports', '22', '--no-ipv6']);
    const installed = await natRules(pod);
    const rebuild = await init(pod, ['--iptables-cmd', cmd, '--no-ipv6', '--skip-inbound-ports', '23']);
    assert.equal(rebuild.code, 1);
    assert.equal(await natRules(pod), installed, 'the old rules stay intact');
  });

  test('IPv6 required but unavailable: an error, and IPv4 is not installed either', async (t) => {
    if (!(await requireNetns(t))) return;
    const pod = await createPod('v6req');
    t.after(() => pod.cleanup());
    const dir = tempDir();
    // iptables-only tools: ip6tables-only4 does not exist.
    writeFileSync(join(dir, 'iptables-only4'), '#!/bin/sh\nexec iptables "$@"\n', { mode: 0o755 });
    writeFileSync(join(dir, 'iptables-only4-restore'), '#!/bin/sh\nexec iptables-restore "$@"\n', { mode: 0o755 });
    const cmd = join(dir, 'iptables-only4');
    const empty = await natRules(pod);
    for (const args of [['--ipv6'], ['--skip-subnets', 'fd00::/8']]) {
      const r = await init(pod, ['--iptables-cmd', cmd, ...args]);
      assert.equal(r.code, 1, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /ip6tables-only4 was not found: install the package that provides it \(Debian\/Ubuntu: apt-get install iptables/);
      assert.equal(await natRules(pod), empty, `${args.join(' ')}: IPv4 must not be installed alone`);
    }
    // Auto mode: IPv6 is skipped with a notice and IPv4 is installed.
    const auto = await init(pod, ['--iptables-cmd', cmd]);
    assert.equal(auto.code, 0, auto.stderr);
    assert.match(auto.stderr, /notice: ipv6 skipped \(use --ipv6 to require it\)/);
    assert.match(auto.stdout, /ipv4: installed/);
  });

  test('without CAP_NET_ADMIN: exit 1 naming the capability, nothing installed', async (t) => {
    if (!(await requireNetns(t))) return;
    const pod = await createPod('nocap');
    t.after(() => pod.cleanup());
    const r = await pod.exec(process.execPath, ['--input-type=module', '-e', RUN_INIT, '--'], { uid: 65534 });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /meshpipe init: error: iptables -t nat -S was refused .*Permission denied.*needs CAP_NET_ADMIN/);
    assert.doesNotMatch(await natRules(pod), /MESHPIPE/);
    // A dry run still shows what a fresh install would apply, and says why it could not read the rules.
    const dry = await pod.exec(process.execPath, ['--input-type=module', '-e', RUN_INIT, '--', '--dry-run'], { uid: 65534 });
    assert.equal(dry.code, 0, dry.stderr);
    assert.match(dry.stderr, /notice: cannot read the current rules .*CAP_NET_ADMIN.*showing a fresh install/);
    assert.match(dry.stdout, /^# ipv4\niptables-restore --noflush -w 5 <<'EOF'\n\*nat\n/);
    assert.match(dry.stdout, /# ipv6\nip6tables-restore --noflush/);
  });
});

describe('redirection between two pods', () => {

  test('outbound: app TCP goes to the outbound listener; skip ports and the proxy uid reach the peer', async (t) => {
    if (!(await requireNetns(t))) return;
    const pair = await createPodPair();
    t.after(() => pair.cleanup());
    const { client, server } = pair;
    const dst4 = server.addr4 as string;
    const dst6 = server.addr6 as string;
    // '::' is dual-stack: one listener serves both families.
    await startResponder(server, '::', 8080, 'server8080');
    await startResponder(server, '::', 9090, 'server9090');
    // Before init: the app reaches the server directly.
    assert.match(await tcpRequest(client, dst4, 8080, { uid: APP_UID }), /^server8080 /);

    await initOk(client, ['--proxy-uid', String(PROXY_UID), '--skip-outbound-ports', '9090']);
    await startResponder(client, '127.0.0.1', 4140, 'outbound-proxy', { uid: PROXY_UID });
    await startResponder(client, '::1', 4140, 'outbound-proxy6', { uid: PROXY_UID });
    const before = await counters(client, 'MESHPIPE_OUTPUT');

    const redirected = await tcpRequest(client, dst4, 8080, { uid: APP_UID });
    assert.match(redirected, /^outbound-proxy local=127\.0\.0\.1:4140 remote=10\.250\.\d+\.1:\d+$/);
    assert.match(await tcpRequest(client, dst4, 9090, { uid: APP_UID }), /^server9090 /, 'a skip-outbound port is not redirected');
    assert.match(await tcpRequest(client, dst4, 8080, { uid: PROXY_UID }), /^server8080 /, "the proxy's own connections are not redirected");
    // The pod calling its own IP leaves via lo, which is never redirected (as in Linkerd).
    await startResponder(client, '0.0.0.0', 7001, 'self');
    assert.match(await tcpRequest(client, client.addr4!, 7001, { uid: APP_UID }), /^self local=10\.250\.\d+\.1:7001 /);
    const after4 = await counters(client, 'MESHPIPE_OUTPUT');
    assert.ok(after4.get('meshpipe/redirect-outbound')! > (before.get('meshpipe/redirect-outbound') ?? 0), JSON.stringify([...after4]));
    assert.ok(after4.get('meshpipe/skip-outbound-ports')! > (before.get('meshpipe/skip-outbound-ports') ?? 0));
    assert.ok(after4.get('meshpipe/ignore-proxy-uid')! > (before.get('meshpipe/ignore-proxy-uid') ?? 0));

    const redirected6 = await tcpRequest(client, dst6, 8080, { uid: APP_UID });
    assert.match(redirected6, /^outbound-proxy6 local=::1:4140 /);
    assert.match(await tcpRequest(client, dst6, 9090, { uid: APP_UID }), /^server9090 local=\[?fd00:/);
    const c6 = await counters(client, 'MESHPIPE_OUTPUT', 'ip6tables');
    assert.ok(c6.get('meshpipe/redirect-outbound')! > 0, JSON.stringify([...c6]));
  });

  test('inbound: TCP to the pod goes to the inbound listener; skip-inbound and admin ports reach the app', async (t) => {
    if (!(await requireNetns(t))) return;
    const pair = await createPodPair();
    t.after(() => pair.cleanup());
    const { client, server } = pair;
    const dst = server.addr4 as string;
    for (const port of [8081, 9091, 4191]) await startResponder(server, '0.0.0.0', port, `app${port}`);
    await initOk(server, ['--skip-inbound-ports', '9091']);
    await startResponder(server, '0.0.0.0', 4143, 'inbound-proxy', { uid: PROXY_UID });

    const redirected = await tcpRequest(client, dst, 8081, { uid: APP_UID });
    assert.match(redirected, new RegExp(`^inbound-proxy local=${dst.replaceAll('.', '\\.')}:4143 remote=${client.addr4!.replaceAll('.', '\\.')}:`));
    assert.match(await tcpRequest(client, dst, 9091, { uid: APP_UID }), /^app9091 /, 'skip-inbound port');
    assert.match(await tcpRequest(client, dst, 4191, { uid: APP_UID }), /^app4191 /, 'admin port');
    const c = await counters(server, 'MESHPIPE_INBOUND');
    assert.ok(c.get('meshpipe/redirect-inbound')! > 0, JSON.stringify([...c]));
    assert.ok(c.get('meshpipe/skip-inbound-ports')! > 0);
    assert.ok(c.get('meshpipe/ignore-admin-ports')! > 0);
    // Inside the server pod, the app reaching itself over loopback is never redirected.
    assert.match(await tcpRequest(server, '127.0.0.1', 8081, { uid: APP_UID }), /^app8081 /);
  });
});
