#!/usr/bin/env bash
# The network lab: a hub namespace (osf-h0) joined to N peer namespaces (osf-p1..pN) by veth
# pairs, each link shaped with tc tbf in both directions. Addresses live only inside these
# namespaces: link i is 10.201.i.0/24, hub 10.201.i.1, peer i 10.201.i.2; the hub forwards,
# so peers reach each other through it. Idempotent: `up` rebuilds, `down` removes.
#
#   scripts/lab/lab.sh up [PEERS=1] [RATE=100mbit]
#   scripts/lab/lab.sh rate RATE        reshape every link (RATE none: unshaped, no tbf)
#   scripts/lab/lab.sh down
#   scripts/lab/lab.sh exec NS CMD...   run in a namespace (h0, p1, ...)
set -euo pipefail

# LAB_PREFIX names a separate lab, so two benches can run side by side (default osf).
PREFIX=${LAB_PREFIX:-osf}
HUB=$PREFIX-h0

tbf () { # dev rate ns
  local dev=$1 rate=$2 burst
  if [ "$rate" = none ]; then
    # The device's default qdisc again; deleting a root that is already the default fails.
    ip netns exec "$3" tc qdisc del dev "$dev" root 2>/dev/null || true
    return
  fi
  case $rate in
    *gbit) burst=512kb ;;
    *) burst=64kb ;;
  esac
  ip netns exec "$3" tc qdisc replace dev "$dev" root tbf rate "$rate" burst "$burst" latency 20ms
}

peers () { ip netns list | awk '{print $1}' | grep -E "^$PREFIX-p[0-9]+$" | sort -V || true; }

down () {
  for ns in $(peers) $HUB; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}

up () {
  local n=${1:-1} rate=${2:-100mbit}
  down
  ip netns add $HUB
  ip -n $HUB link set lo up
  ip netns exec $HUB sysctl -qw net.ipv4.ip_forward=1
  for i in $(seq 1 "$n"); do
    local ns=$PREFIX-p$i
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add "h0-p$i" netns $HUB type veth peer name "p$i-h0" netns "$ns"
    ip -n $HUB addr add "10.201.$i.1/24" dev "h0-p$i"
    ip -n "$ns" addr add "10.201.$i.2/24" dev "p$i-h0"
    ip -n $HUB link set "h0-p$i" up
    ip -n "$ns" link set "p$i-h0" up
    ip -n "$ns" route add default via "10.201.$i.1"
    tbf "h0-p$i" "$rate" $HUB
    tbf "p$i-h0" "$rate" "$ns"
  done
}

rate () {
  local rate=$1
  for ns in $(peers); do
    local i=${ns#$PREFIX-p}
    tbf "h0-p$i" "$rate" $HUB
    tbf "p$i-h0" "$rate" "$ns"
  done
}

cmd=${1:-}; shift || true
case $cmd in
  up) up "$@" ;;
  down) down ;;
  rate) rate "$@" ;;
  exec) ns=$PREFIX-$1; shift; exec ip netns exec "$ns" "$@" ;;
  *) echo "usage: $0 up [PEERS] [RATE|none] | rate RATE|none | down | exec NS CMD..." >&2; exit 64 ;;
esac
