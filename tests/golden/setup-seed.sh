#!/usr/bin/env bash
# multiip 0.1.0: give this host 20 source IPv4 addresses, one per network namespace,
# behind the Linux bridge br0 that takes over the uplink (single-host-multiple-ips).
# Rendered by: multiip render 
# Undo with:   multiip render --teardown > teardown.sh && sudo bash teardown.sh
# Safe to run again on a host that already has this setup: every step skips what exists.
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

find_uplink() {  # sets UPLINK if empty; dies without one
  if [[ -z $UPLINK ]]; then
    UPLINK=$(ip -4 route show default | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')
    [[ -n $UPLINK ]] || die "no default route to find the uplink by: name it with --uplink"
  fi
  link_exists "$UPLINK" || die "uplink $UPLINK does not exist"
}

SYSFS=${MULTIIP_SYSFS:-/sys}  # tests point this elsewhere
DMI=${MULTIIP_DMI_DIR:-/sys/class/dmi/id}  # the firmware's DMI strings (tests point this elsewhere)
is_wifi() { [[ -e $SYSFS/class/net/$1/wireless || -e $SYSFS/class/net/$1/phy80211 ]]; }  # $1 interface
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

dhcp_start() {  # $1 client, $2 key, $3 interface[, $4 the address to ask for]
  local log=$STATE/$2.log RESOLV=/etc/netns/$2/resolv.conf
  [[ $2 != host ]] || RESOLV=$STATE/host.resolv.conf
  [[ -e $RESOLV ]] || { mkdir -p "${RESOLV%/*}" && : >"$RESOLV"; }  # exists before the client starts
  client_files "$@"
  rm -f "$LEASEFILE"
  case $1 in
    udhcpc)  # in the foreground of its own session: never blocks this script, keeps trying until it has a lease
      local enter=() how=(-R) host=""  # -R: a namespace's lease is released when its client stops
      # The host's own lease (key host) is never released: the address goes back to the uplink.
      if [[ $2 == host ]]; then how=(${4:+-r "$4"}) host=1; else enter=(nsenter --net="/run/netns/$2"); fi
      MULTIIP_RESOLV=$RESOLV MULTIIP_LEASE=$LEASEFILE MULTIIP_HOST=$host setsid "${enter[@]}" \
        udhcpc -f -i "$3" -p "$PIDFILE" -s "$STATE/udhcpc.script" "${how[@]}" -t 3 -T 1 -A 3 </dev/null >"$log" 2>&1 9>&- &
      ;;
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
save_uplink() {  # what the uplink carries and who runs it, before anything changes
  mkdir -p "$STATE"
  addresses_of "$UPLINK" >"$STATE/uplink.addr"
  routes_of "$UPLINK" >"$STATE/uplink.route"
  rules_of "$UPLINK" 4 >"$STATE/uplink.rule4"
  rules_of "$UPLINK" 6 >"$STATE/uplink.rule6"
  if [[ -n $MANAGER_PID ]]; then cp "/proc/$MANAGER_PID/cmdline" "$STATE/uplink.client"; fi
  if [[ $MANAGER == NetworkManager ]]; then nmcli -g GENERAL.CON-UUID device show "$UPLINK" >"$STATE/uplink.connection"; fi
  printf '%s\n' "$UPLINK" >"$STATE/uplink"
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

COUNT=20
DHCP=auto                 # udhcpc|dhclient|dhcpcd, or auto: the first installed where this runs
LEASE_TIMEOUT=30           # seconds to wait for every lease
PORT_RANGE=(1024 65535)    # ip_local_port_range inside every namespace

step 1/6 "preflight: root, tools, uplink"
need_root
need_tool ip iproute2
need_tool nsenter util-linux
need_tool awk mawk
need_tool flock util-linux
take_lock
read_record
if ((${#RECORD[@]} > 0)); then  # running again: the same setup, or refuse
  [[ ${RECORD[MODE]:-bridge} == bridge ]] || die "prefix $PREFIX is set up with --mode ${RECORD[MODE]:-bridge}: take it down first to change that"
  [[ ${RECORD[BRIDGE]} == "$BRIDGE" ]] || die "prefix $PREFIX is already set up on bridge ${RECORD[BRIDGE]}"
  [[ ${RECORD[COUNT]} == "$COUNT" ]] || die "prefix $PREFIX is set up with ${RECORD[COUNT]} namespaces: take it down first to change that"
  [[ -n $UPLINK ]] || UPLINK=${RECORD[UPLINK]}
  if [[ $DHCP != "${RECORD[DHCP]}" ]]; then
    [[ $DHCP == auto ]] || die "prefix $PREFIX is set up with --dhcp ${RECORD[DHCP]}: take it down first to change that"
    DHCP=${RECORD[DHCP]}
  fi
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
# What exists already: namespaces, links and their masters (one listing each, not one `ip` per name).
declare -A have=()
while read -r name _; do have[$name]=1; done < <(ip netns list)
declare -A links=() masters=()
while read -r _ name rest; do
  name=${name%:}
  name=${name%@*}
  links[$name]=1
  if [[ $rest =~ \ master\ ([^ ]+) ]]; then masters[$name]=${BASH_REMATCH[1]}; fi
done < <(ip -o link show)
if ((${#RECORD[@]} == 0)); then  # a new setup: names that exist already belong to something else
  for ((i = 0; i < COUNT; i++)); do
    [[ -z ${have[$PREFIX$i]:-} ]] || die "namespace $PREFIX$i exists and is not from a setup of prefix $PREFIX: choose another --prefix"
    [[ -z ${links[$PORT$i]:-} ]] || die "interface $PORT$i exists and is not from a setup of prefix $PREFIX: choose another --prefix"
  done
fi
find_uplink
SHARED_STATE=""  # another setup's state directory, when this one joins its bridge
if [[ $UPLINK == "$BRIDGE" ]]; then  # another setup already moved the uplink into this bridge: its record says which
  for env in "${STATE%/*}"/*/setup.env; do
    [[ -r $env ]] && grep -qx "BRIDGE=$BRIDGE" "$env" || continue
    UPLINK=$(sed -n 's/^UPLINK=//p' "$env")
    SHARED_STATE=${env%/setup.env}
    break
  done
  [[ $UPLINK != "$BRIDGE" ]] || die "the default route already leaves by $BRIDGE: name the uplink with --uplink"
  link_exists "$UPLINK" || die "uplink $UPLINK does not exist"
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
# A bridge that exists is used only if a multiip setup made it (its record says so) or it is empty (no
# address, no port; then down leaves it): Docker's, libvirt's or the host's own bridge is never taken.
BRIDGE_MADE=${RECORD[BRIDGE_MADE]:-}
if [[ -z $BRIDGE_MADE ]] && link_exists "$BRIDGE"; then
  for env in "${STATE%/*}"/*/setup.env; do
    if [[ -r $env ]] && grep -qx "BRIDGE=$BRIDGE" "$env" && grep -qx "BRIDGE_MADE=1" "$env"; then BRIDGE_MADE=1; fi
  done
  if [[ -z $BRIDGE_MADE ]]; then
    ports=$(ip -o link show master "$BRIDGE" | awk '{ sub(/:$/, "", $2); sub(/@.*/, "", $2); printf " %s", $2 }')
    addresses=$(ip -o address show dev "$BRIDGE" scope global | awk '{ printf " %s", $4 }')
    [[ -z $ports$addresses ]] || die "bridge $BRIDGE exists and no multiip setup made it (ports:${ports:- none}; addresses:${addresses:- none}): it is not taken over; choose another --bridge"
    BRIDGE_MADE=0
    say "bridge $BRIDGE exists and is empty: the setup uses it and down leaves it in place"
  fi
fi
[[ -n $BRIDGE_MADE ]] || BRIDGE_MADE=1
if [[ $UPLINK_MASTER == "$BRIDGE" ]]; then  # moved already: by this setup (its record) or the one sharing the bridge
  MANAGER=${RECORD[MANAGER]:-none} MANAGER_PID=""
  [[ -z $SHARED_STATE || ${RECORD[MANAGER]:-} ]] || MANAGER=$(sed -n 's/^MANAGER=//p' "$SHARED_STATE/setup.env")
else
  find_manager
fi
case $MANAGER in
  none) handover="nothing manages it (static); its addresses and routes move to the bridge" ;;
  NetworkManager | systemd-networkd) handover="$MANAGER manages it: it is told to leave $UPLINK, $BRIDGE and ${PORT}* alone, and a udhcpc of ours renews the host's lease on $BRIDGE" ;;
  *) handover="$MANAGER (pid ${MANAGER_PID:-?}) runs on it: it is stopped without a release, a udhcpc of ours renews the host's lease on $BRIDGE, and down starts it again as it ran" ;;
esac
[[ -e /run/network/ifstate ]] && grep -q "^$UPLINK=" /run/network/ifstate && handover+=" (configured by ifupdown)"
say "uplink $UPLINK: $handover"
[[ $MANAGER == none ]] || need_tool udhcpc udhcpc

# Each namespace's MAC is derived from (uplink MAC, prefix, index): locally administered, unicast, the
# same on every run, so the DHCP server (which keys leases by MAC and client id) gives a setup run again
# after a crash or a reboot the leases it had, instead of new ones from a small pool.
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

# Where br_netfilter is loaded (Docker does it), bridged frames go through iptables' FORWARD chain: with
# its policy DROP, the namespaces' DHCP and traffic never cross the bridge, and the setup would time out.
if [[ -r $SYSCTL/net/bridge/bridge-nf-call-iptables && $(<"$SYSCTL/net/bridge/bridge-nf-call-iptables") == 1 ]] &&
  command -v iptables >/dev/null 2>&1 && iptables -S FORWARD 2>/dev/null | grep -qx -- '-P FORWARD DROP'; then
  die "bridged frames go through iptables here (br_netfilter, as Docker sets it up) and FORWARD drops them: the namespaces would get no lease. Let the bridge through first: iptables -I FORWARD -i $BRIDGE -o $BRIDGE -j ACCEPT (or sysctl net.bridge.bridge-nf-call-iptables=0); nothing was changed"
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
  [[ -z $short ]] || die "$COUNT namespaces outgrow host-wide limits:$short; ARP entries and DHCP broadcasts would be dropped. Pass --tune-host to raise them for this setup (down restores them), or raise them yourself"
elif ((COUNT >= 500)); then
  say "cannot see the host-wide gc_thresh3 and netdev_max_backlog from here: the host's must fit $COUNT namespaces"
fi

step 2/6 "record the setup in $STATE, save what $UPLINK carries"
safe_dir "$STATE"
if [[ $UPLINK_MASTER != "$BRIDGE" ]]; then
  save_uplink
elif [[ ! -e $STATE/uplink && -n $SHARED_STATE ]]; then
  cp "$SHARED_STATE"/uplink* "$STATE/"  # whoever goes last restores it
fi
for ((i = 0; i < COUNT; i++)); do
  client_files "$DHCP" "$PREFIX$i" "$INSIDE$i"
  printf '%s %s %s %s %s\n' "$PREFIX$i" "$INSIDE$i" "$PORT$i" "$PIDFILE" "$LEASEFILE"
done >"$STATE/namespaces"
printf '%s\n' "PREFIX=$PREFIX" "MODE=bridge" "BRIDGE=$BRIDGE" "BRIDGE_MADE=$BRIDGE_MADE" \
  "UPLINK=$UPLINK" "DHCP=$DHCP" "COUNT=$COUNT" "MANAGER=$MANAGER" >"$STATE/setup.env.new"
mv -f "$STATE/setup.env.new" "$STATE/setup.env"
cat >"$STATE/udhcpc.script" <<'UDHCPC'
#!/bin/sh
# udhcpc event script written by multiip. It configures $interface in its namespace and writes the
# DNS servers to $MULTIIP_RESOLV (/etc/netns/<ns>/resolv.conf) and the lease to $MULTIIP_LEASE,
# never to /etc/resolv.conf. Addresses carry the lease's lifetime: renewed while this client runs.
# For the host's own lease on the bridge (MULTIIP_HOST=1) it only renews the address, keeping its
# flags (noprefixroute): the routes moved with the uplink, and the address stays until a new lease.
# Being torn down (the teardown leaves this mark): the namespace goes next, nothing to undo.
[ ! -e "${MULTIIP_LEASE%/*}/stopping" ] || exit 0
case "$1" in
  deconfig)
    [ -z "$MULTIIP_HOST" ] || exit 0
    ip -4 address flush dev "$interface"
    ip link set dev "$interface" up
    rm -f "$MULTIIP_LEASE"
    ;;
  bound|renew)
    flags=""
    if [ -n "$MULTIIP_HOST" ]; then
      case " $(ip -4 -o address show dev "$interface" to "$ip/32") " in *" noprefixroute "*) flags=noprefixroute ;; esac
    else
      old=$(ip -4 -o address show dev "$interface" | awk '{print $4; exit}')
      [ "$old" = "$ip/$mask" ] || ip -4 address flush dev "$interface"
    fi
    # shellcheck disable=SC2086 # flags: none or one word
    ip address replace "$ip/$mask" broadcast "${broadcast:-+}" valid_lft "${lease:-forever}" \
      preferred_lft "${lease:-forever}" $flags dev "$interface"
    if [ -z "$MULTIIP_HOST" ] && [ -n "$router" ]; then ip route replace default via "${router%% *}" dev "$interface"; fi
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
# The uplink's manager must not take the bridge or its ports, made next (NetworkManager would start a
# "Wired connection" with DHCP on each new veth); the uplink itself is handed over in step 5.
leave_alone "$MANAGER" "$BRIDGE ${PORT}*"

step 3/6 "bridge $BRIDGE (STP off)"
if ! link_exists "$BRIDGE"; then
  ip link add name "$BRIDGE" type bridge stp_state 0 forward_delay 0
  # The bridge answers with the uplink's MAC, so the LAN and its DHCP server keep seeing the same host.
  ip link set dev "$BRIDGE" address "$UPLINK_MAC"
fi
ip link set dev "$BRIDGE" up

step 4/6 "$COUNT namespaces ${PREFIX}0..${PREFIX}$((COUNT - 1)), veths ${INSIDE}N/${PORT}N on $BRIDGE, ports ${PORT_RANGE[0]}-${PORT_RANGE[1]}"
make_chunk() {  # $1 first, $2 last + 1: create what is missing in one `ip -batch`, then set up the insides
  local i device batch=""
  for ((i = $1; i < $2; i++)); do
    [[ -n ${have[$PREFIX$i]:-} ]] || batch+="netns add $PREFIX$i"$'\n'
    if [[ -z ${links[$PORT$i]:-} ]]; then
      ns_mac "$i"
      batch+="link add $INSIDE$i netns $PREFIX$i address $MAC type veth peer name $PORT$i"$'\n'
      batch+="link set dev $PORT$i alias multiip:$PREFIX:$PREFIX$i:$INSIDE$i"$'\n'
    fi
    [[ ${masters[$PORT$i]:-} == "$BRIDGE" ]] || batch+="link set dev $PORT$i master $BRIDGE"$'\n'
    batch+="link set dev $PORT$i addrgenmode none"$'\n'"link set dev $PORT$i up"$'\n'
  done
  ip -batch - <<<"$batch"
  # Inside each namespace: the port range, then lo and the veth end up (without an IPv6 link-local
  # address). One nsenter -> sh -> ip per namespace, started by sh
  # (a small shell forks faster than this one), each with its ip batch as a here-document.
  local inside="" sysctl="printf '%s\\t%s\\n' ${PORT_RANGE[0]} ${PORT_RANGE[1]} >/proc/sys/net/ipv4/ip_local_port_range"
  for ((i = $1; i < $2; i++)); do
    device=$INSIDE$i
    inside+="nsenter --net=/run/netns/$PREFIX$i sh -c \"$sysctl && exec ip -batch -\" <<'BATCH'"$'\n'
    inside+="link set dev lo up"$'\n'"link set dev $device addrgenmode none"$'\n'"link set dev $device up"$'\n'
    inside+="BATCH"$'\n'
  done
  sh -e <<<"$inside"
}
# In chunks of at most 100, one chunk per core at a time, as many chunks as keep every core busy to
# the end: most of this is the kernel's work and process start-up, which run in parallel. Each chunk's
# insides are set up right after it is made, while few namespaces exist yet: writing a namespace's
# sysctl costs a path lookup that grows with the number of namespaces.
# The veth ends get no IPv6 link-local address (addrgenmode none, in its own request before they go
# up: in one request the kernel brings the link up first): otherwise every end coming up floods IPv6
# DAD, router and MLD packets over all the bridge's ports, and 1000 namespaces slow down quadratically.
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

step 5/6 "move $UPLINK into $BRIDGE (its addresses, routes and rules move to the bridge)"
# The move is done when its mark is there (this setup's, or the one that shares the bridge). The uplink
# in the bridge without a mark is a move that was killed half-way: it goes back first, then moves again.
if [[ ! -e $STATE/moved && ! ( -n $SHARED_STATE && -e $SHARED_STATE/moved ) ]]; then
  if [[ $(link_master "$UPLINK") == "$BRIDGE" ]]; then
    say "$UPLINK is in $BRIDGE but its move did not finish: putting it back first"
    restore_uplink
  fi
  put_back() { say "putting $UPLINK back as it was"; restore_uplink; give_back_to_manager "$MANAGER" "$BRIDGE ${PORT}*"; }
  ROLLBACK=put_back  # if anything here fails, the uplink goes back as it was before the script gives up
  # The manager lets go of the uplink: for the setup's life, without deconfiguring it.
  case $MANAGER in
    NetworkManager | systemd-networkd)
      leave_alone "$MANAGER" "$BRIDGE ${PORT}* $UPLINK"
      [[ $MANAGER != NetworkManager ]] || nmcli device set "$UPLINK" managed no ;;
    none) ;;
    *) kill -KILL "$MANAGER_PID" ;;  # no release, no script: the address stays where it is
  esac
  batch="link set dev $UPLINK master $BRIDGE"$'\n' rules6=""
  while read -r line; do
    [[ -z $line ]] || batch+="address replace $line dev $BRIDGE"$'\n'"address del ${line%% *} dev $UPLINK"$'\n'
  done <"$STATE/uplink.addr"
  while read -r line; do [[ -z $line ]] || batch+="route replace $line dev $BRIDGE"$'\n'; done <"$STATE/uplink.route"
  while read -r line; do
    [[ -z $line ]] || batch+="rule del $line"$'\n'"rule add $(renamed "$line" "$UPLINK" "$BRIDGE")"$'\n'
  done <"$STATE/uplink.rule4"
  while read -r line; do
    [[ -z $line ]] || rules6+="rule del $line"$'\n'"rule add $(renamed "$line" "$UPLINK" "$BRIDGE")"$'\n'
  done <"$STATE/uplink.rule6"
  batch+="link set dev $UPLINK up"$'\n'
  ip -batch - <<<"$batch"
  [[ -z $rules6 ]] || ip -6 -batch - <<<"$rules6"
  if [[ $MANAGER != none ]]; then  # the host's lease, renewed on the bridge from now on
    printf '%s\n' udhcpc >"$STATE/host.client"
    dhcp_start udhcpc host "$BRIDGE" "$(awk '$1 !~ /:/ { sub(/\/.*/, "", $1); print $1; exit }' "$STATE/uplink.addr")"
  fi
  host_client=""
  [[ ! -s $STATE/host.client ]] || read -r host_client <"$STATE/host.client"
  if [[ -n $host_client ]]; then
    for ((w = 0; w < LEASE_TIMEOUT * 10; w++)); do
      if has_lease "$host_client" host "$BRIDGE"; then break; fi
      sleep 0.1
    done
    has_lease "$host_client" host "$BRIDGE" || die "no DHCP lease for the host on $BRIDGE within ${LEASE_TIMEOUT}s"
    say "the host's lease is renewed on $BRIDGE by $host_client (pid file $STATE/host.pid)"
  fi
  : >"$STATE/moved"
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
  die "no DHCP lease within ${LEASE_TIMEOUT}s for ${#pending[@]} of $COUNT namespaces:$missing (their clients keep trying; the teardown removes everything). If this network drops unknown MACs (a cloud, Wi-Fi, port security; multiip doctor tells), use --mode ipvlan or alias"
fi
say "ready: $COUNT namespaces ${PREFIX}0..${PREFIX}$((COUNT - 1)) on $BRIDGE via $UPLINK; see: multiip status"
