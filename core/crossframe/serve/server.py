"""Running the app on uvicorn: loopback by default, graceful on SIGTERM.

On SIGTERM (or Ctrl-C) uvicorn stops accepting connections and waits, up to ``drain_seconds``,
for requests in flight (streams included) to finish; ``/readyz`` answers 503 from that moment,
for a load balancer that still holds an open connection.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from crossframe.serve.app import ServeOptions, build_app
from crossframe.serve.loading import load_served_model


def make_server(app: Any, host: str, port: int, drain_seconds: float, log_level: str = "info") -> Any:
    """A ``uvicorn.Server`` for ``app`` that marks the app draining when told to exit."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.server.draining = True
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if sig == signal.SIGTERM and captured:  # a drained SIGTERM is a clean exit (status 0),
                captured.remove(sig)  # not re-raised as uvicorn does by default

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug",
                            timeout_graceful_shutdown=int(drain_seconds) if drain_seconds else None,
                            server_header=False)
    return DrainingServer(config)


def serve(path: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, engine: str = "auto",
          backend: str | None = None, name: str | None = None, chat_template: str | None = None,
          options: ServeOptions | None = None, drain_seconds: float = 30.0, log_level: str = "info",
          echo: Any = print) -> None:
    """Load ``path`` (a run or export directory) and serve it until SIGTERM or Ctrl-C."""
    model = load_served_model(path, engine=engine, backend=backend, name=name, chat_template=chat_template)
    options = options or ServeOptions()
    app = build_app(model, options)
    server = make_server(app, host, port, drain_seconds, log_level)
    auth = f"keys from {options.api_keys}" if options.api_keys else "no API keys (open)"
    echo(f"serving '{model.name}' ({model.task}, {model.engine}) on http://{host}:{port}  "
         f"docs: /docs  {auth}")
    logging.getLogger("uvicorn.error").propagate = False
    server.run()
