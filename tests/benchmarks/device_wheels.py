"""Wheels for a GPU machine whose Python lacks some of wfe's packages.

``make device-wheels`` fills ``.whl/`` (ignored by git) with wfe's own wheel and, at
the versions installed in this virtual environment, the wheels of the packages such a
machine's image does not hold (Python 3.12, x86-64; its image has torch, torchvision,
timm, safetensors, tifffile, scikit-image, pluggy, typer and rich). rasterio is left
out: it alone is larger than the rest together, and reading a TIFF slide does not
need it. docs/benchmarks.md (On a GPU) gives the command that installs them there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / ".whl"
#: What the GPU image lacks of wfe's dependencies and theirs (rasterio aside).
MISSING = ["segmentation-models-pytorch", "dask", "distributed", "partd", "locket", "zict",
           "tblib", "tornado", "zarr", "numcodecs", "google-crc32c", "donfig", "ome-zarr",
           "ome-zarr-models", "pydantic-zarr", "imagecodecs", "openslide-python",
           "openslide-bin", "pydantic", "pydantic-core", "annotated-types",
           "typing-inspection", "ruamel.yaml", "orjson", "shapely", "deprecated"]
PLATFORMS = ["manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]
LIMIT = 60 * 2**20  # what travels to the machine may not exceed 64 MiB, the tree included


def main() -> None:
    shutil.rmtree(WHEELS, ignore_errors=True)
    WHEELS.mkdir()
    pins = [f"{name}=={version(name)}" for name in MISSING]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                    *(arg for p in PLATFORMS for arg in ("--platform", p)), "-d", str(WHEELS),
                    *pins], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(WHEELS), str(ROOT)], check=True)
    total = sum(f.stat().st_size for f in WHEELS.iterdir())
    print(f"{len(list(WHEELS.iterdir()))} wheels, {total / 2**20:.1f} MiB in {WHEELS}")
    if total > LIMIT:
        sys.exit(f"{WHEELS}: {total / 2**20:.1f} MiB is more than the {LIMIT / 2**20:.0f} MiB "
                 "that may travel; leave out a package the run does not need")


if __name__ == "__main__":
    main()
