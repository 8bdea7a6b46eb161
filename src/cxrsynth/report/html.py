"""The report as one self-contained HTML page.

Self-contained means: every image is a ``data:image/png;base64,…`` URI, the CSS is inline, there is
no script and no reference to anything outside the file (links are in-page anchors only), so the
page opens offline, can be mailed or archived as one file, and prints (print CSS keeps figures and
tables whole and keeps the colours of the verdict).

Every section has a stable ``id`` (:data:`SECTION_IDS`); a stage that has not run shows "Not run"
and the command that runs it. All text from the run folder is escaped with :func:`html.escape`.
For a DP run, whatever the guarantee does not cover is labelled where it is shown (:mod:`.coverage`),
and the training seed is not printed.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cxrsynth.audit.runner import table_rows as audit_table_rows
from cxrsynth.evaluate import table as fidelity_table
from cxrsynth.report import coverage
from cxrsynth.report.collect import training_seconds
from cxrsynth.report.verdict import (EPS_LB_CONFIDENCE, dp_guarantee, family_alpha_sentence, family_test_rows,
                                     p_value, patient_id_warning, power_statement)

SECTION_IDS: tuple[str, ...] = (
    "verdict", "pipeline", "summary", "training", "images", "fidelity", "utility", "privacy",
    "dp", "audit", "roc", "memorization", "reidentification",
)
"""Every section of the page, by its ``id``; the ``privacy`` section holds the five after it."""

NOT_RUN_CLASS = "not-run"

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1b1f24;
       max-width: 1100px; margin: 0 auto; padding: 1.2em 1.6em 3em; line-height: 1.45; font-size: 15px; }
h1 { font-size: 1.7em; margin-bottom: 0.1em; } h2 { border-bottom: 2px solid #d0d7de; padding-bottom: 0.2em; margin-top: 1.8em; }
h3 { margin-top: 1.3em; } .meta { color: #57606a; font-size: 0.9em; }
nav { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 0.5em 1em; font-size: 0.9em; }
nav a { margin-right: 1em; color: #0969da; text-decoration: none; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { background: #f6f8fa; padding: 0.1em 0.3em; border-radius: 4px; font-size: 0.9em; word-break: break-all; }
figure { margin: 0.8em 0; } figcaption { color: #57606a; font-size: 0.85em; margin-top: 0.3em; }
img { max-width: 100%; height: auto; image-rendering: auto; }
.pair { display: flex; gap: 1.5em; flex-wrap: wrap; align-items: flex-start; } .pair figure { flex: 1 1 300px; }
.headline { font-size: 1.15em; font-weight: 600; margin: 0.4em 0 0.8em; }
.answers { display: flex; gap: 0.8em; flex-wrap: wrap; }
.answer { flex: 1 1 300px; border-radius: 6px; border: 1px solid #d0d7de; border-left-width: 8px; padding: 0.5em 0.9em; }
.answer h3 { margin: 0.2em 0 0.4em; } .answer ul { padding-left: 1.2em; margin: 0.2em 0 0.6em; }
.answer .label { font-weight: 600; font-size: 0.9em; }
.good { border-left-color: #1a7f37; background: #f0fff4; } .caution { border-left-color: #bf8700; background: #fff8e6; }
.bad { border-left-color: #cf222e; background: #fff0f0; } .unknown { border-left-color: #8c959f; background: #f6f8fa; }
.not-run { border: 1px dashed #8c959f; background: #f6f8fa; border-radius: 6px; padding: 0.6em 0.9em; }
.warning { border-left: 6px solid #bf8700; background: #fff8e6; padding: 0.5em 0.9em; border-radius: 4px; }
.status-done { color: #1a7f37; font-weight: 600; } .status-missing { color: #cf222e; font-weight: 600; }
@media print {
  body { max-width: none; font-size: 11pt; padding: 0; } nav { display: none; }
  figure, table, .answer, .not-run, .warning { break-inside: avoid; }
  h2, h3 { break-after: avoid; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


@dataclass(frozen=True)
class Images:
    """The PNG images the page embeds (bytes), by role; None where there is none.

    Attributes:
        training_curve: loss (and ε) against step.
        progress: the last progress grid of training.
        synthetic: grid of synthetic images.
        real: grid of real images (None when left out on purpose or unavailable).
        real_split: split the real images come from.
        figures: the stages' own figures, by name (``pixel_stats``, ``domain_features``,
            ``utility_auroc``, ``roc``, ``memorization``).
    """

    training_curve: bytes | None
    progress: bytes | None
    synthetic: bytes | None
    real: bytes | None
    real_split: str
    figures: dict[str, bytes]


@dataclass(frozen=True)
class PageOptions:
    """How the page is rendered.

    Attributes:
        include_real_images: embed real images (the real grid, the memorization pairs). Leave them out for
            a report that leaves the data custodian's hands.
        generated_at: timestamp shown in the header.
        version: cxrsynth version shown in the header.
    """

    include_real_images: bool
    generated_at: str
    version: str


def esc(value: object) -> str:
    """``value`` as HTML text (escaped)."""
    return html.escape(str(value), quote=True)


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,…`` URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img(png: bytes, alt: str, caption: str = "") -> str:
    """A ``<figure>`` embedding ``png`` with an alt text and an optional caption."""
    caption_html = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{data_uri(png)}" alt="{esc(alt)}">{caption_html}</figure>'


def not_run(reason: str, command: str | None) -> str:
    """The "Not run" box: why, and the command that runs the stage."""
    run = f" Run: <code>{esc(command)}</code>" if command else ""
    return f'<div class="{NOT_RUN_CLASS}"><strong>Not run.</strong> {esc(reason)}{run}</div>'


def table(header: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = ()) -> str:
    """An HTML table; columns whose index is in ``numeric`` are right-aligned."""
    head = "".join(f"<th>{esc(cell)}</th>" for cell in header)
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{esc(cell)}</td>' if i in numeric else f"<td>{esc(cell)}</td>"
                        for i, cell in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def section(section_id: str, title: str, body: str, level: int = 2) -> str:
    """A ``<section id=…>`` with a heading."""
    return f'<section id="{section_id}"><h{level}>{esc(title)}</h{level}>{body}</section>'


def _bullets(items: Iterable[str]) -> str:
    # Backticks mark commands in the verdict's sentences: shown as code.
    rendered = []
    for item in items:
        parts = esc(item).split("`")
        rendered.append("".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts)))
    return "<ul>" + "".join(f"<li>{item}</li>" for item in rendered) + "</ul>"


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def verdict_section(verdict) -> str:
    """The three answers, with evidence, what may and may not be claimed, and next steps."""
    cards = []
    for answer in verdict.answers:
        parts = [f"<h3>{esc(answer.question)} {esc(answer.short)}</h3>",
                 '<div class="label">Evidence</div>', _bullets(answer.evidence)]
        if answer.can_claim:
            parts += ['<div class="label">You can claim</div>', _bullets(answer.can_claim)]
        if answer.cannot_claim:
            parts += ['<div class="label">You cannot claim</div>', _bullets(answer.cannot_claim)]
        if answer.next_steps:
            parts += ['<div class="label">Next steps</div>', _bullets(answer.next_steps)]
        cards.append(f'<div class="answer {answer.level}">{"".join(parts)}</div>')
    body = (f'<p class="headline">{esc(verdict.headline)}</p>'
            "<p>Each answer follows from the numbers further down; the sections below show how they were measured.</p>"
            f'<div class="answers">{"".join(cards)}</div>')
    return section("verdict", "Verdict: realistic, useful, safe to share?", body)


def pipeline_section(contents) -> str:
    """Which stages ran, what they left, and the command for each one that did not."""
    rows = []
    for status in contents.stages.values():
        state = ('<span class="status-done">done</span>' if status.done
                 else '<span class="status-missing">not run</span>')
        command = "" if status.done else f"<code>{esc(status.command)}</code>"
        rows.append(f"<tr><td>{esc(status.name)}</td><td>{state}</td><td>{esc(status.summary)}</td><td>{command}</td></tr>")
    dp = "yes (privacy.json)" if contents.trained_with_dp else "no"
    body = ("<table><thead><tr><th>stage</th><th>status</th><th>found</th><th>command to run it</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table><p>Trained with differential privacy: {esc(dp)}.</p>")
    return section("pipeline", "Pipeline stages", body)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not recorded"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def summary_section(contents) -> str:
    """Data source and counts, model, training settings, time and hardware."""
    parts = []
    if contents.data_summary is not None:
        summary = contents.data_summary
        meta = contents.data.meta
        parts.append(f"<p>Data: <code>{esc(summary['root'])}</code> — source {esc(meta.get('source', '?'))}, format "
                     f"{esc(summary['format'])}, {summary['size']}×{summary['size']} pixels, {summary['images']:,} images.</p>")
        rows = [(split, f"{counts['images']:,}", f"{counts['patients']:,}", role)
                for (split, counts), role in zip(summary["splits"].items(),
                                                 ("trained on", "never trained on; the audit's non-members",
                                                  "never trained on; fidelity and utility reference"))]
        parts.append(table(("split", "images", "patients", "role"), rows, numeric=(1, 2)))
    else:
        parts.append(not_run(contents.stages["data"].summary, contents.stages["data"].command))
    rows = []
    config, facts = contents.config, contents.facts
    if config is not None:
        logged = contents.train_log[-1]["step"] if contents.train_log else 0
        total = facts.total_steps if facts is not None else config.max_steps
        rows += [("UNet preset", config.preset), ("conditional on labels", "yes" if config.conditional else "no"),
                 ("steps trained / planned", f"{logged} / {total}"),
                 ("batch size × accumulation", f"{config.batch_size} × {config.grad_accum}"),
                 ("learning rate, EMA decay", f"{config.lr:g}, {config.ema_decay:g}"),
                 ("seed", config.seed if coverage.show_training_seed(contents.trained_with_dp) else coverage.SEED_HIDDEN)]
    if facts is not None:
        images_per_step = facts.global_batch_size
        rows += [("parameters", f"{facts.unet_parameters:,}"), ("label sets", facts.label_sets),
                 ("members trained on", f"{facts.member_images:,} images of {facts.member_patients:,} patients"
                  + (f" — {coverage.MEMBER_IMAGES_LABEL}" if contents.trained_with_dp else "")),
                 ("training time", _duration(training_seconds(contents.train_log, images_per_step))
                  + " (from logged throughput; excludes start-up and checkpoints)"
                  + (f" — {coverage.THROUGHPUT_LABEL}" if contents.trained_with_dp else "")),
                 ("hardware", _hardware(contents)),
                 ("versions", ", ".join(f"{name} {version}" for name, version in facts.versions.items()))]
    rows.append(("differential privacy", "yes" if contents.trained_with_dp else "no"))
    parts.append(table(("setting", "value"), rows))
    return section("summary", "Run summary", "".join(parts))


def _hardware(contents) -> str:
    facts, config = contents.facts, contents.config
    text = f"{facts.num_processes} training process(es), mixed precision {config.mixed_precision if config else '?'}"
    if contents.audit is not None:
        text += f"; audit on {contents.audit.get('settings', {}).get('device', '?')}"
    if facts.hardware:
        return f"{facts.hardware}; " + text
    return text + " (the training device itself is not recorded in the run folder)"


def training_section(contents, images: Images) -> str:
    """The training curve (and ε for a DP run) and the last progress grid."""
    if images.training_curve is None:
        status = contents.stages["train"]
        return section("training", "Training", not_run(f"no training log: {status.summary}", status.command))
    if contents.trained_with_dp:
        caption = (f"Left: mean training loss per logged step (log scale) — {coverage.LOSS_LABEL}. Right: ε spent "
                   "against step (covered: it depends only on the noise and sampling schedule).")
    else:
        caption = "Mean training loss per logged step (log scale)."
    body = img(images.training_curve, "training loss against step", caption)
    if not contents.has_pipeline:
        body += not_run(contents.stages["train"].summary, contents.stages["train"].command)
    if images.progress is not None:
        body += img(images.progress, "progress grid", f"Samples drawn during training: {contents.figures['progress'].name}.")
    return section("training", "Training", body)


def images_section(contents, images: Images, options: PageOptions) -> str:
    """Synthetic images beside real ones."""
    if images.synthetic is None:
        status = contents.stages["sample"]
        return section("images", "Synthetic beside real images", not_run(status.summary, status.command))
    settings = contents.samples.settings or {}
    how = f"{settings.get('sampler', '?')}, {settings.get('steps', '?')} steps" if settings else "settings unknown"
    synthetic = img(images.synthetic, "synthetic images", f"Synthetic: the first images of {contents.samples.count} ({how}).")
    if images.real is not None:
        trained = ("training images: the data has no other split" if images.real_split == "member"
                   else "never trained on")
        label = coverage.REAL_IMAGES_LABEL if contents.trained_with_dp else "real patients, not synthetic"
        real = img(images.real, "real images",
                   f"Real: random images of the {images.real_split} split ({trained}) — {label}.")
    elif not options.include_real_images:
        real = '<div class="warning">Real images left out of this report (--no-real-images).</div>'
    else:
        real = not_run("the prepared data was not found, so no real images can be shown", contents.stages["data"].command)
    return section("images", "Synthetic beside real images", f'<div class="pair">{synthetic}{real}</div>')


def _skip_reasons(fidelity: dict) -> list[tuple[str, str]]:
    """``(metrics, why)`` rows of what evaluate did not compute; metrics skipped for the same reason share one row
    (the Inception weights' absence used to be said four times, once each for FID, KID, precision and recall)."""
    reasons: dict[str, list[str]] = {}
    for key in ("fid", "kid", "precision", "recall", "domain", "utility", "diversity", "pixel"):
        reason = fidelity.get(f"{key}_skipped")
        if reason:
            reasons.setdefault(str(reason), []).append(key)
    return [(", ".join(keys), reason) for reason, keys in reasons.items()]


def fidelity_section(contents, images: Images) -> str:
    """The evaluation table (metric, value, real-vs-real baseline, N), what was not computed, plots."""
    status = contents.stages["evaluate"]
    if contents.fidelity is None:
        return section("fidelity", "Fidelity: how realistic", not_run(status.summary, status.command))
    fidelity = contents.fidelity
    body = [f"<p>Synthetic images against {fidelity['n_real']:,} real <em>{esc(fidelity['reference'])}</em> images; "
            f"the real baseline is the same metric for unseen real images ({esc(fidelity['baseline_split'])}), i.e. "
            "what “as good as real” looks like at this N.</p>",
            table(("metric", "value", "real-vs-real baseline", "N"),
                  coverage.mark_fidelity_rows(fidelity_table.table_rows(fidelity), fidelity, contents.trained_with_dp))]
    if contents.trained_with_dp:
        body.append(f'<p class="meta">{esc(coverage.fidelity_footnote(fidelity))}</p>')
    reasons = _skip_reasons(fidelity)
    if reasons:
        body.append("<p>Not computed:</p>" + table(("metric", "why"), reasons))
    if fidelity.get("warnings"):
        body.append('<div class="warning">' + _bullets(fidelity["warnings"]) + "</div>")
    domain_caption = "Domain-classifier features, first two principal components" + (
        f" — {coverage.DOMAIN_LABEL}." if contents.trained_with_dp else ".")
    for name, caption in (("pixel_stats", "Intensity histograms and radial power spectra."),
                          ("domain_features", domain_caption)):
        if name in images.figures:
            body.append(img(images.figures[name], name, caption))
    return section("fidelity", "Fidelity: how realistic", "".join(body))


def utility_section(contents, images: Images) -> str:
    """Train-on-synthetic / test-on-real AUROC per finding, or why it was not measured."""
    status = contents.stages["evaluate"]
    if contents.fidelity is None:
        return section("utility", "Utility: train on synthetic, test on real", not_run(status.summary, status.command))
    utility = contents.fidelity.get("utility")
    if utility is None:
        reason = contents.fidelity.get("utility_skipped") or "not computed"
        return section("utility", "Utility: train on synthetic, test on real", not_run(reason, status.command))

    def auroc(value, interval) -> str:
        return "—" if value is None else f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")

    rows = [(row["finding"], row["n_positive_test"], row["n_positive_synthetic"],
             auroc(row["tstr_auroc"], row.get("tstr_auroc_ci")), auroc(row["trtr_auroc"], row.get("trtr_auroc_ci")))
            for row in utility["per_finding"]]
    rows.append(("macro", "", "", auroc(utility["tstr_auroc"], utility.get("tstr_auroc_ci")),
                 auroc(utility["trtr_auroc"], utility.get("trtr_auroc_ci"))))
    ratio = utility["ratio"]
    body = [f"<p>A classifier trained on {utility['n_train_synthetic']:,} synthetic images (TSTR) and the same classifier "
            f"trained on {utility['n_train_real']:,} real member images (TRTR), both tested on {utility['n_test']:,} real "
            f"test images. Ratio TSTR/TRTR: {ratio:.3f}"
            + (f" [{utility['ratio_ci'][0]:.3f}, {utility['ratio_ci'][1]:.3f}]" if utility.get("ratio_ci") else "")
            + " (95% bootstrap intervals in brackets)."
            + (f" {coverage.TRTR_LABEL[0].upper()}{coverage.TRTR_LABEL[1:]}." if contents.trained_with_dp else "")
            + "</p>",
            table(("finding", "positives (test)", "positives (synthetic)", "AUROC TSTR", "AUROC TRTR"), rows, numeric=(1, 2))]
    if "utility_auroc" in images.figures:
        body.append(img(images.figures["utility_auroc"], "utility AUROC per finding", "AUROC per finding, TSTR vs TRTR."))
    return section("utility", "Utility: train on synthetic, test on real", "".join(body))


def dp_section(contents) -> str:
    """The differential-privacy guarantee (ε, δ, unit, accountant, noise, steps), or that there is none."""
    statement, caveats = dp_guarantee(contents.privacy)
    if contents.privacy is None:
        return section("dp", "Differential-privacy guarantee", f"<p>{esc(statement)}</p>", level=3)
    keys = ("epsilon", "delta", "unit", "accountant", "noise_multiplier", "max_grad_norm", "sample_rate", "steps",
            "noise_multiplicity", "privacy_units", "logical_batch_size", "target_epsilon", "planned_steps",
            "stopped_early", "mechanism", "noise_source", "noise_rng", "public_assumption")
    rows = [(key, contents.privacy[key]) for key in keys if key in contents.privacy]
    body = f"<p>{esc(statement)}</p>" + _bullets(caveats) + table(("privacy.json", "value"), rows)
    return section("dp", "Differential-privacy guarantee", body, level=3)


def _audit_claims(contents) -> list[str]:
    """The audit's standing above its table: not covered by DP, understated leakage, power, how tests combine."""
    audit = contents.audit
    parts = []
    if contents.trained_with_dp:
        parts.append(f'<div class="warning">{esc(coverage.AUDIT_LABEL)}</div>')
    understated = patient_id_warning(audit)
    if understated:
        parts.append(f'<div class="warning"><strong>{esc(understated)}</strong></div>')
    power = power_statement(audit)
    if power:
        parts.append(f"<p>{esc(power)}</p>")
    rows = family_test_rows(audit)
    if rows:
        parts.append(f"<p>{esc(family_alpha_sentence(audit))}</p>"
                     + table(("test", "p-value", "Holm-adjusted p-value", "rejected"), rows, numeric=(1, 2)))
    parts.append(f"<p>ε lower bound: the empirical lower bound on the model's ε at δ = {audit['delta']:g}, with "
                 f"{esc(EPS_LB_CONFIDENCE)}.</p>")
    return parts


def audit_table_section(contents) -> str:
    """Membership-inference attacks: AUC with CI, TPR at 1% and 0.1% FPR, ε lower bound, NFE; power and tests."""
    audit = contents.audit
    n = audit["n_evaluation"]["members"]
    notes = sorted({note for result in audit["attacks"].values() for note in result.get("notes", [])})
    images = ("one image each" if not audit.get("patient_attacks") else
              "one image each in the image-level rows; up to "
              f"{audit['settings'].get('max_images_per_patient')} images per patient, aggregated, in the @patient rows")
    body = [f"<p>Evaluation half: {n} member vs {audit['n_evaluation']['nonmembers']} holdout patients ({images}); "
            f"δ = {audit['delta']:g} ({esc(audit.get('delta_source', ''))}). The audit's own verdict: "
            f"{esc(audit.get('verdict', ''))}</p>",
            *_audit_claims(contents),
            table(("attack", "access", "member if score", "AUC [95% CI]", "TPR@1%FPR", "TPR@0.1%FPR", "ε lower bound", "NFE"),
                  audit_table_rows(audit), numeric=(4, 5, 6, 7))]
    if notes:
        body.append("<p>Notes:</p>" + _bullets(notes))
    if audit.get("warnings"):
        body.append('<div class="warning">' + _bullets(audit["warnings"]) + "</div>")
    return section("audit", "Membership-inference audit", "".join(body), level=3)


def _audit_note(contents) -> str:
    """The sentence that follows an audit caption of a DP run: computed from the members, not covered ("" without DP)."""
    return f" Computed from the member images: {coverage.NOT_COVERED}." if contents.trained_with_dp else ""


def roc_section(contents, images: Images) -> str:
    """The audit's log-log ROC curves."""
    if "roc" not in images.figures:
        return section("roc", "ROC curves (log-log)", not_run("the audit wrote no roc.png", None), level=3)
    return section("roc", "ROC curves (log-log)", img(images.figures["roc"], "ROC curves",
                   "Every attack on the evaluation half, log-log axes: the low-FPR corner is where a leak matters."
                   + _audit_note(contents)), level=3)


def _p(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def memorization_section(contents, images: Images, options: PageOptions) -> str:
    """Memorization numbers and the closest (synthetic | training image) pairs."""
    audit = contents.audit
    memorization = audit.get("memorization")
    if memorization is None:
        return section("memorization", "Memorization", not_run(audit.get("memorization_skipped") or "not measured",
                                                                 contents.stages["sample"].command), level=3)
    rows = [("synthetic images checked", memorization["n_synthetic"]),
            ("training images compared", memorization["n_member_images"]),
            ("near-copies (ratio < threshold)", f"{memorization['n_flagged']} ({memorization['fraction_flagged']:.1%})"),
            ("ratio threshold (Carlini et al.)", f"{memorization['ratio_threshold']:.3f}"),
            ("smallest / median ratio", f"{memorization['min_ratio']:.3f} / {memorization['median_ratio']:.3f}")]
    for name in ("dcr_pixel", "dcr_domain"):
        dcr = memorization.get(name)
        if dcr:
            rows.append((f"{name}: closer to member than holdout",
                         f"{dcr['fraction_closer_to_member']:.1%} (p = {_p(p_value(dcr))})"))
    body = table(("memorization", "value"), rows)
    if contents.trained_with_dp:
        body += f'<p class="meta">{esc(_audit_note(contents).strip())}</p>'
    if "memorization" in images.figures and options.include_real_images:
        body += img(images.figures["memorization"], "closest synthetic and training image pairs",
                    "Distance to closest record, and the closest pairs: synthetic | nearest training image (training "
                    "images are real patients" + (f", {coverage.NOT_COVERED}" if contents.trained_with_dp else "") + ").")
    elif not options.include_real_images:
        body += '<div class="warning">The closest pairs show training images: left out (--no-real-images).</div>'
    return section("memorization", "Memorization", body, level=3)


def reidentification_section(contents) -> str:
    """The patient re-identification result."""
    audit = contents.audit
    reid = audit.get("reidentification")
    if reid is None:
        return section("reidentification", "Patient re-identification",
                       not_run(audit.get("reidentification_skipped") or "not measured", contents.stages["audit"].command), level=3)
    rows = [("verification AUC (unseen patients)", f"{reid['verification_auc']:.3f}"),
            ("synthetic images linked to member patients", f"{reid['linked_to_member']} of {reid['n_synthetic']} "
             f"({reid['fraction_linked_to_member']:.1%})"),
            ("linked to never-trained-on patients", f"{reid['fraction_linked_to_holdout']:.1%}"),
            (f"one-sided p towards members ({reid.get('test') or 'binomial test'})", _p(p_value(reid))),
            ("gallery patients per side", reid["gallery_patients_per_split"]),
            ("network trained on patients", reid["n_train_patients"])]
    text = ("<p>A patient-verification network, trained only on patients that are neither members nor in the gallery, "
            "links each synthetic image to the most similar gallery patient; with equally many member and holdout "
            "patients in the gallery, about half the links go to members when nothing leaks.</p>")
    note = f'<p class="meta">{esc(_audit_note(contents).strip())}</p>' if contents.trained_with_dp else ""
    return section("reidentification", "Patient re-identification",
                   text + table(("re-identification", "value"), rows) + note, level=3)


def privacy_section(contents, images: Images, options: PageOptions) -> str:
    """Privacy: DP guarantee, audit table, ROC, memorization, re-identification."""
    parts = [dp_section(contents)]
    if contents.audit is None:
        status = contents.stages["audit"]
        for section_id, title in (("audit", "Membership-inference audit"), ("roc", "ROC curves (log-log)"),
                                  ("memorization", "Memorization"), ("reidentification", "Patient re-identification")):
            parts.append(section(section_id, title, not_run(status.summary, status.command), level=3))
    else:
        parts += [audit_table_section(contents), roc_section(contents, images), memorization_section(contents, images, options),
                  reidentification_section(contents)]
    return section("privacy", "Privacy", "".join(parts))


def problems_section(contents) -> str:
    """Files that could not be read (empty string when none)."""
    if not contents.problems:
        return ""
    return f'<div class="warning"><strong>Problems reading the run folder:</strong>{_bullets(contents.problems)}</div>'


def render_page(contents, verdict, images: Images, options: PageOptions) -> str:
    """The whole HTML page.

    Args:
        contents: a :class:`cxrsynth.report.collect.RunContents`.
        verdict: its :class:`cxrsynth.report.verdict.Verdict`.
        images: the PNGs to embed.
        options: rendering options.

    Returns:
        The page as a string (UTF-8, no external references).
    """
    run = Path(contents.run)
    nav = "".join(f'<a href="#{section_id}">{esc(section_id)}</a>'
                  for section_id in ("verdict", "pipeline", "summary", "training", "images", "fidelity", "utility", "privacy"))
    warning = ""
    if options.include_real_images and (images.real is not None or "memorization" in images.figures):
        warning = ('<p class="warning">This report shows real patient images (the real grid and the memorization '
                   "pairs): keep it as confidential as the training data, or render it with "
                   "<code>--no-real-images</code> before it leaves the data custodian.</p>")
    body = "".join([
        f"<h1>cxrsynth report: {esc(run.name)}</h1>",
        f'<p class="meta">Run folder <code>{esc(run)}</code> · generated {esc(options.generated_at)} by cxrsynth '
        f"{esc(options.version)} · one self-contained file, readable offline.</p>",
        warning, problems_section(contents), f"<nav>{nav}</nav>",
        verdict_section(verdict), pipeline_section(contents), summary_section(contents),
        training_section(contents, images), images_section(contents, images, options),
        fidelity_section(contents, images), utility_section(contents, images),
        privacy_section(contents, images, options),
    ])
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>cxrsynth report: {esc(run.name)}</title><style>{CSS}</style></head>"
            f"<body>{body}</body></html>\n")
