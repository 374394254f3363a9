#!/usr/bin/env bash
# Build the trainer image and push it to the stage's ECR repository (created by the deploy).
#   scripts/image.sh STAGE [REGION] [TAG]
# TAG defaults to "latest", the tag the train function runs (custom.train.imageTag); every
# push is also tagged with the commit, so an older image can be run again by its tag.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { sed -n '2,5p' "$0" >&2; exit 2; }
stage=$1
region=${2:-${AWS_REGION:-us-east-1}}
tag=${3:-latest}

account=$(aws sts get-caller-identity --query Account --output text)
registry="$account.dkr.ecr.$region.amazonaws.com"
repository="$registry/autoretrain-$stage-trainer"
commit=$(git -C "$root" rev-parse --short=12 HEAD)

# AWS CLI v2: `get-login` is gone; the password goes to docker on standard input.
aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$registry"
docker build --platform linux/amd64 -f "$root/trainer/Dockerfile" -t "$repository:$tag" -t "$repository:$commit" "$root"
docker push "$repository:$tag"
docker push "$repository:$commit"
echo "pushed $repository:$tag ($commit)"
