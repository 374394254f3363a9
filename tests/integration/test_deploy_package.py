"""What `make package` produces, checked offline: nothing here reaches AWS or a docker daemon.

``osls package --stage dev`` runs in a staging folder (the work tree is never written to) with
dummy credentials. Its AWS calls go to a moto server on loopback: CloudFormation DescribeStacks
(to reuse layers already uploaded), which answers that no stack exists, as a first deploy would
see; STS GetCallerIdentity and ECR (the stage's repository, created with its lifecycle rule) for
the traffic function's container image. osls builds and pushes that image with the docker CLI:
here a stand-in first on PATH, which checks what a build needs (the Dockerfile, every COPY
source in the context) and answers a push with a digest of those bytes. The image's own
contents are tested with its Dockerfile. The numpy layer is built from this interpreter's
installed packages (``--source venv``) so its code imports here; the deployed layer holds the
same release built for CPython 3.12 on manylinux x86_64.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import boto3
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
    ("ScoreFunctionRole", "dynamodb:ListStreams"): "lists stream ARNs only; reads are per stream",
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
TRAFFIC_DOCKERFILE = Path("lambdas") / "traffic.Dockerfile"

# The docker CLI as `osls package` calls it (node_modules/osls/lib/plugins/aws/provider.js,
# resolveImageUriAndShaFromPath and dockerPushToEcr): --version; build -t REPO:NAME -f
# DOCKERFILE CONTEXT --platform=... --provenance=...; tag; push, whose output osls searches for
# the first sha256:<64 hex>. Each call is recorded in calls.jsonl next to this script.
_DOCKER = """#!{python}
import hashlib, json, os, sys
from pathlib import Path

sys.path.insert(0, {root!r})
from localcloud import dockerfile
from localcloud.imagebuild import ignore_patterns, ignored

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images.json"


def fail(message):
    print(f"docker stand-in: {{message}}", file=sys.stderr)
    raise SystemExit(1)


def record(argv, **extra):
    with (HERE / "calls.jsonl").open("a") as out:
        out.write(json.dumps({{"argv": argv, "cwd": os.getcwd(), **extra}}) + "\\n")


def images():
    return json.loads(IMAGES.read_text()) if IMAGES.exists() else {{}}


def sent(context, source, patterns):
    \"\"\"The files the context sends for one COPY source, sorted (the source may be a folder).\"\"\"
    if source.startswith("/") or ".." in source.split("/") or "$" in source or "*" in source:
        fail(f"COPY source {{source!r}} is not supported")
    path = context / source
    if not path.exists():
        fail(f"COPY {{source}}: not found in the build context {{context}}")
    if ignored(source, patterns):
        fail(f"COPY {{source}}: excluded by .dockerignore")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    out = []
    for file in files:
        relative = os.path.relpath(file, context)
        if not ignored(relative, patterns):
            out.append((relative, file))
    return out


def build(args):
    tag = file = context = None
    i = 0
    while i < len(args):
        if args[i] in ("-t", "-f", "--build-arg", "--cache-from"):
            if args[i] == "-t":
                tag = args[i + 1]
            elif args[i] == "-f":
                file = args[i + 1]
            i += 2
        elif args[i].startswith("-"):
            i += 1
        elif context is None:
            context, i = args[i], i + 1
        else:
            fail(f"two build contexts: {{context}} {{args[i]}}")
    if not (tag and file and context):
        fail(f"build needs -t, -f and a context: {{args}}")
    context, file = Path(context), Path(file)
    if not file.is_file():
        fail(f"the Dockerfile {{file}} does not exist")
    patterns = ignore_patterns(context)
    digest = hashlib.sha256(file.read_bytes())
    for instruction in dockerfile.read(file):
        if instruction.keyword != "COPY":
            continue
        words = instruction.words()
        if any(w.startswith("--from") for w in words):
            continue
        sources = [w for w in words if not w.startswith("--")][:-1]
        for source in sources:
            for relative, path in sent(context, source, patterns):
                digest.update(relative.encode() + b"\\0" + path.read_bytes())
    IMAGES.write_text(json.dumps({{**images(), tag: digest.hexdigest()}}))
    record(["build", *args], digest=digest.hexdigest(), context=str(context), file=str(file))


def main(argv):
    if argv == ["--version"]:
        print("Docker version 27.0.0, build stand-in")
    elif argv[:1] == ["build"]:
        build(argv[1:])
    elif argv[:1] == ["tag"] and len(argv) == 3:
        known = images()
        if argv[1] not in known:
            fail(f"No such image: {{argv[1]}}")
        IMAGES.write_text(json.dumps({{**known, argv[2]: known[argv[1]]}}))
        record(argv)
    elif argv[:1] == ["push"] and len(argv) == 2:
        digest = images().get(argv[1]) or fail(f"An image does not exist locally with the tag: {{argv[1]}}")
        repository, _, name = argv[1].rpartition(":")
        print(f"The push refers to repository [{{repository}}]")
        print(f"{{name}}: digest: sha256:{{digest}} size: 1234")
        record(argv, digest=digest)
    else:
        fail(f"not a call osls makes: docker {{' '.join(argv)}}")


main(sys.argv[1:])
"""


def _docker_stand_in(folder: Path) -> Path:
    folder.mkdir()
    script = folder / "docker"
    script.write_text(_DOCKER.format(python=sys.executable, root=str(ROOT)))
    script.chmod(0o755)
    return folder


def _docker_calls(folder: Path) -> list[dict[str, Any]]:
    calls = folder / "calls.jsonl"
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def _moto_client(service: str, url: str) -> Any:
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="dummy",
        aws_secret_access_key="dummy",
    )


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The repository staged as osls and docker see it: serverless.yml in stage/infra, whose
    image context (``path: ..``) is stage/, holding what the Dockerfile copies."""
    stage = tmp_path_factory.mktemp("stage")
    service = stage / "infra"
    service.mkdir()
    shutil.copy(ROOT / "infra" / "serverless.yml", service / "serverless.yml")
    (service / "lambdas").symlink_to(ROOT / "lambdas")
    for shared in ("lambdas", "requirements"):
        (stage / shared).symlink_to(ROOT / shared)
    shutil.copy(ROOT / ".dockerignore", stage / ".dockerignore")
    docker = _docker_stand_in(stage / "bin")
    figures = package_functions.build(service / "build", source="venv", python_version="", compresslevel=1)
    server = MotoServer().start()
    try:
        account = _moto_client("sts", server.url).get_caller_identity()["Account"]
        env = {
            "PATH": f"{docker}:{os.environ['PATH']}",
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
            cwd=service,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        ecr = _moto_client("ecr", server.url)
        # Only osls's repository: an in-process moto server shares its backend with the other
        # tests' mocks, whose repositories may still be there.
        repositories = [
            r
            for r in ecr.describe_repositories()["repositories"]
            if r["repositoryName"].startswith("serverless-")
        ]
        lifecycle = {
            r["repositoryName"]: json.loads(
                ecr.get_lifecycle_policy(repositoryName=r["repositoryName"])["lifecyclePolicyText"]
            )
            for r in repositories
        }
    finally:
        server.stop()
    template_path = service / ".serverless" / "cloudformation-template-update-stack.json"
    return {
        "stage": stage,
        "service": service,
        "account": account,
        "docker": _docker_calls(docker),
        "repositories": repositories,
        "lifecycle": lifecycle,
        "result": result,
        "figures": figures,
        "template_path": template_path,
        "template": json.loads(template_path.read_text()) if template_path.exists() else {},
    }


def _all_functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::Lambda::Function"}


def _functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The zip functions (a container image function has no Handler)."""
    return {k: v for k, v in _all_functions(template).items() if "Handler" in v["Properties"]}


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
    out: list[tuple[str, dict[str, Any]]] = []
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
    for logical, fn in _all_functions(packaged["template"]).items():
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
    """Import a zip function's handler with only its package, its layers and the runtime's boto3."""
    stage: Path = packaged["stage"]
    service: Path = packaged["service"]
    name = logical.removesuffix("LambdaFunction").lower()
    work = stage / "unpacked" / name
    shutil.rmtree(work, ignore_errors=True)
    task = work / "task"
    with zipfile.ZipFile(service / ".serverless" / f"{name}.zip") as archive:
        archive.extractall(task)
    layers = work / "opt"
    layers.mkdir()
    for ref in fn["Properties"].get("Layers", []):
        artifact = {"NumpyLambdaLayer": "numpy.zip"}[ref["Ref"]]
        with zipfile.ZipFile(service / "build" / artifact) as archive:
            archive.extractall(layers)
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONPATH": f"{layers / 'python'}:{_runtime_dir(stage)}",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "dummy",
        "AWS_SECRET_ACCESS_KEY": "dummy",
    }
    command = [sys.executable, "-S", "-c", _PROBE, fn["Properties"]["Handler"]]
    result = subprocess.run(command, cwd=task, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
    return json.loads(result.stdout.splitlines()[-1])


def test_package_each_zip_function_imports_from_its_own_package(packaged: dict[str, Any]) -> None:
    functions = _functions(packaged["template"])
    assert {"UploadLambdaFunction", "TrainLambdaFunction"} <= set(functions)
    assert {"S3proxyLambdaFunction", "InferLambdaFunction", "ModelsLambdaFunction"} <= set(functions)
    # traffic is an image function: its image is built and run from its Dockerfile elsewhere.
    assert "TrafficLambdaFunction" in _all_functions(packaged["template"])
    assert "TrafficLambdaFunction" not in functions
    service: Path = packaged["service"]
    for logical, fn in functions.items():
        modules = _import_handler(packaged, logical, fn)
        name = logical.removesuffix("LambdaFunction").lower()
        for heavy in HEAVY:
            assert heavy not in modules, f"{name} imports {heavy}"
        with zipfile.ZipFile(service / ".serverless" / f"{name}.zip") as archive:
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


def test_package_traffic_is_the_image_osls_pushed_by_digest(packaged: dict[str, Any]) -> None:
    props = packaged["template"]["Resources"]["TrafficLambdaFunction"]["Properties"]
    pushes = [c for c in packaged["docker"] if c["argv"][0] == "push"]
    assert len(pushes) == 1, packaged["docker"]
    repository = f"{packaged['account']}.dkr.ecr.us-east-1.amazonaws.com/serverless-autoretrain-dev"
    assert pushes[0]["argv"] == ["push", f"{repository}:traffic"]
    assert props["PackageType"] == "Image"
    assert props["Code"] == {"ImageUri": f"{repository}@sha256:{pushes[0]['digest']}"}
    assert not {"Handler", "Runtime", "Layers"} & set(props)
    assert props["Architectures"] == ["x86_64"]
    # osls publishes a version whose CodeSha256 is the image digest.
    versions = [
        r["Properties"]
        for r in packaged["template"]["Resources"].values()
        if r["Type"] == "AWS::Lambda::Version"
        and r["Properties"]["FunctionName"] == {"Ref": "TrafficLambdaFunction"}
    ]
    assert [v.get("CodeSha256") for v in versions] == [pushes[0]["digest"]]


def test_package_creates_the_stage_repository_with_its_lifecycle_rule(packaged: dict[str, Any]) -> None:
    """osls creates the repository itself (not in the stack), with provider.ecr's settings."""
    [repository] = packaged["repositories"]
    assert repository["repositoryName"] == "serverless-autoretrain-dev"
    assert repository["imageScanningConfiguration"] == {"scanOnPush": True}
    [rule] = packaged["lifecycle"]["serverless-autoretrain-dev"]["rules"]
    assert rule["action"] == {"type": "expire"}
    assert rule["selection"] == {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 10}


def test_package_builds_the_traffic_image_from_the_repository_root(packaged: dict[str, Any]) -> None:
    stage: Path = packaged["stage"]
    builds = [c for c in packaged["docker"] if c["argv"][0] == "build"]
    assert len(builds) == 1, packaged["docker"]
    argv = builds[0]["argv"]
    assert builds[0]["file"] == str(stage / TRAFFIC_DOCKERFILE)
    assert argv[argv.index("-t") + 1] == "serverless-autoretrain-dev:traffic"
    # osls passes `path` as written: relative to its working folder, the service folder.
    assert builds[0]["context"] == ".."
    assert (Path(builds[0]["cwd"]) / builds[0]["context"]).resolve() == stage.resolve()
    assert "--platform=linux/amd64" in argv
    assert "--provenance=false" in argv
    # The digest pushed is the one built, of these sources (the stand-in's sha256).
    assert builds[0]["digest"] == next(c["digest"] for c in packaged["docker"] if c["argv"][0] == "push")
    assert re.fullmatch(r"[0-9a-f]{64}", builds[0]["digest"])


def test_package_layers_only_on_zip_functions_and_all_built_here(packaged: dict[str, Any]) -> None:
    resources = packaged["template"]["Resources"]
    layers = {k for k, v in resources.items() if v["Type"] == "AWS::Lambda::LayerVersion"}
    assert layers == {"NumpyLambdaLayer"}
    for logical, fn in _all_functions(packaged["template"]).items():
        refs = fn["Properties"].get("Layers", [])
        if fn["Properties"].get("PackageType") == "Image":
            assert refs == [], f"{logical}: Lambda refuses layers on an image function"
        for ref in refs:
            assert isinstance(ref, dict) and ref.get("Ref") in layers, f"{logical}: layer {ref} is not built"


def test_docker_stand_in_refuses_a_copy_source_missing_from_the_context(tmp_path: Path) -> None:
    """The stand-in really checks the build: a COPY of a file the context lacks fails it."""
    docker = _docker_stand_in(tmp_path / "bin")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY present.txt missing.txt /app/\n")
    (tmp_path / "present.txt").write_text("x")
    build = [str(docker / "docker"), "build", "-t", "r:t", "-f", str(tmp_path / "Dockerfile"), str(tmp_path)]
    result = subprocess.run(build, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "COPY missing.txt: not found in the build context" in result.stderr
    assert _docker_calls(docker) == []


def test_package_sizes_fit_lambda_limits(
    packaged: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """The check deploy.sh runs after `osls package`, on this package: every zip function
    measured, the image function listed."""
    figures = packaged["figures"]
    package = packaged["service"] / ".serverless"
    functions = package_functions.packaged_functions(package)
    assert {f.name for f in functions} == {
        fn["Properties"]["FunctionName"] for fn in _functions(packaged["template"]).values()
    }
    report = io.StringIO()
    sizes = {s.function: s for s in package_functions.check_unzipped_sizes(functions, out=report)}
    print(report.getvalue(), end="")
    assert "autoretrain-dev-traffic" not in sizes
    for name, size in sizes.items():
        assert size.code < 1024 * 1024, f"{name} ships {size.code} bytes of its own"
        assert 0 <= size.margin == LIMIT - size.total
    # The layer is counted in, at what Lambda extracts.
    assert sizes["autoretrain-dev-infer"].layers == (("numpy", figures["numpy"]["layer_unzipped"]),)
    assert package_functions.image_functions(package) == ["autoretrain-dev-traffic"]
    capsys.readouterr()
    assert package_functions.main(["--check-sizes", str(package)]) == 0
    out = capsys.readouterr().out
    assert package_functions.IMAGE_LINE.format(name="autoretrain-dev-traffic") in out.splitlines()


def test_deploy_checks_sizes_between_package_and_upload() -> None:
    script = (ROOT / "scripts" / "deploy.sh").read_text()
    package = script.index('"$osls" package')
    check = script.index("-m scripts.package_functions --check-sizes")
    upload = script.index('"$osls" deploy --package .serverless')
    assert package < check < upload
