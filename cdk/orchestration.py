"""Orchestration: the three Lambda handlers and the Step Functions state machine.

Input ``{"mode": "scheduled"}`` or ``{"mode": "manual", "titles": [...], "stages": [...],
"force": true}`` → ``discover`` (writes the run's title list to S3) → a Distributed Map over
titles with a concurrency limit → per title, the jobs (groups of stages, ``cdk/config.py``
``JobSpec``) as ``batch:submitJob.sync`` tasks in a Parallel state with one branch per independent
chain of jobs (visual → embeddings, and audio beside it), each job with retries and a catch that
records the failure → ``finalize`` →
a summary of succeeded / failed / skipped titles. A title's failure ends in a recorded
``failed`` result, never in a failed Map, so one title never stops the others.

Per title, ``discover`` says which jobs run and which of their stages: ``$.title.jobs.<job>``
is ``{"run": bool, "stages": "a,b"}``, and the job's ``PRISM_STAGES`` is overridden with that
list, so a job never reruns a stage the run did not ask for.
"""

from __future__ import annotations

import json

from aws_cdk import Duration, Stack
from aws_cdk import aws_batch as batch
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from cdk.compute import CAPACITY_SHORT
from cdk.config import EXECUTION_TIMEOUT_HOURS, JobSpec
from cdk.lambda_bundle import lambda_bundle
from prism.contract import RUNS_PREFIX

MAP_RESULTS_PREFIX = f"{RUNS_PREFIX}map-results"  # under the run-items lifecycle rule
PENDING_KEY = "#PENDING"  # prism.cloud.catalog.PENDING_KEY (tests/cdk checks they agree)
BATCH_API_ERRORS = ["Batch.AWSBatchException", "Batch.TooManyRequestsException", "Batch.ServerException"]
HANDLERS = {
    "Discover": "discover.handler",
    "Finalize": "finalize.handler",
    "RecordFailure": "record_failure.handler",
    "Summarise": "summarise.handler",
}


def _retry_throttling(task: tasks.LambdaInvoke) -> tasks.LambdaInvoke:
    """LambdaInvoke's default retry leaves out throttling; a Map of many titles meets it at the concurrency limit."""
    task.add_retry(errors=["Lambda.TooManyRequestsException"], interval=Duration.seconds(2), backoff_rate=2,
                   max_attempts=8, jitter_strategy=sfn.JitterType.FULL)  # fmt: skip
    return task


def job_chains(jobs: tuple[JobSpec, ...]) -> list[list[JobSpec]]:
    """Split the job graph into independent chains (connected components, in config order)."""
    chains: list[list[JobSpec]] = []
    for spec in jobs:
        home = [c for c in chains if any(j.name in spec.requires for j in c)]
        if not home:
            chains.append([spec])
            continue
        merged = home[0]
        for other in home[1:]:
            merged.extend(other)
            chains.remove(other)
        merged.append(spec)
    order = {j.name: i for i, j in enumerate(jobs)}
    return [sorted(c, key=lambda j: order[j.name]) for c in chains]


class Orchestration(Construct):
    """Exposes ``functions`` (name -> Function) and ``state_machine``."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        jobs: tuple[JobSpec, ...],
        stage_graph: dict[str, list[str]],
        job_definitions: dict[str, batch.IJobDefinition],
        job_queues: dict[str, batch.IJobQueue],
        artifacts: s3.IBucket,
        catalog: dynamodb.ITableV2,
        environment: dict[str, str],
        runtime: lambda_.Runtime,
        architecture: lambda_.Architecture,
        powertools_layer_arn: str,
        max_concurrent_titles: int,
        pipeline_version: str,
        log_retention: logs.RetentionDays,
        log_key: kms.IKey,
    ) -> None:
        super().__init__(scope, id)
        # ResultWriterV2 (the Map's results in S3, not inline) is behind this feature flag.
        self.node.set_context("@aws-cdk/aws-stepfunctions:useDistributedMapResultWriterV2", True)
        layer = lambda_.LayerVersion.from_layer_version_arn(self, "Powertools", powertools_layer_arn)
        code = lambda_.Code.from_asset(lambda_bundle())
        env = {
            **environment,
            "PRISM_STAGE_GRAPH": json.dumps(stage_graph),
            "PRISM_JOBS": json.dumps({j.name: {"stages": list(j.stages), "requires": list(j.requires)} for j in jobs}),
            "PRISM_JOB_QUEUES": Stack.of(self).to_json_string({m: q.job_queue_arn for m, q in job_queues.items()}),
            "POWERTOOLS_METRICS_NAMESPACE": "Prism",
        }
        self.functions: dict[str, lambda_.Function] = {}
        for name, handler in HANDLERS.items():
            log_group = logs.LogGroup(self, f"{name}Logs", retention=log_retention, encryption_key=log_key)
            role = iam.Role(self, f"{name}Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
            log_group.grant_write(role)
            self.functions[name] = lambda_.Function(
                self, f"{name}Function",
                runtime=runtime, architecture=architecture, handler=handler, code=code, layers=[layer],
                role=role, log_group=log_group, tracing=lambda_.Tracing.ACTIVE,
                timeout=Duration.minutes(5 if name == "Discover" else 1), memory_size=512,
                environment={**env, "POWERTOOLS_SERVICE_NAME": f"prism-{handler.split('.')[0]}"},
            )  # fmt: skip

        run_request = sfn.TaskInput.from_object(
            {
                "request": sfn.JsonPath.entire_payload,
                "execution": sfn.JsonPath.string_at("$$.Execution.Name"),
                "started_at": sfn.JsonPath.string_at("$$.Execution.StartTime"),
            }
        )
        discover = tasks.LambdaInvoke(
            self, "Discover titles", lambda_function=self.functions["Discover"], payload=run_request,
            result_selector={"mode.$": "$.Payload.mode", "items_key.$": "$.Payload.items_key",
                             "lists_key.$": "$.Payload.lists_key", "count.$": "$.Payload.count",
                             "deferred_count.$": "$.Payload.deferred_count", "started_at.$": "$.Payload.started_at"},
            result_path="$.discovery",
        )  # fmt: skip
        _retry_throttling(discover)

        titles = sfn.DistributedMap(
            self, "Titles",
            item_reader=sfn.S3JsonItemReader(bucket=artifacts, key=sfn.JsonPath.string_at("$.discovery.items_key")),
            item_selector={"title.$": "$$.Map.Item.Value", "execution.$": "$$.Execution.Name",
                           "execution_started_at.$": "$$.Execution.StartTime"},
            max_concurrency=max_concurrent_titles,
            # No ToleratedFailurePercentage: every title's stage/finalize failure is caught and recorded
            # inside its child execution, so a failed child means the failure path itself broke, which
            # should fail the run (and alarm) rather than be tolerated.
            # Results go to S3 (summarise reads them): inline they pass 256 KiB at a few thousand titles.
            result_writer_v2=sfn.ResultWriterV2(bucket=artifacts, prefix=MAP_RESULTS_PREFIX),
            result_path="$.results",
        )  # fmt: skip
        self._on_demand_queue = job_queues.get("on_demand")
        titles.item_processor(self._title_flow(jobs, job_definitions, catalog))

        summary = tasks.LambdaInvoke(
            self, "Summarise",
            lambda_function=self.functions["Summarise"],
            payload=sfn.TaskInput.from_object({"discovery.$": "$.discovery", "results.$": "$.results",
                                               "pipeline_version": pipeline_version}),
            result_selector={"summary.$": "$.Payload"},
            result_path="$.outcome",
        )  # fmt: skip
        _retry_throttling(summary)
        nothing = sfn.Pass(self, "Nothing to do", result=sfn.Result.from_array([]), result_path="$.results")
        summary.next(sfn.Succeed(self, "Done", output_path="$.outcome.summary"))
        definition = discover.next(
            sfn.Choice(self, "Any titles?")
            .when(sfn.Condition.number_greater_than("$.discovery.count", 0), titles.next(summary))
            .otherwise(nothing.next(summary))
        )
        self.log_group = logs.LogGroup(self, "ExecutionLogs", retention=log_retention, encryption_key=log_key)
        self.state_machine = sfn.StateMachine(
            self, "StateMachine",
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            state_machine_type=sfn.StateMachineType.STANDARD,
            timeout=Duration.hours(EXECUTION_TIMEOUT_HOURS),
            tracing_enabled=True,
            logs=sfn.LogOptions(destination=self.log_group, level=sfn.LogLevel.ALL, include_execution_data=True),
        )  # fmt: skip
        self._grant_batch(job_definitions, job_queues)

    # -- per title --------------------------------------------------------------------------
    def _title_flow(self, jobs: tuple[JobSpec, ...], job_definitions: dict[str, batch.IJobDefinition],
                    catalog: dynamodb.ITableV2):  # fmt: skip
        parallel = sfn.Parallel(self, "Jobs", result_path=sfn.JsonPath.DISCARD)
        for chain in job_chains(jobs):
            parallel.branch(self._chain(chain, job_definitions))
        finalize = tasks.LambdaInvoke(
            self, "Finalize title",
            lambda_function=self.functions["Finalize"],
            payload=sfn.TaskInput.from_object({
                "title_id.$": "$.title.title_id", "source_uri.$": "$.title.source_uri",
                "source_etag.$": "$.title.source_etag", "stages.$": "$.title.stages", "execution.$": "$.execution",
            }),
            result_selector={"title_id.$": "$.Payload.title_id", "status.$": "$.Payload.status",
                             "reason.$": "$.Payload.reason"},
        )  # fmt: skip
        title_failed = sfn.Pass(self, "Title failed", parameters={
            "title_id.$": "$.title.title_id", "status": "failed", "reason.$": "$.failure.reason"})  # fmt: skip
        finalize_failed = self._record_failure("finalize", then=title_failed, final=True)
        _retry_throttling(finalize)
        finalize.add_catch(finalize_failed, errors=["States.ALL"], result_path="$.error")
        # The title is done either way: its pending marker goes, which advances the scheduled watermark.
        completed = tasks.DynamoDeleteItem(
            self, "Title completed",
            table=catalog,
            key={"title_id": tasks.DynamoAttributeValue.from_string(PENDING_KEY),
                 "record": tasks.DynamoAttributeValue.from_string(sfn.JsonPath.string_at("$.title_id"))},
            result_path=sfn.JsonPath.DISCARD,
        )  # fmt: skip
        finalize.next(completed)
        title_failed.next(completed)
        return parallel.next(finalize)

    def _chain(self, chain: list[JobSpec], job_definitions) -> sfn.IChainable:
        """Each job in turn, if the title's ``jobs.<job>.run``; a failed job is recorded and ends the chain."""
        end = sfn.Pass(self, f"{chain[0].name} chain done", result_path=sfn.JsonPath.DISCARD)
        choices = []
        for spec in chain:
            choice = sfn.Choice(self, f"Run {spec.name}?")
            choices.append((spec, choice))
        for i, (spec, choice) in enumerate(choices):
            following = choices[i + 1][1] if i + 1 < len(choices) else end
            job = self._job(spec, job_definitions[spec.name])
            job.add_retry(errors=BATCH_API_ERRORS, interval=Duration.seconds(10), backoff_rate=2, max_attempts=4)
            failed = self._record_failure(
                spec.name, then=sfn.Pass(self, f"{spec.name} failed", result_path=sfn.JsonPath.DISCARD)
            )
            if self._on_demand_queue is not None:
                job.add_catch(self._capacity_fallback(spec, job_definitions[spec.name], failed, following),
                              errors=["States.TaskFailed"], result_path="$.error")  # fmt: skip
            job.add_catch(failed, errors=["States.ALL"], result_path="$.error")
            job.next(following)
            choice.when(sfn.Condition.boolean_equals(f"$.title.jobs.{spec.name}.run", True), job).otherwise(following)
        return choices[0][1]

    def _capacity_fallback(self, spec: JobSpec, job_definition, failed: sfn.IChainable,
                           following: sfn.IChainable) -> sfn.Choice:  # fmt: skip
        """A job the Spot-first queue cancelled for want of capacity runs again on the on-demand queue."""
        on_demand = self._job(spec, job_definition, queue_arn=self._on_demand_queue.job_queue_arn)
        on_demand.add_retry(errors=BATCH_API_ERRORS, interval=Duration.seconds(10), backoff_rate=2, max_attempts=4)
        on_demand.add_catch(failed, errors=["States.ALL"], result_path="$.error")
        on_demand.next(following)
        return (
            sfn.Choice(self, f"{spec.name}: short of Spot capacity?")
            .when(sfn.Condition.not_(sfn.Condition.is_present("$.error.Cause")), failed)
            .when(sfn.Condition.string_matches("$.error.Cause", f"*{CAPACITY_SHORT}*"), on_demand)
            .otherwise(failed)
        )

    def _job(
        self, spec: JobSpec, job_definition: batch.IJobDefinition, *, queue_arn: str | None = None
    ) -> sfn.CustomState:
        """``batch:submitJob.sync`` as ASL: the queue is chosen per run mode at run time, or given."""
        environment = [
            {"Name": "PRISM_STAGES", "Value.$": f"$.title.jobs.{spec.name}.stages"},
            {"Name": "PRISM_TITLE_ID", "Value.$": "$.title.title_id"},
            {"Name": "PRISM_SOURCE_URI", "Value.$": "$.title.source_uri"},
            {"Name": "PRISM_FORCE", "Value.$": "$.title.force"},
            {"Name": "PRISM_EXECUTION", "Value.$": "$.execution"},
        ]
        if "audio" in spec.stages:  # the title's language hint (discover: the run's, else the environment's)
            environment.append({"Name": "PRISM_LANGUAGE_HINT", "Value.$": "$.title.language_hint"})
        queue = {"JobQueue": queue_arn} if queue_arn else {"JobQueue.$": "$.title.job_queue"}
        return sfn.CustomState(self, f"{spec.name} job" + (" on demand" if queue_arn else ""), state_json={
            "Type": "Task",
            "Resource": f"arn:{Stack.of(self).partition}:states:::batch:submitJob.sync",
            "Parameters": {
                "JobName": f"prism-{spec.name}",
                **queue,
                "JobDefinition": job_definition.job_definition_arn,
                "ContainerOverrides": {"Environment": environment},
            },
            "ResultPath": None,
            "TimeoutSeconds": 6 * 3600,  # queue wait included; the job definition bounds the run itself
        })  # fmt: skip

    def _record_failure(self, job: str, *, then: sfn.IChainable, final: bool = False) -> tasks.LambdaInvoke:
        """Record the failure, then ``then``; if recording itself fails, the title still goes on to ``then`` with
        a reason saying so (a failed child would fail the whole Map, every other title with it)."""
        record = tasks.LambdaInvoke(
            self, f"Record {job} failure",
            lambda_function=self.functions["RecordFailure"],
            payload=sfn.TaskInput.from_object({
                "title_id.$": "$.title.title_id", "job": job, "stages.$": "$.title.stages",
                "source_uri.$": "$.title.source_uri",
                "error.$": "$.error", "execution_started_at.$": "$.execution_started_at", "final": final,
            }),
            result_selector={"reason.$": "$.Payload.reason"},
            result_path="$.failure",
        )  # fmt: skip
        _retry_throttling(record)
        unrecorded = sfn.Pass(
            self, f"Record {job} failure failed",
            parameters={"reason.$": f"States.Format('{{}}: {job} failed, and recording the failure failed: {{}}', "
                                    "$.title.title_id, $.record_error.Error)"},
            result_path="$.failure",
        )  # fmt: skip
        record.add_catch(unrecorded.next(then), errors=["States.ALL"], result_path="$.record_error")
        record.next(then)
        return record

    def _grant_batch(self, job_definitions, job_queues) -> None:
        stack = Stack.of(self)
        role = self.state_machine.role
        # Every revision of each job definition, not the one this deploy registered: an execution in flight keeps
        # the definition it started with, so after a deploy its Map children still submit the previous revision
        # (kept ACTIVE by SkipDeregisterOnUpdate). The name without a revision is the form SubmitJob checks when a
        # caller names the definition alone (its latest revision).
        definitions = [
            stack.format_arn(service="batch", resource="job-definition", resource_name=name + revision)
            for name in (d.job_definition_name for d in job_definitions.values())
            for revision in (":*", "")
        ]
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["batch:SubmitJob"], resources=[q.job_queue_arn for q in job_queues.values()] + definitions
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["batch:TerminateJob"],
                resources=[stack.format_arn(service="batch", resource="job", resource_name="*")],
            )
        )
        role.add_to_principal_policy(iam.PolicyStatement(actions=["batch:DescribeJobs"], resources=["*"]))
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
            resources=[stack.format_arn(service="events", resource="rule",
                                        resource_name="StepFunctionsGetEventsForBatchJobsRule")],
        ))  # fmt: skip
