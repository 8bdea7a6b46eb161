"""``cxrsynth demo``: the whole pipeline on the built-in phantom dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cxrsynth.cli.common import threads_option, torch_threads
from cxrsynth.evaluate.table import results_table


def demo_command(
    out: Path = typer.Option(Path("demo"), "--out", help="Folder for the phantom, prepared data and run (reused: re-running resumes)."),
    quick: bool = typer.Option(
        False, "--quick", help="A small, fast run (under 3 minutes on 2 CPU cores) that checks the plumbing, not the quality."
    ),
    threads: Optional[int] = threads_option(),
) -> None:
    """Run phantom → prepare → train → sample → evaluate → audit → report on the built-in phantom dataset.

    The default plan takes about 15 minutes on 2 CPU cores; re-running resumes from what exists. The end
    prints the key numbers, the verdict and the path of RUN/report.html.
    """
    from rich.console import Console

    from cxrsynth.demo import run_demo

    console = Console()
    with torch_threads(threads):
        result = run_demo(out, quick=quick, log=lambda line: console.print(line, highlight=False))
    console.print("\n[bold]demo finished[/]")
    for name, seconds in result.stage_seconds.items():
        console.print(f"  {name:<9} {seconds:7.1f} s")
    if result.fidelity is not None:
        console.print(results_table(result.fidelity))
    if result.audit is not None:
        console.print(f"audit verdict: {result.audit.get('verdict')}")
    if result.report is not None:
        verdict = result.report.verdict
        console.print("\n[bold]key numbers[/]")
        for label, value in verdict.key_numbers:
            console.print(f"  {label}: {value}", highlight=False)
        console.print(f"[bold]verdict:[/] {verdict.headline}", highlight=False)
        # soft_wrap: a path cut across lines cannot be copied (or found by a script reading the output).
        console.print(f"[bold]report:[/] {result.report.html}  (open it in a browser; model card: "
                      f"{result.report.model_card})", highlight=False, soft_wrap=True)
    console.print(f"run folder: {result.run}")


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to the root app."""
    app.command("demo")(demo_command)
