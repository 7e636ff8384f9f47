"""The perimeter at synth: interface endpoint policies, KMS-encrypted log groups, and the input bucket's key."""

from __future__ import annotations

import pytest

from cdk.config import load

ENVS = ["dev", "staging", "prod"]


def test_a_customer_keyed_input_bucket_without_its_key_fails_synth_with_a_clear_message():
    with pytest.raises(ValueError, match=r"prod: the input bucket media-delivery-prod is encrypted with a customer "
                                         r"key \(SSE-KMS\) but input_bucket_kms_key_arn is not set"):  # fmt: skip
        load("prod", input_bucket_encryption="SSE-KMS")
    with pytest.raises(ValueError, match="input_bucket_encryption must be one of"):
        load("prod", input_bucket_encryption="aws:kms")
    with pytest.raises(ValueError, match="goes with input_bucket_encryption='SSE-KMS'"):
        load("prod", input_bucket_kms_key_arn="arn:aws:kms:ap-northeast-2:111111111111:key/k")
    key = "arn:aws:kms:ap-northeast-2:111111111111:key/k"
    assert load("prod", input_bucket_encryption="SSE-KMS", input_bucket_kms_key_arn=key).input_bucket_kms_key_arn == key


@pytest.mark.slow
@pytest.mark.parametrize("env", ENVS)
def test_every_log_group_is_encrypted_with_the_stacks_key_which_cloudwatch_logs_may_use(synthesized, env):
    _, t = synthesized[env]
    (key,) = t.find_resources("AWS::KMS::Key")
    groups = t.find_resources("AWS::Logs::LogGroup")
    assert len(groups) >= 7
    for name, group in groups.items():
        assert group["Properties"].get("KmsKeyId") == {"Fn::GetAtt": [key, "Arn"]}, name
    statements = t.find_resources("AWS::KMS::Key")[key]["Properties"]["KeyPolicy"]["Statement"]
    (logs,) = [s for s in statements if s.get("Principal") == {"Service": f"logs.{load(env).region}.amazonaws.com"}]
    assert (
        "kms:GenerateDataKey*" in logs["Action"]
        and "kms:EncryptionContext:aws:logs:arn" in logs["Condition"]["ArnLike"]
    )


@pytest.mark.slow
@pytest.mark.parametrize("env", ENVS)
def test_every_vpc_endpoint_has_a_policy(synthesized, env):
    _, t = synthesized[env]
    endpoints = t.find_resources("AWS::EC2::VPCEndpoint")
    assert len(endpoints) == 8
    for name, endpoint in endpoints.items():
        assert endpoint["Properties"].get("PolicyDocument"), f"{name} lets any request through"


def test_the_ecr_endpoints_let_workers_pull_the_pipelines_image_from_the_tooling_account():
    from aws_cdk import App
    from aws_cdk.assertions import Template

    from cdk.config import PIPELINE
    from cdk.stack import PrismStack

    stage = PIPELINE.stages[0]
    config = PIPELINE.environment(stage, image_tag="abc123", version="0.1.0")
    from aws_cdk import Environment

    stack = PrismStack(App(), "Prism-dev", config=config, env=Environment(account=config.account, region=config.region))
    t = Template.from_stack(stack).to_json()
    (ecr,) = [
        r
        for k, r in t["Resources"].items()
        if k.startswith("ComputeVpcEcrDocker") and r["Type"] == "AWS::EC2::VPCEndpoint"
    ]
    (statement,) = ecr["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Condition"]["StringEqualsIfExists"]["aws:ResourceAccount"] == [config.account, PIPELINE.account]
    assert statement["Condition"]["StringEquals"]["aws:PrincipalAccount"] == config.account
