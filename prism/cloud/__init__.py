"""AWS side of Prism: the DynamoDB catalog and S3 helpers shared by the worker and the Lambdas.

Only the standard library and boto3 are imported here, so the Lambda functions can bundle this
package without the media stack (torch, ffmpeg). ``worker`` (the Batch entry point) and ``store``
(the runner's S3 + DynamoDB store) run in the container only and stay out of the Lambda bundle.
"""

from prism.cloud.catalog import DynamoCatalog
from prism.cloud.s3 import S3Uri

__all__ = ["DynamoCatalog", "S3Uri"]
