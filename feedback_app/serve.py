"""The rating app's Streamlit process: ``python -m feedback_app.serve run feedback_app/app.py [options]``
takes ``streamlit``'s own arguments (``browser.streamlit_command`` builds them; ``pickloop app``, the
tests and the benches start the app so).

Streamlit runs a page's script only when a browser connects, so the first rater's first page would
import the app's modules and open the store (migrations checked) while that rater waits. Here a thread
does both while the server starts and the browser loads Streamlit's scripts; the page then finds them
done. Only modules that make no Streamlit calls when imported are warmed (a component registered
before the runtime exists would be lost).
"""
from __future__ import annotations

import logging
import threading

log = logging.getLogger("pickloop.app")


def warm() -> None:
    """Import what the pages need and open the store once; a failure here is the page's to report."""
    try:
        import PIL.Image
        import PIL.PngImagePlugin  # noqa: F401

        import feedback_app.logic
        import feedback_app.sessions  # noqa: F401
        import pickloop.pace  # noqa: F401
        from pickloop.context import Context

        Context().engine  # noqa: B018 - migrations checked and the engine cached for this process
    except Exception as e:  # noqa: BLE001 - the first page will meet the same problem and show it
        log.warning("warming the app up failed: %s", e)


def main() -> None:
    threading.Thread(target=warm, name="pickloop-warm", daemon=True).start()
    from streamlit.web.cli import main as streamlit_main

    streamlit_main(prog_name="streamlit")


if __name__ == "__main__":
    main()
