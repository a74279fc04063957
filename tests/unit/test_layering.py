"""Lower layers never import higher ones (read from the source, not at run time).

errors, scrub, values, component, registry
  < settings, logging
  < the components (database < audit; tokens; telemetry; auth)
  < health, container
  < cli, testing, integrations, the package itself

Only imports executed when the module loads count, wherever they sit at module
level; imports under ``if TYPE_CHECKING:`` and inside functions (lazy imports of
optional or heavy parts) do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "infrakit"

LAYERS: list[tuple[str, ...]] = [
    ("infrakit.errors", "infrakit.scrub", "infrakit.values", "infrakit.component"),
    ("infrakit.registry",),
    ("infrakit.settings", "infrakit.logging"),
    ("infrakit.database", "infrakit.tokens", "infrakit.telemetry", "infrakit.auth"),
    ("infrakit.audit",),  # built on the database
    ("infrakit.health", "infrakit.container"),
    ("infrakit.cli", "infrakit.testing", "infrakit.integrations", "infrakit.__main__"),
]


def layer_of(module: str) -> int:
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    if module == "infrakit":
        return len(LAYERS)  # the package's public face re-exports everything
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def load_time_imports(path: Path) -> set[str]:
    """infrakit modules imported when ``path`` is executed."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("infrakit"))
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "infrakit":  # from infrakit import registry
                    found.update(f"infrakit.{a.name}" for a in node.names)
                elif node.module.startswith("infrakit"):
                    found.add(node.module)
            elif isinstance(node, ast.If | ast.Try | ast.With):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []) or []:
                        visit([child] if isinstance(child, ast.stmt) else child.body)

    visit(tree.body)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    module = module_name(path)
    if "migrations" in path.parts:
        return  # Alembic scripts run inside the migration runner
    mine = layer_of(module)
    higher = sorted(m for m in load_time_imports(path) if layer_of(m) > mine)
    assert not higher, f"{module} (layer {mine}) imports {higher}"


class TestNamedRules:
    """The rules the design spells out, each checked on its own."""

    def imports_of(self, prefix: str) -> set[str]:
        return {
            imported
            for path in MODULES
            if module_name(path).startswith(prefix)
            for imported in load_time_imports(path)
        }

    def test_settings_never_imports_a_component(self) -> None:
        components = (
            "infrakit.database",
            "infrakit.tokens",
            "infrakit.audit",
            "infrakit.telemetry",
        )
        assert not {m for m in self.imports_of("infrakit.settings") if m.startswith(components)}

    def test_database_never_imports_audit(self) -> None:
        assert not {
            m for m in self.imports_of("infrakit.database") if m.startswith("infrakit.audit")
        }

    def test_no_component_imports_the_container(self) -> None:
        for component in ("database", "tokens", "audit", "telemetry", "logging", "settings"):
            assert "infrakit.container" not in self.imports_of(f"infrakit.{component}")

    def test_the_checker_sees_imports(self) -> None:
        # a guard against a checker that finds nothing
        assert "infrakit.database.session" in self.imports_of("infrakit.audit.sql")
        assert "infrakit.settings.models" in self.imports_of("infrakit.tokens.memory")
