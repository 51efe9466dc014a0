/**
 * Tests of `meshpipe init` that need no privileges: the pure rule planner
 * (ts/init/rules.ts: exact layout, multiport batching with ranges counting
 * two, comments, uid/gid, custom ports, IPv6 subnet filtering, comparison with
 * `iptables -S` output, install/uninstall restore files that leave foreign
 * rules alone), backend and command-name helpers, and the command line of
 * ts/cli/init.ts (bad tokens exit 2 naming them, annotations from a
 * downward-API file, --help). The real runs inside network namespaces are in
 * test/iptables-netns.test.ts.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  compareWithPlan,
  multiportBatches,
  parseNatRules,
  planInstall,
  renderInstall,
  renderRule,
  renderUninstall,
  tokenizeRule,
  uninstallCommands,
  MULTIPORT_MAX,
  type RulePlanOptions,
} from '../ts/init/rules.js';
import { commandForFamily, parseBackend } from '../ts/init/apply.js';
import { parseInitArgs } from '../ts/cli/init.js';
import { parseCidrList } from '../ts/policy/cidr.js';
import { MeshpipeError } from '../ts/errors.js';
import { run } from './netns.js';

const CLI_INIT = fileURLToPath(new URL('../ts/cli/init.js', import.meta.url));
const RUN_INIT = `import { main } from ${JSON.stringify(CLI_INIT)}; process.exitCode = await main(process.argv.slice(1));`;

const base: RulePlanOptions = {
  proxyUid: 2102,
  proxyGid: null,
  inboundPort: 4143,
  outboundPort: 4140,
  adminPort: 4191,
  skipInboundPorts: [],
  skipOutboundPorts: [],
  skipSubnets: [],
  family: 'ipv4',
};
const ranges = (...rs: [number, number][]) => rs.map(([from, to]) => ({ from, to }));
const slots = (batch: string) => batch.split(',').reduce((n, p) => n + (p.includes(':') ? 2 : 1), 0);

describe('rule planner', () => {
  test('default layout: exact rules, order and comments', () => {
    const plan = planInstall(base);
    assert.deepEqual([...plan.rules, ...plan.jumps].map(renderRule), [
      '-A MESHPIPE_INBOUND -p tcp -m multiport --dports 4190,4191 -m comment --comment "meshpipe/ignore-admin-ports" -j RETURN',
      '-A MESHPIPE_INBOUND -p tcp -m comment --comment "meshpipe/redirect-inbound" -j REDIRECT --to-ports 4143',
      '-A MESHPIPE_OUTPUT -m owner --uid-owner 2102 -m comment --comment "meshpipe/ignore-proxy-uid" -j RETURN',
      '-A MESHPIPE_OUTPUT -o lo -m comment --comment "meshpipe/ignore-loopback" -j RETURN',
      '-A MESHPIPE_OUTPUT -p tcp -m comment --comment "meshpipe/redirect-outbound" -j REDIRECT --to-ports 4140',
      '-A PREROUTING -m comment --comment "meshpipe/prerouting" -j MESHPIPE_INBOUND',
      '-A OUTPUT -m comment --comment "meshpipe/output" -j MESHPIPE_OUTPUT',
    ]);
    assert.deepEqual(plan.commands[0], ['-t', 'nat', '-N', 'MESHPIPE_INBOUND']);
    assert.deepEqual(plan.commands[1], ['-t', 'nat', '-N', 'MESHPIPE_OUTPUT']);
    assert.equal(plan.commands.length, 2 + plan.rules.length + plan.jumps.length);
    for (const cmd of plan.commands.slice(2)) {
      const i = cmd.indexOf('--comment');
      assert.ok(i > 0 && cmd[i - 1] === 'comment' && cmd[i + 1]?.startsWith('meshpipe/'), cmd.join(' '));
    }
  });

  test('multiport batches hold at most 15 slots, a range counting 2', () => {
    const singles = Array.from({ length: 20 }, (_, i) => ({ from: 1000 + 2 * i, to: 1000 + 2 * i }));
    assert.deepEqual(multiportBatches(singles).map((b) => b.split(',').length), [15, 5]);
    const eightRanges = Array.from({ length: 8 }, (_, i) => ({ from: 2000 + 10 * i, to: 2005 + 10 * i }));
    const b = multiportBatches(eightRanges);
    assert.deepEqual(b.map((x) => x.split(',').length), [7, 1]);
    assert.equal(b[0]?.split(',')[0], '2000:2005');
    // 14 single ports then a range: 14 + 2 = 16 > 15, so the range starts a new rule.
    const mixed = [...singles.slice(0, 14), { from: 5000, to: 5010 }];
    assert.deepEqual(multiportBatches(mixed).map(slots), [14, 2]);
    // A deterministic pseudo-random sweep: every batch <= 15, nothing lost, order kept.
    let seed = 7;
    const rnd = (): number => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
    for (let round = 0; round < 200; round++) {
      const input: { from: number; to: number }[] = [];
      let port = 1;
      for (let i = Math.floor(rnd() * 40); i > 0; i--) {
        port += 2 + Math.floor(rnd() * 50);
        const len = rnd() < 0.4 ? Math.floor(rnd() * 20) + 1 : 0;
        input.push({ from: port, to: port + len });
        port += len;
      }
      const batches = multiportBatches(input);
      for (const batch of batches) assert.ok(slots(batch) <= MULTIPORT_MAX && slots(batch) > 0, batch);
      const flat = batches.join(',').split(',').filter((s) => s !== '');
      assert.deepEqual(flat, input.map((r) => (r.from === r.to ? `${r.from}` : `${r.from}:${r.to}`)));
    }
  });

  test('skip ports, subnets, gid and custom ports land in the right chains', () => {
    const { cidrs } = parseCidrList('10.1.2.3/8,192.168.0.0/16,fd00::1/8');
    const plan = planInstall({
      ...base,
      proxyUid: 1337,
      proxyGid: 1338,
      adminPort: 9990,
      inboundPort: 15006,
      outboundPort: 15001,
      skipInboundPorts: ranges([22, 22], [4567, 4568]),
      skipOutboundPorts: ranges([3306, 3306]),
      skipSubnets: cidrs,
    });
    const lines = plan.rules.map(renderRule);
    assert.deepEqual(lines, [
      '-A MESHPIPE_INBOUND -p tcp -m multiport --dports 22,4567:4568 -m comment --comment "meshpipe/skip-inbound-ports" -j RETURN',
      '-A MESHPIPE_INBOUND -p tcp -m multiport --dports 4190,9990 -m comment --comment "meshpipe/ignore-admin-ports" -j RETURN',
      '-A MESHPIPE_INBOUND -s 10.0.0.0/8 -m comment --comment "meshpipe/skip-subnet" -j RETURN',
      '-A MESHPIPE_INBOUND -s 192.168.0.0/16 -m comment --comment "meshpipe/skip-subnet" -j RETURN',
      '-A MESHPIPE_INBOUND -p tcp -m comment --comment "meshpipe/redirect-inbound" -j REDIRECT --to-ports 15006',
      '-A MESHPIPE_OUTPUT -m owner --uid-owner 1337 -m comment --comment "meshpipe/ignore-proxy-uid" -j RETURN',
      '-A MESHPIPE_OUTPUT -m owner --gid-owner 1338 -m comment --comment "meshpipe/ignore-proxy-gid" -j RETURN',
      '-A MESHPIPE_OUTPUT -o lo -m comment --comment "meshpipe/ignore-loopback" -j RETURN',
      '-A MESHPIPE_OUTPUT -p tcp -m multiport --dports 3306 -m comment --comment "meshpipe/skip-outbound-ports" -j RETURN',
      '-A MESHPIPE_OUTPUT -d 10.0.0.0/8 -m comment --comment "meshpipe/skip-subnet" -j RETURN',
      '-A MESHPIPE_OUTPUT -d 192.168.0.0/16 -m comment --comment "meshpipe/skip-subnet" -j RETURN',
      '-A MESHPIPE_OUTPUT -p tcp -m comment --comment "meshpipe/redirect-outbound" -j REDIRECT --to-ports 15001',
    ]);
    const v6 = planInstall({ ...base, skipSubnets: cidrs, family: 'ipv6' }).rules.map(renderRule);
    assert.deepEqual(v6.filter((l) => l.includes('skip-subnet')), [
      '-A MESHPIPE_INBOUND -s fd00::/8 -m comment --comment "meshpipe/skip-subnet" -j RETURN',
      '-A MESHPIPE_OUTPUT -d fd00::/8 -m comment --comment "meshpipe/skip-subnet" -j RETURN',
    ]);
  });

  test('the admin port 4190 is not listed twice, and clashing listener ports are refused', () => {
    assert.match(renderRule(planInstall({ ...base, adminPort: 4190 }).rules[0]!), /--dports 4190 /);
    assert.throws(() => planInstall({ ...base, outboundPort: 4143 }), (e: unknown) =>
      e instanceof MeshpipeError && e.code === 'ERR_INVALID_ARGUMENT' && /inboundPort and outboundPort are both 4143/.test(e.message));
    assert.throws(() => planInstall({ ...base, proxyUid: -1 }), /proxyUid must be an integer/);
  });

  test('state comparison: absent, current, differs; addresses compared canonically', () => {
    const { cidrs } = parseCidrList('10.0.0.0/8');
    const plan = planInstall({ ...base, skipSubnets: cidrs });
    const policies = '-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n';
    assert.deepEqual(compareWithPlan(plan, parseNatRules(policies)), { kind: 'absent' });
    const installed =
      policies + '-N MESHPIPE_INBOUND\n-N MESHPIPE_OUTPUT\n' + [...plan.jumps, ...plan.rules].map(renderRule).join('\n');
    assert.deepEqual(compareWithPlan(plan, parseNatRules(installed)), { kind: 'current' });
    // What a user wrote as 10.1.2.3/8 and iptables printed as 10.0.0.0/8 is the same rule.
    const sloppy = installed.replaceAll('-s 10.0.0.0/8', '-s 10.1.2.3/8');
    assert.deepEqual(compareWithPlan(plan, parseNatRules(sloppy)), { kind: 'current' });
    const twice = installed + '\n-A OUTPUT -m comment --comment "meshpipe/output" -j MESHPIPE_OUTPUT';
    const d1 = compareWithPlan(plan, parseNatRules(twice));
    assert.equal(d1.kind, 'differs');
    assert.match(JSON.stringify(d1), /jump OUTPUT -> meshpipe is present 2 time/);
    const edited = installed.replace('--to-ports 4140', '--to-ports 4141');
    assert.match(JSON.stringify(compareWithPlan(plan, parseNatRules(edited))), /MESHPIPE_OUTPUT has 4 rule\(s\) that differ/);
    const noJump = installed.replace(/-A PREROUTING .*\n/, '');
    assert.match(JSON.stringify(compareWithPlan(plan, parseNatRules(noJump))), /jump PREROUTING -> meshpipe is present 0 time/);
  });

  test('install and uninstall restore files touch only meshpipe rules', () => {
    const plan = planInstall(base);
    const state = parseNatRules(
      [
        '-N FOREIGN',
        '-N MESHPIPE_OUTPUT',
        '-A OUTPUT -j FOREIGN',
        '-A OUTPUT -m comment --comment "meshpipe/output" -j MESHPIPE_OUTPUT',
        '-A FOREIGN -m comment --comment "keep me" -j RETURN',
        '-A MESHPIPE_OUTPUT -j RETURN',
      ].join('\n'),
    );
    assert.equal(
      renderUninstall(state),
      '*nat\n-D OUTPUT -m comment --comment "meshpipe/output" -j MESHPIPE_OUTPUT\n-F MESHPIPE_OUTPUT\n-X MESHPIPE_OUTPUT\nCOMMIT\n',
    );
    assert.equal(renderUninstall(parseNatRules('-N FOREIGN\n-A OUTPUT -j FOREIGN')), null);
    assert.deepEqual(uninstallCommands(state), [
      ['-t', 'nat', '-D', 'OUTPUT', '-m', 'comment', '--comment', 'meshpipe/output', '-j', 'MESHPIPE_OUTPUT'],
      ['-t', 'nat', '-F', 'MESHPIPE_OUTPUT'],
      ['-t', 'nat', '-X', 'MESHPIPE_OUTPUT'],
    ]);
    const install = renderInstall(plan, state);
    assert.ok(install.startsWith('*nat\n:MESHPIPE_INBOUND - [0:0]\n:MESHPIPE_OUTPUT - [0:0]\n-D OUTPUT -m comment'), install);
    assert.ok(!install.includes('FOREIGN'));
    assert.ok(install.endsWith('COMMIT\n'));
    assert.deepEqual(tokenizeRule('OUTPUT -m comment --comment "a \\"b\\" c" -j X'), ['OUTPUT', '-m', 'comment', '--comment', 'a "b" c', '-j', 'X']);
  });

  test('backend detection and IPv6 command names', () => {
    assert.equal(parseBackend('iptables v1.8.9 (nf_tables)'), 'nf_tables');
    assert.equal(parseBackend('iptables v1.8.9 (legacy)'), 'legacy');
    assert.equal(parseBackend('iptables v1.4.21'), 'unknown');
    assert.equal(commandForFamily('iptables-legacy', 'ipv6'), 'ip6tables-legacy');
    assert.equal(commandForFamily('/usr/sbin/iptables-nft', 'ipv6'), '/usr/sbin/ip6tables-nft');
    assert.equal(commandForFamily('iptables', 'ipv4'), 'iptables');
    assert.throws(() => commandForFamily('nft', 'ipv4'), /not an iptables command/);
  });
});

/** Runs `meshpipe init ARGS` in a subprocess (in the host namespace: these runs fail before touching iptables). */
function init(args: string[]) {
  return run(process.execPath, ['--input-type=module', '-e', RUN_INIT, '--', ...args]);
}

describe('meshpipe init arguments', () => {
  test('a bad port list or subnet exits 2 naming every bad token, before touching iptables', async () => {
    const r = await init(['--skip-inbound-ports', '80,8o8o', '--skip-subnets', '10.0.0.0/8,10.0.0.0/33,fd00::zz/8']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--skip-inbound-ports: "8o8o": expected a port/);
    assert.match(r.stderr, /--skip-subnets: "10\.0\.0\.0\/33": prefix length "33" is invalid/);
    assert.match(r.stderr, /"fd00::zz\/8"/);
    const p = await init(['--skip-outbound-ports', '9000-8000']);
    assert.equal(p.code, 2);
    assert.match(p.stderr, /"9000-8000": invalid range: 8000 is lower than 9000/);
    const u = await init(['--proxy-uid', 'proxy']);
    assert.equal(u.code, 2);
    assert.match(u.stderr, /--proxy-uid "proxy" is invalid: expected an integer 0-4294967294/);
    const c = await init(['--ipv6', '--no-ipv6']);
    assert.equal(c.code, 2);
    assert.match(c.stderr, /contradict/);
    const x = await init(['--bogus']);
    assert.equal(x.code, 2);
    assert.match(x.stderr, /unknown option --bogus/);
  });

  test('annotations from a downward-API file replace the flags; bad entries are reported and skipped', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'meshpipe-init-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'annotations');
    writeFileSync(
      file,
      [
        'config.linkerd.io/skip-inbound-ports="22,4567-4568,bad"',
        'config.linkerd.io/skip-subnets="10.96.0.0/12,nope/8"',
        'kubernetes.io/description="unrelated"',
      ].join('\n'),
    );
    const args = await parseInitArgs(['--annotations', file, '--skip-inbound-ports', '80', '--skip-outbound-ports', '3306']);
    assert.deepEqual(args.skipInboundPorts, ranges([22, 22], [4567, 4568]));
    assert.deepEqual(args.skipOutboundPorts, ranges([3306, 3306]), 'no annotation: the flag applies');
    assert.deepEqual(args.skipSubnets.map((c) => c.text), ['10.96.0.0/12']);
    assert.equal(args.warnings.length, 2);
    assert.match(args.warnings[0]!, /skip-inbound-ports: entry "bad" skipped/);
    assert.match(args.warnings[1]!, /skip-subnets: entry "nope\/8" skipped/);
    await assert.rejects(parseInitArgs(['--annotations', join(dir, 'missing')]), /--annotations .*missing: cannot read the file/);
  });

  test('a missing iptables binary exits 1 naming the package; a non-iptables command exits 2', async () => {
    const r = await init(['--iptables-cmd', '/nonexistent/iptables-legacy', '--no-ipv6']);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /\/nonexistent\/iptables-legacy was not found: install the package that provides it \(Debian\/Ubuntu: apt-get install iptables/);
    const n = await init(['--iptables-cmd', 'nft']);
    assert.equal(n.code, 2, n.stderr);
    assert.match(n.stderr, /--iptables-cmd "nft" is not an iptables command/);
  });

  test('--help exits 0 and lists every flag', async () => {
    const r = await init(['--help']);
    assert.equal(r.code, 0);
    for (const flag of ['--proxy-uid', '--skip-subnets', '--annotations', '--dry-run', '--uninstall', '--iptables-cmd', '--no-ipv6']) {
      assert.ok(r.stdout.includes(flag), flag);
    }
  });
});
