"""Small deterministic files in every format the readers support, and broken ones.

Vendor files are written the way the vendors lay them out (page order,
ImageDescription, private tags), so OpenSlide itself recognises them; the
tests then check what OpenSlide, tifffile, rasterio, zarr and Pillow make of them.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import tifffile

APERIO = "Aperio Image Library v12.0.15 \r\n"


def pattern(h: int, w: int, channels: int = 3, dtype: type = np.uint8) -> np.ndarray:
    """A smooth, non-periodic ``(h, w, channels)`` image (compresses like a real one)."""
    y, x = np.mgrid[:h, :w].astype(np.float32)
    planes = [np.sin(x / (23 + 7 * c)) * np.cos(y / (31 + 5 * c)) for c in range(channels)]
    arr = (np.stack(planes, -1) + 1) / 2
    top = 255 if dtype == np.uint8 else 4000
    return (arr * top).astype(dtype)


def write_svs(path: Path, compression: str | int = "jpeg", size: tuple[int, int] = (2048, 1536),
              mpp: float = 0.5) -> np.ndarray:
    """An Aperio SVS: tiled level 0, thumbnail, a tiled 4× level, label and macro."""
    h, w = size
    base = pattern(h, w)
    kw = {"photometric": "rgb", "metadata": None}
    props = f"|AppMag = 20|MPP = {mpp}"
    with tifffile.TiffWriter(path) as tif:
        tif.write(base, tile=(256, 256), compression=compression,
                  description=f"{APERIO}{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=70{props}", **kw)
        tif.write(base[::8, ::8].copy(), compression="jpeg",
                  description=f"{APERIO}{w}x{h} -> {w // 8}x{h // 8} - {props}", **kw)
        tif.write(base[::4, ::4].copy(), tile=(256, 256), compression=compression,
                  description=f"{APERIO}{w}x{h} -> {w // 4}x{h // 4} - {props}", **kw)
        tif.write(pattern(100, 300), compression="lzw", subfiletype=1,
                  description=f"{APERIO}label 300x100", **kw)
        tif.write(pattern(200, 400), compression="jpeg", subfiletype=9,
                  description=f"{APERIO}macro 400x200", **kw)
    return base


def _jpeg_segments(stream: bytes) -> list[tuple[int, bytes]]:
    """A JPEG stream's marker segments up to the scan, ``(marker, bytes)``; then the scan."""
    parts, i = [], 2
    while stream[i + 1] != 0xDA:
        n = int.from_bytes(stream[i + 2:i + 4], "big")
        parts.append((stream[i + 1], stream[i:i + 2 + n]))
        i += 2 + n
    return [*parts, (0xDA, stream[i:])]


def _abbreviated_jpeg(tile: np.ndarray) -> tuple[bytes, bytes]:
    """``tile`` as a TIFF JPEG tile the way libtiff writes one: its quantisation tables
    apart (for JPEGTables), the tile's stream without them or a JFIF marker."""
    import imagecodecs

    stream = imagecodecs.jpeg8_encode(np.ascontiguousarray(tile), level=80, colorspace="RGB",
                                      outcolorspace="YCBCR", subsampling=(2, 2))
    parts = _jpeg_segments(stream)
    tables = b"\xff\xd8" + b"".join(s for m, s in parts if m == 0xDB) + b"\xff\xd9"
    return tables, b"\xff\xd8" + b"".join(s for m, s in parts if m not in (0xDB, 0xE0))


def write_aperio_jpeg(path: Path, size: tuple[int, int] = (1024, 768), mpp: float = 0.5,
                      missing: tuple[tuple[int, int], ...] = ((1, 1),),
                      aperio: bool = True) -> np.ndarray:
    """An Aperio SVS whose JPEG tiles are laid out as the scanners' libtiff writes them
    (YCbCr; each tile's stream without the quantisation tables, which are in the page's
    JPEGTables), with the tiles at ``missing`` (row, column) never written (byte count
    0), and a 4× level. ``aperio=False``: the same pyramid as a plain sparse TIFF (pixel
    size in the resolution tags, no thumbnail)."""
    h, w = size
    base = pattern(h, w)
    props = f"|AppMag = 20|MPP = {mpp}"
    with tifffile.TiffWriter(path) as tif:
        for k in (1, 4):
            a = base[::k, ::k]
            tables = _abbreviated_jpeg(a[:256, :256])[0]
            rows, cols = -(-a.shape[0] // 256), -(-a.shape[1] // 256)
            whole = np.pad(a, ((0, rows * 256 - a.shape[0]), (0, cols * 256 - a.shape[1]), (0, 0)),
                           mode="edge")  # edge tiles are whole tiles
            tiles = (b"" if (r, c) in missing and k == 1 else
                     _abbreviated_jpeg(whole[r * 256:(r + 1) * 256, c * 256:(c + 1) * 256])[1]
                     for r in range(rows) for c in range(cols))
            head = f"[0,0 {w}x{h}] (256x256) JPEG/RGB Q=80" if k == 1 else f"-> {w // k}x{h // k}"
            per_cm = 1e4 / (mpp * k)
            tif.write(tiles, shape=a.shape, dtype=np.uint8, tile=(256, 256), photometric="ycbcr",
                      compression="jpeg", subsampling=(2, 2), jpegtables=tables, metadata=None,
                      **({"description": f"{APERIO}{w}x{h} {head}{props}"} if aperio else
                         {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER",
                          "subfiletype": 0 if k == 1 else 1}))
            if k == 1 and aperio:
                tif.write(base[::8, ::8].copy(), compression="jpeg", photometric="rgb",
                          metadata=None, description=f"{APERIO}{w}x{h} -> {w // 8}x{h // 8}")
    return base


def write_ndpi(path: Path, size: tuple[int, int] = (1024, 1536), mpp: float = 0.5) -> np.ndarray:
    """A Hamamatsu NDPI: one JPEG strip per level, NDPI private tags, a macro image."""
    base = pattern(*size)

    def tags(magnification: float) -> list[tuple[int, str, int, object, bool]]:
        return [(65420, "I", 1, 1, True), (65421, "f", 1, magnification, True),
                (65422, "i", 1, 0, True), (65423, "i", 1, 0, True), (65424, "i", 1, 0, True)]

    with tifffile.TiffWriter(path) as tif:
        for k in (1, 4):
            a = base[::k, ::k].copy()
            res = 10_000 / (mpp * k)
            tif.write(a, photometric="rgb", compression="jpeg", rowsperstrip=a.shape[0],
                      resolution=(res, res), resolutionunit="CENTIMETER", metadata=None,
                      extratags=tags(20.0), subsampling=(1, 1))
        tif.write(pattern(200, 400), photometric="rgb", compression="jpeg", rowsperstrip=200,
                  metadata=None, extratags=tags(-1.0), subsampling=(1, 1))
    return base


def write_ome_tiff(path: Path, size: tuple[int, int] = (1024, 768)) -> np.ndarray:
    """Multi-channel uint16 fluorescence OME-TIFF, pyramid in SubIFDs, names and pixel size."""
    data = pattern(*size, channels=3, dtype=np.uint16).transpose(2, 0, 1).copy()
    meta = {"axes": "CYX", "Channel": {"Name": ["DAPI", "FITC", "TRITC"]},
            "PhysicalSizeX": 0.325, "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": 0.325, "PhysicalSizeYUnit": "µm"}
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(data, subifds=2, tile=(256, 256), compression="zlib", metadata=meta,
                  photometric="minisblack")
        for k in (2, 4):
            tif.write(data[:, ::k, ::k].copy(), subfiletype=1, tile=(256, 256),
                      compression="zlib", photometric="minisblack")
    return data


def write_imagej(path: Path, size: tuple[int, int] = (300, 400)) -> np.ndarray:
    """An ImageJ hyperstack Z × C × Y × X (uint16) with a pixel size in microns."""
    data = np.stack([pattern(*size, channels=2, dtype=np.uint16).transpose(2, 0, 1) + z
                     for z in range(3)]).astype(np.uint16)
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"axes": "ZCYX", "unit": "um"})
    return data


def write_geotiff_without_crs(path: Path) -> None:
    """A GeoTIFF with a geotransform but no CRS."""
    import rasterio
    from affine import Affine

    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8",
                       transform=Affine(10, 0, 500000, 0, -10, 5000000)) as dst:
        dst.write(np.full((1, 64, 64), 7, np.uint8))


def write_tiled_jpeg(path: Path, size: tuple[int, int] = (1024, 1024)) -> np.ndarray:
    """A plain tiled JPEG TIFF (one level) with a pixel size."""
    base = pattern(*size)
    tifffile.imwrite(path, base, tile=(256, 256), photometric="rgb", compression="jpeg",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    return base


def corrupt_tile(path: Path, index: int) -> None:
    """Overwrite the middle of tile ``index`` of the first page with garbage."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(path, "r+b") as fh:
        fh.seek(offset + count // 3)
        fh.write(bytes(range(256)) * max(1, count // 768))


def _patch_tag(path: Path, code: int, value: int) -> None:
    """Set a SHORT/LONG tag of the first page in place (classic TIFF only)."""
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages.first.tags[code]
        offset, dtype = tag.valueoffset, tag.dtype
    fmt = "<H" if dtype == 3 else "<I"
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(struct.pack(fmt, value))


def set_compression(path: Path, code: int) -> None:
    """Claim a compression scheme the file was not written with."""
    _patch_tag(path, 259, code)


def write_huge_declared(path: Path) -> None:
    """A few kilobytes of TIFF whose header declares 1,000,000 × 1,000,000 pixels."""
    tifffile.imwrite(path, pattern(64, 64), photometric="rgb", compression="zlib",
                     rowsperstrip=64)
    _patch_tag(path, 256, 1_000_000)  # ImageWidth
    _patch_tag(path, 257, 1_000_000)  # ImageLength
    _patch_tag(path, 278, 1_000_000)  # RowsPerStrip


def shapes_truth(size: int = 4096) -> np.ndarray:
    """Level-0 mask of three known objects: a disc, a ring (a hole inside), an ellipse."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    disc = (y - 1100) ** 2 + (x - 1100) ** 2 <= 520**2
    r2 = (y - 1300) ** 2 + (x - 2900) ** 2
    ring = (r2 <= 600**2) & (r2 > 250**2)
    ellipse = ((y - 3000) / 500) ** 2 + ((x - 2000) / 800) ** 2 <= 1
    return disc | ring | ellipse


def write_shapes_slide(path: Path, truth: np.ndarray, mpp: float = 0.5) -> Path:
    """A tiled RGB slide: pink objects (``truth``) on white glass, lossless."""
    rgb = np.empty((*truth.shape, 3), np.uint8)
    rgb[...] = (242, 242, 242)
    rgb[truth] = (200, 90, 160)
    tifffile.imwrite(path, rgb, tile=(256, 256), photometric="rgb", compression="zlib",
                     resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    return path


def _philips_xml(spacings_mm: list[float]) -> str:
    """The DPUfsImport XML of a Philips TIFF: one WSI image, one pixel spacing per level."""
    levels = "".join(
        '<DataObject ObjectType="PixelDataRepresentation">'
        f'<Attribute Name="DICOM_PIXEL_SPACING" Group="0x0028" Element="0x0030" PMSVR="IDoubleArray">'
        f'"{s:g}" "{s:g}"</Attribute></DataObject>' for s in spacings_mm)
    return ('<?xml version="1.0" encoding="UTF-8" ?>'
            '<DataObject ObjectType="DPUfsImport">'
            '<Attribute Name="DICOM_MANUFACTURER" Group="0x0008" Element="0x0070" PMSVR="IString">'
            'PHILIPS</Attribute>'
            '<Attribute Name="PIM_DP_SCANNED_IMAGES" Group="0x301D" Element="0x1003" '
            'PMSVR="IDataObjectArray"><Array><DataObject ObjectType="DPScannedImage">'
            '<Attribute Name="DICOM_DERIVATION_DESCRIPTION" Group="0x0008" Element="0x2111" '
            'PMSVR="IString">tiff-useBigTIFF=1-useRgb=0-levels=20,40,80-processing=0</Attribute>'
            '<Attribute Name="PIM_DP_IMAGE_TYPE" Group="0x301D" Element="0x1004" '
            'PMSVR="IString">WSI</Attribute>'
            '<Attribute Name="DICOM_PIXEL_SPACING" Group="0x0028" Element="0x0030" '
            f'PMSVR="IDoubleArray">"{spacings_mm[0]:g}" "{spacings_mm[0]:g}"</Attribute>'
            '<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE" Group="0x1001" '
            f'Element="0x8B01" PMSVR="IDataObjectArray"><Array>{levels}</Array></Attribute>'
            '</DataObject></Array></Attribute></DataObject>')


def write_philips_tiff(path: Path, size: tuple[int, int] = (1024, 1536),
                       mpp: float = 0.25) -> np.ndarray:
    """A Philips TIFF: "Philips" software tag, DPUfsImport XML with one pixel spacing
    (mm) per level, tiled JPEG levels ÷2 marked reduced-resolution, label and macro
    strips after them."""
    base = pattern(*size)
    spacings = [mpp * 1e-3 * k for k in (1, 2, 4)]
    kw = {"photometric": "rgb", "metadata": None, "software": "Philips DP v1.0"}
    with tifffile.TiffWriter(path) as tif:
        for n, k in enumerate((1, 2, 4)):
            tif.write(base[::k, ::k].copy(), tile=(256, 256), compression="jpeg",
                      subfiletype=0 if n == 0 else 1,
                      description=_philips_xml(spacings) if n == 0 else None, **kw)
        tif.write(pattern(100, 300), compression="jpeg", description="Label", **kw)
        tif.write(pattern(200, 400), compression="jpeg", description="Macro", **kw)
    return base


LEICA_XMLNS = "http://www.leica-microsystems.com/scn/2010/10/01"


def _leica_image(name: str, view: tuple[int, int, int, int],
                 dims: list[tuple[int, int, int]], objective: str) -> str:
    """One ``image`` of a Leica SCN collection: its view (clicks: size, offset) and one
    ``dimension`` (width, height, IFD) per resolution."""
    w, h, ox, oy = view
    pixels = "".join(f'<dimension sizeX="{dw}" sizeY="{dh}" r="{r}" ifd="{ifd}"/>'
                     for r, (dw, dh, ifd) in enumerate(dims))
    return (f'<image name="{name}"><creationDate>2026-01-01T00:00:00.00Z</creationDate>'
            '<device model="Leica SCN400;Leica SCN" version="1.5.1.10804 2012/05/10 13:29:07"/>'
            f'<pixels sizeX="{dims[0][0]}" sizeY="{dims[0][1]}">{pixels}</pixels>'
            f'<view sizeX="{w}" sizeY="{h}" offsetX="{ox}" offsetY="{oy}" spacingZ="0"/>'
            '<scanSettings><objectiveSettings><objective>' + objective
            + '</objective></objectiveSettings><illuminationSettings><numericalAperture>0.4'
            '</numericalAperture><illuminationSource>brightfield</illuminationSource>'
            '</illuminationSettings></scanSettings></image>')


def write_leica_scn(path: Path, size: tuple[int, int] = (1024, 1536), mpp: float = 0.5,
                    margin: tuple[int, int] = (32, 64)) -> np.ndarray:
    """A Leica SCN: BigTIFF whose XML (default namespace Leica's) places a main image
    (two tiled levels) at an offset ``margin`` (pixels, y and x) inside a collection,
    with a macro image of the whole collection in directory 0. Distances are in
    "clicks" (nm)."""
    h, w = size
    my, mx = margin
    nm = round(mpp * 1000)  # clicks per level-0 pixel
    coll_w, coll_h = (w + 2 * mx) * nm, (h + 2 * my) * nm
    macro = pattern(coll_h // nm // 8, coll_w // nm // 8)
    base = pattern(h, w)
    xml = (f'<?xml version="1.0" encoding="utf-8"?><scn xmlns="{LEICA_XMLNS}">'
           f'<collection name="wfe" uuid="00000000-0000-0000-0000-000000000000" '
           f'sizeX="{coll_w}" sizeY="{coll_h}"><barcode>V0ZF</barcode>'
           + _leica_image("macro", (coll_w, coll_h, 0, 0),
                          [(macro.shape[1], macro.shape[0], 0)], "0.625")
           + _leica_image("main", (w * nm, h * nm, mx * nm, my * nm),
                          [(w, h, 1), (w // 4, h // 4, 2)], "20")
           + "</collection></scn>")
    kw = {"photometric": "rgb", "metadata": None, "tile": (128, 128), "compression": "jpeg",
          "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(macro, description=xml, resolution=(1e4 / (mpp * 8),) * 2, **kw)
        for k in (1, 4):
            res = 1e4 / (mpp * k)
            tif.write(base[::k, ::k].copy(), resolution=(res, res),
                      subfiletype=0 if k == 1 else 1, **kw)
    return base


def _qpi_description(image_type: str, name: str = "", color: str = "") -> str:
    extra = f"<Name>{name}</Name><Color>{color}</Color>" if name else ""
    return ('<?xml version="1.0" encoding="utf-8"?><PerkinElmer-QPI-ImageDescription>'
            "<DescriptionVersion>2</DescriptionVersion>"
            "<AcquisitionSoftware>PerkinElmer-QPI</AcquisitionSoftware>"
            f"<ImageType>{image_type}</ImageType>{extra}"
            "</PerkinElmer-QPI-ImageDescription>")


QPI_CHANNELS = (("DAPI", "0,0,255"), ("CD8", "0,255,0"), ("PanCK", "255,0,0"))


def write_qptiff(path: Path, size: tuple[int, int] = (1024, 768),
                 mpp: float = 0.5) -> np.ndarray:
    """A PerkinElmer (Akoya) QPTIFF: one tiled uint16 page per channel, each named in
    its QPI XML, then an RGB thumbnail, then each reduced resolution (÷2) channel by
    channel; pixel size in the resolution tags (cm)."""
    data = np.moveaxis(pattern(*size, channels=len(QPI_CHANNELS), dtype=np.uint16), -1, 0)
    kw = {"software": "PerkinElmer-QPI", "metadata": None, "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for k in (1, 2):
            res = 1e4 / (mpp * k)
            for plane, (name, color) in zip(data, QPI_CHANNELS, strict=True):
                tif.write(plane[::k, ::k].copy(), tile=(256, 256), compression="zlib",
                          photometric="minisblack", resolution=(res, res),
                          subfiletype=0 if k == 1 else 1,
                          description=_qpi_description(
                              "FullResolution" if k == 1 else "ReducedResolution",
                              name, color), **kw)
            if k == 1:
                tif.write(pattern(64, 48), photometric="rgb", compression="jpeg",
                          description=_qpi_description("Thumbnail"), **kw)
    return data


def write_dicom_wsi(folder: Path, size: tuple[int, int] = (1024, 1536), mpp: float = 0.5,
                    tile: int = 256) -> tuple[list[Path], np.ndarray]:
    """A DICOM WSI series (VL Whole Slide Microscopy Image): one file per level (÷4),
    uncompressed RGB frames in TILED_FULL order, pixel spacing in mm, plus a label;
    the files share a SeriesInstanceUID, as scanners and converters write them."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.77.1.6"
    series, study, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    base = pattern(*size)

    def one(path: Path, image: np.ndarray, image_type: list[str], spacing_mm: float) -> Path:
        h, w = image.shape[:2]
        th, tw = (h, w) if "LABEL" in image_type else (tile, tile)
        rows, cols = -(-h // th), -(-w // tw)
        padded = np.zeros((rows * th, cols * tw, 3), np.uint8)
        padded[:h, :w] = image
        frames = padded.reshape(rows, th, cols, tw, 3).transpose(0, 2, 1, 3, 4)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame_of_ref
        ds.Modality, ds.Manufacturer = "SM", "wfe tests"
        ds.ImageType = image_type
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.Rows, ds.Columns = th, tw
        ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = h, w
        ds.TotalPixelMatrixFocalPlanes = 1
        ds.NumberOfFrames = rows * cols
        ds.DimensionOrganizationType = "TILED_FULL"
        ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = w * spacing_mm, h * spacing_mm
        measures = Dataset()
        measures.PixelSpacing = [spacing_mm, spacing_mm]
        measures.SliceThickness = 0.001
        shared = Dataset()
        shared.PixelMeasuresSequence = [measures]
        ds.SharedFunctionalGroupsSequence = [shared]
        ds.PixelData = np.ascontiguousarray(frames).tobytes()
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        return path

    # Level 0 is the original; the reduced levels are derived (resampled) from it.
    files = [one(folder / f"level-{n}.dcm", base[::k, ::k].copy(),
                 ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if k == 1
                 else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"], mpp * k * 1e-3)
             for n, k in enumerate((1, 4))]
    files.append(one(folder / "label.dcm", pattern(100, 300),
                     ["ORIGINAL", "PRIMARY", "LABEL", "NONE"], 0.1))
    return files, base


def write_ventana_bif(path: Path, size: tuple[int, int] = (1024, 1536),
                      mpp: float = 0.5) -> np.ndarray:
    """A Ventana BIF in its plain layout (no stitched areas): the first page is the
    "Label Image" carrying the iScan XMP (magnification, scan resolution), then tiled
    levels described as ``level=N mag=M``, then a thumbnail."""
    base = pattern(*size)
    iscan = (f'<?xml version="1.0" encoding="utf-8"?><iScan Magnification="20" '
             f'ScanRes="{mpp}" ScannerModel="VENTANA iScan HT" UnitNumber="wfe"/>').encode()
    kw = {"photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(pattern(200, 400), description="Label Image", compression="jpeg",
                  extratags=[(700, "B", len(iscan), iscan, True)], **kw)
        for n, k in enumerate((1, 4)):
            tif.write(base[::k, ::k].copy(), tile=(256, 256), compression="jpeg",
                      description=f"level={n} mag={20 // k} quality=90", **kw)
        tif.write(pattern(64, 96), description="Thumbnail", compression="jpeg", **kw)
    return base


def write_mirax(path: Path, images: tuple[int, int] = (4, 3), image: int = 256,
                overlap: int = 16, mpp: float = 0.25,
                missing: tuple[int, int] = (3, 2)) -> tuple[np.ndarray, np.ndarray]:
    """A MIRAX slide as 3DHISTECH lays it out: ``slide.mrxs`` beside a ``slide/`` folder
    holding Slidedat.ini, Index.dat and one data file.

    Level 0 is ``images`` (across, down) camera images of ``image`` px cut from one
    scene, neighbours overlapping by ``overlap`` px, the inner ones a few pixels off
    the nominal grid; a VIMSLIDE_POSITION_BUFFER says where each was taken. Each coarser
    level concatenates 2 × 2 images of the one below, downsampled (MIRAX's own
    pyramid). The camera image at ``missing`` was never taken (no image at any level,
    its position flagged off), as where a scanner skips empty glass. Macro, label and
    thumbnail are JPEG records of the "Scan data layer". Returns the scene and a mask
    of the pixels no camera image covers.
    """
    import io

    from PIL import Image

    across, down = images
    step = image - overlap
    scene = pattern(down * step + overlap, across * step + overlap)
    jitter = {(1, 1): (3, -2), (2, 1): (-2, 3)}  # inner cameras off the grid: (dx, dy)
    origin = {(gx, gy): (gx * step + jitter.get((gx, gy), (0, 0))[0],
                         gy * step + jitter.get((gx, gy), (0, 0))[1])
              for gy in range(down) for gx in range(across)}
    uncovered = np.ones(scene.shape[:2], bool)
    cameras = {}
    for (gx, gy), (x0, y0) in origin.items():
        if (gx, gy) != missing:
            cameras[gx, gy] = scene[y0:y0 + image, x0:x0 + image]
            uncovered[y0:y0 + image, x0:x0 + image] = False
    folder = path.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    slide_id = "7a1d9c40-wfe-mirax-sample"
    data = bytearray()
    records: list[list[tuple[int, int, int]]] = []  # per level: (image index, offset, length)
    for level in range(3):
        concat = 2 ** level
        entries = []
        for gy in range(0, down, concat):
            for gx in range(0, across, concat):
                canvas = np.full((concat * image, concat * image, 3), 255, np.uint8)
                for (cx, cy), cam in cameras.items():
                    if gx <= cx < gx + concat and gy <= cy < gy + concat:
                        oy, ox = (cy - gy) * image, (cx - gx) * image
                        canvas[oy:oy + image, ox:ox + image] = cam
                if level == 0 and (gx, gy) not in cameras:
                    continue
                tile = np.asarray(Image.fromarray(canvas).reduce(concat))
                buf = io.BytesIO()
                Image.fromarray(tile).save(buf, "JPEG", quality=95)
                entries.append((gy * across + gx, len(data), buf.tell()))
                data += buf.getvalue()
        records.append(entries)
    positions = bytearray()
    for gy in range(down):
        for gx in range(across):
            x0, y0 = origin[gx, gy]
            positions += struct.pack("<bii", int((gx, gy) in cameras), x0, y0)
    nonhier = [(len(data), len(positions))]
    data += positions
    for size in ((300, 120), (200, 200), (160, 64)):  # macro, label, thumbnail
        buf = io.BytesIO()
        Image.fromarray(pattern(size[1], size[0])).save(buf, "JPEG", quality=90)
        nonhier.append((len(data), buf.tell()))
        data += buf.getvalue()
    (folder / "Data0000.dat").write_bytes(bytes(data))
    (folder / "Index.dat").write_bytes(_mirax_index(slide_id, records, nonhier))
    levels = "\n".join(
        f"HIER_0_VAL_{n}=ZoomLevel_{n}\nHIER_0_VAL_{n}_SECTION=LAYER_0_LEVEL_{n}_SECTION"
        for n in range(3))
    sections = "\n".join(
        f"[LAYER_0_LEVEL_{n}_SECTION]\nOVERLAP_X={overlap / 2**n}\nOVERLAP_Y={overlap / 2**n}\n"
        f"MICROMETER_PER_PIXEL_X={mpp * 2**n}\nMICROMETER_PER_PIXEL_Y={mpp * 2**n}\n"
        f"IMAGE_FORMAT=JPEG\nIMAGE_FILL_COLOR_BGR=16777215\nDIGITIZER_WIDTH={image}\n"
        f"DIGITIZER_HEIGHT={image}\nIMAGE_CONCAT_FACTOR={0 if n == 0 else 1}\n"
        for n in range(3))
    (folder / "Slidedat.ini").write_text(f"""[GENERAL]
SLIDE_VERSION=01.03
SLIDE_ID={slide_id}
IMAGENUMBER_X={across}
IMAGENUMBER_Y={down}
OBJECTIVE_MAGNIFICATION=20
CameraImageDivisionsPerSide=1

[HIERARCHICAL]
HIER_COUNT=1
NONHIER_COUNT=2
INDEXFILE=Index.dat
HIER_0_NAME=Slide zoom level
HIER_0_COUNT=3
{levels}
NONHIER_0_NAME=VIMSLIDE_POSITION_BUFFER
NONHIER_0_COUNT=1
NONHIER_0_VAL_0=default
NONHIER_0_VAL_0_SECTION=NONHIER_0_VAL_0_SECTION
NONHIER_1_NAME=Scan data layer
NONHIER_1_COUNT=3
NONHIER_1_VAL_0=ScanDataLayer_SlideThumbnail
NONHIER_1_VAL_0_SECTION=NONHIER_1_VAL_0_SECTION
NONHIER_1_VAL_1=ScanDataLayer_SlideBarcode
NONHIER_1_VAL_1_SECTION=NONHIER_1_VAL_1_SECTION
NONHIER_1_VAL_2=ScanDataLayer_SlidePreview
NONHIER_1_VAL_2_SECTION=NONHIER_1_VAL_2_SECTION

[NONHIER_0_VAL_0_SECTION]
VIMSLIDE_POSITION_DATA_FORMAT_VERSION=257

[NONHIER_1_VAL_0_SECTION]
THUMBNAIL_IMAGE_TYPE=JPEG

[NONHIER_1_VAL_1_SECTION]
BARCODE_IMAGE_TYPE=JPEG

[NONHIER_1_VAL_2_SECTION]
PREVIEW_IMAGE_TYPE=JPEG

[DATAFILE]
FILE_COUNT=1
FILE_0=Data0000.dat

{sections}""")
    path.write_text("MIRAX slide: open this file; its data are in the folder beside it.\n")
    return scene, uncovered


def _mirax_index(slide_id: str, levels: list[list[tuple[int, int, int]]],
                 nonhier: list[tuple[int, int]]) -> bytes:
    """Index.dat: version and slide id, then a pointer to the per-level pointers
    (hierarchical records: image index, offset, length, file) and one to the
    per-record pointers (non-hierarchical records: offset, length, file), each list
    of records in a data page that ends the chain (next pointer 0)."""
    head = b"01.02" + slide_id.encode()
    out = bytearray(head + b"\0" * 8)  # the two root pointers, filled in below
    level_table = len(out)
    out += b"\0" * 4 * len(levels)
    for n, entries in enumerate(levels):
        struct.pack_into("<i", out, level_table + 4 * n, len(out))
        out += struct.pack("<ii", 0, len(out) + 8)
        out += struct.pack("<ii", len(entries), 0)
        for index, offset, length in entries:
            out += struct.pack("<iiii", index, offset, length, 0)
    record_table = len(out)
    out += b"\0" * 4 * len(nonhier)
    for n, (offset, length) in enumerate(nonhier):
        struct.pack_into("<i", out, record_table + 4 * n, len(out))
        out += struct.pack("<ii", 0, len(out) + 8)
        out += struct.pack("<iiii", 1, 0, 0, 0)
        out += struct.pack("<iii", offset, length, 0)
    struct.pack_into("<ii", out, len(head), level_table, record_table)
    return bytes(out)
