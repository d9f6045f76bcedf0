"""Warm starts: a new sweep begins with the best configurations an earlier study found.

`warm_start: {from: NAME_OR_FILE, top: N}` queues the earlier study's N best complete
trials (same storage) as this sweep's first trials, those whose values fit this sweep's
space; each trial records where it came from (`warm_start_from`), so running the sweep
again queues none twice, and a claim per source trial keeps two workers from training
one twice. The earlier study is found before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.search.spec.reader import Reader, SweepError

FROM_ATTR = "warm_start_from"  # trial user attr and run tag: "<study>#<trial number>"
MAX_TOP = 1000


@dataclass(frozen=True)
class WarmStart:
    source: str  # the earlier study's name
    top: int = 3
    given: str = ""  # as the file wrote it (a name, or a sweep file)


def read_warm_start(r: Reader, raw: Any, name: str, method: str,
                    read_file: Callable[[str], Any]) -> WarmStart | None:
    """The `warm_start` key; `read_file` reads a sweep file named by `from`."""
    if raw is None:
        return None
    raw = r.mapping(raw, "warm_start")
    r.known(raw, "warm_start", ("from", "top"))
    if "from" not in raw:
        raise r.fail("warm_start.from", "missing; give the name of an earlier sweep in the "
                                        "same storage, or its sweep file")
    given = r.text(raw["from"], "warm_start.from").strip()
    top = r.integer(raw.get("top", 3), "warm_start.top", 1, MAX_TOP)
    if method == "grid":
        raise r.fail("warm_start", "a grid visits every point anyway; warm starts are for "
                                   "samplers that learn from trials")
    source = given
    if given.endswith((".yaml", ".yml", ".json")):
        source = _name_in(r, given, read_file)
    if source == name:
        raise r.fail("warm_start.from", f"names this sweep itself ('{name}'); a warm start "
                                        "comes from an earlier sweep")
    return WarmStart(source, top, given)


def _name_in(r: Reader, given: str, read_file: Callable[[str], Any]) -> str:
    """The sweep name a sweep file gives (its `name`, or the file's stem): the file is
    looked for beside this sweep file, then in the current folder."""
    here = Path(r.path).parent / given
    path = here if here.is_file() else Path(given)
    if not path.is_file():
        raise r.fail("warm_start.from", f"no sweep file {given} (looked beside {r.path} and "
                                        "in the current folder)")
    try:
        raw = read_file(str(path))
    except SweepError as exc:
        raise r.fail("warm_start.from", f"cannot read it: {exc}") from None
    if not isinstance(raw, dict):
        raise r.fail("warm_start.from", f"{given} is not a sweep file (not a mapping of keys)")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise r.fail("warm_start.from", f"{given}: its name is {name!r}, not a sweep name")
    return name
