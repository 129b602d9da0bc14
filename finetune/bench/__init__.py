"""The fine-tuning benchmarks behind ``pickloop bench dpo|ddpo|ddpo-curve|scale``: ``dpo`` (a DPO step
against its floor, and the diffusers example beside it: ``dpo_diffusers``), ``ddpo`` (a DDPO epoch, and trl's
DDPOTrainer beside it: ``ddpo_trl``), ``ddpo_curve`` (the reward curve of DDPO against a simulated rater's
reward model), ``scale`` (SD 1.5 / SDXL-sized U-Nets). ``reference_shims`` holds stand-ins for imports of the
diffusers example."""
from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB, as every bench reports it."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20  # Linux reports KiB, macOS bytes
