"""Prism's AWS deployment (CDK v2, Python): one stack per environment, constructs by concern.

``config`` holds each environment's settings as plain data; ``stack.PrismStack`` wires the
constructs (``storage``, ``compute``, ``orchestration``, ``schedule``, ``monitoring``) and does
the grants; ``stage.PrismStage`` wraps the stack for a CDK Pipelines stage; ``app`` is the
entry point ``cdk.json`` runs. ``pipeline.PrismPipelineStack`` is the tooling account's CI/CD
pipeline, synthesized by its own entry point ``pipeline_app``.
"""
