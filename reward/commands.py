"""`pickloop reward train | eval | score` and `pickloop bench reward`. Heavy imports stay inside handlers."""
from __future__ import annotations

from pathlib import Path

from pickloop.config_base import add_flags, config_from_args
from pickloop.errors import UserError
from pickloop.typed_config import positive_int
from reward.config import RewardBenchConfig, RewardConfig


def cmd_train(args) -> None:  # noqa: ANN001
    config = config_from_args(RewardConfig, args)  # a bad setting or --config file: one line before torch loads
    from pickloop.audiences import parse_audience

    audience = parse_audience(args.audience)
    import torch

    from pickloop.context import Context
    from reward.train import train_reward

    torch.set_num_threads(args.threads)
    ctx = Context()
    model, m = train_reward(ctx=ctx, config=config, progress=True, audience=audience)
    print(f"reward model {m['reward_model_id']} for {audience} trained on {m['labels']} labels "
          f"({m['train_pairs']} train / {m['heldout_pairs']} held-out pairs over {m['train_prompts']} / "
          f"{m['heldout_prompts']} prompts) "
          f"up to judgement {m['data_snapshot']} in {m['train_s']:.1f} s")
    print(f"held-out accuracy {m['heldout_acc']:.3f}, held-out loss {m['heldout_loss']:.4f} "
          f"(best epoch {m['best_epoch'] + 1} of {m['epochs_run']})")
    if "cv_acc" in m:
        print(f"cross-validated accuracy {m['cv_acc']:.3f} +- {m['cv_acc_se']:.3f} over {m['cv_pairs']} pairs "
              f"({config.cv_folds} folds of prompts): what fine-tuning reads to decide whether to trust it")
    print(f"saved to {ctx.home / 'reward' / str(m['reward_model_id'])}")


def cmd_eval(args) -> None:  # noqa: ANN001
    import torch

    from pickloop.context import Context
    from reward.data import featurize, pairs_from_store, split_indices
    from reward.evaluate import evaluate_model, learning_curve, save_learning_curve
    from reward.model import RewardModel
    from reward.registry import resolve_reward_model
    from reward.train import RewardConfig

    torch.set_num_threads(args.threads)
    ctx = Context()
    path, sha = resolve_reward_model(ctx=ctx, ref=args.model)
    model = RewardModel.load(path, expected_sha256=sha)
    config = RewardConfig(**model.metrics.get("config", {})) if model.metrics.get("config") else RewardConfig()
    pairs = pairs_from_store(ctx=ctx)
    if not pairs:
        raise UserError("no preference pairs in the store to evaluate on")
    train_idx, held_idx = split_indices([p.prompt for p in pairs], config.heldout_share)
    snapshot = model.metrics.get("data_snapshot")
    data = featurize(model, pairs, progress=True)
    held = data.subset(held_idx)
    m = evaluate_model(model, held)
    print(f"reward model {path}: {m['pairs']} held-out pairs ({m['ties']} ties) over "
          f"{len(set(held.prompts))} prompts; trained up to judgement {snapshot}")
    print(f"held-out accuracy {m['accuracy']:.3f} (ties excluded), log loss {m['log_loss']:.4f}, "
          f"expected calibration error {m['ece']:.3f}")
    if args.no_curve:
        return
    print("learning curve (fresh heads on the same backbone, first n labels):")
    curve = learning_curve(model, data.subset(train_idx), held, config, progress=True)
    out = Path(args.png) if args.png else ctx.settings.reports_dir / f"reward-learning-curve-{path.name}.png"
    save_learning_curve(curve, out)
    print(f"learning curve saved to {out}")


def cmd_score(args) -> None:  # noqa: ANN001
    from pickloop.images import decode_image, read_user_image_bytes

    # Check every image before torch and the model load, so a typo fails fast with one line.
    images = [decode_image(read_user_image_bytes(p, base=Path.cwd()), what=f"image file {p}").convert("RGB")
              for p in args.images]
    import torch

    from pickloop.context import Context
    from reward.registry import load_reward_model

    torch.set_num_threads(args.threads)
    model = load_reward_model(ctx=Context(), ref=args.model)
    for p, r in zip(args.images, model.score(args.prompt, images).tolist()):
        print(f"{r:.4f}\t{p}")


def cmd_bench(args) -> None:  # noqa: ANN001
    cfg = config_from_args(RewardBenchConfig, args)  # a bad setting: one line before torch loads
    config = RewardConfig(backbone=args.backbone, heldout_share=0.2, seed=cfg.seed)
    import torch

    from reward.bench import run_bench

    torch.set_num_threads(args.threads)
    print(f"reward bench: taste {cfg.taste!r} (hidden from the model), {cfg.labels} labels of "
          f"{cfg.candidates} candidates, backbone {config.backbone}")
    r = run_bench(cfg, config, progress=True)
    print(f"train pairs {r['train_pairs']}, test pairs {r['test_pairs']} ({r['test_ties']} ties), "
          f"epochs {r['epochs_run']}, early-stopping split accuracy {r['early_stop_acc']:.3f}")
    print(f"rater consistency {r['rater_consistency']:.3f} on the pairs it picked in (accuracy counts these), "
          f"{r['rater_consistency_all']:.3f} on all pairs (ties repeat by construction); the taste itself "
          f"scores {r['oracle_acc']:.3f} on them")
    print(f"held-out accuracy {r['heldout_acc']:.3f} (target >= 0.9 x consistency = "
          f"{0.9 * r['rater_consistency']:.3f}); log loss {r['heldout_log_loss']:.4f}, ECE {r['heldout_ece']:.3f}")
    print("untrained heads: " + ", ".join(f"{a:.3f}" for a in r["untrained_each"]))
    print(f"heldout_acc={r['heldout_acc']:.4f} rater_consistency={r['rater_consistency']:.4f} "
          f"untrained_acc={r['untrained_acc']:.4f} labels={r['labels']} train_s={r['train_s']:.1f}")


def register(sub, bench_sub) -> None:  # noqa: ANN001
    rw = sub.add_parser("reward", help="the preference reward model").add_subparsers(dest="reward_cmd", required=True)
    q = rw.add_parser("train", help="train on every label so far; saves and registers the model")
    add_flags(q, RewardConfig)
    q.add_argument("--audience", default="everyone",
                   help="everyone (default: every label), group:NAME or rater:NAME: train on that audience's labels "
                        "only, as the reward model its `finetune run --audience` reads")
    q.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    q.set_defaults(func=cmd_train)

    q = rw.add_parser("eval", help="held-out accuracy, log loss, calibration error and a learning-curve PNG")
    q.add_argument("--model", default="latest", help="registry id, saved folder, or latest")
    q.add_argument("--png", help="where to save the learning curve (default: reports dir)")
    q.add_argument("--no-curve", action="store_true", help="skip the learning curve")
    q.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    q.set_defaults(func=cmd_eval)

    q = rw.add_parser("score", help="score image files for a prompt (higher = preferred)")
    q.add_argument("--prompt", required=True, help="the prompt the images were drawn for")
    q.add_argument("images", nargs="+", metavar="IMAGE", help="image files, relative to the current folder")
    q.add_argument("--model", default="latest", help="registry id, saved folder, or latest")
    q.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    q.set_defaults(func=cmd_score)

    q = bench_sub.add_parser("reward", help="learn a simulated rater's hidden taste; held-out accuracy")
    add_flags(q, RewardBenchConfig)
    q.add_argument("--backbone", default="embedded:shapes-clip", help="CLIPModel folder or hub id")
    q.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    q.set_defaults(func=cmd_bench)
