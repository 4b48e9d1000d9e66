#!/usr/bin/env python3
r"""Instructions a task, from two callgrind runs of the benchmark.

    python3 scripts/callgrind-per-task.py SMALL LARGE TASKS

SMALL and LARGE are the `--callgrind-out-file` of two runs of one
measurement that differ only in their number of tasks, made with

    valgrind --tool=callgrind --separate-threads=yes --dump-instr=yes \
        --compress-pos=no --compress-strings=no --callgrind-out-file=...

and TASKS is the difference between their numbers of tasks. Prints,
per task, for the process's main thread (the benchmark's caller) and
for all its other threads together (the workers; which thread did what
differs from run to run, so they are summed):

- the count as callgrind gives it;
- of it, the iterations of `rep stosb` and `rep movsb` in `memset` and
  `memcpy`: callgrind counts such an instruction once for each byte it
  sets or copies (a 4,096-byte `memset` counts 4,112), which the
  processor does in a few hundred cycles;
- the instructions: the count with each such `rep` instruction counted
  once per execution.

A `rep` instruction is recognised by its count: in `memset`, `memcpy`
or `memmove`, an address counted more than 8 times as often as the
instruction before it, and more than 10,000 times in the run. It is
then counted as often as that instruction.
"""

import collections
import glob
import sys

STRING_FUNCTIONS = ("memset", "memcpy", "memmove")


def costs_by_address(path):
    """Self cost by function and instruction address."""
    costs = collections.defaultdict(collections.Counter)
    function = None
    after_call = False
    with open(path, errors="replace") as lines:
        for line in lines:
            if line.startswith("fn="):
                function = line[3:].strip()
                after_call = False
            elif line.startswith("calls="):
                after_call = True
            elif line.startswith("0x"):
                if after_call:
                    # The line after `calls=` is the call's inclusive cost.
                    after_call = False
                    continue
                fields = line.split()
                if len(fields) >= 3:
                    costs[function][int(fields[0], 16)] += int(fields[2])
    return costs


def counts(path):
    """(callgrind's count, `rep` iterations beyond one per execution)."""
    total = 0
    excess = 0
    for function, by_address in costs_by_address(path).items():
        total += sum(by_address.values())
        if not any(name in (function or "") for name in STRING_FUNCTIONS):
            continue
        addresses = sorted(by_address)
        for before, address in zip(addresses, addresses[1:]):
            once = by_address[before]
            count = by_address[address]
            if once and count > 8 * once and count > 10_000:
                excess += count - once
    return total, excess


def threads(out_file):
    files = sorted(glob.glob(glob.escape(out_file) + "-[0-9]*"))
    if not files:
        sys.exit(f"no thread files {out_file}-NN: was the run made with --separate-threads=yes?")
    main = [f for f in files if f.endswith("-01")]
    return {"caller (main thread)": main, "the other threads": [f for f in files if f not in main]}


def summed(files):
    total = excess = 0
    for path in files:
        t, e = counts(path)
        total += t
        excess += e
    return total, excess


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    small, large, tasks = sys.argv[1], sys.argv[2], float(sys.argv[3])
    if tasks <= 0:
        sys.exit("TASKS must be the (positive) difference between the runs' numbers of tasks")
    small_threads, large_threads = threads(small), threads(large)
    print(f"{'per task':22} {'as counted':>12} {'rep bytes':>12} {'instructions':>13}")
    all_instructions = 0.0
    for part in small_threads:
        a_total, a_excess = summed(small_threads[part])
        b_total, b_excess = summed(large_threads[part])
        counted = (b_total - a_total) / tasks
        rep = (b_excess - a_excess) / tasks
        all_instructions += counted - rep
        print(f"{part:22} {counted:12,.0f} {rep:12,.0f} {counted - rep:13,.0f}")
    print(f"{'all threads':22} {'':12} {'':12} {all_instructions:13,.0f}")


if __name__ == "__main__":
    main()
