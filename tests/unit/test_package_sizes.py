"""Lambda's unzipped-size limit, checked on the package before anything is uploaded.

Lambda counts a function's own zip plus every layer it references, extracted: at most
262,144,000 bytes (docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html), else
InvalidParameterValueException "Function code combined with layers exceeds the maximum allowed
size of 262144000 bytes. The actual size is N bytes." A container image function has no zip:
the check lists it, with its own limit, and refuses it layers.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from scripts import package_functions
from scripts.package_functions import (
    LAMBDA_UNZIPPED_LIMIT,
    FunctionPackage,
    PackageCheckError,
    PackageTooLarge,
    UnknownLayer,
    check_unzipped_sizes,
    image_functions,
    packaged_functions,
    unzipped_size,
)

CODE = 1000  # bytes of the synthetic function's own code at the limit


def _zip(path: Path, files: dict[str, int]) -> Path:
    """A zip whose entries hold the given numbers of zero bytes (deflated: small on disk)."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, size in files.items():
            with archive.open(name, "w") as sink:
                while size > 0:
                    sink.write(chunk[: min(size, len(chunk))])
                    size -= min(size, len(chunk))
    return path


@pytest.fixture(scope="module")
def big_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A layer that leaves exactly CODE bytes of the limit (two files: sizes add up)."""
    rest = LAMBDA_UNZIPPED_LIMIT - CODE
    return _zip(
        tmp_path_factory.mktemp("layer") / "deps.zip", {"python/a": rest // 2, "python/b": rest - rest // 2}
    )


def test_limit_is_awss_number_of_bytes() -> None:
    assert LAMBDA_UNZIPPED_LIMIT == 262_144_000


def test_unzipped_size_is_the_sum_of_the_entries_uncompressed(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "fn.zip", {"lambdas/a.py": 10_000_000, "lambdas/b.py": 7})
    assert archive.stat().st_size < 1_000_000  # deflated zeros: the measure is not the file's size
    assert unzipped_size(archive) == 10_000_007


def test_check_unzipped_sizes_accepts_a_function_exactly_at_the_limit(
    tmp_path: Path, big_layer: Path
) -> None:
    code = _zip(tmp_path / "fn.zip", {"lambdas/fn.py": CODE})
    [size] = check_unzipped_sizes([FunctionPackage("fn", code, (("deps", big_layer),))])
    assert (size.code, size.layers, size.total, size.margin) == (
        CODE,
        (("deps", LAMBDA_UNZIPPED_LIMIT - CODE),),
        LAMBDA_UNZIPPED_LIMIT,
        0,
    )


def test_check_unzipped_sizes_refuses_one_byte_over_with_awss_message(
    tmp_path: Path, big_layer: Path
) -> None:
    code = _zip(tmp_path / "fn.zip", {"lambdas/fn.py": CODE + 1})
    with pytest.raises(PackageTooLarge) as err:
        check_unzipped_sizes([FunctionPackage("autoretrain-dev-fn", code, (("deps", big_layer),))])
    assert str(err.value) == (
        "autoretrain-dev-fn: Function code combined with layers exceeds the maximum allowed size of "
        "262144000 bytes. The actual size is 262144001 bytes. (code 1001 + layer deps 262143000)"
    )


def test_check_unzipped_sizes_counts_the_layers_in(tmp_path: Path, big_layer: Path) -> None:
    code = _zip(tmp_path / "fn.zip", {"lambdas/fn.py": CODE + 1})
    small = _zip(tmp_path / "small.zip", {"python/x": 10})
    assert check_unzipped_sizes([FunctionPackage("fn", code, (("small", small),))])[0].total == CODE + 11
    with pytest.raises(PackageTooLarge, match=r"^fn: .* The actual size is 262144011 bytes\. "):
        check_unzipped_sizes([FunctionPackage("fn", code, (("small", small), ("deps", big_layer)))])


def test_check_unzipped_sizes_names_every_function_over_and_prints_each_margin(
    tmp_path: Path, big_layer: Path
) -> None:
    fits = _zip(tmp_path / "fits.zip", {"a.py": 5})
    over = _zip(tmp_path / "over.zip", {"a.py": CODE + 2})
    out = io.StringIO()
    with pytest.raises(PackageTooLarge) as err:
        check_unzipped_sizes(
            [
                FunctionPackage("one", over, (("deps", big_layer),)),
                FunctionPackage("small", fits),
                FunctionPackage("two", over, (("deps", big_layer),)),
            ],
            out=out,
        )
    assert [line.split(":")[0] for line in str(err.value).splitlines()] == ["one", "two"]
    lines = out.getvalue().splitlines()
    assert lines[1] == (
        "small: 5 bytes unzipped (code 5); margin 262,143,995 bytes (250.0 MB) to the 262,144,000-byte limit"
    )
    assert lines[0].startswith(
        "one: 262,144,002 bytes unzipped (code 1,002 + layer deps 262,143,000); margin -2 bytes"
    )


def _osls_output(service: Path, layers: list[object], image_layers: list[object] | None = None) -> Path:
    """The parts of an `osls package` folder the check reads, shaped as osls 4.3.1 writes them;
    with ``image_layers``, also a container image function (Layers only if not empty)."""
    package = service / ".serverless"
    package.mkdir(parents=True)
    (service / "build").mkdir()
    _zip(service / "build" / "numpy.zip", {"python/numpy/core.so": 300})
    _zip(package / "infer.zip", {"lambdas/infer.py": 20})
    _zip(package / "models.zip", {"lambdas/models.py": 7})
    key = "serverless/autoretrain/dev/1-2026/"
    template = {
        "Resources": {
            "NumpyLambdaLayer": {
                "Type": "AWS::Lambda::LayerVersion",
                "Properties": {"Content": {"S3Bucket": {"Ref": "B"}, "S3Key": key + "numpy.zip"}},
            },
            "InferLambdaFunction": {
                "Type": "AWS::Lambda::Function",
                "Properties": {
                    "FunctionName": "autoretrain-dev-infer",
                    "Code": {"S3Bucket": {"Ref": "B"}, "S3Key": key + "infer.zip"},
                    "Layers": layers,
                },
            },
            "ModelsLambdaFunction": {
                "Type": "AWS::Lambda::Function",
                "Properties": {
                    "FunctionName": "autoretrain-dev-models",
                    "Code": {"S3Bucket": {"Ref": "B"}, "S3Key": key + "models.zip"},
                },
            },
        }
    }
    if image_layers is not None:
        image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/serverless-autoretrain-dev@sha256:" + "ab" * 32
        template["Resources"]["TrafficLambdaFunction"] = {
            "Type": "AWS::Lambda::Function",
            "Properties": {
                "Code": {"ImageUri": image},
                "PackageType": "Image",
                "FunctionName": "autoretrain-dev-traffic",
                **({"Layers": image_layers} if image_layers else {}),
            },
        }
    state = {
        "service": {
            "initialServerlessConfig": {"layers": {"numpy": {"package": {"artifact": "build/numpy.zip"}}}},
            "layers": {"$ref": '$["service"]["initialServerlessConfig"]["layers"]'},
        }
    }
    (package / "cloudformation-template-update-stack.json").write_text(json.dumps(template))
    (package / "serverless-state.json").write_text(json.dumps(state))
    return package


def test_packaged_functions_pairs_each_function_with_its_layer_artifacts(tmp_path: Path) -> None:
    package = _osls_output(tmp_path, [{"Ref": "NumpyLambdaLayer"}])
    assert packaged_functions(package) == [
        FunctionPackage(
            "autoretrain-dev-infer", package / "infer.zip", (("numpy", tmp_path / "build" / "numpy.zip"),)
        ),
        FunctionPackage("autoretrain-dev-models", package / "models.zip"),
    ]
    assert [s.total for s in check_unzipped_sizes(packaged_functions(package))] == [320, 7]


def test_an_image_function_is_listed_not_measured(tmp_path: Path) -> None:
    package = _osls_output(tmp_path, [{"Ref": "NumpyLambdaLayer"}], image_layers=[])
    assert [f.name for f in packaged_functions(package)] == [
        "autoretrain-dev-infer",
        "autoretrain-dev-models",
    ]
    assert image_functions(package) == ["autoretrain-dev-traffic"]


def test_an_image_function_with_layers_is_refused(tmp_path: Path) -> None:
    package = _osls_output(
        tmp_path, [{"Ref": "NumpyLambdaLayer"}], image_layers=[{"Ref": "NumpyLambdaLayer"}]
    )
    with pytest.raises(
        PackageCheckError, match=r"^autoretrain-dev-traffic: a container image function cannot have layers"
    ):
        image_functions(package)


def test_main_check_sizes_reports_an_image_function_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = _osls_output(tmp_path, [{"Ref": "NumpyLambdaLayer"}], image_layers=[])
    assert package_functions.main(["--check-sizes", str(package)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "autoretrain-dev-infer: 320 bytes unzipped (code 20 + layer numpy 300); "
        "margin 262,143,680 bytes (250.0 MB) to the 262,144,000-byte limit",
        "autoretrain-dev-models: 7 bytes unzipped (code 7); "
        "margin 262,143,993 bytes (250.0 MB) to the 262,144,000-byte limit",
        "autoretrain-dev-traffic: container image (Lambda's limit is 10 GB uncompressed, "
        "not the 250 MB of a zip package)",
    ]


def test_packaged_functions_refuses_a_layer_it_cannot_measure(tmp_path: Path) -> None:
    arn = "arn:aws:lambda:us-east-1:123456789012:layer:other:3"
    package = _osls_output(tmp_path, [arn])
    with pytest.raises(
        UnknownLayer, match=r"^autoretrain-dev-infer: layer arn:aws:lambda:.*:other:3 is not built"
    ):
        packaged_functions(package)


def test_packaged_functions_refuses_a_missing_zip(tmp_path: Path) -> None:
    package = _osls_output(tmp_path, [{"Ref": "NumpyLambdaLayer"}])
    (tmp_path / "build" / "numpy.zip").unlink()
    with pytest.raises(PackageCheckError, match=r"^autoretrain-dev-infer: .*numpy\.zip is missing"):
        packaged_functions(package)


def test_main_check_sizes_fails_with_the_message(
    tmp_path: Path, big_layer: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = _osls_output(tmp_path, [{"Ref": "NumpyLambdaLayer"}])
    assert package_functions.main(["--check-sizes", str(package)]) == 0
    assert "autoretrain-dev-infer: 320 bytes unzipped (code 20 + layer numpy 300)" in capsys.readouterr().out
    (tmp_path / "build" / "numpy.zip").unlink()
    (tmp_path / "build" / "numpy.zip").symlink_to(big_layer)  # leaves CODE bytes for the function
    _zip(package / "infer.zip", {"lambdas/infer.py": CODE + 1})
    assert package_functions.main(["--check-sizes", str(package)]) == 1
    assert capsys.readouterr().err.startswith(
        "autoretrain-dev-infer: Function code combined with layers exceeds the maximum allowed size of "
        "262144000 bytes. The actual size is 262144001 bytes."
    )
