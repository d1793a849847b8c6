"""Hostile and broken input: each file or request gets one clear refusal in bounded time and
memory, nothing is written and nothing the user made is replaced (issue 27)."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path
from fixtures import write_dicom_series
from PIL import Image

from mimo.cli import main
from mimo.errors import ImageLoadError, OutputError, PromptError
from mimo.image import load_image
from mimo.output import write_segmentation
from mimo.prompts import ScribblePrompt, prompt_mask, validate_prompt
from mimo.segments import Segment


def run(capsys, *args):
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _png(width: int, height: int, chunks=()) -> bytes:
    """A valid 8-bit grey PNG of zeros, written by hand: a few kilobytes that declare any size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    body = b"".join(chunk(kind, data) for kind, data in chunks)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + body + \
        chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _nifti(dims: tuple[int, int, int], payload: bytes = b"") -> bytes:
    """A NIfTI-1 int16 file: header, 4 bytes of extension flag, then ``payload``."""
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, *dims, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 4, 16)
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 352.0)
    header[344:348] = b"n+1\0"
    return bytes(header) + b"\0" * 4 + payload


# ----- 2D images ----------------------------------------------------------------------------


def test_a_one_bit_png_reads_as_black_and_white(tmp_path, capsys):
    bits = np.zeros((64, 80), dtype=bool)
    bits[20:40, 30:60] = True
    path = tmp_path / "bits.png"
    Image.fromarray(bits).save(path)
    assert Image.open(path).mode == "1"
    volume = load_image(path)
    assert volume.array.dtype == np.uint8 and sorted(np.unique(volume.array)) == [0, 255]
    assert (volume.array[0] == 255).sum() == bits.sum()
    code, _, stderr = run(capsys, "ask", path, "Segment this.", "--box", 30, 20, 59, 39, "--backend", "litemedsam",
                          "--out", tmp_path / "out.png")
    assert code == 0, stderr
    assert (np.asarray(Image.open(tmp_path / "out.png")) > 0).sum() > 0.5 * bits.sum()


@pytest.mark.parametrize("size, message", [((12000, 12000), "declares 12000 x 12000 pixels (144 MP); at most 36 MP"),
                                           ((30000, 30000), "declares over 179 MP; at most 36 MP")])
def test_decompression_bombs_are_refused_before_decoding(tmp_path, capsys, size, message):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png(*size))
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ImageLoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_image(path)
    code, stdout, stderr = run(capsys, "ask", path, "Segment the polyp.", "--out", tmp_path / "out.png")
    assert code == 2 and stdout == "" and len(stderr.strip().splitlines()) == 1 and "MP" in stderr
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("kind, payload", [(b"zTXt", b"comment\0\0"), (b"iCCP", b"profile\0\0")])
def test_chunk_bombs_are_refused(tmp_path, kind, payload):
    path = tmp_path / "chunk.png"
    path.write_bytes(_png(16, 16, [(kind, payload + zlib.compress(b"a" * (64 * 1024 * 1024), 9))]))
    with pytest.raises(ImageLoadError, match="not a readable image file .*too large"):
        load_image(path)


# ----- volumes --------------------------------------------------------------------------------


@pytest.mark.parametrize("dims, shown", [((2048, 2048, 2048), "2048 x 2048 x 2048 voxels (16.0 GiB)"),
                                         ((1024, 1024, 1024), "1024 x 1024 x 1024 voxels (2.0 GiB)")])
def test_a_small_file_declaring_a_huge_volume_is_refused_from_its_header(tmp_path, dims, shown):
    path = tmp_path / "huge.nii"
    path.write_bytes(_nifti(dims))
    with pytest.raises(ImageLoadError, match=shown.replace("(", r"\(").replace(")", r"\)")):
        load_image(path)


def test_a_synthetic_volume_cut_short_is_refused_plain_and_gzipped(tmp_path):
    voxels = (np.arange(40 * 64 * 64) % 997).astype(np.int16).reshape(40, 64, 64)
    whole = _nifti((64, 64, 40), voxels.tobytes())
    (tmp_path / "whole.nii").write_bytes(whole)
    np.testing.assert_array_equal(load_image(tmp_path / "whole.nii").array, voxels)
    (tmp_path / "half.nii").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageLoadError, match="truncated: its header declares 328032 bytes .* the file holds 164016"):
        load_image(tmp_path / "half.nii")
    packed = gzip.compress(whole)
    (tmp_path / "whole.nii.gz").write_bytes(packed)
    np.testing.assert_array_equal(load_image(tmp_path / "whole.nii.gz").array, voxels)
    (tmp_path / "half.nii.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ImageLoadError, match="truncated: .* its compressed data ends early"):
        load_image(tmp_path / "half.nii.gz")


def test_a_real_ct_cut_in_half_is_refused(tmp_path, capsys):
    source = shared_path("volumes", "ivadomed_spleen_spine", "sub-spleen2_ct.nii.gz")
    plain = gzip.decompress(source.read_bytes())
    (tmp_path / "ct.nii").write_bytes(plain)
    assert load_image(tmp_path / "ct.nii").shape == load_image(source).shape
    (tmp_path / "cut.nii").write_bytes(plain[: len(plain) // 2])
    code, stdout, stderr = run(capsys, "ask", tmp_path / "cut.nii", "Segment the spleen.", "--out", tmp_path / "out.seg.nrrd")
    assert code == 2 and "truncated" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.seg.nrrd").exists()


# ----- DICOM folders with several series ----------------------------------------------------


def test_a_folder_of_several_dicom_series_asks_which_one(tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    for name, slices in (("a", 3), ("b", 2)):
        for path in write_dicom_series(tmp_path / name, slices=slices):
            shutil.move(path, folder / f"{name}-{path.name}")
    with pytest.raises(ImageLoadError) as error:
        load_image(folder)
    message = str(error.value)
    assert "holds 2 DICOM series; choose one with --series" in message
    assert "(3 files, CT" in message and "(2 files, CT" in message
    listed = [line.split()[1] for line in message.splitlines()[1:]]
    shapes = {load_image(folder, series=uid).shape[0] for uid in listed}
    assert shapes == {2, 3}
    assert load_image(folder, series="0").shape == load_image(folder, series=listed[0]).shape
    with pytest.raises(ImageLoadError, match="no DICOM series '7' here"):
        load_image(folder, series="7")


# ----- prompts --------------------------------------------------------------------------------


def test_a_brush_wider_than_the_image_is_refused():
    with pytest.raises(PromptError, match=r"width 10000 is wider than the image \(256 x 256 pixels\): at most its diagonal, 363"):
        validate_prompt(ScribblePrompt(((10.0, 10.0), (200.0, 200.0)), 10000.0), (256, 256))


def test_the_brush_covers_every_pixel_within_half_its_width_of_the_line():
    rng = np.random.default_rng(3)
    vertices = tuple(map(tuple, rng.uniform(0, 95, (40, 2))))
    scribble = validate_prompt(ScribblePrompt(vertices, 9.0), (96, 96))
    mask = prompt_mask(scribble, (96, 96))
    # Brute force: the distance of each pixel centre to the rounded polyline's segments.
    rows, columns = np.mgrid[0:96, 0:96]
    centres = np.stack([columns.ravel(), rows.ravel()], 1).astype(float)
    pixels = np.rint(np.asarray(vertices))
    distance = np.full(len(centres), np.inf)
    for a, b in zip(pixels[:-1], pixels[1:]):
        t = np.clip(((centres - a) @ (b - a)) / max(float((b - a) @ (b - a)), 1e-9), 0, 1)
        distance = np.minimum(distance, np.linalg.norm(centres - (a + t[:, None] * (b - a)), axis=1))
    inside = (distance <= 4.5).reshape(96, 96)
    # The line is rasterised to pixels, so the border may differ by under a pixel.
    assert (mask & ~inside).sum() <= 0.05 * inside.sum() and (inside & ~mask).sum() <= 0.05 * inside.sum()
    assert mask[inside & (distance.reshape(96, 96) <= 3.5)].all()


def test_a_long_wide_scribble_on_a_large_image_is_rasterised():
    rng = np.random.default_rng(0)
    vertices = tuple(map(tuple, rng.uniform(0, 1023, (1024, 2))))
    mask = prompt_mask(validate_prompt(ScribblePrompt(vertices, 1400.0), (1024, 1024)), (1024, 1024))
    assert mask.all()


# ----- paths ----------------------------------------------------------------------------------


def _one_segment(shape=(1, 8, 8)):
    from mimo.image import LPS_TO_RAS, ImageVolume
    from mimo.terminology import Terminology

    volume = ImageVolume(np.zeros(shape, dtype=np.uint8), LPS_TO_RAS.copy(), "OT")
    mask = np.zeros(shape, dtype=bool)
    mask[0, 2:5, 2:5] = True
    return volume, [Segment(1, "polyp", Terminology.default().lookup("polyp"), mask)]


def test_paths_too_long_are_one_line_errors_before_any_model_loads(tmp_path, capsys):
    image = tmp_path / "bits.png"
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(image)
    code, _, stderr = run(capsys, "ask", "/" + "a" * 5000 + ".png", "Segment the polyp.", "--out", tmp_path / "o.png")
    assert code == 2 and "cannot be opened (File name too long)" in stderr and len(stderr.strip().splitlines()) == 1
    code, _, stderr = run(capsys, "ask", image, "Segment the polyp.", "--model", "/" + "m" * 5000, "--out", tmp_path / "o.png")
    assert code == 2 and "--model" in stderr and "File name too long" in stderr
    long_name = tmp_path / ("o" * 300 + ".png")
    code, _, stderr = run(capsys, "ask", image, "Segment the polyp.", "--out", long_name)
    assert code == 2 and "the file name is 304 bytes long; at most 255" in stderr


def test_names_up_to_the_limit_are_written_and_sidecars_are_checked_first(tmp_path):
    volume, segments = _one_segment()
    longest = tmp_path / ("s" * (255 - len(".seg.nrrd")) + ".seg.nrrd")
    assert write_segmentation(longest, volume, segments) == longest and longest.is_file()
    # A NIfTI's sidecars (<stem>.label.json, <stem>.labels.csv) are 4 bytes longer than the label map's own name.
    nifti = tmp_path / ("n" * (255 - len(".nii.gz")) + ".nii.gz")
    with pytest.raises(OutputError, match=r"\.label\.json: the file name is 259 bytes long; at most 255"):
        write_segmentation(nifti, volume, segments)
    assert sorted(p.name for p in tmp_path.iterdir()) == [longest.name]


@pytest.mark.parametrize("link", ["dangling", "looping"])
def test_a_link_at_the_output_is_never_replaced_without_overwrite(tmp_path, capsys, link):
    volume, segments = _one_segment()
    out = tmp_path / "result.seg.nrrd"
    os.symlink(tmp_path / "nowhere.seg.nrrd" if link == "dangling" else out, out)
    with pytest.raises(OutputError, match="already exists"):
        write_segmentation(out, volume, segments)
    image = tmp_path / "bits.png"
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(image)
    code, _, stderr = run(capsys, "ask", image, "Segment the polyp.", "--box", 4, 4, 20, 20, "--out", out)
    assert code == 2 and "already exists; choose another name or pass --overwrite" in stderr
    assert out.is_symlink() and Path(os.readlink(out)) == (tmp_path / "nowhere.seg.nrrd" if link == "dangling" else out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bits.png", "result.seg.nrrd"])
