/**
 * IdentityReloader against the way Kubernetes rotates mounted certificates:
 * the files are symlinks through `..data` to a timestamped folder, and a
 * rotation writes a new folder and swaps `..data` atomically. A good
 * rotation is picked up (new serial, counted); a bad one (garbage, a key
 * from another certificate) keeps the last good identity and is counted and
 * shown until fixed; a FIFO swapped in for a file is refused without
 * blocking; the 80%-of-lifetime warning fires once per certificate. Events are awaited, never slept on.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { identityInit, identityIssue } from '../ts/engine/mesh.js';
import { IdentityReloader, loadIdentity, type IdentityState } from '../ts/identity/index.js';
import { MeshpipeError } from '../ts/errors.js';
import { withTimeout } from './helpers.js';

const WEB = 'web.shop.serviceaccount.identity.linkerd.cluster.local';
const DAY = 86_400_000;

interface Mount {
  dir: string;
  /** Writes a new timestamped folder and swaps `..data` to it (the kubelet's atomic update). */
  rotate(files: { crt: string; key: string; ca: string }): void;
}

function mount(t: { after(fn: () => void): void }): Mount {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-reload-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  let n = 0;
  const m: Mount = {
    dir,
    rotate({ crt, key, ca }) {
      const ts = `..2026_${n++}`;
      mkdirSync(join(dir, ts));
      writeFileSync(join(dir, ts, 'tls.crt'), crt);
      writeFileSync(join(dir, ts, 'tls.key'), key, { mode: 0o600 });
      writeFileSync(join(dir, ts, 'ca.crt'), ca);
      symlinkSync(ts, join(dir, '..data_tmp'));
      renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
    },
  };
  return m;
}

type Issued = { crt: string; key: string; ca: string; serial: string };

/** A fresh CA and a function issuing WEB's certificates from it (a day each). */
function issuer(): { ca: ReturnType<typeof identityInit>; issue: () => Issued } {
  const ca = identityInit({ trustDomain: 'cluster.local', anchorTtlMs: 365 * DAY, issuerTtlMs: 30 * DAY });
  const issue = (): Issued => {
    const w = identityIssue({ issuerCertPem: ca.issuer.certPem, issuerKeyPem: ca.issuer.keyPem, issuerFile: 'issuer.crt', name: WEB, ttlMs: DAY });
    return { crt: w.certPem, key: w.keyPem, ca: ca.anchor.certPem, serial: w.serial };
  };
  return { ca, issue };
}

/** The kubelet's top-level symlinks through `..data`. */
function linkFiles(dir: string): void {
  for (const f of ['tls.crt', 'tls.key', 'ca.crt']) symlinkSync(join('..data', f), join(dir, f));
}

function files(dir: string): { cert: string; key: string; anchors: string } {
  return { cert: join(dir, 'tls.crt'), key: join(dir, 'tls.key'), anchors: join(dir, 'ca.crt') };
}

test('a rotation is picked up; a bad one keeps the last good identity until fixed', async (t) => {
  const { ca, issue } = issuer();
  const m = mount(t);
  const first = issue();
  m.rotate(first);
  linkFiles(m.dir);

  const reloader = new IdentityReloader({ files: files(m.dir), pollIntervalMs: 50, debounceMs: 20 });
  t.after(() => reloader.close());
  const start = await reloader.start();
  assert.equal(start.name, WEB);
  assert.equal(start.serial, first.serial);
  assert.equal(start.renewOverdue, false);
  assert.ok(start.expiresInMs > DAY - 120_000 && start.expiresInMs <= DAY, `expires in about a day: ${start.expiresInMs}`);

  // A good rotation.
  const second = issue();
  const reloaded = once(reloader, 'reloaded') as Promise<[IdentityState]>;
  m.rotate(second);
  const [s2] = await withTimeout(reloaded, 10_000, 'the rotated identity');
  assert.equal(s2.serial, second.serial);
  assert.equal(reloader.state().reloads, 1);

  // Garbage mid-rotation: the last good identity stays, the failure is counted and shown.
  const failed = once(reloader, 'reloadFailed') as Promise<[MeshpipeError]>;
  m.rotate({ crt: 'garbage\n', key: second.key, ca: ca.anchor.certPem });
  const [err] = await withTimeout(failed, 10_000, 'the failed reload');
  assert.equal(err.code, 'ERR_IDENTITY');
  assert.match(err.message, /tls\.crt: expected a certificate chain/);
  let s = reloader.state();
  assert.equal(s.serial, second.serial, 'the last good identity is kept');
  assert.equal(s.failures, 1);
  assert.match(s.lastError?.message ?? '', /tls\.crt/);

  // A key that belongs to another certificate.
  const third = issue();
  const failed2 = once(reloader, 'reloadFailed') as Promise<[MeshpipeError]>;
  m.rotate({ crt: third.crt, key: second.key, ca: ca.anchor.certPem });
  const [err2] = await withTimeout(failed2, 10_000, 'the mismatched key');
  assert.match(err2.message, /tls\.key: the private key does not match the certificate/);
  assert.equal(reloader.state().serial, second.serial);
  assert.equal(reloader.state().failures, 2);

  // Fixed: the new identity is taken and the error clears.
  const fixed = once(reloader, 'reloaded') as Promise<[IdentityState]>;
  m.rotate(third);
  const [s3] = await withTimeout(fixed, 10_000, 'the fixed identity');
  assert.equal(s3.serial, third.serial);
  s = reloader.state();
  assert.equal(s.lastError, null);
  assert.deepEqual([s.reloads, s.failures], [2, 2]);
});

test('the renewal warning fires once per certificate at 80% of its lifetime', async (t) => {
  const ca = identityInit({ trustDomain: 'cluster.local', anchorTtlMs: 365 * DAY, issuerTtlMs: 30 * DAY });
  const w = identityIssue({ issuerCertPem: ca.issuer.certPem, issuerKeyPem: ca.issuer.keyPem, issuerFile: 'issuer.crt', name: WEB, ttlMs: DAY });
  const m = mount(t);
  m.rotate({ crt: w.certPem, key: w.keyPem, ca: ca.anchor.certPem });
  for (const f of ['tls.crt', 'tls.key', 'ca.crt']) symlinkSync(join('..data', f), join(m.dir, f));
  const loaded = await loadIdentity(files(m.dir), undefined);
  const { notBeforeMs, notAfterMs } = loaded.info;
  let now = notBeforeMs + 0.79 * (notAfterMs - notBeforeMs);
  const reloader = new IdentityReloader({ files: files(m.dir), pollIntervalMs: 20, now: () => now });
  t.after(() => reloader.close());
  const warnings: IdentityState[] = [];
  reloader.on('expiring', (s) => warnings.push(s));
  const first = await reloader.start();
  assert.equal(first.renewOverdue, false);
  assert.deepEqual(warnings, []);
  now = notBeforeMs + 0.81 * (notAfterMs - notBeforeMs);
  const [warned] = await withTimeout(once(reloader, 'expiring') as Promise<[IdentityState]>, 5000, 'the renewal warning');
  assert.equal(warned.renewOverdue, true);
  assert.ok(warned.lifetimeUsed >= 0.8 && warned.lifetimeUsed < 0.82, String(warned.lifetimeUsed));
  // Several more poll ticks at 81%: one warning per certificate.
  const ticks = new Promise<void>((resolve) => {
    let n = 0;
    const timer = setInterval(() => {
      if (++n >= 5) {
        clearInterval(timer);
        resolve();
      }
    }, 20);
  });
  await ticks;
  assert.equal(warnings.length, 1);
  now = notAfterMs + 1;
  assert.equal(reloader.state().expired, true);
});

test('start fails with ERR_IDENTITY when there is nothing good to keep', async (t) => {
  const m = mount(t);
  const reloader = new IdentityReloader({ files: files(m.dir) });
  t.after(() => reloader.close());
  await assert.rejects(reloader.start(), (err: unknown) => {
    assert.ok(err instanceof MeshpipeError);
    assert.equal(err.code, 'ERR_IDENTITY');
    assert.equal(err.exitCode, 2);
    assert.match(err.message, /tls\.crt: cannot read the certificate chain \(PEM\): no such file/);
    return true;
  });
  // An oversized file is refused before it is read.
  writeFileSync(join(m.dir, 'tls.crt'), Buffer.alloc(2 * 1024 * 1024, 0x41));
  writeFileSync(join(m.dir, 'tls.key'), 'x');
  writeFileSync(join(m.dir, 'ca.crt'), 'x');
  await assert.rejects(loadIdentity(files(m.dir), undefined), /tls\.crt: expected the certificate chain \(PEM\) in a regular file, too large \(2097152 bytes, more than the 1048576 allowed\)/);
});

test('a FIFO swapped in for tls.crt is refused without blocking; later rotations and close() still work', async (t) => {
  const { issue } = issuer();
  const m = mount(t);
  const first = issue();
  m.rotate(first);
  linkFiles(m.dir);
  const reloader = new IdentityReloader({ files: files(m.dir), pollIntervalMs: 50, debounceMs: 20 });
  let closed = false;
  t.after(() => (closed ? undefined : reloader.close()));
  assert.equal((await reloader.start()).serial, first.serial);

  // A rotation whose tls.crt is a FIFO nobody writes to: opening it for
  // reading would block a pool thread until a writer came, and the reload,
  // every later one and close() with it.
  const failed = once(reloader, 'reloadFailed') as Promise<[MeshpipeError]>;
  const fifoDir = join(m.dir, '..fifo');
  mkdirSync(fifoDir);
  execFileSync('mkfifo', [join(fifoDir, 'tls.crt')]);
  writeFileSync(join(fifoDir, 'tls.key'), first.key, { mode: 0o600 });
  writeFileSync(join(fifoDir, 'ca.crt'), first.ca);
  symlinkSync('..fifo', join(m.dir, '..data_tmp'));
  renameSync(join(m.dir, '..data_tmp'), join(m.dir, '..data'));
  const [err] = await withTimeout(failed, 10_000, 'the refused FIFO');
  assert.equal(err.code, 'ERR_IDENTITY');
  assert.match(err.message, /tls\.crt: expected the certificate chain \(PEM\) in a regular file, found a FIFO \(named pipe\)/);
  assert.equal(reloader.state().serial, first.serial, 'the last good identity is kept');
  assert.equal(reloader.state().failures, 1);
  assert.match(reloader.state().lastError?.message ?? '', /FIFO/);

  // The next good rotation is still applied.
  const second = issue();
  const reloaded = once(reloader, 'reloaded') as Promise<[IdentityState]>;
  m.rotate(second);
  const [s2] = await withTimeout(reloaded, 10_000, 'the rotation after the FIFO');
  assert.equal(s2.serial, second.serial);
  assert.equal(reloader.state().lastError, null);

  // And shutdown does not wait on anything left behind.
  await withTimeout(reloader.close(), 5_000, 'close() after a refused FIFO');
  closed = true;
});
