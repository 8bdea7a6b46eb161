"""``cxrsynth report --run RUN``: write ``RUN/report.html`` and ``RUN/MODEL_CARD.md``.

Works for any run folder — finished or not, DP or not, conditional or not: what is missing is
shown as not run, with the command that runs it. Both files are written atomically; nothing else
in the run folder changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from cxrsynth.fsutil import atomic_write_text
from cxrsynth.report.collect import collect_run
from cxrsynth.report.figures import mosaic_png, synthetic_and_real, training_curve_png
from cxrsynth.report.html import Images, PageOptions, render_page
from cxrsynth.report.model_card import render_model_card
from cxrsynth.report.verdict import build_verdict

REPORT_FILE = "report.html"
MODEL_CARD_FILE = "MODEL_CARD.md"

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    """Default log: discard."""


@dataclass(frozen=True)
class ReportOptions:
    """Options of :func:`write_report` (the ``cxrsynth report`` options).

    Attributes:
        data: prepared-data folder overriding the one in ``RUN/config.yaml``.
        samples: samples folder (default ``RUN/samples``).
        include_real_images: embed real images (real grid, memorization pairs); False for a report
            that leaves the data custodian's hands.
        seed: seed of the real images shown.
    """

    data: Path | None = None
    samples: Path | None = None
    include_real_images: bool = True
    seed: int = 0


@dataclass(frozen=True)
class ReportResult:
    """What :func:`write_report` wrote.

    Attributes:
        html: path of ``report.html``.
        model_card: path of ``MODEL_CARD.md``.
        verdict: the :class:`cxrsynth.report.verdict.Verdict`.
        contents: the :class:`cxrsynth.report.collect.RunContents` it was built from.
    """

    html: Path
    model_card: Path
    verdict: object
    contents: object


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cxrsynth")
    except PackageNotFoundError:
        return "unknown"


def gather_images(contents, options: ReportOptions):
    """The PNGs the page embeds: training curve, progress grid, synthetic/real grids, the stages' figures.

    Returns:
        A :class:`cxrsynth.report.html.Images`.
    """
    target = contents.privacy.get("target_epsilon") if contents.privacy else None
    curve = training_curve_png(contents.train_log, float(target) if isinstance(target, (int, float)) else None,
                               private_loss=contents.trained_with_dp)
    synthetic, real, split = synthetic_and_real(contents, seed=options.seed)
    figures = {name: path.read_bytes() for name, path in contents.figures.items() if name != "progress"}
    if not options.include_real_images:
        real = None
        figures.pop("memorization", None)  # its closest pairs are training images
    progress = contents.figures["progress"].read_bytes() if "progress" in contents.figures else None
    return Images(
        training_curve=curve,
        progress=progress,
        synthetic=mosaic_png(synthetic) if synthetic is not None else None,
        real=mosaic_png(real) if real is not None else None,
        real_split=split,
        figures=figures,
    )


def write_report(run: str | Path, options: ReportOptions | None = None, log: Log = _quiet) -> ReportResult:
    """Build the report of a run and write ``RUN/report.html`` and ``RUN/MODEL_CARD.md``.

    Args:
        run: the run folder.
        options: report options (defaults when None).
        log: receives one line per step.

    Returns:
        The :class:`ReportResult`.

    Raises:
        CxrsynthError: when ``run`` is not a run folder (no ``config.yaml`` and no ``pipeline/``).
    """
    options = options or ReportOptions()
    run = Path(run)
    log(f"reading {run}")
    contents = collect_run(run, options.data, options.samples)
    for name, status in contents.stages.items():
        log(f"{name}: done — {status.summary}" if status.done else f"{name}: {status.summary}")
    verdict = build_verdict(contents)
    log("drawing figures")
    images = gather_images(contents, options)
    generated_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    version = _version()
    page = render_page(contents, verdict, images,
                       PageOptions(include_real_images=options.include_real_images, generated_at=generated_at,
                                   version=version))
    html_path = atomic_write_text(run / REPORT_FILE, page)
    card_path = atomic_write_text(run / MODEL_CARD_FILE, render_model_card(contents, verdict, generated_at, version))
    log(f"wrote {html_path} and {card_path}")
    return ReportResult(html=html_path, model_card=card_path, verdict=verdict, contents=contents)
