"""A container health check without curl: `python -m infra.healthcheck http://127.0.0.1:9500/readyz`.

Exit 0 when the endpoint answers 2xx within the timeout, else 1 with one line saying what it
answered (the status and the start of the body, e.g. which dependency `/readyz` found missing) or
why it could not be reached. The slim image has no curl or wget; compose's `healthcheck` runs this.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request


def check(url: str, timeout_s: float) -> str | None:
    """None when `url` answers 2xx, else what went wrong."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            if 200 <= reply.status < 300:
                return None
            return f"{url} answered {reply.status}"
    except urllib.error.HTTPError as exc:
        body = exc.read(300).decode(errors="replace").strip()
        return f"{url} answered {exc.code}: {body}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"{url} unreachable: {getattr(exc, 'reason', exc)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("url", help="http://host:port/path of /healthz or /readyz")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://", "https://")):
        parser.error("url must start with http:// or https://")
    problem = check(args.url, args.timeout)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
