"""The Stepline console: a run inspector served at `/` by the HTTP API's application.

The page itself is static (assets/, built from console/ by scripts/build_console.py and
shipped in the wheel, so no Node is needed to serve it); it talks to the same HTTP/JSON API
as any other client, with the bearer token the person enters. `mount` adds its routes to
the HTTP application. See docs/console.md.
"""

from __future__ import annotations

from .routes import ASSETS, CONTENT_SECURITY_POLICY, mount

__all__ = ["ASSETS", "CONTENT_SECURITY_POLICY", "mount"]
