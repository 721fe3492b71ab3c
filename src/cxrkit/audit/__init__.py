"""Shortcut audit: is the model reading the chest? (``cxrkit audit RUN``, see :mod:`.core`)."""

from cxrkit.audit.core import THRESHOLDS, audit_run, flags_for

__all__ = ["THRESHOLDS", "audit_run", "flags_for"]
