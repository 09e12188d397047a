"""HTTP service for a trained model (FastAPI + uvicorn): ``create_app(model_path)``, and ``serve`` to run it.

Needs the ``serve`` extra (``pip install 'urbansound[serve]'``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from urbansound.serve.app import DEFAULT_MAX_DURATION_S, DEFAULT_MAX_UPLOAD_BYTES, create_app

logger = logging.getLogger(__name__)


def serve(
    model_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_duration_s: float = DEFAULT_MAX_DURATION_S,
    device: str = "cpu",
    reject: dict[str, Any] | None = None,
    examples_dir: str | Path | None = None,
) -> None:
    """Run the service until interrupted (loopback only by default: expose it deliberately).
    ``reject``: ``RejectConfig`` fields that replace the model file's; ``examples_dir``: example clips for
    the page."""
    import uvicorn

    app = create_app(
        model_path,
        max_upload_bytes=max_upload_bytes,
        max_duration_s=max_duration_s,
        device=device,
        reject=reject,
        examples_dir=examples_dir,
    )
    logger.info("serving %s on http://%s:%d/ (API description: /docs, /openapi.json)", model_path, host, port)
    uvicorn.run(app, host=host, port=port, log_level="info")


__all__ = ["create_app", "serve", "DEFAULT_MAX_UPLOAD_BYTES", "DEFAULT_MAX_DURATION_S"]
