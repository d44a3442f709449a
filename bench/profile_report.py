#!/usr/bin/env python3
"""Summarise py-spy collapsed stacks (`py-spy record --format raw`, or the files
`bench/ingest.py --profile` / `bench/e2e.py --profile` write under
bench/results/profiles/): where the samples go, by function.

    .venv/bin/python bench/profile_report.py bench/results/profiles/ingest-*-web*.collapsed
    .venv/bin/python bench/profile_report.py --top 30 --under routing.ingest:record_webhook FILES…

"self" = the function is the innermost frame; "total" = it is anywhere on the stack
(each sample counted once per function). "Baton" rows are functions in this
repository's own files (not .venv).
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITE = re.compile(r".*/site-packages/")
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")


def short(path: str) -> tuple[str, str]:
    """(origin, path shortened): origin is repo, site (third-party), stdlib or other."""
    root = str(ROOT) + "/"
    if "/site-packages/" in path:
        return "site", SITE.sub("", path)
    if path.startswith(root):
        return "repo", path[len(root):]
    stdlib = re.sub(r".*/lib/python3\.\d+/", "", path)
    if stdlib != path:
        return "stdlib", stdlib
    return "other", path


def parse(files: list[str]) -> list[tuple[list[tuple[str, str, str]], int]]:
    stacks = []
    for name in files:
        for line in Path(name).read_text(errors="replace").splitlines():
            line = line.strip()
            if not line:
                continue
            frames_text, _, count = line.rpartition(" ")
            frames = []
            for raw in frames_text.split(";"):
                m = FRAME.match(raw)
                if m:
                    origin, file = short(m["file"])
                    frames.append((m["func"], file, origin))
                else:
                    frames.append((raw, "", "other"))
            stacks.append((frames, int(count)))
    return stacks


def key(frame: tuple[str, str, str]) -> str:
    func, file, _ = frame
    module = file[:-3].replace("/", ".") if file.endswith(".py") else file
    return f"{module}:{func}" if module else func


def report(stacks, top: int, under: str | None) -> str:
    if under:
        stacks = [(f, c) for f, c in stacks if any(key(x) == under for x in f)]
    total = sum(c for _, c in stacks)
    if not total:
        return "no samples"
    self_c, incl_c, baton_incl = Counter(), Counter(), Counter()
    for frames, count in stacks:
        if frames:
            self_c[key(frames[-1])] += count
        seen = set()
        for frame in frames:
            k = key(frame)
            if k in seen:
                continue
            seen.add(k)
            incl_c[k] += count
            if frame[2] == "repo":
                baton_incl[k] += count
    out = [f"{total} samples" + (f" under {under}" if under else "")]

    def block(title, counter):
        out.append("")
        out.append(title)
        for k, c in counter.most_common(top):
            out.append(f"  {100 * c / total:5.1f}%  {k}")

    block("top self (innermost frame):", self_c)
    block("top total, Baton code only:", baton_incl)
    block("top total, everything:", incl_c)
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--under", default=None, help="only samples with this module:function on the stack")
    args = ap.parse_args(argv)
    print(report(parse(args.files), args.top, args.under))
    return 0


if __name__ == "__main__":
    sys.exit(main())
