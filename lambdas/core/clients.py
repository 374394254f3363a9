"""Who may teach the model: the clients that send samples, and how far each is trusted.

A client is an identity API Gateway has authenticated: an API key (one per client, in one usage
plan) or, for server-to-server clients, an IAM principal (SigV4). Its record lives in the model
table, next to the runs (lambdas/core/registry.py):

- the record: ``pk = "client#<name>"``, ``kind = "client"``, ``sk = <name>``, with ``trust``,
  ``source`` (``api``, or ``traffic`` for synthetic data), ``api_key_id`` or ``principal_arn``,
  ``plan``, ``created_at``, ``updated_at``, ``reason``, ``actor``;
- a pointer per identity, written in the same transaction: ``pk = "apikey#<apiKeyId>"`` or
  ``pk = "principal#<arn>"``, carrying ``name``, ``trust`` and ``source``. The upload function
  resolves a request with one GetItem of its pointer, and its role may read nothing else of
  the table (``dynamodb:LeadingKeys``);
- the events that change what the gate compares on: ``pk = "client-event#<sk>"``,
  ``kind = "client-event"``, ``sk = "<iso time>#<random>"``: a client created, its trust
  changed, its samples purged, the holdout key rotated.

Trust: ``trusted`` samples train and form the holdout and the gate's recent window;
``untrusted`` samples only train (the gate judges them on trusted data); ``revoked`` samples
are left out of every run, and the client's requests are refused.

Two clients exist without a record: ``traffic`` (the synthetic-traffic function, known to the
upload function by its API key's id) and ``unattributed`` (samples written before clients
existed, with no ``client`` attribute). Both are trusted until a record says otherwise.
"""

from __future__ import annotations

import builtins
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from lambdas.core import aws, settings
from lambdas.core.errors import BadRequest, Conflict, Forbidden, NotFound
from lambdas.core.registry import INDEX, from_item, now_iso, to_item

TRUSTED = "trusted"
UNTRUSTED = "untrusted"
REVOKED = "revoked"
TRUST_LEVELS = (TRUSTED, UNTRUSTED, REVOKED)

TRAFFIC = "traffic"
UNATTRIBUTED = "unattributed"
BUILT_IN = {
    TRAFFIC: "the synthetic-traffic function",
    UNATTRIBUTED: "samples written before clients existed",
}
SOURCES = ("api", "traffic")

CLIENT_KIND = "client"
EVENT_KIND = "client-event"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

# Event names (``event`` of a client-event item).
CREATED = "created"
TRUST = "trust"
PURGED = "purged"
HOLDOUT_KEY_ROTATED = "holdout-key-rotated"


@dataclass(frozen=True)
class Client:
    name: str
    trust: str
    source: str = "api"
    api_key_id: str | None = None
    principal_arn: str | None = None
    plan: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    reason: str | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Client:
        return cls(
            name=str(record["name"]),
            trust=str(record.get("trust", UNTRUSTED)),
            source=str(record.get("source", "api")),
            api_key_id=record.get("api_key_id"),
            principal_arn=record.get("principal_arn"),
            plan=record.get("plan"),
            created_at=record.get("created_at"),
            updated_at=record.get("updated_at"),
            reason=record.get("reason"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise BadRequest(
            f"client name must match {NAME_PATTERN.pattern} (lower case, digits, - and _), got {name!r}",
            field="name",
        )
    return name


def check_trust(trust: str) -> str:
    if trust not in TRUST_LEVELS:
        raise BadRequest(f"trust must be one of {', '.join(TRUST_LEVELS)}, got {trust!r}", field="trust")
    return trust


def _pointer_pk(*, api_key_id: str | None = None, principal_arn: str | None = None) -> str:
    return f"apikey#{api_key_id}" if api_key_id is not None else f"principal#{principal_arn}"


@dataclass(frozen=True)
class Clients:
    table: str
    client: Any = None

    @property
    def ddb(self) -> Any:
        return self.client or aws.dynamodb()

    # --- records --------------------------------------------------------------------------

    def create(
        self,
        name: str,
        *,
        trust: str = UNTRUSTED,
        source: str = "api",
        api_key_id: str | None = None,
        principal_arn: str | None = None,
        plan: str | None = None,
        actor: str,
        reason: str = "",
    ) -> Client:
        """Record a client with its identity (an API key's id or an IAM principal's ARN, or
        none: a built-in's record). Conflict if the name or the identity is taken."""
        check_name(name)
        check_trust(trust)
        if source not in SOURCES:
            raise BadRequest(f"source must be one of {', '.join(SOURCES)}, got {source!r}", field="source")
        if api_key_id is not None and principal_arn is not None:
            raise BadRequest("a client has an API key or an IAM principal, not both", field="principal_arn")
        at = now_iso()
        record = {
            "pk": f"client#{name}",
            "kind": CLIENT_KIND,
            "sk": name,
            "name": name,
            "trust": trust,
            "source": source,
            "api_key_id": api_key_id,
            "principal_arn": principal_arn,
            "plan": plan,
            "created_at": at,
            "updated_at": at,
            "reason": reason,
            "actor": actor,
        }
        writes = [self._put_new(record)]
        if api_key_id is not None or principal_arn is not None:
            pointer = {
                "pk": _pointer_pk(api_key_id=api_key_id, principal_arn=principal_arn),
                "name": name,
                "trust": trust,
                "source": source,
            }
            writes.append(self._put_new(pointer))
        writes.append(
            {
                "Put": {
                    "TableName": self.table,
                    "Item": to_item(self._event(CREATED, name, actor, reason, trust=trust)),
                }
            }
        )
        try:
            self.ddb.transact_write_items(TransactItems=writes)
        except ClientError as err:
            if err.response["Error"]["Code"] in (
                "TransactionCanceledException",
                "ConditionalCheckFailedException",
            ):
                raise Conflict(f"client {name!r} or its identity is already recorded", name=name) from err
            raise
        return Client.from_record(record)

    def get(self, name: str) -> Client:
        item = self.ddb.get_item(
            TableName=self.table, Key={"pk": {"S": f"client#{name}"}}, ConsistentRead=True
        ).get("Item")
        if not item:
            raise NotFound(f"no client {name!r}", name=name)
        return Client.from_record(from_item(item))

    def by_api_key(self, api_key_id: str) -> Client | None:
        return self._by_pointer(_pointer_pk(api_key_id=api_key_id))

    def by_principal(self, arn: str) -> Client | None:
        return self._by_pointer(_pointer_pk(principal_arn=arn))

    def _by_pointer(self, pk: str) -> Client | None:
        item = self.ddb.get_item(TableName=self.table, Key={"pk": {"S": pk}}).get("Item")
        return Client.from_record(from_item(item)) if item else None

    def list(self) -> builtins.list[Client]:
        """Every recorded client, by name."""
        out: list[Client] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": INDEX,
            "KeyConditionExpression": "kind = :kind",
            "ExpressionAttributeValues": {":kind": {"S": CLIENT_KIND}},
        }
        while True:
            page = self.ddb.query(**kwargs)
            out.extend(Client.from_record(from_item(item)) for item in page.get("Items", []))
            if not page.get("LastEvaluatedKey"):
                return out
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def trust_map(self) -> dict[str, str]:
        """Every client's trust: the recorded ones, and the built-ins (trusted) unless recorded."""
        trust = {name: TRUSTED for name in BUILT_IN}
        trust.update({c.name: c.trust for c in self.list()})
        return trust

    def set_trust(
        self, name: str, trust: str, *, actor: str, reason: str, api_key_id: str | None = None
    ) -> Client:
        """Change a client's trust, its identity's pointer and record the event, in one
        transaction. A built-in without a record gets one, with ``api_key_id`` (the traffic
        function's key: its pointer then carries the trust to the upload function). NotFound
        for an unknown client."""
        check_trust(trust)
        try:
            current = self.get(name)
        except NotFound:
            if name not in BUILT_IN:
                raise
            current = self.create(
                name,
                trust=TRUSTED,
                source=TRAFFIC if name == TRAFFIC else "api",
                api_key_id=api_key_id,
                actor=actor,
                reason=f"built-in: {BUILT_IN[name]}",
            )
        at = now_iso()
        writes: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self.table,
                    "Key": {"pk": {"S": f"client#{name}"}},
                    "UpdateExpression": "SET #t = :t, #u = :u, #r = :r, #a = :a",
                    "ConditionExpression": "attribute_exists(pk)",
                    "ExpressionAttributeNames": {
                        "#t": "trust",
                        "#u": "updated_at",
                        "#r": "reason",
                        "#a": "actor",
                    },
                    "ExpressionAttributeValues": {
                        ":t": {"S": trust},
                        ":u": {"S": at},
                        ":r": {"S": reason},
                        ":a": {"S": actor},
                    },
                }
            }
        ]
        if current.api_key_id is None and current.principal_arn is None and api_key_id is not None:
            # A built-in's record made before its key was known: it names the key from now on.
            update = writes[0]["Update"]
            update["UpdateExpression"] += ", #k = :k"
            update["ExpressionAttributeNames"]["#k"] = "api_key_id"
            update["ExpressionAttributeValues"][":k"] = {"S": api_key_id}
            current = Client.from_record({**current.to_dict(), "api_key_id": api_key_id})
        if current.api_key_id is not None or current.principal_arn is not None:
            pointer = {
                "pk": _pointer_pk(api_key_id=current.api_key_id, principal_arn=current.principal_arn),
                "name": name,
                "trust": trust,
                "source": current.source,
            }
            writes.append({"Put": {"TableName": self.table, "Item": to_item(pointer)}})
        event = self._event(TRUST, name, actor, reason, **{"from": current.trust, "to": trust})
        writes.append({"Put": {"TableName": self.table, "Item": to_item(event)}})
        self.ddb.transact_write_items(TransactItems=writes)
        return Client.from_record({**current.to_dict(), "trust": trust, "updated_at": at, "reason": reason})

    # --- events ---------------------------------------------------------------------------

    def record_event(
        self, event: str, *, actor: str, reason: str, name: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        item = self._event(event, name, actor, reason, **fields)
        self.ddb.put_item(
            TableName=self.table, Item=to_item(item), ConditionExpression="attribute_not_exists(pk)"
        )
        return _public(item)

    def events(self, limit: int = 50) -> builtins.list[dict[str, Any]]:
        """The newest ``limit`` events, newest first."""
        page = self.ddb.query(
            TableName=self.table,
            IndexName=INDEX,
            KeyConditionExpression="kind = :kind",
            ExpressionAttributeValues={":kind": {"S": EVENT_KIND}},
            ScanIndexForward=False,
            Limit=limit,
        )
        return [_public(from_item(item)) for item in page.get("Items", [])]

    def _event(self, event: str, name: str | None, actor: str, reason: str, **fields: Any) -> dict[str, Any]:
        at = now_iso()
        sk = f"{at}#{secrets.token_hex(4)}"
        return {
            "pk": f"{EVENT_KIND}#{sk}",
            "kind": EVENT_KIND,
            "sk": sk,
            "at": at,
            "event": event,
            "name": name,
            "actor": actor,
            "reason": reason,
            **fields,
        }

    def _put_new(self, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self.table,
                "Item": to_item(record),
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }


def _public(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in ("pk", "kind", "sk")}


# --- requests -------------------------------------------------------------------------------


def identity_of(event: dict[str, Any]) -> tuple[str, str] | None:
    """Who API Gateway authenticated: ``("api_key", apiKeyId)`` on a route that requires a key,
    ``("iam", userArn)`` on one with IAM (SigV4) authorization, None otherwise. Taken from the
    request context API Gateway writes ($context.identity.apiKeyId, $context.identity.userArn:
    API Gateway Developer Guide, "Variables for data transformations"), never from a header."""
    identity = (event.get("requestContext") or {}).get("identity") or {}
    if identity.get("apiKeyId"):
        return "api_key", str(identity["apiKeyId"])
    if identity.get("userArn"):
        return "iam", str(identity["userArn"])
    return None


class Resolver:
    """A request's client, for the functions behind the ingestion routes. Answers are kept
    ``ttl_s`` seconds per execution environment, so a revocation reaches every environment
    within that time (the gateway refuses a disabled key on its own, sooner)."""

    def __init__(
        self,
        table: str,
        *,
        traffic_api_key_id: str | None = None,
        ddb: Any = None,
        ttl_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clients = Clients(table, ddb)
        self.traffic_api_key_id = traffic_api_key_id or None
        self.ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, Client | None]] = {}

    @classmethod
    def from_env(cls, env: settings.Env | None = None) -> Resolver:
        """MODEL_TABLE, TRAFFIC_API_KEY_ID (the traffic function's key id, optional) and
        CLIENT_CACHE_S (seconds an answer is kept, default 10)."""
        env = settings.environ() if env is None else env
        return cls(
            settings.required(env, "MODEL_TABLE"),
            traffic_api_key_id=settings.optional(env, "TRAFFIC_API_KEY_ID", "") or None,
            ttl_s=settings.number(env, "CLIENT_CACHE_S", 10.0, minimum=0.0),
        )

    def client_for(self, event: dict[str, Any]) -> Client:
        """The client that sent ``event``; Forbidden when there is no authenticated identity,
        when the identity is not a recorded client, or when the client is revoked."""
        identity = identity_of(event)
        if identity is None:
            raise Forbidden("no authenticated client: send your API key in the x-api-key header")
        client = self._lookup(identity)
        if client is None:
            raise Forbidden("this API key or principal is not registered as a client")
        if client.trust == REVOKED:
            raise Forbidden(f"client {client.name!r} is revoked", client=client.name)
        return client

    def _lookup(self, identity: tuple[str, str]) -> Client | None:
        now = self._clock()
        cached = self._cache.get(identity)
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        kind, value = identity
        client = self.clients.by_api_key(value) if kind == "api_key" else self.clients.by_principal(value)
        if client is None and kind == "api_key" and value == self.traffic_api_key_id:
            client = Client(name=TRAFFIC, trust=TRUSTED, source=TRAFFIC, api_key_id=value)
        self._cache[identity] = (now, client)
        return client
