#!/usr/bin/env python3
"""Medians of the A/B result scripts' runs, per partition count and variant.

    medians.py LINES LABEL COLUMN...

LINES holds one run per line: "variant partitions records_per_s value..." (the rate may end
in k or M). Each COLUMN, "title:format" (a Python format spec), names the next value of
every line; values past the last COLUMN are ignored. Prints, per partition count and
variant (LABEL heads that column), the median of the rate and of each column, then every
run's rate in order.
"""
import statistics
import sys


def number(text):
    scale = {"k": 1e3, "M": 1e6}
    return float(text[:-1]) * scale[text[-1]] if text[-1] in scale else float(text)


def main(lines_path, label, *columns):
    columns = [c.rsplit(":", 1) for c in columns]
    runs = {}
    with open(lines_path) as lines:
        for line in lines:
            fields = line.split()
            if not fields:
                continue
            variant, partitions = fields[0], int(fields[1])
            values = [number(fields[2])] + [float(f) for f in fields[3 : 3 + len(columns)]]
            runs.setdefault((partitions, variant), []).append(values)
    width = max([len(label)] + [len(v) for _, v in runs]) + 1
    head = f"{'partitions':>10}  {label:{width}}{'M records/s':>12}"
    head += "".join(f"{title:>{len(title) + 2}}" for title, _ in columns)
    print(head + "  each run (M records/s)")
    for (partitions, variant), rows in sorted(runs.items()):
        med = [statistics.median(r[i] for r in rows) for i in range(len(columns) + 1)]
        line = f"{partitions:>10}  {variant:{width}}{med[0] / 1e6:>12.2f}"
        for (title, spec), value in zip(columns, med[1:]):
            line += f"{value:>{len(title) + 2}{spec}}"
        each = " / ".join(f"{r[0] / 1e6:.2f}" for r in rows)
        print(f"{line}  {each}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
