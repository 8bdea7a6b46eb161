"""The summary table of ``fidelity.json``: what ``cxrsynth evaluate`` prints and the report and model card show.

Light to import (no torch): the report reads a run's table without loading the metric code.
"""

from __future__ import annotations

from rich.table import Table

NOT_REQUESTED = "not requested (--metrics)"
"""The ``*_skipped`` reason of a metric group left out of ``--metrics``."""


def _number(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _interval(interval: list[float] | None) -> str:
    return "" if not interval else f" [{interval[0]:.3g}, {interval[1]:.3g}]"


def _skipped(report: dict, key: str) -> bool:
    """True when ``key``'s metric was requested but could not be computed."""
    reason = report.get(f"{key}_skipped")
    return bool(reason) and reason != NOT_REQUESTED


def table_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """Rows (metric, value, real baseline, N) of the summary table (groups not requested are left out)."""
    n_pair = f"{report['n_real']} / {report['n_synthetic']}"
    base = f" ({report['baseline_split']}, N={report['n_real_baseline']})"
    rows = []
    for key, label in (("fid", "FID (Inception)"), ("kid", "KID (Inception)"), ("precision", "precision (Inception)"),
                       ("recall", "recall (Inception)")):
        if report[key] is None and not _skipped(report, key):
            continue
        if report[key] is not None:
            value = _number(report[key]) + (f" ± {report['kid_std']:.2g}" if key == "kid" else "")
        else:
            value = "skipped" if report.get(f"{key}_skipped") else "—"
        rows.append((label, value, "—", n_pair))
    if report["fd_domain"] is not None:
        sampling = report.get("fd_domain_sampling") or {}
        matched = report.get("matched_n") or report["n_synthetic"]
        matched_base = f" ({report['baseline_split']}, N={matched})"
        fd_n = (f"{sampling['n_reference']} / {sampling['n']} per half-sample (matched N={matched})"
                if sampling else n_pair)
        matched_pair = f"{report['n_real']} / {matched}"
        rows.append(("FD (domain)", _number(report["fd_domain"]) + _interval(report["fd_domain_ci"]),
                     _number(report["fd_domain_real_baseline"]) + _interval(report.get("fd_domain_real_baseline_ci"))
                     + matched_base, fd_n))
        rows.append(("precision (domain, k=3)", _number(report["precision_domain"], 3),
                     _number(report["precision_domain_real_baseline"], 3) + matched_base, matched_pair))
        rows.append(("recall (domain, k=3)", _number(report["recall_domain"], 3),
                     _number(report["recall_domain_real_baseline"], 3) + matched_base, matched_pair))
    elif _skipped(report, "domain"):
        rows.append(("FD (domain)", "skipped", "—", n_pair))
    utility = report["utility"]
    if utility is not None:
        trained = utility.get("matched_n_train")
        test_n = f"{utility['n_test']} test" + (
            f" ({utility['n_test_patients']} patients)" if utility.get("n_test_patients") is not None else ""
        ) + (f"; {trained} train each" if trained is not None else "")
        rows.append(("AUROC macro: TSTR | TRTR", _number(utility["tstr_auroc"], 3) + _interval(utility["tstr_auroc_ci"]),
                     _number(utility["trtr_auroc"], 3) + _interval(utility["trtr_auroc_ci"]), test_n))
        rows.append(("utility ratio TSTR/TRTR", _number(utility["ratio"], 3) + _interval(utility["ratio_ci"]), "1", test_n))
    elif _skipped(report, "utility"):
        rows.append(("utility (TSTR/TRTR)", "skipped", "—", ""))
    if report["diversity"] is not None:
        div = report["diversity"]
        rows.append(("MS-SSIM of pairs (lower = diverse)", _number(div["ms_ssim_synthetic"], 3),
                     _number(div["ms_ssim_real"], 3) + f" ({report['reference']})", f"{div['n_pairs']} pairs"))
    if report["pixel"] is not None:
        pix = report["pixel"]
        rows.append(("histogram W1 (gray levels)", _number(pix["histogram_wasserstein"], 3),
                     _number(pix["histogram_wasserstein_real_baseline"], 3) + base, n_pair))
        rows.append(("power spectrum dist. (decades)", _number(pix["power_spectrum_distance"], 3),
                     _number(pix["power_spectrum_distance_real_baseline"], 3) + base, n_pair))
    found = report.get("artefacts")
    if found is not None:
        rows.append(("artefact rate (noise > real 99.5%)", f"{found['rate']:.1%} ({found['count']} of {found['n_synthetic']})",
                     f"{found['real_baseline']:.1%} ({report['baseline_split']}, N={found['n_real_baseline']})",
                     f"threshold from {found['n_reference']} {report['reference']}"))
    return rows


def results_table(report: dict) -> Table:
    """A rich ``Table`` of :func:`table_rows` (metric, value, real baseline, N)."""
    table = Table(
        title=f"cxrsynth evaluate — reference: {report['reference']} (N real / N synthetic), seed {report['seed']}"
    )
    for column in ("metric", "value", "real baseline", "N"):
        table.add_column(column)
    for row in table_rows(report):
        table.add_row(*row)
    return table
