"""Stand-in for wandb (see ../README.md): importable, and any use raises."""


def __getattr__(name: str):  # noqa: ANN202
    raise RuntimeError(f"wandb is not installed (pickloop's stand-in has no {name!r}): pip install wandb")
