"""The `zvstudio` command line end to end: real subprocesses where the exit path matters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import frame_number, make_clip

from zvstudio import __version__
from zvstudio.cli import main
from zvstudio.media import VideoReader, probe
from zvstudio.project import ClipRef, FrameRange, Project, save_project


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "zvstudio", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_clean_failure(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("zvstudio: error:")
    assert message in result.stderr


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"zvstudio {__version__}"


def test_no_command_opens_the_editor_and_a_file_argument_is_opened_in_it(tmp_path, monkeypatch):
    from zvstudio.gui import app

    opened = []
    monkeypatch.setattr(app, "run_gui", lambda path=None: opened.append(path) or 0)
    clip, _, _ = make_clip(tmp_path / "c.mp4", count=4)
    assert main([]) == 0
    assert main([str(clip)]) == 0
    assert main(["gui", str(clip)]) == 0
    assert opened == [None, str(clip), str(clip)]


def test_without_a_display_the_editor_says_what_to_do(monkeypatch, capsys):
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    assert main([]) == 1
    error = capsys.readouterr().err
    assert "no display" in error and "zvstudio render --demo" in error


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "render" in out and "gui" in out


def test_probe_human_and_json(tmp_path, capsys):
    path, _, _ = make_clip(tmp_path / "c.mp4", count=20, rotation=90, audio=True)
    assert main(["probe", str(path)]) == 0
    text = capsys.readouterr().out
    assert "20 at 25.000 fps" in text and "rotated 90" in text and "aac" in text
    assert main(["probe", "--json", str(path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["frame_count"] == 20
    assert data["rotation"] == 90
    assert (data["display_width"], data["display_height"]) == (192, 112)
    assert data["is_vfr"] is False
    assert data["audio"][0]["codec"] == "aac"


def test_demo_render_end_to_end(tmp_path):
    result = run_cli("render", "--demo", "-o", "demo.mp4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "72 frames" in result.stdout and "12 keys, the rest propagated" in result.stdout
    info = probe(tmp_path / "demo.mp4")
    assert info.frame_count == 72
    assert info.duration == pytest.approx(3.0)
    assert float(info.fps) == 24
    assert info.has_audio and info.audio[0].duration == pytest.approx(3.0, abs=0.03)
    assert (info.width, info.height) == (640, 360)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.mp4"]
    # It plays: every video frame and the whole tone decode without error.
    import av

    with av.open(str(tmp_path / "demo.mp4")) as container:
        video = sum(1 for _ in container.decode(video=0))
    with av.open(str(tmp_path / "demo.mp4")) as container:
        samples = sum(frame.samples for frame in container.decode(audio=0))
    assert video == 72
    assert samples / 48000 == pytest.approx(3.0, abs=1024 / 48000)


def test_render_a_video_range_to_prores(tmp_path, capsys):
    path, times, _ = make_clip(tmp_path / "c.mp4", count=30, vfr=True, audio=True)
    out = tmp_path / "out.mov"
    code = main(
        [
            "render",
            str(path),
            "--style",
            "posterize",
            "--from",
            "5",
            "--to",
            "24",
            "--format",
            "prores",
            "-q",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    assert "wrote" in capsys.readouterr().out
    info = probe(out)
    assert info.codec == "prores" and info.frame_count == 20 and info.has_audio
    assert [info.index.seconds(n) for n in range(20)] == pytest.approx(times[5:25] - times[5])


def test_style_parameters_change_the_result(tmp_path):
    path, _, _ = make_clip(tmp_path / "c.mp4", count=2)
    for levels in (2, 6):
        assert (
            main(
                [
                    "render",
                    str(path),
                    "--style",
                    "posterize",
                    "--param",
                    f"levels={levels}",
                    "--param",
                    "smooth=false",
                    "-q",
                    "-o",
                    str(tmp_path / f"p{levels}"),
                ]
            )
            == 0
        )
    import cv2

    two = cv2.imread(str(tmp_path / "p2" / "frame_000001.png"))
    six = cv2.imread(str(tmp_path / "p6" / "frame_000001.png"))
    assert len(np.unique(two)) == 2 and len(np.unique(six)) == 6
    assert_clean_failure(
        run_cli(
            "render", path, "--style", "posterize", "--param", "levels", "-o", tmp_path / "x.mp4"
        ),
        "NAME=VALUE",
    )
    assert_clean_failure(
        run_cli(
            "render", path, "--style", "posterize", "--param", "hue=3", "-o", tmp_path / "x.mp4"
        ),
        "hue",
    )


def test_render_to_png_folder(tmp_path):
    path, _, _ = make_clip(tmp_path / "c.mp4", count=6)
    assert (
        main(["render", str(path), "--style", "pencil", "-q", "-o", str(tmp_path / "frames")]) == 0
    )
    assert len(list((tmp_path / "frames").glob("frame_*.png"))) == 6


def test_render_a_project(tmp_path):
    path, _, _ = make_clip(tmp_path / "c.mp4", count=20)
    project = Project(clip=ClipRef.from_file(path), frame_range=FrameRange(3, 8))
    save_project(project, tmp_path / "p.zvs")
    assert main(["render", str(tmp_path / "p.zvs"), "-q", "-o", str(tmp_path / "o.mp4")]) == 0
    with VideoReader(tmp_path / "o.mp4") as reader:
        assert len(reader) == 6
        # posterize keeps the block code readable: frame 3 of the clip is the first output.
    assert (
        main(
            [
                "render",
                str(tmp_path / "p.zvs"),
                "--style",
                "posterize",
                "-q",
                "-o",
                str(tmp_path / "o2.mp4"),
            ]
        )
        == 0
    )
    with VideoReader(tmp_path / "o2.mp4") as reader:
        assert frame_number(reader.frame(0)) == 3


def test_render_a_project_whose_clip_moved_says_how_to_find_it(tmp_path, capsys):
    path, _, _ = make_clip(tmp_path / "c.mp4", count=4)
    save_project(Project(clip=ClipRef.from_file(path)), tmp_path / "p.zvs")
    path.rename(tmp_path / "moved.mp4")
    assert main(["render", str(tmp_path / "p.zvs"), "-q", "-o", str(tmp_path / "o.mp4")]) != 0
    err = capsys.readouterr().err
    assert f"the project's clip {path} is missing" in err and "open the project" in err
    assert not (tmp_path / "o.mp4").exists()


def test_bench_decode_prints_json(tmp_path, capsys):
    path, _, _ = make_clip(tmp_path / "c.mp4", count=30)
    assert main(["bench", "decode", str(path), "--samples", "4", "--no-1080p"]) == 0
    report = json.loads(capsys.readouterr().out)
    (clip,) = report["clips"]
    assert clip["frames"] == 30 and clip["size"] == [192, 112]
    assert clip["sequential_decode_fps"] > 0
    for key in ("random_exact_full_res", "random_preview_from_proxy"):
        assert 0 < clip[key]["median_ms"] <= clip[key]["max_ms"]


def test_bench_export_prints_json(capsys):
    assert main(["bench", "export", "--size", "64x48", "--frames", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    measured = {(row["format"], row["alpha"]) for row in report["formats"]}
    assert ("exr", False) in measured and ("prores", True) in measured
    assert ("h264", True) not in measured  # H.264 has no alpha
    assert report["size"] == [64, 48] and report["frames"] == 3
    assert all(row["ms_per_frame"] > 0 and row["kib_per_frame"] > 0 for row in report["formats"])
    assert report["matte_composite_ms_per_frame"] >= 0
    assert main(["bench", "export", "--size", "wide"]) == 1
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


@pytest.mark.parametrize("synthesis, preset", [("flow", "fine"), ("patch", "medium")])
def test_bench_propagate_prints_json(tmp_path, capsys, synthesis, preset):
    path, _, _ = make_clip(tmp_path / "c.mp4", count=12)
    arguments = ["bench", "propagate", str(path), "--size", "64", "--frames", "11", "--no-1080p"]
    arguments += ["--flow-preset", preset]
    assert main([*arguments, "--synthesis", synthesis]) == 0
    report = json.loads(capsys.readouterr().out)
    (clip,) = report["clips"]
    assert report["synthesis"] == synthesis and clip["keys"] == [0, 10]
    assert report["flow"] == f"dis/{preset}"
    assert clip["seconds_per_frame"] > 0 and clip["psnr"] > 20
    assert clip["seconds_per_frame_flows_cached"] > 0


def test_bench_patch_distance_prints_json(capsys):
    arguments = ["bench", "patch-distance", "--device", "cpu", "--size", "24", "--channels", "3"]
    assert main(arguments) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["candidates"] == 24 * 24 and report["reference_s"] > 0
    assert "fused_s" not in report  # no fused kernel on a CPU outside Triton's interpreter


# -- bad input: one clear message, non-zero exit, nothing lost ---------------------------------
def test_missing_input(tmp_path):
    assert_clean_failure(
        run_cli("render", tmp_path / "nope.mp4", "-o", tmp_path / "o.mp4"), "file not found"
    )
    assert_clean_failure(run_cli("probe", tmp_path / "nope.mp4"), "file not found")


def test_non_video_and_truncated_input(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("hello\n" * 500)
    assert_clean_failure(run_cli("probe", text), "not a video file")
    clip, _, _ = make_clip(tmp_path / "c.mp4", count=30)
    clip.write_bytes(clip.read_bytes()[:3000])
    assert_clean_failure(run_cli("render", clip, "-o", tmp_path / "o.mp4"), "cannot read")
    assert not (tmp_path / "o.mp4").exists()


def test_unwritable_output_keeps_existing_files(tmp_path):
    clip, _, _ = make_clip(tmp_path / "c.mp4", count=5)
    assert_clean_failure(
        run_cli("render", clip, "-o", tmp_path / "no" / "such" / "o.mp4"), "does not exist"
    )
    if sys.platform.startswith("linux") and Path("/proc/self").exists():
        # /proc refuses new files even for root, so this is a real unwritable folder.
        assert_clean_failure(
            run_cli("render", clip, "-o", "/proc/zvstudio-test.mp4"), "cannot write"
        )
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "a.txt").write_text("keep me")
    assert_clean_failure(run_cli("render", clip, "-o", folder), "not empty")
    assert (folder / "a.txt").read_text() == "keep me"


def test_bad_options_are_clear(tmp_path):
    clip, _, _ = make_clip(tmp_path / "c.mp4", count=5)
    assert_clean_failure(
        run_cli("render", clip, "--style", "vangogh", "-o", tmp_path / "o.mp4"), "vangogh"
    )
    assert_clean_failure(
        run_cli("render", clip, "--from", "3", "--to", "99", "-o", tmp_path / "o.mp4"),
        "outside the clip",
    )
    assert_clean_failure(
        run_cli("render", clip, "--format", "prores", "-o", tmp_path / "o.mp4"),
        "ProRes needs a .mov",
    )
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{broken", "broken JSON at line 1"),
        ('{"format": "zvstudio-project", "schema_version": 99}', "newer zvstudio"),
    ],
)
def test_broken_project_files(tmp_path, content, message):
    project = tmp_path / "p.zvs"
    project.write_text(content)
    out = tmp_path / "o.mp4"
    out.write_bytes(b"old render")
    assert_clean_failure(run_cli("render", project, "-o", out), message)
    assert out.read_bytes() == b"old render"
    assert project.read_text() == content


def test_ctrl_c_cancels_cleanly_and_keeps_the_old_output(tmp_path):
    clip, _, _ = make_clip(tmp_path / "long.mp4", count=400, width=1280, height=720, bframes=0)
    out = tmp_path / "o.mp4"
    out.write_bytes(b"old render")
    process = subprocess.Popen(
        [sys.executable, "-m", "zvstudio", "render", str(clip), "--style", "oil", "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    time.sleep(4.0)
    assert process.poll() is None, "the render finished before it could be cancelled"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "cancelled" in stderr and "Traceback" not in stderr
    assert out.read_bytes() == b"old render"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.mp4", "o.mp4"]


def test_render_with_keys_and_propagation(tmp_path, capsys):
    path, _, _ = make_clip(tmp_path / "c.mp4", count=12, audio=True)
    assert main(["render", str(path), "--every", "4", "-q", "-o", str(tmp_path / "a.mp4")]) == 0
    assert main(["render", str(path), "--keys", "0,7", "-q", "-o", str(tmp_path / "b.mp4")]) == 0
    for name in ("a.mp4", "b.mp4"):
        info = probe(tmp_path / name)
        assert info.frame_count == 12 and info.has_audio
    capsys.readouterr()
    assert main(["render", str(path), "--keys", "0,x", "-o", str(tmp_path / "c.mp4")]) == 1
    assert "--keys" in capsys.readouterr().err
    # --size: at most that many pixels on the short side (the clip is 192x112).
    small = ["render", str(path), "--every", "4", "--size", "56", "-o", str(tmp_path / "s.mp4")]
    assert main(small) == 0
    info = probe(tmp_path / "s.mp4")
    assert (info.width, info.height, info.frame_count, info.has_audio) == (96, 56, 12, True)
    assert "rendering at 96x56 (the clip is 192x112)" in capsys.readouterr().err
    assert main([*small[:-2], "--size", "8", "-o", str(tmp_path / "t.mp4")]) == 1
    assert "at least 16 pixels" in capsys.readouterr().err


def test_a_cancelled_render_resumes_from_finished_segments(tmp_path, capsys):
    from zvstudio.engine.render import render
    from zvstudio.engine.request import KeyRendererSpec, RenderRequest
    from zvstudio.errors import RenderCancelled
    from zvstudio.progress import CancelToken

    path, _, _ = make_clip(tmp_path / "c.mp4", count=24)
    out = tmp_path / "o.mp4"
    cancel = CancelToken()

    def stop_in_the_second_segment(event):
        if event.stage == "propagate" and event.done == 9:
            cancel.cancel()

    request = RenderRequest(
        path, out, KeyRendererSpec(style="posterize"), key_interval=8, flow_preset="medium"
    )
    with pytest.raises(RenderCancelled):
        render(request, progress=stop_in_the_second_segment, cancel=cancel)
    assert not out.exists()
    result = render(request)
    assert (result.reused_segments, result.segments) == (2, 3)
    assert probe(out).frame_count == 24
    # The command line says so.
    argv = ["render", str(path), "--style", "posterize", "--every", "8", "-q", "-o"]
    assert main([*argv, str(tmp_path / "a.mp4")]) == 0
    capsys.readouterr()
    assert main([*argv, str(tmp_path / "b.mp4")]) == 0
    assert "resumed: 3 of 3 segments came from the cache; 0 of 3 keys" in capsys.readouterr().err
    # Patch synthesis propagates differently: the flow-only segments are not reused for it.
    assert main([*argv, str(tmp_path / "p.mp4"), "--synthesis", "patch"]) == 0
    assert "0 of 3 segments came from the cache" in capsys.readouterr().err
    assert probe(tmp_path / "p.mp4").frame_count == 24
    # So does Poisson fusion after the blend.
    assert main([*argv, str(tmp_path / "f.mp4"), "--poisson"]) == 0
    assert "0 of 3 segments came from the cache" in capsys.readouterr().err
    assert probe(tmp_path / "f.mp4").frame_count == 24


def test_cache_command_shows_and_clears_the_cache(tmp_path, capsys):
    path, _, _ = make_clip(tmp_path / "c.mp4", count=12)
    argv = ["render", str(path), "--style", "posterize", "--every", "6", "-q", "-o"]
    assert main([*argv, str(tmp_path / "a.mp4")]) == 0
    capsys.readouterr()
    assert main(["cache", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bytes"]["keys"] > 0 and report["bytes"]["segments"] > 0
    assert report["bytes"]["flows"] > 0
    assert report["total_bytes"] == sum(report["bytes"].values())
    assert main(["cache", "--clear"]) == 0
    assert "cleared" in capsys.readouterr().out
    assert main(["cache", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_bytes"] == 0
