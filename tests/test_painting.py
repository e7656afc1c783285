"""Keys painted by hand in bulk: key frames written for painting, paintings found by frame
number, taken as keys in one edit, and `propagate --keys-from`."""

from __future__ import annotations

import os
import time

import cv2
import numpy as np
import pytest
from helpers import frame_number, make_clip, numbered_frame

from zvstudio.cli import main
from zvstudio.engine.painting import paintings_in, write_frames_for_painting
from zvstudio.errors import ZvsError
from zvstudio.media import VideoReader
from zvstudio.project import KeyFrame, Project
from zvstudio.project.edits import keys_painted


def test_key_frames_are_written_by_number_and_paintings_are_never_replaced(tmp_path):
    folder = tmp_path / "paint"
    folder.mkdir()
    painted = folder / "frame_000010.png"
    painted.write_bytes(b"the artist's work")
    images = [(n, numbered_frame(n)) for n in (0, 10, 20)]
    result = write_frames_for_painting(folder, images)
    assert result.written == [0, 20] and result.kept == [10]
    assert painted.read_bytes() == b"the artist's work"
    written = cv2.cvtColor(cv2.imread(str(folder / "frame_000020.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(written, numbered_frame(20))
    assert sorted(p.name for p in folder.iterdir()) == [
        "frame_000000.png",
        "frame_000010.png",
        "frame_000020.png",
    ]  # no partial files left


def test_an_unwritable_folder_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ZvsError, match="cannot create"):
        write_frames_for_painting(tmp_path / "file" / "sub", [(0, numbered_frame(0))])


def test_paintings_are_found_by_the_number_that_ends_their_name(tmp_path):
    for name in ("frame_000010.png", "key_20.jpg", "frame_000999.png", "cover.png"):
        cv2.imwrite(str(tmp_path / name), numbered_frame(1))
    (tmp_path / "notes_3.txt").write_text("not an image")
    older = time.time() - 60
    os.utime(tmp_path / "frame_000010.png", (older, older))
    cv2.imwrite(str(tmp_path / "frame_000010.jpg"), numbered_frame(2))  # saved again, as JPEG
    found = paintings_in(tmp_path, frame_count=100)
    assert found.by_frame == {
        10: (tmp_path / "frame_000010.jpg").resolve(),
        20: (tmp_path / "key_20.jpg").resolve(),
    }
    assert [p.name for p in found.outside] == ["frame_000999.png"]
    with pytest.raises(ZvsError, match="folder not found"):
        paintings_in(tmp_path / "gone", 10)


def test_paintings_become_keys_in_one_undoable_edit():
    project = Project(keyframes=[KeyFrame(0, seed=4), KeyFrame(10), KeyFrame(20)])
    before = list(project.keyframes)
    edit = keys_painted(project, {10: "/p/frame_000010.png", 15: "/p/frame_000015.png"})
    edit.apply(project)
    assert [(k.frame, k.painted_image) for k in project.keyframes] == [
        (0, None),
        (10, "/p/frame_000010.png"),
        (15, "/p/frame_000015.png"),
        (20, None),
    ]
    assert project.key_at(0).seed == 4
    edit.revert(project)
    assert project.keyframes == before


def test_propagate_takes_its_keys_from_a_folder(tmp_path, capsys):
    clip, _, _ = make_clip(tmp_path / "c.mp4", count=16)
    paint = tmp_path / "paint"
    with VideoReader(clip) as reader:
        originals = [(n, reader.frame(n)) for n in (0, 15)]
    write_frames_for_painting(paint, [(n, 255 - image) for n, image in originals])  # "painted"
    cv2.imwrite(str(paint / "frame_000040.png"), numbered_frame(0))  # past the clip's end
    out = tmp_path / "out"
    assert main(["propagate", str(clip), "--keys-from", str(paint), "-q", "-o", str(out)]) == 0
    warned = capsys.readouterr().err
    assert "ignored 1 images past the clip's last frame: frame_000040.png" in warned
    with VideoReader(out) as result:
        first, middle = result.frame(0), result.frame(8)
    assert np.abs(first.astype(int) - (255 - originals[0][1])).mean() < 1
    assert frame_number(255 - middle) == 8  # every frame follows the painted look

    override = tmp_path / "own.png"
    cv2.imwrite(str(override), np.zeros((112, 192, 3), np.uint8))
    args = ["propagate", str(clip), "--keys-from", str(paint), "--key", f"0={override}"]
    assert main([*args, "-q", "-o", str(tmp_path / "out2")]) == 0
    with VideoReader(tmp_path / "out2") as result:
        assert result.frame(0).max() <= 1  # --key wins over the folder's painting of frame 0

    (tmp_path / "empty").mkdir()
    assert main(["propagate", str(clip), "--keys-from", str(tmp_path / "empty"), "-o", str(out)])
    assert "frame_000120.png" in capsys.readouterr().err
    assert main(["propagate", str(clip), "-o", str(out)]) == 1
    assert "--keys-from FOLDER" in capsys.readouterr().err


def test_key_frames_left_as_exported_are_not_taken_as_paintings(tmp_path):
    originals = {n: numbered_frame(n) for n in (0, 10, 20)}
    write_frames_for_painting(tmp_path, originals.items())
    cv2.imwrite(str(tmp_path / "frame_000010.png"), 255 - originals[10])  # the one painted

    def unpainted(frame, image):
        return np.array_equal(image, originals[frame])

    found = paintings_in(tmp_path, 30, unpainted)
    assert list(found.by_frame) == [10] and found.untouched == [0, 20]


def test_extract_then_propagate_uses_only_the_frames_painted(tmp_path, capsys):
    clip, _, _ = make_clip(tmp_path / "c.mp4", count=24)
    paint = tmp_path / "paint"
    assert main(["extract", str(clip), "--every", "8", "-o", str(paint)]) == 0
    assert "wrote 3 frames" in capsys.readouterr().out
    assert main(["extract", str(clip), "--keys", "8,23", "-o", str(paint)]) == 0
    assert "kept 1 files already there (frames 8)" in capsys.readouterr().out
    names = sorted(p.name for p in paint.iterdir())
    assert names == [f"frame_{n:06d}.png" for n in (0, 8, 16, 23)]
    with VideoReader(clip) as reader:
        extracted = cv2.cvtColor(cv2.imread(str(paint / "frame_000016.png")), cv2.COLOR_BGR2RGB)
        assert np.array_equal(extracted, reader.frame(16))
        for frame in (8, 16):  # the artist paints two of the four
            cv2.imwrite(str(paint / f"frame_{frame:06d}.png"), 255 - reader.frame(frame)[..., ::-1])

    out = tmp_path / "out"
    assert main(["propagate", str(clip), "--keys-from", str(paint), "-q", "-o", str(out)]) == 0
    assert "left out 2 images still as extracted: frames 0, 23" in capsys.readouterr().err
    with VideoReader(out) as result, VideoReader(clip) as source:
        for n in (0, 12, 23):  # 0 and 23 too follow the painted look, not their own frames
            made, original = result.frame(n).astype(int), source.frame(n).astype(int)
            assert np.abs(made - (255 - original)).mean() < np.abs(made - original).mean() / 4

    motion = tmp_path / "motion"
    args = ["extract", str(clip), "--every", "8", "--placement", "motion", "-o", str(motion)]
    assert main(args) == 0
    assert len(list(motion.iterdir())) == 3  # as many frames as every 8, placed by motion
    assert main(["extract", str(clip), "--keys", "3,40", "-o", str(motion)]) == 1
    assert "frames [40] are outside" in capsys.readouterr().err
