"""Pictures of the encodings (matplotlib, Agg backend; needs the ``plots`` extra)."""

from .encodings import relative_index_figure, rope_decay_bound, rope_decay_figure, sinusoidal_figure

__all__ = ["relative_index_figure", "rope_decay_bound", "rope_decay_figure", "sinusoidal_figure"]
