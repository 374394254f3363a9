"""What `make package` produces, checked offline: nothing here reaches AWS.

``osls package --stage dev`` runs in a staging folder (the work tree is never written to) with
dummy credentials; the only AWS call it makes (CloudFormation DescribeStacks, to reuse layers
already uploaded) goes to a moto server on loopback, which answers that no stack exists, as a
first deploy would see. The layers are built from this interpreter's installed packages
(``--source venv``) so their code imports here; the deployed layers hold the same releases
built for CPython 3.12 on manylinux x86_64.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from localcloud.motoserver import MotoServer
from scripts import package_functions

ROOT = Path(__file__).resolve().parents[2]
OSLS = ROOT / "node_modules" / ".bin" / "osls"
LIMIT = package_functions.LAMBDA_UNZIPPED_LIMIT

pytestmark = pytest.mark.slow

# Statements that AWS only accepts with Resource "*" (the action has no resource type).
# (role logical id, action) -> why it is acceptable.
WILDCARD_RESOURCE_ALLOWED = {
    ("TrainInstanceRole", "ecr:GetAuthorizationToken"): "registry login token; the pull is one repository",
    ("TrainFunctionRole", "ec2:DescribeInstances"): "Describe* has no resource-level permission",
    ("TrainFunctionRole", "dynamodb:ListStreams"): "lists stream ARNs only; reads are per stream",
    (
        "TrainInstanceRole",
        "cloudwatch:PutMetricData",
    ): "no resource type; limited to one namespace by condition",
}
# Managed policies carry AWS's own statements (often Resource "*"): none is accepted.
MANAGED_POLICIES_ALLOWED: set[str] = set()

# What the python3.12 Lambda runtime provides besides the standard library.
RUNTIME_PACKAGES = ["boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six"]
# package.patterns at the top of serverless.yml: every function's package carries these.
SHARED_BASE = {
    "lambdas",
    "lambdas.core",
    *(f"lambdas.core.{m}" for m in ("aws", "errors", "log", "registry", "settings")),
}
HEAVY = ["tensorflow", "tf_keras", "tensorflowjs", "jax", "scipy", "numba", "pythermalcomfort", "moto"]


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    stage = tmp_path_factory.mktemp("stage")
    shutil.copy(ROOT / "infra" / "serverless.yml", stage / "serverless.yml")
    (stage / "lambdas").symlink_to(ROOT / "lambdas")
    figures = package_functions.build(stage / "build", source="venv", python_version="", compresslevel=1)
    server = MotoServer().start()
    try:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(stage),
            "AWS_ACCESS_KEY_ID": "dummy",
            "AWS_SECRET_ACCESS_KEY": "dummy",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": server.url,
            "SLS_TELEMETRY_DISABLED": "1",
            "SLS_NOTIFICATIONS_MODE": "off",
        }
        result = subprocess.run(
            [str(OSLS), "package", "--stage", "dev"],
            cwd=stage,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        server.stop()
    template_path = stage / ".serverless" / "cloudformation-template-update-stack.json"
    return {
        "stage": stage,
        "result": result,
        "figures": figures,
        "template_path": template_path,
        "template": json.loads(template_path.read_text()) if template_path.exists() else {},
    }


def _functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        k: v
        for k, v in template["Resources"].items()
        if v["Type"] == "AWS::Lambda::Function" and "Handler" in v["Properties"]
    }


def test_package_runs_offline_with_dummy_credentials(packaged: dict[str, Any]) -> None:
    result = packaged["result"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert packaged["template_path"].exists()
    assert not (ROOT / "infra" / ".serverless").exists() or (ROOT / "infra" / ".serverless").is_dir()


def test_package_template_passes_cfn_lint(packaged: dict[str, Any]) -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("cfn-lint")),
            # osls writes DependsOn next to the Fn::GetAtt of every custom function role:
            # redundant, harmless, and not ours to change.
            "--ignore-checks",
            "W3005",
            "--",
            str(packaged["template_path"]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _statements(policy_document: Any) -> list[dict[str, Any]]:
    statements = policy_document.get("Statement", [])
    return statements if isinstance(statements, list) else [statements]


def _branches(value: Any) -> list[Any]:
    """Both outcomes of an Fn::If (a statement must be acceptable whichever way it goes)."""
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        _, yes, no = value["Fn::If"]
        return [*_branches(yes), *_branches(no)]
    if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] == "AWS::NoValue":
        return []
    return [value]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def iam_statements(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for logical, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::IAM::Role":
            for policy in _as_list(props.get("Policies", [])):
                for branch in _branches(policy):
                    out.extend((logical, s) for s in _statements(branch["PolicyDocument"]))
        elif resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            out.extend((logical, s) for s in _statements(props["PolicyDocument"]))
    return out


def iam_violations(template: dict[str, Any]) -> list[str]:
    problems = []
    for logical, resource in template["Resources"].items():
        for arn in resource.get("Properties", {}).get("ManagedPolicyArns", []) or []:
            if arn not in MANAGED_POLICIES_ALLOWED:
                problems.append(f"{logical}: managed policy {arn}")
    for logical, statement in iam_statements(template):
        if "NotAction" in statement or "NotResource" in statement:
            problems.append(f"{logical}: NotAction/NotResource")
        if statement.get("Effect") != "Allow":
            continue
        actions = _as_list(statement.get("Action", []))
        for action in actions:
            if "*" in action:
                problems.append(f"{logical}: wildcard action {action}")
        if "*" in _as_list(statement.get("Resource", [])):
            for action in actions:
                if (logical, action) not in WILDCARD_RESOURCE_ALLOWED:
                    problems.append(f"{logical}: {action} on Resource *")
    return problems


def test_iam_every_statement_is_least_privilege(packaged: dict[str, Any]) -> None:
    template = packaged["template"]
    assert len(iam_statements(template)) > 20  # the walk really found the roles' statements
    assert iam_violations(template) == []


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ({"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/*"}, "wildcard action s3:*"),
        ({"Effect": "Allow", "Action": ["dynamodb:*"], "Resource": "arn:t"}, "wildcard action dynamodb:*"),
        ({"Effect": "Allow", "Action": "*", "Resource": "arn:t"}, "wildcard action *"),
        ({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}, "s3:GetObject on Resource *"),
        ({"Effect": "Allow", "NotAction": "s3:GetObject", "Resource": "arn:t"}, "NotAction/NotResource"),
    ],
)
def test_iam_walk_rejects_wildcards(statement: dict[str, Any], expected: str) -> None:
    template = {
        "Resources": {
            "SomeRole": {
                "Type": "AWS::IAM::Role",
                "Properties": {
                    "Policies": [
                        {
                            "Fn::If": [
                                "Cond",
                                {"PolicyDocument": {"Statement": [statement]}},
                                {"Ref": "AWS::NoValue"},
                            ]
                        }
                    ]
                },
            }
        }
    }
    assert iam_violations(template) == [f"SomeRole: {expected}"]


def test_iam_walk_rejects_managed_policies() -> None:
    arn = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
    template = {"Resources": {"R": {"Type": "AWS::IAM::Role", "Properties": {"ManagedPolicyArns": [arn]}}}}
    assert iam_violations(template) == [f"R: managed policy {arn}"]


def test_iam_every_function_has_its_own_narrow_role(packaged: dict[str, Any]) -> None:
    for logical, fn in _functions(packaged["template"]).items():
        role = fn["Properties"]["Role"]
        assert role != {"Fn::GetAtt": ["IamRoleLambdaExecution", "Arn"]}, logical
        assert "IamRoleLambdaExecution" not in packaged["template"]["Resources"]


def test_iam_pass_role_only_for_the_instance_role(packaged: dict[str, Any]) -> None:
    passes = [
        (r, s) for r, s in iam_statements(packaged["template"]) if "iam:PassRole" in _as_list(s["Action"])
    ]
    assert passes
    for _, statement in passes:
        assert statement["Resource"] == {"Fn::GetAtt": ["TrainInstanceRole", "Arn"]}
        assert statement["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}


def _runtime_dir(base: Path) -> Path:
    """A folder holding only what the Lambda runtime adds to the standard library (boto3)."""
    runtime = base / "runtime"
    if not runtime.exists():
        runtime.mkdir()
        import boto3

        site = Path(boto3.__file__).resolve().parents[1]
        for name in RUNTIME_PACKAGES:
            for candidate in (site / name, site / f"{name}.py"):
                if candidate.exists():
                    (runtime / candidate.name).symlink_to(candidate)
    return runtime


_PROBE = """
import importlib, json, sys
module, attribute = sys.argv[1].replace("/", ".").rsplit(".", 1)
handler = getattr(importlib.import_module(module), attribute)
assert callable(handler)
print(json.dumps({n: getattr(m, "__file__", None) for n, m in sys.modules.items()}))
"""


def _import_handler(packaged: dict[str, Any], logical: str, fn: dict[str, Any]) -> dict[str, str | None]:
    """Import the handler with only its package, its layers and the runtime's boto3."""
    stage: Path = packaged["stage"]
    name = logical.removesuffix("LambdaFunction").lower()
    work = stage / "unpacked" / name
    shutil.rmtree(work, ignore_errors=True)
    task = work / "task"
    with zipfile.ZipFile(stage / ".serverless" / f"{name}.zip") as archive:
        archive.extractall(task)
    layers = work / "opt"
    layers.mkdir()
    for ref in fn["Properties"].get("Layers", []):
        artifact = {"NumpyLambdaLayer": "numpy.zip", "TrafficDepsLambdaLayer": "traffic-deps.zip"}[ref["Ref"]]
        with zipfile.ZipFile(stage / "build" / artifact) as archive:
            archive.extractall(layers)
    environment = fn["Properties"].get("Environment", {}).get("Variables", {})
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONPATH": f"{layers / 'python'}:{_runtime_dir(stage)}",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "dummy",
        "AWS_SECRET_ACCESS_KEY": "dummy",
        "NUMBA_CACHE_DIR": str(work / "numba-cache"),
        "TRAFFIC_DEPS_DIR": str(work / "tmp-deps"),
    }
    command = [sys.executable, "-S", "-c", _PROBE, fn["Properties"]["Handler"]]
    wrapper = environment.get("AWS_LAMBDA_EXEC_WRAPPER")
    if wrapper:
        assert wrapper.startswith("/opt/")
        command = ["/bin/sh", str(layers / wrapper.removeprefix("/opt/")), *command]
    result = subprocess.run(command, cwd=task, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
    return json.loads(result.stdout.splitlines()[-1])


def test_package_each_function_imports_from_its_own_package(packaged: dict[str, Any]) -> None:
    functions = _functions(packaged["template"])
    assert {"UploadLambdaFunction", "TrafficLambdaFunction", "TrainLambdaFunction"} <= set(functions)
    assert {"S3proxyLambdaFunction", "InferLambdaFunction", "ModelsLambdaFunction"} <= set(functions)
    stage: Path = packaged["stage"]
    for logical, fn in functions.items():
        modules = _import_handler(packaged, logical, fn)
        name = logical.removesuffix("LambdaFunction").lower()
        for heavy in HEAVY:
            if name == "traffic" and heavy in ("scipy", "numba", "pythermalcomfort"):
                assert heavy in modules, f"traffic should import {heavy}"
                continue
            assert heavy not in modules, f"{name} imports {heavy}"
        with zipfile.ZipFile(stage / ".serverless" / f"{name}.zip") as archive:
            names = archive.namelist()
        shipped = {
            n.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
            for n in names
            if n.endswith(".py")
        }
        imported = {m for m in modules if m == "lambdas" or m.startswith("lambdas.")}
        # The project's modules the handler imports, none missing; beyond them only the shared
        # base every package carries (infer imports two of it lazily, for MODEL_SOURCE=s3).
        assert imported <= shipped, f"{name}: missing {sorted(imported - shipped)}"
        assert shipped - imported <= SHARED_BASE, (
            f"{name}: ships unused {sorted(shipped - imported - SHARED_BASE)}"
        )
        assert not any(
            n.startswith(("trainer/", "tests/", "notebooks/", "node_modules/", "scripts/")) for n in names
        )


def test_package_sizes_fit_lambda_limits(packaged: dict[str, Any]) -> None:
    """The check deploy.sh runs after `osls package`, on this package: every function measured."""
    figures = packaged["figures"]
    # The reason traffic's layer is compressed: its dependencies alone exceed the limit.
    assert figures["traffic-deps"]["dependencies_unpacked"] > LIMIT
    functions = package_functions.packaged_functions(packaged["stage"] / ".serverless")
    assert {f.name for f in functions} == {
        fn["Properties"]["FunctionName"] for fn in _functions(packaged["template"]).values()
    }
    report = io.StringIO()
    sizes = {s.function: s for s in package_functions.check_unzipped_sizes(functions, out=report)}
    print(report.getvalue(), end="")
    for name, size in sizes.items():
        assert size.code < 1024 * 1024, f"{name} ships {size.code} bytes of its own"
        assert 0 <= size.margin == LIMIT - size.total
    # The layers are counted in, at what Lambda extracts (traffic's inner archive as one file).
    assert sizes["autoretrain-dev-infer"].layers == (("numpy", figures["numpy"]["layer_unzipped"]),)
    assert sizes["autoretrain-dev-traffic"].layers == (
        ("traffic-deps", figures["traffic-deps"]["layer_unzipped"]),
    )


def test_deploy_checks_sizes_between_package_and_upload() -> None:
    script = (ROOT / "scripts" / "deploy.sh").read_text()
    package = script.index('"$osls" package')
    check = script.index("-m scripts.package_functions --check-sizes")
    upload = script.index('"$osls" deploy --package .serverless')
    assert package < check < upload
