"""Consumers' access in the synthesized stacks: Glue tables match what the stages write, Athena is capped and
encrypted, the event schemas are the repo's, consumer accounts may add rules to the bus, roles are read-only."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from aws_cdk.assertions import Match

from cdk.config import ENVIRONMENTS, Consumer, load
from prism.artifacts import EVENT_SCHEMAS, event_schema
from prism.tables import catalogue_tables, hive_type

ENVS = ["dev", "staging", "prod"]


def _resources(t, kind):
    return [r["Properties"] for r in t.find_resources(kind).values()]


@pytest.mark.parametrize("env", ENVS)
def test_one_glue_table_per_artifact_with_the_columns_the_parquet_files_have(synthesized, env):
    _, t = synthesized[env]
    (database,) = _resources(t, "AWS::Glue::Database")
    db = database["DatabaseInput"]["Name"]
    assert db == f"prism_{env}"
    tables = {p["TableInput"]["Name"]: p for p in _resources(t, "AWS::Glue::Table")}
    expected = catalogue_tables()
    assert set(tables) == set(expected) >= {"titles", "shots", "keyframes", "cues", "audio_segments", "embeddings"}
    for name, props in tables.items():
        assert props["DatabaseName"] == db
        sd = props["TableInput"]["StorageDescriptor"]
        columns = [(c["Name"], c["Type"]) for c in sd["Columns"]]
        assert columns == [(f.name, hive_type(f.type)) for f in expected[name]]
        assert columns[0] == ("title_id", "string")
        assert sd["SerdeInfo"]["SerializationLibrary"].endswith("ParquetHiveSerDe")
        assert json.dumps(sd["Location"]).endswith(f'/tables/{name}/"]]}}') or f"/tables/{name}/" in json.dumps(
            sd["Location"]
        )
        assert not props["TableInput"].get("PartitionKeys")


def test_hive_types_cover_what_stages_write():
    assert hive_type(pa.list_(pa.float32(), 768)) == "array<float>"
    assert hive_type(pa.int32()) == "int" and hive_type(pa.int64()) == "bigint" and hive_type(pa.string()) == "string"
    with pytest.raises(TypeError, match="no Glue column type"):
        hive_type(pa.duration("s"))


@pytest.mark.parametrize("env", ENVS)
def test_athena_workgroup_enforced_encrypted_and_capped(synthesized, env):
    _, t = synthesized[env]
    (wg,) = _resources(t, "AWS::Athena::WorkGroup")
    conf = wg["WorkGroupConfiguration"]
    assert wg["Name"] == f"prism-{env}"
    assert conf["EnforceWorkGroupConfiguration"] is True
    assert conf["BytesScannedCutoffPerQuery"] == ENVIRONMENTS[env].athena_bytes_scanned_cutoff
    enc = conf["ResultConfiguration"]["EncryptionConfiguration"]
    assert enc["EncryptionOption"] == "SSE_KMS" and "Fn::GetAtt" in enc["KmsKey"]
    assert "_prism/athena/" in json.dumps(conf["ResultConfiguration"]["OutputLocation"])


@pytest.mark.parametrize("env", ENVS)
def test_event_schemas_registry_and_archive(synthesized, env):
    _, t = synthesized[env]
    (registry,) = _resources(t, "AWS::EventSchemas::Registry")
    assert registry["RegistryName"] == f"prism-{env}"
    schemas = {p["Description"]: p for p in _resources(t, "AWS::EventSchemas::Schema")}
    assert set(schemas) == set(EVENT_SCHEMAS)
    for detail_type, props in schemas.items():
        assert props["Type"] == "JSONSchemaDraft4"
        assert json.loads(props["Content"]) == event_schema(detail_type)
    (archive,) = _resources(t, "AWS::Events::Archive")
    assert archive["RetentionDays"] == ENVIRONMENTS[env].event_archive_days
    assert archive["EventPattern"] == {"source": ["prism"]}


def _policy_of(t, role_logical):
    docs = [p["PolicyDocument"] for p in _resources(t, "AWS::IAM::Policy")
            if {"Ref": role_logical} in p.get("Roles", [])]  # fmt: skip
    return [s for d in docs for s in d["Statement"]]


@pytest.mark.parametrize("env", ENVS)
def test_each_consumer_has_a_read_only_role_and_may_put_rules_on_the_bus(synthesized, env):
    _, t = synthesized[env]
    consumers = ENVIRONMENTS[env].consumers
    roles = t.find_resources("AWS::IAM::Role", {"Properties": {"RoleName": Match.string_like_regexp("consumer")}})
    assert len(roles) == len(consumers)
    bus_policies = [json.dumps(p) for p in _resources(t, "AWS::Events::EventBusPolicy")]
    for consumer in consumers:
        (logical,) = [
            k for k, r in roles.items() if r["Properties"]["RoleName"] == f"prism-{env}-consumer-{consumer.name}"
        ]
        trust = json.dumps(roles[logical]["Properties"]["AssumeRolePolicyDocument"])
        assert f":iam::{consumer.account}:root" in trust
        statements = _policy_of(t, logical)
        actions = {a for s in statements for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])}
        assert not {a for a in actions if a.split(":")[1].startswith(("Delete", "Create", "Update", "BatchWrite"))}
        writes = [s for s in statements if "s3:PutObject" in s["Action"]]
        assert len(writes) == 1 and f"_prism/athena/{consumer.name}/*" in json.dumps(writes[0]["Resource"])
        reads = [s for s in statements if s["Action"] == "s3:GetObject"]
        assert (
            "titles/*" in json.dumps(reads)
            and "tables/*" in json.dumps(reads)
            and "_prism/runs" not in json.dumps(reads)
        )
        assert not [s for s in statements if "dynamodb" in json.dumps(s["Action"])]
        assert any(consumer.account in p and "events:creatorAccount" in p for p in bus_policies)
    if not consumers:
        assert env == "dev" and not bus_policies


def test_consumers_are_validated():
    with pytest.raises(ValueError, match="12 digits"):
        Consumer("posters", "1234")
    with pytest.raises(ValueError, match="lowercase"):
        Consumer("Posters Team", "123456789012")
    with pytest.raises(ValueError, match="repeat"):
        load("dev", consumers=(Consumer("qc", "123456789012"), Consumer("qc", "210987654321")))
    with pytest.raises(ValueError, match="10 MB"):
        load("dev", athena_bytes_scanned_cutoff=1024)


@pytest.mark.parametrize("env", ENVS)
def test_the_worker_writes_tables_but_not_elsewhere(synthesized, env):
    stack, t = synthesized[env]
    job_role = stack.resolve(stack.compute.job_role.role_arn)["Fn::GetAtt"][0]
    statements = _policy_of(t, job_role)
    puts = json.dumps([s["Resource"] for s in statements if "s3:PutObject" in s["Action"]])
    assert "tables/*" in puts and "titles/*" in puts and "_prism/athena" not in puts
