"""Every rule's conda environment provides what its command imports.

Under `--sdm conda` each job runs `python -m gpubio <command>` in its rule's `envs/*.yaml`;
a package missing there only shows on the cluster, as a failed job. This follows each
command into gpubio's source (its function, the functions and modules it reaches, imports
inside functions included) and checks every third-party module against the env file.
Imports guarded by `try: ... except ImportError` (optional backends) and `if TYPE_CHECKING:`
are not needs.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from conftest import REPO

PACKAGE_ROOT = REPO / "workflow"
RULES = sorted((REPO / "workflow" / "rules").glob("*.smk"))

# conda / pip distribution names whose import name differs (others: lower case, '-' -> '_')
IMPORT_NAMES = {
    "pyyaml": "yaml",
    "scikit-learn": "sklearn",
    "scikit-image": "skimage",
    "scikit-misc": "skmisc",
    "itk-elastix": "itk",
    "pytorch": "torch",
    "umap-learn": "umap",
    "scvi-tools": "scvi",
    "python-igraph": "igraph",
    "pillow": "PIL",
    "opencv-python": "cv2",
    "opencv-python-headless": "cv2",
    "lib-pod5": "lib_pod5",
    "snakemake-minimal": "snakemake",
}
IGNORED_DEPENDENCIES = {"python", "pip", "cuda-version"}


# ------------------------------------------------------------------ environment files
def env_modules(env_file: Path) -> set[str]:
    """Top-level import names an environment file installs (conda and pip entries)."""
    spec = yaml.safe_load(env_file.read_text())
    names = []
    for dep in spec.get("dependencies", []):
        names += dep.get("pip", []) if isinstance(dep, dict) else [dep]
    modules = set()
    for entry in names:
        name = re.split(r"[=<>!~\[ ]", entry.split("::")[-1], maxsplit=1)[0].strip().lower()
        if name and name not in IGNORED_DEPENDENCIES:
            modules.add(IMPORT_NAMES.get(name, name.replace("-", "_")))
    return modules


def test_env_modules_maps_conda_and_pip_names(tmp_path):
    env = tmp_path / "env.yaml"
    env.write_text(
        "dependencies:\n  - python=3.11\n  - conda-forge::scikit-image=0.26\n  - pip:\n"
        "      - PyYAML==6.0.3\n      - itk-elastix>=0.25\n      - scvi-tools[cuda]==1.4\n"
    )
    assert env_modules(env) == {"skimage", "yaml", "itk", "scvi"}


# ------------------------------------------------------------------ rules
def rule_blocks() -> dict[str, str]:
    """Rule name -> its source text, over every .smk file."""
    blocks = {}
    for path in RULES:
        text = path.read_text()
        starts = [(m.start(), m.group(1)) for m in re.finditer(r"^(?:local)?rule (\w+):", text, re.M)]
        for (start, name), (end, _) in zip(starts, starts[1:] + [(len(text), "")]):
            blocks[name] = text[start:end]
    return blocks


def rule_conda_env(block: str) -> Path | None:
    match = re.search(r"^    conda:\n\s+\"([^\"]+)\"", block, re.M)
    return (RULES[0].parent / match.group(1)).resolve() if match else None


# what gpu_step() (common.smk, the GPU prologue of a rule's command) starts a command with
GPU_STEP = "python -m gpubio --threads {threads} --gpus {resources.gpu} --usage {params.usage:q} --usage-job {resources.gpu_usage:q}"


def rule_command(block: str) -> str:
    """The rule's shell command: its string literals joined, gpu_step() spelled out."""
    match = re.search(r"^    shell:\n((?:        .*\n?)+)", block, re.M)
    if not match:
        return ""

    def text(node) -> str:
        if isinstance(node, ast.BinOp):
            return text(node.left) + text(node.right)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "gpu_step":
            return GPU_STEP
        return ast.literal_eval(node)

    return text(ast.parse(" ".join(line.strip() for line in match.group(1).splitlines()), mode="eval").body)


def local_rules() -> set[str]:
    names = set()
    for path in RULES:
        for match in re.finditer(r"^localrules:\s*(.*)$", path.read_text(), re.M):
            names |= {n.strip() for n in match.group(1).split(",") if n.strip()}
    return names


# ------------------------------------------------------------------ gpubio's imports
def module_file(module: str) -> Path | None:
    base = PACKAGE_ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


@cache
def module_tree(module: str) -> ast.Module:
    return ast.parse(module_file(module).read_text())


def _optional(node: ast.Try) -> bool:
    caught = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
    return bool(caught & {"ImportError", "ModuleNotFoundError", "(ImportError, ModuleNotFoundError)"})


def _imports(nodes, package: str) -> list[tuple[str, tuple[str, ...] | None]]:
    """(module, names or None for the whole module) imported in these statements, recursively,
    leaving out optional imports and TYPE_CHECKING blocks; nested defs are not entered."""
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.append((base, tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Try) and _optional(node):
            found += _imports(node.orelse + node.finalbody, package)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found += _imports(node.orelse, package)
        elif isinstance(node, ast.ClassDef):  # a class body runs when it is defined, its methods do not
            found += _imports(node.body, package)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += _imports(list(ast.iter_child_nodes(node)), package)
    return found


def _function_imports(node, package: str) -> list:
    """Imports anywhere inside a def or class (nested defs included)."""
    found = []
    for child in node.body:
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found += _function_imports(child, package)
        else:
            found += _imports([child], package)
            for inner in ast.walk(child):
                if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found += _function_imports(inner, package)
    return found


def called_names(node) -> set[str]:
    """Names a def calls or hands on as a positional argument (a callback). Keyword `func=`
    is argparse's dispatch table (`set_defaults(func=...)`): a command runs one of them, not all."""
    names = set()
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            names |= {a.id for a in [call.func, *call.args] if isinstance(a, ast.Name)}
    return names


def third_party_needs(module: str, names: tuple[str, ...] | None = None) -> set[str]:
    """Top-level third-party modules that running `names` of gpubio `module` (all of it when
    None) imports. Importing a module runs its top level (and its packages' __init__ first);
    a function adds the imports in its body and those of the functions it calls, in its own
    module or imported from another gpubio module."""
    needs: set[str] = set()
    seen: set[tuple[str, str]] = set()

    def visit(module: str, names: tuple[str, ...] | None) -> None:
        if module_file(module) is None:  # gpubio.pkg.name where name is not a module
            parent, _, name = module.rpartition(".")
            return visit(parent, (name,))
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            load(".".join(parts[:i]))
        tree = module_tree(module)
        defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        imported = imported_names(module)
        # classes or functions a decorator of this module registers (a plugin registry such
        # as MODEL_FAMILIES) are reached by name at run time, so they count as used
        registered = [
            n
            for n, d in defs.items()
            if any(
                called_names(dec) & set(defs) or (isinstance(dec, ast.Name) and dec.id in defs)
                for dec in d.decorator_list
            )
        ]
        todo = (list(defs) if names is None else list(names)) + registered
        while todo:
            name = todo.pop()
            if (module, name) in seen:
                continue
            seen.add((module, name))
            if name in defs:
                for target, inner in _function_imports(defs[name], package_of(module)):
                    use(target, inner)
                todo += [n for n in called_names(defs[name]) if n in defs]
                for called in called_names(defs[name]) - set(defs):
                    if called in imported:
                        visit(imported[called], (called,))
            elif name in imported:  # a re-export, e.g. from a package's __init__
                visit(imported[name], (name,))
            elif module_file(f"{module}.{name}"):
                visit(f"{module}.{name}", None)

    def load(module: str) -> None:
        """What importing the module runs: its top-level imports."""
        if (module, "") in seen:
            return
        seen.add((module, ""))
        for target, _ in _imports(module_tree(module).body, package_of(module)):
            if target.split(".")[0] == "gpubio":
                target = target if module_file(target) else target.rpartition(".")[0]
                for i in range(2, len(target.split(".")) + 1):
                    load(".".join(target.split(".")[:i]))
            else:
                use(target, None)

    def use(target: str, names) -> None:
        top = target.split(".")[0]
        if top == "gpubio":
            visit(target, names)
        elif top and top not in sys.stdlib_module_names and top != "__future__":
            needs.add(top)

    visit(module, names)
    return needs


def package_of(module: str) -> str:
    return module if module_file(module).name == "__init__.py" else module.rpartition(".")[0]


def imported_names(module: str) -> dict[str, str]:
    """Names a module imports at its top level from other gpubio modules -> that module."""
    names = {}
    for target, imported in _imports(module_tree(module).body, package_of(module)):
        if target.split(".")[0] == "gpubio" and imported:
            names.update(dict.fromkeys(imported, target))
    return names


def test_third_party_needs_follows_functions_and_skips_optional(tmp_path, monkeypatch):
    pkg = tmp_path / "gpubio"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("import json\n")
    (pkg / "sub" / "core.py").write_text(
        "import numpy\n"
        "def used():\n    helper()\n    return unused\n"
        "def helper():\n    import scipy.stats\n    from .other import needed\n"
        "def unused():\n    import torch\n"
        "def optional():\n    try:\n        import cupy\n    except ImportError:\n        cupy = None\n"
    )
    (pkg / "sub" / "plugins.py").write_text(
        "REGISTRY = {}\n"
        "def register(cls):\n    REGISTRY[cls.__name__] = cls\n    return cls\n"
        "@register\nclass Enformer:\n    def load(self):\n        import enformer_pytorch\n"
        "def pick(name):\n    return REGISTRY[name]()\n"
    )
    (pkg / "sub" / "other.py").write_text(
        "import pandas\ndef needed():\n    import h5py\ndef other():\n    import zarr\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE_ROOT", tmp_path)
    module_tree.cache_clear()
    try:
        assert third_party_needs("gpubio.sub.core", ("used",)) == {"numpy", "scipy", "pandas", "h5py"}
        assert third_party_needs("gpubio.sub.core", ("optional",)) == {"numpy"}
        assert third_party_needs("gpubio.sub.core") == {"numpy", "scipy", "pandas", "h5py", "torch"}
        assert third_party_needs("gpubio.sub.plugins", ("pick",)) == {"enformer_pytorch"}
    finally:
        module_tree.cache_clear()


# ------------------------------------------------------------------ the check
def command_entry(command: str) -> tuple[str, tuple[str, ...] | None]:
    """(module, function) that `python -m gpubio[.module] <args>` runs."""
    match = re.search(r"python -m (gpubio(?:\.[\w.]+)?)((?: \S+)*)", command)
    module, args = match.group(1), match.group(2).split()
    if module != "gpubio":
        return module, None  # a module run as a script: all of it
    from gpubio.cli import build_parser

    subcommands = next(a for a in build_parser()._actions if a.dest == "command").choices
    name = next(a for a in args if a in subcommands)
    func = subcommands[name].get_default("func")
    # a command wrapped by a decorator-like function: the wrapper and what it closes over
    wrapped = [c.cell_contents.__name__ for c in func.__closure__ or () if callable(c.cell_contents)]
    return func.__module__, (func.__qualname__.split(".")[0], *wrapped)


def gpubio_rules() -> dict[str, str]:
    return {name: block for name, block in rule_blocks().items() if "python -m gpubio" in rule_command(block)}


def test_every_rule_command_is_checked():
    rules = gpubio_rules()
    assert len(rules) >= 25 and {"qc_summary", "integrate_cells", "basecall", "call_parabricks"} <= set(rules)


@pytest.mark.parametrize("rule", sorted(gpubio_rules()))
def test_rule_env_provides_what_its_command_imports(rule):
    block = gpubio_rules()[rule]
    env_file = rule_conda_env(block)
    if env_file is None:
        # runs in Snakemake's own process environment on the head node, which has gpubio's needs
        assert rule in local_rules(), f"rule {rule} runs gpubio but names no conda environment"
        return
    module, function = command_entry(rule_command(block))
    # every command first goes through the CLI: its parser imports each domain's commands
    # module, and main() pins GPUs
    from gpubio.cli import DOMAIN_COMMANDS

    needs = third_party_needs("gpubio.cli", ("main", "build_parser")) if module != "gpubio.gpu.devices" else set()
    for commands in DOMAIN_COMMANDS:
        needs |= third_party_needs(commands, ("register",)) if module != "gpubio.gpu.devices" else set()
    needs |= third_party_needs(module, function)
    missing = sorted(needs - env_modules(env_file))
    assert not missing, (
        f"rule {rule}: {env_file.relative_to(REPO)} lacks {', '.join(missing)} "
        f"(imported by {module}.{function[0] if function else ''}); add the package, pinned as in requirements.lock"
    )


@pytest.mark.parametrize(
    "entry",
    [
        ["gpubio.gpu.devices", "--gpus", "1", "--"],  # call_parabricks, call_deepvariant, call_clair3
        ["gpubio", "--gpus", "1", "tool-on-device", "--gpu-args=--gpu", "--cpu-args=", "--"],  # basecall, demux
    ],
)
def test_vendor_image_entry_points_need_only_the_standard_library(tmp_path, entry):
    """Vendor images (dorado, Parabricks, ...) bring a bare python3: the GPU-pinning wrappers must
    start there. -S leaves out every installed package; only gpubio's own source is on the path."""
    marker = tmp_path / "ran"
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(PACKAGE_ROOT), "GPUBIO_NUM_GPUS": "0"}
    proc = subprocess.run(
        [sys.executable, "-S", "-m", *entry, "touch", str(marker)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert marker.exists()
