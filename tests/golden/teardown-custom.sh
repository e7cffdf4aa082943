#!/usr/bin/env bash
# multiip 0.1.0: undo a multiip setup: release every DHCP lease, stop the clients, remove the
# namespaces ${PREFIX}N with their veth pairs and the bridge brx, and give the uplink back its
# addresses and routes as they were. Works from what it finds on the host, even without the saved state.
# Rendered by: multiip render --teardown --prefix lab --bridge brx --uplink ens3
set -Eeuo pipefail
export LC_ALL=C

PREFIX=lab        # namespaces ${PREFIX}0, ${PREFIX}1, ...
INSIDE=lab-t  # veth end inside namespace i: ${INSIDE}i
PORT=lab-b      # veth end on the bridge: ${PORT}i
BRIDGE=brx
UPLINK=ens3        # empty: the interface of the default route, found where this runs
STATE=/run/multiip/$PREFIX       # pid, lease and saved-uplink files; removed by the teardown
STEP=preflight

say() { printf 'multiip: %s\n' "$*" >&2; }
die() { printf 'multiip: error: %s\n' "$*" >&2; exit 2; }
step() { STEP=$2; printf 'multiip: [%s] %s\n' "$1" "$2" >&2; }
progress() { printf 'multiip: progress %s %s/%s\n' "$1" "$2" "$3" >&2; }
ROLLBACK=""  # a function to call before exiting on an error, while a step can be undone
on_error() {
  trap - ERR
  printf 'multiip: error: step "%s" failed (exit %s at line %s)\n' "$STEP" "$1" "$2" >&2
  if [[ -n $ROLLBACK ]]; then "$ROLLBACK"; fi
  exit "$1"
}
trap 'on_error $? $LINENO' ERR

need_root() { [[ $EUID -eq 0 ]] || die "run this as root: it changes network interfaces"; }
need_tool() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: install the Debian package $2"; }
link_exists() { ip link show dev "$1" >/dev/null 2>&1; }
link_master() { ip -o link show dev "$1" 2>/dev/null | sed -n 's/.* master \([^ ]*\) .*/\1/p'; }

# Run at most JOBS background jobs at a time; a failed job fails the script.
JOBS=$(( $(nproc 2>/dev/null || echo 1) * 4 ))
RUNNING=0
throttle() { RUNNING=$((RUNNING + 1)); if ((RUNNING >= JOBS)); then wait -n; RUNNING=$((RUNNING - 1)); fi; }
drain() { while ((RUNNING > 0)); do wait -n; RUNNING=$((RUNNING - 1)); done; }

# Our namespaces on this host: ${PREFIX} followed by digits only.
our_namespaces() {
  local name rest
  while read -r name rest; do
    if [[ $name == "$PREFIX"* && ${name#"$PREFIX"} =~ ^(0|[1-9][0-9]*)$ ]]; then printf '%s\n' "$name"; fi
  done < <(ip netns list 2>/dev/null)
}

# What an earlier setup of this prefix recorded: its uplink (unless given), bridge and DHCP client.
SAVED_BRIDGE="" SAVED_DHCP=""
load_state() {
  local key value
  [[ -r $STATE/setup.env ]] || return 0
  while IFS='=' read -r key value; do
    case $key in
      UPLINK) [[ -n $UPLINK ]] || UPLINK=$value ;;
      BRIDGE) SAVED_BRIDGE=$value ;;
      DHCP) SAVED_DHCP=$value ;;
    esac
  done <"$STATE/setup.env"
}

# --- DHCP clients. Each namespace's client has its own pid and lease files under $STATE, and its
# --- resolver file is /etc/netns/<ns>/resolv.conf: the host's /etc/resolv.conf is never written.
# udhcpc runs our event script, which writes only the files named in MULTIIP_RESOLV and MULTIIP_LEASE;
# dhclient and dhcpcd run their stock scripts under `ip netns exec`, which bind-mounts
# /etc/netns/<ns>/resolv.conf over /etc/resolv.conf for them.
# A client is keyed by its namespace's name, or by "host" for the bridge's own client (--host-dhcp).
resolv_file() {
  if [[ $1 == host ]]; then printf '%s\n' "$STATE/host.resolv.conf"; else printf '/etc/netns/%s/resolv.conf\n' "$1"; fi
}
net_in() {  # $1 key, then a command: run it in that network namespace only
  local key=$1
  shift
  if [[ $key == host ]]; then "$@"; else nsenter --net="/run/netns/$key" "$@"; fi
}
resolv_in() {  # $1 key, then a command: run it there with /etc/resolv.conf bound to the key's own file
  local key=$1
  shift
  if [[ $key != host ]]; then ip netns exec "$key" "$@"
  else unshare --mount --propagation private sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' "$(resolv_file host)" "$@"
  fi
}
pid_file() {  # $1 client, $2 key, $3 interface
  if [[ $1 == dhcpcd ]]; then printf '/run/dhcpcd/%s-4.pid\n' "$3"; else printf '%s/%s.pid\n' "$STATE" "$2"; fi
}
client_pid() {  # $1 client, $2 key, $3 interface: pid of the running client, or nothing
  local file pid comm
  file=$(pid_file "$1" "$2" "$3")
  [[ -s $file ]] || return 0
  read -r pid <"$file" || return 0
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 0
  if [[ $comm == "$1" ]]; then printf '%s\n' "$pid"; fi
}

dhcp_start() {  # $1 client, $2 key, $3 interface
  local log=$STATE/$2.log resolv
  resolv=$(resolv_file "$2")
  mkdir -p "${resolv%/*}"
  [[ -e $resolv ]] || : >"$resolv"  # exists before the client starts, so nothing writes the host's
  case $1 in
    udhcpc)
      rm -f "$STATE/$2.lease"
      MULTIIP_RESOLV=$resolv MULTIIP_LEASE=$STATE/$2.lease net_in "$2" \
        udhcpc -i "$3" -p "$(pid_file "$1" "$2" "$3")" -s "$STATE/udhcpc.script" -R -b -t 10 -T 1 -A 2 >"$log" 2>&1 ;;
    dhclient)
      rm -f "$STATE/$2.leases"
      resolv_in "$2" dhclient -4 -nw -pf "$(pid_file "$1" "$2" "$3")" -lf "$STATE/$2.leases" "$3" >"$log" 2>&1 ;;
    dhcpcd)
      rm -f "/var/lib/dhcpcd/$3.lease"
      resolv_in "$2" dhcpcd -4 -b -A -C hostname "$3" >"$log" 2>&1 ;;
  esac
}

has_lease() {  # $1 client, $2 key, $3 interface
  case $1 in
    udhcpc) [[ -s $STATE/$2.lease ]] ;;
    dhclient) [[ -s $STATE/$2.leases && $(<"$STATE/$2.leases") == *fixed-address* ]] ;;
    dhcpcd) [[ -s /var/lib/dhcpcd/$3.lease ]] ;;
  esac
}

dhcp_release() {  # $1 client, $2 key, $3 interface: send DHCPRELEASE, stop the client, wait for it
  local pid i log=$STATE/$2.log
  pid=$(client_pid "$1" "$2" "$3")
  case $1 in
    udhcpc) if [[ -n $pid ]]; then kill -TERM "$pid" 2>/dev/null || true; fi ;;  # started with -R: releases on exit
    dhclient) resolv_in "$2" dhclient -4 -r -pf "$(pid_file "$1" "$2" "$3")" -lf "$STATE/$2.leases" "$3" >>"$log" 2>&1 || true ;;
    dhcpcd) resolv_in "$2" dhcpcd -4 -k "$3" >>"$log" 2>&1 || true ;;
  esac
  for ((i = 0; i < 50; i++)); do
    [[ -n $pid && -d /proc/$pid ]] || break
    sleep 0.1
  done
}

# --- The uplink. Its IPv4 addresses and routes are saved before it joins the bridge and put back
# --- exactly so by the teardown (or by the setup itself if moving it fails).
addresses_of() {  # $1 device: its IPv4 addresses as arguments for `ip address add`, one per line
  ip -4 -o address show dev "$1" scope global | awk '{
      out = $4
      for (i = 5; i < NF; i++) {
        if ($i == "brd" || $i == "metric") { out = out " " $i " " $(i + 1); i++ }
        else if ($i == "valid_lft" || $i == "preferred_lft") {
          v = $(i + 1); sub(/sec$/, "", v); if (v != "forever") out = out " " $i " " v; i++ }
        else if ($i == "noprefixroute") out = out " " $i
      }
      print out }'
}
routes_of() {  # $1 device: its IPv4 routes in the main table but the kernel's own, as `ip route` arguments
  ip -4 -o route show dev "$1" | awk '!/ proto (kernel|dhcp) / {
      out = ""
      for (i = 1; i <= NF; i++) if ($i !~ /^(linkdown|dead|offload|trap|rt_offload|rt_trap|notify)$/) out = out (out == "" ? "" : " ") $i
      print out }'
}
save_uplink() {
  mkdir -p "$STATE"
  addresses_of "$UPLINK" >"$STATE/uplink.addr"
  routes_of "$UPLINK" >"$STATE/uplink.route"
  printf '%s\n' "$UPLINK" >"$STATE/uplink"
}

# Addresses and routes to put back: the saved ones, or (state lost) whatever the bridge carries now.
uplink_addresses() { if [[ -e $STATE/uplink ]]; then cat "$STATE/uplink.addr"; else addresses_of "$BRIDGE"; fi; }
uplink_routes() { if [[ -e $STATE/uplink ]]; then cat "$STATE/uplink.route"; else routes_of "$BRIDGE"; fi; }

# Take the uplink out of the bridge and give it back its addresses and routes, in one `ip -batch`
# so the host is without its address for as short a time as possible.
restore_uplink() {
  local batch="link set dev $UPLINK nomaster"$'\n' line
  while read -r line; do [[ -z $line ]] || batch+="address replace $line dev $UPLINK"$'\n'; done < <(uplink_addresses)
  while read -r line; do [[ -z $line ]] || batch+="route replace $line dev $UPLINK"$'\n'; done < <(uplink_routes)
  while read -r line; do
    [[ -z $line ]] || batch+="address del ${line%% *} dev $BRIDGE"$'\n'
  done < <(if link_exists "$BRIDGE"; then uplink_addresses; fi)
  batch+="link set dev $UPLINK up"$'\n'
  ip -force -batch - <<<"$batch" >/dev/null 2>&1 || true  # deleting an address the bridge lacks is fine
  [[ -z $(link_master "$UPLINK") ]] || die "could not take $UPLINK out of $BRIDGE"
  local now
  now=$(ip -4 -o address show dev "$UPLINK")
  while read -r line; do
    [[ -z $line || $now == *" ${line%% *} "* ]] || die "could not give ${line%% *} back to $UPLINK"
  done < <(uplink_addresses)
}

step 1/5 "preflight: root, tools, what is there"
need_root
need_tool ip iproute2
need_tool nsenter util-linux
need_tool awk mawk
load_state
[[ -z $SAVED_BRIDGE ]] || BRIDGE=$SAVED_BRIDGE
mapfile -t NAMESPACES < <(our_namespaces)
if link_exists "$BRIDGE" && [[ -z $UPLINK ]]; then
  # State lost: the uplink is the bridge's port that is not one of our veths.
  while read -r _ name _; do
    name=${name%:}
    name=${name%@*}
    [[ $name =~ ^${PORT//./\\.}[0-9]+$ ]] || { UPLINK=$name; break; }
  done < <(ip -o link show master "$BRIDGE")
fi
say "found ${#NAMESPACES[@]} namespaces, bridge ${BRIDGE}$(link_exists "$BRIDGE" || echo ' (absent)'), uplink ${UPLINK:-(none)}"
mkdir -p "$STATE"

step 2/5 "release DHCP leases and stop the clients"
client_of() {  # $1 namespace, $2 interface: which DHCP client runs there, if any
  local c
  for c in ${SAVED_DHCP:-} udhcpc dhclient dhcpcd; do
    if [[ -n $(client_pid "$c" "$1" "$2") ]]; then printf '%s\n' "$c"; return 0; fi
  done
  local pid
  for pid in $(ip netns pids "$1" 2>/dev/null); do  # no pid file: look at what runs in the namespace
    c=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
    case $c in udhcpc | dhclient | dhcpcd) printf '%s\n' "$c"; return 0 ;; esac
  done
}
release_namespace() {  # $1 namespace
  local ns=$1 dev client
  dev=$INSIDE${ns#"$PREFIX"}
  client=$(client_of "$ns" "$dev")
  [[ -z $client ]] || dhcp_release "$client" "$ns" "$dev"
}
released=0
for ns in "${NAMESPACES[@]}"; do
  release_namespace "$ns" &
  throttle
  released=$((released + 1))
  if ((released % 100 == 0)); then progress released "$released" "${#NAMESPACES[@]}"; fi
done
drain
progress released "${#NAMESPACES[@]}" "${#NAMESPACES[@]}"

step 3/5 "stop anything else running in the namespaces, then remove them"
stop_pids() {  # $1 namespace: TERM, then KILL after 3 s, whatever still runs in it
  local pids i
  pids=$(ip netns pids "$1" 2>/dev/null | tr '\n' ' ')
  [[ -n ${pids// /} ]] || return 0
  say "$1: stopping pids $pids"
  # shellcheck disable=SC2086 # one pid per word
  kill -TERM $pids 2>/dev/null || true
  for ((i = 0; i < 30; i++)); do
    pids=$(ip netns pids "$1" 2>/dev/null | tr '\n' ' ')
    [[ -n ${pids// /} ]] || return 0
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
}
for ns in "${NAMESPACES[@]}"; do
  stop_pids "$ns" &
  throttle
done
drain
batch=""
for ns in "${NAMESPACES[@]}"; do batch+="netns del $ns"$'\n'; done
[[ -z $batch ]] || ip -force -batch - <<<"$batch"
progress removed "${#NAMESPACES[@]}" "${#NAMESPACES[@]}"

step 4/5 "give ${UPLINK:-the uplink} back its addresses and routes, remove $BRIDGE"
if link_exists "$BRIDGE"; then
  if [[ -s $STATE/host.client ]]; then  # --host-dhcp: the bridge's own client
    dhcp_release "$(<"$STATE/host.client")" host "$BRIDGE"
    rm -f "/var/lib/dhcpcd/$BRIDGE.lease"
  fi
  others=""
  while read -r _ name _; do
    name=${name%:}
    name=${name%@*}
    if [[ $name != "$UPLINK" && ! $name =~ ^${PORT//./\\.}[0-9]+$ ]]; then others+=" $name"; fi
  done < <(ip -o link show master "$BRIDGE")
  if [[ -n $others ]]; then
    say "$BRIDGE still has other ports:$others; leaving it and ${UPLINK:-the uplink} in place"
  else
    [[ -z $UPLINK ]] || restore_uplink
    ip link del dev "$BRIDGE"
  fi
elif [[ -n $UPLINK ]] && link_exists "$UPLINK" && [[ -e $STATE/uplink ]]; then
  restore_uplink  # bridge already gone: make sure the uplink has its addresses
fi

step 5/5 "remove /etc/netns entries, lease and state files"
for ns in "${NAMESPACES[@]}"; do
  rm -f "/etc/netns/$ns/resolv.conf"
  rmdir "/etc/netns/$ns" 2>/dev/null || true
  rm -f "/var/lib/dhcpcd/$INSIDE${ns#"$PREFIX"}.lease"
done
rm -rf "$STATE"
say "removed ${#NAMESPACES[@]} namespaces and $BRIDGE; ${UPLINK:-the uplink} is back as it was"
