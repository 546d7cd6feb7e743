"""The plugin template's first test: the plugin is installed and listed."""

from wfe.plugins import load_registry


def test_plugin_is_installed_and_listed():
    registry = load_registry()
    assert registry.stages["gamma"].plugin == "wfe-gamma"
    assert "gamma" in registry.stages
