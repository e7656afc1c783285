"""The model library: the user's model folders, scanned and identified, offline.

Folders come from zvstudio's own `~/zvstudio/models` (or the one the settings name),
`$ZVSTUDIO_MODELS` (os.pathsep separated), AUTOMATIC1111 / ComfyUI installs given as roots (see
`expand_root`) and the Hugging Face cache, read straight from its folder layout: nothing here
talks to the network or to the Hub's API.

`check_compatible` and `check_loadable` turn wrong combinations (an SDXL LoRA on an SD1.x
checkpoint, a pickled file not allowed) into one clear `ZvsError` before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from zvstudio.diffusion.identify import (
    BASE_LABELS,
    KIND_LABELS,
    KINDS,
    MODEL_SUFFIXES,
    PICKLE_SUFFIXES,
    ModelInfo,
    diffusers_folder_kind,
    identify,
)
from zvstudio.errors import ZvsError
from zvstudio.progress import Progress, ProgressCallback, ignore_progress

# The bases zvstudio renders with (its samplers, attention processors and ControlNets are SD1.x).
SUPPORTED_BASES = ("sd1",)

# Where a model folder keeps ControlNet annotators' weights (HED, OpenPose, a depth model, ...).
# They are not checkpoints, LoRAs or ControlNets: the scan leaves them to the annotators, which
# report what they find, instead of listing each as an unknown model.
ANNOTATORS_FOLDER = "annotators"

# Model subfolders of an AUTOMATIC1111 or ComfyUI install (also tried without "models/", for a
# root that is the install's models folder itself).
ROOT_SUBFOLDERS = (
    "models/Stable-diffusion",
    "models/Lora",
    "models/LyCORIS",
    "models/ControlNet",
    "models/VAE",
    "models/checkpoints",
    "models/loras",
    "models/controlnet",
    "models/vae",
    "models/unet",
    "models/diffusion_models",
    "models/diffusers",
    "models/animatediff_models",
    "models/embeddings",
    "models/ipadapter",
    "models/clip_vision",
    "embeddings",
    "extensions/sd-webui-controlnet/models",
    "extensions/sd-webui-animatediff/model",
)
# Files beside the `models` folder of an A1111 (webui.py, launch.py) or ComfyUI (main.py, comfy/)
# install.
_INSTALL_FILES = ("webui.py", "launch.py", "webui-user.sh", "webui-user.bat", "main.py", "comfy")


def home_models_folder() -> Path:
    """zvstudio's own model folder."""
    return Path.home() / "zvstudio" / "models"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else the default."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode): one file reached by two paths (symlinks, case-insensitive names)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)


def _unique(paths: Iterable[Path]) -> list[Path]:
    seen: set[tuple[int, int]] = set()
    result = []
    for path in paths:
        identity = _identity(path)
        if identity is not None and identity not in seen:
            seen.add(identity)
            result.append(path)
    return result


def expand_root(root: str | os.PathLike[str]) -> list[Path]:
    """The folders to scan for `root`: the model subfolders of an A1111 or ComfyUI install (given
    as the install folder or as its `models` folder), else the folder itself.

    Installs are not scanned whole: their virtual environments and face restorers hold
    .pth/.bin files that are not diffusion models. A plain folder is scanned whole even when it
    has a `loras` or `vae` subfolder, so files beside those are not missed.
    """
    root = Path(root).expanduser()
    if (root / "models").is_dir():
        install = root
    elif root.name.lower() == "models" and any((root.parent / m).exists() for m in _INSTALL_FILES):
        install = root.parent
    else:
        return [root]
    found = _unique(install / sub for sub in ROOT_SUBFOLDERS if (install / sub).is_dir())
    return found or [root]


# The editor's models folder and added folders (its settings), used by every lookup that names
# no folders: annotators' weights, a ControlNet found by name, the segmentation model. Without
# this, a folder added in the Model manager would list its ControlNets but not lend its
# annotators to them.
_app_folders: tuple[str | None, tuple[str, ...]] = (None, ())


def set_app_model_folders(
    models_dir: str | os.PathLike[str] | None, roots: Iterable[str | os.PathLike[str]]
) -> None:
    """Make `default_model_folders()` called without arguments search these folders too."""
    global _app_folders
    _app_folders = (str(models_dir) if models_dir else None, tuple(str(r) for r in roots))


def default_model_folders(
    models_dir: str | os.PathLike[str] | None = None,
    roots: Iterable[str | os.PathLike[str]] | None = None,
) -> list[Path]:
    """The existing folders to scan: `models_dir` (a settings choice) or ~/zvstudio/models,
    $ZVSTUDIO_MODELS entries and `roots` (each through `expand_root`), and the HF cache.
    With neither argument, the application's folders (`set_app_model_folders`)."""
    if models_dir is None and roots is None:
        models_dir, roots = _app_folders
    folders = [Path(models_dir).expanduser() if models_dir else home_models_folder()]
    extra = [e for e in os.environ.get("ZVSTUDIO_MODELS", "").split(os.pathsep) if e.strip()]
    for root in [*extra, *(roots or ())]:
        folders.extend(expand_root(root))
    folders.append(hf_cache_dir())
    return _unique(f for f in folders if f.is_dir())


# ---------------------------------------------------------------------------------------------
# Scanning


@dataclasses.dataclass(frozen=True)
class _Candidate:
    path: Path
    name: str | None = None
    hf_repo: str | None = None  # from the Hugging Face cache, which holds any kind of model


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk(
    folder: Path, seen: set[tuple[int, int]], hf_repo: str | None = None
) -> Iterator[_Candidate]:
    """Model files and diffusers folders under `folder`, each reached once."""
    identity = _identity(folder)
    if identity is None or identity in seen:
        return
    seen.add(identity)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        here = Path(dirpath)
        layout = diffusers_folder_kind(here)
        if layout:
            # The snapshot root of an HF repo is named after the repo, not the revision hash.
            name = hf_repo if hf_repo and here == folder else None
            yield _Candidate(here, name, hf_repo)
            dirnames[:] = []  # its subfolders are its components
            if layout == "component":
                continue  # its files are its own weights
        kept = []
        for dirname in sorted(dirnames):
            identity = _identity(here / dirname)
            skipped = _is_hidden(dirname) or dirname.lower() == ANNOTATORS_FOLDER
            if not skipped and identity is not None and identity not in seen:
                seen.add(identity)  # also stops symlink loops
                kept.append(dirname)
        dirnames[:] = kept
        for filename in sorted(filenames):
            path = here / filename
            if _is_hidden(filename) or path.suffix.lower() not in MODEL_SUFFIXES:
                continue
            identity = _identity(path)
            if identity is not None:  # an unreadable file is still reported
                if identity in seen:
                    continue
                seen.add(identity)
            yield _Candidate(path, None, hf_repo)


def hf_snapshot(repo_dir: Path) -> Path | None:
    """The revision `refs/main` points to, else the newest snapshot."""
    snapshots = repo_dir / "snapshots"
    try:
        revision = (repo_dir / "refs" / "main").read_text(encoding="utf-8").strip()
        if revision and (snapshots / revision).is_dir():
            return snapshots / revision
    except OSError:
        pass
    try:
        revisions = [p for p in snapshots.iterdir() if p.is_dir()]
    except OSError:
        return None
    return max(revisions, key=lambda p: p.stat().st_mtime, default=None)


def _is_hf_repo(folder: Path) -> bool:
    return folder.name.startswith("models--") and (folder / "snapshots").is_dir()


def _hf_candidates(repo_dir: Path, seen: set[tuple[int, int]]) -> Iterator[_Candidate]:
    snapshot = hf_snapshot(repo_dir)
    if snapshot is not None:
        repo_id = "/".join(repo_dir.name.removeprefix("models--").split("--", 1))
        yield from _walk(snapshot, seen, repo_id)


def _candidates(folder: Path, seen: set[tuple[int, int]]) -> Iterator[_Candidate]:
    if folder.is_file():
        identity = _identity(folder)
        if identity is not None and identity not in seen:
            seen.add(identity)
            yield _Candidate(folder)
    elif _is_hf_repo(folder):
        yield from _hf_candidates(folder, seen)
    elif folder.is_dir():
        repos = sorted(p for p in folder.glob("models--*") if _is_hf_repo(p))
        if repos:  # a hub cache: only its model repos, at one revision each
            for repo in repos:
                yield from _hf_candidates(repo, seen)
        else:
            yield from _walk(folder, seen)


def _identify_candidate(candidate: _Candidate) -> ModelInfo | None:
    path = candidate.path
    try:
        info = identify(path, candidate.name)
    except (ZvsError, OSError) as exc:
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        fmt = "pickle" if path.suffix.lower() in PICKLE_SUFFIXES else "safetensors"
        fmt = "diffusers" if path.is_dir() else fmt
        name = candidate.name or (path.name if path.is_dir() else path.stem)
        info = ModelInfo(path, name, "unknown", "unknown", fmt, size, {"error": str(exc)})
    if candidate.hf_repo:
        if info.kind == "unknown" and "error" not in info.details:
            return None  # the HF cache also holds language models and the like: not ours
        info = dataclasses.replace(info, details={**info.details, "hf_repo": candidate.hf_repo})
    return info


def scan(
    folders: Iterable[str | os.PathLike[str]], progress: ProgressCallback | None = None
) -> list[ModelInfo]:
    """Every model under `folders`, sorted by kind then name.

    Recursive; hidden and `annotators` folders are skipped, a file reached twice (symlinks,
    overlapping folders) is listed once, diffusers folders are listed as one model and not
    descended into, missing folders are skipped, and files that cannot be read are listed as kind
    "unknown" with an "error" detail instead of stopping the scan. A folder holding `models--*`
    repos is read as a Hugging Face cache. Only headers are read (no tensor data, no hashing).
    """
    report = progress or ignore_progress
    _embeddings_under.cache_clear()  # a rescan: files may have come or gone
    seen: set[tuple[int, int]] = set()
    candidates = [c for f in folders for c in _candidates(Path(f).expanduser(), seen)]
    models = []
    for done, candidate in enumerate(candidates):
        report(Progress("scanning models", done, len(candidates), candidate.path.name))
        info = _identify_candidate(candidate)
        if info is not None:
            models.append(info)
    report(Progress("scanning models", len(candidates), len(candidates)))
    return sorted(models, key=lambda m: (KINDS.index(m.kind), m.name.lower(), str(m.path)))


# An SD1.x textual inversion is kilobytes (75 vectors: 230 KB); larger files are not opened
# when looking for embeddings.
EMBEDDING_MAX_BYTES = 4 << 20


def scan_embeddings(folders: Iterable[str | os.PathLike[str]]) -> list[ModelInfo]:
    """Every textual inversion embedding under `folders`, by name (only small files are read).
    Remembered per set of folders until the next full `scan` (the Model manager's Refresh)."""
    return list(_embeddings_under(tuple(Path(f).expanduser() for f in folders)))


@functools.lru_cache(maxsize=8)
def _embeddings_under(folders: tuple[Path, ...]) -> tuple[ModelInfo, ...]:
    seen: set[tuple[int, int]] = set()
    found = []
    for folder in folders:
        for candidate in _candidates(Path(folder).expanduser(), seen):
            try:
                small = candidate.path.is_file() and (
                    candidate.path.stat().st_size <= EMBEDDING_MAX_BYTES
                )
            except OSError:
                continue
            info = _identify_candidate(candidate) if small else None
            if info is not None and info.kind == "embedding":
                found.append(info)
    return tuple(sorted(found, key=lambda info: (info.name.lower(), str(info.path))))


# ---------------------------------------------------------------------------------------------
# Looking models up


def _describe(info: ModelInfo) -> str:
    return f"{info.name} ({KIND_LABELS[info.kind]}, {_base_label(info.base)}): {info.path}"


def find_model(
    name_or_path: str | os.PathLike[str], models: Sequence[ModelInfo], kind: str | None = None
) -> ModelInfo:
    """The model at a path (identified directly when outside the library), or the one model
    named so (name, file name, then case-insensitively), optionally of one kind.

    Raises `ZvsError` listing the candidates when the name is ambiguous or unknown.
    """
    pool = [m for m in models if kind is None or m.kind == kind]
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        identity = _identity(path)
        return next((m for m in pool if _identity(m.path) == identity), None) or identify(path)
    what = KIND_LABELS[kind] if kind else "model"
    matches = [m for m in pool if text in (m.name, m.path.name)]
    if not matches:
        folded = text.casefold()
        matches = [m for m in pool if folded in (m.name.casefold(), m.path.name.casefold())]
    if len(matches) == 1:
        return matches[0]
    if matches:
        listing = "\n".join(f"  - {_describe(m)}" for m in matches)
        raise ZvsError(
            f"'{text}' matches {len(matches)} {what}s:\n{listing}",
            hint="give the full path of the one you mean",
        )
    names = sorted({m.name for m in pool})
    close = difflib.get_close_matches(text, names, n=5, cutoff=0.5)
    if close:
        hint = "did you mean: " + ", ".join(close)
    elif names:
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        hint = f"known {what}s: {shown}"
    else:
        hint = "put models in ~/zvstudio/models or list your folders in ZVSTUDIO_MODELS"
    raise ZvsError(f"no {what} named '{text}' in the model folders", hint=hint)


# ---------------------------------------------------------------------------------------------
# Checks before any work


def _base_label(base: str) -> str:
    return BASE_LABELS.get(base, base)


def _a(label: str) -> str:
    """The label with its article: "an SD1.x", "an unrecognised file", "a LoRA"."""
    return f"an {label}" if re.match(r"[aeiou]|S[DX]", label) else f"a {label}"


def wrong_kind(info: ModelInfo, expected: str) -> str:
    role = {"checkpoint": "the model", "lora": "a LoRA", "controlnet": "a ControlNet"}
    use = f": use it as {role[info.kind]}" if info.kind in role else ""
    return f"'{info.name}' is {_a(KIND_LABELS[info.kind])}, not {_a(KIND_LABELS[expected])}{use}"


def check_compatible(
    checkpoint: ModelInfo,
    loras: Sequence[ModelInfo] = (),
    controlnets: Sequence[ModelInfo] = (),
) -> None:
    """Raise one `ZvsError` listing every wrong combination, before anything is loaded.

    An "unknown" base is let through (not knowing is not a mismatch); the loader decides.
    """
    problems = []
    supported = " or ".join(_base_label(b) for b in SUPPORTED_BASES)
    if checkpoint.kind != "checkpoint":
        problems.append(wrong_kind(checkpoint, "checkpoint"))
    elif checkpoint.base not in (*SUPPORTED_BASES, "unknown"):
        problems.append(
            f"the checkpoint '{checkpoint.name}' is {_base_label(checkpoint.base)}: "
            f"zvstudio renders with {supported} models, pick {_a(supported)} checkpoint"
        )
    ckpt_base = checkpoint.base if checkpoint.kind == "checkpoint" else "unknown"
    for expected, items in (("lora", loras), ("controlnet", controlnets)):
        label = KIND_LABELS[expected]
        for item in items:
            if item.kind != expected:
                problems.append(wrong_kind(item, expected))
            elif "unknown" not in (item.base, ckpt_base) and item.base != ckpt_base:
                problems.append(
                    f"{label} '{item.name}' is for {_base_label(item.base)} but the checkpoint "
                    f"'{checkpoint.name}' is {_base_label(ckpt_base)}: "
                    f"pick {_a(_base_label(ckpt_base))} {label}"
                )
    if len(problems) == 1:
        raise ZvsError(problems[0])
    if problems:
        raise ZvsError(
            "these models do not go together:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def check_loadable(info: ModelInfo, allow_pickle: bool = False) -> None:
    """Refuse a file that could not be read, or a pickled one unless `allow_pickle`."""
    if "error" in info.details:
        raise ZvsError(f"cannot use '{info.name}': {info.details['error']}")
    if info.pickled and not allow_pickle:
        raise ZvsError(
            f"'{info.name}' is a pickled file ({info.path.name}): loading it runs Python code "
            "stored in the file, which can do anything a program you run can do",
            hint="prefer a .safetensors version of this model; if you trust where it came from, "
            "pass --allow-pickle (or allow pickled models in the settings), or convert it once "
            "to .safetensors with a tool you trust",
        )


# ---------------------------------------------------------------------------------------------
# Listing


def format_size(size_bytes: int) -> str:
    """Decimal units, as file managers show them: 2.13 GB, 144.0 MB, 12 KB."""
    if size_bytes >= 1_000_000_000:
        return f"{size_bytes / 1e9:.2f} GB"
    if size_bytes >= 1_000_000:
        return f"{size_bytes / 1e6:.1f} MB"
    return f"{max(size_bytes, 0) / 1e3:.0f} KB"


def _hash_cell(info: ModelInfo) -> str:
    try:
        return info.short_hash or "-"
    except ZvsError:
        return "?"


def format_table(models: Sequence[ModelInfo], hashes: bool = True) -> str:
    """A plain-text listing: kind, base, name, size, short hash (read on first use; skip with
    `hashes=False`), path. Files that could not be read say why below the table."""
    if not models:
        return "no models found"
    header = ("KIND", "BASE", "NAME", "SIZE", "HASH", "PATH")
    rows = [
        (
            m.kind,
            _base_label(m.base) if m.base != "unknown" else "?",
            m.name + (" (pickle)" if m.pickled else ""),
            format_size(m.size_bytes),
            _hash_cell(m) if hashes else "",
            str(m.path),
        )
        for m in models
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        for row in (header, *rows)
    ]
    lines += [f"{m.name}: {m.details['error']}" for m in models if "error" in m.details]
    return "\n".join(lines)
