"""wfe-gamma: an example third-party wfe plugin contributing one stage.

This module is what the entry point names; it stays light and only returns
descriptors. The stage itself lives in :mod:`wfe_gamma.stage` and is imported
when a workflow uses it.
"""

from wfe import StageSpec, hookimpl

__version__ = "0.1.0"


@hookimpl
def wfe_stages() -> list[StageSpec]:
    return [StageSpec("gamma", "wfe_gamma.stage:GammaStage", "gamma-correct an 8-bit image")]
