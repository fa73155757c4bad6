"""Command line: ``python -m emolib.teaching build|grade`` (what ``make assignments`` / ``make grade`` run)."""

from __future__ import annotations

import argparse
import sys

from emolib.teaching.course import build_course, grade


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emolib.teaching", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the nbgrader course folder (teacher + student notebooks)")
    b.add_argument("--course", default="classroom", help="course folder (default: classroom/)")
    b.add_argument("--engine", default="auto", choices=["auto", "nbgrader", "builtin"])
    g = sub.add_parser("grade", help="autograde a folder of submitted notebooks and write a score table")
    g.add_argument("submissions", help="folder of <student>.ipynb or <student>/<notebook>.ipynb")
    g.add_argument("--course", default="classroom")
    g.add_argument("--engine", default="auto", choices=["auto", "nbgrader", "builtin"])
    g.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        release = build_course(args.course, engine=args.engine)
        print(f"teacher notebook: {args.course}/source/emotion_vectors/emotion_vectors.ipynb")
        print(f"student notebook: {release}")
        return 0
    table = grade(args.course, args.submissions, engine=args.engine, timeout=args.timeout)
    print(table.to_string(index=False))
    print(f"\nwritten: {args.course}/scores.csv, scores.md, failures.json (the failing tests' messages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
