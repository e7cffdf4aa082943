#!/usr/bin/env bash
# multiip 0.1.0: undo a multiip setup: release every DHCP lease, stop the clients, remove the
# namespaces its record names with their veth pairs and the bridge br0, and give the uplink back
# its addresses and routes as they were. Without the record it works from the aliases the setup put
# on its bridge ports.
# Rendered by: multiip render --teardown
set -Eeuo pipefail
export LC_ALL=C

say() { printf 'multiip: %s\n' "$*" >&2 || true; }  # || true: a closed stderr must not stop a rollback
die() { printf 'multiip: error: %s\n' "$*" >&2 || true; exit 2; }
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
  if [[ $1 == 130 ]]; then printf 'multiip: error: interrupted during step "%s"\n' "$STEP" >&2 || true
  else printf 'multiip: error: step "%s" failed (exit %s at line %s)\n' "$STEP" "$1" "$2" >&2 || true; fi
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
STATE=/run/multiip/ns  # the setup's record, pid, lease and saved-uplink files
# shellcheck disable=SC2034 # --mode alias changes no host-wide limit
SYSCTL=${MULTIIP_SYSCTL_DIR:-/proc/sys}  # host-wide limits (tests point this elsewhere)

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
#   $STATE/setup.env   KEY=VALUE: PREFIX MODE BRIDGE (- without one) BRIDGE_MADE UPLINK DHCP COUNT MANAGER
#   $STATE/namespaces  one line per namespace: NAME INSIDE PORT PIDFILE LEASEFILE ("-": none)
# A setup's namespaces are the ones its record names, never a name pattern. Each bridge port also
# carries the alias multiip:PREFIX:NAME:INSIDE, from which the teardown rebuilds a lost record.
declare -A RECORD=()
read_record() {  # sets RECORD[KEY] from setup.env
  local key value
  RECORD=()
  [[ -r $STATE/setup.env ]] || return 0
  while IFS='=' read -r key value; do [[ -z $key ]] || RECORD[$key]=$value; done <"$STATE/setup.env"
}

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
  else unshare --mount --propagation private sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' "$STATE/host.resolv.conf" "$@"
  fi
}
client_files() {  # $1 client, $2 key, $3 interface: sets PIDFILE and LEASEFILE
  case $1 in
    udhcpc) PIDFILE=$STATE/$2.pid LEASEFILE=$STATE/$2.lease ;;
    dhclient) PIDFILE=$STATE/$2.pid LEASEFILE=$STATE/$2.leases ;;
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
  [[ -n $comm && $comm == "$1" && /proc/$PID/ns/net -ef $netns ]] || PID=""
}

# What moves: IPv4 and IPv6 addresses (not link-local ones, which the bridge makes itself from the same
# MAC, nor IPv6 ones the kernel made from router advertisements), with their flags and lifetimes; the
# routes of every table and protocol that leave by the uplink, except the kernel's own (table local,
# IPv6 link-local and prefix routes, router advertisements); the ip rules that name it (iif/oif).
addresses_of() {  # $1 device: `ip address replace` arguments, one address per line
  ip -o address show dev "$1" | awk '
    ($3 != "inet" && $3 != "inet6") || / scope (link|host) / || ($3 == "inet6" && / dynamic /) { next }
    { out = $4
      for (i = 5; i <= NF; i++) {
        if ($i == "brd" || $i == "metric") { out = out " " $i " " $(i + 1); i++ }
        else if ($i == "valid_lft" || $i == "preferred_lft") {
          v = $(i + 1); sub(/sec$/, "", v); if (v != "forever") out = out " " $i " " v; i++ }
        else if ($i ~ /^(noprefixroute|nodad|home|optimistic|mngtmpaddr)$/) out = out " " $i
      }
      print out }'
}
routes_of() {  # $1 device: `ip route replace` arguments, one route per line (IPv6 default as ::/0)
  { ip -4 -o route show table all dev "$1"; ip -6 -o route show table all dev "$1" | sed 's|^default |::/0 |'; } |
    awk '/ table local / || / proto ra / || /^fe80::\/64 / || /^(multicast|local|broadcast|anycast) / { next }
      /:.* proto kernel metric 256 / { next }  # the kernel makes an IPv6 address its prefix route
      { out = ""
        for (i = 1; i <= NF; i++) if ($i !~ /^(linkdown|dead|offload|trap|rt_offload|rt_trap|notify)$/) out = out (out == "" ? "" : " ") $i
        if (/ via /) later[++n] = out; else print out }  # routes via a gateway after those that reach it
      END { for (i = 1; i <= n; i++) print later[i] }'
}
rules_of() {  # $1 device, $2 family (4 or 6): `ip rule` arguments (pref N ...) of the rules naming it
  ip "-$2" rule show | awk -v dev="$1" '{
      named = 0
      for (i = 2; i < NF; i++) if (($i == "iif" || $i == "oif") && $(i + 1) == dev) named = 1
      if (!named) next
      sub(/:$/, "", $1); out = "pref " $1
      for (i = 2; i <= NF; i++) if ($i !~ /^\[(detached|unresolved)\]$/) out = out " " $i
      print out }'
}
renamed() {  # $1 line, $2 from, $3 to: the line with iif/oif $2 made $3
  local line=" $1 "
  line=${line// iif $2 / iif $3 }
  line=${line// oif $2 / oif $3 }
  line=${line# }
  printf '%s' "${line% }"
}

# Addresses, routes and rules to put back: the saved ones, or (record lost) what the bridge has now.
uplink_addresses() { if [[ -e $STATE/uplink ]]; then cat "$STATE/uplink.addr"; else addresses_of "$BRIDGE"; fi; }
uplink_routes() { if [[ -e $STATE/uplink ]]; then cat "$STATE/uplink.route"; else routes_of "$BRIDGE"; fi; }
uplink_rules() {  # $1 family: the rules as they name the uplink
  local line
  if [[ -e $STATE/uplink ]]; then cat "$STATE/uplink.rule$1"; return; fi
  while read -r line; do renamed "$line" "$BRIDGE" "$UPLINK" && echo; done < <(rules_of "$BRIDGE" "$1")
}

# Take the uplink out of the bridge and give it back its addresses, routes and rules, in one `ip -batch`
# (IPv6 rules in a second) so the host is without its address for as short a time as possible. An
# address that a DHCP client renewed on the bridge goes back with its lifetime from the bridge.
restore_uplink() {
  local batch="link set dev $UPLINK nomaster"$'\n' line now rules6="" address
  local -A renewed=()
  if link_exists "$BRIDGE"; then
    while read -r line; do [[ $line != *valid_lft* ]] || renewed[${line%% *}]=$line; done < <(addresses_of "$BRIDGE")
  fi
  while read -r line; do
    [[ -n $line ]] || continue
    address=${line%% *}
    [[ $line != *valid_lft* || -z ${renewed[$address]:-} ]] || line=${renewed[$address]}
    batch+="address replace $line dev $UPLINK"$'\n'
  done < <(uplink_addresses)
  while read -r line; do [[ -z $line ]] || batch+="route replace $line dev $UPLINK"$'\n'; done < <(uplink_routes)
  while read -r line; do
    [[ -z $line ]] || batch+="rule del $(renamed "$line" "$UPLINK" "$BRIDGE")"$'\n'"rule add $line"$'\n'
  done < <(uplink_rules 4)
  while read -r line; do
    [[ -z $line ]] || rules6+="rule del $(renamed "$line" "$UPLINK" "$BRIDGE")"$'\n'"rule add $line"$'\n'
  done < <(uplink_rules 6)
  while read -r line; do
    [[ -z $line ]] || batch+="address del ${line%% *} dev $BRIDGE"$'\n'
  done < <(if link_exists "$BRIDGE"; then uplink_addresses; fi)
  batch+="link set dev $UPLINK up"$'\n'
  ip -force -batch - <<<"$batch" >/dev/null 2>&1 || true  # deleting what the bridge lacks is fine
  [[ -z $rules6 ]] || ip -6 -force -batch - <<<"$rules6" >/dev/null 2>&1 || true
  [[ -z $(link_master "$UPLINK") ]] || die "could not take $UPLINK out of $BRIDGE"
  now=$(ip -o address show dev "$UPLINK")
  while read -r line; do
    [[ -z $line || $now == *" ${line%% *} "* ]] || die "could not give ${line%% *} back to $UPLINK"
  done < <(uplink_addresses)
}

add_missing() {  # add what the uplink carried and lacks now (addresses, routes, rules), leaving what it has
  local batch="" line family have
  while read -r line; do [[ -z $line ]] || batch+="address add ${line%% valid_lft*} dev $UPLINK"$'\n'; done < <(uplink_addresses)
  while read -r line; do [[ -z $line ]] || batch+="route add $line dev $UPLINK"$'\n'; done < <(uplink_routes)
  [[ -z $batch ]] || ip -force -batch - <<<"$batch" >/dev/null 2>&1 || true  # "exists" is fine
  for family in 4 6; do
    have=$(rules_of "$UPLINK" "$family")
    while read -r line; do
      [[ -z $line || $'\n'$have$'\n' == *$'\n'$line$'\n'* ]] || ip "-$family" rule add $line
    done < <(uplink_rules "$family")
  done
}

# --- The uplink's manager, recorded as MANAGER: none, NetworkManager, systemd-networkd, or the DHCP
# --- client (dhclient, dhcpcd, udhcpc) that runs on it. While the setup lives, the manager leaves the
# --- uplink, the bridge and its ports alone, and the host's lease is renewed on the bridge by a udhcpc
# --- of ours (the bridge carries the uplink's MAC, so it is the same lease); then the manager gets
# --- the uplink back as it had it. A manager is never stopped for the whole host.
NM_CONF=/run/NetworkManager/conf.d/90-multiip-$PREFIX.conf
NETWORKD_FILE=/run/systemd/network/00-multiip-$PREFIX.network
leave_alone() {  # $1 manager, $2 interfaces (globs): the manager leaves them alone; none: it has them all back
  case $1 in
    NetworkManager)
      if [[ -n $2 ]]; then
        mkdir -p "${NM_CONF%/*}"
        printf '[device-multiip-%s]\nmatch-device=interface-name:%s\nmanaged=0\n' "$PREFIX" "${2// /;interface-name:}" >"$NM_CONF"
      else rm -f "$NM_CONF"
      fi
      nmcli general reload conf ;;
    systemd-networkd)
      if [[ -n $2 ]]; then
        mkdir -p "${NETWORKD_FILE%/*}"
        printf '[Match]\nName=%s\n\n[Link]\nUnmanaged=yes\n' "$2" >"$NETWORKD_FILE"
      else rm -f "$NETWORKD_FILE"
      fi
      networkctl reload ;;
  esac
}
give_back_to_manager() {  # $1 manager, $2 what it still leaves alone: undo the uplink's handover (also a half one)
  local argv=() pid
  client_pid udhcpc host "$BRIDGE"  # ours, renewing the host's lease on the bridge: it goes, no release
  if [[ -n $PID ]]; then kill -TERM "$PID" 2>/dev/null || true; fi
  case $1 in
    NetworkManager)
      leave_alone "$1" "$2" || true
      nmcli device set "$UPLINK" managed yes || true
      if [[ -s $STATE/uplink.connection ]]; then  # active again, as it was
        nmcli --wait 30 connection up uuid "$(<"$STATE/uplink.connection")" >/dev/null || true
        add_missing  # what NetworkManager cleared when it took the uplink back but did not make itself
      fi
      say "NetworkManager manages $UPLINK again" ;;
    systemd-networkd)
      leave_alone "$1" "$2" || true
      say "systemd-networkd manages $UPLINK again" ;;
    dhclient | dhcpcd | udhcpc)
      [[ -s $STATE/uplink.client ]] || return 0
      mapfile -d '' -t argv <"$STATE/uplink.client"
      for pid in /proc/[0-9]*; do  # running already (given back before)
        [[ $(tr '\0' ' ' <"$pid/cmdline" 2>/dev/null) != "${argv[*]} " ]] || return 0
      done
      (cd / && exec setsid "${argv[@]}" </dev/null >/dev/null 2>&1 9>&- &)
      say "$1 runs on $UPLINK again, as it did: ${argv[*]}" ;;
  esac
}

dhcp_release() {  # $1 client, $2 key, $3 interface: make the client send DHCPRELEASE and exit; sets PID
  local log=$STATE/$2.log
  client_pid "$@"
  case $1 in
    udhcpc) if [[ -n $PID ]]; then kill -TERM "$PID" 2>/dev/null || true; fi ;;  # started with -R: releases on exit
    dhclient)  # it kills what its pid file names: only a verified one
      local pidfile=/dev/null
      [[ -z $PID ]] || pidfile=$PIDFILE
      resolv_in "$2" dhclient -4 -r -pf "$pidfile" -lf "$LEASEFILE" "$3" >>"$log" 2>&1 || true ;;
    dhcpcd) resolv_in "$2" dhcpcd -4 -k "$3" >>"$log" 2>&1 || true ;;
  esac
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

step 1/5 "preflight: root, tools, what the record names"
need_root
need_tool ip iproute2
need_tool nsenter util-linux
need_tool awk mawk
need_tool flock util-linux
take_lock
read_record
declare -A INSIDE_OF=() PORT_OF=()
NAMESPACES=()
if ((${#RECORD[@]} > 0)); then
  BRIDGE=${RECORD[BRIDGE]}
  [[ -n $UPLINK ]] || UPLINK=${RECORD[UPLINK]}
  if [[ -r $STATE/namespaces ]]; then
    while read -r ns inside port _; do
      NAMESPACES+=("$ns")
      INSIDE_OF[$ns]=$inside PORT_OF[$ns]=$port
    done <"$STATE/namespaces"
  fi
else  # the record is gone: the setup's bridge ports carry alias multiip:PREFIX:NAMESPACE:INSIDE
  while read -r _ port rest; do
    port=${port%:}
    port=${port%@*}
    [[ $rest =~ \ alias\ multiip:([^: ]+):([^: ]+):([^: ]+)$ && ${BASH_REMATCH[1]} == "$PREFIX" ]] || continue
    ns=${BASH_REMATCH[2]}
    NAMESPACES+=("$ns")
    INSIDE_OF[$ns]=${BASH_REMATCH[3]} PORT_OF[$ns]=$port
    if [[ $rest =~ \ master\ ([^ ]+) ]]; then BRIDGE=${BASH_REMATCH[1]}; fi
  done < <(ip -o link show)
fi
MANAGER=${RECORD[MANAGER]:-none}
MODE=${RECORD[MODE]:-bridge}  # macvlan, ipvlan: no bridge, the uplink untouched
if [[ $MANAGER == none && -e $NM_CONF ]]; then MANAGER=NetworkManager; fi  # record lost, the handover's file is not
if [[ $MANAGER == none && -e $NETWORKD_FILE ]]; then MANAGER=systemd-networkd; fi
declare -A OURS=()
for ns in "${NAMESPACES[@]}"; do [[ ${PORT_OF[$ns]} == - ]] || OURS[${PORT_OF[$ns]}]=1; done
foreign_ports() {  # sets FOREIGN to the bridge's ports that are not this setup's veths
  local name
  FOREIGN=()
  while read -r _ name _; do
    name=${name%:}
    name=${name%@*}
    [[ -n ${OURS[$name]:-} ]] || FOREIGN+=("$name")
  done < <(ip -o link show master "$BRIDGE")
}
if [[ $MODE == bridge ]] && link_exists "$BRIDGE" && [[ -z $UPLINK ]]; then
  foreign_ports  # record lost: the uplink is the bridge's port that is not one of our veths
  UPLINK=${FOREIGN[0]:-}
fi
if ((${#RECORD[@]} == 0 && ${#NAMESPACES[@]} == 0)); then  # no record, no port of ours: nothing here is ours
  # A setup stopped before its record was written changed nothing but its own directory.
  if [[ -d $STATE ]]; then rm -rf "$STATE"; fi
  say "no setup of prefix $PREFIX here (no record in $STATE, no bridge port named multiip:$PREFIX:...): nothing to do"
  exit 0
fi
present=()
for ns in "${NAMESPACES[@]}"; do [[ ! -e /run/netns/$ns ]] || present+=("$ns"); done
if [[ $MODE == alias ]]; then
  say "--mode alias: $(wc -l <"$STATE/addresses") addresses on $UPLINK${RECORD[LABEL]:+ (label ${RECORD[LABEL]})}, no namespaces"
elif [[ $MODE == bridge ]]; then
  say "found ${#present[@]} of ${#NAMESPACES[@]} namespaces, bridge ${BRIDGE}$(link_exists "$BRIDGE" || echo ' (absent)'), uplink ${UPLINK:-(none)} (managed by: $MANAGER)"
else
  say "found ${#present[@]} of ${#NAMESPACES[@]} namespaces, each with a $MODE on ${UPLINK:-(none)}, which stays as it is"
fi
safe_dir "$STATE"

step 2/5 "release DHCP leases and stop the clients"
map_namespace_pids
client_of() {  # $1 namespace, $2 interface: sets CLIENT and PID, from its pid file or what runs there
  local c pid comm
  CLIENT=""
  for c in ${RECORD[DHCP]:-}; do
    client_pid "$c" "$1" "$2"
    if [[ -n $PID ]]; then CLIENT=$c; return 0; fi
  done
  for pid in ${NS_PIDS[$1]:-}; do  # no pid file: what runs in the namespace
    alive "$pid" && read -r comm 2>/dev/null <"/proc/$pid/comm" || continue
    case $comm in udhcpc | dhclient | dhcpcd) CLIENT=$comm PID=$pid; return 0 ;; esac
  done
}
clients=() udhcpcs=() orphans=()
for ns in "${present[@]}"; do
  CLIENT=""  # every client runs inside its namespace: none runs in one where nothing runs
  [[ -z ${NS_PIDS[$ns]:-} ]] || client_of "$ns" "${INSIDE_OF[$ns]}"
  if [[ -z $CLIENT && ${RECORD[DHCP]:-} == udhcpc ]]; then  # its client died (a crash): its lease may still be held
    client_files udhcpc "$ns" "${INSIDE_OF[$ns]}"
    lease=$(sed -n 's|^ipv4=||p' "$LEASEFILE" 2>/dev/null || true)
    [[ -z $lease ]] || orphans+=("$ns ${INSIDE_OF[$ns]} $lease")
  elif [[ -z $CLIENT && ${RECORD[DHCP]:-} == dhclient ]]; then  # dhclient -r releases from its lease file alone
    dhcp_release dhclient "$ns" "${INSIDE_OF[$ns]}" &
    throttle $((4 * CORES))
  fi
  [[ -n $CLIENT ]] || continue
  clients+=("$PID")
  if [[ $CLIENT == udhcpc ]]; then
    udhcpcs+=("$PID")  # started with -R: it sends its DHCPRELEASE when it exits on SIGTERM
  else
    dhcp_release "$CLIENT" "$ns" "${INSIDE_OF[$ns]}" &
    throttle $((4 * CORES))  # DHCP clients mostly wait: four per core
  fi
done
: >"$STATE/stopping"  # udhcpc's event script skips its deconfig work when it sees this
# In waves of 50: a burst of hundreds of DHCPRELEASEs overflows a DHCP server's socket buffer
# (dnsmasq in the lab lost 132 of 300), and the server must see every release.
for ((w = 0; w < ${#udhcpcs[@]}; w += 50)); do
  kill -TERM "${udhcpcs[@]:w:50}" 2>/dev/null || true
  wait_gone "${udhcpcs[@]:w:50}"
  progress released "$((w + 50 < ${#udhcpcs[@]} ? w + 50 : ${#udhcpcs[@]}))" "${#clients[@]}"
  sleep 0.05
done
drain
wait_gone "${clients[@]}"
progress released "${#clients[@]}" "${#clients[@]}"
if ((${#orphans[@]} > 0)); then  # a lease whose client is gone: ask for it once more, then release it (-q -R)
  say "releasing ${#orphans[@]} leases whose clients are gone"
  # udhcpc -R releases when it gets SIGTERM (with -q it quits without a release): once bound, its event
  # script sends it one. The release goes out from the leased address, so that is put back first.
  printf '#!/bin/sh\n[ "$1" != bound ] || kill -TERM "$PPID"\n' >"$STATE/release.script"
  chmod 0755 "$STATE/release.script"
  for orphan in "${orphans[@]}"; do
    read -r ns dev lease <<<"$orphan"
    nsenter --net="/run/netns/$ns" sh -c 'ip address replace "$1" dev "$2" &&
      exec udhcpc -f -R -n -i "$2" -r "${1%/*}" -s "$3" -t 2 -T 1 -A 1' sh "$lease" "$dev" "$STATE/release.script" \
      </dev/null >/dev/null 2>&1 &
    throttle 50  # in waves, as above
  done
  drain
fi

step 3/5 "stop anything else running in the namespaces, then remove them"
((${#clients[@]} == 0)) || map_namespace_pids  # what step 2 found still holds if it stopped nothing
left=()
for ns in "${present[@]}"; do
  # shellcheck disable=SC2206 # one pid per word
  left+=(${NS_PIDS[$ns]:-})
done
if ((${#left[@]} > 0)); then
  say "stopping ${#left[@]} processes still in the namespaces: ${left[*]}"
  kill -TERM "${left[@]}" 2>/dev/null || true
  wait_gone "${left[@]}"
  kill -KILL "${left[@]}" 2>/dev/null || true
fi
batch=""
for ns in "${present[@]}"; do batch+="netns del $ns"$'\n'; done
[[ -z $batch ]] || ip -force -batch - <<<"$batch"
# The kernel frees the namespaces, and with them the veths, in the background, many at once (deleting
# 1000 veths one by one takes 20 s): wait for the bridge ends to go, then delete any still held.
ports_left() {  # sets LEFT to this setup's bridge ends that still exist
  local name
  LEFT=()
  while read -r _ name _; do
    name=${name%:}
    name=${name%@*}
    [[ -z ${OURS[$name]:-} ]] || LEFT+=("$name")
  done < <(ip -o link show)
}
for ((w = 0; w < 100; w++)); do
  ports_left
  ((${#LEFT[@]} > 0)) || break
  sleep 0.1
done
if ((${#LEFT[@]} > 0)); then
  batch=""
  for name in "${LEFT[@]}"; do batch+="link del dev $name"$'\n'; done
  ip -force -batch - <<<"$batch"
fi
progress removed "${#present[@]}" "${#present[@]}"

LEFT_BEHIND=""
if [[ $MODE == alias ]]; then step 4/5 "remove the setup's addresses from $UPLINK"
else step 4/5 "give ${UPLINK:-the uplink} back its addresses, routes and rules and to its manager, remove $BRIDGE"
fi
if [[ $MODE == alias ]]; then  # exactly the recorded addresses, where they still are, and the port range
  batch="" removed=0
  declare -A ON_UPLINK=()
  while read -r _ _ _ address _; do ON_UPLINK[$address]=1; done < <(ip -4 -o address show dev "$UPLINK" 2>/dev/null || true)
  while read -r address; do
    if [[ -n $address && -n ${ON_UPLINK[$address]:-} ]]; then
      batch+="address del $address dev $UPLINK"$'\n'
      removed=$((removed + 1))
    fi
  done <"$STATE/addresses"
  [[ -z $batch ]] || ip -force -batch - <<<"$batch"
  say "removed $removed addresses from $UPLINK; its own ones stay"
  if [[ -s $STATE/port-range ]]; then
    cp "$STATE/port-range" /proc/sys/net/ipv4/ip_local_port_range
    say "port range back to $(tr '\t' - <"$STATE/port-range")"
  fi
elif [[ $MODE != bridge ]]; then
  say "--mode $MODE: nothing to give back, $UPLINK was left as it was"
elif link_exists "$BRIDGE"; then
  if [[ -s $STATE/host.client ]]; then  # --host-dhcp: the bridge's own client
    dhcp_release "$(<"$STATE/host.client")" host "$BRIDGE"
    if [[ -n $PID ]]; then wait_gone "$PID"; fi
    client_files "$(<"$STATE/host.client")" host "$BRIDGE"
    rm -f "$LEASEFILE"
  fi
  foreign_ports
  others="" strangers=""  # other ports: another multiip setup's (alias multiip:...), or someone else's
  for name in "${FOREIGN[@]}"; do
    [[ $name != "$UPLINK" ]] || continue
    others+=" $name"
    [[ $(ip -o link show dev "$name") == *" alias multiip:"* ]] || strangers+=" $name"
  done
  if [[ -n $strangers ]]; then
    LEFT_BEHIND="$BRIDGE and ${UPLINK:-the uplink} are left in place: $BRIDGE has ports that are not multiip's:$strangers (run down again once they are gone)"
  elif [[ -n $others ]]; then
    say "$BRIDGE still has other setups' ports:$others; leaving it and ${UPLINK:-the uplink} to the last of them"
  else
    [[ -z $UPLINK ]] || restore_uplink
    if [[ ${RECORD[BRIDGE_MADE]:-1} == 1 ]]; then ip link del dev "$BRIDGE"
    else say "$BRIDGE was there before the setup: left in place"
    fi
    [[ -z $UPLINK ]] || give_back_to_manager "$MANAGER" ""
  fi
elif [[ -n $UPLINK ]] && link_exists "$UPLINK" && [[ -e $STATE/uplink ]]; then
  restore_uplink  # bridge already gone: make sure the uplink has its addresses
  give_back_to_manager "$MANAGER" ""
fi

LIMITS=${STATE%/*}/host-limits  # what --tune-host raised: back as it was when the last setup that did goes
if grep -qxF "$PREFIX" "$LIMITS.users" 2>/dev/null; then
  grep -vxF "$PREFIX" "$LIMITS.users" >"$LIMITS.users.new" || true
  mv -f "$LIMITS.users.new" "$LIMITS.users"
  if [[ -s $LIMITS.users ]]; then
    say "host-wide limits stay raised for the setups $(tr '\n' ' ' <"$LIMITS.users")"
  else
    while read -r key value; do
      [[ -z $key ]] || printf '%s\n' "$value" >"$SYSCTL/$key"
    done <"$LIMITS"
    say "host-wide limits restored: $(tr '\n' ' ' <"$LIMITS")"
    rm -f "$LIMITS" "$LIMITS.users"
  fi
fi

step 5/5 "remove /etc/netns entries, lease and state files"
files=() dirs=()
for ns in "${NAMESPACES[@]}"; do
  client_files dhcpcd "$ns" "${INSIDE_OF[$ns]}"  # dhcpcd keeps its own files per interface
  files+=("/etc/netns/$ns/resolv.conf" "$LEASEFILE" "$PIDFILE")
  dirs+=("/etc/netns/$ns")
done
if ((${#files[@]} > 0)); then
  rm -f -- "${files[@]}"
  rmdir -- "${dirs[@]}" 2>/dev/null || true  # kept where someone put other files there
fi
if [[ -n $LEFT_BEHIND ]]; then  # the record stays, for the down that finishes the job
  die "removed ${#present[@]} namespaces; $LEFT_BEHIND"
fi
rm -rf "$STATE"
if [[ $MODE == alias ]]; then say "removed the setup's addresses; $UPLINK is as it was"
elif [[ $MODE == bridge ]]; then say "removed ${#present[@]} namespaces and $BRIDGE; ${UPLINK:-the uplink} is back as it was"
else say "removed ${#present[@]} namespaces and their ${MODE}s; $UPLINK was left as it was"
fi
