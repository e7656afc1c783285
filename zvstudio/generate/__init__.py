"""Make a clip instead of re-rendering one (METHOD sections 2 and 3).

`t2v_zero`: Text2Video-Zero, a temporally consistent video from a prompt (or from an input
clip's edges / pose / depth through a ControlNet) with the same SD1.5 model as the key renderer.
`animate_zero`: AnimateZero, a still image (generated or the user's) animated by an AnimateDiff
motion module. Both return RGB frames; `zvstudio.generate.jobs` writes them as a video.
"""
