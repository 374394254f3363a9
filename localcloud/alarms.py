"""Alarm evaluator: what CloudWatch does with the training instances' idle alarms.

Every few seconds each alarm on ``AWS/EC2 CPUUtilization``, and each alarm on a metric math
expression (``Metrics``), is evaluated over its last EvaluationPeriods x Period (the Period
written in the alarm: the local cloud writes short ones, see custom.localCloud in
serverless.yml), honouring ComparisonOperator, Threshold and TreatMissingData. Only completed
periods count (aligned to the period, as CloudWatch's datapoints are): a partly filled newest
period would flap the state. A transition to ALARM carries out the alarm's actions:
``arn:aws:automate:<region>:ec2:terminate``, and ``arn:aws:lambda:<region>:<account>:function:
<name>``, which invokes the function with the event CloudWatch sends (CloudWatch User Guide,
"Invoke a Lambda function from an alarm": ``source: aws.cloudwatch``, ``alarmArn``,
``alarmData`` with ``alarmName``, ``state``, ``previousState``, ``configuration``), once per
change into ALARM. As in AWS the invocation is asynchronous: a failed one is retried twice
(``Context.invoke_async``), then printed, not raised;
and it happens only when the function's resource policy lets
``lambda.alarms.cloudwatch.amazonaws.com`` invoke it for this alarm (an
``AWS::Lambda::Permission`` of serverless.yml; AWS does not invoke "when CloudWatch is not
authorized to invoke the Lambda function", ibid.).

Metric math (CloudWatch User Guide, "Using math expressions with CloudWatch metrics"): each
metric of the alarm is read per period with GetMetricStatistics (moto 5.2.5 answers it; its
GetMetricData evaluates no expressions), then the expressions are evaluated period by period:
numbers, metric ids, ``+ - * /``, ``== != < <= > >=``, ``AND``/``&&``, ``OR``/``||``,
``NOT``/``!``, ``IF(c, a[, b])`` and ``FILL(m, value)``. A missing value stays missing through
every operation except FILL (an IF whose condition is missing is missing). Anything else - an
unknown function or id, a syntax error, metrics with different periods - raises
:class:`ExpressionError`: the alarm is not evaluated, and the evaluator says so, rather than
call it OK. Strict where AWS is: "Alarms based on math expressions cannot perform Amazon EC2
actions" (CloudWatch User Guide, "Using Amazon CloudWatch alarms", Alarms on math expressions;
awsdocs/amazon-cloudwatch-user-guide doc_source/AlarmThatSendsEmail.md), so such an alarm's EC2
action is refused here, loudly, and never carried out.
"""

from __future__ import annotations

import fnmatch
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from localcloud import infra
from localcloud.driver import Context

ALARM_PRINCIPAL = "lambda.alarms.cloudwatch.amazonaws.com"

_COMPARE = {
    "GreaterThanOrEqualToThreshold": lambda v, t: v >= t,
    "GreaterThanThreshold": lambda v, t: v > t,
    "LessThanThreshold": lambda v, t: v < t,
    "LessThanOrEqualToThreshold": lambda v, t: v <= t,
}


def evaluate(alarm: dict[str, Any], datapoints: list[float | None]) -> str:
    """ALARM, OK or INSUFFICIENT_DATA for one alarm, given one value per period, oldest first
    (None where the period had no data)."""
    periods = int(alarm["EvaluationPeriods"])
    needed = int(alarm.get("DatapointsToAlarm") or periods)
    window = (datapoints + [None] * periods)[:periods] if len(datapoints) < periods else datapoints[-periods:]
    compare = _COMPARE[alarm["ComparisonOperator"]]
    missing = alarm.get("TreatMissingData") or "missing"
    breaching = 0
    present = 0
    for value in window:
        if value is None:
            if missing == "breaching":
                breaching += 1
            continue
        present += 1
        breaching += compare(value, float(alarm["Threshold"]))
    if breaching >= needed:
        return "ALARM"
    if present == 0 and missing in ("missing", "ignore"):
        return "INSUFFICIENT_DATA"
    return "OK"


Value = float | None


class ExpressionError(ValueError):
    """A metric math expression (or alarm) this evaluator does not understand."""


_TOKEN = re.compile(
    r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|([A-Za-z_][A-Za-z0-9_]*)|(==|!=|<=|>=|&&|\|\||[-+*/<>(),!]))"
)
_COMPARE_OPS: dict[str, Callable[[float, float], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _tokens(expression: str) -> list[str]:
    out, at = [], 0
    while at < len(expression.rstrip()):
        match = _TOKEN.match(expression, at)
        if not match:
            raise ExpressionError(f"cannot parse {expression!r} at {expression[at:]!r}")
        out.append(match.group(match.lastindex or 0))
        at = match.end()
    return out


class _Parser:
    """Recursive descent over the subset documented above; evaluates one period at a time."""

    def __init__(self, expression: str, values: dict[str, Value]) -> None:
        self.expression = expression
        self.tokens = _tokens(expression)
        self.at = 0
        self.values = values

    def parse(self) -> Value:
        value = self._or()
        if self.at != len(self.tokens):
            raise ExpressionError(f"unexpected {self.tokens[self.at]!r} in {self.expression!r}")
        return value

    def _peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def _take(self, expected: str | None = None) -> str:
        token = self._peek()
        if token is None or (expected is not None and token.upper() != expected):
            raise ExpressionError(f"expected {expected or 'more'} in {self.expression!r}")
        self.at += 1
        return token

    def _or(self) -> Value:
        left = self._and()
        while (self._peek() or "").upper() in ("OR", "||"):
            self._take()
            right = self._and()
            left = None if left is None or right is None else float(bool(left) or bool(right))
        return left

    def _and(self) -> Value:
        left = self._not()
        while (self._peek() or "").upper() in ("AND", "&&"):
            self._take()
            right = self._not()
            left = None if left is None or right is None else float(bool(left) and bool(right))
        return left

    def _not(self) -> Value:
        if (self._peek() or "").upper() in ("NOT", "!"):
            self._take()
            value = self._not()
            return None if value is None else float(not value)
        return self._compare()

    def _compare(self) -> Value:
        left = self._sum()
        op = self._peek()
        if op in _COMPARE_OPS:
            self._take()
            right = self._sum()
            return None if left is None or right is None else float(_COMPARE_OPS[op](left, right))
        return left

    def _sum(self) -> Value:
        left = self._product()
        while self._peek() in ("+", "-"):
            op = self._take()
            right = self._product()
            left = None if left is None or right is None else (left + right if op == "+" else left - right)
        return left

    def _product(self) -> Value:
        left = self._unary()
        while self._peek() in ("*", "/"):
            op = self._take()
            right = self._unary()
            if left is None or right is None or (op == "/" and right == 0):
                left = None  # no datapoint rather than an infinity
            else:
                left = left * right if op == "*" else left / right
        return left

    def _unary(self) -> Value:
        if self._peek() == "-":
            self._take()
            value = self._unary()
            return None if value is None else -value
        return self._primary()

    def _primary(self) -> Value:
        token = self._take()
        if token == "(":
            value = self._or()
            self._take(")")
            return value
        if token[0].isdigit() or token[0] == ".":
            return float(token)
        if self._peek() == "(":
            return self._call(token)
        if token not in self.values:
            raise ExpressionError(f"unknown metric id {token!r} in {self.expression!r}")
        return self.values[token]

    def _call(self, name: str) -> Value:
        self._take("(")
        args = [self._or()]
        while self._peek() == ",":
            self._take()
            args.append(self._or())
        self._take(")")
        function = name.upper()
        if function == "FILL" and len(args) == 2:
            if args[1] is None:
                raise ExpressionError(f"FILL needs a value in {self.expression!r}")
            return args[1] if args[0] is None else args[0]
        if function == "IF" and len(args) in (2, 3):
            if args[0] is None:
                return None
            return args[1] if args[0] else (args[2] if len(args) == 3 else None)
        raise ExpressionError(f"unsupported function {name}/{len(args)} in {self.expression!r}")


def evaluate_expression(expression: str, values: dict[str, Value]) -> Value:
    """One period's value of a metric math expression, given each id's value (None: missing)."""
    return _Parser(expression, values).parse()


def evaluate_queries(queries: list[dict[str, Any]], series: dict[str, list[Value]]) -> list[Value]:
    """The per-period values of the one query with ReturnData (not false): metric ids come from
    ``series``, expressions are computed in order and may use earlier ones."""
    returned = [q for q in queries if q.get("ReturnData", True)]
    if len(returned) != 1:
        raise ExpressionError(f"an alarm needs exactly one query with ReturnData, got {len(returned)}")
    periods = {len(v) for v in series.values()}
    if len(periods) > 1:
        raise ExpressionError("metrics of different lengths")
    count = periods.pop() if periods else 0
    values = {k: list(v) for k, v in series.items()}
    for query in queries:
        if "Expression" in query:
            values[query["Id"]] = [
                evaluate_expression(query["Expression"], {k: v[i] for k, v in values.items()})
                for i in range(count)
            ]
        elif query["Id"] not in values:
            raise ExpressionError(f"no data series for metric id {query['Id']!r}")
    return values[returned[0]["Id"]]


def math_period(alarm: dict[str, Any]) -> int:
    """The period of a metric math alarm: its metrics' (all the same, as AWS requires: "Each
    metric must be using the same period", ibid.)."""
    periods = {int(q["MetricStat"]["Period"]) for q in alarm["Metrics"] if "MetricStat" in q}
    if len(periods) != 1:
        raise ExpressionError(f"alarm {alarm['AlarmName']}: its metrics must share one period, got {periods}")
    return periods.pop()


def completed_window(now: datetime, period: int, periods: int) -> tuple[datetime, datetime]:
    """The last ``periods`` whole periods before ``now``, aligned to the period."""
    end = datetime.fromtimestamp(now.timestamp() // period * period, tz=UTC)
    return end - timedelta(seconds=period * periods), end


def _function_logical_id(name: str) -> str:
    """The logical id osls gives a function's AWS::Lambda::Function (``train`` ->
    ``TrainLambdaFunction``)."""
    normalized = name.replace("-", "Dash").replace("_", "Underscore")
    return f"{normalized[:1].upper()}{normalized[1:]}LambdaFunction"


def lambda_permitted(
    stack: infra.Stack, function: str, alarm_arn: str, *, principal: str = ALARM_PRINCIPAL
) -> bool:
    """Whether an AWS::Lambda::Permission of the stack lets CloudWatch alarms (or another
    service ``principal``, e.g. S3) invoke ``function`` for the source ``alarm_arn`` (SourceArn
    is matched like Lambda's StringLike)."""
    own = {
        _function_logical_id(function),
        function,
        f"{stack.config.get('service', 'service')}-{stack.stage}-{function}",
    }
    for spec in stack.resources_of_type("AWS::Lambda::Permission").values():
        props = spec.get("Properties") or {}
        target = props.get("FunctionName")
        if isinstance(target, dict):
            target = (target.get("Fn::GetAtt") or [target.get("Ref")])[0]
        if str(target) not in own and not str(target).endswith(f":function:{function}"):
            continue
        if props.get("Principal") != principal or props.get("Action") != "lambda:InvokeFunction":
            continue
        account = props.get("SourceAccount")
        if account is not None and str(stack.resolve_intrinsics(account)) != stack.account:
            continue
        source = props.get("SourceArn")
        if source is None or fnmatch.fnmatchcase(alarm_arn, str(stack.resolve_intrinsics(source))):
            return True
    return False


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}+0000"


def _query_event(query: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"id": query["Id"], "returnData": query.get("ReturnData", True)}
    if "Expression" in query:
        out["expression"] = query["Expression"]
    if "MetricStat" in query:
        stat = query["MetricStat"]
        out["metricStat"] = {
            "metric": {
                "namespace": stat["Metric"]["Namespace"],
                "name": stat["Metric"]["MetricName"],
                "dimensions": {d["Name"]: d["Value"] for d in stat["Metric"].get("Dimensions", [])},
            },
            "period": stat["Period"],
            "stat": stat["Stat"],
        }
    return out


def alarm_event(
    alarm: dict[str, Any], state: str, reason: str, *, account: str, region: str, now: datetime
) -> dict[str, Any]:
    """The event a Lambda alarm action receives (CloudWatch User Guide, "Invoke a Lambda
    function from an alarm", its metric and metric math examples)."""
    if alarm.get("Metrics"):
        metrics = [_query_event(q) for q in alarm["Metrics"]]
    else:
        metrics = [
            _query_event(
                {
                    "Id": "m1",
                    "MetricStat": {
                        "Metric": {
                            "Namespace": alarm["Namespace"],
                            "MetricName": alarm["MetricName"],
                            "Dimensions": alarm.get("Dimensions", []),
                        },
                        "Period": alarm["Period"],
                        "Stat": alarm.get("Statistic") or "Average",
                    },
                }
            )
        ]
    previous_at = alarm.get("StateUpdatedTimestamp")
    return {
        "source": "aws.cloudwatch",
        "alarmArn": alarm.get("AlarmArn")
        or f"arn:aws:cloudwatch:{region}:{account}:alarm:{alarm['AlarmName']}",
        "accountId": account,
        "time": _iso(now),
        "region": region,
        "alarmData": {
            "alarmName": alarm["AlarmName"],
            "state": {"value": state, "reason": reason, "timestamp": _iso(now)},
            "previousState": {
                "value": alarm.get("StateValue") or "INSUFFICIENT_DATA",
                "reason": alarm.get("StateReason") or "",
                "timestamp": _iso(previous_at) if isinstance(previous_at, datetime) else _iso(now),
            },
            "configuration": {"description": alarm.get("AlarmDescription") or "", "metrics": metrics},
        },
    }


class AlarmEvaluator:
    name = "alarms"

    def __init__(self, *, every_s: float | None = None) -> None:
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.terminated: list[str] = []
        self.refused: list[str] = []  # math alarms whose EC2 action was refused, as AWS does
        self.invoked: list[tuple[str, str]] = []  # (alarm, function) of each Lambda action

    def start(self, ctx: Context) -> None:
        self.ctx = ctx
        self.every_s = self._every_s or float((ctx.settings.get("alarms") or {}).get("evaluateSeconds", 1))
        self.cloudwatch = ctx.client("cloudwatch")
        self.ec2 = ctx.client("ec2")
        self._thread = threading.Thread(target=self._loop, name="alarms", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.evaluate_all()
            except Exception as err:  # noqa: BLE001 - a driver must keep going
                self.ctx.say(f"alarms: {err!r}")

    def evaluate_all(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        alarms = self.cloudwatch.describe_alarms(AlarmTypes=["MetricAlarm"]).get("MetricAlarms", [])
        for alarm in alarms:
            if alarm.get("Metrics"):
                try:
                    state = evaluate(self._math_alarm(alarm), self._math_datapoints(alarm, now))
                except ExpressionError as err:
                    self.ctx.say(f"alarm {alarm['AlarmName']}: not evaluated: {err}")
                    continue
            elif alarm.get("Namespace") != "AWS/EC2" or alarm.get("MetricName") != "CPUUtilization":
                continue
            else:
                state = evaluate(alarm, self._datapoints(alarm, now))
            if state == alarm.get("StateValue"):
                continue
            reason = f"local cloud evaluation: {state}"
            self.cloudwatch.set_alarm_state(
                AlarmName=alarm["AlarmName"], StateValue=state, StateReason=reason
            )
            self.ctx.say(f"alarm {alarm['AlarmName']}: {alarm.get('StateValue')} -> {state}")
            if state == "ALARM" and alarm.get("ActionsEnabled", True):
                self._act(
                    alarm,
                    alarm_event(
                        alarm,
                        state,
                        reason,
                        account=self.ctx.stack.account,
                        region=self.ctx.stack.region,
                        now=now,
                    ),
                )

    @staticmethod
    def _math_alarm(alarm: dict[str, Any]) -> dict[str, Any]:
        return {**alarm, "Period": math_period(alarm)}

    def _math_datapoints(self, alarm: dict[str, Any], now: datetime) -> list[float | None]:
        period = math_period(alarm)
        series = {}
        for query in alarm["Metrics"]:
            if "MetricStat" in query:
                stat = query["MetricStat"]
                metric = {
                    "Namespace": stat["Metric"]["Namespace"],
                    "MetricName": stat["Metric"]["MetricName"],
                    "Dimensions": stat["Metric"].get("Dimensions", []),
                    "Period": period,
                    "EvaluationPeriods": alarm["EvaluationPeriods"],
                    "Statistic": stat["Stat"],
                }
                series[query["Id"]] = self._datapoints(metric, now)
        return evaluate_queries(alarm["Metrics"], series)

    def _datapoints(self, alarm: dict[str, Any], now: datetime) -> list[float | None]:
        """One value per completed period, oldest first. One query per period: moto buckets
        GetMetricStatistics from the first datapoint's time, not from StartTime, so a wider
        query's buckets would straddle the alarm's periods."""
        period = int(alarm["Period"])
        periods = int(alarm["EvaluationPeriods"])
        start, _ = completed_window(now, period, periods)
        statistic = alarm.get("Statistic") or "Average"
        if statistic not in ("Average", "Sum", "Minimum", "Maximum", "SampleCount"):
            raise ExpressionError(f"unsupported statistic {statistic!r}")
        values: list[float | None] = []
        for index in range(periods):
            begin = start + timedelta(seconds=period * index)
            stats = self.cloudwatch.get_metric_statistics(
                Namespace=alarm["Namespace"],
                MetricName=alarm["MetricName"],
                Dimensions=alarm.get("Dimensions", []),
                StartTime=begin,
                EndTime=begin + timedelta(seconds=period),
                Period=period,
                Statistics=[statistic],
            )
            points = stats.get("Datapoints", [])
            values.append(float(points[0][statistic]) if points else None)
        return values

    def _act(self, alarm: dict[str, Any], event: dict[str, Any]) -> None:
        for action in alarm.get("AlarmActions", []):
            if action.startswith("arn:aws:lambda:"):
                self._invoke(alarm, action, event)
                continue
            if not (action.startswith("arn:aws:automate:") and action.endswith(":ec2:terminate")):
                continue
            if alarm.get("Metrics"):
                # AWS: "Alarms based on math expressions cannot perform Amazon EC2 actions"
                # (module docstring): refused, loudly, never carried out.
                self.refused.append(alarm["AlarmName"])
                self.ctx.say(f"alarm {alarm['AlarmName']}: REFUSED {action}: a math alarm cannot act on EC2")
                continue
            for dim in alarm.get("Dimensions", []):
                if dim["Name"] == "InstanceId":
                    self.ec2.terminate_instances(InstanceIds=[dim["Value"]])
                    self.terminated.append(dim["Value"])
                    self.ctx.say(f"alarm {alarm['AlarmName']}: terminated idle instance {dim['Value']}")

    def _invoke(self, alarm: dict[str, Any], action: str, event: dict[str, Any]) -> None:
        """A Lambda action: the function named by the ARN (``<service>-<stage>-<name>``, an
        alias or version qualifier ignored), if its resource policy allows this alarm."""
        name = alarm["AlarmName"]
        parts = action.split(":")
        prefix = f"{self.ctx.stack.config.get('service', 'service')}-{self.ctx.stack.stage}-"
        full = parts[6] if len(parts) > 6 and parts[5] == "function" else ""
        function = full[len(prefix) :] if full.startswith(prefix) else ""
        if not function or function not in {f.name for f in self.ctx.stack.functions()}:
            self.ctx.say(f"alarm {name}: NOT INVOKED {action}: no such function")
            return
        if not lambda_permitted(self.ctx.stack, function, event["alarmArn"]):
            self.ctx.say(f"alarm {name}: NOT INVOKED {action}: no permission for {ALARM_PRINCIPAL}")
            return
        self.invoked.append((name, function))
        self.ctx.say(f"alarm {name}: invoking {function}")
        if not self.ctx.invoke_async(function, event, f"alarm {name}"):
            return
        # The invocation is synchronous here: what it did to the alarm's instance shows now.
        for instance_id in _instance_ids(alarm):
            if self._gone(instance_id):
                self.terminated.append(instance_id)
                self.ctx.say(f"alarm {name}: {function} terminated instance {instance_id}")

    def _gone(self, instance_id: str) -> bool:
        reply = self.ec2.describe_instances(InstanceIds=[instance_id])
        states = [i["State"]["Name"] for r in reply.get("Reservations", []) for i in r.get("Instances", [])]
        return bool(states) and states[0] in ("shutting-down", "terminated")


def _instance_ids(alarm: dict[str, Any]) -> list[str]:
    dimensions = list(alarm.get("Dimensions") or [])
    for query in alarm.get("Metrics") or []:
        dimensions += (query.get("MetricStat") or {}).get("Metric", {}).get("Dimensions", [])
    return list(dict.fromkeys(d["Value"] for d in dimensions if d["Name"] == "InstanceId"))
