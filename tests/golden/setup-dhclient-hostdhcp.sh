#!/usr/bin/env bash
# multiip 0.1.0: give this host 4 source IPv4 addresses, one per network namespace,
# behind the Linux bridge br0 that takes over the uplink (single-host-multiple-ips).
# Rendered by: multiip render --count 4 --dhcp dhclient --host-dhcp --lease-timeout 60
# Undo with:   multiip render --teardown > teardown.sh && sudo bash teardown.sh
# Safe to run again on a host that already has this setup: every step skips what exists.
set -Eeuo pipefail
export LC_ALL=C

PREFIX=ns        # namespaces ${PREFIX}0, ${PREFIX}1, ...
INSIDE=tap  # veth end inside namespace i: ${INSIDE}i
PORT=br-tap      # veth end on the bridge: ${PORT}i
BRIDGE=br0
UPLINK=''        # empty: the interface of the default route, found where this runs
STATE=/run/multiip/$PREFIX       # pid, lease and saved-uplink files; removed by the teardown
STEP=preflight
SYSCTL=${MULTIIP_SYSCTL_DIR:-/proc/sys}  # host-wide limits (tests point this elsewhere)

say() { printf 'multiip: %s\n' "$*" >&2; }
die() { printf 'multiip: error: %s\n' "$*" >&2; exit 2; }
step() { STEP=$2; printf 'multiip: [%s] %s\n' "$1" "$2" >&2; }
progress() { printf 'multiip: progress %s %s/%s\n' "$1" "$2" "$3" >&2; }
ROLLBACK=""  # a function to call before exiting on an error, while a step can be undone
BACKGROUND=()  # pids of background jobs (throttle below), waited for on an error or an interruption
on_error() {
  trap - ERR INT TERM HUP
  if ((${#BACKGROUND[@]} > 0)); then wait "${BACKGROUND[@]}" 2>/dev/null || true; fi  # none outlives the script
  if [[ $1 == 130 ]]; then printf 'multiip: error: interrupted during step "%s"\n' "$STEP" >&2
  else printf 'multiip: error: step "%s" failed (exit %s at line %s)\n' "$STEP" "$1" "$2" >&2; fi
  if [[ -n $ROLLBACK ]]; then "$ROLLBACK"; fi
  exit "$1"
}
trap 'on_error $? $LINENO' ERR
trap 'on_error 130 $LINENO' INT TERM HUP  # Ctrl-C, kill, a dropped SSH session: same rollback

need_root() { [[ $EUID -eq 0 ]] || die "run this as root: it changes network interfaces"; }
need_tool() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: install the Debian package $2"; }
link_exists() { ip link show dev "$1" >/dev/null 2>&1; }
link_master() { ip -o link show dev "$1" 2>/dev/null | sed -n 's/.* master \([^ ]*\) .*/\1/p'; }

# throttle N after starting a background job: at most N run at a time; a failed job fails the script.
# On an error or an interruption the jobs in flight are waited for (a chunk of namespaces being made
# finishes first).
CORES=$(nproc 2>/dev/null || echo 1)
RUNNING=0
throttle() {
  BACKGROUND+=("$!")
  RUNNING=$((RUNNING + 1))
  if ((RUNNING >= $1)); then wait -n; RUNNING=$((RUNNING - 1)); fi
}
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
# These helpers set variables (RESOLV, PIDFILE, PID) rather than print: no subshell per namespace.
resolv_file() {  # $1 key: sets RESOLV
  if [[ $1 == host ]]; then RESOLV=$STATE/host.resolv.conf; else RESOLV=/etc/netns/$1/resolv.conf; fi
}
resolv_in() {  # $1 key, then a command: run it there with /etc/resolv.conf bound to the key's own file
  local key=$1
  shift
  if [[ $key != host ]]; then ip netns exec "$key" "$@"
  else unshare --mount --propagation private sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' "$STATE/host.resolv.conf" "$@"
  fi
}
pid_file() {  # $1 client, $2 key, $3 interface: sets PIDFILE
  if [[ $1 == dhcpcd ]]; then PIDFILE=/run/dhcpcd/$3-4.pid; else PIDFILE=$STATE/$2.pid; fi
}
client_pid() {  # $1 client, $2 key, $3 interface: sets PID to the running client's pid, or to ""
  local comm=""
  PID=""
  pid_file "$@"
  if [[ -s $PIDFILE ]]; then read -r PID <"$PIDFILE" || true; fi
  if [[ $PID =~ ^[0-9]+$ ]]; then read -r comm 2>/dev/null <"/proc/$PID/comm" || true; fi
  [[ -n $comm && $comm == "$1" ]] || PID=""
}

dhcp_start() {  # $1 client, $2 key, $3 interface
  local log=$STATE/$2.log
  resolv_file "$2"
  [[ -e $RESOLV ]] || { mkdir -p "${RESOLV%/*}" && : >"$RESOLV"; }  # exists before the client starts
  pid_file "$@"
  case $1 in
    udhcpc)  # in the foreground of its own session: never blocks this script, keeps trying until it has a lease
      rm -f "$STATE/$2.lease"
      local enter=()
      [[ $2 == host ]] || enter=(nsenter --net="/run/netns/$2")
      MULTIIP_RESOLV=$RESOLV MULTIIP_LEASE=$STATE/$2.lease setsid "${enter[@]}" \
        udhcpc -f -i "$3" -p "$PIDFILE" -s "$STATE/udhcpc.script" -R -t 3 -T 1 -A 3 </dev/null >"$log" 2>&1 &
      ;;
    dhclient)
      rm -f "$STATE/$2.leases"
      resolv_in "$2" dhclient -4 -nw -pf "$PIDFILE" -lf "$STATE/$2.leases" "$3" >"$log" 2>&1 ;;
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

dhcp_release() {  # $1 client, $2 key, $3 interface: make the client send DHCPRELEASE and exit; sets PID
  local log=$STATE/$2.log
  client_pid "$@"
  case $1 in
    udhcpc) if [[ -n $PID ]]; then kill -TERM "$PID" 2>/dev/null || true; fi ;;  # started with -R: releases on exit
    dhclient) resolv_in "$2" dhclient -4 -r -pf "$PIDFILE" -lf "$STATE/$2.leases" "$3" >>"$log" 2>&1 || true ;;
    dhcpcd) resolv_in "$2" dhcpcd -4 -k "$3" >>"$log" 2>&1 || true ;;
  esac
}

alive() {  # $1 pid: running (a zombie waiting for its parent to reap it counts as gone)
  local stat
  read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}
wait_gone() {  # pids...: wait up to 5 s for them to exit
  local i pid left=("$@")
  for ((i = 0; i < 100 && ${#left[@]} > 0; i++)); do
    local still=()
    for pid in "${left[@]}"; do if alive "$pid"; then still+=("$pid"); fi; done
    left=("${still[@]}")
    ((${#left[@]} == 0)) || sleep 0.05
  done
}

# NS_PIDS[namespace]="pid pid ...": what runs in each named namespace, from one pass over /proc
# (one `ip netns pids` per namespace would scan /proc once per namespace).
declare -A NS_PIDS=()
map_namespace_pids() {
  local -A by_inode=()
  local path inode link pid
  NS_PIDS=()
  while read -r path inode; do [[ -z $inode ]] || by_inode[$inode]=${path#/run/netns/}; done \
    < <(stat -L -c '%n %i' /run/netns/* 2>/dev/null || true)
  while read -r path link; do
    inode=${link#net:[}
    inode=${inode%]}
    [[ -n $inode && -n ${by_inode[$inode]:-} ]] || continue
    pid=${path#/proc/}
    pid=${pid%%/*}
    NS_PIDS[${by_inode[$inode]}]+="$pid "
  done < <(find /proc -mindepth 3 -maxdepth 3 -path '/proc/[0-9]*/ns/net' -printf '%p %l\n' 2>/dev/null || true)
}

# --- Host-wide limits that about 1000 namespaces outgrow: the ARP table (gc_thresh3, 1024 by default)
# --- and the per-CPU backlog that a broadcast to every bridge port fills (netdev_max_backlog, 1000).
restore_host_limits() {  # what --tune-host raised, back as it was
  local key value
  [[ -s $STATE/host-limits ]] || return 0
  while read -r key value; do
    [[ -z $key ]] || printf '%s\n' "$value" >"$SYSCTL/$key"
  done <"$STATE/host-limits"
  say "host-wide limits restored: $(tr '\n' ' ' <"$STATE/host-limits")"
  rm -f "$STATE/host-limits"
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

COUNT=4
DHCP=dhclient                 # auto|udhcpc|dhclient|dhcpcd|none (auto: picked where this runs)
PORT_RANGE=(1024 65535)    # ip_local_port_range inside every namespace
BRIDGE_TOOL=ip         # ip: iproute2 only; brctl: the seed's brctl commands
HOST_MODE=dhcp          # move: the uplink's addresses and routes move to the bridge; dhcp: the bridge asks DHCP
LEASE_TIMEOUT=60           # seconds to wait for every namespace's lease
TUNE_HOST=0               # 1: raise host-wide ARP/backlog limits for this setup (down restores)

step 1/6 "preflight: root, tools, uplink"
need_root
need_tool ip iproute2
need_tool nsenter util-linux
need_tool awk mawk
[[ $BRIDGE_TOOL != brctl ]] || need_tool brctl bridge-utils
load_state
[[ -z $SAVED_BRIDGE || $SAVED_BRIDGE == "$BRIDGE" ]] || die "prefix $PREFIX is already set up on bridge $SAVED_BRIDGE"
if [[ -n $SAVED_DHCP && $DHCP != "$SAVED_DHCP" ]]; then  # running again: keep the client it chose
  [[ $DHCP == auto ]] || die "prefix $PREFIX is set up with --dhcp $SAVED_DHCP: take it down first to change that"
  DHCP=$SAVED_DHCP
fi
if [[ $DHCP == auto ]]; then
  for candidate in udhcpc dhclient dhcpcd; do  # udhcpc first: 2.0 MiB RSS per namespace here, dhclient 3.5, dhcpcd 6.9
    if command -v "$candidate" >/dev/null 2>&1; then DHCP=$candidate; break; fi
  done
  [[ $DHCP != auto ]] || die "no DHCP client found: install udhcpc, isc-dhcp-client or dhcpcd-base, or use --dhcp none"
fi
case $DHCP in
  udhcpc) need_tool udhcpc udhcpc ;;
  dhclient) need_tool dhclient isc-dhcp-client ;;
  dhcpcd) need_tool dhcpcd dhcpcd-base ;;
esac
[[ $HOST_MODE != dhcp || $DHCP == udhcpc ]] || need_tool unshare util-linux
# Inside the namespaces, one perl process enters each in turn (setns) where perl is here, on an
# architecture whose setns system call number this knows; otherwise one nsenter -> sh -> ip per namespace.
# MULTIIP_INSIDE=ip chooses the latter.
SETNS=""
if [[ ${MULTIIP_INSIDE:-} != ip ]] && command -v perl >/dev/null 2>&1; then
  case $(perl -MConfig -e 'print $Config{archname}') in
    x86_64-linux | x86_64-linux-gnu-* | x86_64-linux-thread*) SETNS=308 ;;
    aarch64-linux* | riscv64-linux* | loongarch64-linux*) SETNS=268 ;;
    i[3-6]86-linux*) SETNS=346 ;;
    arm-linux* | armv[5-8]*-linux*) SETNS=375 ;;
    powerpc*-linux* | ppc*-linux*) SETNS=350 ;;
    s390x-linux*) SETNS=339 ;;
  esac
  # and that it works here: entering the namespace this already runs in changes nothing
  [[ -z $SETNS ]] || perl -e 'open(my $f, "<", "/proc/self/ns/net") or exit 1;
    exit(syscall($ARGV[0] + 0, fileno($f), 0x40000000) == 0 ? 0 : 1)' "$SETNS" 2>/dev/null || SETNS=""
fi
if [[ -n $SETNS ]]; then ENTER="one perl process enters each"; else ENTER="one nsenter per namespace"; fi
if [[ -z $UPLINK ]]; then
  UPLINK=$(ip -4 route show default | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')
  [[ -n $UPLINK ]] || die "no default route to find the uplink by: name it with --uplink"
fi
SHARED_STATE=""  # another setup's state directory, when this one joins its bridge
if [[ $UPLINK == "$BRIDGE" ]]; then  # another setup already moved the uplink into this bridge: its state says which
  for env in /run/multiip/*/setup.env; do
    [[ -r $env ]] && grep -qx "BRIDGE=$BRIDGE" "$env" || continue
    UPLINK=$(sed -n 's/^UPLINK=//p' "$env")
    SHARED_STATE=${env%/setup.env}
    break
  done
  [[ $UPLINK != "$BRIDGE" ]] || die "the default route already leaves by $BRIDGE: name the uplink with --uplink"
fi
link_exists "$UPLINK" || die "uplink $UPLINK does not exist"
ip -o link show dev "$UPLINK" | grep -q ' link/ether ' || die "uplink $UPLINK is not an Ethernet device"
UPLINK_MASTER=$(link_master "$UPLINK")
[[ -z $UPLINK_MASTER || $UPLINK_MASTER == "$BRIDGE" ]] || die "uplink $UPLINK is already a port of $UPLINK_MASTER"
if link_exists "$BRIDGE" && ! ip -d -o link show dev "$BRIDGE" | grep -q ' bridge '; then
  die "$BRIDGE exists and is not a bridge"
fi

# Each namespace needs ARP entries (its gateway, the server if it is on the LAN) and one broadcast
# reaches every bridge port at once: the host-wide limits, and what this count needs of them.
HOST_LIMITS=(net/ipv4/neigh/default/gc_thresh1 net/ipv4/neigh/default/gc_thresh2
  net/ipv4/neigh/default/gc_thresh3 net/core/netdev_max_backlog)
NEED=(
  [0]=$((COUNT + 128)) [1]=$((2 * COUNT + 256)) [2]=$((2 * COUNT + 256)) [3]=$((2 * COUNT + 128))
)
if [[ -r $SYSCTL/${HOST_LIMITS[2]} && -r $SYSCTL/${HOST_LIMITS[3]} ]]; then
  short=""
  for k in 2 3; do
    read -r have_value <"$SYSCTL/${HOST_LIMITS[k]}"
    if ((have_value < NEED[k])); then short+=" ${HOST_LIMITS[k]//\//.}=$have_value (needs ${NEED[k]})"; fi
  done
  if [[ -n $short && $TUNE_HOST != 1 ]]; then
    die "$COUNT namespaces outgrow host-wide limits:$short; ARP entries and DHCP broadcasts would be dropped. Pass --tune-host to raise them for this setup (down restores them), or raise them yourself"
  fi
elif [[ $TUNE_HOST == 1 ]]; then
  die "--tune-host changes host-wide limits, which this network namespace cannot see: run it in the host's own"
elif ((COUNT >= 500)); then
  say "cannot see the host-wide gc_thresh3 and netdev_max_backlog from here: the host's must fit $COUNT namespaces"
fi

step 2/6 "save $UPLINK's addresses and routes to $STATE"
mkdir -p "$STATE"
if [[ $UPLINK_MASTER != "$BRIDGE" ]]; then
  save_uplink
elif [[ ! -e $STATE/uplink && -n $SHARED_STATE ]]; then
  cp "$SHARED_STATE/uplink" "$SHARED_STATE/uplink.addr" "$SHARED_STATE/uplink.route" "$STATE/"  # whoever goes last restores it
fi
printf 'UPLINK=%s\nBRIDGE=%s\nDHCP=%s\nHOST_MODE=%s\nCOUNT=%s\n' "$UPLINK" "$BRIDGE" "$DHCP" "$HOST_MODE" "$COUNT" >"$STATE/setup.env"
if [[ $DHCP == udhcpc ]]; then
  cat >"$STATE/udhcpc.script" <<'UDHCPC'
#!/bin/sh
# udhcpc event script written by multiip. It configures $interface in its namespace and writes the
# DNS servers to $MULTIIP_RESOLV (/etc/netns/<ns>/resolv.conf) and the lease to $MULTIIP_LEASE,
# never to /etc/resolv.conf.
# Being torn down (the teardown leaves this mark): the namespace goes next, nothing to undo.
[ ! -e "${MULTIIP_LEASE%/*}/stopping" ] || exit 0
case "$1" in
  deconfig)
    ip -4 address flush dev "$interface"
    ip link set dev "$interface" up
    rm -f "$MULTIIP_LEASE"
    ;;
  bound|renew)
    old=$(ip -4 -o address show dev "$interface" | awk '{print $4; exit}')
    [ "$old" = "$ip/$mask" ] || ip -4 address flush dev "$interface"
    ip address replace "$ip/$mask" broadcast "${broadcast:-+}" dev "$interface"
    if [ -n "$router" ]; then ip route replace default via "${router%% *}" dev "$interface"; fi
    resolv=""
    [ -z "$domain" ] || resolv="search $domain
"
    for server in $dns; do resolv="${resolv}nameserver $server
"; done
    printf '%s' "$resolv" >"$MULTIIP_RESOLV"  # in place: keeps the file any bind mount holds
    now=$(date +%s)
    printf 'ipv4=%s/%s\nrouter=%s\nserver=%s\nlease=%s\nobtained=%s\nexpires=%s\n' \
      "$ip" "$mask" "${router%% *}" "$serverid" "$lease" "$now" "$((now + ${lease:-0}))" >"$MULTIIP_LEASE.new"
    mv -f "$MULTIIP_LEASE.new" "$MULTIIP_LEASE"
    ;;
  leasefail|nak) echo "udhcpc: $1 on $interface: ${message:-no lease}" >&2 ;;
esac
exit 0
UDHCPC
  chmod 0755 "$STATE/udhcpc.script"
fi

if [[ $TUNE_HOST == 1 ]]; then
  [[ -s $STATE/host-limits ]] || for key in "${HOST_LIMITS[@]}"; do
    read -r value <"$SYSCTL/$key"
    printf '%s %s\n' "$key" "$value"
  done >"$STATE/host-limits"
  for k in "${!HOST_LIMITS[@]}"; do
    read -r value <"$SYSCTL/${HOST_LIMITS[k]}"
    if ((value < NEED[k])); then
      printf '%s\n' "${NEED[k]}" >"$SYSCTL/${HOST_LIMITS[k]}"
      say "raised ${HOST_LIMITS[k]//\//.} from $value to ${NEED[k]} (down restores it)"
    fi
  done
fi

step 3/6 "bridge $BRIDGE (STP off)"
if ! link_exists "$BRIDGE"; then
  if [[ $BRIDGE_TOOL == brctl ]]; then
    brctl addbr "$BRIDGE"
    brctl stp "$BRIDGE" off
    brctl setfd "$BRIDGE" 0
  else
    ip link add name "$BRIDGE" type bridge stp_state 0 forward_delay 0
  fi
  # The bridge answers with the uplink's MAC, so the LAN and its DHCP server keep seeing the same host.
  ip link set dev "$BRIDGE" address "$(ip -o link show dev "$UPLINK" | sed -n 's/.* link\/ether \([^ ]*\) .*/\1/p')"
fi
ip link set dev "$BRIDGE" up

step 4/6 "$COUNT namespaces ${PREFIX}0..${PREFIX}$((COUNT - 1)), veths ${INSIDE}N/${PORT}N on $BRIDGE, ports ${PORT_RANGE[0]}-${PORT_RANGE[1]} ($ENTER)"
declare -A have=() links=() masters=()
while read -r name _; do have[$name]=1; done < <(ip netns list)
while read -r _ name rest; do
  name=${name%:}
  name=${name%@*}
  links[$name]=1
  if [[ $rest =~ \ master\ ([^ ]+) ]]; then masters[$name]=${BASH_REMATCH[1]}; fi
done < <(ip -o link show)
if [[ -n $SETNS ]]; then
  cat >"$STATE/inside.pl" <<'PERL'
#!/usr/bin/perl
# multiip's namespace helper, written by the setup script. For every line "NS DEVICE [ADDRESS PREFIXLEN
# [GATEWAY]]" on stdin it enters the network namespace /run/netns/NS (setns) and does there what these
# commands do, which is what the script runs instead, one nsenter per namespace, where perl is missing:
#   printf '%s\t%s\n' LOW HIGH >/proc/sys/net/ipv4/ip_local_port_range
#   ip link set dev lo up
#   ip link set dev DEVICE addrgenmode none
#   ip link set dev DEVICE up
#   ip address replace ADDRESS/PREFIXLEN dev DEVICE
#   ip route replace default via GATEWAY dev DEVICE
# One process for many namespaces, rather than nsenter, sh and ip for each: those processes were most
# of the time a thousand namespaces took. Arguments: the setns system call's number here, the port range.
use strict;
use warnings;
use Errno ();
use Socket qw(AF_INET SOCK_DGRAM SOCK_RAW inet_aton);

my ($SETNS, $LOW, $HIGH) = @ARGV;
my ($CLONE_NEWNET, $AF_NETLINK, $AF_INET6, $SIOCGIFINDEX, $IFF_UP) = (0x40000000, 16, 10, 0x8933, 1);
my ($RTM_NEWLINK, $RTM_NEWADDR, $RTM_NEWROUTE, $NLMSG_ERROR) = (16, 20, 24, 2);
my ($NLM_F_REQUEST, $NLM_F_ACK, $NLM_F_REPLACE, $NLM_F_CREATE) = (1, 4, 0x100, 0x400);
my ($IFA_ADDRESS, $IFA_LOCAL, $RTA_OIF, $RTA_GATEWAY) = (1, 2, 4, 5);
my ($IFLA_AF_SPEC, $IFLA_INET6_ADDR_GEN_MODE, $IN6_ADDR_GEN_MODE_NONE) = (26, 8, 1);
my ($RT_TABLE_MAIN, $RTPROT_BOOT, $RT_SCOPE_UNIVERSE, $RTN_UNICAST) = (254, 3, 0, 1);
my ($ns, $seq) = ('', 0);

sub fail { print STDERR "multiip: error: in namespace $ns: @_\n"; exit 1; }

sub attribute {    # a netlink attribute, padded to 4 bytes
    my ($type, $data) = @_;
    my $length = 4 + length $data;
    return pack('SS', $length, $type) . $data . ("\0" x (-$length % 4));
}

sub request {    # one rtnetlink request on $socket and its acknowledgement: 0, or the error number
    my ($socket, $type, $flags, $body) = @_;
    my $header = pack('LSSLL', 16 + length $body, $type, $NLM_F_REQUEST | $NLM_F_ACK | $flags, ++$seq, 0);
    send($socket, $header . $body, 0) or return $! + 0;
    defined(recv($socket, my $reply, 65536, 0)) or return $! + 0;
    my (undef, $reply_type, undef, undef, undef, $error) = unpack('LSSLLl', $reply);
    return $reply_type == $NLMSG_ERROR ? -$error : 0;
}

sub link_message {    # ifinfomsg for RTM_NEWLINK: the link $index, with the flags in $up (IFF_UP or 0) changed
    my ($index, $up) = @_;
    return pack('CxSlLL', 0, 0, $index, $up, $up);
}

sub done {    # $what (the ip command it stands for), the error number
    my ($what, $error) = @_;
    return if !$error;
    $! = $error;
    fail("$what: $!");
}

while (my $line = <STDIN>) {
    my ($device, $address, $prefixlen, $gateway);
    ($ns, $device, $address, $prefixlen, $gateway) = split ' ', $line;
    next unless defined $device;
    open(my $handle, '<', "/run/netns/$ns") or fail("$!");
    syscall($SETNS + 0, fileno($handle), $CLONE_NEWNET) == 0 or fail("setns: $!");
    close $handle;

    open(my $range, '>', '/proc/sys/net/ipv4/ip_local_port_range') or fail("ip_local_port_range: $!");
    print {$range} "$LOW\t$HIGH\n";
    close $range or fail("ip_local_port_range: $!");

    # both sockets are made after setns: they belong to this namespace
    socket(my $inet, AF_INET, SOCK_DGRAM, 0) or fail("socket: $!");
    socket(my $rtnl, $AF_NETLINK, SOCK_RAW, 0) or fail("netlink socket: $!");
    my $request = pack('Z16 x24', $device);
    ioctl($inet, $SIOCGIFINDEX, $request) or fail("$device: $!");
    my $index = unpack('x16 l', $request);

    done('ip link set dev lo up', request($rtnl, $RTM_NEWLINK, 0, link_message(1, $IFF_UP)));
    # addrgenmode none before up, in its own request: in one request the kernel brings the link up first,
    # and it can get an IPv6 link-local address (then DAD and MLD packets flood the bridge)
    my $no_link_local = attribute($IFLA_AF_SPEC,
        attribute($AF_INET6, attribute($IFLA_INET6_ADDR_GEN_MODE, pack('C', $IN6_ADDR_GEN_MODE_NONE))));
    my $error = request($rtnl, $RTM_NEWLINK, 0, link_message($index, 0) . $no_link_local);
    done("ip link set dev $device addrgenmode none", $error == Errno::EAFNOSUPPORT() ? 0 : $error);  # IPv6 off
    done("ip link set dev $device up", request($rtnl, $RTM_NEWLINK, 0, link_message($index, $IFF_UP)));
    if (defined $prefixlen) {
        my $packed = inet_aton($address) or fail("bad address $address");
        my $message = pack('CCCCL', AF_INET, $prefixlen, 0, 0, $index);
        $message .= attribute($IFA_LOCAL, $packed) . attribute($IFA_ADDRESS, $packed);
        done("ip address replace $address/$prefixlen dev $device",
            request($rtnl, $RTM_NEWADDR, $NLM_F_CREATE | $NLM_F_REPLACE, $message));
    }
    if (defined $gateway) {
        my $packed = inet_aton($gateway) or fail("bad gateway $gateway");
        my $message = pack('C8L', AF_INET, 0, 0, 0, $RT_TABLE_MAIN, $RTPROT_BOOT, $RT_SCOPE_UNIVERSE, $RTN_UNICAST, 0);
        $message .= attribute($RTA_GATEWAY, $packed) . attribute($RTA_OIF, pack('L', $index));
        done("ip route replace default via $gateway dev $device",
            request($rtnl, $RTM_NEWROUTE, $NLM_F_CREATE | $NLM_F_REPLACE, $message));
    }
    close $rtnl;
    close $inet;
}
PERL
fi
make_chunk() {  # $1 first, $2 last + 1: create what is missing in one `ip -batch`, then set up the insides
  local i batch="" lines="" ns device address prefixlen gateway
  for ((i = $1; i < $2; i++)); do
    [[ -n ${have[$PREFIX$i]:-} ]] || batch+="netns add $PREFIX$i"$'\n'
    [[ -n ${links[$PORT$i]:-} ]] || batch+="link add $INSIDE$i netns $PREFIX$i type veth peer name $PORT$i"$'\n'
    if [[ $BRIDGE_TOOL == ip && ${masters[$PORT$i]:-} != "$BRIDGE" ]]; then
      batch+="link set dev $PORT$i master $BRIDGE"$'\n'
    fi
    batch+="link set dev $PORT$i addrgenmode none"$'\n'"link set dev $PORT$i up"$'\n'
    lines+="$PREFIX$i $INSIDE$i"$'\n'
  done
  ip -batch - <<<"$batch"
  if [[ $BRIDGE_TOOL == brctl ]]; then
    for ((i = $1; i < $2; i++)); do
      [[ ${masters[$PORT$i]:-} == "$BRIDGE" ]] || brctl addif "$BRIDGE" "$PORT$i"
    done
  fi
  # Inside each namespace (NS DEVICE per line): the port range, lo and the veth
  # end up without an IPv6 link-local address.
  if [[ -n $SETNS ]]; then
    perl "$STATE/inside.pl" "$SETNS" "${PORT_RANGE[@]}" <<<"$lines"
  else
    while read -r ns device address prefixlen gateway; do
      [[ -n $ns ]] || continue
      batch="link set dev lo up"$'\n'"link set dev $device addrgenmode none"$'\n'"link set dev $device up"$'\n'
      [[ -z $address ]] || batch+="address replace $address/$prefixlen dev $device"$'\n'
      [[ -z $gateway ]] || batch+="route replace default via $gateway dev $device"$'\n'
      nsenter --net="/run/netns/$ns" sh -c \
        'printf "%s\t%s\n" "$1" "$2" >/proc/sys/net/ipv4/ip_local_port_range && exec ip -batch -' \
        sh "${PORT_RANGE[0]}" "${PORT_RANGE[1]}" <<<"$batch"
    done <<<"$lines"
  fi
}
# In chunks of at most 100, one chunk per core at a time, as many chunks as keep every core busy to
# the end: most of this is the kernel's work, which runs in parallel. Each chunk's insides are set up
# right after it is made, while few namespaces exist yet: writing a namespace's sysctl costs a path
# lookup that grows with the number of namespaces.
# The veth ends get no IPv6 link-local address (addrgenmode none, set before they go up): otherwise
# every end coming up floods IPv6 DAD, router and MLD packets over all the bridge's ports, and 1000
# namespaces slow down quadratically.
CHUNKS=$(( (COUNT + 99) / 100 ))
CHUNKS=$(( (CHUNKS + CORES - 1) / CORES * CORES ))
CHUNK=$(( (COUNT + CHUNKS - 1) / CHUNKS ))
started=0
for ((first = 0; first < COUNT; first += CHUNK)); do
  make_chunk "$first" $((first + CHUNK < COUNT ? first + CHUNK : COUNT)) &
  throttle "$CORES"
  started=$((started + 1))
  made=$(( (started - RUNNING) * CHUNK ))
  ((made == 0)) || progress namespaces "$((made < COUNT ? made : COUNT))" "$COUNT"
done
drain
progress namespaces "$COUNT" "$COUNT"

step 5/6 "move $UPLINK into $BRIDGE (the bridge asks DHCP for its address)"
if [[ $(link_master "$UPLINK") != "$BRIDGE" ]]; then
  put_back() { say "putting $UPLINK back as it was"; restore_uplink; }
  ROLLBACK=put_back  # if anything here fails, the uplink goes back as it was before the script gives up
  [[ $BRIDGE_TOOL != brctl ]] || brctl addif "$BRIDGE" "$UPLINK"
  batch="link set dev $UPLINK master $BRIDGE"$'\n'
  batch+="address flush dev $UPLINK"$'\n'
  batch+="link set dev $UPLINK up"$'\n'
  ip -batch - <<<"$batch"
  printf '%s\n' "$DHCP" >"$STATE/host.client"
  dhcp_start "$DHCP" host "$BRIDGE"
  for ((w = 0; w < LEASE_TIMEOUT * 10; w++)); do
    if has_lease "$DHCP" host "$BRIDGE"; then break; fi
    sleep 0.1
  done
  has_lease "$DHCP" host "$BRIDGE" || false  # no address for the host: put the uplink back
  while read -r line; do [[ -z $line ]] || ip route replace $line dev "$BRIDGE"; done <"$STATE/uplink.route"
  ROLLBACK=""
fi

step 6/6 "DHCP: one $DHCP per namespace, in parallel; up to ${LEASE_TIMEOUT}s for every lease"
started=0
for ((i = 0; i < COUNT; i++)); do
  client_pid "$DHCP" "$PREFIX$i" "$INSIDE$i"
  [[ -z $PID ]] || continue  # running already
  if [[ $DHCP == udhcpc ]]; then
    dhcp_start "$DHCP" "$PREFIX$i" "$INSIDE$i"  # starts it in the background itself
  else
    dhcp_start "$DHCP" "$PREFIX$i" "$INSIDE$i" &
    throttle $((4 * CORES))  # DHCP clients mostly wait: four per core
  fi
  started=$((started + 1))
done
drain
say "started $started DHCP clients ($((COUNT - started)) already running)"
deadline=$((SECONDS + LEASE_TIMEOUT))
pending=()
for ((i = 0; i < COUNT; i++)); do pending+=("$i"); done
while :; do
  waiting=()
  for i in "${pending[@]}"; do has_lease "$DHCP" "$PREFIX$i" "$INSIDE$i" || waiting+=("$i"); done
  pending=("${waiting[@]}")
  progress leases "$((COUNT - ${#pending[@]}))" "$COUNT"
  ((${#pending[@]} > 0 && SECONDS < deadline)) || break
  sleep 0.2
done
if ((${#pending[@]} > 0)); then
  missing=""
  for i in "${pending[@]}"; do missing+=" $PREFIX$i"; done
  STEP="DHCP leases"
  die "no DHCP lease within ${LEASE_TIMEOUT}s for ${#pending[@]} of $COUNT namespaces:$missing (their clients keep trying; the teardown removes everything)"
fi
say "ready: $COUNT namespaces ${PREFIX}0..${PREFIX}$((COUNT - 1)) on $BRIDGE via $UPLINK; see: multiip status"
