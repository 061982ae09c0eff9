"""The house, read from the imports (README, "Architecture"): a core below that imports no stage, stages
beside each other that import only the core, a shell on top; one Kafka client layer. Pure: parses the
sources, imports nothing."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("producers", "generation", "stream_processors", "models", "serving", "feature_repo")
SHELL = ("streamrec.shell", "streamrec.__main__", "benchmarks")
# The one edge between stages: serving loads the towers, their feature encoding and the checkpoint
# format that training writes (models/), and nothing else of training.
STAGE_EDGES = {("serving", "models.checkpoints"), ("serving", "models.features"), ("serving", "models.towers")}
# Kafka clients are made in the client layer only (tests and the benchmarks' raw baselines excepted).
CLIENT_LAYER = ("streamrec.kafka_clients", "streamrec.offsets")
CONSTRUCTORS = {"KafkaProducer", "KafkaConsumer", "KafkaAdminClient", "AIOKafkaProducer", "AIOKafkaConsumer",
                "AIOKafkaAdminClient"}
OURS = ("streamrec", *STAGES, "benchmarks")


def _modules() -> Iterator[tuple[str, Path]]:
    for top in OURS:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _imports(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """Every module of ours that ``module`` imports (at the top or inside a function), with the line."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in OURS:
                yield name, node.lineno


def _layer(module: str) -> str:
    if module.startswith(SHELL):
        return "shell"
    top = module.split(".")[0]
    return top if top in STAGES else "core"


def _known(name: str, modules: set[str]) -> str | None:
    """The module ``name`` refers to (``pkg.mod.attr`` → ``pkg.mod``), if it is one of ours."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _violations() -> list[str]:
    found = dict(_modules())
    modules = set(found)
    bad = []
    for module, path in found.items():
        here = _layer(module)
        for name, line in _imports(module, path):
            target = _known(name, modules)
            if target is None or target == module:
                continue
            there = _layer(target)
            where = f"{path.relative_to(ROOT)}:{line} imports {target}"
            if there == "shell" and here != "shell":
                bad.append(f"{where}: only the shell imports the shell")
            elif here == "core" and there != "core":
                bad.append(f"{where}: the core imports no stage")
            elif here in STAGES and there in STAGES and there != here and not any(
                    here == a and target.startswith(b) for a, b in STAGE_EDGES):
                bad.append(f"{where}: stages import only the core")
    return sorted(set(bad))


def test_core_below_stages_beside_shell_on_top() -> None:
    assert _violations() == []


def test_the_product_never_imports_the_benchmarks_and_does_not_ship_them() -> None:
    found = dict(_modules())
    for module, path in found.items():
        if module.startswith("benchmarks"):
            continue
        assert not [n for n, _ in _imports(module, path) if n.split(".")[0] == "benchmarks"], module
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    include = pyproject.split("[tool.setuptools.packages.find]")[1].split("[")[1].split("]")[0]
    assert "benchmarks" not in include


def test_kafka_clients_are_made_only_in_the_client_layer() -> None:
    bad = []
    for module, path in _modules():
        if module.startswith((*CLIENT_LAYER, "benchmarks")):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in CONSTRUCTORS:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}(...)")
    assert bad == []


def test_the_rules_catch_what_they_forbid(tmp_path: Path) -> None:
    """The checks above can fail: an upward import is named."""
    assert _layer("streamrec.config") == "core" and _layer("streamrec.shell.cli") == "shell"
    assert _layer("serving.app") == "serving" and _layer("benchmarks.suite") == "shell"
    source = tmp_path / "m.py"
    source.write_text("from streamrec.shell import stack\nimport models.train\n", encoding="utf-8")
    assert [n for n, _ in _imports("streamrec.config", source)] == [
        "streamrec.shell", "streamrec.shell.stack", "models.train"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_is_a_folder(stage: str) -> None:
    assert (ROOT / stage).is_dir()


def test_the_image_copies_every_package_the_project_ships() -> None:
    """docker-compose's image installs from a copy of the tree: a stage left out of it (serving/ once)
    would fail only there."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    include = pyproject.split("[tool.setuptools.packages.find]")[1].split("[")[1].split("]")[0]
    shipped = [name.strip().strip('"').rstrip("*") for name in include.split(",")]
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert set(shipped) == {"streamrec", *STAGES}
    assert [p for p in shipped if f"COPY {p} ./{p}" not in dockerfile] == []
