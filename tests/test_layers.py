"""The layer map of README's Layout section, enforced on every import in the packages (function-level ones
and ``importlib.import_module("...")`` included):

    core (pickloop/, less the orchestration below)   imports core only
    reward                                           core
    generator                                        core, reward's surface
    finetune                                         core, reward's and generator's surfaces
    feedback_app                                     core, generator's surface (the Create page draws)
    orchestration: pickloop.cli, pickloop.__main__,  core, every stage's surface, its own package's
      pickloop.loop.*, each package's commands,      modules
      the benches (pickloop.shapes.bench, reward.bench, finetune.bench.*)

A stage's surface is its ``__init__`` (``from reward import load_latest``), never one of its modules. A stage
may import any module of its own package, but no module imports an orchestration module of another package,
and no stage or core module imports orchestration at all.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pickloop", "reward", "generator", "finetune", "feedback_app")
STAGE_MAY_USE = {"reward": (), "generator": ("reward",), "finetune": ("reward", "generator"),
                 "feedback_app": ("generator",)}
SKIP = ("pickloop/migrations", "finetune/bench/reference_shims", "pickloop/shapes/models")


def is_orchestration(module: str) -> bool:
    parts = module.split(".")
    return (module in ("pickloop.cli", "pickloop.__main__") or parts[:2] == ["pickloop", "loop"]
            or parts[-1] in ("commands", "bench") or parts[:2] == ["finetune", "bench"])


def home(module: str) -> str:
    """The package an orchestration module belongs to: a stage, or a folder of the core (``pickloop.loop``)."""
    top = module.split(".")[0]
    return top if top != "pickloop" else module.rpartition(".")[0]


def modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if any(str(rel).startswith(s) for s in SKIP):
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """(imported module, name taken from it or None, line) for every import in ``path``."""
    out = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:  # ``from finetune.bench import ddpo`` imports the module finetune.bench.ddpo
                sub = f"{base}.{a.name}"
                out.append((sub, None, node.lineno) if sub in known else (base, a.name, node.lineno))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            out.append((node.args[0].value, None, node.lineno))
    return [(m, n, line) for m, n, line in out if m.split(".")[0] in PACKAGES]


def violation(src: str, target: str, name: str | None) -> str | None:
    src_top, dst_top = src.split(".")[0], target.split(".")[0]
    src_core, dst_core = src_top == "pickloop", dst_top == "pickloop"
    if is_orchestration(target):
        if is_orchestration(src) and home(src) == home(target):
            return None
        return "imports an orchestration module of another package"
    if dst_core:
        return None  # the core is below everything
    if src_top == dst_top:
        return None  # a stage's own modules
    surface = target == dst_top
    if not surface:
        return f"reaches into {dst_top}'s modules; import from its surface (`from {dst_top} import ...`)"
    if name is not None and name not in importlib.import_module(dst_top).__all__:
        return f"{name} is not in {dst_top}'s surface (its __init__'s __all__)"
    if is_orchestration(src):
        return None
    if src_core:
        return "the core imports a stage"
    if dst_top not in STAGE_MAY_USE[src_top]:
        return f"{src_top} may use only {', '.join(STAGE_MAY_USE[src_top]) or 'the core'}"
    return None


def test_every_import_follows_the_layer_map():
    known = modules()
    bad = []
    for module, path in known.items():
        for target, name, line in imports(module, path, known):
            why = violation(module, target, name)
            if why:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module} -> {target}"
                           f"{'.' + name if name else ''}: {why}")
    assert not bad, "imports outside the layer map (README, Layout):\n" + "\n".join(bad)


def test_no_import_cycle_between_modules():
    """Module A imports B (at any depth, in any function) and B imports A: neither can be read alone. A
    stage's lazy surface (its ``__init__``) imports nothing, so it closes no cycle."""
    known = modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        for target, _, _ in imports(module, path, known):
            while target not in known and "." in target:
                target = target.rpartition(".")[0]  # ``from pickloop.store import add_prompts``
            if target in known and target != module:
                graph[module].add(target)
    reach: dict[str, set[str]] = {}

    def reachable(m: str) -> set[str]:
        if m not in reach:
            seen, todo = set(), [m]
            while todo:
                for n in graph[todo.pop()] - seen:
                    seen.add(n)
                    todo.append(n)
            reach[m] = seen
        return reach[m]

    cycles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in reachable(b)})
    assert not cycles, "import cycles (each pair reaches the other):\n" + "\n".join(f"{a} <-> {b}" for a, b in cycles)


def test_the_command_line_registers_only_orchestration_modules():
    from pickloop.cli import COMMAND_MODULES

    assert all(is_orchestration(m) for m in COMMAND_MODULES)


def test_a_surface_names_only_what_exists():
    for pkg in PACKAGES[1:]:
        surface = importlib.import_module(pkg)
        for name in surface.__all__:
            assert getattr(surface, name) is not None, f"{pkg}.{name}"


def test_the_layer_test_catches_a_reach_into_another_stage():
    assert violation("generator.queue", "reward.registry", "load_latest")
    assert violation("reward.train", "generator", "load_pipeline")
    assert violation("pickloop.store", "finetune", "run_dpo")
    assert violation("finetune.bench.ddpo_curve", "pickloop.loop.run", "label_ready_sets")
    assert violation("generator.queue", "reward", "no_such_name")
    assert violation("generator.queue", "reward", "load_latest") is None
    assert violation("pickloop.loop.run", "finetune", "run_finetune_job") is None
