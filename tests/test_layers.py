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

Imports stand at the top of their module. One stays inside a function only when it buys something: it adds a
heavy library (``HEAVY_LIBRARIES``, directly or through first-party modules and lazy surfaces) to those the
module's own top-level imports already load, or it sits in a module that ``pickloop --help`` loads and would
add a module the help does without.
"""
from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
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


def modules(skip: tuple[str, ...] = SKIP) -> dict[str, Path]:
    """Module name -> file for every module of the packages, less the folders in ``skip``."""
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if any(str(rel).startswith(s) for s in skip):
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def from_base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement in ``module`` (file ``path``) reads from."""
    base = node.module or ""
    if node.level:
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        up = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(up + ([base] if base else []))
    return base


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """(imported module, name taken from it or None, line) for every import in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = from_base(module, path, node)
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


# Imports inside a function: only where the module at the top would cost a slow import it does not already pay
# for (issue #17). A library is heavy when ``python -X importtime -c "import X"`` says over ~30 ms; a first-party
# module loads the heavy libraries its top-level imports (through lazy surfaces too) load.
HEAVY_LIBRARIES = frozenset({
    "torch", "torchvision", "diffusers", "transformers", "peft", "accelerate", "safetensors", "trl", "datasets",
    "streamlit", "playwright", "matplotlib", "numpy", "pandas", "pyarrow", "PIL", "tqdm", "yaml", "fsspec",
    "sqlmodel", "sqlalchemy", "alembic", "psycopg", "pydantic", "pydantic_settings", "open_clip",
})
# What importing a heavy library loads of the others (measured in sys.modules after ``import X``), so that a
# lazy ``from sqlalchemy import func`` in a module that imports sqlmodel at the top is seen to buy nothing.
LIBRARY_LOADS = {
    "sqlmodel": {"sqlalchemy", "pydantic"}, "alembic": {"sqlalchemy"}, "pydantic_settings": {"pydantic"},
    "torch": {"numpy", "tqdm"}, "transformers": {"numpy", "PIL", "tqdm", "yaml"},
    "diffusers": {"torch", "numpy", "PIL", "safetensors", "tqdm", "yaml"},
    "accelerate": {"torch", "numpy", "safetensors", "tqdm", "yaml"},
    "peft": {"accelerate", "transformers", "torch", "numpy", "PIL", "safetensors", "fsspec", "tqdm", "yaml"},
    "pandas": {"numpy", "pyarrow"}, "pyarrow": {"numpy"}, "matplotlib": {"numpy", "PIL"},
}
# Function-level imports kept for a reason other than a heavy library or the help: (module, imported module) -> why.
LAZY_FOR_A_REASON: dict[tuple[str, str], str] = {
    ("pickloop.store", "sqlalchemy.dialects.postgresql"): "SQLAlchemy's PostgreSQL dialect (~20 ms), for a PostgreSQL "
                                                          "store only",
    ("reward.bench", "pickloop.shapes.tastes"): "a missing dependency of the simulated raters is one line, at the "
                                                "bench that wants them",
}
NOT_IMPORTED_AS_MODULES = ("pickloop/migrations", "finetune/bench/reference_shims")  # read by alembic, by path


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The imports that run when the module is imported: not in a function, not under ``if TYPE_CHECKING:``."""
    out, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif _is_type_checking(node):
            todo += node.orelse
        else:
            todo += ast.iter_child_nodes(node)
    return out


def function_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The imports inside a function (at any depth)."""
    return sorted({id(n): n for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}.values(),
                  key=lambda n: n.lineno)


def lazy_surface(path: Path) -> dict[str, str]:
    """A lazy surface's ``_EXPORTS`` (name -> module behind it); {} for any other module."""
    if path.name != "__init__.py":
        return {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["_EXPORTS"]:
            return ast.literal_eval(node.value)
    return {}


def loaded(module: str, path: Path, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> set[str]:
    """The modules (first-party ones, and the top names of libraries) that the import statement loads: each
    package on the way, a submodule taken by name, the module behind a name of a lazy surface."""
    if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
    else:
        base = from_base(module, path, node)
        exports = lazy_surface(known[base]) if base in known else {}
        targets = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
        targets += [exports[a.name] for a in node.names if a.name in exports]
    out = set()
    for target in targets:
        if target.split(".")[0] not in PACKAGES:
            out.add(target.split(".")[0])
            continue
        parts = target.split(".")
        out |= {m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in known}
    return out


def module_closures(known: dict[str, Path]) -> dict[str, frozenset[str]]:
    """For each first-party module, what importing it loads: the packages on its way, its top-level imports
    (through lazy surfaces and every package on the way), and theirs in turn; libraries by their top name."""
    direct = {m: set().union(*[loaded(m, p, n, known) for n in top_level_imports(ast.parse(p.read_text()))])
              for m, p in known.items()}
    out: dict[str, frozenset[str]] = {}
    for m in known:
        parts = m.split(".")
        seen = {m} | {p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in known}
        todo = list(seen)
        while todo:
            for n in direct.get(todo.pop(), ()):
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        out[m] = frozenset(seen)
    return out


def heavy_of(names: set[str] | frozenset[str], closures: dict[str, frozenset[str]]) -> set[str]:
    """The heavy libraries that loading ``names`` (first-party modules, library top names) loads."""
    found = set(names).union(*[closures.get(n, ()) for n in names]) & HEAVY_LIBRARIES
    return found.union(*[LIBRARY_LOADS.get(n, ()) for n in found])


def help_modules() -> set[str]:
    """The modules that ``pickloop --help`` loads, by running it: the command line, the command modules it
    registers, whatever their ``register`` functions import, and the libraries all these load."""
    code = ("import contextlib, io, runpy, sys\n"
            "sys.argv = ['pickloop', '--help']\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    runpy.run_module('pickloop', run_name='__main__')\n"
            "print(' '.join(sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return set(out.stdout.split())


def why_lazy(module: str, targets: set[str], closures: dict[str, frozenset[str]],
             for_help: set[str]) -> str | None:
    """Why an import that loads ``targets`` may stay inside a function of ``module``; None: it belongs at the
    top. It adds a heavy library to those the module's own top-level imports already load, or ``module`` is
    loaded by ``pickloop --help`` and the import would add a module that the help does not load."""
    added = sorted(heavy_of(targets, closures) - heavy_of(closures[module], closures))
    if added:
        return f"loads {', '.join(added)}"
    extra = sorted(t for t in targets if t not in for_help)
    if module in for_help and extra:
        return f"pickloop --help would load {', '.join(extra)}"
    return None


def lazy_for_a_reason(module: str, node: ast.Import | ast.ImportFrom, targets: set[str]) -> str | None:
    """The reason ``LAZY_FOR_A_REASON`` gives for the import statement, by a module it names or loads."""
    named = {a.name for a in node.names} if isinstance(node, ast.Import) else {node.module or ""}
    return next((LAZY_FOR_A_REASON[(module, t)] for t in sorted(targets | named) if (module, t) in LAZY_FOR_A_REASON),
                None)


def test_imports_inside_a_function_are_only_the_slow_ones():
    """Imports stand at the top of their module; one stays in a function only when ``why_lazy`` says so
    (a heavy library the module's top does not load yet, or a module ``pickloop --help`` does without) or
    ``LAZY_FOR_A_REASON`` names it."""
    known = modules(skip=())
    closures, for_help = module_closures(known), help_modules()
    bad = []
    for module, path in known.items():
        if str(path.relative_to(ROOT)).startswith(NOT_IMPORTED_AS_MODULES):
            continue
        for node in function_imports(ast.parse(path.read_text())):
            targets = loaded(module, path, node, known)
            if why_lazy(module, targets, closures, for_help) is None and not lazy_for_a_reason(module, node, targets):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, "cheap imports inside a function; move them to the top of the module:\n" + "\n".join(bad)


def test_the_import_test_tells_a_cheap_import_from_a_slow_one():
    known = modules(skip=())
    closures, for_help = module_closures(known), help_modules()

    def lazy(module: str, line: str) -> str | None:
        node = ast.parse(line).body[0]
        return why_lazy(module, loaded(module, known[module], node, known), closures, for_help)

    assert lazy("generator.queue", "from pickloop.errors import UserError") is None
    assert lazy("finetune.jobs", "import json") is None
    assert "torch" in lazy("generator.queue", "import torch")
    assert "sqlmodel" in lazy("pickloop.cli", "from pickloop.db import read_session")  # through its imports
    assert "torch" in lazy("pickloop.loop.run", "from reward import load_latest")  # behind the lazy surface
    assert lazy("pickloop.loop.run", "from reward import RewardConfig") is None
    assert "pickloop.atomic" in lazy("pickloop.cli", "from pickloop.atomic import remove_stale_temporaries")
    assert "pickloop.cli" in for_help and "generator.queue" not in for_help
    # A lazy import must buy something: the schema (sqlmodel) is slow, but not inside a module that already
    # imports pickloop.db at the top, nor a module imported again inside a function of a module that has it.
    schema = ast.parse("from pickloop.schema import ModelVersion").body[0]
    assert "sqlmodel" in heavy_of(loaded("pickloop.bootstrap", known["pickloop.bootstrap"], schema, known), closures)
    assert "sqlmodel" in closures["pickloop.bootstrap"] and "pickloop.db" in closures["pickloop.bootstrap"]
    assert lazy("pickloop.bootstrap", "from pickloop.schema import ModelVersion") is None
    assert lazy("feedback_app.ready_sets", "from pickloop.schema import Judgement") is None
    assert lazy("finetune.jobs", "from pickloop.db import read_session") is None
    assert lazy("finetune.jobs", "from sqlmodel import select") is None
    assert "torch" in lazy("pickloop.bootstrap", "from reward import load_latest")  # adds torch to sqlmodel
    assert {"sqlalchemy", "pydantic"} <= heavy_of({"sqlmodel"}, closures)  # a library's own heavy imports
    assert lazy_for_a_reason("pickloop.store", ast.parse("from sqlalchemy.dialects.postgresql import insert").body[0],
                             {"sqlalchemy"})
    assert lazy_for_a_reason("pickloop.store", ast.parse("from sqlalchemy import func").body[0], {"sqlalchemy"}) is None
