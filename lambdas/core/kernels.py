"""numba kernels compiled once, when the traffic function's image is built.

pythermalcomfort compiles its PMV kernels with numba when it is first imported (about 7 s on
one core of this machine). With ``cache=True`` numba keeps the machine code in
``NUMBA_CACHE_DIR`` and later processes load it instead: the whole import then takes under a
second. Two facts shape how the image uses that (sources in infra/README.md, "The traffic
function's image"):

- numba uses a cache directory only if it can write to it (it checks by creating a file), and a
  Lambda function's file system is read-only except ``/tmp``. The image holds the kernels in
  ``KERNEL_CACHE_IMAGE_DIR``; ``use_image_cache`` copies them (about 2 MB) to
  ``NUMBA_CACHE_DIR`` under ``/tmp`` before numba is imported.
- numba uses a cached kernel only on a CPU of the same name and features as the one it was
  compiled for. Lambda's hosts are not the build machine, so both compile and load for
  ``NUMBA_CPU_NAME=generic``.

``python -m lambdas.core.kernels DIR`` is the image's cache step: it compiles into ``DIR``
every kernel a cold start of the traffic function loads (those pythermalcomfort compiles at
import, and those one batch of samples calls) and fails if nothing was written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from lambdas.core import log
from lambdas.core.errors import ConfigError

IMAGE_DIR_VAR = "KERNEL_CACHE_IMAGE_DIR"
PORTABLE_CPU = "generic"


def use_image_cache(env: Mapping[str, str] | None = None) -> Path | None:
    """Copy the image's compiled kernels to ``NUMBA_CACHE_DIR``; None outside an image.

    Must run before numba is imported: numba reads ``NUMBA_CACHE_DIR`` once, at import.
    """
    env = os.environ if env is None else env
    source = env.get(IMAGE_DIR_VAR, "").strip()
    if not source:
        return None
    target = env.get("NUMBA_CACHE_DIR", "").strip()
    if not target:
        raise ConfigError(f"{IMAGE_DIR_VAR} is set: NUMBA_CACHE_DIR must name a writable directory")
    if env.get("NUMBA_CPU_NAME") != PORTABLE_CPU:
        raise ConfigError(f"{IMAGE_DIR_VAR} is set: NUMBA_CPU_NAME must be {PORTABLE_CPU!r}, as at build")
    if not any(Path(source).rglob("*.nbi")):
        raise ConfigError(
            f"{IMAGE_DIR_VAR}={source} holds no kernel index: the image has no compiled kernels"
        )
    if "numba" in sys.modules:
        raise ConfigError(f"{IMAGE_DIR_VAR} is set but numba was imported before its cache was in place")
    # Once per execution environment: /tmp outlives an invocation, not the environment.
    shutil.copytree(source, target, dirs_exist_ok=True)
    return Path(target)


def _stamps(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(directory).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in directory.rglob("*")
        if p.is_file()
    }


def compiled_at_start(env: Mapping[str, str] | None = None) -> list[str]:
    """Kernel files in ``NUMBA_CACHE_DIR`` that differ from the image's copy: what numba
    compiled (or compiled again) in this process. Empty outside an image."""
    env = os.environ if env is None else env
    source = env.get(IMAGE_DIR_VAR, "").strip()
    if not source:
        return []
    built = _stamps(Path(source))
    return sorted(
        name for name, stamp in _stamps(Path(env["NUMBA_CACHE_DIR"])).items() if built.get(name) != stamp
    )


def log_cache_use(env: Mapping[str, str] | None = None) -> None:
    """One line saying whether the image's kernels served the import (the first deploy's check
    that Lambda's file system kept them valid); nothing outside an image."""
    env = os.environ if env is None else env
    if not env.get(IMAGE_DIR_VAR, "").strip():
        return
    compiled = compiled_at_start(env)
    if compiled:
        log.warning("numba_kernels_compiled", files=len(compiled), first=compiled[:3])
    else:
        log.log("numba_kernels_loaded", directory=env["NUMBA_CACHE_DIR"])


def compile_into(target: Path) -> list[Path]:
    """Compile what a cold start of the traffic function loads into ``target``; its index files."""
    if "numba" in sys.modules:
        raise ConfigError("numba is already imported: its cache directory can no longer be chosen")
    if os.environ.get("NUMBA_CPU_NAME") != PORTABLE_CPU:
        raise ConfigError(
            f"NUMBA_CPU_NAME must be {PORTABLE_CPU!r}: kernels compiled for this machine's CPU "
            "would be ignored on another one"
        )
    os.environ.pop(IMAGE_DIR_VAR, None)
    os.environ["NUMBA_CACHE_DIR"] = str(target)
    import numpy as np

    from lambdas.core import comfort  # imports pythermalcomfort: its eager kernels compile here

    comfort.generate(100, np.random.default_rng(0), 0.05)  # the kernels a batch calls
    return sorted(target.rglob("*.nbi"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile the traffic function's numba kernels into DIR.")
    parser.add_argument("directory", type=Path, metavar="DIR")
    args = parser.parse_args(argv)
    index = compile_into(args.directory)
    files = [p for p in args.directory.rglob("*") if p.is_file()]
    if not index:
        print(f"no kernel was compiled into {args.directory}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in files)
    print(f"{len(index)} kernels ({len(files)} files, {size:,} bytes) compiled into {args.directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
