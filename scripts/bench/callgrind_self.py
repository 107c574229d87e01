"""Self cost (instructions) per function from a callgrind dump, most expensive first.

callgrind_annotate credits every cost to `clone` for these Rust dumps (inlined frames
switch files with `fi=`/`fe=` lines), so this reads the format directly: cost lines
belong to the current `fn=`; the line after a `calls=` line is the call's inclusive cost
and is skipped. Usage: callgrind_self.py DUMP [TOP] [REQUESTS]
"""
import collections
import re
import sys

names = {}


def name(s):
    m = re.match(r"\((\d+)\)(?: (.*))?", s)
    if not m:
        return s
    if m.group(2):
        names[m.group(1)] = m.group(2)
    return names.get(m.group(1), "?")


def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    per = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    cost = collections.Counter()
    fn, skip = None, False
    with open(path) as f:
        for line in f:
            if line.startswith("fn="):
                fn = name(line[3:].strip())
            elif line.startswith("cfn="):
                name(line[4:].strip())
            elif line.startswith("calls="):
                skip = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if skip:
                    skip = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and fn:
                    cost[fn] += int(parts[1])
    total = sum(cost.values())
    for f, c in cost.most_common(top):
        each = f"{c / per:8.0f}/req " if per else ""
        print(f"{c:>13,} {100 * c / total:5.2f}% {each} {f[:140]}")


if __name__ == "__main__":
    main()
