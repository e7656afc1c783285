"""Take the README's screenshots of the editor: run under a real X server, e.g.

    xvfb-run -a -s "-screen 0 1600x1000x24" python packaging/screenshots.py resources/screenshots

It shows the start page, opens the demo clip, renders it (keys turn green), starts a render
of a longer stretch and captures it midway, and opens the export dialog, then the New from
text and Animate image dialogs; last, keys placed by motion with the risk band on a
talking-head clip of ../shared/clips (skipped without it). Uses a private cache and settings folder.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def main(out: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="zv-shots-"))
    os.environ["ZVSTUDIO_CACHE_DIR"] = str(work / "cache")
    os.environ["ZVSTUDIO_CONFIG_DIR"] = str(work / "config")
    from zvstudio.appsettings import AppSettings
    from zvstudio.demo import write_demo_clip
    from zvstudio.gui.app import create_app
    from zvstudio.gui.export_dialog import ExportDialog
    from zvstudio.gui.mainwindow import MainWindow, wait_for

    out.mkdir(parents=True, exist_ok=True)
    app = create_app()
    clip = work / "demo.mp4"
    write_demo_clip(clip)
    window = MainWindow(AppSettings())
    window.show()
    wait_for(lambda: False, 0.5)
    window.grab().save(str(out / "start-page.png"))
    window.open_path(clip)
    wait_for(lambda: window.proxy is not None, 60)
    window.start_render()
    wait_for(lambda: window.render_job is None, 300)
    wait_for(lambda: window.status is not None and window.status.complete, 30)
    window.transport.seek(27)
    window.viewer.set_split_position(0.5)
    wait_for(lambda: False, 0.5)
    window.grab().save(str(out / "editor.png"))

    # Mid-render: a changed style makes every key stale; capture while it renders again.
    from dataclasses import replace

    from zvstudio.project.edits import SetSettings

    settings = window.document.project.settings
    window.document.push(SetSettings(replace(settings, style="pencil"), "style"))
    job = window.start_render()
    wait_for(lambda: window.queue_panel.progress_value(job) >= 35, 300)
    window.grab().save(str(out / "rendering.png"))
    wait_for(lambda: window.render_job is None, 300)

    doc = window.document
    dialog = ExportDialog(
        window,
        doc.frame_count,
        doc.fps,
        doc.project.settings.output,
        str(work / "demo_zvstudio.mp4"),
        size=doc.render_size,
    )
    dialog.show()
    wait_for(lambda: False, 0.5)
    dialog.grab().save(str(out / "export-dialog.png"))
    dialog.close()
    _generate_dialogs(window, work, out)
    _motion_keys(window, out)
    window.shutdown()
    window.close()
    app.quit()


def _generate_dialogs(window, work: Path, out: Path) -> None:
    """File > New from text... and Animate image..., filled in, with a small model library
    (empty stand-in files: the dialogs only list and check paths)."""
    from zvstudio.diffusion.identify import ModelInfo
    from zvstudio.gui.generate_dialogs import AnimateDialog, TextToVideoDialog
    from zvstudio.gui.mainwindow import wait_for

    def model(name: str, kind: str, base: str) -> ModelInfo:
        path = work / "models" / f"{name}.safetensors"
        path.parent.mkdir(exist_ok=True)
        path.touch()
        return ModelInfo(path, name, kind, base, "safetensors", 2_132_000_000)

    library = [
        model("dreamshaper_8", "checkpoint", "sd1"),
        model("mm_sd_v15_v2", "motion_adapter", "sd1"),
    ]
    text = TextToVideoDialog(window, library, {}, work)
    text.prompt_edit.setPlainText("a red fox trotting through fresh snow, golden hour")
    animate = AnimateDialog(window, library, {}, work)
    animate.prompt_edit.setPlainText("waves rolling, clouds drifting")
    animate.motion_picker.set_path(library[1].path)
    for dialog, name in ((text, "new-from-text.png"), (animate, "animate-image.png")):
        dialog.model_picker.set_path(library[0].path)
        dialog.show()
        wait_for(lambda: False, 0.5)
        dialog.grab().save(str(out / name))
        dialog.close()


def _motion_keys(window, out: Path) -> None:
    """Keys placed by motion, the risk band on, the playhead on the frame most at risk."""
    from zvstudio.bench import shared_clips_dir
    from zvstudio.gui.mainwindow import wait_for

    folder = shared_clips_dir()
    clip = folder / "pexels-antoni-shkraba-8048492-540x960-25fps.mp4" if folder else None
    if clip is None or not clip.is_file():
        print("no ../shared/clips: motion-keys.png not taken")
        return
    from PySide6.QtWidgets import QMessageBox

    window.ask = lambda *args: QMessageBox.Discard  # the demo project's edits are not kept
    window.open_path(clip)
    wait_for(lambda: window.proxy is not None, 120)
    window.risk_action.setChecked(True)
    wait_for(lambda: window.timeline.risk_levels() is not None, 120)
    window.motion.place_keys(10)
    wait_for(lambda: window.motion.job is None, 120)
    window.go_to_riskiest_frame()
    wait_for(lambda: False, 0.5)
    window.grab().save(str(out / "motion-keys.png"))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "resources/screenshots"))
