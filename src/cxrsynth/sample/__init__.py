"""``cxrsynth sample``: generate synthetic radiographs from a trained run (PNG or DICOM files plus ``manifest.csv``).

Modules, one concern each: :mod:`.model` (load the UNet, scheduler and vocabulary of a run),
:mod:`.labels` (each image's label set and the guidance weight), :mod:`.generate` (the output
folder's settings, files and manifest; resumable, sharded generation — its docstring states the
guarantees). Where a samples folder's files live and how they are read back is the run-folder
contract (:mod:`cxrsynth.runfolder`).
"""

from cxrsynth.sample.generate import FORMATS, MANIFEST_COLUMNS, SampleReport, generate_samples
from cxrsynth.sample.labels import LabelPlan, plan_labels
from cxrsynth.sample.model import SamplingModel, load_sampling_model

__all__ = [
    "FORMATS", "LabelPlan", "MANIFEST_COLUMNS", "SampleReport", "SamplingModel",
    "generate_samples", "load_sampling_model", "plan_labels",
]
