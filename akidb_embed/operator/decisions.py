"""Decisions as data: what each placement action or conversion step writes (pure).

`outcome(action, body, now)` turns one action of `placement.decide` into an `Outcome`:
the status merge patch, the Event to post and the Deployment size to set. The
conversion steps (`conversion_started`, `converted`, ...) do the same for the Job
workflow. No I/O and no clock: `controller` and `conversion` apply what these return,
and tests compare them as data.

A field left None means "nothing to do" (no status write, no Event, no scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from akidb_embed import k8s
from akidb_embed.operator import objects
from akidb_embed.operator.placement import (
    ACTIVATING,
    CAPACITY_EXHAUSTED,
    CONVERTING,
    EVICTING,
    FAILED,
    PENDING,
    READY,
    STANDBY,
    Action,
    Activate,
    Evict,
    IdleStandby,
    MarkActivating,
    MarkReady,
    MarkStandby,
    Scale,
    Wait,
)

Body = dict[str, Any]


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event about the EmbeddingModel."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Outcome:
    """What applying one decision writes, in this order: status, Event, replicas."""

    status: Body | None = None
    event: Event | None = None
    replicas: int | None = None
    measure: bool = False  # read the ready pod's self-measurement into status.performance


def _conditions(body: Body, *new: Body) -> list[Body]:
    return objects.merge_conditions((body.get("status") or {}).get("conditions"), *new)


def _generation(body: Body) -> Any:
    return body["metadata"].get("generation")


def outcome(action: Action, body: Body, now: float) -> Outcome:
    """The status patch, Event and scale that carry out `action` on the model `body`.

    Every action but `DeletePod` (about a pod, whose model may be gone) names a model."""
    status = body.get("status") or {}
    gen = _generation(body)
    stamp = k8s.to_rfc3339(now)

    def cond(type_: str, true: bool, reason: str, message: str) -> Body:
        return objects.condition(type_, true, reason, message, stamp, gen)

    if isinstance(action, Activate):
        return Outcome(
            status={
                "phase": ACTIVATING,
                "reason": "Activated",
                "message": action.message,
                "activeSince": stamp,
                "conditions": _conditions(
                    body,
                    cond(objects.READY, False, "Activating", "pod starting"),
                    cond(objects.CAPACITY_EXHAUSTED, False, "Activated", ""),
                ),
            },
            event=Event("Normal", "Activated", action.message),
            replicas=1,
        )
    if isinstance(action, Evict | IdleStandby):
        reason = "Evicted" if isinstance(action, Evict) else "IdleTimeout"
        return Outcome(
            status={
                "phase": EVICTING,
                "reason": reason,
                "message": action.message,
                "lastEvictedAt": stamp,
                "evictions": int(status.get("evictions") or 0) + 1,
                "conditions": _conditions(body, cond(objects.READY, False, reason, action.message)),
            },
            event=Event("Normal", reason, action.message),
            replicas=0,
        )
    if isinstance(action, Scale):
        return Outcome(replicas=action.replicas)
    if isinstance(action, MarkReady):
        started = k8s.parse_time(status.get("activeSince"))
        cold = f" after a {now - started:.1f}s cold start" if started else ""
        message = f"{action.model} is ready{cold}"
        return Outcome(
            status={
                "phase": READY,
                "reason": "PodReady",
                "message": message,
                "readySince": stamp,
                "conditions": _conditions(body, cond(objects.READY, True, "PodReady", message)),
            },
            event=Event("Normal", "Ready", message),
            measure=True,
        )
    if isinstance(action, MarkActivating):
        message = f"{action.model} lost its ready pod; waiting for a new one"
        return Outcome(
            status={
                "phase": ACTIVATING,
                "reason": "PodNotReady",
                "message": message,
                "conditions": _conditions(body, cond(objects.READY, False, "PodNotReady", message)),
            },
            event=Event("Warning", "PodNotReady", message),
        )
    if isinstance(action, MarkStandby):
        message = f"{action.model} is in standby (its pod has stopped)"
        return Outcome(status={"phase": STANDBY, "reason": "Stopped", "message": message})
    if isinstance(action, Wait):
        return _wait(action, body, stamp)
    raise TypeError(f"no outcome for {action!r}")


def _wait(action: Wait, body: Body, stamp: str) -> Outcome:
    """A wait is recorded once (condition + Event), not at every decision."""
    for current in (body.get("status") or {}).get("conditions") or []:
        if (
            current.get("type") == objects.CAPACITY_EXHAUSTED
            and current.get("status") == "True"
            and current.get("reason") == action.reason
        ):
            return Outcome()
    gen = _generation(body)
    return Outcome(
        status={
            "message": action.message,
            "conditions": _conditions(
                body,
                objects.condition(
                    objects.CAPACITY_EXHAUSTED, True, action.reason, action.message, stamp, gen
                ),
            ),
        },
        event=Event(
            "Warning" if action.reason == CAPACITY_EXHAUSTED else "Normal",
            action.reason,
            action.message,
        ),
    )


# -- the conversion workflow's steps -------------------------------------------------------


# Phases a converted model leaves for Standby on its own (the decisions own the others).
_BEFORE_STANDBY = (PENDING, CONVERTING, FAILED)


def artifact_ready(body: Body) -> Outcome:
    """A converted model whose status lags (new object, restarted operator): Standby."""
    status = body.get("status") or {}
    gen = _generation(body)
    if objects.phase_of(body) in _BEFORE_STANDBY:
        return Outcome(
            status={
                "phase": STANDBY,
                "reason": "Converted",
                "message": "artifact ready",
                "observedGeneration": gen,
            }
        )
    if status.get("observedGeneration") != gen:
        return Outcome(status={"observedGeneration": gen})
    return Outcome()


def conversion_started(body: Body, job_name: str, *, created: bool, stamp: str) -> Outcome:
    """Converting, with the Job named; the Event only when this pass created the Job."""
    if not created and objects.phase_of(body) == CONVERTING:
        return Outcome()
    gen = _generation(body)
    spec = body["spec"]
    message = f"converting {objects.source_of(spec).location} ({objects.model_key(spec)})"
    return Outcome(
        status={
            "phase": CONVERTING,
            "reason": "ConversionStarted",
            "message": f"Job {job_name}: {message}",
            "observedGeneration": gen,
            "conditions": _conditions(
                body,
                objects.condition(objects.CONVERTED, False, "Converting", message, stamp, gen),
                objects.condition(objects.READY, False, "Converting", message, stamp, gen),
            ),
        },
        event=Event("Normal", "ConversionStarted", f"Started Job {job_name}: {message}")
        if created
        else None,
    )


def source_refused(body: Body, message: str, stamp: str) -> Outcome:
    """A source path outside --source-root: Failed with a condition and an Event, once."""
    status = body.get("status") or {}
    gen = _generation(body)
    if status.get("reason") == "SourceRefused" and status.get("observedGeneration") == gen:
        return Outcome()
    return Outcome(
        status={
            "phase": FAILED,
            "reason": "SourceRefused",
            "message": message,
            "observedGeneration": gen,
            "conditions": _conditions(
                body,
                objects.condition(objects.CONVERTED, False, "SourceRefused", message, stamp, gen),
                objects.condition(objects.READY, False, "SourceRefused", message, stamp, gen),
            ),
        },
        event=Event("Warning", "SourceRefused", message),
    )


def converted(body: Body, path: str, digest: str, stamp: str) -> Outcome:
    """The conversion Job succeeded: Standby, with the artifact recorded."""
    spec = body["spec"]
    message = f"converted to {path}"
    return Outcome(
        status={
            "phase": STANDBY,
            "reason": "Converted",
            "message": message,
            "artifact": {
                "path": path,
                "key": objects.model_key(spec),
                "precision": objects.precision_of(spec),
                "digest": digest,
            },
            "conditions": _conditions(
                body,
                objects.condition(
                    objects.CONVERTED, True, "Converted", message, stamp, _generation(body)
                ),
            ),
        },
        event=Event("Normal", "Converted", message),
    )


def conversion_failed(body: Body, job_name: str, detail: str, stamp: str) -> Outcome:
    """The conversion Job failed: Failed, with what its pod said."""
    message = f"conversion Job {job_name} failed: {detail}"
    return Outcome(
        status={
            "phase": FAILED,
            "reason": "ConversionFailed",
            "message": message,
            "conditions": _conditions(
                body,
                objects.condition(
                    objects.CONVERTED, False, "ConversionFailed", message, stamp, _generation(body)
                ),
            ),
        },
        event=Event("Warning", "ConversionFailed", message),
    )
