"""Monitoring: alarms to an SNS topic and a dashboard of titles, failures, stage times, queue."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as events_targets
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from prism.contract import METRIC_TITLES_DEFERRED as TITLES_DEFERRED
from prism.contract import METRIC_TITLES_PARKED as TITLES_PARKED
from prism.contract import METRIC_TITLES_TAKEN as TITLES_TAKEN

NAMESPACE = "Prism"
# Powertools adds the function's service as a dimension to every metric, single_metric included: a widget
# that leaves it out reads a metric nobody publishes.
FINALIZE_SERVICE = "prism-finalize"
DISCOVER_SERVICE = "prism-discover"


class Monitoring(Construct):
    """Exposes ``topic``, ``alarms`` and ``dashboard``."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        state_machine: sfn.StateMachine,
        job_queue_arns: list[str],
        stage_names: list[str],
        key: kms.IKey,
        emails: tuple[str, ...],
        dashboard_name: str,
    ) -> None:
        super().__init__(scope, id)
        self.topic = sns.Topic(self, "Alarms", master_key=key, enforce_ssl=True, display_name="Prism alarms")
        for email in emails:
            self.topic.add_subscription(subscriptions.EmailSubscription(email))
        action = cw_actions.SnsAction(self.topic)

        titles_failed = cw.Metric(
            namespace=NAMESPACE,
            metric_name="TitlesFailed",
            dimensions_map={"service": FINALIZE_SERVICE},
            statistic="Sum",
            period=Duration.hours(1),
        )
        titles_ok = cw.Metric(namespace=NAMESPACE, metric_name="TitlesSucceeded",
                              dimensions_map={"service": FINALIZE_SERVICE}, statistic="Sum", period=Duration.hours(1))  # fmt: skip
        self.alarms = {
            "ExecutionsFailed": state_machine.metric_failed(period=Duration.minutes(5), statistic="Sum"),
            "ExecutionsTimedOut": state_machine.metric_timed_out(period=Duration.minutes(5), statistic="Sum"),
            "ExecutionsAborted": state_machine.metric_aborted(period=Duration.minutes(5), statistic="Sum"),
            "TitlesFailed": titles_failed,
        }

        def discover_metric(name: str, statistic: str) -> cw.Metric:
            return cw.Metric(namespace=NAMESPACE, metric_name=name, dimensions_map={"service": DISCOVER_SERVICE},
                             statistic=statistic, period=Duration.days(1))  # fmt: skip

        # Titles a scheduled run parked after max_attempts failures on their host (docs/runbook.md).
        self.alarms["TitlesParked"] = discover_metric(TITLES_PARKED, "Maximum")
        for name, metric in list(self.alarms.items()):
            alarm = cw.Alarm(self, name, metric=metric, threshold=1, evaluation_periods=1,
                             comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                             treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                             alarm_description=f"Prism: {name} >= 1")  # fmt: skip
            alarm.add_alarm_action(action)
            self.alarms[name] = alarm
        # Runs took titles today but none succeeded: the pipeline is broken for every title (image, models, IAM).
        no_success = cw.MathExpression(
            expression="IF(taken > 0 AND FILL(ok, 0) == 0, 1, 0)", period=Duration.days(1),
            using_metrics={"taken": discover_metric(TITLES_TAKEN, "Sum"),
                           "ok": cw.Metric(namespace=NAMESPACE, metric_name="TitlesSucceeded",
                                           dimensions_map={"service": FINALIZE_SERVICE}, statistic="Sum",
                                           period=Duration.days(1))},
            label="runs took titles and none succeeded",
        )  # fmt: skip
        # The titles left for later runs grew three days in a row: capacity (max_vcpus, quotas) is below deliveries.
        backlog_growth = cw.MathExpression(
            expression="DIFF(deferred)", period=Duration.days(1),
            using_metrics={"deferred": discover_metric(TITLES_DEFERRED, "Maximum")}, label="deferred titles, daily change",
        )  # fmt: skip
        for name, metric, threshold, periods, comparison, description in (
            ("NoTitleSucceededToday", no_success, 1, 1, cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
             "Prism: scheduled runs took titles today and not one succeeded (docs/runbook.md)"),
            ("DeferredBacklogGrowing", backlog_growth, 0, 3, cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
             "Prism: the deferred backlog grew three days running; deliveries outpace capacity (docs/runbook.md)"),
        ):  # fmt: skip
            alarm = cw.Alarm(self, name, metric=metric, threshold=threshold, evaluation_periods=periods,
                             comparison_operator=comparison, treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                             alarm_description=description)  # fmt: skip
            alarm.add_alarm_action(action)
            self.alarms[name] = alarm

        # Batch publishes no job metrics: count its state-change events with rules instead.
        self.failed_jobs = events.Rule(
            self, "BatchJobFailed",
            event_pattern=events.EventPattern(source=["aws.batch"], detail_type=["Batch Job State Change"],
                                              detail={"status": ["FAILED"], "jobQueue": job_queue_arns}),
        )  # fmt: skip
        self.failed_jobs.add_target(
            events_targets.SnsTopic(
                self.topic,
                message=events.RuleTargetInput.from_text(
                    f"Prism Batch job {events.EventField.from_path('$.detail.jobName')} failed: "
                    f"{events.EventField.from_path('$.detail.statusReason')} ({events.EventField.from_path('$.detail.jobId')})"
                ),
            )
        )
        # No target: the rule exists for its MatchedEvents metric (jobs waiting for capacity).
        self.runnable_jobs = events.Rule(
            self, "BatchJobRunnable",
            event_pattern=events.EventPattern(source=["aws.batch"], detail_type=["Batch Job State Change"],
                                              detail={"status": ["RUNNABLE"], "jobQueue": job_queue_arns}),
        )  # fmt: skip

        def matched(rule: events.Rule, label: str) -> cw.Metric:
            return cw.Metric(namespace="AWS/Events", metric_name="MatchedEvents", dimensions_map={"RuleName": rule.rule_name},
                             statistic="Sum", period=Duration.minutes(5), label=label)  # fmt: skip

        durations = [
            cw.Metric(namespace=NAMESPACE, metric_name="StageDuration", dimensions_map={"stage": s, "service": FINALIZE_SERVICE},
                      statistic="p90", period=Duration.hours(1), label=f"{s} p90 (s)")
            for s in stage_names
        ]  # fmt: skip
        self.dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=dashboard_name)
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Titles processed / failed", left=[titles_ok, titles_failed], width=12),
            cw.GraphWidget(title="Runs", left=[state_machine.metric_started(), state_machine.metric_succeeded(),
                                               state_machine.metric_failed(), state_machine.metric_timed_out()], width=12),
        )  # fmt: skip
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Stage duration (p90)", left=durations, width=12),
            cw.GraphWidget(title="Batch queue: jobs entering RUNNABLE vs failed",
                           left=[matched(self.runnable_jobs, "runnable"), matched(self.failed_jobs, "failed")], width=12),
        )  # fmt: skip
