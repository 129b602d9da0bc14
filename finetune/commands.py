"""Command line: ``pickloop finetune run``, ``pickloop models list|promote|serve|export``, ``pickloop bench dpo``.

Heavy imports (torch, diffusers) happen inside handlers so ``pickloop --help`` stays fast.
"""
from __future__ import annotations

from finetune.bench.ddpo import register_bench
from finetune.bench.scale import register as register_scale_bench
from finetune.ddpo.config import DDPOConfig
from finetune.dpo.config import DPOConfig
from pickloop.config_base import add_flags, flag_values
from pickloop.errors import UserError
from pickloop.typed_config import config_object, int_list, non_negative_int

METHOD_CONFIGS = {"dpo": DPOConfig, "ddpo": DDPOConfig}  # --dpo-* and --ddpo-* flags of `finetune run`


def _ctx():  # noqa: ANN202
    from pickloop.context import Context

    return Context()


def _job_priority() -> None:
    """A training process yields the cores to the app and its worker (``finetune/priority.py``)."""
    from finetune.priority import lower_priority
    from pickloop.settings import get_settings

    lower_priority(get_settings().finetune_nice)


def run_overrides(args) -> dict:  # noqa: ANN001
    """The settings ``finetune run`` was given: ``--config`` (a file or a JSON object), then the
    ``--dpo-*``/``--ddpo-*`` flags given, which win. With ``--method auto`` one mapping per method."""
    overrides = config_object(args.config)
    flags = {m: flag_values(cls, args, prefix=m) for m, cls in METHOD_CONFIGS.items()}
    if args.method == "auto":
        unknown = set(overrides) - {"dpo", "ddpo"}
        if unknown or not all(isinstance(v, dict) for v in overrides.values()):
            raise UserError("--method auto takes --config with one mapping per method: {dpo: {...}, ddpo: {...}} "
                            "(each method's settings)")
        return {m: {**overrides.get(m, {}), **flags[m]} for m in METHOD_CONFIGS}
    other = "ddpo" if args.method == "dpo" else "dpo"
    if flags[other]:
        raise UserError(f"--{other}-* flags ({', '.join(sorted(flags[other]))}) set {other} settings, but --method "
                        f"is {args.method}")
    return {**overrides, **flags[args.method]}


def cmd_finetune_run(args) -> int:  # noqa: ANN001
    from pickloop.audiences import label_scope

    overrides = run_overrides(args)
    scope = label_scope(args.audience, args.others_weight)  # a bad audience or weight: one line, nothing loaded
    _job_priority()
    if args.method == "auto":
        from finetune.auto import run_auto

        outcome = run_auto(_ctx(), min_new_labels=args.min_new_labels, dpo=overrides["dpo"], ddpo=overrides["ddpo"],
                           audience=scope.audience, others_weight=scope.others_weight)
        print(outcome.message)
        return outcome.exit_code
    from finetune.jobs import run_finetune_job

    outcome = run_finetune_job(_ctx(), method=args.method, min_new_labels=args.min_new_labels, overrides=overrides,
                               audience=scope.audience, others_weight=scope.others_weight)
    print(outcome.message)
    return outcome.exit_code


def cmd_models_list(args) -> None:  # noqa: ANN001
    from sqlmodel import select

    from pickloop.db import read_session
    from pickloop.schema import ModelVersion

    with read_session(_ctx().engine) as s:
        rows = list(s.exec(select(ModelVersion).order_by(ModelVersion.id)))
        print("id\tname\tstatus\taudience\tmethod\tparent\tsnapshot\twin_rate\tlora_sha256\treason")
        for r in rows:
            win = r.metrics.get("gate_win_rate")
            print(f"{r.id}\t{r.name}\t{r.status}\t{r.audience}\t{r.method}\t{r.parent_id or '-'}\t"
                  f"{r.data_snapshot if r.data_snapshot is not None else '-'}\t"
                  f"{'-' if win is None else f'{win:.3f}'}\t{(r.lora_sha256 or '-')[:12]}\t{r.reason or ''}")


def cmd_models_serve(args) -> None:  # noqa: ANN001
    from pickloop.audiences import serve
    from pickloop.db import write_session

    with write_session(_ctx().engine) as s:
        version = serve(session=s, ref=args.version, audience=args.audience)
        print(f"{version.name} now serves {version.audience}")


def cmd_models_promote(args) -> int:  # noqa: ANN001
    from finetune.registry import gate_and_promote, resolve_scorer

    ctx = _ctx()
    # "reward": the version's own audience's reward model, which gate_and_promote reads
    scorer = None if args.force or args.scorer == "reward" else resolve_scorer(ctx, args.scorer)
    prompts = [p for p in (args.prompts or "").split("|") if p.strip()] or None
    result = gate_and_promote(ctx, args.version, scorer=scorer, prompts=prompts, seeds=args.seeds,
                              force=args.force)
    if result is None:
        print(f"promoted {args.version} (forced, gate skipped)")
        return 0
    follow = ("" if result.follow_new is None else
              f", prompt-following {result.follow_parent:.3f} -> {result.follow_new:.3f}")
    if result.passed:
        print(f"promoted {args.version}: win rate {result.win_rate:.3f} over {result.n_images} images{follow}")
        return 0
    print(f"not promoted {args.version}: {result.reason} (stays a candidate)")
    return 1


def cmd_models_export(args) -> None:  # noqa: ANN001
    from finetune.lora import export_lora
    from pickloop.db import read_session
    from pickloop.store import find_version

    ctx = _ctx()
    with read_session(ctx.engine) as s:
        v = find_version(session=s, ref=args.version)
        path, sha = v.lora_path, v.lora_sha256
    if not path:
        raise UserError(f"version {args.version} is a base model without a LoRA; nothing to export")
    dest = export_lora(path, args.out, fmt=args.format, expected_sha256=sha)  # checked against registry and manifest
    print(f"wrote {dest}")


def cmd_bench_dpo(args) -> int:  # noqa: ANN001
    from finetune.bench.dpo import run_bench

    _job_priority()  # a training job like `finetune run` (it is `bench app`'s); figures are on the CPU clock
    figures = run_bench(steps=args.steps, pairs=args.pairs, batch_size=args.batch_size, base=args.base,
                        reference=args.reference, reference_script=args.reference_script)
    return 2 if figures is None else 0  # None: the reference's extra is missing (one line said what to install)


def register(sub, bench_sub) -> None:  # noqa: ANN001
    ft = sub.add_parser("finetune", help="LoRA fine-tuning of the U-Net from the picks").add_subparsers(
        dest="finetune_cmd", required=True)
    q = ft.add_parser("run", help="train a LoRA on the labels so far (safe for cron/systemd: "
                                  "no-op without new labels, exit 75 when another run holds the lock)")
    q.add_argument("--method", choices=["auto", "dpo", "ddpo"], default="auto",
                   help="auto (default): trust check, DPO candidates then DDPO, each gated, the best promoted "
                        "(see finetune/auto.py); dpo or ddpo: one run of that method, left as a candidate")
    q.add_argument("--min-new-labels", type=non_negative_int, default=1,
                   help="do nothing (exit 0) when fewer judgements arrived since the last run (of the audience's)")
    q.add_argument("--audience", default="everyone",
                   help="everyone (default: the shared version, every label), group:NAME or rater:NAME: train on "
                        "that audience's labels, with its reward model, from its promoted version (else the shared "
                        "one), and promote the result for that audience only")
    q.add_argument("--others-weight", default="0", metavar="W",
                   help="with --audience: the loss weight of everyone else's picks, 0-1 (default 0: left out)")
    q.add_argument("--config", default="{}", metavar="FILE.yaml",
                   help='settings from a YAML or JSON file, or a JSON object (e.g. \'{"steps": 500}\'); with '
                        '--method auto one mapping per method (dpo: {steps: 500}); --dpo-*/--ddpo-* flags override it')
    for method, cls in METHOD_CONFIGS.items():
        add_flags(q.add_argument_group(f"{method} settings (--method {method} or auto)"), cls, prefix=method,
                  config=False)
    q.set_defaults(func=cmd_finetune_run)

    mo = sub.add_parser("models", help="the model registry").add_subparsers(dest="models_cmd", required=True)
    q = mo.add_parser("list", help="list model versions")
    q.set_defaults(func=cmd_models_list)
    q = mo.add_parser("promote", help="promote a version if it beats its parent on held-out prompts")
    q.add_argument("version", help="version id or name")
    q.add_argument("--force", action="store_true", help="skip the gate")
    q.add_argument("--scorer", default="reward",
                   help="reward (the newest reward model of the version's audience) or MODULE:FUNC / FILE.py:FUNC "
                        "taking (prompts, images)")
    q.add_argument("--prompts", help="held-out prompts separated by '|' (default: the heldout split)")
    q.add_argument("--seeds", type=int_list, default="1234,5678", help="comma-separated fixed seeds per prompt")
    q.set_defaults(func=cmd_models_promote)
    q = mo.add_parser("serve", help="make a version the one that serves a group of raters or one rater",
                      description="The Create page, and load_pipeline(lora='latest', audience=...), draw for "
                                  "that audience with it; everyone else keeps the shared version. No gate: an "
                                  "admin's decision.")
    q.add_argument("version", help="version id or name")
    q.add_argument("--audience", required=True, help="group:NAME or rater:NAME")
    q.set_defaults(func=cmd_models_serve)
    q = mo.add_parser("export", help="export a version's LoRA (verified) for other tools")
    q.add_argument("version", help="version id or name")
    q.add_argument("--format", choices=["diffusers", "kohya"], default="diffusers")
    q.add_argument("--out", required=True, help="output folder")
    q.set_defaults(func=cmd_models_export)

    q = bench_sub.add_parser("dpo", help="Diffusion-DPO steps/s, floor ratio and peak RSS (optionally against "
                                         "the diffusers example)")
    q.add_argument("--steps", type=int, default=20, help="optimizer steps per measurement (3 warm-up)")
    q.add_argument("--pairs", type=int, default=32, help="synthetic preference pairs (rendered shapes)")
    q.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    q.add_argument("--base", default=None, help="pipeline folder (default: the embedded shapes model)")
    q.add_argument("--reference", choices=["none", "diffusers"], default="none",
                   help="also run the diffusers DPO example on the same pairs "
                        "(extra: pip install 'pickloop[diffusers-reference]')")
    q.add_argument("--reference-script", default=None,
                   help="path of diffusers' examples/research_projects/diffusion_dpo/train_diffusion_dpo.py")
    q.set_defaults(func=cmd_bench_dpo)

    register_bench(bench_sub)
    register_scale_bench(bench_sub)
