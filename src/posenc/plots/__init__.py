"""Pictures of the encodings and of trained models (matplotlib, Agg backend; needs the ``plots`` extra).

Each picture is a :class:`Picture`: the figure and the numbers drawn in it. :data:`PICTURES` lists what
``posenc plot`` draws; :func:`encoding_color` gives every encoding one colour across all figures.
"""

from .common import Picture
from .encodings import relative_index_figure, rope_decay_bound, rope_decay_figure, sinusoidal_figure
from .palette import encoding_color, scaling_color

__all__ = [
    "Picture",
    "encoding_color",
    "relative_index_figure",
    "rope_decay_bound",
    "rope_decay_figure",
    "scaling_color",
    "sinusoidal_figure",
]
