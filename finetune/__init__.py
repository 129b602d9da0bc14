"""LoRA fine-tuning of the U-Net (Diffusion-DPO in ``finetune.dpo``, DDPO in ``finetune.ddpo``), LoRA files
and checkpoints, the model registry with its promotion gate, and the scheduled job. Other stages and the
loop import these names only:

    from finetune import run_finetune_job, gate_and_promote
    outcome = run_finetune_job(ctx=ctx, method="dpo", min_new_labels=1)

Names are imported lazily so that ``pickloop --help`` and a config check do not load torch.
"""
from __future__ import annotations

from pickloop.lazy import lazy_exports

_EXPORTS = {
    "DPOConfig": "finetune.dpo.config", "run_dpo": "finetune.dpo.job", "train_dpo": "finetune.dpo.train",
    "DDPOConfig": "finetune.ddpo.config", "run_ddpo": "finetune.ddpo.job", "train_ddpo": "finetune.ddpo.train",
    "run_finetune_job": "finetune.jobs", "method_config": "finetune.jobs", "METHODS": "finetune.jobs",
    "run_auto": "finetune.auto",
    "gate_and_promote": "finetune.registry", "register_version": "finetune.registry",
    "export_lora": "finetune.lora", "save_lora_atomic": "finetune.lora",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
