"""The codebase's promises: every public function, class and method has a docstring; no module is
longer than a reader can take in one sitting."""
import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parents[1] / "pilotrl_jax"
MAX_LINES = 520


def _public_defs(tree, prefix=""):
    for n in ast.iter_child_nodes(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not n.name.startswith("_"):
            yield f"{prefix}{n.name}", n
            if isinstance(n, ast.ClassDef):
                yield from _public_defs(n, f"{prefix}{n.name}.")


def test_every_public_definition_has_a_docstring():
    missing = [f"{p.relative_to(PKG.parent)}:{n.lineno} {name}"
               for p in sorted(PKG.rglob("*.py")) for name, n in _public_defs(ast.parse(p.read_text()))
               if ast.get_docstring(n) is None]
    assert not missing, "public definitions without a docstring:\n" + "\n".join(missing)


def test_no_module_is_too_long():
    long = {str(p.relative_to(PKG.parent)): n for p in sorted(PKG.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them along their seams): {long}"
