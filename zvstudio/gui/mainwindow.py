"""The editor's main window: viewer in the middle, timeline below, inspector on the right,
the render queue beside the timeline; menus and keyboard shortcuts for everything.

Nothing here blocks: renders, previews, exports and generated clips (File > New from text...,
Animate image...) are engine jobs on the bridge's worker thread, the render status is computed
on another, and the document is autosaved."""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from PySide6.QtCore import QSize, QStandardPaths, Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QFileDialog,
    QInputDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from zvstudio import __version__
from zvstudio.appsettings import (
    AppSettings,
    apply_settings,
    edited,
    load_settings,
    save_settings,
)
from zvstudio.diffusion.infotext import INFOTEXT_KEY
from zvstudio.engine.jobs import ANALYSIS, JobEvent
from zvstudio.engine.matte_keys import matte_area
from zvstudio.engine.render import frame_infotext, render_key_preview, render_key_variations
from zvstudio.engine.request import RenderRequest, project_matte, request_from_project
from zvstudio.engine.shots import clip_levels, prepare_clip
from zvstudio.engine.status import RenderStatus
from zvstudio.errors import ZvsError
from zvstudio.gui.audio import AudioPlayback, SinkFactory, qt_sink
from zvstudio.gui.bridge import EngineBridge
from zvstudio.gui.busy import busy_cursor
from zvstudio.gui.document import Document
from zvstudio.gui.file_filters import CLIP_FILTER
from zvstudio.gui.inspector import Inspector
from zvstudio.gui.motion import MotionView
from zvstudio.gui.painting import PaintedKeys
from zvstudio.gui.presets import PresetMenu
from zvstudio.gui.queue_panel import QueuePanel
from zvstudio.gui.shortcuts_dialog import ShortcutsDialog
from zvstudio.gui.start_page import StartPage
from zvstudio.gui.status import StatusWatcher
from zvstudio.gui.timeline import TimelineWidget, parse_position, source_frame
from zvstudio.gui.transport import Transport
from zvstudio.gui.transport_bar import TransportBar
from zvstudio.gui.versions import COMPARED_MODES, VersionMenu
from zvstudio.gui.viewer import ViewerWidget
from zvstudio.hashing import text_hash
from zvstudio.media import Proxy, VideoReader, clip_hash, clip_label
from zvstudio.media.hdr import sdr_note
from zvstudio.media.matte import MatteReader, composite
from zvstudio.media.sequence import (
    ASSUMED_RATE_NOTE,
    IMAGE_SUFFIXES,
    clip_sound_hash,
    frame_rate,
    named_after_clip,
    rate_text,
)
from zvstudio.media.writer import write_png, write_sequence_rate
from zvstudio.paths import cache_root
from zvstudio.project import ClipMissingError, content_hash
from zvstudio.project.autosave import Autosaver
from zvstudio.project.edits import (
    MoveKey,
    RelinkFiles,
    RemoveKey,
    SetFrameRange,
    SetKey,
    SetSettings,
    mark_range,
)
from zvstudio.project.files import describe_missing, find_moved, missing_files
from zvstudio.project.model import SEED_MAX, Project

PROJECT_FILTER = "zvstudio projects (*.zvs)"
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".gif"}
STATUS_INTERVAL_MS = 400  # how often the status is refreshed while a job runs
SEED_TRIES = 4  # Render > Try seeds: variations side by side
MATTE_TINT = 0.5  # View matte: how strongly the original's kept parts are tinted
MATTE_RED = np.array([220.0, 30.0, 40.0])
KEY_AREA_COLOUR = (255, 210, 0)  # View matte: the frame's area a key is rendered closer in
COMMON_RATES = ["23.976", "24", "25", "29.97", "30", "48", "50", "59.94", "60"]
PROXY_SIDE = 640  # the preview proxy's longer side (playback and thumbnails)
THUMBNAIL_HEIGHT = 72  # pixels, the timeline's thumbnails


class MainWindow(QMainWindow):
    """The editor. `settings` are the app settings (loaded from disk when None)."""

    def __init__(
        self,
        settings: AppSettings | None = None,
        bridge: EngineBridge | None = None,
        audio_sink: SinkFactory = qt_sink,
    ) -> None:
        super().__init__()
        self.settings = settings or load_settings()
        self.document = Document(self)
        self.bridge = bridge or EngineBridge(self)
        self._audio_sink = audio_sink
        self.status: RenderStatus | None = None
        self.render_job: int | None = None
        self.preview_job: int | None = None
        self.seeds_job: int | None = None  # Render > Try seeds
        self.preview_image = None  # the last previewed key (frame, image)
        self.preview_request: RenderRequest | None = None  # the render it was previewed for
        self._reader: VideoReader | None = None
        self.proxy: Proxy | None = None
        self._matte_spec = None  # the matte whose readers `_mattes` holds, by size
        self._mattes: dict[tuple[int, int], MatteReader | None] = {}
        self.prepare_job: int | None = None
        self.levels_job: int | None = None
        self.models_job: int | None = None
        self.generate_jobs: dict[int, str] = {}  # generation job id -> what it makes
        self.diffusion_config_dir: Path | None = None  # the models' reference configs (tests)
        self._shut_down = False
        self.autosaver = Autosaver()
        self._build_widgets()
        self._build_actions()
        self._build_menus()
        self._build_centre()
        self._rebuild_recent_menu()
        self._connect()
        self._remembered_toggle(self.risk_action, "show_risk", self.motion.show_risk)
        self._remembered_toggle(self.loop_action, "loop_playback", self.transport.set_loop)
        self._remembered_toggle(self.mute_action, "mute", self.audio.set_muted)
        self._remembered_toggle(self.scrub_action, "scrub_sound", self.audio.set_scrubbing)
        self._start_timers()
        self.setAcceptDrops(True)
        self.resize(1400, 900)
        self._refresh_title()

    # -- construction -----------------------------------------------------------------------
    def _build_widgets(self) -> None:
        self.viewer = ViewerWidget(self)
        self.timeline = TimelineWidget(self)
        self.transport = Transport(self)
        self.audio = AudioPlayback(self.transport, self._audio_sink, self)
        self.models: list = []  # the model library (ModelInfo), scanned as a job at start
        self.inspector = Inspector(self.document, models=lambda: self.models)
        self.queue_panel = QueuePanel(self.bridge)
        self.painting = PaintedKeys(self)
        self.motion = MotionView(
            self.document,
            self.bridge,
            self.timeline,
            lambda title, error: self.show_error(title, error),
            lambda text: self.statusBar().showMessage(text, 5000),
        )
        self.status_watcher = StatusWatcher(self)
        # The right column (inspector over the queue) runs full height; the timeline spans
        # the rest of the width under the viewer.
        self.setCorner(Qt.BottomRightCorner, Qt.RightDockWidgetArea)
        self.timeline_dock = self._dock("Timeline", self.timeline, Qt.BottomDockWidgetArea)
        self.inspector_dock = self._dock("Inspector", self.inspector, Qt.RightDockWidgetArea)
        self.queue_dock = self._dock("Render queue", self.queue_panel, Qt.RightDockWidgetArea)
        self.splitDockWidget(self.inspector_dock, self.queue_dock, Qt.Vertical)
        self.resizeDocks([self.inspector_dock], [430], Qt.Horizontal)
        self.resizeDocks([self.inspector_dock, self.queue_dock], [520, 380], Qt.Vertical)
        self.resizeDocks([self.timeline_dock], [200], Qt.Vertical)
        self.frame_label = QLabel()
        self.statusBar().addPermanentWidget(self.frame_label)

    def _dock(self, title: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(title.replace(" ", "_"))
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        return dock

    def _action(self, text: str, slot, shortcut: str | QKeySequence | None = None) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
            # Shortcuts work wherever the focus is, except while typing in a text field
            # (Qt gives the field the key first for plain letters).
            action.setShortcutContext(Qt.WindowShortcut)
        action.triggered.connect(slot)
        self.addAction(action)
        return action

    def _build_actions(self) -> None:
        a = self._action
        self.new_action = a("&New project", self.new_project, QKeySequence.New)
        self.new_from_text_action = a("New from &text…", self.new_from_text_dialog)
        self.animate_image_action = a("Ani&mate image…", self.animate_image_dialog)
        self.open_action = a("&Open project…", self.open_dialog, QKeySequence.Open)
        self.save_action = a("&Save", self.save, QKeySequence.Save)
        self.save_as_action = a("Save &as…", self.save_as, "Ctrl+Shift+S")
        self.import_action = a("&Import clip…", self.import_dialog, "Ctrl+I")
        self.export_action = a("&Export…", self.export_dialog, "Ctrl+E")
        self.replace_clip_action = a("Re&place clip…", self.replace_clip_dialog)
        self.replace_clip_action.setToolTip(
            "Another file as the project's clip (a new version of the edit): keys and "
            "settings are kept"
        )
        self.missing_files_action = a("Find &missing files…", self.find_missing_files)
        self.missing_files_action.setToolTip(
            "Find the project's models, LoRAs, reference images, matte and paintings in a "
            "folder, after they moved"
        )
        self.sequence_rate_action = a("Frame ra&te of sequence…", self.sequence_rate_dialog)
        self.sequence_rate_action.setToolTip(
            "How many frames a second an image sequence plays at (its images carry no timing); "
            "rendered frames are kept"
        )
        self.quit_action = a("&Quit", self.close, QKeySequence.Quit)
        self.undo_action = self.document.undo_stack.createUndoAction(self, "&Undo")
        self.undo_action.setShortcut(QKeySequence("Ctrl+Z"))
        self.redo_action = self.document.undo_stack.createRedoAction(self, "&Redo")
        self.redo_action.setShortcut(QKeySequence("Ctrl+Shift+Z"))
        self.addActions([self.undo_action, self.redo_action])
        self.settings_action = a("&Settings…", self.settings_dialog, "Ctrl+,")
        t = self.transport
        self.play_action = a("Play / stop", t.toggle, "Space")
        self.reverse_action = a("Play backwards (J)", t.shuttle_backward, "J")
        self.stop_action = a("Stop (K)", t.stop, "K")
        self.forward_action = a("Play forwards (L)", t.shuttle_forward, "L")
        self.prev_frame_action = a("Previous frame", lambda: self.step(-1), "Left")
        self.next_frame_action = a("Next frame", lambda: self.step(1), "Right")
        self.home_action = a("First frame", t.go_home, "Home")
        self.end_action = a("Last frame", t.go_end, "End")
        self.loop_action = a("Loop playback", lambda: None, "Ctrl+L")
        self.loop_action.setCheckable(True)
        self.loop_action.setToolTip("Play the in to out range (or the clip) over and over")
        self.mute_action = a("Mute sound", lambda: None, "Shift+M")
        self.mute_action.setCheckable(True)
        self.scrub_action = a("Scrub sound", lambda: None, "Shift+S")
        self.scrub_action.setCheckable(True)
        self.scrub_action.setToolTip(
            "Play a moment of sound at each frame the playhead is dragged or stepped to"
        )
        self.toggle_key_action = a("Toggle key at playhead", self.toggle_key, "M")
        self.remove_key_action = a("Remove key", self.timeline.request_remove_selected, "Delete")
        self.riskiest_action = a("Go to the frame most at risk", self.go_to_riskiest_frame, "R")
        self.go_to_action = a("&Go to frame or timecode…", self.go_to_position, "Ctrl+G")
        self.save_frame_action = a("Save &frame as image…", self.save_frame, "Ctrl+Shift+E")
        self.save_frame_action.setToolTip(
            "The frame at the playhead as a PNG: its render (the original in View original, "
            "or before it is rendered), with its Stable Diffusion parameters as A1111 writes them"
        )
        self.export_keys_action = a("E&xport keys for painting…", self.painting.export_keys)
        self.export_keys_action.setToolTip(
            "Write the key frames to a folder as frame_000120.png …, to paint over in another "
            "program (or the rendered keys, to touch up)"
        )
        self.painted_keys_action = a("&Use painted keys…", self.painting.use_painted_keys)
        self.painted_keys_action.setToolTip(
            "Take the images in a folder, named by frame number, as painted keys"
        )
        self.previous_key_action = a("Previous key", lambda: self.go_to_key(-1), "Up")
        self.next_key_action = a("Next key", lambda: self.go_to_key(1), "Down")
        self.mark_in_action = a("Mark in (render from here)", self.mark_in, "I")
        self.mark_out_action = a("Mark out (render to here)", self.mark_out, "O")
        self.clear_range_action = a("Clear in and out", self.clear_range, "Alt+X")
        self.go_to_in_action = a("Go to in", lambda: self.go_to_range_end(0), "Shift+I")
        self.go_to_out_action = a("Go to out", lambda: self.go_to_range_end(1), "Shift+O")
        self.zoom_in_action = a("Zoom in", self.timeline.zoom_in, "=")
        self.zoom_out_action = a("Zoom out", self.timeline.zoom_out, "-")
        self.zoom_fit_action = a("Fit the clip", self.timeline.zoom_fit, "\\")
        self.preview_action = a("&Preview key at playhead", self.preview_key, "Ctrl+P")
        self.seeds_action = a("&Try seeds at playhead…", self.try_seeds, "Ctrl+Shift+P")
        self.seeds_action.setToolTip(
            f"Render the key at the playhead with {SEED_TRIES} seeds side by side, and use the "
            "one you pick (Stable Diffusion keys)"
        )
        self.render_action = a("&Render", lambda: self.start_render(), "Ctrl+R")
        self.cancel_action = a("&Cancel render", self.cancel_render, "Ctrl+.")
        self.models_action = a("&Model manager…", self.models_dialog)
        self.view_actions = [
            a(f"View {mode.replace('_', ' ')}", lambda _=False, m=mode: self.viewer.set_mode(m), k)
            for mode, k in zip(
                ("original", "rendered", "split", "side_by_side", "matte"), "12345", strict=True
            )
        ]
        self.view_actions[-1].setToolTip(
            "The original with the matte over it: tinted red where the original footage stays; "
            "with keys rendered closer, a yellow box shows the area a key there is rendered in"
        )
        self.shortcuts_action = a("&Keyboard shortcuts", self.shortcuts_dialog, "F1")
        self.about_action = a("&About zvstudio", self.about)
        self.demo_action = a("Open the &demo clip", self.open_demo)
        self.demo_action.setToolTip("A short built-in clip with sound, to try each step on")
        self.risk_action = a("Show where propagation may fail", lambda: None)
        self.risk_action.setCheckable(True)
        self.risk_action.setToolTip(
            "A red band over the thumbnails rises where the footage carried from the keys is "
            "predicted to differ most from each frame: add a key there (or place them by motion)"
        )

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        file_menu.addActions(
            [self.new_action, self.new_from_text_action, self.animate_image_action]
        )
        file_menu.addSeparator()
        file_menu.addAction(self.open_action)
        self.recent_menu = file_menu.addMenu("Open &recent")
        file_menu.addActions([self.save_action, self.save_as_action])
        file_menu.addSeparator()
        file_menu.addActions(
            [self.import_action, self.replace_clip_action, self.missing_files_action]
        )
        file_menu.addActions([self.sequence_rate_action, self.export_action])
        file_menu.addAction(self.save_frame_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        edit = bar.addMenu("&Edit")
        edit.addActions([self.undo_action, self.redo_action])
        edit.addSeparator()
        edit.addAction(self.settings_action)
        timeline = bar.addMenu("&Timeline")
        timeline.addActions(
            [
                self.play_action,
                self.reverse_action,
                self.stop_action,
                self.forward_action,
                self.prev_frame_action,
                self.next_frame_action,
                self.home_action,
                self.end_action,
                self.loop_action,
                self.mute_action,
                self.scrub_action,
            ]
        )
        timeline.addSeparator()
        timeline.addActions([self.previous_key_action, self.next_key_action, self.go_to_action])
        timeline.addSeparator()
        timeline.addActions([self.toggle_key_action, self.remove_key_action, self.riskiest_action])
        timeline.addSeparator()
        timeline.addActions([self.export_keys_action, self.painted_keys_action])
        timeline.addSeparator()
        timeline.addActions(
            [
                self.mark_in_action,
                self.mark_out_action,
                self.clear_range_action,
                self.go_to_in_action,
                self.go_to_out_action,
            ]
        )
        timeline.addSeparator()
        timeline.addActions([self.zoom_in_action, self.zoom_out_action, self.zoom_fit_action])
        render = bar.addMenu("&Render")
        render.addActions([self.preview_action, self.seeds_action])
        render.addActions([self.render_action, self.cancel_action])
        render.addSeparator()
        self.presets = PresetMenu(self, render.addMenu("Pre&sets"))
        self.versions = VersionMenu(self, render.addMenu("&Versions"))
        view = bar.addMenu("&View")
        view.addActions(self.view_actions)
        view.addSeparator()
        view.addAction(self.risk_action)
        view.addSeparator()
        for dock in (self.timeline_dock, self.inspector_dock, self.queue_dock):
            view.addAction(dock.toggleViewAction())
        bar.addMenu("&Models").addAction(self.models_action)
        bar.addMenu("&Help").addActions(
            [self.demo_action, self.shortcuts_action, self.about_action]
        )

    def _build_centre(self) -> None:
        """The viewer over the playback buttons and the timecode; the start page instead
        while there is no clip."""
        actions = {
            "home": self.home_action,
            "previous": self.prev_frame_action,
            "play": self.play_action,
            "next": self.next_frame_action,
            "end": self.end_action,
            "loop": self.loop_action,
            "mute": self.mute_action,
        }
        self.transport_bar = TransportBar(self.transport, actions, self)
        self.transport_bar.set_volume(self.settings.volume)
        self.audio.set_volume(self.settings.volume)
        self.transport_bar.volume_changed.connect(self._volume)
        slider = self.transport_bar.volume_slider
        slider.sliderReleased.connect(lambda: self._remember_setting(volume=self.audio.volume()))
        self.player = QWidget(self)
        layout = QVBoxLayout(self.player)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.viewer, 1)
        layout.addWidget(self.transport_bar)
        self.start_page = StartPage(
            [
                (self.import_action, "A video file or a folder of frames, with keys placed"),
                (self.open_action, "A project saved before"),
                (self.demo_action, "A short clip with sound, to try each step on"),
                (
                    self.new_from_text_action,
                    "A clip made from a prompt, by a Stable Diffusion model",
                ),
                (self.animate_image_action, "A clip that moves, made from one picture"),
            ]
        )
        self.start_page.recent_chosen.connect(self.open_path)
        self.centre = QStackedWidget(self)
        self.centre.addWidget(self.start_page)
        self.centre.addWidget(self.player)
        self.setCentralWidget(self.centre)

    def _connect(self) -> None:
        doc = self.document
        doc.clip_changed.connect(self._clip_loaded)
        doc.changed.connect(self._document_changed)
        doc.path_changed.connect(self._refresh_title)
        doc.dirty_changed.connect(self._refresh_title)
        self.transport.frame_changed.connect(self._frame_changed)
        self.viewer.mode_changed.connect(lambda _mode: self._show_frame(self.transport.frame()))
        self.timeline.playhead_changed.connect(self.transport.seek)
        self.timeline.scrubbed.connect(self.audio.scrub)
        self.timeline.key_toggle_requested.connect(doc.toggle_key)
        self.timeline.key_remove_requested.connect(self._remove_key)
        self.timeline.key_move_requested.connect(self._move_key)
        self.timeline.key_selected.connect(self._key_selected)
        self.timeline.in_point_requested.connect(lambda frame: self._mark(first=frame))
        self.timeline.out_point_requested.connect(lambda frame: self._mark(last=frame))
        self.timeline.range_clear_requested.connect(self.clear_range)
        self.inspector.render_panel.keys_by_motion_requested.connect(self.motion.place_keys)
        self.audio.failed.connect(
            lambda why: self.statusBar().showMessage(f"No sound: {why}", 10_000)
        )
        self.motion.risk_stopped.connect(lambda: self.risk_action.setChecked(False))
        self.bridge.event.connect(self._job_event)
        self.status_watcher.ready.connect(self._status_ready)
        self.status_watcher.problem.connect(self._status_problem)

    def scan_models(self) -> int:
        """Scan the model folders as a job; the inspector's model lists fill in when done."""
        from zvstudio.diffusion.library import default_model_folders, scan

        settings = self.settings

        def work(context):
            folders = default_model_folders(settings.models_dir, settings.model_folders)
            return scan(folders, context.progress)

        self.models_job = self.bridge.submit(work, "Scan model folders", ANALYSIS)
        return self.models_job

    def _start_timers(self) -> None:
        self.autosave_timer = QTimer(self)
        self.autosave_timer.timeout.connect(self.autosave)
        self.autosave_timer.start(max(1, self.settings.autosave_minutes) * 60_000)
        self.status_timer = QTimer(self)  # while a job runs, finished keys turn "rendered"
        self.status_timer.setInterval(STATUS_INTERVAL_MS)
        self.status_timer.timeout.connect(self.refresh_status)

    # -- documents --------------------------------------------------------------------------
    def new_project(self) -> None:
        if self._may_discard():
            self.document.new()

    def open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open project", "", PROJECT_FILTER)
        if path:
            self.open_path(path)

    def open_demo(self) -> bool:
        """Import the built-in demo clip (written to the cache folder the first time)."""
        from zvstudio.demo import write_demo_clip

        clip = cache_root() / "demo" / "demo.mp4"
        if not clip.is_file():
            try:
                clip.parent.mkdir(parents=True, exist_ok=True)
                partial = clip.with_name(".demo.partial.mp4")
                with busy_cursor():
                    write_demo_clip(partial)
                partial.replace(clip)
            except (OSError, ZvsError) as exc:
                error = exc if isinstance(exc, ZvsError) else ZvsError(f"{exc.strerror or exc}")
                self.show_error(f"The demo clip could not be written to {clip.parent}", error)
                return False
        return self.open_path(clip)

    def import_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import clip", "", CLIP_FILTER)
        if path:
            self.open_path(path)

    def open_path(self, path: str | Path) -> bool:
        """Open a project, or import a clip into a new project; errors are shown, not raised."""
        path = Path(path)
        if not self._may_discard():
            return False
        try:
            if path.suffix.lower() == ".zvs":
                try:
                    self.document.open(path)
                except ClipMissingError as missing:
                    if not self._locate_clip(missing):
                        return False
                self._remember(path)
                self.find_missing_files(on_open=True)
            else:
                self.document.import_clip(path)
        except ZvsError as exc:
            self.show_error(f"Cannot open {path.name}", exc)
            return False
        return True

    def _locate_clip(self, missing: ClipMissingError) -> bool:
        """Ask for a moved project's clip and open the project with it; False if the user
        gives up. A file with other content than the project's clip needs a second yes."""
        clip, project_path = Path(missing.clip.path), Path(missing.project_path)
        question = (
            f"The clip of {project_path.name}, {clip_label(clip)}, is not in {clip.parent}: "
            "it was moved or renamed, or is on a drive that is not connected.\n\n"
            "Locate it? The project keeps its keys and settings, and what was rendered from "
            "the clip is found again in the cache."
        )
        if self.ask("Clip not found", question, QMessageBox.Open | QMessageBox.Cancel) != (
            QMessageBox.Open
        ):
            return False
        start = clip.parent if clip.parent.is_dir() else project_path.parent
        chosen = self.choose_file(f"Locate {clip_label(clip)}", start, CLIP_FILTER)
        if not chosen:
            return False
        expected = missing.clip.content_hash
        with busy_cursor():  # hashing a long clip takes seconds
            same = not expected or content_hash(chosen) == expected
        if not same:
            other = (
                f"{Path(chosen).name} is not the file the project was made with: its content "
                "differs. Use it anyway? The keys and settings are kept; everything is "
                "rendered again."
            )
            if self.ask("Another clip", other, QMessageBox.Yes | QMessageBox.No) != (
                QMessageBox.Yes
            ):
                return False
        notes = self.document.open(project_path, clip=chosen)
        message = f"Clip relinked to {chosen}" + "".join(f"; {note}" for note in notes)
        self.statusBar().showMessage(message + ". Save to keep it.", 15_000)
        return True

    def find_missing_files(self, on_open: bool = False) -> int | None:
        """Offer to search a folder for the project's missing files (models, LoRAs, reference
        images, matte, paintings) and relink those found, as one undo step; how many were
        relinked, None when none is missing or the user declines."""
        missing = missing_files(self.document.project)
        if not missing:
            if not on_open:
                self.statusBar().showMessage("No file of this project is missing", 5000)
            return None
        count = f"{len(missing)} file{'s' * (len(missing) > 1)}"
        question = (
            f"{count} this project uses {'are' if len(missing) > 1 else 'is'} missing (moved, "
            f"renamed, or on a drive that is not connected):\n\n{describe_missing(missing)}"
            "\n\nOpen a folder to search for "
            f"{'them' if len(missing) > 1 else 'it'}? Files of the same name in it and its "
            "subfolders take their place."
        )
        buttons = QMessageBox.Open | QMessageBox.Ignore
        if self.ask("Missing files", question, buttons) != QMessageBox.Open:
            return None
        project_path = self.document.path
        start = project_path.parent if project_path is not None else Path.home()
        folder = self.choose_folder("Search for the missing files in", start)
        if not folder:
            return None
        with busy_cursor():  # a large folder takes a moment
            moved = find_moved(missing, folder)
        if moved:
            self.document.push(RelinkFiles(moved))
        still = len(missing) - len(moved)
        message = f"Found {len(moved)} of {count} in {folder}"
        if still:
            message += f"; {still} still missing (File > Find missing files…)"
        self.statusBar().showMessage(message + (". Save to keep it." if moved else ""), 15_000)
        return len(moved)

    def replace_clip_dialog(self) -> bool:
        """Ask for another file to be the project's clip; True when it was replaced."""
        clip = self.document.project.clip
        if clip is None:
            self.statusBar().showMessage("Import a clip first", 4000)
            return False
        if self.render_job is not None:
            self.statusBar().showMessage("Wait for the render to end, or cancel it", 5000)
            return False
        chosen = self.choose_file("Replace clip", Path(clip.path).parent, CLIP_FILTER)
        if not chosen:
            return False
        try:
            notes = self.document.replace_clip(chosen)
        except ZvsError as exc:
            self.show_error(f"Cannot use {Path(chosen).name}", exc)
            return False
        now = clip_label(chosen)
        message = f"The clip is now {now}" + "".join(f"; {n}" for n in notes)
        self.statusBar().showMessage(message + " (Ctrl+Z undoes it)", 10_000)
        return True

    def sequence_rate_dialog(self) -> bool:
        """Ask for the frame rate of the project's image sequence and keep it beside the
        frames; True when it changed. Keys, renders and the playhead stay where they are."""
        doc = self.document
        if doc.info is None or not doc.info.is_sequence:
            self.statusBar().showMessage("Only an image sequence takes a frame rate", 5000)
            return False
        if self.render_job is not None:
            self.statusBar().showMessage("Wait for the render to end, or cancel it", 5000)
            return False
        current = rate_text(doc.info.fps)
        label = f"Frames per second of {clip_label(doc.project.clip.path)}:"
        if doc.info.is_vfr:
            label += "\n(its exported frame times vary; a rate replaces them)"
        text = self.ask_item("Frame rate of sequence", label, COMMON_RATES, current)
        if text is None or text.strip() == current:
            return False
        try:
            rate = frame_rate(text)
            write_sequence_rate(doc.project.clip.path, rate)
            frame = self.transport.frame()
            doc.reload_clip_info()
        except (ValueError, ZvsError) as exc:
            self.show_error("The frame rate was not set", exc)
            return False
        self.transport.seek(frame)
        self.statusBar().showMessage(f"The sequence plays at {rate_text(rate)} fps", 8000)
        return True

    def choose_file(self, title: str, folder: Path, filter_text: str) -> str:
        """A file the user picks, or "" (tests replace this method)."""
        path, _ = QFileDialog.getOpenFileName(self, title, str(folder), filter_text)
        return path

    def choose_save_path(self, title: str, suggested: Path, filter_text: str) -> str:
        """A path the user names to save to, or "" (tests replace this method)."""
        path, _ = QFileDialog.getSaveFileName(self, title, str(suggested), filter_text)
        return path

    def ask_text(self, title: str, label: str, text: str) -> str | None:
        """A line the user types, or None if cancelled (tests replace this method)."""
        value, ok = QInputDialog.getText(self, title, label, text=text)
        return value if ok else None

    def ask_item(self, title: str, label: str, items: list[str], current: str) -> str | None:
        """One of `items` or another line the user types, or None if cancelled (tests
        replace this method)."""
        shown = items if current in items else [current, *items]
        value, ok = QInputDialog.getItem(
            self, title, label, shown, shown.index(current), editable=True
        )
        return value if ok else None

    def choose_folder(self, title: str, folder: Path) -> str:
        """A folder the user picks, or "" (tests replace this method)."""
        return QFileDialog.getExistingDirectory(self, title, str(folder))

    def choose(self, title: str, text: str, choices: list[str]) -> str | None:
        """One of `choices` (button labels), or None if the user cancels (tests replace it)."""
        box = QMessageBox(QMessageBox.Question, title, text, QMessageBox.Cancel, self)
        buttons = {box.addButton(choice, QMessageBox.AcceptRole): choice for choice in choices}
        box.exec()
        return buttons.get(box.clickedButton())

    def save(self) -> bool:
        if self.document.path is None:
            return self.save_as()
        return self.save_to(self.document.path)

    def save_as(self) -> bool:
        suggested = str(self.document.path or self._suggested_project_path())
        path, _ = QFileDialog.getSaveFileName(self, "Save project", suggested, PROJECT_FILTER)
        return bool(path) and self.save_to(Path(path).with_suffix(".zvs"))

    def save_to(self, path: str | Path) -> bool:
        try:
            saved = self.document.save(path)
        except ZvsError as exc:
            self.show_error("The project was not saved", exc)
            return False
        self.autosaver.discard()
        self._remember(saved)
        self.statusBar().showMessage(f"Saved {saved}", 4000)
        return True

    def _suggested_project_path(self) -> Path:
        clip = self.document.project.clip
        return named_after_clip(clip.path, ".zvs") if clip else Path.home() / "untitled.zvs"

    def _remember(self, path: Path) -> None:
        self.settings.add_recent(str(path))
        # The recent list is a convenience: never fail an open or a save for it.
        with contextlib.suppress(OSError, ZvsError):
            save_settings(self.settings)
        self._rebuild_recent_menu()

    def _rebuild_recent_menu(self) -> None:
        self.recent_menu.clear()
        for entry in self.settings.recent_projects:
            action = self.recent_menu.addAction(entry)
            action.triggered.connect(lambda _=False, p=entry: self.open_path(p))
        self.recent_menu.setEnabled(bool(self.settings.recent_projects))
        self.start_page.set_recent(self.settings.recent_projects)

    def _may_discard(self) -> bool:
        """Ask before unsaved changes are lost; True when it is fine to go on."""
        if not self.document.dirty:
            return True
        answer = self.ask(
            "Unsaved changes",
            f"Save the changes to {self.document.title}?",
            QMessageBox.Save | QMessageBox.Discard | QMessageBox.Cancel,
        )
        if answer == QMessageBox.Save:
            return self.save()
        return answer == QMessageBox.Discard

    def ask(self, title: str, text: str, buttons) -> QMessageBox.StandardButton:
        """A question to the user (tests replace this method)."""
        return QMessageBox.question(self, title, text, buttons)

    def show_error(self, title: str, error: ZvsError | str) -> None:
        """A readable error with what to do about it (tests replace this method)."""
        box = QMessageBox(
            QMessageBox.Warning, title, str(getattr(error, "message", error)), parent=self
        )
        hint = getattr(error, "hint", None)
        if hint:
            box.setInformativeText(hint)
        box.open()

    def autosave(self) -> None:
        if self.document.dirty:
            try:
                self.autosaver.save(self.document.project, self.document.path)
            except (OSError, ZvsError) as exc:
                self.statusBar().showMessage(f"Autosave failed: {exc}", 8000)

    # -- document changes ---------------------------------------------------------------------
    def _close_media(self) -> None:
        """Close the clip's reader and proxy (a new clip, or the window closing), and stop
        reading the clip it had opened."""
        for job in (self.prepare_job, self.levels_job):
            if job is not None:
                self.bridge.cancel(job)
        self.prepare_job = self.levels_job = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
        self._close_matte()
        self.audio.set_clip(None, None)

    def _clip_loaded(self) -> None:
        self._close_media()
        self.versions.compare(None)  # another project, or another clip: other renders
        doc = self.document
        self.centre.setCurrentWidget(self.start_page if doc.project.clip is None else self.player)
        if doc.project.clip is not None and doc.info is not None:
            self._reader = VideoReader(doc.project.clip.path, info=doc.info)
            self._prepare(Path(doc.project.clip.path))
            if doc.info.colour:
                self.statusBar().showMessage(sdr_note(doc.info.colour), 10_000)
            elif doc.info.timing_assumed:
                note = f"Image sequence: {ASSUMED_RATE_NOTE} (File > Frame rate of sequence)"
                self.statusBar().showMessage(note, 15_000)
        self.transport.set_clip(doc.frame_count, doc.fps)
        self.transport_bar.set_source_timecode(doc.info.timecode if doc.info else None)
        info = doc.info if doc.info is not None and doc.info.has_audio else None
        self.audio.set_clip(doc.project.clip.path if info else None, info.index if info else None)
        self.timeline.set_clip(doc.frame_count, doc.fps, self._thumbnail if self._reader else None)
        self.motion.clip_changed()
        self.status = None
        self.preview_image = self.preview_request = None
        self.transport.seek(0)
        self._frame_changed(0)

    def _prepare(self, clip: Path) -> None:
        """The clip's preview proxy (every frame as a small JPEG: thumbnails and playback then
        never wait for a seek in a long-GOP file) and its shot cuts (keys placed every K frames
        start again at each shot), from one decode as a job, read from the cache after the
        first time; and its sound levels for the waveform."""
        info = self.document.info

        def work(context):
            prepared = prepare_clip(
                clip, clip_hash(clip), info, PROXY_SIDE, context.progress, context.cancel
            )
            return clip, prepared

        self.prepare_job = self.bridge.submit(work, f"Prepare {clip_label(clip)}", ANALYSIS)
        if info is not None and info.has_audio:
            self._measure_sound(clip)

    def _measure_sound(self, clip: Path) -> None:
        """The sound's level at every frame, as a job (read from the cache after the first
        time), for the timeline's waveform."""
        info = self.document.info

        def work(context):
            levels = clip_levels(
                clip, clip_sound_hash(clip), info, context.progress, context.cancel
            )
            return clip, levels

        title = f"Measure the sound of {clip_label(clip)}"
        self.levels_job = self.bridge.submit(work, title, ANALYSIS)

    def _thumbnail(self, number: int):
        """A timeline thumbnail from the proxy, None until the proxy is ready."""
        if self.proxy is None:
            return None
        image = self.proxy.frame(number)
        height = THUMBNAIL_HEIGHT
        width = max(1, round(image.shape[1] * height / max(image.shape[0], 1)))
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)

    def go_to_riskiest_frame(self) -> None:
        """Move the playhead where propagation is predicted to struggle most (to add a key
        there); shows the risk band first when it is off."""
        if not self.risk_action.isChecked():
            self.risk_action.setChecked(True)
        frame = self.motion.riskiest_frame()
        if frame is None:
            self.statusBar().showMessage("Measuring the clip's motion: try again when done", 4000)
            return
        self.transport.seek(frame)

    def _remembered_toggle(self, action: QAction, setting: str, apply) -> None:
        """Give a checkable menu entry the state the settings remember, `apply(on)` it, and
        apply and remember each change of it."""
        action.setChecked(getattr(self.settings, setting))
        apply(action.isChecked())

        def toggled(on: bool) -> None:
            apply(on)
            self._remember_setting(**{setting: on})

        action.toggled.connect(toggled)

    def _volume(self, volume: float) -> None:
        self.audio.set_volume(volume)
        if not self.transport_bar.volume_slider.isSliderDown():  # a drag is kept on release
            self._remember_setting(volume=volume)

    def go_to_position(self) -> None:
        """Ask for a frame number, a timecode or an offset, and move the playhead there."""
        doc, here = self.document, self.transport.frame()
        if doc.frame_count == 0:
            return
        start = doc.info.timecode if doc.info else None
        source = " or the clip's own timecode" if start else ""
        text = self.ask_text(
            "Go to",
            f"Frame number, timecode (HH:MM:SS:FF){source} or offset (+10, -1:00):",
            str(here),
        )
        if not text:
            return
        try:
            frame = source_frame(text, start, doc.info.fps, doc.frame_count)
            if frame is None:
                frame = parse_position(text, doc.fps, doc.frame_count, here)
        except ValueError as exc:
            self.statusBar().showMessage(str(exc), 6000)
            return
        self.transport.seek(frame)

    def save_frame(self) -> Path | None:
        """Save the frame at the playhead as a PNG the user names: its render, unless the
        viewer shows the original or the frame is not rendered yet."""
        doc = self.document
        if doc.project.clip is None or self._reader is None:
            self.statusBar().showMessage("Import a clip first", 4000)
            return None
        frame = self.transport.frame()
        image = None if self.viewer.mode() == "original" else self.shown_render(frame)
        what = "rendered" if image is not None else "original"
        if image is None:
            image = self._reader.frame(frame)
        suggested = named_after_clip(doc.project.clip.path, f"_{frame:06d}.png")
        chosen = self.choose_save_path("Save frame as image", suggested, "PNG images (*.png)")
        if not chosen:
            return None
        path = Path(chosen).with_suffix(".png")
        text = self._frame_parameters(frame, image) if what == "rendered" else None
        try:
            write_png(path, image, {INFOTEXT_KEY: text} if text else None)
        except ZvsError as exc:
            self.show_error("The frame was not saved", exc)
            return None
        self.statusBar().showMessage(f"Saved the {what} frame {frame} as {path}", 8000)
        return path

    def _frame_parameters(self, frame: int, image) -> str | None:
        """The A1111 parameters of the shown render of `frame` (a previewed key's are those
        it was previewed with), for its PNG; None for renders other than diffusion's."""
        if self.preview_image is not None and self.preview_image[0] == frame:
            request, keys = self.preview_request, [frame]
        else:
            request, keys = self.current_request(), list(self.status.keys) if self.status else []
        if request is None:
            return None
        return frame_infotext(request, frame, image.shape[1::-1], keys)

    def step(self, frames: int) -> None:
        """Stop and move the playhead `frames` on, sounding the frame reached (scrubbing)."""
        self.transport.step(frames)
        self.audio.scrub(self.transport.frame())

    def _remember_setting(self, **changes) -> None:
        """Keep a menu toggle's state in the settings file for the next start."""
        if any(getattr(self.settings, name) != value for name, value in changes.items()):
            self.settings = edited(self.settings, **changes)
            with contextlib.suppress(OSError, ZvsError):  # remembering is a convenience
                save_settings(self.settings)

    def _document_changed(self) -> None:
        span = self.document.project.frame_range
        bounds = (span.first, span.last) if span else (None, None)
        self.timeline.set_range(*bounds)
        self.transport.set_bounds(*bounds)
        self._show_keys()
        self.motion.refresh()
        self.refresh_status()
        self.versions.document_changed()
        self._refresh_title()

    def _refresh_title(self) -> None:
        mark = "*" if self.document.dirty else ""
        self.setWindowTitle(f"{mark}{self.document.title} — zvstudio")
        has_clip = self.document.project.clip is not None
        for action in (self.export_action, self.render_action, self.preview_action):
            action.setEnabled(has_clip)
        info = self.document.info
        self.sequence_rate_action.setEnabled(info is not None and info.is_sequence)

    def toggle_key(self) -> None:
        if self.document.project.clip is not None:
            self.document.toggle_key(self.transport.frame())

    # -- the render range (in and out points) and key navigation ---------------------------------
    def mark_in(self) -> None:
        self._mark(first=self.transport.frame())

    def mark_out(self) -> None:
        self._mark(last=self.transport.frame())

    def _mark(self, first: int | None = None, last: int | None = None) -> None:
        doc = self.document
        if doc.project.clip is None:
            return
        doc.push(mark_range(doc.project, doc.frame_count, first, last))
        span = doc.project.frame_range
        if span is None:
            self.statusBar().showMessage("Rendering the whole clip", 5000)
            return
        seconds = span.count / doc.fps if doc.fps else 0.0
        self.statusBar().showMessage(
            f"Render range: frames {span.first} to {span.last} "
            f"({span.count} frames, {seconds:.2f} s)",
            5000,
        )

    def clear_range(self) -> None:
        if self.document.project.frame_range is not None:
            self.document.push(SetFrameRange(None))
            self.statusBar().showMessage("Rendering the whole clip", 5000)

    def go_to_range_end(self, end: int) -> None:
        """The playhead to the in point (`end` 0) or the out point (1), or the clip's ends."""
        span, count = self.document.project.frame_range, self.document.frame_count
        if count:
            ends = (span.first, span.last) if span else (0, count - 1)
            self.transport.stop()
            self.transport.seek(ends[end])

    def go_to_key(self, step: int) -> None:
        """The playhead to the next key (`step` 1) or the previous one (-1)."""
        here = self.transport.frame()
        frames = [k.frame for k in self.document.project.keyframes]
        ahead = [f for f in frames if f > here] if step > 0 else [f for f in frames if f < here]
        if ahead:
            self.transport.stop()
            self.transport.seek(min(ahead) if step > 0 else max(ahead))

    def _remove_key(self, frame: int) -> None:
        if self.document.project.key_at(frame) is not None:
            self.document.push(RemoveKey(frame))

    def _move_key(self, source: int, target: int) -> None:
        try:
            self.document.push(MoveKey(source, target))
        except ZvsError as exc:
            self.statusBar().showMessage(str(exc), 5000)

    def _key_selected(self, frame: int) -> None:
        self.inspector.set_current_key(frame if frame >= 0 else None)

    # -- the playhead and the viewer ----------------------------------------------------------
    def _frame_changed(self, number: int) -> None:
        self.timeline.set_playhead(number)
        key = self.document.project.key_at(number)
        self.inspector.set_current_key(number if key is not None else None)
        self._show_frame(number)

    def _show_frame(self, number: int) -> None:
        count = self.document.frame_count
        if self._reader is None or not 0 <= number < count:
            self.viewer.set_frames(None, None)
            self.frame_label.setText("")
            return
        # While playing, the proxy keeps up with the frame rate; stopped, the exact frame.
        playing = self.proxy is not None and self.transport.is_playing()
        original = self.proxy.frame(number) if playing else self._reader.frame(number)
        if self.viewer.mode() == "matte":
            self.viewer.set_frames(self.matte_overlay(number, original), None)
        else:
            self.viewer.set_frames(original, self.shown_render(number, original))
        self._show_compared(number, original)
        seconds = number / self.document.fps
        self.frame_label.setText(f"frame {number} / {count - 1}   {seconds:7.2f} s")

    def show_current_frame(self) -> None:
        self._show_frame(self.transport.frame())

    def _show_compared(self, number: int, original) -> None:
        """The compared version's render, through the matte when the version has the
        project's (a version with another matte is shown as rendered)."""
        label, version = self.versions.compared_label(), self.versions.compared_version()
        shown = version is not None and self.viewer.mode() in COMPARED_MODES
        image = self.versions.compared_frame(number) if shown else None  # read only if seen
        same_matte = shown and project_matte(version.settings) == project_matte(
            self.document.project.settings
        )
        if image is not None and same_matte:
            image = self._through_matte(number, image, original)
        self.viewer.set_compared(image, label)

    def rendered_frame(self, number: int):
        """The frame's render from the cache (or the last preview of that key), or None."""
        if self.preview_image is not None and self.preview_image[0] == number:
            return self.preview_image[1]
        return self.status.rendered_frame(number) if self.status else None

    def shown_render(self, number: int, original=None):
        """The frame's render as it will be exported: through the project's matte, over the
        original frame (`original`, at any size, when the caller has it). None if not
        rendered."""
        image = self.rendered_frame(number)
        return self._through_matte(number, image, original) if image is not None else None

    def _through_matte(self, number: int, image, original=None):
        """`image` (frame `number`'s render) through the project's matte over the original."""
        weights = self._matte_weights(number, image.shape[1::-1])
        if weights is None:
            return image
        if original is None:
            original = self._reader.frame(number)
        if original.shape != image.shape:
            original = cv2.resize(original, image.shape[1::-1], interpolation=cv2.INTER_AREA)
        return composite(image, original, weights)

    def matte_overlay(self, number: int, original):
        """`original` (frame `number`, any size) with the project's matte over it, tinted
        red where the original footage stays (a roto artist's view); as it is without one."""
        if self.document.project.settings.matte is None:
            self.statusBar().showMessage("No matte: choose one in the inspector", 4000)
            return original
        weights = self._matte_weights(number, original.shape[1::-1])
        if weights is None:
            return original
        kept = 1.0 - weights[..., None]
        tinted = original * (1.0 - MATTE_TINT * kept) + MATTE_RED * (MATTE_TINT * kept)
        overlay = np.clip(tinted + 0.5, 0, 255).astype(np.uint8)
        area = matte_area(weights) if self._matte_spec.crop else None
        if area is not None:
            corner = (area.x + area.width - 1, area.y + area.height - 1)
            line = max(1, round(min(original.shape[:2]) / 270))
            cv2.rectangle(overlay, (area.x, area.y), corner, KEY_AREA_COLOUR, line)
        return overlay

    def _matte_weights(self, number: int, size: tuple[int, int]):
        """Frame `number` of the project's matte at `size` (its reader opened once per matte
        and size: the render's and the viewer's); None without one, or when it cannot be
        read (the status bar says why)."""
        spec = project_matte(self.document.project.settings)
        if spec != self._matte_spec:
            self._close_matte()
            self._matte_spec = spec
        if spec is None:
            return None
        try:
            if size not in self._mattes:
                self._mattes[size] = None  # one that cannot be opened is not tried again
                self._mattes[size] = MatteReader(spec, size, self.document.frame_count)
            mattes = self._mattes[size]
            return mattes.weights(number) if mattes is not None else None
        except ZvsError as exc:
            self.statusBar().showMessage(f"The matte is not shown: {exc}", 8000)
            return None

    def _close_matte(self) -> None:
        for reader in self._mattes.values():
            if reader is not None:
                reader.close()
        self._mattes.clear()
        self._matte_spec = None

    # -- render status ------------------------------------------------------------------------
    def current_request(self, output: Path | None = None) -> RenderRequest | None:
        """The render the project describes (None with no clip); errors go to the status bar."""
        return self.request_for(self.document.project, output)

    def request_for(self, project: Project, output: Path | None = None) -> RenderRequest | None:
        """The render `project` (the document's, or one of its versions) describes, with the
        editor's model settings; None with no clip, errors go to the status bar."""
        if project.clip is None:
            return None
        from zvstudio.gui.generate_dialogs import ModelPolicy

        output = output or self._working_output()
        policy = ModelPolicy.from_settings(self.settings, self.diffusion_config_dir)
        try:
            return policy.applied_to(request_from_project(project, output))
        except ZvsError as exc:
            self.statusBar().showMessage(str(exc), 8000)
            return None

    def _working_output(self) -> Path:
        """Where the editor's own renders go: the viewer reads frames from the cache, this
        file is the latest full render for playing elsewhere."""
        clip = self.document.project.clip
        name = text_hash(clip.content_hash or clip.path) if clip else "none"
        return cache_root() / "renders" / f"{name}.mp4"

    def refresh_status(self) -> None:
        request = self.current_request()
        if request is not None:
            self.status_watcher.refresh(request, self.document.info)

    def _status_problem(self, text: str) -> None:
        self.statusBar().showMessage(text, 8000)

    def _status_ready(self, status: RenderStatus) -> None:
        self.status = status
        self._show_keys()
        self._show_frame(self.transport.frame())

    def key_states(self) -> dict[int, str]:
        """Each key's state for the timeline: the status's, with the key being rendered now."""
        states = {}
        known = self.status.keys if self.status else {}
        for key in self.document.project.keyframes:
            states[key.frame] = known.get(key.frame, "pending")
        if self.render_job is not None:
            waiting = [f for f, state in states.items() if state != "rendered"]
            if waiting:
                states[min(waiting)] = "rendering"
        return states

    def _show_keys(self) -> None:
        self.timeline.set_keys(self.key_states())
        if self.status is None:
            self.timeline.set_segments([])
            return
        running = self.render_job is not None
        self.timeline.set_segments(
            [
                (s.first, s.last, "cached" if s.cached else "rendering" if running else "pending")
                for s in self.status.segments
            ]
        )

    # -- jobs ---------------------------------------------------------------------------------
    def start_render(
        self, request: RenderRequest | None = None, title: str | None = None
    ) -> int | None:
        """Render the project (or `request`, a version's) into the cache (and the working
        file); returns the job id."""
        if self.render_job is not None:
            self.statusBar().showMessage("A render is already running", 4000)
            return None
        request = request or self.current_request()
        if request is None:
            return None
        request.output.parent.mkdir(parents=True, exist_ok=True)
        span = self.document.project.frame_range
        title = title or f"Render {self.document.name}"
        if span is not None:
            title += f", frames {span.first}–{span.last}"
        self.render_job = self.bridge.submit_render(request, title)
        self.status_timer.start()
        self._show_keys()
        return self.render_job

    def cancel_render(self) -> None:
        if self.render_job is not None:
            self.bridge.cancel(self.render_job)

    def preview_key(self) -> int | None:
        """Render the frame at the playhead as a key on its own, showing steps as they come."""
        request = self.current_request()
        if request is None:
            return None
        number = self.transport.frame()

        def work(context):
            image = render_key_preview(
                request, number, context.progress, context.cancel, context.log
            )
            return number, image, request

        self.preview_job = self.bridge.submit(work, f"Preview key {number}")
        if self.viewer.mode() == "original":
            self.viewer.set_mode("split")  # the preview must be visible
        return self.preview_job

    def try_seeds(self, count: int = SEED_TRIES) -> int | None:
        """Render the key at the playhead with `count` seeds from its own on, as a job; when
        they are done, the user picks one (`choose_seed`) and it becomes the key's seed."""
        request = self.current_request()
        if request is None:
            return None
        if request.renderer.kind != "diffusion":
            message = "Only Stable Diffusion keys change with the seed: choose that key renderer"
            self.statusBar().showMessage(message, 6000)
            return None
        number = self.transport.frame()
        key = self.document.project.key_at(number)
        first = self.document.project.settings.seed
        if key is not None and key.seed is not None:
            first = key.seed
        seeds = [(first + offset) % (SEED_MAX + 1) for offset in range(count)]

        def work(context):
            variations = render_key_variations(
                request, number, seeds, context.progress, context.cancel, context.log
            )
            return number, variations

        self.seeds_job = self.bridge.submit(work, f"Try {count} seeds at frame {number}")
        if self.viewer.mode() == "original":
            self.viewer.set_mode("split")  # the steps must be visible
        return self.seeds_job

    def choose_seed(self, frame: int, variations: list, target: str) -> int | None:
        """The seed the user picks among `variations` ((seed, image) each), or None (tests
        replace this method)."""
        from zvstudio.gui.seeds_dialog import SeedsDialog

        dialog = SeedsDialog(frame, variations, target, self)
        dialog.exec()
        return dialog.chosen

    def use_seed(self, frame: int, seed: int, image) -> None:
        """Make `seed` the seed of the key at `frame` (of every key when `frame` is not a
        key), one undo step, and show its render as the preview."""
        doc = self.document
        key = doc.project.key_at(frame)
        if key is not None:
            edit = SetKey(replace(key, seed=seed))
            edit.text = f"use seed {seed} for key {frame}"
        else:
            edit = SetSettings(replace(doc.project.settings, seed=seed))  # a step of its own
            edit.text = f"use seed {seed}"
        doc.push(edit)
        self.preview_image, self.preview_request = (frame, image), self.current_request()
        self._show_frame(self.transport.frame())
        where = f"key {frame}" if key is not None else "every key"
        self.statusBar().showMessage(f"Seed {seed} for {where} (Ctrl+Z undoes it)", 8000)

    def _seeds_event(self, event: JobEvent) -> None:
        if event.kind == "preview" and event.image is not None:
            self.viewer.set_frames(self._reader.frame(self.transport.frame()), event.image)
        elif event.kind == "finished":
            self.seeds_job = None
            frame, variations = event.result
            key = self.document.project.key_at(frame)
            target = f"key {frame}'s seed" if key is not None else "the seed of every key"
            seed = self.choose_seed(frame, variations, target)
            if seed is not None:
                self.use_seed(frame, seed, dict(variations)[seed])
            else:
                self._show_frame(self.transport.frame())
        elif event.kind in ("failed", "cancelled"):
            self.seeds_job = None
            self._show_frame(self.transport.frame())
            if event.error is not None:
                self.show_error("Trying seeds failed", event.error)

    def export_to(self, path: Path, output_settings, first: int, last: int) -> int | None:
        """Export frames first..last to `path` as a job (keys and segments come from the cache
        when the project was rendered)."""
        from zvstudio.engine.request import export_settings

        request = self.current_request(Path(path))
        if request is None:
            return None
        export = export_settings(Path(path), output_settings, request.matte is not None)
        request = replace(request, first=first, last=last, export=export)
        return self.bridge.submit_render(request, f"Export {Path(path).name}")

    def _of_current_clip(self, clip: Path, result):
        """An analysis job's result when `clip` is still the open clip, else None."""
        current = self.document.project.clip
        return result if current is not None and Path(current.path) == clip else None

    def _job_event(self, event: JobEvent) -> None:
        if self._shut_down:
            return  # an event queued before the workers stopped: nothing may start now
        if event.job in self.generate_jobs:
            self._generation_event(event)
        if event.job == self.models_job and event.kind == "finished":
            self.models = list(event.result)
            self.inspector.reload_models()
        if event.job == self.prepare_job and event.kind == "finished":
            self.prepare_job = None
            prepared = self._of_current_clip(*event.result)
            if prepared is not None:
                self.proxy = prepared.proxy
                self.timeline.invalidate_thumbnails()  # thumbnails can be drawn now
                self.document.set_shot_cuts(prepared.cuts)
                self.timeline.set_cuts(prepared.cuts)
        if event.job == self.levels_job and event.kind == "finished":
            self.levels_job = None
            if self._of_current_clip(*event.result) is not None:
                self.timeline.set_levels(event.result[1])
        self.motion.job_event(event)
        if event.job == self.preview_job:
            self._preview_event(event)
        if event.job == self.seeds_job:
            self._seeds_event(event)
        if event.job != self.render_job:
            if event.kind == "finished":
                self.refresh_status()  # an export may have filled the cache too
            return
        if event.kind in ("finished", "failed", "cancelled"):
            self.render_job = None
            self.status_timer.stop()
            self.refresh_status()
            self.versions.refresh_status()
            if event.kind == "failed" and event.error is not None:
                self.show_error("The render failed", event.error)
            elif event.kind == "finished":
                self.statusBar().showMessage("Render finished", 5000)

    def _preview_event(self, event: JobEvent) -> None:
        if event.kind == "preview" and event.image is not None:
            self.viewer.set_frames(self._reader.frame(self.transport.frame()), event.image)
        elif event.kind == "finished" and event.result is not None:
            number, image, self.preview_request = event.result
            self.preview_image = (number, image)
            self.preview_job = None
            self._show_frame(self.transport.frame())
        elif event.kind in ("failed", "cancelled"):
            self.preview_job = None
            if event.error is not None:
                self.show_error("The preview failed", event.error)

    # -- generated clips ------------------------------------------------------------------------
    def start_generation(self, choice) -> int:
        """Make the clip a `TextToVideoChoice`, `AnimateChoice` or `DynamiCrafterChoice`
        describes, as a job; when it finishes, the clip opens as a new project (as File >
        Import clip... would)."""
        from zvstudio.gui.generate_dialogs import ModelPolicy

        policy = ModelPolicy.from_settings(self.settings, self.diffusion_config_dir)
        job = self.bridge.submit(
            lambda context: choice.run(policy, context), f"{choice.title}: {choice.output.name}"
        )
        self.generate_jobs[job] = choice.title
        return job

    def _generation_event(self, event: JobEvent) -> None:
        if event.kind not in ("finished", "failed", "cancelled"):
            return
        title = self.generate_jobs.pop(event.job)
        if event.kind == "failed" and event.error is not None:
            self.show_error(f"{title} failed", event.error)
        elif event.kind == "cancelled":
            self.statusBar().showMessage(f"{title}: cancelled", 5000)
        elif event.kind == "finished":
            result = event.result
            self.statusBar().showMessage(
                f"{title}: wrote {result.output} ({result.frames} frames)", 8000
            )
            self.open_path(result.output)

    def generation_folder(self, remembered: dict) -> Path:
        """Where a generated clip goes by default: beside the project (or its clip), else the
        folder used last time, else the user's Videos folder, else home."""
        doc = self.document
        if doc.path is not None:
            return Path(doc.path).parent
        if doc.project.clip is not None:
            return Path(doc.project.clip.path).parent
        candidates = [
            remembered.get("folder"),
            QStandardPaths.writableLocation(QStandardPaths.StandardLocation.MoviesLocation),
        ]
        for folder in candidates:
            if isinstance(folder, str) and folder and Path(folder).is_dir():
                return Path(folder)
        return Path.home()

    def new_from_text_dialog(self) -> int | None:
        from zvstudio.gui.generate_dialogs import TextToVideoDialog

        return self._generation_dialog(TextToVideoDialog, "text_to_video")

    def animate_image_dialog(self) -> int | None:
        from zvstudio.gui.generate_dialogs import AnimateDialog

        # A pickled DynamiCrafter checkpoint is refused in the dialog unless the settings allow it.
        return self._generation_dialog(
            AnimateDialog, "animate_image", allow_pickle=self.settings.allow_pickle
        )

    def _generation_dialog(self, dialog_class, name: str, **options) -> int | None:
        """Ask with `dialog_class` (given `options`), remember its values in the settings field
        `name`, start the job; returns its id (None when the dialog was cancelled)."""
        remembered = getattr(self.settings, name)
        folder = self.generation_folder(remembered)
        dialog = dialog_class(self, self.models, remembered, folder, **options)
        try:
            if not dialog.exec():
                return None
            choice, values = dialog.choice(), dialog.remembered()
        finally:
            dialog.deleteLater()
        self.settings = edited(self.settings, **{name: values})
        # Remembering is a convenience: never fail the job for it.
        with contextlib.suppress(OSError, ZvsError):
            save_settings(self.settings)
        return self.start_generation(choice)

    # -- dialogs ------------------------------------------------------------------------------
    def export_dialog(self) -> None:
        from zvstudio.gui.export_dialog import ExportDialog

        doc = self.document
        if doc.project.clip is None:
            return
        span = doc.project.frame_range
        suggested = named_after_clip(doc.project.clip.path, "_zvstudio.mp4")
        dialog = ExportDialog(
            self,
            doc.frame_count,
            doc.fps,
            doc.project.settings.output,
            str(suggested),
            (span.first, span.last) if span else None,
            doc.render_size,
            doc.info.colour if doc.info else "",
            has_matte=doc.project.settings.matte is not None,
        )
        if dialog.exec():
            choice = dialog.choice()
            self.export_to(choice.path, choice.output, choice.first, choice.last)

    def settings_dialog(self) -> None:
        from zvstudio.gui.settings_dialog import SettingsDialog

        dialog = SettingsDialog(self.settings, self)
        if dialog.exec():
            self.settings = dialog.settings()
            apply_settings(self.settings)
            save_settings(self.settings)
            self.autosave_timer.start(max(1, self.settings.autosave_minutes) * 60_000)
            self.refresh_status()

    def models_dialog(self) -> None:
        from zvstudio.gui.models_dialog import ModelManagerDialog

        dialog = ModelManagerDialog(self.settings, self.bridge, self)
        if dialog.exec():
            self.settings = dialog.settings()
            apply_settings(self.settings)  # annotators' weights are looked for in new folders
            save_settings(self.settings)
            self.models = dialog.models()
            self.inspector.reload_models()

    def shortcuts_dialog(self) -> None:
        ShortcutsDialog(self.menuBar(), self).exec()

    def about(self) -> None:
        QMessageBox.about(
            self,
            "About zvstudio",
            f"zvstudio {__version__}\nZero-shot video re-rendering with image diffusion models.",
        )

    # -- drag and drop, closing -----------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if any(self._droppable(url.toLocalFile()) for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        for url in event.mimeData().urls():
            if self._droppable(url.toLocalFile()):
                self.open_path(url.toLocalFile())
                event.acceptProposedAction()
                return

    @staticmethod
    def _droppable(path: str) -> bool:
        suffix = Path(path).suffix.lower()
        known = suffix in VIDEO_SUFFIXES or suffix in IMAGE_SUFFIXES or suffix == ".zvs"
        return bool(path) and (known or Path(path).is_dir())  # a folder: its image sequence

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self._may_discard():
            event.ignore()
            return
        if (
            self.bridge.busy()
            and self.ask(
                "Jobs are running",
                "Cancel the running render and quit? Finished keys and segments stay cached.",
                QMessageBox.Yes | QMessageBox.No,
            )
            != QMessageBox.Yes
        ):
            event.ignore()
            return
        self.shutdown()
        event.accept()

    def shutdown(self) -> None:
        """Stop the timers and the workers and delete this session's autosave."""
        self._shut_down = True
        self.autosave_timer.stop()
        self.status_timer.stop()
        self.transport.stop()
        self.bridge.shutdown()
        self.status_watcher.shutdown()
        self.versions.shutdown()
        self.autosaver.discard()
        self._close_media()

    def sizeHint(self) -> QSize:
        return QSize(1400, 900)


def wait_for(condition, timeout: float = 10.0) -> bool:
    """Process events until `condition()` (for scripts driving the window, e.g. screenshots)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        QApplication.processEvents()
        if condition():
            return True
        time.sleep(0.01)
    return False
