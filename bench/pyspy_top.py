"""Top frames of a py-spy profile of `mail-proxy serve`, busy samples only.

    py-spy record --subprocesses -r 200 -f raw -o prof.txt -- python bench/run.py ...
    python bench/pyspy_top.py prof.txt [--process "mailproxy serve"] [--top 25]

The raw (collapsed) format names each process as a frame; only the matching process is
counted. Samples whose leaf is the event loop's own run call or a pool thread waiting for
work are idle and left out, so that the percentages are shares of the time spent working.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

IDLE_LEAVES = ("Runner.run (", "(concurrent/futures/thread.py:81)", "(threading.py:3")


def summarise(path: Path, process: str) -> tuple[int, collections.Counter[str],
                                                  collections.Counter[str]]:
    """(busy samples, self counts, inclusive counts) per frame."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        procs = [i for i, frame in enumerate(frames) if frame.startswith("process ")]
        if procs and process not in frames[procs[-1]]:
            continue
        frames = [f for f in frames[procs[-1] + 1 if procs else 0:]
                  if not f.startswith("thread ")]
        if not frames or any(mark in frames[-1] for mark in IDLE_LEAVES):
            continue
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return total, own, inclusive


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile", type=Path)
    parser.add_argument("--process", default="mailproxy serve")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    total, own, inclusive = summarise(args.profile, args.process)
    print(f"busy samples: {total}")
    for title, counts in (("self", own), ("inclusive", inclusive)):
        print(f"-- {title}")
        for frame, n in counts.most_common(args.top):
            print(f"{100 * n / max(total, 1):5.1f}%  {frame}")


if __name__ == "__main__":
    main()
