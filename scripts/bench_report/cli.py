"""The command line (see the package docstring):

    python -m bench_report RESULTS_DIR [--template T] [--output O] [--plots DIR]
                                       [--events-per-purchase N]

Paths given on the command line are relative to the current directory; the defaults are
relative to the repository. Exit codes: 0 the report was written (warnings or not);
1 the template has bad placeholders, or a path is missing; 2 a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .plots import PLOTS, Plot
from .results import Results, load_results
from .summaries import Options
from .tables import NOT_MEASURED, TABLES
from .template import Placeholder, TemplateError, expand, find_placeholders

REPOSITORY = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = REPOSITORY / "benchmarks" / "BENCHMARKS.template.md"
DEFAULT_OUTPUT = REPOSITORY / "BENCHMARKS.md"
DEFAULT_PLOTS = REPOSITORY / "docs" / "benchmarks"
PROGRAM = "bench-report"

PlotWriter = Callable[[Plot, Any, Path], None]


def draw_plot(plot: Plot, data: Any, path: Path) -> None:
    plot.draw(data, path)


def warn(message: str) -> None:
    print(f"{PROGRAM}: warning: {message}", file=sys.stderr)


@dataclass(frozen=True)
class Paths:
    results: Path
    template: Path
    output: Path
    plots: Path


def parse_arguments(argv: list[str] | None) -> tuple[Paths, Options]:
    parser = argparse.ArgumentParser(
        prog=f"scripts/{PROGRAM}",
        description="Fill BENCHMARKS.md's tables from a results directory of scripts/benchmarks, "
                    "and draw its plots (SVG). The layout and the placeholders are described in "
                    "scripts/bench_report/__init__.py.")
    parser.add_argument("results", type=Path, metavar="RESULTS_DIR")
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE,
                        help="the hand-written template (default: benchmarks/BENCHMARKS.template.md)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="the report to write (default: BENCHMARKS.md)")
    parser.add_argument("--plots", type=Path, default=DEFAULT_PLOTS,
                        help="the directory of the SVG plots (default: docs/benchmarks)")
    parser.add_argument("--events-per-purchase", type=positive_number, default=None, metavar="N",
                        help="events one distributed purchase writes, for the Kafka ceiling ratio when "
                             "the runs do not report it")
    arguments = parser.parse_args(argv)
    paths = Paths(arguments.results, arguments.template, arguments.output, arguments.plots)
    return paths, Options(events_per_purchase=arguments.events_per_purchase)


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not positive")
    return value


def main(argv: list[str] | None = None, plot_writer: PlotWriter = draw_plot) -> int:
    paths, options = parse_arguments(argv)
    try:
        generate_report(paths, options, plot_writer)
    except TemplateError as problem:
        print(f"{PROGRAM}: error: {paths.template}:\n{problem}", file=sys.stderr)
        return 1
    except FileNotFoundError as problem:
        print(f"{PROGRAM}: error: {problem}", file=sys.stderr)
        return 1
    return 0


def generate_report(paths: Paths, options: Options, plot_writer: PlotWriter = draw_plot) -> None:
    """Checks the template first (so that a typo costs nothing), then reads the results,
    draws the plots, and writes the report last."""
    if not paths.template.is_file():
        raise FileNotFoundError(f"template {paths.template} not found")
    if not paths.results.is_dir():
        raise FileNotFoundError(f"results directory {paths.results} not found")
    with paths.template.open(encoding="utf-8", newline="") as template_file:
        template_text = template_file.read()
    placeholders = find_placeholders(template_text, {"table": set(TABLES), "plot": set(PLOTS)})
    results = load_results(paths.results)
    for message in results.warnings:
        warn(message)
    written_plots = write_plots(results, options, paths.plots, plot_writer)

    def replacement(placeholder: Placeholder) -> str:
        if placeholder.kind == "table":
            return TABLES[placeholder.name](results, options)
        return plot_reference(PLOTS[placeholder.name], written_plots, paths.output)

    report = expand(template_text, placeholders, replacement)
    write_atomically(paths.output, report)
    print(f"{PROGRAM}: wrote {paths.output} ({len(placeholders)} placeholders) and "
          f"{len(written_plots)} of {len(PLOTS)} plots in {paths.plots}; "
          f"{len(results.warnings)} warning{'s' if len(results.warnings) != 1 else ''}")


def write_plots(results: Results, options: Options, directory: Path, plot_writer: PlotWriter) -> dict[str, Path]:
    """Every plot whose data is there; a plot whose data is missing is skipped, and an
    SVG left for it by an earlier run is removed so that it cannot pass for this one."""
    written = {}
    for plot in PLOTS.values():
        path = directory / f"{plot.name}.svg"
        data = plot.data(results, options)
        if data is None:
            warn(f"plot {plot.name} skipped: its data is not measured in this run")
            if path.exists():
                path.unlink()
                warn(f"removed {path}, left by an earlier run")
            continue
        plot_writer(plot, data, path)
        written[plot.name] = path
    return written


def plot_reference(plot: Plot, written_plots: dict[str, Path], output: Path) -> str:
    path = written_plots.get(plot.name)
    if path is None:
        return f"_{NOT_MEASURED}_"
    relative = os.path.relpath(path.resolve(), output.resolve().parent)
    return f"![{plot.alt}]({Path(relative).as_posix()})"


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8", newline="")
    temporary.replace(path)
