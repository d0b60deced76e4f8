"""The soak plot: resident memory and snapshot size against purchases.

    python -m bench_report.soak OUTPUT.svg LABEL=RUN.csv [LABEL=RUN.csv ...]

Each CSV is the output of ``cargo bench -p ledger-engine --bench soak`` (columns
purchases, simulated_seconds, resident_bytes, snapshot_bytes, remembered_commands,
forgotten_digests, owned_items). Run through ``scripts/soak``, which sets up the
plotting venv (the one of scripts/bench-report).
"""

from __future__ import annotations

import csv
import sys


def read(path: str) -> list[dict[str, float]]:
    with open(path, newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def main(arguments: list[str]) -> int:
    if len(arguments) < 2 or any("=" not in run for run in arguments[1:]):
        print(__doc__, file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    output = arguments[0]
    figure, (resident, snapshot, remembered) = plt.subplots(1, 3, figsize=(15, 4.5))
    for run in arguments[1:]:
        label, path = run.split("=", 1)
        rows = read(path)
        purchases = [row["purchases"] / 1e6 for row in rows]
        resident.plot(purchases, [row["resident_bytes"] / 2**20 for row in rows], marker=".", label=label)
        snapshot.plot(purchases, [row["snapshot_bytes"] / 2**20 for row in rows], marker=".", label=label)
        remembered.plot(
            purchases, [row["remembered_commands"] / 1e3 for row in rows], marker=".", label=label
        )
    for axes, title, unit in (
        (resident, "resident memory", "MiB"),
        (snapshot, "snapshots (all shards, encoded)", "MiB"),
        (remembered, "commands remembered", "thousands"),
    ):
        axes.set_title(title)
        axes.set_xlabel("purchases (millions)")
        axes.set_ylabel(unit)
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(output)
    print(f"soak: wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
