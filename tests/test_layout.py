"""The architecture as a test: the pure core (vgg_ray/, vgg_ray/imagenet/) never imports Ray, nor the Ray
wing (vgg_ray/distributed/); bench/ and jobs/ sit above both."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vgg_ray"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_modules() -> list[str]:
    return sorted(module_name(p) for p in PACKAGE.rglob("*.py") if "distributed" not in p.parts)


def imports(path: Path) -> set[str]:
    """Absolute module names a file imports, at any depth (function-level imports too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out


def test_importing_any_core_module_does_not_import_ray():
    modules = core_modules()
    assert "vgg_ray.engine" in modules and "vgg_ray.imagenet.convert" in modules  # the walk found them
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "    assert 'ray' not in sys.modules, f'importing {name} imported ray'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_core_never_names_ray_or_the_distributed_wing():
    for path in PACKAGE.rglob("*.py"):
        if "distributed" in path.parts:
            continue
        bad = {m for m in imports(path) if m.split(".")[0] == "ray" or m.startswith("vgg_ray.distributed")
               or m.split(".")[0] in ("bench", "jobs")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_only_the_distributed_wing_imports_ray_and_nothing_imports_bench_or_jobs_but_themselves():
    wing = {module_name(p) for p in (PACKAGE / "distributed").rglob("*.py")}
    users = {module_name(p) for p in PACKAGE.rglob("*.py") if any(m.split(".")[0] == "ray" for m in imports(p))}
    assert users and users <= wing
    for path in PACKAGE.rglob("*.py"):
        assert not {m for m in imports(path) if m.split(".")[0] in ("bench", "jobs")}, path


def test_ray_datas_decode_tasks_and_the_train_workers_import_no_more_than_they_use():
    # A Ray Data task process imports vgg_ray.distributed.data for the decode: torch and torchvision cost
    # ~3 s each per fresh process there, on every node, and it needs neither. A train worker needs torch,
    # and torchvision (nvJPEG) only for --decode gpu, where device_decode imports it when first used.
    code = ("import sys\n"
            "import vgg_ray.distributed.data\n"
            "assert not {'torch', 'torchvision'} & set(sys.modules), 'the decode tasks import torch'\n"
            "import vgg_ray.distributed.train_loop, vgg_ray.distributed.evaluate\n"
            "assert 'torchvision' not in sys.modules, 'the train workers import torchvision'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
