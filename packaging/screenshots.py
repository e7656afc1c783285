"""Take the README's screenshots of the editor: run under a real X server, e.g.

    xvfb-run -a -s "-screen 0 1600x1000x24" python packaging/screenshots.py resources/screenshots

It opens the demo clip, renders it (keys turn green), starts a render of a longer stretch and
captures it midway, and opens the export dialog. Uses a private cache and settings folder.
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
    )
    dialog.show()
    wait_for(lambda: False, 0.5)
    dialog.grab().save(str(out / "export-dialog.png"))
    dialog.close()
    window.shutdown()
    window.close()
    app.quit()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "resources/screenshots"))
