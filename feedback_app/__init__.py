"""The Streamlit rating app: thin pages (``app.py``, ``pages/``) over importable functions. Other stages
and the command line import these names only:

    from feedback_app import sign_in, next_set_for, submit_choice

Names are imported lazily, as in every stage's surface.
"""
from __future__ import annotations

from pickloop.lazy import lazy_exports

_EXPORTS = {
    "sign_in": "feedback_app.logic", "sign_in_oidc": "feedback_app.logic",
    "next_set_for": "feedback_app.logic", "set_view": "feedback_app.logic",
    "submit_choice": "feedback_app.logic", "undo_answer": "feedback_app.logic",
    "history": "feedback_app.logic", "labels_today": "feedback_app.logic",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
