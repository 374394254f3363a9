"""Print the model table as a readable table, newest first, the latest marked with "*".

    python -m scripts.models [--limit N]      (make models)

Reads MODEL_TABLE (and AWS_ENDPOINT_URL for the local cloud) from the environment.
"""

from __future__ import annotations

import argparse
from typing import Any

from lambdas.core import registry, settings

COLUMNS = ("version", "status", "samples", "train acc", "val acc", "holdout acc", "holdout loss", "started")


def _metric(run: dict[str, Any], split: str, name: str) -> str:
    value = ((run.get("metrics") or {}).get(split) or {}).get(name)
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


def rows(runs: list[dict[str, Any]], latest: str | None) -> list[tuple[str, ...]]:
    out = []
    for run in runs:
        mark = "* " if run.get("version") == latest else "  "
        out.append(
            (
                mark + str(run.get("version")),
                str(run.get("status", "-")),
                str(run.get("sample_count", "-")),
                _metric(run, "train", "accuracy"),
                _metric(run, "validation", "accuracy"),
                _metric(run, "holdout", "accuracy"),
                _metric(run, "holdout", "loss"),
                str(run.get("started_at", "-"))[:19],
            )
        )
    return out


def render(table: list[tuple[str, ...]]) -> str:
    header = ("  " + COLUMNS[0], *COLUMNS[1:])
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    line = lambda r: "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, table)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the model table, newest first.")
    parser.add_argument("--limit", type=int, default=50, help="how many runs to show (default 50)")
    args = parser.parse_args(argv)
    reg = registry.Registry(settings.required(settings.environ(), "MODEL_TABLE"))
    runs: list[dict[str, Any]] = []
    cursor = None
    while len(runs) < args.limit:
        page, cursor = reg.list_runs(limit=min(100, args.limit - len(runs)), cursor=cursor)
        runs += page
        if not cursor:
            break
    latest = reg.latest_version()
    print(render(rows(runs, latest)) if runs else "no training runs yet")
    print(f"\nlatest: {latest or 'none'}  (* marks it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
