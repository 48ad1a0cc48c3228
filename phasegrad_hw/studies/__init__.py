"""Studies: the research runs built on the library, each a function the command line (or a
notebook, a test, a benchmark) calls with validated options and gets a JSON-ready result.

* :func:`run_demo` — /a/ vs /i/ on the default device (``phasegrad-hw demo``);
* :func:`train_device` — train any device with the hardware loop, run store and telemetry
  (``phasegrad-hw train``);
* :func:`run_vowel_study` — the published vowel ablation and the designed fix
  (``phasegrad-hw reproduce vowels``);
* :func:`run_noise` / :func:`noise_table` — gradient cosine vs β × averages on an emulator
  (``phasegrad-hw reproduce noise``);
* :mod:`phasegrad_hw.studies.verify` — the published gradient checks (``phasegrad-hw verify``).

Studies report progress through observers (:class:`phasegrad_hw.learning.loop.LoopObserver`,
:class:`EnsembleProgress`) and never print.
"""

from phasegrad_hw.studies import verify
from phasegrad_hw.studies.demo import (
    DemoOptions,
    default_device_model,
    default_device_path,
    run_demo,
)
from phasegrad_hw.studies.noise import NoiseOptions, noise_table, run_noise
from phasegrad_hw.studies.progress import EnsembleProgress
from phasegrad_hw.studies.training import TrainOptions, resume_options, train_device
from phasegrad_hw.studies.vowels import VowelStudyOptions, output_modes, run_vowel_study

__all__ = [
    "DemoOptions",
    "EnsembleProgress",
    "NoiseOptions",
    "TrainOptions",
    "VowelStudyOptions",
    "default_device_model",
    "default_device_path",
    "noise_table",
    "output_modes",
    "resume_options",
    "run_demo",
    "run_noise",
    "run_vowel_study",
    "train_device",
    "verify",
]
