#!/usr/bin/env bash
# multiip 0.1.0: give this host 300 source IPv4 addresses, one per network namespace,
# behind the Linux bridge brx that takes over the uplink (single-host-multiple-ips).
# Rendered by: multiip render --count 300 --prefix lab --bridge brx --uplink ens3 --dhcp none --address 198.18.10.1/15 --gateway 198.18.0.1 --port-range 2000-60000 --bridge-tool brctl
# Undo with:   multiip render --teardown --prefix lab --bridge brx --uplink ens3 > teardown.sh && sudo bash teardown.sh
# Safe to run again on a host that already has this setup: every step skips what exists.
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

COUNT=300
DHCP=none                 # auto|udhcpc|dhclient|dhcpcd|none (auto: picked where this runs)
ADDRESS=198.18.10.1       # namespace i gets ADDRESS + i
PREFIXLEN=15
GATEWAY=198.18.0.1  # empty: the uplink's gateway
PORT_RANGE=(2000 60000)    # ip_local_port_range inside every namespace
BRIDGE_TOOL=brctl         # ip: iproute2 only; brctl: the seed's brctl commands
HOST_MODE=move          # move: the uplink's addresses and routes move to the bridge; dhcp: the bridge asks DHCP

step 1/8 "preflight: root, tools, uplink"
need_root
need_tool ip iproute2
need_tool nsenter util-linux
need_tool awk mawk
[[ $BRIDGE_TOOL != brctl ]] || need_tool brctl bridge-utils
load_state
[[ -z $SAVED_BRIDGE || $SAVED_BRIDGE == "$BRIDGE" ]] || die "prefix $PREFIX is already set up on bridge $SAVED_BRIDGE"
[[ $DHCP != auto || -z $SAVED_DHCP ]] || DHCP=$SAVED_DHCP  # running again: keep the client it chose
if [[ $DHCP == auto ]]; then
  for candidate in udhcpc dhclient dhcpcd; do  # udhcpc first: 1.4 MiB per namespace against dhclient's 3.6
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
if [[ -z $UPLINK ]]; then
  UPLINK=$(ip -4 route show default | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')
  [[ -n $UPLINK ]] || die "no default route to find the uplink by: name it with --uplink"
fi
[[ $UPLINK != "$BRIDGE" ]] || die "the default route already leaves by $BRIDGE: name the uplink with --uplink"
link_exists "$UPLINK" || die "uplink $UPLINK does not exist"
ip -o link show dev "$UPLINK" | grep -q ' link/ether ' || die "uplink $UPLINK is not an Ethernet device"
UPLINK_MASTER=$(link_master "$UPLINK")
[[ -z $UPLINK_MASTER || $UPLINK_MASTER == "$BRIDGE" ]] || die "uplink $UPLINK is already a port of $UPLINK_MASTER"
if link_exists "$BRIDGE" && ! ip -d -o link show dev "$BRIDGE" | grep -q ' bridge '; then
  die "$BRIDGE exists and is not a bridge"
fi

step 2/8 "save $UPLINK's addresses and routes to $STATE"
if [[ $UPLINK_MASTER != "$BRIDGE" ]]; then save_uplink; fi
printf 'UPLINK=%s\nBRIDGE=%s\nDHCP=%s\nHOST_MODE=%s\nCOUNT=%s\n' "$UPLINK" "$BRIDGE" "$DHCP" "$HOST_MODE" "$COUNT" >"$STATE/setup.env"
if [[ $DHCP == udhcpc ]]; then
  cat >"$STATE/udhcpc.script" <<'UDHCPC'
#!/bin/sh
# udhcpc event script written by multiip. It configures $interface in its namespace and writes the
# DNS servers to $MULTIIP_RESOLV (/etc/netns/<ns>/resolv.conf) and the lease to $MULTIIP_LEASE,
# never to /etc/resolv.conf.
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
if [[ -z $GATEWAY ]]; then
  GATEWAY=$(awk '$1 == "default" { for (i = 2; i < NF; i++) if ($i == "via") { print $(i + 1); exit } }' "$STATE/uplink.route")
  [[ -n $GATEWAY ]] || say "$UPLINK has no default gateway: the namespaces get no default route"
fi

step 3/8 "bridge $BRIDGE (STP off)"
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

step 4/8 "$COUNT network namespaces ${PREFIX}0..${PREFIX}$((COUNT - 1))"
declare -A have=()
while read -r name _; do have[$name]=1; done < <(ip netns list)
batch=""
for ((i = 0; i < COUNT; i++)); do
  [[ -n ${have[$PREFIX$i]:-} ]] || batch+="netns add $PREFIX$i"$'\n'
done
[[ -z $batch ]] || ip -batch - <<<"$batch"
progress namespaces "$COUNT" "$COUNT"

step 5/8 "veth pairs ${INSIDE}N (inside) / ${PORT}N (on $BRIDGE)"
declare -A links=() masters=()
while read -r _ name rest; do
  name=${name%:}
  name=${name%@*}
  links[$name]=1
  if [[ $rest =~ \ master\ ([^ ]+) ]]; then masters[$name]=${BASH_REMATCH[1]}; fi
done < <(ip -o link show)
batch=""
for ((i = 0; i < COUNT; i++)); do
  [[ -n ${links[$PORT$i]:-} ]] || batch+="link add $INSIDE$i netns $PREFIX$i up type veth peer name $PORT$i"$'\n'
done
[[ -z $batch ]] || ip -batch - <<<"$batch"
batch=""
for ((i = 0; i < COUNT; i++)); do
  if [[ ${masters[$PORT$i]:-} != "$BRIDGE" ]]; then
    if [[ $BRIDGE_TOOL == brctl ]]; then
      brctl addif "$BRIDGE" "$PORT$i"
    else
      batch+="link set dev $PORT$i master $BRIDGE"$'\n'
    fi
  fi
  batch+="link set dev $PORT$i up"$'\n'
done
ip -batch - <<<"$batch"
progress veths "$COUNT" "$COUNT"

step 6/8 "inside each namespace: lo up, ip_local_port_range ${PORT_RANGE[0]}-${PORT_RANGE[1]}, static addresses"
configure_namespace() {  # $1 = i
  local i=$1 batch="link set dev lo up"$'\n'"link set dev $INSIDE$1 up"$'\n'
  local n ip
  n=$(( ADDRESS_INT + i ))
  printf -v ip '%d.%d.%d.%d' $(( (n >> 24) & 255 )) $(( (n >> 16) & 255 )) $(( (n >> 8) & 255 )) $(( n & 255 ))
  batch+="address replace $ip/$PREFIXLEN dev $INSIDE$i"$'\n'
  [[ -z $GATEWAY ]] || batch+="route replace default via $GATEWAY dev $INSIDE$i"$'\n'
  nsenter --net="/run/netns/$PREFIX$i" bash -c \
    'printf "%s\t%s\n" "$1" "$2" >/proc/sys/net/ipv4/ip_local_port_range && exec ip -batch -' \
    _ "${PORT_RANGE[0]}" "${PORT_RANGE[1]}" <<<"$batch"
}
IFS=. read -r a b c d <<<"$ADDRESS"
ADDRESS_INT=$(( (a << 24) | (b << 16) | (c << 8) | d ))
for ((i = 0; i < COUNT; i++)); do
  configure_namespace "$i" &
  throttle
  if (( (i + 1) % 100 == 0 )); then progress configured "$((i + 1))" "$COUNT"; fi
done
drain
progress configured "$COUNT" "$COUNT"

step 7/8 "move $UPLINK into $BRIDGE (its addresses and routes move to the bridge)"
if [[ $(link_master "$UPLINK") != "$BRIDGE" ]]; then
  put_back() { say "putting $UPLINK back as it was"; restore_uplink; }
  ROLLBACK=put_back  # if anything here fails, the uplink goes back as it was before the script gives up
  [[ $BRIDGE_TOOL != brctl ]] || brctl addif "$BRIDGE" "$UPLINK"
  batch="link set dev $UPLINK master $BRIDGE"$'\n'
  while read -r line; do [[ -z $line ]] || batch+="address replace $line dev $BRIDGE"$'\n'; done <"$STATE/uplink.addr"
  while read -r line; do [[ -z $line ]] || batch+="route replace $line dev $BRIDGE"$'\n'; done <"$STATE/uplink.route"
  while read -r line; do [[ -z $line ]] || batch+="address del ${line%% *} dev $UPLINK"$'\n'; done <"$STATE/uplink.addr"
  batch+="link set dev $UPLINK up"$'\n'
  ip -batch - <<<"$batch"
  ROLLBACK=""
fi

step 8/8 "no DHCP (--dhcp none)"
say "ready: $COUNT namespaces ${PREFIX}0..${PREFIX}$((COUNT - 1)) on $BRIDGE via $UPLINK; see: multiip status --prefix lab --bridge brx --uplink ens3"
