#!/usr/bin/env bash
# multiip 0.1.0: give this host 20 source IP addresses, one per network namespace,
# behind the Linux bridge br0 that takes over the uplink (single-host-multiple-ips).
# Rendered by: multiip render 
# Undo with:   multiip render --teardown > teardown.sh && sudo bash teardown.sh
# Safe to run again on a host that already has this setup: every step skips what exists.
set -Eeuo pipefail
export LC_ALL=C

say() { printf 'multiip: %s\n' "$*" >&2 || true; }  # || true: a closed stderr must not stop a rollback
UNDO=""  # once a setup has changed the host: the command that undoes it, named by every error from then on
die() { printf 'multiip: error: %s%s\n' "$*" "${UNDO:+; $UNDO}" >&2 || true; exit 2; }
# shellcheck disable=SC2034 # STEP: named by on_error in the scripts that include _errors.sh.j2
step() { STEP=$2; printf 'multiip: [%s] %s\n' "$1" "$2" >&2 || true; }
progress() { printf 'multiip: progress %s %s/%s\n' "$1" "$2" "$3" >&2 || true; }
trap "" PIPE  # a closed stdout or stderr (a dropped session) fails a write instead of killing the script

STEP=preflight  # set by step(), named by on_error
ROLLBACK=""  # a function to call before exiting on an error, while a step can be undone
BACKGROUND=()  # pids of background jobs (throttle below), waited for on an error or an interruption
on_error() {
  trap - ERR
  trap '' INT TERM HUP  # the rollback below runs to its end, whatever else arrives
  if ((${#BACKGROUND[@]} > 0)); then wait "${BACKGROUND[@]}" 2>/dev/null || true; fi  # none outlives the script
  if [[ $1 == 130 ]]; then printf 'multiip: error: interrupted during step "%s"%s\n' "$STEP" "${UNDO:+; $UNDO}" >&2 || true
  else printf 'multiip: error: step "%s" failed (exit %s at line %s)%s\n' "$STEP" "$1" "$2" "${UNDO:+; $UNDO}" >&2 || true; fi
  exit "$1"
}
rollback() {  # on every exit while ROLLBACK names a function: an error, a signal, or die
  local undo=$ROLLBACK
  ROLLBACK=""
  trap '' INT TERM HUP
  if [[ -n $undo ]]; then "$undo"; fi
}
trap rollback EXIT
trap 'on_error $? $LINENO' ERR
trap 'on_error 130 $LINENO' INT TERM HUP  # Ctrl-C, kill, a dropped SSH session: same rollback

# throttle N after starting a background job: at most N run at a time; a failed job fails the script.
CORES=$(nproc 2>/dev/null || echo 1)
RUNNING=0
throttle() {
  BACKGROUND+=("$!")
  RUNNING=$((RUNNING + 1))
  if ((RUNNING >= $1)); then wait -n; RUNNING=$((RUNNING - 1)); fi
}
drain() { while ((RUNNING > 0)); do wait -n; RUNNING=$((RUNNING - 1)); done; }

PREFIX=ns        # namespaces ${PREFIX}0, ${PREFIX}1, ...
# shellcheck disable=SC2034 # --mode alias has no bridge
BRIDGE=br0
UPLINK=''        # empty: the interface of the default route, found where this runs
STATE=/run/multiip/ns  # the setup's record, pid and lease files
# shellcheck disable=SC2034 # --mode alias changes no host-wide limit
SYSCTL=${MULTIIP_SYSCTL_DIR:-/proc/sys}  # host-wide limits (tests point this elsewhere)

# Where systemd is PID 1, this script runs again in a transient scope of its own (system.slice), so what
# it starts that must outlive it (the namespaces' DHCP clients, the host's lease renewer, the uplink's own
# client started again) is not in the caller's cgroup: a unit's stop or failed start, or logind ending an
# SSH session (KillUserProcesses=yes), does not take them with it.
if [[ -z ${MULTIIP_SCOPE:-} && -d ${MULTIIP_SYSTEMD_DIR:-/run/systemd/system} && -f $0 ]] &&
  command -v systemd-run >/dev/null 2>&1; then
  exec systemd-run --quiet --scope --unit="multiip-$PREFIX-$$" --description="multiip $PREFIX: $0" \
    env MULTIIP_SCOPE="multiip-$PREFIX-$$.scope" bash "$0" "$@"
fi

need_root() { [[ $EUID -eq 0 ]] || die "run this as root: it changes network interfaces"; }
need_tool() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: install the Debian package $2"; }
link_exists() { ip link show dev "$1" >/dev/null 2>&1; }
link_master() { ip -o link show dev "$1" 2>/dev/null | sed -n 's/.* master \([^ ]*\) .*/\1/p'; }

# One setup or teardown at a time on a host: an flock on a file beside the records, held until the
# script exits (long-running children started here close it). MULTIIP_WAIT=SECONDS queues for it.
take_lock() {
  local dir=${STATE%/*} holder=""
  safe_dir "$dir"
  exec 9>>"$dir/lock"
  if ! flock -w "${MULTIIP_WAIT:-0}" 9; then
    [[ ! -s $dir/lock.pid ]] || read -r holder <"$dir/lock.pid"
    die "another multiip setup or teardown runs here (pid ${holder:-?}: $(tr '\0' ' ' <"/proc/$holder/cmdline" 2>/dev/null || echo gone)); wait for it, or queue with --wait SECONDS (MULTIIP_WAIT)"
  fi
  printf '%s\n' "$$" >"$dir/lock.pid"
}
safe_dir() {  # $1: a state directory, made 0700 if missing; refused if it is a symlink or not root's
  [[ -e $1 ]] || mkdir -p "$1"
  [[ ! -L $1 && -d $1 && -O $1 ]] || die "$1 is a symlink, not a directory or not owned by root: refusing to use it"
  chmod 0700 "$1"
}

# The setup's record, written by the setup before it changes anything, read by the teardown and by multiip:
#   $STATE/setup.env   KEY=VALUE: PREFIX MODE NETNS BRIDGE (- without one) BRIDGE_STATE BRIDGE_MADE UPLINK DHCP
#                      COUNT MANAGER MTU FAMILY (4, 6, dual) DHCP6 (dhclient, - for none); alias: LABEL,
#                      LOCAL_ROUTE (the block its local route makes the host's)
#   $STATE/namespaces  one line per namespace: NAME INSIDE PORT PIDFILE LEASEFILE ("-": none); the DHCPv6
#                      client's are NAME.pid6 and NAME.leases6
#   $STATE/addresses   the static addresses, one A/LEN per line (in namespaces, or on the uplink: alias)
#   $STATE/nonlocal-bind  alias, an IPv6 block's local route: net.ipv6.ip_nonlocal_bind before the setup
# --mode bridge: the uplink's move belongs to the bridge, shared by the setups on it; the last to go
# gives it back. Its record, $BRIDGE_STATE (/run/multiip/.bridge-BRIDGE-NETNS, named in setup.env): carry (what the uplink carried: _uplink.sh.j2), uplink, made (1: a
# setup made the bridge), manager (and manager.client, manager.connection, client-id), moved (the move
# finished), host.* (the host's lease renewed on the bridge).
# A setup's namespaces are the ones its record names, never a name pattern. Each bridge port also
# carries the alias multiip:PREFIX:NAME:INSIDE, from which the teardown rebuilds a lost record.
NETNS=$(stat -L -c %i /proc/self/ns/net)  # this network namespace (the kernel's inode number of it)
declare -A RECORD=()
read_record() {  # sets RECORD[KEY] from setup.env; a setup of another network namespace is refused
  local key value
  RECORD=()
  [[ -r $STATE/setup.env ]] || return 0
  while IFS='=' read -r key value; do [[ -z $key ]] || RECORD[$key]=$value; done <"$STATE/setup.env"
  [[ -z ${RECORD[NETNS]:-} || ${RECORD[NETNS]} == "$NETNS" ]] || die "the setup of prefix $PREFIX was made in another network namespace (inode ${RECORD[NETNS]}; this one is $NETNS): run this there, where its uplink is (e.g. nsenter --net=/proc/PID/ns/net)"
}

find_uplink() {  # sets UPLINK if empty (dies without one) and MTU, the uplink's
  if [[ -z $UPLINK ]]; then
    UPLINK=$(ip -4 route show default | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')
    [[ -n $UPLINK ]] || die "no default route to find the uplink by: name it with --uplink"
  fi
  link_exists "$UPLINK" || die "uplink $UPLINK does not exist"
  # shellcheck disable=SC2034 # not every script needs the MTU
  MTU=$(ip -o link show dev "$UPLINK" | sed -n 's/.* mtu \([0-9]*\) .*/\1/p')
}

SYSFS=${MULTIIP_SYSFS:-/sys}  # tests point this elsewhere
is_wifi() { [[ -e $SYSFS/class/net/$1/wireless || -e $SYSFS/class/net/$1/phy80211 ]]; }  # $1 interface

DMI=${MULTIIP_DMI_DIR:-/sys/class/dmi/id}  # the firmware's DMI strings (tests point this elsewhere)
find_cloud() {  # sets CLOUD to the provider whose network drops unassigned MACs, or ""
  local vendor="" product="" bios="" asset=""
  read -r vendor 2>/dev/null <"$DMI/sys_vendor" || true
  read -r product 2>/dev/null <"$DMI/product_name" || true
  read -r bios 2>/dev/null <"$DMI/bios_version" || true
  read -r asset 2>/dev/null <"$DMI/chassis_asset_tag" || true
  case "$vendor|$product|$bios|$asset" in
    "Amazon EC2|"* | *"|"*amazon*"|"*) CLOUD="Amazon EC2" ;;
    "Google|"* | *"|Google Compute Engine|"*) CLOUD="Google Compute Engine" ;;
    *"|7783-7084-3265-9085-8269-3286-77") CLOUD="Microsoft Azure" ;;
    "Microsoft Corporation|Virtual Machine|"*) CLOUD="Hyper-V (Azure, or on premises without MAC address spoofing)" ;;
    *"|OracleCloud.com") CLOUD="Oracle Cloud" ;;
    "Alibaba Cloud|"*) CLOUD="Alibaba Cloud" ;;
    "DigitalOcean|"*) CLOUD="DigitalOcean" ;;
    "Hetzner|"*) CLOUD="Hetzner Cloud" ;;
    "OpenStack Foundation|"* | *"|OpenStack Nova|"*) CLOUD="OpenStack (port security)" ;;
    *) CLOUD="" ;;
  esac
}

INSIDE=tap  # veth end inside namespace i: ${INSIDE}i
PORT=br-tap      # veth end on the bridge: ${PORT}i

# Each namespace's client has its own pid and lease files (named in the record) and its resolver file
# is /etc/netns/<ns>/resolv.conf: the host's /etc/resolv.conf is never written. udhcpc runs our event
# script, which writes only the files named in MULTIIP_RESOLV and MULTIIP_LEASE; dhclient and dhcpcd
# run their stock scripts under `ip netns exec`, which bind-mounts /etc/netns/<ns>/resolv.conf over
# /etc/resolv.conf for them. A client is keyed by its namespace's name, or by "host" for the bridge's.
# These helpers set variables (RESOLV, PIDFILE, LEASEFILE, PID) rather than print: no subshell each.
resolv_in() {  # $1 key, then a command: run it there with /etc/resolv.conf bound to the key's own file
  local key=$1
  shift
  if [[ $key != host ]]; then ip netns exec "$key" "$@"
  else unshare --mount --propagation private sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' "${BRIDGE_STATE:-}/host.resolv.conf" "$@"
  fi
}
client_files() {  # $1 client, $2 key, $3 interface: sets PIDFILE and LEASEFILE
  local dir=$STATE
  [[ $2 != host ]] || dir=${BRIDGE_STATE:-}  # the host's own lease on the bridge is the bridge's
  case $1 in
    udhcpc) PIDFILE=$dir/$2.pid LEASEFILE=$dir/$2.lease ;;
    dhclient) PIDFILE=$dir/$2.pid LEASEFILE=$dir/$2.leases ;;
    dhclient6) PIDFILE=$dir/$2.pid6 LEASEFILE=$dir/$2.leases6 ;;  # dhclient -6, a namespace's DHCPv6
    dhcpcd) PIDFILE=/run/dhcpcd/$3-4.pid LEASEFILE=/var/lib/dhcpcd/$3.lease ;;  # dhcpcd has no option for them
    *) PIDFILE=- LEASEFILE=- ;;
  esac
}
alive() {  # $1 pid: running (a zombie waiting for its parent to reap it counts as gone)
  local stat
  read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}
client_pid() {  # $1 client, $2 key, $3 interface: sets PID to the running client's pid, or to ""
  local comm=""
  PID=""
  client_files "$@"
  if [[ -s $PIDFILE ]]; then read -r PID <"$PIDFILE" || true; fi
  if [[ $PID =~ ^[0-9]+$ ]] && alive "$PID"; then read -r comm 2>/dev/null <"/proc/$PID/comm" || true; fi
  # a pid file is trusted only for a process of that name in that namespace (pids are reused)
  local netns=/run/netns/$2
  [[ $2 != host ]] || netns=/proc/self/ns/net
  [[ -n $comm && $comm == "${1%6}" && /proc/$PID/ns/net -ef $netns ]] || PID=""
}

# udhcpc_command KEY INTERFACE [ADDRESS [CLIENT_ID]]: sets COMMAND, the sh command line that starts the
# key's udhcpc in the background, in the foreground: it never blocks this script and keeps trying until
# it has a lease. Run by an `sh` in a session of its own (setsid sh), which many are started by at once
# (its forks cost less than this shell's).
udhcpc_command() {
  local log=$STATE/$1.log RESOLV=/etc/netns/$1/resolv.conf script=$STATE/udhcpc.script
  local enter="" how="-R" host="" avoid=""  # -R: a namespace's lease is released when its client stops
  [[ $1 != host ]] || log=${BRIDGE_STATE:-}/host.log RESOLV=${BRIDGE_STATE:-}/host.resolv.conf script=${BRIDGE_STATE:-}/udhcpc.script
  client_files udhcpc "$1" "$2"
  # The host's own lease (key host) is never released: the address goes back to the uplink; it is
  # asked for with the client id the uplink's manager used, so the server sees the same client.
  if [[ $1 == host ]]; then
    how=${3:+-r $3} host=1
    [[ ${4:-} != - ]] || how+=" -C"  # the manager sent none: the server knows the host by its MAC
    [[ ${4:--} == - ]] || how+=" -x 0x3d:$4"
  else
    enter="nsenter --net=/run/netns/$1"
  fi
  printf -v COMMAND 'MULTIIP_RESOLV=%q MULTIIP_LEASE=%q MULTIIP_HOST=%q MULTIIP_AVOID=%q %s udhcpc -f -i %q -p %q -s %q %s -t 3 -T 1 -A 3 </dev/null >%q 2>&1 9>&- &' \
    "$RESOLV" "$LEASEFILE" "$host" "$avoid" "$enter" "$2" "$PIDFILE" "$script" "$how" "$log"
}
dhcp_start() {  # $1 client, $2 key, $3 interface[, $4 the address to ask for[, $5 the client id to send]]
  local log=$STATE/$2.log RESOLV=/etc/netns/$2/resolv.conf
  [[ $2 != host ]] || log=${BRIDGE_STATE:-}/host.log RESOLV=${BRIDGE_STATE:-}/host.resolv.conf
  [[ -e $RESOLV ]] || { mkdir -p "${RESOLV%/*}" && : >"$RESOLV"; }  # exists before the client starts
  client_files "$@"
  rm -f "$LEASEFILE"
  case $1 in
    udhcpc) udhcpc_command "$2" "$3" "${4:-}" "${5:-}" && setsid sh -c "$COMMAND" ;;
    dhclient) resolv_in "$2" dhclient -4 -nw -pf "$PIDFILE" -lf "$LEASEFILE" "$3" >"$log" 2>&1 9>&- ;;
    dhcpcd) resolv_in "$2" dhcpcd -4 -b -A -C hostname "$3" >"$log" 2>&1 9>&- ;;
  esac
}
has_lease() {  # $1 client, $2 key, $3 interface
  client_files "$@"
  case $1 in
    dhclient) [[ -s $LEASEFILE && $(<"$LEASEFILE") == *fixed-address* ]] ;;
    *) [[ -s $LEASEFILE ]] ;;
  esac
}
udhcpc_script() {  # $1 directory: udhcpc's event script there
  cat >"$1/udhcpc.script" <<'UDHCPC'
#!/bin/sh
# udhcpc event script written by multiip. It configures $interface in its namespace and writes the
# DNS servers to $MULTIIP_RESOLV (/etc/netns/<ns>/resolv.conf) and the lease to $MULTIIP_LEASE,
# never to /etc/resolv.conf. Addresses carry the lease's lifetime: renewed while this client runs.
# For the host's own lease on the bridge (MULTIIP_HOST=1) it only renews the address, keeping its
# flags (noprefixroute): the routes moved with the uplink, and the address stays until a new lease.
# MULTIIP_AVOID: addresses a namespace must never take (ipvlan: the host's own, which a server that
# ignores client ids offers to the host's MAC). Being torn down (the teardown leaves this mark): the
# namespace goes next, nothing to undo.
[ ! -e "${MULTIIP_LEASE%/*}/stopping" ] || exit 0
# A namespace's client binds with one `ip` and nothing else started: with a thousand of them starting at
# once, every process costs (the lease's time is its file's: no `date`; written in place: no `mv`).
case "$1" in
  deconfig)
    [ -z "$MULTIIP_HOST" ] || exit 0
    [ -e "$MULTIIP_LEASE" ] || exit 0  # no lease had: nothing of one to take away (the link is up already)
    ip -4 address flush dev "$interface"
    rm -f "$MULTIIP_LEASE"
    ;;
  bound|renew)
    case " $MULTIIP_AVOID " in *" $ip "*)  # the host's own address, offered to a namespace: never taken
      echo "$ip" >"$MULTIIP_LEASE.clash"
      kill -KILL "$PPID"  # no release either: the lease is the host's
      exit 0 ;;
    esac
    if [ -n "$MULTIIP_HOST" ]; then  # the address as it is (its prefix route's metric, noprefixroute), renewed
      flags=$(ip -4 -o address show dev "$interface" to "$ip/32" | awk '{ for (i = 5; i <= NF; i++) {
        if ($i == "metric") print $i, $(i + 1); if ($i == "noprefixroute") print $i } }' | tr '\n' ' ')
      # shellcheck disable=SC2086 # flags: words
      ip address replace "$ip/$mask" broadcast "${broadcast:-+}" valid_lft "${lease:-forever}" \
        preferred_lft "${lease:-forever}" $flags dev "$interface"
    else  # a namespace's: another address than the one it had goes first (its IPv6 stays), then the route
      had="" flush="" route=""
      if [ -r "$MULTIIP_LEASE" ]; then
        while IFS='=' read -r key value; do [ "$key" != ipv4 ] || had=$value; done <"$MULTIIP_LEASE"
      fi
      [ "$had" = "$ip/$mask" ] || flush="address flush dev $interface"
      [ -z "$router" ] || route="route replace default via ${router%% *} dev $interface"
      ip -4 -batch - <<BATCH
$flush
address replace $ip/$mask broadcast ${broadcast:-+} valid_lft ${lease:-forever} preferred_lft ${lease:-forever} dev $interface
$route
BATCH
    fi
    resolv=""
    [ -z "$domain" ] || resolv="search $domain
"
    for server in $dns; do resolv="${resolv}nameserver $server
"; done
    printf '%s' "$resolv" >"$MULTIIP_RESOLV"  # in place: keeps the file any bind mount holds
    # the lease, last, in one write (a reader meanwhile sees it empty: no lease yet); its time is when it
    # was obtained (renewed)
    printf 'ipv4=%s/%s\nrouter=%s\nserver=%s\nlease=%s\n' "$ip" "$mask" "${router%% *}" "$serverid" "$lease" \
      >"$MULTIIP_LEASE"
    ;;
  leasefail|nak)
    echo "udhcpc: $1 on $interface: ${message:-no lease}" >&2
    # After a NAK udhcpc sleeps 3 s before it asks again. Among many clients asking at once a NAK is
    # mostly a server (dnsmasq without its ping check) that offered one free address to two of them:
    # the one refused finds another at its next ask. So a namespace's client is told to ask sooner
    # (USR1, "renew", ends that sleep): 0.1 s after its first NAK, then 0.2, 0.4, 0.8, 1.6; from its
    # sixth on it sleeps its 3 s (a server that refuses everyone is not asked faster than that).
    [ "$1" = nak ] && [ -z "$MULTIIP_HOST" ] || exit 0
    naks=0
    [ ! -r "$MULTIIP_LEASE.naks" ] || read -r naks <"$MULTIIP_LEASE.naks"
    echo $((naks + 1)) >"$MULTIIP_LEASE.naks"
    case $naks in 0) wait=0.1 ;; 1) wait=0.2 ;; 2) wait=0.4 ;; 3) wait=0.8 ;; 4) wait=1.6 ;; *) exit 0 ;; esac
    client=$PPID
    (
      sleep "$wait"
      read -r name <"/proc/$client/comm" && [ "$name" = udhcpc ] && kill -USR1 "$client"
    ) </dev/null >/dev/null 2>&1 &
    ;;
esac
exit 0
UDHCPC
  chmod 0755 "$1/udhcpc.script"
}

FAMILY=auto  # 4, 6, dual, or auto: IPv6 too where the LAN offers it
DHCP6=-  # the namespaces' DHCPv6 client (-: none, SLAAC alone)
# Sets FAMILY (4, 6 or dual) and V6 (1: the namespaces get IPv6). --family auto: IPv6 too where the LAN
# offers it, seen on the uplink (or the bridge that has its addresses): a SLAAC address (a dynamic /64) and
# a default route from router advertisements (proto ra, the kernel's or its manager's). A setup run
# again keeps the family it has.
choose_family() {
  local dev ra="" slaac=""
  local -a devs=("$UPLINK" "$BRIDGE")
  if [[ $FAMILY == auto && -n ${RECORD[FAMILY]:-} ]]; then FAMILY=${RECORD[FAMILY]}; fi
  if [[ $FAMILY == auto ]]; then
    for dev in "${devs[@]}"; do
      link_exists "$dev" || continue
      [[ -z $(ip -6 route show default proto ra dev "$dev" 2>/dev/null) ]] || ra=1
      ip -6 -o address show dev "$dev" scope global | grep -q '/64 .* dynamic' && slaac=1
    done
    FAMILY=4
    if [[ -n $ra && -n $slaac ]]; then
      FAMILY=dual
      say "the LAN advertises IPv6 (router advertisements on $UPLINK): the namespaces get IPv6 too (SLAAC); --family 4 does without"
    fi
  fi
  [[ -z ${RECORD[FAMILY]:-} || ${RECORD[FAMILY]} == "$FAMILY" ]] || die "prefix $PREFIX is set up with --family ${RECORD[FAMILY]}: take it down first to change that"
  V6=""
  [[ $FAMILY == 4 ]] || V6=1
  if [[ -n $V6 && -z $ra ]]; then  # asked for: is there IPv6 to have on this LAN?
    for dev in "${devs[@]}"; do
      if link_exists "$dev" && [[ -n $(ip -6 route show default proto ra dev "$dev" 2>/dev/null) ]]; then ra=1; fi
    done
    [[ -n $ra ]] || die "--family $FAMILY: $UPLINK has no default route from router advertisements, so the LAN offers no IPv6 here (or its router does not advertise): use --family 4, or static IPv6 addresses (--address/--addresses); nothing was changed"
  fi
}
# Namespace I's IPv6 inside it (before its link goes up): a link-local address (EUI-64 of its stable MAC),
# SLAAC from router advertisements. Sets SYSCTL6 (the sysctls) and ADDRGEN (the mode).
ipv6_inside() {  # $1 index
  local conf=/proc/sys/net/ipv6/conf/$INSIDE$1
  SYSCTL6=" && echo 1 >$conf/accept_ra && echo 0 >$conf/use_tempaddr" ADDRGEN=eui64
}
# Every namespace with an IPv6 address of scope $1 (global, or link: a DHCPv6 client needs its link-local)
# ready to use (DAD done: a "tentative" one cannot be bound), up to LEASE_TIMEOUT s; one whose DAD failed
# (someone on the LAN has that address) is named.
wait_ipv6() {  # $1 scope
  local i deadline out failed="" ns=""
  local -a pending=() waiting=()
  deadline=$((SECONDS + LEASE_TIMEOUT))
  for ((i = 0; i < COUNT; i++)); do pending+=("$i"); done
  while :; do
    waiting=()
    for i in "${pending[@]}"; do
      out=$(nsenter --net="/run/netns/$PREFIX$i" ip -6 -o address show dev "$INSIDE$i" scope "$1" 2>/dev/null) || true
      if [[ $out == *dadfailed* ]]; then
        out=${out#* inet6 }
        failed+=" $PREFIX$i (${out%% *})"
      fi
      [[ -n $out && $out != *tentative* ]] || waiting+=("$i")
    done
    pending=("${waiting[@]}")
    [[ $1 != global ]] || progress ipv6 "$((COUNT - ${#pending[@]}))" "$COUNT"
    [[ -z $failed ]] || die "IPv6 duplicate-address detection failed in$failed: another host on the LAN has that address"
    ((${#pending[@]} > 0 && SECONDS < deadline)) || break
    sleep 0.2
  done
  if ((${#pending[@]} > 0)); then
    for i in "${pending[@]}"; do ns+=" $PREFIX$i"; done
    STEP="IPv6"
    die "no $1 IPv6 address ready within ${LEASE_TIMEOUT}s in ${#pending[@]} of $COUNT namespaces:$ns (does the LAN's router advertise a prefix for SLAAC? With DHCPv6 only, add --dhcp6; --family 4 does without IPv6)"
  fi
}
# The last of the setup: every namespace's IPv6 (SLAAC) ready.
ipv6_ready() {
  local i started=0
  wait_ipv6 global
  say "every namespace has its IPv6 address"
}

# describe DEV prints what DEV carries, one item per line, with DEV written as @ (so the same lines
# describe it on the bridge, and back):
#   conf FAMILY KEY VALUE    a per-interface setting that goes with the addresses (rp_filter, accept_ra, ...)
#   addr ARGS [ends V P]     `ip address replace` arguments, the label as @:x; V, P: when its lifetimes
#                            end (epoch seconds, - for forever); none: a permanent address
#   nexthop ARGS             a nexthop object over DEV (routes with nhid follow it)
#   route FAMILY ARGS        a route over DEV in any table: multipath, nhid, onlink, src, metric, proto,
#                            expires (as an epoch) as `ip route` prints them
#   rule FAMILY ARGS         an ip rule that names DEV (iif, oif)
# Not described, because the kernel makes them again with the addresses: IPv6 link-local and host-scope
# addresses, IPv6 privacy (temporary) addresses, the routes of table local and the IPv6 prefix routes of
# the addresses (proto kernel, metric 256). IPv4 subnet routes are described: NetworkManager makes its
# own (its addresses are noprefixroute), and replacing one the kernel made changes nothing.
CONF_KEYS=(ipv4/rp_filter ipv4/arp_ignore ipv4/arp_announce ipv4/arp_filter ipv4/accept_redirects
  ipv4/send_redirects ipv4/proxy_arp ipv4/log_martians ipv6/disable_ipv6 ipv6/accept_ra ipv6/accept_ra_defrtr
  ipv6/accept_ra_pinfo ipv6/autoconf ipv6/use_tempaddr ipv6/stable_secret ipv6/addr_gen_mode ipv6/accept_redirects)
describe_addresses() {  # $1 device, $2 now (epoch seconds)
  { ip -o address show dev "$1" 2>/dev/null || true; } | tr -d '\\' | awk -v dev="$1" -v now="$2" '
    ($3 != "inet" && $3 != "inet6") || / scope host / || ($3 == "inet6" && / scope link /) || / temporary / { next }
    { out = "addr " $4; ends = ""
      for (i = 5; i <= NF; i++) {
        if ($i == "brd" || $i == "metric") { out = out " " $i " " $(i + 1); i++ }
        else if ($i == "scope" && $(i + 1) == "link") { out = out " scope link"; i++ }
        else if ($i == "valid_lft" || $i == "preferred_lft") {
          v = $(i + 1); sub(/sec$/, "", v); ends = ends " " (v == "forever" ? "-" : now + v); i++ }
        else if ($i ~ /^(noprefixroute|nodad|home|optimistic|mngtmpaddr)$/) out = out " " $i
        else if (index($i, dev ":") == 1) out = out " label @" substr($i, length(dev) + 1)
      }
      print out (ends == " - -" ? "" : " ends" ends) }'
}
describe() {  # $1 device
  local key value now addresses own=""
  printf -v now '%(%s)T' -1
  for key in "${CONF_KEYS[@]}"; do
    IFS= read -r value 2>/dev/null <"/proc/sys/net/${key%%/*}/conf/$1/${key#*/}" || continue  # stable_secret: unset
    printf 'conf %s %s %s\n' "${key%%/*}" "${key#*/}" "$value"
  done
  addresses=$(describe_addresses "$1" "$now")
  [[ -z $addresses ]] || printf '%s\n' "$addresses"
  while read -r _ address rest; do  # the IPv4 addresses whose subnet route the kernel makes (not noprefixroute)
    [[ $address == *:* || " $rest " == *" noprefixroute "* ]] || own+=" ${address%/*}"
  done <<<"$addresses"
  { ip -o nexthop show 2>/dev/null || true; } | awk -v dev="$1" '
    { named = 0; out = "nexthop"
      for (i = 1; i <= NF; i++)
        if ($i == "dev" && $(i + 1) == dev) { named = 1; out = out " dev @"; i++ }
        else if ($i == "scope") i++
        else out = out " " $i
      if (named) print out }'
  for family in 4 6; do
    { ip "-$family" -o route show table all 2>/dev/null || true; } | tr -d '\\' |
      awk -v dev="$1" -v family="$family" -v now="$now" -v own="$own " '
      / table local / || / cache / || (family == 6 && / proto kernel / && / metric 256 /) { next }
      / proto kernel / { for (i = 1; i < NF; i++) if ($i == "src" && index(own, " " $(i + 1) " ")) next }  # the kernel makes it again
      /^(multicast|local|broadcast|anycast|unreachable|prohibit|blackhole|throw) / { next }
      { named = 0; nh = 0
        for (i = 1; i < NF; i++) { if ($i == "dev" && $(i + 1) == dev) named = 1; if ($i == "nhid") nh = 1 }
        if (!named) next
        out = ""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^(linkdown|dead|offload|trap|rt_offload|rt_trap|rt_offload_failed|notify|pervasive)$/) continue
          if (nh && ($i == "via" || $i == "dev" || $i == "weight")) { i++; continue }  # the nexthop object has them
          if (nh && $i == "nexthop") continue
          if ($i == "dev" && $(i + 1) == dev) { out = out " dev @"; i++; continue }
          if ($i == "expires") { v = $(i + 1); sub(/sec$/, "", v); out = out " expires " (now + v); i++; continue }
          out = out " " $i }
        print "route " family out }'
  done
  for family in 4 6; do
    { ip "-$family" rule show 2>/dev/null || true; } | awk -v dev="$1" -v family="$family" '{
      named = 0
      for (i = 2; i < NF; i++) if (($i == "iif" || $i == "oif") && $(i + 1) == dev) named = 1
      if (!named) next
      sub(/:$/, "", $1); out = "rule " family " pref " $1
      for (i = 2; i <= NF; i++)
        if ($i ~ /^\[(detached|unresolved)\]$/) continue
        else if (($i == "iif" || $i == "oif") && $(i + 1) == dev) { out = out " " $i " @"; i++ }
        else out = out " " $i
      print out }'
  done
}
at() {  # $1 a described line, $2 device: the line naming the device where it says @
  local line=" $1 " label
  line=${line// dev @ / dev $2 }
  line=${line// iif @ / iif $2 }
  line=${line// oif @ / oif $2 }
  if [[ $line =~ \ label\ @([^ ]*)\  ]]; then  # a label is the device's name and a suffix, 15 characters at most
    label=$2${BASH_REMATCH[1]}
    if ((${#label} <= 15)); then line=${line/ label @${BASH_REMATCH[1]} / label $label }
    else line=${line/ label @${BASH_REMATCH[1]} / }  # on a longer name it goes without (the description keeps it)
    fi
  fi
  line=${line# }
  printf '%s' "${line% }"
}
# carry FILE FROM TO (FROM may be TO: what it lacks, added): sets CARRY (`ip -batch` lines) and CARRY6
# (`ip -6 -batch`: IPv6 rules) that give TO what FILE describes and take its addresses and rules off FROM,
# and writes FILE's settings to TO's sysctls. The order: addresses, the routes that reach a device
# directly, nexthop objects (their gateways are reachable by then), the routes through gateways or
# nexthop objects, rules; then FROM's addresses go, secondaries before their primary. An address with
# lifetimes keeps what it has left where it is now (on FROM or TO: a DHCP client or the kernel renewed
# it there), or what the description says is left; one whose lifetime is over stays gone.
carry() {
  local file=$1 from=$2 to=$3 now kind rest line address family key value valid preferred
  local -A ends=()
  local addrs4="" addrs6="" direct="" nexthops="" routes="" gone=""
  printf -v now '%(%s)T' -1
  while read -r _ address rest; do
    [[ $rest != *" ends "* ]] || ends[$address]=${rest##* ends }
  done < <(describe_addresses "$to" "$now"; describe_addresses "$from" "$now")
  CARRY="" CARRY6=""
  while read -r kind rest; do
    case $kind in
      conf)
        read -r family key value <<<"$rest"
        printf '%s\n' "$value" 2>/dev/null >"/proc/sys/net/$family/conf/$to/$key" || true ;;
      addr)
        address=${rest%% *} line=${rest% ends *}
        if [[ $rest == *" ends "* ]]; then
          read -r valid preferred <<<"${ends[$address]:-${rest##* ends }}"
          [[ $valid == - ]] || { ((valid > now)) || continue; line+=" valid_lft $((valid - now))"; }
          [[ $preferred == - ]] || line+=" preferred_lft $((preferred > now ? preferred - now : 0))"
        fi
        line="address replace $(at "$line" "$to") dev $to"$'\n'
        if [[ $address == *:* ]]; then addrs6=$line$addrs6; else addrs4+=$line; fi  # the order ip lists them in
        [[ $from == "$to" ]] || gone="address del $address dev $from"$'\n'$gone ;;
      nexthop) nexthops+="nexthop replace $(at "$rest" "$to")"$'\n' ;;
      route)
        family=${rest%% *} line=${rest#* }
        [[ $family != 6 || $line != default\ * ]] || line="::/0 ${line#default }"
        if [[ $line =~ ^(.*)\ expires\ ([0-9]+)(.*)$ ]]; then
          ((BASH_REMATCH[2] > now)) || continue
          line="${BASH_REMATCH[1]} expires $((BASH_REMATCH[2] - now))${BASH_REMATCH[3]}"
        fi
        line="route replace $(at "$line" "$to")"$'\n'
        if [[ $line == *" via "* || $line == *" nhid "* ]]; then routes+=$line; else direct+=$line; fi ;;
      rule)
        family=${rest%% *} line="rule add $(at "${rest#* }" "$to")"$'\n'
        [[ $from == "$to" ]] || line="rule del $(at "${rest#* }" "$from")"$'\n'$line
        if [[ $family == 6 ]]; then CARRY6+=$line; else CARRY+=$line; fi ;;
    esac
  done <"$file"
  # the prefix routes the kernel made for FROM's IPv6 addresses with lifetimes outlive them: they go too
  [[ $from == "$to" ]] || while read -r line; do gone="route del $line dev $from"$'\n'$gone; done < <(
    { ip -6 -o route show dev "$from" proto kernel 2>/dev/null || true; } |
      awk '$1 != "fe80::/64" { m = 256; for (i = 2; i < NF; i++) if ($i == "metric") m = $(i + 1); print $1, "proto kernel metric", m }')
  CARRY=$addrs4$addrs6$direct$nexthops$routes$CARRY$gone
}
apply_carry() {  # what carry made, past any error (ip -force); what did not take is found by lacks
  ip -force -batch - <<<"$CARRY" >/dev/null 2>&1 || true
  [[ -z $CARRY6 ]] || ip -6 -force -batch - <<<"$CARRY6" >/dev/null 2>&1 || true
}
# The lines of FILE the device does not carry now (lifetimes and expiry times aside; not what expired).
lacks() {  # $1 file, $2 device
  local -A has=()
  local line key now
  printf -v now '%(%s)T' -1
  while read -r line; do
    line=${line% ends *}
    [[ ! $line =~ ^(.*)\ expires\ [0-9]+(.*)$ ]] || line=${BASH_REMATCH[1]}${BASH_REMATCH[2]}
    has[$line]=1
  done < <(describe "$2" || true)
  while read -r line; do
    case $line in conf\ *) continue ;; esac
    if [[ $line =~ \ (ends|expires)\ ([0-9]+) ]]; then ((BASH_REMATCH[2] > now)) || continue; fi
    key=${line% ends *}
    [[ ! $key =~ ^(.*)\ expires\ [0-9]+(.*)$ ]] || key=${BASH_REMATCH[1]}${BASH_REMATCH[2]}
    [[ -n ${has[$key]:-} ]] || printf '%s\n' "$line"
  done <"$1"
}
as_command() {  # $1 a described line, $2 device: the command that puts it on the device
  local kind=${1%% *} rest=${1#* }
  rest=${rest% ends *}
  [[ ! $rest =~ ^(.*)\ expires\ [0-9]+(.*)$ ]] || rest=${BASH_REMATCH[1]}${BASH_REMATCH[2]}
  case $kind in
    addr) printf 'ip address replace %s dev %s' "$(at "$rest" "$2")" "$2" ;;
    nexthop) printf 'ip nexthop replace %s' "$(at "$rest" "$2")" ;;
    route) printf 'ip -%s route replace %s' "${rest%% *}" "$(at "${rest#* }" "$2")" ;;
    rule) printf 'ip -%s rule add %s' "${rest%% *}" "$(at "${rest#* }" "$2")" ;;
  esac
}
PROBLEMS=()  # what could not be put back, each with the command that does it
report_problems() {
  local problem
  for problem in "${PROBLEMS[@]}"; do say "could not put back: $problem"; done
}
stop_renewer() {  # the client of ours that renews the host's lease on the bridge goes, without a release
  local w client=udhcpc
  [[ ! -s $BRIDGE_STATE/host.client ]] || read -r client <"$BRIDGE_STATE/host.client"
  client_pid "$client" host "$BRIDGE"
  [[ -n $PID ]] || return 0
  kill -TERM "$PID" 2>/dev/null || true
  for ((w = 0; w < 100; w++)); do alive "$PID" || return 0; sleep 0.1; done
  kill -KILL "$PID" 2>/dev/null || true
}
# IPv6 addresses moved to another device go through duplicate-address detection there again, unusable
# ("tentative") for 1-2 s: up to 5 s for them (the host had them on this link: they pass).
wait_dad() {  # $1 device
  local w
  for ((w = 0; w < 50; w++)); do
    [[ -n $(ip -6 -o address show dev "$1" scope global tentative 2>/dev/null) ]] || return 0
    sleep 0.1
  done
}
# The uplink out of the bridge, with everything the description gives it, in one `ip -batch` that goes
# on past any error (so the host is without its address for as short a time as possible); then the move
# is over. Without the bridge's record (it was deleted) the description is what the bridge carries now.
restore_uplink() {
  stop_renewer  # first: a late renewal would put the address on the bridge again
  if [[ ! -s $BRIDGE_STATE/carry ]]; then
    safe_dir "$BRIDGE_STATE"
    describe "$BRIDGE" >"$BRIDGE_STATE/carry"
  fi
  carry "$BRIDGE_STATE/carry" "$BRIDGE" "$UPLINK"
  CARRY="link set dev $UPLINK nomaster"$'\n'$CARRY"link set dev $UPLINK up"$'\n'
  apply_carry
  rm -f "$BRIDGE_STATE/moved"
  [[ -z $(link_master "$UPLINK") ]] || PROBLEMS+=("$UPLINK is still a port of $BRIDGE: ip link set dev $UPLINK nomaster")
  wait_dad "$UPLINK"
}
# What the uplink carried and lacks now, added; then what it still lacks is a problem. With a manager,
# its DHCP lease is its own to renew: an old lease's address is not put back (only, when the manager has
# it again, what the manager's own reconfiguring lost of it: networkd 252 with KeepConfiguration=yes
# drops the prefix route's metric of the address it takes back).
complete_uplink() {
  local file=$BRIDGE_STATE/carry.lacking line lease
  lease=$(leased_address)
  [[ $(ip -4 -o address show dev "$UPLINK") != *" $lease/"* ]] || lease=""
  lacks "$BRIDGE_STATE/carry" "$UPLINK" | { grep -v "^addr ${lease:-none}/" || true; } >"$file"
  [[ -s $file ]] || return 0
  carry "$file" "$UPLINK" "$UPLINK"
  apply_carry
  while read -r line; do PROBLEMS+=("$UPLINK lacks ${line% ends *}: $(as_command "$line" "$UPLINK")"); done < <(lacks "$file" "$UPLINK")
}

# MANAGER is none, NetworkManager, systemd-networkd, or the DHCP client (dhclient, dhcpcd, udhcpc) that
# runs on the uplink. While the setup lives, the manager leaves the uplink, the bridge and its ports
# alone, and the host's lease is renewed on the bridge by a udhcpc of ours, with the client id the
# manager used (the bridge carries the uplink's MAC: the server sees the same client); then the manager
# gets the uplink back as it had it. A manager is never stopped for the whole host. What belongs to the
# uplink's handover is the bridge's ($BRIDGE_STATE), not a setup's: it goes with the last setup on it.
NM_CONF=/run/NetworkManager/conf.d/90-multiip-$PREFIX.conf  # this setup's ports
NETWORKD_FILE=/run/systemd/network/00-multiip-$PREFIX.network
bridge_record() {  # what follows from BRIDGE (a teardown learns it from the record): its record, its manager's files
  # a bridge is one of this network namespace's (the kernel's inode of it tells them apart); '@' is in no prefix
  BRIDGE_STATE=${STATE%/*}/.bridge-$BRIDGE-$NETNS
  NM_BRIDGE_CONF=/run/NetworkManager/conf.d/90-multiip@$BRIDGE.conf  # the bridge and the uplink
  NETWORKD_BRIDGE_FILE=/run/systemd/network/00-multiip@$BRIDGE.network
}
bridge_record
leave_alone() {  # $1 manager, $2 which file (setup: this setup's ports; bridge: the bridge and the uplink), $3 names (globs); none: remove it
  local file
  case $1 in
    NetworkManager)
      file=$NM_CONF
      [[ $2 == setup ]] || file=$NM_BRIDGE_CONF
      if [[ -n $3 ]]; then
        mkdir -p "${file%/*}"
        printf '[device-multiip-%s-%s]\nmatch-device=interface-name:%s\nmanaged=0\n' "$2" "$PREFIX" "${3// /;interface-name:}" >"$file"
      else rm -f "$file"
      fi
      nmcli general reload conf ;;
    systemd-networkd)
      file=$NETWORKD_FILE
      [[ $2 == setup ]] || file=$NETWORKD_BRIDGE_FILE
      if [[ -n $3 ]]; then
        mkdir -p "${file%/*}"
        printf '[Match]\nName=%s\n\n[Link]\nUnmanaged=yes\n' "$3" >"$file"
      else rm -f "$file"
      fi
      networkctl reload ;;
  esac
}
networkd_state() {  # $1 interface: networkd's SETUP state of it (configured, configuring, unmanaged, ...)
  networkctl list --no-legend --no-pager "$1" 2>/dev/null | awk '{ print $5 }'
}
running_as() {  # $1 a file with a command line (NUL-separated): sets PIDS to the processes that run it here
  local -a argv=()
  local pid
  PIDS=()
  mapfile -d '' -t argv <"$1"
  for pid in /proc/[0-9]*; do
    [[ $(tr '\0' ' ' <"$pid/cmdline" 2>/dev/null) != "${argv[*]} " ]] || PIDS+=("${pid#/proc/}")
  done
}
leased_address() {  # the uplink's address its manager holds a DHCP lease for (step 2 saw it), or ""
  [[ ! -s $BRIDGE_STATE/lease ]] || cat "$BRIDGE_STATE/lease"
}
# Undo the uplink's handover (also a half one), every part of it even when one fails: our renewer
# goes (no release), the manager has the uplink back as it had it, and what it does not make itself
# (other addresses, routes in other tables, rules) is completed from the description. What could not
# be done is said with the command that does it (PROBLEMS). Nothing of it if the uplink was never handed.
give_back_to_manager() {  # $1 what the manager still leaves alone (the bridge, while it exists)
  local argv=() w state address
  stop_renewer
  leave_alone "$MANAGER" bridge "$1" || PROBLEMS+=("$MANAGER did not take its configuration again: remove $NM_BRIDGE_CONF $NETWORKD_BRIDGE_FILE, then nmcli general reload conf or networkctl reload")
  [[ -e $BRIDGE_STATE/handed ]] || return 0
  case $MANAGER in
    NetworkManager)
      nmcli device set "$UPLINK" managed yes || PROBLEMS+=("NetworkManager does not manage $UPLINK again: nmcli device set $UPLINK managed yes")
      if [[ -s $BRIDGE_STATE/manager.connection ]]; then  # active again, as it was
        nmcli --wait 30 connection up uuid "$(<"$BRIDGE_STATE/manager.connection")" >/dev/null ||
          PROBLEMS+=("NetworkManager did not bring $UPLINK's connection up: nmcli connection up uuid $(<"$BRIDGE_STATE/manager.connection")")
      fi ;;
    systemd-networkd)
      # networkd 252 forgets the link's addresses when it leaves a bridge, and then waits for an IPv6
      # link-local address it believes is missing: announcing it again lets it finish configuring
      ip -6 -o address show dev "$UPLINK" scope link | awk '{ print $4 }' |
        while read -r address; do ip -6 address replace "$address" dev "$UPLINK" scope link || true; done
      for ((w = 0; w < 900; w++)); do  # up to 90 s: networkd asks DHCP for the address again
        state=$(networkd_state "$UPLINK")
        [[ $state == configuring || $state == unmanaged || $state == pending || $state == initialized ]] || break
        sleep 0.1
      done
      [[ $state == configured ]] || PROBLEMS+=("systemd-networkd has $UPLINK $state, not configured: networkctl status $UPLINK; networkctl reconfigure $UPLINK") ;;
    dhclient | dhcpcd | udhcpc)
      if [[ ! -s $BRIDGE_STATE/manager.client ]]; then
        PROBLEMS+=("$MANAGER ran on $UPLINK, and the bridge's record of how is gone: start it on $UPLINK again as your system does (e.g. ifup $UPLINK)")
      else
        running_as "$BRIDGE_STATE/manager.client"
        if ((${#PIDS[@]} == 0)); then  # not running already (given back before)
          mapfile -d '' -t argv <"$BRIDGE_STATE/manager.client"
          (cd / && exec setsid "${argv[@]}" </dev/null >/dev/null 2>&1 9>&- &) || PROBLEMS+=("$MANAGER did not start again: ${argv[*]}")
        fi
        address=$(leased_address)
        for ((w = 0; w < 300 && ${#address}; w++)); do  # up to 30 s: its lease on the uplink, before the rest is completed
          [[ $(ip -o address show dev "$UPLINK") != *" $address/"* ]] || break
          sleep 0.1
        done
      fi ;;
  esac
  rm -f "$BRIDGE_STATE/handed"
  complete_uplink
  [[ $MANAGER == none ]] || say "$MANAGER manages $UPLINK again"
}

# Who manages the uplink: NetworkManager or systemd-networkd (running in this network namespace and
# managing it), a DHCP client running on it, or nothing. Sets MANAGER and, for a client, MANAGER_PID.
find_manager() {
  local me pid comm word named
  local -a args
  MANAGER=none MANAGER_PID=""
  me=$(readlink /proc/self/ns/net)
  for pid in /proc/[0-9]*; do
    pid=${pid#/proc/}
    read -r comm 2>/dev/null <"/proc/$pid/comm" || continue
    case $comm in NetworkManager | systemd-network* | dhclient | dhcpcd | udhcpc) ;; *) continue ;; esac
    [[ $(readlink "/proc/$pid/ns/net" 2>/dev/null) == "$me" ]] || continue
    case $comm in
      NetworkManager)
        need_tool nmcli network-manager
        if [[ $(nmcli -g GENERAL.STATE device show "$UPLINK" 2>/dev/null) != 10\ * ]]; then MANAGER=NetworkManager; return; fi ;;
      systemd-network*)
        need_tool networkctl systemd
        if [[ $(networkctl list --no-legend --no-pager "$UPLINK" 2>/dev/null) =~ \ (configured|configuring|failed)\ *$ ]]; then
          MANAGER=systemd-networkd
          return
        fi ;;
      *)
        mapfile -d '' -t args <"/proc/$pid/cmdline" 2>/dev/null || continue
        if [[ ${args[0]:-} == *:* ]]; then  # a dhcpcd that rewrote its command line ("dhcpcd: eth0 [ip4]")
          [[ " ${args[0]} " == *" $UPLINK "* ]] || continue  # one of its helpers, or another interface's
          die "dhcpcd (pid $pid) manages $UPLINK and hides the command line it was started with, so multiip could not start it again as it was: stop it on $UPLINK first (e.g. systemctl stop dhcpcd) and give $UPLINK its address yourself, or use --mode macvlan, which leaves $UPLINK alone; nothing was changed"
        fi
        named=""
        for word in "${args[@]:1}"; do [[ $word != "$UPLINK" ]] || named=1; done
        if [[ -n $named ]]; then MANAGER=$comm MANAGER_PID=$pid; return; fi
        if [[ $comm == dhcpcd && ! " ${args[*]:1} " =~ \ [a-z0-9]+[0-9]\  ]]; then  # dhcpcd for every interface
          die "dhcpcd (pid $pid) manages every interface of this host, $UPLINK too: add 'denyinterfaces $UPLINK $BRIDGE ${PORT}*' to /etc/dhcpcd.conf and restart it, or run it for named interfaces only; nothing was changed"
        fi ;;
    esac
  done
}
# The DHCP client id the manager sends for the uplink (so our renewer sends the same and the server
# sees one client): hex, "-" for none (the server then goes by the MAC alone), empty for no DHCP.
manager_client_id() {
  local -a args=()
  local word take="" id="" leases="" mac k
  mac=$(ip -o link show dev "$UPLINK" | sed -n 's/.* link\/ether \([^ ]*\) .*/\1/p' | tr -d :)
  case $MANAGER in
    systemd-networkd)  # the whole option 61, type byte included (ff, IAID, DUID); the file goes with the lease
      sed -n 's/^CLIENTID=//p' "/run/systemd/netif/leases/$(ip -o link show dev "$UPLINK" | cut -d: -f1)" 2>/dev/null || true ;;
    NetworkManager)  # as its DHCP client reports it (01:MAC unless ipv4.dhcp-client-id says otherwise)
      nmcli -f DHCP4 device show "$UPLINK" 2>/dev/null | awk '/dhcp_client_identifier/ { gsub(":", "", $NF); print $NF }' || true ;;
    udhcpc | dhclient | dhcpcd)
      mapfile -d '' -t args <"/proc/$MANAGER_PID/cmdline"
      for word in "${args[@]}"; do  # udhcpc -x 0x3d:HEX / -x 61:HEX, or -C for none; dhclient -lf FILE
        if [[ -n $take ]]; then
          case $take in x) [[ $word != @(0x3d|61|0x3D):* ]] || id=${word#*:} ;; lf) leases=$word ;; esac
          take=""
        fi
        case $word in -x) take=x ;; -lf) take=lf ;; -C) id=- ;; esac
      done
      case $MANAGER in
        udhcpc) printf '%s\n' "${id:-01$mac}" ;;  # its default: 01 and the MAC
        dhcpcd)  # Debian's dhcpcd.conf says duid: ff, the IAID (the MAC's last 4 bytes), the DUID it keeps
          if grep -qs '^duid' /etc/dhcpcd.conf && [[ -s /var/lib/dhcpcd/duid ]]; then
            printf 'ff%s%s\n' "${mac:4}" "$(tr -d ':\n' </var/lib/dhcpcd/duid)"
          else
            printf '01%s\n' "$mac"
          fi ;;
        *)  # dhclient: the server echoes what it sent into the lease file, as 1:2:0:c6:12:0:2 or "text"
          id=$(awk '/option dhcp-client-identifier/ { sub(/^.*dhcp-client-identifier /, ""); sub(/;$/, ""); v = $0 } END { print v }' "$leases" 2>/dev/null || true)
          if [[ -z $id ]]; then echo -  # sends none unless told (Debian's dhclient.conf does not)
          elif [[ $id == \"*\" ]]; then id=${id:1:-1}; for ((k = 0; k < ${#id}; k++)); do printf '%02x' "'${id:k:1}"; done; echo
          else for word in ${id//:/ }; do printf '%02x' "0x$word"; done; echo
          fi ;;
      esac ;;
  esac
}
# The IPv4 address the manager holds a DHCP lease for on the uplink (its lease file, or what it says), or
# nothing: its addresses are static. The address's lifetime does not tell: networkd with
# KeepConfiguration=yes makes a leased address permanent, and udhcpc's stock script adds it so too.
manager_lease() {
  case $MANAGER in
    systemd-networkd) sed -n 's/^ADDRESS=//p' "/run/systemd/netif/leases/$(ip -o link show dev "$UPLINK" | cut -d: -f1)" 2>/dev/null || true ;;
    NetworkManager) nmcli -f DHCP4 device show "$UPLINK" 2>/dev/null | awk '$NF != "" && / ip_address = / { print $NF; exit }' || true ;;
    none) ;;
    *) ip -4 -o address show dev "$UPLINK" scope global | awk '{ sub(/\/.*/, "", $4); print $4; exit }' ;;  # a DHCP client's
  esac
}
# The manager lets go of the uplink, for the setup's life, without deconfiguring it.
hand_over() {
  : >"$BRIDGE_STATE/handed"  # from here on, a give-back has something to undo
  case $MANAGER in
    NetworkManager)  # unmanaged, NetworkManager leaves a device's configuration as it is
      leave_alone NetworkManager bridge "$BRIDGE $UPLINK"
      nmcli device set "$UPLINK" managed no ;;
    systemd-networkd) ;;  # after the move (let_go): told first, it would delete what it configured
    none) ;;
    *)  # the client that runs on the uplink stops without a release or its script: the address stays
      running_as "$BRIDGE_STATE/manager.client"
      ((${#PIDS[@]} == 0)) || kill -KILL "${PIDS[@]}" 2>/dev/null || true ;;
  esac
}
# After the move, systemd-networkd lets go of the uplink: once it has nothing left there to delete (the
# addresses moved with their routes), and it says "unmanaged" when it has done so.
let_go() {
  local w
  [[ $MANAGER == systemd-networkd ]] || return 0
  leave_alone systemd-networkd bridge "$BRIDGE $UPLINK"
  for ((w = 0; w < 300; w++)); do
    if [[ $(networkd_state "$UPLINK") == unmanaged ]]; then
      say "systemd-networkd let go of $UPLINK"
      return 0
    fi
    sleep 0.1
  done
  die "systemd-networkd did not let go of $UPLINK within 30 s (networkctl status $UPLINK says: $(networkd_state "$UPLINK"))"
}
# The host's lease on the bridge, renewed by a udhcpc of ours with the manager's client id (started once
# the manager has let go, so a release of the manager's own cannot cancel it). A manager that gave the
# uplink static addresses has no lease to renew.
renew_on_bridge() {
  local id address=""
  [[ ! -s $BRIDGE_STATE/lease ]] || read -r address <"$BRIDGE_STATE/lease"
  if [[ -z $address ]]; then
    say "$UPLINK has no DHCP lease ($MANAGER gave it static addresses): nothing to renew on $BRIDGE"
    return 0
  fi
  read -r id <"$BRIDGE_STATE/client-id" || id=""
  stop_renewer  # one at a time (a run again after a kill)
  printf '%s\n' udhcpc >"$BRIDGE_STATE/host.client"
  dhcp_start udhcpc host "$BRIDGE" "$address" "$id"
  wait_for_host_lease udhcpc
}
wait_for_host_lease() {  # $1 client
  local w
  for ((w = 0; w < LEASE_TIMEOUT * 10; w++)); do
    if has_lease "$1" host "$BRIDGE"; then
      say "the host's lease is renewed on $BRIDGE by $1 (pid file $BRIDGE_STATE/host.pid)"
      return 0
    fi
    sleep 0.1
  done
  die "no DHCP lease for the host on $BRIDGE within ${LEASE_TIMEOUT}s"
}
# If anything of the move fails or it is interrupted: the uplink back as it was, and to its manager.
put_back() {
  say "putting $UPLINK back as it was"
  restore_uplink
  give_back_to_manager "$BRIDGE"
  report_problems
}

COUNT=20
DHCP=auto                 # udhcpc|dhclient|dhcpcd, or auto: the first installed where this runs
LEASE_TIMEOUT=30           # seconds to wait for every lease (and the host's own)
PORT_RANGE=(1024 65535)    # ip_local_port_range inside every namespace

# Each namespace needs ARP entries (its gateway, the server if it is on the LAN) and one broadcast
# reaches every other namespace's link at once: the host-wide limits, and what this count needs of them.
HOST_LIMITS=(net/ipv4/neigh/default/gc_thresh1 net/ipv4/neigh/default/gc_thresh2
  net/ipv4/neigh/default/gc_thresh3 net/core/netdev_max_backlog)
NEED=(
  [0]=$((COUNT + 128)) [1]=$((2 * COUNT + 256)) [2]=$((2 * COUNT + 256)) [3]=$((2 * COUNT + 128))
)
check_host_limits() {
  local k short="" have_value
  if [[ -r $SYSCTL/${HOST_LIMITS[2]} && -r $SYSCTL/${HOST_LIMITS[3]} ]]; then
    for k in 2 3; do
      read -r have_value <"$SYSCTL/${HOST_LIMITS[k]}"
      if ((have_value < NEED[k])); then short+=" ${HOST_LIMITS[k]//\//.}=$have_value (needs ${NEED[k]})"; fi
    done
    [[ -z $short ]] || die "$COUNT namespaces outgrow host-wide limits:$short; ARP entries and DHCP broadcasts would be dropped. Pass --tune-host to raise them for this setup (down restores them), or raise them yourself"
  elif ((COUNT >= 500)); then
    say "cannot see the host-wide gc_thresh3 and netdev_max_backlog from here: the host's must fit $COUNT namespaces"
  fi
}

step 1/6 "preflight: root, tools, uplink, who manages it"
need_root
need_tool ip iproute2
need_tool nsenter util-linux
need_tool awk mawk
need_tool flock util-linux
take_lock
read_record
if ((${#RECORD[@]} > 0)); then  # running again: the same setup, or refuse
  [[ ${RECORD[MODE]:-bridge} == bridge ]] || die "prefix $PREFIX is set up with --mode ${RECORD[MODE]:-bridge}: take it down first to change that"
  [[ ${RECORD[COUNT]} == "$COUNT" ]] || die "prefix $PREFIX is set up with ${RECORD[COUNT]} namespaces: take it down first to change that"
  [[ -z $UPLINK || $UPLINK == "${RECORD[UPLINK]}" ]] || die "prefix $PREFIX is set up on the uplink ${RECORD[UPLINK]}, not $UPLINK: leave --uplink out (or take the setup down first to change it)"
  UPLINK=${RECORD[UPLINK]}
  if [[ $DHCP != "${RECORD[DHCP]}" ]]; then
    [[ $DHCP == auto ]] || die "prefix $PREFIX is set up with --dhcp ${RECORD[DHCP]}: take it down first to change that"
    DHCP=${RECORD[DHCP]}
  fi
fi
if [[ $DHCP == auto ]]; then
  for candidate in udhcpc dhclient dhcpcd; do  # udhcpc first: the least memory per namespace (README)
    if command -v "$candidate" >/dev/null 2>&1; then DHCP=$candidate; break; fi
  done
  [[ $DHCP != auto ]] || die "no DHCP client found: install udhcpc, isc-dhcp-client or dhcpcd-base, or use --dhcp none"
fi
case $DHCP in
  udhcpc) need_tool udhcpc udhcpc ;;
  dhclient) need_tool dhclient isc-dhcp-client ;;
  dhcpcd) need_tool dhcpcd dhcpcd-base ;;
esac
# What exists already: namespaces (one listing, not one `ip` per name); a new setup's names must be free.
declare -A have=()
while read -r name _; do have[$name]=1; done < <(ip netns list)
if ((${#RECORD[@]} == 0)); then
  for ((i = 0; i < COUNT; i++)); do
    [[ -z ${have[$PREFIX$i]:-} ]] || die "namespace $PREFIX$i exists and is not from a setup of prefix $PREFIX: choose another --prefix"
  done
fi
if ((${#RECORD[@]} > 0)); then
  [[ ${RECORD[BRIDGE]} == "$BRIDGE" ]] || die "prefix $PREFIX is already set up on bridge ${RECORD[BRIDGE]}"
fi
declare -A links=() masters=()
while read -r _ name rest; do
  name=${name%:}
  name=${name%@*}
  links[$name]=1
  if [[ $rest =~ \ master\ ([^ ]+) ]]; then masters[$name]=${BASH_REMATCH[1]}; fi
done < <(ip -o link show)
if ((${#RECORD[@]} == 0)); then
  for ((i = 0; i < COUNT; i++)); do
    [[ -z ${links[$PORT$i]:-} ]] || die "interface $PORT$i exists and is not from a setup of prefix $PREFIX: choose another --prefix"
  done
fi
find_uplink
if [[ $UPLINK == "$BRIDGE" ]]; then  # another setup already moved the uplink into this bridge: the bridge's record says which
  [[ -s $BRIDGE_STATE/uplink ]] || die "the default route already leaves by $BRIDGE, which no multiip setup recorded: name the uplink with --uplink"
  read -r UPLINK <"$BRIDGE_STATE/uplink"
  find_uplink
fi
ip -o link show dev "$UPLINK" | grep -q ' link/ether ' || die "uplink $UPLINK is not an Ethernet device"
if is_wifi "$UPLINK"; then
  die "uplink $UPLINK is a Wi-Fi station, which cannot be a bridge port (an access point takes one MAC per station): use --mode ipvlan or alias; nothing was changed"
fi
find_cloud
if [[ -n $CLOUD && -z ${MULTIIP_SKIP_CLOUD_CHECK:-} ]]; then
  die "this host is a $CLOUD instance, whose network drops frames from MACs and IPs it did not assign: --mode bridge cannot work here. Assign secondary IPs to its NIC and use --mode ipvlan or alias with --addresses (see the README); if this network does take other MACs, set MULTIIP_SKIP_CLOUD_CHECK=1; nothing was changed"
fi
UPLINK_MASTER=$(link_master "$UPLINK")
[[ -z $UPLINK_MASTER || $UPLINK_MASTER == "$BRIDGE" ]] || die "uplink $UPLINK is already a port of $UPLINK_MASTER"
if link_exists "$BRIDGE" && ! ip -d -o link show dev "$BRIDGE" | grep -q ' bridge '; then
  die "$BRIDGE exists and is not a bridge"
fi
# The bridge's record, left by a setup that is gone (its down could not finish), while the uplink is not in
# the bridge: what it says is over; a new one replaces it. (With the uplink in the bridge it is kept: it is
# what gives the uplink back.)
if [[ -d $BRIDGE_STATE ]] && ! grep -qsx "BRIDGE_STATE=$BRIDGE_STATE" "${STATE%/*}"/*/setup.env &&
  [[ ! -s $BRIDGE_STATE/uplink || $(link_master "$(<"$BRIDGE_STATE/uplink")") != "$BRIDGE" ]]; then
  say "$BRIDGE_STATE is left from a setup that is gone, and $BRIDGE does not hold its uplink: replaced"
  rm -rf "$BRIDGE_STATE"
fi
# A bridge that exists is used only if a multiip setup made it (the bridge's record says so) or it is
# empty (no address, no port; then down leaves it): Docker's, libvirt's or the host's own is never taken.
BRIDGE_MADE=""
[[ ! -s $BRIDGE_STATE/made ]] || read -r BRIDGE_MADE <"$BRIDGE_STATE/made"
if [[ -z $BRIDGE_MADE ]] && link_exists "$BRIDGE"; then
  ports=$(ip -o link show master "$BRIDGE" | awk '{ sub(/:$/, "", $2); sub(/@.*/, "", $2); printf " %s", $2 }')
  addresses=$(ip -o address show dev "$BRIDGE" scope global | awk '{ printf " %s", $4 }')
  [[ -z $ports$addresses ]] || die "bridge $BRIDGE exists and no multiip setup made it (ports:${ports:- none}; addresses:${addresses:- none}): it is not taken over; choose another --bridge"
  BRIDGE_MADE=0
  say "bridge $BRIDGE exists and is empty: the setup uses it and down leaves it in place"
fi
[[ -n $BRIDGE_MADE ]] || BRIDGE_MADE=1
if [[ -e $BRIDGE_STATE/manager ]]; then  # the bridge has the uplink already (or a move that did not finish): its record says who manages it
  read -r MANAGER <"$BRIDGE_STATE/manager"
  MANAGER_PID=""
elif [[ $UPLINK_MASTER == "$BRIDGE" ]]; then
  die "uplink $UPLINK is in $BRIDGE, and no multiip setup recorded moving it: take it out first (ip link set dev $UPLINK nomaster)"
else
  find_manager
fi
case $MANAGER in
  none) handover="nothing manages it (static); its addresses and routes move to the bridge" ;;
  NetworkManager | systemd-networkd) handover="$MANAGER manages it: it is told to leave $UPLINK, $BRIDGE and ${PORT}* alone, and a udhcpc of ours renews the host's lease on $BRIDGE" ;;
  *) handover="$MANAGER (pid ${MANAGER_PID:-?}) runs on it: it is stopped without a release, a udhcpc of ours renews the host's lease on $BRIDGE, and down starts it again as it ran" ;;
esac
[[ -e /run/network/ifstate ]] && grep -q "^$UPLINK=" /run/network/ifstate && handover+=" (configured by ifupdown)"
say "uplink $UPLINK: $handover; the namespaces take its MTU ($MTU)"
[[ $MANAGER == none ]] || need_tool udhcpc udhcpc
# Where br_netfilter is loaded (Docker does it), bridged frames go through iptables' FORWARD chain: with
# its policy DROP, the namespaces' DHCP and traffic never cross the bridge, and the setup would time out.
if [[ -r $SYSCTL/net/bridge/bridge-nf-call-iptables && $(<"$SYSCTL/net/bridge/bridge-nf-call-iptables") == 1 ]] &&
  command -v iptables >/dev/null 2>&1 && iptables -S FORWARD 2>/dev/null | grep -qx -- '-P FORWARD DROP'; then
  die "bridged frames go through iptables here (br_netfilter, as Docker sets it up) and FORWARD drops them: the namespaces would get no lease. Let the bridge through first: iptables -I FORWARD -i $BRIDGE -o $BRIDGE -j ACCEPT (or sysctl net.bridge.bridge-nf-call-iptables=0); nothing was changed"
fi
choose_family
check_host_limits

# Derived from (uplink MAC, prefix, index): locally administered, unicast, the same on every run, so
# the DHCP server (which keys leases by MAC and client id) gives a setup run again after a crash or a
# reboot the leases it had, instead of new ones from a small pool.
UPLINK_MAC=$(ip -o link show dev "$UPLINK" | sed -n 's/.* link\/ether \([^ ]*\) .*/\1/p')
seed="$UPLINK_MAC/$PREFIX" HASH=2166136261  # 32-bit FNV-1a of the pair
for ((k = 0; k < ${#seed}; k++)); do
  printf -v c '%d' "'${seed:k:1}"
  HASH=$(( ((HASH ^ c) * 16777619) & 0xffffffff ))
done
ns_mac() {  # $1 index: sets MAC
  printf -v MAC '%02x:%02x:%02x:%02x:%02x:%02x' $(( (HASH >> 24 & 0xfc) | 2 )) $(( HASH >> 16 & 255 )) \
    $(( HASH >> 8 & 255 )) $(( HASH & 255 )) $(( $1 >> 8 & 255 )) $(( $1 & 255 ))
}

step 2/6 "record the setup in $STATE, describe what $UPLINK carries"
safe_dir "$STATE"
for ((i = 0; i < COUNT; i++)); do
  client_files "$DHCP" "$PREFIX$i" "$INSIDE$i"
  printf '%s %s %s %s %s\n' "$PREFIX$i" "$INSIDE$i" "$PORT$i" "$PIDFILE" "$LEASEFILE"
done >"$STATE/namespaces"
printf '%s\n' "PREFIX=$PREFIX" "MODE=bridge" "NETNS=$NETNS" "BRIDGE=$BRIDGE" "BRIDGE_STATE=$BRIDGE_STATE" "BRIDGE_MADE=$BRIDGE_MADE" \
  "UPLINK=$UPLINK" "DHCP=$DHCP" "COUNT=$COUNT" "MANAGER=$MANAGER" "MTU=$MTU" \
  "FAMILY=$FAMILY" "DHCP6=$DHCP6" >"$STATE/setup.env.new"
mv -f "$STATE/setup.env.new" "$STATE/setup.env"
udhcpc_script "$STATE"
UNDO="\`multiip down --prefix $PREFIX\` removes what the setup made so far"
safe_dir "$BRIDGE_STATE"
if [[ ! -e $BRIDGE_STATE/manager ]]; then  # the first setup on this bridge: what the uplink carries, and who runs it
  describe "$UPLINK" >"$BRIDGE_STATE/carry.new"
  if [[ -n $MANAGER_PID ]]; then cp "/proc/$MANAGER_PID/cmdline" "$BRIDGE_STATE/manager.client"; fi
  if [[ $MANAGER == NetworkManager ]]; then nmcli -g GENERAL.CON-UUID device show "$UPLINK" >"$BRIDGE_STATE/manager.connection"; fi
  manager_client_id >"$BRIDGE_STATE/client-id"
  manager_lease >"$BRIDGE_STATE/lease"
  printf '%s\n' "$UPLINK" >"$BRIDGE_STATE/uplink"
  printf '%s\n' "$BRIDGE_MADE" >"$BRIDGE_STATE/made"
  mv -f "$BRIDGE_STATE/carry.new" "$BRIDGE_STATE/carry"
  udhcpc_script "$BRIDGE_STATE"
  printf '%s\n' "$MANAGER" >"$BRIDGE_STATE/manager"  # last: with it, the record of the bridge is whole
fi
# The uplink's manager must not take the bridge or its ports, made next (NetworkManager would start a
# "Wired connection" with DHCP on each new veth); the uplink itself is handed over in step 5. An uplink
# in the bridge from a move that did not finish stays let go (a manager given it back would take it out
# of the bridge and configure it there, under step 5's feet): step 5 puts it back first.
leave_alone "$MANAGER" setup "${PORT}*"
if [[ ! -e $BRIDGE_STATE/moved ]]; then
  if [[ $(link_master "$UPLINK") == "$BRIDGE" ]]; then leave_alone "$MANAGER" bridge "$BRIDGE $UPLINK"
  else leave_alone "$MANAGER" bridge "$BRIDGE"
  fi
fi

step 3/6 "bridge $BRIDGE (STP off, MTU $MTU)"
if ! link_exists "$BRIDGE"; then
  ip link add name "$BRIDGE" mtu "$MTU" type bridge stp_state 0 forward_delay 0
  # The bridge answers with the uplink's MAC, so the LAN and its DHCP server keep seeing the same host.
  ip link set dev "$BRIDGE" address "$UPLINK_MAC"
fi
ip link set dev "$BRIDGE" up

step 4/6 "$COUNT namespaces ${PREFIX}0..${PREFIX}$((COUNT - 1)), veths ${INSIDE}N/${PORT}N on $BRIDGE, ports ${PORT_RANGE[0]}-${PORT_RANGE[1]}"
# The namespaces' ports are isolated from one another (bridge port isolation): what one namespace sends
# reaches the uplink and the host, never the other namespaces, so a broadcast (DHCP, ARP, IPv6's DAD,
# router solicitations and MLD) is one copy, not one per namespace: 1000 namespaces asking DHCP at once
# make 1000 broadcasts on the bridge, not a million. They get no multicast from the LAN either (mDNS,
# SSDP, IPv6's router and neighbour packets of other hosts) unless they get IPv6, which needs it: each
# frame the bridge floods is copied into every namespace, whose stack drops it (with 1000 namespaces
# ~6 ms of CPU a multicast, ~8 ms a broadcast); a broadcast (ARP, DHCP) still reaches them all.
PORT_FLAGS="isolated on mcast_flood off"
[[ -z $V6 ]] || PORT_FLAGS="isolated on"
links_of() {  # $1 index: the veth pair, its inside end in the namespace with the stable MAC, the other on the bridge
  if [[ -z ${links[$PORT$1]:-} ]]; then
    ns_mac "$1"
    batch+="link add $INSIDE$1 netns $PREFIX$1 address $MAC mtu $MTU type veth peer name $PORT$1 mtu $MTU"$'\n'
    batch+="link set dev $PORT$1 alias multiip:$PREFIX:$PREFIX$1:$INSIDE$1"$'\n'
  fi
  [[ ${masters[$PORT$1]:-} == "$BRIDGE" ]] || batch+="link set dev $PORT$1 master $BRIDGE"$'\n'
  batch+="link set dev $PORT$1 type bridge_slave $PORT_FLAGS"$'\n'
  batch+="link set dev $PORT$1 addrgenmode none"$'\n'"link set dev $PORT$1 up"$'\n'
}
make_chunk() {  # $1 first, $2 last + 1: create what is missing in one `ip -batch`, then set up the insides
  local i device batch=""
  for ((i = $1; i < $2; i++)); do
    [[ -n ${have[$PREFIX$i]:-} ]] || batch+="netns add $PREFIX$i"$'\n'
    links_of "$i"
  done
  ip -batch - <<<"$batch"
  # Inside each namespace: the port range, then lo and its link up (without an IPv6 link-local
  # address, unless it gets IPv6). One nsenter -> sh -> ip per namespace, started by sh
  # (a small shell forks faster than this one), each with its ip batch as a here-document.
  local inside="" sysctl="printf '%s\\t%s\\n' ${PORT_RANGE[0]} ${PORT_RANGE[1]} >/proc/sys/net/ipv4/ip_local_port_range"
  local SYSCTL6="" ADDRGEN=none
  for ((i = $1; i < $2; i++)); do
    device=$INSIDE$i
    [[ -z $V6 ]] || ipv6_inside "$i"
    inside+="nsenter --net=/run/netns/$PREFIX$i sh -c \"$sysctl$SYSCTL6 && exec ip -batch -\" <<'BATCH'"$'\n'
    inside+="link set dev lo up"$'\n'"link set dev $device addrgenmode $ADDRGEN"$'\n'"link set dev $device up"$'\n'
    inside+="BATCH"$'\n'
  done
  sh -e <<<"$inside"
}
# In chunks of at most 100, one chunk per core at a time, as many chunks as keep every core busy to
# the end: most of this is the kernel's work and process start-up, which run in parallel. Each chunk's
# insides are set up right after it is made, while few namespaces exist yet: writing a namespace's
# sysctl costs a path lookup that grows with the number of namespaces.
# The links get no IPv6 link-local address (addrgenmode none, in its own request before they go up:
# in one request the kernel brings the link up first): otherwise every link coming up floods IPv6
# DAD, router and MLD packets to all the others, and 1000 namespaces slow down quadratically. Those
# that get IPv6 need theirs (README: what IPv6 costs a large setup).
# Each namespace is entered with nsenter --net, never `ip netns exec` or `ip -n`, which copy the
# mount table (one more mount for every namespace).
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

# Into a bridge the setup made, the uplink's IPv6 addresses skip that second DAD: they passed one on this
# link (the bridge has the uplink's MAC), and IPv6 to the host goes on without a pause. accept_dad is 0 on
# the bridge while they move in (skip_dad) and until the bridge is ready for them (wait_dad: a bridge
# whose carrier the kernel has not noted yet keeps them tentative until it has), then the kernel's
# default again, which the bridge had when it was made (dad_back; also after a move that was undone and
# is tried again); not if one of them is still in DAD or failed it on the uplink: then the bridge does its own.
skip_dad() {  # $1 from, $2 to: sets DAD_BACK
  local addresses
  DAD_BACK=""
  [[ $BRIDGE_MADE == 1 ]] || return 0
  addresses=$(ip -6 -o address show dev "$1" scope global 2>/dev/null) || true
  [[ $addresses != *" tentative "* && $addresses != *" dadfailed "* ]] || return 0
  read -r DAD_BACK 2>/dev/null </proc/sys/net/ipv6/conf/default/accept_dad || return 0
  echo 0 2>/dev/null >"/proc/sys/net/ipv6/conf/$2/accept_dad" || DAD_BACK=""
}
dad_back() {  # $1 the device skip_dad set
  [[ -z $DAD_BACK ]] || echo "$DAD_BACK" 2>/dev/null >"/proc/sys/net/ipv6/conf/$1/accept_dad" || true
}
move_in() {  # $1 ip -batch lines before the uplink goes up: the uplink into the bridge with what carry set (CARRY, CARRY6)
  skip_dad "$UPLINK" "$BRIDGE"
  ip -batch - <<<"link set dev $UPLINK master $BRIDGE"$'\n'"$CARRY$1""link set dev $UPLINK up"
  [[ -z $CARRY6 ]] || ip -6 -batch - <<<"$CARRY6"
  wait_dad "$BRIDGE"
  dad_back "$BRIDGE"
}
step 5/6 "move $UPLINK into $BRIDGE (everything it carries moves to the bridge)"
# The move is done when the bridge's mark is there and the uplink is in the bridge. The uplink in the
# bridge without a mark is a move that was killed half-way: it goes back first, then moves again.
if [[ ! -e $BRIDGE_STATE/moved || $(link_master "$UPLINK") != "$BRIDGE" ]]; then
  if [[ $(link_master "$UPLINK") == "$BRIDGE" ]]; then
    say "$UPLINK is in $BRIDGE but its move did not finish: putting it back first"
    let_go  # a manager that still had it would reconfigure it meanwhile, out of the bridge too
    restore_uplink
  fi
  ROLLBACK=put_back  # if anything here fails, the uplink goes back as it was before the script gives up
  hand_over
  carry "$BRIDGE_STATE/carry" "$UPLINK" "$BRIDGE"
  say "moving $UPLINK into $BRIDGE with everything it carries (one ip -batch)"
  move_in ""
  say "$UPLINK is in $BRIDGE, which carries its addresses, routes and rules"
  case $MANAGER in NetworkManager | systemd-networkd)  # they took router advertisements for the uplink themselves
    if [[ $(cat "/proc/sys/net/ipv6/conf/$BRIDGE/forwarding" 2>/dev/null) == 0 ]]; then
      echo 1 >"/proc/sys/net/ipv6/conf/$BRIDGE/accept_ra" && echo 1 >"/proc/sys/net/ipv6/conf/$BRIDGE/autoconf" &&
        say "router advertisements on $BRIDGE are the kernel's (they were $MANAGER's on $UPLINK): its IPv6 routes and SLAAC addresses are renewed" || true
    fi ;;
  esac
  let_go
  [[ $MANAGER == none ]] || renew_on_bridge
  : >"$BRIDGE_STATE/moved"
  ROLLBACK=""
fi

step 6/6 "DHCP: one $DHCP per namespace, in parallel${V6:+, IPv6 by SLAAC}; up to ${LEASE_TIMEOUT}s for every lease"
starting=()
for ((i = 0; i < COUNT; i++)); do
  client_pid "$DHCP" "$PREFIX$i" "$INSIDE$i"
  [[ -n $PID ]] || starting+=("$i")  # not running already
done
deadline=$((SECONDS + LEASE_TIMEOUT))
if [[ $DHCP == udhcpc ]]; then
  # Their resolver files and stale leases all at once; then the clients, by one `sh` at a time in a
  # session of its own (no process per client here; none in this script's session, which a closed
  # terminal or SSH ends), at most WINDOW of them waiting for a lease at a time: the next start as leases
  # come. A DHCP server answers no faster than it can, and a burst overflows its socket: 1000 DISCOVERs
  # at once, the lab's dnsmasq dropped hundreds, each costing its client seconds of retries.
  WINDOW=128
  dirs=() stale=()
  for i in "${starting[@]}"; do
    [[ -e /etc/netns/$PREFIX$i/resolv.conf ]] || dirs+=("/etc/netns/$PREFIX$i")
    client_files udhcpc "$PREFIX$i" "$INSIDE$i"
    stale+=("$LEASEFILE" "$LEASEFILE.naks")
  done
  ((${#dirs[@]} == 0)) || mkdir -p "${dirs[@]}"
  ((${#stale[@]} == 0)) || rm -f "${stale[@]}"
  next=0 inflight=()
  while ((next < ${#starting[@]})); do
    waiting=()
    for i in "${inflight[@]}"; do has_lease udhcpc "$PREFIX$i" "$INSIDE$i" || waiting+=("$i"); done
    inflight=("${waiting[@]}")
    commands=""
    # past the deadline, the rest start at once: every namespace has a client that keeps trying
    while ((next < ${#starting[@]})) && ((${#inflight[@]} < WINDOW || SECONDS >= deadline)); do
      i=${starting[next]}
      next=$((next + 1))
      [[ -e /etc/netns/$PREFIX$i/resolv.conf ]] || : >"/etc/netns/$PREFIX$i/resolv.conf"  # exists before its client starts
      udhcpc_command "$PREFIX$i" "$INSIDE$i"
      commands+=$COMMAND$'\n'
      inflight+=("$i")
    done
    [[ -z $commands ]] || setsid sh -e <<<"$commands"
    progress leases "$((COUNT - ${#starting[@]} + next - ${#inflight[@]}))" "$COUNT"
    ((next == ${#starting[@]})) || sleep 0.05
  done
else
  for i in "${starting[@]}"; do
    dhcp_start "$DHCP" "$PREFIX$i" "$INSIDE$i" &
    throttle $((4 * CORES))  # DHCP clients mostly wait: four per core
  done
  drain
fi
started=${#starting[@]}
say "started $started DHCP clients ($((COUNT - started)) already running)"
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
  die "no DHCP lease within ${LEASE_TIMEOUT}s for ${#pending[@]} of $COUNT namespaces:$missing (their clients keep trying). If this network drops unknown MACs (a cloud, Wi-Fi, port security; multiip doctor --probe tells), use --mode ipvlan or alias"
fi
[[ -z $V6 ]] || ipv6_ready
UNDO=""
say "ready: $COUNT namespaces ${PREFIX}0..${PREFIX}$((COUNT - 1)) on $BRIDGE via $UPLINK; see: multiip status"
