"""Assemble the web page as a deployable static site: ``python -m scripts.build_web``.

The output folder (``build/web/`` by default) holds the page's files from ``web/``, the
vendored TensorFlow.js from node_modules (``vendor/tf.min.js``; never committed), and a
``config.js`` naming the API the page calls. Without ``--api`` the page calls the origin it is
served from, as on the local cloud. Any static host serves the result; the API's routes send
CORS headers, so the page may live on another origin.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
WEB_DIR = ROOT / "web"
DEFAULT_OUT = ROOT / "build" / "web"
TFJS = ROOT / "node_modules" / "@tensorflow" / "tfjs" / "dist" / "tf.min.js"
# What the page is made of; README.md stays behind.
PAGE_SUFFIXES = {".html", ".js", ".css", ".svg", ".png", ".ico"}


class BuildError(Exception):
    pass


def check_api_url(url: str) -> str:
    """An http(s) base URL without query or fragment, returned without a trailing slash."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc or parts.query or parts.fragment:
        raise BuildError(f"--api must be an http(s) URL like https://abc.execute-api.../prod, got {url!r}")
    return url.rstrip("/")


def config_js(api_url: str | None) -> str:
    value = json.dumps(api_url or "")
    return (
        "// Written by scripts/build_web.py: the API this copy of the page calls"
        + (" (empty: the page's own origin)" if not api_url else "")
        + ".\n"
        + f"window.AUTORETRAIN_API = {value};\n"
    )


def build(out: Path, api_url: str | None = None, *, web_dir: Path = WEB_DIR, tfjs: Path = TFJS) -> list[Path]:
    """Write the site to ``out`` (replacing what was there); returns the files written."""
    if not tfjs.is_file():
        raise BuildError(f"{tfjs} is missing; run `npm ci` (or `make install`) first")
    if not (web_dir / "index.html").is_file():
        raise BuildError(f"{web_dir / 'index.html'} is missing")
    api = check_api_url(api_url) if api_url else None
    if out.exists():
        # Replaced whole, so a file dropped from web/ does not linger; but only a folder this
        # script wrote (or an empty one) is ever removed.
        if out.resolve() == web_dir.resolve() or (any(out.iterdir()) and not (out / "index.html").is_file()):
            raise BuildError(f"{out} is not a folder this script built; refusing to replace it")
        shutil.rmtree(out)
    (out / "vendor").mkdir(parents=True)
    written = []
    for source in sorted(web_dir.iterdir()):
        if source.is_file() and source.suffix in PAGE_SUFFIXES and source.name != "config.js":
            written.append(Path(shutil.copy2(source, out / source.name)))
    (out / "config.js").write_text(config_js(api))
    written.append(out / "config.js")
    written.append(Path(shutil.copy2(tfjs, out / "vendor" / "tf.min.js")))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default build/web)")
    parser.add_argument("--api", help="base URL of the deployed API (default: the page's own origin)")
    args = parser.parse_args(argv)
    try:
        files = build(args.out, args.api)
    except BuildError as err:
        print(f"build_web: {err}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in files)
    print(f"wrote {len(files)} files ({size / 1e6:.1f} MB) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
