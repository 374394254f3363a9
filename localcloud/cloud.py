"""The local cloud: the whole pipeline on loopback, built from infra/serverless.yml.

``LocalCloud`` starts, in order: the local AWS endpoint (moto's server behind the gate that
checks credentials, presigned URLs, service limits and IAM, in a process of its own); the
tables, bucket, queue, topic, repository, roles, secrets, usage plans and API keys the file
declares; the default client (``default``, trusted: an API key in the ``clients`` plan and its
registry record), whose key ``api_key`` and endpoints.json hold; an API Gateway stand-in
serving the file's ``http`` routes (the private ones check keys and plans in moto); a
scheduler firing its enabled ``schedule`` events; then
the drivers for what moto does not do by itself (stream poller, instance runner, alarm
evaluator, notifications). Each function runs in worker processes of its own
(``localcloud.functions``) with the environment the file gives it and its role's temporary
credentials, so every AWS call it makes is checked against that role's policy.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import boto3
import botocore.session

from lambdas.core import aws, clients
from lambdas.core.errors import NotFound
from localcloud import infra
from localcloud.apigw import ApiKeys, ApiServer
from localcloud.awsserver import AwsServer
from localcloud.driver import Context, Driver
from localcloud.functions import FunctionPool, FunctionSpec
from localcloud.logs import LogShipper
from localcloud.runtime import LambdaContext
from localcloud.scheduler import Scheduler, schedules

ROOT = infra.ROOT
DEFAULT_STATE_DIR = Path(".localcloud")
# Started after the core, in this order, and stopped in reverse.
DRIVER_MODULES = ("streams", "instances", "alarms", "notifications", "s3events")
# The local cloud's administrator (the operator, the drivers, the tests): the gate allows it
# everything. Functions and the trainer get their roles' temporary credentials instead.
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# Append every IAM decision of the gate to this file (JSON lines): the test suite's coverage.
IAM_RECORD_ENV = "LOCALCLOUD_IAM_RECORD"
# Concurrent execution environments per function unless it sets reservedConcurrency
# (custom.localCloud.functions.maxConcurrency overrides it).
DEFAULT_MAX_CONCURRENCY = 8
# Host variables a worker process keeps: what Python and numpy need to run here, not settings.
_PASSED_THROUGH = ("HOME", "LANG", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "SYSTEMROOT", "TMPDIR")
# The local cloud's own client: whoever uses the local API without naming another key.
DEFAULT_CLIENT = "default"
DEFAULT_CLIENT_PLAN = "clients"
# The `operators` plan's key (a resource of serverless.yml): the registry function accepts only
# it (OPERATOR_API_KEY_ID).
OPERATOR_KEY_LOGICAL_ID = "OperatorApiKey"
# A real profile or session token must never leak into the local cloud's calls.
_UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")

Handler = Callable[[dict[str, Any], Any], Any]


class LocalCloudError(RuntimeError):
    pass


def forget(state_dir: Path) -> None:
    """Start empty next time: remove the kept AWS state and the stream positions."""
    from localcloud import persistence, s3events
    from localcloud.streams import POSITIONS_FILE

    persistence.clear(Path(state_dir) / "aws")
    for path in (
        Path(state_dir) / POSITIONS_FILE,
        Path(state_dir) / s3events.POSITIONS_FILE,
        Path(state_dir) / "aws" / s3events.LOG_FILE,
    ):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _say(line: str) -> None:
    print(f"[localcloud] {line}", flush=True)


_LOADER: Any = None  # botocore's loader of service models, kept across starts


def _session(region: str) -> boto3.Session:
    """A boto3 session of its own (the environment's credentials and endpoint, read now) that
    shares one loader of the service models: each new loader parses every service's model
    again (hundreds of milliseconds for the dozen services a start uses)."""
    global _LOADER
    core = botocore.session.get_session()
    if _LOADER is None:
        _LOADER = core.get_component("data_loader")
    else:
        core.register_component("data_loader", _LOADER)
    return boto3.Session(botocore_session=core, region_name=region)


class LocalCloud:
    def __init__(
        self,
        state_dir: Path = DEFAULT_STATE_DIR,
        *,
        api_port: int = 0,
        aws_port: int = 0,
        stage: str = "local",
        region: str = "us-east-1",
        config_path: Path = infra.SERVERLESS_YML,
        schedule_overrides: Mapping[str, Mapping[str, Any]] | None = None,
        environment: Mapping[str, str] | None = None,
        handlers: Mapping[str, Handler] | None = None,
        drivers: Sequence[str] = DRIVER_MODULES,
        function_log: Path | None = None,
        web_dir: Path | None = ROOT / "web",
        say: Callable[[str], None] = _say,
        iam_record: Path | None = None,
        durable: bool = False,
    ) -> None:
        """``schedule_overrides`` and ``environment`` apply on top of custom.localCloud;
        ``handlers`` replaces functions' handlers with callables run in this process (a test
        hook: they get no role and no process of their own); ``function_log`` sends the
        functions' output to a file instead of stdout; ``iam_record`` (or the variable
        LOCALCLOUD_IAM_RECORD) is where the gate appends its IAM decisions; ``durable`` keeps the
        AWS state (and the stream positions) in ``state_dir`` across stops and crashes."""
        self.state_dir = Path(state_dir)
        self.stage = stage
        self.region = region
        self.say = say
        self._api_port = api_port
        self._aws_port = aws_port
        self._config_path = config_path
        self._schedule_overrides = {k: dict(v) for k, v in (schedule_overrides or {}).items()}
        self._environment = dict(environment or {})
        self._handler_overrides = dict(handlers or {})
        self._driver_modules = tuple(drivers)
        self._function_log = function_log
        self._web_dir = web_dir
        record = iam_record or os.environ.get(IAM_RECORD_ENV)
        self._iam_record = Path(record) if record else None
        self.durable = durable

        self.moto: AwsServer | None = None
        self.api: ApiServer | None = None
        self.scheduler: Scheduler | None = None
        self.drivers: list[Driver] = []
        self.context: Context | None = None
        self._stack: infra.Stack | None = None
        self._saved_env: dict[str, str | None] = {}
        self._pools: dict[str, FunctionPool] = {}
        self._pools_lock = threading.Lock()
        self._credentials: dict[str, dict[str, str]] = {}  # role logical id -> its session
        self._log_lock = threading.Lock()
        self._logs: LogShipper | None = None
        self._api_key: str | None = None
        self._operator_api_key: str | None = None
        self.invocations: Counter[str] = Counter()

    # --- public ---------------------------------------------------------------------------

    @property
    def stack(self) -> infra.Stack:
        if self._stack is None:
            raise LocalCloudError("the local cloud is not running")
        return self._stack

    @property
    def api_url(self) -> str:
        if self.api is None:
            raise LocalCloudError("the local cloud is not running")
        return self.api.url

    @property
    def aws_url(self) -> str:
        if self.moto is None:
            raise LocalCloudError("the local cloud is not running")
        return self.moto.url

    @property
    def api_key(self) -> str:
        """The default client's API key value (x-api-key header of the private routes)."""
        if self._api_key is None:
            raise LocalCloudError(
                "the local cloud is not running"
                if self._stack is None
                else f"no default client: serverless.yml declares no usage plan {DEFAULT_CLIENT_PLAN!r}"
            )
        return self._api_key

    @property
    def operator_api_key(self) -> str:
        """The value of the operators' key (the stack's key of the ``operators`` usage plan),
        the only one the registry routes (promote, pin, unpin) accept."""
        if self._operator_api_key is None:
            raise LocalCloudError(
                "the local cloud is not running"
                if self._stack is None
                else f"serverless.yml declares no key {OPERATOR_KEY_LOGICAL_ID}"
            )
        return self._operator_api_key

    @property
    def endpoints_file(self) -> Path:
        return self.state_dir / "endpoints.json"

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.stack.custom.get("localCloud") or {})

    def client(self, service: str) -> Any:
        """An administrator's boto3 client for the local cloud, independent of the process
        environment."""
        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.aws_url,
            region_name=self.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalCloud:
        if self.moto is not None:
            return self
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything in reverse order; safe to call twice and after a failed start."""
        for driver in reversed(self.drivers):
            self._quietly(f"stopping driver {driver.name}", driver.stop)
        self.drivers.clear()
        if self.scheduler is not None:
            self._quietly("stopping the scheduler", self.scheduler.stop)
            self.scheduler = None
        if self.api is not None:
            self._quietly("stopping the API server", self.api.stop)
            self.api = None
        with self._pools_lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            self._quietly(f"stopping function {pool.spec.name}", pool.stop)
        if self._logs is not None:
            self._quietly("delivering the last function logs", self._logs.stop)
            self._logs = None
        if self.moto is not None:
            self._quietly("stopping the local AWS endpoint", self.moto.stop)
            self.moto = None
        with contextlib.suppress(FileNotFoundError):
            self.endpoints_file.unlink()
        self._credentials.clear()
        self._api_key = self._operator_api_key = None
        self._restore_environment()
        aws.reset()
        self.context = None
        self._stack = None

    def invoke(self, name: str, event: dict[str, Any]) -> Any:
        """Run function ``name`` on ``event`` in one of its execution environments, as a
        synchronous Lambda invocation; raises ``localcloud.functions.FunctionError`` when it
        fails (an unhandled exception, its timeout, a payload over 6 MB)."""
        fn = self.stack.function(name)
        self.invocations[name] += 1
        override = self._handler_overrides.get(name)
        if override is not None:
            function_name = self.function_name(name)
            return override(
                event,
                LambdaContext(
                    function_name=function_name,
                    invoked_function_arn=f"arn:aws:lambda:{self.region}:{self.stack.account}:function:{function_name}",
                    memory_limit_in_mb=fn.memory,
                    timeout_s=fn.timeout,
                ),
            )
        return self._pool(fn).invoke(event)

    def function_name(self, name: str) -> str:
        return f"{self.stack.config.get('service', 'service')}-{self.stage}-{name}"

    def function_environment(self, name: str) -> dict[str, str]:
        """Function ``name``'s own variables: serverless.yml's, then custom.localCloud's
        environment, then the constructor's ``environment``, with API_URL set locally."""
        assert self.api is not None
        local = {k: str(v) for k, v in (self.settings.get("environment") or {}).items()}
        declared = set(self.stack.function(name).environment)
        overrides = {"API_URL": self.api.url}
        overrides.update({k: v for k, v in local.items() if k in declared})
        overrides.update({k: v for k, v in self._environment.items() if k in declared})
        env = self.stack.function_environment(name, overrides)
        return {k: v for k, v in env.items() if k in declared}

    def role_credentials(self, role_logical_id: str) -> dict[str, str]:
        """Temporary credentials of a role of the stack (its STS session in moto)."""
        if role_logical_id not in self._credentials:
            reply = self.client("sts").assume_role(
                RoleArn=self.stack.arns[f"{role_logical_id}.Arn"],
                RoleSessionName=f"localcloud-{role_logical_id}"[:64],
                DurationSeconds=43200,
            )["Credentials"]
            self._credentials[role_logical_id] = {
                "AWS_ACCESS_KEY_ID": reply["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": reply["SecretAccessKey"],
                "AWS_SESSION_TOKEN": reply["SessionToken"],
            }
        return self._credentials[role_logical_id]

    def role_client(self, service: str, role: str | None) -> Any:
        """A boto3 client acting with a role of the stack (its STS session)."""
        if role is None:
            raise LocalCloudError("a function without a role has no credentials")
        creds = self.role_credentials(role)
        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.aws_url,
            region_name=self.region,
            aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=creds["AWS_SESSION_TOKEN"],
        )

    def _pool(self, fn: infra.Function) -> FunctionPool:
        with self._pools_lock:
            pool = self._pools.get(fn.name)
            if pool is None:
                pool = self._pools[fn.name] = FunctionPool(
                    self._spec(fn), self._function_output, platform_sink=self._platform_output
                )
            return pool

    def _spec(self, fn: infra.Function) -> FunctionSpec:
        """A function's whole process environment: nothing of this process's leaks in."""
        assert self.moto is not None
        if fn.role is None:
            raise LocalCloudError(f"function {fn.name!r} names no role; every function needs its own")
        function_name = self.function_name(fn.name)
        runtime = str((self.stack.config.get("provider") or {}).get("runtime", "python3.12"))
        env = {k: os.environ[k] for k in _PASSED_THROUGH if k in os.environ}
        env.update(
            {
                # Lambda's own variables (https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html#configuration-envvars-runtime)
                "_HANDLER": fn.handler,
                "LAMBDA_TASK_ROOT": str(ROOT),
                "AWS_EXECUTION_ENV": f"AWS_Lambda_{runtime}",
                "AWS_LAMBDA_FUNCTION_NAME": function_name,
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.memory),
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function_name}",
                "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": self.region,
                "TZ": ":UTC",
                "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
                "PYTHONPATH": str(ROOT),
                "PYTHONDONTWRITEBYTECODE": "1",
                # The local endpoint instead of AWS's, and nothing read from a profile.
                "AWS_ENDPOINT_URL": self.moto.url,
                "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true",
                "LOCALCLOUD_ACCOUNT": self.stack.account,
                **self.role_credentials(fn.role),
                **self.function_environment(fn.name),
            }
        )
        functions = self.settings.get("functions") or {}
        limit = int(functions.get("maxConcurrency", DEFAULT_MAX_CONCURRENCY))
        return FunctionSpec(
            name=fn.name,
            function_name=function_name,
            handler=fn.handler,
            environment=env,
            timeout_s=float(fn.timeout),
            memory_mb=fn.memory,
            max_concurrency=fn.reserved_concurrency or limit,
        )

    def _platform_output(self, name: str, line: str) -> None:
        """Lambda's START/END/REPORT lines: to the function's log group only."""
        if self._logs is not None:
            self._logs.add(name, line)

    def _function_output(self, name: str, line: str) -> None:
        if self._logs is not None:
            self._logs.add(name, line)
        if self._function_log is None:
            print(line, flush=True)
            return
        with self._log_lock, self._function_log.open("a") as out:
            out.write(line + "\n")

    # --- start-up steps -------------------------------------------------------------------

    def _start(self) -> None:
        stack = infra.load(self._config_path, stage=self.stage, region=self.region)
        declared = {key for fn in stack.functions() for key in fn.environment}
        unknown = sorted(set(self._environment) - declared)
        if unknown:
            raise LocalCloudError(
                f"no function declares {', '.join(unknown)} in serverless.yml; a function sees only the "
                "variables it declares"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.moto = AwsServer(
            port=self._aws_port,
            region=self.region,
            record=self._iam_record,
            log_path=self.state_dir / "aws.log",
            state_dir=self.state_dir / "aws" if self.durable else None,
        ).start()
        self._set_environment(self._aws_environment())

        self._stack = stack
        infra.create_resources(self._stack, _session(self.region))
        infra.push_trainer_image(self._stack, _session(self.region))
        self._api_key = self._ensure_default_client()
        operator_key_id = self._stack.physical.get(OPERATOR_KEY_LOGICAL_ID)
        if operator_key_id is not None:
            operator_key = self.client("apigateway").get_api_key(apiKey=operator_key_id, includeValue=True)
            self._operator_api_key = str(operator_key["value"])

        # Bound now so that API_URL is known before the functions' environment is computed.
        self.api = ApiServer(
            self._stack,
            self.invoke,
            port=self._api_port,
            web_dir=self._web_dir,
            log_path=self.state_dir / "api.log",
            api_keys=ApiKeys(lambda: self.client("apigateway")),
        )
        aws.reset()
        self._logs = LogShipper(
            client_for=lambda name: self.role_client("logs", self.stack.function(name).role),
            group_for=lambda name: f"/aws/lambda/{self.function_name(name)}",
            say=self.say,
        )
        self._logs.start()
        self.api.start()

        overrides = {k: dict(v) for k, v in (self.settings.get("schedules") or {}).items()}
        for name, override in self._schedule_overrides.items():
            overrides[name] = {**overrides.get(name, {}), **override}
        self.scheduler = Scheduler(self._stack, self.invoke, self.say, schedules(self._stack, overrides))

        self.context = Context(
            stack=self._stack,
            aws_endpoint=self.moto.url,
            api_url=self.api.url,
            state_dir=self.state_dir,
            invoke=self.invoke,
            say=self.say,
            settings=self.settings,
            role_credentials=self.role_credentials,
            durable=self.durable,
        )
        self.scheduler.start()
        for item in self.scheduler.items:
            self.say(f"schedule {item.name}: {item.function} every {item.expression}")
        for module_name in self._driver_modules:
            driver = self._load_driver(module_name)
            driver.start(self.context)
            self.drivers.append(driver)
            self.say(f"driver {driver.name} started")

        self._write_endpoints()
        self.say(f"API  {self.api.url}")
        self.say(f"AWS  {self.moto.url}  (AWS_ENDPOINT_URL for boto3 and the AWS CLI)")

    def _ensure_default_client(self) -> str | None:
        """The default client: its API key in the ``clients`` plan and its registry record
        (trusted), created on the first start and reused after a durable restart (the record's
        key, or the key named ``<service>-<stage>-client-default``). Its key's value; None for
        a serverless.yml without a ``clients`` usage plan (another service's file)."""
        stack = self.stack
        plan_id = stack.physical.get(infra.usage_plan_logical_id(DEFAULT_CLIENT_PLAN))
        if plan_id is None:
            return None
        apigateway = self.client("apigateway")
        registry = clients.Clients(stack.table_name("ModelTable"), self.client("dynamodb"))
        try:
            record: clients.Client | None = registry.get(DEFAULT_CLIENT)
        except NotFound:
            record = None
        if record is not None and record.api_key_id:
            try:
                key = apigateway.get_api_key(apiKey=record.api_key_id, includeValue=True)
            except apigateway.exceptions.NotFoundException:
                raise LocalCloudError(
                    f"the registry's client {DEFAULT_CLIENT!r} names API key {record.api_key_id}, which "
                    f"the local AWS state does not hold; start afresh (forget {self.state_dir})"
                ) from None
        elif record is not None:
            raise LocalCloudError(f"the registry's client {DEFAULT_CLIENT!r} has no API key")
        else:
            key = infra.ensure_api_key(
                apigateway,
                f"{stack.config.get('service', 'service')}-{self.stage}-client-{DEFAULT_CLIENT}",
                description="The local cloud's default client",
            )
        infra.join_usage_plan(apigateway, key["id"], plan_id)
        if record is None:
            registry.create(
                DEFAULT_CLIENT,
                trust=clients.TRUSTED,
                api_key_id=key["id"],
                plan=DEFAULT_CLIENT_PLAN,
                actor="localcloud",
                reason="default client of the local cloud",
            )
        return str(key["value"])

    def _aws_environment(self) -> dict[str, str | None]:
        env: dict[str, str | None] = {name: None for name in _UNSET}
        env.update(FAKE_CREDENTIALS)
        env.update(
            {
                "AWS_ENDPOINT_URL": self.aws_url,
                "AWS_DEFAULT_REGION": self.region,
                "AWS_REGION": self.region,
                # moto's DynamoDB Streams endpoint does not take account-based endpoints.
                "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            }
        )
        return env

    def _set_environment(self, values: Mapping[str, str | None]) -> None:
        for key, value in values.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def _restore_environment(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()

    def _write_endpoints(self) -> None:
        assert self.api is not None and self.moto is not None
        tmp = self.endpoints_file.with_suffix(".tmp")
        endpoints = {"api": self.api.url, "aws": self.moto.url}
        if self._api_key is not None:
            endpoints["api_key"] = self._api_key
        if self._operator_api_key is not None:
            endpoints["operator_api_key"] = self._operator_api_key
        tmp.write_text(json.dumps(endpoints, indent=2) + "\n")
        tmp.replace(self.endpoints_file)

    def _load_driver(self, module_name: str) -> Driver:
        qualified = f"localcloud.{module_name}"
        module = importlib.import_module(qualified)
        factory = getattr(module, "driver", None)
        if callable(factory):
            return factory()  # type: ignore[no-any-return]
        classes = [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and obj.__module__ == qualified
            and isinstance(getattr(obj, "name", None), str)
            and callable(getattr(obj, "start", None))
            and callable(getattr(obj, "stop", None))
        ]
        if len(classes) != 1:
            raise LocalCloudError(
                f"{qualified}: expected a driver() factory or exactly one class with a name, "
                f"start() and stop(); found {[c.__name__ for c in classes]}"
            )
        return classes[0]()  # type: ignore[no-any-return]

    def _quietly(self, what: str, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as err:  # noqa: BLE001 - one failing part must not keep the rest running
            self.say(f"{what} failed: {err!r}")
