"""Jinja rendering of the bash scripts in templates/: the single source of truth for what runs on a host."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import stat
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from multiip import __version__
from multiip.errors import MultiipError
from multiip.plan import Plan, Target


def templates_dir() -> Path:
    """templates/ inside an installed wheel, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
        if (candidate / "setup_bridge.sh.j2").is_file():
            return candidate
    raise MultiipError(f"multiip's templates are not next to {here}: install multiip again")


class _Cache(jinja2.FileSystemBytecodeCache):
    """The templates compiled once, not by every command (~0.05 s each here: a setup's templates are all
    compiled before it renders). Jinja checks each entry against its template's source: a changed
    template compiles anew. A cache that cannot be written is no error."""

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        with contextlib.suppress(OSError):
            super().dump_bytecode(bucket)


def cache_dir() -> Path:
    """root's in /var/cache/multiip, a user's in their XDG cache directory."""
    if os.geteuid() == 0:
        return Path("/var/cache/multiip")
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "multiip")


def bytecode_cache(directory: Path) -> _Cache | None:
    """The cache in DIRECTORY (made if missing), if it is a directory of this user's that no one else can
    write to (the code in it runs as root); else none."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = directory.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return None
    # Jinja checks an entry against its template's source, not against the environment's settings
    # (trim_blocks, comment strings, filters...): those are in this file, whose digest names the entries.
    settings = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return _Cache(str(directory), f"{settings}-%s.cache")


def _quote(value: object) -> str:
    return shlex.quote(str(value))


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        comment_start_string="{##",  # bash's ${#array[@]} must not open a Jinja comment
        comment_end_string="##}",
        bytecode_cache=bytecode_cache(cache_dir()),
    )
    env.filters["q"] = _quote
    return env


def render(template: str, **context: Any) -> str:
    return _env().get_template(template).render(version=__version__, **context)


def setup_script(plan: Plan) -> str:
    """The setup: a template per mode (bridge, macvlan, ipvlan: namespaces; alias: addresses on the uplink)."""
    return render(f"setup_{plan.o.mode}.sh.j2", plan=plan, o=plan.o, t=plan.target)


def teardown_script(target: Target) -> str:
    return render("teardown.sh.j2", t=target)


def doctor_script(uplink: str, wait: int, probe: bool) -> str:
    """Which modes can work here (multiip doctor); with probe, asking the network from a new MAC too."""
    return render("doctor.sh.j2", uplink=uplink, wait=wait, probe=probe)


def systemd_files(plan: Plan, directory: str) -> dict[str, str]:
    """A service that makes the setup at boot and undoes it on stop, and the two scripts it runs, by file
    name (all to go into ``directory``, an absolute path)."""
    unit = f"multiip-{plan.target.prefix}.service"  # one per setup
    setup, teardown = f"multiip-{plan.target.prefix}-setup.sh", f"multiip-{plan.target.prefix}-teardown.sh"
    service = render(
        "multiip.service.j2",
        plan=plan,
        o=plan.o,
        t=plan.target,
        directory=directory,
        unit=unit,
        setup=setup,
        teardown=teardown,
    )
    return {unit: service, setup: setup_script(plan), teardown: teardown_script(plan.target)}
