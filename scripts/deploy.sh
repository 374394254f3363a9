#!/usr/bin/env bash
# Package, deploy, remove or tail the logs of one stage with the pinned osls CLI.
#   scripts/deploy.sh package|deploy|remove STAGE [REGION]
#   scripts/deploy.sh logs STAGE FUNCTION [REGION]
# deploy and remove act on the AWS account of the current credentials (AWS_PROFILE etc.); so
# does package, which builds the traffic function's container image with docker and pushes it
# to the stage's ECR repository (serverless-autoretrain-STAGE, created by osls if missing).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
osls="$root/node_modules/.bin/osls"
python="${PYTHON:-$root/.venv/bin/python}"

usage() {
  sed -n '2,7p' "$0" >&2
  exit 2
}

[ $# -ge 2 ] || usage
action=$1
stage=$2
case "$action" in
  package | deploy | remove) region=${3:-${AWS_REGION:-us-east-1}} ;;
  logs)
    [ $# -ge 3 ] || usage
    function=$3
    region=${4:-${AWS_REGION:-us-east-1}}
    ;;
  *) usage ;;
esac

cd "$root/infra"
case "$action" in
  package | deploy)
    # Checked first: osls checks only `docker --version` (a client without a daemon passes) and
    # would fail at `docker build`, after the layer is built.
    if ! docker info >/dev/null 2>&1; then
      echo "deploy.sh: no docker daemon answers (docker info failed): the traffic function is a" \
        "container image (lambdas/traffic.Dockerfile), which osls builds and pushes with docker." \
        "Start docker and try again." >&2
      exit 1
    fi
    # The numpy layer of infer, built for the Lambda platform.
    (cd "$root" && "$python" -m scripts.package_functions --out "$root/infra/build")
    # Zips the functions and writes the template; builds the traffic image and pushes it to ECR
    # (provider.ecr), and the template names it by digest.
    "$osls" package --stage "$stage" --region "$region"
    # Lambda's limit on a zip function's code plus its layers, unzipped, checked before the zips
    # are uploaded; deploy then ships exactly the package that was checked.
    (cd "$root" && "$python" -m scripts.package_functions --check-sizes "$root/infra/.serverless")
    if [ "$action" = deploy ]; then
      "$osls" deploy --package .serverless --stage "$stage" --region "$region"
    fi
    ;;
  remove)
    # The bucket must be empty before CloudFormation can delete it; the models go with it.
    bucket=$(aws cloudformation describe-stacks --stack-name "autoretrain-$stage" --region "$region" \
      --query "Stacks[0].Outputs[?OutputKey=='ModelBucketName'].OutputValue" --output text 2>/dev/null || true)
    if [ -n "$bucket" ] && [ "$bucket" != "None" ]; then
      aws s3 rm "s3://$bucket" --recursive --region "$region"
    fi
    "$osls" remove --stage "$stage" --region "$region"
    ;;
  logs)
    "$osls" logs --function "$function" --stage "$stage" --region "$region" --tail
    ;;
esac
