"""Start a training instance and its idle backstop alarm; clean both up.

The instance is a one-time spot instance (on-demand when spot capacity is unavailable, if
allowed) that terminates itself when its user-data powers off. The CloudWatch alarm catches a
hung trainer: no heartbeat (trainer/heartbeat.py) AND CPUUtilization below a threshold for N
periods - a trainer blocked on I/O keeps beating and is spared. Detailed monitoring gives
1-minute datapoints, so a 60 s period is meaningful; a booting instance has no CPU datapoints
yet and must not count as idle (missing = not breaching).

The alarm is metric math, and "Alarms based on math expressions cannot perform Amazon EC2
actions" (CloudWatch User Guide, "Using Amazon CloudWatch alarms"), so its action is the train
function (CloudWatch User Guide, "Invoke a Lambda function from an alarm"), which terminates the
instance of the run that holds the lock (lambdas/train.py, ``idle_alarm``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from lambdas.core import aws, log, settings
from lambdas.core.errors import Unavailable

SERVICE = "autoretrain"

# Errors that mean "no spot capacity for this request", worth retrying on-demand.
SPOT_CAPACITY_ERRORS = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
    }
)
# The first spot request in an account creates the EC2 Spot service-linked role
# (AWSServiceRoleForEC2Spot) with the caller's permissions; a caller without
# iam:CreateServiceLinkedRole for spot.amazonaws.com gets this code from RunInstances (EC2 User
# Guide, "Service-linked role for Spot Instance requests"). The role grants it (infra/README.md,
# IAM); should the grant be missing, an on-demand launch needs no such role.
SPOT_ROLE_NOT_PERMITTED = "AuthFailure.ServiceLinkedRoleCreationNotPermitted"
# Spot refusals that an on-demand launch does not share: worth retrying on-demand.
SPOT_ONLY_ERRORS = SPOT_CAPACITY_ERRORS | {SPOT_ROLE_NOT_PERMITTED}
SPOT = "spot"
ON_DEMAND = "on-demand"
GONE = frozenset({"shutting-down", "terminated"})


@dataclass(frozen=True)
class LaunchSettings:
    region: str
    stage: str
    ami_id: str
    instance_type: str
    instance_profile_arn: str
    subnet_id: str | None
    security_group_id: str | None
    spot_fallback_on_demand: bool
    alarm_period_s: int
    alarm_evaluation_periods: int
    alarm_cpu_threshold: float
    # What the alarm invokes: the train function, by its known name (infra/serverless.yml).
    alarm_function_arn: str

    @classmethod
    def from_env(cls, env: settings.Env | None = None) -> LaunchSettings:
        env = settings.environ() if env is None else env
        region = settings.optional(env, "AWS_REGION", settings.optional(env, "AWS_DEFAULT_REGION", ""))
        if not region:
            region = settings.required(env, "AWS_REGION")
        return cls(
            region=region,
            stage=settings.required(env, "STAGE"),
            ami_id=settings.required(env, "AMI_ID"),
            instance_type=settings.required(env, "INSTANCE_TYPE"),
            instance_profile_arn=settings.required(env, "INSTANCE_PROFILE_ARN"),
            subnet_id=settings.optional(env, "SUBNET_ID", "") or None,
            security_group_id=settings.optional(env, "SECURITY_GROUP_ID", "") or None,
            spot_fallback_on_demand=settings.boolean(env, "SPOT_FALLBACK_ON_DEMAND", True),
            alarm_period_s=settings.integer(env, "ALARM_PERIOD_S", 60, minimum=1),
            alarm_evaluation_periods=settings.integer(env, "ALARM_EVALUATION_PERIODS", 2, minimum=1),
            alarm_cpu_threshold=settings.number(env, "ALARM_CPU_THRESHOLD", 5.0, minimum=0.0),
            alarm_function_arn=settings.required(env, "TRAIN_FUNCTION_ARN"),
        )


def alarm_name(stage: str, version: str) -> str:
    return f"{SERVICE}-{stage}-train-{version}"


def alarm_version(stage: str, name: str) -> str | None:
    """The run version an idle alarm's name carries; None for any other alarm."""
    prefix = alarm_name(stage, "")
    if not name.startswith(prefix):
        return None
    return name[len(prefix) :] or None


def run_request(cfg: LaunchSettings, version: str, user_data: str, market: str) -> dict[str, Any]:
    """The run_instances parameters for one training run."""
    tags = [
        {"Key": "service", "Value": SERVICE},
        {"Key": "stage", "Value": cfg.stage},
        {"Key": "run_version", "Value": version},
        {"Key": "Name", "Value": f"{SERVICE}-{cfg.stage}-train-{version}"},
    ]
    request: dict[str, Any] = {
        "ImageId": cfg.ami_id,
        "InstanceType": cfg.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "UserData": user_data,
        "IamInstanceProfile": {"Arn": cfg.instance_profile_arn},
        "InstanceInitiatedShutdownBehavior": "terminate",
        # IMDSv2 only; hop limit 2 so the trainer container (one hop further) reaches it too.
        "MetadataOptions": {
            "HttpTokens": "required",
            "HttpEndpoint": "enabled",
            "HttpPutResponseHopLimit": 2,
        },
        "Monitoring": {"Enabled": True},
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tags},
            {"ResourceType": "volume", "Tags": tags},
        ],
    }
    if market == SPOT:
        request["InstanceMarketOptions"] = {
            "MarketType": "spot",
            "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
        }
    if cfg.subnet_id:
        request["SubnetId"] = cfg.subnet_id
    if cfg.security_group_id:
        request["SecurityGroupIds"] = [cfg.security_group_id]
    return request


def launch_instance(cfg: LaunchSettings, version: str, user_data: str, *, ec2: Any = None) -> tuple[str, str]:
    """Start the instance for ``version``; returns (instance id, market)."""
    ec2 = ec2 or aws.client("ec2")
    markets = [SPOT, ON_DEMAND] if cfg.spot_fallback_on_demand else [SPOT]
    for market in markets:
        try:
            reply = ec2.run_instances(**run_request(cfg, version, user_data, market))
        except ClientError as err:
            code = err.response["Error"]["Code"]
            if market == SPOT and code in SPOT_ONLY_ERRORS:
                log.warning("spot_unavailable", version=version, code=code, fallback=len(markets) > 1)
                if len(markets) > 1:
                    continue
                raise Unavailable(f"spot launch refused ({code}) and on-demand fallback is off") from err
            raise Unavailable(f"could not launch a training instance: {code}") from err
        instance_id = str(reply["Instances"][0]["InstanceId"])
        log.log("instance_launched", version=version, instance_id=instance_id, market=market)
        return instance_id, market
    raise Unavailable("could not launch a training instance")  # pragma: no cover - loop always returns


# Heartbeat metric of the trainer (trainer/heartbeat.py; not imported: the function's package
# does not carry the trainer).
HEARTBEAT_NAMESPACE = "autoretrain/Trainer"
HEARTBEAT_METRIC = "Heartbeat"


def idle_alarm_request(cfg: LaunchSettings, version: str, instance_id: str) -> dict[str, Any]:
    """The PutMetricAlarm parameters of the backstop: "dead" is 1 in a period with no heartbeat
    (a missing Sum is filled with 0) and CPU below the threshold; N such periods invoke the
    train function. A period without CPU data (booting) leaves ``cpu < t`` missing, so "dead"
    is missing there, which does not breach."""
    dimensions = [{"Name": "InstanceId", "Value": instance_id}]

    def metric(query_id: str, namespace: str, name: str, stat: str) -> dict[str, Any]:
        return {
            "Id": query_id,
            "MetricStat": {
                "Metric": {"Namespace": namespace, "MetricName": name, "Dimensions": dimensions},
                "Period": cfg.alarm_period_s,
                "Stat": stat,
            },
            "ReturnData": False,
        }

    return {
        "AlarmName": alarm_name(cfg.stage, version),
        "AlarmDescription": f"terminates the training instance of run {version} when it is idle and silent",
        "Metrics": [
            metric("cpu", "AWS/EC2", "CPUUtilization", "Average"),
            metric("beats", HEARTBEAT_NAMESPACE, HEARTBEAT_METRIC, "Sum"),
            {
                "Id": "dead",
                "Expression": f"IF(FILL(beats, 0) == 0 AND cpu < {cfg.alarm_cpu_threshold:g}, 1, 0)",
                "ReturnData": True,
            },
        ],
        "EvaluationPeriods": cfg.alarm_evaluation_periods,
        "DatapointsToAlarm": cfg.alarm_evaluation_periods,
        "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "notBreaching",
        "AlarmActions": [cfg.alarm_function_arn],
    }


def put_idle_alarm(cfg: LaunchSettings, version: str, instance_id: str, *, cloudwatch: Any = None) -> str:
    """The backstop (``idle_alarm_request``). A Lambda action needs no permission of the caller
    beyond cloudwatch:PutMetricAlarm (only EC2 and Systems Manager actions need
    iam:CreateServiceLinkedRole: PutMetricAlarm API reference); the function's resource policy
    lets CloudWatch invoke it (infra/serverless.yml, TrainAlarmInvokePermission).

    No ``Tags``: nothing reads them (the name carries service, stage and version, and every
    call on the alarm goes by name), and with them PutMetricAlarm also needs
    ``cloudwatch:TagResource`` (botocore's PutMetricAlarm documentation, ``Tags``) - one more
    permission, and one more way for the alarm to fail after its instance started.
    """
    cloudwatch = cloudwatch or aws.client("cloudwatch")
    request = idle_alarm_request(cfg, version, instance_id)
    cloudwatch.put_metric_alarm(**request)
    log.log("alarm_created", version=version, instance_id=instance_id, alarm=request["AlarmName"])
    return str(request["AlarmName"])


def delete_alarm(cfg: LaunchSettings, version: str, *, cloudwatch: Any = None) -> None:
    """Delete the run's alarm; deleting one that is already gone is not an error."""
    cloudwatch = cloudwatch or aws.client("cloudwatch")
    cloudwatch.delete_alarms(AlarmNames=[alarm_name(cfg.stage, version)])


def instance_state(instance_id: str, *, ec2: Any = None) -> str | None:
    """pending | running | shutting-down | terminated | ..., or None if EC2 does not know it."""
    ec2 = ec2 or aws.client("ec2")
    try:
        reply = ec2.describe_instances(InstanceIds=[instance_id])
    except ClientError as err:
        if err.response["Error"]["Code"] == "InvalidInstanceID.NotFound":
            return None
        raise
    for reservation in reply.get("Reservations", []):
        for instance in reservation.get("Instances", []):
            return str(instance["State"]["Name"])
    return None


def terminate(instance_id: str, *, ec2: Any = None) -> None:
    ec2 = ec2 or aws.client("ec2")
    try:
        ec2.terminate_instances(InstanceIds=[instance_id])
    except ClientError as err:
        if err.response["Error"]["Code"] != "InvalidInstanceID.NotFound":
            raise
