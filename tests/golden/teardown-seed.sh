#!/usr/bin/env bash
# multiip 0.1.0: undo a multiip setup: release every DHCP lease, stop the clients, remove the
# namespaces its record names with their veth pairs and the bridge br0, and give the uplink back
# its addresses and routes as they were. Without the record it works from the aliases the setup put
# on its bridge ports.
# Rendered by: multiip render --teardown
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

dhcp_release() {  # $1 client, $2 key, $3 interface: make the client send DHCPRELEASE and exit; sets PID
  local log=$STATE/$2.log
  client_pid "$@"
  case $1 in
    udhcpc) if [[ -n $PID ]]; then kill -TERM "$PID" 2>/dev/null || true; fi ;;  # started with -R: releases on exit
    dhclient | dhclient6)  # it kills what its pid file names: only a verified one (dhclient6: the DHCPv6 one)
      local pidfile=/dev/null family=-4
      [[ -z $PID ]] || pidfile=$PIDFILE
      [[ $1 != dhclient6 ]] || family=-6
      resolv_in "$2" dhclient "$family" -r -pf "$pidfile" -lf "$LEASEFILE" "$3" >>"$log" 2>&1 || true ;;
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

# The last setup on the bridge goes: the uplink out of it with all it carried (if it is in it), the bridge
# removed (if a setup made it), the uplink's manager given it back.
bridge_goes() {
  local made=1  # a record lost with the bridge's: a bridge with multiip's ports on it is multiip's
  if [[ -s $BRIDGE_STATE/host.client && $(<"$BRIDGE_STATE/host.client") != udhcpc ]]; then  # --host-dhcp: the bridge's own client
    dhcp_release "$(<"$BRIDGE_STATE/host.client")" host "$BRIDGE"
    if [[ -n $PID ]]; then wait_gone "$PID"; fi
  fi
  if [[ -n $UPLINK ]] && link_exists "$BRIDGE" && [[ $(link_master "$UPLINK") == "$BRIDGE" ]]; then restore_uplink; fi
  [[ ! -s $BRIDGE_STATE/made ]] || read -r made <"$BRIDGE_STATE/made"
  if ! link_exists "$BRIDGE"; then :
  elif [[ $made == 1 ]]; then ip link del dev "$BRIDGE"
  else say "$BRIDGE was there before the setup: left in place"
  fi
  [[ -z $UPLINK ]] || ! link_exists "$UPLINK" || give_back_to_manager ""
  BRIDGE_GOES=1
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
  [[ -z $UPLINK || $UPLINK == "${RECORD[UPLINK]}" ]] || die "prefix $PREFIX is set up on the uplink ${RECORD[UPLINK]}, not $UPLINK: leave --uplink out (or take the setup down first to change it)"
  UPLINK=${RECORD[UPLINK]}
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
MODE=${RECORD[MODE]:-bridge}  # macvlan, ipvlan: no bridge, the uplink untouched
bridge_record  # of the bridge the record names (in this network namespace)
[[ -z ${RECORD[BRIDGE_STATE]:-} ]] || BRIDGE_STATE=${RECORD[BRIDGE_STATE]}
MANAGER=${RECORD[MANAGER]:-none}
if [[ $MODE == bridge ]]; then  # the uplink's handover is the bridge's
  [[ ! -s $BRIDGE_STATE/manager ]] || read -r MANAGER <"$BRIDGE_STATE/manager"
  if [[ $MANAGER == none && ( -e $NM_BRIDGE_CONF || -e $NM_CONF ) ]]; then MANAGER=NetworkManager; fi  # records lost, the handover's files are not
  if [[ $MANAGER == none && ( -e $NETWORKD_BRIDGE_FILE || -e $NETWORKD_FILE ) ]]; then MANAGER=systemd-networkd; fi
  [[ -n $UPLINK || ! -s $BRIDGE_STATE/uplink ]] || read -r UPLINK <"$BRIDGE_STATE/uplink"
fi
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
if [[ ${RECORD[DHCP6]:--} == dhclient ]]; then  # first: what runs in the namespaces after this is DHCPv4's
  for ns in "${present[@]}"; do
    dhcp_release dhclient6 "$ns" "${INSIDE_OF[$ns]}" &
    throttle $((4 * CORES))
  done
  drain
  say "released the DHCPv6 leases of ${#present[@]} namespaces"
fi
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
# Paced: at most 20 DHCPRELEASEs every 0.1 s (200 a second). A server handles each one by itself
# (dnsmasq rewrites its whole lease file: 1.6-1.8 ms a release with 1000 leases on a 2-core machine),
# and a burst it cannot keep up with overflows its socket buffer: releases lost are addresses the
# server holds until they expire (waves of 50 each 0.05 s lost 136 of 1000 in the lab, and the next
# setup of 1000 found its pool exhausted). The server must see every release.
wave=20
for ((w = 0; w < ${#udhcpcs[@]}; w += wave)); do
  kill -TERM "${udhcpcs[@]:w:wave}" 2>/dev/null || true
  progress released "$((w + wave < ${#udhcpcs[@]} ? w + wave : ${#udhcpcs[@]}))" "${#clients[@]}"
  ((w + wave >= ${#udhcpcs[@]})) || sleep 0.1
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
    throttle 50  # at most 50 at a time: each waits for the server's answers before its release
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

LEFT_BEHIND="" BRIDGE_GOES=""
if [[ $MODE == alias ]]; then step 4/5 "remove the setup's addresses from $UPLINK"
elif [[ $MODE != bridge ]]; then step 4/5 "$UPLINK: nothing to give back (--mode $MODE)"
else step 4/5 "give ${UPLINK:-the uplink} back its addresses, routes and rules and to its manager, remove $BRIDGE"
fi
if [[ $MODE == alias ]]; then  # exactly the recorded addresses, where they still are, and the port range
  batch="" removed=0
  declare -A ON_UPLINK=()
  while read -r _ _ _ address _; do ON_UPLINK[$address]=1; done < <(ip -o address show dev "$UPLINK" 2>/dev/null || true)
  while read -r address; do
    if [[ -n $address && -n ${ON_UPLINK[$address]:-} ]]; then
      batch+="address del $address dev $UPLINK"$'\n'
      removed=$((removed + 1))
    fi
  done <"$STATE/addresses"
  [[ -z $batch ]] || ip -force -batch - <<<"$batch"
  say "removed $removed addresses from $UPLINK; its own ones stay"
  if [[ -n ${RECORD[LOCAL_ROUTE]:-} ]]; then  # the block's local route, where it still is
    family=-4
    [[ ${RECORD[LOCAL_ROUTE]} != *:* ]] || family=-6
    if [[ -n $(ip "$family" route show table local type local "${RECORD[LOCAL_ROUTE]}") ]]; then
      ip "$family" route del local "${RECORD[LOCAL_ROUTE]}" dev lo
      say "removed the local route for ${RECORD[LOCAL_ROUTE]}"
    fi
    if [[ -s $STATE/nonlocal-bind ]]; then  # this setup turned it on: another IPv6 block's setup here inherits it, or it goes back
      heir=""
      for env in "${STATE%/*}"/*/setup.env; do
        [[ $env != "$STATE/setup.env" ]] && grep -qx "NETNS=${RECORD[NETNS]:-}" "$env" && grep -q '^LOCAL_ROUTE=.*:' "$env" || continue
        heir=${env%/setup.env}
        break
      done
      if [[ -n $heir ]]; then
        cp "$STATE/nonlocal-bind" "$heir/nonlocal-bind"
        say "net.ipv6.ip_nonlocal_bind stays 1 for the setup ${heir##*/}"
      else
        cp "$STATE/nonlocal-bind" /proc/sys/net/ipv6/ip_nonlocal_bind
        say "net.ipv6.ip_nonlocal_bind back to $(<"$STATE/nonlocal-bind")"
      fi
    fi
  fi
  if [[ -s $STATE/port-range ]]; then
    cp "$STATE/port-range" /proc/sys/net/ipv4/ip_local_port_range
    say "port range back to $(tr '\t' - <"$STATE/port-range")"
  fi
elif [[ $MODE != bridge ]]; then
  say "--mode $MODE: nothing to give back, $UPLINK was left as it was"
elif link_exists "$BRIDGE"; then
  leave_alone "$MANAGER" setup "" || PROBLEMS+=("$MANAGER did not reload: remove $NM_CONF $NETWORKD_FILE and reload it")
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
    say "$BRIDGE still has other setups' ports:$others; it keeps ${UPLINK:-the uplink}, its manager's handover and the host's lease renewal for the last of them"
  else
    bridge_goes
  fi
elif [[ -e $BRIDGE_STATE/manager ]]; then  # the bridge is gone already (removed by hand): the uplink has the rest back
  leave_alone "$MANAGER" setup "" || PROBLEMS+=("$MANAGER did not reload: remove $NM_CONF $NETWORKD_FILE and reload it")
  bridge_goes
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
if ((${#PROBLEMS[@]} > 0)); then  # the records stay, for the down that finishes the job
  report_problems
  die "removed ${#present[@]} namespaces; ${#PROBLEMS[@]} things of ${UPLINK:-the uplink} could not be put back (the commands above do it): run them, or multiip down again"
fi
if [[ -n $LEFT_BEHIND ]]; then  # the record stays, for the down that finishes the job
  die "removed ${#present[@]} namespaces; $LEFT_BEHIND"
fi
[[ -z $BRIDGE_GOES ]] || rm -rf "$BRIDGE_STATE"
rm -rf "$STATE"
if [[ $MODE == alias ]]; then say "removed the setup's addresses; $UPLINK is as it was"
elif [[ $MODE == bridge ]]; then say "removed ${#present[@]} namespaces and $BRIDGE; ${UPLINK:-the uplink} is back as it was"
else say "removed ${#present[@]} namespaces and their ${MODE}s; $UPLINK was left as it was"
fi
