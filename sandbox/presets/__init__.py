"""The built-in presets: policy files shipped with the package, found by name.

`sandbox run --preset readonly-tool --set WORK=. -- grep -r x .` loads
`sandbox/presets/readonly-tool.yaml` from wherever the package is installed. Presets use no
relative paths (they would resolve inside the installed package): what depends on where
they are used is a parameter (`${WORK}`, `${CWD}`), and programs are named by absolute path
or a path set, with PATH set to the system's directories, never a shim first on the
caller's PATH.
"""

from __future__ import annotations

import os
import re

from sandbox.errors import UsageError
from sandbox.plain import plain

PRESET_DIR = os.path.dirname(os.path.abspath(__file__))
_NAME = re.compile(r"[a-z][a-z0-9-]*")


def names() -> list[str]:
    return sorted(f[: -len(".yaml")] for f in os.listdir(PRESET_DIR) if f.endswith(".yaml"))


def path_of(name: str) -> str:
    """The file of preset `name`; UsageError (exit 2) naming the presets if there is none."""
    known = names()
    if not _NAME.fullmatch(name) or name not in known:
        from sandbox.policy.schema import suggest

        raise UsageError(
            f"--preset: no preset '{name[:80]}'{suggest(name, known)} "
            f"(presets: {', '.join(known)}; see sandbox presets)"
        )
    return os.path.join(PRESET_DIR, f"{name}.yaml")


@plain(frozen=True)
class ParamInfo:
    name: str
    default: str | None
    doc: str


@plain(frozen=True)
class PresetInfo:
    name: str
    path: str
    summary: str  # the first comment line
    usage: str  # the comment line starting with 'Use:'
    pledge: str
    params: tuple[ParamInfo, ...]


def info(name: str) -> PresetInfo:
    """What a preset says about itself: its header comments, pledge and parameters, read
    without loading it (its defaults depend on the directory it is used in)."""
    import yaml

    path = path_of(name)
    summary = usage = ""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        words = line[1:].strip()
        summary = summary or words
        if words.startswith("Use:"):
            usage = words.removeprefix("Use:").strip()
    doc = yaml.safe_load(text) or {}
    params = []
    for pname, value in (doc.get("params") or {}).items():
        if isinstance(value, dict):
            params.append(ParamInfo(str(pname), value.get("default"), str(value.get("doc", ""))))
        else:
            params.append(ParamInfo(str(pname), None, str(value)))
    return PresetInfo(name, path, summary, usage, str(doc.get("pledge", "")), tuple(params))
