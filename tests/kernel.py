"""Run commands inside a User-mode Linux kernel: a kernel of its own, with the modules this machine's lacks.

This machine's kernel may lack ipvlan or 8021q (vlan). Debian's ``user-mode-linux`` package (Linux 6.1 as a
host program, ``/usr/bin/linux.uml``) has them, with veth, bridge, macvlan and the rest, as modules under
``/usr/lib/uml/modules/<version>``; ``kmod`` (modprobe) loads them inside. The Makefile's deps and .ci/run
install both Debian packages; :func:`ensure_packages` (called by :meth:`UML.start`) installs them too when they
are missing (as root, apt-get). On a host whose CPU Debian 12's UML cannot run on (AMX: UMLHostUnsupported),
:func:`booted` takes Debian unstable's instead (:func:`fetch_sid`: downloaded, never installed).

Usage (a pytest module boots once, its tests share the boot; ``reset()`` between them if they must)::

    @pytest.fixture(scope="module")
    def box() -> Iterator[UML]:
        with UML() as b:
            yield b

    def test_ipvlan(box: UML) -> None:
        r = box.sh("ip link add d0 type dummy && ip link add link d0 name i0 type ipvlan mode l2 && ip -d link")
        assert r.returncode == 0 and "ipvlan" in r.stdout

    r = run_in_uml(["uname", "-r"], timeout=30)  # one boot, one command, power off

``run`` is subprocess.run(text=True, capture_output=True) inside: root, DEFAULT_ENV (PATH with /usr/sbin and
/sbin, HOME=/tmp, ...) updated by ``env``, cwd the repository (read-only: this machine's tree), stdin
/dev/null or ``input``; a missing program is exit status 127, a missing cwd 126.

A boot (INIT below is PID 1):

* the root filesystem is this machine's own ``/`` through hostfs, mounted read-only, under an overlay whose
  upper layer is a tmpfs: inside, everything is writable and every write stays in that tmpfs;
* fresh proc, sysfs, devtmpfs (+ /dev/fd, /dev/std*, /dev/pts, /dev/shm), tmpfs on /run, /run/netns (so
  ``ip netns add`` works), /tmp (this machine's /tmp is not seen) and /etc/netns;
* modprobe (io/bin/modprobe, first in PATH, and the kernel's own module loader) reads the UML modules, so
  ``ip link add ... type ipvlan`` loads its module; ``modules`` are loaded at boot;
* UML has no network device: everything happens in network namespaces inside it, and this machine's
  network is not touched;
* the channel: one host directory, the scratch directory's ``io/``, mounted read-write (hostfs) at GUEST_IO,
  the only place where the guest writes on the host. The host writes each command as ``N.cmd`` (a bash file:
  argv, env, cwd, timeout) and its ``N.in``; PID 1 runs it as a job of its own with stdout and stderr in
  ``N.out`` and ``N.err`` (hostfs writes through to the host, byte-exact: no tty in the way), and writes
  ``N.rc``. PID 1 polls for ``N.cmd`` every 10 ms, the host for ``N.rc``. Chosen over the console (a tty:
  CR/LF, echo, kernel messages in the stream, markers to parse) and mconsole (no output back).

Times on this 2-core machine (another developer's tests running): boot to the first command 2.0 s (1.4 s is
the kernel's own start, most of it a RAID6 benchmark built in); one command 0.1 s on top of its own time;
power off 0.1 s. UML has one CPU (CONFIG_NR_CPUS=1) and ``mem`` (512M to 4G) does not change these times.
UML runs pinned to one host CPU (``pin``, taskset): its ptrace round trips between host processes then
stay on one CPU, and fork, exec and syscalls are 3 to 4 times faster (fork 11 ms instead of 45; one
``ip link show`` 35 ms instead of 120; 100 ``ip netns add`` + ``ip link add veth ... netns`` 5.8 s, with
``ip -batch`` 0.5 s). A fork and an exec are UML's dear operations: batch them.

Works inside: netns, veth, bridge, macvlan, ipvlan (l2), vlan (8021q), dummy, macvtap, traffic across all of
these; ``ip netns exec``, ``nsenter``, ``unshare --mount``; dnsmasq with udhcpc, dhclient and dhcpcd;
arping; Python sockets, epoll, AF_PACKET, IPv6; writing /proc/sys (net.core.somaxconn, ip_local_port_range,
nf_conntrack_max, fs.nr_open, ...) in the root namespace and in others; ulimit -n 1000000; the lab and a
setup: ``multiip lab up``, ``lab exec -- multiip doctor`` (ipvlan: yes), ``run --mode ipvlan --count 4``,
``status``, ``down``, ``lab down``: 30 s in all.
Does not: nft tables of families ip, ip6, inet, netdev (the kernel has only NF_TABLES_BRIDGE: "Operation
not supported"), so not the lab's cloud-like LAN (a netdev table); a bridge moved between namespaces
(as on any kernel); iptables (not installed here).

Cleanup: UML and its helper processes run in a process group of their own, killed by its id; a supervisor
shell (setpriv --pdeathsig) kills that group and removes the scratch directory when the Python thread that
started it dies, whatever killed it (UML itself, SIGKILLed, leaves two helper processes behind). close()
powers the guest off, kills the group and removes the scratch directory, with UML's ``uml_dir`` (pid file,
mconsole socket) and its ``console.log`` (the guest's console; MULTIIP_UML_KEEP=1 keeps them all). UML's
memory is an unlinked file in /dev/shm: nothing to remove.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GUEST_IO = "/run/uml/io"  # the host's scratch io/ directory, as the guest sees it
MODULES = ("veth", "bridge", "macvlan", "ipvlan", "8021q", "ipv6")  # the rest load when first used
DEBS = ("user-mode-linux", "kmod", "patchelf")
SID_DIR = Path(os.environ.get("MULTIIP_UML_SID_DIR", "/var/cache/multiip/uml-sid"))  # fetch_sid()'s


@dataclass(frozen=True)
class Kernel:
    """A UML to boot: its program, its modules (a directory per version), and what it is."""

    binary: Path
    modules: Path
    name: str


DEBIAN = Kernel(Path("/usr/bin/linux.uml"), Path("/usr/lib/uml/modules"), "Debian 12's user-mode-linux (Linux 6.1)")
SID = Kernel(SID_DIR / "linux.uml", SID_DIR / "root/usr/lib/uml/modules", "Debian unstable's user-mode-linux")
GUEST_PATH = "/run/uml/io/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_ENV = {
    "PATH": GUEST_PATH,
    "HOME": "/tmp",
    "USER": "root",
    "LOGNAME": "root",
    "SHELL": "/bin/bash",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "TMPDIR": "/tmp",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}
KILL_GRACE = 5  # seconds between the guest's TERM and KILL of a command that outlived its timeout

# PID 1 inside UML. The kernel hands it UML_IO (the host's scratch io/ directory), UML_MODULES and UML_HOSTNAME
# (unknown key=value parameters of the kernel's command line become init's environment); the host has put in
# io/ the fstab, kmods/ (lib/modules/VERSION -> /usr/lib/uml/modules/VERSION), bin/modprobe and dev/ (links).
# A fork and exec costs 20 to 100 ms inside UML: few commands before the first test, none per test but the
# test's own. It writes nothing but tmpfs and io/.
INIT = r"""#!/bin/bash
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
io=$UML_IO
for v in $(compgen -e); do export -n "$v"; done  # each command gets exactly the environment it is given
say() { local u; read -r u _ </proc/uptime; echo "uml-init: $u $*"; }
halt() {
  echo o >/proc/sysrq-trigger  # power off; asynchronous, and PID 1 must not exit meanwhile
  while :; do read -r -t 1 _ <>/proc/uptime 2>/dev/null; done
}
die() { echo "uml-init: FATAL: $*"; echo "$*" 2>/dev/null >"$io/failed"; halt; }  # io/ is there after pivot_root

mount -t proc proc /proc || die "mount proc"
# A writable root: the read-only hostfs root under an overlay whose upper layer is a tmpfs; the new root's
# proc, sys, dev, run, tmp, etc/netns and run/uml/io (hostfs: io/) are mounted (io/fstab) before pivot_root.
mount -t tmpfs -o mode=0755 tmpfs /run || die "tmpfs /run"
mkdir -p /run/s/upper /run/s/work /run/s/root || die "mkdir /run/s"
mount -t sysfs sysfs /sys || die "mount sys"
wanted=()  # those not built in (Debian 12's UML has ipv6 as a module, unstable's built in: /sys/module/ipv6)
for m in overlay ${UML_MODULES//,/ }; do [[ -d /sys/module/$m ]] || wanted+=("$m"); done
modprobe -d "$io/kmods" -a "${wanted[@]}" || die "modprobe ${wanted[*]}"
mount -a -T "$io/fstab" || die "mount -a -T $io/fstab"
cd /run/s/root && pivot_root . . && umount -l . && cd / || die "pivot_root"
io=/run/uml/io
cp -a "$io/dev/." /dev/ || die "links in /dev"
echo "$io/bin/modprobe" >/proc/sys/kernel/modprobe  # the kernel's own module requests too
echo "${UML_HOSTNAME:-uml}" >/proc/sys/kernel/hostname
ip link set lo up
ulimit -Hn 65536 && ulimit -n 65536  # for every command: a few processes hold many sockets (one CPU forks dearly)

read -r up _ </proc/uptime
read -r cpus </sys/devices/system/cpu/online  # a range: 0 is one CPU
while read -r k v _; do [[ $k == MemTotal: ]] && mem=$v; done </proc/meminfo
read -r kver </proc/sys/kernel/osrelease
printf 'uptime=%s\nkernel=%s\ncpus_online=%s\nmem_kb=%s\n.\n' "$up" "$kver" "$cpus" "$mem" >"$io/ready"

# The command loop. N.cmd (sourced: argv, envs, cwd, tmo in ms) -> N.out, N.err, then N.rc: "STATUS exit" or
# "STATUS timeout", its last byte a newline. Each command is a job (set -m: a process group of its own, which
# a timeout sends TERM, then KILL after KILL_GRACE s); PID 1 polls for it to end, so no helper process is
# forked per command.
set -m
mkfifo /run/uml-tick && exec 9<>/run/uml-tick || die "mkfifo"  # read -t on it: a sleep without a fork
n=1
while :; do
  if [[ -e $io/$n.cmd ]]; then
    argv=() envs=() cwd=/ tmo=0 stdin=/dev/null why=exit
    if . "$io/$n.cmd"; then
      [[ -e $io/$n.in ]] && stdin=$io/$n.in
      (cd "$cwd" || exit 126; unset OLDPWD; export "${envs[@]}" || exit 126; exec "${argv[@]}") \
        <"$stdin" >"$io/$n.out" 2>"$io/$n.err" 9>&- &
      pid=$! t=${EPOCHREALTIME/./} pause=0.001
      deadline=$((tmo ? t + tmo * 1000 : 0))
      while read -r st <"/proc/$pid/stat"; do
        st=${st##*) }
        [[ ${st%% *} == Z ]] && break
        if ((deadline)) && ((${EPOCHREALTIME/./} > deadline)); then
          if [[ $why == exit ]]; then
            why=timeout; kill -TERM -- "-$pid"; deadline=$((${EPOCHREALTIME/./} + $KILL_GRACE * 1000000))
          else
            kill -KILL -- "-$pid"; deadline=0
          fi
        fi
        read -r -t "$pause" -u 9 _
        case $pause in 0.001) pause=0.002 ;; 0.002) pause=0.005 ;; 0.005) pause=0.01 ;; *) pause=0.02 ;; esac
      done 2>/dev/null
      wait "$pid"
      echo "$? $why" >"$io/$n.rc"
    else
      echo "uml-init: bad command file $n.cmd" >"$io/$n.err"; : >"$io/$n.out"; echo "127 exit" >"$io/$n.rc"
    fi
    n=$((n + 1))
    continue
  fi
  [[ -e $io/halt ]] && break
  read -r -t 0.01 -u 9 _
done
say "halt"
halt
"""


# uml-supervisor DIR KEEP KERNEL ARG...: the process started here. UML makes a session and a process group of its
# own (setsid), with its helper processes in it, and leaves some of them behind when it is killed: this shell kills
# that group when UML ends, on USR1 (UML.kill), and on TERM (PR_SET_PDEATHSIG: the Python thread that started it
# died, whatever killed it), when it also removes DIR (unless KEEP is 1).
SUPERVISOR = r"""
dir=$1 keep=$2; shift 2
end() { local p=${uml:-$!}; kill -KILL -- "-$p" "$p" 2>/dev/null; wait "$p" 2>/dev/null; }
trap 'end; exit 137' USR1
trap 'end; [[ $keep == 1 ]] || rm -rf -- "$dir"; exit 143' TERM INT HUP
"$@" </dev/null & uml=$!
wait "$uml"; rc=$?
kill -KILL -- "-$uml" 2>/dev/null
exit "$rc"
"""


class UMLError(RuntimeError):
    """UML could not boot, died, or stopped answering."""


class UMLHostUnsupported(UMLError):
    """This host's CPU keeps more register state than this UML saves: it cannot run here at all.

    The host takes a process's extended registers (PTRACE_SETREGSET NT_X86_XSTATE) only as the whole XSAVE
    area (11,008 bytes with AMX, measured on such a host); Debian 12's UML 6.1 and Debian 13's 6.12 hand it a
    smaller one, get EFAULT, say so on the console and lose init. Debian unstable's 7.2 boots there."""


FP_REGS_FAILED = "ptrace set fp regs failed"  # UML's console line when the host refuses its FP state


def missing(kernel: Kernel = DEBIAN) -> str | None:
    """Why UML cannot run here (None: it can)."""
    if not os.access(kernel.binary, os.X_OK):
        return f"needs {kernel.binary} ({kernel.name})"
    if not shutil.which("modprobe", path="/usr/sbin:/sbin:/usr/bin:/bin"):
        return "needs modprobe (Debian package kmod)"
    if not kernel.modules.is_dir() or not any(kernel.modules.iterdir()):
        return f"needs the UML modules in {kernel.modules}"
    return None


def fetch_sid() -> Kernel:
    """Debian unstable's user-mode-linux, for a host whose CPU Debian 12's cannot run on (UMLHostUnsupported):
    its package and unstable's libc6 (it needs a newer glibc than Debian 12's) downloaded by apt-get with a
    package list of their own (the host's apt sources, lists and cache are not touched; the archive's
    signature is checked with the host's Debian keyring), unpacked into SID_DIR, and the program's
    interpreter and library path pointed at that libc (patchelf). Nothing is installed on the host."""
    if missing(SID) is None:
        return SID
    if os.geteuid() != 0:
        raise UMLError(f"{missing(SID)}: fetch it as root (tests/kernel.py fetch_sid)")
    ensure_packages(("patchelf",))
    work = SID_DIR.with_name(SID_DIR.name + ".new")
    shutil.rmtree(work, ignore_errors=True)
    for sub in ("lists/partial", "archives/partial", "cache", "debs", "root"):
        (work / sub).mkdir(parents=True)
    (work / "sources.list").write_text("deb http://deb.debian.org/debian sid main\n")
    apt = [
        "apt-get", "-q",
        "-o", f"Dir::Etc::SourceList={work / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", f"Dir::State::Lists={work / 'lists'}", "-o", f"Dir::Cache={work / 'cache'}",
        "-o", f"Dir::Cache::Archives={work / 'archives'}",
    ]  # fmt: skip
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in ([*apt, "update"], [*apt, "download", "user-mode-linux", "libc6"]):
        cp = subprocess.run(argv, env=env, cwd=work / "debs", capture_output=True, text=True)
        if cp.returncode != 0:
            raise UMLError(f"fetching {SID.name} failed: {' '.join(argv[-2:])}: {cp.stderr.strip()[-500:]}")
    for deb in sorted((work / "debs").glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "root")], check=True)
    libc = SID_DIR / "root/usr/lib/x86_64-linux-gnu"  # where it will be once work/ is SID_DIR
    shutil.copy(work / "root/usr/bin/linux.uml", work / "linux.uml")
    subprocess.run(
        ["patchelf", "--set-interpreter", str(libc / "ld-linux-x86-64.so.2"), "--set-rpath", str(libc),
         str(work / "linux.uml")],
        check=True,
    )  # fmt: skip
    shutil.rmtree(SID_DIR, ignore_errors=True)
    work.rename(SID_DIR)
    if (why := missing(SID)) is not None:
        raise UMLError(why)
    return SID


def ensure_packages(tools: Sequence[str] = ()) -> None:
    """apt-get install DEBS where UML, kmod or one of ``tools`` (programs from DEBS) is missing (as root; an
    apt-get update if needed)."""
    why = missing() or next((f"needs {tool}" for tool in tools if not shutil.which(tool)), None)
    if why is None:
        return
    if os.geteuid() != 0:
        raise UMLError(f"{why}: install it as root: apt-get install -y {' '.join(DEBS)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *DEBS]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)
    if (why := missing()) is not None:
        raise UMLError(why)


_started = 0


def _pick_cpu() -> int:
    """A host CPU for the next UML: MULTIIP_UML_CPU, else one of this process's CPUs, in turn."""
    global _started
    if (cpu := os.environ.get("MULTIIP_UML_CPU")) is not None:
        return int(cpu)
    allowed = sorted(os.sched_getaffinity(0))
    _started += 1
    return allowed[(os.getpid() + _started) % len(allowed)]


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class UML:
    """One UML boot that runs many commands, one at a time. A context manager: ``with UML() as box: ...``."""

    def __init__(
        self,
        mem: str = "2G",
        modules: Sequence[str] = MODULES,
        boot_timeout: float = 60,
        hostname: str = "uml",
        cwd: str | os.PathLike[str] = REPO,
        env: Mapping[str, str] | None = None,
        scratch: str | os.PathLike[str] | None = None,
        kernel_args: Sequence[str] = (),
        cpu: int | None = None,
        pin: bool = True,
        kernel: Kernel = DEBIAN,
    ) -> None:
        self.kernel = kernel
        self.mem = mem
        self.modules = tuple(modules)
        self.boot_timeout = boot_timeout
        self.hostname = hostname
        self.cwd = str(cwd)
        self.env = {**DEFAULT_ENV, **(env or {})}
        self.kernel_args = tuple(kernel_args)
        self.cpu = cpu if cpu is not None else _pick_cpu()
        self.pin = pin and shutil.which("taskset") is not None
        self._scratch_parent = str(scratch) if scratch is not None else os.environ.get("MULTIIP_UML_TMP")
        self.dir: Path | None = None  # the host's scratch directory; io/ in it is GUEST_IO inside
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, str] = {}  # from the guest at boot: uptime, kernel, cpus, memory
        self.boot_seconds = 0.0  # from starting the process to the guest's first command
        self._n = 0
        self._lock = threading.Lock()
        self._finalizer: Any = None  # weakref.finalize

    # --- life cycle
    def command_line(self) -> list[str]:
        assert self.dir is not None
        args = [
            str(self.kernel.binary),
            f"mem={self.mem}",
            "root=/dev/root",
            "rootfstype=hostfs",
            "rootflags=/",
            "ro",
            f"init={self.dir}/init.sh",
            "con=null",
            "ssl=null",
            "con0=null,fd:1",
            f"umid={self.dir.name}",
            f"uml_dir={self.dir}/uml",
            "quiet",
            f"UML_IO={self.dir}/io",
            f"UML_MODULES={','.join(self.modules)}",
            f"UML_HOSTNAME={self.hostname}",
            *self.kernel_args,
        ]
        keep = os.environ.get("MULTIIP_UML_KEEP", "0")
        args[:0] = ["bash", "-c", SUPERVISOR, "uml-supervisor", str(self.dir), keep]
        if setpriv := shutil.which("setpriv"):  # TERM to the supervisor when this thread dies
            args[:0] = [setpriv, "--pdeathsig", "TERM", "--"]
        if self.pin:  # all of UML on one host CPU: forks, execs and syscalls 3 to 4 times faster (see the top)
            args[:0] = ["taskset", "-c", str(self.cpu)]
        return args

    def start(self) -> UML:
        if self.proc is not None:
            raise UMLError("already started")
        ensure_packages()
        if self._scratch_parent:
            Path(self._scratch_parent).mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="uml-", dir=self._scratch_parent))
        self._prepare(self.dir)
        # UML's memory is a deleted file in TMPDIR: a tmpfs (/dev/shm) keeps it off the disk.
        tmpdir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else str(self.dir)
        host_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR": tmpdir}
        started = time.monotonic()
        with open(self.dir / "console.log", "wb") as console:
            self.proc = subprocess.Popen(
                self.command_line(),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env=host_env,
                cwd=self.dir,
                start_new_session=True,  # no terminal's Ctrl-C: close() or kill() stops it
            )
        self._finalizer = weakref.finalize(self, _signal, self.proc.pid, signal.SIGTERM)  # dropped unclosed
        try:
            ready = self.dir / "io" / "ready"
            self._wait(lambda: ready.exists() and ready.read_bytes().endswith(b"\n.\n"), self.boot_timeout, "boot")
            if (self.dir / "io" / "failed").exists():
                raise UMLError(f"init failed: {(self.dir / 'io' / 'failed').read_text().strip()}\n{self.console()}")
            self.info = dict(line.split("=", 1) for line in ready.read_text().splitlines() if "=" in line)
        except BaseException:
            self.close()
            raise
        self.boot_seconds = time.monotonic() - started
        return self

    def _prepare(self, d: Path) -> None:
        """The scratch directory: init.sh, uml/ (UML's uml_dir), io/ (the guest's GUEST_IO) with the fstab of the
        new root, kmods/lib/modules/VERSION, bin/modprobe (reads kmods/) and dev/ (the links /dev lacks)."""
        io = d / "io"
        (d / "uml").mkdir()
        for sub in ("kmods/lib/modules", "bin", "dev"):
            (io / sub).mkdir(parents=True)
        for version in self.kernel.modules.iterdir():
            (io / "kmods/lib/modules" / version.name).symlink_to(version)
        (io / "bin/modprobe").write_text(f'#!/bin/sh\nexec /sbin/modprobe -d {GUEST_IO}/kmods "$@"\n')
        (io / "bin/modprobe").chmod(0o755)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                             ("stderr", "/proc/self/fd/2"), ("core", "/proc/kcore")):  # fmt: skip
            (io / "dev" / name).symlink_to(target)
        r = "/run/s/root"
        fstab = [
            f"overlay {r} overlay lowerdir=/,upperdir=/run/s/upper,workdir=/run/s/work",
            f"proc {r}/proc proc nosuid,nodev,noexec",
            f"sysfs {r}/sys sysfs nosuid,nodev,noexec",
            f"devtmpfs {r}/dev devtmpfs mode=0755",
            f"devpts {r}/dev/pts devpts newinstance,ptmxmode=0666,mode=0620,X-mount.mkdir",
            f"tmpfs {r}/dev/shm tmpfs mode=1777,X-mount.mkdir",
            f"tmpfs {r}/run tmpfs mode=0755",
            f"tmpfs {r}/run/netns tmpfs mode=0755,X-mount.mkdir",
            f"tmpfs {r}/tmp tmpfs mode=1777",
            f"tmpfs {r}/etc/netns tmpfs mode=0755,X-mount.mkdir",
            f"hostfs {r}{GUEST_IO} hostfs {io},X-mount.mkdir",
        ]
        # a checkout under a directory the guest mounts its own on (a clone in /tmp): read-only there
        if any(REPO.is_relative_to(line.split()[1].removeprefix(r)) for line in fstab[1:]):
            fstab.append(f"hostfs {r}{REPO} hostfs {REPO},ro,X-mount.mkdir")
        (io / "fstab").write_text("".join(f"{line} 0 0\n" for line in fstab))
        (d / "init.sh").write_text(INIT.replace("$KILL_GRACE", str(KILL_GRACE)))
        (d / "init.sh").chmod(0o755)

    def _wait(self, done: Callable[[], bool], timeout: float | None, what: str) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.001
        while not done():
            assert self.proc is not None
            if self.proc.poll() is not None:
                if FP_REGS_FAILED in self.console(tail=0):
                    raise UMLHostUnsupported(
                        f"UML exited ({self.proc.returncode}) during {what}: this CPU's register state is larger "
                        f"than {self.kernel.name} saves (its console: {FP_REGS_FAILED!r})"
                    )
                raise UMLError(f"UML exited ({self.proc.returncode}) during {what}\n{self.console()}")
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
                raise UMLError(f"UML did not finish {what} within {timeout} s: killed\n{self.console()}")
            time.sleep(pause)
            pause = min(pause * 2, 0.01)

    def console(self, tail: int = 40) -> str:
        """The last lines of the guest's console (kernel messages, init's); tail 0: all of it."""
        if self.dir is None or not (self.dir / "console.log").exists():
            return ""
        lines = (self.dir / "console.log").read_bytes().decode(errors="replace").splitlines()
        return "\n".join(lines[-tail:] if tail else lines)

    def kill(self) -> None:
        """Kill UML and its helpers now (the supervisor kills their process group), and reap the supervisor."""
        if self.proc is None or self.proc.poll() is not None:
            return
        _signal(self.proc.pid, signal.SIGUSR1)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            _signal(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def close(self, timeout: float = 10) -> None:
        """Power the guest off (killed after ``timeout`` s), then remove the scratch directory."""
        if self.proc is not None and self.proc.poll() is None and self.dir is not None:
            (self.dir / "io" / "halt").touch()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)  # the supervisor ends when UML has, and has killed its helpers
        self.kill()
        if self._finalizer is not None:
            self._finalizer.detach()
        if self.dir is not None and os.environ.get("MULTIIP_UML_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> UML:
        return self.start() if self.proc is None else self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # --- commands
    def run(
        self,
        argv: Sequence[str],
        timeout: float | None = 60,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        input: str | bytes | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside, as root, with DEFAULT_ENV (and ``self.env``) updated by ``env``, in ``cwd`` (default:
        the repository), standard input ``input`` (default /dev/null). Like subprocess.run(text=True,
        capture_output=True): TimeoutExpired after ``timeout`` s (the guest sends TERM, then KILL after
        KILL_GRACE s; the boot goes on serving), CalledProcessError with ``check``."""
        if isinstance(argv, str):
            raise TypeError("argv is a list of strings; for a shell snippet use sh()")
        if not argv:
            raise ValueError("empty argv")
        full_env = {**self.env, **(env or {})}
        bad = [k for k in full_env if not k or "=" in k or "\0" in k + full_env[k]]
        if bad or any("\0" in a for a in argv):
            raise ValueError(f"NUL or '=' where not allowed: {bad or argv}")
        with self._lock:
            if self.proc is None or self.dir is None:
                raise UMLError("not started")
            self._n += 1
            n, io = self._n, self.dir / "io"
            if input is not None:
                (io / f"{n}.in").write_bytes(input.encode() if isinstance(input, str) else input)
            tmo = 0 if timeout is None else max(int(timeout * 1000), 1)
            body = (
                f"argv=({' '.join(shlex.quote(a) for a in argv)})\n"
                f"envs=({' '.join(shlex.quote(f'{k}={v}') for k, v in full_env.items())})\n"
                f"cwd={shlex.quote(str(cwd if cwd is not None else self.cwd))}\n"
                f"tmo={tmo}\n"
            )
            (io / f"{n}.tmp").write_text(body)
            os.rename(io / f"{n}.tmp", io / f"{n}.cmd")  # whole, or not there
            rc_file = io / f"{n}.rc"
            self._wait(
                lambda: rc_file.exists() and rc_file.read_bytes().endswith(b"\n"),
                None if timeout is None else timeout + KILL_GRACE + 15,
                f"{shlex.join(argv)[:200]}",
            )
            status, why = rc_file.read_text().split()
            returncode = int(status)
            out = (io / f"{n}.out").read_bytes().decode(errors="replace")
            err = (io / f"{n}.err").read_bytes().decode(errors="replace")
            for suffix in ("cmd", "in", "out", "err", "rc"):
                with contextlib.suppress(FileNotFoundError):
                    (io / f"{n}.{suffix}").unlink()
        if why == "timeout":
            raise subprocess.TimeoutExpired(list(argv), timeout or 0, output=out, stderr=err)
        cp = subprocess.CompletedProcess(list(argv), returncode, out, err)
        if check:
            cp.check_returncode()
        return cp

    def sh(self, script: str, timeout: float | None = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        """A bash snippet: ``bash -euo pipefail -c script``."""
        return self.run(["bash", "-euo", "pipefail", "-c", script], timeout=timeout, **kw)

    def reset(self, timeout: float = 60) -> None:
        """Back to as booted, nearly: every process but PID 1 killed, every namespace and every link but lo of
        the root namespace deleted, /etc/netns and /tmp emptied."""
        self.sh(RESET, timeout=timeout, check=True)

    @property
    def release(self) -> str:
        """The kernel release UML's modules are for (its ``uname -r``): the one directory of its modules."""
        (version,) = (d.name for d in self.kernel.modules.iterdir() if d.is_dir())
        return version

    @property
    def io_dir(self) -> Path:
        """The host's side of GUEST_IO: a file put here is seen inside (``GUEST_IO/name``)."""
        if self.dir is None:
            raise UMLError("not started")
        return self.dir / "io"


def booted(mem: str = "2G", **settings: Any) -> UML:
    """A started UML: Debian 12's, or on a host whose CPU it cannot run on (UMLHostUnsupported) Debian
    unstable's, fetched on first use (fetch_sid). Any other failure is raised as it is."""
    try:
        return UML(mem=mem, **settings).start()
    except UMLHostUnsupported:
        return UML(mem=mem, kernel=fetch_sid(), **settings).start()


def run_in_uml(
    argv: Sequence[str],
    timeout: float | None = 60,
    mem: str = "2G",
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    input: str | bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """Boot UML, run one command in it (see UML.run), power it off."""
    with booted(mem=mem) as box:
        return box.run(argv, timeout=timeout, env=env, cwd=cwd, input=input)


def python() -> str:
    """The repository's .venv Python where there is one (multiip is installed in it), else this one."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


RESET = """
kill -KILL -1 2>/dev/null || :
ip -all netns delete 2>/dev/null || :
for l in $(ip -o link show | awk -F': ' '{ sub(/@.*/, "", $2); if ($2 != "lo") print $2 }'); do
  ip link delete "$l" 2>/dev/null || :
done
find /etc/netns /tmp -mindepth 1 -maxdepth 1 -exec rm -rf {} +
"""

PROOF = """
ip netns add a
ip link add v0 type veth peer name v1
ip link set v1 netns a
ip link add link v0 name ipv0 type ipvlan mode l2
ip link add link v0 name v0.100 type vlan id 100
ip link set v0 up; ip link set ipv0 up
ip netns exec a ip link set v1 up
ip -d link
echo "--- in a:"; ip -n a -d link show v1
"""


def _self_test() -> int:
    """Boot once, run three commands (the ipvlan/vlan proof, multiip's Python, a reset), print the times."""
    ensure_packages()
    t0 = time.monotonic()
    with UML() as box:
        print(f"boot to the first command: {box.boot_seconds:.2f} s; {box.info}")
        t1 = time.monotonic()
        proof = box.sh(PROOF, timeout=60)
        t2 = time.monotonic()
        py = box.run([python(), "-c", "import multiip, sys; print(sys.version)"], timeout=60)
        t3 = time.monotonic()
        box.reset()
        left = box.run(["ip", "-o", "link"], check=True).stdout.splitlines()
        t4 = time.monotonic()
    t5 = time.monotonic()
    print(proof.stdout, proof.stderr, py.stdout, py.stderr, sep="", end="")
    wanted = ("ipvlan  mode l2", "vlan protocol 802.1Q id 100", "ipv0@v0", "v0.100@v0", "link-netns a")
    lacking = [w for w in wanted if w not in proof.stdout]
    ok = proof.returncode == 0 and not lacking and py.returncode == 0 and len(left) == 1
    print(f"proof {t2 - t1:.2f} s, python {t3 - t2:.2f} s, reset {t4 - t3:.2f} s, power off {t5 - t4:.2f} s")
    print(f"one boot, three commands, power off: {t5 - t0:.2f} s")
    print("OK" if ok else f"FAILED: proof {proof.returncode} lacking {lacking}, python {py.returncode}, {left}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(_self_test())
