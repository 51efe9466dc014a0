/**
 * Property-based fuzzing of every TypeScript parser that reads user input:
 * port lists, durations, CIDR lists, downward-API annotation files and
 * `--forward` specs. Each property runs a bounded number of random cases
 * (fast-check, fixed seed so a failure reproduces) and checks the two rules
 * that matter for a proxy's policy: a parser never throws anything but its
 * documented error, and what it accepts is exactly what was written, never
 * silently widened (round trips and containment checks).
 */

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';

import { parsePortList, formatPortList, portInRanges, parsePortListStrict } from '../ts/config/port-list.js';
import { parseDuration, formatDuration, MAX_DURATION_MS } from '../ts/config/durations.js';
import { parseCidrList, parseCidr, isCidrError, cidrContains } from '../ts/policy/cidr.js';
import { parseDownwardApi, formatDownwardApi } from '../ts/policy/downward-api.js';
import { parseForward } from '../ts/config/forward.js';

const RUNS = { numRuns: 2000, seed: 0x6d657368 };

/** Strings built from the characters that matter to each grammar, plus noise. */
const portListish = fc.stringMatching(/^[0-9a-z,\- ]{0,40}$/);

test('port lists: never throw; accepted ports are exactly the valid tokens', () => {
  fc.assert(
    fc.property(fc.oneof(portListish, fc.string()), (input) => {
      const { ranges, errors } = parsePortList(input);
      for (const r of ranges) {
        assert.ok(r.from >= 1 && r.to <= 65535 && r.from <= r.to, `range ${r.from}-${r.to} from ${JSON.stringify(input)}`);
      }
      // Every accepted port was written as a valid token: re-parsing the
      // formatted result gives the same set (no widening on the way).
      const again = parsePortList(formatPortList(ranges));
      assert.deepEqual(again.ranges, ranges);
      assert.equal(again.errors.length, 0);
      // A fully valid list reports no error; a list with an error names the token.
      for (const e of errors) assert.ok(input.includes(e.token.trim()) || e.token.trim() === '', `token ${e.token}`);
    }),
    RUNS,
  );
});

test('port lists: valid generated lists round-trip and contain exactly their ports', () => {
  const entry = fc.oneof(
    fc.integer({ min: 1, max: 65535 }).map((p) => ({ from: p, to: p })),
    fc.tuple(fc.integer({ min: 1, max: 65535 }), fc.integer({ min: 0, max: 300 })).map(([a, w]) => ({ from: a, to: Math.min(65535, a + w) })),
  );
  fc.assert(
    fc.property(fc.array(entry, { minLength: 1, maxLength: 12 }), fc.integer({ min: 1, max: 65535 }), (entries, probe) => {
      const text = entries.map((e) => (e.from === e.to ? String(e.from) : `${e.from}-${e.to}`)).join(',');
      const ranges = parsePortListStrict(text);
      const expected = entries.some((e) => probe >= e.from && probe <= e.to);
      assert.equal(portInRanges(probe, ranges), expected, `${probe} in ${text}`);
    }),
    RUNS,
  );
});

test('durations: never throw anything but a named error; valid ones round-trip', () => {
  fc.assert(
    fc.property(fc.oneof(fc.stringMatching(/^[0-9.]{0,8}(ms|s|m|h|d|x)?$/), fc.stringMatching(/^([0-9]{1,3}(ms|s|m|h|d)){1,3}$/), fc.string()), (input) => {
      try {
        const ms = parseDuration(input);
        assert.ok(Number.isInteger(ms) && ms >= 0 && ms <= MAX_DURATION_MS);
        assert.equal(parseDuration(formatDuration(ms)), ms);
      } catch (err) {
        assert.ok(err instanceof Error && err.message.includes('invalid duration'), String(err));
      }
    }),
    RUNS,
  );
});

test('CIDR lists: never throw; a parsed network contains its own base address', () => {
  const v4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(40)).map(([a, b, c, d, p]) => `${a}.${b}.${c}.${d}/${p}`);
  fc.assert(
    fc.property(fc.oneof(v4, fc.string(), fc.stringMatching(/^[0-9a-f:./]{0,30}$/)), (input) => {
      parseCidrList(input);
      const one = parseCidr(input);
      if (!isCidrError(one)) {
        const base = input.split('/')[0] ?? '';
        assert.ok(cidrContains(one, base), `${input} contains ${base}`);
      }
    }),
    RUNS,
  );
});

test('downward-API files: never throw; formatted values parse back identically', () => {
  const key = fc.stringMatching(/^[a-z]([a-z0-9.-]{0,18}[a-z0-9])?(\/[a-z]([a-z0-9-]{0,18}[a-z0-9])?)?$/);
  fc.assert(
    fc.property(fc.dictionary(key, fc.string({ unit: 'binary' })), fc.string(), (values, noise) => {
      const text = formatDownwardApi(values);
      const parsed = parseDownwardApi(text);
      assert.equal(parsed.errors.length, 0, JSON.stringify(parsed.errors));
      assert.deepEqual(Object.fromEntries(parsed.values), { ...values });
      // Arbitrary text: no throw, and errors carry line numbers.
      for (const e of parseDownwardApi(noise).errors) assert.ok(e.line >= 1 && e.message.startsWith(`line ${e.line}`));
    }),
    { ...RUNS, numRuns: 1000 },
  );
});

test('--forward specs: either parse to valid addresses or fail with a message', () => {
  fc.assert(
    fc.property(fc.oneof(fc.stringMatching(/^[0-9.:=,a-z[\]]{0,40}$/), fc.string()), (input) => {
      try {
        const spec = parseForward(input);
        assert.ok(spec.bind && spec.target, JSON.stringify(spec));
      } catch (err) {
        assert.ok(err instanceof Error && err.message.length > 10, String(err));
      }
    }),
    RUNS,
  );
});
