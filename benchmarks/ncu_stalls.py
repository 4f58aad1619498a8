"""Summarise an Nsight Compute source page (SASS, CSV) of one kernel: where the warps stall (developer tool).

Usage: `python benchmarks/ncu_stalls.py int8_sass.csv [--top 20]` (`benchmarks/ncu_profile.sh` writes the CSV; runs on
any machine). Prints the stall reasons over all warp samples, each loop (a backward branch) holding at least 0.5% of the
samples with its instructions, executions of its first instruction and main stall reasons, then the instructions with
the most samples.
"""

from __future__ import annotations

import argparse
import collections
import csv
import re

SAMPLES = "Warp Stall Sampling (All Samples)"
EXECUTED = "Instructions Executed"


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def read_rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        lines = list(csv.reader(file))
    header_at = next(i for i, line in enumerate(lines) if "Source" in line and "Address" in line)
    header = lines[header_at]
    return [dict(zip(header, line)) for line in lines[header_at + 1 :] if len(line) == len(header)]


def stall_reasons(row: dict[str, str]) -> collections.Counter:
    wanted = (name for name in row if name.startswith("stall_") and "Not Issued" not in name)
    return collections.Counter({name.removeprefix("stall_"): number(row[name]) for name in wanted})


def loops(rows: list[dict[str, str]], addresses: list[int]) -> list[tuple[int, int]]:
    """(first, last) row index of every backward branch's body."""
    found = []
    for index, row in enumerate(rows):
        if "BRA" not in row["Source"]:
            continue
        targets = re.findall(r"0x([0-9a-f]+)", row["Source"])
        if targets and addresses[0] <= int(targets[-1], 16) < addresses[index]:
            found.append((addresses.index(int(targets[-1], 16)), index))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("csv")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    rows = read_rows(args.csv)
    addresses = [int(row["Address"], 16) for row in rows]
    total = sum(number(row[SAMPLES]) for row in rows) or 1.0
    reasons = sum((stall_reasons(row) for row in rows), collections.Counter())
    print(f"{len(rows)} instructions, {total:.0f} warp samples; stall reasons:")
    for name, count in reasons.most_common(10):
        print(f"  {name:18s} {100 * count / total:5.1f}%")
    print("loops (offset, instructions, share of samples, executions of the first instruction, main stalls):")
    for first, last in loops(rows, addresses):
        body = rows[first : last + 1]
        samples = sum(number(row[SAMPLES]) for row in body)
        if samples / total < 0.005:
            continue
        stalls = sum((stall_reasons(row) for row in body), collections.Counter())
        main_stalls = ", ".join(f"{name} {100 * count / samples:.0f}%" for name, count in stalls.most_common(4))
        print(
            f"  {addresses[first] - addresses[0]:#8x} {len(body):5d} {100 * samples / total:5.1f}% "
            f"{number(body[0][EXECUTED]):9.0f}  {main_stalls}"
        )
    print(f"top {args.top} instructions by samples:")
    for row in sorted(rows, key=lambda row: -number(row[SAMPLES]))[: args.top]:
        reason = stall_reasons(row).most_common(1)[0][0]
        offset = int(row["Address"], 16) - addresses[0]
        print(f"  {offset:#8x} {100 * number(row[SAMPLES]) / total:4.1f}% {reason:14s} {row['Source'].strip()[:80]}")


if __name__ == "__main__":
    main()
