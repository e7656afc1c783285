"""Diffusion models: the offline model library (scan, identify, compatibility checks)."""

from zvstudio.diffusion.identify import (
    BASE_LABELS,
    BASES,
    KIND_LABELS,
    KINDS,
    ModelInfo,
    classify,
    identify,
    read_safetensors_header,
    sha256_file,
    short_hash,
)
from zvstudio.diffusion.library import (
    SUPPORTED_BASES,
    check_compatible,
    check_loadable,
    default_model_folders,
    expand_root,
    find_model,
    format_table,
    hf_cache_dir,
    scan,
)

__all__ = [
    "BASES",
    "BASE_LABELS",
    "KINDS",
    "KIND_LABELS",
    "SUPPORTED_BASES",
    "ModelInfo",
    "check_compatible",
    "check_loadable",
    "classify",
    "default_model_folders",
    "expand_root",
    "find_model",
    "format_table",
    "hf_cache_dir",
    "identify",
    "read_safetensors_header",
    "scan",
    "sha256_file",
    "short_hash",
]
