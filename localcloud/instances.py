"""Instance runner: what EC2 would do with a training instance, on this machine.

For every pending/running instance tagged ``service=autoretrain`` it runs the instance's real
user-data with bash, in a temporary directory, with exactly the AMI's commands on PATH: a
per-instance bin directory built from ``localcloud/ami.py`` (host binaries for the ordinary
commands, stand-ins for ``docker``, ``dnf`` and ``shutdown``; ``aws`` appears only once the
user-data runs ``dnf install awscli-2``, as on the real AMI). The trainer runs as a local
process and ``shutdown`` terminates the instance through the EC2 API. While it runs, the CPU use
of its process tree is published as the instance's ``AWS/EC2 CPUUtilization``; if the instance is
terminated from outside (the idle alarm, a test) the process tree is killed, as a real termination would.

A fake IMDSv2 serves the token, ``meta-data/instance-id``,
``meta-data/spot/instance-action`` (404 until a notice is requested with ``spot_notice()`` or
by creating ``<state_dir>/spot-notice-<instance-id>``) and ``meta-data/iam/security-credentials/``
(the role of the instance's profile, and its credentials: obtained with STS AssumeRole when the
instance starts, so the user-data and the trainer act as the instance role, as on EC2).

When an instance's work has ended because the instance went away (its own shutdown, the idle
alarm, a terminate from outside), the runner sends the state changes EC2 would put on
EventBridge ("EC2 Instance State-change Notification": ``shutting-down``, then ``terminated``)
to every function with an ``eventBridge`` event whose pattern matches them, as the rule would.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil

from localcloud import ami, infra
from localcloud.driver import Context
from localcloud.infra import ROOT
from localcloud.streams import check_pattern, matches

SERVICE_TAG = {"Name": "tag:service", "Values": ["autoretrain"]}
ACTIVE = ["pending", "running"]
# Replace the trainer command (e.g. one that hangs idle, to show the alarm at work).
TRAINER_CMD_ENV = "LOCALCLOUD_TRAINER_CMD"
# Make the dnf stand-in fail, as when the package repository is unreachable.
DNF_FAIL_ENV = "LOCALCLOUD_DNF_FAIL"
# Written by the shutdown stand-in in the instance's HOME: the instance powered itself off.
POWERED_OFF = "powered-off"
# How long a powered-off instance's user-data may take to finish its last lines.
POWER_OFF_GRACE_S = 5.0
STATE_CHANGE = "EC2 Instance State-change Notification"
CREDENTIALS_PATH = "latest/meta-data/iam/security-credentials"
# The states EC2 reports on the way out of a termination, in order.
TERMINATION_STATES = ("shutting-down", "terminated")


class Imds:
    """A fake IMDSv2 for every local instance: ``/<instance-id>/latest/...``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.notices: dict[str, dict[str, str]] = {}
        self.tokens: set[str] = set()
        # instance id -> (role name, credentials document as EC2 serves it)
        self.roles: dict[str, tuple[str, dict[str, str]]] = {}
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                if self.path.endswith("/latest/api/token") and self.headers.get(
                    "X-aws-ec2-metadata-token-ttl-seconds"
                ):
                    token = secrets.token_urlsafe(24)
                    imds.tokens.add(token)
                    self._send(200, token)
                else:
                    self._send(400)

            def do_GET(self) -> None:
                if self.headers.get("X-aws-ec2-metadata-token") not in imds.tokens:
                    self._send(401)  # IMDSv2 required: no token, no answer
                    return
                parts = self.path.strip("/").split("/", 1)
                instance_id, rest = parts[0], (parts[1] if len(parts) > 1 else "")
                if rest == "latest/meta-data/instance-id":
                    self._send(200, instance_id)
                elif rest == "latest/meta-data/spot/instance-action":
                    notice = imds.notice(instance_id)
                    self._send(200, json.dumps(notice)) if notice else self._send(404)
                elif rest.startswith(CREDENTIALS_PATH):
                    # An instance without a profile has no such path on EC2 either.
                    role = imds.roles.get(instance_id)
                    asked = rest[len(CREDENTIALS_PATH) :].strip("/")
                    if role is None or asked not in ("", role[0]):
                        self._send(404)
                    else:
                        self._send(200, role[0] if not asked else json.dumps(role[1]))
                else:
                    self._send(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="imds", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def endpoint(self, instance_id: str) -> str:
        return f"{self.url}/{instance_id}"

    def notice(self, instance_id: str) -> dict[str, str] | None:
        if instance_id not in self.notices and (self.state_dir / f"spot-notice-{instance_id}").exists():
            self.spot_notice(instance_id)
        return self.notices.get(instance_id)

    def set_role(self, instance_id: str, role_name: str, credentials: dict[str, Any]) -> None:
        """Serve ``credentials`` (STS Credentials) as the instance role's, shaped as EC2's IMDS
        serves them (AWSEC2 user guide, instance-metadata-security-credentials.html)."""
        self.roles[instance_id] = (
            role_name,
            {
                "Code": "Success",
                "LastUpdated": _iso(datetime.now(UTC)),
                "Type": "AWS-HMAC",
                "AccessKeyId": credentials["AccessKeyId"],
                "SecretAccessKey": credentials["SecretAccessKey"],
                "Token": credentials["SessionToken"],
                "Expiration": _iso(credentials["Expiration"]),
            },
        )

    def spot_notice(self, instance_id: str, in_seconds: int = 120) -> None:
        at = datetime.fromtimestamp(time.time() + in_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.notices[instance_id] = {"action": "terminate", "time": at}

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def instance_env(
    instance_id: str, *, aws_endpoint: str, region: str, imds_endpoint: str, workdir: Path
) -> dict[str, str]:
    """The environment the user-data runs in. PATH is only ``workdir/bin``, filled with the
    AMI's commands (localcloud/ami.py): what the AMI lacks is "command not found" here too.
    No credentials: the stand-ins that call AWS as the instance use its role through IMDS."""
    bin_dir = ami.populate(workdir / "bin")
    env = {
        "PATH": str(bin_dir),
        "HOME": str(workdir),
        "LOCALCLOUD_BIN": str(bin_dir),
        "LOCALCLOUD_INSTANCE_ID": instance_id,
        "LOCALCLOUD_AWS_ENDPOINT": aws_endpoint,
        "LOCALCLOUD_REGION": region,
        "LOCALCLOUD_IMDS_ENDPOINT": imds_endpoint,
        "LOCALCLOUD_ROOT": str(ROOT),
        # Inside the trainer's container: the image has python (here: this venv's).
        "LOCALCLOUD_TRAINER_PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
    }
    for name in (TRAINER_CMD_ENV, DNF_FAIL_ENV):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def role_credentials(ec2: Any, iam: Any, sts: Any, instance_id: str) -> tuple[str, dict[str, Any]] | None:
    """The role of the instance's profile and fresh credentials for it (STS AssumeRole, what
    EC2 does for the instance), or None for an instance launched without a profile."""
    instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    profile_arn = (instance.get("IamInstanceProfile") or {}).get("Arn")
    if not profile_arn:
        return None
    # arn:aws:iam::<account>:instance-profile/<path/>name
    profile_name = profile_arn.rsplit("/", 1)[-1]
    roles = iam.get_instance_profile(InstanceProfileName=profile_name)["InstanceProfile"]["Roles"]
    if not roles:
        return None
    role = roles[0]
    credentials = sts.assume_role(RoleArn=role["Arn"], RoleSessionName=instance_id)["Credentials"]
    return str(role["RoleName"]), dict(credentials)


def tree_cpu_percent(proc: psutil.Process, interval: float) -> float:
    """CPU of a process and its descendants over ``interval``, as a share of the machine
    (EC2's CPUUtilization is per instance, not per core)."""
    procs = [proc]
    try:
        procs += proc.children(recursive=True)
    except psutil.Error:
        return 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(interval)
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.cpu_percent(None)
    return min(100.0, total / (psutil.cpu_count() or 1))


def state_change_event(instance_id: str, state: str, *, account: str, region: str) -> dict[str, Any]:
    """An EC2 state change as EventBridge delivers it to a Lambda target."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": STATE_CHANGE,
        "source": "aws.ec2",
        "account": account,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [f"arn:aws:ec2:{region}:{account}:instance/{instance_id}"],
        "detail": {"instance-id": instance_id, "state": state},
    }


def event_rules(stack: infra.Stack) -> list[tuple[str, dict[str, Any]]]:
    """(function, pattern) of every enabled ``eventBridge`` event with a pattern. Patterns use
    the exact-value subset the stream poller's filters implement; anything else fails here."""
    out = []
    for fn in stack.functions():
        for index, event in enumerate(fn.events):
            spec = event.get("eventBridge") if isinstance(event, dict) else None
            if not isinstance(spec, dict) or "pattern" not in spec or spec.get("enabled", True) is False:
                continue
            check_pattern(spec["pattern"], f"functions.{fn.name}.events[{index}].eventBridge.pattern")
            out.append((fn.name, spec["pattern"]))
    return out


class InstanceRunner:
    name = "instances"

    def __init__(self, *, poll_s: float | None = None, metric_period_s: float | None = None) -> None:
        self._poll_s = poll_s
        self._metric_s = metric_period_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seen: set[str] = set()
        self.imds: Imds | None = None
        self.exit_codes: dict[str, int] = {}
        # How each instance ended: "shutdown" (its user-data powered it off) or "terminated"
        # (from outside: the idle alarm, the train trigger, a test).
        self.endings: dict[str, str] = {}
        # (function, instance id, state) of every state-change event delivered, in order.
        self.events_sent: list[tuple[str, str, str]] = []

    def start(self, ctx: Context) -> None:
        local = dict(ctx.settings.get("instances") or {})
        self.poll_s = self._poll_s or float(local.get("pollSeconds", 0.5))
        self.metric_s = self._metric_s or float(local.get("metricPeriodSeconds", 1))
        self.ctx = ctx
        self.ec2 = ctx.client("ec2")
        self.cloudwatch = ctx.client("cloudwatch")
        self.iam = ctx.client("iam")
        self.sts = ctx.client("sts")
        self.rules = event_rules(ctx.stack)
        create_instance_profiles(ctx)
        ctx.state_dir.mkdir(parents=True, exist_ok=True)
        if ctx.durable:
            self.resolve_orphans()
        self.imds = Imds(ctx.state_dir)
        self.imds.start()
        watcher = threading.Thread(target=self._watch, name="instances", daemon=True)
        watcher.start()
        self._threads.append(watcher)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()
        if self.imds:
            self.imds.stop()
            self.imds = None

    def spot_notice(self, instance_id: str) -> None:
        assert self.imds is not None
        self.imds.spot_notice(instance_id)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                pages = self.ec2.describe_instances(
                    Filters=[SERVICE_TAG, {"Name": "instance-state-name", "Values": ACTIVE}]
                )
                for reservation in pages.get("Reservations", []):
                    for instance in reservation["Instances"]:
                        instance_id = instance["InstanceId"]
                        if instance_id not in self._seen:
                            self._seen.add(instance_id)
                            thread = threading.Thread(
                                target=self._run, args=(instance_id,), name=instance_id, daemon=True
                            )
                            thread.start()
                            self._threads.append(thread)
            except Exception as err:  # noqa: BLE001 - a driver must keep polling
                self.ctx.say(f"instances: {err!r}")
            self._stop.wait(self.poll_s)

    def _state(self, instance_id: str) -> str:
        reply = self.ec2.describe_instances(InstanceIds=[instance_id])
        return str(reply["Reservations"][0]["Instances"][0]["State"]["Name"])

    def _run(self, instance_id: str) -> None:
        attr = self.ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        script = base64.b64decode(attr.get("UserData", {}).get("Value", "")).decode()
        assert self.imds is not None
        try:
            role = role_credentials(self.ec2, self.iam, self.sts, instance_id)
        except Exception as err:  # noqa: BLE001 - the instance still boots, as one whose role is broken
            self.ctx.say(f"instance {instance_id}: no role credentials: {err!r}")
            role = None
        if role:
            self.imds.set_role(instance_id, *role)
        workdir = Path(tempfile.mkdtemp(prefix=f"{instance_id}-"))
        (workdir / "user-data.sh").write_text(script)
        log_path = self.ctx.state_dir / f"instance-{instance_id}.log"
        env = instance_env(
            instance_id,
            aws_endpoint=self.ctx.aws_endpoint,
            region=self.ctx.stack.region,
            imds_endpoint=self.imds.endpoint(instance_id),
            workdir=workdir,
        )
        self.ctx.say(f"instance {instance_id}: running its user-data (log: {log_path})")
        started = time.monotonic()
        with log_path.open("w") as out:
            proc = subprocess.Popen(
                ["bash", str(workdir / "user-data.sh")],
                cwd=workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            ps = psutil.Process(proc.pid)
            killed = False
            while proc.poll() is None:
                self._remember_tree(instance_id, ps)
                cpu = tree_cpu_percent(ps, self.metric_s)
                self._publish(instance_id, cpu)
                if self._stop.is_set() or self._state(instance_id) in ("shutting-down", "terminated"):
                    if not self._stop.is_set() and (workdir / POWERED_OFF).exists():
                        # Its own shutdown: let the script's last lines run, as the OS would.
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            proc.wait(timeout=POWER_OFF_GRACE_S)
                    if proc.poll() is None:
                        killed = True
                        _kill_tree(proc)
                    break
            code = proc.wait()
        self.exit_codes[instance_id] = code
        powered_off = (workdir / POWERED_OFF).exists()
        self.endings[instance_id] = "shutdown" if powered_off and not killed else "terminated"
        if powered_off and not killed:
            how = f"powered itself off (user-data exited {code})"
        elif killed:
            how = "was terminated from outside"
        else:
            how = f"user-data exited {code}"
        self.ctx.say(f"instance {instance_id}: {how} after {time.monotonic() - started:.1f}s")
        if not self._stop.is_set() and self._state(instance_id) in TERMINATION_STATES:
            for state in TERMINATION_STATES:
                self._emit(instance_id, state)

    def _tree_file(self, instance_id: str) -> Path:
        return self.ctx.state_dir / f"instance-{instance_id}.processes"

    def _remember_tree(self, instance_id: str, ps: psutil.Process) -> None:
        """The instance's processes (pid and start time), so that a local cloud restarted
        after a crash can end what its predecessor left running. The trainer runs in its own
        process group under ``timeout``, so the group alone would miss it."""
        try:
            tree = [ps, *ps.children(recursive=True)]
            pairs = [(p.pid, p.create_time()) for p in tree]
        except psutil.Error:
            return
        self._tree_file(instance_id).write_text(json.dumps(pairs))

    def _end_leftovers(self, instance_id: str) -> None:
        path = self._tree_file(instance_id)
        if not path.exists():
            return
        for pid, created in json.loads(path.read_text()):
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if abs(proc.create_time() - created) < 0.01:  # the same process, not a reused pid
                    proc.kill()
        path.unlink()

    def resolve_orphans(self) -> list[str]:
        """Instances still pending or running in a restored state were running on this machine
        when the local cloud stopped or died: their user-data went with it. They are dead, so
        they are terminated and EC2's state-change events go out, as for any instance that
        dies; the train function then ends their runs interrupted, frees the lock, deletes the
        alarms and starts what is pending. Nothing is run again by accident."""
        reply = self.ec2.describe_instances(
            Filters=[SERVICE_TAG, {"Name": "instance-state-name", "Values": ACTIVE}]
        )
        orphans = [i["InstanceId"] for r in reply["Reservations"] for i in r["Instances"]]
        if not orphans:
            return []
        self.ctx.say(f"instances {', '.join(orphans)}: running when the local cloud stopped; terminated")
        for instance_id in orphans:
            self._end_leftovers(instance_id)
        self.ec2.terminate_instances(InstanceIds=orphans)
        for instance_id in orphans:
            for state in TERMINATION_STATES:
                self._emit(instance_id, state)
        return orphans

    def _emit(self, instance_id: str, state: str) -> None:
        event = state_change_event(
            instance_id, state, account=self.ctx.stack.account, region=self.ctx.stack.region
        )
        for function, pattern in self.rules:
            if not matches(pattern, event):
                continue
            self.events_sent.append((function, instance_id, state))
            self.ctx.invoke_async(function, event, f"instances: {instance_id} {state}")

    def _publish(self, instance_id: str, cpu: float) -> None:
        try:
            self.cloudwatch.put_metric_data(
                Namespace="AWS/EC2",
                MetricData=[
                    {
                        "MetricName": "CPUUtilization",
                        "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
                        "Value": round(cpu, 2),
                        "Unit": "Percent",
                    }
                ],
            )
        except Exception as err:  # noqa: BLE001
            self.ctx.say(f"instances: could not publish CPU of {instance_id}: {err!r}")


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Kill the user-data and everything it started, as a terminated machine would. The
    process group is not enough: GNU timeout (which runs the trainer) moves itself and its
    children into a group of their own, so the descendants are collected first."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(descendants, timeout=5)


def create_instance_profiles(ctx: Context) -> None:
    """Create the stack's instance profiles (and their roles) in moto, which checks that the
    profile given to run_instances exists, and record their ARNs for Fn::GetAtt. A profile that
    already carries its role (infra.create_resources made it, from serverless.yml) is left as
    it is: a profile holds one role, and the instance runs as that one."""
    iam = ctx.client("iam")
    for logical, spec in ctx.stack.resources_of_type("AWS::IAM::InstanceProfile").items():
        name = f"{ctx.stack.config.get('service', 'autoretrain')}-{ctx.stack.stage}-{logical}"
        try:
            profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        except iam.exceptions.EntityAlreadyExistsException:
            profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        ctx.stack.physical[logical] = name
        ctx.stack.arns[f"{logical}.Arn"] = profile["Arn"]
        if profile.get("Roles"):
            continue
        for role in spec.get("Properties", {}).get("Roles", []):
            role_logical = role.get("Ref") if isinstance(role, dict) else str(role)
            role_name = f"{name}-{role_logical}"[:64]
            try:
                iam.create_role(RoleName=role_name, AssumeRolePolicyDocument="{}")
                iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=role_name)
            except iam.exceptions.EntityAlreadyExistsException:
                pass
