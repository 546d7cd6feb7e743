"""Every hook is documented, with an example, in its docstring and in docs/plugins.md."""

from __future__ import annotations

import inspect

from conftest import ROOT
from wfe import hookspecs


def _hooks():
    return [name for name, f in vars(hookspecs).items()
            if name.startswith("wfe_") and inspect.isfunction(f)]


def test_every_hook_has_a_docstring_with_an_example():
    hooks = _hooks()
    assert len(hooks) >= 5
    for name in hooks:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert "Example::" in doc and "@hookimpl" in doc, name


def test_every_hook_has_a_section_in_the_plugin_guide():
    guide = (ROOT / "docs" / "plugins.md").read_text()
    for name in _hooks():
        section = guide.split(f"### {name}\n", 1)
        assert len(section) == 2, f"docs/plugins.md has no section for {name}"
        assert "```python" in section[1].split("### ", 1)[0], f"{name} has no example"


def test_stage_reference_is_up_to_date():
    from wfe.docs import stage_reference
    from wfe.plugins import load_registry

    committed = (ROOT / "docs" / "reference" / "stages.md").read_text()
    assert stage_reference(load_registry(autoload=False)) == committed, "run `make docs`"
