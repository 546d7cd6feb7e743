"""Deterministic synthetic H&E-like slides, for demos, tests, benchmarks and training."""

from wfe_builtin.synthetic.slide import SyntheticSlide, write_slide

__all__ = ["SyntheticSlide", "write_slide"]
