"""Key renderers that need no model weights: OpenCV stylizers and externally painted keys."""

from zvstudio.stylize.filters import (
    CartoonRenderer,
    CartoonSettings,
    OilRenderer,
    OilSettings,
    PencilRenderer,
    PencilSettings,
    PosterizeRenderer,
    PosterizeSettings,
    StylizationRenderer,
    StylizationSettings,
    StylizerRenderer,
)
from zvstudio.stylize.painted import PaintedKeyRenderer
from zvstudio.stylize.registry import (
    StyleFactory,
    available_styles,
    create_stylizer,
    describe_style,
    register_style,
    style_parameters,
)
from zvstudio.stylize.settings import StyleParameter, StyleSettings

__all__ = [
    "CartoonRenderer",
    "CartoonSettings",
    "OilRenderer",
    "OilSettings",
    "PaintedKeyRenderer",
    "PencilRenderer",
    "PencilSettings",
    "PosterizeRenderer",
    "PosterizeSettings",
    "StyleFactory",
    "StyleParameter",
    "StyleSettings",
    "StylizationRenderer",
    "StylizationSettings",
    "StylizerRenderer",
    "available_styles",
    "create_stylizer",
    "describe_style",
    "register_style",
    "style_parameters",
]
