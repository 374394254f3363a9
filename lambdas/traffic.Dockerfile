# The traffic function's container image (infra/README.md, "The traffic function's image").
# pythermalcomfort brings numba, llvmlite and scipy: more than Lambda's 250 MB for a zip
# package, well inside its 10 GB for an image. Build from the repository root:
#   docker build --platform linux/amd64 --provenance=false -f lambdas/traffic.Dockerfile .
# `make package` / `make deploy` build and push it (osls, provider.ecr.images.traffic); without a
# docker daemon, `make image IMAGE=traffic` runs the same steps into build/traffic-image.
#
# AWS's Lambda base image for python3.12 (the runtime of the other functions), Amazon Linux
# 2023, pinned to a dated x86_64 release: rebuild on a newer tag to take AWS's patches.
FROM public.ecr.aws/lambda/python:3.12.2026.06.13.12-x86_64

# numba compiles for a generic x86-64 CPU, at build and at run time alike: a kernel compiled for
# one CPU model is ignored on another. At run time numba needs a writable cache directory
# (/tmp is the only one); lambdas/core/kernels.py copies the build's kernels there first.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CPU_NAME=generic \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    KERNEL_CACHE_IMAGE_DIR=${LAMBDA_TASK_ROOT}/numba-cache

WORKDIR ${LAMBDA_TASK_ROOT}

# Dependencies first, at the pinned versions, so this layer is rebuilt only when they change.
# Test suites and console scripts are never imported: removing them in the same step keeps them
# out of the image. The byte code pip compiled stays: the file system is read-only at run time,
# so Python could not cache it there. The base image has no `find` (no findutils): Python prunes.
COPY requirements/traffic.txt requirements/lock.txt requirements/
RUN pip install --no-cache-dir -r requirements/traffic.txt -c requirements/lock.txt --target "${LAMBDA_TASK_ROOT}" \
    && python -c 'import pathlib, shutil, sys; [shutil.rmtree(p) for p in sorted(pathlib.Path(sys.argv[1]).rglob("tests"), reverse=True) if p.is_dir()]' "${LAMBDA_TASK_ROOT}" \
    && rm -rf "${LAMBDA_TASK_ROOT:?}/bin" requirements

# The handler and the shared core it imports.
COPY lambdas/__init__.py lambdas/traffic.py lambdas/
COPY lambdas/core lambdas/core

# The cache step: compile every kernel a cold start loads, so a cold start imports, not compiles.
RUN python -m lambdas.core.kernels "${KERNEL_CACHE_IMAGE_DIR}"

CMD ["lambdas.traffic.handler"]
