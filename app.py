"""SDXS real-time server, from the command line: `python app.py --help` lists every option.

The app itself (routes, lifespan) is built by server/routes.py; this file parses the options, runs it, and exits with
status 1 when the model could not be loaded (so a process manager sees the failure).
"""

from __future__ import annotations

import logging
import os

from server.config import parse_config
from server.routes import create_app, make_server, uvicorn_options
from server.state import AppState


def main(argv: list[str] | None = None) -> None:
    config = parse_config(argv)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(config)
    server = make_server(app, **uvicorn_options(config))
    state: AppState = app.state.sdxs

    def stop_after_load_failure() -> None:  # a process manager (Spaces, systemd) sees the failure and its log
        server.should_exit = True

    state.on_load_failed = stop_after_load_failure
    server.run()
    code = 1 if state.loading["stage"] == "failed" else 0
    if not state.join(timeout=1.0):  # a batch or a model load still inside torch: a normal exit would abort
        logging.getLogger("sdxs.server").info("exiting with inference or loading still running")
        logging.shutdown()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
