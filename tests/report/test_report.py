"""`cxrsynth report` on a real tiny run: well-formed, self-contained HTML with every section, "not run" where due."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cxrsynth.cli import main
from cxrsynth.errors import CxrsynthError
from cxrsynth.report.html import SECTION_IDS
from cxrsynth.report.runner import ReportOptions, write_report
from tests.factories import make_prepared_folder
from tests.tiny_run import copy_run

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class PageParser(HTMLParser):
    """Collects what the assertions need and checks that every element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: list[str] = []
        self.images: list[str] = []
        self.references: list[str] = []
        self.tags: set[str] = set()
        self.section_text: dict[str, list[str]] = {}
        self._sections: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.tags.add(tag)
        if "id" in values:
            self.ids.append(values["id"] or "")
        if tag == "img":
            self.images.append(values.get("src") or "")
        for name in ("src", "href", "action", "srcset", "data"):
            if values.get(name):
                self.references.append(values[name] or "")
        if tag not in VOID:
            self.stack.append(tag)
            if tag == "section":
                self._sections.append(values.get("id") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()
        if tag == "section":
            self._sections.pop()

    def handle_data(self, data: str) -> None:
        for section_id in self._sections:  # text counts for the section and every section around it
            self.section_text.setdefault(section_id, []).append(data)

    def text(self, section_id: str) -> str:
        return " ".join(" ".join(self.section_text.get(section_id, [])).split())


def parse(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    assert not parser.errors and not parser.stack, (parser.errors, parser.stack)
    return parser


def assert_self_contained(page: PageParser, raw: str) -> None:
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert all(ref.startswith(("data:", "#")) for ref in page.references), page.references
    assert not {"script", "link", "iframe", "object", "embed"} & page.tags
    assert "http://" not in raw and "https://" not in raw and "url(" not in raw


def test_report_of_a_complete_run_has_every_section_and_embeds_its_images(tiny_run: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    result = write_report(run)
    assert result.html == run / "report.html" and result.model_card == run / "MODEL_CARD.md"
    raw = result.html.read_text(encoding="utf-8")
    page = parse(result.html)
    assert set(SECTION_IDS) <= set(page.ids) and len(page.ids) == len(set(page.ids))
    assert_self_contained(page, raw)
    # training curve, synthetic grid, real grid, eval plots, ROC and memorization figures
    assert len(page.images) >= 6
    assert "not run" not in page.text("pipeline") and raw.count('class="status-done"') == 5
    summary = page.text("summary")
    for expected in ("member", "holdout", "test", "patients", "tiny", "8 / 8", "training time", "cpu ("):
        assert expected in summary
    assert "Not trained with differential privacy" in page.text("dp")
    assert "loss" in page.text("audit") and "AUC" in page.text("audit")
    assert "Realistic?" in page.text("verdict") and "Safe to share?" in page.text("verdict")
    assert "You cannot claim" in page.text("verdict")
    assert "real patient images" in raw  # the confidentiality warning comes with real images
    card = result.model_card.read_text(encoding="utf-8")
    for heading in ("## Model details", "## Intended use", "## Training data", "## Evaluation", "## Privacy",
                    "## Verdict", "## Limitations", "## How to use"):
        assert heading in card
    assert "data:image" not in card and "<img" not in card


def test_stages_that_did_not_run_are_shown_as_not_run_with_their_command(tiny_run: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    for folder in ("eval", "audit", "samples"):
        shutil.rmtree(run / folder)
    write_report(run)
    page = parse(run / "report.html")
    assert set(SECTION_IDS) <= set(page.ids)
    for section_id, command in (("images", "cxrsynth sample --run"), ("fidelity", "cxrsynth evaluate --run"),
                                ("utility", "cxrsynth evaluate --run"), ("audit", "cxrsynth audit --run"),
                                ("roc", "cxrsynth audit --run"), ("memorization", "cxrsynth audit --run"),
                                ("reidentification", "cxrsynth audit --run")):
        text = page.text(section_id)
        assert "Not run" in text and command in text, (section_id, text)
    assert (run / "report.html").read_text().count('class="status-missing"') == 3
    verdict = page.text("verdict")
    assert verdict.count("not measured") >= 3
    assert_self_contained(page, (run / "report.html").read_text())  # the training curve and real grid remain


def test_an_unfinished_run_with_only_its_config_gets_a_report(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "config.yaml", run / "config.yaml")
    write_report(run)
    page = parse(run / "report.html")
    assert set(SECTION_IDS) <= set(page.ids)
    assert "cxrsynth train --run" in page.text("pipeline") and "--resume" in page.text("pipeline")
    assert "Not run" in page.text("training")


TRAINING_SEED = 987654
"""A distinctive training seed: a DP run's report and model card must not name it."""

POWER_TEXT = "with 4 vs 4 patients, an attack with AUC below 0.99 would go unnoticed"


def with_new_audit_keys(audit: dict, understates: bool) -> dict:
    """``audit`` with the power, patient-id and family-test keys the audit writes (values fixed for the assertions)."""
    summary = {**audit["summary"], "family_alpha": 0.05,
               "tests": [{"name": "loss:auc", "p_value": 0.41, "adjusted_p_value": 0.82, "rejected": False},
                         {"name": "reidentification:links", "p_value": 0.37, "adjusted_p_value": 0.82, "rejected": False}]}
    return {**audit, "summary": summary,
            "power": {"min_detectable_auc": 0.99, "min_detectable_tpr": None, "at_fpr": 0.0, "n_members": 4,
                      "n_nonmembers": 4, "alpha": 0.05, "power": 0.8, "text": POWER_TEXT},
            "patient_ids": {"real": not understates, "understates_leakage": understates,
                            "note": "one patient per image" if understates else None}}


def test_a_dp_run_shows_its_guarantee_and_the_epsilon_curve(tiny_run: Path, tmp_path: Path) -> None:
    """A real (4-step) DP training run: the report reads the privacy.json and ε log that DP training writes;
    it never names the training seed, and labels everything its guarantee does not cover."""
    from cxrsynth.config import TrainConfig
    from cxrsynth.train import train

    data = make_prepared_folder(tmp_path / "data", n_patients=24, images_per_patient=2, size=32)
    run = tmp_path / "run"
    train(TrainConfig(data=str(data), preset="tiny", max_steps=4, batch_size=4, lr=1e-3, warmup_steps=1, dp=True,
                      epsilon=8.0, checkpoint_every=4, keep_checkpoints=1, progress_every=0, log_every=2,
                      seed=TRAINING_SEED), run)
    privacy = json.loads((run / "privacy.json").read_text())
    result = write_report(run)
    page = parse(result.html)
    dp = page.text("dp")
    for expected in (f"ε = {privacy['epsilon']:.3g}", f"δ = {privacy['delta']:.3g}", "per patient", "PRV accountant",
                     f"noise multiplier {privacy['noise_multiplier']:g}", f"steps {privacy['steps']}", "mechanism"):
        assert expected in dp, (expected, dp)
    assert "Not trained with differential privacy" not in page.text("privacy")
    assert "ε spent" in page.text("training")  # the ε-against-step panel of the training curve
    assert result.verdict.answer("privacy").short == "bounded by DP, not audited"
    assert "Not run" in page.text("audit") and "cxrsynth audit --run" in page.text("audit")
    assert f"ε = {privacy['epsilon']:.3g}" in result.model_card.read_text()
    assert any(label == "DP guarantee" for label, _ in result.verdict.key_numbers)
    assert str(TRAINING_SEED) not in result.html.read_text() and str(TRAINING_SEED) not in result.model_card.read_text()
    assert "un-noised training loss of the member images" in page.text("training")
    assert "not covered by the DP guarantee: the logged throughput" in page.text("summary")
    assert "not covered by the DP guarantee: the exact member image count" in page.text("summary")
    assert "the exact member image count" in result.model_card.read_text()

    # The tiny run's evaluation, samples and audit (with the audit's newer keys), as if this run had them.
    for folder in ("eval", "samples", "audit"):
        shutil.copytree(tiny_run / folder, run / folder)
    audit = json.loads((run / "audit" / "audit.json").read_text())
    (run / "audit" / "audit.json").write_text(json.dumps(with_new_audit_keys(audit, understates=True)))
    result = write_report(run)
    page, card = parse(result.html), result.model_card.read_text()
    for raw in (result.html.read_text(), card):
        assert str(TRAINING_SEED) not in raw
    assert "real patients, not synthetic: not covered by the DP guarantee" in page.text("images")
    fidelity = page.text("fidelity")
    assert "FD (domain) †" in fidelity and "† not covered by the DP guarantee" in fidelity
    assert "TRTR and the ratio are not covered by the DP guarantee" in page.text("utility")
    audit_text = page.text("audit")
    for expected in ("The audit's numbers are not covered by the DP guarantee", "This audit understates leakage",
                     f"Audit power: {POWER_TEXT}.", "Holm-adjusted p-value", "reidentification:links",
                     "≥ 90% joint confidence (two one-sided 95% bounds)"):
        assert expected in audit_text and expected in card, expected
    assert "not covered by the DP guarantee" in page.text("roc") + page.text("memorization")
    verdict = page.text("verdict")
    assert "understates leakage" in verdict and "The audit's numbers are not covered" in verdict
    assert "FD (domain) †" in card and "95% confidence" not in card
    if not result.verdict.answer("privacy").level == "bad":  # no leak detected: the verdict states the power
        assert f"Audit power: {POWER_TEXT}." in verdict


def test_a_run_without_dp_names_its_seed_and_labels_nothing(tiny_run: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    result = write_report(run)
    card = result.model_card.read_text()
    assert "seed 0" in card
    assert "not covered by the DP guarantee" not in card + result.html.read_text()
    assert "†" not in parse(result.html).text("fidelity")


def test_an_old_audit_json_without_power_tests_or_patient_ids_is_still_reported(tiny_run: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    audit = json.loads((run / "audit" / "audit.json").read_text())
    for key in ("power", "patient_ids"):
        audit.pop(key, None)
    for key in ("tests", "family_alpha", "family_method"):
        audit["summary"].pop(key, None)
    for result in (audit.get("reidentification"), (audit.get("memorization") or {}).get("dcr_pixel")):
        if result and "p_value" in result:
            result["binomial_p_value"] = result.pop("p_value")  # the key's name before the relabelling tests
    (run / "audit" / "audit.json").write_text(json.dumps(audit))
    result = write_report(run)
    page = parse(result.html)
    assert "Audit power" not in page.text("audit") and "Holm-adjusted" not in page.text("audit")
    assert "Audit power" not in result.model_card.read_text()
    assert "p = " in page.text("verdict")


def test_no_real_images_leaves_out_the_real_grid_and_the_training_pairs(tiny_run: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    write_report(run, ReportOptions(include_real_images=False))
    page = parse(run / "report.html")
    alts = (run / "report.html").read_text()
    assert 'alt="real images"' not in alts and 'alt="closest synthetic and training image pairs"' not in alts
    assert "--no-real-images" in page.text("images") and "--no-real-images" in page.text("memorization")
    assert "real patient images" not in alts


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(CxrsynthError, match="not a run folder"):
        write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_cli_prints_the_verdict_and_the_report_path(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--run", str(run)])
    assert exit_info.value.code == 0
    output = capsys.readouterr().out
    assert "Realistic?" in output and str(run / "report.html") in output
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--run", str(tmp_path / "missing")])
    assert exit_info.value.code == 2


def test_importing_the_commands_loads_no_heavy_library() -> None:
    code = ("import sys, cxrsynth.cli.report, cxrsynth.cli.release; "
            "print(sorted(m for m in ('torch', 'diffusers', 'sklearn', 'matplotlib') if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_metrics_skipped_for_one_reason_share_one_row() -> None:
    from cxrsynth.report.html import _skip_reasons

    weights = "Inception weights unavailable: " + "x" * 400
    fidelity = {"fid_skipped": weights, "kid_skipped": weights, "precision_skipped": weights,
                "recall_skipped": weights, "utility_skipped": "no findings with enough positives"}
    assert _skip_reasons(fidelity) == [("fid, kid, precision, recall", weights),
                                       ("utility", "no findings with enough positives")]
