"""Relative encodings that need more than a logit bias (Shaw et al.'s value term)."""

from .shaw import ShawRelative

__all__ = ["ShawRelative"]
