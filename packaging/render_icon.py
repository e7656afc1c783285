"""Render resources/zvstudio.svg to the 256x256 PNG beside it (resources/zvstudio.png).

    python packaging/render_icon.py [--size 256] [SVG] [PNG]

Uses PySide6's QSvgRenderer (no display needed). The PNG is committed; run this again after
editing the SVG.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

RESOURCES = Path(__file__).resolve().parent.parent / "resources"


def render(svg: Path, png: Path, size: int = 256) -> Path:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"render_icon: {svg} is not a valid SVG")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    if not image.save(str(png), "PNG"):
        raise SystemExit(f"render_icon: could not write {png}")
    return png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("svg", nargs="?", type=Path, default=RESOURCES / "zvstudio.svg")
    parser.add_argument("png", nargs="?", type=Path, default=RESOURCES / "zvstudio.png")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    print(render(args.svg, args.png, args.size))


if __name__ == "__main__":
    main()
