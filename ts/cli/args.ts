/**
 * Command-line flags of `meshpipe proxy` (and of `meshpipe run`, which takes
 * the same proxy options plus its own), defined once in `PROXY_OPTIONS`.
 *
 * The same table drives parsing (node:util parseArgs), the flag layer of the
 * config (each flag maps to a config key and is reported as its source, e.g.
 * `(from --drain-timeout)`) and the help text, which shows every option with
 * its default and its environment variable. Unknown options, missing values
 * and stray arguments are `ERR_INVALID_ARGUMENT` errors (exit 2) naming the
 * offending token.
 */
import { parseArgs } from 'node:util';
import { MeshpipeError } from '../errors.js';
import { closest, CONFIG_KEYS, defaultText, envVarName, loadConfig, type ConfigKey, type ProxyConfig, type RawLayer } from '../config/index.js';

/** One command-line option. */
export interface OptionSpec {
  /** The long flag name without dashes, e.g. `drain-timeout`. */
  readonly flag: string;
  readonly short?: string;
  readonly type: 'string' | 'boolean';
  /** Repeatable: every occurrence is kept, in order. */
  readonly multiple?: boolean;
  /** The config key this flag sets, if any. */
  readonly key?: ConfigKey;
  /** Placeholder for the value in help, e.g. `DURATION`. */
  readonly valueName?: string;
  readonly help: string;
  /** A boolean flag that sets its key to false (`--no-admin-shutdown`). */
  readonly negate?: boolean;
  /** Default shown in help; by default taken from the config key. */
  readonly defaultText?: string;
}

export const PROXY_OPTIONS: readonly OptionSpec[] = [
  { flag: 'forward', type: 'string', multiple: true, key: 'forward', valueName: 'BIND=TARGET[,mode=M][,direction=D]',
    help: 'listen on BIND and proxy to TARGET (repeatable; MESHPIPE_FORWARD separates several with ";" or newlines, a config file takes a list); TARGET is ip:port, [ipv6]:port or a host name (db.internal:5432, resolved at start and on its TTL); BIND localhost:P listens on 127.0.0.1:P and [::1]:P; M: detect|opaque|http1|http2|grpc|tls, D: inbound|outbound (default outbound)' },
  { flag: 'resolve-interval', type: 'string', key: 'resolveInterval', valueName: 'ttl|DURATION', help: 'how often a --forward target that is a host name is resolved again: ttl = when its records\' TTL runs out (names from /etc/hosts: every 30s), or a fixed interval; new connections spread over its addresses and fail over to the next one' },
  { flag: 'dns-servers', type: 'string', key: 'dnsServers', valueName: 'IPS', help: 'DNS servers for --forward host names instead of /etc/resolv.conf\'s (then /etc/hosts is not read), e.g. 10.96.0.10 or 127.0.0.1:5353' },
  { flag: 'config', type: 'string', valueName: 'FILE', help: 'read options from a YAML or JSON file (keys in camelCase, e.g. drainTimeout)', defaultText: 'none; env MESHPIPE_CONFIG' },
  { flag: 'drain-timeout', type: 'string', key: 'drainTimeout', valueName: 'DURATION', help: 'on SIGTERM/SIGINT, let open connections finish for this long, then close them' },
  { flag: 'max-connections', type: 'string', key: 'maxConnections', valueName: 'N', help: 'limit on open proxied connections of each direction (inbound and outbound have their own), 0 = unlimited; excess waits in the kernel backlog' },
  { flag: 'max-inbound-connections', type: 'string', key: 'maxInboundConnections', valueName: 'N', help: 'limit on open inbound connections, 0 = unlimited' },
  { flag: 'max-outbound-connections', type: 'string', key: 'maxOutboundConnections', valueName: 'N', help: 'limit on open outbound connections, 0 = unlimited' },
  { flag: 'max-detecting-connections', type: 'string', key: 'maxDetectingConnections', valueName: 'N', help: 'connections of each direction in protocol detection at once (each holds up to 16 KiB); past it new ones are forwarded as opaque TCP without detection (result over_limit); inbound, one host holds at most a sixteenth of them (at least 8) and one IPv6 /64 a quarter; 0 = unlimited' },
  { flag: 'fd-reserve', type: 'string', key: 'fdReserve', valueName: 'N', help: 'file descriptors the engine leaves free for the admin server and Node.js: at its budget (descriptor limit - open at start - N) new connections wait in the kernel backlog, so /live and /metrics keep answering; 0 = no budget' },
  { flag: 'bulk-buffers', type: 'string', key: 'bulkBuffers', valueName: 'N', help: 'bulk streams (a read fills the 16 KiB buffer) are copied through a 4 MiB buffer lent while they have bytes in flight, at most N at once (4N MiB, freed 10-20 s after last use); past that, they are spliced, which needs no user memory; 0 = always splice' },
  { flag: 'idle-timeout', type: 'string', key: 'idleTimeout', valueName: 'DURATION', help: 'close a forwarded connection (both sides, with a FIN) after this long without a byte in either direction, checked every quarter of it (at most every minute); the default is Envoy\'s tcp_proxy default, long enough for pooled database and keep-alive connections, short enough to reclaim connections whose peer vanished; 0 = never' },
  { flag: 'no-http', type: 'boolean', key: 'http', negate: true, help: 'forward connections detected (or declared) as HTTP as plain TCP instead of proxying each request (no per-request balancing, HTTP metrics or HTTP errors)', defaultText: 'HTTP proxied per request' },
  { flag: 'http-max-header-bytes', type: 'string', key: 'httpMaxHeaderBytes', valueName: 'N', help: 'largest request head (request line and headers) accepted, bytes; a larger one gets 431' },
  { flag: 'http-header-timeout', type: 'string', key: 'httpHeaderTimeout', valueName: 'DURATION', help: 'close an HTTP/1 client whose request head has not arrived whole this long after its first byte (slowloris); a keep-alive connection idle between requests is not timed by this (--idle-timeout closes it)' },
  { flag: 'http-response-timeout', type: 'string', key: 'httpResponseTimeout', valueName: 'DURATION', help: 'answer 504 when upstream sends no response headers within this long; 0 = wait forever (Linkerd\'s default)' },
  { flag: 'http-port-response-timeout', type: 'string', multiple: true, key: 'httpPortResponseTimeouts', valueName: 'PORTS=DURATION',
    help: 'response timeout for some ports (repeatable), e.g. 8080=2s or outbound:9000-9100=500ms (0 = none for them); beats --http-response-timeout' },
  { flag: 'endpoints', type: 'string', key: 'endpoints', valueName: 'FILE', help: 'Services outside Kubernetes for per-request HTTP balancing: lines of SERVICE-IP:PORT ENDPOINT-IP:PORT...' },
  { flag: 'workers', type: 'string', key: 'workers', valueName: 'N', help: 'engine worker threads, 0 = one per CPU core' },
  { flag: 'log-level', type: 'string', key: 'logLevel', valueName: 'LEVEL', help: 'fatal|error|warn|info|debug|trace|silent; logs go to stderr (debug and trace also show every connection\'s stages in the engine)' },
  { flag: 'log-format', type: 'string', key: 'logFormat', valueName: 'auto|json|text', help: 'json: one JSON object per line (pino\'s shape, for log collectors); text: for a human; auto: text when stderr is a terminal, else json (containers)' },
  { flag: 'engine-log', type: 'string', key: 'engineLog', valueName: 'FILTER', help: 'the engine\'s trace filter, RUST_LOG-style, e.g. info,meshpipe_core[conn{target=10.0.0.5:3306}]=trace traces only the connections to that target; also PUT /log-filter on the admin server', defaultText: 'from --log-level' },
  { flag: 'connect-timeout', type: 'string', key: 'connectTimeout', valueName: 'DURATION', help: 'give up connecting to a target after this long' },
  { flag: 'detect-timeout', type: 'string', key: 'detectTimeout', valueName: 'DURATION', help: 'protocol detection timeout (both directions); on expiry the connection proceeds as TCP' },
  { flag: 'inbound-detect-timeout', type: 'string', key: 'inboundDetectTimeout', valueName: 'DURATION', help: 'detection timeout for inbound connections' },
  { flag: 'outbound-detect-timeout', type: 'string', key: 'outboundDetectTimeout', valueName: 'DURATION', help: 'detection timeout for outbound connections' },
  { flag: 'port-detect-timeout', type: 'string', multiple: true, key: 'portDetectTimeouts', valueName: 'PORTS=DURATION',
    help: 'detect timeout for some ports (repeatable), e.g. 8080=2s or outbound:9000-9100=500ms; beats --detect-timeout for those ports' },
  { flag: 'server-first-grace', type: 'string', key: 'serverFirstGrace', valueName: 'DURATION', help: 'after this long with no client bytes, connect and let the server speak first; 0 = off' },
  { flag: 'opaque-ports', type: 'string', key: 'opaquePorts', valueName: 'LIST', help: 'ports and ranges to proxy as opaque TCP without detection, in both directions and to any address, e.g. 7000,8000-8100' },
  { flag: 'default-opaque-ports', type: 'string', key: 'defaultOpaquePorts', valueName: 'LIST', help: 'replaces the default opaque port list (Linkerd proxy.opaquePorts): opaque inbound, and outbound to --cluster-networks and loopback' },
  { flag: 'admin', type: 'string', key: 'admin', valueName: 'ADDR|off', help: 'admin server address (metrics, readiness), or off; in the sidecar layout its port must be one `meshpipe init` exempts (--admin-port, default 4191): inbound connections to the proxy\'s own ports are refused' },
  { flag: 'no-admin-shutdown', type: 'boolean', key: 'adminShutdown', negate: true, help: 'refuse POST /shutdown on the admin server (it is otherwise accepted from loopback peers)', defaultText: 'shutdown enabled' },
  { flag: 'admin-expose-debug', type: 'boolean', key: 'adminExposeDebug', help: 'serve /connections, /snapshot and /policy to any peer that reaches the admin port (they show peer addresses, SNI and policy); by default loopback peers only', defaultText: 'loopback only' },
  { flag: 'inbound-stop-delay', type: 'string', key: 'inboundStopDelay', valueName: 'DURATION', help: 'on shutdown, keep accepting inbound connections this long after /ready turned 503' },
  { flag: 'inbound', type: 'string', key: 'inbound', valueName: 'ADDR|off', help: 'sidecar layout (no --forward): transparent inbound listener, connections redirected by `meshpipe init` go to the app on their original port' },
  { flag: 'outbound', type: 'string', key: 'outbound', valueName: 'ADDR|off', help: 'sidecar layout (no --forward): transparent outbound listener, connections go to their original destination (SO_ORIGINAL_DST)' },
  { flag: 'inbound-host', type: 'string', key: 'inboundHost', valueName: 'IP|original', help: 'where inbound connections reach the app: "original" = their original destination (one of the pod\'s IPs). An IP such as 127.0.0.1 is an opt-in with a RISK: app ports bound to loopback only become reachable from the network, and the app sees every connection as coming from that address (an app that trusts localhost then trusts everyone)' },
  { flag: 'inbound-ips', type: 'string', key: 'inboundIps', valueName: 'IPS', help: "the pod's IPs (e.g. from the downward API's status.podIPs); inbound connections to any other address are refused and counted (inbound_tcp_accept_errors_total)", defaultText: 'env POD_IPS, else the addresses of the interfaces' },
  { flag: 'init-state', type: 'string', key: 'initState', valueName: 'FILE', help: 'the file `meshpipe init --write-state` wrote: start-up fails if this proxy\'s admin, inbound or outbound port or its uid differ from what the rules exempt' },
  { flag: 'ipv6', type: 'string', key: 'ipv6', valueName: 'auto|true|false', help: 'sidecar layout: also listen on [::1] (outbound) and [::] (inbound); auto = when the machine has IPv6 loopback' },
  { flag: 'annotations', type: 'string', key: 'annotations', valueName: 'FILE', help: "this workload's annotations in the downward-API format (e.g. /etc/podinfo/annotations); re-read when it changes" },
  { flag: 'manifests', type: 'string', multiple: true, key: 'manifests', valueName: 'PATH', help: 'Kubernetes manifests (YAML/JSON file or folder, repeatable): Namespaces, Services, workloads, policy.linkerd.io Servers' },
  { flag: 'kube', type: 'boolean', key: 'kube', help: 'watch the Kubernetes API for the same objects (in-cluster service account, or --kubeconfig)' },
  { flag: 'kubeconfig', type: 'string', key: 'kubeconfig', valueName: 'FILE', help: 'kubeconfig for --kube outside a cluster' },
  { flag: 'cluster-networks', type: 'string', key: 'clusterNetworks', valueName: 'CIDRS', help: 'networks inside the cluster (default opaque ports apply to them; outside only with enable-external-profiles)' },
  { flag: 'namespace', type: 'string', key: 'namespace', valueName: 'NS', help: "this workload's namespace (else env POD_NAMESPACE)" },
  { flag: 'pod', type: 'string', key: 'pod', valueName: 'NAME', help: "this workload's pod name (else env POD_NAME)" },
  { flag: 'identity-dir', type: 'string', key: 'identityDir', valueName: 'DIR', help: 'this proxy\'s mesh identity: a folder with tls.crt (chain), tls.key and ca.crt (trust anchors), as cert-manager or a CSI driver mounts it; checked at start (exit 2 on bad input) and re-read when it changes; with it, meshed destinations get mutual TLS through their tunnel and the inbound tunnel (the inbound port) accepts it' },
  { flag: 'identity-cert', type: 'string', key: 'identityCert', valueName: 'FILE', help: 'the identity certificate chain (PEM, leaf first), instead of --identity-dir' },
  { flag: 'identity-key', type: 'string', key: 'identityKey', valueName: 'FILE', help: 'the identity private key (PEM), instead of --identity-dir' },
  { flag: 'trust-anchors', type: 'string', key: 'trustAnchors', valueName: 'FILE', help: 'the mesh trust anchors (PEM CA certificates), instead of --identity-dir' },
  { flag: 'identity-name', type: 'string', key: 'identityName', valueName: 'NAME', help: 'which SAN of the certificate is this proxy\'s identity, when it has several or none of the usual forms' },
  { flag: 'trust-domain', type: 'string', key: 'trustDomain', valueName: 'DOMAIN', help: 'the mesh trust domain, for identities derived from service accounts' },
  { flag: 'identity-template', type: 'string', key: 'identityTemplate', valueName: 'TEMPLATE', help: 'how a pod\'s service account becomes its identity, e.g. spiffe://{trustDomain}/ns/{ns}/sa/{sa}' },
  { flag: 'destinations', type: 'string', key: 'destinations', valueName: 'FILE', help: 'meshed hosts outside Kubernetes: lines of ADDRESS|CIDR IDENTITY [TUNNEL-PORT]' },
  { flag: 'default-inbound-policy', type: 'string', key: 'defaultInboundPolicy', valueName: 'POLICY', help: 'who may reach ports no Server selects: all-unauthenticated, all-authenticated, cluster-authenticated, cluster-unauthenticated, deny or audit (a workload\'s config.linkerd.io/default-inbound-policy annotation wins)' },
  { flag: 'help', short: 'h', type: 'boolean', help: 'show this help and exit', defaultText: '' },
];

/** The result of parsing proxy arguments. */
export interface ParsedProxyArgs {
  readonly config: ProxyConfig;
  /** Arguments after `--` (the command of `meshpipe run`). */
  readonly rest: string[];
  /** Values of `extraOptions`, by flag name. */
  readonly extra: Readonly<Record<string, string | boolean | string[] | undefined>>;
}

/** True if `--help`/`-h` appears before any `--`. */
export function wantsHelp(argv: readonly string[]): boolean {
  for (const arg of argv) {
    if (arg === '--') return false;
    if (arg === '--help' || arg === '-h') return true;
  }
  return false;
}

/**
 * The flag a typo was probably meant to be: one edit per three letters or part
 * of three (`--forwrd`, `--nme`, `--prot`), so a short or unrelated name (`-x`,
 * `--bogus`) gets no suggestion rather than a wrong one.
 */
export function suggestFlag(name: string, flags: readonly string[]): string | undefined {
  return closest(name, flags, Math.ceil(name.length / 3));
}

/**
 * Parses raw option tokens against a table. Returns the values by flag name,
 * up to `maxPositionals` arguments before `--` (default none; e.g. the FILE of
 * `meshpipe inject`) and the arguments after `--`; anything unexpected is an
 * error.
 */
export function parseOptions(
  argv: readonly string[],
  options: readonly OptionSpec[],
  command: string,
  maxPositionals = 0,
): { values: Record<string, string | boolean | string[] | undefined>; rest: string[]; positionals: string[] } {
  const byName = new Map(options.map((o) => [o.flag, o]));
  const config: Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }> = {};
  for (const o of options) {
    config[o.flag] = { type: o.type, ...(o.multiple ? { multiple: true } : {}), ...(o.short ? { short: o.short } : {}) };
  }
  // strict: false so that every problem is reported by us, naming the token.
  const { tokens } = parseArgs({ args: [...argv], options: config, strict: false, allowPositionals: true, tokens: true });
  const values: Record<string, string | boolean | string[] | undefined> = {};
  const rest: string[] = [];
  const positionals: string[] = [];
  let afterTerminator = false;
  for (const token of tokens) {
    if (token.kind === 'option-terminator') {
      afterTerminator = true;
      continue;
    }
    if (token.kind === 'positional') {
      if (afterTerminator) rest.push(token.value);
      else if (positionals.length < maxPositionals) positionals.push(token.value);
      else throw new MeshpipeError('ERR_INVALID_ARGUMENT', `unexpected argument "${token.value}" for ${command}; run ${command} --help`);
      continue;
    }
    const spec = byName.get(token.name);
    if (spec === undefined) {
      const hint = suggestFlag(token.name, options.map((o) => o.flag));
      throw new MeshpipeError(
        'ERR_INVALID_ARGUMENT',
        `unknown option ${token.rawName} for ${command}${hint !== undefined ? ` (did you mean --${hint}?)` : ''}; run ${command} --help for the options`,
      );
    }
    if (spec.type === 'string') {
      // `--drain-timeout --log-format text`: the next option is not this one's value (the
      // error would otherwise blame "text"); a value that starts with -- can be given as --flag=VALUE.
      if (token.value === undefined || (!token.inlineValue && token.value.startsWith('--'))) {
        const got = token.value === undefined ? '' : ` (got the option ${token.value} instead)`;
        throw new MeshpipeError('ERR_INVALID_ARGUMENT', `option --${spec.flag} needs a value${got}: --${spec.flag} ${spec.valueName ?? 'VALUE'}`);
      }
      if (spec.multiple) values[spec.flag] = [...((values[spec.flag] as string[] | undefined) ?? []), token.value];
      else if (values[spec.flag] !== undefined) {
        throw new MeshpipeError('ERR_INVALID_ARGUMENT', `option --${spec.flag} is given more than once (it is not repeatable)`);
      } else values[spec.flag] = token.value;
    } else {
      if (token.value !== undefined) {
        throw new MeshpipeError('ERR_INVALID_ARGUMENT', `option --${spec.flag} takes no value (got "${token.value}")`);
      }
      values[spec.flag] = true;
    }
  }
  return { values, rest, positionals };
}

/** Builds the flag layer of the config from parsed values. */
export function flagLayer(values: Record<string, unknown>, options: readonly OptionSpec[] = PROXY_OPTIONS): RawLayer {
  const layer: RawLayer = {};
  for (const o of options) {
    const value = values[o.flag];
    if (o.key !== undefined && value !== undefined) layer[o.key] = { value: o.negate ? !value : value, source: `--${o.flag}` };
  }
  return layer;
}

/**
 * Parses `meshpipe proxy` arguments into a validated config. `extraOptions`
 * lets other subcommands (`meshpipe run`) add their own flags.
 * @throws MeshpipeError ERR_INVALID_ARGUMENT or ERR_INVALID_CONFIG (exit 2).
 */
export function parseProxyArgv(
  argv: readonly string[],
  opts: { env?: NodeJS.ProcessEnv; extraOptions?: readonly OptionSpec[]; command?: string } = {},
): ParsedProxyArgs {
  const options = [...PROXY_OPTIONS, ...(opts.extraOptions ?? [])];
  const { values, rest } = parseOptions(argv, options, opts.command ?? 'meshpipe proxy');
  const env = opts.env ?? process.env;
  const configFile = (values['config'] as string | undefined) ?? (env['MESHPIPE_CONFIG'] || undefined);
  const config = loadConfig({
    ...(configFile !== undefined ? { configFile } : {}),
    env,
    flags: flagLayer(values, options),
  });
  const extra: Record<string, string | boolean | string[] | undefined> = {};
  for (const o of opts.extraOptions ?? []) extra[o.flag] = values[o.flag];
  return { config, rest, extra };
}

/** Help text for a table of options: one entry per option with its default and env var. */
export function formatOptionsHelp(options: readonly OptionSpec[]): string {
  const lines: string[] = [];
  for (const o of options) {
    const name = `${o.short ? `-${o.short}, ` : '    '}--${o.flag}${o.valueName ? ` ${o.valueName}` : ''}`;
    const def = o.defaultText ?? (o.key ? defaultText(o.key) : '');
    // A --no-X flag sets its key to false: the variable that does the same is VAR=false, not VAR.
    const env = o.key ? `env ${envVarName(o.key)}${o.negate ? '=false' : ''}` : '';
    const notes = [def !== '' ? `default: ${def}` : '', env].filter((s) => s !== '');
    lines.push(`  ${name}`);
    lines.push(`        ${o.help}${notes.length > 0 ? ` (${notes.join('; ')})` : ''}`);
  }
  return lines.join('\n');
}

/** Keys that have no flag (set them in the config file or the environment). */
const FILE_ONLY_HELP: Partial<Record<ConfigKey, string>> = {
  serverFirstCacheSize: 'how many learned server-first targets are remembered',
  serverFirstTtl: 'how long a learned server-first target is remembered',
  maxMetricTargets: 'distinct targets with their own metric series, per direction; more fold into that direction\'s overflow series',
  metricsRetainIdle: 'drop a metric series no connection has used for this long (Linkerd keeps idle series 10 minutes); 0 = keep forever',
};

function fileOnlyHelp(): string {
  const flagged = new Set(PROXY_OPTIONS.map((o) => o.key));
  return CONFIG_KEYS.filter((k) => !flagged.has(k))
    .map((k) => `  ${k}\n        ${FILE_ONLY_HELP[k] ?? ''} (default: ${defaultText(k)}; env ${envVarName(k)})`)
    .join('\n');
}

/** The full `meshpipe proxy --help` text. */
export function proxyHelp(): string {
  return [
    'Usage: meshpipe proxy --forward BIND=TARGET [--forward ...] [options]',
    '       meshpipe proxy [--inbound ADDR] [--outbound ADDR] [options]     (sidecar layout)',
    '',
    'With --forward, each listener proxies to its fixed target. Without it, meshpipe runs the',
    'sidecar layout: transparent inbound (0.0.0.0:4143) and outbound (127.0.0.1:4140) listeners',
    'for the traffic `meshpipe init` redirects, each connection sent to its original destination.',
    'Runs the proxy until SIGTERM or SIGINT, then drains open connections for up to',
    '--drain-timeout and exits 0. A second signal exits at once (130 for SIGINT, 143 for SIGTERM).',
    'Port policy without a source (--annotations, --manifests, --kube): --opaque-ports is opaque both ways to',
    'any address; the default opaque ports are opaque inbound, and outbound to --cluster-networks and loopback;',
    'everything else is detected. `meshpipe explain --port P --destination IP` shows the decision.',
    'After `meshpipe init`, run the proxy as the uid init exempts (--proxy-uid, default 2102): under any other',
    'uid, root included, its own connections are redirected back into it.',
    'Logs go to stderr: text at a terminal, JSON lines otherwise (--log-format).',
    'Options come from defaults < --config FILE < MESHPIPE_* env vars < flags (flags win).',
    'Durations need a unit (ms, s, m, h, d; combinable: 1m30s; a bare number other than 0 is refused); port lists take ports and ranges (4000-4100).',
    '',
    'Options:',
    formatOptionsHelp(PROXY_OPTIONS),
    '',
    'Config file and environment only:',
    fileOnlyHelp(),
    '',
  ].join('\n');
}
