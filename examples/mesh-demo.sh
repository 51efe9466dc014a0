#!/usr/bin/env bash
# Two pods on one machine, meshed with mutual TLS: a first look at what the
# sidecars do, without a cluster.
#
# Each "pod" is a network namespace (joined by a veth pair, 10.77.0.1 and
# 10.77.0.2) with `meshpipe init`'s iptables rules and a transparent meshpipe
# sidecar running as uid 2102, the layout `meshpipe inject` gives a
# Kubernetes pod. Each sidecar has its own identity from `meshpipe identity`
# (one local trust anchor). The client sidecar knows the server pod as a
# meshed destination from a --destinations file; the server sidecar reads its
# pod (the app's port) from a manifest. Then the client pod's curl, as an
# ordinary uid, asks the server pod's app for a page:
#
#   curl -> iptables -> outbound 127.0.0.1:4140 -> mTLS + transport header
#        -> 10.77.0.2:4143 -> inbound -> app 10.77.0.2:8080
#
# and the script shows what each side saw: the answer, both sidecars'
# metrics with the verified peer identity (tls="true", server_id and
# client_id), `meshpipe explain` for the port, and (with tcpdump installed) a
# capture on the server pod's interface in which the request's text does not
# appear. Every step is checked: the script exits 1 naming the step that
# failed, so it doubles as a smoke test (test/mesh-demo.test.ts runs it).
#
# Usage (Linux, as root, in a clone where `npm install` has run):
#   sudo examples/mesh-demo.sh          # run, show, clean up
#   sudo examples/mesh-demo.sh --keep   # leave the pods running and print how to use them
# With --keep, `sudo examples/mesh-demo.sh --clean` removes them later. A run
# that fails or is interrupted (Ctrl-C) removes what it made, --keep or not.
set -euo pipefail
# The demo's own settings only: a MESHPIPE_* variable from the caller's shell
# (a log level, an identity directory) would change what the sidecars do.
unset "${!MESHPIPE_@}"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CLI="$ROOT/dist/ts/cli/main.js"
CLIENT_NS=meshpipe-demo-client
SERVER_NS=meshpipe-demo-server
CLIENT_IP=10.77.0.1
SERVER_IP=10.77.0.2
APP_PORT=8080
PROXY_UID=2102
APP_UID=1000
TRUST=identity.linkerd.cluster.local
CLIENT_ID="client.demo.serviceaccount.$TRUST"
SERVER_ID="server.demo.serviceaccount.$TRUST"
STATE=/run/meshpipe-demo

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() {
  printf 'mesh-demo: FAILED: %s\n' "$*" >&2
  for log in "$STATE"/*.log; do
    [[ -f "$log" ]] && { printf -- '--- %s (last lines)\n' "$log" >&2; tail -n 8 "$log" >&2; }
  done
  # The EXIT trap removes the pods; should it not get to (kill -9), --clean does.
  printf 'mesh-demo: removing the pods (if anything is left: sudo %s --clean)\n' "$0" >&2
  exit 1
}
meshpipe() { node "$CLI" "$@"; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
# A command inside a pod as a given uid (setpriv execs: the PID is the command's own).
as_uid() { local ns=$1 uid=$2; shift 2; ip netns exec "$ns" setpriv --reuid "$uid" --regid "$uid" --clear-groups "$@"; }

clean() {
  # Every process in the demo's namespaces is one this script started there (the app, the
  # sidecars, tcpdump): stop them by the namespace, not by name or by a PID file that could
  # outlive its process. TERM first (the sidecars drain for at most 1s), KILL what remains.
  local ns pids i
  for ns in "$CLIENT_NS" "$SERVER_NS"; do
    [[ -e "/run/netns/$ns" ]] || continue
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [[ -n "$pids" ]] || continue
    # shellcheck disable=SC2086 # a list of PIDs
    kill -TERM $pids 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      [[ -z "$(ip netns pids "$ns" 2>/dev/null)" ]] && break
      sleep 0.1
    done
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    # shellcheck disable=SC2086
    [[ -z "$pids" ]] || kill -KILL $pids 2>/dev/null || true
  done
  ip netns delete "$CLIENT_NS" 2>/dev/null || true
  ip netns delete "$SERVER_NS" 2>/dev/null || true
  rm -rf "$STATE"
}

case "${1:-}" in
  --clean | --keep | '') ;;
  -h | --help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "mesh-demo: unknown option $1: expected --keep, --clean or nothing" >&2; exit 2 ;;
esac
[[ $# -le 1 ]] || { echo "mesh-demo: expected one option at most, got $*" >&2; exit 2; }
MODE=${1:-}

[[ $EUID -eq 0 ]] || { echo "mesh-demo: needs root (network namespaces and iptables): sudo $0 $MODE" >&2; exit 2; }
if [[ "$MODE" == --clean ]]; then
  clean
  echo "mesh-demo: removed the pods"
  exit 0
fi

if ! command -v node >/dev/null; then
  # sudo resets PATH (secure_path): a node from nvm or /usr/local is then not found.
  echo "mesh-demo: node is not on root's PATH: run it as sudo env PATH=\"\$PATH\" $0 $MODE, or install Node.js 20 for root" >&2
  exit 2
fi
for tool in ip iptables setpriv curl; do
  command -v "$tool" >/dev/null || { echo "mesh-demo: $tool is not installed (Debian: apt-get install iproute2 iptables util-linux curl)" >&2; exit 2; }
done
[[ -f "$CLI" ]] || { echo "mesh-demo: $CLI is missing: run npm install in $ROOT first" >&2; exit 2; }
if ip netns list | grep -q -E "^($CLIENT_NS|$SERVER_NS)( |$)"; then
  echo "mesh-demo: the demo pods exist already (an earlier --keep): remove them with $0 --clean" >&2
  exit 2
fi
if [[ -e "$STATE" ]]; then
  echo "mesh-demo: $STATE exists (left by an earlier run): remove it with $0 --clean" >&2
  exit 2
fi
# The sidecars run as uid $PROXY_UID and the app as uid $APP_UID, not root: both must reach
# node and the clone (a clone under /root or a 0700 home is not readable to them).
NODE=$(command -v node)
for uid in "$PROXY_UID" "$APP_UID"; do
  if ! setpriv --reuid "$uid" --regid "$uid" --clear-groups test -r "$CLI" -a -x "$NODE"; then
    echo "mesh-demo: uid $uid cannot read $CLI or run $NODE: the sidecars run as uid $PROXY_UID and the app as uid $APP_UID; use a clone (and a node) they can read, e.g. under /opt, or give others read and search permission on the path" >&2
    exit 2
  fi
done
TCPDUMP=$(command -v tcpdump || true)
[[ -n "$TCPDUMP" ]] || echo "mesh-demo: tcpdump is not installed: the capture step is skipped (Debian: apt-get install tcpdump)" >&2

# Whatever happens from here (a failed step, Ctrl-C), the pods go; only a successful --keep
# run leaves them. INT and TERM exit through the EXIT trap too.
trap clean EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$STATE"
chmod 755 "$STATE"

say "Identities: a local trust anchor and one certificate per pod"
meshpipe identity init --out "$STATE/ca" >/dev/null || fail "meshpipe identity init"
for sa in client server; do
  meshpipe identity issue --name "$sa.demo.serviceaccount.$TRUST" --ca-dir "$STATE/ca" --out "$STATE/$sa" >/dev/null \
    || fail "meshpipe identity issue for $sa"
  # The sidecar runs as its own uid and must read its key (written 0600 for root).
  chown -R "$PROXY_UID:$PROXY_UID" "$STATE/$sa"
done
meshpipe identity check --identity-dir "$STATE/server" | head -n 3

say "Pods: two network namespaces joined by a veth pair, each with meshpipe init's rules"
ip netns add "$CLIENT_NS" || fail "ip netns add $CLIENT_NS"
ip netns add "$SERVER_NS" || fail "ip netns add $SERVER_NS"
ip link add name eth0 netns "$CLIENT_NS" type veth peer name eth0 netns "$SERVER_NS" || fail "a veth pair between the pods"
for pair in "$CLIENT_NS $CLIENT_IP" "$SERVER_NS $SERVER_IP"; do
  read -r ns addr <<<"$pair"
  { ip -n "$ns" link set lo up && ip -n "$ns" addr add "$addr/24" dev eth0 && ip -n "$ns" link set eth0 up; } \
    || fail "addresses in $ns"
  in_ns "$ns" node "$CLI" init --no-ipv6 >/dev/null || fail "meshpipe init in $ns"
done
echo "client pod $CLIENT_IP, server pod $SERVER_IP; iptables redirects every TCP connection but uid $PROXY_UID's to the sidecar"

say "Sidecars: each with its identity; the client knows the server pod is meshed"
cat >"$STATE/server.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata: { name: server, namespace: demo, labels: { app: server } }
spec:
  serviceAccountName: server
  containers: [{ name: app, ports: [{ containerPort: $APP_PORT }] }]
status: { podIP: $SERVER_IP }
EOF
# ADDRESS IDENTITY [TUNNEL-PORT]: connections to the server pod go as mTLS to its 4143.
echo "$SERVER_IP $SERVER_ID" >"$STATE/destinations"
chmod 644 "$STATE/server.yaml" "$STATE/destinations"

# Starts a background process in a pod as a uid, logging to $STATE/NAME.log, its PID in $STATE/NAME.pid.
start() {
  local name=$1 ns=$2 uid=$3; shift 3
  # exec: ip netns exec and setpriv exec too, so $! is the process itself, not a subshell.
  (exec ip netns exec "$ns" setpriv --reuid "$uid" --regid "$uid" --clear-groups "$@") >"$STATE/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
}
# Waits (up to 20s) until a process logs a line matching PATTERN; fails at once if it exits.
wait_log() {
  local name=$1 pattern=$2 pid i
  pid=$(cat "$STATE/$name.pid")
  for ((i = 0; i < 200; i++)); do
    grep -q -E "$pattern" "$STATE/$name.log" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || fail "$name exited before logging /$pattern/"
    sleep 0.1
  done
  fail "$name did not log /$pattern/ within 20s"
}

start app "$SERVER_NS" "$APP_UID" node -e "
  require('node:http').createServer((req, res) => {
    res.end('hello from the server pod: ' + req.method + ' ' + req.url + ' from ' + req.socket.remoteAddress + '\n');
  }).listen($APP_PORT, '0.0.0.0', () => console.log('LISTENING'));" "$STATE/app"  # (names the demo in ps)
wait_log app LISTENING
common=(proxy --inbound 0.0.0.0:4143 --outbound 127.0.0.1:4140 --admin 127.0.0.1:4191 --drain-timeout 1s --log-format json)
start server-sidecar "$SERVER_NS" "$PROXY_UID" node "$CLI" "${common[@]}" \
  --identity-dir "$STATE/server" --manifests "$STATE/server.yaml" --namespace demo --pod server
start client-sidecar "$CLIENT_NS" "$PROXY_UID" node "$CLI" "${common[@]}" \
  --identity-dir "$STATE/client" --destinations "$STATE/destinations"
wait_log server-sidecar '"msg":"proxy ready"'
wait_log client-sidecar '"msg":"proxy ready"'
echo "both sidecars ready (logs in $STATE)"

say "A request from the client pod (uid $APP_UID, no proxy settings: iptables sends it through the mesh)"
marker="meshpipe-demo-$RANDOM$RANDOM"
capture=
if [[ -n "$TCPDUMP" ]]; then
  # Everything on the wire between the pods, while the request runs.
  (exec ip netns exec "$SERVER_NS" "$TCPDUMP" -i eth0 --immediate-mode -U -w "$STATE/wire.pcap" "tcp port 4143 or tcp port $APP_PORT") >"$STATE/tcpdump.log" 2>&1 &
  echo $! >"$STATE/tcpdump.pid"
  wait_log tcpdump 'listening on'
  capture=yes
fi
answer=$(as_uid "$CLIENT_NS" "$APP_UID" curl -sS --max-time 10 "http://$SERVER_IP:$APP_PORT/$marker") \
  || fail "curl http://$SERVER_IP:$APP_PORT/ from the client pod"
echo "$answer"
# The app sees the connection come from its own pod IP: the server sidecar dials it, and the
# client's identity is in the sidecar's metrics (client_id) rather than in the source address.
[[ "$answer" == "hello from the server pod: GET /$marker from $SERVER_IP" ]] \
  || fail "unexpected answer (expected the app to see GET /$marker from $SERVER_IP, its sidecar)"

if [[ -n "$capture" ]]; then
  pid=$(cat "$STATE/tcpdump.pid")
  kill -INT "$pid"
  timeout 5 tail --pid="$pid" -f /dev/null || true
  rm -f "$STATE/tcpdump.pid"
  # Counted from whole reads (no early-exiting reader in a pipe, whose SIGPIPE under
  # pipefail could be taken for an answer).
  packets=$("$TCPDUMP" -r "$STATE/wire.pcap" 2>/dev/null | wc -l) || fail "reading the capture"
  on_app_port=$("$TCPDUMP" -r "$STATE/wire.pcap" "tcp port $APP_PORT" 2>/dev/null | wc -l) || fail "reading the capture"
  on_tunnel=$("$TCPDUMP" -r "$STATE/wire.pcap" "tcp port 4143" 2>/dev/null | wc -l) || fail "reading the capture"
  plaintext=$("$TCPDUMP" -r "$STATE/wire.pcap" -A 2>/dev/null | grep -c -F -- "$marker" || true)
  [[ "$packets" -gt 0 ]] || fail "the capture saw no packets"
  [[ "$on_app_port" -eq 0 ]] || fail "$on_app_port packets to port $APP_PORT crossed the wire outside the tunnel"
  [[ "$on_tunnel" -eq "$packets" ]] || fail "$((packets - on_tunnel)) of $packets packets were not on the tunnel port 4143"
  say "On the wire between the pods: $packets packets, all on port 4143, the tunnel (on port $APP_PORT: $on_app_port)"
  [[ "$plaintext" -eq 0 ]] || fail "the request's text ($marker) is readable on the wire ($plaintext lines)"
  echo "the request's text ($marker) appears in none of them: it crossed encrypted"
fi

say "What the sidecars saw (their /metrics, from inside each pod)"
client_metrics=$(in_ns "$CLIENT_NS" curl -sS --max-time 5 http://127.0.0.1:4191/metrics) || fail "client sidecar /metrics"
server_metrics=$(in_ns "$SERVER_NS" curl -sS --max-time 5 http://127.0.0.1:4191/metrics) || fail "server sidecar /metrics"
out_line=$(grep -E '^tcp_open_total\{[^}]*direction="outbound"' <<<"$client_metrics" | grep 'tls="true"' | grep "server_id=\"$SERVER_ID\"" | head -n 1) || true
in_line=$(grep -E '^tcp_open_total\{[^}]*direction="inbound"' <<<"$server_metrics" | grep 'tls="true"' | grep "client_id=\"$CLIENT_ID\"" | head -n 1) || true
echo "client pod, outbound: ${out_line:-(none)}"
echo "server pod, inbound:  ${in_line:-(none)}"
# Detection saw HTTP/1 on both sides: the request was proxied as a request, and counted.
req_line=$(grep -E '^request_total\{[^}]*direction="inbound"' <<<"$server_metrics" | grep "client_id=\"$CLIENT_ID\"" | head -n 1) || true
echo "server pod, HTTP:     ${req_line:-(none)}"
[[ -n "$out_line" ]] || fail "the client sidecar has no outbound tcp_open_total with tls=\"true\" and server_id=\"$SERVER_ID\""
[[ -n "$in_line" ]] || fail "the server sidecar has no inbound tcp_open_total with tls=\"true\" and client_id=\"$CLIENT_ID\""
[[ -n "$req_line" ]] || fail "the server sidecar has no inbound request_total with client_id=\"$CLIENT_ID\""

say "Why port $APP_PORT is handled this way (meshpipe explain, from the server pod's manifest)"
meshpipe explain --manifests "$STATE/server.yaml" --namespace demo --pod server --port "$APP_PORT" --destination "$SERVER_IP" \
  --destinations "$STATE/destinations" --client "$CLIENT_ID" --client-ip "$CLIENT_IP" \
  || fail "meshpipe explain"

if [[ "$MODE" == --keep ]]; then
  trap - EXIT
  say "The pods keep running. Try:"
  cat <<EOF
  sudo ip netns exec $CLIENT_NS setpriv --reuid $APP_UID --regid $APP_UID --clear-groups curl -s http://$SERVER_IP:$APP_PORT/
  sudo ip netns exec $CLIENT_NS curl -s http://127.0.0.1:4191/connections   # open connections
  sudo ip netns exec $SERVER_NS curl -s http://127.0.0.1:4191/metrics | grep tls=
  less $STATE/server-sidecar.log
  sudo $0 --clean   # stop and remove everything
EOF
else
  say "Done: the request crossed the mesh, verified both ways. Cleaning up (--keep leaves the pods running)."
fi
