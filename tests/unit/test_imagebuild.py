"""Reading Dockerfiles and carrying out their steps without a docker engine (small images)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lambdas.core import kernels
from lambdas.core.errors import ConfigError
from localcloud import coldstart, dockerfile, imagebuild
from localcloud.dockerfile import DockerfileError

BASE = "FROM public.ecr.aws/lambda/python:3.12.2026.06.13.12-x86_64\n"


def test_parse_joins_continuations_and_skips_comments_inside_them() -> None:
    text = '# a comment\nFROM a:1\n\nRUN one \\\n  # inside\n  && two\ncmd ["x.y"]\n'
    parsed = dockerfile.parse(text)
    assert [(i.keyword, i.arguments, i.line) for i in parsed] == [
        ("FROM", "a:1", 2),
        ("RUN", "one && two", 4),
        ("CMD", '["x.y"]', 7),
    ]
    assert parsed[2].exec_form() == ["x.y"]


def test_parse_refuses_what_it_cannot_read() -> None:
    with pytest.raises(DockerfileError, match="ends inside a continued instruction"):
        dockerfile.parse("RUN a \\\n")
    with pytest.raises(DockerfileError, match="exec"):
        dockerfile.parse("CMD python -m x\n")[0].exec_form()


def test_environment_replacement_as_docker_does_it() -> None:
    env = {"A": "/var/task", "EMPTY": ""}
    assert dockerfile.expand("${A}/x $A/y", env) == "/var/task/x /var/task/y"
    assert dockerfile.expand("${EMPTY:-d} ${A:+set} ${EMPTY:+set}", env) == "d set "
    with pytest.raises(DockerfileError, match="EMPTY: must be set"):
        dockerfile.expand("${EMPTY:?must be set}", env)
    (instruction,) = dockerfile.parse('ENV B=${A}/b C="two words" D=$B\n')
    # Within one ENV, values see the environment before it (D gets the old B, here none).
    assert dockerfile.env_pairs(instruction, env) == [("B", "/var/task/b"), ("C", "two words"), ("D", "")]
    (legacy,) = dockerfile.parse("ENV NAME value\n")
    assert dockerfile.env_pairs(legacy, {}) == [("NAME", "value")]


def _build(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> imagebuild.Image:
    context = tmp_path / "context"
    context.mkdir(exist_ok=True)
    for name, content in (files or {}).items():
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        (context / name).write_text(content)
    (context / "Dockerfile").write_text(text)
    return imagebuild.build(context / "Dockerfile", context, tmp_path / "out", progress=lambda _: None)


def test_a_build_carries_out_env_workdir_copy_run_and_cmd_into_the_tree(tmp_path: Path) -> None:
    image = _build(
        tmp_path,
        BASE + "ENV OUT=${LAMBDA_TASK_ROOT}/made\nWORKDIR ${LAMBDA_TASK_ROOT}\n"
        "COPY app app/\nCOPY one.txt ./\n"
        'RUN echo "$(cat one.txt) more" > "${OUT}" \\\n'
        '  && python -c "import sys; print(sys.flags.no_site)" >> "${OUT}"\n'
        'CMD ["app.main.handler"]\n',
        {
            "app/main.py": "def handler(e, c): return 1\n",
            "app/__pycache__/x.pyc": "",
            "one.txt": "one",
            ".dockerignore": "**/__pycache__/\n",
        },
    )
    assert image.cmd == ["app.main.handler"] and image.handler == "app.main.handler"
    assert image.env["OUT"] == "/var/task/made" and image.workdir == "/var/task"
    assert (image.path("/var/task/app/main.py")).read_text().startswith("def handler")
    assert not (image.path("/var/task/app/__pycache__")).exists()  # .dockerignore applied
    # The RUN saw the image's paths inside the tree, and a python without this environment's packages.
    assert image.path("/var/task/made").read_text() == "one more\n1\n"
    assert imagebuild.Image.load(image.out) == image
    assert image.size() == sum(len(s) for s in ("def handler(e, c): return 1\n", "one", "one more\n1\n"))


@pytest.mark.parametrize(
    ("text", "files", "message"),
    [
        ("FROM python:3.12-slim\n", {}, "only public.ecr.aws/lambda/python is known"),
        (BASE + "USER 1000\n", {}, "USER is not supported"),
        (BASE + "RUN touch /etc/x\n", {}, "literal absolute path"),
        (BASE + "COPY ../outside x/\n", {}, "not found in the context"),
        (BASE + "COPY missing.txt x/\n", {}, "not found in the context"),
        (
            BASE + "COPY secret.txt x/\n",
            {"secret.txt": "s", ".dockerignore": "secret.txt\n"},
            "excluded by .dockerignore",
        ),
        (BASE + "COPY *.txt x/\n", {}, "wildcards"),
        (BASE + "RUN exit 3\n", {}, "RUN exited with 3"),
        (BASE + "ENV A=1\n", {}, "no CMD"),
        # The python3.12 base image has no findutils: find is "command not found" (127) here too.
        (BASE + "RUN find . -name x\n", {}, "RUN exited with 127"),
    ],
)
def test_a_build_refuses_what_it_cannot_carry_out_faithfully(
    tmp_path: Path, text: str, files: dict[str, str], message: str
) -> None:
    with pytest.raises(DockerfileError, match=message):
        _build(tmp_path, text, files)


def test_a_cold_start_imports_the_handler_read_only_and_reports_its_phases(tmp_path: Path) -> None:
    image = _build(
        tmp_path,
        BASE + 'WORKDIR ${LAMBDA_TASK_ROOT}\nCOPY app app/\nCMD ["app.main.handler"]\n',
        {
            "app/main.py": (
                "import os, pathlib\n"
                "def handler(event, context):\n"
                "    pathlib.Path(os.environ['TMPDIR'], 'note').write_text('x')\n"
                "    try:\n"
                "        pathlib.Path(__file__).with_name('new').write_text('x')\n"
                "        return 'image writable'\n"
                "    except OSError:\n"
                "        return event['answer']\n"
            )
        },
    )
    cold = coldstart.start_cold(image, {"answer": 42})
    assert cold.result == 42  # the handler could not write into the image
    assert list(cold.tmp_files) == ["note"] and cold.tmp_files["note"][0] == 1  # /tmp is its own
    assert 0 < cold.import_s < cold.init_s < cold.process_s and cold.first_s > 0
    assert (
        cold.read_only.startswith("read-only bind mount") or cold.read_only == coldstart.PERMISSIONS_REMOVED
    )
    assert not image.path("/var/task/app/new").exists()
    # A second build over the first replaces it, whatever the start did to its permissions.
    assert _build(tmp_path, BASE + 'CMD ["x.y"]\n').cmd == ["x.y"]


def test_use_image_cache_does_nothing_outside_an_image() -> None:
    assert kernels.use_image_cache({}) is None
    assert kernels.compiled_at_start({}) == []


def test_use_image_cache_copies_the_built_kernels_before_numba_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = tmp_path / "image-cache"
    (built / "pkg_abc").mkdir(parents=True)
    (built / "pkg_abc" / "f-1.py312.nbi").write_bytes(b"index")
    env = {
        "KERNEL_CACHE_IMAGE_DIR": str(built),
        "NUMBA_CACHE_DIR": str(tmp_path / "tmp" / "c"),
        "NUMBA_CPU_NAME": "generic",
    }
    monkeypatch.delitem(sys.modules, "numba", raising=False)
    assert kernels.use_image_cache(env) == tmp_path / "tmp" / "c"
    assert (tmp_path / "tmp" / "c" / "pkg_abc" / "f-1.py312.nbi").read_bytes() == b"index"
    assert kernels.compiled_at_start(env) == []  # the copy keeps size and time: nothing new
    (tmp_path / "tmp" / "c" / "pkg_abc" / "f-1.py312.1.nbc").write_bytes(b"compiled here")
    assert kernels.compiled_at_start(env) == ["pkg_abc/f-1.py312.1.nbc"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"NUMBA_CACHE_DIR": ""}, "NUMBA_CACHE_DIR must name"),
        ({"NUMBA_CPU_NAME": "skylake"}, "NUMBA_CPU_NAME must be 'generic'"),
        ({"KERNEL_CACHE_IMAGE_DIR": "/nonexistent/cache"}, "has no compiled kernels"),
        ({"KERNEL_CACHE_IMAGE_DIR": "{empty}"}, "holds no kernel index"),
    ],
)
def test_use_image_cache_refuses_an_image_that_would_compile_at_every_cold_start(
    tmp_path: Path, change: dict[str, str], message: str
) -> None:
    (tmp_path / "built" / "pkg").mkdir(parents=True)
    (tmp_path / "built" / "pkg" / "f-1.py312.nbi").write_bytes(b"index")
    (tmp_path / "empty").mkdir()
    env = {
        "KERNEL_CACHE_IMAGE_DIR": str(tmp_path / "built"),
        "NUMBA_CACHE_DIR": "/tmp/c",
        "NUMBA_CPU_NAME": "generic",
    }
    change = {k: v.replace("{empty}", str(tmp_path / "empty")) for k, v in change.items()}
    with pytest.raises(ConfigError, match=message):
        kernels.use_image_cache({**env, **change})


def test_use_image_cache_refuses_once_numba_is_imported(tmp_path: Path) -> None:
    import numba  # noqa: F401  (as it is once pythermalcomfort is)

    (tmp_path / "f-1.py312.nbi").write_bytes(b"index")
    env = {"KERNEL_CACHE_IMAGE_DIR": str(tmp_path), "NUMBA_CACHE_DIR": "/tmp/c", "NUMBA_CPU_NAME": "generic"}
    with pytest.raises(ConfigError, match="numba was imported before"):
        kernels.use_image_cache(env)


def test_image_metadata_round_trips(tmp_path: Path) -> None:
    image = imagebuild.Image(
        tmp_path, "D", "b", {"A": "1"}, "/var/task", ["m.h"], [imagebuild.Step(1, "FROM", 0.1)]
    )
    image.save()
    assert json.loads((tmp_path / "image.json").read_text())["cmd"] == ["m.h"]
    assert imagebuild.Image.load(tmp_path) == image
