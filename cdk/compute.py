"""Compute: a private VPC with endpoints, GPU Batch compute environments, queues, job definitions.

No NAT gateway: instances reach S3, DynamoDB, ECR, ECS and CloudWatch Logs through VPC
endpoints only, so media never leaves the account's network path. Both compute environments
scale to zero (``minv_cpus=0``) and share ``max_vcpus`` (spot gets what on-demand does not), so
the fallback never doubles the cap.

Spot fallback: a queue moves on to its next compute environment only when the first is at its
vCPU cap or INVALID, never because Spot capacity is short. The scheduled queue (spot first)
therefore cancels a job that waited ``spot_wait`` at the head of the queue for
``CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY`` (``jobStateTimeLimitActions``), and the state machine
resubmits it to the on-demand queue. Manual runs use an on-demand-first queue.
"""

from __future__ import annotations

from aws_cdk import Arn, ArnFormat, Duration, Size, Stack
from aws_cdk import aws_batch as batch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from cdk_nag import NagSuppressions
from constructs import Construct

from cdk.config import JobSpec
from prism.contract import EXIT_TRANSIENT as _EXIT_TRANSIENT
from prism.contract import WORKER_COMMAND

EXIT_TRANSIENT = str(_EXIT_TRANSIENT)  # the worker: transient AWS error, worth a retry
# The GPU-optimized ECS AMI on Amazon Linux 2023 (ECS_AL2_NVIDIA is past end of support).
GPU_IMAGE_TYPE = batch.EcsMachineImageType.ECS_AL2023_NVIDIA
# What the workers do through the gateway endpoints (S3 transfers: multipart uploads and ranged GETs).
S3_ENDPOINT_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket",
                       "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]  # fmt: skip
DYNAMODB_ENDPOINT_ACTIONS = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query"]
CAPACITY_SHORT = "INSUFFICIENT_INSTANCE_CAPACITY"  # in the status reason of a job cancelled for capacity

# The IAM service prefix of each interface endpoint's API (its endpoint policy allows that service's actions).
INTERFACE_ENDPOINT_ACTIONS = {"EcrApi": "ecr", "EcrDocker": "ecr", "Logs": "logs", "Ecs": "ecs", "EcsAgent": "ecs",
                              "EcsTelemetry": "ecs"}  # fmt: skip
INTERFACE_ENDPOINTS = {
    "EcrApi": ec2.InterfaceVpcEndpointAwsService.ECR,
    "EcrDocker": ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,
    "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    "Ecs": ec2.InterfaceVpcEndpointAwsService.ECS,
    "EcsAgent": ec2.InterfaceVpcEndpointAwsService.ECS_AGENT,
    "EcsTelemetry": ec2.InterfaceVpcEndpointAwsService.ECS_TELEMETRY,
}


class Compute(Construct):
    """Exposes ``vpc``, ``queues`` (run mode -> JobQueue), ``job_definitions`` (job -> def), ``job_role``."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        availability_zones: tuple[str, ...],
        vpc_cidr: str,
        instance_types: tuple[str, ...],
        max_vcpus: int,
        on_demand_max_vcpus: int,
        spot: bool,
        spot_wait: Duration,
        root_volume_gib: int,
        image_repository: str,
        image_tag: str,
        image_repository_arn: str | None = None,
        external_bucket_accounts: tuple[str, ...] = (),
        jobs: tuple[JobSpec, ...],
        job_definition_prefix: str,
        environment: dict[str, str],
        job_environment: dict[str, dict[str, str]] | None = None,
        log_retention: logs.RetentionDays,
        log_key: kms.IKey,
    ) -> None:
        super().__init__(scope, id)
        flow_logs = logs.LogGroup(self, "FlowLogs", retention=log_retention, encryption_key=log_key)
        self.vpc = ec2.Vpc(
            self, "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(vpc_cidr),
            availability_zones=list(availability_zones),
            nat_gateways=0,
            subnet_configuration=[ec2.SubnetConfiguration(name="workers", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED,
                                                          cidr_mask=20)],
            flow_logs={"all": ec2.FlowLogOptions(destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs))},
        )  # fmt: skip
        subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
        self.s3_endpoint = self.vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3,
                                                         subnets=[subnets])  # fmt: skip
        self.dynamodb_endpoint = self.vpc.add_gateway_endpoint(
            "DynamoDb", service=ec2.GatewayVpcEndpointAwsService.DYNAMODB, subnets=[subnets]
        )
        self._restrict_endpoints(external_bucket_accounts)
        stack = Stack.of(self)
        # ECR also serves the image from the pipeline's repository, in the tooling account.
        image_accounts = [stack.account]
        if image_repository_arn:
            owner = Arn.split(image_repository_arn, ArnFormat.SLASH_RESOURCE_NAME).account
            if owner and owner != stack.account:
                image_accounts.append(owner)
        self.interface_endpoints: dict[str, ec2.InterfaceVpcEndpoint] = {}
        for name, service in INTERFACE_ENDPOINTS.items():
            endpoint = self.vpc.add_interface_endpoint(name, service=service, subnets=subnets, private_dns_enabled=True)
            self.interface_endpoints[name] = endpoint
            prefix = INTERFACE_ENDPOINT_ACTIONS[name]
            # This account's principals, on this account's resources (and the image repository's); a request that
            # names no resource (ecr:GetAuthorizationToken, ecs:DiscoverPollEndpoint) carries no aws:ResourceAccount.
            endpoint.add_to_policy(iam.PolicyStatement(
                sid="OwnAccount", principals=[iam.AnyPrincipal()], actions=[f"{prefix}:*"], resources=["*"],
                conditions={"StringEquals": {"aws:PrincipalAccount": stack.account},
                            "StringEqualsIfExists": {"aws:ResourceAccount": image_accounts if prefix == "ecr"
                                                     else [stack.account]}}))  # fmt: skip
            NagSuppressions.add_resource_suppressions(
                endpoint,
                [
                    {
                        "id": "CdkNagValidationFailure",
                        "reason": "AwsSolutions-EC23 cannot read the endpoint's ingress "
                        "rule, which is HTTPS from the VPC's own CIDR (an Fn::GetAtt), not 0.0.0.0/0.",
                    }
                ],
                apply_to_children=True,
            )

        self.security_group = ec2.SecurityGroup(self, "Workers", vpc=self.vpc, allow_all_outbound=False,
                                                description="Prism Batch workers: HTTPS to VPC endpoints only")  # fmt: skip
        # Isolated subnets have no route out of the VPC: HTTPS can only reach the endpoints.
        self.security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS to VPC endpoints")

        launch_template = ec2.LaunchTemplate(
            self, "WorkerTemplate",
            require_imdsv2=True,
            block_devices=[ec2.BlockDevice(device_name="/dev/xvda", volume=ec2.BlockDeviceVolume.ebs(
                root_volume_gib, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3))],
        )  # fmt: skip
        instance_role = iam.Role(
            self, "InstanceRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(
                "service-role/AmazonEC2ContainerServiceforEC2Role")],
        )  # fmt: skip
        common = dict(
            vpc=self.vpc, vpc_subnets=subnets, security_groups=[self.security_group],
            instance_types=[ec2.InstanceType(t) for t in instance_types], use_optimal_instance_classes=False,
            minv_cpus=0, launch_template=launch_template, instance_role=instance_role,
            images=[batch.EcsMachineImage(image_type=GPU_IMAGE_TYPE)],
            update_to_latest_image_version=True, replace_compute_environment=False,
        )  # fmt: skip
        self.spot = None
        if spot:
            self.spot = batch.ManagedEc2EcsComputeEnvironment(
                self, "GpuSpot", spot=True, allocation_strategy=batch.AllocationStrategy.SPOT_PRICE_CAPACITY_OPTIMIZED,
                maxv_cpus=max_vcpus - on_demand_max_vcpus, **common)  # fmt: skip
        self.on_demand = batch.ManagedEc2EcsComputeEnvironment(
            self, "GpuOnDemand", spot=False, allocation_strategy=batch.AllocationStrategy.BEST_FIT_PROGRESSIVE,
            maxv_cpus=on_demand_max_vcpus if spot else max_vcpus, **common)  # fmt: skip

        def order(*environments) -> list[batch.OrderedComputeEnvironment]:
            return [batch.OrderedComputeEnvironment(compute_environment=e, order=i + 1)
                    for i, e in enumerate(x for x in environments if x is not None)]  # fmt: skip

        # One queue per priority: an operator's manual reprocessing runs ahead of the daily backlog.
        self.queues: dict[str, batch.JobQueue] = {
            "manual": batch.JobQueue(self, "ManualQueue", priority=100, compute_environments=order(self.on_demand, self.spot)),
            "scheduled": batch.JobQueue(
                self, "ScheduledQueue", priority=10, compute_environments=order(self.spot, self.on_demand),
                job_state_time_limit_actions=[batch.JobStateTimeLimitAction(
                    action=batch.JobStateTimeLimitActionsAction.CANCEL, max_time=spot_wait,
                    reason=batch.JobStateTimeLimitActionsReason.INSUFFICIENT_INSTANCE_CAPACITY,
                    state=batch.JobStateTimeLimitActionsState.RUNNABLE)] if spot else None,
            ),
        }  # fmt: skip
        if spot:  # where the state machine resubmits a job cancelled for want of Spot capacity
            self.queues["on_demand"] = batch.JobQueue(self, "OnDemandQueue", priority=50,
                                                      compute_environments=order(self.on_demand))  # fmt: skip

        self.log_group = logs.LogGroup(self, "WorkerLogs", retention=log_retention, encryption_key=log_key)
        self.job_role = iam.Role(self, "JobRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
                                 description="Prism worker: read input, write artifacts and catalog")  # fmt: skip
        self.execution_role = iam.Role(
            self, "ExecutionRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com")
        )
        # The pipeline's repository lives in the tooling account (its policy lets this account pull);
        # a laptop deploy uses a repository of that name in this account.
        repository = (ecr.Repository.from_repository_arn(self, "Repository", image_repository_arn) if image_repository_arn
                      else ecr.Repository.from_repository_name(self, "Repository", image_repository))  # fmt: skip
        repository.grant_pull(self.execution_role)
        self.log_group.grant_write(self.execution_role)
        image = ecs.ContainerImage.from_ecr_repository(repository, image_tag)
        self.job_definitions: dict[str, batch.EcsJobDefinition] = {}
        for spec in jobs:
            # PRISM_STAGES here is the whole group; Step Functions overrides it with the stages a run asks for.
            self.job_definitions[spec.name] = batch.EcsJobDefinition(
                self,
                f"{spec.name.title()}Job",
                # A fixed name: each deploy registers a new revision of it, and the state machine may submit any
                # revision of it (the executions in flight still name the revision they started with).
                job_definition_name=f"{job_definition_prefix}-{spec.name}",
                container=batch.EcsEc2ContainerDefinition(
                    self,
                    f"{spec.name.title()}Container",
                    image=image,
                    cpu=spec.vcpus,
                    memory=Size.mebibytes(spec.memory_mib),
                    gpu=spec.gpus or None,
                    command=list(WORKER_COMMAND),
                    environment={
                        **environment,
                        **(job_environment or {}).get(spec.name, {}),
                        **spec.environment,
                        "PRISM_JOB": spec.name,
                        "PRISM_STAGES": ",".join(spec.stages),
                    },
                    job_role=self.job_role,
                    execution_role=self.execution_role,
                    logging=ecs.LogDriver.aws_logs(stream_prefix=spec.name, log_group=self.log_group),
                ),
                timeout=Duration.minutes(spec.timeout_minutes),
                retry_attempts=spec.attempts,
                retry_strategies=[
                    batch.RetryStrategy.of(batch.Action.RETRY, batch.Reason.SPOT_INSTANCE_RECLAIMED),
                    batch.RetryStrategy.of(batch.Action.RETRY, batch.Reason.CANNOT_PULL_CONTAINER),
                    batch.RetryStrategy.of(batch.Action.RETRY, batch.Reason.custom(on_exit_code=EXIT_TRANSIENT)),
                    batch.RetryStrategy.of(batch.Action.EXIT, batch.Reason.custom(on_reason="*")),
                ],
                propagate_tags=True,
            )
            # Each new image tag is a new revision; without this CloudFormation deregisters the old
            # one on update and the jobs in flight that use it fail.
            job_definition = self.job_definitions[spec.name].node.default_child
            job_definition.resource_retention_policy = batch.CfnJobDefinition.ResourceRetentionPolicyProperty(
                skip_deregister_on_update=True
            )
        NagSuppressions.add_resource_suppressions(
            instance_role,
            [{"id": "AwsSolutions-IAM4", "reason": "AWS's ECS instance policy is the documented role for Batch "
              "ECS container instances (agent registration, image pull); jobs use their own job role.",
              "applies_to": ["Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"]}],
        )  # fmt: skip

    def _restrict_endpoints(self, external_bucket_accounts: tuple[str, ...]) -> None:
        """Media stays in the account: the gateway endpoints reach only this account's resources.

        ``aws:ResourceAccount`` limits the S3 endpoint to buckets this account owns (plus configured
        upstream accounts); ECR serves image layers from its own bucket in an AWS account, allowed
        by name for GetObject only. Without a policy the endpoint would carry a PUT to any bucket.
        """
        stack = Stack.of(self)
        accounts = [stack.account, *external_bucket_accounts]
        self.s3_endpoint.add_to_policy(iam.PolicyStatement(
            sid="OwnAccountBuckets", principals=[iam.AnyPrincipal()], actions=S3_ENDPOINT_ACTIONS, resources=["*"],
            conditions={"StringEquals": {"aws:ResourceAccount": accounts}}))  # fmt: skip
        self.s3_endpoint.add_to_policy(iam.PolicyStatement(
            sid="EcrImageLayers", principals=[iam.AnyPrincipal()], actions=["s3:GetObject"],
            resources=[f"arn:{stack.partition}:s3:::prod-{stack.region}-starport-layer-bucket/*"]))  # fmt: skip
        self.dynamodb_endpoint.add_to_policy(iam.PolicyStatement(
            sid="OwnAccountTables", principals=[iam.AnyPrincipal()], actions=DYNAMODB_ENDPOINT_ACTIONS,
            resources=["*"], conditions={"StringEquals": {"aws:ResourceAccount": stack.account}}))  # fmt: skip
