"""The local cloud: the whole pipeline on loopback, built from infra/serverless.yml.

``LocalCloud`` starts, in order: moto's server; the tables, bucket, queue and topic the file
declares; an API Gateway stand-in serving the file's ``http`` routes; a scheduler firing its
enabled ``schedule`` events; then the drivers for what moto does not do by itself (stream
poller, instance runner, alarm evaluator). Functions run in this process, with the
environment the file gives them; boto3 reaches moto through ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from lambdas.core import aws
from localcloud import infra
from localcloud.apigw import ApiServer
from localcloud.driver import Context, Driver
from localcloud.motoserver import MotoServer
from localcloud.scheduler import Scheduler, schedules

ROOT = infra.ROOT
DEFAULT_STATE_DIR = Path(".localcloud")
# Started after the core, in this order, and stopped in reverse.
DRIVER_MODULES = ("streams", "instances", "alarms", "notifications")
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# A real profile or session token must never leak into the local cloud's calls.
_UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")

Handler = Callable[[dict[str, Any], Any], Any]


class LocalCloudError(RuntimeError):
    pass


@dataclass
class LambdaContext:
    """What the Lambda runtime passes as the handler's second argument."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    timeout_s: int
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    _started: float = field(default_factory=time.monotonic)

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return f"{time.strftime('%Y/%m/%d')}/[$LATEST]{self.aws_request_id.replace('-', '')}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.monotonic() - self._started)) * 1000))


def _say(line: str) -> None:
    print(f"[localcloud] {line}", flush=True)


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
    ) -> None:
        """``schedule_overrides`` and ``environment`` apply on top of custom.localCloud;
        ``handlers`` replaces functions' handlers (tests); ``function_log`` sends the
        functions' JSON log lines to a file instead of stdout."""
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

        self.moto: MotoServer | None = None
        self.api: ApiServer | None = None
        self.scheduler: Scheduler | None = None
        self.drivers: list[Driver] = []
        self.context: Context | None = None
        self._stack: infra.Stack | None = None
        self._saved_env: dict[str, str | None] = {}
        self._handlers: dict[str, Handler] = {}
        self._handlers_lock = threading.Lock()
        self._log_handler: logging.Handler | None = None
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
    def endpoints_file(self) -> Path:
        return self.state_dir / "endpoints.json"

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.stack.custom.get("localCloud") or {})

    def client(self, service: str) -> Any:
        """A boto3 client for the local cloud, independent of the process environment."""
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
        if self.moto is not None:
            self._quietly("stopping the moto server", self.moto.stop)
            self.moto = None
        with contextlib.suppress(FileNotFoundError):
            self.endpoints_file.unlink()
        self._restore_logging()
        self._restore_environment()
        aws.reset()
        self.context = None
        self._stack = None

    def invoke(self, name: str, event: dict[str, Any]) -> Any:
        """Run function ``name``'s handler in this process, as the Lambda runtime would."""
        fn = self.stack.function(name)
        handler = self._handler(fn)
        function_name = f"{self.stack.config.get('service', 'service')}-{self.stage}-{name}"
        context = LambdaContext(
            function_name=function_name,
            invoked_function_arn=f"arn:aws:lambda:{self.region}:{self.stack.account}:function:{function_name}",
            memory_limit_in_mb=fn.memory,
            timeout_s=fn.timeout,
        )
        self.invocations[name] += 1
        return handler(event, context)

    # --- start-up steps -------------------------------------------------------------------

    def _start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.moto = MotoServer(port=self._aws_port).start()
        self.moto.reset()
        self._set_environment(self._aws_environment())

        self._stack = infra.load(self._config_path, stage=self.stage, region=self.region)
        infra.create_resources(self._stack, boto3.Session(region_name=self.region))

        # Bound now so that API_URL is known before the functions' environment is computed.
        self.api = ApiServer(
            self._stack,
            self.invoke,
            port=self._api_port,
            web_dir=self._web_dir,
            log_path=self.state_dir / "api.log",
        )
        self._set_environment(self._function_environment())
        aws.reset()
        self._configure_logging()
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

    def _function_environment(self) -> dict[str, str | None]:
        """Every function's environment merged into one, since they share this process.
        Two functions that need different values for one variable cannot share it: fail."""
        assert self.api is not None and self._stack is not None
        local = {k: str(v) for k, v in (self.settings.get("environment") or {}).items()}
        overrides = {"API_URL": self.api.url, **local, **self._environment}
        merged: dict[str, str] = {}
        owner: dict[str, str] = {}
        for fn in self._stack.functions():
            env = self._stack.function_environment(fn.name, overrides)
            unresolved = sorted(set(fn.environment) - set(env))
            if unresolved:
                self.say(f"{fn.name}: left unset (not resolvable locally): {', '.join(unresolved)}")
            for key, value in env.items():
                if key in merged and merged[key] != value:
                    raise LocalCloudError(
                        f"functions {owner[key]!r} and {fn.name!r} set {key} to different values "
                        f"({merged[key]!r} and {value!r}); they share one process locally, so set it "
                        "once in custom.localCloud.environment"
                    )
                merged[key] = value
                owner.setdefault(key, fn.name)
        return dict(merged)

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

    def _configure_logging(self) -> None:
        if self._function_log is None:
            return
        logger = logging.getLogger("autoretrain")
        self._log_handler = logging.FileHandler(self._function_log)
        self._log_handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(self._log_handler)
        logger.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
        logger.propagate = False

    def _restore_logging(self) -> None:
        if self._log_handler is not None:
            logging.getLogger("autoretrain").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def _write_endpoints(self) -> None:
        assert self.api is not None and self.moto is not None
        tmp = self.endpoints_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"api": self.api.url, "aws": self.moto.url}, indent=2) + "\n")
        tmp.replace(self.endpoints_file)

    def _handler(self, fn: infra.Function) -> Handler:
        with self._handlers_lock:
            if fn.name not in self._handlers:
                self._handlers[fn.name] = self._handler_overrides.get(fn.name) or self._import(fn)
            return self._handlers[fn.name]

    @staticmethod
    def _import(fn: infra.Function) -> Handler:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        # Handlers may read their settings once per process; a module imported by an earlier
        # cloud (or test) in this process is reloaded so it sees this cloud's endpoints.
        if fn.module in sys.modules:
            module = importlib.reload(sys.modules[fn.module])
        else:
            module = importlib.import_module(fn.module)
        handler = getattr(module, fn.attribute, None)
        if not callable(handler):
            raise LocalCloudError(f"{fn.handler}: {fn.module} has no callable {fn.attribute!r}")
        return handler  # type: ignore[no-any-return]

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
