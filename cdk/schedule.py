"""Schedule and events: the daily EventBridge Scheduler schedule and Prism's event bus."""

from __future__ import annotations

from aws_cdk import TimeZone
from aws_cdk import aws_events as events
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as targets
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

SCHEDULED_RUN = {"mode": "scheduled"}


class EventBus(Construct):
    """The bus finalize publishes ``Title Preprocessed`` / ``Title Failed`` to (``source: prism``)."""

    def __init__(self, scope: Construct, id: str, *, bus_name: str) -> None:
        super().__init__(scope, id)
        self.bus = events.EventBus(self, "Bus", event_bus_name=bus_name)


class DailySchedule(Construct):
    """Starts a scheduled run of the state machine, in the configured time zone."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        state_machine: sfn.IStateMachine,
        expression: str,
        time_zone: str,
        enabled: bool,
    ) -> None:
        super().__init__(scope, id)
        self.schedule = scheduler.Schedule(
            self, "Daily",
            schedule=scheduler.ScheduleExpression.expression(expression, TimeZone.of(time_zone)),
            target=targets.StepFunctionsStartExecution(
                state_machine, input=scheduler.ScheduleTargetInput.from_object(SCHEDULED_RUN)),
            description="Prism: preprocess the titles delivered since the last run",
            enabled=enabled,
        )  # fmt: skip
