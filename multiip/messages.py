"""The message format the scripts speak on stderr (templates/_messages.sh.j2), parsed in one place.

``multiip: [i/n] text`` a step, ``multiip: progress what done/total``, ``multiip: error: text``,
``multiip: text`` a note (``multiip: found KEY=VALUE``: one of doctor's findings); any other line is a
tool's own output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

_STEP = re.compile(r"^multiip: \[(\d+)/(\d+)\] (.*)$")
_PROGRESS = re.compile(r"^multiip: progress (\S+) (\d+)/(\d+)$")
_FOUND = re.compile(r"^found ([a-z_]+)=(.*)$")


@dataclass(frozen=True)
class Message:
    kind: Literal["step", "progress", "error", "note", "other"]
    text: str  # the step's title, the progress's label, the error or the note; the whole line otherwise
    done: int = 0  # progress: done/total; step: i/n
    total: int = 0


def parse(line: str) -> Message:
    line = line.rstrip("\n")
    if m := _STEP.match(line):
        return Message("step", m[3], int(m[1]), int(m[2]))
    if m := _PROGRESS.match(line):
        return Message("progress", m[1], int(m[2]), int(m[3]))
    if line.startswith("multiip: error: "):
        return Message("error", line.removeprefix("multiip: error: "))
    if line.startswith("multiip: "):
        return Message("note", line.removeprefix("multiip: "))
    return Message("other", line)


def finding(msg: Message) -> tuple[str, str] | None:
    """A doctor's finding (key, value), if the message is one."""
    m = _FOUND.match(msg.text) if msg.kind == "note" else None
    return (m[1], m[2]) if m else None
