"""File dialog filters of the editor's windows: one list of the clip files zvstudio reads."""

from __future__ import annotations

from zvstudio.media.sequence import IMAGE_SUFFIXES

VIDEO_GLOBS = "*.mp4 *.mov *.mkv *.webm *.avi *.m4v"
FRAME_GLOBS = " ".join(f"*{suffix}" for suffix in sorted(IMAGE_SUFFIXES))
# Choosing any frame of an image sequence takes the whole sequence as the clip.
CLIP_FILTER = (
    f"Clips ({VIDEO_GLOBS} {FRAME_GLOBS});;Videos ({VIDEO_GLOBS});;"
    f"Image sequences: any of their frames ({FRAME_GLOBS});;All files (*)"
)
VIDEOS_FILTER = f"Videos ({VIDEO_GLOBS});;All files (*)"
MATTE_FILTER = (
    f"Mattes: videos or frames of a sequence ({VIDEO_GLOBS} {FRAME_GLOBS});;All files (*)"
)
