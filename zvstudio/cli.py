"""The `zvstudio` command line.

Every command reports bad input as one clear message and a non-zero exit code, never a
traceback (`--debug` shows one for bug reports). Ctrl+C cancels a render cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

from zvstudio import __version__
from zvstudio.errors import RenderCancelled, ZvsError
from zvstudio.progress import CancelToken, EtaClock, Progress

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 130
CLIP_HELP = "a video file or an image sequence (its folder, one of its frames, or frame_%%04d.png)"
FORMAT_HELP = (
    "h264, h265 or prores for a video file (default h264); png, tiff, exr (linear light) or "
    "dpx (10-bit) for a folder of frames (default png)"
)


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_model_libraries()
    parser = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if _opens_a_file(argv, parser):
        argv = ["gui", *argv]  # `zvstudio clip.mp4` or `zvstudio project.zvs`
    args = parser.parse_args(argv)
    if args.command is None:
        argv = ["gui"]
        args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ZvsError as exc:
        _print_error(str(exc))
        return EXIT_ERROR
    except (RenderCancelled, KeyboardInterrupt):
        print(
            "\nzvstudio: cancelled; nothing was written and existing files are unchanged",
            file=sys.stderr,
        )
        return EXIT_CANCELLED
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        _print_error(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "  (this is a bug; run again with --debug and report the traceback)"
        )
        return EXIT_ERROR


def _quiet_model_libraries() -> None:
    """No loading bars or notes on optional backends from transformers and the Hub: they say
    nothing a user can act on, and our own progress and errors say what matters. Set before
    those libraries are imported (they read the variables then); a user's own setting wins."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _opens_a_file(argv: list[str], parser: argparse.ArgumentParser) -> bool:
    if len(argv) != 1 or argv[0].startswith("-"):
        return False
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return argv[0] not in commands.choices and _exists(argv[0])


def _exists(path: str | Path) -> bool:
    """Whether `path` is there: a file, a folder, or an image sequence's pattern."""
    from zvstudio.media.sequence import clip_exists

    return Path(path).exists() or clip_exists(path)


def _print_error(message: str) -> None:
    print(f"zvstudio: error: {message}", file=sys.stderr)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zvstudio",
        description="Re-render video with image diffusion models and patch propagation.",
    )
    parser.add_argument("--version", action="version", version=f"zvstudio {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_probe(commands)
    _add_render(commands)
    _add_propagate(commands)
    _add_extract(commands)
    _add_preview(commands)
    _add_generate(commands)
    _add_animate(commands)
    _add_styles(commands)
    _add_presets(commands)
    _add_versions(commands)
    _add_models(commands)
    _add_cache(commands)
    _add_bench(commands)
    _add_gui(commands)
    return parser


# -- gui --------------------------------------------------------------------------------------
def _add_gui(commands) -> None:
    parser = commands.add_parser(
        "gui", help="open the editor (the default when no command is given)"
    )
    parser.add_argument("file", nargs="?", help="a clip to import or a .zvs project to open")
    parser.set_defaults(command="gui", run=_run_gui)


def _run_gui(args) -> int:
    if args.file and not _exists(args.file):
        raise ZvsError(f"{args.file} does not exist")
    if _no_display():
        raise ZvsError(
            "no display to open the editor on",
            hint="run it in a desktop session, or use the commands (zvstudio --help), "
            "e.g. zvstudio render --demo -o demo.mp4",
        )
    from zvstudio.gui.app import run_gui

    return run_gui(args.file)


def _no_display() -> bool:
    if sys.platform != "linux" or os.environ.get("QT_QPA_PLATFORM"):
        return False
    return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


# -- probe ------------------------------------------------------------------------------------
def _add_probe(commands) -> None:
    probe_parser = commands.add_parser(
        "probe", help="describe a clip: a video file or an image sequence"
    )
    probe_parser.add_argument("file", type=Path, help=CLIP_HELP)
    probe_parser.add_argument("--json", action="store_true", help="print JSON")
    probe_parser.add_argument(
        "--cuts",
        action="store_true",
        help="also find the shot cuts (the first frame of each new shot): where to paint keys",
    )
    probe_parser.add_argument(
        "--suggest-keys",
        type=int,
        metavar="K",
        help="also suggest key frames to paint: as many as one every K frames from each shot "
        "cut, placed where the motion needs them",
    )
    probe_parser.add_argument(
        "--set-fps",
        metavar="RATE",
        help="image sequences: set the frame rate first, e.g. 25, 29.97 or 30000/1001 (kept in "
        "a timing.json beside the frames; what was rendered from them stays valid)",
    )
    probe_parser.set_defaults(command="probe", run=_run_probe)


def _run_probe(args) -> int:
    from zvstudio.engine.shots import analyse_motion, clip_cuts
    from zvstudio.errors import ZvsError
    from zvstudio.media import probe
    from zvstudio.media.sequence import clip_hash
    from zvstudio.propagate.placement import max_gap

    if args.suggest_keys is not None and args.suggest_keys < 1:
        raise ZvsError(f"--suggest-keys needs an interval of at least 1, got {args.suggest_keys}")
    if args.set_fps is not None:
        _set_sequence_rate(args.file, args.set_fps)
    info = probe(args.file)
    cuts = suggested = None
    last = info.frame_count - 1
    if args.suggest_keys is not None and last >= 0:  # finds the cuts in the same pass
        analysis = analyse_motion(args.file, 0, last, max_gap(args.suggest_keys), info)
        cuts, suggested = list(analysis.cuts), analysis.keys(args.suggest_keys)
    elif args.suggest_keys is not None:  # no frames: nothing to find
        cuts, suggested = [], []
    elif args.cuts:
        cuts = clip_cuts(args.file, clip_hash(args.file), 0, last, info) if last >= 0 else []
    if args.json:
        extra = {} if cuts is None else {"shot_cuts": cuts}
        if suggested is not None:
            extra["suggested_keys"] = suggested
        print(json.dumps({**info.to_dict(), **extra}, indent=2))
        return 0
    from zvstudio.media.hdr import sdr_note
    from zvstudio.media.sequence import ASSUMED_RATE_NOTE

    rotation = f", rotated {info.rotation} deg" if info.rotation else ""
    rate = "variable" if info.is_vfr else "constant"
    lines = [
        f"{info.path}",
        f"  container  {info.container}",
        f"  video      {info.codec} {info.pixel_format}, {info.width}x{info.height}{rotation}"
        f" (shown as {info.display_width}x{info.display_height})",
        f"  frames     {info.frame_count} at {float(info.fps):.3f} fps ({rate} frame rate)",
        f"  duration   {info.duration:.3f} s",
    ]
    if info.timecode:
        lines.append(f"  timecode   {info.timecode} (the first frame's; renders carry it on)")
    if info.is_sequence:
        lines.append(f"  files      {_sequence_files(args.file)}")
    if info.timing_assumed:
        lines.append(f"  timing     {ASSUMED_RATE_NOTE}; --set-fps RATE sets it")
    if info.colour:
        lines.append(f"  colour     {sdr_note(info.colour)}")
    for stream in info.audio:
        lines.append(
            f"  audio      #{stream.index} {stream.codec}, {stream.sample_rate} Hz, "
            f"{stream.layout or str(stream.channels) + ' ch'}"
        )
    if not info.audio:
        lines.append("  audio      none")
    if cuts is not None:
        lines.append(f"  shot cuts  {', '.join(map(str, cuts)) if cuts else 'none (one shot)'}")
    if suggested is not None:
        lines.append(f"  keys       {', '.join(map(str, suggested))}")
    print("\n".join(lines))
    return 0


def _sequence_files(clip: Path) -> str:
    """An image sequence's files for people: `shots/frame_####.png, 1001-1100`."""
    from zvstudio.media.sequence import find_sequence

    sequence = find_sequence(clip)
    numbers = sequence.numbers
    step = f" by {sequence.step}" if sequence.step != 1 else ""
    return f"{sequence.label}, numbered {numbers[0]}-{numbers[-1]}{step}"


def _set_sequence_rate(clip: Path, text: str) -> None:
    from zvstudio.errors import ZvsError
    from zvstudio.media.sequence import frame_rate
    from zvstudio.media.writer import write_sequence_rate

    try:
        rate = frame_rate(text)
    except ValueError as exc:
        raise ZvsError(f"--set-fps: {exc}") from None
    written = write_sequence_rate(clip, rate)
    print(f"frame rate set to {float(rate):.3f} fps in {written}", file=sys.stderr)


# -- render -----------------------------------------------------------------------------------
def _add_render(commands) -> None:
    from zvstudio.media import FORMATS

    render_parser = commands.add_parser(
        "render", help="render a clip (or the built-in demo) with a key renderer and export it"
    )
    source = render_parser.add_mutually_exclusive_group(required=True)
    source.add_argument("input", nargs="?", type=Path, help=f"{CLIP_HELP}, or a .zvs project")
    source.add_argument(
        "--demo", action="store_true", help="render the built-in demo clip (procedural, with audio)"
    )
    render_parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output .mp4/.mov/.mkv file, or a folder for PNG frames",
    )
    render_parser.add_argument("--style", help="weightless style (see `zvstudio styles`)")
    render_parser.add_argument(
        "--preset",
        metavar="NAME",
        help="start from this render preset (see `zvstudio presets`); the other options "
        "change it, and a project keeps its matte",
    )
    render_parser.add_argument(
        "--version",
        metavar="NAME",
        help="with a project: render one of the versions kept in it (Render > Versions in "
        "the editor) instead of its current settings and keys",
    )
    render_parser.add_argument(
        "--size",
        type=int,
        metavar="PIXELS",
        help="render and export at most this many pixels on the short side, e.g. 720 for a "
        "4K clip (default: the clip's size, or the project's render size)",
    )
    _add_diffusion_options(render_parser, model_required=False)
    keys = render_parser.add_mutually_exclusive_group()
    keys.add_argument(
        "--every",
        type=int,
        metavar="K",
        help="render a key every K frames, counted again from each shot cut, and propagate "
        "the rest",
    )
    keys.add_argument(
        "--keys", metavar="N,M,...", help="render these key frames (0-based) and propagate the rest"
    )
    render_parser.add_argument(
        "--placement",
        choices=("even", "motion"),
        help="where --every puts its keys: even (every K frames, the default) or motion (as "
        "many keys, placed where the motion needs them: fewer where little moves)",
    )
    render_parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a style parameter, e.g. --param colors=6 (repeatable)",
    )
    render_parser.add_argument(
        "--flow-preset",
        choices=("ultrafast", "fast", "medium", "fine"),
        help="optical-flow quality for propagation (default fine; the demo uses medium)",
    )
    render_parser.add_argument(
        "--flow",
        metavar="NAME",
        help="optical-flow estimator for propagation: dis (default) or one a plugin adds",
    )
    _add_synthesis_option(render_parser)
    _add_matte_options(render_parser, keys=True)
    render_parser.add_argument("--from", dest="first", type=int, help="first frame (0-based)")
    render_parser.add_argument("--to", dest="last", type=int, help="last frame (inclusive)")
    render_parser.add_argument("--format", choices=FORMATS, help=FORMAT_HELP)
    render_parser.add_argument("--crf", type=int, help="H.264/H.265 quality, 0-51 (default 18)")
    render_parser.add_argument("--no-audio", action="store_true", help="leave the audio out")
    render_parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    render_parser.set_defaults(command="render", run=_run_render)


DEMO_STYLE = "cartoon"
DEMO_KEY_INTERVAL = 6
DEMO_FLOW = "medium"  # half the time of "fine" on the demo, with no visible difference


def _run_render(args) -> int:
    from zvstudio.engine.render import render

    with tempfile.TemporaryDirectory(prefix="zvstudio-demo-") as scratch:
        request = _render_request(args, Path(scratch))
        result = _run_job(args, lambda progress, cancel: render(request, progress, cancel, _say))
    _print_written(result)
    return 0


def _run_job(args, job):
    """Run `job(progress, cancel)` with a progress bar (unless -q) and Ctrl+C as cancel."""
    bar = ProgressBar(enabled=not args.quiet)
    cancel = CancelToken()
    with _cancel_on_ctrl_c(cancel):
        result = job(bar, cancel)
    bar.finish()
    return result


def _say(text: str) -> None:
    """A log line from the engine, between progress bar updates."""
    print(f"\rzvstudio: {text}", file=sys.stderr)


def _warn(text: str) -> None:
    print(f"zvstudio: warning: {text}", file=sys.stderr)


def _print_written(result) -> None:
    keys = getattr(result, "keys", 0)
    how = f"; {keys} keys, the rest propagated" if keys else ""
    print(f"wrote {result.output} ({result.frames} frames in {result.seconds:.1f} s{how})")


def _render_request(args, scratch: Path):
    """Build the render request from a video, a project or the demo, plus the options."""
    from zvstudio.engine.request import KeyRendererSpec, RenderRequest, request_from_project
    from zvstudio.media import ExportSettings, format_for

    if args.input is not None and args.input.suffix.lower() == ".zvs":
        from zvstudio.project import check_clip, load_project

        project = load_project(args.input)
        check_clip(project, args.input)
        if args.version is not None:
            from zvstudio.project.versions import find_version, version_project

            project = version_project(project, find_version(project, args.version))
        project.settings = _with_preset(args, project.settings)
        _check_project_files(project, args)
        request = request_from_project(project, args.output)
    else:
        if args.version is not None:
            raise ZvsError("--version NAME renders a version kept in a project (.zvs)")
        source = args.input
        if args.demo:
            from zvstudio.demo import write_demo_clip

            source = scratch / "demo.mp4"
            write_demo_clip(source)
        if args.preset:
            from zvstudio.project import ClipRef, Project, RenderSettings

            settings = _with_preset(args, RenderSettings())
            project = Project(clip=ClipRef.from_file(source), settings=settings)
            return _with_overrides(request_from_project(project, args.output), args)
        style = DEMO_STYLE if args.demo else "stylization"
        fmt = format_for(args.output)
        request = RenderRequest(
            source=source,
            output=args.output,
            renderer=KeyRendererSpec(style=style),
            export=ExportSettings(format=fmt),
            # The demo shows the whole method: keys, then propagation to the other frames.
            key_interval=DEMO_KEY_INTERVAL if args.demo else None,
            flow_preset=DEMO_FLOW if args.demo else "fine",
        )
    return _with_overrides(request, args)


def _check_project_files(project, args) -> None:
    """Refuse a project whose files (models, LoRAs, reference images, matte, paintings) are
    not all there, naming every one, before any work; files the options replace count not."""
    from dataclasses import replace

    from zvstudio.project.files import MODEL_FILES, describe_missing, missing_files

    if args.style is not None:  # a style renders the keys: the project's models are not used
        project = replace(project, settings=replace(project.settings, renderer="stylize"))
    replaced = {
        "VAE": args.vae is not None,
        "ControlNet": bool(args.controlnet),
        "IP-Adapter": args.ip_adapter is not None,
        "reference image": args.reference is not None,
    }
    if args.model is not None:  # another model with its own options: none of the project's
        replaced |= dict.fromkeys(MODEL_FILES, True)
    missing = [f for f in missing_files(project) if not replaced.get(f.what)]
    if missing:
        count = f"{len(missing)} file{'s' * (len(missing) > 1)}"
        raise ZvsError(
            f"the project refers to {count} that {'are' if len(missing) > 1 else 'is'} not "
            f"there:\n{describe_missing(missing)}",
            hint="move them back, or open the project in the editor: File > Find missing "
            "files… finds them in a folder",
        )


def _with_preset(args, settings):
    """`settings` with the look of the preset --preset names, if any."""
    if not args.preset:
        return settings
    from zvstudio.project.presets import load_preset

    return load_preset(args.preset).applied_to(settings)


def _project_model_overrides(renderer, args):
    """The project's diffusion spec with the VAE, clip skip and ControlNets the options give."""
    from dataclasses import replace

    if renderer.kind != "diffusion":
        given = next(name for name, value in _model_overrides(args) if value)
        raise ZvsError(f"{given} is for diffusion keys: give --model (or a project that uses one)")
    spec = renderer.diffusion
    if args.vae is not None:
        spec = replace(spec, vae=args.vae)
    if args.clip_skip is not None:
        spec = replace(spec, settings=replace(spec.settings, clip_skip=args.clip_skip))
    if args.controlnet_steps is not None:
        steps = _control_steps(args)
        spec = replace(spec, settings=replace(spec.settings, control_steps=steps))
    spec = _project_reference_overrides(spec, args)
    if args.controlnet:  # instead of the project's
        from zvstudio.engine.preview import control_fields

        choices = _controlnet_choices(args, default_scale=0.7)
        settings = replace(spec.settings, **control_fields(choices, 0.7))
        spec = replace(spec, settings=settings, controlnets=tuple(c.path for c in choices))
    return spec


def _project_reference_overrides(spec, args):
    """The project's spec with the reference image, strength and files the options give."""
    from dataclasses import replace

    from zvstudio.engine.preview import reference_images, with_reference_models

    if args.reference is not None:  # instead of the project's; its IP-Adapter stays
        spec = replace(spec, settings=replace(spec.settings, **_reference_fields(args)))
    elif args.reference_strength is not None:
        scale = args.reference_strength
        spec = replace(spec, settings=replace(spec.settings, reference_scale=scale))
    if args.ip_adapter is None and args.image_encoder is None:
        return spec
    if not reference_images(spec):  # the project's or its keys' own
        _refuse_without_reference(args, ("--ip-adapter", "--image-encoder"))
    adapter = args.ip_adapter or spec.ip_adapter
    # Another adapter may need another encoder: found again unless given.
    encoder = args.image_encoder or (None if args.ip_adapter else spec.image_encoder)
    return with_reference_models(replace(spec, ip_adapter=adapter, image_encoder=encoder))


def _model_overrides(args) -> list[tuple[str, bool]]:
    """The options that change a project's diffusion model, and whether each was given."""
    return [
        ("--vae", args.vae is not None),
        ("--clip-skip", args.clip_skip is not None),
        ("--controlnet", bool(args.controlnet)),
        ("--controlnet-steps", args.controlnet_steps is not None),
        ("--reference", args.reference is not None),
        ("--reference-strength", args.reference_strength is not None),
        ("--ip-adapter", args.ip_adapter is not None),
        ("--image-encoder", args.image_encoder is not None),
    ]


def _with_overrides(request, args):
    """Apply the command-line options that were given on top of the request."""
    from dataclasses import replace

    export = request.export
    if args.format is not None:
        export = replace(export, format=args.format)
    if args.crf is not None:
        export = replace(export, crf=args.crf)
    if args.no_audio:
        export = replace(export, audio=False)
    if args.alpha:
        export = replace(export, alpha=True)
    renderer = request.renderer
    if args.model is not None and args.style is not None:
        raise ZvsError("choose either --style (a weightless style) or --model (diffusion)")
    if args.model is not None:
        renderer = replace(renderer, kind="diffusion", diffusion=_diffusion_spec(args))
    elif any(given for _, given in _model_overrides(args)):  # on a project's model
        renderer = replace(renderer, diffusion=_project_model_overrides(renderer, args))
    if args.style is not None:
        renderer = replace(renderer, kind="stylize", style=args.style)
    if args.param:
        renderer = replace(renderer, params=renderer.params + _style_params(args.param))
    key_frames, key_interval = request.key_frames, request.key_interval
    if args.every is not None:
        key_frames, key_interval = (), args.every
    if args.keys is not None:
        key_frames, key_interval = _key_list(args.keys), None
    flow_preset = request.flow_preset if args.flow_preset is None else args.flow_preset
    first = request.first if args.first is None else args.first
    last = request.last if args.last is None else args.last
    propagation = request.propagation
    if args.synthesis is not None:
        propagation = replace(propagation, synthesis=args.synthesis)
    if args.poisson is not None:
        propagation = replace(propagation, poisson=args.poisson)
    propagation = replace(propagation, device=_pixel_device(args.device))
    spaced = key_interval is not None or (renderer.kind == "diffusion" and not key_frames)
    if args.placement == "motion" and (key_frames or not spaced):
        _warn("--placement places the keys of --every K; with these keys it changes nothing")
    return replace(
        request,
        propagation=propagation,
        export=export,
        renderer=renderer,
        first=first,
        last=last,
        key_frames=key_frames,
        key_interval=key_interval,
        key_placement=args.placement or request.key_placement,
        flow_preset=flow_preset,
        flow_estimator=args.flow or request.flow_estimator,
        short_side=request.short_side if args.size is None else args.size,
        matte=_matte(args, request.matte),
    )


def _key_list(text: str) -> tuple[int, ...]:
    from zvstudio.errors import ZvsError

    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ZvsError(
            f"--keys {text!r} is not a list of frame numbers", hint="e.g. --keys 0,12,40"
        ) from None


def _style_params(items: list[str]) -> tuple[tuple[str, str], ...]:
    """NAME=VALUE strings as pairs; the style converts each value to its parameter's type."""
    from zvstudio.errors import ZvsError

    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ZvsError(f"--param {item!r} is not NAME=VALUE", hint="e.g. --param colors=6")
        pairs.append((name.strip(), value.strip()))
    return tuple(pairs)


class _cancel_on_ctrl_c:
    """The first Ctrl+C asks the render to stop at the next frame; a second one aborts."""

    def __init__(self, cancel: CancelToken) -> None:
        self.cancel = cancel

    def __enter__(self) -> None:
        self.previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, *_: object) -> None:
        if self.cancel.cancelled:
            raise KeyboardInterrupt
        self.cancel.cancel()
        print("\nzvstudio: cancelling (Ctrl+C again to abort at once)...", file=sys.stderr)

    def __exit__(self, *_: object) -> None:
        signal.signal(signal.SIGINT, self.previous)


class ProgressBar:
    """A one-line progress bar on stderr with stage, frames, speed and ETA."""

    def __init__(self, enabled: bool = True, width: int = 28) -> None:
        self.enabled = enabled
        self.width = width
        self.tty = sys.stderr.isatty()
        self.clock = EtaClock()  # per stage: keys and frames go at different rates
        self._last_print = 0.0
        self._shown = False

    def __call__(self, event: Progress) -> None:
        if not self.enabled or event.total <= 0 or (event.done == 0 and not self.tty):
            return
        now = time.monotonic()
        final = event.done >= event.total
        # On a terminal redraw often; in a log write a line every few seconds.
        if now - self._last_print < (0.1 if self.tty else 5.0) and not final:
            return
        self._last_print = now
        filled = int(self.width * event.fraction)
        eta = self.clock.eta(event.stage, event.done, event.total) or 0.0
        elapsed = self.clock.elapsed(event.stage)
        # A stage that reports only its end (encode) has no meaningful rate.
        speed = f"{event.done / elapsed:5.1f}/s" if elapsed > 0.5 else "    -  "
        line = (
            f"{event.stage:<8} [{'#' * filled}{'.' * (self.width - filled)}] "
            f"{event.done}/{event.total}  {speed}  ETA {_clock(eta)}"
        )
        print(
            ("\r" if self.tty else "") + line,
            end="" if self.tty else "\n",
            file=sys.stderr,
            flush=True,
        )
        self._shown = True

    def finish(self) -> None:
        if self.enabled and self.tty and self._shown:
            print(file=sys.stderr)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


# -- extract ----------------------------------------------------------------------------------
def _add_extract(commands) -> None:
    parser = commands.add_parser(
        "extract",
        help="write a clip's key frames as PNGs to paint over (then propagate --keys-from)",
    )
    parser.add_argument("video", type=Path, help=CLIP_HELP)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--keys", metavar="N,M,...", help="these frames (0-based)")
    which.add_argument(
        "--every",
        type=int,
        metavar="K",
        help="a frame every K frames, counted again from each shot cut",
    )
    parser.add_argument(
        "--placement",
        choices=("even", "motion"),
        default="even",
        help="where --every puts its frames: even (the default) or motion (as many frames, "
        "placed where the motion needs them)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="folder for frame_NNNNNN.png files (named by frame; files already there are kept)",
    )
    parser.set_defaults(command="extract", run=_run_extract)


def _run_extract(args) -> int:
    from zvstudio.engine.painting import write_frames_for_painting
    from zvstudio.errors import ZvsError
    from zvstudio.media import VideoReader, probe

    info = probe(args.video)
    last = info.frame_count - 1
    if args.keys is not None:
        frames = sorted(set(_key_list(args.keys)))
        outside = [f for f in frames if not 0 <= f <= last]
        if outside:
            raise ZvsError(f"--keys: frames {outside} are outside the clip's frames 0..{last}")
        if not frames:
            raise ZvsError("--keys lists no frames", hint="e.g. --keys 0,12,40")
    else:
        frames = _frames_every(args, info)
    with VideoReader(args.video, info=info) as reader:
        images = ((frame, reader.frame(frame)) for frame in frames)
        result = write_frames_for_painting(args.output, images)
    listed = ", ".join(map(str, result.written)) or "none"
    print(f"wrote {len(result.written)} frames to {args.output}: {listed}")
    if result.kept:
        kept = ", ".join(map(str, result.kept))
        print(f"kept {len(result.kept)} files already there (frames {kept})")
    print(f"paint them, then: zvstudio propagate {args.video} --keys-from {args.output} -o OUT")
    return 0


def _frames_every(args, info) -> list[int]:
    """Frames every K (`args.every`) from each shot cut, or as many placed by motion."""
    from zvstudio.engine.shots import analyse_motion, clip_cuts
    from zvstudio.errors import ZvsError
    from zvstudio.media import clip_hash
    from zvstudio.media.cuts import keys_by_shot
    from zvstudio.propagate.placement import max_gap

    if args.every < 1:
        raise ZvsError(f"--every needs an interval of at least 1, got {args.every}")
    last = info.frame_count - 1
    if args.placement == "motion":
        analysis = analyse_motion(args.video, 0, last, max_gap(args.every), info)
        return list(analysis.keys(args.every))
    cuts = clip_cuts(args.video, clip_hash(args.video), 0, last, info)
    return list(keys_by_shot(0, last, args.every, cuts))


# -- propagate --------------------------------------------------------------------------------
def _add_propagate(commands) -> None:
    from zvstudio.flow import DIS_PRESETS
    from zvstudio.media import FORMATS
    from zvstudio.propagate.segment import BLEND_MODES

    parser = commands.add_parser(
        "propagate", help="carry rendered or hand-painted key frames to every frame of a clip"
    )
    parser.add_argument("video", type=Path, help=CLIP_HELP)
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="N=IMAGE",
        help="frame N (0-based) looks like IMAGE (repeat for more keys)",
    )
    parser.add_argument(
        "--keys-from",
        type=Path,
        metavar="FOLDER",
        help="every image in FOLDER named by its frame number (frame_000120.png) is a key; "
        "--key wins where both give a frame",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output .mp4/.mov/.mkv (audio kept), or a folder for PNG frames",
    )
    parser.add_argument(
        "--blend",
        choices=BLEND_MODES,
        default="soft",
        help="soft: error-weighted (default); histogram: EbSynth/Rerender's",
    )
    parser.add_argument(
        "--no-reanchor", action="store_true", help="follow chained frame-to-frame flow only"
    )
    parser.add_argument(
        "--flow-preset",
        choices=tuple(DIS_PRESETS),
        default="fine",
        help="optical-flow quality (default fine)",
    )
    parser.add_argument(
        "--error-window",
        type=int,
        default=7,
        help="window (pixels) over which guide errors are measured",
    )
    _add_synthesis_option(parser)
    _add_matte_options(parser)
    parser.add_argument(
        "--device",
        default="auto",
        help="where the per-pixel work and the patch search run: auto (a CUDA GPU if there is "
        "one), cpu, cuda, cuda:N (mps: the patch search only)",
    )
    _add_patch_options(parser)
    parser.add_argument(
        "--size",
        type=int,
        default=0,
        metavar="PIXELS",
        help="propagate and export at most this many pixels on the short side, e.g. 720 for a "
        "4K clip; keys painted at the clip's size are scaled down (default: the clip's size)",
    )
    parser.add_argument("--format", choices=FORMATS, help=FORMAT_HELP)
    parser.add_argument("--crf", type=int, default=18, help="H.264/H.265 quality (default 18)")
    parser.add_argument("--no-audio", action="store_true", help="leave the audio out")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(command="propagate", run=_run_propagate)


def _add_synthesis_option(parser) -> None:
    from zvstudio.propagate.segment import SYNTHESIS_MODES

    parser.add_argument(
        "--synthesis",
        choices=SYNTHESIS_MODES,
        help="flow: warp the keys along the optical flow (default, fastest); patch: also "
        "rebuild what the flow cannot explain from the keys' patches (EbSynth's method)",
    )
    parser.add_argument(
        "--poisson",
        action=argparse.BooleanOptionalAction,
        help="screened-Poisson fusion after blending the two keys: the detail of the nearer "
        "key's result with the blend's colours",
    )


def _add_matte_options(parser, keys: bool = False) -> None:
    """The matte options; with `keys` (a render that renders keys) also --matte-crop."""
    parser.add_argument(
        "--matte",
        type=Path,
        metavar="CLIP",
        help="show the render only where this matte is white (or opaque), the original "
        "footage elsewhere: a video or an image sequence with one frame per frame of the clip",
    )
    parser.add_argument(
        "--matte-invert", action="store_true", help="show the render where the matte is black"
    )
    parser.add_argument(
        "--matte-feather",
        type=float,
        default=0.0,
        metavar="PX",
        help="soften the matte's edge by this many pixels (default 0)",
    )
    if keys:
        parser.add_argument(
            "--matte-crop",
            action="store_true",
            help="render each key's matte area (with a margin) at the size of the whole frame: "
            "more detail on a small subject, as 'inpaint only masked' does",
        )
    parser.add_argument(
        "--alpha",
        action="store_true",
        help="write the matte as the output's alpha channel instead of putting the render over "
        "the original: ProRes 4444 (--format prores, a .mov) or PNG, TIFF or EXR frames",
    )


def _matte(args, current=None):
    """The matte the options give, else `current` (a project's) with the options given."""
    from dataclasses import replace

    from zvstudio.media.matte import MatteSpec

    crop = getattr(args, "matte_crop", False)
    if args.matte is not None:
        return MatteSpec(args.matte, args.matte_invert, args.matte_feather, crop)
    if current is None:
        if args.matte_invert or args.matte_feather or crop:
            _warn(
                "--matte-invert, --matte-feather and --matte-crop need a matte; they change nothing"
            )
        return None
    return replace(
        current,
        invert=current.invert or args.matte_invert,
        feather=args.matte_feather or current.feather,
        crop=current.crop or crop,
    )


def _add_patch_options(parser) -> None:
    from zvstudio.propagate.synthesis_settings import SynthesisSettings

    default = SynthesisSettings()
    weights = ", ".join(f"{k} {v:g}" for k, v in vars(default.weights).items())
    patch = parser.add_argument_group("guided patch synthesis (with --synthesis patch)")
    patch.add_argument(
        "--patch-size",
        type=int,
        default=default.patch_size,
        help="odd, pixels (default %(default)s)",
    )
    patch.add_argument(
        "--levels", type=int, default=default.levels, help="pyramid levels (default %(default)s)"
    )
    patch.add_argument(
        "--iterations",
        type=int,
        default=default.em_iterations,
        help="search-vote rounds per level (default %(default)s)",
    )
    patch.add_argument(
        "--patchmatch-iterations",
        type=int,
        default=default.patchmatch_iterations,
        help="PatchMatch iterations per round (default %(default)s)",
    )
    patch.add_argument(
        "--guide-weights",
        metavar="NAME=W,...",
        default="",
        help=f"guide weights to change (defaults: {weights})",
    )
    patch.add_argument(
        "--uniformity",
        type=float,
        default=default.uniformity,
        help="cost of reusing a key patch (default %(default)s)",
    )


def _patch_settings(args):
    """SynthesisSettings from `zvstudio propagate`'s patch options."""
    from dataclasses import fields

    from zvstudio.errors import ZvsError
    from zvstudio.propagate.synthesis_settings import GuideWeights, SynthesisSettings

    if args.patch_size < 1 or args.patch_size % 2 == 0:
        raise ZvsError(f"--patch-size must be an odd number >= 1, got {args.patch_size}")
    for name in ("levels", "iterations", "patchmatch_iterations"):
        if getattr(args, name) < 1:
            raise ZvsError(f"--{name.replace('_', '-')} must be at least 1")
    if args.uniformity < 0:
        raise ZvsError("--uniformity must not be negative")
    names = {f.name for f in fields(GuideWeights)}
    weights = {}
    for item in filter(None, (part.strip() for part in args.guide_weights.split(","))):
        name, _, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if name not in names or weight < 0:
            raise ZvsError(
                f"--guide-weights: {item!r} is not NAME=WEIGHT",
                hint=f"names: {', '.join(sorted(names))}; weights >= 0, e.g. colour=6,edge=0.5",
            )
        weights[name] = weight
    device = "cpu"
    if args.synthesis == "patch":
        from zvstudio.engine.device import TorchProbe, resolve_device

        device = resolve_device(args.device, TorchProbe())
    return SynthesisSettings(
        device=device,
        patch_size=args.patch_size,
        levels=args.levels,
        em_iterations=args.iterations,
        patchmatch_iterations=args.patchmatch_iterations,
        uniformity=args.uniformity,
        weights=GuideWeights(**weights),
    )


def _run_propagate(args) -> int:
    from zvstudio.engine.propagation import PropagateRequest, propagate_video
    from zvstudio.media import ExportSettings, format_for
    from zvstudio.propagate.segment import PropagationSettings

    if args.error_window < 1 or args.error_window % 2 == 0:
        from zvstudio.errors import ZvsError

        raise ZvsError(f"--error-window must be an odd number >= 1, got {args.error_window}")
    fmt = args.format or format_for(args.output)
    request = PropagateRequest(
        source=args.video,
        keys=_propagated_keys(args),
        output=args.output,
        settings=PropagationSettings(
            reanchor=not args.no_reanchor,
            blend=args.blend,
            error_window=args.error_window,
            synthesis=args.synthesis or "flow",
            poisson=bool(args.poisson),
            patch=_patch_settings(args),
            device=_pixel_device(args.device),
        ),
        export=ExportSettings(format=fmt, crf=args.crf, audio=not args.no_audio, alpha=args.alpha),
        flow_preset=args.flow_preset,
        short_side=args.size,
        matte=_matte(args),
    )
    result = _run_job(
        args, lambda progress, cancel: propagate_video(request, progress, cancel, _warn)
    )
    _print_written(result)
    return 0


def _propagated_keys(args) -> dict[int, Path]:
    """The keys of `propagate`: those of --keys-from, then those of --key."""
    from zvstudio.errors import ZvsError

    keys: dict[int, Path] = {}
    if args.keys_from is not None:
        from zvstudio.engine.painting import PAINT_NAME, as_exported, paintings_in
        from zvstudio.media import VideoReader, probe

        info = probe(args.video)
        with VideoReader(args.video, info=info) as reader:
            found = paintings_in(args.keys_from, info.frame_count, as_exported(reader.frame))
        if found.untouched:
            listed = ", ".join(map(str, found.untouched))
            _warn(f"left out {len(found.untouched)} images still as extracted: frames {listed}")
        if found.outside:
            names = ", ".join(path.name for path in found.outside[:4])
            _warn(f"ignored {len(found.outside)} images past the clip's last frame: {names}")
        if not found.by_frame and not args.key:
            raise ZvsError(
                f"no keys in {args.keys_from}",
                hint=f"name each painted key by its frame number, e.g. {PAINT_NAME.format(120)}",
            )
        keys.update(found.by_frame)
    elif not args.key:
        raise ZvsError("no keys given", hint="use --key N=IMAGE or --keys-from FOLDER")
    keys.update(_parse_keys(args.key))
    return dict(sorted(keys.items()))


def _pixel_device(requested: str) -> str:
    """The propagation's device: "auto" and "cpu" as they are, a GPU checked against the
    machine (a clear error when it is not there)."""
    if requested.strip().lower() in ("auto", "cpu"):
        return requested.strip().lower()
    from zvstudio.engine.device import TorchProbe, resolve_device

    return resolve_device(requested, TorchProbe())


def _parse_keys(items: list[str]) -> dict[int, Path]:
    from zvstudio.errors import ZvsError

    keys: dict[int, Path] = {}
    for item in items:
        number, sep, image = item.partition("=")
        if not sep or not number.strip().lstrip("-").isdigit() or not image:
            raise ZvsError(f"--key {item!r} is not N=IMAGE", hint="e.g. --key 0=key0.png")
        if int(number) in keys:
            raise ZvsError(f"frame {int(number)} is given twice with --key")
        keys[int(number)] = Path(image)
    return keys


# -- preview ----------------------------------------------------------------------------------
def _add_diffusion_options(parser, model_required: bool) -> None:
    """Options of the diffusion key renderer, shared by `preview` and `render`."""
    _add_model_options(parser, model_required)
    parser.add_argument("--prompt", default="", help="what the frames should look like")
    parser.add_argument("--negative", default="", help="what they should not look like")
    parser.add_argument(
        "--strength",
        type=float,
        default=0.75,
        help="how much to change the frames, 0-1 (default 0.75)",
    )
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    parser.add_argument("--cfg", type=float, default=7.5, help="guidance scale (default 7.5)")
    parser.add_argument("--seed", type=int, default=0)
    from zvstudio.keyrender import DEFAULT_KEY_SIZE

    parser.add_argument(
        "--key-size",
        type=int,
        default=DEFAULT_KEY_SIZE,
        metavar="PIXELS",
        help="render keys at most this many pixels on their short side, then scale them to the "
        f"frame's size (default {DEFAULT_KEY_SIZE}, what SD1.5 was trained at; 0: the frame's "
        "own size)",
    )
    parser.add_argument(
        "--controlnet-steps",
        metavar="START,END",
        help="where the ControlNets guide, as fractions of the steps a key runs (default 0,1: "
        "all; 0,0.6 holds the structure early and leaves the details free), as A1111's "
        "Starting and Ending Control Step",
    )
    _add_reference_options(parser)


def _add_reference_options(parser) -> None:
    from zvstudio.diffusion.ip_adapter import DEFAULT_REFERENCE_SCALE

    parser.add_argument(
        "--reference",
        type=Path,
        metavar="IMAGE",
        help="a reference image every key takes its look from (an IP-Adapter: "
        "ip-adapter_sd15.safetensors and its image_encoder folder, found in your model folders)",
    )
    parser.add_argument(
        "--reference-strength",
        type=float,
        metavar="W",
        help=f"how strongly keys follow the reference image (default {DEFAULT_REFERENCE_SCALE};"
        " 1 follows it closely, lower leaves more to the prompt)",
    )
    parser.add_argument(
        "--ip-adapter", type=Path, metavar="PATH", help="the IP-Adapter file to use"
    )
    parser.add_argument(
        "--image-encoder",
        type=Path,
        metavar="PATH",
        help="the IP-Adapter's CLIP vision encoder (a folder or .safetensors file)",
    )


def _add_model_options(
    parser, model_required: bool, controlnet_default: float | None = 0.7
) -> None:
    """Which model files to load and where to run them: shared by every diffusion command."""
    parser.add_argument(
        "--model",
        type=Path,
        required=model_required,
        help="an SD1.x checkpoint (.safetensors) or diffusers folder",
    )
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:WEIGHT]",
        help="apply a LoRA (repeatable), e.g. --lora ink.safetensors:0.8",
    )
    parser.add_argument(
        "--vae",
        type=Path,
        help="a VAE file or folder to use instead of the model's own (for example "
        "vae-ft-mse-840000-ema-pruned.safetensors, when a model's colours look washed out)",
    )
    parser.add_argument(
        "--clip-skip",
        type=int,
        metavar="N",
        help="read the prompt from CLIP's Nth layer from the end (default 1, the last; 2 for "
        "models trained on the penultimate layer, as most anime models are), as A1111's "
        "'Clip skip'",
    )
    if controlnet_default is None:  # this command takes no ControlNet
        parser.set_defaults(controlnet=[])
    else:
        _add_controlnet_option(parser, controlnet_default)
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--precision",
        choices=("auto", "float16", "bfloat16", "float32"),
        default="auto",
        help="model precision (default: float16 on a GPU, float32 on the CPU)",
    )
    parser.add_argument(
        "--memory-limit",
        type=float,
        metavar="GB",
        help="GPU memory the render may use (default: what is free); less offloads models",
    )
    parser.add_argument(
        "--offload",
        choices=("auto", "none", "model", "sequential"),
        default="auto",
        help="keep models in RAM and move them to the GPU when used (default: only if needed)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow pickled .ckpt files (they can run code: only trusted ones)",
    )
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)  # tests: tiny models


def _add_controlnet_option(parser, default_scale: float) -> None:
    parser.add_argument(
        "--controlnet",
        action="append",
        default=[],
        metavar="PATH[:SCALE]",
        help="a ControlNet: an annotator name such as 'canny' (found in your model folders), "
        f"a .safetensors file or a diffusers folder, with an optional :SCALE "
        f"(default {default_scale}); repeat it to guide by several at once, e.g. "
        "--controlnet canny:0.6 --controlnet depth:0.4",
    )


def _diffusion_spec(args):
    """The DiffusionSpec the diffusion options describe."""
    from zvstudio.diffusion.control import ALL_STEPS
    from zvstudio.diffusion.sampler import KeySettings
    from zvstudio.engine.preview import control_fields
    from zvstudio.errors import ZvsError

    if not 0 <= args.strength <= 1:
        raise ZvsError(f"--strength must be between 0 and 1, got {args.strength}")
    if args.steps < 1:
        raise ZvsError(f"--steps must be at least 1, got {args.steps}")
    if args.key_size < 0:
        raise ZvsError(f"--key-size must be 0 (the frame's size) or more, got {args.key_size}")
    choices = _controlnet_choices(args, default_scale=0.7)
    settings = KeySettings(
        **control_fields(choices, 0.7),
        prompt=args.prompt,
        negative_prompt=args.negative,
        steps=args.steps,
        guidance_scale=args.cfg,
        strength=args.strength,
        seed=args.seed,
        key_size=args.key_size,
        clip_skip=args.clip_skip or 1,
        control_steps=_control_steps(args) or ALL_STEPS,
        **_reference_fields(args),
    )
    return _model_spec(args, settings, choices)


def _reference_fields(args) -> dict:
    """The settings fields of --reference and --reference-strength (none when not given)."""
    if args.reference is None:
        _refuse_without_reference(args, ("--reference-strength", "--ip-adapter", "--image-encoder"))
        return {}
    if not args.reference.is_file():
        raise ZvsError(f"reference image not found: {args.reference}")
    fields = {"reference_image": str(args.reference.resolve())}
    if args.reference_strength is not None:
        fields["reference_scale"] = args.reference_strength
    return fields


def _refuse_without_reference(args, options: Sequence[str]) -> None:
    """Refuse the first of `options` that was given, when there is no reference image."""
    for option in options:
        if getattr(args, option.removeprefix("--").replace("-", "_")) is not None:
            raise ZvsError(f"{option} is for a reference image: give --reference IMAGE too")


def _control_steps(args) -> tuple[float, float] | None:
    """The --controlnet-steps range, or None when not given."""
    if args.controlnet_steps is None:
        return None
    return _pair(args.controlnet_steps, "--controlnet-steps", "0,0.6")


def _controlnet_choices(args, default_scale: float) -> list:
    """The ControlNets the --controlnet options name, in order: each a `ControlNetChoice`
    (path, scale, annotator)."""
    from zvstudio.engine.preview import choose_controlnet

    choices = [choose_controlnet(spec, default_scale) for spec in args.controlnet]
    for choice in choices:
        if choice.note:
            print(f"zvstudio: note: {choice.note}", file=sys.stderr)
    return choices


def _model_spec(args, settings, controlnets):
    """The DiffusionSpec of the model options, with `settings` for the key renderer."""
    from zvstudio.diffusion.lora import LoraSpec
    from zvstudio.engine.preview import DiffusionSpec, with_reference_models

    spec = DiffusionSpec(
        args.model,
        settings,
        tuple(LoraSpec.parse(t) for t in args.lora),
        tuple(choice.path for choice in controlnets),
        args.device,
        args.allow_pickle,
        args.config,
        args.precision,
        args.memory_limit,
        args.offload,
        vae=args.vae,
        ip_adapter=getattr(args, "ip_adapter", None),
        image_encoder=getattr(args, "image_encoder", None),
    )
    return with_reference_models(spec)


# -- preview ----------------------------------------------------------------------------------
def _add_preview(commands) -> None:
    parser = commands.add_parser("preview", help="render one key frame with a diffusion model")
    parser.add_argument("video", type=Path, help=CLIP_HELP)
    parser.add_argument("--frame", type=int, default=0, help="the frame to render (0-based)")
    _add_diffusion_options(parser, model_required=True)
    parser.add_argument("-o", "--output", type=Path, required=True, help="the PNG to write")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="render the key with N seeds from --seed on, to choose one: OUT_seedS.png each",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(command="preview", run=_run_preview)


def _run_preview(args) -> int:
    from zvstudio.engine.preview import PreviewRequest, render_preview

    request = PreviewRequest(
        args.video, args.frame, args.output, _diffusion_spec(args), seeds=args.seeds
    )
    for warning in _run_job(
        args, lambda progress, cancel: render_preview(request, progress, cancel)
    ):
        _warn(warning)
    for _, output in request.outputs():
        print(f"wrote {output}")
    return 0


# -- generate / animate -----------------------------------------------------------------------
def _add_generation_options(
    parser, frames: int | str, steps: int | str, seed: int | str = 0
) -> None:
    """Options that the generators share (besides the model options). A default given as
    text is described, not set: the command fills it in (it depends on other options)."""
    from zvstudio.media import FORMATS

    def default(value):
        return value if isinstance(value, int) else None

    parser.add_argument("--prompt", default="", help="what the clip should show")
    parser.add_argument("--negative", default="", help="what it should not show")
    parser.add_argument(
        "--frames", type=int, default=default(frames), help=f"frames (default {frames})"
    )
    parser.add_argument(
        "--steps", type=int, default=default(steps), help=f"DDIM steps (default {steps})"
    )
    parser.add_argument("--cfg", type=float, default=7.5, help="guidance scale (default 7.5)")
    parser.add_argument("--seed", type=int, default=default(seed), help=f"(default {seed})")
    parser.add_argument(
        "--fps", type=Fraction, default=Fraction(8), help="frame rate of the clip (default 8)"
    )
    parser.add_argument("--format", choices=FORMATS, help=FORMAT_HELP)
    parser.add_argument("--crf", type=int, default=18, help="H.264/H.265 quality (default 18)")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="output video, or a folder for PNGs"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_generate(commands) -> None:
    parser = commands.add_parser(
        "generate",
        help="make a clip from a prompt (Text2Video-Zero), or from a clip's edges with --video",
    )
    _add_model_options(parser, model_required=True, controlnet_default=1.0)
    _add_reference_options(parser)
    _add_generation_options(parser, frames=8, steps=50)
    parser.add_argument("--width", type=int, help="multiple of 8 (default 512, or the video's)")
    parser.add_argument("--height", type=int, help="multiple of 8 (default 512, or the video's)")
    parser.add_argument(
        "--motion-field",
        default="12,12",
        metavar="DX,DY",
        help="camera motion per frame in pixels of a 512 px frame (default 12,12; 0,0: none)",
    )
    parser.add_argument(
        "--chunk", type=int, default=8, help="frames denoised together, frame 0 included (8)"
    )
    parser.add_argument(
        "--smooth-background",
        type=float,
        nargs="?",
        const=0.6,
        default=0.0,
        metavar="STRENGTH",
        help="hold the background still as the camera moves: each frame's background is pulled "
        "towards frame 0's by STRENGTH (0.6 when not given); the clip is denoised twice and "
        "needs a local ADE20K segmentation model to find the foreground",
    )
    parser.add_argument(
        "--video",
        type=Path,
        help="follow this clip's first frames through the ControlNet (--controlnet), or edit "
        "them with an InstructPix2Pix --model (the prompt is the instruction); its timing and "
        "audio are kept",
    )
    parser.add_argument(
        "--image-cfg",
        type=float,
        default=1.5,
        help="InstructPix2Pix: how closely the frames keep the input clip (default 1.5)",
    )
    parser.set_defaults(command="generate", run=_run_generate)


def _run_generate(args) -> int:
    from zvstudio.diffusion.sampler import KeySettings
    from zvstudio.engine.preview import control_fields
    from zvstudio.generate.jobs import (
        TextToVideoRequest,
        generate_text_to_video,
        input_clip_size,
    )
    from zvstudio.generate.t2v_zero import TextToVideoSettings

    if not args.prompt.strip():
        raise ZvsError(
            "give a --prompt: what the clip shows (with an InstructPix2Pix model, the "
            "instruction, e.g. 'make it winter')"
        )
    choices = _controlnet_choices(args, default_scale=1.0)
    if args.video is not None and not args.video.is_file():
        raise ZvsError(f"video not found: {args.video}")
    width, height = input_clip_size(args.video) if args.video else (512, 512)
    settings = TextToVideoSettings(
        prompt=args.prompt,
        negative_prompt=args.negative,
        clip_skip=args.clip_skip or 1,
        frames=args.frames,
        steps=args.steps,
        guidance_scale=args.cfg,
        seed=args.seed,
        width=args.width or width,
        height=args.height or height,
        motion_field=_pair(args.motion_field, "--motion-field"),
        chunk_size=args.chunk,
        smooth_background=args.smooth_background,
        **control_fields(choices, 1.0),
        image_guidance_scale=args.image_cfg,
    )
    request = TextToVideoRequest(
        _model_spec(args, KeySettings(**_reference_fields(args)), choices),
        settings,
        args.output,
        video=args.video,
        fps=args.fps,
        export=_generation_export(args, audio=True),
    )
    result = _run_job(
        args, lambda progress, cancel: generate_text_to_video(request, progress, cancel, _say)
    )
    _print_written(result)
    return 0


def _add_animate(commands) -> None:
    parser = commands.add_parser(
        "animate",
        help="animate a still image (AnimateZero with an AnimateDiff motion module, or "
        "DynamiCrafter)",
    )
    parser.add_argument(
        "image",
        nargs="?",
        type=Path,
        help="the image to animate (AnimateZero: default, make one from --prompt)",
    )
    parser.add_argument(
        "--engine",
        choices=("animatezero", "dynamicrafter"),
        default="animatezero",
        help="animatezero (default): an SD1.x --model with a --motion-adapter; dynamicrafter: "
        "a DynamiCrafter checkpoint as --model",
    )
    _add_model_options(parser, model_required=True, controlnet_default=None)
    parser.add_argument(
        "--motion-adapter",
        type=Path,
        metavar="PATH",
        help="AnimateZero: an AnimateDiff motion module for SD1.5 (mm_sd_v15_v2.safetensors or "
        "a folder)",
    )
    _add_generation_options(parser, frames=16, steps="25; DynamiCrafter 50", seed="0; 123")
    parser.add_argument("--width", type=int, default=512, help="of a generated still (512)")
    parser.add_argument("--height", type=int, default=512, help="of a generated still (512)")
    parser.add_argument(
        "--window",
        default="all",
        help="AnimateZero: motion modules with causal window attention: all (default), none, "
        "down, mid, up, or block names, comma-separated",
    )
    parser.add_argument(
        "--window-length",
        type=int,
        help="AnimateZero: frames each frame attends to (default: all before it)",
    )
    parser.add_argument(
        "--preset",
        choices=("256", "512", "1024", "512_interp"),
        help="DynamiCrafter: which release the checkpoint is (default: from its file name)",
    )
    parser.add_argument(
        "--mode",
        choices=("animate", "interpolate", "loop"),
        help="DynamiCrafter: animate the image (default), interpolate to --last-image, or loop "
        "back to the image (the interpolation model)",
    )
    parser.add_argument("--last-image", type=Path, help="DynamiCrafter: the frame to end on")
    parser.add_argument(
        "--fs",
        type=int,
        help="DynamiCrafter: its motion number, frames per second (512/1024/interp; lower "
        "moves more) or frame stride (256; higher moves more); default the release's",
    )
    parser.add_argument(
        "--guidance-rescale",
        type=float,
        help="DynamiCrafter: guidance rescale 0-1 (default 0.7, 0 for the 256 model)",
    )
    parser.set_defaults(command="animate", run=_run_animate)


def _run_animate(args) -> int:
    if args.engine == "dynamicrafter":
        return _run_dynamicrafter(args)
    from zvstudio.diffusion.sampler import KeySettings
    from zvstudio.generate.animate_zero import AnimateSettings
    from zvstudio.generate.jobs import AnimateRequest, animate_image

    _refuse_other_engines_options(
        args, "animatezero", ("preset", "mode", "last_image", "fs", "guidance_rescale")
    )
    if args.motion_adapter is None:
        raise ZvsError("AnimateZero needs a motion module: --motion-adapter PATH")
    if args.image is None and not args.prompt:
        raise ZvsError("give an image to animate, or a --prompt to make one")
    settings = AnimateSettings(
        prompt=args.prompt,
        negative_prompt=args.negative,
        clip_skip=args.clip_skip or 1,
        frames=args.frames or 16,
        steps=args.steps or 25,
        guidance_scale=args.cfg,
        seed=0 if args.seed is None else args.seed,
        window=args.window,
        window_length=args.window_length,
        width=args.width,
        height=args.height,
    )
    request = AnimateRequest(
        _model_spec(args, KeySettings(), []),
        args.motion_adapter,
        settings,
        args.output,
        image=args.image,
        fps=args.fps,
        export=_generation_export(args, audio=False),
    )
    result = _run_job(args, lambda progress, cancel: animate_image(request, progress, cancel, _say))
    _print_written(result)
    return 0


def _run_dynamicrafter(args) -> int:
    from zvstudio.generate.dynamicrafter.job import DynamiCrafterRequest, animate_dynamicrafter
    from zvstudio.generate.dynamicrafter.sampler import DynamiCrafterSettings

    _refuse_other_engines_options(args, "dynamicrafter", ("motion_adapter", "window_length"))
    if args.image is None:
        raise ZvsError("DynamiCrafter animates an image: give one")
    if args.lora:
        raise ZvsError("DynamiCrafter takes no LoRAs")
    if args.vae:
        raise ZvsError("DynamiCrafter uses its own VAE: --vae is for SD1.x models")
    if args.clip_skip is not None:
        raise ZvsError("DynamiCrafter reads its prompt its own way: --clip-skip is for SD1.x")
    settings = DynamiCrafterSettings(
        prompt=args.prompt,
        negative_prompt=args.negative,
        frames=args.frames or 16,
        steps=args.steps or 50,
        guidance_scale=args.cfg,
        guidance_rescale=args.guidance_rescale,
        seed=123 if args.seed is None else args.seed,
        fs=args.fs,
        mode=args.mode or "animate",
    )
    request = DynamiCrafterRequest(
        args.model,
        args.preset,
        settings,
        args.image,
        args.output,
        last_image=args.last_image,
        device=args.device,
        precision=args.precision,
        allow_pickle=args.allow_pickle,
        fps_out=args.fps,
        export=_generation_export(args, audio=False),
    )
    result = _run_job(
        args, lambda progress, cancel: animate_dynamicrafter(request, progress, cancel, _say)
    )
    _print_written(result)
    return 0


def _refuse_other_engines_options(args, engine: str, names: Sequence[str]) -> None:
    """An option of the other engine is a mistake worth saying, not something to ignore."""
    given = [n for n in names if getattr(args, n) is not None]
    if given:
        option = "--" + given[0].replace("_", "-")
        raise ZvsError(f"{option} is not an option of the {engine} engine")


def _generation_export(args, audio: bool):
    from zvstudio.media import ExportSettings, format_for

    fmt = args.format or format_for(args.output)
    return ExportSettings(format=fmt, crf=args.crf, audio=audio)


def _pair(text: str, option: str, example: str = "12,12") -> tuple[float, float]:
    """ "DX,DY" as two numbers."""
    parts = text.split(",")
    try:
        x, y = (float(part) for part in parts)
    except ValueError:
        raise ZvsError(
            f"{option} {text!r} is not two numbers", hint=f"e.g. {option} {example}"
        ) from None
    return x, y


# -- versions ---------------------------------------------------------------------------------
def _add_versions(commands) -> None:
    parser = commands.add_parser(
        "versions", help="list the versions (looks kept to compare) of a project"
    )
    parser.add_argument("project", type=Path, help="a .zvs project")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(command="versions", run=_run_versions)


def _run_versions(args) -> int:
    from zvstudio.project import load_project
    from zvstudio.project.presets import describe
    from zvstudio.project.versions import differences, kept_when

    project = load_project(args.project)
    entries = [
        {
            "name": version.name,
            "kept": version.kept,
            "keys": len(version.keyframes),
            "does": describe(version.settings),
            "differs_in": differences(project, version),
        }
        for version in project.versions
    ]
    if args.json:
        print(json.dumps({"project": str(args.project), "versions": entries}, indent=2))
        return 0
    if not entries:
        print(f"{args.project} has no versions: keep one in the editor (Render > Versions)")
    for version, entry in zip(project.versions, entries, strict=True):
        now = ", ".join(entry["differs_in"]) or "nothing: it is the project's look now"
        print(f"{entry['name']} (kept {kept_when(version)}, {entry['keys']} keys)")
        print(f"  {entry['does']}")
        print(f"  differs from now in: {now}")
    return 0


# -- presets ----------------------------------------------------------------------------------
def _add_presets(commands) -> None:
    parser = commands.add_parser(
        "presets", help="list, save or delete render presets (a project's look, for other shots)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    actions = parser.add_subparsers(title="actions", metavar="ACTION", dest="action")
    save = actions.add_parser("save", help="save a project's render settings as a preset")
    save.add_argument("name", help="the preset's name")
    save.add_argument(
        "--from", dest="project", type=Path, required=True, help="the .zvs project to take"
    )
    delete = actions.add_parser("delete", help="delete a preset (its file is kept as .bak)")
    delete.add_argument("name")
    parser.set_defaults(command="presets", run=_run_presets)


def _run_presets(args) -> int:
    from zvstudio.project import load_project
    from zvstudio.project.presets import (
        delete_preset,
        describe,
        list_presets,
        preset_path,
        presets_folder,
        save_preset,
    )

    if args.action == "save":
        replaced = preset_path(args.name).is_file()
        preset = save_preset(args.name, load_project(args.project).settings)
        note = " (the previous one kept as .bak)" if replaced else ""
        print(f"{'replaced' if replaced else 'saved'} the preset {preset.name!r}{note}")
        return 0
    if args.action == "delete":
        delete_preset(args.name)
        print(f"deleted the preset {args.name!r}")
        return 0
    problems: list[str] = []
    presets = list_presets(problems)
    if args.json:
        entries = [
            {"name": p.name, "file": str(p.path), "does": describe(p.settings)} for p in presets
        ]
        report = {"folder": str(presets_folder()), "presets": entries, "problems": problems}
        print(json.dumps(report, indent=2))
        return 0
    print(f"presets in {presets_folder()}" + ("" if presets else ": none yet"))
    for preset in presets:
        print(f"  {preset.name}: {describe(preset.settings)}")
    for problem in problems:
        _warn(problem)
    return 0


# -- styles -----------------------------------------------------------------------------------
def _add_styles(commands) -> None:
    styles_parser = commands.add_parser("styles", help="list the weightless styles")
    styles_parser.set_defaults(command="styles", run=_run_styles)


def _run_styles(args) -> int:
    from zvstudio.stylize import available_styles, describe_style

    for name in available_styles():
        print(f"{name:<14} {describe_style(name)}")
    return 0


# -- models -----------------------------------------------------------------------------------
def _add_models(commands) -> None:
    parser = commands.add_parser(
        "models", help="list the checkpoints, LoRAs, ControlNets and VAEs found on this machine"
    )
    parser.add_argument(
        "--folder",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="also scan DIR (a models folder, or an AUTOMATIC1111 or ComfyUI "
        "install); repeatable; $ZVSTUDIO_MODELS works too",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--no-hash",
        action="store_true",
        help="skip the short hashes (reading every file the first time)",
    )
    parser.set_defaults(command="models", run=_run_models)


def _run_models(args) -> int:
    from zvstudio.diffusion.annotators import (
        BUILTIN_ANNOTATORS,
        local_annotator_files,
        weights_hint,
    )
    from zvstudio.diffusion.library import default_model_folders, format_table, scan
    from zvstudio.errors import ZvsError

    missing = [str(folder) for folder in args.folder if not folder.is_dir()]
    if missing:
        raise ZvsError(f"not a folder: {', '.join(missing)}")
    folders = default_model_folders(roots=args.folder)
    models = scan(folders)
    annotator_files = local_annotator_files(folders)
    if args.json:
        entries = [info.to_dict(include_hash=not args.no_hash) for info in models]
        report = {"folders": [str(f) for f in folders], "models": entries}
        print(json.dumps({**report, "annotators": annotator_files}, indent=2))
        return 0
    print("scanned: " + (", ".join(str(f) for f in folders) or "(no model folders found)"))
    print(format_table(models, hashes=not args.no_hash) if models else "no models found")
    print(f"ControlNet annotators: {', '.join(BUILTIN_ANNOTATORS)} (built in)")
    for name, path in annotator_files.items():
        where = path or f"not found: {weights_hint(name.split('/')[0])}"
        print(f"  {name}: {where}")
    return 0


# -- cache ------------------------------------------------------------------------------------
def _add_cache(commands) -> None:
    cache_parser = commands.add_parser(
        "cache", help="show the render cache (flows, keys, segments, ...) or clear it"
    )
    cache_parser.add_argument("--clear", action="store_true", help="delete everything cached")
    cache_parser.add_argument("--json", action="store_true", help="print JSON")
    cache_parser.set_defaults(command="cache", run=_run_cache)


def _run_cache(args) -> int:
    from zvstudio import diskcache
    from zvstudio.paths import cache_root

    freed = diskcache.clear() if args.clear else 0
    usage = diskcache.usage()
    report = {
        "folder": str(cache_root()),
        "limit_bytes": diskcache.cache_limit(),
        "bytes": usage,
        "total_bytes": sum(usage.values()),
        "freed_bytes": freed,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"cache folder  {report['folder']}")
    for kind, size in usage.items():
        print(f"  {kind:<10}  {_megabytes(size)}")
    total, limit = _megabytes(report["total_bytes"]), _megabytes(report["limit_bytes"])
    print(f"  {'total':<10}  {total} of {limit}")
    print("  (set ZVSTUDIO_CACHE_LIMIT_GB to change the limit; least recently used goes first)")
    if args.clear:
        print(f"cleared {_megabytes(freed)}")
    return 0


def _megabytes(size: int) -> str:
    return f"{size / (1 << 20):,.1f} MB"


# -- bench ------------------------------------------------------------------------------------
def _add_bench(commands) -> None:
    bench_parser = commands.add_parser("bench", help="benchmarks (print JSON)")
    which = bench_parser.add_subparsers(title="benchmarks", metavar="BENCHMARK", required=True)
    decode = which.add_parser("decode", help="sequential, random-access and preview decoding")
    decode.add_argument(
        "videos",
        nargs="*",
        type=Path,
        help="clips to measure (default: ../shared/clips and a 1080p clip)",
    )
    decode.add_argument("--samples", type=int, default=40, help="random frames per clip")
    decode.add_argument(
        "--no-1080p", action="store_true", help="skip the synthetic 1080p H.264 clip"
    )
    decode.set_defaults(command="bench", run=_run_bench_decode)
    export = which.add_parser(
        "export", help="writing frames in each export format, and matte compositing"
    )
    export.add_argument(
        "--size", default="1920x1080", metavar="WxH", help="frame size (default 1920x1080)"
    )
    export.add_argument("--frames", type=int, default=24, help="frames per format (default 24)")
    export.set_defaults(command="bench", run=_run_bench_export)
    from zvstudio.flow import DIS_PRESETS

    propagate = which.add_parser("propagate", help="key propagation: seconds/frame and fidelity")
    propagate.add_argument(
        "videos", nargs="*", type=Path, help="clips to measure (default: ../shared/clips)"
    )
    propagate.add_argument("--size", type=int, default=512, help="short side in pixels")
    propagate.add_argument("--frames", type=int, default=31, help="frames per clip")
    propagate.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    propagate.add_argument(
        "--flow-preset",
        choices=tuple(DIS_PRESETS),
        default="fine",
        help="optical-flow quality (default fine)",
    )
    _add_synthesis_option(propagate)
    propagate.add_argument("--no-1080p", action="store_true", help="skip the 1080p timing")
    propagate.set_defaults(command="bench", run=_run_bench_propagate)
    _add_bench_placement(which)
    kernel = which.add_parser(
        "patch-distance", help="PatchMatch candidate distances: eager reference vs fused kernel"
    )
    kernel.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    kernel.add_argument("--size", type=int, default=512, help="frame side in pixels")
    kernel.add_argument("--channels", type=int, default=12, help="guide channels")
    kernel.set_defaults(command="bench", run=_run_bench_patch_distance)
    _add_bench_render(which)
    _add_bench_keys(which)
    _add_bench_generate(which)
    _add_bench_dynamicrafter(which)


def _run_bench_decode(args) -> int:
    from zvstudio.bench.decode import run_decode_benchmark

    report = run_decode_benchmark(
        args.videos, samples=args.samples, include_1080p=not args.no_1080p
    )
    print(json.dumps(report, indent=2))
    return 0


def _run_bench_export(args) -> int:
    from zvstudio.bench.export import run_export_benchmark
    from zvstudio.errors import ZvsError

    try:
        width, height = (int(part) for part in args.size.lower().split("x"))
    except ValueError:
        raise ZvsError(f"--size takes WIDTHxHEIGHT, e.g. 1920x1080, not {args.size!r}") from None
    if width < 16 or height < 16 or width % 2 or height % 2 or args.frames < 1:
        raise ZvsError("--size needs even sides of at least 16 pixels, --frames at least 1")
    print(json.dumps(run_export_benchmark((width, height), args.frames), indent=2))
    return 0


def _run_bench_propagate(args) -> int:
    from zvstudio.bench.propagate import run_propagate_benchmark

    report = run_propagate_benchmark(
        args.videos,
        size=args.size,
        frames=args.frames,
        device=args.device,
        preset=args.flow_preset,
        include_1080p=not args.no_1080p,
        synthesis=args.synthesis or "flow",
        poisson=bool(args.poisson),
    )
    print(json.dumps(report, indent=2))
    return 0


def _add_bench_placement(which) -> None:
    from zvstudio.stylize import available_styles

    parser = which.add_parser(
        "placement", help="keys placed by motion vs evenly: fidelity with as many keys"
    )
    parser.add_argument(
        "videos", nargs="*", type=Path, help="clips to measure (default: ../shared/clips)"
    )
    parser.add_argument("--size", type=int, default=256, help="short side in pixels")
    parser.add_argument("--frames", type=int, default=150, help="frames per clip")
    parser.add_argument("--start", type=int, default=0, help="first frame of each clip")
    parser.add_argument("--every", type=int, default=10, help="the even key interval")
    parser.add_argument("--style", choices=available_styles(), default="stylization")
    parser.set_defaults(command="bench", run=_run_bench_placement)


def _run_bench_placement(args) -> int:
    from zvstudio.bench.placement import run_placement_benchmark

    report = run_placement_benchmark(
        args.videos,
        size=args.size,
        frames=args.frames,
        interval=args.every,
        style=args.style,
        start=args.start,
    )
    print(json.dumps(report, indent=2))
    return 0


def _run_bench_patch_distance(args) -> int:
    from zvstudio.bench import machine
    from zvstudio.propagate.kernels import time_patch_distance

    report = {"benchmark": "patch-distance", "machine": machine(), "device": args.device}
    report |= {"size": args.size, "channels": args.channels, "candidates": args.size**2}
    report |= time_patch_distance(args.size, args.channels, args.device)
    print(json.dumps(report, indent=2))
    return 0


def _add_bench_render(which) -> None:
    from zvstudio.flow import DIS_PRESETS

    parser = which.add_parser(
        "render", help="end-to-end render: seconds per output frame, peak RAM and GPU memory"
    )
    parser.add_argument(
        "--frames",
        default="100,1000",
        metavar="N,M,...",
        help="clip lengths, each rendered in a fresh process (default 100,1000)",
    )
    parser.add_argument("--size", type=int, default=512, help="clip width and height (px)")
    parser.add_argument("--every", type=int, default=10, metavar="K", help="a key every K frames")
    parser.add_argument("--style", default="cartoon", help="stylizer keys (without a model)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", type=Path, help="diffusion keys with this SD1.x model")
    model.add_argument(
        "--random-sd15",
        action="store_true",
        help="diffusion keys with an SD1.5-sized model of random weights (meant for a GPU)",
    )
    parser.add_argument(
        "--model-dir", type=Path, help="keep the random model here and reuse it next time"
    )
    parser.add_argument("--steps", type=int, default=20, help="diffusion steps (default 20)")
    parser.add_argument("--flow-preset", choices=tuple(DIS_PRESETS), default="fine")
    parser.set_defaults(command="bench", run=_run_bench_render)


def _run_bench_render(args) -> int:
    from zvstudio.bench.render import BenchSettings, parse_lengths, run_render_benchmark

    settings = BenchSettings(
        size=args.size,
        every=args.every,
        style=args.style,
        device=args.device,
        model=str(args.model.resolve()) if args.model else None,
        steps=args.steps,
        flow_preset=args.flow_preset,
    )
    report = run_render_benchmark(
        parse_lengths(args.frames), settings, args.random_sd15, args.model_dir
    )
    print(json.dumps(report, indent=2))
    return 0


def _add_bench_keys(which) -> None:
    from zvstudio.bench.keys import MODES

    parser = which.add_parser(
        "keys",
        help="key frames with every constraint on vs plain ControlNet img2img: seconds, memory",
    )
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", type=Path, help="an SD1.x model to time")
    model.add_argument(
        "--random-weights",
        action="store_true",
        help="an SD1.5-sized model of random weights (speed does not depend on weights)",
    )
    parser.add_argument(
        "--controlnet", type=Path, help="a ControlNet (default: one shaped after the UNet)"
    )
    parser.add_argument("--sizes", default="512,768", help="frame sides (default 512,768)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    parser.add_argument("--strength", type=float, default=0.75, help="(default 0.75)")
    parser.add_argument("--keys", type=int, default=4, help="keys per mode, the anchor first")
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"some of {','.join(MODES)} (default all)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--precision", choices=("auto", "float16", "bfloat16", "float32"), default="auto"
    )
    parser.add_argument(
        "--model-dir", type=Path, help="keep the random model here and reuse it next time"
    )
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)  # tests: tiny models
    parser.set_defaults(command="bench", run=_run_bench_keys)


def _run_bench_keys(args) -> int:
    from zvstudio.bench.keys import KeysBenchSettings, run_keys_benchmark

    settings = KeysBenchSettings(
        sizes=tuple(_int_list(args.sizes, "--sizes")),
        steps=args.steps,
        strength=args.strength,
        keys=args.keys,
        modes=tuple(part.strip() for part in args.modes.split(",") if part.strip()),
        device=args.device,
        precision=args.precision,
        model=args.model,
        controlnet=args.controlnet,
        config_dir=args.config,
        model_dir=args.model_dir,
    )
    print(json.dumps(run_keys_benchmark(settings), indent=2))
    return 0


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ZvsError(f"{option} {text!r} is not a list of whole numbers") from None


def _add_bench_generate(which) -> None:
    parser = which.add_parser(
        "generate",
        help="text-to-video and image animation: seconds per frame, peak GPU memory",
    )
    parser.add_argument(
        "--mode", choices=("t2v", "animate", "both"), default="both", help="(default both)"
    )
    parser.add_argument("--size", type=int, default=512, help="frame width and height (512)")
    parser.add_argument("--frames", type=int, help="frames (default: t2v 8, animate 16)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default: t2v 50, animate 25)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--model", type=Path, help="an SD1.x model (default: SD1.5-sized, random weights)"
    )
    parser.add_argument(
        "--motion-adapter", type=Path, help="a motion module (default: SD1.5-shaped, random)"
    )
    parser.add_argument(
        "--model-dir", type=Path, help="keep the random model here and reuse it next time"
    )
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)  # tests: tiny models
    parser.set_defaults(command="bench", run=_run_bench_generate)


def _run_bench_generate(args) -> int:
    from zvstudio.bench.generate import GenerateBenchSettings, run_generate_benchmark

    defaults = GenerateBenchSettings()
    settings = GenerateBenchSettings(
        modes=("t2v", "animate") if args.mode == "both" else (args.mode,),
        size=args.size,
        t2v_frames=args.frames or defaults.t2v_frames,
        t2v_steps=args.steps or defaults.t2v_steps,
        animate_frames=args.frames or defaults.animate_frames,
        animate_steps=args.steps or defaults.animate_steps,
        device=args.device,
        model=args.model,
        config_dir=args.config,
        motion_adapter=args.motion_adapter,
        model_dir=args.model_dir,
    )
    print(json.dumps(run_generate_benchmark(settings), indent=2))
    return 0


def _add_bench_dynamicrafter(which) -> None:
    parser = which.add_parser(
        "dynamicrafter",
        help="DynamiCrafter with random full-size weights: seconds and peak GPU memory",
    )
    parser.add_argument(
        "--preset", choices=("256", "512", "1024", "512_interp"), default="512", help="(512)"
    )
    parser.add_argument("--frames", type=int, default=16, help="(16)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (50)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--precision", choices=("auto", "float16", "bfloat16", "float32"), default="auto"
    )
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests
    parser.set_defaults(command="bench", run=_run_bench_dynamicrafter)


def _run_bench_dynamicrafter(args) -> int:
    from zvstudio.bench.dynamicrafter import run_dynamicrafter_benchmark

    report = run_dynamicrafter_benchmark(
        args.preset,
        args.frames,
        args.steps,
        args.device,
        None if args.precision == "auto" else args.precision,
        tiny=args.tiny,
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
