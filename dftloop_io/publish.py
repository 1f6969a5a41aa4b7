"""Copy a report directory for sharing, with this machine's paths replaced by variable names.

A report (``report.md``, ``rows.json``, ``summary.json``, plots) names files by absolute path:
the plots under the project directory, the DFT scratch folder in the error of a failed
calculation. :func:`publish_report` copies the report and writes those prefixes as
``$DFTLOOP_HOME`` and ``$DFTLOOP_SCRATCH_DIR``, so that the copy can be committed or sent
without the paths of the machine that made it, and lists any other absolute path it still finds.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path

TEXT_SUFFIXES = (".md", ".json", ".csv", ".txt")
COPIED_SUFFIXES = (*TEXT_SUFFIXES, ".png", ".svg", ".pdf")

# a path of at least two components at the start of a token; not "meV/atom" or "1/3"
_ABSOLUTE_PATH = re.compile(r"(?<![\w$.)])/(?:[\w.+-]+/)+[\w.+-]*")


def replace_prefixes(text: str, replacements: Mapping[str, str]) -> str:
    """Replace every ``{prefix: placeholder}`` of ``replacements`` in ``text``, longest first.

    Parameters
    ----------
    text
        Any text (a report file, a JSON document).
    replacements
        ``{absolute path prefix: placeholder}`` (or the reverse, to expand placeholders); empty
        keys are ignored and a trailing ``/`` of a key is dropped.

    Returns
    -------
    str
    """
    ordered = sorted(((str(k).rstrip("/"), v) for k, v in replacements.items() if k), key=len)
    for prefix, placeholder in reversed(ordered):
        text = text.replace(prefix, placeholder)
    return text


def absolute_paths(text: str) -> list[str]:
    """The distinct absolute paths (two components or more) found in ``text``, sorted."""
    return sorted(set(_ABSOLUTE_PATH.findall(text)))


def publish_report(
    source: str | Path, destination: str | Path, replacements: Mapping[str, str]
) -> list[str]:
    """Copy the report files of ``source`` to ``destination`` with paths replaced.

    Parameters
    ----------
    source
        Report directory (e.g. ``$DFTLOOP_HOME/reports/experiment/<run>``).
    destination
        Directory to write (created; files of the same name are overwritten).
    replacements
        ``{absolute path prefix: placeholder}``, applied to the text files, longest prefix
        first (e.g. ``{str(project_dir): "$DFTLOOP_HOME"}``).

    Returns
    -------
    list of str
        ``"file: path"`` for every absolute path left in the copied text files.

    Raises
    ------
    FileNotFoundError
        If ``source`` is not a directory with a ``report.md``.
    """
    source, destination = Path(source), Path(destination)
    if not (source / "report.md").is_file():
        raise FileNotFoundError(f"{source} is not a report directory (no report.md)")
    destination.mkdir(parents=True, exist_ok=True)
    left: list[str] = []
    for path in sorted(source.iterdir()):
        if not path.is_file() or path.suffix.lower() not in COPIED_SUFFIXES:
            continue
        target = destination / path.name
        if path.suffix.lower() not in TEXT_SUFFIXES:
            shutil.copyfile(path, target)
            continue
        text = replace_prefixes(path.read_text(encoding="utf-8"), replacements)
        target.write_text(text, encoding="utf-8")
        left += [f"{path.name}: {found}" for found in absolute_paths(text)]
    return left


__all__ = ["absolute_paths", "publish_report", "replace_prefixes"]
