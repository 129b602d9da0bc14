"""The loop's report: a Markdown page with curves and before/after image grids at fixed seeds."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from pickloop.loop.evaluate import FixedSeedImages


def image_grid(before: FixedSeedImages, after: FixedSeedImages, *, max_prompts: int = 8, scale: int = 2) -> Image.Image:
    """Rows = prompts; each row shows the base's images then the final version's, at the same seeds."""
    prompts = list(dict.fromkeys(before.prompts))[:max_prompts]
    per = before.prompts.count(prompts[0])
    size = before.images[0].width * scale
    gap = 8
    grid = Image.new("RGB", (2 * per * size + gap, len(prompts) * size), "white")
    for row, p in enumerate(prompts):
        idx = [i for i, q in enumerate(before.prompts) if q == p]
        for col, i in enumerate(idx):
            for k, imgs in enumerate((before, after)):
                x = k * (per * size + gap) + col * size
                grid.paste(imgs.images[i].resize((size, size), Image.NEAREST), (x, row * size))
    ImageDraw.Draw(grid).line([(per * size + gap // 2, 0), (per * size + gap // 2, grid.height)], fill="black", width=2)
    return grid


def plot_curves(rounds: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["labels"] for r in rounds]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(x, [r["win_rate"] for r in rounds], "o-")
    axes[0].axhline(0.5, color="grey", ls=":")
    axes[0].set(title="oracle win rate vs base", xlabel="labels", ylim=(0, 1))
    axes[1].plot(x, [r["follow_base"] for r in rounds], "o--", label="base")
    axes[1].plot(x, [r["follow_final"] for r in rounds], "o-", label="promoted")
    axes[1].set(title="judge: prompt following", xlabel="labels", ylim=(0, 1))
    axes[1].legend()
    axes[2].plot(x, [r["reward_acc"] if r["reward_acc"] is not None else float("nan") for r in rounds], "o-")
    axes[2].set(title="reward model accuracy (cross-validated)", xlabel="labels", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(result, folder: Path) -> Path:  # noqa: ANN001 - pickloop.loop.run.LoopResult
    """Write ``report.md``, ``curves.png``, ``grid.png`` and ``figures.json`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    plot_curves(result.rounds, folder / "curves.png")
    image_grid(result.base, result.final).save(folder / "grid.png")
    rounds = [{k: v for k, v in r.items()} for r in result.rounds]
    (folder / "figures.json").write_text(json.dumps({"config": result.config, "rounds": rounds,
                                                     "summary": result.summary}, indent=2, default=str))
    s = result.summary
    lines = [
        "# pickloop loop report", "",
        f"Taste `{result.config['taste']}`, method `{result.config['method']}`, {result.config['rounds']} rounds, "
        f"{s['labels']} labels, {s['wall_s']} s wall, {s.get('cpu_s', 'n/a')} s CPU.", "",
        f"**Final:** oracle win rate against the base {s['win_rate']:.3f}; prompt following base "
        f"{s['follow_base']:.3f}, promoted {s['follow_final']:.3f}.", "",
        "![curves](curves.png)", "",
        "Reward acc: cross-validated against the rater's picks; on taste: how it orders unlabelled held-out "
        "images against the taste itself; label ceiling: the taste's own accuracy on the picks (their noise).", "",
        "| round | labels | reward acc | on taste | label ceiling | promoted | win rate | follow base "
        "| follow promoted "
        "| fine-tune |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result.rounds:
        ft = "; ".join(f"{x['method']}: {x['status']}" + (f" ({x['reason']})" if x.get("reason") else "")
                       for x in r["finetune"])
        acc, knows, ceil = (_num(r.get(k)) for k in ("reward_acc", "reward_taste_acc", "label_ceiling"))
        lines.append(f"| {r['round']} | {r['labels']} | {acc} | {knows} | {ceil} | {r['version']} | "
                     f"{r['win_rate']:.3f} | "
                     f"{r['follow_base']:.3f} | {r['follow_final']:.3f} | {ft} |")
    lines += _candidate_lines(result.rounds)
    lines += ["", "Base (left) and promoted version (right), same prompts and seeds:", "", "![grid](grid.png)", ""]
    lines += _detail_lines(result.rounds[-1].get("detail")) if result.rounds else []
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _candidate_lines(rounds: list[dict]) -> list[str]:
    """Per round: whether the reward model was trusted, each candidate's gate figures and why it won or lost,
    and the wall and CPU time of each stage."""
    lines = ["", "## Candidates and stages", "",
             "| round | candidate | version | status | gate win rate | follow (base) parent -> new | why |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rounds:
        for x in r["finetune"]:
            g = x.get("gate") or {}
            win = "-" if g.get("gate_win_rate") is None else f"{g['gate_win_rate']:.3f}" + (
                "" if g.get("gate_judged_win", True) else " (not judged)")
            fol = ("-" if g.get("gate_follow_new") is None
                   else ("" if g.get("gate_follow_base") is None else f"({g['gate_follow_base']:.3f}) ")
                   + f"{g['gate_follow_parent']:.3f} -> {g['gate_follow_new']:.3f}")
            why = (x.get("reason") or "").replace("|", "/")
            lines.append(f"| {r['round']} | {x['method']} | {x.get('version') or '-'} | {x['status']} | {win} | "
                         f"{fol} | {why} |")
    lines += [""]
    for r in rounds:
        trust = r.get("trust")
        if trust:
            lines.append(f"- Round {r['round']}: {'trusted' if trust['trusted'] else 'did not trust'} the "
                         f"reward model ({trust['reason']}).")
        if r.get("stage_s"):
            cpu = r.get("stage_cpu_s") or {}
            lines.append(f"- Round {r['round']} wall time by stage: "
                         + ", ".join(f"{k} {v} s" + (f" ({cpu[k]} s CPU)" if k in cpu else "")
                                     for k, v in r["stage_s"].items())
                         + f" (round {r['round_s']} s" + (f", {r['round_cpu_s']} s CPU" if "round_cpu_s" in r else "")
                         + ").")
    return lines


def _detail_lines(detail: dict | None) -> list[str]:
    """The final round's prompt following by attribute and, per held-out prompt, win rate and following."""
    if not detail:
        return []
    lines = ["## Final version in detail", "", "Prompt following by attribute (share of images right):", "",
             "| attribute | base | promoted |", "| --- | --- | --- |"]
    lines += [f"| {k} | {b:.3f} | {a:.3f} |" for k, (b, a) in detail["by_attribute"].items()]
    worse = sum(1 for r in detail["by_prompt"] if r[3] < r[2])
    lines += ["", f"Per held-out prompt, those followed worse than by the base first ({worse} of "
              f"{len(detail['by_prompt'])}):", "",
              "| prompt | win rate | follow base | follow promoted |", "| --- | --- | --- | --- |"]
    lines += [f"| {p} | {w:.3f} | {b:.3f} | {a:.3f} |" for p, w, b, a in detail["by_prompt"]]
    return lines + [""]
