"""``python -m finetune.dpo`` (or ``accelerate launch -m finetune.dpo``): see ``finetune.dpo.job.main``."""
from finetune.dpo.job import main

if __name__ == "__main__":
    raise SystemExit(main())
