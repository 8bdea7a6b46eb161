"""``MODEL_CARD.md``: what the model is, what it was trained on, how it measured up, and what not to use it for.

Follows the usual model-card headings (Mitchell et al., "Model Cards for Model Reporting", 2019):
model details, intended use, training data, evaluation, privacy, verdict, limitations, how to use.
It carries numbers and words only — never an image — so it can travel with the model. For a DP run
it never names the training seed, and labels every number the guarantee does not cover (:mod:`.coverage`).
"""

from __future__ import annotations

from typing import Iterable, Sequence

from cxrsynth.audit.runner import table_rows as audit_table_rows
from cxrsynth.evaluate import table as fidelity_table
from cxrsynth.report import coverage
from cxrsynth.report.verdict import (EPS_LB_CONFIDENCE, family_alpha_sentence, family_test_rows, patient_id_warning,
                                     power_statement)


_MARKDOWN_SPECIAL = "\\`*_{}[]()!|~>"


def md_text(value: object) -> str:
    """``value`` as literal Markdown text: HTML (``&``, ``<``, ``>``) entity-escaped, Markdown syntax backslash-escaped.

    Finding names and paths come from the user's data: ``<img src=x onerror=...>`` or ``**x**`` in a
    labels CSV must show as typed, not render (or run) in whatever displays the card.
    """
    text = str(value).replace("&", "&amp;").replace("<", "&lt;")
    text = "".join(f"\\{char}" if char in _MARKDOWN_SPECIAL else char for char in text)
    return text.replace("\n", " ")


def md_code(value: object) -> str:
    """``value`` as an inline code span, fenced with more backticks than it contains (so it cannot close early)."""
    import re

    text = str(value).replace("\n", " ")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table (``|`` in cells escaped)."""
    lines = ["| " + " | ".join(_cell(cell) for cell in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _model_details(contents, verdict) -> list[str]:
    config, facts = contents.config, contents.facts
    lines = ["## Model details", ""]
    if config is None:
        return lines + ["The run folder has no readable `config.yaml`: the training settings are unknown.", ""]
    conditioning = coverage.conditioning_text(config, facts.label_sets if facts else None)
    rows = [
        ("type", "denoising diffusion probabilistic model (DDPM): diffusers `UNet2DModel` + `DDPMScheduler`"),
        ("UNet preset", f"{config.preset}" + (f", {facts.unet_parameters:,} parameters" if facts else "")),
        ("noise schedule", f"{config.num_train_timesteps} steps, {config.beta_schedule} β"),
        ("conditioning", conditioning),
        ("output", f"{facts.image_size}×{facts.image_size} 8-bit grayscale radiographs" if facts else "grayscale radiographs"),
        ("training", f"{facts.total_steps if facts else config.max_steps} steps, batch {config.batch_size} × "
                     f"{config.grad_accum}, AdamW lr {config.lr:g}, EMA {config.ema_decay:g}"
                     + (f", seed {config.seed}" if coverage.show_training_seed(contents.trained_with_dp) else "")),
        ("differential privacy", verdict.dp_statement),
    ]
    if config.canaries:  # cxrsynth.train.canaries: an audit run
        rows.append(("canaries", f"{config.canaries} synthetic canary patients, each trained on with probability ½, "
                                 "for a one-run privacy audit: an audit run, not for release"))
    if facts is not None and facts.versions:
        rows.append(("software", ", ".join(f"{name} {version}" for name, version in facts.versions.items())))
    return lines + [md_table(("", ""), rows), ""]


INTENDED_USE = """## Intended use

- Research and development: testing pipelines, data-augmentation experiments, teaching, and sharing images with
  people who may not see the real data — after the privacy review below, and only through `cxrsynth release`
  (screened; or, for a DP run, unscreened and covered by its guarantee).
- **Not** for diagnosis or any clinical decision, **not** as evidence about real patients or populations, and
  **not** as the only data to validate a clinical system.
- Not anonymous by construction: unless the model was trained with differential privacy, only the audit speaks to
  what it leaks, and an audit can show a leak but never prove its absence.
"""


def _training_data(contents) -> list[str]:
    lines = ["## Training data", ""]
    summary = contents.data_summary
    if summary is None:
        return lines + [f"The prepared data was not available when this card was written "
                        f"({contents.stages['data'].summary}).", ""]
    meta = contents.data.meta
    lines.append(f"Source {md_code(meta.get('source', '?'))} (format {md_text(summary['format'])}), prepared at "
                 f"{summary['size']}×{summary['size']}. Splits are by patient; the model trained only on `member`.")
    lines.append("")
    rows = [(split, counts["images"], counts["patients"]) for split, counts in summary["splits"].items()]
    dp = contents.trained_with_dp
    lines += [md_table(("split", "images" + (f" {coverage.MARK}" if dp else ""), "patients"), rows), ""]
    if dp:
        lines += [f"{coverage.MARK} {coverage.MEMBER_IMAGES_LABEL}.", ""]
    if summary.get("label_names"):
        names = ", ".join(md_text(name) for name in summary["label_names"])
        lines += [f"Findings: {names}" + (f" ({coverage.FINDINGS_LABEL})." if dp else "."), ""]
    return lines


def _evaluation(contents) -> list[str]:
    lines = ["## Evaluation", ""]
    fidelity = contents.fidelity
    if fidelity is None:
        return lines + [f"Not evaluated. Run `{contents.stages['evaluate'].command}`.", ""]
    lines += [f"Against {fidelity['n_real']} real `{fidelity['reference']}` images; the real-vs-real baseline is the same "
              f"metric for unseen real (`{fidelity['baseline_split']}`) images.", "",
              md_table(("metric", "value", "real-vs-real baseline", "N"),
                       coverage.mark_fidelity_rows(fidelity_table.table_rows(fidelity), fidelity, contents.trained_with_dp)), ""]
    if contents.trained_with_dp:
        lines += [coverage.fidelity_footnote(fidelity), ""]
    skipped = [f"{key}: {fidelity[key + '_skipped']}" for key in ("fid", "utility")
               if fidelity.get(f"{key}_skipped")]
    lines += [f"- Not computed — {reason}" for reason in skipped]
    return lines + [""]


def _privacy(contents, verdict) -> list[str]:
    lines = ["## Privacy", "", verdict.dp_statement, ""]
    audit = contents.audit
    if audit is None:
        return lines + [f"Not audited. Run `{contents.stages['audit'].command}`.", ""]

    lines += [f"Audit on {audit['n_evaluation']['members']} member vs {audit['n_evaluation']['nonmembers']} holdout "
              f"patients (evaluation half): {audit.get('verdict', '')}", ""]
    if contents.trained_with_dp:
        lines += [f"- {coverage.AUDIT_LABEL}"]
    understated = patient_id_warning(audit)
    if understated:
        lines += [f"- **{understated}**"]
    power = power_statement(audit)
    if power:
        lines += [f"- {power}"]
    lines += [f"- ε lower bound: with {EPS_LB_CONFIDENCE}, at δ = {audit['delta']:g}.", ""]
    lines += [md_table(("attack", "access", "member if score", "AUC [95% CI]", "TPR@1%FPR", "TPR@0.1%FPR",
                        "ε lower bound", "NFE"), audit_table_rows(audit)), ""]
    tests = family_test_rows(audit)
    if tests:
        lines += [family_alpha_sentence(audit), "",
                  md_table(("test", "p-value", "Holm-adjusted p-value", "rejected"), tests), ""]
    return lines


def _verdict(verdict) -> list[str]:
    lines = ["## Verdict", "", f"**{verdict.headline}**", ""]
    for answer in verdict.answers:
        lines += [f"### {answer.question} {answer.short}", ""]
        lines += [f"- {sentence}" for sentence in answer.evidence]
        if answer.can_claim:
            lines += ["", "You can claim:", ""] + [f"- {sentence}" for sentence in answer.can_claim]
        if answer.cannot_claim:
            lines += ["", "You cannot claim:", ""] + [f"- {sentence}" for sentence in answer.cannot_claim]
        lines.append("")
    return lines


LIMITATIONS = """## Limitations

- Fidelity metrics are computed at the training resolution on finite samples; distances at small N are biased
  upwards and compare only with runs evaluated at the same N.
- Utility is measured for one task (classifying the findings of this dataset) with one small classifier.
- The privacy audit tests specific attacks on a finite number of patients: its numbers bound what those attacks can
  see, they do not prove privacy. Synthetic images generated later are not covered by the audit's memorization and
  re-identification tests — screen them with `cxrsynth release`.
- The model reproduces the biases of its training data (scanner, population, label noise).
"""


def _how_to_use(contents) -> list[str]:
    run = contents.run
    return ["## How to use", "", "```python", "from diffusers import DDPMPipeline", "",
            f'pipeline = DDPMPipeline.from_pretrained("{run / "pipeline"}")', "```", "",
            f"or `cxrsynth sample --run {run} --num-images 100 --sampler dpmsolver`; to share images, "
            f"`cxrsynth release --run {run} --out DIR` ({coverage.release_advice(contents.trained_with_dp)}).", ""]


def render_model_card(contents, verdict, generated_at: str, version: str) -> str:
    """The text of ``MODEL_CARD.md``.

    Args:
        contents: a :class:`cxrsynth.report.collect.RunContents`.
        verdict: its :class:`cxrsynth.report.verdict.Verdict`.
        generated_at: timestamp written in the card.
        version: cxrsynth version.

    Returns:
        Markdown text.
    """
    lines = [f"# Model card: {contents.run.name}", "",
             f"Synthetic chest radiograph generator trained with cxrsynth {version}; card written {generated_at} from "
             f"the run folder `{contents.run}`. The full report with figures is `report.html` beside this file.", "",
             f"**{verdict.headline}**", ""]
    lines += _model_details(contents, verdict)
    lines += [INTENDED_USE]
    lines += _training_data(contents)
    lines += _evaluation(contents)
    lines += _privacy(contents, verdict)
    lines += _verdict(verdict)
    lines += [LIMITATIONS]
    lines += _how_to_use(contents)
    return "\n".join(lines).rstrip() + "\n"
