"""The README held to the code: its configuration table is the one `Settings` draws, and every file and
symbol its "Where to change…" table names exists. Pure: reads files, imports only the settings."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from streamrec.config import with_configuration_table

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FILE_SUFFIXES = {".py", ".yaml", ".yml", ".md", ".toml", ".txt", ".json", ".cfg", ".xml", ".html"}
SYMBOL = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(\(\))?$")


def test_the_configuration_table_is_the_one_settings_draws() -> None:
    text = README.read_text(encoding="utf-8")
    assert text == with_configuration_table(text), (
        "README's configuration table differs from Settings' fields: run `streamrec config --readme README.md`")


def _where_to_change(text: str) -> Iterator[tuple[str, list[str]]]:
    """Each row of the table after the "Where to change" line: its first cell and the `names` of its
    "where" cell (the last one when no header says "where")."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lower().startswith("where to change")), None)
    assert start is not None, 'README has no "Where to change…" line above a table'
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif rows:
            break
    header, body = rows[0], [row for row in rows[2:] if row]
    where = header.index("where") if "where" in header else len(header) - 1
    for row in body:
        yield row[0], re.findall(r"`([^`]+)`", row[where])


def _definitions(scope: ast.AST, name: str) -> list[ast.AST]:
    """What ``scope`` (a module or class, at any depth) defines as ``name``: a def, a class, an assignment."""
    found = []
    for node in ast.walk(scope):
        if node is scope:
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == name:
                found.append(node)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                found.append(node)
    return found


def _defines(path: Path, dotted: str) -> bool:
    scopes: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"))]
    for name in dotted.split("."):
        scopes = [found for scope in scopes for found in _definitions(scope, name)]
    return bool(scopes)


def _module_file(root: Path, parts: list[str]) -> Path | None:
    folder = root.joinpath(*parts)
    for candidate in (folder.with_suffix(".py"), folder / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_path(name: str) -> bool:
    return "/" in name or Path(name).suffix in FILE_SUFFIXES


def stale_names(text: str, root: Path) -> list[str]:
    """Every name in the table that the tree lacks. A path is read from the root, else beside the row's
    last path (`history.py` after `stream_processors/app.py`); a symbol (`name`, `Class.method` or
    `package.module.name`) is looked up in its module, else in the row's last Python file."""
    stale = []
    for what, names in _where_to_change(text):
        last: Path | None = None
        for name in names:
            if _is_path(name):
                beside = [] if last is None else [last.parent / name]
                found = next((p for p in [root / name, *beside] if p.exists()), None)
                if found is None:
                    stale.append(f"{what}: `{name}` is no file or folder")
                last = found or last
            elif SYMBOL.match(name):
                parts = name.removesuffix("()").split(".")
                module = next(((f, parts[i:]) for i in range(len(parts) - 1, 0, -1)
                               if (f := _module_file(root, parts[:i])) is not None), None)
                path, symbol = module or (last, parts)
                if path is None or path.suffix != ".py":
                    stale.append(f"{what}: `{name}` follows no Python file")
                elif not _defines(path, ".".join(symbol)):
                    stale.append(f"{what}: `{name}` is not defined in {path.relative_to(root)}")
            else:
                stale.append(f"{what}: `{name}` is neither a path nor a symbol")
    return stale


def test_every_file_and_symbol_the_where_to_change_table_names_exists() -> None:
    text = README.read_text(encoding="utf-8")
    assert sum(len(names) for _, names in _where_to_change(text)) >= 5  # the table was read, not skipped
    assert stale_names(text, ROOT) == []


def test_the_table_check_can_fail(tmp_path: Path) -> None:
    """A renamed file, a removed function or method, a name in a file that holds none: each is caught."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "app.py").write_text("class Group:\n    def run(self):\n        def inner(): ...\n"
                                             "LIMIT = 3\n")
    (tmp_path / "pkg" / "rules.yaml").write_text("")
    readme = ("Where to change…\n\n| what | where |\n|---|---|\n"
              "| good | `pkg/app.py` (`Group.run`, `inner`, `LIMIT`) → `rules.yaml`; `pkg.app.Group` |\n"
              "| bad | `pkg/gone.py`; `pkg/app.py` (`Group.stop`, `missing()`) → `rules.yaml` (`x`); `a b` |\n"
              "\nafter the table: `ignored.py`\n")
    assert stale_names(readme, tmp_path) == [
        "bad: `pkg/gone.py` is no file or folder",
        "bad: `Group.stop` is not defined in pkg/app.py",
        "bad: `missing()` is not defined in pkg/app.py",
        "bad: `x` follows no Python file",
        "bad: `a b` is neither a path nor a symbol",
    ]
