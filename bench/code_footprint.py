#!/usr/bin/env python3
"""How much machine code a process ran, from one callgrind dump.

usage: code_footprint.py DUMP

DUMP must come from `valgrind --tool=callgrind --dump-instr=yes --compress-pos=no
--compress-strings=no`: then every cost line starts with the absolute address of one instruction.
Prints two numbers: the distinct 64-byte lines and the distinct 4 KiB pages of code that executed
at least once between the counters' zeroing and the dump, every object (the binary, libc…)
included. It is the instruction side of a request's memory: what the core's instruction cache and
TLB have to hold, or fetch again after the kernel ran in between.
"""
import sys


def footprint(path):
    lines, pages = set(), set()
    positions = 1  # `positions: instr` by default; `instr line` when the binary has line tables
    call_site = False  # the line after `calls=` holds a call's inclusive cost, not its own
    with open(path, errors="replace") as dump:
        for text in dump:
            if text.startswith("positions:"):
                positions = len(text.split()) - 1
                continue
            if text.startswith("calls="):
                call_site = True
                continue
            if not text.startswith("0x"):
                continue
            fields = text.split()
            # The positions (the address first), then the events (Ir first).
            ran = call_site or (len(fields) > positions and fields[positions] != "0")
            call_site = False
            if ran:
                address = int(fields[0], 16)
                lines.add(address >> 6)
                pages.add(address >> 12)
    return len(lines), len(pages)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    try:
        print(*footprint(sys.argv[1]))
    except (OSError, ValueError) as e:
        sys.exit(f"code_footprint.py: {sys.argv[1]}: {e}")
