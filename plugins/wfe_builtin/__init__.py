"""wfe's built-in plugins: readers, writers, stages, architectures, commands.

They are registered through the ``wfe`` entry point of the ``wfe``
distribution, exactly as a third-party plugin is, and have no other way in.
This module stays light: it only returns descriptors.
"""

from __future__ import annotations

from wfe import hookimpl
from wfe.specs import ArchitectureSpec, CommandSpec, ReaderSpec, StageSpec, WriterSpec

__all__ = ["wfe_architectures", "wfe_commands", "wfe_readers", "wfe_stages", "wfe_writers"]

#: segmentation_models_pytorch architectures a model card may name.
SMP_ARCHITECTURES = ("Unet", "UnetPlusPlus", "FPN", "Linknet", "PSPNet", "PAN", "MAnet",
                     "DeepLabV3", "DeepLabV3Plus", "UPerNet", "Segformer", "DPT")


@hookimpl
def wfe_stages() -> list[StageSpec]:
    return [
        StageSpec("read", "wfe_builtin.stages.read:ReadStage",
                  "open the input image at the pixel size asked for"),
        StageSpec("tile", "wfe_builtin.stages.tile:TileStage",
                  "store an image as chunked OME-Zarr (pyramid, codec, shards) and pass it on"),
        StageSpec("tissue_mask", "wfe_builtin.stages.tissue_mask:TissueMaskStage",
                  "find tissue on a low-resolution level (Otsu on saturation)"),
        StageSpec("segment", "wfe_builtin.stages.segment:SegmentStage",
                  "sliding-window segmentation with a model card + safetensors"),
        StageSpec("write", "wfe_builtin.stages.write:WriteStage",
                  "write an artifact with the writer for its format"),
    ]


@hookimpl
def wfe_readers() -> list[ReaderSpec]:
    return [
        ReaderSpec("openslide", "wfe_builtin.readers.openslide:OpenSlideReader",
                   "vendor whole-slide formats through OpenSlide",
                   suffixes=(".svs", ".ndpi", ".vms", ".vmu", ".mrxs", ".scn", ".bif",
                             ".tif", ".tiff", ".dcm"), priority=50),
        ReaderSpec("geotiff", "wfe_builtin.readers.geotiff:GeoTiffReader",
                   "georeferenced GeoTIFF / COG (CRS, transform, nodata, overviews) via rasterio",
                   suffixes=(".tif", ".tiff", ".vrt", ".jp2", ".img"), priority=45),
        ReaderSpec("tiff", "wfe_builtin.readers.tiff:TiffReader",
                   "TIFF via tifffile: OME-TIFF, BigTIFF, ImageJ, QPTIFF, tiled or stripped",
                   suffixes=(".tif", ".tiff", ".ome.tif", ".ome.tiff", ".btf", ".qptiff"),
                   priority=40),
        ReaderSpec("zarr", "wfe_builtin.readers.zarr:ZarrReader",
                   "Zarr v2/v3 arrays and OME-Zarr (NGFF) multiscales",
                   suffixes=(".zarr", ".ome.zarr"), priority=40),
        ReaderSpec("pil", "wfe_builtin.readers.pil:PilReader",
                   "small untiled images (PNG, JPEG, ...) via Pillow",
                   suffixes=(".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"), priority=10),
    ]


@hookimpl
def wfe_writers() -> list[WriterSpec]:
    return [
        WriterSpec("ome-zarr", "wfe_builtin.writers.ome_zarr:OmeZarrWriter",
                   "OME-Zarr (NGFF) multiscale image", format="ome-zarr",
                   suffixes=(".ome.zarr", ".zarr")),
        WriterSpec("ome-tiff", "wfe_builtin.writers.ome_tiff:OmeTiffWriter",
                   "pyramidal tiled OME-TIFF (SubIFDs) for QuPath, OpenSlide, tifffile",
                   format="ome-tiff", suffixes=(".ome.tif", ".ome.tiff")),
        WriterSpec("cog", "wfe_builtin.writers.cog:CogWriter",
                   "Cloud-Optimised GeoTIFF in the source CRS (GDAL, QGIS)", format="cog",
                   suffixes=(".cog.tif", ".tif", ".tiff")),
        WriterSpec("geojson", "wfe_builtin.writers.geojson:GeoJsonWriter",
                   "objects of a label image as GeoJSON (QuPath, QGIS)", format="geojson",
                   suffixes=(".geojson", ".json")),
        WriterSpec("csv", "wfe_builtin.writers.stats:StatsWriter",
                   "per-class pixels, area and object count of a label image", format="csv",
                   suffixes=(".csv",)),
        WriterSpec("png", "wfe_builtin.writers.overlay:OverlayWriter",
                   "overlay thumbnail: labels coloured over the source", format="png",
                   suffixes=(".png", ".jpg", ".jpeg")),
    ]


@hookimpl
def wfe_architectures() -> list[ArchitectureSpec]:
    return [ArchitectureSpec(name, "wfe_builtin.models.smp:build",
                             f"segmentation_models_pytorch.{name}")
            for name in SMP_ARCHITECTURES]


@hookimpl
def wfe_commands() -> list[CommandSpec]:
    return [CommandSpec("sample", "wfe_builtin.synthetic.command:sample",
                        "Write a deterministic synthetic H&E-like slide (pyramidal tiled TIFF).")]
