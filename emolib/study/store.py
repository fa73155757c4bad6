"""The append-only JSON-lines store that generation writes to, and its repair command.

One record per line, keyed by ``id``. Writers append whole batches with one ``os.write`` and an
``fsync`` under the store's writer lock (:mod:`emolib.study.locks`), so a kill loses at most the batch
in flight and two processes can never interleave their records.

Reading never changes the file and never drops anything silently:

* a *torn last line* (a kill in the middle of a write) is left out of what is read, with a
  warning; the next write under the lock cuts it before appending;
* a line that is not JSON, not UTF-8, not an object or has no ``id``, and an ``id`` seen twice,
  raise :class:`StoreError` naming the file and the line, with the command that repairs it.

``python -m emolib.study.store repair PATH`` keeps the first good record of each id and moves every other
line, byte for byte, to ``PATH.rejected-<time>.jsonl`` beside it; nothing is deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from emolib.study.locks import exclusive


class StoreError(ValueError):
    """A store holds a record that cannot be read; the message names file, line and the fix."""


def _repair_hint(path: Path) -> str:
    return f"Run `python -m emolib.study.store repair {path}` to move the bad lines to a side file."


def parse_lines(raw: bytes, path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int, bytes, str]], bytes]:
    """Split ``raw`` into good records ``(line, record)``, bad lines ``(line, bytes, why)`` and a torn tail.

    A record is good if it is UTF-8 JSON, an object, with an ``id`` not seen on an earlier good line.
    """
    torn = b""
    if raw and not raw.endswith(b"\n"):
        cut = raw.rfind(b"\n") + 1
        raw, torn = raw[:cut], raw[cut:]
    good: list[tuple[int, dict[str, Any]]] = []
    bad: list[tuple[int, bytes, str]] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(raw.split(b"\n")[:-1] if raw else [], 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as err:
            bad.append((n, line, f"not UTF-8 (byte {err.start})"))
            continue
        except json.JSONDecodeError as err:
            bad.append((n, line, f"not JSON ({err.msg} at column {err.colno})"))
            continue
        if not isinstance(rec, dict) or "id" not in rec:
            bad.append((n, line, "not a record with an 'id'"))
            continue
        key = str(rec["id"])
        if key in seen:
            bad.append((n, line, f"id {key!r} already on line {seen[key]}"))
            continue
        seen[key] = n
        good.append((n, rec))
    return good, bad, torn


class JsonlStore:
    """An append-only JSON-lines file keyed by ``id`` (see the module doc)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> list[dict[str, Any]]:
        """Every record, in file order; a torn last line is left out with a warning."""
        if not self.path.exists():
            return []
        good, bad, torn = parse_lines(self.path.read_bytes(), self.path)
        if bad:
            n, _, why = bad[0]
            more = f" (and {len(bad) - 1} more bad line(s))" if len(bad) > 1 else ""
            raise StoreError(f"{self.path}, line {n}: {why}{more}. {_repair_hint(self.path)}")
        if torn:
            warnings.warn(f"{self.path}: the last line is incomplete ({len(torn)} bytes, a write was interrupted); "
                          "it is ignored now and cut by the next write.", stacklevel=2)
        return [r for _, r in good]

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append ``records`` as one write (cutting a torn tail first), under the writer lock."""
        data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8")
        if not data:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(self.path, what=f"appending to {self.path.name}"):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn tail: cut it (rare, so read it all)
                    size = os.pread(fd, size, 0).rfind(b"\n") + 1
                    os.ftruncate(fd, size)
                view = memoryview(data)
                offset = size
                while view:
                    written = os.pwrite(fd, view, offset)
                    view = view[written:]
                    offset += written
                os.fsync(fd)
            finally:
                os.close(fd)

    def writer(self, what: str = ""):
        """The store's writer lock as a context manager: hold it for a whole generation run."""
        return exclusive(self.path, what=what or f"writing {self.path.name}")


def repair(path: str | Path) -> dict[str, Any]:
    """Keep the good records of ``path``; move bad, duplicate and torn lines to a side file.

    Returns what was done: kept and moved counts, the side file (None if nothing moved).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No store at {path}.")
    with exclusive(path, what=f"repairing {path.name}"):
        raw = path.read_bytes()
        good, bad, torn = parse_lines(raw, path)
        moved = [(n, line, why) for n, line, why in bad] + ([(-1, torn, "torn last line")] if torn else [])
        side = None
        if moved:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            side = path.with_name(f"{path.name}.rejected-{stamp}.jsonl")
            with open(side, "wb") as f:
                for _n, line, _why in moved:
                    f.write(line.rstrip(b"\n") + b"\n")
            lines = raw.split(b"\n")
            keep = b"".join(lines[n - 1] + b"\n" for n, _ in good)
            fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(keep)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        return {"path": str(path), "kept": len(good), "moved": len(moved), "side_file": str(side) if side else None,
                "reasons": [f"line {n}: {why}" if n > 0 else why for n, _, why in moved]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emolib.study.store", description="Inspect or repair a JSONL story store.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("repair", help="move unreadable, duplicate and torn lines to a side file")
    r.add_argument("path")
    c = sub.add_parser("check", help="read the store and report problems")
    c.add_argument("path")
    args = ap.parse_args(argv)
    if args.cmd == "repair":
        out = repair(args.path)
        print(f"{out['path']}: kept {out['kept']} records, moved {out['moved']} line(s)"
              + (f" to {out['side_file']}" if out["side_file"] else ""))
        for reason in out["reasons"][:20]:
            print(f"  {reason}")
        return 0
    try:
        recs = JsonlStore(args.path).read()
    except StoreError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    print(f"{args.path}: {len(recs)} records, readable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
