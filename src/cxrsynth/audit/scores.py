"""``cxrsynth audit stats``: the audit's statistics on any attack's membership scores, from any tool.

SCORES.csv
----------
* ``member`` (required) — 1 for a member (trained on), 0 for a non-member (also ``true``/``false``).
* ``half`` (optional) — ``calibration`` or ``evaluation``. Absent: a seeded random half of each
  group (``--seed``), by patient when ``patient_id`` is given.
* ``patient_id`` (optional) — when given, the unit is the patient: rows of one patient are averaged
  into one score per attack (their ``member`` and ``half`` must agree), so that a patient's
  follow-ups neither sit on both sides of the calibration/evaluation split nor count as independent
  evidence. Without it every row is taken as an independent unit, which is only valid when each row
  is a different person: with several correlated images per patient, row-level p-values are badly
  anti-conservative (a simulation with 1–30 images per patient raised the flag in 54.7% of audits
  with nothing leaking, 1.8% with ``patient_id``). A file without ``patient_id`` is therefore
  refused unless ``--independent-rows`` says its rows are independent.
* ``image_id``, ``split``, ``image_level`` (optional, ignored) — identifiers, as in the ``scores.csv``
  that ``cxrsynth audit`` writes, so its own scores can be re-analysed (with ``--unit patient`` it holds
  every scored image of a patient: they are averaged per patient here).
* every other column — one attack's scores (numbers, no missing values). A column named ``blind``
  (the audit's blind baseline in its own ``scores.csv``) is reported but cannot raise the flag.

Directions: ``--direction NAME=lower|higher`` fixes which scores mean "member" for a column;
without it the direction is chosen on the calibration half, as ``cxrsynth audit`` does.

OUT.json (format 1)
-------------------
``format`` (1), ``source`` (str), ``rows`` (int), ``unit`` (``patient``|``row``), ``n_members``,
``n_nonmembers`` (units), ``n_calibration`` / ``n_evaluation`` (``{"members", "nonmembers"}``),
``halves`` (``given``|``random``), ``independent_rows`` (bool), ``seed``, ``delta``, ``attacks.<name>`` (the keys of audit.json's
attacks: see :mod:`cxrsynth.audit.runner`; ``access`` is ``external``), ``summary`` (as audit.json's,
with ``leak_detected`` over every column's tests), ``power`` (as audit.json's), ``verdict`` (str).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrsynth.audit import metrics
from cxrsynth.audit.summary import power_report, summarise, write_verdict
from cxrsynth.errors import CxrsynthError
from cxrsynth.fsutil import atomic_write_json

STATS_FORMAT = 1
MEMBER, HALF, PATIENT = "member", "half", "patient_id"
BLIND_COLUMN = "blind"
"""The audit's blind baseline (no model access): reported, never part of the leak flag's family."""
IGNORED_COLUMNS = ("image_id", "split", "image_level")
HALVES = ("calibration", "evaluation")
_TRUE, _FALSE = {"1", "true", "yes"}, {"0", "false", "no"}


@dataclass(frozen=True)
class ScoreTable:
    """Scores of units (patients or rows) ready for the statistics.

    Attributes:
        is_member: True for members, one per unit.
        is_calibration: True for calibration units.
        scores: attack name → one score per unit.
        unit: ``patient`` or ``row``.
        rows: rows read from the file.
        halves: ``given`` or ``random``.
    """

    is_member: np.ndarray
    is_calibration: np.ndarray
    scores: dict[str, np.ndarray]
    unit: str
    rows: int
    halves: str


def _parse_member(value: str, line: int, path: Path) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise CxrsynthError(f"{path}, row {line}: column 'member' holds {value!r}", "use 1 for members and 0 for non-members")


def _parse_score(value: str, column: str, line: int, path: Path) -> float:
    try:
        number = float(value)
    except ValueError:
        raise CxrsynthError(f"{path}, row {line}: column {column!r} holds {value!r}, not a number",
                            "every column other than member, half, patient_id, image_id, split and image_level must be numeric scores") from None
    if not math.isfinite(number):
        raise CxrsynthError(f"{path}, row {line}: column {column!r} holds {value!r} (NaN or infinite)",
                            "give every unit a finite score, or drop the rows or the column")
    return number


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise CxrsynthError(f"scores file {path} does not exist", "give the path of a CSV with a 'member' column")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = [name.strip() for name in (reader.fieldnames or [])]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CxrsynthError(f"{path} is not a readable UTF-8 CSV ({exc})", "save the scores as a UTF-8 CSV") from None
    rows = [{(key or "").strip(): (value or "") for key, value in row.items()} for row in rows]
    if MEMBER not in columns:
        raise CxrsynthError(f"{path} has no 'member' column (columns: {', '.join(columns) or 'none'})",
                            "add a column 'member' with 1 for members and 0 for non-members")
    return columns, rows


def read_scores(path: str | Path, seed: int = 0, independent_rows: bool = False) -> ScoreTable:
    """Read and validate SCORES.csv (see the module docstring), grouped by patient when ids are given.

    Args:
        path: the CSV.
        seed: seed of the random halves.
        independent_rows: accept a file without ``patient_id``, each row an independent unit.

    Raises:
        CxrsynthError: for a missing file or ``member`` column, no ``patient_id`` without
            ``independent_rows``, a non-numeric, empty or NaN score (naming the column and row), an
            unknown ``half``, one class only, a patient with conflicting ``member``/``half``, or no
            score column.
    """
    path = Path(path)
    columns, rows = _read_rows(path)
    if PATIENT not in columns and not independent_rows:
        raise CxrsynthError(
            f"{path} has no 'patient_id' column, so every row would count as an independent unit; several "
            "images of one patient make every p-value invalid (measured: a false leak flag in 55% of audits)",
            "add a patient_id column, or pass --independent-rows if every row is a different person",
        )
    score_columns = [name for name in columns if name not in (MEMBER, HALF, PATIENT, *IGNORED_COLUMNS)]
    if not score_columns:
        raise CxrsynthError(f"{path} has no score column", "add one column of scores per attack beside 'member'")
    if not rows:
        raise CxrsynthError(f"{path} has no rows")
    members = np.array([_parse_member(row[MEMBER], i + 2, path) for i, row in enumerate(rows)])
    scores = {name: np.array([_parse_score(row[name], name, i + 2, path) for i, row in enumerate(rows)])
              for name in score_columns}
    halves = None
    if HALF in columns:
        for i, row in enumerate(rows):
            if row[HALF].strip() not in HALVES:
                raise CxrsynthError(f"{path}, row {i + 2}: column 'half' holds {row[HALF]!r}", "use calibration or evaluation")
        halves = np.array([row[HALF].strip() == "calibration" for row in rows])
    unit_of = np.arange(len(rows))
    if PATIENT in columns:
        patients = [row[PATIENT].strip() for row in rows]
        if any(not patient for patient in patients):
            raise CxrsynthError(f"{path}, row {patients.index('') + 2}: empty patient_id", "give every row its patient")
        _, unit_of = np.unique(np.array(patients), return_inverse=True)
        _check_constant(members, unit_of, patients, "member", path)
        if halves is not None:
            _check_constant(halves, unit_of, patients, "half", path)
    n_units = int(unit_of.max()) + 1
    unit_members = np.zeros(n_units, bool)
    unit_members[unit_of] = members
    if unit_members.all() or not unit_members.any():
        raise CxrsynthError(f"{path}: column 'member' has only {'members' if unit_members.all() else 'non-members'}",
                            "the statistics compare members with non-members: include both")
    counts = np.bincount(unit_of, minlength=n_units)
    unit_scores = {name: np.bincount(unit_of, weights=values, minlength=n_units) / counts for name, values in scores.items()}
    if halves is None:
        calibration, how = random_halves(unit_members, seed), "random"
    else:
        calibration, how = np.zeros(n_units, bool), "given"
        calibration[unit_of] = halves
    return ScoreTable(unit_members, calibration, unit_scores, "patient" if PATIENT in columns else "row", len(rows), how)


def _check_constant(values: np.ndarray, unit_of: np.ndarray, patients: list[str], column: str, path: Path) -> None:
    first = np.full(int(unit_of.max()) + 1, -1)
    for i, (unit, value) in enumerate(zip(unit_of, values)):
        if first[unit] == -1:
            first[unit] = int(value)
        elif first[unit] != int(value):
            raise CxrsynthError(f"{path}, row {i + 2}: patient {patients[i]!r} has rows with different {column!r}",
                                f"a patient is one unit: give all their rows the same {column}")


def random_halves(is_member: np.ndarray, seed: int) -> np.ndarray:
    """A seeded random calibration half (⌊n/2⌋) of each group; True for calibration."""
    rng = np.random.default_rng([seed, 59])
    calibration = np.zeros(len(is_member), bool)
    for group in (is_member, ~is_member):
        indices = np.flatnonzero(group)
        calibration[rng.choice(indices, size=len(indices) // 2, replace=False)] = True
    return calibration


def parse_directions(pairs: list[str] | None, columns: list[str]) -> dict[str, str]:
    """``["loss=lower", ...]`` → {"loss": "lower"}, checked against the score columns.

    Raises:
        CxrsynthError: for a malformed pair, an unknown column or direction.
    """
    directions: dict[str, str] = {}
    for pair in pairs or []:
        name, separator, direction = pair.partition("=")
        name, direction = name.strip(), direction.strip().lower()
        if not separator or direction not in (metrics.LOWER, metrics.HIGHER):
            raise CxrsynthError(f"--direction {pair!r} is not NAME=lower or NAME=higher")
        if name not in columns:
            raise CxrsynthError(f"--direction names {name!r}, which is not a score column ({', '.join(columns)})")
        directions[name] = direction
    return directions


def score_statistics(table: ScoreTable, directions: dict[str, str], delta: float = metrics.DEFAULT_DELTA,
                     seed: int = 0) -> dict:
    """audit.json's ``attacks``, ``summary``, ``power`` and ``verdict`` for a table of scores.

    Args:
        table: the units (:func:`read_scores`).
        directions: column → fixed direction; other columns have theirs chosen on calibration.
        delta: δ of the ε lower bounds.
        seed: seed of the bootstraps.

    Raises:
        CxrsynthError: when a half lacks members or non-members.
    """
    for half, mask in (("calibration", table.is_calibration), ("evaluation", ~table.is_calibration)):
        if not (table.is_member & mask).any() or not (~table.is_member & mask).any():
            raise CxrsynthError(f"the {half} half has no {'members' if not (table.is_member & mask).any() else 'non-members'}",
                                "give each half members and non-members (column 'half'), or leave 'half' out")
    attacks = {}
    for name, values in table.scores.items():
        fixed = directions.get(name)
        access = "none" if name == BLIND_COLUMN else "external"  # a baseline, not an attack
        result = {"access": access, "description": f"scores from column {name!r}"}
        result.update(metrics.attack_metrics(values, table.is_member, table.is_calibration, fixed or metrics.HIGHER,
                                             delta=delta, seed=seed, fixed_direction=fixed is not None))
        attacks[name] = result
    counts = {half: {"members": int((table.is_member & mask).sum()), "nonmembers": int((~table.is_member & mask).sum())}
              for half, mask in (("calibration", table.is_calibration), ("evaluation", ~table.is_calibration))}
    report = {"attacks": attacks, "n_calibration": counts["calibration"], "n_evaluation": counts["evaluation"], "delta": delta}
    report["summary"] = summarise(report)
    report["power"] = power_report(counts["evaluation"]["members"], counts["evaluation"]["nonmembers"],
                                   len(report["summary"]["tests"]), "patients" if table.unit == "patient" else "units")
    report["verdict"] = write_verdict(report)
    return report


def audit_stats(scores_csv: str | Path, out: str | Path, directions: list[str] | None = None,
                delta: float = metrics.DEFAULT_DELTA, seed: int = 0, independent_rows: bool = False) -> dict:
    """Read SCORES.csv, compute the statistics and write OUT.json atomically (see the module docstring).

    Returns:
        The report written.

    Raises:
        CxrsynthError: for a bad CSV (naming the column and row), bad directions, δ outside
            [0, 1), or an output path that is a folder. Nothing is written then.
    """
    if not 0.0 <= delta < 1.0:
        raise CxrsynthError(f"--delta {delta} is outside [0, 1)")
    out = Path(out)
    if out.is_dir():
        raise CxrsynthError(f"--out {out} is a folder", "give the path of the JSON file to write")
    table = read_scores(scores_csv, seed, independent_rows)
    statistics = score_statistics(table, parse_directions(directions, list(table.scores)), delta, seed)
    report = {
        "format": STATS_FORMAT, "source": str(scores_csv), "rows": table.rows, "unit": table.unit,
        "n_members": int(table.is_member.sum()), "n_nonmembers": int((~table.is_member).sum()),
        "halves": table.halves, "independent_rows": table.unit == "row", "seed": seed, **statistics,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, report)
    return report
